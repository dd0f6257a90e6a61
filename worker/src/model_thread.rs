//! The one thread that runs the model, shared by every job in flight.
//!
//! Jobs are prepared (fetched, probed, decoded) on their own threads; each then hands its frames
//! and questions to [`ModelThread::infer`] and blocks until its answers come back. The model
//! thread takes requests from a bounded queue and keeps up to `max_jobs` of them in one
//! [`BatchDecoder`]: a job joining runs its vision tower and prefills (its prefix once, then
//! every question from it), its questions join the running batch, and every step decodes one
//! token of every active question of every job. A finished question retires and the others go
//! on; a new job joins between steps without the batch draining. Answers are keyed by
//! (job, question) in the sequence id, never by position in the batch.
//!
//! Work for a job runs in that job's span, so its log lines carry its `job_id` on this thread
//! too. A panic in a job's vision or prefill fails that job alone; a panic or error in a batch
//! step fails the jobs in the batch and the thread starts a fresh batch. The thread ends when
//! the last [`ModelThread`] handle is dropped.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Instant;

use tracing::{Span, debug, warn};
use vidx_model::batch::{BatchDecoder, BatchEvent, SequenceId};
use vidx_model::generation::{Generated, GenerationParams};
use vidx_model::pipeline::QuestionStartInfo;
use vidx_model::{Answer, OpenO3Video, TimedFrame};

use crate::metrics::{JobTimings, Stage, WorkerMetrics};
use crate::runtime::CancelFlag;

/// Bits of a [`SequenceId`] that hold the question's index; the rest name the job.
const QUESTION_BITS: u32 = 16;

/// What a job asks of the model.
pub struct ModelRequest {
    /// Frames resized for the model, times relative to the segment start.
    pub frames: Vec<TimedFrame>,
    /// The system prompt of the shared prefix.
    pub system_prompt: &'static str,
    /// Segment duration in the prompt.
    pub duration_s: f64,
    /// The questions, each answered from the shared prefix.
    pub prompts: Vec<String>,
    /// Decoding settings.
    pub generation: GenerationParams,
    /// Raised when the job should stop; its questions then leave the batch.
    pub cancel: CancelFlag,
}

/// What the model produced for a job.
#[derive(Debug, Clone)]
pub struct ModelAnswers {
    /// One answer per prompt, in the order of the request's prompts.
    pub answers: Vec<Answer>,
    /// Seconds of vision, prefill and token decoding, and the tokens generated.
    pub timings: JobTimings,
}

/// Why the model produced no answers for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFailure {
    /// The model returned an error.
    Model(String),
    /// The model panicked; the message is the panic's.
    Panicked(String),
    /// The job was cancelled while it was in the batch.
    Cancelled,
    /// The model thread is gone.
    Stopped,
}

struct Envelope {
    request: ModelRequest,
    span: Span,
    reply: SyncSender<Result<ModelAnswers, ModelFailure>>,
}

/// A handle to the model thread; cloning shares the thread, which ends once every handle is
/// dropped and the jobs it holds are answered.
#[derive(Clone)]
pub struct ModelThread {
    queue: SyncSender<Envelope>,
}

impl std::fmt::Debug for ModelThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelThread").finish_non_exhaustive()
    }
}

impl ModelThread {
    /// Starts the model thread: up to `max_jobs` jobs decode together, and up to `queue` more
    /// wait, prepared, for a place.
    pub fn start(
        model: Arc<OpenO3Video>,
        max_jobs: usize,
        queue: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(queue.max(1));
        std::thread::Builder::new()
            .name("vidx-model".into())
            .spawn(move || {
                metrics.model_started();
                ModelLoop::new(&model, max_jobs.max(1), &metrics).run(&receiver);
            })?;
        Ok(ModelThread { queue: sender })
    }

    /// Runs `request` on the model thread and blocks until its answers come back. Call from a
    /// job's thread, never from async code.
    pub fn infer(&self, request: ModelRequest) -> Result<ModelAnswers, ModelFailure> {
        let (reply, answer) = sync_channel(1);
        let envelope = Envelope {
            request,
            span: Span::current(),
            reply,
        };
        self.queue
            .send(envelope)
            .map_err(|_| ModelFailure::Stopped)?;
        answer.recv().map_err(|_| ModelFailure::Stopped)?
    }
}

