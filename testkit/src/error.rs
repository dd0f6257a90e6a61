//! The one error type of every harness: what was started, what it said, and why it is not usable.

use std::process::ExitStatus;
use std::time::Duration;

/// Errors starting, waiting for or using a process started by the test kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program is not installed where the test kit looks for it.
    #[error("{program} not found (looked at {looked}): {hint}")]
    NotInstalled {
        /// The program's name.
        program: String,
        /// Where it was looked for.
        looked: String,
        /// What installs it.
        hint: &'static str,
    },
    /// The operating system refused to start the program.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program's path.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process neither reported what was waited for nor exited within the deadline; it has
    /// been killed.
    #[error("{name} did not {what} within {within:?}; its output:\n{log}")]
    TimedOut {
        /// The process, as the harness names it.
        name: String,
        /// What was waited for ("report its address", "finish").
        what: &'static str,
        /// The deadline.
        within: Duration,
        /// The last lines it wrote to stdout and stderr.
        log: String,
    },
    /// The process exited before it reported what was waited for.
    #[error("{name} exited ({status}) before it was ready; its output:\n{log}")]
    Exited {
        /// The process, as the harness names it.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines it wrote to stdout and stderr.
        log: String,
    },
    /// The process reported something the harness cannot use (an address that does not parse).
    #[error("{name} reported {line:?}: {reason}")]
    Unexpected {
        /// The process, as the harness names it.
        name: String,
        /// The line it wrote.
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Every attempt to start on a port chosen by the test kit found the port taken.
    #[error(
        "{name}: {attempts} ports in a row were taken before it could bind; last output:\n{log}"
    )]
    PortsTaken {
        /// The process, as the harness names it.
        name: String,
        /// How many ports were tried.
        attempts: usize,
        /// The last attempt's output.
        log: String,
    },
    /// A DevTools protocol call failed, timed out, or the browser closed its pipe.
    #[error("chromium devtools {method}: {reason}; its output:\n{log}")]
    DevTools {
        /// The protocol method, e.g. `Page.captureScreenshot`.
        method: String,
        /// What went wrong.
        reason: String,
        /// The last lines the browser wrote.
        log: String,
    },
    /// Local I/O (temporary folders, sockets, pipes) failed.
    #[error("test kit i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Building an object-store client for an emulator failed.
    #[error("building an object-store client: {0}")]
    Client(#[from] object_store::Error),
}

/// The test kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
