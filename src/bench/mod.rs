//! `vidx bench queue`: lease+complete throughput through the real gRPC server against real Redis,
//! and in the same run the raw Redis round-trip rate from `redis-benchmark` as the ceiling.
//! [`drive`] is the load loop, also used by the integration tests that check exactly-once.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::server::ServerConfig;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{RedisStore, RetryPolicy};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{Completion, LeasedJob, PassSpec, PassState, Sampling, TaskSpec};
use vidx_testkit::redis::RedisServer;

use crate::cli::QueueBenchArgs;

pub mod pipeline;
pub mod scale;
pub mod search;

/// A validated `bench queue` run.
#[derive(Debug, Clone)]
pub struct QueueBenchConfig {
    /// Redis to use, or `None` to start one.
    pub redis: Option<String>,
    /// Jobs to push through.
    pub jobs: u32,
    /// Concurrent clients.
    pub clients: u32,
    /// Jobs per lease call.
    pub batch: u32,
}

impl QueueBenchArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<QueueBenchConfig> {
        if self.jobs == 0 || self.jobs > 10_000_000 {
            bail!("--jobs must be in 1..=10000000");
        }
        if self.clients == 0 || self.clients > 1_024 {
            bail!("--clients must be in 1..=1024");
        }
        if self.batch == 0 || self.batch > 256 {
            bail!("--batch must be in 1..=256");
        }
        Ok(QueueBenchConfig {
            redis: self.redis,
            jobs: self.jobs,
            clients: self.clients,
            batch: self.batch,
        })
    }
}

/// What a load run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Successful completions.
    pub completed: u64,
    /// Distinct jobs completed.
    pub distinct: u64,
    /// Lease calls made.
    pub lease_calls: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Runs `clients` workers that lease (in batches) and complete until `expected` jobs are done or
/// `deadline` passes. Every completion must succeed: a rejected completion is an error.
pub async fn drive(
    config: &ClientConfig,
    clients: u32,
    batch: u32,
    expected: u64,
    deadline: Duration,
) -> Result<LoadReport> {
    drive_with(
        config,
        clients,
        batch,
        expected,
        deadline,
        Arc::new(|_: &LeasedJob| Completion::default()),
    )
    .await
}

/// What a load client reports for a job it completes.
pub type CompletionFor = Arc<dyn Fn(&LeasedJob) -> Completion + Send + Sync>;

/// [`drive`], completing each job with what `completion` says (a result URL, say).
pub async fn drive_with(
    config: &ClientConfig,
    clients: u32,
    batch: u32,
    expected: u64,
    deadline: Duration,
    completion: CompletionFor,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for index in 0..clients {
        let client = CoordinatorClient::connect(config).await?;
        let done = Arc::clone(&done);
        let completion = Arc::clone(&completion);
        tasks.spawn(async move {
            let worker = format!("bench-{index}");
            let mut completed = Vec::new();
            let mut lease_calls = 0u64;
            while done.load(std::sync::atomic::Ordering::Relaxed) < expected {
                if started.elapsed() > deadline {
                    bail!(
                        "deadline passed with {} of {expected} jobs done",
                        done.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
                lease_calls += 1;
                let leased = client.lease(&worker, batch, 60_000).await?;
                if leased.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                // Completions of one batch go out together on the client's one connection, as
                // a worker with several slots would send them.
                let completions = leased.iter().map(|job| {
                    let client = client.clone();
                    let completion = completion(job);
                    async move {
                        client
                            .complete(&job.job.job_id, &job.lease_id, &completion)
                            .await
                    }
                });
                futures::future::try_join_all(completions).await?;
                done.fetch_add(leased.len() as u64, std::sync::atomic::Ordering::Relaxed);
                completed.extend(leased.into_iter().map(|job| job.job.job_id));
            }
            Ok::<_, anyhow::Error>((completed, lease_calls))
        });
    }
    let mut all = Vec::new();
    let mut lease_calls = 0;
    while let Some(joined) = tasks.join_next().await {
        let (completed, calls) = joined.context("load client panicked")??;
        all.extend(completed);
        lease_calls += calls;
    }
    let elapsed = started.elapsed();
    let distinct = all.iter().collect::<HashSet<_>>().len() as u64;
    Ok(LoadReport {
        completed: all.len() as u64,
        distinct,
        lease_calls,
        elapsed,
    })
}

/// Writes a manifest of `jobs` fake video entries and returns its URL.
pub fn write_manifest(dir: &std::path::Path, jobs: u32) -> Result<String> {
    use std::io::Write;
    let path = dir.join("manifest.txt");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for index in 0..jobs {
        writeln!(file, "video-{index:08}.mp4")?;
    }
    file.flush()?;
    Ok(format!("file://{}", path.display()))
}

/// Submits a pass and waits until planning has created every job.
pub async fn submit_and_plan(
    client: &mut CoordinatorClient,
    source: &str,
    destination: &str,
) -> Result<String> {
    submit_and_plan_within(client, source, destination, Duration::from_secs(300)).await
}

/// [`submit_and_plan`], waiting up to `within` for planning to end.
pub async fn submit_and_plan_within(
    client: &mut CoordinatorClient,
    source: &str,
    destination: &str,
    within: Duration,
) -> Result<String> {
    let spec = PassSpec {
        source: source.to_owned(),
        destination: destination.to_owned(),
        task: TaskSpec::default(),
        sampling: Sampling::default(),
        idempotency_key: None,
        max_attempts: 3,
        verify: None,
    };
    let pass_id = client.submit(&spec).await?.pass_id;
    let started = Instant::now();
    while started.elapsed() < within {
        let status = client.status(&pass_id).await?;
        match status.state {
            PassState::Planning => tokio::time::sleep(Duration::from_millis(20)).await,
            PassState::Failed => bail!(
                "planning failed: {}",
                status.planning_error.unwrap_or_default()
            ),
            _ => return Ok(pass_id),
        }
    }
    bail!("planning did not finish in {} s", within.as_secs())
}

/// A coordinator served in this process: its URL, a sender that stops it, and its task.
pub type ServedCoordinator = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Starts a coordinator on a free loopback port; returns its URL and a handle that stops it.
pub async fn start_coordinator(
    coordinator: Coordinator,
    token: Option<Token>,
) -> Result<ServedCoordinator> {
    let config = ServerConfig {
        auth_token: token,
        ..ServerConfig::default()
    };
    start_coordinator_with(coordinator, config).await
}

/// [`start_coordinator`] with every server setting given.
pub async fn start_coordinator_with(
    coordinator: Coordinator,
    config: ServerConfig,
) -> Result<ServedCoordinator> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) =
            vidx_coordinator::server::run(coordinator, config, listener, None, shutdown).await
        {
            tracing::error!(%error, "coordinator failed");
        }
    });
    Ok((url, stop, handle))
}

