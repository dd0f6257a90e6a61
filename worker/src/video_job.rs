//! The work of one job: [`VideoJobRunner`], the [`JobRunner`] that turns a leased job into an
//! evidence document.
//!
//! Probe the video; a whole-video job longer than the pass's segment length is split instead of
//! processed. Otherwise sample the segment's frames, encode them with the vision tower once,
//! prefill the shared prompt prefix (system prompt, frames, duration line) once, and answer every
//! question of the task from that prefix; parse each answer into evidence, map it to source pixels
//! and absolute time, store frame thumbnails, and write the document. A document that already
//! exists (same video, model and task) is not computed again.
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
use tracing::info;
use vidx_core::domain::{LeasedJob, Segment, TaskSpec};
use vidx_model::generation::GenerationParams;
use vidx_model::{Answer, OpenO3Video, RgbImage, TimedFrame};

use crate::bridge::{WaitError, block_on};
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

/// The [`JobRunner`] for video jobs: reads, reasons and writes evidence. Jobs run on their own
/// threads side by side; the model work of all of them goes to one [`ModelThread`], started on
/// the first job.
pub struct VideoJobRunner {
    model: Arc<OpenO3Video>,
    model_info: ModelInfo,
    generation: GenerationParams,
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

/// The evidence task a pass asks for.
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

/// What probing found: split the video, or go on with this.
pub enum Probed {
    /// A whole-video job longer than a segment: these segment jobs instead.
    Split(Vec<Segment>),
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
    /// Where its document goes.
    pub document_key: object_store::path::Path,
    /// What the probe found.
    pub probe: ProbeInfo,
    /// The segment, in seconds of the video.
    pub start_s: f64,
    /// End of the segment.
    pub end_s: f64,
    /// The document already exists.
    pub already_indexed: bool,
}

/// A probed job with its frames: everything the model needs.
pub struct SampledJob {
    /// The probed job.
    pub job: ProbedJob,
    frames: PreparedFrames,
    clock: SegmentClock,
}

impl VideoJobRunner {
    /// Opens and probes the video, decides on a split, and looks the document up in the index.
    pub fn probe(&self, job: &LeasedJob, timings: &mut JobTimings) -> Result<Probed, JobFailure> {
        let spec = &job.job.spec;
        let task =
            question_plan(&job.pass.task).map_err(|error| invalid(format!("task: {error}")))?;
        let started = Instant::now();
        let source =
            VideoSource::from_url(&spec.video_url).map_err(|error| media_failure("open", error))?;
        let probe = media::probe_source(&source, &ProbeOptions::default())
            .map_err(|error| media_failure("probe", error))?;
        timings.add_since(Stage::Probe, started);
        let duration = probe.duration_s.unwrap_or(0.0);
        let segment_length = job.pass.sampling.segment_secs;
        if spec.probe && duration > segment_length {
            return Ok(Probed::Split(segments(duration, segment_length)));
        }

        let started = Instant::now();
        let index = EvidenceIndex::from_url(&job.pass.destination)
            .map_err(|error| invalid(format!("destination: {error}")))?;
        let start_s = spec.start_s;
        let end_s = if spec.end_s > start_s {
            spec.end_s
        } else {
            duration.max(start_s)
        };
        // A segment job gets a document of its own: its identity names the time range
        // (a W3C media fragment), so segments of one video never overwrite each other.
        let url = if spec.probe {
            spec.video_url.clone()
        } else {
            format!("{}#t={start_s},{end_s}", spec.video_url)
        };
        let identity = VideoIdentity {
            url,
            size_bytes: probe.size_bytes,
            etag: spec.etag.clone(),
            checksum: None,
        };
        let document_key = index.document_key(&identity, &self.model_info, &task.hash());
        let already = block_on(index.is_indexed(&document_key)).map_err(bridge_failure)?;
        let already_indexed = already.map_err(|error| index_failure("index", error))?;
        timings.add_since(Stage::Fetch, started);
        Ok(Probed::Index(Box::new(ProbedJob {
            task,
            index,
            identity,
            document_key,
            probe,
            start_s,
            end_s,
            already_indexed,
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
            VideoSource::from_url(&spec.video_url).map_err(|error| media_failure("open", error))?;
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
            0,
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
        let request = ModelRequest {
            frames: std::mem::take(&mut job.frames.frames),
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
        job: SampledJob,
        answers: &[Answer],
        timings: &mut JobTimings,
    ) -> Result<Outcome, JobFailure> {
        let started = Instant::now();
        let SampledJob { job, frames, clock } = job;
        let ProbedJob {
            task,
            index,
            identity,
            document_key,
            probe,
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
        for (question, answer) in task.questions.iter().zip(answers) {
            builder
                .record_answer(0, &question.id, &answer.text)
                .map_err(|error| invalid(format!("evidence: {error}")))?;
        }
        for (frame_index, encoded) in frames.thumbnails.into_iter().enumerate() {
            let thumbnail = block_on(index.put_thumbnail(&document_key, 0, frame_index, encoded))
                .map_err(bridge_failure)?
                .map_err(|error| index_failure("thumbnail", error))?;
            builder
                .set_thumbnail(0, frame_index, thumbnail)
                .map_err(|error| invalid(format!("evidence: {error}")))?;
        }
        let document = builder.finish();
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
            Probed::Index(probed) => *probed,
        };
        if probed.already_indexed {
            info!(key = %probed.document_key, "already indexed");
            timings.skipped = true;
            return Ok(Outcome::Done {
                result_url: Some(probed.document_key.to_string()),
            });
        }
        let mut sampled = self.sample(job, probed, cancel, timings)?;
        let answers = self.reason(&mut sampled, cancel, timings)?;
        self.write(sampled, &answers, timings)
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
