//! A real `redis-server` on a loopback port, for the store tests, the integration tests and
//! `vidx bench` (which runs it with append-only persistence and restarts it on the same folder).
//!
//! redis-server cannot choose a port and report it (`--port 0` turns TCP off), so the test kit
//! picks one ([`crate::port::on_free_port`]) and reads redis's own log: `Ready to accept
//! connections` comes once it is bound and has loaded any data in its folder (it refuses
//! commands while loading); a port someone else took makes it log "Address already in use" and
//! exit, and the next attempt takes a fresh port. A Unix socket would avoid the port, but every
//! consumer (the coordinator, `redis-benchmark`, the chart tests) speaks `redis://host:port`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::port::on_free_port;
use crate::process::{ChildGuard, find_program};

/// How long [`RedisServer::start_with`] waits for an empty or small data folder to load.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A `redis-server` child process listening on 127.0.0.1 only; killed by its pid when dropped.
#[derive(Debug)]
pub struct RedisServer {
    process: ChildGuard,
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
    /// A port to listen on, for a restart that must keep its address; `None` lets the test kit
    /// pick one (and pick again when it was taken).
    pub port: Option<u16>,
}

impl RedisServer {
    /// Starts a server with persistence off; the binary is `$VIDX_REDIS_SERVER` or
    /// `redis-server` from `PATH` (installed by `scripts/install-test-servers.sh`).
    pub fn start() -> Result<Self> {
        Self::start_with(&RedisOptions::default())
    }

    /// Starts a server as `options` say, and returns once it accepts commands.
    pub fn start_with(options: &RedisOptions) -> Result<Self> {
        Self::start_waiting(options, READY_WITHIN)
    }

    /// [`RedisServer::start_with`], waiting up to `ready_within` (loading a big data set takes a
    /// while).
    pub fn start_waiting(options: &RedisOptions, ready_within: Duration) -> Result<Self> {
        let binary = find_program(
            &["redis-server"],
            "VIDX_REDIS_SERVER",
            &[],
            "run scripts/install-test-servers.sh",
        )?;
        let (dir, owned_dir) = match &options.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let owned = tempfile::tempdir()?;
                (owned.path().to_owned(), Some(owned))
            }
        };
        let start = |port: u16| {
            let mut process = ChildGuard::spawn(
                "redis-server",
                Command::new(&binary)
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly"])
                    .arg(if options.append_only { "yes" } else { "no" })
                    .args(["--appendfsync", "everysec", "--protected-mode", "yes"])
                    // Notice level: the ready and bind-failure lines the wait reads are notices.
                    .args(["--loglevel", "notice", "--logfile", "", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&dir),
            )?;
            process.wait_for_line("accept connections", ready_within, |line| {
                line.text
                    .contains("Ready to accept connections")
                    .then_some(())
            })?;
            Ok((process, port))
        };
        let (process, port) = match options.port {
            Some(port) => start(port)?,
            None => on_free_port("redis-server", start)?,
        };
        Ok(Self {
            process,
            port,
            dir,
            _owned_dir: owned_dir,
        })
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
        self.process.pid()
    }

    /// Its data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of its log, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::error::Error;

    /// Sends one inline command and returns the first reply line.
    fn command(port: u16, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    #[test]
    fn answers_once_started_and_is_gone_after_drop() {
        let server = RedisServer::start().unwrap();
        assert_eq!(command(server.port(), "PING"), "+PONG");
        let port = server.port();
        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_taken_port_is_a_clear_error_with_redis_log() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let options = RedisOptions {
            port: Some(taken.local_addr().unwrap().port()),
            ..RedisOptions::default()
        };
        match RedisServer::start_with(&options) {
            Err(Error::Exited { name, log, .. }) => {
                assert_eq!(name, "redis-server");
                assert!(log.contains("Address already in use"), "{log}");
            }
            other => panic!("expected an early exit, got {other:?}"),
        }
    }

    #[test]
    fn restarts_on_its_folder_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedisOptions {
            append_only: true,
            dir: Some(dir.path().to_owned()),
            port: None,
        };
        let first = RedisServer::start_with(&options).unwrap();
        assert_eq!(command(first.port(), "SET kept yes"), "+OK");
        // The append-only file is written before the reply goes out, so a kill keeps the key.
        drop(first);
        let second = RedisServer::start_with(&options).unwrap();
        assert_eq!(second.dir(), dir.path());
        assert_eq!(command(second.port(), "GET kept"), "$3");
    }
}
