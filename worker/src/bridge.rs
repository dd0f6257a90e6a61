//! The worker's one bridge from blocking code to async I/O.
//!
//! A job runs on a blocking thread (`tokio::task::spawn_blocking`): FFmpeg demuxing and decoding
//! and model inference hold a core for seconds, which must never happen on the async runtime's
//! worker threads. Its object-store calls (ranged reads of the video for FFmpeg's I/O callbacks,
//! the index lookup, thumbnail and document writes) are async. [`wait`] is how blocking code gets
//! their results: it spawns the future onto the runtime and waits for it on a plain channel, with
//! an optional deadline. Spawning rather than `Handle::block_on` means the wait works from any
//! thread (a `spawn_blocking` thread, FFmpeg's callback, a plain test thread) and a deadline can
//! abandon a stalled request. [`block_on`] is the same wait for a future that borrows from the
//! caller (the evidence index's writes), without a deadline: the store's own timeouts bound it.
//! Neither may be called from async code.
//!
//! The runtime is the caller's when the calling thread belongs to one (every thread inside the
//! `vidx` binary does); sync callers outside any runtime (the sampling benchmark, unit tests)
//! get a small process-wide I/O runtime started on first use.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;

/// Why [`wait`] returned without the future's output.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed first; the request was abandoned.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No runtime could run the request.
    #[error("no async runtime: {0}")]
    NoRuntime(String),
    /// The request's task ended without an answer (it panicked or the runtime shut down).
    #[error("the request task ended without an answer")]
    Lost,
}

/// The runtime that runs a blocking caller's requests.
pub fn io_runtime() -> Result<Handle, WaitError> {
    if let Ok(handle) = Handle::try_current() {
        return Ok(handle);
    }
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vidx-io")
            .enable_all()
            .build()
            .map_err(|error| error.to_string())
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(reason) => Err(WaitError::NoRuntime(reason.clone())),
    }
}

/// Runs `future` on [`io_runtime`] and blocks this thread until it finishes, or until `timeout`
/// (when given) passes, in which case the request is aborted.
pub fn wait<T: Send + 'static>(
    timeout: Option<Duration>,
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, WaitError> {
    let runtime = io_runtime()?;
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let span = tracing::Span::current();
    let task = runtime.spawn(tracing::Instrument::instrument(
        async move {
            let _ = sender.send(future.await);
        },
        span,
    ));
    let received = match timeout {
        Some(timeout) => receiver.recv_timeout(timeout).map_err(|error| match error {
            std::sync::mpsc::RecvTimeoutError::Timeout => WaitError::Timeout(timeout),
            std::sync::mpsc::RecvTimeoutError::Disconnected => WaitError::Lost,
        }),
        None => receiver.recv().map_err(|_| WaitError::Lost),
    };
    if received.is_err() {
        task.abort();
    }
    received
}

/// Runs a future that borrows from the caller to completion on [`io_runtime`], blocking this
/// thread. Only for blocking threads: on an async runtime's worker thread it would stall the
/// runtime, and tokio refuses it.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, WaitError> {
    Ok(io_runtime()?.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_from_a_plain_thread_and_gives_up_at_the_deadline() {
        assert_eq!(wait(None, async { 7 }).unwrap(), 7);
        let stalled = wait(Some(Duration::from_millis(20)), async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        assert!(matches!(stalled, Err(WaitError::Timeout(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_from_a_blocking_thread_of_the_callers_runtime() {
        let answer = tokio::task::spawn_blocking(|| wait(None, async { "read" }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, "read");
    }
}
