//! Workers coming and going, as they do in a cluster, with real processes: a `vidx coordinator` on
//! a real `redis-server` (append-only), two `vidx worker` processes on the tiny fixture checkpoint,
//! and a corpus of real videos and broken files on the S3-compatible test server.
//!
//! - a worker SIGKILLed mid-job: the pass still finishes, every good video indexed once;
//! - a worker SIGTERMed mid-job with a grace shorter than its job hands the job back (no attempt
//!   used) and exits 0; the other worker finishes it;
//! - the coordinator unreachable mid-job, and Redis killed and restarted from its append-only
//!   file mid-pass: the workers survive and the pass completes;
//! - a video that crashes every worker that takes it ends dead after `--max-crashes`;
//! - the workers' `/metrics`, `/healthz` and `/readyz` after a pass.
//!
//! Interruptions are aimed by reading the workers' logs (a given worker leased a job), never by
//! sleeping. The tests share the machine's few cores, so they run one at a time.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::time::Duration;

use common::cluster::{Cluster, Corpus, Worker};
use common::scrape::{Samples, http_get};

/// One cluster at a time: each runs three to five processes that want a core.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A worker's flags: a short lease (a killed worker's job comes back soon) and a few generated
/// tokens a question.
const QUICK: [&str; 4] = ["--lease-secs", "5", "--max-new-tokens", "8"];
/// Generated tokens a question for a worker whose job must outlast an interruption.
const SLOW_TOKENS: &str = "600";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn attempt_of(job: &serde_json::Value) -> u64 {
    job["attempt"].as_u64().unwrap_or_else(|| panic!("{job}"))
}

#[test]
fn a_worker_killed_mid_job_loses_no_video() {
    let _serial = serial();
    let cluster = Cluster::start(&[]);
    let corpus = Corpus::standard(3, 5);
    cluster.put_corpus(&corpus);
    let pass_id = cluster.submit(3);

    // The first worker takes the long video's segment jobs slowly; it is killed with one in hand.
    // Its lease outlasts the look below however slowly `vidx jobs` starts, and then runs out.
    let mut doomed = cluster.worker(
        "doomed",
        &["--lease-secs", "15", "--max-new-tokens", SLOW_TOKENS],
        &[],
    );
    let killed_job = doomed.wait_leased("/videos/short-");
    doomed.kill();
    assert_eq!(
        cluster.job(&pass_id, &killed_job)["state"],
        "leased",
        "the job was in hand when the worker died"
    );

    let _first = cluster.worker("first", &QUICK, &[]);
    let _second = cluster.worker("second", &QUICK, &[]);
    cluster.wait_pass_over(&pass_id, || {});
    cluster.assert_indexed_once(&pass_id, &corpus);
    // Its lease ran out and another worker took it: a second attempt.
    let job = cluster.job(&pass_id, &killed_job);
    assert_eq!(job["state"], "done", "{job}");
    assert!(attempt_of(&job) >= 2, "{job}");
}

#[test]
fn a_worker_terminated_mid_job_hands_it_back_and_exits_within_its_grace() {
    let _serial = serial();
    let cluster = Cluster::start(&[]);
    let corpus = Corpus::standard(2, 3);
    cluster.put_corpus(&corpus);
    // One attempt each: a job whose lease ran out would be dead, so the pass only finishes if
    // the job handed back used none.
    let pass_id = cluster.submit(1);

    let grace_secs = 2;
    let grace = grace_secs.to_string();
    let mut leaving = cluster.worker(
        "leaving",
        &[
            "--lease-secs",
            "30",
            "--max-new-tokens",
            SLOW_TOKENS,
            "--grace-secs",
            grace.as_str(),
        ],
        &[],
    );
    let job_id = leaving.wait_leased("/videos/short-");
    let leased = cluster.job(&pass_id, &job_id);
    assert_eq!(leased["state"], "leased", "{leased}");
    leaving.terminate();
    let (status, log) = leaving.wait_exit(Duration::from_secs(grace_secs + 20));
    assert_eq!(status.code(), Some(0), "exits 0 on SIGTERM: {log}");

    // Handed back at once: pending again with no attempt used.
    let released = cluster.job(&pass_id, &job_id);
    assert_eq!(released["state"], "pending", "{released}");
    assert!(
        attempt_of(&released) <= attempt_of(&leased),
        "release used no attempt: {leased} then {released}"
    );
    assert_eq!(released["crashes"].as_u64().unwrap_or(0), 0, "{released}");

    let _first = cluster.worker("first", &QUICK, &[]);
    let _second = cluster.worker("second", &QUICK, &[]);
    cluster.wait_pass_over(&pass_id, || {});
    cluster.assert_indexed_once(&pass_id, &corpus);
    assert_eq!(cluster.job(&pass_id, &job_id)["state"], "done");
}

