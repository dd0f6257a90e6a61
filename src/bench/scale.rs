//! `vidx bench scale --jobs N`: how one Redis holds a pass of N videos. It starts its own
//! `redis-server` with append-only persistence (as the Helm chart runs it), serves a coordinator
//! in this process, and measures through the gRPC API what a user of a big pass would feel:
//! Redis bytes per job pending and done, planning rate, lease+complete throughput at depth N
//! against `redis-benchmark` EVALSHA in the same run, call latencies at depth N next to the same
//! calls at a depth of 10,000, the time to reap 10,000 expired leases, AOF rewrite time and size,
//! and how long Redis takes to load the AOF after a restart. The README's "Sizing" section is
//! made from its output.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::server::ServerConfig;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{JobStore, LeaseRequest, RedisStore, RetryPolicy};
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{Completion, JobCounts, LeasedJob, now_ms};
use vidx_testkit::redis::{RedisOptions, RedisServer};

use super::{
    CompletionFor, drive_with, redis_benchmark, start_coordinator_with, submit_and_plan_within,
};
use crate::cli::ScaleBenchArgs;

/// Depth of the reference pass that latencies at depth N are compared with.
const SHALLOW_JOBS: u64 = 10_000;
/// Expired leases reaped for the reap figure.
const REAP_JOBS: u32 = 10_000;
/// Key prefix in the bench's own Redis.
const PREFIX: &str = "vidx";

/// A validated `bench scale` run.
#[derive(Debug, Clone)]
pub struct ScaleBenchConfig {
    /// Jobs in the deep pass.
    pub jobs: u64,
    /// Concurrent clients for the throughput figure.
    pub clients: u32,
    /// Jobs per lease call for the throughput figure.
    pub batch: u32,
    /// Jobs completed for the throughput and done-cost figures.
    pub complete: u64,
    /// Calls timed per latency figure.
    pub samples: u32,
    /// Characters of an extra folder in every video's path, to see long paths' cost.
    pub extra_path: usize,
    /// Redis's `hash-max-listpack-value` to run with; `None` keeps Redis's default (64).
    pub listpack_value: Option<u32>,
}

impl ScaleBenchArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<ScaleBenchConfig> {
        if !(SHALLOW_JOBS..=50_000_000).contains(&self.jobs) {
            bail!(
                "--jobs must be in {SHALLOW_JOBS}..=50000000, got {}",
                self.jobs
            );
        }
        if self.clients == 0 || self.clients > 1_024 {
            bail!("--clients must be in 1..=1024");
        }
        if self.batch == 0 || self.batch > 256 {
            bail!("--batch must be in 1..=256");
        }
        if self.samples == 0 || u64::from(self.samples) > SHALLOW_JOBS / 4 {
            bail!("--samples must be in 1..={}", SHALLOW_JOBS / 4);
        }
        let most = self.jobs / 2;
        if self.complete == 0 || self.complete > most {
            bail!("--complete must be in 1..={most} (half the jobs)");
        }
        Ok(ScaleBenchConfig {
            jobs: self.jobs,
            clients: self.clients,
            batch: self.batch,
            complete: self.complete,
            samples: self.samples,
            extra_path: self.extra_path.min(1_000),
            listpack_value: self.hash_max_listpack_value,
        })
    }
}

/// Timed calls of one kind.
#[derive(Debug, Default)]
struct Timings(Vec<Duration>);

impl Timings {
    fn time<T>(&mut self, started: Instant, value: T) -> T {
        self.0.push(started.elapsed());
        value
    }

    fn percentile(&self, fraction: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn summary(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99))
        )
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Latencies of the calls a worker and a user make, measured one call at a time.
#[derive(Debug, Default)]
struct Latencies {
    lease: Timings,
    heartbeat: Timings,
    complete: Timings,
    get_pass: Timings,
    list_jobs: Timings,
}

