//! `vidx search`: find claims and answers matching a text query.
//!
//! The index is built in memory from the corpus tables: claims are matched on their object name,
//! answers on their answer and reasoning text. Words are lowercased, split on anything that is not a
//! letter or digit, and a plural `s` is dropped (`dogs` finds `dog`). Every query word must match
//! (AND). Posting lists are sorted by row, so a query costs the length of its rarest word's list
//! times a binary search in the others; building is one pass over the rows.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Result;
use super::store::EvidenceIndex;
use super::table::{AnswerRow, ClaimRow};

/// Where a hit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    /// A claim whose object name matched.
    Claim,
    /// An answer whose answer or reasoning text matched.
    Answer,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Claim or answer.
    pub kind: HitKind,
    /// Higher is better: object matches weigh 3, answers 2, reasoning 1, per query word.
    pub score: u32,
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

const OBJECT_WEIGHT: u8 = 3;
const ANSWER_WEIGHT: u8 = 2;
const THINK_WEIGHT: u8 = 1;

/// An in-memory inverted index over the claims and answers tables.
#[derive(Debug, Default)]
pub struct SearchIndex {
    claims: Vec<ClaimRow>,
    answers: Vec<AnswerRow>,
    /// Word to sorted (row, weight) pairs; rows `0..claims.len()` are claims, the rest answers.
    postings: HashMap<String, Vec<(u32, u8)>>,
}

/// Splits text into normalised words.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(normalize_word)
}

fn normalize_word(word: &str) -> String {
    let mut word = word.to_lowercase();
    if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        word.pop();
    }
    word
}

impl SearchIndex {
    /// Builds the index.
    pub fn build(claims: Vec<ClaimRow>, answers: Vec<AnswerRow>) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u8)>> = HashMap::new();
        let mut add = |row: u32, text: &str, weight: u8| {
            for word in words(text) {
                let list = postings.entry(word).or_default();
                match list.last_mut() {
                    Some(last) if last.0 == row => last.1 = last.1.max(weight),
                    _ => list.push((row, weight)),
                }
            }
        };
        for (row, claim) in claims.iter().enumerate() {
            add(row as u32, &claim.object, OBJECT_WEIGHT);
        }
        let offset = claims.len();
        for (row, answer) in answers.iter().enumerate() {
            let row = (offset + row) as u32;
            if let Some(text) = &answer.answer {
                add(row, text, ANSWER_WEIGHT);
            }
            if let Some(text) = &answer.think {
                add(row, text, THINK_WEIGHT);
            }
        }
        Self {
            claims,
            answers,
            postings,
        }
    }

    /// Loads the tables of an index and builds the search index off the async runtime.
    pub async fn load(index: &EvidenceIndex) -> Result<Self> {
        let claims = index.read_claims().await?;
        let answers = index.read_answers().await?;
        Ok(tokio::task::spawn_blocking(move || Self::build(claims, answers)).await?)
    }

    /// Rows indexed: claims and answers.
    pub fn len(&self) -> (usize, usize) {
        (self.claims.len(), self.answers.len())
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.answers.is_empty()
    }

    /// The best `limit` hits for a query, best first; ties in video URL, segment, time order.
    pub fn search(&self, query: &str, limit: usize) -> Vec<SearchHit> {
        let mut query_words: Vec<String> = words(query).collect();
        query_words.sort();
        query_words.dedup();
        if query_words.is_empty() {
            return Vec::new();
        }
        let mut lists = Vec::with_capacity(query_words.len());
        for word in &query_words {
            match self.postings.get(word) {
                Some(list) => lists.push(list.as_slice()),
                None => return Vec::new(),
            }
        }
        lists.sort_by_key(|list| list.len());
        let (rarest, others) = lists.split_first().expect("at least one query word");
        let mut matches: Vec<(u32, u32)> = Vec::new();
        'rows: for &(row, weight) in *rarest {
            let mut score = u32::from(weight);
            for list in others {
                match list.binary_search_by_key(&row, |posting| posting.0) {
                    Ok(position) => score += u32::from(list[position].1),
                    Err(_) => continue 'rows,
                }
            }
            matches.push((row, score));
        }
        // Order the (row, score) pairs before building hits, so only `limit` rows are cloned.
        matches.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| self.compare_rows(a.0 as usize, b.0 as usize))
        });
        matches.truncate(limit);
        matches
            .into_iter()
            .map(|(row, score)| self.hit(row as usize, score))
            .collect()
    }

    /// Video URL, segment and time of a row (answers sort at their segment start).
    fn order_key(&self, row: usize) -> (&str, i64, f64) {
        match self.claims.get(row) {
            Some(claim) => (
                &claim.video_url,
                claim.segment_index,
                claim.time_s.unwrap_or(f64::MAX),
            ),
            None => {
                let answer = &self.answers[row - self.claims.len()];
                (
                    &answer.video_url,
                    answer.segment_index,
                    answer.segment_start_s,
                )
            }
        }
    }

    fn compare_rows(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let (url_a, segment_a, time_a) = self.order_key(a);
        let (url_b, segment_b, time_b) = self.order_key(b);
        url_a
            .cmp(url_b)
            .then(segment_a.cmp(&segment_b))
            .then(time_a.total_cmp(&time_b))
            .then(a.cmp(&b))
    }

    fn hit(&self, row: usize, score: u32) -> SearchHit {
        if let Some(claim) = self.claims.get(row) {
            let bounding_box = match (claim.box_x1, claim.box_y1, claim.box_x2, claim.box_y2) {
                (Some(x1), Some(y1), Some(x2), Some(y2)) => Some([x1, y1, x2, y2]),
                _ => None,
            };
            return SearchHit {
                kind: HitKind::Claim,
                score,
                video_url: claim.video_url.clone(),
                video_id: claim.video_id.clone(),
                segment_index: claim.segment_index,
                question_id: claim.question_id.clone(),
                object: Some(claim.object.clone()),
                time_s: claim.time_s,
                end_s: None,
                bounding_box,
                answer: claim.answer.clone(),
                frame_key: claim.frame_key.clone(),
                flagged: claim.flagged,
                confidence: claim.confidence,
            };
        }
        let answer = &self.answers[row - self.claims.len()];
        SearchHit {
            kind: HitKind::Answer,
            score,
            video_url: answer.video_url.clone(),
            video_id: answer.video_id.clone(),
            segment_index: answer.segment_index,
            question_id: answer.question_id.clone(),
            object: None,
            time_s: Some(answer.segment_start_s),
            end_s: Some(answer.segment_end_s),
            bounding_box: None,
            answer: answer.answer.clone(),
            frame_key: None,
            flagged: answer.flagged,
            confidence: None,
        }
    }
}

/// Formats hits as lines for a terminal: kind, video, time, object and box, answer.
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
