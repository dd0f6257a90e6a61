//! `vidx report`: one static, self-contained HTML page over an evidence index.
//!
//! The page opens with the pass (from the latest manifest), a filter box and the videos that
//! failed, each with the stage that failed and why. Then every video: flagged by moderation first
//! (most severe first), then the rest by URL. Each video shows its moderation verdicts per
//! category, a timeline of its segments, sampled frames and claims, the strip of every sampled
//! frame with the boxes on it, each frame that claims point at drawn large with its boxes and the
//! claims listed, and the answers per segment. A video with no claims still shows its frames.
//! Thumbnails are embedded as `data:` URIs so the page opens anywhere, and the filter is a few
//! lines of plain script: the page makes no network request.
//!
//! The layout is fixed so a screenshot can be checked: each large frame is an `<svg>` exactly
//! [`FRAME_DISPLAY_WIDTH`] CSS pixels wide (strip frames [`FRAME_STRIP_WIDTH`]), whose `viewBox`
//! is the displayed source size, so a box stored in displayed source pixels `(x, y)` (the
//! document's `boxes`) appears at `(x, y) * FRAME_DISPLAY_WIDTH / source width` from the frame's
//! top-left corner; boxes are stroked [`BOX_COLOR`], [`BOX_STROKE_PX`] pixels wide, centred on the
//! box edge.
//!
//! Rendering ([`render_report`]) takes the documents and failures as data, so callers that
//! assemble documents differently (per video, from segment parts) render through the same code;
//! [`build_report`] is the loader over an [`EvidenceIndex`].

mod html;
mod page;

use std::collections::HashMap;

use futures::StreamExt;
use object_store::path::Path;

use super::document::VideoDocument;
use super::store::{EvidenceIndex, OutcomeStatus, PassManifest};
use super::{Error, Result};

pub use html::render_report;

/// Width in CSS pixels of every frame drawn large (a frame that claims point at).
pub const FRAME_DISPLAY_WIDTH: u32 = 480;
/// Width in CSS pixels of every frame in a video's strip of sampled frames.
pub const FRAME_STRIP_WIDTH: u32 = 160;
/// Stroke colour of boxes.
pub const BOX_COLOR: &str = "#ff00ff";
/// Stroke width of boxes, CSS pixels.
pub const BOX_STROKE_PX: u32 = 3;
/// The `id` of the filter box.
pub const FILTER_INPUT_ID: &str = "filter";

/// How many thumbnails are read at once.
const THUMBNAIL_CONCURRENCY: usize = 16;

/// A thumbnail loaded for embedding.
#[derive(Clone, Debug)]
pub struct EmbeddedImage {
    /// MIME type.
    pub content_type: String,
    /// Encoded bytes.
    pub bytes: Vec<u8>,
}

/// A document and where it is stored.
#[derive(Clone, Debug)]
pub struct ReportVideo {
    /// The document's key; thumbnail names in the document are relative to its directory.
    pub document_key: String,
    /// The document.
    pub document: VideoDocument,
}

/// A video the pass could not index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedVideo {
    /// The video's URL.
    pub url: String,
    /// The stage that failed (`probe`, `decode`, `model`, `job`, ...).
    pub stage: String,
    /// Why, in words.
    pub reason: String,
}

/// What the page says about the pass behind it, from its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassSummary {
    /// The pass's id.
    pub pass_id: String,
    /// The model id and revision.
    pub model: String,
    /// The task's name.
    pub task_name: String,
    /// Videos indexed in the pass.
    pub indexed: usize,
    /// Videos found already indexed.
    pub skipped: usize,
    /// Videos that failed.
    pub failed: usize,
}

/// Everything a report shows.
#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    /// The pass the failures come from; `None` when the index has no manifest yet.
    pub pass: Option<PassSummary>,
    /// Every video document.
    pub videos: Vec<ReportVideo>,
    /// The videos that failed, with stage and reason.
    pub failed: Vec<FailedVideo>,
    /// Thumbnails by full key ([`thumbnail_full_key`]); frames without one are drawn grey so
    /// their boxes still show.
    pub images: HashMap<String, EmbeddedImage>,
}

