//! Planning: turns a pass's source into jobs, one probe job per video.
//!
//! A source is an object-store prefix (listed page by page) or a manifest object (`.txt`: one URL
//! per line; `.jsonl`: `{"url": ..., "size": ..., "etag": ...}` per line), read as a stream. Jobs
//! are written in batches, and the position reached is saved with each batch, so a corpus of any
//! size plans in bounded memory and a replica that dies mid-planning is replaced by another that
//! resumes. The store skips a job whose video (URL, time range) the pass already has, so a resumed
//! planner never duplicates a job.
//! A planning lock in the store keeps two replicas off the same pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::access::AccessPolicy;
use crate::error::{Error, Result};
use crate::service::Coordinator;
use crate::store::{JobStore, PlanningPass};
use vidx_core::domain::{NewJob, now_ms};
use vidx_core::objects::{self, Location};

/// Jobs written per store call.
pub const BATCH: usize = 1_000;
/// How long a planning claim lasts without renewal.
const CLAIM_TTL_MS: i64 = 60_000;
/// Transient listing failures tolerated per pass before planning gives up.
const MAX_TRANSIENT_FAILURES: u32 = 5;
/// How often the planner looks for passes left in planning by a replica that died.
const SWEEP: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is cancelled: plans new passes when woken, and sweeps for passes whose
/// planner died. Manifest entries outside `access` fail their pass, naming the allowed prefixes.
pub async fn run(coordinator: Coordinator, replica: String, shutdown: CancellationToken) {
    let store = Arc::clone(coordinator.store());
    let access = coordinator.access().clone();
    let wake = coordinator.planner_wake();
    let mut transient_failures: HashMap<String, u32> = HashMap::new();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match store.planning_passes().await {
            Ok(passes) => {
                for pass in passes {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    plan_one(
                        store.as_ref(),
                        &replica,
                        &access,
                        pass,
                        &mut transient_failures,
                    )
                    .await;
                    coordinator.note_progress();
                }
            }
            Err(error) => warn!(%error, "cannot read passes to plan"),
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(SWEEP) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

async fn plan_one(
    store: &dyn JobStore,
    replica: &str,
    access: &AccessPolicy,
    pass: PlanningPass,
    transient_failures: &mut HashMap<String, u32>,
) {
    let pass_id = pass.pass_id.clone();
    match store
        .claim_planning(&pass_id, replica, CLAIM_TTL_MS, now_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            warn!(%pass_id, %error, "cannot claim pass for planning");
            return;
        }
    }
    let outcome = plan(store, replica, access, &pass).await;
    let finish = match outcome {
        Ok(0) => Some(format!("no video files found in {}", pass.spec.source)),
        Ok(videos) => {
            info!(%pass_id, videos, "planning finished");
            None
        }
        Err(error) if error.is_transient() || is_transient_store_error(&error) => {
            let failures = transient_failures.entry(pass_id.clone()).or_default();
            *failures += 1;
            if *failures < MAX_TRANSIENT_FAILURES {
                warn!(%pass_id, %error, failures = *failures, "planning interrupted, will resume");
                return;
            }
            Some(format!(
                "planning gave up after {failures} failures: {error}"
            ))
        }
        Err(Error::FailedPrecondition(reason)) => {
            info!(%pass_id, %reason, "planning stopped");
            return;
        }
        Err(error) => Some(error.to_string()),
    };
    transient_failures.remove(&pass_id);
    if let Some(reason) = &finish {
        warn!(%pass_id, %reason, "planning failed");
    }
    if let Err(error) = store.finish_planning(&pass_id, finish.as_deref()).await {
        warn!(%pass_id, %error, "cannot record end of planning");
    }
}

fn is_transient_store_error(error: &Error) -> bool {
    use object_store::Error as E;
    match error {
        Error::ObjectStore(error) => !matches!(
            error,
            E::NotFound { .. }
                | E::InvalidPath { .. }
                | E::PermissionDenied { .. }
                | E::Unauthenticated { .. }
                | E::NotSupported { .. }
                | E::NotImplemented { .. }
                | E::UnknownConfigurationKey { .. }
        ),
        _ => false,
    }
}

/// Whether a source URL names a manifest rather than a prefix.
pub fn is_manifest(path: &Path) -> bool {
    let name = path.filename().unwrap_or("");
    name.ends_with(".txt") || name.ends_with(".jsonl")
}

/// Plans a pass from its saved position; returns the number of videos the pass has in total.
#[instrument(skip_all, fields(pass_id = %pass.pass_id))]
async fn plan(
    store: &dyn JobStore,
    replica: &str,
    access: &AccessPolicy,
    pass: &PlanningPass,
) -> Result<u64> {
    let location = objects::open(&pass.spec.source)?;
    let mut writer = BatchWriter {
        store,
        replica,
        pass_id: &pass.pass_id,
        batch: Vec::new(),
    };
    if is_manifest(&location.path) {
        plan_manifest(&location, access, pass.cursor.as_deref(), &mut writer).await?;
    } else {
        plan_prefix(&location, pass.cursor.as_deref(), &mut writer).await?;
    }
    writer.flush(None).await?;
    Ok(store.pass_status(&pass.pass_id, now_ms()).await?.videos)
}

struct BatchWriter<'a> {
    store: &'a dyn JobStore,
    replica: &'a str,
    pass_id: &'a str,
    batch: Vec<NewJob>,
}

