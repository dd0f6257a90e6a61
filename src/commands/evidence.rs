//! `vidx search` and `vidx report`: command-line front ends over the worker's evidence index.
//!
//! Each subcommand is a clap `Args` struct plus an async function returning what to print, so
//! `main` only has to add them to its subcommand enum.

use std::path::PathBuf;

use anyhow::Context;
use vidx_worker::evidence::report::write_report;
use vidx_worker::evidence::search::format_hits;
use vidx_worker::evidence::{EvidenceIndex, SearchIndex};

/// Flags of `vidx search INDEX_URL QUERY [--json]`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Evidence index: `s3://bucket/prefix`, `file:///path` or a local directory.
    #[arg(env = "VIDX_INDEX_URL")]
    pub index_url: String,
    /// Words to find in object names, answers and reasoning (all must match).
    pub query: String,
    /// Print hits as a JSON array instead of tab-separated lines.
    #[arg(long, env = "VIDX_SEARCH_JSON")]
    pub json: bool,
    /// Most hits printed.
    #[arg(long, env = "VIDX_SEARCH_LIMIT", default_value_t = 50)]
    pub limit: usize,
}

/// Runs a search; returns the text to print.
pub async fn search(args: &SearchArgs) -> anyhow::Result<String> {
    let index = EvidenceIndex::from_url(&args.index_url)?;
    let search_index = SearchIndex::load(&index)
        .await
        .with_context(|| format!("reading the tables of {}", args.index_url))?;
    let hits = search_index.search(&args.query, args.limit);
    if args.json {
        return Ok(serde_json::to_string_pretty(&hits)? + "\n");
    }
    Ok(format_hits(&hits))
}

/// Flags of `vidx report INDEX_URL --out report.html`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Evidence index: `s3://bucket/prefix`, `file:///path` or a local directory.
    #[arg(env = "VIDX_INDEX_URL")]
    pub index_url: String,
    /// Where to write the HTML page.
    #[arg(long, env = "VIDX_REPORT_OUT", default_value = "report.html")]
    pub out: PathBuf,
}

/// Writes the report; returns a line saying where.
pub async fn report(args: &ReportArgs) -> anyhow::Result<String> {
    let index = EvidenceIndex::from_url(&args.index_url)?;
    let counts = write_report(&index, &args.out).await.with_context(|| {
        format!(
            "writing the report of {} to {}",
            args.index_url,
            args.out.display()
        )
    })?;
    Ok(format!(
        "report of {} videos and {} failed written to {}\n",
        counts.videos,
        counts.failed,
        args.out.display()
    ))
}
