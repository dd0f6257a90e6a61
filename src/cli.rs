//! Command-line flags. Every flag has `long` and, where it is configuration rather than input, an
//! environment variable; each command turns its flags into a validated config before doing work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vidx_model::{DTypeSetting, DeviceSetting};

use crate::telemetry::LogFormat;

/// vidx: distributed batch video indexing and moderation.
#[derive(Debug, Parser)]
#[command(name = "vidx", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "VIDX_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: plans passes, keeps job state, leases jobs to workers.
    Coordinator(CoordinatorArgs),
    /// Index a corpus in this process (in-memory coordinator, local worker): the embedded default.
    Index(IndexArgs),
    /// Run a worker: lease jobs from a coordinator and write evidence.
    Worker(WorkerArgs),
    /// Submit a pass over a corpus; prints the pass id.
    Submit(SubmitArgs),
    /// Write a finished pass's manifest and table parts again (coordinators do it on their own).
    Finalize(FinalizeArgs),
    /// Show a pass's progress.
    Status(StatusArgs),
    /// Cancel a pass.
    Cancel(CancelArgs),
    /// List passes, newest first.
    Passes(PassesArgs),
    /// List a pass's jobs.
    Jobs(JobsArgs),
    /// Describe a video as one JSON object: container, codec, displayed size, rotation, fps,
    /// duration, audio.
    Probe(crate::commands::media::ProbeArgs),
    /// Sample frames from a video into a directory of PNGs plus frames.json.
    Frames(crate::commands::media::FramesArgs),
    /// Ask the model one question about one video (debugging).
    Ask(crate::commands::ask::AskArgs),
    /// Search an evidence index for claims and answers.
    Search(crate::commands::evidence::SearchArgs),
    /// Write a static HTML report of an evidence index.
    Report(crate::commands::evidence::ReportArgs),
    /// Scale a worker Deployment on queue depth through the Kubernetes API.
    Autoscale(AutoscaleArgs),
    /// Fill a model cache from the Hugging Face hub and link a directory to the snapshot.
    FetchModel(crate::commands::fetch_model::FetchModelArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `vidx autoscale`.
#[derive(Debug, Args)]
pub struct AutoscaleArgs {
    /// The worker Deployment to scale.
    #[arg(
        long,
        env = "VIDX_WORKER_DEPLOYMENT",
        required_unless_present = "dry_run"
    )]
    pub deployment: Option<String>,
    /// Decide and log, but scale a count kept in memory instead of a Deployment (no cluster
    /// needed); the count starts at `--min-workers`.
    #[arg(long)]
    pub dry_run: bool,
    /// Its namespace (default: the pod's own, or the kubeconfig's).
    #[arg(long, env = "VIDX_NAMESPACE")]
    pub namespace: Option<String>,
    /// Fewest workers, also with no work (0 scales to zero).
    #[arg(long, env = "VIDX_MIN_WORKERS", default_value_t = 0)]
    pub min_workers: u32,
    /// Most workers.
    #[arg(long, env = "VIDX_MAX_WORKERS", default_value_t = 8)]
    pub max_workers: u32,
    /// Outstanding jobs (pending, leased, retrying) one worker is meant to have ahead of it.
    #[arg(long, env = "VIDX_JOBS_PER_WORKER", default_value_t = 4)]
    pub jobs_per_worker: u32,
    /// Seconds between rounds.
    #[arg(long, env = "VIDX_AUTOSCALE_INTERVAL_SECS", default_value_t = 15)]
    pub interval_secs: u64,
    /// Seconds demand must stay lower before workers are removed.
    #[arg(long, env = "VIDX_SCALE_DOWN_DELAY_SECS", default_value_t = 300)]
    pub scale_down_delay_secs: u64,
    /// Label selector of the worker pods (`app.kubernetes.io/component=worker`): before a
    /// scale-in they are given a pod-deletion-cost so idle ones go first.
    #[arg(long, env = "VIDX_WORKER_SELECTOR")]
    pub worker_selector: Option<String>,
    /// Elect one leader among several autoscalers with this `coordination.k8s.io` Lease; only
    /// its holder scales. Without it this instance scales on its own.
    #[arg(long, env = "VIDX_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// This instance's name in the Lease (the pod name); default: `$HOSTNAME` and the pid.
    #[arg(long, env = "VIDX_HOLDER_ID")]
    pub holder_id: Option<String>,
    /// Seconds a leader that stops renewing keeps the Lease; at least twice the interval, since
    /// it renews once per round.
    #[arg(long, env = "VIDX_LEASE_DURATION_SECS", default_value_t = 45)]
    pub lease_duration_secs: u64,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

