//! The evidence index in object storage: key layout, atomic idempotent writes, the pass manifest
//! and the corpus tables.
//!
//! Layout under the index prefix (see `SCHEMA.md`):
//!
//! ```text
//! videos/{video_id}/{run_id}/evidence.json             one document per video, model and task
//! videos/{video_id}/{run_id}/parts/s{SSSS}.json        a split video's segment parts
//! videos/{video_id}/{run_id}/frames/s{SSSS}_f{FFF}.{jpg|png}   sampled-frame thumbnails
//! table/claims/part-{pass_id}.parquet                  one row per claim, one part per pass
//! table/answers/part-{pass_id}.parquet                 one row per answer, one part per pass
//! manifest.json                                        the latest pass's manifest
//! passes/{pass_id}/manifest.json                       every pass's manifest
//! search/index.json  search/files/...                  the tantivy search index (`search_store`)
//! ```
//!
//! `video_id` hashes URL, size and ETag (or checksum); `run_id` hashes model id, revision and task
//! hash. The key is therefore a pure function of what was indexed: a rerun finds the document and
//! skips the video ([`EvidenceIndex::is_indexed`]); a retried job overwrites the same key, so no
//! second version is left behind. Every object is written with one `put`, which object stores make
//! atomic (the local file system store writes a temporary file and renames it). The document is
//! written after its thumbnails, so a document that exists is complete.
//!
//! A video split into segments is processed by one job per segment; each writes its segment's
//! part (and thumbnails, named by segment, in the video's directory), and the job the
//! coordinator's segment counter designates puts the parts together into the video's document
//! ([`EvidenceIndex::assemble_video`]). The tables accumulate: each pass adds parts holding the
//! documents it wrote, and readers ([`EvidenceIndex::read_claims`]) see the union with the newest
//! document per video and task winning.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};
use vidx_core::domain::is_time_ordered_pass_id;

use super::document::{ModelInfo, Thumbnail, VideoDocument, VideoIdentity, assemble_video};
use super::parquet_file::{answers_to_parquet, claims_to_parquet, rows_from_parquet};
use super::search_index::{IndexWriterOptions, SearchIndex};
use super::table::{AnswerRow, ClaimRow, newest_per_video_task, rows_for_document};
use super::task::{QuestionPlan, hex};
use super::{Error, Result};

/// File name of a video's evidence document.
pub const DOCUMENT_FILE: &str = "evidence.json";
/// Schema tag of pass manifests.
pub const MANIFEST_SCHEMA: &str = "vidx.manifest/v1";
/// Directory of the claims table's parts, relative to the index prefix.
pub const CLAIMS_PARTS: &str = "table/claims";
/// Directory of the answers table's parts.
pub const ANSWERS_PARTS: &str = "table/answers";
/// The latest pass's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// How many documents are read at once when building the tables.
const READ_CONCURRENCY: usize = 16;

/// 32 hex characters identifying a model revision and task: the run's directory name.
pub fn run_id(model: &ModelInfo, task_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"vidx.run/v1\n");
    for part in [&model.id, &model.revision, task_hash] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize()[..16])
}

/// Name of a pass's table part in a table's directory: `part-{pass_id}.parquet`.
pub fn table_part_name(pass_id: &str) -> String {
    format!("part-{}.parquet", sanitize_segment(pass_id))
}

/// Name of a segment's part relative to the video document's directory: `parts/s0003.json`.
pub fn segment_part_name(segment_index: u32) -> String {
    format!("parts/s{segment_index:04}.json")
}

/// Name of a thumbnail relative to its document's directory: `frames/s0003_f002.jpg`.
pub fn thumbnail_name(segment_index: u32, frame_index: usize, extension: &str) -> String {
    format!("frames/s{segment_index:04}_f{frame_index:03}.{extension}")
}

/// What happened to one video in a pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// Indexed in this pass.
    Indexed {
        /// Key of the document written.
        document_key: String,
    },
    /// Found already indexed (a document of this video, model and task written by an earlier
    /// pass); skipped without reading the video.
    #[serde(alias = "already_indexed")]
    Skipped {
        /// Key of the existing document.
        document_key: String,
    },
    /// Failed; no document was written.
    Failed {
        /// Stage that failed, e.g. `probe`, `decode`, `model`, `write`.
        stage: String,
        /// The error, in words.
        reason: String,
    },
}

