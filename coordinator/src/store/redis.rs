//! The Redis job store: every state change is one Lua script (see `lua/`), so transitions are
//! atomic, and any number of coordinator replicas can share one Redis. Nothing lives in process
//! memory: a restarted coordinator picks up exactly where the last one stopped.
//!
//! Layout under the key prefix `P` (default `vidx`):
//! - `P:pass:ID` hash: spec, state, created, counts `n:STATE`, planning cursor, per-pass job seq;
//!   `P:pass:ID:jobs` and `P:pass:ID:s:STATE` sorted sets of job ids by creation seq;
//!   `P:pass:ID:errors` recent failures; `P:pass:ID:rate` completions per 10 s bucket;
//!   `P:pass:ID:planner` the planning lock.
//! - `P:job:ID` hash: pass, url, spec, state, attempt, lease, deadline, last error.
//! - `P:pending` (global FIFO by seq), `P:delayed` (retry time), `P:leases` (deadline) sorted sets.
//! - `P:passes` (all pass ids, time-ordered ids at score 0), `P:active`, `P:idem:KEY`.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{
    Created, JobStore, LeaseRequest, PlanningPass, RetryPolicy, effective_state, job_id_for,
    page_token, segment_jobs, throughput, validate_segments,
};
use crate::domain::{
    Completed, Completion, ErrorReport, FailOutcome, Heartbeat, Job, JobCounts, JobState,
    LeasedJob, NewJob, Page, PassSpec, PassState, PassStatus,
};
use crate::error::{Error, Result};
use crate::store::memory::{jobs_scope, new_pass_id};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Jobs moved per cancel script call, bounding how long one call holds Redis.
const CANCEL_BATCH: u32 = 500;

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
    reap: Script,
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
            reap: script(include_str!("lua/reap.lua")),
        }
    }
}

