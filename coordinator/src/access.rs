//! Where a pass may read and write: the prefixes a coordinator allows (`--allow-prefix`).
//!
//! A coordinator in a cluster runs its workers with the cluster's object-store credentials and a
//! pod file system, so whoever can submit a pass could otherwise make workers read any bucket
//! those credentials reach, or any path in the pod (service-account tokens included), and write
//! an index wherever they like. Every source, destination and manifest entry is checked here,
//! once, before it becomes a pass or a job. With no prefixes configured every cloud URL is
//! allowed; `file://` is never allowed by default, only under a `file://` prefix given
//! explicitly.
//!
//! Matching is on the parsed URL (scheme, bucket or host, port, then path), so `s3://media/a/`
//! never covers `s3://media-private/` or `s3://media/ab/`. Paths whose segments could be read as
//! something else by a store (`..`, encoded slashes or backslashes) are refused outright.

use std::fmt;
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};
use vidx_core::domain::{PassSpec, parse_store_url};

/// One allowed prefix: a parsed URL whose path ends with `/` (a directory-like prefix).
#[derive(Debug, Clone, PartialEq)]
struct AllowedPrefix {
    url: Url,
}

impl AllowedPrefix {
    fn parse(raw: &str) -> Result<Self> {
        let mut url = parse_store_url("allowed prefix", raw)?;
        refuse_ambiguous_path(&url).map_err(|reason| {
            Error::invalid(format!("allowed prefix {raw:?} is ambiguous: {reason}"))
        })?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::invalid(format!(
                "allowed prefix {raw:?} has a query or fragment"
            )));
        }
        // A prefix names a directory: `s3://media/videos` covers `s3://media/videos/…`, not
        // `s3://media/videos2/…`.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self { url })
    }

    fn covers(&self, url: &Url) -> bool {
        if url.scheme() != self.url.scheme()
            || url.host_str() != self.url.host_str()
            || url.port() != self.url.port()
            || url.username() != self.url.username()
        {
            return false;
        }
        let prefix = self.url.path();
        let path = url.path();
        path.starts_with(prefix) || path == prefix.trim_end_matches('/')
    }
}

impl fmt::Display for AllowedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Refuses paths that a store might resolve differently from how they read: dot segments left
/// after parsing and percent-encoded separators.
fn refuse_ambiguous_path(url: &Url) -> std::result::Result<(), &'static str> {
    let path = url.path().to_ascii_lowercase();
    if path.contains("%2f") || path.contains("%5c") || path.contains('\\') {
        return Err("it has an encoded slash or a backslash");
    }
    if path
        .split('/')
        .any(|segment| segment == ".." || segment == "." || segment == "%2e%2e")
    {
        return Err("it has a dot segment");
    }
    Ok(())
}

/// The prefixes passes may read from and write to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `None`: no restriction at all (in-process use and tests). `Some(empty)`: every cloud
    /// URL, no local files. `Some(prefixes)`: only under those.
    prefixes: Option<Arc<Vec<AllowedPrefix>>>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self::unrestricted()
    }
}

impl AccessPolicy {
    /// Allows everything, local files included: for a coordinator embedded in a process whose
    /// user already chose every URL (and for tests).
    pub fn unrestricted() -> Self {
        Self { prefixes: None }
    }

    /// Allows only URLs under `prefixes`; with none, every cloud URL but no `file://` URL.
    pub fn from_prefixes<S: AsRef<str>>(prefixes: impl IntoIterator<Item = S>) -> Result<Self> {
        let prefixes = prefixes
            .into_iter()
            .map(|raw| AllowedPrefix::parse(raw.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            prefixes: Some(Arc::new(prefixes)),
        })
    }

    /// Allows what a pass names itself: its source (for a manifest, the prefix it sits in, so
    /// that relative entries resolve) and its destination. `vidx index` runs with this.
    pub fn for_own_arguments(spec: &PassSpec) -> Result<Self> {
        let source = parse_store_url("source", &spec.source)?;
        let source_path = object_store::path::Path::from_url_path(source.path())
            .map_err(|error| Error::invalid(format!("source {:?}: {error}", spec.source)))?;
        let source_prefix = if crate::planner::is_manifest(&source_path) {
            source
                .join("./")
                .map_err(|error| Error::invalid(format!("source {:?}: {error}", spec.source)))?
        } else {
            source
        };
        Self::from_prefixes([source_prefix.as_str(), spec.destination.as_str()])
    }

    /// The prefixes, as given (normalized); empty when unrestricted or open to every cloud URL.
    pub fn prefixes(&self) -> Vec<String> {
        self.prefixes
            .iter()
            .flat_map(|prefixes| prefixes.iter().map(ToString::to_string))
            .collect()
    }