/// One video's line in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoOutcome {
    /// The video's URL.
    pub url: String,
    /// What happened.
    #[serde(flatten)]
    pub status: OutcomeStatus,
}

/// What a pass covered: every video, indexed, skipped or failed with its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassManifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// The pass's id.
    pub pass_id: String,
    /// The model.
    pub model: ModelInfo,
    /// QuestionPlan name.
    pub task_name: String,
    /// QuestionPlan hash.
    pub task_hash: String,
    /// Every video of the pass.
    pub videos: Vec<VideoOutcome>,
    /// Videos indexed in this pass.
    pub indexed: usize,
    /// Videos found already indexed and skipped.
    #[serde(alias = "already_indexed")]
    pub skipped: usize,
    /// Videos that failed.
    pub failed: usize,
    /// Rows in the claims table written at the end of the pass.
    pub claim_rows: usize,
    /// Rows in the answers table.
    pub answer_rows: usize,
}

impl PassManifest {
    /// An empty manifest for a pass.
    pub fn new(pass_id: impl Into<String>, model: ModelInfo, task: &QuestionPlan) -> Self {
        Self {
            schema: MANIFEST_SCHEMA.to_owned(),
            pass_id: pass_id.into(),
            model,
            task_name: task.name.clone(),
            task_hash: task.hash(),
            videos: Vec::new(),
            indexed: 0,
            skipped: 0,
            failed: 0,
            claim_rows: 0,
            answer_rows: 0,
        }
    }

    /// Records a video's outcome.
    pub fn record(&mut self, url: impl Into<String>, status: OutcomeStatus) {
        match status {
            OutcomeStatus::Indexed { .. } => self.indexed += 1,
            OutcomeStatus::Skipped { .. } => self.skipped += 1,
            OutcomeStatus::Failed { .. } => self.failed += 1,
        }
        self.videos.push(VideoOutcome {
            url: url.into(),
            status,
        });
    }

    /// Keys of the documents the pass covers (indexed now or before).
    pub fn document_keys(&self) -> Vec<String> {
        self.videos
            .iter()
            .filter_map(|video| match &video.status {
                OutcomeStatus::Indexed { document_key }
                | OutcomeStatus::Skipped { document_key } => Some(document_key.clone()),
                OutcomeStatus::Failed { .. } => None,
            })
            .collect()
    }

    /// Keys of the documents this pass wrote: what its table parts hold.
    pub fn indexed_document_keys(&self) -> Vec<String> {
        self.videos
            .iter()
            .filter_map(|video| match &video.status {
                OutcomeStatus::Indexed { document_key } => Some(document_key.clone()),
                _ => None,
            })
            .collect()
    }
}

/// An evidence index: an object store and a prefix within it.
#[derive(Clone, Debug)]
pub struct EvidenceIndex {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl EvidenceIndex {
    /// An index under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self { store, prefix }
    }