impl BatchWriter<'_> {
    async fn push(&mut self, job: NewJob, cursor: &str) -> Result<()> {
        self.batch.push(job);
        if self.batch.len() >= BATCH {
            self.flush(Some(cursor)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, cursor: Option<&str>) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.store
            .add_jobs(self.pass_id, &self.batch, cursor, now)
            .await?;
        self.batch.clear();
        if !self
            .store
            .claim_planning(self.pass_id, self.replica, CLAIM_TTL_MS, now)
            .await?
        {
            return Err(Error::FailedPrecondition(
                "another replica took over planning".into(),
            ));
        }
        Ok(())
    }
}

async fn plan_prefix(
    location: &Location,
    cursor: Option<&str>,
    writer: &mut BatchWriter<'_>,
) -> Result<()> {
    let prefix = (!location.path.as_ref().is_empty()).then_some(&location.path);
    // Cloud stores list in key order, so resuming after the saved key is exact. A local file
    // system lists in directory order, so a resumed plan there starts over (job creation is
    // idempotent, so nothing is duplicated).
    let ordered = matches!(
        location.url.scheme(),
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "memory"
    );
    let mut listing = match cursor {
        Some(cursor) if ordered => location.store.list_with_offset(prefix, &Path::from(cursor)),
        _ => location.store.list(prefix),
    };
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let key = meta.location.as_ref();
        if !objects::is_video_key(key) {
            continue;
        }
        let job = NewJob {
            video_url: objects::url_of(&location.url, &meta.location),
            start_s: 0.0,
            end_s: 0.0,
            size_bytes: meta.size,
            etag: meta.e_tag.or(meta.version),
            probe: true,
        };
        writer.push(job, key).await?;
    }
    Ok(())
}

/// One manifest entry in a `.jsonl` manifest.
#[derive(Debug, serde::Deserialize)]
struct ManifestEntry {
    url: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    etag: Option<String>,
}

async fn plan_manifest(
    location: &Location,
    access: &AccessPolicy,
    cursor: Option<&str>,
    writer: &mut BatchWriter<'_>,
) -> Result<()> {
    let jsonl = location.path.as_ref().ends_with(".jsonl");
    let skip_through: u64 = cursor.and_then(|cursor| cursor.parse().ok()).unwrap_or(0);
    let mut body = location.store.get(&location.path).await?.into_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut line_number = 0u64;
    loop {
        let chunk = body.next().await.transpose()?;
        let at_end = chunk.is_none();
        if let Some(chunk) = chunk {
            pending.extend_from_slice(&chunk);
        }
        let mut start = 0;
        loop {
            let end = match pending[start..].iter().position(|byte| *byte == b'\n') {
                Some(offset) => start + offset,
                None if at_end && start < pending.len() => pending.len(),
                None => break,
            };
            line_number += 1;
            let line = &pending[start..end];
            start = (end + 1).min(pending.len());
            if line_number <= skip_through {
                continue;
            }
            if let Some(job) = manifest_job(location, line, line_number, jsonl)? {
                access
                    .check("manifest entry", &job.video_url)
                    .map_err(|error| match error {
                        Error::PermissionDenied(reason) => Error::PermissionDenied(format!(
                            "manifest {} line {line_number}: {reason}",
                            location.url
                        )),
                        other => other,
                    })?;
                writer.push(job, &line_number.to_string()).await?;
            }
        }
        pending.drain(..start);
        if at_end {
            return Ok(());
        }
        if pending.len() > 1 << 20 {
            return Err(Error::invalid(format!(
                "manifest line {} is longer than 1 MiB",
                line_number + 1
            )));
        }
    }
}

fn manifest_job(
    location: &Location,
    line: &[u8],
    number: u64,
    jsonl: bool,
) -> Result<Option<NewJob>> {
    let manifest = location.url.as_str();
    let text = std::str::from_utf8(line)
        .map_err(|_| Error::invalid(format!("manifest {manifest} line {number} is not utf-8")))?
        .trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let entry = if jsonl {
        serde_json::from_str::<ManifestEntry>(text).map_err(|error| {
            Error::invalid(format!(
                "manifest {manifest} line {number} is not a json entry: {error}"
            ))
        })?
    } else {
        ManifestEntry {
            url: text.to_owned(),
            size: 0,
            etag: None,
        }
    };
    // Entries may be absolute URLs or paths relative to the manifest.
    let resolved = location.url.join(&entry.url).map_err(|error| {
        Error::invalid(format!(
            "manifest {manifest} line {number}: {:?} is not a url: {error}",
            entry.url
        ))
    })?;
    vidx_core::domain::parse_store_url("manifest entry", resolved.as_str())
        .map_err(|error| Error::invalid(format!("manifest {manifest} line {number}: {error}")))?;
    Ok(Some(NewJob {
        video_url: resolved.to_string(),
        start_s: 0.0,
        end_s: 0.0,
        size_bytes: entry.size,
        etag: entry.etag,
        probe: true,
    }))
}
