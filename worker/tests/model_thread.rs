//! The model thread batches the questions of several jobs together and gives every job its own
//! answers: jobs sent from their own threads at once, each with its own frames, questions and
//! answer length, get exactly the tokens that job gets decoded alone (greedy, CPU f32), keyed by
//! job and question whatever their positions in the shared batch. The tiny Qwen2.5-VL fixture.

use std::path::Path;
use std::sync::Arc;

use vidx_model::generation::GenerationParams;
use vidx_model::{LoadOptions, OpenO3Video, RgbImage, TimedFrame};
use vidx_worker::metrics::{Stage, WorkerMetrics};
use vidx_worker::model_thread::{ModelFailure, ModelRequest, ModelThread};
use vidx_worker::runtime::{CancelFlag, StopReason};

const SYSTEM: &str = vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT;

fn model() -> Arc<OpenO3Video> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/qwen2_5_vl/tiny-realvocab");
    let mut model = OpenO3Video::load(&dir, &LoadOptions::default()).expect("fixture model loads");
    model.set_pixel_bounds(3_136, 12_544);
    Arc::new(model)
}

/// Two frames of a gradient that differs per job.
fn frames(model: &OpenO3Video, job: usize) -> Vec<TimedFrame> {
    (0..2)
        .map(|t| {
            let (width, height) = (64usize, 48usize);
            let data = (0..width * height)
                .flat_map(|i| {
                    let (x, y) = (i % width, i / width);
                    [
                        (x * 4 + job * 60) as u8,
                        (y * 5 + t * 90) as u8,
                        (job * 100 + 30) as u8,
                    ]
                })
                .collect();
            let image = RgbImage::new(width, height, data).unwrap();
            TimedFrame {
                image: model.processor().resize(&image).unwrap(),
                timestamp_seconds: t as f64,
            }
        })
        .collect()
}

fn request(model: &OpenO3Video, job: usize, cancel: CancelFlag) -> ModelRequest {
    let mut generation = GenerationParams::open_o3();
    generation.temperature = 0.0;
    // Every job stops at its own length, so answers moved between jobs would show.
    generation.max_new_tokens = 3 + 2 * job;
    ModelRequest {
        frames: frames(model, job),
        system_prompt: SYSTEM,
        duration_s: 2.0,
        prompts: (0..=job)
            .map(|q| format!("Question {q} of job {job}: where is the red car?"))
            .collect(),
        generation,
        cancel,
    }
}

/// Each job's answers decoded alone, without the model thread.
fn alone(model: &OpenO3Video, job: usize) -> Vec<Vec<u32>> {
    let request = request(model, job, CancelFlag::default());
    let encoded = model.encode_resized_frames(&request.frames).unwrap();
    let prefix = model.prefill(&encoded, SYSTEM, request.duration_s).unwrap();
    let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
    model
        .ask_batched(&prefix, &prompts, &request.generation)
        .unwrap()
        .into_iter()
        .map(|answer| answer.tokens)
        .collect()
}

#[test]
fn jobs_batched_together_get_their_own_answers() {
    let model = model();
    let jobs = 3;
    let expected: Vec<Vec<Vec<u32>>> = (0..jobs).map(|job| alone(&model, job)).collect();
    let metrics = Arc::new(WorkerMetrics::new());
    let thread = ModelThread::start(Arc::clone(&model), jobs, jobs, Arc::clone(&metrics)).unwrap();
    let answered: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|job| {
                let thread = thread.clone();
                let request = request(&model, job, CancelFlag::default());
                scope.spawn(move || thread.infer(request))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (job, answered) in answered.into_iter().enumerate() {
        let answered = answered.unwrap_or_else(|failure| panic!("job {job}: {failure:?}"));
        let tokens: Vec<Vec<u32>> = answered.answers.iter().map(|a| a.tokens.clone()).collect();
        assert_eq!(tokens, expected[job], "job {job}");
        assert_eq!(answered.answers.len(), job + 1);
        assert!(answered.timings.seconds(Stage::Vision) > 0.0);
        assert!(answered.timings.seconds(Stage::Prefill) > 0.0);
        let generated: usize = tokens.iter().map(Vec::len).sum();
        assert_eq!(answered.timings.tokens, generated as u64);
    }
    let snapshot = metrics.snapshot();
    assert!(snapshot.model_busy_seconds > 0.0, "{snapshot:?}");
    assert!(
        snapshot.model_busy_ratio > 0.0 && snapshot.model_busy_ratio <= 1.0,
        "{snapshot:?}"
    );
}

#[test]
fn a_cancelled_job_leaves_and_the_thread_serves_the_next() {
    let model = model();
    let metrics = Arc::new(WorkerMetrics::new());
    let thread = ModelThread::start(Arc::clone(&model), 2, 2, metrics).unwrap();
    let cancel = CancelFlag::default();
    cancel.raise(StopReason::Cancelled);
    assert_eq!(
        thread.infer(request(&model, 1, cancel)).unwrap_err(),
        ModelFailure::Cancelled
    );
    let answered = thread
        .infer(request(&model, 0, CancelFlag::default()))
        .unwrap();
    let tokens: Vec<Vec<u32>> = answered.answers.iter().map(|a| a.tokens.clone()).collect();
    assert_eq!(tokens, alone(&model, 0));
}
