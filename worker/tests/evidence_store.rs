//! Building, writing and re-reading evidence documents, idempotent keys, the pass manifest and the
//! corpus tables, against the in-memory store and the local file system store.

mod evidence_support;

use std::sync::Arc;

use bytes::Bytes;
use evidence_support::{MODERATION_POLICY, clocks, document, header, model};
use object_store::memory::InMemory;
use object_store::path::Path;
use vidx_worker::evidence::document::{VideoDocument, VideoDocumentBuilder};
use vidx_worker::evidence::store::{EncodedImage, OutcomeStatus};
use vidx_worker::evidence::{
    EvidenceIndex, ModerationPolicy, PassManifest, QuestionPlan, Rotation, Severity, VideoIdentity,
};

const INDEX_ANSWER: &str = "<think>A <obj>man</obj><box>[112,63,224,126]</box>at<t>9.0</t>s walks to a \
    <obj>red car</obj><box>[300,100,400,200]</box><box>[10,10,20,20]</box>at<t>12.2</t>s and a <obj>sign</obj>\
    <box>[1,2,3]</box>at<t>50</t>s.</think><answer>A man walks to a red car.</answer>";

fn memory_index() -> EvidenceIndex {
    EvidenceIndex::new(Arc::new(InMemory::new()), Path::from("corpus/index"))
}

#[test]
fn document_maps_claims_to_source() {
    let document = document(
        "s3://videos/a.mp4",
        QuestionPlan::index(),
        &[(1, "index", INDEX_ANSWER)],
    );
    assert_eq!(document.schema, "vidx.evidence/v1");
    assert_eq!(document.task.hash, QuestionPlan::index().hash());
    let segment = &document.segments[1];
    assert_eq!(segment.frames.len(), 15);
    assert_eq!(segment.frames[0].time_s, 31.0);
    let answer = &segment.answers[0];
    assert_eq!(answer.answer.as_deref(), Some("A man walks to a red car."));
    assert_eq!(answer.claims.len(), 2);
    let man = &answer.claims[0];
    // 1280x720 seen at 448x252: scale 20/7 on both axes; segment 1 starts at 30 s.
    assert_eq!(
        man.boxes[0].to_array().map(f64::round),
        [320.0, 180.0, 640.0, 360.0]
    );
    assert_eq!(man.time_s, Some(39.0));
    assert_eq!(man.relative_time_s, Some(9.0));
    // Frames at 31, 33, ..., 39 s: frame 4.
    assert_eq!((man.frame_index, man.frame_time_s), (Some(4), Some(39.0)));
    let car = &answer.claims[1];
    assert_eq!(car.boxes.len(), 2);
    assert_eq!((car.time_s, car.frame_index), (Some(42.2), Some(6)));
    // The sign's box has three numbers and its time is past the segment: both dropped, claim gone.
    assert_eq!(answer.dropped.len(), 3);
}

#[test]
fn documents_record_the_device_and_dtype_and_older_ones_still_read() {
    let document = document(
        "s3://videos/a.mp4",
        QuestionPlan::index(),
        &[(1, "index", INDEX_ANSWER)],
    );
    let json: serde_json::Value = serde_json::to_value(&document).unwrap();
    assert_eq!(json["model"]["device"], "cuda:0");
    assert_eq!(json["model"]["dtype"], "bf16");
    assert_eq!(
        serde_json::from_value::<VideoDocument>(json.clone()).unwrap(),
        document
    );

    // A document written before the fields existed reads back with neither.
    let mut old = json;
    let model = old["model"].as_object_mut().unwrap();
    model.remove("device");
    model.remove("dtype");
    let read: VideoDocument = serde_json::from_value(old).unwrap();
    assert_eq!((&read.model.device, &read.model.dtype), (&None, &None));
    assert_eq!(read.model.id, document.model.id);
    // And one without them is written without them.
    let written = serde_json::to_value(&read).unwrap();
    assert!(written["model"].get("device").is_none(), "{written}");
}

