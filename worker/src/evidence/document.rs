//! The per-video evidence document (schema `vidx.evidence/v1`) and the builder the worker fills in
//! as the model answers.
//!
//! One document holds everything learnt about one video under one model and one task: the video's
//! identity and probe facts, the geometry that maps model pixels back to the source, per segment the
//! sampled frames, and per question the raw text, think, answer, claims in source pixels and absolute
//! time, and every fragment the parser dropped. Field-by-field documentation is in `SCHEMA.md`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mapping::{
    AbsoluteSpan, FrameGeometry, MappedClaim, SegmentClock, map_claims, map_span,
};
use super::parse::{DroppedFragment, ParseContext, Repair, parse_output};
use super::task::{QuestionPlan, Severity, Verdict, hex, verdict, verdict_of};
use super::{Error, Result};

/// Schema tag written in every document.
pub const SCHEMA_VERSION: &str = "vidx.evidence/v1";

/// A claim as stored: mapped to the source video.
pub type ClaimRecord = MappedClaim;

/// Which bytes were indexed: a video is the same video while its URL, size and version tag agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoIdentity {
    /// Object URL, e.g. `s3://bucket/videos/a.mp4`.
    pub url: String,
    /// Object size in bytes.
    pub size_bytes: u64,
    /// The store's ETag, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A content checksum (`sha256:<hex>`), when computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl VideoIdentity {
    /// The version tag the video id is built from: the ETag if known, else the checksum, else none
    /// (then URL and size alone identify the video).
    pub fn version_tag(&self) -> String {
        match (&self.etag, &self.checksum) {
            (Some(etag), _) => format!("etag:{}", etag.trim_matches('"')),
            (None, Some(checksum)) => format!("checksum:{checksum}"),
            (None, None) => "none".to_owned(),
        }
    }

    /// 32 hex characters of SHA-256 over URL, size and version tag: the video's directory name.
    pub fn video_id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"vidx.video/v1\n");
        hasher.update(self.url.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.size_bytes.to_string().as_bytes());
        hasher.update(b"\n");
        hasher.update(self.version_tag().as_bytes());
        hex(&hasher.finalize()[..16])
    }
}

/// What probing the video found, as stored in the document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeFacts {
    /// The URI that was probed.
    pub uri: String,
    /// Container format name, e.g. `mov,mp4,m4a,3gp,3g2,mj2`.
    pub container: String,
    /// Video codec name, e.g. `h264`.
    pub codec: String,
    /// Coded width in pixels.
    pub width: u32,
    /// Coded height in pixels.
    pub height: u32,
    /// Clockwise rotation for display, degrees (0, 90, 180, 270).
    pub rotation: i32,
    /// Average frame rate.
    pub fps: f64,
    /// Duration in seconds.
    pub duration_s: f64,
    /// Whether there is an audio stream.
    pub has_audio: bool,
}

/// The model that answered, and where it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id, e.g. `marinero4972/Open-o3-Video`.
    pub id: String,
    /// Weights revision (commit or tag).
    pub revision: String,
    /// The device the model ran on, `cpu` or `cuda:N`; absent in documents written before it
    /// was recorded, and in a pass manifest, whose workers may differ. Not part of the run id:
    /// the same model and task on another device is the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The weights' and activations' dtype, `bf16`, `f16` or `f32`; absent like `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

/// One sampled frame of a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Index within the segment, from 0 (the prompt calls it `Frame index+1`).
    pub index: usize,
    /// Absolute time, seconds.
    pub time_s: f64,
    /// Thumbnail key relative to the document's directory (`frames/s0003_f002.jpg`), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
}

/// A stored thumbnail of a sampled frame, upright (displayed orientation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// Key relative to the document's directory.
    pub key: String,
    /// MIME type, `image/jpeg` or `image/png`.
    pub content_type: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The answer to one question over one segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    /// The question's id in the task.
    pub question_id: String,
    /// The raw text the model generated.
    pub raw_text: String,
    /// The reasoning, tags kept.
    pub think: Option<String>,
    /// The answer as plain text.
    pub answer: Option<String>,
    /// Claims mapped to the source video.
    pub claims: Vec<ClaimRecord>,
    /// Time spans written outside claims, absolute.
    pub time_spans: Vec<AbsoluteSpan>,
    /// Single times written outside claims and spans, absolute seconds.
    pub time_points_s: Vec<f64>,
    /// Fragments the parser dropped, with reasons.
    pub dropped: Vec<DroppedFragment>,
    /// Dropped fragments beyond those recorded.
    pub dropped_unrecorded: usize,
    /// What the parser repaired.
    pub repairs: Vec<Repair>,
    /// The moderation verdict, for moderation questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// One segment: its place in the video, its sampled frames and the answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Index in the video, from 0.
    pub index: u32,
    /// Absolute start, seconds.
    pub start_s: f64,
    /// Absolute end, seconds.
    pub end_s: f64,
    /// The sampled frames, in time order.
    pub frames: Vec<FrameRecord>,
    /// One record per question answered.
    pub answers: Vec<AnswerRecord>,
}

