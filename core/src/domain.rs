//! The domain types the coordinator and the worker share: passes, jobs, leases, pages. gRPC
//! messages are converted into these at the edge ([`wire`](crate::wire)), so nothing deeper
//! depends on generated code.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};
use crate::policy::ModerationPolicy;

/// Default target frame rate, as in Open-o3 Video's V-STAR evaluation.
pub const DEFAULT_FPS: f64 = 1.0;
/// Default cap on frames kept per segment.
pub const DEFAULT_MAX_FRAMES: u32 = 16;
/// Default segment length in seconds.
pub const DEFAULT_SEGMENT_SECS: f64 = 600.0;
/// Default attempts per job before it is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest accepted frame rate.
pub const MAX_FPS: f64 = 30.0;
/// Largest accepted frame cap per segment.
pub const MAX_FRAMES_LIMIT: u32 = 256;
/// Largest accepted attempts per job.
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;

/// What a pass asks of every video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    /// Index with one prompt; `None` selects the worker's default indexing prompt.
    Index {
        /// The prompt.
        prompt: Option<String>,
    },
    /// Ask these questions of every segment.
    Questions {
        /// At least one question.
        questions: Vec<String>,
    },
    /// Run a moderation policy (YAML text as the user wrote it).
    Moderation {
        /// The policy document.
        policy_yaml: String,
    },
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec::Index { prompt: None }
    }
}

/// How frames are sampled from each video.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Target frames per second, in (0, 30].
    pub fps: f64,
    /// Frames kept per segment, in 1..=256.
    pub max_frames: u32,
    /// Segment length in seconds; longer videos are split.
    pub segment_secs: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            fps: DEFAULT_FPS,
            max_frames: DEFAULT_MAX_FRAMES,
            segment_secs: DEFAULT_SEGMENT_SECS,
        }
    }
}

impl Sampling {
    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        if !self.fps.is_finite() || self.fps <= 0.0 || self.fps > MAX_FPS {
            return Err(Error::invalid(format!(
                "fps must be in (0, {MAX_FPS}], got {}",
                self.fps
            )));
        }
        if self.max_frames == 0 || self.max_frames > MAX_FRAMES_LIMIT {
            return Err(Error::invalid(format!(
                "max frames must be in 1..={MAX_FRAMES_LIMIT}, got {}",
                self.max_frames
            )));
        }
        if !self.segment_secs.is_finite() || self.segment_secs < 1.0 || self.segment_secs > 86_400.0
        {
            return Err(Error::invalid(format!(
                "segment length must be in [1, 86400] seconds, got {}",
                self.segment_secs
            )));
        }
        Ok(())
    }
}

/// Everything a user says when submitting a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassSpec {
    /// Source: an object-store prefix, or a manifest object listing video URLs.
    pub source: String,
    /// Destination URL prefix for the evidence index.
    pub destination: String,
    /// What to ask.
    pub task: TaskSpec,
    /// How to sample frames.
    pub sampling: Sampling,
    /// Submitting twice with the same key returns the same pass.
    pub idempotency_key: Option<String>,
    /// Attempts per job before it is dead.
    pub max_attempts: u32,
    /// Whether workers verify every claim (crop its box, ask the model about it, record the
    /// confidence); `None` takes the default: on for moderation passes, off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

/// Object-store URL schemes the coordinator and workers can read.
pub const SUPPORTED_SCHEMES: &[&str] =
    &["s3", "s3a", "gs", "az", "abfs", "abfss", "file", "memory"];

/// Parses and checks an object-store URL, naming the problem when it is not one.
pub fn parse_store_url(what: &str, raw: &str) -> Result<Url> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid(format!("{what} url is empty")));
    }
    let url = Url::parse(trimmed)
        .map_err(|error| Error::invalid(format!("{what} url {trimmed:?} is not a url: {error}")))?;
    if !SUPPORTED_SCHEMES.contains(&url.scheme()) {
        return Err(Error::invalid(format!(
            "{what} url {trimmed:?} has unsupported scheme {:?} (supported: {})",
            url.scheme(),
            SUPPORTED_SCHEMES.join(", ")
        )));
    }
    if url.scheme() != "file" && url.scheme() != "memory" && url.host_str().unwrap_or("").is_empty()
    {
        return Err(Error::invalid(format!(
            "{what} url {trimmed:?} names no bucket or container"
        )));
    }
    Ok(url)
}

