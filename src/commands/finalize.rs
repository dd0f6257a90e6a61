//! Finalizing a pass: its manifest (one line per video: indexed, skipped or failed with stage
//! and reason) and its table parts. Three callers: `vidx index` at the end of its pass, every
//! `vidx coordinator` replica's [`run_finalizer`] loop (automatic, exactly one replica per pass
//! through the store's finalization claim), and `vidx finalize` to run it again by hand.
//!
//! Finalizing is safe to repeat: the manifest and the pass's table parts have fixed keys, so a
//! second run (after a crash halfway, or by hand) overwrites them with the same content. It is
//! not safe to run twice at once (two writers of the search index delete each other's files),
//! so the replicas and `vidx finalize` alike write only while they hold the claim.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::FinalizeClaim;
use vidx_core::client::CoordinatorClient;
use vidx_core::domain::{Job, JobState, PassState, PassStatus, collect_pages, now_ms};
use vidx_worker::evidence::store::{DOCUMENT_FILE, OutcomeStatus};
use vidx_worker::evidence::{EvidenceIndex, ModelInfo, PassManifest};
use vidx_worker::video_job::pass_plan;

use crate::cli::FinalizeArgs;

/// Documents read at once while deciding indexed or skipped.
const READ_CONCURRENCY: usize = 16;
/// How often a replica looks for finished passes to finalize.
const FINALIZER_PERIOD: Duration = Duration::from_secs(2);
/// How long a finalization claim lasts unless renewed. Its holder renews it every third of that
/// while it writes (see [`holding_claim`]), so one that crashes holds the pass up this long.
const FINALIZE_CLAIM_MS: i64 = 60 * 1_000;
/// [`FINALIZE_CLAIM_MS`] as a duration.
const FINALIZE_CLAIM: Duration = Duration::from_millis(FINALIZE_CLAIM_MS.unsigned_abs());
/// Newest passes a finalizer looks at per round.
const FINALIZER_PASSES: u32 = 100;
/// Every this many rounds (and in a replica's first), the finalizer pages through every pass,
/// not only the newest: a pass that finished behind [`FINALIZER_PASSES`] newer ones is
/// finalized within about 5 minutes.
const SWEEP_EVERY_ROUNDS: u32 = 150;
/// How often `vidx finalize` asks again while another holder finalizes the pass.
const CLAIM_POLL: Duration = Duration::from_secs(1);
/// How long `vidx finalize` waits for another holder, which renews its claim for as long as it
/// writes (a pass of millions of videos takes a while), or for an unavailable coordinator.
const RERUN_PATIENCE: Duration = Duration::from_secs(60 * 60);

/// Where one video of a pass ended up, from its jobs.
enum VideoResult {
    /// Its document's key.
    Document(String),
    /// It failed at this stage for this reason.
    Failed { stage: String, reason: String },
}

/// Splits a job's error (`probe: not a video`) into its stage and reason.
fn stage_and_reason(error: &str) -> (String, String) {
    match error.split_once(": ") {
        Some((stage, reason))
            if !stage.is_empty()
                && stage.len() <= 24
                && stage.chars().all(|c| c.is_ascii_lowercase() || c == ' ') =>
        {
            (stage.to_owned(), reason.to_owned())
        }
        _ => ("job".to_owned(), error.to_owned()),
    }
}

/// The key of a video document next to one of its segment parts or thumbnails
/// (`videos/V/R/parts/s0001.json` gives `videos/V/R/evidence.json`).
fn document_key_of(result_key: &str) -> String {
    if result_key.ends_with(DOCUMENT_FILE) {
        return result_key.to_owned();
    }
    let mut parts: Vec<&str> = result_key.split('/').collect();
    parts.truncate(parts.len().saturating_sub(2));
    parts.push(DOCUMENT_FILE);
    parts.join("/")
}

