//! `vidx fetch-model`: fills a model cache from the Hugging Face hub (with `hf-hub`) and points a
//! fixed directory at the snapshot, so a worker's `--model DIR` names the same path whatever
//! revision was fetched. The chart runs it as the workers' init container over a shared cache
//! volume: a cache that already holds every file of the revision is used without the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use vidx_model::HubOptions;

/// `vidx fetch-model`.
#[derive(Debug, Args)]
pub struct FetchModelArgs {
    /// Hub repository id (`marinero4972/Open-o3-Video`).
    pub hub_id: String,
    /// Git revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// The hub cache directory (hf-hub's layout).
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// The directory to point at the snapshot (a symbolic link, replaced atomically).
    #[arg(long)]
    pub link: PathBuf,
    /// Hub endpoint (default: https://huggingface.co).
    #[arg(long, env = "HF_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Token for gated or private repositories.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up on the whole download after this many seconds.
    #[arg(long, default_value_t = 4 * 3600)]
    pub timeout_secs: u64,
}

/// Downloads (or finds in the cache) and links; prints the snapshot directory.
pub async fn fetch_model(args: FetchModelArgs) -> Result<()> {
    let link_parent = args
        .link
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .context("--link needs a parent directory")?
        .to_path_buf();
    let options = HubOptions {
        revision: args.revision.clone(),
        cache_dir: Some(args.cache_dir.clone()),
        endpoint: args.endpoint.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
        token: args.token.clone().filter(|token| !token.is_empty()),
        ..HubOptions::default()
    };
    let hub_id = args.hub_id.clone();
    let files =
        tokio::task::spawn_blocking(move || vidx_model::loading::download(&hub_id, &options))
            .await?
            .with_context(|| format!("fetching {} at {}", args.hub_id, args.revision))?;
    let snapshot = files
        .config
        .parent()
        .context("the hub cache returned a config.json without a directory")?
        .to_path_buf();
    link_atomically(&snapshot, &args.link, &link_parent)?;
    println!("{}", snapshot.display());
    Ok(())
}

/// Points `link` at `target` with a relative link (the volume may be mounted elsewhere), by
/// renaming a fresh link over the old one, so a reader never finds it missing.
fn link_atomically(target: &Path, link: &Path, link_parent: &Path) -> Result<()> {
    if link.exists() && !link.is_symlink() {
        bail!(
            "{} exists and is not a link: move it away or choose another --link",
            link.display()
        );
    }
    std::fs::create_dir_all(link_parent)
        .with_context(|| format!("creating {}", link_parent.display()))?;
    let relative = relative_to(target, link_parent);
    let staging = link_parent.join(format!(
        ".{}.{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(&relative, &staging)
        .with_context(|| format!("linking {} to {}", staging.display(), relative.display()))?;
    std::fs::rename(&staging, link).with_context(|| format!("replacing {}", link.display()))?;
    Ok(())
}

/// `target` as seen from directory `base`; both are absolute or both relative to the same place.
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let target: Vec<_> = target.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = target
        .iter()
        .zip(&base)
        .take_while(|(left, right)| left == right)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &target[common..] {
        relative.push(component);
    }
    relative
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_to_their_directory() {
        assert_eq!(
            relative_to(
                Path::new("/models/.hub/models--a--b/snapshots/abc"),
                Path::new("/models")
            ),
            Path::new(".hub/models--a--b/snapshots/abc")
        );
        assert_eq!(
            relative_to(Path::new("/cache/x"), Path::new("/models/dir")),
            Path::new("../../cache/x")
        );
    }
}
