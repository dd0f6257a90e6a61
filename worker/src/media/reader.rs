//! A `Read + Seek` view of one object in an `object_store`, made of ranged reads and a small
//! block cache, so FFmpeg can demux a video of any length while only the bytes around the
//! sampled frames are fetched and only a few megabytes are held at once.
//!
//! FFmpeg pulls bytes from this reader through `ffmpeg_next`'s custom I/O context on the decode
//! thread. That thread is not an async runtime thread: each ranged read goes through the worker's
//! one async bridge ([`crate::bridge::wait`]) with a deadline, so a stalled store turns into a
//! typed, retryable error instead of a hang, and calling from an unexpected thread cannot panic.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::GetOptions;

use super::error::{MediaError, Result};
use super::source::VideoSource;

/// How the reader fetches and caches bytes.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Size of one cached block and the unit of every ranged request.
    pub block_size: u64,
    /// Blocks fetched in one request while reads stay sequential.
    pub readahead_blocks: u64,
    /// Blocks kept in the cache; memory use is bounded by `block_size * cache_blocks`.
    pub cache_blocks: usize,
    /// Time allowed for one ranged request (and for the initial size lookup).
    pub request_timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            block_size: 1 << 20,
            readahead_blocks: 4,
            cache_blocks: 16,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What the reader did, shared with the caller because FFmpeg owns the reader itself.
#[derive(Debug, Default)]
pub struct ReaderShared {
    /// The first store error, kept so that FFmpeg's generic I/O error can be reported precisely.
    error: Mutex<Option<MediaError>>,
    /// Set when the demuxer asked for data past the end of the object: its index points at bytes
    /// that are not there, the signature of a truncated upload.
    pub(crate) past_end: AtomicBool,
    /// Ranged requests made.
    pub(crate) requests: AtomicU64,
    /// Bytes fetched from the store.
    pub(crate) bytes_fetched: AtomicU64,
    /// Nanoseconds spent waiting on ranged requests.
    pub(crate) fetch_nanos: AtomicU64,
}

impl ReaderShared {
    /// Takes the store error that made a read fail, if any.
    pub(crate) fn take_error(&self) -> Option<MediaError> {
        self.error
            .lock()
            .map(|mut slot| slot.take())
            .unwrap_or(None)
    }

    fn record_error(&self, error: MediaError) {
        if let Ok(mut slot) = self.error.lock()
            && slot.is_none()
        {
            *slot = Some(error);
        }
    }
}

/// Runs a store request from the decode thread through the [bridge](crate::bridge), with the
/// reader's deadline.
fn run_with_timeout<T: Send + 'static>(
    timeout: Duration,
    future: impl Future<Output = std::result::Result<T, object_store::Error>> + Send + 'static,
) -> std::result::Result<T, WaitError> {
    match crate::bridge::wait(Some(timeout), future) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(WaitError::Store(error)),
        Err(crate::bridge::WaitError::Timeout(_)) => Err(WaitError::Timeout),
        Err(other) => Err(WaitError::Store(object_store::Error::Generic {
            store: "runtime",
            source: other.to_string().into(),
        })),
    }
}

enum WaitError {
    Store(object_store::Error),
    Timeout,
}

/// Ranged, cached reader over one object. Created by [`ObjectReader::open`].
pub struct ObjectReader {
    source: VideoSource,
    options: ReadOptions,
    size: u64,
    position: u64,
    /// Most recently used block last.
    cache: VecDeque<(u64, Bytes)>,
    last_fetched_block: Option<u64>,
    shared: Arc<ReaderShared>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("uri", &self.source.uri)
            .field("size", &self.size)
            .field("position", &self.position)
            .finish()
    }
}

