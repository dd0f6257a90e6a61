//! How `vidx index` shows its progress: an `indicatif` bar on a terminal, plain log lines
//! otherwise (a CI log, a pipe, a file), both fed the same pass status.
//!
//! The bar counts finished jobs against all jobs planned so far (a long video is one probe job
//! plus one job per segment, so the total grows while planning splits videos), and says how many
//! are done, failed (dead after their retries) and skipped, with the coordinator's rate and ETA.
//! Without a terminal a line is logged whenever the counts change, at most every
//! [`LOG_EVERY`], and always for the last state.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::info;
use vidx_core::domain::PassStatus;

/// Least time between two plain progress lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What one progress update says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IndexCounts {
    /// Jobs planned so far.
    pub total: u64,
    /// Jobs finished, whatever the outcome.
    pub finished: u64,
    /// Jobs done.
    pub done: u64,
    /// Jobs dead after their retries.
    pub failed: u64,
    /// Jobs that completed as skipped (already indexed).
    pub skipped: u64,
    /// Jobs finished per second over the coordinator's recent window.
    pub jobs_per_second: f64,
    /// Seconds left at that rate, when known.
    pub eta_seconds: Option<f64>,
}

impl IndexCounts {
    /// The counts in a pass status.
    pub fn from_status(status: &PassStatus) -> Self {
        Self {
            total: status.counts.total(),
            finished: status.counts.finished(),
            done: status.counts.done,
            failed: status.counts.dead,
            skipped: status.skipped,
            jobs_per_second: status.jobs_per_second,
            eta_seconds: status.eta_seconds,
        }
    }

    fn message(&self) -> String {
        let eta = self
            .eta_seconds
            .map_or_else(|| "eta unknown".to_owned(), |eta| format!("eta {eta:.0}s"));
        format!(
            "{} done, {} failed, {} skipped · {:.2} jobs/s · {eta}",
            self.done, self.failed, self.skipped, self.jobs_per_second
        )
    }
}

enum Display {
    Bar(indicatif::ProgressBar),
    Lines {
        last: Option<(Instant, IndexCounts)>,
    },
}

/// The progress display of one `vidx index` run.
pub struct IndexProgress {
    display: Display,
    latest: IndexCounts,
}

impl IndexProgress {
    /// A bar when stderr is a terminal, plain log lines otherwise.
    pub fn new() -> Result<Self> {
        let display = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} jobs · {msg}",
                )
                .context("progress template")?,
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            Display::Lines { last: None }
        };
        Ok(Self {
            display,
            latest: IndexCounts::default(),
        })
    }

    /// Shows a new pass status.
    pub fn update(&mut self, status: &PassStatus) {
        self.show(IndexCounts::from_status(status));
    }

    /// Shows new counts.
    pub fn show(&mut self, counts: IndexCounts) {
        self.latest = counts;
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_length(counts.total);
                bar.set_position(counts.finished);
                bar.set_message(counts.message());
            }
            Display::Lines { last } => {
                let due = match last {
                    None => true,
                    Some((at, shown)) => *shown != counts && at.elapsed() >= LOG_EVERY,
                };
                if due {
                    log_line(&counts);
                    *last = Some((Instant::now(), counts));
                }
            }
        }
    }

    /// Ends the display: the bar is cleared (the summary follows), and a last plain line is
    /// logged if the latest counts were not.
    pub fn finish(self) {
        match self.display {
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines { last } => {
                if last.is_none_or(|(_, shown)| shown != self.latest) {
                    log_line(&self.latest);
                }
            }
        }
    }
}

fn log_line(counts: &IndexCounts) {
    info!(
        finished = counts.finished,
        total = counts.total,
        done = counts.done,
        failed = counts.failed,
        skipped = counts.skipped,
        jobs_per_second = format_args!("{:.2}", counts.jobs_per_second),
        eta_seconds = counts.eta_seconds.map(|eta| eta.round()),
        "index progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_every_count_and_the_rate() {
        let counts = IndexCounts {
            total: 10,
            finished: 6,
            done: 4,
            failed: 1,
            skipped: 1,
            jobs_per_second: 0.5,
            eta_seconds: Some(8.0),
        };
        assert_eq!(
            counts.message(),
            "4 done, 1 failed, 1 skipped · 0.50 jobs/s · eta 8s"
        );
        let unknown = IndexCounts {
            eta_seconds: None,
            ..counts
        };
        assert!(unknown.message().ends_with("eta unknown"));
    }
}
