//! `vidx search` over the tantivy index: rows from real documents plus 20,000 generated claims;
//! BM25 ranking, the filters, clear errors; finalization building the index and a second pass
//! replacing a video's rows; the same through the S3 test server, with the reader's local cache.

mod evidence_support;

use std::path::Path as FsPath;
use std::sync::Arc;

use evidence_support::{MODERATION_POLICY, document, model};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use vidx_testkit::s3::S3Server;
use vidx_worker::evidence::search::{HitKind, format_hits};
use vidx_worker::evidence::search_store::{SEARCH_FILES, SearchPointer};
use vidx_worker::evidence::store::OutcomeStatus;
use vidx_worker::evidence::table::rows_for_document;
use vidx_worker::evidence::{
    AnswerRow, ClaimRow, Error, EvidenceIndex, IndexWriterOptions, ModerationPolicy, PassManifest,
    QuestionPlan, SearchIndex, SearchQuery,
};

const COLORS: [&str; 7] = ["red", "blue", "green", "black", "white", "yellow", "grey"];
const NOUNS: [&str; 11] = [
    "car", "dog", "man", "woman", "bicycle", "sign", "tree", "bus", "cat", "bottle", "phone",
];
const CLAIMS: usize = 20_000;

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
        pass_id: None,
        written_at_ms: None,
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
    let think = if row.is_multiple_of(7) {
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
        pass_id: None,
        written_at_ms: None,
    }
}

/// Rows of real documents: an indexed street video and a moderated video with one flagged segment.
fn document_rows() -> (Vec<ClaimRow>, Vec<AnswerRow>) {
    let street = document(
        "s3://videos/street.mp4",
        QuestionPlan::index(),
        &[
            (
                0,
                "index",
                "<think>A <obj>dog</obj><box>[10,10,50,50]</box>at<t>3</t>s sniffs a \
                 <obj>dog on a leash beside the old oak tree</obj><box>[60,10,90,50]</box>at<t>5</t>s \
                 while a <obj>zebra</obj><box>[100,100,200,200]</box>at<t>8</t>s looks on.</think>\
                 <answer>Two dogs in a street.</answer>",
            ),
            (
                1,
                "index",
                "<think>The <obj>zebra</obj><box>[300,100,400,200]</box>at<t>2.0</t>s is gone; I \
                 think I heard a dog.</think><answer>An empty street.</answer>",
            ),
        ],
    );
    let policy = ModerationPolicy::from_yaml(MODERATION_POLICY).unwrap();
    let moderated = document(
        "s3://videos/bar.mp4",
        QuestionPlan::moderation(policy).unwrap(),
        &[
            (
                0,
                "weapons",
                "<think>A <obj>knife</obj><box>[70,35,210,182]</box>at<t>9.0</t>s.</think><answer>Yes</answer>",
            ),
            (
                1,
                "weapons",
                "<think>A <obj>cup</obj><box>[10,10,40,40]</box>at<t>2</t>s.</think><answer>No</answer>",
            ),
        ],
    );
    let (mut claims, mut answers) = rows_for_document(&street, "index/videos/street/evidence.json");
    let (more_claims, more_answers) =
        rows_for_document(&moderated, "index/videos/bar/evidence.json");
    claims.extend(more_claims);
    answers.extend(more_answers);
    (claims, answers)
}

fn query(text: &str) -> SearchQuery {
    SearchQuery {
        limit: 100_000,
        ..SearchQuery::new(text)
    }
}

fn options() -> IndexWriterOptions {
    IndexWriterOptions {
        threads: 2,
        memory_bytes: 64 << 20,
    }
}

