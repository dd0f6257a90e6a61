//! `vidx bench search`: the tantivy search index over a generated corpus of `--claims` claim rows
//! (default 1,000,000) and a tenth as many answers. Prints the build time, the index size, p50 and
//! p99 latency of a mixed query set (words, phrases of two words, rare words, words with a video,
//! time or question filter, filters alone), and in the same run the same queries answered by a
//! linear scan of the rows, with the ratio of the two medians.
//!
//! Rows come from a seeded generator (splitmix64), so two runs index the same corpus.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vidx_worker::evidence::search_index::{IndexWriterOptions, SearchIndex};
use vidx_worker::evidence::{AnswerRow, ClaimRow, SearchQuery};

use crate::cli::SearchBenchArgs;

/// Rows generated and added per commit.
const CHUNK: usize = 100_000;
/// Claims per video.
const CLAIMS_PER_VIDEO: usize = 100;
/// Segments per video (30 s each).
const SEGMENTS: usize = 10;
/// The target the brief sets for the median query.
const TARGET_P50: Duration = Duration::from_millis(20);

const ADJECTIVES: [&str; 24] = [
    "red", "blue", "green", "black", "white", "yellow", "grey", "small", "large", "old", "new",
    "wet", "parked", "moving", "broken", "shiny", "wooden", "metal", "striped", "tall", "short",
    "open", "closed", "bright",
];
/// Common nouns first: a claim picks among the first ones far more often (a skewed corpus).
const NOUNS: [&str; 48] = [
    "car",
    "person",
    "dog",
    "tree",
    "bicycle",
    "bus",
    "sign",
    "cat",
    "bottle",
    "phone",
    "bag",
    "chair",
    "table",
    "door",
    "window",
    "truck",
    "motorcycle",
    "umbrella",
    "bench",
    "lamp",
    "laptop",
    "cup",
    "knife",
    "ball",
    "horse",
    "boat",
    "kite",
    "clock",
    "book",
    "helmet",
    "guitar",
    "bird",
    "camera",
    "train",
    "fence",
    "flag",
    "drone",
    "ladder",
    "bridge",
    "tractor",
    "scooter",
    "violin",
    "statue",
    "fountain",
    "zebra",
    "giraffe",
    "canoe",
    "harp",
];
const VERBS: [&str; 8] = [
    "walks", "waits", "passes", "stands", "turns", "stops", "crosses", "appears",
];

/// A validated `bench search` run.
#[derive(Debug, Clone)]
pub struct SearchBenchConfig {
    /// Claim rows.
    pub claims: usize,
    /// Answer rows.
    pub answers: usize,
    /// Queries timed on the index.
    pub queries: usize,
    /// Queries timed on the linear scan.
    pub reference_queries: usize,
    /// Hits per query.
    pub limit: usize,
    /// Where the index is written (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// Indexing threads.
    pub threads: usize,
}

impl SearchBenchArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<SearchBenchConfig> {
        if self.claims == 0 || self.claims > 20_000_000 {
            bail!("--claims must be in 1..=20000000");
        }
        if self.queries == 0 || self.queries > 1_000_000 {
            bail!("--queries must be in 1..=1000000");
        }
        if self.reference_queries == 0 || self.reference_queries > 10_000 {
            bail!("--reference-queries must be in 1..=10000");
        }
        if self.limit == 0 || self.limit > 10_000 {
            bail!("--limit must be in 1..=10000");
        }
        let threads = self
            .threads
            .unwrap_or_else(|| IndexWriterOptions::default().threads);
        if threads == 0 || threads > 64 {
            bail!("--threads must be in 1..=64");
        }
        Ok(SearchBenchConfig {
            claims: self.claims,
            answers: self.answers.unwrap_or(self.claims / 10),
            queries: self.queries,
            reference_queries: self.reference_queries,
            limit: self.limit,
            dir: self.dir,
            threads,
        })
    }
}

/// splitmix64: a small seeded generator, enough to make a corpus and a query mix.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    /// Skewed towards 0: the smaller of two draws, twice.
    fn skewed(&mut self, bound: usize) -> usize {
        let a = self.below(bound).min(self.below(bound));
        a.min(self.below(bound))
    }
}

