//! `vidx search`: what a search asks ([`SearchQuery`]) and what it returns ([`SearchHit`]).
//!
//! The engine is the tantivy index in [`super::search_index`]: claims are matched on their object
//! name, answers on their answer and reasoning text, ranked by BM25. Filters narrow the hits to a
//! video (its id or URL), a question, a time range (claims whose time, answers whose segment,
//! overlaps it) and flagged answers.

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// Where a hit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    /// A claim whose object name matched.
    Claim,
    /// An answer whose answer or reasoning text matched.
    Answer,
}

impl HitKind {
    /// `claim` or `answer`, as stored in the index.
    pub fn label(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Answer => "answer",
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Claim or answer.
    pub kind: HitKind,
    /// BM25 relevance: higher is better (0 when the query is filters only).
    pub score: f32,
    /// The video's URL.
    pub video_url: String,
    /// The video's id.
    pub video_id: String,
    /// Segment index.
    pub segment_index: i64,
    /// Question id.
    pub question_id: String,
    /// Object name, for claims.
    pub object: Option<String>,
    /// Absolute time: the claim's time, or the segment start for answers.
    pub time_s: Option<f64>,
    /// End of the segment, for answers.
    pub end_s: Option<f64>,
    /// First box in displayed source pixels, for claims.
    #[serde(rename = "box")]
    pub bounding_box: Option<[f64; 4]>,
    /// The answer text.
    pub answer: Option<String>,
    /// Thumbnail key of the claim's frame.
    pub frame_key: Option<String>,
    /// Whether the answer flagged the segment (moderation).
    pub flagged: Option<bool>,
    /// The claim's self-verified confidence in `[0, 1]`, when the pass verified claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
}

/// What to search for: words (tantivy query syntax) and filters.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchQuery {
    /// Words to find in object names, answers and reasoning; every word must match. Quotes make a
    /// phrase, a leading `-` excludes a word. Blank: every row that passes the filters.
    pub text: String,
    /// Only this video: its id or its URL.
    pub video: Option<String>,
    /// Only this question id.
    pub question: Option<String>,
    /// Only claims at or after this time, answers whose segment ends at or after it (seconds).
    pub from_s: Option<f64>,
    /// Only claims at or before this time, answers whose segment starts at or before it.
    pub to_s: Option<f64>,
    /// Only rows whose answer flagged (true) or did not flag (false) its segment.
    pub flagged: Option<bool>,
    /// Most hits returned.
    pub limit: usize,
}

/// Most hits one query may ask for.
pub const MAX_LIMIT: usize = 100_000;

impl SearchQuery {
    /// A query for `text` with no filters and a limit of 50.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            video: None,
            question: None,
            from_s: None,
            to_s: None,
            flagged: None,
            limit: 50,
        }
    }

    /// Checks the limit and the time range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidQuery(reason));
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return invalid(format!("limit {} is not in 1..={MAX_LIMIT}", self.limit));
        }
        for (name, value) in [("from", self.from_s), ("to", self.to_s)] {
            if let Some(value) = value
                && (!value.is_finite() || value < 0.0)
            {
                return invalid(format!(
                    "time range {name} {value} is not a finite number of seconds >= 0"
                ));
            }
        }
        if let (Some(from), Some(to)) = (self.from_s, self.to_s)
            && from > to
        {
            return invalid(format!("time range starts at {from}s, after its end {to}s"));
        }
        Ok(())
    }
}

/// Formats hits as lines for a terminal: video, segment, time, object and box, answer.
pub fn format_hits(hits: &[SearchHit]) -> String {
    let mut text = String::new();
    for hit in hits {
        let time = match (hit.time_s, hit.end_s) {
            (Some(start), Some(end)) => format!("{start:.1}-{end:.1}s"),
            (Some(time), None) => format!("{time:.1}s"),
            _ => "-".to_owned(),
        };
        let what = match (&hit.object, hit.bounding_box) {
            (Some(object), Some([x1, y1, x2, y2])) => {
                format!("{object} [{x1:.0},{y1:.0},{x2:.0},{y2:.0}]")
            }
            (Some(object), None) => object.clone(),
            _ => "answer".to_owned(),
        };
        let what = match hit.confidence {
            Some(confidence) => format!("{what} ({:.0}%)", confidence * 100.0),
            None => what,
        };
        let answer = hit.answer.as_deref().unwrap_or("").replace('\n', " ");
        let answer: String = answer.chars().take(100).collect();
        text.push_str(&format!(
            "{}\t{}\t{time}\t{what}\t{answer}\n",
            hit.video_url, hit.segment_index
        ));
    }
    text
}
