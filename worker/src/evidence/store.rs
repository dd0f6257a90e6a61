//! The evidence index in object storage: key layout, atomic idempotent writes, the pass manifest
//! and the corpus tables.
//!
//! Layout under the index prefix (see `SCHEMA.md`):
//!
//! ```text
//! videos/{video_id}/{run_id}/evidence.json             one document per video, model and task
//! videos/{video_id}/{run_id}/frames/s{SSSS}_f{FFF}.{jpg|png}   sampled-frame thumbnails
//! table/claims.jsonl  table/claims.parquet             one row per claim, whole corpus
//! table/answers.jsonl table/answers.parquet            one row per answer, whole corpus
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

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::document::{ModelInfo, Thumbnail, VideoDocument, VideoIdentity};
use super::parquet_file::{answers_to_parquet, claims_to_parquet};
use super::search_index::{IndexWriterOptions, SearchIndex};
use super::table::{AnswerRow, ClaimRow, from_jsonl, rows_for_document, to_jsonl};
use super::task::{QuestionPlan, hex};
use super::{Error, Result};

/// File name of a video's evidence document.
pub const DOCUMENT_FILE: &str = "evidence.json";
/// Schema tag of pass manifests.
pub const MANIFEST_SCHEMA: &str = "vidx.manifest/v1";
/// Claims table, JSON Lines, relative to the index prefix.
pub const CLAIMS_JSONL: &str = "table/claims.jsonl";
/// Claims table, Parquet.
pub const CLAIMS_PARQUET: &str = "table/claims.parquet";
/// Answers table, JSON Lines.
pub const ANSWERS_JSONL: &str = "table/answers.jsonl";
/// Answers table, Parquet.
pub const ANSWERS_PARQUET: &str = "table/answers.parquet";
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
    /// Found already indexed; skipped.
    AlreadyIndexed {
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
    /// Videos found already indexed.
    pub already_indexed: usize,
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
            already_indexed: 0,
            failed: 0,
            claim_rows: 0,
            answer_rows: 0,
        }
    }

    /// Records a video's outcome.
    pub fn record(&mut self, url: impl Into<String>, status: OutcomeStatus) {
        match status {
            OutcomeStatus::Indexed { .. } => self.indexed += 1,
            OutcomeStatus::AlreadyIndexed { .. } => self.already_indexed += 1,
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
                | OutcomeStatus::AlreadyIndexed { document_key } => Some(document_key.clone()),
                OutcomeStatus::Failed { .. } => None,
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

    /// Writes the corpus tables (JSON Lines and Parquet), replacing the previous ones.
    pub async fn write_tables(
        &self,
        claims: Vec<ClaimRow>,
        answers: Vec<AnswerRow>,
    ) -> Result<TableCounts> {
        let counts = TableCounts {
            claims: claims.len(),
            answers: answers.len(),
        };
        let encoded = tokio::task::spawn_blocking(
            move || -> Result<[(Vec<u8>, &'static str, &'static str); 4]> {
                Ok([
                    (to_jsonl(&claims)?, CLAIMS_JSONL, "application/x-ndjson"),
                    (
                        claims_to_parquet(&claims)?,
                        CLAIMS_PARQUET,
                        "application/vnd.apache.parquet",
                    ),
                    (to_jsonl(&answers)?, ANSWERS_JSONL, "application/x-ndjson"),
                    (
                        answers_to_parquet(&answers)?,
                        ANSWERS_PARQUET,
                        "application/vnd.apache.parquet",
                    ),
                ])
            },
        )
        .await??;
        for (bytes, name, content_type) in encoded {
            self.put(&self.key(name), Bytes::from(bytes), content_type)
                .await?;
        }
        Ok(counts)
    }

    /// Ends a pass: builds the corpus tables from every document the manifest covers, writes them,
    /// adds those rows to the search index (replacing earlier rows of the same videos × tasks),
    /// then writes the manifest (as `manifest.json` and under `passes/{pass_id}/`).
    pub async fn finish_pass(&self, mut manifest: PassManifest) -> Result<PassManifest> {
        let keys = manifest.document_keys();
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
        let counts = self.write_tables(claims, answers).await?;
        manifest.claim_rows = counts.claims;
        manifest.answer_rows = counts.answers;
        let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
        let pass_dir = format!(
            "passes/{}/{MANIFEST_FILE}",
            sanitize_segment(&manifest.pass_id)
        );
        self.put(&self.key(&pass_dir), bytes.clone(), "application/json")
            .await?;
        self.put(&self.key(MANIFEST_FILE), bytes, "application/json")
            .await?;
        info!(
            pass_id = %manifest.pass_id,
            indexed = manifest.indexed,
            already_indexed = manifest.already_indexed,
            failed = manifest.failed,
            claim_rows = counts.claims,
            "pass finished"
        );
        Ok(manifest)
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

    /// Reads the claims table (JSON Lines).
    pub async fn read_claims(&self) -> Result<Vec<ClaimRow>> {
        let key = self.key(CLAIMS_JSONL);
        let bytes = self.get_bytes(&key).await?;
        let name = key.to_string();
        tokio::task::spawn_blocking(move || from_jsonl(&bytes, &name)).await?
    }

    /// Reads the answers table (JSON Lines).
    pub async fn read_answers(&self) -> Result<Vec<AnswerRow>> {
        let key = self.key(ANSWERS_JSONL);
        let bytes = self.get_bytes(&key).await?;
        let name = key.to_string();
        tokio::task::spawn_blocking(move || from_jsonl(&bytes, &name)).await?
    }

    /// The full key of a name relative to the index prefix (`table/claims.parquet`).
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
