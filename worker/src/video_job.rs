//! The work of one job: [`VideoJobRunner`], the [`JobRunner`] that turns a leased job into an
//! evidence document.
//!
//! Probe the video; a whole-video job longer than the pass's segment length is split instead of
//! processed. Otherwise sample the segment's frames, encode them with the vision tower once,
//! prefill the shared prompt prefix (system prompt, frames, duration line) once, and answer every
//! question of the task from that prefix; parse each answer into evidence, map it to source pixels
//! and absolute time, verify every claim when the pass asks for it
//! ([`crate::claim_verification`]), store frame thumbnails, and write the document. A document
//! that already exists (same video, model and task) is not computed again, and finding that out
//! reads no byte of the video ([`skip_check`]: the object's metadata names the document).
//!
//! A segment job of a split video writes its segment's part; the coordinator's segment counter
//! designates one segment job per video, and that job assembles the video's document from the
//! parts (again on its retry, if it crashed halfway).
//!
//! The steps are separate functions, run in order by [`VideoJobRunner::run_timed`] on the job's
//! blocking thread: [`VideoJobRunner::probe`] and [`VideoJobRunner::sample`] (fetch, probe,
//! decode), [`VideoJobRunner::reason`] (hands the frames and questions to the shared
//! [`ModelThread`] and waits for the answers, batched with other jobs' questions), and
//! [`VideoJobRunner::write`] (evidence, thumbnails, document). Object-store calls go through
//! the worker's one async bridge, [`crate::bridge`].

use std::io::Cursor;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::info;
use vidx_core::domain::{LeasedJob, PassSpec, Segment, TaskSpec};
use vidx_core::source::JobSource;
use vidx_model::generation::GenerationParams;
use vidx_model::{Answer, OpenO3Video, RgbImage, TimedFrame};

use crate::bridge::{WaitError, block_on};
use crate::claim_verification::claim_confidences;
use crate::evidence::document::DocumentHeader;
use crate::evidence::store::EncodedImage;
use crate::evidence::{
    self, EvidenceIndex, FrameGeometry, ModelInfo, ModerationPolicy, ProbeFacts, QuestionPlan,
    Rotation, SegmentClock, VideoDocumentBuilder, VideoIdentity,
};
use crate::media::{
    self, MediaError, ProbeInfo, ProbeOptions, SampleOptions, SamplingSpec, VideoSource,
};
use crate::metrics::{JobTimings, Stage, WorkerMetrics};
use crate::model_thread::{ModelFailure, ModelRequest, ModelThread};
use crate::runtime::{CancelFlag, JobFailure, JobRunner, Outcome};

/// Widest stored thumbnail; boxes are stored in source pixels and scaled when drawn.
const THUMBNAIL_MAX_WIDTH: usize = 640;

/// Opens a video's source from its URL: [`VideoSource::from_url`] unless a caller wraps the
/// store (tests count the bytes read through it).
pub type VideoOpener = Arc<dyn Fn(&str) -> Result<VideoSource, MediaError> + Send + Sync>;

/// The [`JobRunner`] for video jobs: reads, reasons and writes evidence. Jobs run on their own
/// threads side by side; the model work of all of them goes to one [`ModelThread`], started on
/// the first job.
pub struct VideoJobRunner {
    model: Arc<OpenO3Video>,
    model_info: ModelInfo,
    generation: GenerationParams,
    /// The coordinator, for the segment counter that designates who assembles a split video.
    coordinator: Option<Arc<dyn JobSource>>,
    open_video: VideoOpener,
    /// Jobs the model thread decodes together.
    max_in_flight: usize,
    /// Prepared jobs that may wait for a place in the batch.
    queue: usize,
    metrics: Arc<WorkerMetrics>,
    model_thread: OnceLock<Result<ModelThread, String>>,
}

impl std::fmt::Debug for VideoJobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoJobRunner")
            .field("model", &self.model_info)
            .finish_non_exhaustive()
    }
}