impl PassSpec {
    /// Whether workers verify claims: as asked, else on for moderation passes only.
    pub fn verifies(&self) -> bool {
        self.verify
            .unwrap_or(matches!(self.task, TaskSpec::Moderation { .. }))
    }

    /// Checks the whole spec once, at submission (the coordinator) and before sending
    /// (`vidx submit`): the same errors either way.
    pub fn validate(&self) -> Result<()> {
        parse_store_url("source", &self.source)?;
        parse_store_url("destination", &self.destination)?;
        self.sampling.validate()?;
        match &self.task {
            TaskSpec::Index {
                prompt: Some(prompt),
            } if prompt.len() > 16_384 => {
                return Err(Error::invalid("prompt is longer than 16384 bytes"));
            }
            TaskSpec::Questions { questions } if questions.is_empty() => {
                return Err(Error::invalid("questions task has no questions"));
            }
            TaskSpec::Questions { questions } if questions.iter().any(|q| q.trim().is_empty()) => {
                return Err(Error::invalid("questions task has an empty question"));
            }
            TaskSpec::Moderation { policy_yaml } if policy_yaml.trim().is_empty() => {
                return Err(Error::invalid("moderation policy is empty"));
            }
            TaskSpec::Moderation { policy_yaml } => {
                let policy = ModerationPolicy::from_yaml(policy_yaml)
                    .map_err(|error| Error::invalid(format!("moderation policy: {error}")))?;
                if self.verify == Some(false)
                    && let Some((position, category)) = policy.first_min_confidence()
                {
                    return Err(Error::invalid(format!(
                        "moderation policy: categories[{position}].min_confidence ({:?}) needs claim verification, which the pass turns off",
                        category.name
                    )));
                }
            }
            _ => {}
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(Error::invalid(format!(
                "max attempts must be in 1..={MAX_ATTEMPTS_LIMIT}, got {}",
                self.max_attempts
            )));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(Error::invalid("idempotency key must be 1..=256 bytes"));
        }
        Ok(())
    }
}

/// The states a job moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be leased.
    Pending,
    /// Held by a worker under a lease.
    Leased,
    /// Finished successfully.
    Done,
    /// Failed, waiting for its retry backoff.
    Failed,
    /// Failed permanently.
    Dead,
    /// Cancelled with its pass.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Leased,
        JobState::Done,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The name used in storage, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Leased => "leased",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    /// Done, dead and cancelled jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Done | JobState::Dead | JobState::Cancelled)
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        JobState::parse(name.trim()).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|state| state.as_str()).collect();
            format!("unknown job state {name:?} (one of: {})", names.join(", "))
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle of a pass as stored; `Finished` is derived from the job counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassState {
    /// Listing the source and creating jobs.
    Planning,
    /// Jobs are being processed.
    Running,
    /// Every job is done, dead or cancelled.
    Finished,
    /// Cancelled by a user.
    Cancelled,
    /// Planning failed.
    Failed,
}

