//! A moderation policy of three questions over one segment: the worker's pipeline encodes the
//! frames with the vision tower once, and each answer equals a separate greedy run of that
//! question alone (tiny random Qwen2.5-VL checkpoint from `../shared/fixtures`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vidx_core::domain::{Job, JobState, LeasedJob, NewJob, PassSpec, Sampling, TaskSpec};
use vidx_model::generation::GenerationParams;
use vidx_model::{LoadOptions, OpenO3Video, RgbImage, TimedFrame};
use vidx_worker::evidence::{ModelInfo, VideoDocument};
use vidx_worker::media::{self, SampleOptions, SamplingSpec, VideoSource};
use vidx_worker::runtime::{CancelFlag, JobRunner, Outcome};
use vidx_worker::video_job::{VideoJobRunner, question_plan};

const POLICY: &str = r#"
categories:
  - name: weapons
    question: Is anyone holding a weapon?
    flagged_answer: "yes"
    severity: high
  - name: violence
    question: Does anyone hit another person?
    flagged_answer: "yes"
    severity: critical
    min_grounded_claims: 1
  - name: nudity
    question: Is there nudity?
    flagged_answer: "yes"
    severity: medium
"#;

fn model() -> OpenO3Video {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    let mut model = OpenO3Video::load(&dir, &LoadOptions::default()).expect("fixture model loads");
    model.set_pixel_bounds(3_136, 12_544);
    model
}

fn params() -> GenerationParams {
    let mut params = GenerationParams::open_o3();
    params.max_new_tokens = 10;
    params
}

#[test]
fn three_questions_share_one_vision_pass_and_match_separate_runs() {
    let corpus = tempfile::tempdir().unwrap();
    let index = tempfile::tempdir().unwrap();
    let video = corpus.path().join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "testsrc2=size=160x120:rate=10:duration=3",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&video)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let url = format!("file://{}", video.display());
    let task = TaskSpec::Moderation {
        policy_yaml: POLICY.into(),
    };
    let sampling = Sampling {
        fps: 1.0,
        max_frames: 3,
        segment_secs: 600.0,
    };
    let job = LeasedJob {
        job: Job {
            job_id: "pass-test.0".into(),
            pass_id: "pass-test".into(),
            spec: NewJob {
                video_url: url.clone(),
                start_s: 0.0,
                end_s: 0.0,
                size_bytes: 0,
                etag: None,
                probe: true,
            },
            state: JobState::Leased,
            attempt: 1,
            last_error: None,
            result_url: None,
            crashes: 0,
        },
        lease_id: "1".into(),
        deadline_ms: 0,
        pass: PassSpec {
            source: format!("file://{}/", corpus.path().display()),
            destination: format!("file://{}/", index.path().display()),
            task: task.clone(),
            sampling,
            idempotency_key: None,
            max_attempts: 1,
        },
    };

    let shared = Arc::new(model());
    let info = ModelInfo {
        id: "tiny-realvocab".into(),
        revision: "fixture".into(),
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
    };
    // Called from a plain test thread: the worker's bridge runs the index writes on its own
    // I/O runtime.
    let runner = VideoJobRunner::new(Arc::clone(&shared), info, params());
    let outcome = runner
        .run(&job, &CancelFlag::default())
        .expect("job succeeds");
    assert_eq!(
        shared.model().vision_calls(),
        1,
        "frames encoded once for three questions"
    );
    let Outcome::Done {
        result_url: Some(key),
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let document: VideoDocument =
        serde_json::from_slice(&std::fs::read(Path::new("/").join(&key)).unwrap()).unwrap();
    assert_eq!(
        (
            document.model.device.as_deref(),
            document.model.dtype.as_deref()
        ),
        (Some("cpu"), Some("f32")),
        "the document records where the model ran"
    );
    let answers = &document.segments[0].answers;
    assert_eq!(answers.len(), 3);

    // Each question alone, from scratch: its own vision pass and its own prefill.
    let evidence = question_plan(&task).unwrap();
    let sampled = media::sample_source(
        &VideoSource::from_url(&url).unwrap(),
        &SamplingSpec {
            fps: 1.0,
            max_frames: 3,
            start_s: 0.0,
            end_s: None,
        },
        &SampleOptions::default(),
    )
    .unwrap();
    let frames: Vec<TimedFrame> = sampled
        .frames
        .into_iter()
        .map(|frame| TimedFrame {
            image: RgbImage::new(frame.width as usize, frame.height as usize, frame.rgb).unwrap(),
            timestamp_seconds: frame.t_s,
        })
        .collect();
    let duration = document.segments[0].end_s - document.segments[0].start_s;
    let separate = model();
    for (question, answer) in evidence.questions.iter().zip(answers) {
        let encoded = separate.encode_frames(&frames).unwrap();
        let prefix = separate
            .prefill(
                &encoded,
                vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT,
                duration,
            )
            .unwrap();
        let alone = separate
            .ask(&prefix, &question.prompt_text(), &params(), &mut |_| true)
            .unwrap();
        assert_eq!(answer.question_id, question.id);
        assert_eq!(answer.raw_text, alone.text, "question {}", question.id);
    }
    assert_eq!(separate.model().vision_calls(), 3);
    assert_eq!(
        document.moderation.len(),
        3,
        "a verdict summary per category"
    );
}
