//! A real S3-compatible server for integration tests: `s3s-fs` (installed by
//! `scripts/install-test-servers.sh`) serving a temporary directory on loopback port 0; readiness
//! is the address it logs once bound ("server is running at http://127.0.0.1:PORT").
//!
//! A test that needs it calls [`S3Server::start`] and fails with a clear message when the binary
//! is missing: these tests never skip silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};

use crate::error::Result;
use crate::process::{ChildGuard, find_program};

/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `s3s-fs` with its data directory; killed (by pid) and cleaned up on drop.
#[derive(Debug)]
pub struct S3Server {
    process: ChildGuard,
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
    /// Starts a server on loopback port 0 and waits until it reports the address it bound.
    pub fn start() -> Result<Self> {
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .map(|home| home.join("bin"));
        let binary = find_program(
            &["s3s-fs"],
            "VIDX_S3S_FS",
            cargo_bin.as_slice(),
            "run scripts/install-test-servers.sh",
        )?;
        let root = tempfile::tempdir()?;
        let mut process = ChildGuard::spawn(
            "s3s-fs",
            Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", "0"])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .env("RUST_LOG", "s3s_fs=info")
                .env("NO_COLOR", "1"),
        )?;
        let endpoint = process.wait_for_line("report its address", START_TIMEOUT, |line| {
            let address = line.text.split("running at ").nth(1)?;
            Some(address.trim().to_owned())
        })?;
        Ok(Self {
            process,
            root,
            endpoint,
        })
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
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
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
    pub fn store(&self, bucket: &str) -> Result<AmazonS3> {
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
        self.process.pid()
    }
}