#[test]
fn workers_ride_out_a_coordinator_restart_and_a_redis_restart() {
    let _serial = serial();
    let mut cluster = Cluster::start(&[]);
    let corpus = Corpus::standard(3, 5);
    cluster.put_corpus(&corpus);
    let pass_id = cluster.submit(3);

    // Leases long enough to outlast each outage: the jobs in hand stay theirs.
    let args = ["--lease-secs", "30", "--max-new-tokens", "48"];
    let mut first = cluster.worker("first", &args, &[]);
    let mut second = cluster.worker("second", &args, &[]);

    // The coordinator goes away mid-job and comes back on the same port, while both workers hold
    // a job (a worker that starts during an outage is the next test's).
    first.wait_leased("/videos/");
    second.wait_leased("/videos/");
    cluster.stop_coordinator();
    // A call that found no coordinator (a heartbeat, a report or a lease) says so and is made
    // again later.
    first.wait_warning("retry", Duration::from_secs(60));
    cluster.start_coordinator();

    // Then Redis dies under the coordinator, mid-pass, and restarts from its append-only file.
    // (Not aimed at a new lease: with prefetch the workers may already hold every job.) The jobs
    // in hand could not be reported during the outage, so the pass is still running here.
    let status = cluster.status(&pass_id);
    assert_eq!(
        status["state"], "running",
        "the pass outlasts the outage: {status}"
    );
    cluster.kill_redis();
    cluster.start_redis();

    cluster.wait_pass_over(&pass_id, || {});
    for worker in [&mut first, &mut second] {
        assert!(
            worker.exited().is_none(),
            "worker {} survived: {}",
            worker.name,
            worker.log()
        );
    }
    cluster.assert_indexed_once(&pass_id, &corpus);
}

