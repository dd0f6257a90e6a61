//! Helpers for the integration tests that run real `vidx` processes; the processes themselves are
//! started by `vidx-testkit`.

#![allow(dead_code)]

pub mod cluster;
pub mod helm;
pub mod scrape;

use std::path::Path;
use std::process::{Command, Output};

use vidx_testkit::vidx::CoordinatorOptions;
pub use vidx_testkit::vidx::VidxCoordinator;

/// The `vidx` binary under test.
pub const VIDX: &str = env!("CARGO_BIN_EXE_vidx");

/// A tool `scripts/install-test-servers.sh` installs under `.tools/bin` (helm, the Azure and GCS emulators);
/// fails with what to run when it is missing.
pub fn tool(name: &str) -> std::path::PathBuf {
    vidx_testkit::tool(name).unwrap_or_else(|error| panic!("{error}"))
}

/// The `file://` prefix of the temporary directory, where tests keep their corpora and indexes:
/// a coordinator refuses local paths it was not given with `--allow-prefix`.
pub fn temp_prefix() -> String {
    let dir = std::env::temp_dir();
    let url = url::Url::from_directory_path(&dir).expect("the temporary directory is absolute");
    url.to_string()
}

/// Starts `vidx coordinator` over `redis_url`, requiring `token` and allowing passes under the
/// temporary directory; returns the process and its URL once it has bound its port.
pub fn start_coordinator(redis_url: &str, token: &str) -> (VidxCoordinator, String) {
    start_coordinator_allowing(redis_url, token, &[&temp_prefix()])
}

/// [`start_coordinator`] allowing exactly `prefixes`.
pub fn start_coordinator_allowing(
    redis_url: &str,
    token: &str,
    prefixes: &[&str],
) -> (VidxCoordinator, String) {
    let options = CoordinatorOptions {
        redis_url: Some(redis_url.to_owned()),
        token: Some(token.to_owned()),
        allow_prefixes: prefixes.iter().map(|prefix| prefix.to_string()).collect(),
        ..CoordinatorOptions::default()
    };
    let coordinator = VidxCoordinator::start(Path::new(VIDX), &options)
        .unwrap_or_else(|error| panic!("vidx coordinator starts: {error}"));
    let url = coordinator.url();
    (coordinator, url)
}

/// Encodes a short real H.264 clip with the ffmpeg CLI.
pub fn ffmpeg_clip(path: &Path, seconds: u32) {
    let source = format!("testsrc2=size=160x120:rate=10:duration={seconds}");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", &source])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(path)
        .status()
        .expect("ffmpeg runs (run scripts/setup.sh)");
    assert!(status.success(), "ffmpeg {}", path.display());
}

/// Runs a `vidx` client command against the coordinator at `url` with `token`, logging warnings
/// only.
pub fn vidx_client(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(VIDX)
        .args(args)
        .env("VIDX_COORDINATOR", url)
        .env("VIDX_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vidx runs")
}

/// The stdout of a `vidx` run that must have succeeded (its stderr otherwise).
pub fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "vidx failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}