/// The verdict of one moderation category over the whole video.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    /// Category name.
    pub category: String,
    /// Category severity.
    pub severity: Severity,
    /// Whether any segment was flagged.
    pub flagged: bool,
    /// Indexes of the flagged segments.
    pub flagged_segments: Vec<u32>,
    /// The flagged segments' time ranges, absolute seconds, in time order (absent in documents
    /// written before it was recorded).
    #[serde(default)]
    pub flagged_spans: Vec<FlaggedSpan>,
}

/// A time range of a video that a moderation category flagged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlaggedSpan {
    /// The segment's index.
    pub segment_index: u32,
    /// Absolute start, seconds.
    pub start_s: f64,
    /// Absolute end, seconds.
    pub end_s: f64,
}

/// The task as stored: the questions asked and its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Hex SHA-256 of the task ([`QuestionPlan::hash`]).
    pub hash: String,
    /// The task.
    #[serde(flatten)]
    pub task: QuestionPlan,
}

/// Everything learnt about one video under one model and task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoDocument {
    /// Always [`SCHEMA_VERSION`].
    pub schema: String,
    /// The video's identity.
    pub video: VideoIdentity,
    /// [`VideoIdentity::video_id`], stored for readers that do not hash.
    pub video_id: String,
    /// Probe facts.
    pub probe: ProbeFacts,
    /// The model.
    pub model: ModelInfo,
    /// The task.
    pub task: TaskRecord,
    /// Coded size, rotation and model-input size.
    pub geometry: FrameGeometry,
    /// Segments in time order.
    pub segments: Vec<SegmentRecord>,
    /// Per moderation category, the video-level verdict, most severe flagged first.
    pub moderation: Vec<CategorySummary>,
    /// The pass that wrote the document; absent in documents written before it was recorded.
    /// A later pass that finds the document skips the video and says so in its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_id: Option<String>,
    /// When the document was written, milliseconds since the Unix epoch: among documents of one
    /// video and task, the newest wins in the tables (absent in older documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at_ms: Option<i64>,
}

impl VideoDocument {
    /// Whether any moderation category flagged the video.
    pub fn is_flagged(&self) -> bool {
        self.moderation.iter().any(|summary| summary.flagged)
    }

    /// The most severe flagged category's severity.
    pub fn worst_flag(&self) -> Option<Severity> {
        self.moderation
            .iter()
            .filter(|summary| summary.flagged)
            .map(|summary| summary.severity)
            .max()
    }

    /// Total claims over all segments and questions.
    pub fn claim_count(&self) -> usize {
        self.segments
            .iter()
            .flat_map(|segment| &segment.answers)
            .map(|answer| answer.claims.len())
            .sum()
    }
}

/// Fills in a [`VideoDocument`] as segments are sampled and questions answered.
#[derive(Debug)]
pub struct VideoDocumentBuilder {
    document: VideoDocument,
    clocks: Vec<SegmentClock>,
}

/// What the builder needs to start a document.
#[derive(Clone, Debug)]
pub struct DocumentHeader {
    /// The video's identity.
    pub video: VideoIdentity,
    /// Probe facts.
    pub probe: ProbeFacts,
    /// The model.
    pub model: ModelInfo,
    /// The task.
    pub task: QuestionPlan,
    /// Coded size, rotation and model-input size.
    pub geometry: FrameGeometry,
}

impl VideoDocumentBuilder {
    /// Starts a document with no segments.
    pub fn new(header: DocumentHeader) -> Self {
        let DocumentHeader {
            video,
            probe,
            model,
            task,
            geometry,
        } = header;
        let video_id = video.video_id();
        let task = TaskRecord {
            hash: task.hash(),
            task,
        };
        let document = VideoDocument {
            schema: SCHEMA_VERSION.to_owned(),
            video,
            video_id,
            probe,
            model,
            task,
            geometry,
            segments: Vec::new(),
            moderation: Vec::new(),
            pass_id: None,
            written_at_ms: None,
        };
        Self {
            document,
            clocks: Vec::new(),
        }
    }