impl ObjectReader {
    /// Looks up the object's size and returns a reader positioned at its start. A zero-byte object
    /// is refused here with [`MediaError::Empty`].
    pub fn open(source: &VideoSource, options: &ReadOptions) -> Result<Self> {
        let store = Arc::clone(&source.store);
        let path = source.path.clone();
        let meta = run_with_timeout(options.request_timeout, async move {
            Ok(store
                .get_opts(&path, GetOptions::new().with_head(true))
                .await?
                .meta)
        })
        .map_err(|error| match error {
            WaitError::Store(error) => MediaError::from_store(&source.uri, error),
            WaitError::Timeout => MediaError::ReadTimeout {
                uri: source.uri.clone(),
                after: options.request_timeout,
            },
        })?;
        if meta.size == 0 {
            return Err(MediaError::Empty {
                uri: source.uri.clone(),
            });
        }
        let options = ReadOptions {
            block_size: options.block_size.max(4096),
            readahead_blocks: options.readahead_blocks.max(1),
            cache_blocks: options
                .cache_blocks
                .max(options.readahead_blocks as usize)
                .max(1),
            request_timeout: options.request_timeout,
        };
        Ok(Self {
            source: source.clone(),
            options,
            size: meta.size,
            position: 0,
            cache: VecDeque::new(),
            last_fetched_block: None,
            shared: Arc::new(ReaderShared::default()),
        })
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The counters and error slot that stay readable after FFmpeg takes the reader.
    pub fn shared(&self) -> Arc<ReaderShared> {
        Arc::clone(&self.shared)
    }

    fn cached_block(&mut self, block: u64) -> Option<Bytes> {
        let index = self.cache.iter().position(|(cached, _)| *cached == block)?;
        let entry = self.cache.remove(index)?;
        let bytes = entry.1.clone();
        self.cache.push_back(entry);
        Some(bytes)
    }

    /// Fetches `block` (and, while reads are sequential, the blocks after it) in one request.
    fn fetch(&mut self, block: u64) -> std::io::Result<Bytes> {
        let block_size = self.options.block_size;
        let sequential = self
            .last_fetched_block
            .is_some_and(|last| last + 1 == block);
        let blocks = if sequential {
            self.options.readahead_blocks
        } else {
            1
        };
        let start = block * block_size;
        let end = (start + blocks * block_size).min(self.size);
        let range: Range<u64> = start..end;
        let store = Arc::clone(&self.source.store);
        let path = self.source.path.clone();
        let request_range = range.clone();
        let requested = std::time::Instant::now();
        let fetched = run_with_timeout(self.options.request_timeout, async move {
            let options = GetOptions::new().with_range(Some(request_range));
            store.get_opts(&path, options).await?.bytes().await
        });
        self.shared
            .fetch_nanos
            .fetch_add(requested.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(error) => {
                let error = match error {
                    WaitError::Store(error) => MediaError::from_store(&self.source.uri, error),
                    WaitError::Timeout => MediaError::ReadTimeout {
                        uri: self.source.uri.clone(),
                        after: self.options.request_timeout,
                    },
                };
                let message = error.to_string();
                self.shared.record_error(error);
                return Err(std::io::Error::other(message));
            }
        };
        if bytes.len() as u64 != end - start {
            // The object changed size under us (or the store misbehaves): the read is unusable.
            let message = format!(
                "ranged read of {}..{} returned {} bytes",
                range.start,
                range.end,
                bytes.len()
            );
            self.shared.record_error(MediaError::Corrupt {
                uri: self.source.uri.clone(),
                reason: message.clone(),
            });
            return Err(std::io::Error::other(message));
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut first = None;
        for (offset, index) in (start..end).step_by(block_size as usize).zip(block..) {
            let from = (offset - start) as usize;
            let to = ((offset + block_size).min(end) - start) as usize;
            let chunk = bytes.slice(from..to);
            if first.is_none() {
                first = Some(chunk.clone());
            }
            self.cache.retain(|(cached, _)| *cached != index);
            self.cache.push_back((index, chunk));
            self.last_fetched_block = Some(index);
        }
        while self.cache.len() > self.options.cache_blocks {
            self.cache.pop_front();
        }
        first.ok_or_else(|| std::io::Error::other("empty ranged read"))
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if buffer.is_empty() || self.position >= self.size {
            return Ok(0);
        }
        let block_size = self.options.block_size;
        let block = self.position / block_size;
        let bytes = match self.cached_block(block) {
            Some(bytes) => bytes,
            None => self.fetch(block)?,
        };
        let offset = (self.position - block * block_size) as usize;
        let available = bytes.len().saturating_sub(offset);
        let count = available.min(buffer.len());
        buffer[..count].copy_from_slice(&bytes[offset..offset + count]);
        self.position += count as u64;
        Ok(count)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, target: SeekFrom) -> std::io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let Some(position) = position else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the object",
            ));
        };
        if position > self.size {
            self.shared.past_end.store(true, Ordering::Relaxed);
        }
        self.position = position;
        Ok(position)
    }
}

/// Measures how long a call may still run; shared by probing and sampling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    started: Instant,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            budget,
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.started.elapsed() > self.budget
    }

    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    fn source_with(bytes: Vec<u8>) -> VideoSource {
        let store = Arc::new(InMemory::new());
        let path = Path::from("video.bin");
        let (put_store, put_path) = (Arc::clone(&store), path.clone());
        run_with_timeout(Duration::from_secs(5), async move {
            put_store
                .put_opts(&put_path, bytes.into(), Default::default())
                .await
        })
        .map_err(|_| "put failed")
        .unwrap();
        VideoSource::new(store, path, "memory:///video.bin")
    }

    #[test]
    fn reads_and_seeks_match_the_object_bytes() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let options = ReadOptions {
            block_size: 4096,
            readahead_blocks: 3,
            cache_blocks: 4,
            ..Default::default()
        };
        let mut reader = ObjectReader::open(&source_with(bytes.clone()), &options).unwrap();
        assert_eq!(reader.size(), bytes.len() as u64);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
        for start in [99_999u64, 0, 50_000, 4095, 4096, 12_345] {
            reader.seek(SeekFrom::Start(start)).unwrap();
            let mut chunk = vec![0u8; 9000];
            let count = reader.read(&mut chunk).unwrap();
            assert!(count > 0);
            assert_eq!(
                &chunk[..count],
                &bytes[start as usize..start as usize + count]
            );
        }
        assert_eq!(reader.seek(SeekFrom::End(-10)).unwrap(), 99_990);
        assert!(!reader.shared().past_end.load(Ordering::Relaxed));
        reader.seek(SeekFrom::Start(200_000)).unwrap();
        assert!(reader.shared().past_end.load(Ordering::Relaxed));
        assert_eq!(reader.read(&mut [0u8; 16]).unwrap(), 0);
        assert!(reader.cache.len() <= 4);
    }

    #[test]
    fn empty_and_missing_objects_are_typed_errors() {
        let empty = ObjectReader::open(&source_with(Vec::new()), &ReadOptions::default());
        assert!(matches!(empty, Err(MediaError::Empty { .. })));
        let mut missing = source_with(vec![1, 2, 3]);
        missing.path = Path::from("other.bin");
        let missing = ObjectReader::open(&missing, &ReadOptions::default());
        assert!(matches!(missing, Err(MediaError::NotFound { .. })));
    }
}