/// One video's result from all its jobs (its probe job, and its segment jobs if it was split).
fn video_result(jobs: &[&Job]) -> VideoResult {
    if let Some(dead) = jobs.iter().find(|job| job.state == JobState::Dead) {
        let (stage, reason) = stage_and_reason(dead.last_error.as_deref().unwrap_or("job: failed"));
        return VideoResult::Failed { stage, reason };
    }
    if jobs.iter().any(|job| job.state == JobState::Cancelled) {
        return VideoResult::Failed {
            stage: "cancelled".into(),
            reason: "pass cancelled".into(),
        };
    }
    if let Some(open) = jobs.iter().find(|job| job.state != JobState::Done) {
        return VideoResult::Failed {
            stage: "unfinished".into(),
            reason: format!("job still {}", open.state),
        };
    }
    // A designated segment reports the video document; any other job names its part.
    let keys: Vec<&String> = jobs
        .iter()
        .filter_map(|job| job.result_url.as_ref())
        .collect();
    match keys
        .iter()
        .find(|key| key.ends_with(DOCUMENT_FILE))
        .or(keys.first())
    {
        Some(key) => VideoResult::Document(document_key_of(key)),
        None => VideoResult::Failed {
            stage: "job".into(),
            reason: "done without a result".into(),
        },
    }
}

/// Writes the manifest (every video's outcome: indexed by this pass, skipped because an earlier
/// pass indexed it, or failed with its stage and reason) and the pass's table parts. The model
/// recorded is the one the workers wrote in the documents; `fallback_model` only when no
/// document was written.
pub async fn finalize_pass(
    status: &PassStatus,
    jobs: &[Job],
    fallback_model: ModelInfo,
) -> Result<PassManifest> {
    let task = pass_plan(&status.spec).context("the pass's task")?;
    let index = EvidenceIndex::from_url(&status.spec.destination)?;
    let mut order: Vec<&str> = Vec::new();
    let mut by_video: HashMap<&str, Vec<&Job>> = HashMap::new();
    for job in jobs {
        let url = job.spec.video_url.as_str();
        by_video
            .entry(url)
            .or_insert_with(|| {
                order.push(url);
                Vec::new()
            })
            .push(job);
    }
    let results: Vec<(String, VideoResult)> = order
        .iter()
        .map(|url| ((*url).to_owned(), video_result(&by_video[url])))
        .collect();
    // Who wrote each document decides indexed or skipped; the documents also name the model.
    let index_ref = &index;
    let outcomes: Vec<(String, OutcomeStatus, Option<ModelInfo>)> = futures::stream::iter(results)
        .map(|(url, result)| async move {
            let (stage, reason) = match result {
                VideoResult::Failed { stage, reason } => {
                    return (url, OutcomeStatus::Failed { stage, reason }, None);
                }
                VideoResult::Document(key) => match index_ref.read_document_at(&key).await {
                    Ok(document) => {
                        let model = ModelInfo {
                            device: None,
                            dtype: None,
                            ..document.model
                        };
                        let status = if document.pass_id.as_deref() == Some(status.pass_id.as_str())
                        {
                            OutcomeStatus::Indexed { document_key: key }
                        } else {
                            OutcomeStatus::Skipped { document_key: key }
                        };
                        return (url, status, Some(model));
                    }
                    Err(error) => ("write".to_owned(), format!("{key}: {error}")),
                },
            };
            (url, OutcomeStatus::Failed { stage, reason }, None)
        })
        .buffered(READ_CONCURRENCY)
        .collect()
        .await;
    let model = outcomes
        .iter()
        .find_map(|(_, _, model)| model.clone())
        .unwrap_or(fallback_model);
    let mut manifest = PassManifest::new(status.pass_id.clone(), model, &task);
    for (url, outcome, _) in outcomes {
        manifest.record(url, outcome);
    }
    Ok(index.finish_pass(manifest).await?)
}

/// Every job of a pass, from the coordinator in process.
pub async fn all_jobs(coordinator: &Coordinator, pass_id: &str) -> Result<Vec<Job>> {
    Ok(collect_pages(usize::MAX, |token, page_size| async move {
        coordinator
            .list_jobs(pass_id, None, page_size, token.as_deref())
            .await
    })
    .await?)
}

