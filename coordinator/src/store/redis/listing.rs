//! The Redis store's listings: passes newest first, a pass's jobs by number, one job by id.
//! Reads only: the `JobStore` methods call them through `RedisStore::read`, which makes a read
//! again on a new connection when Redis restarted under it.

use super::*;

/// One job's stored fields as [`RedisStore::job_of`] reads them: the record, its version and
/// result, then its last error and its pass's state.
type JobFields = (
    (Option<String>, Option<String>, Option<String>),
    Option<String>,
    Option<String>,
);

impl RedisStore {
    pub(super) async fn passes_page(
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

    pub(super) async fn jobs_page(
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
        let reply = checked(
            self.run(
                &self.scripts.list,
                &[
                    pass_id,
                    filter.map_or("", JobState::as_str),
                    &after.to_string(),
                    &page_size.to_string(),
                    &LIST_SCAN_BUDGET.max(page_size).to_string(),
                ],
            )
            .await?,
            || format!("pass {pass_id}"),
        )?;
        let mut items = Vec::new();
        for fields in reply[2..].chunks_exact(7) {
            let [n, state, attempt, rest, version, result, last_error] = fields else {
                unreachable!("chunks_exact(7) yields 7 fields")
            };
            let state = JobState::parse(state)
                .ok_or_else(|| Error::Corrupt(format!("list replied state {state:?}")))?;
            let attempt = attempt
                .parse()
                .map_err(|_| Error::Corrupt(format!("list replied attempt {attempt:?}")))?;
            let (crashes, where_part) = split_rest(rest)?;
            items.push(
                self.decode_job(StoredJob {
                    job_id: format!("{pass_id}.{n}"),
                    pass_id,
                    state,
                    attempt,
                    crashes,
                    where_part,
                    version: non_empty(version),
                    result: non_empty(result),
                    last_error: non_empty(last_error),
                })
                .await?,
            );
        }
        let next = (reply[1] != "0").then(|| page_token::encode(&scope, &reply[1]));
        Ok(Page { items, next })
    }

    pub(super) async fn job_of(&self, job_id: &str) -> Result<Job> {
        let not_found = || Error::NotFound(format!("job {job_id}"));
        let (pass_id, n) = parse_job_id(job_id).ok_or_else(not_found)?;
        let pass_key = self.pass_key(pass_id);
        let slot = slot(n);
        let ((record, version, result), last_error, pass_state): JobFields = redis::pipe()
            .cmd("HMGET")
            .arg(self.bucket_key(pass_id, n))
            .arg(&[slot.clone(), format!("{slot}v"), format!("{slot}r")])
            .hget(format!("{pass_key}:err"), n)
            .hget(&pass_key, "state")
            .query_async(&mut self.conn())
            .await?;
        let record = record.ok_or_else(not_found)?;
        let (recorded, attempt, crashes, where_part) = split_record(&record)?;
        let stopped = matches!(pass_state.as_deref(), Some("cancelled" | "failed"));
        let queued = matches!(recorded, JobState::Pending | JobState::Failed);
        self.decode_job(StoredJob {
            job_id: job_id.to_owned(),
            pass_id,
            state: if stopped && queued {
                JobState::Cancelled
            } else {
                recorded
            },
            attempt,
            crashes,
            where_part,
            version: version.as_deref(),
            result: result.as_deref(),
            last_error: last_error.as_deref(),
        })
        .await
    }
}
