//! The corpus-level tables: one row per claim and one row per answer, in JSON Lines and Parquet.
//!
//! The claims table is what DuckDB, pandas or Spark read to ask "where does a red car appear";
//! the answers table carries each answer's text, reasoning and moderation verdict (answers without
//! claims, such as a plain "no", only appear there). Column lists are in `SCHEMA.md`; the Parquet
//! files use plain (flat) columns, dictionary encoding and no compression, and are written with the
//! `parquet` crate's low-level writer so that no Arrow build is needed ([`super::parquet_file`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::document::VideoDocument;
use super::{Error, Result};

/// One claim: an object seen in a box at a time, with the answer it supports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// The video's id (directory name in the index).
    pub video_id: String,
    /// The video's URL.
    pub video_url: String,
    /// Key of the video's evidence document.
    pub document_key: String,
    /// Model id.
    pub model_id: String,
    /// Model revision.
    pub model_revision: String,
    /// QuestionPlan hash.
    pub task_hash: String,
    /// Segment index.
    pub segment_index: i64,
    /// Question id.
    pub question_id: String,
    /// Question kind label (`index`, `free_form`, `multiple_choice`, `moderation`).
    pub question_kind: String,
    /// Question text.
    pub question: String,
    /// Plain answer text.
    pub answer: Option<String>,
    /// Position of the claim within its answer.
    pub claim_index: i64,
    /// Object name.
    pub object: String,
    /// `think`, `answer` or `outside`.
    pub section: String,
    /// Absolute time, seconds.
    pub time_s: Option<f64>,
    /// Time as the model wrote it, segment-relative.
    pub relative_time_s: Option<f64>,
    /// Nearest sampled frame's index within the segment.
    pub frame_index: Option<i64>,
    /// Nearest sampled frame's absolute time.
    pub frame_time_s: Option<f64>,
    /// Full key of that frame's thumbnail, when stored.
    pub frame_key: Option<String>,
    /// First box, displayed source pixels.
    pub box_x1: Option<f64>,
    /// First box top.
    pub box_y1: Option<f64>,
    /// First box right.
    pub box_x2: Option<f64>,
    /// First box bottom.
    pub box_y2: Option<f64>,
    /// Number of boxes.
    pub box_count: i64,
    /// All boxes as JSON `[[x1,y1,x2,y2],...]`, displayed source pixels.
    pub boxes: String,
    /// The claim's self-verified confidence in `[0, 1]`, when the pass verified claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Moderation category of the question.
    pub category: Option<String>,
    /// Whether the answer flagged the segment.
    pub flagged: Option<bool>,
    /// Category severity.
    pub severity: Option<String>,
}

/// One answer to one question over one segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerRow {
    /// The video's id.
    pub video_id: String,
    /// The video's URL.
    pub video_url: String,
    /// Key of the video's evidence document.
    pub document_key: String,
    /// Model id.
    pub model_id: String,
    /// Model revision.
    pub model_revision: String,
    /// QuestionPlan hash.
    pub task_hash: String,
    /// Segment index.
    pub segment_index: i64,
    /// Segment start, absolute seconds.
    pub segment_start_s: f64,
    /// Segment end, absolute seconds.
    pub segment_end_s: f64,
    /// Question id.
    pub question_id: String,
    /// Question kind label.
    pub question_kind: String,
    /// Question text.
    pub question: String,
    /// Plain answer text.
    pub answer: Option<String>,
    /// Reasoning text, tags kept.
    pub think: Option<String>,
    /// Number of claims.
    pub claim_count: i64,
    /// Number of dropped fragments.
    pub dropped_count: i64,
    /// Moderation category of the question.
    pub category: Option<String>,
    /// Whether the answer flagged the segment.
    pub flagged: Option<bool>,
    /// Category severity.
    pub severity: Option<String>,
}

fn severity_label(severity: super::task::Severity) -> String {
    match severity {
        super::task::Severity::Low => "low",
        super::task::Severity::Medium => "medium",
        super::task::Severity::High => "high",
        super::task::Severity::Critical => "critical",
    }
    .to_owned()
}

fn section_label(section: super::parse::Section) -> &'static str {
    match section {
        super::parse::Section::Think => "think",
        super::parse::Section::Answer => "answer",
        super::parse::Section::Outside => "outside",
    }
}

