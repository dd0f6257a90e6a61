//! Test support: a real `redis-server` on a free loopback port, stopped by its pid when dropped.
//! `vidx bench scale` uses it too, with append-only persistence and restarts on the same folder.
//! Built with the `testsuite` feature, for this crate's tests and the workspace's integration tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process listening on 127.0.0.1 only.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
}

/// How to start a [`RedisServer`]; the default is persistence off in a fresh temporary folder.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Append-only persistence (fsync every second), as the Helm chart runs Redis.
    pub append_only: bool,
    /// Data folder to use (and keep); `None` for a temporary one removed on drop.
    pub dir: Option<PathBuf>,
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
}

impl RedisServer {
    /// Starts a server with persistence off; the binary is `$VIDX_REDIS_SERVER` or
    /// `redis-server` from `PATH` (installed by `scripts/setup.sh`).
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(&RedisOptions::default())
    }

    /// Starts a server as `options` say, and returns once it answers (after loading any data
    /// in its folder: Redis refuses commands while loading).
    pub fn start_with(options: &RedisOptions) -> std::io::Result<Self> {
        Self::start_waiting(options, Duration::from_secs(10))
    }

    /// [`RedisServer::start_with`], waiting up to `ready_within` (loading a big data set takes a
    /// while).
    pub fn start_waiting(options: &RedisOptions, ready_within: Duration) -> std::io::Result<Self> {
        let binary = std::env::var("VIDX_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut last_error = None;
        // A free port can be taken by someone else between probing and binding: try a few.
        for _ in 0..5 {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            let (dir, owned_dir) = match &options.dir {
                Some(dir) => (dir.clone(), None),
                None => {
                    let owned = tempfile::tempdir()?;
                    (owned.path().to_owned(), Some(owned))
                }
            };
            let append_only = if options.append_only { "yes" } else { "no" };
            let child = Command::new(&binary)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    append_only,
                    "--appendfsync",
                    "everysec",
                    "--protected-mode",
                    "yes",
                ])
                .args(["--loglevel", "warning", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot start {binary} (run scripts/setup.sh): {error}"),
                    )
                })?;
            let mut server = RedisServer {
                child,
                port,
                dir,
                _owned_dir: owned_dir,
            };
            match server.wait_ready(ready_within) {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
            if options.port.is_some() {
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "redis-server exited early: {status}"
                )));
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200))
            {
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                stream.write_all(b"PING\r\n")?;
                let mut reply = [0u8; 7];
                if stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis-server not ready in time",
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
