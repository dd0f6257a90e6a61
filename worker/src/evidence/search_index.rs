//! The tantivy full-text index of claims and answers behind `vidx search`.
//!
//! One tantivy document per table row ([`ClaimRow`], [`AnswerRow`]), so the index does not depend on
//! the evidence document format. Text fields (`object` for claims, `answer` and `think` for answers)
//! go through tantivy's English stemming analyser (`dogs` finds `dog`) and are ranked by BM25 with
//! per-field boosts; filter fields (video id and URL, question id, time span, flagged) are exact and
//! do not change scores. Each row's hit is stored as JSON beside it, so a query reads nothing else.
//!
//! Rows are keyed by video × task: [`SearchIndex::add_rows`] with `replace` deletes every earlier
//! row of the videos × tasks it is given before adding the new ones, so a second pass over a video
//! replaces what the first wrote. How the index travels to and from object storage is in
//! [`super::search_store`].

use std::collections::BTreeSet;
use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, RangeQuery, TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::search::{HitKind, SearchHit, SearchQuery};
use super::table::{AnswerRow, ClaimRow};
use super::{Error, Result};

/// The analyser of the text fields: tantivy's simple tokenizer, lowercasing and English stemming.
const TEXT_ANALYZER: &str = "en_stem";
/// BM25 boost of object names (claims).
const OBJECT_BOOST: f32 = 3.0;
/// BM25 boost of answer text.
const ANSWER_BOOST: f32 = 2.0;
/// BM25 boost of reasoning text.
const THINK_BOOST: f32 = 1.0;
/// Smallest memory budget tantivy accepts per indexing thread.
const MIN_MEMORY_PER_THREAD: usize = 15 << 20;

/// How an index is written: threads and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexWriterOptions {
    /// Indexing threads (each builds its own segment).
    pub threads: usize,
    /// Memory budget of all threads together, bytes; at least 15 MiB per thread.
    pub memory_bytes: usize,
}

impl Default for IndexWriterOptions {
    /// Up to 4 threads (the machine's cores) and 64 MiB each.
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 4);
        Self {
            threads,
            memory_bytes: threads * (64 << 20),
        }
    }
}

/// The index's fields.
#[derive(Clone, Copy, Debug)]
struct Fields {
    /// `video_id/task_hash`: what a newer pass replaces.
    key: Field,
    kind: Field,
    /// Video id and video URL (two values).
    video: Field,
    question: Field,
    object: Field,
    answer: Field,
    think: Field,
    start_s: Field,
    end_s: Field,
    flagged: Field,
    /// The [`SearchHit`] as JSON (stored only).
    hit: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TEXT_ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        kind: builder.add_text_field("kind", STRING),
        video: builder.add_text_field("video", STRING),
        question: builder.add_text_field("question", STRING),
        object: builder.add_text_field("object", text.clone()),
        answer: builder.add_text_field("answer", text.clone()),
        think: builder.add_text_field("think", text),
        start_s: builder.add_f64_field("start_s", INDEXED | FAST),
        end_s: builder.add_f64_field("end_s", INDEXED | FAST),
        flagged: builder.add_bool_field("flagged", INDEXED),
        hit: builder.add_text_field("hit", STORED),
    };
    (builder.build(), fields)
}

/// The replacement key of a row: its video and task.
fn row_key(video_id: &str, task_hash: &str) -> String {
    format!("{video_id}/{task_hash}")
}

