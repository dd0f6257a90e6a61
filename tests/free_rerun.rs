//! A re-run of an indexed corpus is free: every video is skipped from its metadata alone, and not
//! one byte of video is read. Also: a split video comes back as one video document, assembled
//! from its segment parts by the job the coordinator's segment counter designated.
//!
//! Runs the real pieces in process: the coordinator (memory store) and its planner, the worker
//! loop with `VideoJobRunner` on the tiny random Qwen2.5-VL checkpoint, real encoded videos on the
//! local file system, read through a counting store wrapped around the real one, and the
//! finalization `vidx index` and the coordinator replicas run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio_util::sync::CancellationToken;
use vidx::commands::finalize::{all_jobs, finalize_pass};
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::domain::{PassSpec, PassState, Sampling, TaskSpec};
use vidx_model::generation::GenerationParams;
use vidx_model::{LoadOptions, OpenO3Video};
use vidx_worker::evidence::store::OutcomeStatus;
use vidx_worker::evidence::{EvidenceIndex, ModelInfo, PassManifest};
use vidx_worker::media::VideoSource;
use vidx_worker::runtime::{self, WorkerConfig};
use vidx_worker::video_job::VideoJobRunner;

/// A real store that counts the bytes it serves (`get`, `get_range`, `get_ranges`; a `head`
/// serves none).
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    bytes_read: Arc<AtomicU64>,
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head {
            self.bytes_read
                .fetch_add(result.range.end - result.range.start, Ordering::Relaxed);
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let parts = self.inner.get_ranges(location, ranges).await?;
        let total: usize = parts.iter().map(|part| part.len()).sum();
        self.bytes_read.fetch_add(total as u64, Ordering::Relaxed);
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen2_5_vl/tiny-realvocab")
}

fn ffmpeg_clip(path: &Path, seconds: u32) {
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size=160x120:rate=10:duration={seconds}"))
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
}

fn model_info() -> ModelInfo {
    ModelInfo {
        id: "tiny-realvocab".into(),
        revision: "fixture".into(),
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
    }
}

