//! The Redis job store: every state change is one Lua script (see `lua/`), so transitions are
//! atomic, and any number of coordinator replicas can share one Redis. Nothing lives in process
//! memory but a cache of pass specs, which never change: a restarted coordinator picks up exactly
//! where the last one stopped.
//!
//! Sized for passes of tens of millions of videos (README, "Sizing"): a pass's spec is stored
//! once, a job only what differs (see [`codec`] for the record layout), and no call's cost grows
//! with the number of jobs in a pass. Layout under the key prefix `P` (default `vidx`):
//! - `P:pass:ID` hash: spec, state, created, counts `n:STATE`, planning cursor, `seq` (last job
//!   number), `next` (first never-leased job number), `order`, the result template;
//!   `P:pass:ID:s:STATE` sorted sets of job numbers in the rare states (leased, failed, dead);
//!   `P:pass:ID:err` last error per job number; `P:pass:ID:errors` recent failures;
//!   `P:pass:ID:rate` completions per 10 s bucket; `P:pass:ID:planner` the planning lock;
//!   `P:pass:ID:seg` the segments counted per video and who assembles it; `P:pass:ID:final`
//!   `done` once finalized; `P:pass:ID:claim` the finalization claim's holder.
//! - `P:j:ID:B` job records, 64 per hash; `P:d:ID:B` the de-duplication index while planning.
//! - Queues: `P:runnable` (passes with never-leased jobs, oldest first), `P:requeue` (jobs sent
//!   back by a reap or a due retry), `P:delayed` (retry time), `P:leases` (deadline) sorted sets,
//!   and `P:lease` (lease id, deadline, start, duration per leased job).
//! - `P:passes` (all pass ids, time-ordered ids at score 0), `P:active`, `P:idem:KEY`.

mod codec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, ScriptInvocation};

