//! Sampling with several decoders side by side.
//!
//! Targets that follow different keyframes are independent: decoding for one never needs a
//! packet before its own keyframe. Once non-reference frames are skipped, what is left to decode
//! is mostly one chain of reference frames, and FFmpeg's frame threading has little to overlap
//! in a chain; separate single-threaded decoders on separate runs of targets keep every core
//! busy instead. Each decoder opens its own copy of the video (its own reader and demuxer), takes
//! the next run of targets from a shared counter, and sends its frames back on that run's
//! channel. The caller's thread takes the runs in order, so frames still arrive in presentation
//! order; a decoder that runs ahead may hold at most `reorder_bytes` of frames (and always at
//! least one), which bounds memory whatever the video's length.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Condvar, Mutex, PoisonError};

use tracing::debug;

use super::convert::RgbConverter;
use super::decode::{CallShared, Counters, Delivery, RunEnd, Sampler};
use super::demux::OpenedVideo;
use super::error::Result;
use super::reader::ReadOptions;
use super::sample::{Frame, Plan};
use super::source::VideoSource;

/// How many decoders to run and how many threads each may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) decoders: usize,
    pub(super) threads_per_decoder: usize,
}

/// Most decoders chosen automatically: each opens its own copy of the video (a reader with its
/// block cache, a demuxer, a stream of ranged requests), which stops paying long before the cores
/// of a large node run out; the cores left over go to each decoder's frame threads.
const MAX_AUTO_DECODERS: usize = 8;

/// Decoders side by side for `runs` independent runs of targets given a budget of `threads`
/// (0: every core, at most [`MAX_AUTO_DECODERS`] decoders); `None` when one decoder is all that
/// can be used.
pub(super) fn layout(threads: usize, runs: usize) -> Option<Layout> {
    let (threads, max_decoders) = if threads == 0 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores, MAX_AUTO_DECODERS)
    } else {
        (threads, threads)
    };
    let decoders = threads.min(runs).min(max_decoders);
    (decoders >= 2).then(|| Layout {
        decoders,
        threads_per_decoder: (threads / decoders).max(1),
    })
}

/// The inputs of one parallel sampling call.
pub(super) struct Job<'a> {
    pub(super) source: &'a VideoSource,
    pub(super) read: &'a ReadOptions,
    pub(super) plan: &'a Plan,
    /// Runs of `plan.targets`, each after its own keyframe, in order.
    pub(super) groups: &'a [Range<usize>],
    pub(super) call: &'a CallShared,
    pub(super) reorder_bytes: u64,
}

/// What a decoder sends back for one run.
enum Message {
    Frame(Frame),
    /// The run is over; every frame of it was sent before.
    Ended(RunEnd),
    Failed(super::error::MediaError),
}

/// Runs the job with `layout.decoders` decoders, the first over the already opened `first`, and
/// hands frames to `delivery` in order. Returns how the runs ended (the first that did not
/// complete) and the summed work counters.
pub(super) fn run<F: FnMut(Frame) -> Result<()>>(
    job: Job<'_>,
    layout: Layout,
    first: Sampler<'_>,
    delivery: &mut Delivery<F>,
) -> Result<(RunEnd, Counters)> {
    let (senders, receivers): (Vec<_>, Vec<_>) = job.groups.iter().map(|_| channel()).unzip();
    let shared = Shared {
        job: &job,
        layout,
        next_group: AtomicUsize::new(0),
        senders: senders.into_iter().map(|s| Mutex::new(Some(s))).collect(),
        reorder: Reorder::new(job.reorder_bytes),
    };
    debug!(
        uri = %job.source.uri,
        decoders = layout.decoders,
        runs = job.groups.len(),
        "sampling with decoders side by side"
    );
    std::thread::scope(|scope| {
        let mut first = Some(first);
        let workers: Vec<_> = (0..layout.decoders)
            .map(|_| {
                let sampler = first.take();
                let shared = &shared;
                scope.spawn(move || decode_runs(sampler, shared))
            })
            .collect();
        // However consuming ends (a result, an error, or the caller's handler panicking), the
        // decoders then have nothing more to do: stop those still running and wake those
        // waiting for room in the reorder budget, or the scope would wait for them forever.
        let stop_decoders = StopOnDrop(&shared);
        let outcome = consume(&shared, receivers, delivery);
        drop(stop_decoders);
        let mut counters = Counters::default();
        for worker in workers {
            match worker.join() {
                Ok(worker_counters) => counters += worker_counters,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        outcome.map(|end| (end, counters))
    })
}

/// Stops every decoder when dropped.
struct StopOnDrop<'a>(&'a Shared<'a>);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.job.call.stop();
        self.0.reorder.wake_all();
    }
}

/// State the decoders and the consuming thread share.
struct Shared<'a> {
    job: &'a Job<'a>,
    layout: Layout,
    next_group: AtomicUsize,
    /// One sender per run, taken by the decoder that serves the run, so that a decoder that
    /// panics drops its sender and the consumer is not left waiting.
    senders: Vec<Mutex<Option<Sender<Message>>>>,
    reorder: Reorder,
}