/// Runs one pass over `corpus` into `index` with a fresh counting store, to its end; returns its
/// manifest, the video bytes it read, and the jobs its status counted as skipped.
async fn run_pass(
    model: &Arc<OpenO3Video>,
    corpus: &Path,
    index: &Path,
) -> (PassManifest, u64, u64) {
    let retry = RetryPolicy {
        base_backoff_ms: 10,
        max_backoff_ms: 10,
        ..RetryPolicy::default()
    };
    let coordinator = Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new());
    let stop = CancellationToken::new();
    let planner = tokio::spawn(vidx_coordinator::planner::run(
        coordinator.clone(),
        "test".into(),
        stop.clone(),
    ));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&bytes_read);
    let mut generation = GenerationParams::open_o3();
    generation.max_new_tokens = 8;
    let runner = VideoJobRunner::new(Arc::clone(model), model_info(), generation)
        .with_coordinator(Arc::new(coordinator.clone()))
        .with_video_opener(Arc::new(move |url: &str| {
            let source = VideoSource::from_url(url)?;
            let store: Arc<dyn ObjectStore> = Arc::new(CountingStore {
                inner: source.store,
                bytes_read: Arc::clone(&counter),
            });
            Ok(VideoSource::new(store, source.path, source.uri))
        }));
    let spec = PassSpec {
        source: format!("file://{}/", corpus.display()),
        destination: format!("file://{}/", index.display()),
        task: TaskSpec::Index { prompt: None },
        sampling: Sampling {
            fps: 1.0,
            max_frames: 2,
            segment_secs: 2.0,
        },
        idempotency_key: None,
        max_attempts: 2,
        verify: None,
    };
    let mut progress = coordinator.progress();
    let pass_id = coordinator.submit(spec).await.unwrap().pass_id;
    let worker = tokio::spawn(runtime::run(
        Arc::new(coordinator.clone()),
        Arc::new(runner),
        WorkerConfig {
            worker_id: "test".into(),
            idle_poll: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        stop.clone(),
    ));
    let status = loop {
        let status = coordinator.status(&pass_id).await.unwrap();
        if matches!(
            status.state,
            PassState::Finished | PassState::Failed | PassState::Cancelled
        ) {
            break status;
        }
        // Bounded: a pass of two tiny videos reports progress well within this many changes.
        tokio::time::timeout(Duration::from_secs(300), progress.changed())
            .await
            .expect("the pass makes progress")
            .unwrap();
    };
    stop.cancel();
    worker.await.unwrap().unwrap();
    let _ = planner.await;
    assert_eq!(status.state, PassState::Finished, "{status:?}");
    let jobs = all_jobs(&coordinator, &pass_id).await.unwrap();
    let manifest = finalize_pass(&status, &jobs, model_info()).await.unwrap();
    (manifest, bytes_read.load(Ordering::Relaxed), status.skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_skips_every_video_without_reading_a_byte() {
    let model_dir = fixture_model();
    assert!(model_dir.join("config.json").exists(), "missing fixture");
    let corpus = tempfile::tempdir().unwrap();
    let index = tempfile::tempdir().unwrap();
    // 5 s at 2 s segments: split into 3 segments, assembled into one video document.
    ffmpeg_clip(&corpus.path().join("long.mp4"), 5);
    ffmpeg_clip(&corpus.path().join("short.mp4"), 1);
    let mut model = OpenO3Video::load(&model_dir, &LoadOptions::default()).unwrap();
    model.set_pixel_bounds(3136, 12544);
    let model = Arc::new(model);

    let (first, first_bytes, first_skipped) = run_pass(&model, corpus.path(), index.path()).await;
    assert_eq!(first_skipped, 0, "the pass's status counts no skipped job");
    assert_eq!(
        (
            first.videos.len(),
            first.indexed,
            first.skipped,
            first.failed
        ),
        (2, 2, 0, 0),
        "{first:#?}"
    );
    assert!(first_bytes > 0, "the first pass reads the videos");
    assert_eq!(
        first.model.id, "tiny-realvocab",
        "the model the workers recorded"
    );

    let evidence = EvidenceIndex::from_url(index.path().to_str().unwrap()).unwrap();
    let documents = evidence.list_documents().await.unwrap();
    assert_eq!(documents.len(), 2, "one document per video: {documents:?}");
    let long = first
        .videos
        .iter()
        .find(|video| video.url.ends_with("long.mp4"))
        .unwrap();
    let OutcomeStatus::Indexed { document_key } = &long.status else {
        panic!("{long:?}");
    };
    let document = evidence.read_document_at(document_key).await.unwrap();
    let segments: Vec<(u32, f64, f64)> = document
        .segments
        .iter()
        .map(|segment| (segment.index, segment.start_s, segment.end_s))
        .collect();
    assert_eq!(segments.len(), 3, "{segments:?}");
    assert_eq!(
        segments.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        segments
            .windows(2)
            .all(|pair| pair[0].2 <= pair[1].1 + 1e-6)
    );
    assert!(
        !document.video.url.contains("#t="),
        "{}",
        document.video.url
    );
    let answers = evidence.read_answers().await.unwrap();
    assert_eq!(
        answers
            .iter()
            .filter(|row| row.video_url.ends_with("long.mp4"))
            .count(),
        3,
        "one answer row per segment, all naming the video"
    );

    let (second, second_bytes, second_skipped) =
        run_pass(&model, corpus.path(), index.path()).await;
    assert_eq!(
        second_skipped, 2,
        "the pass's status (what the progress bar shows) counts both skipped videos"
    );
    assert_eq!(
        (
            second.videos.len(),
            second.indexed,
            second.skipped,
            second.failed
        ),
        (2, 0, 2, 0),
        "{second:#?}"
    );
    assert_eq!(second_bytes, 0, "a re-run reads no video bytes");
    assert_eq!(
        second.claim_rows + second.answer_rows,
        0,
        "nothing new to add"
    );
    assert_eq!(
        evidence.read_answers().await.unwrap().len(),
        answers.len(),
        "the first pass's rows are still what readers see"
    );
}
