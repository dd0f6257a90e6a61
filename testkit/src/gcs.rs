//! The Google Cloud Storage emulator (fake-gcs-server, installed by `scripts/install-test-servers.sh` under
//! `.tools/bin`), serving each folder of a data folder as a bucket.
//!
//! It cannot report a port it chose (with `-port 0` it logs `:0`), and it must be told its
//! public host, port included, up front; so the test kit picks the port
//! ([`crate::port::on_free_port`]). Readiness is its own log line "server started at", written
//! only after it bound; a taken port makes it log "address already in use" and exit, and the next
//! attempt takes a fresh port.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::port::on_free_port;
use crate::process::{ChildGuard, tool};

/// How long the emulator may take to load its data folder and bind.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running fake-gcs-server (memory backend, loaded from a data folder); killed by its pid on
/// drop.
#[derive(Debug)]
pub struct FakeGcs {
    process: ChildGuard,
    host: String,
}

impl FakeGcs {
    /// Starts the emulator over `data`, whose folders become buckets.
    pub fn start(data: &Path) -> Result<Self> {
        let binary = tool("fake-gcs-server")?;
        on_free_port("fake-gcs-server", |port| {
            let host = format!("127.0.0.1:{port}");
            let mut process = ChildGuard::spawn(
                "fake-gcs-server",
                Command::new(&binary)
                    .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
                    .arg(port.to_string())
                    .args(["-backend", "memory", "-log-level", "info", "-public-host"])
                    .arg(&host)
                    .arg("-data")
                    .arg(data),
            )?;
            process.wait_for_line("start", START_TIMEOUT, |line| {
                line.text.contains("server started at").then_some(())
            })?;
            Ok(Self { process, host })
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The variables `object_store` reads to talk to this emulator (no signing).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("GOOGLE_BASE_URL".to_owned(), self.base_url()),
            ("GOOGLE_SKIP_SIGNATURE".to_owned(), "true".to_owned()),
        ]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