#[test]
fn rotated_video_maps_to_displayed_and_coded_pixels() {
    let mut builder = VideoDocumentBuilder::new(header(
        "s3://videos/phone.mp4",
        QuestionPlan::index(),
        Rotation::R90,
    ));
    builder.add_segment(clocks().remove(0)).unwrap();
    // Displayed 720x1280 seen at 252x448: scale 20/7. Model box [63,112,126,224] -> [180,320,360,640]
    // displayed; coded (y, 720 - x): [320, 360, 640, 540].
    let record = builder
        .record_answer(0, "index", "<think><obj>face</obj><box>[63,112,126,224]</box>at<t>3.0</t>s</think><answer>A face.</answer>")
        .unwrap();
    let claim = &record.claims[0];
    assert_eq!(
        claim.boxes[0].to_array().map(f64::round),
        [180.0, 320.0, 360.0, 640.0]
    );
    assert_eq!(
        claim.coded_boxes[0].to_array().map(f64::round),
        [320.0, 360.0, 640.0, 540.0]
    );
    assert_eq!(claim.frame_index, Some(1));
}

#[test]
fn builder_rejects_unknown_segment_and_question() {
    let mut builder =
        VideoDocumentBuilder::new(header("s3://v/a.mp4", QuestionPlan::index(), Rotation::R0));
    let segments = clocks();
    builder.add_segment(segments[1].clone()).unwrap();
    assert!(
        builder.add_segment(segments[0].clone()).is_err(),
        "out of order"
    );
    assert!(builder.record_answer(0, "index", "x").is_err());
    assert!(builder.record_answer(1, "nope", "x").is_err());
}

#[test]
fn moderation_verdicts_roll_up_to_the_video() {
    let task =
        QuestionPlan::moderation(ModerationPolicy::from_yaml(MODERATION_POLICY).unwrap()).unwrap();
    let document = document(
        "s3://videos/b.mp4",
        task,
        &[
            (0, "weapons", "<think>No weapon.</think><answer>No</answer>"),
            (
                0,
                "smoking",
                "<think>A <obj>cigarette</obj><box>[10,10,30,20]</box>at<t>4</t>s</think><answer>Yes</answer>",
            ),
            (
                1,
                "weapons",
                "<think>A <obj>knife</obj><box>[100,100,140,160]</box>at<t>7.5</t>s</think><answer>Yes.</answer>",
            ),
            (1, "smoking", "<think>Nobody.</think><answer>no</answer>"),
        ],
    );
    assert!(document.is_flagged());
    assert_eq!(document.worst_flag(), Some(Severity::High));
    assert_eq!(document.moderation[0].category, "weapons");
    assert_eq!(document.moderation[0].flagged_segments, vec![1]);
    assert_eq!(document.moderation[1].flagged_segments, vec![0]);
    let verdict = document.segments[1].answers[0].verdict.as_ref().unwrap();
    assert!(verdict.flagged && verdict.grounded_claims == 1);
}