/// The model recorded when no document names one.
fn unknown_model(id: String, revision: String) -> ModelInfo {
    ModelInfo {
        id,
        revision,
        device: None,
        dtype: None,
    }
}

/// Finalizes every finished pass once, from any number of coordinator replicas: each round
/// looks at the newest passes (every [`SWEEP_EVERY_ROUNDS`] rounds, at all of them), takes the
/// store's finalization claim for a finished one, writes its manifest and table parts, and marks
/// it finalized. A replica that dies halfway loses its claim when it runs out, and another
/// replica finalizes the pass again from the start.
pub async fn run_finalizer(coordinator: Coordinator, replica: String, shutdown: CancellationToken) {
    let mut finalized: HashSet<String> = HashSet::new();
    let mut round: u32 = 0;
    loop {
        let scope = if round.is_multiple_of(SWEEP_EVERY_ROUNDS) {
            Scope::Every
        } else {
            Scope::Newest
        };
        round = round.wrapping_add(1);
        if let Err(error) = finalize_round(&coordinator, &replica, &mut finalized, scope).await {
            warn!(%error, "finalizer round failed, will retry");
        }
        tokio::select! {
            () = tokio::time::sleep(FINALIZER_PERIOD) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Which passes a finalizer round looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The newest [`FINALIZER_PASSES`].
    Newest,
    /// All of them, a page of [`FINALIZER_PASSES`] at a time.
    Every,
}

async fn finalize_round(
    coordinator: &Coordinator,
    replica: &str,
    finalized: &mut HashSet<String>,
    scope: Scope,
) -> Result<()> {
    let mut token: Option<String> = None;
    loop {
        let page = coordinator
            .list_passes(FINALIZER_PASSES, token.as_deref())
            .await?;
        for status in page.items {
            let pass_id = status.pass_id.clone();
            // One pass that cannot be finalized now (expired meanwhile, a failing listing)
            // does not hold up the passes after it.
            if let Err(error) = finalize_if_finished(coordinator, replica, finalized, status).await
            {
                warn!(%pass_id, error = format!("{error:#}"), "cannot finalize pass");
            }
        }
        token = page.next;
        if scope == Scope::Newest || token.is_none() {
            return Ok(());
        }
    }
}

/// Finalizes one pass if it is finished and no replica finalized it yet.
async fn finalize_if_finished(
    coordinator: &Coordinator,
    replica: &str,
    finalized: &mut HashSet<String>,
    status: PassStatus,
) -> Result<()> {
    if status.state != PassState::Finished || finalized.contains(&status.pass_id) {
        return Ok(());
    }
    let pass_id = status.pass_id.clone();
    let claim = coordinator
        .store()
        .claim_finalization(&pass_id, replica, false, FINALIZE_CLAIM_MS, now_ms())
        .await?;
    match claim {
        FinalizeClaim::Done => {
            finalized.insert(pass_id);
            return Ok(());
        }
        FinalizeClaim::Busy => return Ok(()),
        FinalizeClaim::Claimed => {}
    }
    let renew = || {
        coordinator.store().claim_finalization(
            &pass_id,
            replica,
            false,
            FINALIZE_CLAIM_MS,
            now_ms(),
        )
    };
    let write = async {
        let jobs = all_jobs(coordinator, &pass_id).await?;
        let fallback = unknown_model("unknown".into(), "unknown".into());
        finalize_pass(&status, &jobs, fallback).await
    };
    match holding_claim(FINALIZE_CLAIM, renew, write).await {
        Ok(manifest) => {
            coordinator.store().finish_finalization(&pass_id).await?;
            info!(
                %pass_id,
                videos = manifest.videos.len(),
                indexed = manifest.indexed,
                skipped = manifest.skipped,
                failed = manifest.failed,
                "pass finalized"
            );
            finalized.insert(pass_id);
        }
        // The claim runs out and this or another replica tries again.
        Err(error) => warn!(%pass_id, error = format!("{error:#}"), "cannot finalize pass"),
    }
    Ok(())
}

/// Runs `work` while renewing its finalization claim through `renew` every third of `ttl`. When
/// the claim is lost (another holder has it, or renewals kept failing until it may have run
/// out), the work is dropped unfinished, as a crash would stop it, so two holders never write
/// at once; the next holder writes everything again.
async fn holding_claim<T, E, R, RF>(
    ttl: Duration,
    renew: R,
    work: impl Future<Output = Result<T>>,
) -> Result<T>
where
    E: std::fmt::Display,
    R: Fn() -> RF,
    RF: Future<Output = std::result::Result<FinalizeClaim, E>>,
{
    let every = ttl / 3;
    let renewing = async {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match renew().await {
                Ok(FinalizeClaim::Claimed) => renewed = tokio::time::Instant::now(),
                Ok(other) => {
                    return anyhow::anyhow!("lost the finalization claim (it answered {other:?})");
                }
                // One more try fits in the claim's lifetime.
                Err(error) if renewed.elapsed() + every < ttl => {
                    warn!(%error, "cannot renew the finalization claim; trying again");
                }
                Err(error) => {
                    return anyhow::anyhow!(
                        "cannot renew the finalization claim before it runs out: {error}"
                    );
                }
            }
        }
    };
    tokio::select! {
        result = work => result,
        error = renewing => Err(error),
    }
}

/// Takes the pass's finalization claim for a re-run as `holder`, waiting (up to
/// [`RERUN_PATIENCE`]) while another holder has it or the coordinator is unavailable.
async fn claim_to_finalize_again(
    client: &CoordinatorClient,
    pass_id: &str,
    holder: &str,
) -> Result<()> {
    let ttl = FINALIZE_CLAIM_MS.unsigned_abs();
    let started = std::time::Instant::now();
    let patience = RERUN_PATIENCE;
    let mut said = false;
    loop {
        match client.claim_finalization(pass_id, holder, true, ttl).await {
            Ok(FinalizeClaim::Claimed) => return Ok(()),
            // A claim that asks again is never answered done; treat it as busy all the same.
            Ok(FinalizeClaim::Busy | FinalizeClaim::Done) => {
                if !said {
                    eprintln!(
                        "pass {pass_id} is being finalized now (by a coordinator replica or \
                         another vidx finalize); waiting for it"
                    );
                    said = true;
                }
            }
            Err(error) if error.is_transient() && started.elapsed() < patience => {
                eprintln!("coordinator unavailable ({error}); trying again");
            }
            Err(error) => return Err(error.into()),
        }
        if started.elapsed() > patience {
            bail!(
                "pass {pass_id} is still being finalized by another holder after {} s; \
                 try again later",
                started.elapsed().as_secs()
            );
        }
        tokio::time::sleep(CLAIM_POLL).await;
    }
}

/// `vidx finalize`: writes a finished pass's manifest and table parts again.
pub async fn finalize(args: FinalizeArgs) -> Result<()> {
    let client = args.client.connect().await?;
    let status = client.status(&args.pass_id).await?;
    if !matches!(
        status.state,
        PassState::Finished | PassState::Cancelled | PassState::Failed
    ) {
        bail!(
            "pass {} is {}: finalize it once it has finished",
            args.pass_id,
            status.state
        );
    }
    let holder = format!("vidx-finalize-{}", uuid::Uuid::new_v4().simple());
    claim_to_finalize_again(&client, &args.pass_id, &holder).await?;
    let ttl = FINALIZE_CLAIM_MS.unsigned_abs();
    let renew = || client.claim_finalization(&args.pass_id, &holder, true, ttl);
    let write = async {
        let jobs = client.jobs(&args.pass_id, None, usize::MAX).await?;
        let fallback = unknown_model(args.model_id, args.model_revision);
        finalize_pass(&status, &jobs, fallback).await
    };
    let manifest = holding_claim(FINALIZE_CLAIM, renew, write).await?;
    client.finish_finalization(&args.pass_id).await?;
    println!(
        "{} videos: {} indexed, {} skipped, {} failed; manifest and tables written under {}",
        manifest.videos.len(),
        manifest.indexed,
        manifest.skipped,
        manifest.failed,
        status.spec.destination
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use vidx_coordinator::metrics::Metrics;
    use vidx_coordinator::store::{JobStore, LeaseRequest, MemoryStore, RetryPolicy};
    use vidx_core::domain::{FailureKind, NewJob, PassSpec, Sampling, TaskSpec};

    fn spec(destination: String) -> PassSpec {
        PassSpec {
            source: "file:///corpus/".into(),
            destination,
            task: TaskSpec::Index { prompt: None },
            sampling: Sampling::default(),
            idempotency_key: None,
            max_attempts: 1,
            verify: None,
        }
    }

    /// The holder renews its claim while it writes: when a renewal says another holder has it,
    /// the write stops unfinished; renewals that keep failing stop it before the claim could run
    /// out; work that ends first returns its own result.
    #[tokio::test]
    async fn losing_the_claim_stops_the_write() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let ttl = Duration::from_millis(90);
        let renewals = AtomicU32::new(0);
        let renew = || {
            let n = renewals.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, String>(if n < 2 {
                    FinalizeClaim::Claimed
                } else {
                    FinalizeClaim::Busy
                })
            }
        };
        let error = holding_claim(ttl, renew, std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("lost the finalization claim"),
            "{error}"
        );
        assert_eq!(renewals.load(Ordering::SeqCst), 3);

        let failing = || async { Err::<FinalizeClaim, _>("coordinator unavailable") };
        let error = holding_claim(ttl, failing, std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("before it runs out"), "{error}");

        let claimed = || async { Ok::<_, String>(FinalizeClaim::Claimed) };
        let written = holding_claim(ttl, claimed, async { Ok(7) }).await.unwrap();
        assert_eq!(written, 7);
    }

    /// A pass that finished behind a full page of newer passes is out of a round over the
    /// newest, and a sweep over every pass finalizes it, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_finalizes_a_pass_behind_a_page_of_newer_ones() {
        let out = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new(RetryPolicy::default()));
        let coordinator = Coordinator::new(store.clone(), Metrics::new());
        let now = now_ms();
        let old = store
            .create_pass(&spec(format!("file://{}/", out.path().display())), now)
            .await
            .unwrap()
            .pass_id;
        let video = NewJob {
            video_url: "file:///corpus/broken.mp4".into(),
            start_s: 0.0,
            end_s: 0.0,
            size_bytes: 1,
            etag: None,
            probe: true,
        };
        store.add_jobs(&old, &[video], None, now).await.unwrap();
        store.finish_planning(&old, None).await.unwrap();
        let request = LeaseRequest {
            worker_id: "w".into(),
            max_jobs: 1,
            lease_ms: 60_000,
        };
        let leased = store.lease(&request, now).await.unwrap().remove(0);
        store
            .fail(
                &leased.job.job_id,
                &leased.lease_id,
                "probe: not a video",
                FailureKind::Permanent,
                now,
            )
            .await
            .unwrap();
        // Pass ids sort by creation time: the newer passes all list before the old one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        for _ in 0..FINALIZER_PASSES {
            let elsewhere = tempfile::tempdir().unwrap();
            let spec = spec(format!("file://{}/", elsewhere.path().display()));
            store.create_pass(&spec, now).await.unwrap();
        }

        let manifest = out.path().join("manifest.json");
        let mut finalized = HashSet::new();
        finalize_round(&coordinator, "replica", &mut finalized, Scope::Newest)
            .await
            .unwrap();
        assert!(!manifest.exists(), "the old pass is not among the newest");
        finalize_round(&coordinator, "replica", &mut finalized, Scope::Every)
            .await
            .unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        assert_eq!(written["pass_id"], old.as_str());
        assert_eq!(written["failed"], 1, "{written}");
        assert!(finalized.contains(&old));
        let claim = store
            .claim_finalization(&old, "another", false, FINALIZE_CLAIM_MS, now_ms())
            .await
            .unwrap();
        assert_eq!(claim, FinalizeClaim::Done);
    }
}