impl Latencies {
    fn print(&self, label: &str) {
        println!("  {label}");
        for (name, timings) in [
            ("lease (1 job)", &self.lease),
            ("heartbeat", &self.heartbeat),
            ("complete", &self.complete),
            ("GetPass", &self.get_pass),
            ("ListJobs page of 100", &self.list_jobs),
        ] {
            println!("    {name:<22} {}", timings.summary());
        }
    }
}

/// Redis's `used_memory`, in bytes.
async fn used_memory(connection: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    info_field(connection, "memory", "used_memory").await
}

/// `used_memory` once keys removed with `UNLINK` (the de-duplication index) are freed: Redis
/// frees them on a background thread.
async fn settled_memory(connection: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    for _ in 0..600 {
        if info_field(connection, "memory", "lazyfree_pending_objects").await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    used_memory(connection).await
}

async fn info_field(
    connection: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("INFO {section} has no {field}"))
}

/// A made-up but realistic 128-bit hex digest for entry `index` (S3 ETags, video ids).
fn digest(index: u64, salt: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    format!("{:016x}{:016x}", mix(index ^ salt), mix(!index ^ salt))
}

/// Writes a `.jsonl` manifest of `jobs` videos laid out as a broadcast archive would be
/// (`channel/date/clip.mp4`, sizes, S3-style quoted ETags) and returns its URL.
fn write_manifest(
    dir: &std::path::Path,
    name: &str,
    jobs: u64,
    extra_path: usize,
) -> Result<String> {
    let path = dir.join(format!("{name}.jsonl"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let folder = if extra_path == 0 {
        String::new()
    } else {
        format!("{}/", "p".repeat(extra_path))
    };
    for index in 0..jobs {
        writeln!(
            file,
            "{{\"url\":\"{folder}ch{:02}/2026-{:02}-{:02}/clip-{index:08}.mp4\",\"size\":{},\"etag\":\"\\\"{}\\\"\"}}",
            index % 24,
            1 + index / 28 % 12,
            1 + index % 28,
            50_000_000 + index * 7_919 % 2_000_000_000,
            digest(index, 0x5eed)
        )?;
    }
    file.flush()?;
    Ok(format!("file://{}", path.display()))
}

/// The result a worker reports for a job: an evidence document key, as `vidx worker` writes.
fn result_for(job: &LeasedJob) -> Completion {
    let hash = job.job.job_id.bytes().fold(0u64, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u64::from(byte))
    });
    Completion {
        result_url: Some(format!(
            "bench/index/videos/{}/5f0c2a94d1e8b7c36a4f9e2d1b0c8a7e/document.json",
            digest(hash, 0xd0c)
        )),
        segments: Vec::new(),
        skipped: false,
    }
}

/// Submits a pass over `source` and waits until planning is over; returns its id and how long
/// planning took.
async fn plan(client: &mut CoordinatorClient, source: &str, out: &str) -> Result<(String, f64)> {
    let started = Instant::now();
    let pass_id = submit_and_plan_within(client, source, out, Duration::from_secs(7_200)).await?;
    Ok((pass_id, started.elapsed().as_secs_f64()))
}

/// One queue whose calls are timed: a coordinator client and the pass it leases from.
struct Probe<'a> {
    client: &'a mut CoordinatorClient,
    pass_id: &'a str,
    token: Option<String>,
    timed: Latencies,
}

impl Probe<'_> {
    /// Times one round of lease, heartbeat, complete, GetPass and a ListJobs page.
    async fn round(&mut self) -> Result<()> {
        let (client, timed) = (&mut *self.client, &mut self.timed);
        let started = Instant::now();
        let leased = timed
            .lease
            .time(started, client.lease("bench-probe", 1, 60_000).await?);
        let job = leased.first().context("the queue ran dry while timing")?;
        let started = Instant::now();
        timed.heartbeat.time(
            started,
            client.heartbeat(&job.job.job_id, &job.lease_id, 0).await?,
        );
        let completion = result_for(job);
        let started = Instant::now();
        timed.complete.time(
            started,
            client
                .complete(&job.job.job_id, &job.lease_id, &completion)
                .await?,
        );
        let started = Instant::now();
        timed
            .get_pass
            .time(started, client.status(self.pass_id).await?);
        let started = Instant::now();
        let page = timed.list_jobs.time(
            started,
            client
                .list_jobs(self.pass_id, None, 100, self.token.take())
                .await?,
        );
        self.token = page.next;
        Ok(())
    }
}