/// The directory of a document key (everything before the last `/`).
pub fn document_dir(document_key: &str) -> &str {
    document_key.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The table rows of one document stored under `document_key`.
pub fn rows_for_document(
    document: &VideoDocument,
    document_key: &str,
) -> (Vec<ClaimRow>, Vec<AnswerRow>) {
    let mut claims = Vec::new();
    let mut answers = Vec::new();
    let dir = document_dir(document_key);
    let task = &document.task.task;
    for segment in &document.segments {
        for record in &segment.answers {
            let question = task.question(&record.question_id);
            let question_text = question.map(|q| q.text.clone()).unwrap_or_default();
            let question_kind = question
                .map(|q| q.kind.label())
                .unwrap_or("unknown")
                .to_owned();
            let category = record.verdict.as_ref().map(|v| v.category.clone());
            let flagged = record.verdict.as_ref().map(|v| v.flagged);
            let severity = record.verdict.as_ref().map(|v| severity_label(v.severity));
            answers.push(AnswerRow {
                video_id: document.video_id.clone(),
                video_url: document.video.url.clone(),
                document_key: document_key.to_owned(),
                model_id: document.model.id.clone(),
                model_revision: document.model.revision.clone(),
                task_hash: document.task.hash.clone(),
                segment_index: i64::from(segment.index),
                segment_start_s: segment.start_s,
                segment_end_s: segment.end_s,
                question_id: record.question_id.clone(),
                question_kind: question_kind.clone(),
                question: question_text.clone(),
                answer: record.answer.clone(),
                think: record.think.clone(),
                claim_count: record.claims.len() as i64,
                dropped_count: (record.dropped.len() + record.dropped_unrecorded) as i64,
                category: category.clone(),
                flagged,
                severity: severity.clone(),
            });
            for (claim_index, claim) in record.claims.iter().enumerate() {
                let first = claim.boxes.first();
                let frame_key = claim
                    .frame_index
                    .and_then(|index| segment.frames.get(index))
                    .and_then(|frame| frame.thumbnail.as_ref())
                    .map(|thumbnail| {
                        if dir.is_empty() {
                            thumbnail.key.clone()
                        } else {
                            format!("{dir}/{}", thumbnail.key)
                        }
                    });
                let boxes: Vec<[f64; 4]> = claim.boxes.iter().map(|b| b.to_array()).collect();
                claims.push(ClaimRow {
                    video_id: document.video_id.clone(),
                    video_url: document.video.url.clone(),
                    document_key: document_key.to_owned(),
                    model_id: document.model.id.clone(),
                    model_revision: document.model.revision.clone(),
                    task_hash: document.task.hash.clone(),
                    segment_index: i64::from(segment.index),
                    question_id: record.question_id.clone(),
                    question_kind: question_kind.clone(),
                    question: question_text.clone(),
                    answer: record.answer.clone(),
                    claim_index: claim_index as i64,
                    object: claim.object.clone(),
                    section: section_label(claim.section).to_owned(),
                    time_s: claim.time_s,
                    relative_time_s: claim.relative_time_s,
                    frame_index: claim.frame_index.map(|index| index as i64),
                    frame_time_s: claim.frame_time_s,
                    frame_key,
                    box_x1: first.map(|b| b.x1),
                    box_y1: first.map(|b| b.y1),
                    box_x2: first.map(|b| b.x2),
                    box_y2: first.map(|b| b.y2),
                    box_count: claim.boxes.len() as i64,
                    boxes: serde_json::to_string(&boxes).unwrap_or_else(|_| "[]".to_owned()),
                    confidence: claim.confidence,
                    category: category.clone(),
                    flagged,
                    severity: severity.clone(),
                });
            }
        }
    }
    (claims, answers)
}

/// Encodes rows as JSON Lines.
pub fn to_jsonl<T: Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut bytes, row)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// Decodes JSON Lines; blank lines are skipped, a bad line is an error naming its number.
pub fn from_jsonl<T: DeserializeOwned>(bytes: &[u8], key: &str) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for (number, line) in bytes.split(|&byte| byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = serde_json::from_slice(line).map_err(|error| Error::Corrupt {
            key: key.to_owned(),
            reason: format!("line {}: {error}", number + 1),
        })?;
        rows.push(row);
    }
    Ok(rows)
}