/// What the linear scan keeps of a row: its words and the filter fields.
#[derive(Debug, Clone)]
struct ScanRow {
    words: Vec<String>,
    video_url: String,
    question: &'static str,
    start_s: Option<f64>,
    end_s: Option<f64>,
    flagged: Option<bool>,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn video_url(video: usize) -> String {
    format!("s3://corpus/ch{:02}/clip-{video:06}.mp4", video % 50)
}

fn claim(rng: &mut Rng, row: usize) -> ClaimRow {
    let video = row / CLAIMS_PER_VIDEO;
    let segment = (row % CLAIMS_PER_VIDEO) * SEGMENTS / CLAIMS_PER_VIDEO;
    let moderation = video.is_multiple_of(10);
    let noun = NOUNS[rng.skewed(NOUNS.len())];
    let object = if rng.below(4) == 0 {
        format!(
            "{} {noun} near the {}",
            ADJECTIVES[rng.below(ADJECTIVES.len())],
            NOUNS[rng.skewed(NOUNS.len())]
        )
    } else {
        format!("{} {noun}", ADJECTIVES[rng.below(ADJECTIVES.len())])
    };
    let time = segment as f64 * 30.0 + rng.below(3000) as f64 / 100.0;
    let x = rng.below(1200) as f64;
    let flagged = moderation.then(|| noun == "knife" || rng.below(20) == 0);
    ClaimRow {
        video_id: format!("{video:032x}"),
        video_url: video_url(video),
        document_key: format!("index/videos/{video:032x}/run/evidence.json"),
        model_id: "bench".into(),
        model_revision: "r".into(),
        task_hash: "t".into(),
        segment_index: segment as i64,
        question_id: if moderation { "weapons" } else { "index" }.into(),
        question_kind: if moderation { "moderation" } else { "index" }.into(),
        question: "Describe what happens.".into(),
        answer: Some(format!("A {noun} {}.", VERBS[rng.below(VERBS.len())])),
        claim_index: (row % CLAIMS_PER_VIDEO) as i64,
        object,
        section: "think".into(),
        time_s: Some(time),
        relative_time_s: Some(time - segment as f64 * 30.0),
        frame_index: Some(rng.below(15) as i64),
        frame_time_s: Some(time),
        frame_key: None,
        box_x1: Some(x),
        box_y1: Some(40.0),
        box_x2: Some(x + 60.0),
        box_y2: Some(120.0),
        box_count: 1,
        boxes: format!("[[{x},40,{},120]]", x + 60.0),
        category: moderation.then(|| "weapons".to_owned()),
        flagged,
        severity: moderation.then(|| "high".to_owned()),
        pass_id: None,
        written_at_ms: None,
        confidence: None,
    }
}

fn answer(rng: &mut Rng, row: usize, videos: usize) -> AnswerRow {
    let video = row % videos;
    let segment = (row / videos) % SEGMENTS;
    let moderation = video.is_multiple_of(10);
    let noun = NOUNS[rng.skewed(NOUNS.len())];
    let other = NOUNS[rng.skewed(NOUNS.len())];
    AnswerRow {
        video_id: format!("{video:032x}"),
        video_url: video_url(video),
        document_key: String::new(),
        model_id: "bench".into(),
        model_revision: "r".into(),
        task_hash: "t".into(),
        segment_index: segment as i64,
        segment_start_s: segment as f64 * 30.0,
        segment_end_s: segment as f64 * 30.0 + 30.0,
        question_id: if moderation { "weapons" } else { "index" }.into(),
        question_kind: if moderation { "moderation" } else { "index" }.into(),
        question: "Describe what happens.".into(),
        answer: Some(format!(
            "A {} {noun} {} past a {other}.",
            ADJECTIVES[rng.below(ADJECTIVES.len())],
            VERBS[rng.below(VERBS.len())]
        )),
        think: Some(format!(
            "I see a {noun} and a {other} in the frames; the {noun} {}.",
            VERBS[rng.below(VERBS.len())]
        )),
        claim_count: 3,
        dropped_count: 0,
        category: moderation.then(|| "weapons".to_owned()),
        flagged: moderation.then(|| noun == "knife"),
        severity: moderation.then(|| "high".to_owned()),
        pass_id: None,
        written_at_ms: None,
    }
}

fn scan_claim(row: &ClaimRow) -> ScanRow {
    ScanRow {
        words: words(&row.object),
        video_url: row.video_url.clone(),
        question: if row.question_id == "weapons" {
            "weapons"
        } else {
            "index"
        },
        start_s: row.time_s,
        end_s: row.time_s,
        flagged: row.flagged,
    }
}

fn scan_answer(row: &AnswerRow) -> ScanRow {
    let mut text = row.answer.clone().unwrap_or_default();
    text.push(' ');
    text.push_str(row.think.as_deref().unwrap_or(""));
    ScanRow {
        words: words(&text),
        video_url: row.video_url.clone(),
        question: if row.question_id == "weapons" {
            "weapons"
        } else {
            "index"
        },
        start_s: Some(row.segment_start_s),
        end_s: Some(row.segment_end_s),
        flagged: row.flagged,
    }
}

/// The linear-scan reference: every row checked against the filters and every query word (a
/// word matches itself or its plural), scored by how many times the words occur, best `limit`.
fn scan(rows: &[ScanRow], query: &SearchQuery) -> usize {
    let wanted = words(&query.text);
    let mut scored: Vec<(usize, usize)> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        if query
            .video
            .as_ref()
            .is_some_and(|video| *video != row.video_url)
            || query.question.as_ref().is_some_and(|q| q != row.question)
            || query
                .flagged
                .is_some_and(|flagged| row.flagged != Some(flagged))
            || query
                .to_s
                .is_some_and(|to| row.start_s.is_none_or(|start| start > to))
            || query
                .from_s
                .is_some_and(|from| row.end_s.is_none_or(|end| end < from))
        {
            continue;
        }
        let mut score = 0;
        let mut all = true;
        for word in &wanted {
            let count = row
                .words
                .iter()
                .filter(|have| *have == word || have.strip_suffix('s') == Some(word.as_str()))
                .count();
            if count == 0 {
                all = false;
                break;
            }
            score += count;
        }
        if all {
            scored.push((score, index));
        }
    }
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(query.limit);
    scored.len()
}