/// Times `samples` rounds on each queue, alternating between them (and which goes first), so
/// that whatever else the machine does falls on both alike.
async fn latencies(
    shallow: (&mut CoordinatorClient, &str),
    deep: (&mut CoordinatorClient, &str),
    samples: u32,
) -> Result<(Latencies, Latencies)> {
    let mut shallow = Probe {
        client: shallow.0,
        pass_id: shallow.1,
        token: None,
        timed: Latencies::default(),
    };
    let mut deep = Probe {
        client: deep.0,
        pass_id: deep.1,
        token: None,
        timed: Latencies::default(),
    };
    for sample in 0..samples {
        if sample % 2 == 0 {
            shallow.round().await?;
            deep.round().await?;
        } else {
            deep.round().await?;
            shallow.round().await?;
        }
    }
    Ok((shallow.timed, deep.timed))
}

/// Samples Redis memory in the background and keeps the highest reading.
struct MemoryPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl MemoryPeak {
    fn start(mut connection: redis::aio::MultiplexedConnection) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(used) = used_memory(&mut connection).await {
                        peak.fetch_max(used, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        MemoryPeak { peak, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// Leases `count` jobs with a 1 ms lease straight from the store, then times reaping them all.
async fn time_reap(store: &RedisStore, count: u32) -> Result<f64> {
    let request = LeaseRequest {
        worker_id: "bench-reap".into(),
        max_jobs: 500,
        lease_ms: 1,
    };
    let mut leased = 0;
    while leased < count {
        let batch = store.lease(&request, now_ms()).await?;
        if batch.is_empty() {
            bail!("the queue ran dry with {leased} of {count} leases taken");
        }
        leased += batch.len() as u32;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let mut reaped = 0;
    for _ in 0..10_000 {
        let round = store.reap_expired(now_ms(), 1_000).await?;
        reaped += round;
        if round == 0 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if reaped < u64::from(count) {
        bail!("reaped {reaped} of {count} expired leases");
    }
    Ok(seconds)
}

/// Size of every file under `dir`.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Peak resident memory of this process (coordinator, planner and the bench's clients).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}

fn per_job(bytes: i64, jobs: u64) -> f64 {
    bytes as f64 / jobs as f64
}

/// `vidx bench scale`.
pub async fn scale(config: ScaleBenchConfig) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let redis_dir = scratch.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let options = RedisOptions {
        append_only: true,
        dir: Some(redis_dir.clone()),
        port: None,
    };
    let redis = RedisServer::start_with(&options).context("cannot start redis-server")?;
    let redis_url = redis.url();
    let mut admin = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    if let Some(limit) = config.listpack_value {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("hash-max-listpack-value")
            .arg(limit)
            .query_async(&mut admin)
            .await?;
    }
    let listpack_value: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hash-max-listpack-value")
        .query_async(&mut admin)
        .await?;
    let store = Arc::new(RedisStore::connect(&redis_url, PREFIX, RetryPolicy::default()).await?);
    // The reference queue of 10,000 jobs lives in the same Redis under a prefix of its own, served
    // by a coordinator of its own: the same server, data set and machine, a different depth.
    let reference_store =
        RedisStore::connect(&redis_url, "vidx-reference", RetryPolicy::default()).await?;
    // The bench reaps by hand, so that the reap figure is its own.
    let server_config = ServerConfig {
        reap_interval: Duration::from_secs(3_600),
        ..ServerConfig::default()
    };
    let (url, stop, server) = start_coordinator_with(
        Coordinator::new(Arc::clone(&store) as Arc<dyn JobStore>, Metrics::new()),
        server_config.clone(),
    )
    .await?;
    let (reference_url, reference_stop, reference_server) = start_coordinator_with(
        Coordinator::new(Arc::new(reference_store), Metrics::new()),
        server_config,
    )
    .await?;
    let client_config = ClientConfig::new(url, None);
    let mut client = CoordinatorClient::connect(&client_config).await?;
    let mut reference = CoordinatorClient::connect(&ClientConfig::new(reference_url, None)).await?;
    let out = format!("file://{}/index/", scratch.path().display());
    println!(
        "vidx bench scale: {} jobs, redis-server {} with appendonly yes, appendfsync everysec, \
         hash-max-listpack-value {}",
        config.jobs,
        redis_version(&mut admin).await?,
        listpack_value.get(1).map_or("?", String::as_str)
    );

    let shallow_manifest =
        write_manifest(scratch.path(), "shallow", SHALLOW_JOBS, config.extra_path)?;
    let (shallow, _) = plan(&mut reference, &shallow_manifest, &out).await?;

    let manifest = write_manifest(scratch.path(), "deep", config.jobs, config.extra_path)?;
    let before = settled_memory(&mut admin).await?;
    let peak = MemoryPeak::start(admin.clone());
    let (pass_id, planning_seconds) = plan(&mut client, &manifest, &out).await?;
    let planning_peak = peak.finish().await;
    let planned = settled_memory(&mut admin).await?;
    let status = client.status(&pass_id).await?;
    if status.counts.pending != config.jobs {
        bail!(
            "planning made {} pending jobs of {}",
            status.counts.pending,
            config.jobs
        );
    }
    let pending_bytes = per_job(planned as i64 - before as i64, config.jobs);
    println!("planning");
    println!(
        "  {} jobs in {planning_seconds:.1} s: {:.0} jobs/s",
        config.jobs,
        config.jobs as f64 / planning_seconds
    );
    println!(
        "  redis memory: {pending_bytes:.0} B/job pending after planning; peak while planning \
         {:.0} B/job (with the de-duplication index)",
        per_job(
            planning_peak.max(planned) as i64 - before as i64,
            config.jobs
        )
    );

    let bucket = format!("{PREFIX}:j:{pass_id}:{}", config.jobs / 64 / 2);
    let (bucket_bytes, encoding): (u64, String) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(&bucket)
        .arg("SAMPLES")
        .arg(0)
        .cmd("OBJECT")
        .arg("ENCODING")
        .arg(&bucket)
        .query_async(&mut admin)
        .await?;
    println!(
        "  one record hash of 64 pending jobs: {bucket_bytes} B ({:.0} B/job), encoding {encoding}",
        bucket_bytes as f64 / 64.0
    );

    // An AOF rewrite that Redis started by itself (planning doubled the AOF) forks the server and
    // takes a core: latencies are timed after it, and its cost is the rewrite figure below.
    wait_for_rewrite(&mut admin).await?;
    let (shallow_latencies, deep_latencies) = latencies(
        (&mut reference, &shallow),
        (&mut client, &pass_id),
        config.samples,
    )
    .await?;
    reference.cancel(&shallow).await?;
    let _ = reference_stop.send(());
    let _ = reference_server.await;
    println!("latency, one call at a time through gRPC, rounds on the two queues alternating");
    shallow_latencies.print(&format!("{SHALLOW_JOBS} jobs queued"));
    deep_latencies.print(&format!("{} jobs queued", config.jobs));
    println!(
        "  lease p99 at {} queued / at {SHALLOW_JOBS} queued: {:.2}",
        config.jobs,
        ms(deep_latencies.lease.percentile(0.99)) / ms(shallow_latencies.lease.percentile(0.99))
    );

    let done_before = settled_memory(&mut admin).await?;
    let completion: CompletionFor = Arc::new(result_for);
    let report = drive_with(
        &client_config,
        config.clients,
        config.batch,
        config.complete,
        Duration::from_secs(3_600),
        completion,
    )
    .await?;
    let done_after = settled_memory(&mut admin).await?;
    if report.completed != report.distinct {
        bail!(
            "exactly-once violated: {} completions of {} distinct jobs",
            report.completed,
            report.distinct
        );
    }
    let jobs_per_second = report.completed as f64 / report.elapsed.as_secs_f64();
    let done_delta = per_job(done_after as i64 - done_before as i64, report.completed);
    println!(
        "lease+complete with {} queued: {} jobs by {} clients (lease batch {}) in {:.1} s: \
         {jobs_per_second:.0} jobs/s",
        config.jobs - u64::from(config.samples),
        report.completed,
        config.clients,
        config.batch,
        report.elapsed.as_secs_f64()
    );
    match redis_benchmark(&redis_url, config.clients).await {
        Ok((_, evalsha)) => println!(
            "  redis-benchmark EVALSHA, same server, {} clients: {evalsha:.0}/s; ratio {:.3}",
            config.clients,
            jobs_per_second / evalsha
        ),
        Err(error) => println!("  redis-benchmark not run: {error:#}"),
    }
    println!(
        "  redis memory: {:.0} B/job done ({done_delta:+.0} B/job when a job becomes done, \
         with its evidence document's key)",
        pending_bytes + done_delta
    );

    let reap_seconds = time_reap(&store, REAP_JOBS).await?;
    println!(
        "reap {REAP_JOBS} expired leases: {:.1} ms",
        reap_seconds * 1_000.0
    );

    let status = client.status(&pass_id).await?;
    let _ = stop.send(());
    let _ = server.await;
    let counts_before_restart = status.counts;

    // Redis may have started a rewrite of its own (it does when the AOF doubles): let that one
    // end, then time ours.
    wait_for_rewrite(&mut admin).await?;
    let started = Instant::now();
    let _: () = redis::cmd("BGREWRITEAOF").query_async(&mut admin).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    wait_for_rewrite(&mut admin).await?;
    let rewrite_seconds = started.elapsed().as_secs_f64();
    let aof_bytes = folder_bytes(&redis_dir);
    let fork_usec = info_field(&mut admin, "stats", "latest_fork_usec").await?;
    println!(
        "AOF rewrite: {rewrite_seconds:.1} s, the server blocked {:.1} ms by its fork; AOF on \
         disk {:.1} MB ({:.0} B/job)",
        fork_usec as f64 / 1_000.0,
        aof_bytes as f64 / 1e6,
        per_job(aof_bytes as i64, config.jobs)
    );

    let port = redis.port();
    drop(admin);
    drop(redis);
    let restart = RedisOptions {
        port: Some(port),
        ..options
    };
    let started = Instant::now();
    let reloaded = RedisServer::start_waiting(&restart, Duration::from_secs(3_600))
        .context("redis-server did not come back from its AOF")?;
    let restart_seconds = started.elapsed().as_secs_f64();
    let store = RedisStore::connect(&reloaded.url(), PREFIX, RetryPolicy::default()).await?;
    let counts: JobCounts = store.pass_status(&pass_id, now_ms()).await?.counts;
    // Leases taken for the reap figure were reaped after the status read: compare totals.
    if counts.total() != counts_before_restart.total() {
        bail!("after the restart the pass has {counts:?}, before {counts_before_restart:?}");
    }
    println!(
        "redis restart: AOF loaded and serving in {restart_seconds:.1} s; the pass's {} jobs \
         all there",
        counts.total()
    );
    if let Some(rss) = peak_rss_bytes() {
        println!(
            "bench process peak RSS (coordinator, planner, clients): {:.0} MB",
            rss as f64 / 1e6
        );
    }
    Ok(())
}

/// Waits until no AOF rewrite is running or scheduled.
async fn wait_for_rewrite(connection: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    for _ in 0..72_000 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(connection)
            .await?;
        let busy = info.lines().any(|line| {
            matches!(
                line.trim(),
                "aof_rewrite_in_progress:1" | "aof_rewrite_scheduled:1"
            )
        });
        if !busy {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the AOF rewrite did not end within an hour")
}

async fn redis_version(connection: &mut redis::aio::MultiplexedConnection) -> Result<String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(connection)
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned())
}