impl AutoscaleArgs {
    /// The validated scaling policy.
    pub fn policy(&self) -> anyhow::Result<crate::autoscale::ScalePolicy> {
        let policy = crate::autoscale::ScalePolicy {
            min_replicas: self.min_workers,
            max_replicas: self.max_workers,
            jobs_per_worker: self.jobs_per_worker,
            scale_down_delay: std::time::Duration::from_secs(self.scale_down_delay_secs),
        };
        policy.validate()?;
        if self.interval_secs == 0 {
            anyhow::bail!("the interval must be at least 1 second");
        }
        if self.lease_name.is_some() && self.lease_duration_secs < 2 * self.interval_secs {
            anyhow::bail!(
                "the lease duration ({} s) must be at least twice the interval ({} s): the leader \
                 renews once per round",
                self.lease_duration_secs,
                self.interval_secs
            );
        }
        Ok(policy)
    }
}

/// How to reach a coordinator.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator URL (`http://host:port`, or `https://` with TLS).
    #[arg(
        long,
        env = "VIDX_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// File holding the bearer token (else `$VIDX_TOKEN`).
    #[arg(long, env = "VIDX_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token; only from the environment, never a flag, so it stays out of `ps`.
    #[arg(
        long = "token-from-env",
        env = "VIDX_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM CA certificate to trust for `https` coordinators.
    #[arg(long, env = "VIDX_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// `vidx coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// gRPC listen address.
    #[arg(long, env = "VIDX_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Redis URL for durable state; without it state lives in memory and dies with the process.
    #[arg(long, env = "VIDX_REDIS")]
    pub redis: Option<String>,
    /// Key prefix in Redis, to share one Redis between deployments.
    #[arg(long, env = "VIDX_REDIS_PREFIX", default_value = "vidx")]
    pub redis_prefix: String,
    /// File holding the bearer token every call must carry (else `$VIDX_TOKEN`).
    #[arg(long, env = "VIDX_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The token, from the environment only.
    #[arg(
        long = "token-from-env",
        env = "VIDX_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "VIDX_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// PEM certificate chain for TLS (with `--tls-key`).
    #[arg(long, env = "VIDX_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with `--tls-cert`).
    #[arg(long, env = "VIDX_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// This replica's name; defaults to the host name plus a random suffix.
    #[arg(long, env = "VIDX_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Base retry backoff in milliseconds (doubles per attempt).
    #[arg(long, env = "VIDX_RETRY_BASE_MS", default_value_t = 2_000)]
    pub retry_base_ms: i64,
    /// Longest retry backoff in milliseconds.
    #[arg(long, env = "VIDX_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: i64,
    /// A job whose lease expires with no word from its worker this many times (the worker
    /// presumed crashed on it) is dead, with the reason `worker crashed N times on this video`,
    /// so one poison video cannot take down worker after worker. At least 1.
    #[arg(long, env = "VIDX_MAX_CRASHES", default_value_t = 2)]
    pub max_crashes: u32,
    /// Delete passes that ended (finished, cancelled or failed) this many days after they were
    /// created, with all their job state; their evidence indexes stay. Unset keeps them forever.
    #[arg(long, env = "VIDX_RETAIN_PASSES_DAYS")]
    pub retain_passes_days: Option<f64>,
    /// A prefix passes may read from or write to (`s3://media/videos/`, `file:///data/`);
    /// repeatable, or comma-separated in `VIDX_ALLOW_PREFIX`. Sources, destinations and manifest
    /// entries elsewhere are refused with PERMISSION_DENIED. None: any cloud URL, but no
    /// `file://` URL.
    #[arg(long, env = "VIDX_ALLOW_PREFIX", value_delimiter = ',')]
    pub allow_prefix: Vec<String>,
}

/// What a pass runs over and asks: shared by `submit` and `index`.
#[derive(Debug, Clone, Args)]
pub struct PassArgs {
    /// The corpus: an object-store prefix (`s3://bucket/videos/`, `file:///data/`, a local
    /// directory) or a manifest (`.txt` or `.jsonl`).
    pub source: String,
    /// Where the evidence index goes.
    #[arg(long)]
    pub out: String,
    /// Indexing prompt (default: the built-in indexing prompt).
    #[arg(long, conflicts_with_all = ["policy", "question"])]
    pub prompt: Option<String>,
    /// Moderation policy YAML file.
    #[arg(long, conflicts_with = "question")]
    pub policy: Option<PathBuf>,
    /// A free-form question; repeat for several.
    #[arg(long)]
    pub question: Vec<String>,
    /// Frames per second to sample.
    #[arg(long, default_value_t = vidx_core::domain::DEFAULT_FPS)]
    pub fps: f64,
    /// Most frames per segment.
    #[arg(long, default_value_t = vidx_core::domain::DEFAULT_MAX_FRAMES)]
    pub max_frames: u32,
    /// Segment length in seconds.
    #[arg(long, default_value_t = vidx_core::domain::DEFAULT_SEGMENT_SECS)]
    pub segment_secs: f64,
    /// Attempts per job before it is dead.
    #[arg(long, default_value_t = vidx_core::domain::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Submitting again with the same key returns the same pass.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Verify every claim: crop its box at its time, ask the model whether the crop shows the
    /// object, and record P(yes) as the claim's confidence (default: on for `--policy`).
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Do not verify claims, even for a moderation policy.
    #[arg(long)]
    pub no_verify: bool,
}