/// Takes runs in order and hands their frames over; stops at the first run that fails or ends
/// before its targets.
fn consume<F: FnMut(Frame) -> Result<()>>(
    shared: &Shared<'_>,
    receivers: Vec<Receiver<Message>>,
    delivery: &mut Delivery<F>,
) -> Result<RunEnd> {
    for (group, receiver) in receivers.iter().enumerate() {
        shared.reorder.advance_head(group);
        loop {
            // A disconnected channel means its decoder panicked; `run` re-raises the panic.
            let Ok(message) = receiver.recv() else {
                return Ok(RunEnd::Stopped);
            };
            match message {
                Message::Frame(frame) => {
                    let bytes = frame_bytes(&frame);
                    let delivered = delivery.deliver(frame);
                    shared.reorder.release(bytes);
                    delivered?;
                }
                Message::Ended(RunEnd::Complete) => break,
                Message::Ended(end) => return Ok(end),
                Message::Failed(error) => return Err(error),
            }
        }
    }
    Ok(RunEnd::Complete)
}

/// One decoder's loop: take the next run, decode it, send its frames; until no runs are left,
/// the call is stopped, or a run fails or meets the end of the stream.
fn decode_runs<'call>(mut sampler: Option<Sampler<'call>>, shared: &Shared<'call>) -> Counters {
    let job = shared.job;
    let mut converter = RgbConverter::new();
    loop {
        let group = shared.next_group.fetch_add(1, Ordering::SeqCst);
        if group >= job.groups.len() || job.call.stopped() {
            break;
        }
        let Some(sender) = shared.senders[group]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            break;
        };
        let sampler = match sampler {
            Some(ref mut sampler) => sampler,
            None => match open_sampler(shared) {
                Ok(opened) => sampler.insert(opened),
                Err(error) => {
                    // The receiver is gone only once the consumer has stopped.
                    let _ = sender.send(Message::Failed(error));
                    break;
                }
            },
        };
        let targets = &job.plan.targets[job.groups[group].clone()];
        let result = sampler.run_targets(targets, &mut converter, &mut |frame| {
            if shared.reorder.acquire(group, frame_bytes(&frame), job.call) {
                // A send fails only once the consumer has stopped; the frame is not needed.
                let _ = sender.send(Message::Frame(frame));
            }
            Ok(())
        });
        let carry_on = matches!(result, Ok(RunEnd::Complete));
        let _ = sender.send(match result {
            Ok(end) => Message::Ended(end),
            Err(error) => Message::Failed(error),
        });
        if !carry_on {
            break;
        }
    }
    sampler
        .map(|sampler| sampler.counters())
        .unwrap_or_default()
}

/// Opens another copy of the video for one more decoder.
fn open_sampler<'call>(shared: &Shared<'call>) -> Result<Sampler<'call>> {
    let job = shared.job;
    let video = OpenedVideo::open(job.source, job.read, job.call.deadline)?;
    Sampler::new(video, job.plan, shared.layout.threads_per_decoder, job.call)
}

fn frame_bytes(frame: &Frame) -> u64 {
    frame.rgb.len() as u64
}

/// Bounds the bytes of frames sent but not yet handed to the caller. The decoder of the run the
/// caller is waiting for (the head) never waits, so the budget cannot deadlock.
struct Reorder {
    limit: u64,
    state: Mutex<ReorderState>,
    changed: Condvar,
}

struct ReorderState {
    head: usize,
    in_flight: u64,
}

impl Reorder {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            state: Mutex::new(ReorderState {
                head: 0,
                in_flight: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReorderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `bytes` of a frame of run `group` fit; false when the call was stopped meanwhile.
    fn acquire(&self, group: usize, bytes: u64, call: &CallShared) -> bool {
        let mut state = self.lock();
        while group != state.head
            && state.in_flight > 0
            && state.in_flight + bytes > self.limit
            && !call.stopped()
        {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if call.stopped() {
            return false;
        }
        state.in_flight += bytes;
        true
    }

    fn release(&self, bytes: u64) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(bytes);
        drop(state);
        self.changed.notify_all();
    }

    fn advance_head(&self, group: usize) {
        self.lock().head = group;
        self.changed.notify_all();
    }

    /// Wakes every waiting decoder; called after [`CallShared::stop`].
    fn wake_all(&self) {
        // Taking the lock orders this after any waiter's check of the stop flag.
        drop(self.lock());
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(layout(2, 1), None);
        assert_eq!(layout(1, 10), None);
        assert_eq!(
            layout(2, 10),
            Some(Layout {
                decoders: 2,
                threads_per_decoder: 1
            })
        );
        assert_eq!(
            layout(16, 4),
            Some(Layout {
                decoders: 4,
                threads_per_decoder: 4
            })
        );
        // Automatic: one decoder per core up to the cap, the rest as frame threads.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let automatic = layout(0, 100);
        if cores >= 2 {
            let decoders = cores.min(MAX_AUTO_DECODERS);
            assert_eq!(
                automatic,
                Some(Layout {
                    decoders,
                    threads_per_decoder: cores / decoders
                })
            );
        } else {
            assert_eq!(automatic, None);
        }
    }
}
