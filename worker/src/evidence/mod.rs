//! Evidence: from the model's raw text to a searchable index in object storage.
//!
//! The flow for one video: [`task`] says what to ask (a [`QuestionPlan`]); the model answers each question per segment;
//! [`parse`] turns each raw answer into claims (object, boxes, time) and records what it dropped;
//! [`mapping`] takes boxes and times back to the source video; [`document`] assembles the per-video
//! JSON document; [`store`] writes it (and sampled-frame thumbnails) atomically under a key that is a
//! pure function of video, model and task (a split video's segments write parts that one
//! designated job assembles into the video's document). At the end of a pass [`table`] and
//! [`store`] write the pass's parts of the corpus-level claims and answers tables (Parquet), the
//! pass manifest, and a new generation of the tantivy search index ([`search_index`], stored by
//! [`search_store`]). [`search`]
//! and [`report`] read the index back. The layout is documented in `SCHEMA.md` beside this file.
//!
//! A worker indexing one video:
//!
//! ```text
//! let index = EvidenceIndex::from_url("s3://bucket/index")?;
//! let key = index.document_key(&video, &model_info, &plan.hash());
//! if index.is_indexed(&key).await? { /* skipped: done, no byte of the video read */ }
//! // `model` is a `vidx_model::OpenO3Video`; `plan` the pass's `QuestionPlan`
//! let mut builder = VideoDocumentBuilder::new(DocumentHeader { video, probe, model, task, geometry });
//! for segment in segments {
//!     builder.add_segment(SegmentClock::new(index, start_s, end_s, frame_times_s)?)?;
//!     // prompt frames as clock.frame_label(i) = "Frame i+1 at Xs" (segment-relative X)
//!     let thumbnail = index.put_thumbnail(&key, segment, frame, encoded_png).await?;
//!     builder.set_thumbnail(segment, frame, thumbnail)?;
//!     // one vision pass and one prefill, then every question from the shared prefix
//!     let prompts: Vec<String> = plan.questions.iter().map(Question::prompt_text).collect();
//!     let answers = model.ask_all(&frames, OPEN_O3_GROUNDED_SYSTEM_PROMPT, duration_s, &prompts, &params)?;
//!     for (question, answer) in plan.questions.iter().zip(answers) {
//!         builder.record_answer(segment, &question.id, &answer.text)?;
//!     }
//! }
//! index.write_document(&builder.finish()).await?;          // last: its presence means done
//! // at pass end, on one node:
//! index.finish_pass(manifest).await?;                       // tables + manifest
//! ```

pub mod document;
pub mod mapping;
pub mod parquet_file;
pub use vidx_evidence_parser as parse;
pub mod report;
pub mod search;
pub mod search_index;
pub mod search_store;
pub mod store;
pub mod table;
pub mod task;

pub use document::{
    AnswerRecord, CategorySummary, ClaimRecord, FlaggedSpan, FrameRecord, ModelInfo, ProbeFacts,
    SCHEMA_VERSION, SegmentRecord, VideoDocument, VideoDocumentBuilder, VideoIdentity,
    assemble_video,
};
pub use mapping::{FrameGeometry, MappedClaim, Rotation, SegmentClock};
pub use parse::{
    BoundingBox, Claim, DropReason, DroppedFragment, ParseContext, ParsedOutput, parse_output,
};
pub use search::{SearchHit, SearchQuery};
pub use search_index::{IndexWriterOptions, SearchIndex};
pub use store::{EvidenceIndex, PassManifest, VideoOutcome};
pub use table::{AnswerRow, ClaimRow};
pub use task::{
    Category, ModerationPolicy, Question, QuestionKind, QuestionPlan, Severity, Verdict,
};

/// Errors of the evidence module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A moderation policy failed to parse or validate.
    #[error("invalid moderation policy: {0}")]
    InvalidPolicy(String),
    /// A task was built from bad questions.
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// Sizes, rotation or segment times that cannot describe a video.
    #[error("invalid geometry: {0}")]
    InvalidGeometry(String),
    /// A document was assembled wrongly (unknown segment or question).
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// An index URL could not be understood.
    #[error("invalid index url {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored object does not follow the schema.
    #[error("corrupt object {key}: {reason}")]
    Corrupt {
        /// The object key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// JSON encoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Parquet encoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Local file I/O failed (the report file).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The search engine (tantivy) failed.
    #[error("search index: {0}")]
    Search(#[from] tantivy::TantivyError),
    /// No search index has been built yet (no pass was finalized).
    #[error("no search index at {0}: finalize a pass first (`vidx index` or `vidx finalize`)")]
    NoSearchIndex(String),
    /// A search query that cannot run: bad syntax, limit or time range.
    #[error("invalid search: {0}")]
    InvalidQuery(String),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result of the evidence module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