impl VideoJobRunner {
    /// A runner over a loaded model. Its object-store calls go through [`crate::bridge`], on the
    /// runtime of the blocking thread that runs the job.
    pub fn new(
        model: Arc<OpenO3Video>,
        model_info: ModelInfo,
        generation: GenerationParams,
    ) -> Self {
        VideoJobRunner {
            model,
            model_info,
            generation,
            coordinator: None,
            open_video: Arc::new(|url: &str| VideoSource::from_url(url)),
            max_in_flight: 1,
            queue: crate::runtime::default_prefetch(),
            metrics: Arc::default(),
            model_thread: OnceLock::new(),
        }
    }

    /// Decodes up to `max_in_flight` jobs together on the model thread, with up to `queue`
    /// more waiting prepared (the worker loop's `max_in_flight` and `prefetch`). Set before the
    /// first job.
    pub fn with_batching(mut self, max_in_flight: usize, queue: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self.queue = queue.max(1);
        self
    }

    /// The coordinator whose segment counter decides who assembles a split video (the same
    /// source the worker loop leases from). Segment jobs fail without one.
    pub fn with_coordinator(mut self, coordinator: Arc<dyn JobSource>) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    /// Opens videos with `open` instead of [`VideoSource::from_url`].
    pub fn with_video_opener(mut self, open: VideoOpener) -> Self {
        self.open_video = open;
        self
    }

