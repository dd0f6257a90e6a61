//! `vidx` processes: the coordinator, started on port 0 for gRPC and for `/metrics`, ready once it
//! prints the addresses it bound (`metrics listening on ADDR`, then `grpc listening on ADDR`, on
//! stdout); and the worker, which binds nothing and needs only the guard.
//!
//! The binary is the caller's: integration tests pass `env!("CARGO_BIN_EXE_vidx")`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::port::ClosedPort;
use crate::process::{ChildGuard, Line, Stream};

/// How long a coordinator may take to connect to Redis and bind.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What the coordinator prints before its gRPC address.
const GRPC_LINE: &str = "grpc listening on ";
/// What the coordinator prints before its `/metrics` address.
const METRICS_LINE: &str = "metrics listening on ";

/// How to start a `vidx coordinator`.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorOptions {
    /// `--redis`; `None` for the in-memory store.
    pub redis_url: Option<String>,
    /// The bearer token every call must carry (`VIDX_TOKEN`); `None` for none.
    pub token: Option<String>,
    /// `--allow-prefix` values.
    pub allow_prefixes: Vec<String>,
    /// Also serve `/metrics` (on its own port 0).
    pub metrics: bool,
    /// Extra environment, applied last (so it overrides the test kit's defaults).
    pub env: Vec<(String, String)>,
    /// The gRPC address to bind; `None` for loopback port 0. A restart that must keep its
    /// address (workers reconnect to the one they were given) passes the one it had.
    pub listen: Option<SocketAddr>,
}

/// A running `vidx coordinator`; killed by its pid on drop.
///
/// Unless [`CoordinatorOptions::env`] says otherwise, it logs at `warn` and its S3 endpoint is
/// a loopback port held closed: a pass over `s3://` plans against a refusing port, never a cloud
/// (nor the instance metadata service for credentials).
#[derive(Debug)]
pub struct VidxCoordinator {
    process: ChildGuard,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
    _no_cloud: ClosedPort,
}

impl VidxCoordinator {
    /// Starts `binary coordinator` as `options` say and returns once it has bound its ports.
    pub fn start(binary: &Path, options: &CoordinatorOptions) -> Result<Self> {
        let no_cloud = ClosedPort::reserve()?;
        let mut command = Command::new(binary);
        let listen = options
            .listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |address| address.to_string());
        command.args(["coordinator", "--listen", &listen]);
        if let Some(url) = &options.redis_url {
            command.args(["--redis", url]);
        }
        if options.metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        for prefix in &options.allow_prefixes {
            command.args(["--allow-prefix", prefix]);
        }
        if let Some(token) = &options.token {
            command.env("VIDX_TOKEN", token);
        }
        command
            .env("RUST_LOG", "warn")
            .env("AWS_ENDPOINT_URL", no_cloud.http_url())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(options.env.iter().map(|(key, value)| (key, value)));
        let mut process = ChildGuard::spawn("vidx coordinator", &mut command)?;
        let mut metrics = None;
        let grpc = process.wait_for_line("report its address", START_TIMEOUT, |line| {
            if let Some(address) = reported(line, METRICS_LINE) {
                metrics = Some(address);
                return None;
            }
            reported(line, GRPC_LINE)
        })?;
        let grpc = parse_address(&process, grpc)?;
        let metrics = match metrics {
            Some(address) => Some(parse_address(&process, address)?),
            None if options.metrics => {
                return Err(Error::Unexpected {
                    name: process.name().to_owned(),
                    line: String::new(),
                    reason: "it reported its gRPC address but not its metrics address".into(),
                });
            }
            None => None,
        };
        Ok(Self {
            process,
            grpc,
            metrics,
            _no_cloud: no_cloud,
        })
    }

    /// `http://127.0.0.1:PORT`, for clients and `VIDX_COORDINATOR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The gRPC address it bound.
    pub fn grpc_address(&self) -> SocketAddr {
        self.grpc
    }

    /// The `/metrics` address it bound, when started with [`CoordinatorOptions::metrics`].
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Kills it now (by its pid), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last lines it wrote, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Starts `binary worker ARGS` against `coordinator_url` with `token`, logging at `warn`; `env`
/// is applied last. The worker binds nothing, so there is nothing to wait for; it connects to its
/// coordinator once at start, so start it after the coordinator is ready.
pub fn start_worker(
    binary: &Path,
    coordinator_url: &str,
    token: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<ChildGuard> {
    ChildGuard::spawn(
        "vidx worker",
        Command::new(binary)
            .arg("worker")
            .args(args)
            .env("VIDX_COORDINATOR", coordinator_url)
            .env("VIDX_TOKEN", token)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied()),
    )
}

fn reported(line: &Line, prefix: &str) -> Option<String> {
    if line.stream != Stream::Stdout {
        return None;
    }
    line.text
        .strip_prefix(prefix)
        .map(|rest| rest.trim().to_owned())
}

fn parse_address(process: &ChildGuard, text: String) -> Result<SocketAddr> {
    text.parse().map_err(|error| Error::Unexpected {
        name: process.name().to_owned(),
        reason: format!("not a socket address: {error}"),
        line: text,
    })
}