/// One part per segment of a 3-segment video, written in any order: the assembled document holds
/// every segment in order with its answers and absolute times, and moderation over the video.
#[tokio::test]
async fn segment_parts_assemble_into_one_video_document() -> anyhow::Result<()> {
    use vidx_worker::evidence::SegmentClock;
    let index = memory_index();
    let task = QuestionPlan::moderation(ModerationPolicy::from_yaml(MODERATION_POLICY)?)?;
    let url = "s3://videos/long.mp4";
    let answers = [
        (
            "<think>No weapon.</think><answer>No</answer>",
            "<answer>no</answer>",
        ),
        (
            "<think>A <obj>knife</obj><box>[100,100,140,160]</box>at<t>7.5</t>s</think><answer>Yes.</answer>",
            "<answer>no</answer>",
        ),
        (
            "<think>A <obj>gun</obj><box>[10,10,60,60]</box>at<t>2</t>s</think><answer>Yes</answer>",
            "<answer>no</answer>",
        ),
    ];
    let video_key = index.document_key(&evidence_support::identity(url), &model(), &task.hash());
    for segment in [2u32, 0, 1] {
        let start = 30.0 * f64::from(segment);
        let mut builder = VideoDocumentBuilder::new(header(url, task.clone(), Rotation::R0));
        builder.add_segment(SegmentClock::new(
            segment,
            start,
            start + 30.0,
            vec![start + 1.0, start + 11.0, start + 21.0],
        )?)?;
        builder.written_by("pass-1", 1_000 + i64::from(segment));
        let (weapons, smoking) = answers[segment as usize];
        builder.record_answer(segment, "weapons", weapons)?;
        builder.record_answer(segment, "smoking", smoking)?;
        let part_key = index.write_part(&builder.finish()).await?;
        assert_eq!(part_key, EvidenceIndex::part_key(&video_key, segment));
    }
    // Parts are not documents: listings, tables and reports see only the assembled one.
    assert!(index.list_documents().await?.is_empty());
    let key = index.assemble_video(&video_key, 3, "pass-1", 5_000).await?;
    assert_eq!(key, video_key);
    assert_eq!(index.list_documents().await?, vec![video_key.clone()]);
    let document = index.read_document(&key).await?;
    let indexes: Vec<u32> = document.segments.iter().map(|s| s.index).collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    assert_eq!(document.video.url, url, "the video, not a fragment of it");
    assert_eq!(document.written_at_ms, Some(5_000));
    let knife = &document.segments[1].answers[0].claims[0];
    assert_eq!((knife.object.as_str(), knife.time_s), ("knife", Some(37.5)));
    let weapons = &document.moderation[0];
    assert_eq!(weapons.category, "weapons");
    assert!(weapons.flagged);
    assert_eq!(weapons.flagged_segments, vec![1, 2]);
    let spans: Vec<(f64, f64)> = weapons
        .flagged_spans
        .iter()
        .map(|span| (span.start_s, span.end_s))
        .collect();
    assert_eq!(spans, vec![(30.0, 60.0), (60.0, 90.0)]);
    assert!(!document.moderation[1].flagged);
    // Assembling again (a retried assembler) writes the same document; a missing part is an error.
    assert_eq!(
        index.assemble_video(&video_key, 3, "pass-1", 5_000).await?,
        key
    );
    assert_eq!(index.read_document(&key).await?, document);
    assert!(
        index
            .assemble_video(&video_key, 4, "pass-1", 5_000)
            .await
            .is_err()
    );
    Ok(())
}

#[test]
fn keys_are_pure_functions_of_video_model_and_task() {
    let index = memory_index();
    let video = VideoIdentity {
        url: "s3://v/a.mp4".into(),
        size_bytes: 10,
        etag: Some("\"e1\"".into()),
        checksum: None,
    };
    let task_hash = QuestionPlan::index().hash();
    let key = index.document_key(&video, &model(), &task_hash);
    assert_eq!(
        key,
        index.document_key(&video.clone(), &model(), &task_hash)
    );
    assert!(key.as_ref().starts_with("corpus/index/videos/"));
    assert!(key.as_ref().ends_with("/evidence.json"));
    let changed_etag = VideoIdentity {
        etag: Some("e2".into()),
        ..video.clone()
    };
    let changed_size = VideoIdentity {
        size_bytes: 11,
        ..video.clone()
    };
    let other_task = QuestionPlan::free_form(&["Where is the dog?"])
        .unwrap()
        .hash();
    let mut other_model = model();
    other_model.revision = "r2".into();
    for other in [
        index.document_key(&changed_etag, &model(), &task_hash),
        index.document_key(&changed_size, &model(), &task_hash),
        index.document_key(&video, &model(), &other_task),
        index.document_key(&video, &other_model, &task_hash),
    ] {
        assert_ne!(other, key);
    }
    // The device and dtype the model ran on are recorded, not part of the key: a GPU worker
    // and a CPU worker running the same model and task write the same document.
    let elsewhere = vidx_worker::evidence::ModelInfo {
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
        ..model()
    };
    assert_eq!(index.document_key(&video, &elsewhere, &task_hash), key);
    // Quotes around an ETag do not matter.
    let unquoted = VideoIdentity {
        etag: Some("e1".into()),
        ..video
    };
    assert_eq!(index.document_key(&unquoted, &model(), &task_hash), key);
}