    /// Records which pass writes the document, and when.
    pub fn written_by(&mut self, pass_id: impl Into<String>, written_at_ms: i64) {
        self.document.pass_id = Some(pass_id.into());
        self.document.written_at_ms = Some(written_at_ms);
    }

    /// Adds a segment; segments must come in increasing index order.
    pub fn add_segment(&mut self, clock: SegmentClock) -> Result<()> {
        if self
            .clocks
            .last()
            .is_some_and(|last| last.index >= clock.index)
        {
            return Err(Error::InvalidDocument(format!(
                "segment {} added out of order",
                clock.index
            )));
        }
        let frames = clock
            .frame_times_s
            .iter()
            .enumerate()
            .map(|(index, time_s)| FrameRecord {
                index,
                time_s: *time_s,
                thumbnail: None,
            })
            .collect();
        self.document.segments.push(SegmentRecord {
            index: clock.index,
            start_s: clock.start_s,
            end_s: clock.end_s,
            frames,
            answers: Vec::new(),
        });
        self.clocks.push(clock);
        Ok(())
    }

    fn position(&self, segment_index: u32) -> Result<usize> {
        self.clocks
            .binary_search_by_key(&segment_index, |clock| clock.index)
            .map_err(|_| Error::InvalidDocument(format!("segment {segment_index} was not added")))
    }

    /// Records the thumbnail stored for a sampled frame.
    pub fn set_thumbnail(
        &mut self,
        segment_index: u32,
        frame_index: usize,
        thumbnail: Thumbnail,
    ) -> Result<()> {
        let position = self.position(segment_index)?;
        let frame = self.document.segments[position]
            .frames
            .get_mut(frame_index)
            .ok_or_else(|| {
                Error::InvalidDocument(format!(
                    "segment {segment_index} has no frame {frame_index}"
                ))
            })?;
        frame.thumbnail = Some(thumbnail);
        Ok(())
    }

    /// Parses the model's raw answer to a question over a segment, maps it to the source video,
    /// decides the moderation verdict if the question has a category, and records it.
    pub fn record_answer(
        &mut self,
        segment_index: u32,
        question_id: &str,
        raw_text: &str,
    ) -> Result<&AnswerRecord> {
        let position = self.position(segment_index)?;
        let task = &self.document.task.task;
        let question = task.question(question_id).ok_or_else(|| {
            Error::InvalidDocument(format!("question {question_id:?} is not in the task"))
        })?;
        let clock = &self.clocks[position];
        let geometry = &self.document.geometry;
        let context = ParseContext::new(
            geometry.model_width,
            geometry.model_height,
            Some(clock.duration_s()),
        );
        let parsed = parse_output(raw_text, &context);
        let verdict = task
            .category_for(question)
            .map(|category| verdict(category, &parsed));
        let record = AnswerRecord {
            question_id: question_id.to_owned(),
            raw_text: raw_text.to_owned(),
            think: parsed.think.clone(),
            answer: parsed.answer.clone(),
            claims: map_claims(&parsed, geometry, clock),
            time_spans: parsed
                .time_spans
                .iter()
                .map(|span| map_span(span, clock))
                .collect(),
            time_points_s: parsed
                .time_points
                .iter()
                .map(|point| clock.to_absolute(point.time_s))
                .collect(),
            dropped: parsed.dropped,
            dropped_unrecorded: parsed.dropped_unrecorded,
            repairs: parsed.repairs,
            verdict,
        };
        let answers = &mut self.document.segments[position].answers;
        answers.retain(|answer| answer.question_id != question_id);
        answers.push(record);
        Ok(answers.last().expect("just pushed"))
    }

    /// The answers recorded for a segment so far, in the order recorded.
    pub fn answers(&self, segment_index: u32) -> Result<&[AnswerRecord]> {
        let position = self.position(segment_index)?;
        Ok(&self.document.segments[position].answers)
    }