impl PassState {
    /// The name used in storage and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PassState::Planning => "planning",
            PassState::Running => "running",
            PassState::Finished => "finished",
            PassState::Cancelled => "cancelled",
            PassState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<PassState> {
        [
            PassState::Planning,
            PassState::Running,
            PassState::Finished,
            PassState::Cancelled,
            PassState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

impl fmt::Display for PassState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to create: one video, or one segment of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// The video's URL.
    pub video_url: String,
    /// Segment start in seconds.
    pub start_s: f64,
    /// Segment end in seconds; 0 means to the end.
    pub end_s: f64,
    /// Size in bytes as listed.
    pub size_bytes: u64,
    /// ETag or version as listed.
    pub etag: Option<String>,
    /// True for a whole-video job whose duration is not known yet: the worker probes it and may
    /// split it into segment jobs by completing it with segments.
    pub probe: bool,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id.
    pub job_id: String,
    /// Its pass.
    pub pass_id: String,
    /// What to process.
    pub spec: NewJob,
    /// Where it is in its lifecycle.
    pub state: JobState,
    /// Attempts started (leases granted) so far.
    pub attempt: u32,
    /// The last failure reason.
    pub last_error: Option<String>,
    /// Where a done job's result was written.
    pub result_url: Option<String>,
    /// Times its lease expired with no word from the worker holding it (the worker presumed
    /// crashed); at the coordinator's max-crashes the job is dead.
    #[serde(default)]
    pub crashes: u32,
}

/// How a job failed, as its worker saw it. The worker only reports the kind; the job store
/// decides, in one place, what becomes of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Retrying could help: retried with backoff while attempts last.
    Retryable,
    /// Retrying cannot help: the job is dead at once.
    Permanent,
    /// The pipeline panicked: retried once; a second panic makes the job dead with its message.
    Panic,
}

impl FailureKind {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::Panic => "panic",
        }
    }

    /// The kind a plain retryable flag stands for (clients that predate the kind).
    pub fn from_retryable(retryable: bool) -> Self {
        if retryable {
            FailureKind::Retryable
        } else {
            FailureKind::Permanent
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job handed to a worker, with everything the worker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    /// The job.
    pub job: Job,
    /// The fencing token: later calls about this job must carry it.
    pub lease_id: String,
    /// When the lease runs out, ms since the epoch.
    pub deadline_ms: i64,
    /// The pass's spec (task, sampling, destination).
    pub pass: PassSpec,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeat {
    /// The new deadline, ms since the epoch.
    pub deadline_ms: i64,
    /// The pass was cancelled: stop work.
    pub cancelled: bool,
}

/// A time range of a video, reported by a worker that split a probe job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start in seconds.
    pub start_s: f64,
    /// End in seconds.
    pub end_s: f64,
}

/// What a completion carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// Where the result was written.
    pub result_url: Option<String>,
    /// For a probe job that the worker split: the segments to create jobs for.
    pub segments: Vec<Segment>,
    /// The video was indexed already (its document exists): the job read no video and is done
    /// as skipped; the pass counts it in [`PassStatus::skipped`].
    pub skipped: bool,
}

/// The outcome of a completion, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completed {
    /// How long the finished lease was held, in milliseconds.
    pub lease_held_ms: i64,
    /// How many segment jobs were created from a split.
    pub segments_created: u32,
}

/// What a failure report did to the job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailOutcome {
    /// `Failed` (a retry is scheduled) or `Dead`, or `Cancelled` when its pass was cancelled.
    pub state: JobState,
    /// When the retry becomes due, ms since the epoch; 0 unless `Failed`.
    pub retry_at_ms: i64,
}

/// Job counts per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobCounts {
    /// Pending.
    pub pending: u64,
    /// Leased.
    pub leased: u64,
    /// Done.
    pub done: u64,
    /// Failed, waiting to retry.
    pub failed: u64,
    /// Dead.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl JobCounts {
    /// All jobs.
    pub fn total(&self) -> u64 {
        self.pending + self.leased + self.done + self.failed + self.dead + self.cancelled
    }

    /// Jobs that will not change again.
    pub fn finished(&self) -> u64 {
        self.done + self.dead + self.cancelled
    }

    /// The count for one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Leased => self.leased,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
        }
    }

    /// A mutable count for one state.
    pub fn get_mut(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Pending => &mut self.pending,
            JobState::Leased => &mut self.leased,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        }
    }
}

/// A recent failure, shown in pass status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The job.
    pub job_id: String,
    /// Its video.
    pub video_url: String,
    /// The reason.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// A pass and its progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassStatus {
    /// The pass id.
    pub pass_id: String,
    /// What was submitted.
    pub spec: PassSpec,
    /// Where it is; `Finished` when running and every job is terminal.
    pub state: PassState,
    /// Counts per state.
    pub counts: JobCounts,
    /// Videos found by planning so far.
    pub videos: u64,
    /// Jobs finished per second over the recent window.
    pub jobs_per_second: f64,
    /// Seconds until done at that rate; `None` when unknown.
    pub eta_seconds: Option<f64>,
    /// Newest first.
    pub recent_errors: Vec<ErrorReport>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Why planning failed.
    pub planning_error: Option<String>,
    /// Times a job of the pass was handed back unfinished (released).
    pub released: u64,
    /// Done jobs that found their video's document written already (skipped; counted in
    /// `counts.done` too): by an earlier pass, or by an earlier attempt of this one whose report
    /// was lost, so it can be above the manifest's count of skipped videos.
    pub skipped: u64,
}