#[tokio::test]
async fn writes_are_idempotent_and_pass_end_builds_tables() -> anyhow::Result<()> {
    let index = memory_index();
    let task = QuestionPlan::index();
    let mut manifest = PassManifest::new("pass-1", model(), &task);
    for url in ["s3://videos/a.mp4", "s3://videos/b.mp4"] {
        let document = document(
            url,
            task.clone(),
            &[
                (0, "index", INDEX_ANSWER),
                (1, "index", "<answer>Nothing.</answer>"),
            ],
        );
        let key = index.document_key(&document.video, &document.model, &document.task.hash);
        assert!(!index.is_indexed(&key).await?);
        // A retried job writes the same document twice: one object remains.
        assert_eq!(index.write_document(&document).await?, key);
        assert_eq!(index.write_document(&document).await?, key);
        assert!(index.is_indexed(&key).await?);
        assert_eq!(index.read_document(&key).await?, document);
        manifest.record(
            url,
            OutcomeStatus::Indexed {
                document_key: key.to_string(),
            },
        );
    }
    manifest.record(
        "s3://videos/broken.mp4",
        OutcomeStatus::Failed {
            stage: "decode".into(),
            reason: "invalid data found when processing input".into(),
        },
    );
    assert_eq!(index.list_documents().await?.len(), 2);

    let finished = index.finish_pass(manifest).await?;
    assert_eq!(
        (
            finished.indexed,
            finished.failed,
            finished.claim_rows,
            finished.answer_rows
        ),
        (2, 1, 4, 4)
    );
    let stored = index.read_manifest().await?;
    assert_eq!(stored, finished);
    let failed = stored
        .videos
        .iter()
        .find(|video| video.url.ends_with("broken.mp4"))
        .unwrap();
    assert!(
        matches!(&failed.status, OutcomeStatus::Failed { reason, .. } if reason.contains("invalid data"))
    );

    let claims = index.read_claims().await?;
    assert_eq!(claims.len(), 4);
    let car = claims.iter().find(|row| row.object == "red car").unwrap();
    assert_eq!(
        (car.time_s, car.segment_index, car.box_count),
        (Some(12.2), 0, 2)
    );
    assert_eq!(car.answer.as_deref(), Some("A man walks to a red car."));
    let boxes: Vec<[f64; 4]> = serde_json::from_str(&car.boxes)?;
    let rounded: Vec<[f64; 4]> = boxes.iter().map(|b| b.map(f64::round)).collect();
    assert_eq!(
        rounded,
        vec![[857.0, 286.0, 1143.0, 571.0], [29.0, 29.0, 57.0, 57.0]]
    );
    let answers = index.read_answers().await?;
    assert_eq!(answers.iter().filter(|row| row.claim_count == 0).count(), 2);

    // A second pass finds both videos indexed and skips them: its table parts are empty, and
    // the tables as readers see them stay the same.
    let mut second = PassManifest::new("pass-2", model(), &task);
    for url in ["s3://videos/a.mp4", "s3://videos/b.mp4"] {
        let key = index.document_key(&evidence_support::identity(url), &model(), &task.hash());
        assert!(index.is_indexed(&key).await?);
        second.record(
            url,
            OutcomeStatus::Skipped {
                document_key: key.to_string(),
            },
        );
    }
    let second = index.finish_pass(second).await?;
    assert_eq!((second.skipped, second.claim_rows), (2, 0));
    assert_eq!(index.read_claims().await?, claims);
    Ok(())
}

