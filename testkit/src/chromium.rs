//! Headless Chromium, for the report tests: one screenshot of a local page per run
//! ([`Chromium::screenshot`]), or a page driven over the DevTools protocol ([`Chromium::open`]:
//! evaluate script, type into the page, screenshot). It binds nothing: the protocol runs over
//! `--remote-debugging-pipe` (the browser reads commands on fd 3 and writes replies on fd 4, each
//! a JSON object ended by a NUL byte), and every wait is bounded by a deadline, after which the
//! guard kills the browser by its pid.
//!
//! The binary is `$VIDX_CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` from
//! `PATH` (`scripts/install-test-servers.sh` installs the Debian package `chromium`).

use std::io::{BufRead, BufReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::process::{ChildGuard, Finished, find_program};

/// Flags of every run: headless, no network of its own, no first-run work, one CSS pixel per
/// screen pixel.
const HEADLESS_FLAGS: &[&str] = &[
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
];

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
            "run scripts/install-test-servers.sh (installs the Debian package chromium) or set VIDX_CHROMIUM",
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
                .args(HEADLESS_FLAGS)
                .arg(format!("--window-size={width},{height}"))
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--screenshot={}", screenshot.display()))
                .arg(format!("file://{}", page.display())),
        )?;
        process.wait_finished(within)
    }

    /// Opens `page` in a `width`x`height` viewport at device scale 1 with a fresh profile and
    /// returns a DevTools session attached to it, once the page has loaded. Each protocol call
    /// waits at most `within`.
    pub fn open(
        &self,
        page: &Path,
        (width, height): (u32, u32),
        within: Duration,
    ) -> Result<DevTools> {
        let profile = tempfile::tempdir()?;
        let (browser_reads, commands) = std::io::pipe()?;
        let (replies, browser_writes) = std::io::pipe()?;
        let (read_fd, write_fd) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = Command::new(&self.binary);
        command
            .args(HEADLESS_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank");
        // SAFETY: the closure runs in the forked child before exec and calls only fcntl, dup2 and
        // close, which are async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            command.pre_exec(move || pipe_to_fds_3_and_4(read_fd, write_fd));
        }
        let process = ChildGuard::spawn("chromium", &mut command)?;
        // The browser holds its ends now; ours would keep its pipe open after it exits.
        drop((browser_reads, browser_writes));
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        message.pop_if(|byte| *byte == 0);
                        if sender.send(message).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut session = DevTools {
            process,
            commands,
            messages,
            next_id: 0,
            session_id: None,
            within,
            _profile: profile,
        };
        let target = session.call(
            "Target.createTarget",
            json!({ "url": format!("file://{}", page.display()) }),
        )?;
        let target_id = target["targetId"].clone();
        let attached = session.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        session.session_id = attached["sessionId"].as_str().map(str::to_owned);
        session.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        session.wait_until("document.readyState === 'complete'")?;
        Ok(session)
    }
}

/// Puts the pipe ends the browser uses on fds 3 (commands in) and 4 (replies out), in the child
/// before exec. Both are first copied above 4 so that placing one cannot close the other.
fn pipe_to_fds_3_and_4(read_fd: i32, write_fd: i32) -> std::io::Result<()> {
    let check = |result: i32| {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: plain fd syscalls on descriptors this process owns; results are checked.
    unsafe {
        let high_read = check(libc::fcntl(read_fd, libc::F_DUPFD, 10))?;
        let high_write = check(libc::fcntl(write_fd, libc::F_DUPFD, 10))?;
        check(libc::dup2(high_read, 3))?;
        check(libc::dup2(high_write, 4))?;
        check(libc::close(high_read))?;
        check(libc::close(high_write))?;
    }
    Ok(())
}

/// A page in a headless Chromium driven over the DevTools protocol. Dropping it kills the
/// browser by its pid.
pub struct DevTools {
    process: ChildGuard,
    commands: PipeWriter,
    messages: Receiver<Vec<u8>>,
    next_id: u64,
    session_id: Option<String>,
    within: Duration,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for DevTools {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DevTools")
            .field("pid", &self.process.pid())
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl DevTools {
    fn error(&self, method: &str, reason: impl Into<String>) -> Error {
        Error::DevTools {
            method: method.to_owned(),
            reason: reason.into(),
            log: self.process.log(),
        }
    }

    /// Sends one protocol command (to the page once attached) and returns its `result`; events
    /// that arrive meanwhile are skipped. Fails on a protocol error, or when no reply comes
    /// within the session's deadline.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session_id) = &self.session_id {
            message["sessionId"] = json!(session_id);
        }
        let mut bytes =
            serde_json::to_vec(&message).map_err(|error| self.error(method, error.to_string()))?;
        bytes.push(0);
        if let Err(error) = self.commands.write_all(&bytes) {
            return Err(self.error(method, format!("writing the command: {error}")));
        }
        let deadline = Instant::now() + self.within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.messages.recv_timeout(left) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.error(method, format!("no reply within {:?}", self.within)));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.error(method, "the browser closed its pipe"));
                }
            };
            let reply: Value = serde_json::from_slice(&reply)
                .map_err(|error| self.error(method, format!("unreadable reply: {error}")))?;
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(self.error(method, error.to_string()));
            }
            return Ok(reply["result"].clone());
        }
    }

    /// Evaluates a script expression in the page and returns its value (JSON-serializable
    /// values only); an exception thrown is an error.
    pub fn evaluate(&mut self, expression: &str) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(self.error("Runtime.evaluate", format!("{expression}: {exception}")));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `condition` (a script expression) until it is true, within the session's deadline.
    pub fn wait_until(&mut self, condition: &str) -> Result<()> {
        let deadline = Instant::now() + self.within;
        while Instant::now() < deadline {
            if self.evaluate(condition)? == json!(true) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.error(
            "Runtime.evaluate",
            format!("{condition} still false after {:?}", self.within),
        ))
    }

    /// Focuses the element `selector` names and types `text` into it one key at a time, as a
    /// user would: each character is a key down (which inserts it and fires `input`) and a key up.
    pub fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let selector_json = serde_json::to_string(selector)
            .map_err(|error| self.error("type", error.to_string()))?;
        let focused = self.evaluate(&format!(
            "(() => {{ const element = document.querySelector({selector_json}); if (!element) return false; element.focus(); return document.activeElement === element; }})()"
        ))?;
        if focused != json!(true) {
            return Err(self.error("type", format!("cannot focus {selector}")));
        }
        for character in text.chars() {
            let key = character.to_string();
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": "keyDown", "key": key, "text": key, "unmodifiedText": key }),
            )?;
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": "keyUp", "key": key }),
            )?;
        }
        Ok(())
    }

    /// Presses and releases a key that types nothing (`Backspace`, `Enter`, ...) in the focused
    /// element; `key_code` is its Windows virtual key code (8 for Backspace), which is what
    /// editing commands are bound to.
    pub fn press_key(&mut self, key: &str, key_code: u32) -> Result<()> {
        for kind in ["rawKeyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": key, "code": key, "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code }),
            )?;
        }
        Ok(())
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot_png(&mut self) -> Result<Vec<u8>> {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = result["data"].as_str().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|error| self.error("Page.captureScreenshot", format!("not base64: {error}")))
    }

    /// The browser's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
