//! A real S3-compatible server for integration tests: `s3s-fs` (installed by
//! `scripts/install-test-servers.sh`) serving a temporary directory on a free loopback port,
//! stopped by its process id when the handle is dropped.
//!
//! A test that needs it calls [`S3Server::start`] and fails with a clear message when the binary
//! is missing: these tests never skip silently.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};

/// Name of the server binary, and of the variable that may point at it.
const BINARY: &str = "s3s-fs";
const BINARY_VARIABLE: &str = "VIDX_S3S_FS";
/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors starting or using the test server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server binary is not installed.
    #[error(
        "s3s-fs not found (looked at ${BINARY_VARIABLE}, PATH and ~/.cargo/bin): run scripts/install-test-servers.sh"
    )]
    NotInstalled,
    /// Starting the process or preparing its directory failed.
    #[error("starting s3s-fs: {0}")]
    Io(#[from] std::io::Error),
    /// The process did not report a listening address in time.
    #[error("s3s-fs did not start within {0:?}: {1}")]
    NotReady(Duration, String),
    /// Building a client for the server failed.
    #[error("building an s3 client: {0}")]
    Client(#[from] object_store::Error),
}

/// A running `s3s-fs` with its data directory; killed (by pid) and cleaned up on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    endpoint: String,
}

/// Static credentials the server accepts.
pub const ACCESS_KEY: &str = "vidx-test-access";
/// Secret for [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "vidx-test-secret";
/// Region clients sign for.
pub const REGION: &str = "us-east-1";

impl S3Server {
    /// Starts a server on a free loopback port and waits until it listens.
    pub fn start() -> Result<Self, Error> {
        let binary = find_binary().ok_or(Error::NotInstalled)?;
        let root = tempfile::tempdir()?;
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let Some(stdout) = child.stdout.take() else {
            stop(&mut child);
            return Err(Error::NotReady(START_TIMEOUT, "no stdout".into()));
        };
        // The server logs "server is running at http://127.0.0.1:PORT" once bound; read its
        // output on a thread so that waiting has a deadline.
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.split("running at ").nth(1) {
                    let _ = sender.send(address.trim().to_owned());
                }
            }
        });
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(endpoint) => Ok(Self {
                child,
                root,
                endpoint,
            }),
            Err(_) => {
                stop(&mut child);
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                Err(Error::NotReady(START_TIMEOUT, stderr))
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The directory the server stores buckets in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates an empty bucket (a directory of the server's root).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        std::fs::create_dir_all(self.root.path().join(bucket))?;
        Ok(())
    }

    /// The `object_store` configuration for this server, as key/value pairs accepted by
    /// `AmazonS3Builder::with_config` (and, upper-cased, the matching `AWS_*` variables).
    pub fn config(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint_url", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", ACCESS_KEY.into()),
            ("aws_secret_access_key", SECRET_KEY.into()),
            ("aws_region", REGION.into()),
        ]
    }

    /// A client for `bucket` on this server.
    pub fn store(&self, bucket: &str) -> Result<AmazonS3, Error> {
        let builder = self.config().into_iter().fold(
            AmazonS3Builder::new().with_bucket_name(bucket),
            |builder, (key, value)| match key.parse() {
                Ok(key) => builder.with_config(key, value),
                Err(_) => builder,
            },
        );
        Ok(builder.build()?)
    }

    /// The process id, for tests that want to stop the server themselves.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kills exactly the child we started, by its pid, and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_VARIABLE).map(PathBuf::from)
        && path.is_file()
    {
        return Some(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(BINARY));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin").join(BINARY));
    on_path.chain(cargo_home).find(|path| path.is_file())
}