    /// Counts this segment job's part and, when designated, assembles the video document;
    /// returns the key the job reports.
    fn count_and_assemble(
        &self,
        job: &LeasedJob,
        index: &EvidenceIndex,
        document_key: &Path,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<Path, JobFailure> {
        let coordinator = self
            .coordinator
            .as_ref()
            .ok_or_else(|| invalid("segment job: no coordinator to count segments with".into()))?;
        // `…/videos/{video_id}/{run_id}/evidence.json`: the video id names the video in the pass.
        let parts: Vec<String> = document_key
            .parts()
            .map(|part| part.as_ref().to_owned())
            .collect();
        let video_key = parts
            .len()
            .checked_sub(3)
            .map(|position| parts[position].clone())
            .unwrap_or_default();
        let assemble = block_on(coordinator.count_segment(
            &job.job.job_id,
            &job.lease_id,
            &video_key,
            segment_index,
            segment_count,
        ))
        .map_err(bridge_failure)?
        .map_err(|error| JobFailure {
            reason: format!("count segment: {error}"),
            retryable: error.is_transient(),
        })?;
        if !assemble {
            return Ok(EvidenceIndex::part_key(document_key, segment_index));
        }
        block_on(index.assemble_video(document_key, segment_count, &job.job.pass_id, now_ms()))
            .map_err(bridge_failure)?
            .map_err(|error| index_failure("assemble", error))
    }

    /// Counts the model thread's busy time in `metrics` (the worker loop's).
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn model_thread(&self) -> Result<&ModelThread, JobFailure> {
        self.model_thread
            .get_or_init(|| {
                ModelThread::start(
                    Arc::clone(&self.model),
                    self.max_in_flight,
                    self.queue,
                    Arc::clone(&self.metrics),
                )
                .map_err(|error| format!("cannot start the model thread: {error}"))
            })
            .as_ref()
            .map_err(|reason| JobFailure {
                reason: format!("model: {reason}"),
                retryable: true,
            })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// What the metadata check found: the video's identity and its document's key, and whether
/// that document exists.
#[derive(Debug, Clone)]
pub struct SkipCheck {
    /// The video as the index names it: URL, size and ETag from the store's metadata.
    pub identity: VideoIdentity,
    /// Its document's key for this model and task.
    pub document_key: Path,
    /// Whether the document exists: the job is done without reading the video.
    pub indexed: bool,
}

/// Decides from metadata alone (one `HEAD` of the video, one of the document) whether a video
/// is indexed under this model and task. Reads no byte of the video.
pub fn skip_check(
    source: &VideoSource,
    index: &EvidenceIndex,
    model: &ModelInfo,
    task: &QuestionPlan,
) -> Result<SkipCheck, JobFailure> {
    let meta = block_on(source.store.head(&source.path))
        .map_err(bridge_failure)?
        .map_err(|error| media_failure("open", MediaError::from_store(&source.uri, error)))?;
    let identity = VideoIdentity {
        url: source.uri.clone(),
        size_bytes: meta.size,
        etag: meta.e_tag,
        checksum: None,
    };
    let document_key = index.document_key(&identity, model, &task.hash());
    let indexed = block_on(index.is_indexed(&document_key))
        .map_err(bridge_failure)?
        .map_err(|error| index_failure("index", error))?;
    Ok(SkipCheck {
        identity,
        document_key,
        indexed,
    })
}

/// The evidence task of a pass: its questions, and whether its claims are verified
/// ([`PassSpec::verifies`]), which is part of the task's hash.
pub fn pass_plan(pass: &PassSpec) -> Result<QuestionPlan, evidence::Error> {
    Ok(question_plan(&pass.task)?.with_verification(pass.verifies()))
}

/// The questions a pass's task asks (claim verification off; see [`pass_plan`]).
pub fn question_plan(task: &TaskSpec) -> Result<QuestionPlan, evidence::Error> {
    match task {
        TaskSpec::Index { prompt: None } => Ok(QuestionPlan::index()),
        TaskSpec::Index {
            prompt: Some(prompt),
        } => QuestionPlan::free_form(&[prompt.as_str()]),
        TaskSpec::Questions { questions } => {
            let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
            QuestionPlan::free_form(&questions)
        }
        TaskSpec::Moderation { policy_yaml } => {
            QuestionPlan::moderation(ModerationPolicy::from_yaml(policy_yaml)?)
        }
    }
}

fn media_failure(stage: &str, error: MediaError) -> JobFailure {
    JobFailure {
        reason: format!("{stage}: {error}"),
        retryable: error.retryable(),
    }
}

fn model_failure(error: vidx_model::Error) -> JobFailure {
    let retryable = matches!(error, vidx_model::Error::Io { .. });
    JobFailure {
        reason: format!("model: {error}"),
        retryable,
    }
}

fn index_failure(stage: &str, error: evidence::Error) -> JobFailure {
    // Writing to the index fails for store reasons, which a later attempt may not meet.
    JobFailure {
        reason: format!("{stage}: {error}"),
        retryable: true,
    }
}

fn bridge_failure(error: WaitError) -> JobFailure {
    JobFailure {
        reason: format!("index i/o: {error}"),
        retryable: true,
    }
}

fn invalid(reason: String) -> JobFailure {
    JobFailure {
        reason,
        retryable: false,
    }
}

/// Splits `[0, duration)` into segments of at most `length` seconds.
pub fn segments(duration_s: f64, length_s: f64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = 0.0;
    while start < duration_s && out.len() < 10_000 {
        let end = (start + length_s).min(duration_s);
        out.push(Segment {
            start_s: start,
            end_s: end,
        });
        start = end;
    }
    out
}

/// Sampled frames as the rest of a job needs them.
#[derive(Default)]
struct PreparedFrames {
    /// Frames resized for the model, times relative to the segment start.
    frames: Vec<TimedFrame>,
    /// One PNG thumbnail per frame, at most [`THUMBNAIL_MAX_WIDTH`] wide.
    thumbnails: Vec<EncodedImage>,
    /// Upright size of the first frame as decoded, `(width, height)`.
    source_size: Option<(usize, usize)>,
}

impl PreparedFrames {
    /// Resizes `frame` for the model (the one resize its preprocessing does; the frames then go
    /// to `encode_resized_frames`) and keeps a thumbnail.
    fn add(
        &mut self,
        processor: &vidx_model::processor::Processor,
        frame: media::Frame,
        segment_start_s: f64,
    ) -> Result<(), JobFailure> {
        let image = RgbImage::new(frame.width as usize, frame.height as usize, frame.rgb)
            .map_err(model_failure)?;
        self.source_size.get_or_insert((image.width, image.height));
        self.thumbnails.push(png(&image)?);
        self.frames.push(TimedFrame {
            image: processor.resize(&image).map_err(model_failure)?,
            timestamp_seconds: frame.t_s - segment_start_s,
        });
        Ok(())
    }
}

fn png(image: &RgbImage) -> Result<EncodedImage, JobFailure> {
    // Only a wide frame is scaled down; either way the pixels are copied once, into the encoder.
    let (width, height, data) = if image.width > THUMBNAIL_MAX_WIDTH {
        let height = (image.height * THUMBNAIL_MAX_WIDTH / image.width).max(1);
        let scaled = image
            .resized(THUMBNAIL_MAX_WIDTH, height)
            .map_err(model_failure)?;
        (scaled.width, scaled.height, scaled.data)
    } else {
        (image.width, image.height, image.data.clone())
    };
    let buffer = image::RgbImage::from_raw(width as u32, height as u32, data)
        .ok_or_else(|| invalid("thumbnail buffer does not match its size".into()))?;
    let mut bytes = Cursor::new(Vec::new());
    buffer
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|error| invalid(format!("thumbnail: {error}")))?;
    Ok(EncodedImage {
        bytes: Bytes::from(bytes.into_inner()),
        content_type: "image/png".into(),
        width: width as u32,
        height: height as u32,
    })
}

/// Verifies every claim of a segment's recorded answers against `frames` (the model-sized frames
/// the segment was asked about) and records the confidences, which moderation verdicts with a
/// `min_confidence` then use.
fn verify_segment(
    model: &OpenO3Video,
    frames: &[TimedFrame],
    builder: &mut VideoDocumentBuilder,
    segment_index: u32,
) -> Result<(), JobFailure> {
    let answers = builder
        .answers(segment_index)
        .map_err(|error| invalid(format!("evidence: {error}")))?;
    let confidences = claim_confidences(model, frames, answers).map_err(model_failure)?;
    let question_ids: Vec<String> = answers.iter().map(|a| a.question_id.clone()).collect();
    let verified: usize = confidences
        .iter()
        .map(|claims| claims.iter().flatten().count())
        .sum();
    for (question_id, claims) in question_ids.iter().zip(&confidences) {
        builder
            .set_confidences(segment_index, question_id, claims)
            .map_err(|error| invalid(format!("evidence: {error}")))?;
    }
    info!(segment_index, verified, "claims verified");
    Ok(())
}

/// What probing found: split the video, or go on with this.
pub enum Probed {
    /// A whole-video job longer than a segment: these segment jobs instead.
    Split(Vec<Segment>),
    /// Nothing to compute: the job is done with this key.
    Done {
        /// The document (or, for a segment job, what the segment counter had it report).
        key: Path,
        /// The video's document existed before the job (found from metadata alone).
        skipped: bool,
    },
    /// Go on and index.
    Index(Box<ProbedJob>),
}

/// A job probed and checked against the index, before its frames are decoded.
pub struct ProbedJob {
    /// The evidence task.
    pub task: QuestionPlan,
    /// The pass's index.
    pub index: EvidenceIndex,
    /// The video (or segment) as the document names it.
    pub identity: VideoIdentity,
    /// Where its document goes (a segment job writes its part beside it).
    pub document_key: Path,
    /// What the probe found.
    pub probe: ProbeInfo,
    /// The segment, in seconds of the video.
    pub start_s: f64,
    /// End of the segment.
    pub end_s: f64,
    /// Which segment of the video this is (0 for a whole-video job).
    pub segment_index: u32,
    /// How many segments the video has (1 for a whole-video job).
    pub segment_count: u32,
}

/// A probed job with its frames: everything the model needs.
pub struct SampledJob {
    /// The probed job.
    pub job: ProbedJob,
    frames: PreparedFrames,
    clock: SegmentClock,
    /// The model-sized frames, kept for claim verification when the pass verifies.
    verify_frames: Option<Vec<TimedFrame>>,
}

impl VideoJobRunner {
    /// Looks the document up from the video's metadata alone, then opens and probes the video,
    /// decides on a split, and for a segment job checks whether its part is already written.
    pub fn probe(&self, job: &LeasedJob, timings: &mut JobTimings) -> Result<Probed, JobFailure> {
        let spec = &job.job.spec;
        let task = pass_plan(&job.pass).map_err(|error| invalid(format!("task: {error}")))?;
        let started = Instant::now();
        let source =
            (self.open_video)(&spec.video_url).map_err(|error| media_failure("open", error))?;
        let index = EvidenceIndex::from_url(&job.pass.destination)
            .map_err(|error| invalid(format!("destination: {error}")))?;
        // Before any byte of the video is read: its metadata names its document.
        let SkipCheck {
            identity,
            document_key,
            indexed,
        } = skip_check(&source, &index, &self.model_info, &task)?;
        timings.add_since(Stage::Fetch, started);
        if indexed {
            info!(key = %document_key, "already indexed, skipped");
            return Ok(Probed::Done {
                key: document_key,
                skipped: true,
            });
        }
        let started = Instant::now();
        let probe = media::probe_source(&source, &ProbeOptions::default())
            .map_err(|error| media_failure("probe", error))?;
        timings.add_since(Stage::Probe, started);
        let duration = probe.duration_s.unwrap_or(0.0);
        let segment_length = job.pass.sampling.segment_secs;
        if spec.probe && duration > segment_length {
            return Ok(Probed::Split(segments(duration, segment_length)));
        }

        let start_s = spec.start_s;
        let end_s = if spec.end_s > start_s {
            spec.end_s
        } else {
            duration.max(start_s)
        };
        // A segment job writes its segment's part of the video's document; which segment it is
        // follows from the same split the probe job made.
        let (segment_index, segment_count) = if spec.probe {
            (0, 1)
        } else {
            let all = segments(duration, segment_length);
            let position = all
                .iter()
                .position(|segment| (segment.start_s - start_s).abs() < 1e-6)
                .ok_or_else(|| {
                    invalid(format!(
                        "segment [{start_s}, {end_s}) is not one of the video's {} segments",
                        all.len()
                    ))
                })?;
            (position as u32, all.len() as u32)
        };
        if !spec.probe {
            let part_key = EvidenceIndex::part_key(&document_key, segment_index);
            let written = block_on(index.is_indexed(&part_key))
                .map_err(bridge_failure)?
                .map_err(|error| index_failure("index", error))?;
            if written {
                info!(key = %part_key, "segment part already written");
                let reported = self.count_and_assemble(
                    job,
                    &index,
                    &document_key,
                    segment_index,
                    segment_count,
                )?;
                return Ok(Probed::Done {
                    key: reported,
                    skipped: false,
                });
            }
        }
        Ok(Probed::Index(Box::new(ProbedJob {
            task,
            index,
            identity,
            document_key,
            probe,
            start_s,
            end_s,
            segment_index,
            segment_count,
        })))
    }

    /// Decodes the segment's frames, resizing each for the model and keeping a thumbnail.
    pub fn sample(
        &self,
        leased: &LeasedJob,
        job: ProbedJob,
        cancel: &CancelFlag,
        timings: &mut JobTimings,
    ) -> Result<SampledJob, JobFailure> {
        let spec = &leased.job.spec;
        let source =
            (self.open_video)(&spec.video_url).map_err(|error| media_failure("open", error))?;
        let start_s = job.start_s;
        let sampling = SamplingSpec {
            fps: leased.pass.sampling.fps,
            max_frames: leased.pass.sampling.max_frames as usize,
            start_s,
            end_s: (spec.end_s > start_s).then_some(spec.end_s),
        };
        // Each frame is resized for the model and thumbnailed as soon as it is decoded: a job
        // holds model-sized frames and small thumbnails, never a segment of full-size frames
        // (16 frames of 8K video are 1.6 GB).
        let started = Instant::now();
        let mut prepared = PreparedFrames::default();
        let mut failure = None;
        let sampled =
            media::sample_source_with(&source, &sampling, &SampleOptions::default(), |frame| {
                if cancel.is_raised() {
                    return Err(MediaError::Stopped {
                        uri: source.uri.clone(),
                        reason: "cancelled".into(),
                    });
                }
                prepared
                    .add(self.model.processor(), frame, start_s)
                    .map_err(|job_failure| {
                        let reason = job_failure.reason.clone();
                        failure = Some(job_failure);
                        MediaError::Stopped {
                            uri: source.uri.clone(),
                            reason,
                        }
                    })
            });
        if let Some(failure) = failure {
            return Err(failure);
        }
        if cancel.is_raised() {
            return Err(cancelled());
        }
        let stats = sampled.map_err(|error| media_failure("sample", error))?;
        let wall = started.elapsed().as_secs_f64();
        timings.add(Stage::Fetch, stats.fetch_s.min(wall));
        timings.add(Stage::Decode, (wall - stats.fetch_s).max(0.0));
        timings.frames_decoded += stats.frames_decoded;
        timings.frames_kept += stats.frames_kept as u64;
        let segment_end = job.end_s.max(
            prepared
                .frames
                .iter()
                .map(|f| f.timestamp_seconds + start_s)
                .fold(start_s, f64::max),
        );
        let clock = SegmentClock::new(
            job.segment_index,
            start_s,
            segment_end.max(start_s + 1e-3),
            prepared
                .frames
                .iter()
                .map(|frame| frame.timestamp_seconds + start_s)
                .collect(),
        )
        .map_err(|error| invalid(format!("segment: {error}")))?;
        Ok(SampledJob {
            job,
            frames: prepared,
            clock,
            verify_frames: None,
        })
    }

    /// Answers every question of the task on the model thread (vision once, the shared prefix
    /// once, the questions decoded in the batch with other jobs'); answers in question order.
    pub fn reason(
        &self,
        job: &mut SampledJob,
        cancel: &CancelFlag,
        timings: &mut JobTimings,
    ) -> Result<Vec<Answer>, JobFailure> {
        let frames = std::mem::take(&mut job.frames.frames);
        // Verification crops the claims' boxes from these frames after the answers are in.
        if job.job.task.verify {
            job.verify_frames = Some(frames.clone());
        }
        let request = ModelRequest {
            frames,
            system_prompt: vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT,
            duration_s: job.clock.duration_s(),
            prompts: job
                .job
                .task
                .questions
                .iter()
                .map(|q| q.prompt_text())
                .collect(),
            generation: self.generation.clone(),
            cancel: cancel.clone(),
        };
        let answered = self.model_thread()?.infer(request);
        let answered = match answered {
            Ok(answered) => answered,
            Err(ModelFailure::Model(reason)) => {
                return Err(JobFailure {
                    reason: format!("model: {reason}"),
                    retryable: false,
                });
            }
            // The job's own panic handling reports it, as for a panic on this thread.
            Err(ModelFailure::Panicked(message)) => std::panic::resume_unwind(Box::new(message)),
            Err(ModelFailure::Cancelled) => return Err(cancelled()),
            Err(ModelFailure::Stopped) => {
                return Err(JobFailure {
                    reason: "model: the model thread stopped".into(),
                    retryable: true,
                });
            }
        };
        for (stage, seconds) in &answered.timings.stages {
            timings.add(*stage, *seconds);
        }
        timings.tokens += answered.timings.tokens;
        if cancel.is_raised() {
            return Err(cancelled());
        }
        Ok(answered.answers)
    }

    /// Builds the document from the answers, stores the thumbnails and writes it.
    pub fn write(
        &self,
        leased: &LeasedJob,
        job: SampledJob,
        answers: &[Answer],
        timings: &mut JobTimings,
    ) -> Result<Outcome, JobFailure> {
        let started = Instant::now();
        let SampledJob {
            job,
            frames,
            clock,
            verify_frames,
        } = job;
        let ProbedJob {
            task,
            index,
            identity,
            document_key,
            probe,
            segment_index,
            segment_count,
            ..
        } = job;
        let (source_width, source_height) = frames
            .source_size
            .ok_or_else(|| invalid("sample: no frames".into()))?;
        let (model_height, model_width) = self
            .model
            .processor()
            .target_size(source_height, source_width)
            .map_err(model_failure)?;
        let rotation = Rotation::from_degrees_clockwise(i64::from(probe.rotation))
            .map_err(|error| invalid(format!("rotation: {error}")))?;
        let geometry = FrameGeometry::new(
            probe.coded_width,
            probe.coded_height,
            rotation,
            model_width as u32,
            model_height as u32,
        )
        .map_err(|error| invalid(format!("geometry: {error}")))?
        .mirrored(probe.mirrored);
        let mut builder = VideoDocumentBuilder::new(DocumentHeader {
            video: identity,
            probe: ProbeFacts {
                uri: probe.uri.clone(),
                container: probe.container.clone(),
                codec: probe.codec.clone(),
                width: probe.width,
                height: probe.height,
                rotation: probe.rotation as i32,
                fps: probe.fps.unwrap_or(0.0),
                duration_s: probe.duration_s.unwrap_or(0.0),
                has_audio: probe.has_audio,
            },
            model: self.model_info.clone(),
            task: task.clone(),
            geometry,
        });
        builder
            .add_segment(clock)
            .map_err(|error| invalid(format!("segment: {error}")))?;
        builder.written_by(leased.job.pass_id.clone(), now_ms());
        for (question, answer) in task.questions.iter().zip(answers) {
            builder
                .record_answer(segment_index, &question.id, &answer.text)
                .map_err(|error| invalid(format!("evidence: {error}")))?;
        }
        if let Some(verify_frames) = &verify_frames {
            verify_segment(&self.model, verify_frames, &mut builder, segment_index)?;
        }
        for (frame_index, encoded) in frames.thumbnails.into_iter().enumerate() {
            let thumbnail =
                block_on(index.put_thumbnail(&document_key, segment_index, frame_index, encoded))
                    .map_err(bridge_failure)?
                    .map_err(|error| index_failure("thumbnail", error))?;
            builder
                .set_thumbnail(segment_index, frame_index, thumbnail)
                .map_err(|error| invalid(format!("evidence: {error}")))?;
        }
        let document = builder.finish();
        if !leased.job.spec.probe {
            block_on(index.write_part(&document))
                .map_err(bridge_failure)?
                .map_err(|error| index_failure("write", error))?;
            let reported = self.count_and_assemble(
                leased,
                &index,
                &document_key,
                segment_index,
                segment_count,
            )?;
            timings.add_since(Stage::Write, started);
            return Ok(Outcome::Done {
                result_url: Some(reported.to_string()),
            });
        }
        let written = block_on(index.write_document(&document))
            .map_err(bridge_failure)?
            .map_err(|error| index_failure("write", error))?;
        timings.add_since(Stage::Write, started);
        info!(key = %written, claims = document.claim_count(), "evidence written");
        Ok(Outcome::Done {
            result_url: Some(written.to_string()),
        })
    }
}

fn cancelled() -> JobFailure {
    JobFailure {
        reason: "cancelled".into(),
        retryable: true,
    }
}

impl JobRunner for VideoJobRunner {
    fn run(&self, job: &LeasedJob, cancel: &CancelFlag) -> Result<Outcome, JobFailure> {
        self.run_timed(job, cancel, &mut JobTimings::default())
    }

    fn run_timed(
        &self,
        job: &LeasedJob,
        cancel: &CancelFlag,
        timings: &mut JobTimings,
    ) -> Result<Outcome, JobFailure> {
        let probed = match self.probe(job, timings)? {
            Probed::Split(segments) => return Ok(Outcome::Split(segments)),
            Probed::Done { key, skipped } => {
                timings.skipped = skipped;
                return Ok(Outcome::Done {
                    result_url: Some(key.to_string()),
                });
            }
            Probed::Index(probed) => *probed,
        };
        let mut sampled = self.sample(job, probed, cancel, timings)?;
        let answers = self.reason(&mut sampled, cancel, timings)?;
        self.write(job, sampled, &answers, timings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_video_without_gaps() {
        let parts = segments(1_337.5, 600.0);
        let ranges: Vec<(f64, f64)> = parts.iter().map(|s| (s.start_s, s.end_s)).collect();
        assert_eq!(ranges, [(0.0, 600.0), (600.0, 1200.0), (1200.0, 1337.5)]);
        assert!(segments(0.0, 600.0).is_empty());
    }

    #[test]
    fn pass_tasks_become_evidence_tasks() {
        assert_eq!(
            question_plan(&TaskSpec::Index { prompt: None })
                .unwrap()
                .questions
                .len(),
            1
        );
        let questions = TaskSpec::Questions {
            questions: vec!["a?".into(), "b?".into()],
        };
        assert_eq!(question_plan(&questions).unwrap().questions.len(), 2);
        let bad = TaskSpec::Moderation {
            policy_yaml: "not: [a policy".into(),
        };
        assert!(question_plan(&bad).is_err());
    }
}
