//! The client subcommands: `submit`, `status`, `cancel`, `passes`, `jobs`.

use std::time::Duration;

use anyhow::{Context, Result};
use vidx_core::domain::{PassSpec, PassState, PassStatus, Sampling, TaskSpec, collect_pages};
use vidx_core::objects::normalize;

use crate::cli::{CancelArgs, JobsArgs, PassArgs, PassesArgs, StatusArgs, SubmitArgs};

impl PassArgs {
    /// The pass this submission describes.
    pub fn spec(&self) -> Result<PassSpec> {
        let task = if let Some(policy) = &self.policy {
            let policy_yaml = std::fs::read_to_string(policy)
                .with_context(|| format!("cannot read policy {}", policy.display()))?;
            TaskSpec::Moderation { policy_yaml }
        } else if !self.question.is_empty() {
            TaskSpec::Questions {
                questions: self.question.clone(),
            }
        } else {
            TaskSpec::Index {
                prompt: self.prompt.clone(),
            }
        };
        let spec = PassSpec {
            source: normalize(&self.source)?,
            destination: normalize(&self.out)?,
            task,
            sampling: Sampling {
                fps: self.fps,
                max_frames: self.max_frames,
                segment_secs: self.segment_secs,
            },
            idempotency_key: self.idempotency_key.clone(),
            max_attempts: self.max_attempts,
            verify: self.verify_setting(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `vidx submit`: prints the pass id.
pub async fn submit(args: SubmitArgs) -> Result<()> {
    let spec = args.pass.spec()?;
    let client = args.client.connect().await?;
    let created = client.submit(&spec).await?;
    println!("{}", created.pass_id);
    Ok(())
}

fn is_over(state: PassState) -> bool {
    matches!(
        state,
        PassState::Finished | PassState::Cancelled | PassState::Failed
    )
}

/// Renders a status for people.
pub fn render(status: &PassStatus) -> String {
    use std::fmt::Write;
    let counts = &status.counts;
    let mut out = String::new();
    let _ = writeln!(out, "pass         {}  {}", status.pass_id, status.state);
    let _ = writeln!(out, "source       {}", status.spec.source);
    let _ = writeln!(out, "destination  {}", status.spec.destination);
    let _ = writeln!(out, "videos       {}", status.videos);
    let _ = writeln!(
        out,
        "jobs         {} total: {} done, {} leased, {} pending, {} retrying, {} dead, {} cancelled",
        counts.total(),
        counts.done,
        counts.leased,
        counts.pending,
        counts.failed,
        counts.dead,
        counts.cancelled
    );
    let eta = match status.eta_seconds {
        Some(eta) => format!("{eta:.0}s"),
        None => "unknown".to_owned(),
    };
    let _ = writeln!(
        out,
        "throughput   {:.2} jobs/s, eta {eta}",
        status.jobs_per_second
    );
    if status.skipped > 0 {
        let _ = writeln!(
            out,
            "skipped      {} of the done (indexed already, no video read)",
            status.skipped
        );
    }
    if status.released > 0 {
        let _ = writeln!(
            out,
            "released     {} (handed back unfinished)",
            status.released
        );
    }
    if let Some(error) = &status.planning_error {
        let _ = writeln!(out, "planning     failed: {error}");
    }
    if !status.recent_errors.is_empty() {
        let _ = writeln!(out, "recent errors");
        for error in &status.recent_errors {
            let _ = writeln!(
                out,
                "  {}  {}: {}",
                error.job_id, error.video_url, error.reason
            );
        }
    }
    out
}

/// `vidx status`.
pub async fn status(args: StatusArgs) -> Result<()> {
    let client = args.client.connect().await?;
    let mut status = client.status(&args.pass_id).await?;
    if args.watch {
        let bar = indicatif::ProgressBar::new(status.counts.total());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} jobs  {msg}",
            )
            .context("progress template")?,
        );
        // Bounded by the pass ending; a pass cannot run forever without a user cancelling it.
        while !is_over(status.state) {
            let counts = status.counts;
            bar.set_length(counts.total());
            bar.set_position(counts.finished());
            bar.set_message(format!(
                "{}: {} leased, {} pending, {} retrying, {} dead, {:.1} jobs/s",
                status.state,
                counts.leased,
                counts.pending,
                counts.failed,
                counts.dead,
                status.jobs_per_second
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
            status = client.status(&args.pass_id).await?;
        }
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// `vidx cancel`.
pub async fn cancel(args: CancelArgs) -> Result<()> {
    let client = args.client.connect().await?;
    let status = client.cancel(&args.pass_id).await?;
    print!("{}", render(&status));
    Ok(())
}

/// `vidx passes`.
pub async fn passes(args: PassesArgs) -> Result<()> {
    let client = args.client.connect().await?;
    let passes = collect_pages(args.limit as usize, |token, page_size| {
        client.list_passes(page_size, token)
    })
    .await?;
    for status in &passes {
        if args.json {
            println!("{}", serde_json::to_string(status)?);
        } else {
            println!(
                "{}  {:<9}  {:>6}/{:<6} done  {}",
                status.pass_id,
                status.state.as_str(),
                status.counts.done,
                status.counts.total(),
                status.spec.source
            );
        }
    }
    Ok(())
}

/// `vidx jobs`.
pub async fn jobs(args: JobsArgs) -> Result<()> {
    let client = args.client.connect().await?;
    let jobs = client
        .jobs(&args.pass_id, args.state, args.limit as usize)
        .await?;
    for job in &jobs {
        if args.json {
            println!("{}", serde_json::to_string(job)?);
        } else {
            println!(
                "{}  {:<9}  attempt {}  crashes {}  {} [{}, {}]  {}",
                job.job_id,
                job.state.as_str(),
                job.attempt,
                job.crashes,
                job.spec.video_url,
                job.spec.start_s,
                job.spec.end_s,
                job.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