    /// Records the self-verified confidence of each claim of an answer (`None` for a claim that
    /// could not be verified, in claim order) and decides its moderation verdict again, now that
    /// the category's `min_confidence` can act on them.
    pub fn set_confidences(
        &mut self,
        segment_index: u32,
        question_id: &str,
        confidences: &[Option<f32>],
    ) -> Result<()> {
        let position = self.position(segment_index)?;
        let task = &self.document.task.task;
        let record = self.document.segments[position]
            .answers
            .iter_mut()
            .find(|answer| answer.question_id == question_id)
            .ok_or_else(|| {
                Error::InvalidDocument(format!(
                    "segment {segment_index} has no answer to {question_id:?}"
                ))
            })?;
        if confidences.len() != record.claims.len() {
            return Err(Error::InvalidDocument(format!(
                "{} confidences for {} claims",
                confidences.len(),
                record.claims.len()
            )));
        }
        for (claim, confidence) in record.claims.iter_mut().zip(confidences) {
            claim.confidence = confidence.map(|value| value.clamp(0.0, 1.0));
        }
        let category = task
            .question(question_id)
            .and_then(|question| task.category_for(question));
        if let Some(category) = category {
            let grounded: Vec<Option<f32>> = record
                .claims
                .iter()
                .filter(|claim| claim.is_grounded())
                .map(|claim| claim.confidence)
                .collect();
            record.verdict = Some(verdict_of(category, record.answer.as_deref(), &grounded));
        }
        Ok(())
    }

    /// Finishes the document: computes the video-level moderation summary.
    pub fn finish(mut self) -> VideoDocument {
        self.document.moderation =
            moderation_summaries(&self.document.task.task, &self.document.segments);
        self.document
    }
}

/// The video-level verdict per moderation category of a task over the given segments: flagged
/// when any segment's answer is, with the flagged segments and their time ranges; most severe
/// flagged category first.
pub fn moderation_summaries(
    task: &QuestionPlan,
    segments: &[SegmentRecord],
) -> Vec<CategorySummary> {
    let mut summaries = Vec::new();
    if let Some(policy) = &task.policy {
        for category in &policy.categories {
            let flagged: Vec<&SegmentRecord> = segments
                .iter()
                .filter(|segment| {
                    segment.answers.iter().any(|answer| {
                        answer
                            .verdict
                            .as_ref()
                            .is_some_and(|v| v.category == category.name && v.flagged)
                    })
                })
                .collect();
            summaries.push(CategorySummary {
                category: category.name.clone(),
                severity: category.severity,
                flagged: !flagged.is_empty(),
                flagged_segments: flagged.iter().map(|segment| segment.index).collect(),
                flagged_spans: flagged
                    .iter()
                    .map(|segment| FlaggedSpan {
                        segment_index: segment.index,
                        start_s: segment.start_s,
                        end_s: segment.end_s,
                    })
                    .collect(),
            });
        }
    }
    summaries.sort_by(|a, b| b.flagged.cmp(&a.flagged).then(b.severity.cmp(&a.severity)));
    summaries
}

/// Puts a split video's document together from its segments' parts (any order): every segment
/// in time order, answers per segment as each part recorded them (claims already in absolute
/// time), moderation rolled up over the whole video. The parts must describe the same video,
/// model and task, and cover segments `0..segment_count` exactly once each.
pub fn assemble_video(mut parts: Vec<VideoDocument>, segment_count: u32) -> Result<VideoDocument> {
    let Some(first) = parts.first() else {
        return Err(Error::InvalidDocument(
            "no segment parts to assemble".into(),
        ));
    };
    let (video, model, task_hash) = (
        first.video.clone(),
        first.model.clone(),
        first.task.hash.clone(),
    );
    for part in &parts {
        if part.video != video
            || part.task.hash != task_hash
            || part.model.id != model.id
            || part.model.revision != model.revision
        {
            return Err(Error::InvalidDocument(format!(
                "part of {} does not match the video, model and task of {}",
                part.video.url, video.url
            )));
        }
    }
    let mut segments: Vec<SegmentRecord> = parts
        .iter_mut()
        .flat_map(|part| std::mem::take(&mut part.segments))
        .collect();
    segments.sort_by_key(|segment| segment.index);
    let indexes: Vec<u32> = segments.iter().map(|segment| segment.index).collect();
    if indexes != (0..segment_count).collect::<Vec<u32>>() {
        return Err(Error::InvalidDocument(format!(
            "parts of {} hold segments {indexes:?}, not 0..{segment_count}",
            video.url
        )));
    }
    let mut document = parts.swap_remove(0);
    document.moderation = moderation_summaries(&document.task.task, &segments);
    document.segments = segments;
    Ok(document)
}
