//! `vidx search` over 100,000 synthetic claims: the right rows come back, with video, time and box.

mod evidence_support;

use std::sync::Arc;

use evidence_support::{document, model};
use object_store::memory::InMemory;
use object_store::path::Path;
use vidx_worker::evidence::search::{HitKind, format_hits};
use vidx_worker::evidence::store::OutcomeStatus;
use vidx_worker::evidence::{
    AnswerRow, ClaimRow, EvidenceIndex, PassManifest, QuestionPlan, SearchIndex,
};

const COLORS: [&str; 7] = ["red", "blue", "green", "black", "white", "yellow", "grey"];
const NOUNS: [&str; 11] = [
    "car", "dog", "man", "woman", "bicycle", "sign", "tree", "bus", "cat", "bottle", "phone",
];
const CLAIMS: usize = 100_000;

fn claim_row(row: usize) -> ClaimRow {
    let video = row / 1000;
    let segment = (row / 100) % 10;
    let time = segment as f64 * 30.0 + (row % 100) as f64 * 0.3;
    let x = (row % 400) as f64;
    ClaimRow {
        video_id: format!("{video:032x}"),
        video_url: format!("s3://corpus/video-{video:03}.mp4"),
        document_key: format!("index/videos/{video:032x}/run/evidence.json"),
        model_id: "m".into(),
        model_revision: "r".into(),
        task_hash: "t".into(),
        segment_index: segment as i64,
        question_id: "index".into(),
        question_kind: "index".into(),
        question: "Describe".into(),
        answer: Some("Things happen.".into()),
        claim_index: (row % 100) as i64,
        object: format!("{} {}", COLORS[row % 7], NOUNS[row % 11]),
        section: "think".into(),
        time_s: Some(time),
        relative_time_s: Some((row % 100) as f64 * 0.3),
        frame_index: Some((row % 15) as i64),
        frame_time_s: Some(time),
        frame_key: None,
        box_x1: Some(x),
        box_y1: Some(10.0),
        box_x2: Some(x + 50.0),
        box_y2: Some(60.0),
        box_count: 1,
        boxes: format!("[[{x},10,{},60]]", x + 50.0),
        confidence: Some((row % 10) as f32 / 10.0),
        category: None,
        flagged: None,
        severity: None,
    }
}

fn answer_row(row: usize) -> AnswerRow {
    let video = row / 10;
    let segment = row % 10;
    let answer = if row.is_multiple_of(50) {
        "A firetruck parks by the station."
    } else {
        "People walk in a park."
    };
    let think = if row.is_multiple_of(30) {
        "I see an umbrella near the door."
    } else {
        "Nothing unusual."
    };
    AnswerRow {
        video_id: format!("{video:032x}"),
        video_url: format!("s3://corpus/video-{video:03}.mp4"),
        document_key: String::new(),
        model_id: "m".into(),
        model_revision: "r".into(),
        task_hash: "t".into(),
        segment_index: segment as i64,
        segment_start_s: segment as f64 * 30.0,
        segment_end_s: segment as f64 * 30.0 + 30.0,
        question_id: "index".into(),
        question_kind: "index".into(),
        question: "Describe".into(),
        answer: Some(answer.into()),
        think: Some(think.into()),
        claim_count: 100,
        dropped_count: 0,
        category: None,
        flagged: None,
        severity: None,
    }
}

