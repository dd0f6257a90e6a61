//! Headless Chromium, for the report tests: one screenshot of a local page per run. It binds
//! nothing; the run is bounded by a deadline, after which the guard kills it by its pid.
//!
//! The binary is `$VIDX_CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` from
//! `PATH` (`scripts/setup.sh` installs the Debian package `chromium`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::process::{ChildGuard, Finished, find_program};

/// A Chromium binary found on this machine.
#[derive(Debug, Clone)]
pub struct Chromium {
    binary: PathBuf,
}

impl Chromium {
    /// Finds the binary.
    pub fn find() -> Result<Self> {
        let binary = find_program(
            &["chromium", "chromium-browser", "google-chrome"],
            "VIDX_CHROMIUM",
            &[],
            "run scripts/setup.sh (installs the Debian package chromium) or set VIDX_CHROMIUM",
        )?;
        Ok(Self { binary })
    }

    /// Renders `page` in a `width`x`height` window at device scale 1 with a fresh profile, and
    /// writes a PNG screenshot to `screenshot`; waits at most `within`. Returns the run's output
    /// (whether the screenshot exists is for the caller to check: Chromium exits 0 either way).
    pub fn screenshot(
        &self,
        page: &Path,
        screenshot: &Path,
        (width, height): (u32, u32),
        within: Duration,
    ) -> Result<Finished> {
        let profile = tempfile::tempdir()?;
        let mut process = ChildGuard::spawn(
            "chromium",
            Command::new(&self.binary)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                ])
                .arg(format!("--window-size={width},{height}"))
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--screenshot={}", screenshot.display()))
                .arg(format!("file://{}", page.display())),
        )?;
        process.wait_finished(within)
    }
}
