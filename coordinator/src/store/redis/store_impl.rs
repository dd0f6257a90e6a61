//! [`JobStore`] for [`RedisStore`]: each method is one script call (or one read), plus the
//! encoding of what it sends and the decoding of what comes back.

use super::codec::{DEDUP_BUCKETS, dedup_slot};
use super::*;

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
        let info = self.pass_info(pass_id, false).await?;
        let mut invocation = self.invoke(&self.scripts.add_jobs);
        invocation.arg(pass_id).arg(cursor.unwrap_or(""));
        for job in jobs {
            let (bucket, field) = dedup_slot(job);
            invocation
                .arg(bucket)
                .arg(&field[..])
                .arg(encode_where(&info.base, job)?)
                .arg(encode_version(job)?);
        }
        let reply = checked(self.call(invocation).await?, || format!("pass {pass_id}"))?;
        Ok(parse_i64(&reply, 1)?.max(0) as u64)
    }

    async fn finish_planning(&self, pass_id: &str, error: Option<&str>) -> Result<()> {
        let reply = checked(
            self.run(
                &self.scripts.finish_planning,
                &[pass_id, error.unwrap_or("")],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        if reply.get(1).map(String::as_str) == Some("1") {
            self.drop_dedup_index(pass_id).await?;
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
        self.read(|| async move {
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
                    spec: decode_pass_spec(spec.as_ref())?,
                    pass_id,
                    cursor,
                });
            }
            Ok(planning)
        })
        .await
    }

    async fn pass_spec(&self, pass_id: &str) -> Result<PassSpec> {
        self.read(|| async move { Ok(self.pass_info(pass_id, false).await?.spec.clone()) })
            .await
    }

    async fn pass_status(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus> {
        self.read(|| self.status_of(pass_id, now_ms)).await
    }

    async fn list_passes(
        &self,
        page_size: u32,
        cursor: Option<&str>,
        now_ms: i64,
    ) -> Result<Page<PassStatus>> {
        self.read(|| self.passes_page(page_size, cursor, now_ms))
            .await
    }

    async fn list_jobs(
        &self,
        pass_id: &str,
        filter: Option<JobState>,
        page_size: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Job>> {
        self.read(|| self.jobs_page(pass_id, filter, page_size, cursor))
            .await
    }

    async fn job(&self, job_id: &str) -> Result<Job> {
        self.read(|| self.job_of(job_id)).await
    }

    async fn cancel_pass(&self, pass_id: &str, _now_ms: i64) -> Result<()> {
        let reply = checked(self.run(&self.scripts.cancel, &[pass_id]).await?, || {
            format!("pass {pass_id}")
        })?;
        if reply.get(1).map(String::as_str) == Some("1") {
            self.drop_dedup_index(pass_id).await?;
        }
        Ok(())
    }

    async fn lease(&self, request: &LeaseRequest, now_ms: i64) -> Result<Vec<LeasedJob>> {
        let reply = checked(
            self.run(
                &self.scripts.lease,
                &[
                    &now_ms.to_string(),
                    &request.max_jobs.to_string(),
                    &request.lease_ms.to_string(),
                    &request.worker_id,
                ],
            )
            .await?,
            || "lease".to_owned(),
        )?;
        let mut leased = Vec::with_capacity((reply.len() - 1) / 8);
        for fields in reply[1..].chunks_exact(8) {
            let [
                job_id,
                pass_id,
                rest,
                version,
                attempt,
                lease_id,
                deadline,
                last_error,
            ] = fields
            else {
                unreachable!("chunks_exact(8) yields 8 fields")
            };
            let info = self.pass_info(pass_id, false).await?;
            let (crashes, where_part) = split_rest(rest)?;
            leased.push(LeasedJob {
                job: Job {
                    job_id: job_id.clone(),
                    pass_id: pass_id.clone(),
                    spec: decode_spec(&info.base, where_part, non_empty(version))?,
                    state: JobState::Leased,
                    attempt: attempt.parse().unwrap_or(0),
                    last_error: non_empty(last_error).map(str::to_owned),
                    result_url: None,
                    crashes,
                },
                lease_id: lease_id.clone(),
                deadline_ms: deadline.parse().unwrap_or(0),
                pass: info.spec.clone(),
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
        let reply = checked_job(
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
            job_id,
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
        let (pass_id, _) =
            parse_job_id(job_id).ok_or_else(|| Error::NotFound(job_id.to_owned()))?;
        let info = self
            .pass_info(pass_id, completion.result_url.is_some())
            .await?;
        let (stored_result, template) = match &completion.result_url {
            Some(url) => (
                encode_result(info.result_template.as_deref(), url),
                if info.result_template.is_none() {
                    url.as_str()
                } else {
                    ""
                },
            ),
            None => (String::new(), ""),
        };
        let mut invocation = self.invoke(&self.scripts.complete);
        invocation
            .arg(job_id)
            .arg(lease_id)
            .arg(now_ms)
            .arg(&stored_result)
            .arg(template)
            .arg(if completion.skipped { "1" } else { "0" });
        if !completion.segments.is_empty() {
            // A job's spec never changes, so reading it outside the script is safe.
            let parent = self.job(job_id).await?;
            if !parent.spec.probe {
                return Err(Error::invalid(format!(
                    "job {job_id} is a segment job and cannot be split further"
                )));
            }
            for child in segment_jobs(&parent.spec, &completion.segments) {
                invocation
                    .arg(encode_where(&info.base, &child)?)
                    .arg(encode_version(&child)?);
            }
        }
        let reply = checked_job(self.call(invocation).await?, job_id)?;
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
        kind: FailureKind,
        now_ms: i64,
    ) -> Result<FailOutcome> {
        let reply = checked_job(
            self.run(
                &self.scripts.fail,
                &[
                    job_id,
                    lease_id,
                    reason,
                    kind.as_str(),
                    &now_ms.to_string(),
                    &self.retry.base_backoff_ms.to_string(),
                    &self.retry.max_backoff_ms.to_string(),
                ],
            )
            .await?,
            job_id,
        )?;
        let state = JobState::parse(&reply[1])
            .ok_or_else(|| Error::Corrupt(format!("fail script replied {reply:?}")))?;
        Ok(FailOutcome {
            state,
            retry_at_ms: parse_i64(&reply, 2)?,
        })
    }

    async fn release(&self, job_id: &str, lease_id: &str, now_ms: i64) -> Result<JobState> {
        let reply = checked_job(
            self.run(
                &self.scripts.release,
                &[job_id, lease_id, &now_ms.to_string()],
            )
            .await?,
            job_id,
        )?;
        reply
            .get(1)
            .and_then(|state| JobState::parse(state))
            .ok_or_else(|| Error::Corrupt(format!("release script replied {reply:?}")))
    }

    async fn reap_expired(&self, now_ms: i64, limit: u32) -> Result<u64> {
        let reply = checked(
            self.run(
                &self.scripts.reap,
                &[
                    &now_ms.to_string(),
                    &limit.to_string(),
                    &self.retry.max_crashes.max(1).to_string(),
                ],
            )
            .await?,
            || "reap".to_owned(),
        )?;
        Ok(parse_i64(&reply, 1)?.max(0) as u64)
    }

    async fn leases_in_flight(&self) -> Result<u64> {
        self.read(|| async move { Ok(self.conn().zcard(format!("{}:leases", self.prefix)).await?) })
            .await
    }

    async fn lease_holders(&self) -> Result<Vec<String>> {
        self.read(|| async move {
            // One entry per lease in flight (`lease deadline started duration worker`), so this is
            // bounded by the workers' slots, not by the size of any pass.
            let leases: Vec<String> = self.conn().hvals(format!("{}:lease", self.prefix)).await?;
            let holders: std::collections::BTreeSet<String> = leases
                .iter()
                .filter_map(|lease| lease.splitn(5, ' ').nth(4).map(str::to_owned))
                .collect();
            Ok(holders.into_iter().collect())
        })
        .await
    }

    async fn active_passes(&self) -> Result<Vec<String>> {
        // A read that also drops ended passes from the active set: safe to make again.
        self.read(|| async move {
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
        })
        .await
    }

    async fn expire_passes(&self, created_before_ms: i64, limit: u32) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let passes_key = format!("{}:passes", self.prefix);
        // Pass ids sort by creation time, so the oldest come first and the scan stops at the
        // first pass young enough to keep.
        let oldest: Vec<String> = conn
            .zrangebylex_limit(&passes_key, "-", "+", 0, limit as isize)
            .await?;
        let mut expired = Vec::new();
        for pass_id in oldest {
            let pass_key = self.pass_key(&pass_id);
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&pass_key)
                .arg(&[
                    "state",
                    "created",
                    "seq",
                    "idem",
                    "n:pending",
                    "n:leased",
                    "n:failed",
                ])
                .query_async(&mut conn)
                .await?;
            let number = |index: usize| -> i64 {
                fields[index]
                    .as_deref()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0)
            };
            let Some(state) = fields[0].as_deref() else {
                // A pass whose hash is gone was half expired by a replica that died: finish.
                let _: () = conn.zrem(&passes_key, &pass_id).await?;
                continue;
            };
            if number(1) >= created_before_ms {
                break;
            }
            let ended = match state {
                "cancelled" | "failed" => number(5) == 0,
                "running" => number(4) + number(5) + number(6) == 0,
                _ => false,
            };
            if !ended {
                continue;
            }
            // Records first, the pass hash last: a replica that dies halfway leaves a pass that
            // the next sweep finds and expires again.
            let buckets = number(2).max(0) as u64 / JOBS_PER_BUCKET + 1;
            self.unlink_numbered(&format!("{}:j:{pass_id}:", self.prefix), buckets)
                .await?;
            self.unlink_numbered(
                &format!("{}:d:{pass_id}:", self.prefix),
                u64::from(DEDUP_BUCKETS),
            )
            .await?;
            let mut keys: Vec<String> =
                ["errors", "rate", "planner", "err", "seg", "final", "claim"]
                    .iter()
                    .map(|suffix| format!("{pass_key}:{suffix}"))
                    .collect();
            keys.extend(
                ["leased", "failed", "dead"]
                    .iter()
                    .map(|state| format!("{pass_key}:s:{state}")),
            );
            if let Some(key) = fields[3].as_deref() {
                keys.push(format!("{}:idem:{key}", self.prefix));
            }
            keys.push(pass_key.clone());
            let _: () = redis::pipe()
                .atomic()
                .cmd("UNLINK")
                .arg(&keys)
                .ignore()
                .zrem(&passes_key, &pass_id)
                .ignore()
                .zrem(format!("{}:runnable", self.prefix), &pass_id)
                .ignore()
                .srem(format!("{}:active", self.prefix), &pass_id)
                .ignore()
                .query_async(&mut conn)
                .await?;
            self.passes.lock().expect("pass cache").remove(&pass_id);
            expired.push(pass_id);
        }
        Ok(expired)
    }

    async fn count_segment(
        &self,
        pass_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<bool> {
        validate_segment_count(video_key, segment_index, segment_count)?;
        let reply = checked(
            self.run(
                &self.scripts.count_segment,
                &[
                    pass_id,
                    video_key,
                    &segment_index.to_string(),
                    &segment_count.to_string(),
                ],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        Ok(reply.get(1).map(String::as_str) == Some("1"))
    }

    async fn claim_finalization(
        &self,
        pass_id: &str,
        holder: &str,
        again: bool,
        ttl_ms: i64,
        _now_ms: i64,
    ) -> Result<FinalizeClaim> {
        let reply = checked(
            self.run(
                &self.scripts.claim_finalization,
                &[
                    pass_id,
                    holder,
                    &ttl_ms.max(1).to_string(),
                    if again { "1" } else { "0" },
                ],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        match reply.get(1).map(String::as_str) {
            Some("claimed") => Ok(FinalizeClaim::Claimed),
            Some("busy") => Ok(FinalizeClaim::Busy),
            Some("done") => Ok(FinalizeClaim::Done),
            other => Err(Error::Corrupt(format!(
                "unexpected finalization reply {other:?}"
            ))),
        }
    }

    async fn finish_finalization(&self, pass_id: &str) -> Result<()> {
        checked(
            self.run(&self.scripts.finish_finalization, &[pass_id])
                .await?,
            || format!("pass {pass_id}"),
        )?;
        Ok(())
    }
}
