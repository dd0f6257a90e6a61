//! The one kill-on-drop guard for every process the test kit starts, and the bounded waits on it.
//!
//! [`ChildGuard::spawn`] starts a program with stdin closed and stdout and stderr piped to two
//! reader threads. Each line goes to a channel (what the waits read) and to a bounded tail kept for
//! failure messages. Dropping the guard kills the process by its own pid and reaps it; nothing is
//! ever killed by name or by process group.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How many lines of a process's output are kept for failure messages.
const LOG_TAIL_LINES: usize = 200;
/// How often a wait for an exit looks at the process again.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a process wrote, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The pipe it came from.
    pub stream: Stream,
    /// Its text (invalid UTF-8 replaced).
    pub text: String,
}

/// What a process that ran to its end wrote, and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything on stdout not consumed by an earlier wait, one `\n` per line.
    pub stdout: String,
    /// Everything on stderr not consumed by an earlier wait, one `\n` per line.
    pub stderr: String,
}

/// A child process that is killed (by its pid) and reaped when dropped, with its output kept.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    lines: Receiver<Line>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ChildGuard {
    /// Starts `command` with stdin closed and stdout and stderr captured; `name` is how errors
    /// name it ("redis-server", "vidx coordinator").
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self> {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: command.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let (sender, lines) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        if let Some(stdout) = child.stdout.take() {
            read_lines(stdout, Stream::Stdout, sender.clone(), Arc::clone(&tail));
        }
        if let Some(stderr) = child.stderr.take() {
            read_lines(stderr, Stream::Stderr, sender, Arc::clone(&tail));
        }
        Ok(Self {
            name,
            child,
            lines,
            tail,
        })
    }

    /// Reads the process's lines until `matcher` returns `Some` for one, and returns that. Fails
    /// (and kills the process) when `within` passes first, and fails with its status and output
    /// when it exits first. Lines read here are consumed; the tail keeps them for messages.
    pub fn wait_for_line<T>(
        &mut self,
        what: &'static str,
        within: Duration,
        mut matcher: impl FnMut(&Line) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = matcher(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(self.timed_out(what, within));
                }
                // Both pipes closed: the process is exiting; its status says how.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(Error::Exited {
                        name: self.name.clone(),
                        status,
                        log: self.log(),
                    });
                }
            }
        }
    }

    /// Waits for the process to exit and returns what it wrote; kills it and fails when `within`
    /// passes first.
    pub fn wait_finished(&mut self, within: Duration) -> Result<Finished> {
        let deadline = Instant::now() + within;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let mut open = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                return Err(self.timed_out("finish", within));
            }
            if !open {
                // The pipes are closed; the exit itself follows at once.
                if let Some(status) = self.child.try_wait()? {
                    return Ok(Finished {
                        status,
                        stdout,
                        stderr,
                    });
                }
                std::thread::sleep(EXIT_POLL.min(left));
                continue;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let text = match line.stream {
                        Stream::Stdout => &mut stdout,
                        Stream::Stderr => &mut stderr,
                    };
                    text.push_str(&line.text);
                    text.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Kills the process (by its pid) and reaps it; doing so again does nothing.
    pub fn kill(&mut self) {
        // An already exited child makes `kill` fail with InvalidInput; `wait` then reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How errors name this process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last lines (at most 200) the process wrote to stdout and stderr, interleaved as read.
    pub fn log(&self) -> String {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn timed_out(&self, what: &'static str, within: Duration) -> Error {
        Error::TimedOut {
            name: self.name.clone(),
            what,
            within,
            log: self.log(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Forwards each line of `pipe` to `sender` and the tail, on a thread that ends with the pipe.
fn read_lines(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    sender: Sender<Line>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buffer), Ok(read) if read > 0) {
            let text = String::from_utf8_lossy(&buffer)
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            buffer.clear();
            {
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text.clone());
            }
            // Nobody waiting any more is fine: the tail still keeps the line.
            let _ = sender.send(Line { stream, text });
        }
    });
}

/// Finds a program: the path in `$variable` when that is set, else the first of `names` found on
/// `PATH` or in one of `also_in`.
pub fn find_program(
    names: &[&str],
    variable: &str,
    also_in: &[PathBuf],
    hint: &'static str,
) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable).map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
        // A bare name in the variable is looked up on PATH like the defaults.
        if let Some(found) = on_path(path.as_os_str()) {
            return Ok(found);
        }
    }
    for name in names {
        if let Some(found) = on_path(OsStr::new(name)).or_else(|| {
            also_in
                .iter()
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        }) {
            return Ok(found);
        }
    }
    Err(Error::NotInstalled {
        program: names.join(" or "),
        looked: format!(
            "${variable}, PATH{}",
            also_in
                .iter()
                .map(|dir| format!(", {}", dir.display()))
                .collect::<String>()
        ),
        hint,
    })
}