    /// Whether `raw` (a `what`: source, destination, manifest entry) may be read or written;
    /// `PermissionDenied` naming the allowed prefixes when not.
    pub fn check(&self, what: &str, raw: &str) -> Result<()> {
        let Some(prefixes) = &self.prefixes else {
            return Ok(());
        };
        let url = parse_store_url(what, raw)?;
        if let Err(reason) = refuse_ambiguous_path(&url) {
            return Err(Error::PermissionDenied(format!(
                "{what} {raw} is refused: {reason}"
            )));
        }
        if prefixes.is_empty() {
            if url.scheme() == "file" {
                return Err(Error::PermissionDenied(format!(
                    "{what} {raw} is a local path; this coordinator reads and writes local files \
                     only under a file:// prefix given with --allow-prefix"
                )));
            }
            return Ok(());
        }
        if prefixes.iter().any(|prefix| prefix.covers(&url)) {
            return Ok(());
        }
        let allowed = prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::PermissionDenied(format!(
            "{what} {raw} is outside the allowed prefixes ({allowed})"
        )))
    }

    /// Checks a pass's source and destination.
    pub fn check_spec(&self, spec: &PassSpec) -> Result<()> {
        self.check("source", &spec.source)?;
        self.check("destination", &spec.destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(policy: &AccessPolicy, url: &str) -> String {
        match policy.check("source", url) {
            Err(Error::PermissionDenied(message)) => message,
            other => panic!("{url}: expected permission denied, got {other:?}"),
        }
    }

    #[test]
    fn prefixes_cover_only_what_lies_under_them() {
        let policy =
            AccessPolicy::from_prefixes(["s3://media/videos", "gs://other/index/"]).unwrap();
        for allowed in [
            "s3://media/videos/",
            "s3://media/videos",
            "s3://media/videos/a/b.mp4",
            "gs://other/index/x",
        ] {
            policy.check("source", allowed).unwrap();
        }
        for (outside, prefix_named) in [
            ("s3://media/videos2/a.mp4", "s3://media/videos/"),
            ("s3://media-private/videos/a.mp4", "gs://other/index/"),
            ("s3://media/", "s3://media/videos/"),
            ("gs://media/videos/a.mp4", "s3://media/videos/"),
            ("file:///media/videos/a.mp4", "s3://media/videos/"),
        ] {
            let message = denied(&policy, outside);
            assert!(message.contains(outside), "{message}");
            assert!(message.contains(prefix_named), "{message}");
        }
    }

    #[test]
    fn dot_segments_cannot_climb_out_of_a_prefix() {
        let policy = AccessPolicy::from_prefixes(["s3://media/videos/"]).unwrap();
        // The URL parser resolves these; what is left lies outside the prefix.
        denied(&policy, "s3://media/videos/../secret/");
        denied(&policy, "s3://media/videos/%2e%2e/secret/");
        denied(&policy, "s3://media/videos/a%2F..%2F..%2Fsecret");
        denied(&policy, "s3://media/videos/a%5csecret");
        assert!(AccessPolicy::from_prefixes(["s3://media/a%2fb/"]).is_err());
    }

    #[test]
    fn local_files_need_an_explicit_prefix() {
        let clouds_only = AccessPolicy::from_prefixes(Vec::<String>::new()).unwrap();
        clouds_only.check("source", "s3://any/bucket/").unwrap();
        clouds_only.check("source", "az://container/x").unwrap();
        let message = denied(&clouds_only, "file:///var/run/secrets/");
        assert!(message.contains("--allow-prefix"), "{message}");

        let local = AccessPolicy::from_prefixes(["file:///data/"]).unwrap();
        local.check("source", "file:///data/videos/").unwrap();
        denied(&local, "file:///etc/passwd");
        denied(&local, "s3://media/");
        AccessPolicy::unrestricted()
            .check("source", "file:///anything")
            .unwrap();
    }

    #[test]
    fn a_pass_may_use_its_own_arguments() {
        let spec = |source: &str, destination: &str| PassSpec {
            source: source.into(),
            destination: destination.into(),
            task: vidx_core::domain::TaskSpec::default(),
            sampling: vidx_core::domain::Sampling::default(),
            idempotency_key: None,
            max_attempts: 3,
            verify: None,
        };
        let policy =
            AccessPolicy::for_own_arguments(&spec("file:///data/in/", "file:///data/out/"))
                .unwrap();
        policy.check("source", "file:///data/in/a.mp4").unwrap();
        policy.check("destination", "file:///data/out/").unwrap();
        denied(&policy, "file:///data/other/a.mp4");
        // A manifest's entries resolve next to it.
        let policy =
            AccessPolicy::for_own_arguments(&spec("s3://m/lists/today.txt", "s3://m/out/"))
                .unwrap();
        policy
            .check("manifest entry", "s3://m/lists/a.mp4")
            .unwrap();
        denied(&policy, "s3://m/private/a.mp4");
    }
}
