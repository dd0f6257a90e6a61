//! Helpers for the integration tests that run real `vidx` processes: a child stopped by its pid
//! when dropped, and a coordinator process on a free loopback port.

#![allow(dead_code)]

pub mod helm;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vidx_coordinator::testing::free_port;

/// The `vidx` binary under test.
pub const VIDX: &str = env!("CARGO_BIN_EXE_vidx");

/// A tool `scripts/setup.sh` installs under `.tools/bin` (helm, the Azure and GCS emulators);
/// fails with what to run when it is missing.
pub fn tool(name: &str) -> std::path::PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// A child process, killed and reaped by its pid when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port` (at most 30 s).
pub fn wait_for_port(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `file://` prefix of the temporary directory, where tests keep their corpora and indexes:
/// a coordinator refuses local paths it was not given with `--allow-prefix`.
pub fn temp_prefix() -> String {
    let dir = std::env::temp_dir();
    let url = url::Url::from_directory_path(&dir).expect("the temporary directory is absolute");
    url.to_string()
}

/// Starts `vidx coordinator` on a free loopback port over `redis_url`, requiring `token` and
/// allowing passes under the temporary directory; returns the process and its URL once it
/// accepts connections.
pub fn start_coordinator(redis_url: &str, token: &str) -> (Process, String) {
    start_coordinator_allowing(redis_url, token, &[&temp_prefix()])
}

/// [`start_coordinator`] allowing exactly `prefixes`.
pub fn start_coordinator_allowing(
    redis_url: &str,
    token: &str,
    prefixes: &[&str],
) -> (Process, String) {
    let port = free_port().unwrap();
    let mut command = Command::new(VIDX);
    command
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis", redis_url]);
    for prefix in prefixes {
        command.args(["--allow-prefix", prefix]);
    }
    // A pass over s3:// that a test submits plans against a closed loopback port, never a
    // cloud (nor the instance metadata service for credentials).
    let closed = free_port().unwrap();
    command
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let process = Process(
        command
            .env("VIDX_TOKEN", token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("vidx coordinator starts"),
    );
    wait_for_port(port);
    (process, format!("http://127.0.0.1:{port}"))
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