#[test]
fn ranking_filters_and_errors_over_real_rows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    assert!(matches!(
        SearchIndex::open(dir.path()),
        Err(Error::NoSearchIndex(_))
    ));
    let (mut claims, mut answers) = document_rows();
    let real_claims = claims.len();
    assert_eq!(real_claims, 6, "{claims:#?}");
    claims.extend((0..CLAIMS).map(claim_row));
    answers.extend((0..1000).map(answer_row));
    let mut index = SearchIndex::create(dir.path())?;
    index.add_rows(&claims, &answers, false, &options())?;
    assert_eq!(index.num_docs(), (claims.len() + answers.len()) as u64);

    // "red car": generated rows with row % 7 == 0 and row % 11 == 0 (stemming: CARS finds car).
    let hits = index.query(&query("Red CARS"))?;
    assert_eq!(hits.len(), (0..CLAIMS).filter(|row| row % 77 == 0).count());
    assert!(
        hits.iter()
            .all(|hit| hit.kind == HitKind::Claim && hit.object.as_deref() == Some("red car"))
    );
    // Equal scores come in video, segment, time order: row 0 first, then row 77.
    assert_eq!(hits[0].video_url, "s3://corpus/video-000.mp4");
    assert_eq!(hits[0].time_s, Some(0.0));
    assert_eq!(hits[0].bounding_box, Some([0.0, 10.0, 50.0, 60.0]));
    assert_eq!(hits[1].bounding_box, Some([77.0, 10.0, 127.0, 60.0]));
    // Confidence travels from the claim row into the hit.
    assert_eq!(hits[0].confidence, Some(0.0));
    assert_eq!(hits[1].confidence, Some(0.7));
    assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));
    assert!(hits[0].score > 0.0);

    // BM25: a word found in an object name (boost 3) and in reasoning (boost 1); the short object
    // name beats the long one; the answer that says it (boost 2) beats the one that only thinks it.
    let zebras = index.query(&query("zebra"))?;
    assert_eq!(
        zebras.len(),
        4,
        "two claims and the reasoning of two answers"
    );
    let street_dogs = index.query(&SearchQuery {
        video: Some("s3://videos/street.mp4".into()),
        ..query("dog")
    })?;
    assert_eq!(street_dogs.len(), 4, "{street_dogs:#?}");
    let rank = |kind: HitKind, object: Option<&str>, answer: &str| {
        street_dogs
            .iter()
            .position(|hit| {
                hit.kind == kind
                    && hit.object.as_deref() == object
                    && hit.answer.as_deref() == Some(answer)
            })
            .unwrap()
    };
    let answer = "Two dogs in a street.";
    assert!(
        rank(HitKind::Claim, Some("dog"), answer)
            < rank(
                HitKind::Claim,
                Some("dog on a leash beside the old oak tree"),
                answer
            ),
        "{street_dogs:#?}"
    );
    assert!(
        rank(HitKind::Answer, None, answer) < rank(HitKind::Answer, None, "An empty street."),
        "{street_dogs:#?}"
    );
    assert!(
        street_dogs
            .windows(2)
            .all(|pair| pair[0].score > pair[1].score)
    );
    // Every word must match: no row has both.
    assert!(index.query(&query("zebra firetruck"))?.is_empty());
    // A phrase, and an excluded word.
    // A phrase (the claim, and the reasoning that names it), and an excluded word.
    assert_eq!(index.query(&query("\"oak tree\""))?.len(), 2);
    assert!(index.query(&query("\"tree oak\""))?.is_empty());
    assert_eq!(
        index.query(&query("dog -leash"))?.len(),
        index.query(&query("dog"))?.len() - 2
    );

    // Filters: video by id or by URL, question, time range, flagged; limit.
    let dogs = index.query(&query("dog"))?.len();
    assert_eq!(
        dogs,
        (0..CLAIMS).filter(|row| row % 11 == 1).count() + street_dogs.len()
    );
    let first_video = format!("{:032x}", 0);
    let by_id = index.query(&SearchQuery {
        video: Some(first_video.clone()),
        ..query("dog")
    })?;
    assert_eq!(by_id.len(), (0..1000).filter(|row| row % 11 == 1).count());
    assert!(by_id.iter().all(|hit| hit.video_id == first_video));
    let by_url = index.query(&SearchQuery {
        video: Some("s3://corpus/video-000.mp4".into()),
        ..query("dog")
    })?;
    assert_eq!(by_url, by_id);
    assert_eq!(
        index
            .query(&SearchQuery {
                limit: 10,
                ..query("dog")
            })?
            .len(),
        10
    );
    let knives = index.query(&SearchQuery {
        question: Some("weapons".into()),
        ..query("")
    })?;
    // The knife and the cup, and the two answers.
    assert_eq!(knives.len(), 4, "{knives:#?}");
    let flagged = index.query(&SearchQuery {
        flagged: Some(true),
        ..query("")
    })?;
    assert_eq!(
        flagged.len(),
        2,
        "the knife claim and its answer: {flagged:#?}"
    );
    assert!(flagged.iter().all(|hit| hit.flagged == Some(true)));
    assert!(
        flagged
            .iter()
            .any(|hit| hit.object.as_deref() == Some("knife"))
    );
    let unflagged = index.query(&SearchQuery {
        flagged: Some(false),
        ..query("")
    })?;
    assert_eq!(unflagged.len(), 2);
    assert_eq!(
        unflagged
            .iter()
            .filter(|hit| hit.kind == HitKind::Claim)
            .count(),
        1
    );
    // Time: claims between 3 and 5 s of the street video, and answers whose segment overlaps.
    let early = index.query(&SearchQuery {
        video: Some("s3://videos/street.mp4".into()),
        from_s: Some(3.0),
        to_s: Some(5.0),
        ..query("")
    })?;
    let mut early_times: Vec<(HitKind, Option<f64>)> =
        early.iter().map(|hit| (hit.kind, hit.time_s)).collect();
    early_times.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    assert_eq!(
        early_times,
        [
            (HitKind::Answer, Some(0.0)),
            (HitKind::Claim, Some(3.0)),
            (HitKind::Claim, Some(5.0))
        ]
    );
    let late_zebras = index.query(&SearchQuery {
        from_s: Some(31.0),
        ..query("zebra")
    })?;
    let late: Vec<(HitKind, Option<f64>)> = late_zebras
        .iter()
        .map(|hit| (hit.kind, hit.time_s))
        .collect();
    assert!(
        late == [(HitKind::Claim, Some(32.0)), (HitKind::Answer, Some(30.0))]
            || late == [(HitKind::Answer, Some(30.0)), (HitKind::Claim, Some(32.0))],
        "{late:?}"
    );
    let umbrellas = index.query(&SearchQuery {
        from_s: Some(95.0),
        to_s: Some(125.0),
        ..query("umbrella")
    })?;
    // Segments 3 (90-120 s) and 4 (120-150 s) of rows that are multiples of 7.
    let expected = (0..1000)
        .filter(|row| row % 7 == 0 && (3..=4).contains(&(row % 10)))
        .count();
    assert!(expected > 0);
    assert_eq!(umbrellas.len(), expected);

    // Errors: a backwards or negative range, a zero limit, bad syntax.
    for bad in [
        SearchQuery {
            from_s: Some(10.0),
            to_s: Some(5.0),
            ..query("dog")
        },
        SearchQuery {
            from_s: Some(-1.0),
            ..query("dog")
        },
        SearchQuery {
            to_s: Some(f64::NAN),
            ..query("dog")
        },
        SearchQuery {
            limit: 0,
            ..query("dog")
        },
        query("nosuchfield:dog"),
    ] {
        let error = index.query(&bad).unwrap_err();
        assert!(matches!(error, Error::InvalidQuery(_)), "{bad:?}: {error}");
    }
    assert!(index.query(&query("red submarine"))?.is_empty());

    let text = format_hits(&hits[..2]);
    assert_eq!(text.lines().count(), 2);
    assert!(
        text.starts_with(
            "s3://corpus/video-000.mp4\t0\t0.0s\tred car [0,10,50,60] (0%)\tThings happen."
        ),
        "{text}"
    );

    // Reopened from disk, the same answers.
    drop(index);
    let reopened = SearchIndex::open(dir.path())?;
    assert_eq!(reopened.query(&query("Red CARS"))?, hits);
    Ok(())
}