impl PassArgs {
    /// `--verify` / `--no-verify` as the pass spec's setting (`None`: the task's default).
    pub fn verify_setting(&self) -> Option<bool> {
        match (self.verify, self.no_verify) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// `vidx submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The model a worker runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json,
    /// preprocessor_config.json) of Open-o3 Video or another Qwen2.5-VL checkpoint.
    #[arg(long, env = "VIDX_MODEL")]
    pub model: PathBuf,
    /// Model id recorded in the evidence (default: the directory name).
    #[arg(long, env = "VIDX_MODEL_ID")]
    pub model_id: Option<String>,
    /// Weights revision recorded in the evidence.
    #[arg(long, env = "VIDX_MODEL_REVISION", default_value = "local")]
    pub model_revision: String,
    /// Most tokens generated per answer (Open-o3 Video's evaluation allows 2048).
    #[arg(long, env = "VIDX_MAX_NEW_TOKENS", default_value_t = 2048)]
    pub max_new_tokens: usize,
    /// Fewest pixels per frame fed to the model (Open-o3 Video: 128*28*28).
    #[arg(long, env = "VIDX_MIN_PIXELS", default_value_t = 128 * 28 * 28)]
    pub min_pixels: usize,
    /// Most pixels per frame fed to the model (Open-o3 Video: 768*28*28).
    #[arg(long, env = "VIDX_MAX_PIXELS", default_value_t = 768 * 28 * 28)]
    pub max_pixels: usize,
    /// Where the model runs: `auto` (the first visible GPU in a build with the `cuda` feature,
    /// else the CPU), `cpu`, or `cuda:N` (`cuda` is `cuda:0`). Asking for a GPU that this build
    /// or this machine lacks is an error.
    #[arg(long, env = "VIDX_DEVICE", default_value = "auto", value_parser = parse_setting::<DeviceSetting>)]
    pub device: DeviceSetting,
    /// The weights' and activations' precision: `auto` (bf16 on a GPU, f32 on the CPU),
    /// `bf16`, `f16` or `f32`.
    #[arg(long, env = "VIDX_DTYPE", default_value = "auto", value_parser = parse_setting::<DTypeSetting>)]
    pub dtype: DTypeSetting,
}

/// A `--device` or `--dtype` value, with the model crate's spellings and message.
fn parse_setting<T>(raw: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = vidx_model::DeviceError>,
{
    raw.parse()
        .map_err(|error: vidx_model::DeviceError| error.to_string())
}

/// `vidx worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// This worker's name (the pod name in Kubernetes).
    #[arg(long, env = "VIDX_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Lease duration in seconds, 5 to 3600; heartbeats renew it every third.
    #[arg(long, env = "VIDX_LEASE_SECS", default_value_t = 300)]
    pub lease_secs: u64,
    /// Exit when no work is left instead of waiting for more.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// How the jobs in hand overlap and share the model.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Seconds jobs in hand have to finish after SIGTERM; the rest are handed back before it ends.
    #[arg(long, env = "VIDX_GRACE_SECS", default_value_t = 60)]
    pub grace_secs: u64,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address.
    #[arg(long, env = "VIDX_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How a worker's jobs overlap: `vidx worker` and `vidx index`.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Jobs leased and decoded ahead of the model (default: as many as keep the decoded frames
    /// waiting within the prefetch frame budget; 0 turns prefetching off).
    #[arg(long, env = "VIDX_PREFETCH")]
    pub prefetch: Option<usize>,
    /// Jobs the model decodes together, their questions in one batch (1 to 64).
    #[arg(long, env = "VIDX_MAX_IN_FLIGHT", default_value_t = 1)]
    pub max_in_flight: usize,
}

/// `vidx index`: the embedded default, a whole pass in this process.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Another prefix the pass may read (a manifest's absolute entries); repeatable. The source
    /// (for a manifest, the prefix it sits in) and `--out` are always allowed.
    #[arg(long)]
    pub allow_prefix: Vec<String>,
    /// Local pipelines over the one loaded model: jobs decoded together (`--max-in-flight`).
    #[arg(long, env = "VIDX_INDEX_WORKERS", conflicts_with = "max_in_flight")]
    pub workers: Option<usize>,
    /// How the jobs overlap and share the model.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `vidx finalize`: write the manifest and table parts of a finished pass again.
#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The pass id.
    pub pass_id: String,
    /// Model id recorded in the manifest when no document names one (every video failed); the
    /// documents' model wins.
    #[arg(
        long,
        env = "VIDX_MODEL_ID",
        default_value = "marinero4972/Open-o3-Video"
    )]
    pub model_id: String,
    /// Weights revision recorded in the manifest when no document names one.
    #[arg(long, env = "VIDX_MODEL_REVISION", default_value = "local")]
    pub model_revision: String,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vidx status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pass id.
    pub pass_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep watching with a live progress bar until the pass ends.
    #[arg(long)]
    pub watch: bool,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vidx cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The pass id.
    pub pass_id: String,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vidx passes`.
#[derive(Debug, Args)]
pub struct PassesArgs {
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Most passes to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vidx jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The pass id.
    pub pass_id: String,
    /// Only jobs in this state (pending, leased, done, failed, dead, cancelled).
    #[arg(long)]
    pub state: Option<vidx_core::domain::JobState>,
    /// Most jobs to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Coordinator connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vidx bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Lease+complete throughput through gRPC against Redis, with `redis-benchmark` as ceiling.
    Queue(QueueBenchArgs),
    /// One Redis holding a pass of `--jobs` videos: memory per job, planning rate, throughput
    /// and latencies at that depth, reaping, AOF rewrite and restart.
    Scale(ScaleBenchArgs),
    /// The tantivy search index over a generated corpus: build time, size, p50/p99 query
    /// latency, and a linear scan of the same rows as the reference.
    Search(SearchBenchArgs),
    /// The medium random model over generated videos through an in-process coordinator and the
    /// worker loop, prefetch off then on: videos/min, model busy ratio, seconds per stage.
    Pipeline(PipelineBenchArgs),
}

/// `vidx bench search`.
#[derive(Debug, Args)]
pub struct SearchBenchArgs {
    /// Claim rows generated and indexed.
    #[arg(long, default_value_t = 1_000_000)]
    pub claims: usize,
    /// Answer rows (default: a tenth of `--claims`).
    #[arg(long)]
    pub answers: Option<usize>,
    /// Queries timed on the index (a mix of words, phrases, filters).
    #[arg(long, default_value_t = 2_000)]
    pub queries: usize,
    /// Queries of the same mix timed on the linear scan.
    #[arg(long, default_value_t = 50)]
    pub reference_queries: usize,
    /// Hits per query.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// An empty directory to write the index into (default: a temporary one, removed after).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Indexing threads (default: the cores, at most 4).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `vidx bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineBenchArgs {
    /// Videos indexed in each run.
    #[arg(long, default_value_t = 8)]
    pub videos: u32,
    /// Length of each video in seconds (sampled at 2 frames a second).
    #[arg(long, default_value_t = 8)]
    pub seconds: u32,
    /// Tokens generated a question.
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Jobs prepared ahead of the model in the second run.
    #[arg(long, default_value_t = vidx_worker::runtime::default_prefetch())]
    pub prefetch: usize,
    /// Where the model runs: `cpu`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu", value_parser = parse_setting::<DeviceSetting>)]
    pub device: DeviceSetting,
    /// A checkpoint folder whose `tokenizer.json` (the Qwen2.5 vocabulary) the random model
    /// speaks; by default the repository's tiny fixture.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/qwen2_5_vl/tiny-realvocab"))]
    pub tokenizer_dir: std::path::PathBuf,
}

/// `vidx bench scale`.
#[derive(Debug, Args)]
pub struct ScaleBenchArgs {
    /// Jobs in the pass.
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: u64,
    /// Concurrent worker clients for the throughput figure.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Jobs leased per call for the throughput figure.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Jobs completed for the throughput and done-memory figures.
    #[arg(long, default_value_t = 200_000)]
    pub complete: u64,
    /// Calls timed for each latency figure.
    #[arg(long, default_value_t = 2_000)]
    pub samples: u32,
    /// Characters of an extra folder in every video's path (0: `chNN/DATE/clip-N.mp4`), to
    /// measure what long paths cost.
    #[arg(long, default_value_t = 0)]
    pub extra_path: usize,
    /// Run Redis with this `hash-max-listpack-value` (the Helm chart's Redis uses 256).
    #[arg(long)]
    pub hash_max_listpack_value: Option<u32>,
}

/// `vidx bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Redis to use; without it a `redis-server` is started on a free loopback port.
    #[arg(long)]
    pub redis: Option<String>,
    /// Jobs to push through.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u32,
    /// Concurrent worker clients.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Jobs leased per call.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
}
