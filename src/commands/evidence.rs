//! `vidx search` and `vidx report`: command-line front ends over the worker's evidence index.
//!
//! Each subcommand is a clap `Args` struct plus an async function returning what to print, so
//! `main` only has to add them to its subcommand enum.

use std::path::PathBuf;

use anyhow::Context;
use vidx_worker::evidence::report::write_report;
use vidx_worker::evidence::search::format_hits;
use vidx_worker::evidence::search_store::default_cache_dir;
use vidx_worker::evidence::{EvidenceIndex, SearchIndex, SearchQuery};

/// Flags of `vidx search INDEX_URL QUERY [--video V] [--question Q] [--from S] [--to S]
/// [--flagged] [--limit N] [--json]`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Evidence index: `s3://bucket/prefix`, `file:///path` or a local directory.
    #[arg(env = "VIDX_INDEX_URL")]
    pub index_url: String,
    /// Words to find in object names, answers and reasoning (all must match; BM25 ranks them).
    /// `"a phrase"` and `-word` work; an empty query lists what the filters let through.
    pub query: String,
    /// Only this video: its id or its URL.
    #[arg(long)]
    pub video: Option<String>,
    /// Only this question id (`index`, a moderation category's id, ...).
    #[arg(long)]
    pub question: Option<String>,
    /// Only claims at or after this time (seconds), answers whose segment ends at or after it.
    #[arg(long)]
    pub from: Option<f64>,
    /// Only claims at or before this time (seconds), answers whose segment starts at or before it.
    #[arg(long)]
    pub to: Option<f64>,
    /// Only rows whose answer flagged its segment (moderation).
    #[arg(long)]
    pub flagged: bool,
    /// Only rows whose answer did not flag its segment.
    #[arg(long, conflicts_with = "flagged")]
    pub not_flagged: bool,
    /// Print hits as a JSON array instead of tab-separated lines.
    #[arg(long, env = "VIDX_SEARCH_JSON")]
    pub json: bool,
    /// Most hits printed.
    #[arg(long, env = "VIDX_SEARCH_LIMIT", default_value_t = 50)]
    pub limit: usize,
    /// Where the local copy of the search index is kept (default: a folder per index URL under
    /// `$XDG_CACHE_HOME/vidx/search`, or `~/.cache/vidx/search`).
    #[arg(long, env = "VIDX_SEARCH_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

impl SearchArgs {
    /// The engine's query for these flags.
    pub fn to_query(&self) -> SearchQuery {
        SearchQuery {
            text: self.query.clone(),
            video: self.video.clone(),
            question: self.question.clone(),
            from_s: self.from,
            to_s: self.to,
            flagged: match (self.flagged, self.not_flagged) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
            limit: self.limit,
        }
    }
}

/// Runs a search; returns the text to print.
pub async fn search(args: &SearchArgs) -> anyhow::Result<String> {
    let query = args.to_query();
    // Flags are checked before anything is downloaded.
    query.validate()?;
    let index = EvidenceIndex::from_url(&args.index_url)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&args.index_url));
    let (search_index, _) = SearchIndex::open_cached(&index, &cache_dir)
        .await
        .with_context(|| format!("opening the search index of {}", args.index_url))?;
    let hits = tokio::task::spawn_blocking(move || search_index.query(&query)).await??;
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