impl ReportInput {
    /// Takes the pass summary and the failed videos from a manifest.
    pub fn with_manifest(mut self, manifest: &PassManifest) -> Self {
        self.pass = Some(PassSummary {
            pass_id: manifest.pass_id.clone(),
            model: format!("{} @ {}", manifest.model.id, manifest.model.revision),
            task_name: manifest.task_name.clone(),
            indexed: manifest.indexed,
            skipped: manifest.skipped,
            failed: manifest.failed,
        });
        self.failed = failed_videos(manifest);
        self
    }
}

/// The failed videos of a manifest, in its order.
pub fn failed_videos(manifest: &PassManifest) -> Vec<FailedVideo> {
    manifest
        .videos
        .iter()
        .filter_map(|video| match &video.status {
            OutcomeStatus::Failed { stage, reason } => Some(FailedVideo {
                url: video.url.clone(),
                stage: stage.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// Full key of a thumbnail given its document key and relative name.
pub fn thumbnail_full_key(document_key: &str, relative: &str) -> String {
    EvidenceIndex::thumbnail_key(&Path::from(document_key), relative).to_string()
}

/// Reads the thumbnails of every sampled frame of a document; a missing one is logged and left
/// out (the frame is then drawn grey).
async fn load_thumbnails(
    index: &EvidenceIndex,
    document_key: &Path,
    document: &VideoDocument,
) -> Vec<(String, EmbeddedImage)> {
    let wanted: Vec<(Path, String)> = document
        .segments
        .iter()
        .flat_map(|segment| &segment.frames)
        .filter_map(|frame| frame.thumbnail.as_ref())
        .map(|thumbnail| {
            (
                EvidenceIndex::thumbnail_key(document_key, &thumbnail.key),
                thumbnail.content_type.clone(),
            )
        })
        .collect();
    futures::stream::iter(wanted)
        .map(|(key, content_type)| async move {
            match index.get_bytes(&key).await {
                Ok(bytes) => Some((
                    key.to_string(),
                    EmbeddedImage {
                        content_type,
                        bytes: bytes.to_vec(),
                    },
                )),
                Err(error) => {
                    tracing::warn!(%key, %error, "thumbnail missing from report");
                    None
                }
            }
        })
        .buffered(THUMBNAIL_CONCURRENCY)
        .filter_map(|loaded| async move { loaded })
        .collect()
        .await
}

/// Loads every document of an index, the thumbnails of their frames and the latest manifest
/// (for the failed videos; an index without one shows none).
pub async fn load_report(index: &EvidenceIndex) -> Result<ReportInput> {
    let mut input = ReportInput::default();
    match index.read_manifest().await {
        Ok(manifest) => input = input.with_manifest(&manifest),
        Err(Error::Store(object_store::Error::NotFound { .. })) => {
            tracing::info!("index has no manifest: the report lists no failed videos")
        }
        Err(error) => return Err(error),
    }
    for key in index.list_documents().await? {
        let document = index.read_document(&key).await?;
        input
            .images
            .extend(load_thumbnails(index, &key, &document).await);
        input.videos.push(ReportVideo {
            document_key: key.to_string(),
            document,
        });
    }
    Ok(input)
}

/// Loads an index ([`load_report`]) and renders its report.
pub async fn build_report(index: &EvidenceIndex) -> Result<String> {
    let input = load_report(index).await?;
    Ok(tokio::task::spawn_blocking(move || render_report(&input)).await?)
}

/// What a written report holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportCounts {
    /// Videos shown.
    pub videos: usize,
    /// Failed videos listed.
    pub failed: usize,
}

/// Builds the report and writes it to a local file.
pub async fn write_report(index: &EvidenceIndex, out: &std::path::Path) -> Result<ReportCounts> {
    let input = load_report(index).await?;
    let counts = ReportCounts {
        videos: input.videos.len(),
        failed: input.failed.len(),
    };
    let html = tokio::task::spawn_blocking(move || render_report(&input)).await?;
    tokio::fs::write(out, html).await?;
    Ok(counts)
}