const STREET_V1: &str = "<think>The <obj>red car</obj><box>[300,100,400,200]</box>at<t>12.0</t>s \
    passes a <obj>dog</obj><box>[10,10,50,50]</box>at<t>3</t>s.</think><answer>A car passes a dog.</answer>";
const STREET_V2: &str = "<think>A <obj>blue bicycle</obj><box>[30,30,90,90]</box>at<t>4</t>s \
    leans on a wall.</think><answer>A bicycle.</answer>";
const PARK: &str = "<think>A <obj>red kite</obj><box>[10,10,50,50]</box>at<t>7</t>s \
    flies.</think><answer>A kite in a park.</answer>";

/// Writes a document and finishes a pass covering just that video.
async fn pass(index: &EvidenceIndex, pass_id: &str, url: &str, raw: &str) -> anyhow::Result<()> {
    let task = QuestionPlan::index();
    let key = index
        .write_document(&document(url, task.clone(), &[(1, "index", raw)]))
        .await?;
    let mut manifest = PassManifest::new(pass_id, model(), &task);
    manifest.record(
        url,
        OutcomeStatus::Indexed {
            document_key: key.to_string(),
        },
    );
    index.finish_pass(manifest).await?;
    Ok(())
}

async fn search(
    index: &EvidenceIndex,
    cache: &FsPath,
    text: &str,
) -> anyhow::Result<(Vec<String>, SearchPointer)> {
    let (search, pointer) = SearchIndex::open_cached(index, cache).await?;
    let hits = search.query(&query(text))?;
    let mut found: Vec<String> = hits
        .iter()
        .map(|hit| {
            format!(
                "{} {:?} {}",
                hit.video_url,
                hit.kind,
                hit.object.as_deref().unwrap_or("-")
            )
        })
        .collect();
    found.sort();
    Ok((found, pointer))
}