    /// An index from a URL (`s3://bucket/index`, `file:///data/index`, ...) or a local directory path.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = if url.contains("://") {
            url::Url::parse(url).map_err(|error| invalid(error.to_string()))?
        } else {
            let absolute = std::path::absolute(url).map_err(|error| invalid(error.to_string()))?;
            url::Url::from_directory_path(&absolute)
                .map_err(|()| invalid("not an absolute path".into()))?
        };
        // The same store the planner and the reader would open for this URL, credentials and
        // endpoints from the environment.
        let (store, prefix) = vidx_core::objects::store_for_url(&parsed, &[])
            .map_err(|error| invalid(error.to_string()))?;
        Ok(Self { store, prefix })
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix everything lives under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn key(&self, relative: &str) -> Path {
        relative
            .split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// The document key for a video, model and task hash.
    pub fn document_key(&self, video: &VideoIdentity, model: &ModelInfo, task_hash: &str) -> Path {
        self.key(&format!(
            "videos/{}/{}/{DOCUMENT_FILE}",
            video.video_id(),
            run_id(model, task_hash)
        ))
    }

    /// The full key of a thumbnail next to a document.
    pub fn thumbnail_key(document_key: &Path, name: &str) -> Path {
        let dir = document_key.parent().unwrap_or_default();
        name.split('/').fold(dir, |path, part| path.join(part))
    }

    /// Whether the document exists: the video is indexed under this model and task.
    pub async fn is_indexed(&self, document_key: &Path) -> Result<bool> {
        match self.store.head(document_key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn put(&self, key: &Path, bytes: Bytes, content_type: &str) -> Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(key, PutPayload::from(bytes.clone()), options)
            .await
        {
            // Some stores (the local file system) keep no attributes; write without them.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(key, PutPayload::from(bytes)).await?;
            }
            result => {
                result?;
            }
        }
        debug!(%key, content_type, "object written");
        Ok(())
    }

    /// Stores an encoded thumbnail (JPEG or PNG, upright) of a sampled frame next to the document;
    /// returns the record to put in the document with
    /// [`VideoDocumentBuilder::set_thumbnail`](super::document::VideoDocumentBuilder::set_thumbnail).
    pub async fn put_thumbnail(
        &self,
        document_key: &Path,
        segment_index: u32,
        frame_index: usize,
        image: EncodedImage,
    ) -> Result<Thumbnail> {
        let extension = match image.content_type.as_str() {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            other => {
                return Err(Error::InvalidDocument(format!(
                    "thumbnail type {other} is not jpeg or png"
                )));
            }
        };
        let name = thumbnail_name(segment_index, frame_index, extension);
        self.put(
            &Self::thumbnail_key(document_key, &name),
            image.bytes,
            &image.content_type,
        )
        .await?;
        Ok(Thumbnail {
            key: name,
            content_type: image.content_type,
            width: image.width,
            height: image.height,
        })
    }

    /// Writes a document under its key (overwriting a previous attempt's) and returns the key.
    pub async fn write_document(&self, document: &VideoDocument) -> Result<Path> {
        let key = self.document_key(&document.video, &document.model, &document.task.hash);
        let bytes = serde_json::to_vec_pretty(document)?;
        self.put(&key, Bytes::from(bytes), "application/json")
            .await?;
        info!(%key, url = %document.video.url, claims = document.claim_count(), "evidence document written");
        Ok(key)
    }

    /// The key of a segment's part next to its video's document.
    pub fn part_key(document_key: &Path, segment_index: u32) -> Path {
        Self::thumbnail_key(document_key, &segment_part_name(segment_index))
    }

    /// Writes a split video's segment part (a document holding that one segment) next to the
    /// video's document key; returns the part's key.
    pub async fn write_part(&self, part: &VideoDocument) -> Result<Path> {
        let [segment] = part.segments.as_slice() else {
            return Err(Error::InvalidDocument(format!(
                "a part holds one segment, not {}",
                part.segments.len()
            )));
        };
        let document_key = self.document_key(&part.video, &part.model, &part.task.hash);
        let key = Self::part_key(&document_key, segment.index);
        let bytes = serde_json::to_vec_pretty(part)?;
        self.put(&key, Bytes::from(bytes), "application/json")
            .await?;
        info!(%key, url = %part.video.url, segment = segment.index, "segment part written");
        Ok(key)
    }

    /// Reads the `segment_count` parts of a split video, puts them together
    /// ([`assemble_video`]), and writes the video's document, recording the pass that did it.
    /// Safe to repeat: a second assembly writes the same document again.
    pub async fn assemble_video(
        &self,
        document_key: &Path,
        segment_count: u32,
        pass_id: &str,
        written_at_ms: i64,
    ) -> Result<Path> {
        let parts: Vec<VideoDocument> = futures::stream::iter(0..segment_count)
            .map(|index| async move {
                self.read_document(&Self::part_key(document_key, index))
                    .await
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut document = assemble_video(parts, segment_count)?;
        document.pass_id = Some(pass_id.to_owned());
        document.written_at_ms = Some(written_at_ms);
        let written = self.write_document(&document).await?;
        if written != *document_key {
            return Err(Error::InvalidDocument(format!(
                "parts under {document_key} describe the document {written}"
            )));
        }
        info!(key = %written, segments = segment_count, "video document assembled");
        Ok(written)
    }

    /// Reads the raw bytes of an object.
    pub async fn get_bytes(&self, key: &Path) -> Result<Bytes> {
        Ok(self.store.get(key).await?.bytes().await?)
    }

    /// Reads a document.
    pub async fn read_document(&self, key: &Path) -> Result<VideoDocument> {
        let bytes = self.get_bytes(key).await?;
        let document: VideoDocument =
            serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
                key: key.to_string(),
                reason: error.to_string(),
            })?;
        if document.schema != super::document::SCHEMA_VERSION {
            return Err(Error::Corrupt {
                key: key.to_string(),
                reason: format!("unknown schema {}", document.schema),
            });
        }
        Ok(document)
    }

    /// Reads the document stored under a full key given as text (a job's result).
    pub async fn read_document_at(&self, key: &str) -> Result<VideoDocument> {
        self.read_document(&Path::from(key)).await
    }

    /// Keys of every document in the index, sorted.
    pub async fn list_documents(&self) -> Result<Vec<Path>> {
        let videos = self.key("videos");
        let mut keys: Vec<Path> = self
            .store
            .list(Some(&videos))
            .try_filter_map(|meta| async move {
                Ok((meta.location.filename() == Some(DOCUMENT_FILE)).then_some(meta.location))
            })
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }

    /// Reads documents and turns them into table rows, in the order given.
    pub async fn collect_rows(
        &self,
        document_keys: &[String],
    ) -> Result<(Vec<ClaimRow>, Vec<AnswerRow>)> {
        let documents: Vec<(String, VideoDocument)> =
            futures::stream::iter(document_keys.iter().cloned())
                .map(|key| async move {
                    let document = self.read_document(&Path::from(key.as_str())).await?;
                    Ok::<_, Error>((key, document))
                })
                .buffered(READ_CONCURRENCY)
                .try_collect()
                .await?;
        let rows = tokio::task::spawn_blocking(move || {
            let mut claims = Vec::new();
            let mut answers = Vec::new();
            for (key, document) in &documents {
                let (document_claims, document_answers) = rows_for_document(document, key);
                claims.extend(document_claims);
                answers.extend(document_answers);
            }
            (claims, answers)
        })
        .await?;
        Ok(rows)
    }

    /// Writes a pass's parts of the corpus tables (Parquet), replacing only that pass's earlier
    /// parts: every other pass's rows stay.
    pub async fn write_tables(
        &self,
        pass_id: &str,
        claims: Vec<ClaimRow>,
        answers: Vec<AnswerRow>,
    ) -> Result<TableCounts> {
        let counts = TableCounts {
            claims: claims.len(),
            answers: answers.len(),
        };
        let encoded =
            tokio::task::spawn_blocking(move || -> Result<[(Vec<u8>, &'static str); 2]> {
                Ok([
                    (claims_to_parquet(&claims)?, CLAIMS_PARTS),
                    (answers_to_parquet(&answers)?, ANSWERS_PARTS),
                ])
            })
            .await??;
        let part = table_part_name(pass_id);
        for (bytes, dir) in encoded {
            self.put(
                &self.key(&format!("{dir}/{part}")),
                Bytes::from(bytes),
                "application/vnd.apache.parquet",
            )
            .await?;
        }
        Ok(counts)
    }

    /// Ends a pass: builds the pass's table parts from the documents it wrote (skipped videos'
    /// rows are in the parts of the passes that wrote them), writes them, adds those rows to the
    /// search index (replacing earlier rows of the same videos × tasks), then writes the manifest
    /// (as `manifest.json` and under `passes/{pass_id}/`). Safe to repeat: a second run
    /// overwrites the same objects and replaces the same rows.
    pub async fn finish_pass(&self, mut manifest: PassManifest) -> Result<PassManifest> {
        let keys = manifest.indexed_document_keys();
        let (claims, answers) = self.collect_rows(&keys).await?;
        // The search index replaces the rows of this pass's videos × tasks and keeps the rest.
        SearchIndex::update(
            self,
            &manifest.pass_id,
            &claims,
            &answers,
            &IndexWriterOptions::default(),
        )
        .await?;
        let counts = self
            .write_tables(&manifest.pass_id, claims, answers)
            .await?;
        manifest.claim_rows = counts.claims;
        manifest.answer_rows = counts.answers;
        let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
        let pass_dir = format!(
            "passes/{}/{MANIFEST_FILE}",
            sanitize_segment(&manifest.pass_id)
        );
        self.put(&self.key(&pass_dir), bytes.clone(), "application/json")
            .await?;
        if self.newer_manifest_than(&manifest.pass_id).await {
            info!(pass_id = %manifest.pass_id, "a newer pass's manifest stays the latest");
        } else {
            self.put(&self.key(MANIFEST_FILE), bytes, "application/json")
                .await?;
        }
        info!(
            pass_id = %manifest.pass_id,
            indexed = manifest.indexed,
            skipped = manifest.skipped,
            failed = manifest.failed,
            claim_rows = counts.claims,
            "pass finished"
        );
        Ok(manifest)
    }

    /// Whether the latest manifest is of a pass newer than `pass_id`: one finalized late (by a
    /// sweep, or a re-run of an old pass) then leaves it in place. Only ids as the coordinator
    /// makes them (`pass-` and a UUIDv7) are compared, since they sort by creation time; an
    /// absent or unreadable manifest is not newer.
    async fn newer_manifest_than(&self, pass_id: &str) -> bool {
        if !is_time_ordered_pass_id(pass_id) {
            return false;
        }
        match self.read_manifest().await {
            Ok(latest) => {
                is_time_ordered_pass_id(&latest.pass_id) && latest.pass_id.as_str() > pass_id
            }
            Err(_) => false,
        }
    }

    /// Reads the latest pass manifest.
    pub async fn read_manifest(&self) -> Result<PassManifest> {
        let key = self.key(MANIFEST_FILE);
        let bytes = self.get_bytes(&key).await?;
        serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
            key: key.to_string(),
            reason: error.to_string(),
        })
    }

    /// Reads every part of a table, in key order, as rows.
    async fn read_parts<R>(&self, dir: &str) -> Result<Vec<R>>
    where
        R: serde::de::DeserializeOwned + Send + 'static,
    {
        let prefix = self.key(dir);
        let mut keys: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .is_some_and(|name| name.starts_with("part-") && name.ends_with(".parquet"))
                    .then_some(meta.location))
            })
            .try_collect()
            .await?;
        keys.sort();
        let mut rows = Vec::new();
        for key in keys {
            let bytes = self.get_bytes(&key).await?;
            let name = key.to_string();
            let part: Vec<R> =
                tokio::task::spawn_blocking(move || rows_from_parquet(bytes, &name)).await??;
            rows.extend(part);
        }
        Ok(rows)
    }

    /// Reads the claims table: every pass's part, the newest document per video and task winning.
    pub async fn read_claims(&self) -> Result<Vec<ClaimRow>> {
        let rows = self.read_parts::<ClaimRow>(CLAIMS_PARTS).await?;
        Ok(newest_per_video_task(rows))
    }

    /// Reads the answers table like [`EvidenceIndex::read_claims`].
    pub async fn read_answers(&self) -> Result<Vec<AnswerRow>> {
        let rows = self.read_parts::<AnswerRow>(ANSWERS_PARTS).await?;
        Ok(newest_per_video_task(rows))
    }

    /// The full key of a name relative to the index prefix (`table/claims/part-p1.parquet`).
    pub fn relative_key(&self, relative: &str) -> Path {
        self.key(relative)
    }
}

/// Row counts of the tables written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableCounts {
    /// Claims table rows.
    pub claims: usize,
    /// Answers table rows.
    pub answers: usize,
}

/// An encoded image ready to store.
#[derive(Clone, Debug)]
pub struct EncodedImage {
    /// The encoded bytes.
    pub bytes: Bytes,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Makes a pass id safe as one path segment.
fn sanitize_segment(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        cleaned
    }
}