/// A tantivy index of claims and answers in a local directory.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    parser: QueryParser,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("documents", &self.num_docs())
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating an empty one (and the directory) when there is none.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let directory =
            tantivy::directory::MmapDirectory::open(dir).map_err(tantivy::TantivyError::from)?;
        let (schema, _) = schema();
        Self::from_index(Index::open_or_create(directory, schema)?, dir)
    }

    /// Opens the index in `dir`; [`Error::NoSearchIndex`] when there is none.
    pub fn open(dir: &Path) -> Result<Self> {
        let missing = || Error::NoSearchIndex(dir.display().to_string());
        if !dir.is_dir() {
            return Err(missing());
        }
        let directory =
            tantivy::directory::MmapDirectory::open(dir).map_err(tantivy::TantivyError::from)?;
        if !Index::exists(&directory).map_err(tantivy::TantivyError::from)? {
            return Err(missing());
        }
        Self::from_index(Index::open(directory)?, dir)
    }

    fn from_index(index: Index, dir: &Path) -> Result<Self> {
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(Error::Corrupt {
                key: dir.display().to_string(),
                reason: "the search index was written with another schema".into(),
            });
        }
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut parser =
            QueryParser::for_index(&index, vec![fields.object, fields.answer, fields.think]);
        parser.set_conjunction_by_default();
        parser.set_field_boost(fields.object, OBJECT_BOOST);
        parser.set_field_boost(fields.answer, ANSWER_BOOST);
        parser.set_field_boost(fields.think, THINK_BOOST);
        Ok(Self {
            index,
            reader,
            fields,
            parser,
        })
    }

    /// Rows in the index (claims and answers).
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Adds rows in one commit. With `replace`, every earlier row of the same video × task as any
    /// given row is deleted first (the newest pass wins). Blocking: call it off the async runtime.
    pub fn add_rows(
        &mut self,
        claims: &[ClaimRow],
        answers: &[AnswerRow],
        replace: bool,
        options: &IndexWriterOptions,
    ) -> Result<()> {
        let threads = options.threads.max(1);
        let memory = options.memory_bytes.max(threads * MIN_MEMORY_PER_THREAD) / threads;
        let mut writer: IndexWriter = self
            .index
            .writer_with_num_threads(threads, memory * threads)?;
        if replace {
            let keys: BTreeSet<String> = claims
                .iter()
                .map(|row| row_key(&row.video_id, &row.task_hash))
                .chain(
                    answers
                        .iter()
                        .map(|row| row_key(&row.video_id, &row.task_hash)),
                )
                .collect();
            for key in &keys {
                writer.delete_term(Term::from_field_text(self.fields.key, key));
            }
        }
        for claim in claims {
            writer.add_document(self.claim_document(claim)?)?;
        }
        for answer in answers {
            writer.add_document(self.answer_document(answer)?)?;
        }
        writer.commit()?;
        writer.garbage_collect_files().wait()?;
        writer.wait_merging_threads()?;
        self.reader.reload()?;
        Ok(())
    }

    fn common(
        &self,
        kind: HitKind,
        key: String,
        video_id: &str,
        video_url: &str,
        question_id: &str,
    ) -> TantivyDocument {
        let fields = &self.fields;
        let mut document = TantivyDocument::default();
        document.add_text(fields.key, key);
        document.add_text(fields.kind, kind.label());
        document.add_text(fields.video, video_id);
        document.add_text(fields.video, video_url);
        document.add_text(fields.question, question_id);
        document
    }

    fn claim_document(&self, claim: &ClaimRow) -> Result<TantivyDocument> {
        let fields = &self.fields;
        let mut document = self.common(
            HitKind::Claim,
            row_key(&claim.video_id, &claim.task_hash),
            &claim.video_id,
            &claim.video_url,
            &claim.question_id,
        );
        document.add_text(fields.object, &claim.object);
        if let Some(time) = claim.time_s {
            document.add_f64(fields.start_s, time);
            document.add_f64(fields.end_s, time);
        }
        if let Some(flagged) = claim.flagged {
            document.add_bool(fields.flagged, flagged);
        }
        let bounding_box = match (claim.box_x1, claim.box_y1, claim.box_x2, claim.box_y2) {
            (Some(x1), Some(y1), Some(x2), Some(y2)) => Some([x1, y1, x2, y2]),
            _ => None,
        };
        let hit = SearchHit {
            kind: HitKind::Claim,
            score: 0.0,
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
        document.add_text(fields.hit, serde_json::to_string(&hit)?);
        Ok(document)
    }

    fn answer_document(&self, answer: &AnswerRow) -> Result<TantivyDocument> {
        let fields = &self.fields;
        let mut document = self.common(
            HitKind::Answer,
            row_key(&answer.video_id, &answer.task_hash),
            &answer.video_id,
            &answer.video_url,
            &answer.question_id,
        );
        if let Some(text) = &answer.answer {
            document.add_text(fields.answer, text);
        }
        if let Some(text) = &answer.think {
            document.add_text(fields.think, text);
        }
        document.add_f64(fields.start_s, answer.segment_start_s);
        document.add_f64(fields.end_s, answer.segment_end_s);
        if let Some(flagged) = answer.flagged {
            document.add_bool(fields.flagged, flagged);
        }
        let hit = SearchHit {
            kind: HitKind::Answer,
            score: 0.0,
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
        };
        document.add_text(fields.hit, serde_json::to_string(&hit)?);
        Ok(document)
    }

    /// The tantivy query for a search: the words (BM25) and the filters (no score).
    fn build_query(&self, query: &SearchQuery) -> Result<Box<dyn Query>> {
        let fields = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if query.text.trim().is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        } else {
            let parsed = self
                .parser
                .parse_query(&query.text)
                .map_err(|error| Error::InvalidQuery(format!("{:?}: {error}", query.text)))?;
            clauses.push((Occur::Must, parsed));
        }
        let mut filter = |query: Box<dyn Query>| {
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0))));
        };
        let exact = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        if let Some(video) = &query.video {
            filter(exact(fields.video, video));
        }
        if let Some(question) = &query.question {
            filter(exact(fields.question, question));
        }
        if let Some(flagged) = query.flagged {
            filter(Box::new(TermQuery::new(
                Term::from_field_bool(fields.flagged, flagged),
                IndexRecordOption::Basic,
            )));
        }
        // A row spans [start_s, end_s] (a claim: one instant); it overlaps [from, to] when it
        // starts no later than `to` and ends no earlier than `from`.
        if let Some(to) = query.to_s {
            filter(Box::new(RangeQuery::new(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Included(Term::from_field_f64(fields.start_s, to)),
            )));
        }
        if let Some(from) = query.from_s {
            filter(Box::new(RangeQuery::new(
                std::ops::Bound::Included(Term::from_field_f64(fields.end_s, from)),
                std::ops::Bound::Unbounded,
            )));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// The best `query.limit` hits, best first; equal scores in video URL, segment, time order.
    pub fn query(&self, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        query.validate()?;
        let tantivy_query = self.build_query(query)?;
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &tantivy_query,
            &TopDocs::with_limit(query.limit).order_by_score(),
        )?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let json = document
                .get_first(self.fields.hit)
                .and_then(|value| value.as_str())
                .ok_or_else(|| Error::Corrupt {
                    key: format!("search document {address:?}"),
                    reason: "no stored hit".into(),
                })?;
            let mut hit: SearchHit = serde_json::from_str(json)?;
            hit.score = score;
            hits.push(hit);
        }
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.video_url.cmp(&b.video_url))
                .then(a.segment_index.cmp(&b.segment_index))
                .then_with(|| {
                    a.time_s
                        .unwrap_or(f64::MAX)
                        .total_cmp(&b.time_s.unwrap_or(f64::MAX))
                })
        });
        Ok(hits)
    }

    /// The files of the index in `dir` that a copy needs (no lock files), sorted, with sizes.
    pub fn files(dir: &Path) -> Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_file() || name.ends_with(".lock") {
                continue;
            }
            files.push((name, entry.metadata()?.len()));
        }
        files.sort();
        Ok(files)
    }
}
