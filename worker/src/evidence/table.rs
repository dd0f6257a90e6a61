//! The corpus-level tables: one row per claim and one row per answer, in Parquet parts, one per
//! pass (`table/claims/part-{pass}.parquet`); readers see the union with the newest document per
//! video and task winning ([`newest_per_video_task`]).
//!
//! The claims table is what DuckDB, pandas or Spark read to ask "where does a red car appear";
//! the answers table carries each answer's text, reasoning and moderation verdict (answers without
//! claims, such as a plain "no", only appear there). Column lists are in `SCHEMA.md`; the Parquet
//! files use plain (flat) columns, dictionary encoding and no compression, and are written with the
//! `parquet` crate's low-level writer so that no Arrow build is needed ([`super::parquet_file`]).

use serde::{Deserialize, Serialize};

use super::document::VideoDocument;

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
    /// The pass that wrote the document (absent for documents that did not record it).
    #[serde(default)]
    pub pass_id: Option<String>,
    /// When the document was written, ms since the Unix epoch: the newest document of a video
    /// and task wins ([`newest_per_video_task`]).
    #[serde(default)]
    pub written_at_ms: Option<i64>,
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
    /// The pass that wrote the document (absent for documents that did not record it).
    #[serde(default)]
    pub pass_id: Option<String>,
    /// When the document was written, ms since the Unix epoch: the newest document of a video
    /// and task wins ([`newest_per_video_task`]).
    #[serde(default)]
    pub written_at_ms: Option<i64>,
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
                pass_id: document.pass_id.clone(),
                written_at_ms: document.written_at_ms,
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
                    pass_id: document.pass_id.clone(),
                    written_at_ms: document.written_at_ms,
                });
            }
        }
    }
    (claims, answers)
}

/// What identifies a row's document for [`newest_per_video_task`].
pub trait DocumentRow {
    /// `(video_id, task_hash)`: rows of one video and task compete.
    fn video_task(&self) -> (&str, &str);
    /// `(written_at_ms, document_key)`: the greatest wins.
    fn recency(&self) -> (Option<i64>, &str);
}

impl DocumentRow for ClaimRow {
    fn video_task(&self) -> (&str, &str) {
        (&self.video_id, &self.task_hash)
    }
    fn recency(&self) -> (Option<i64>, &str) {
        (self.written_at_ms, &self.document_key)
    }
}

impl DocumentRow for AnswerRow {
    fn video_task(&self) -> (&str, &str) {
        (&self.video_id, &self.task_hash)
    }
    fn recency(&self) -> (Option<i64>, &str) {
        (self.written_at_ms, &self.document_key)
    }
}

/// Keeps, for every video and task, the rows of its newest document only (greatest
/// `written_at_ms`, then document key): the union of every pass's table part as readers see it.
/// A pass's part holds only the documents that pass wrote, so one document version is in one
/// part. Row order is kept.
pub fn newest_per_video_task<R: DocumentRow>(rows: Vec<R>) -> Vec<R> {
    use std::collections::HashMap;
    let mut newest: HashMap<(String, String), (Option<i64>, String)> = HashMap::new();
    for row in &rows {
        let (video, task) = row.video_task();
        let (at, key) = row.recency();
        let entry = newest
            .entry((video.to_owned(), task.to_owned()))
            .or_insert_with(|| (at, key.to_owned()));
        if (at, key) > (entry.0, entry.1.as_str()) {
            *entry = (at, key.to_owned());
        }
    }
    rows.into_iter()
        .filter(|row| {
            let (video, task) = row.video_task();
            let (at, key) = row.recency();
            newest
                .get(&(video.to_owned(), task.to_owned()))
                .is_some_and(|(best_at, best_key)| *best_at == at && best_key == key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(video: &str, task: &str, key: &str, at: Option<i64>) -> AnswerRow {
        AnswerRow {
            video_id: video.into(),
            video_url: format!("s3://v/{video}.mp4"),
            document_key: key.into(),
            model_id: "m".into(),
            model_revision: "r".into(),
            task_hash: task.into(),
            segment_index: 0,
            segment_start_s: 0.0,
            segment_end_s: 1.0,
            question_id: "q".into(),
            question_kind: "free_form".into(),
            question: "?".into(),
            answer: None,
            think: None,
            claim_count: 0,
            dropped_count: 0,
            category: None,
            flagged: None,
            severity: None,
            pass_id: None,
            written_at_ms: at,
        }
    }

    #[test]
    fn the_newest_document_per_video_and_task_wins() {
        let rows = vec![
            row("a", "t1", "old", Some(1)),
            row("a", "t1", "old", Some(1)),
            row("a", "t2", "other-task", Some(1)),
            row("a", "t1", "new", Some(2)),
            row("b", "t1", "legacy", None),
        ];
        let kept: Vec<(String, String)> = newest_per_video_task(rows)
            .into_iter()
            .map(|row| (row.video_id, row.document_key))
            .collect();
        assert_eq!(
            kept,
            [
                ("a".to_owned(), "other-task".to_owned()),
                ("a".to_owned(), "new".to_owned()),
                ("b".to_owned(), "legacy".to_owned()),
            ]
        );
    }
}