#[tokio::test]
async fn local_file_system_index_leaves_only_final_objects() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index = EvidenceIndex::from_url(dir.path().to_str().unwrap())?;
    let task = QuestionPlan::index();
    let mut builder =
        VideoDocumentBuilder::new(header("file:///videos/a.mp4", task.clone(), Rotation::R0));
    for clock in clocks() {
        builder.add_segment(clock).unwrap();
    }
    builder.record_answer(0, "index", INDEX_ANSWER)?;
    let key = index.document_key(
        &evidence_support::identity("file:///videos/a.mp4"),
        &model(),
        &task.hash(),
    );
    for attempt in 0..2 {
        let image = EncodedImage {
            bytes: Bytes::from(vec![attempt; 16]),
            content_type: "image/png".into(),
            width: 4,
            height: 4,
        };
        let thumbnail = index.put_thumbnail(&key, 0, 4, image).await?;
        assert_eq!(thumbnail.key, "frames/s0000_f004.png");
        builder.set_thumbnail(0, 4, thumbnail)?;
    }
    let document = builder.finish();
    index.write_document(&document).await?;
    index.write_document(&document).await?;
    let bad = EncodedImage {
        bytes: Bytes::new(),
        content_type: "image/gif".into(),
        width: 1,
        height: 1,
    };
    assert!(index.put_thumbnail(&key, 0, 1, bad).await.is_err());

    let mut files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(path)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(
                    path.strip_prefix(dir.path())?
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    files.sort();
    let document_path = key.as_ref().to_owned();
    let frame_path = document_path.replace("evidence.json", "frames/s0000_f004.png");
    let mut expected = vec![document_path, frame_path];
    expected.sort();
    // The local path ends with the index-relative key; the prefix is the temporary directory.
    assert_eq!(files.len(), 2, "{files:?}");
    for (file, key) in files.iter().zip(&expected) {
        assert!(key.ends_with(file.as_str()), "{key} vs {file}");
    }
    assert_eq!(
        std::fs::read(dir.path().join(&files[1]))?,
        vec![1u8; 16],
        "second attempt overwrote the first"
    );
    Ok(())
}

#[test]
fn index_urls() {
    let index = EvidenceIndex::from_url("file:///data/index").unwrap();
    assert_eq!(index.prefix().as_ref(), "data/index");
    let index = EvidenceIndex::from_url("memory:///").unwrap();
    assert!(index.prefix().as_ref().is_empty());
    let error = EvidenceIndex::from_url("nope://bucket/x")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("invalid index url nope://bucket/x"),
        "{error}"
    );
}

/// A pass finalized after a newer one (a late sweep, a re-run of an old pass) writes its own
/// manifest under `passes/`, and leaves the newer pass's manifest as the latest.
#[tokio::test]
async fn an_older_pass_finalized_late_keeps_the_newer_manifest_latest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index = EvidenceIndex::from_url(dir.path().to_str().unwrap())?;
    let task = QuestionPlan::index();
    let older = "pass-019ad0c0000070008000000000000001";
    let newer = "pass-019ad0c0000070008000000000000002";
    index
        .finish_pass(PassManifest::new(newer, model(), &task))
        .await?;
    index
        .finish_pass(PassManifest::new(older, model(), &task))
        .await?;
    assert_eq!(index.read_manifest().await?.pass_id, newer);
    assert!(
        dir.path()
            .join(format!("passes/{older}/manifest.json"))
            .exists()
    );
    // In creation order, each becomes the latest in turn.
    let again = "pass-019ad0c0000070008000000000000003";
    index
        .finish_pass(PassManifest::new(again, model(), &task))
        .await?;
    assert_eq!(index.read_manifest().await?.pass_id, again);
    Ok(())
}