/// The objects under `search/files/` are exactly the files the pointer names.
async fn assert_files_match(index: &EvidenceIndex, pointer: &SearchPointer) -> anyhow::Result<()> {
    let prefix = index.relative_key(SEARCH_FILES);
    let mut stored: Vec<(String, u64)> = index
        .store()
        .list(Some(&prefix))
        .map_ok(|meta| {
            (
                meta.location.filename().unwrap_or_default().to_owned(),
                meta.size,
            )
        })
        .try_collect()
        .await?;
    stored.sort();
    let named: Vec<(String, u64)> = pointer
        .files
        .iter()
        .map(|file| (file.name.clone(), file.size))
        .collect();
    assert_eq!(stored, named);
    Ok(())
}

/// Two passes through finalization: the second replaces one video's rows and keeps the other's;
/// the reader's cache follows.
async fn two_passes(index: &EvidenceIndex, cache: &FsPath) -> anyhow::Result<()> {
    let missing = SearchIndex::open_cached(index, cache).await.unwrap_err();
    assert!(matches!(missing, Error::NoSearchIndex(_)), "{missing}");
    assert!(missing.to_string().contains("finalize a pass first"));

    pass(index, "p1", "s3://videos/street.mp4", STREET_V1).await?;
    let (found, first) = search(index, cache, "car").await?;
    assert_eq!(
        found,
        [
            "s3://videos/street.mp4 Answer -",
            "s3://videos/street.mp4 Claim red car"
        ]
    );
    assert_eq!((first.generation, first.pass_id.as_str()), (1, "p1"));
    assert_eq!(first.documents, 3);
    assert_files_match(index, &first).await?;

    pass(index, "p2", "s3://videos/park.mp4", PARK).await?;
    let (found, second) = search(index, cache, "red").await?;
    assert_eq!(
        found,
        [
            "s3://videos/park.mp4 Answer -",
            "s3://videos/park.mp4 Claim red kite",
            "s3://videos/street.mp4 Answer -",
            "s3://videos/street.mp4 Claim red car"
        ],
        "the first pass's video is still there"
    );
    assert_eq!((second.generation, second.documents), (2, 5));

    // The street video again, with new content: its old rows go, the park's stay.
    pass(index, "p3", "s3://videos/street.mp4", STREET_V2).await?;
    let park_red = [
        "s3://videos/park.mp4 Answer -",
        "s3://videos/park.mp4 Claim red kite",
    ];
    let (found, third) = search(index, cache, "red").await?;
    assert_eq!(found, park_red);
    let (found, _) = search(index, cache, "bicycle").await?;
    assert_eq!(
        found,
        [
            "s3://videos/street.mp4 Answer -",
            "s3://videos/street.mp4 Claim blue bicycle"
        ]
    );
    assert_eq!((third.generation, third.documents), (3, 4));
    assert_files_match(index, &third).await?;

    // The same pass finalized again changes nothing that a search sees.
    pass(index, "p3", "s3://videos/street.mp4", STREET_V2).await?;
    let (found, fourth) = search(index, cache, "bicycle").await?;
    assert_eq!(found.len(), 2);
    assert_eq!((fourth.generation, fourth.documents), (4, 4));

    // A reader with a fresh cache gets the same.
    let fresh = tempfile::tempdir()?;
    let (again, _) = search(index, fresh.path(), "red").await?;
    assert_eq!(again, park_red);
    Ok(())
}

#[tokio::test]
async fn finalization_builds_and_replaces_a_local_index() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index = EvidenceIndex::from_url(dir.path().join("index").to_str().unwrap())?;
    two_passes(&index, &dir.path().join("cache")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_index_through_s3() -> anyhow::Result<()> {
    let server = S3Server::start()?;
    server.create_bucket("media")?;
    let store: Arc<dyn ObjectStore> = Arc::new(server.store("media")?);
    let index = EvidenceIndex::new(Arc::clone(&store), Path::from("index"));
    let cache = tempfile::tempdir()?;
    two_passes(&index, cache.path()).await?;

    // A pointer naming a file that is not there is reported, not panicked on.
    let pointer_key = index.relative_key("search/index.json");
    let mut pointer: SearchPointer =
        serde_json::from_slice(&store.get(&pointer_key).await?.bytes().await?)?;
    pointer.files[0].name = "../../etc/passwd".into();
    store
        .put(&pointer_key, serde_json::to_vec(&pointer)?.into())
        .await?;
    let error = SearchIndex::open_cached(&index, cache.path())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    Ok(())
}