/// A page of results and the cursor to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Opaque cursor for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Walks a paged listing until its cursor ends or `limit` items are collected: `fetch` gets the
/// cursor and how many items are still wanted (at most 1,000 a page). A page may be empty and
/// still carry a cursor (a filtered listing scans a bounded stretch per call), so only the
/// cursor ends the walk.
pub async fn collect_pages<T, E, F, Fut>(limit: usize, mut fetch: F) -> Result<Vec<T>, E>
where
    F: FnMut(Option<String>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, E>>,
{
    let mut items = Vec::new();
    let mut token = None;
    while items.len() < limit {
        let wanted = (limit - items.len()).min(1_000) as u32;
        let page = fetch(token, wanted).await?;
        items.extend(page.items);
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    items.truncate(limit);
    Ok(items)
}

/// The newly created pass, or the existing one for a repeated idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The pass id.
    pub pass_id: String,
    /// True when the idempotency key matched an existing pass.
    pub existing: bool,
}

/// The answer to a claim on a pass's finalization (writing its manifest, table parts and
/// search index): only the claim's holder writes, so two finalizers never write one
/// destination at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizeClaim {
    /// The caller holds the claim and finalizes now.
    Claimed,
    /// Another holder has an unexpired claim.
    Busy,
    /// The pass was finalized already.
    Done,
}

/// A new pass id, `pass-` and a UUIDv7: unique within and across processes, and sorting by
/// creation time (see [`is_time_ordered_pass_id`]).
pub fn new_pass_id() -> String {
    format!("pass-{}", uuid::Uuid::now_v7().simple())
}

/// Whether `pass_id` is one [`new_pass_id`] makes (`pass-` and 32 lowercase hex digits), so that
/// comparing two such ids compares their creation times.
pub fn is_time_ordered_pass_id(pass_id: &str) -> bool {
    pass_id.strip_prefix("pass-").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_pass_ids_sort_by_creation_time() {
        let first = new_pass_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_pass_id();
        assert!(is_time_ordered_pass_id(&first) && is_time_ordered_pass_id(&second));
        assert!(first < second, "{first} then {second}");
        for other in [
            "p",
            "pass-2",
            "pass-019AD0C0000070008000000000000001",
            "run-x",
        ] {
            assert!(!is_time_ordered_pass_id(other), "{other}");
        }
    }

    fn spec() -> PassSpec {
        PassSpec {
            source: "s3://bucket/videos/".into(),
            destination: "file:///tmp/out/".into(),
            task: TaskSpec::default(),
            sampling: Sampling::default(),
            idempotency_key: None,
            max_attempts: 3,
            verify: None,
        }
    }

    #[test]
    fn policies_are_checked_at_submission() {
        let moderation = |policy_yaml: &str, verify: Option<bool>| PassSpec {
            task: TaskSpec::Moderation {
                policy_yaml: policy_yaml.into(),
            },
            verify,
            ..spec()
        };
        let good = "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: low, min_confidence: 0.5}\n";
        moderation(good, None).validate().unwrap();
        assert!(moderation(good, None).verifies());
        assert!(!spec().verifies());
        let error = moderation(good, Some(false)).validate().unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)));
        assert!(
            error
                .to_string()
                .contains("categories[0].min_confidence (\"a\") needs claim verification"),
            "{error}"
        );
        let bad =
            "categories:\n  - {name: a, question: q, flagged_answer: 'yes', severity: loud}\n";
        let error = moderation(bad, None).validate().unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)));
        assert!(error.to_string().contains("moderation policy: "), "{error}");
        assert!(error.to_string().contains("severity"), "{error}");
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn bad_urls_are_named() {
        for (source, needle) in [
            ("", "empty"),
            ("not a url", "not a url"),
            ("ftp://host/x", "unsupported scheme"),
            ("s3:///nobucket", "no bucket"),
        ] {
            let error = PassSpec {
                source: source.into(),
                ..spec()
            }
            .validate()
            .unwrap_err();
            assert!(error.to_string().contains(needle), "{source:?}: {error}");
            assert!(matches!(error, Error::InvalidArgument(_)));
        }
    }

    #[test]
    fn sampling_bounds() {
        for sampling in [
            Sampling {
                fps: 0.0,
                ..Sampling::default()
            },
            Sampling {
                fps: -1.0,
                ..Sampling::default()
            },
            Sampling {
                fps: f64::NAN,
                ..Sampling::default()
            },
            Sampling {
                max_frames: 0,
                ..Sampling::default()
            },
            Sampling {
                max_frames: 100_000,
                ..Sampling::default()
            },
            Sampling {
                segment_secs: 0.0,
                ..Sampling::default()
            },
        ] {
            assert!(
                PassSpec { sampling, ..spec() }.validate().is_err(),
                "{sampling:?}"
            );
        }
    }

    #[test]
    fn job_state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("bogus"), None);
    }
}