fn on_path(name: &OsStr) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// `.tools/bin` of the workspace, where `scripts/install-test-servers.sh` installs helm, the Azure and GCS
/// emulators and the linters.
pub fn workspace_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin")
}

/// A tool `scripts/install-test-servers.sh` installs under `.tools/bin`.
pub fn tool(name: &str) -> Result<PathBuf> {
    let path = workspace_tools().join(name);
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::NotInstalled {
        program: name.to_owned(),
        looked: path.display().to_string(),
        hint: "run scripts/install-test-servers.sh",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> ChildGuard {
        ChildGuard::spawn("sh", Command::new("sh").args(["-c", script])).unwrap()
    }

    #[test]
    fn drop_kills_and_reaps_the_process() {
        let guard = shell("exec sleep 600");
        let proc_entry = PathBuf::from(format!("/proc/{}", guard.pid()));
        assert!(proc_entry.exists());
        drop(guard);
        // Reaped, so not even a zombie is left under its pid.
        assert!(!proc_entry.exists());
    }

    #[test]
    fn waiting_reads_lines_from_both_streams() {
        let mut guard = shell("echo one; echo 'port 4242' >&2; exec sleep 600");
        // The two pipes are read on two threads, so the stderr line may come before the stdout
        // one: wait until both have been seen.
        let (mut saw_one, mut port) = (false, None);
        guard
            .wait_for_line("write both lines", Duration::from_secs(20), |line| {
                match line.stream {
                    Stream::Stdout => saw_one |= line.text == "one",
                    Stream::Stderr => {
                        port = port.or_else(|| line.text.strip_prefix("port ")?.parse::<u16>().ok())
                    }
                }
                (saw_one && port.is_some()).then_some(())
            })
            .unwrap();
        assert_eq!(port, Some(4242));
        // Each line enters the tail before it is sent, so both are in the log now.
        let log = guard.log();
        assert!(log.contains("one") && log.contains("port 4242"), "{log}");
    }

    #[test]
    fn an_early_exit_is_an_error_with_status_and_output() {
        let mut guard = shell("echo starting; echo 'no such folder' >&2; exit 3");
        match guard.wait_for_line("start", Duration::from_secs(20), |_| None::<()>) {
            Err(Error::Exited { name, status, log }) => {
                assert_eq!(name, "sh");
                assert_eq!(status.code(), Some(3));
                assert!(
                    log.contains("starting") && log.contains("no such folder"),
                    "{log}"
                );
            }
            other => panic!("expected an early exit, got {other:?}"),
        }
    }

    #[test]
    fn a_silent_process_times_out_and_is_killed() {
        let mut guard = shell("echo waiting; exec sleep 600");
        // The line is in the log tail before the short wait below starts.
        guard
            .wait_for_line("say waiting", Duration::from_secs(20), |line| {
                (line.text == "waiting").then_some(())
            })
            .unwrap();
        let error = guard
            .wait_for_line("say ready", Duration::from_millis(300), |line| {
                (line.text == "ready").then_some(())
            })
            .unwrap_err();
        assert!(
            matches!(&error, Error::TimedOut { what: "say ready", log, .. } if log == "waiting"),
            "{error}"
        );
        assert!(
            guard.try_status().unwrap().is_some(),
            "killed at the deadline"
        );
        let error = shell("exec sleep 600")
            .wait_finished(Duration::from_millis(300))
            .unwrap_err();
        assert!(
            matches!(error, Error::TimedOut { what: "finish", .. }),
            "{error}"
        );
    }

    #[test]
    fn a_finished_run_keeps_its_streams_apart() {
        let finished = shell("echo out; echo err >&2; echo more; exit 1")
            .wait_finished(Duration::from_secs(20))
            .unwrap();
        assert_eq!(finished.status.code(), Some(1));
        assert_eq!(finished.stdout, "out\nmore\n");
        assert_eq!(finished.stderr, "err\n");
    }

    #[test]
    fn a_missing_program_says_what_installs_it() {
        let error =
            find_program(&["vidx-no-such-program"], "VIDX_NO_SUCH", &[], "run setup").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("vidx-no-such-program not found"),
            "{message}"
        );
        assert!(message.contains("run setup"), "{message}");
        let error = ChildGuard::spawn("x", &mut Command::new("/nonexistent/program")).unwrap_err();
        assert!(matches!(error, Error::Spawn { .. }), "{error}");
    }
}