/// A job in the batch.
struct ActiveJob {
    span: Span,
    cancel: CancelFlag,
    reply: SyncSender<Result<ModelAnswers, ModelFailure>>,
    infos: Vec<QuestionStartInfo>,
    finished: Vec<Option<Generated>>,
    timings: JobTimings,
}

impl ActiveJob {
    fn is_complete(&self) -> bool {
        self.finished.iter().all(Option::is_some)
    }
}

struct ModelLoop<'m> {
    model: &'m OpenO3Video,
    max_jobs: usize,
    metrics: &'m WorkerMetrics,
    batch: BatchDecoder<'m>,
    jobs: BTreeMap<u64, ActiveJob>,
    next_job: u64,
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        return (*message).to_owned();
    }
    if let Some(message) = payload.downcast_ref::<String>() {
        return message.clone();
    }
    "panic without a message".into()
}

impl<'m> ModelLoop<'m> {
    fn new(model: &'m OpenO3Video, max_jobs: usize, metrics: &'m WorkerMetrics) -> Self {
        ModelLoop {
            model,
            max_jobs,
            metrics,
            batch: Self::fresh_batch(model, max_jobs),
            jobs: BTreeMap::new(),
            next_job: 0,
        }
    }

    fn fresh_batch(model: &'m OpenO3Video, max_jobs: usize) -> BatchDecoder<'m> {
        // Room for a few questions per job; more wait for a slot.
        BatchDecoder::new(model.model(), max_jobs * 4)
    }

    fn run(mut self, queue: &Receiver<Envelope>) {
        loop {
            // Admit prepared jobs while there is room: block for one only when nothing decodes.
            while self.jobs.len() < self.max_jobs {
                let envelope = if self.jobs.is_empty() {
                    match queue.recv() {
                        Ok(envelope) => envelope,
                        Err(_) => return,
                    }
                } else {
                    match queue.try_recv() {
                        Ok(envelope) => envelope,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                self.admit(envelope);
            }
            self.drop_cancelled();
            if !self.jobs.is_empty() {
                self.step();
            }
        }
    }

    /// Vision and prefill for a new job, then its questions join the batch.
    fn admit(&mut self, envelope: Envelope) {
        let Envelope {
            request,
            span,
            reply,
        } = envelope;
        let _entered = span.enter();
        if request.cancel.is_raised() {
            let _ = reply.send(Err(ModelFailure::Cancelled));
            return;
        }
        let job_key = self.next_job;
        self.next_job += 1;
        let started = Instant::now();
        let mut timings = JobTimings::default();
        let prepared = catch_unwind(AssertUnwindSafe(|| {
            self.start_questions(job_key, &request, &mut timings)
        }));
        self.metrics.model_busy(started.elapsed());
        let infos = match prepared {
            Ok(Ok(infos)) => infos,
            Ok(Err(error)) => {
                self.forget_sequences(job_key, request.prompts.len());
                let _ = reply.send(Err(ModelFailure::Model(error.to_string())));
                return;
            }
            Err(payload) => {
                self.forget_sequences(job_key, request.prompts.len());
                let _ = reply.send(Err(ModelFailure::Panicked(panic_message(&*payload))));
                return;
            }
        };
        debug!(
            questions = infos.len(),
            batch = self.batch.active_len() + self.batch.waiting_len(),
            "joined the batch"
        );
        let finished = vec![None; infos.len()];
        drop(_entered);
        let job = ActiveJob {
            span,
            cancel: request.cancel,
            reply,
            infos,
            finished,
            timings,
        };
        if job.is_complete() {
            self.answer(job);
            return;
        }
        self.jobs.insert(job_key, job);
    }

    fn start_questions(
        &mut self,
        job_key: u64,
        request: &ModelRequest,
        timings: &mut JobTimings,
    ) -> vidx_model::Result<Vec<QuestionStartInfo>> {
        let started = Instant::now();
        let encoded = self.model.encode_resized_frames(&request.frames)?;
        timings.add_since(Stage::Vision, started);
        let started = Instant::now();
        let prefix = self
            .model
            .prefill(&encoded, request.system_prompt, request.duration_s)?;
        let mut infos = Vec::with_capacity(request.prompts.len());
        for (index, prompt) in request.prompts.iter().enumerate() {
            let id = sequence_id(job_key, index);
            let start = self
                .model
                .start_question(&prefix, prompt, &request.generation, id)?;
            infos.push(start.info());
            self.batch.submit(start.sequence)?;
        }
        timings.add_since(Stage::Prefill, started);
        Ok(infos)
    }

    /// Takes a failed job's already submitted questions out of the batch.
    fn forget_sequences(&mut self, job_key: u64, questions: usize) {
        for index in 0..questions {
            let id = sequence_id(job_key, index);
            if self.batch.contains(id) {
                let _ = self.batch.cancel(id);
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let cancelled: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.cancel.is_raised())
            .map(|(key, _)| *key)
            .collect();
        for key in cancelled {
            let Some(job) = self.jobs.remove(&key) else {
                continue;
            };
            self.forget_sequences(key, job.infos.len());
            let _entered = job.span.enter();
            debug!("left the batch: cancelled");
            let _ = job.reply.send(Err(ModelFailure::Cancelled));
        }
    }

    /// One token for every active question of every job.
    fn step(&mut self) {
        let started = Instant::now();
        let stepped = catch_unwind(AssertUnwindSafe(|| self.batch.step()));
        let took = started.elapsed();
        self.metrics.model_busy(took);
        for job in self.jobs.values_mut() {
            job.timings.add(Stage::DecodeTokens, took.as_secs_f64());
        }
        let events = match stepped {
            Ok(Ok(events)) => events,
            Ok(Err(error)) => return self.fail_batch(ModelFailure::Model(error.to_string())),
            Err(payload) => {
                return self.fail_batch(ModelFailure::Panicked(panic_message(&*payload)));
            }
        };
        for event in events {
            let BatchEvent::Finished { id, generated } = event else {
                continue;
            };
            let (job_key, index) = split_sequence_id(id);
            let Some(job) = self.jobs.get_mut(&job_key) else {
                continue;
            };
            if let Some(slot) = job.finished.get_mut(index) {
                job.timings.tokens += generated.tokens.len() as u64;
                *slot = Some(generated);
            }
            if job.is_complete()
                && let Some(job) = self.jobs.remove(&job_key)
            {
                self.answer(job);
            }
        }
    }

    /// A step failed: every job in the batch fails with it, and the next job starts a new batch.
    fn fail_batch(&mut self, failure: ModelFailure) {
        warn!(jobs = self.jobs.len(), ?failure, "batch step failed");
        for (_, job) in std::mem::take(&mut self.jobs) {
            let _ = job.reply.send(Err(failure.clone()));
        }
        self.batch = Self::fresh_batch(self.model, self.max_jobs);
    }

    fn answer(&self, job: ActiveJob) {
        let ActiveJob {
            span,
            reply,
            infos,
            finished,
            timings,
            ..
        } = job;
        let _entered = span.enter();
        let answers: Result<Vec<Answer>, ModelFailure> = infos
            .iter()
            .zip(finished)
            .map(|(info, generated)| {
                let generated = generated.ok_or_else(|| {
                    ModelFailure::Model("a batched question never finished".into())
                })?;
                self.model
                    .answer(info, generated)
                    .map_err(|error| ModelFailure::Model(error.to_string()))
            })
            .collect();
        let _ = reply.send(answers.map(|answers| ModelAnswers { answers, timings }));
    }
}

fn sequence_id(job_key: u64, question: usize) -> SequenceId {
    debug_assert!(question < 1 << QUESTION_BITS);
    (job_key << QUESTION_BITS) | question as u64
}

fn split_sequence_id(id: SequenceId) -> (u64, usize) {
    (
        id >> QUESTION_BITS,
        (id & ((1 << QUESTION_BITS) - 1)) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_ids_name_the_job_and_the_question() {
        for (job, question) in [(0, 0), (1, 3), (70_000, 65_535)] {
            assert_eq!(
                split_sequence_id(sequence_id(job, question)),
                (job, question)
            );
        }
        assert_ne!(sequence_id(1, 0), sequence_id(0, 1));
    }
}