/// Job state in Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    retry: RetryPolicy,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
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
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisStore {
            connection,
            prefix: prefix.to_owned(),
            retry,
            scripts: Scripts::load(),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    fn pass_key(&self, pass_id: &str) -> String {
        format!("{}:pass:{pass_id}", self.prefix)
    }

    fn job_key(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.prefix)
    }

    async fn run(&self, script: &Script, args: &[&str]) -> Result<Vec<String>> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix);
        for arg in args {
            invocation.arg(*arg);
        }
        Ok(invocation.invoke_async(&mut self.conn()).await?)
    }

    async fn drain_cancelled(&self, pass_id: &str, mode: &str) -> Result<()> {
        let batch = CANCEL_BATCH.to_string();
        let mut mode = mode;
        // Bounded: every call moves up to a batch, and nothing adds pending jobs to a stopped pass.
        for _ in 0..1_000_000 {
            let reply = checked(
                self.run(&self.scripts.cancel, &[pass_id, &batch, mode])
                    .await?,
                || format!("pass {pass_id}"),
            )?;
            if reply.get(1).map(String::as_str) == Some("0") {
                return Ok(());
            }
            mode = "drain";
        }
        Err(Error::Corrupt(format!(
            "pass {pass_id} never finished cancelling"
        )))
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
        let spec = decode_spec(fields.get("spec"))?;
        let stored = fields
            .get("state")
            .and_then(|state| PassState::parse(state))
            .ok_or_else(|| Error::Corrupt(format!("pass {pass_id} has no valid state")))?;
        let count = |state: JobState| -> u64 {
            fields
                .get(&format!("n:{state}"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let mut counts = JobCounts::default();
        for state in JobState::ALL {
            *counts.get_mut(state) = count(state);
        }
        let created_at_ms = field_i64(&fields, "created");
        let buckets: Vec<(i64, u64)> = rate
            .iter()
            .filter_map(|(bucket, n)| Some((bucket.parse().ok()?, n.parse().ok()?)))
            .collect();
        let remaining = counts.total() - counts.finished();
        let (jobs_per_second, eta_seconds) = throughput(&buckets, created_at_ms, remaining, now_ms);
        let recent_errors = errors
            .iter()
            .filter_map(|error| serde_json::from_str::<ErrorReport>(error).ok())
            .collect();
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
        })
    }

    fn job_from_fields(&self, job_id: &str, fields: &HashMap<String, String>) -> Result<Job> {
        let spec: NewJob = fields
            .get("spec")
            .and_then(|spec| serde_json::from_str(spec).ok())
            .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no valid spec")))?;
        let state = fields
            .get("state")
            .and_then(|state| JobState::parse(state))
            .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no valid state")))?;
        Ok(Job {
            job_id: job_id.to_owned(),
            pass_id: fields.get("pass").cloned().unwrap_or_default(),
            spec,
            state,
            attempt: field_i64(fields, "attempt").max(0) as u32,
            last_error: fields.get("err").cloned(),
            result_url: fields.get("result").cloned(),
        })
    }

    async fn cached_spec(
        &self,
        cache: &mut HashMap<String, PassSpec>,
        pass_id: &str,
    ) -> Result<PassSpec> {
        if let Some(spec) = cache.get(pass_id) {
            return Ok(spec.clone());
        }
        let spec = self.pass_spec(pass_id).await?;
        cache.insert(pass_id.to_owned(), spec.clone());
        Ok(spec)
    }
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

fn decode_spec(raw: Option<&String>) -> Result<PassSpec> {
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

#[async_trait]
impl JobStore for RedisStore {
    async fn create_pass(&self, spec: &PassSpec, now_ms: i64) -> Result<Created> {
        let pass_id = new_pass_id();
        let spec_json = encode_json(spec)?;
        let reply = checked(
            self.run(
                &self.scripts.create_pass,
                &[
                    &pass_id,
                    &spec_json,
                    &now_ms.to_string(),
                    spec.idempotency_key.as_deref().unwrap_or(""),
                    &spec.max_attempts.to_string(),
                ],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        Ok(Created {
            pass_id: reply[1].clone(),
            existing: reply[0] == "existing",
        })
    }

    async fn add_jobs(
        &self,
        pass_id: &str,
        jobs: &[NewJob],
        cursor: Option<&str>,
        _now_ms: i64,
    ) -> Result<u64> {
        let mut args: Vec<String> = vec![pass_id.to_owned(), cursor.unwrap_or("").to_owned()];
        for job in jobs {
            args.push(job_id_for(pass_id, job));
            args.push(job.video_url.clone());
            args.push(if job.probe { "1" } else { "0" }.to_owned());
            args.push(encode_json(job)?);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = checked(self.run(&self.scripts.add_jobs, &args).await?, || {
            format!("pass {pass_id}")
        })?;
        Ok(parse_i64(&reply, 1)?.max(0) as u64)
    }

    async fn finish_planning(&self, pass_id: &str, error: Option<&str>) -> Result<()> {
        checked(
            self.run(
                &self.scripts.finish_planning,
                &[pass_id, error.unwrap_or("")],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        if error.is_some() {
            self.drain_cancelled(pass_id, "drain").await?;
        }
        Ok(())
    }

    async fn claim_planning(
        &self,
        pass_id: &str,
        holder: &str,
        ttl_ms: i64,
        _now_ms: i64,
    ) -> Result<bool> {
        let reply = checked(
            self.run(
                &self.scripts.claim_planning,
                &[pass_id, holder, &ttl_ms.to_string()],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        Ok(reply.get(1).map(String::as_str) == Some("1"))
    }

    async fn planning_passes(&self) -> Result<Vec<PlanningPass>> {
        let mut conn = self.conn();
        let active: Vec<String> = conn.smembers(format!("{}:active", self.prefix)).await?;
        let mut planning = Vec::new();
        for pass_id in active {
            let (state, spec, cursor): (Option<String>, Option<String>, Option<String>) =
                redis::cmd("HMGET")
                    .arg(self.pass_key(&pass_id))
                    .arg(&["state", "spec", "cursor"])
                    .query_async(&mut conn)
                    .await?;
            if state.as_deref() != Some("planning") {
                continue;
            }
            planning.push(PlanningPass {
                spec: decode_spec(spec.as_ref())?,
                pass_id,
                cursor,
            });
        }
        Ok(planning)
    }

    async fn pass_spec(&self, pass_id: &str) -> Result<PassSpec> {
        let spec: Option<String> = self.conn().hget(self.pass_key(pass_id), "spec").await?;
        match spec {
            Some(spec) => decode_spec(Some(&spec)),
            None => Err(Error::NotFound(format!("pass {pass_id}"))),
        }
    }

    async fn pass_status(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus> {
        self.status_of(pass_id, now_ms).await
    }

    async fn list_passes(
        &self,
        page_size: u32,
        cursor: Option<&str>,
        now_ms: i64,
    ) -> Result<Page<PassStatus>> {
        let max = match cursor {
            Some(token) => format!("({}", page_token::decode("passes", token)?),
            None => "+".to_owned(),
        };
        let ids: Vec<String> = self
            .conn()
            .zrevrangebylex_limit(
                format!("{}:passes", self.prefix),
                &max,
                "-",
                0,
                page_size as isize + 1,
            )
            .await?;
        let mut items = Vec::new();
        for pass_id in ids.iter().take(page_size as usize) {
            items.push(self.status_of(pass_id, now_ms).await?);
        }
        let next = (ids.len() > page_size as usize)
            .then(|| {
                items
                    .last()
                    .map(|last| page_token::encode("passes", &last.pass_id))
            })
            .flatten();
        Ok(Page { items, next })
    }

    async fn list_jobs(
        &self,
        pass_id: &str,
        filter: Option<JobState>,
        page_size: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Job>> {
        let scope = jobs_scope(pass_id, filter);
        let after = match cursor {
            Some(token) => page_token::decode(&scope, token)?
                .parse::<u64>()
                .map_err(|_| Error::invalid("page token was not issued for this listing"))?,
            None => 0,
        };
        let mut conn = self.conn();
        let pass_key = self.pass_key(pass_id);
        if !conn.exists::<_, bool>(&pass_key).await? {
            return Err(Error::NotFound(format!("pass {pass_id}")));
        }
        let index = match filter {
            Some(state) => format!("{pass_key}:s:{state}"),
            None => format!("{pass_key}:jobs"),
        };
        let entries: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores(
                &index,
                format!("({after}"),
                "+inf",
                0,
                page_size as isize + 1,
            )
            .await?;
        let page: Vec<&(String, f64)> = entries.iter().take(page_size as usize).collect();
        let mut pipe = redis::pipe();
        for (job_id, _) in &page {
            pipe.hgetall(self.job_key(job_id));
        }
        let rows: Vec<HashMap<String, String>> = if page.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let items = page
            .iter()
            .zip(&rows)
            .map(|((job_id, _), fields)| self.job_from_fields(job_id, fields))
            .collect::<Result<Vec<_>>>()?;
        let next = (entries.len() > page_size as usize)
            .then(|| {
                page.last()
                    .map(|(_, seq)| page_token::encode(&scope, &(*seq as u64).to_string()))
            })
            .flatten();
        Ok(Page { items, next })
    }

    async fn job(&self, job_id: &str) -> Result<Job> {
        let fields: HashMap<String, String> = self.conn().hgetall(self.job_key(job_id)).await?;
        if fields.is_empty() {
            return Err(Error::NotFound(format!("job {job_id}")));
        }
        self.job_from_fields(job_id, &fields)
    }

    async fn cancel_pass(&self, pass_id: &str, _now_ms: i64) -> Result<()> {
        self.drain_cancelled(pass_id, "cancel").await
    }

    async fn lease(&self, request: &LeaseRequest, now_ms: i64) -> Result<Vec<LeasedJob>> {
        let reply = checked(
            self.run(
                &self.scripts.lease,
                &[
                    &now_ms.to_string(),
                    &request.max_jobs.to_string(),
                    &request.lease_ms.to_string(),
                ],
            )
            .await?,
            || "lease".to_owned(),
        )?;
        let mut specs = HashMap::new();
        let mut leased = Vec::with_capacity((reply.len() - 1) / 7);
        for fields in reply[1..].chunks_exact(7) {
            let [
                job_id,
                pass_id,
                spec,
                attempt,
                lease_id,
                deadline,
                last_error,
            ] = fields
            else {
                unreachable!("chunks_exact(7) yields 7 fields")
            };
            let spec: NewJob = serde_json::from_str(spec)
                .map_err(|error| Error::Corrupt(format!("job {job_id} spec: {error}")))?;
            leased.push(LeasedJob {
                job: Job {
                    job_id: job_id.clone(),
                    pass_id: pass_id.clone(),
                    spec,
                    state: JobState::Leased,
                    attempt: attempt.parse().unwrap_or(0),
                    last_error: (!last_error.is_empty()).then(|| last_error.clone()),
                    result_url: None,
                },
                lease_id: lease_id.clone(),
                deadline_ms: deadline.parse().unwrap_or(0),
                pass: self.cached_spec(&mut specs, pass_id).await?,
            });
        }
        Ok(leased)
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Heartbeat> {
        let reply = checked(
            self.run(
                &self.scripts.heartbeat,
                &[
                    job_id,
                    lease_id,
                    &extend_ms.unwrap_or(0).to_string(),
                    &now_ms.to_string(),
                ],
            )
            .await?,
            || format!("job {job_id}"),
        )?;
        Ok(Heartbeat {
            deadline_ms: parse_i64(&reply, 1)?,
            cancelled: reply[2] == "1",
        })
    }

    async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
        now_ms: i64,
    ) -> Result<Completed> {
        validate_segments(&completion.segments)?;
        let mut args = vec![
            job_id.to_owned(),
            lease_id.to_owned(),
            now_ms.to_string(),
            completion.result_url.clone().unwrap_or_default(),
        ];
        if !completion.segments.is_empty() {
            // The parent's spec never changes, so reading it outside the script is safe.
            let parent = self.job(job_id).await?;
            for child in segment_jobs(&parent.spec, &completion.segments) {
                args.push(job_id_for(&parent.pass_id, &child));
                args.push(child.video_url.clone());
                args.push(encode_json(&child)?);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = checked(self.run(&self.scripts.complete, &args).await?, || {
            job_id.to_owned()
        })?;
        Ok(Completed {
            lease_held_ms: parse_i64(&reply, 1)?,
            segments_created: parse_i64(&reply, 2)?.max(0) as u32,
        })
    }

    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        retryable: bool,
        now_ms: i64,
    ) -> Result<FailOutcome> {
        let reply = checked(
            self.run(
                &self.scripts.fail,
                &[
                    job_id,
                    lease_id,
                    reason,
                    if retryable { "1" } else { "0" },
                    &now_ms.to_string(),
                    &self.retry.base_backoff_ms.to_string(),
                    &self.retry.max_backoff_ms.to_string(),
                ],
            )
            .await?,
            || job_id.to_owned(),
        )?;
        let state = JobState::parse(&reply[1])
            .ok_or_else(|| Error::Corrupt(format!("fail script replied {reply:?}")))?;
        Ok(FailOutcome {
            state,
            retry_at_ms: parse_i64(&reply, 2)?,
        })
    }

    async fn reap_expired(&self, now_ms: i64, limit: u32) -> Result<u64> {
        let reply = checked(
            self.run(
                &self.scripts.reap,
                &[&now_ms.to_string(), &limit.to_string()],
            )
            .await?,
            || "reap".to_owned(),
        )?;
        Ok(parse_i64(&reply, 1)?.max(0) as u64)
    }

    async fn leases_in_flight(&self) -> Result<u64> {
        Ok(self.conn().zcard(format!("{}:leases", self.prefix)).await?)
    }

    async fn active_passes(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let active_key = format!("{}:active", self.prefix);
        let members: Vec<String> = conn.smembers(&active_key).await?;
        let mut active = Vec::with_capacity(members.len());
        for pass_id in members {
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.pass_key(&pass_id))
                .arg(&["state", "n:pending", "n:leased", "n:failed"])
                .query_async(&mut conn)
                .await?;
            let open: i64 = fields[1..]
                .iter()
                .map(|n| n.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0))
                .sum();
            match fields[0].as_deref() {
                Some("planning") => active.push(pass_id),
                Some("running") if open > 0 => active.push(pass_id),
                _ => {
                    let _: () = conn.srem(&active_key, &pass_id).await?;
                }
            }
        }
        Ok(active)
    }
}