/// The mixed query set: each kind in turn, its words drawn from the vocabulary.
fn queries(count: usize, videos: usize, limit: usize) -> Vec<(&'static str, SearchQuery)> {
    let mut rng = Rng(0x5eed_9e4e);
    (0..count)
        .map(|index| {
            let noun = NOUNS[rng.skewed(NOUNS.len())];
            let adjective = ADJECTIVES[rng.below(ADJECTIVES.len())];
            let base = SearchQuery {
                limit,
                ..SearchQuery::new(noun)
            };
            let (kind, query) = match index % 7 {
                0 => ("word", base),
                1 => (
                    "two words",
                    SearchQuery {
                        text: format!("{adjective} {noun}"),
                        ..base
                    },
                ),
                2 => (
                    "rare word",
                    SearchQuery {
                        text: NOUNS[NOUNS.len() - 1 - rng.below(6)].to_owned(),
                        ..base
                    },
                ),
                3 => (
                    "word + video",
                    SearchQuery {
                        video: Some(video_url(rng.below(videos))),
                        ..base
                    },
                ),
                4 => {
                    let from = rng.below(270) as f64;
                    (
                        "word + time",
                        SearchQuery {
                            from_s: Some(from),
                            to_s: Some(from + 10.0),
                            ..base
                        },
                    )
                }
                5 => (
                    "words + question",
                    SearchQuery {
                        text: format!("{noun} {}", VERBS[rng.below(VERBS.len())]),
                        question: Some("weapons".into()),
                        ..base
                    },
                ),
                _ => (
                    "flagged only",
                    SearchQuery {
                        text: String::new(),
                        flagged: Some(true),
                        question: Some("weapons".into()),
                        ..base
                    },
                ),
            };
            (kind, query)
        })
        .collect()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs the benchmark (blocking: call it off the async runtime); returns the report.
pub fn run(config: &SearchBenchConfig) -> Result<String> {
    let temporary;
    let dir = match &config.dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not empty: give an empty or new directory",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            temporary = tempfile::tempdir().context("creating a temporary directory")?;
            temporary.path().join("search")
        }
    };
    let videos = config.claims.div_ceil(CLAIMS_PER_VIDEO);
    let options = IndexWriterOptions {
        threads: config.threads,
        memory_bytes: config.threads * (128 << 20),
    };
    let mut rng = Rng(0xb05e_a2c4);
    let mut scan_rows = Vec::with_capacity(config.claims + config.answers);
    let mut index = SearchIndex::create(&dir)?;
    let mut build = Duration::ZERO;
    let mut generate = Duration::ZERO;
    let total = config.claims.max(config.answers);
    let mut start = 0;
    while start < total {
        let end = (start + CHUNK).min(total);
        let started = Instant::now();
        let claims: Vec<ClaimRow> = (start..end.min(config.claims))
            .map(|row| claim(&mut rng, row))
            .collect();
        let answers: Vec<AnswerRow> = (start.min(config.answers)..end.min(config.answers))
            .map(|row| answer(&mut rng, row, videos))
            .collect();
        scan_rows.extend(claims.iter().map(scan_claim));
        scan_rows.extend(answers.iter().map(scan_answer));
        generate += started.elapsed();
        let started = Instant::now();
        index.add_rows(&claims, &answers, false, &options)?;
        build += started.elapsed();
        start = end;
    }
    let files = SearchIndex::files(&dir)?;
    let size: u64 = files.iter().map(|(_, size)| size).sum();
    drop(index);
    let index = SearchIndex::open(&dir)?;
    let documents = index.num_docs();

    let mixed = queries(config.queries, videos, config.limit);
    let mut latencies = Vec::with_capacity(mixed.len());
    let mut per_kind: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut hits = 0usize;
    for (kind, query) in &mixed {
        let started = Instant::now();
        hits += index.query(query)?.len();
        let elapsed = started.elapsed();
        latencies.push(elapsed);
        match per_kind.iter_mut().find(|(name, _)| name == kind) {
            Some((_, list)) => list.push(elapsed),
            None => per_kind.push((kind, vec![elapsed])),
        }
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);

    let mut reference = Vec::with_capacity(config.reference_queries);
    let mut reference_hits = 0usize;
    for (_, query) in mixed.iter().take(config.reference_queries) {
        let started = Instant::now();
        reference_hits += scan(&scan_rows, query);
        reference.push(started.elapsed());
    }
    reference.sort();
    let reference_p50 = percentile(&reference, 0.5);
    let reference_p99 = percentile(&reference, 0.99);

    let mut report = format!(
        "search bench: {} claims + {} answers over {videos} videos ({documents} rows indexed), \
         {} indexing threads\n",
        config.claims, config.answers, config.threads
    );
    report.push_str(&format!(
        "build: {:.1} s ({:.0} rows/s; generating the rows took {:.1} s more), index {:.1} MiB \
         in {} files ({:.0} bytes/row) at {}\n",
        build.as_secs_f64(),
        documents as f64 / build.as_secs_f64().max(1e-9),
        generate.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0),
        files.len(),
        size as f64 / documents.max(1) as f64,
        dir.display()
    ));
    report.push_str(&format!(
        "tantivy: {} mixed queries, limit {}: p50 {:.2} ms, p99 {:.2} ms, {hits} hits ({})\n",
        latencies.len(),
        config.limit,
        ms(p50),
        ms(p99),
        if p50 < TARGET_P50 {
            "p50 target < 20 ms met"
        } else {
            "p50 target < 20 ms MISSED"
        }
    ));
    for (kind, mut list) in per_kind {
        list.sort();
        report.push_str(&format!(
            "  {kind:>16}: p50 {:.2} ms, p99 {:.2} ms ({} queries)\n",
            ms(percentile(&list, 0.5)),
            ms(percentile(&list, 0.99)),
            list.len()
        ));
    }
    report.push_str(&format!(
        "linear scan of the same rows in memory (reference): {} queries: p50 {:.2} ms, p99 {:.2} \
         ms, {reference_hits} hits; tantivy p50 is {:.0}x faster\n",
        reference.len(),
        ms(reference_p50),
        ms(reference_p99),
        reference_p50.as_secs_f64() / p50.as_secs_f64().max(1e-9)
    ));
    Ok(report)
}