#[test]
fn a_worker_started_during_a_coordinator_outage_waits_for_it() {
    let _serial = serial();
    let mut cluster = Cluster::start(&[]);
    let corpus = Corpus::standard(1, 3);
    cluster.put_corpus(&corpus);
    let pass_id = cluster.submit(3);

    // Planned first, so the restarted coordinator need not wait out the stopped one's planning
    // claim: the test is about the worker.
    let mut polls = 0;
    while cluster.status(&pass_id)["state"] == "planning" {
        polls += 1;
        assert!(polls < 600, "the pass was never planned");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The worker starts while nothing answers on the coordinator's port: it keeps trying (and
    // says so) instead of exiting, and serves the pass once the coordinator is back.
    cluster.stop_coordinator();
    let args = ["--lease-secs", "30", "--max-new-tokens", "8"];
    let mut late = cluster.worker("late", &args, &[]);
    late.wait_warning("coordinator unreachable", Duration::from_secs(60));
    assert!(late.exited().is_none(), "{}", late.log());
    cluster.start_coordinator();

    cluster.wait_pass_over(&pass_id, || {});
    assert!(late.exited().is_none(), "worker survived: {}", late.log());
    cluster.assert_indexed_once(&pass_id, &corpus);
}

#[test]
fn a_video_that_crashes_every_worker_ends_dead_and_the_pass_finishes() {
    let _serial = serial();
    let cluster = Cluster::start(&[("VIDX_MAX_CRASHES", "2")]);
    let corpus = Corpus::standard(2, 3);
    cluster.put_corpus(&corpus);
    // Valid, but the workers' test hook aborts the process on it (as an FFmpeg segfault would).
    cluster.put_video("poison.mp4", 1);
    let pass_id = cluster.submit(5);

    let env = [("VIDX_TEST_ABORT_ON_URL", "poison.mp4")];
    // One job in hand at a time: a crash counts against every job the process held, and only the
    // poison video's count is under test here.
    let mut args = QUICK.to_vec();
    args.extend(["--prefetch", "0"]);
    let start = |name: &str| cluster.worker(name, &args, &env);
    let mut workers: Vec<Worker> = vec![start("first-0"), start("second-0")];
    let mut restarts = 0;
    cluster.wait_pass_over(&pass_id, || {
        for (slot, worker) in workers.iter_mut().enumerate() {
            let Some(status) = worker.exited() else {
                continue;
            };
            assert_eq!(status.signal(), Some(6), "aborted: {}", worker.log());
            // Kubernetes restarts the container; the test does the same.
            restarts += 1;
            assert!(restarts <= 6, "the poison video keeps coming back");
            *worker = start(&format!("worker-{slot}-{restarts}"));
        }
    });

    let poison = cluster
        .jobs(&pass_id)
        .into_iter()
        .find(|job| job["spec"]["video_url"] == Corpus::url("poison.mp4"))
        .unwrap();
    assert_eq!(poison["state"], "dead", "{poison}");
    assert_eq!(
        poison["last_error"], "worker crashed 2 times on this video",
        "{poison}"
    );
    assert_eq!(poison["crashes"], 2, "{poison}");
    assert_eq!(restarts, 2, "one crash a lease, two leases");
    let mut rest = corpus.clone();
    rest.broken.push("poison.mp4".into());
    cluster.assert_indexed_once(&pass_id, &rest);
}

#[test]
fn worker_metrics_and_health_after_a_pass() {
    let _serial = serial();
    let cluster = Cluster::start(&[]);
    let corpus = Corpus::standard(3, 5);
    cluster.put_corpus(&corpus);
    let pass_id = cluster.submit(1);

    let mut args = QUICK.to_vec();
    args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let mut workers = [
        cluster.worker("first", &args, &[]),
        cluster.worker("second", &args, &[]),
    ];
    let addresses: Vec<_> = workers
        .iter_mut()
        .map(Worker::wait_metrics_address)
        .collect();
    for address in &addresses {
        assert_eq!(http_get(*address, "/healthz").0, 200);
    }
    cluster.wait_pass_over(&pass_id, || {});
    cluster.assert_indexed_once(&pass_id, &corpus);

    let mut all = Samples::default();
    for address in &addresses {
        let (code, reason) = http_get(*address, "/readyz");
        assert_eq!(code, 200, "ready after a pass: {reason}");
        let (code, text) = http_get(*address, "/metrics");
        assert_eq!(code, 200);
        let samples = Samples::parse(&text);
        for name in [
            "vidx_worker_jobs_total",
            "vidx_worker_stage_seconds_bucket",
            "vidx_worker_stage_seconds_sum",
            "vidx_worker_stage_seconds_count",
            "vidx_worker_generated_tokens_total",
            "vidx_worker_tokens_per_second",
            "vidx_worker_frames_decoded_total",
            "vidx_worker_frames_kept_total",
            "vidx_worker_jobs_in_flight",
            "vidx_worker_model_busy_seconds_total",
            "vidx_worker_model_busy_ratio",
        ] {
            assert!(samples.has(name), "{address}: no {name} in\n{text}");
        }
        assert_eq!(samples.sum("vidx_worker_jobs_in_flight", &[]), 0.0);
        let busy = samples.sum("vidx_worker_model_busy_ratio", &[]);
        let did_work = samples.sum("vidx_worker_jobs_total", &[("outcome", "done")]) > 0.0;
        if did_work {
            assert!(busy > 0.0 && busy <= 1.0, "{address}: busy ratio {busy}");
        }
        all.0.extend(samples.0);
    }

    // Counts across both workers match the pass: a document a done job, one split (the long
    // video), a failure a broken file (one attempt each).
    let jobs = cluster.jobs(&pass_id);
    let done = jobs
        .iter()
        .filter(|job| job["state"] == "done" && job["result_url"].is_string())
        .count();
    assert_eq!(
        all.sum("vidx_worker_jobs_total", &[("outcome", "done")]),
        done as f64
    );
    assert_eq!(
        all.sum("vidx_worker_jobs_total", &[("outcome", "split")]),
        1.0
    );
    assert_eq!(
        all.sum("vidx_worker_jobs_total", &[("outcome", "failed")]),
        corpus.broken.len() as f64
    );
    assert_eq!(
        all.sum("vidx_worker_jobs_total", &[("outcome", "released")]),
        0.0
    );
    for stage in [
        "fetch",
        "probe",
        "decode",
        "vision",
        "prefill",
        "decode_tokens",
        "write",
    ] {
        let count = all.sum("vidx_worker_stage_seconds_count", &[("stage", stage)]);
        assert!(count >= 1.0, "stage {stage} has samples: {count}");
        let sum = all.sum("vidx_worker_stage_seconds_sum", &[("stage", stage)]);
        assert!(sum >= 0.0 && sum.is_finite(), "stage {stage}: {sum}");
    }
    assert!(all.sum("vidx_worker_generated_tokens_total", &[]) >= done as f64);
    let decoded = all.sum("vidx_worker_frames_decoded_total", &[]);
    let kept = all.sum("vidx_worker_frames_kept_total", &[]);
    // Two frames at most a segment at 1 fps: the long video's three segments keep 2 + 2 + 1,
    // each short video 1.
    assert!(kept >= done as f64, "{kept} frames kept");
    assert!(decoded >= kept, "{decoded} decoded, {kept} kept");
    assert!(all.sum("vidx_worker_model_busy_seconds_total", &[]) > 0.0);
}