#[test]
fn hundred_thousand_claims() {
    let claims: Vec<ClaimRow> = (0..CLAIMS).map(claim_row).collect();
    let answers: Vec<AnswerRow> = (0..1000).map(answer_row).collect();
    let index = SearchIndex::build(claims, answers);
    assert_eq!(index.len(), (CLAIMS, 1000));

    // "red car": rows with row % 7 == 0 and row % 11 == 0, i.e. multiples of 77.
    let expected: Vec<usize> = (0..CLAIMS).filter(|row| row % 77 == 0).collect();
    let hits = index.search("Red CARS", usize::MAX);
    assert_eq!(hits.len(), expected.len());
    assert!(
        hits.iter()
            .all(|hit| hit.kind == HitKind::Claim && hit.object.as_deref() == Some("red car"))
    );
    assert!(hits.iter().all(|hit| hit.score == 6));
    // Ordered by video, segment, time: the first hit is row 0, the second row 77.
    let first = claim_row(0);
    assert_eq!(hits[0].video_url, first.video_url);
    assert_eq!(hits[0].time_s, first.time_s);
    assert_eq!(hits[0].bounding_box, Some([0.0, 10.0, 50.0, 60.0]));
    assert_eq!(hits[0].confidence, first.confidence);
    let second = claim_row(77);
    assert_eq!(
        (hits[1].segment_index, hits[1].time_s),
        (second.segment_index, second.time_s)
    );
    assert_eq!(hits[1].bounding_box, Some([77.0, 10.0, 127.0, 60.0]));
    assert_eq!(hits[1].confidence, Some(0.7));
    let mut urls: Vec<&str> = hits.iter().map(|hit| hit.video_url.as_str()).collect();
    let unsorted = urls.clone();
    urls.sort();
    assert_eq!(urls, unsorted);

    // One word: every dog.
    assert_eq!(
        index.search("dog", usize::MAX).len(),
        (0..CLAIMS).filter(|row| row % 11 == 1).count()
    );
    // Limit.
    assert_eq!(index.search("dog", 10).len(), 10);
    // Answers and reasoning.
    let firetrucks = index.search("firetruck", usize::MAX);
    assert_eq!(firetrucks.len(), 20);
    assert!(
        firetrucks
            .iter()
            .all(|hit| hit.kind == HitKind::Answer && hit.score == 2)
    );
    assert_eq!(
        (firetrucks[0].time_s, firetrucks[0].end_s),
        (Some(0.0), Some(30.0))
    );
    let umbrellas = index.search("umbrella", usize::MAX);
    assert_eq!(
        umbrellas.len(),
        (0..1000).filter(|row| row % 30 == 0).count()
    );
    assert!(umbrellas.iter().all(|hit| hit.score == 1));
    // Words that appear in no row, or an empty query.
    assert!(index.search("red submarine", 10).is_empty());
    assert!(index.search("  ,, ", 10).is_empty());

    let text = format_hits(&hits[..2]);
    assert_eq!(text.lines().count(), 2);
    assert!(
        text.starts_with(
            "s3://corpus/video-000.mp4\t0\t0.0s\tred car [0,10,50,60] (0%)\tThings happen."
        ),
        "{text}"
    );
}

#[tokio::test]
async fn search_reads_the_index_tables() -> anyhow::Result<()> {
    let index = EvidenceIndex::new(Arc::new(InMemory::new()), Path::from("index"));
    let task = QuestionPlan::index();
    let raw = "<think>The <obj>red car</obj><box>[300,100,400,200]</box>at<t>12.0</t>s passes a \
               <obj>dog</obj><box>[10,10,50,50]</box>at<t>3</t>s.</think><answer>A car passes a dog.</answer>";
    let document = document("s3://videos/a.mp4", task.clone(), &[(1, "index", raw)]);
    let key = index.write_document(&document).await?;
    let mut manifest = PassManifest::new("p", model(), &task);
    manifest.record(
        "s3://videos/a.mp4",
        OutcomeStatus::Indexed {
            document_key: key.to_string(),
        },
    );
    index.finish_pass(manifest).await?;

    let search = SearchIndex::load(&index).await?;
    let hits = search.search("car", 10);
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].kind, HitKind::Claim);
    assert_eq!(hits[0].object.as_deref(), Some("red car"));
    assert_eq!(hits[0].time_s, Some(42.0));
    assert_eq!(
        hits[0].bounding_box.map(|b| b.map(f64::round)),
        Some([857.0, 286.0, 1143.0, 571.0])
    );
    assert_eq!(hits[1].kind, HitKind::Answer);
    assert_eq!(hits[1].answer.as_deref(), Some("A car passes a dog."));
    Ok(())
}

/// Prints build and query times on 100,000 claims; run with
/// `cargo test -p vidx-worker --release --test evidence_search -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn search_timing() {
    let claims: Vec<ClaimRow> = (0..CLAIMS).map(claim_row).collect();
    let answers: Vec<AnswerRow> = (0..1000).map(answer_row).collect();
    let started = std::time::Instant::now();
    let index = SearchIndex::build(claims, answers);
    eprintln!(
        "build over {CLAIMS} claims: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    for query in ["red car", "dog", "firetruck", "umbrella door"] {
        let started = std::time::Instant::now();
        let rounds = 100;
        let mut found = 0;
        for _ in 0..rounds {
            found = index.search(query, 50).len();
        }
        let per_query = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        eprintln!("query {query:?}: {per_query:.3} ms, {found} hits shown");
    }
}