use self::codec::{
    DEDUP_BUCKETS, JOBS_PER_BUCKET, decode_result, decode_spec, encode_result, encode_version,
    encode_where, parse_job_id, split_record, split_rest, url_base,
};
use super::{
    Created, FinalizeClaim, JobStore, LeaseRequest, PlanningPass, RetryPolicy, effective_state,
    page_token, segment_jobs, throughput, validate_segment_count, validate_segments,
};
use crate::error::{Error, Result};
use crate::store::memory::jobs_scope;
use vidx_core::domain::{
    Completed, Completion, ErrorReport, FailOutcome, FailureKind, Heartbeat, Job, JobCounts,
    JobState, LeasedJob, NewJob, Page, PassSpec, PassState, PassStatus, new_pass_id,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Records a filtered job listing reads per call at most; a page may come back short.
const LIST_SCAN_BUDGET: u32 = 4_096;
/// Keys removed per `UNLINK` when dropping an index or an expired pass.
const UNLINK_CHUNK: u64 = 2_048;
/// Pass specs cached per process before the cache starts over.
const PASS_CACHE_LIMIT: usize = 4_096;

struct Scripts {
    create_pass: Script,
    add_jobs: Script,
    finish_planning: Script,
    claim_planning: Script,
    cancel: Script,
    lease: Script,
    heartbeat: Script,
    complete: Script,
    fail: Script,
    release: Script,
    reap: Script,
    list: Script,
    count_segment: Script,
    claim_finalization: Script,
    finish_finalization: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            create_pass: script(include_str!("lua/create_pass.lua")),
            add_jobs: script(include_str!("lua/add_jobs.lua")),
            finish_planning: script(include_str!("lua/finish_planning.lua")),
            claim_planning: script(include_str!("lua/claim_planning.lua")),
            cancel: script(include_str!("lua/cancel.lua")),
            lease: script(include_str!("lua/lease.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            complete: script(include_str!("lua/complete.lua")),
            fail: script(include_str!("lua/fail.lua")),
            release: script(include_str!("lua/release.lua")),
            reap: script(include_str!("lua/reap.lua")),
            list: script(include_str!("lua/list.lua")),
            count_segment: script(include_str!("lua/count_segment.lua")),
            claim_finalization: script(include_str!("lua/claim_finalization.lua")),
            finish_finalization: script(include_str!("lua/finish_finalization.lua")),
        }
    }
}

/// What never changes about a pass once written: read once per process.
struct PassInfo {
    spec: PassSpec,
    /// The prefix its videos' URLs are stored relative to.
    base: String,
    /// Its first result, which later results are stored against; `None` until one is written.
    result_template: Option<String>,
}

/// Job state in Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    retry: RetryPolicy,
    scripts: Scripts,
    passes: Mutex<HashMap<String, Arc<PassInfo>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A job's fields as one read returns them, its record's head already split.
struct StoredJob<'a> {
    job_id: String,
    pass_id: &'a str,
    /// The state to report: the record's, or cancelled for a queued job of a stopped pass.
    state: JobState,
    attempt: u32,
    crashes: u32,
    where_part: &'a str,
    version: Option<&'a str>,
    result: Option<&'a str>,
    last_error: Option<&'a str>,
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://host:port/db`). The connection reconnects by itself.
    pub async fn connect(url: &str, prefix: &str, retry: RetryPolicy) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|error| {
            Error::invalid(format!("redis url is not valid: {}", redact_error(&error)))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)))
            .set_number_of_retries(3);
        let mut connection = ConnectionManager::new_with_config(client, config).await?;
        warn_on_small_listpacks(&mut connection).await;
        Ok(RedisStore {
            connection,
            prefix: prefix.to_owned(),
            retry,
            scripts: Scripts::load(),
            passes: Mutex::new(HashMap::new()),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Makes a read again, once, when it found the connection dropped (Redis restarted, or
    /// something in between cut it). The manager replaces a dropped connection when a command
    /// finds it so, but that command still fails; the second try goes out on the new connection,
    /// and fails with its own error if Redis is still down. Only reads come through here: a
    /// script whose reply was lost may have run, so writes are left to their callers, which try
    /// again under their leases' fencing.
    async fn read<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match read().await {
            Err(Error::Redis(error)) if error.is_connection_dropped() => {
                tracing::warn!(
                    error = %redact_error(&error),
                    "redis connection dropped; reading again on a new one"
                );
                read().await
            }
            other => other,
        }
    }

    fn pass_key(&self, pass_id: &str) -> String {
        format!("{}:pass:{pass_id}", self.prefix)
    }

    fn bucket_key(&self, pass_id: &str, n: u64) -> String {
        format!("{}:j:{pass_id}:{}", self.prefix, n / JOBS_PER_BUCKET)
    }

    /// A script call with the key prefix as its first argument.
    fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix);
        invocation
    }

    async fn call(&self, invocation: ScriptInvocation<'_>) -> Result<Vec<String>> {
        Ok(invocation.invoke_async(&mut self.conn()).await?)
    }

    async fn run(&self, script: &Script, args: &[&str]) -> Result<Vec<String>> {
        let mut invocation = self.invoke(script);
        for arg in args {
            invocation.arg(*arg);
        }
        self.call(invocation).await
    }

    /// The pass's unchanging facts, from the cache, or from Redis when absent or when a result
    /// template is wanted and not known yet.
    async fn pass_info(&self, pass_id: &str, want_template: bool) -> Result<Arc<PassInfo>> {
        if let Some(info) = self.passes.lock().expect("pass cache").get(pass_id)
            && (!want_template || info.result_template.is_some())
        {
            return Ok(Arc::clone(info));
        }
        let (spec, template): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.pass_key(pass_id))
            .arg(&["spec", "result_template"])
            .query_async(&mut self.conn())
            .await?;
        let Some(spec) = spec else {
            return Err(Error::NotFound(format!("pass {pass_id}")));
        };
        let spec = decode_pass_spec(Some(&spec))?;
        let info = Arc::new(PassInfo {
            base: url_base(&spec.source).to_owned(),
            spec,
            result_template: template,
        });
        let mut cache = self.passes.lock().expect("pass cache");
        if cache.len() >= PASS_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(pass_id.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    /// Builds a job from its stored fields.
    async fn decode_job(&self, stored: StoredJob<'_>) -> Result<Job> {
        let want_template = stored.result.is_some_and(|result| result.starts_with('~'));
        let info = self.pass_info(stored.pass_id, want_template).await?;
        let result_url = stored
            .result
            .map(|result| decode_result(info.result_template.as_deref(), result))
            .transpose()?;
        Ok(Job {
            job_id: stored.job_id,
            pass_id: stored.pass_id.to_owned(),
            spec: decode_spec(&info.base, stored.where_part, stored.version)?,
            state: stored.state,
            attempt: stored.attempt,
            last_error: stored.last_error.map(str::to_owned),
            result_url,
            crashes: stored.crashes,
        })
    }

    /// Removes keys `{prefix}{i}` for `i` in `0..count`, in chunks: dropping an index or an
    /// expired pass never blocks Redis for long (`UNLINK` frees memory in the background).
    async fn unlink_numbered(&self, prefix: &str, count: u64) -> Result<()> {
        const CHUNKS_PER_ROUND_TRIP: u64 = 16;
        let mut conn = self.conn();
        let mut start = 0;
        while start < count {
            // Several chunks per round trip, each its own command so none holds Redis long.
            let mut pipe = redis::pipe();
            for _ in 0..CHUNKS_PER_ROUND_TRIP {
                if start >= count {
                    break;
                }
                let end = (start + UNLINK_CHUNK).min(count);
                let keys: Vec<String> = (start..end).map(|i| format!("{prefix}{i}")).collect();
                pipe.cmd("UNLINK").arg(keys).ignore();
                start = end;
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Drops a pass's de-duplication index once no job can be added to it any more.
    async fn drop_dedup_index(&self, pass_id: &str) -> Result<()> {
        self.unlink_numbered(
            &format!("{}:d:{pass_id}:", self.prefix),
            u64::from(DEDUP_BUCKETS),
        )
        .await
    }

    async fn status_of(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus> {
        let key = self.pass_key(pass_id);
        let (fields, errors, rate): (
            HashMap<String, String>,
            Vec<String>,
            HashMap<String, String>,
        ) = redis::pipe()
            .hgetall(&key)
            .lrange(format!("{key}:errors"), 0, 19)
            .hgetall(format!("{key}:rate"))
            .query_async(&mut self.conn())
            .await?;
        if fields.is_empty() {
            return Err(Error::NotFound(format!("pass {pass_id}")));
        }
        let spec = decode_pass_spec(fields.get("spec"))?;
        let stored = fields
            .get("state")
            .and_then(|state| PassState::parse(state))
            .ok_or_else(|| Error::Corrupt(format!("pass {pass_id} has no valid state")))?;
        let mut counts = JobCounts::default();
        for state in JobState::ALL {
            *counts.get_mut(state) = field_i64(&fields, &format!("n:{state}")).max(0) as u64;
        }
        let created_at_ms = field_i64(&fields, "created");
        let buckets: Vec<(i64, u64)> = rate
            .iter()
            .filter_map(|(bucket, n)| Some((bucket.parse().ok()?, n.parse().ok()?)))
            .collect();
        let remaining = counts.total() - counts.finished();
        let (jobs_per_second, eta_seconds) = throughput(&buckets, created_at_ms, remaining, now_ms);
        let recent_errors = self.error_reports(url_base(&spec.source), &errors).await?;
        Ok(PassStatus {
            pass_id: pass_id.to_owned(),
            spec,
            state: effective_state(stored, &counts),
            counts,
            videos: field_i64(&fields, "videos").max(0) as u64,
            jobs_per_second,
            eta_seconds,
            recent_errors,
            created_at_ms,
            planning_error: fields.get("error").cloned(),
            released: field_i64(&fields, "released").max(0) as u64,
            skipped: field_i64(&fields, "skipped").max(0) as u64,
        })
    }

    /// Recent failures as stored (job, reason, time), with each job's URL read in one pipeline.
    async fn error_reports(&self, base: &str, raw: &[String]) -> Result<Vec<ErrorReport>> {
        #[derive(serde::Deserialize)]
        struct StoredError {
            job_id: String,
            reason: String,
            at_ms: i64,
        }
        let parsed: Vec<StoredError> = raw
            .iter()
            .filter_map(|error| serde_json::from_str(error).ok())
            .collect();
        let mut pipe = redis::pipe();
        for error in &parsed {
            match parse_job_id(&error.job_id) {
                Some((pass_id, n)) => {
                    pipe.hget(self.bucket_key(pass_id, n), slot(n));
                }
                None => {
                    pipe.cmd("ECHO").arg("");
                }
            }
        }
        let records: Vec<Option<String>> = if parsed.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn()).await?
        };
        Ok(parsed
            .into_iter()
            .zip(records)
            .map(|(error, record)| {
                let video_url = record
                    .as_deref()
                    .and_then(|record| split_record(record).ok())
                    .and_then(|(_, _, _, where_part)| decode_spec(base, where_part, None).ok())
                    .map(|spec| spec.video_url)
                    .unwrap_or_default();
                ErrorReport {
                    job_id: error.job_id,
                    video_url,
                    reason: error.reason,
                    at_ms: error.at_ms,
                }
            })
            .collect())
    }
}

/// Job records stay compact while every value fits Redis's `hash-max-listpack-value` (64 bytes
/// by default); a URL longer than about 45 characters past the source prefix passes that, and its
/// record hash then takes about twice the memory (README, "Sizing"). Says so once at start-up.
/// Managed Redis services often refuse `CONFIG`; then nothing is said.
async fn warn_on_small_listpacks(connection: &mut ConnectionManager) {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hash-max-listpack-value")
        .query_async(connection)
        .await;
    let limit = reply
        .ok()
        .and_then(|pair| pair.get(1).and_then(|value| value.parse::<u64>().ok()));
    if let Some(limit) = limit
        && limit < 128
    {
        tracing::warn!(
            limit,
            "redis hash-max-listpack-value is below 128: jobs whose URLs are long past the \
             source prefix take about twice the memory (set it to 256, as the Helm chart does)"
        );
    }
}

/// A job's field name within its bucket; `v` and `r` follow it for its version and result.
fn slot(n: u64) -> String {
    (n % JOBS_PER_BUCKET).to_string()
}

/// Maps a script's status reply to our errors; `subject` names what was not found.
fn checked(reply: Vec<String>, subject: impl FnOnce() -> String) -> Result<Vec<String>> {
    let detail = || reply.get(1).cloned().unwrap_or_default();
    match reply.first().map(String::as_str) {
        Some("ok" | "created" | "existing") => Ok(reply),
        Some("notfound") => Err(Error::NotFound(subject())),
        Some("precondition") => Err(Error::FailedPrecondition(detail())),
        Some("invalid") => Err(Error::InvalidArgument(detail())),
        Some("stale") => Err(Error::StaleLease {
            job_id: subject(),
            state: JobState::parse(&detail()).unwrap_or(JobState::Pending),
        }),
        other => Err(Error::Corrupt(format!("unexpected script reply {other:?}"))),
    }
}

/// [`checked`] for a script about one job: not found names the job, a stale lease carries its id.
fn checked_job(reply: Vec<String>, job_id: &str) -> Result<Vec<String>> {
    match checked(reply, || format!("job {job_id}")) {
        Err(Error::StaleLease { state, .. }) => Err(Error::StaleLease {
            job_id: job_id.to_owned(),
            state,
        }),
        other => other,
    }
}

fn decode_pass_spec(raw: Option<&String>) -> Result<PassSpec> {
    let raw = raw.ok_or_else(|| Error::Corrupt("pass has no spec".into()))?;
    serde_json::from_str(raw).map_err(|error| Error::Corrupt(format!("pass spec: {error}")))
}

fn field_i64(fields: &HashMap<String, String>, name: &str) -> i64 {
    fields
        .get(name)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn parse_i64(reply: &[String], index: usize) -> Result<i64> {
    reply
        .get(index)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| Error::Corrupt(format!("script reply {reply:?} lacks a number at {index}")))
}

/// Redis errors can echo the URL, which may hold a password; keep only the kind.
fn redact_error(error: &redis::RedisError) -> String {
    format!("{:?}", error.kind())
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Corrupt(error.to_string()))
}

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

mod listing;
mod store_impl;
