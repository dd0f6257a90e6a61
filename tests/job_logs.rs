//! Every log line of a job, from its lease to "evidence written", carries its `job_id`: the
//! job's span is entered on the blocking thread that runs it, on the heartbeat task and on the
//! I/O tasks the worker's bridge spawns. A real pass: the in-process coordinator, a video made
//! with the ffmpeg CLI, the tiny Qwen2.5-VL fixture, and the worker loop as `vidx index` runs it.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::domain::{NewJob, PassSpec, PassState, Sampling, TaskSpec, now_ms};
use vidx_model::generation::GenerationParams;
use vidx_model::{LoadOptions, OpenO3Video};
use vidx_worker::evidence::ModelInfo;
use vidx_worker::runtime::{WorkerConfig, run};
use vidx_worker::video_job::VideoJobRunner;

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn video(dir: &Path) -> String {
    let path = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=160x120:rate=10:duration=2"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (run scripts/setup.sh)");
    assert!(status.success());
    format!("file://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_job_names_it() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("vidx=debug,vidx_worker=debug,vidx_coordinator=debug,vidx_core=debug")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    )
    .expect("the only subscriber in this test binary");

    let corpus = tempfile::tempdir().unwrap();
    let index = tempfile::tempdir().unwrap();
    let url = video(corpus.path());
    let coordinator = Coordinator::new(
        Arc::new(MemoryStore::new(RetryPolicy::default())),
        Metrics::new(),
    );
    let spec = PassSpec {
        source: format!("file://{}/", corpus.path().display()),
        destination: format!("file://{}/", index.path().display()),
        task: TaskSpec::Questions {
            questions: vec!["Where is the red car?".into()],
        },
        sampling: Sampling {
            fps: 1.0,
            max_frames: 2,
            segment_secs: 600.0,
        },
        idempotency_key: None,
        max_attempts: 1,
        verify: None,
    };
    let store = coordinator.store();
    let pass_id = store.create_pass(&spec, now_ms()).await.unwrap().pass_id;
    let job = NewJob {
        video_url: url,
        start_s: 0.0,
        end_s: 0.0,
        size_bytes: 1,
        etag: None,
        probe: true,
    };
    store
        .add_jobs(&pass_id, &[job], None, now_ms())
        .await
        .unwrap();
    store.finish_planning(&pass_id, None).await.unwrap();

    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    let mut model = OpenO3Video::load(&dir, &LoadOptions::default()).expect("fixture model loads");
    model.set_pixel_bounds(3_136, 12_544);
    let mut generation = GenerationParams::open_o3();
    generation.max_new_tokens = 8;
    let info = ModelInfo {
        id: "tiny-realvocab".into(),
        revision: "fixture".into(),
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
    };
    let runner = VideoJobRunner::new(Arc::new(model), info, generation);
    let config = WorkerConfig {
        worker_id: "logs".into(),
        exit_when_idle: true,
        ..WorkerConfig::default()
    };
    let tally = run(
        Arc::new(coordinator.clone()),
        Arc::new(runner),
        config,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(tally.done, 1, "{tally:?}");
    let status = coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.state, PassState::Finished, "{status:?}");

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|line| line.contains("job leased"))
        .unwrap_or_else(|| panic!("no lease line in:\n{text}"));
    let last = lines
        .iter()
        .rposition(|line| line.contains("evidence written"))
        .unwrap_or_else(|| panic!("no evidence line in:\n{text}"));
    let job_id = format!("job_id={pass_id}.");
    let unnamed: Vec<&&str> = lines[first..=last]
        .iter()
        .filter(|line| !line.contains(&job_id))
        .collect();
    assert!(
        unnamed.is_empty(),
        "lines without the job id: {unnamed:#?}\nall:\n{text}"
    );
    assert!(last > first, "{text}");
}