/// `vidx bench queue`.
pub async fn queue(config: QueueBenchConfig) -> Result<()> {
    let own_server;
    let redis_url = match &config.redis {
        Some(url) => url.clone(),
        None => {
            own_server = RedisServer::start().context("cannot start redis-server")?;
            own_server.url()
        }
    };
    let scratch = tempfile::tempdir()?;
    let manifest = write_manifest(scratch.path(), config.jobs)?;
    let prefix = format!("vidx-bench-{}", uuid::Uuid::new_v4().simple());
    let store = RedisStore::connect(&redis_url, &prefix, RetryPolicy::default()).await?;
    let coordinator = Coordinator::new(Arc::new(store), Metrics::new());
    let token = Token::new(&uuid::Uuid::new_v4().simple().to_string())?;
    let (url, stop, server) = start_coordinator(coordinator, Some(token.clone())).await?;
    let client_config = ClientConfig::new(url, Some(token));
    let mut client = CoordinatorClient::connect(&client_config).await?;
    let destination = format!("file://{}/out/", scratch.path().display());
    let pass_id = submit_and_plan(&mut client, &manifest, &destination).await?;

    let report = drive(
        &client_config,
        config.clients,
        config.batch,
        u64::from(config.jobs),
        Duration::from_secs(600),
    )
    .await?;
    let status = client.status(&pass_id).await?;
    let _ = stop.send(());
    let _ = server.await;

    let jobs_per_second = report.completed as f64 / report.elapsed.as_secs_f64();
    println!(
        "vidx queue: {} jobs leased+completed by {} clients (lease batch {}) in {:.2} s: {:.0} jobs/s",
        report.completed,
        config.clients,
        config.batch,
        report.elapsed.as_secs_f64(),
        jobs_per_second
    );
    println!(
        "exactly once: {} completions, {} distinct jobs, pass done count {} of {}",
        report.completed,
        report.distinct,
        status.counts.done,
        status.counts.total()
    );
    let ceiling = redis_benchmark(&redis_url, config.clients).await;
    match ceiling {
        Ok((ping, evalsha)) => {
            println!(
                "redis-benchmark, same server, {} clients: PING {ping:.0}/s, EVALSHA {evalsha:.0}/s",
                config.clients
            );
            println!(
                "ratio: vidx jobs/s / redis EVALSHA/s = {:.3}; / PING/s = {:.3}",
                jobs_per_second / evalsha,
                jobs_per_second / ping
            );
        }
        Err(error) => println!("redis-benchmark not run: {error:#}"),
    }
    if report.distinct != u64::from(config.jobs) || report.completed != report.distinct {
        bail!(
            "exactly-once violated: {} completions of {} distinct jobs",
            report.completed,
            report.distinct
        );
    }
    Ok(())
}

/// Runs `redis-benchmark` PING and EVALSHA (a trivial script) against the same server.
pub(crate) async fn redis_benchmark(redis_url: &str, clients: u32) -> Result<(f64, f64)> {
    let url = url::Url::parse(redis_url)?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(6379).to_string();
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut connection)
        .await?;
    let ping = {
        let (host, port) = (host.clone(), port.clone());
        tokio::task::spawn_blocking(move || {
            benchmark_rate(&host, &port, clients, &["-t", "ping_mbulk"])
        })
        .await??
    };
    let evalsha = tokio::task::spawn_blocking(move || {
        benchmark_rate(&host, &port, clients, &["EVALSHA", &sha, "0"])
    })
    .await??;
    Ok((ping, evalsha))
}

/// One `redis-benchmark` run; returns requests per second.
fn benchmark_rate(host: &str, port: &str, clients: u32, args: &[&str]) -> Result<f64> {
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-c",
            &clients.to_string(),
            "-n",
            "200000",
            "--csv",
        ])
        .args(args)
        .output()
        .context("cannot run redis-benchmark (run scripts/install-test-servers.sh)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or("");
    last.split(',')
        .nth(1)
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("cannot read redis-benchmark output {stdout:?}"))
}
