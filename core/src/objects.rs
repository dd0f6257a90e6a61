//! Opening object stores from URLs: `s3://`, `gs://`, `az://`/`abfs://`, `file://` and
//! `memory://`, with credentials from each cloud's usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...). Shared by the planner, the worker and the CLI.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use crate::domain::parse_store_url;
use crate::error::{Error, Result};

/// A store and the path inside it that a URL names.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The object or prefix inside it.
    pub path: Path,
    /// The URL it came from, with the path.
    pub url: Url,
}

/// Turns a user-supplied location into a URL: URLs pass through, local paths (absolute or
/// relative to the current directory) become `file://` URLs.
pub fn normalize(raw: &str) -> Result<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("url is empty"));
    }
    if trimmed.contains("://") {
        return Ok(trimmed.to_owned());
    }
    let path = std::path::Path::new(trimmed);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|error| Error::invalid(format!("cannot resolve {trimmed:?}: {error}")))?
            .join(path)
    };
    let keep_slash = trimmed.ends_with('/');
    let mut url = Url::from_file_path(&absolute)
        .map_err(|()| Error::invalid(format!("cannot turn {trimmed:?} into a file url")))?
        .to_string();
    if keep_slash && !url.ends_with('/') {
        url.push('/');
    }
    Ok(url)
}

/// Opens the store a URL names. No I/O happens until the store is used.
pub fn open(raw: &str) -> Result<Location> {
    let url = parse_store_url("object", raw)?;
    let (store, path) = store_for_url(&url, &[])?;
    Ok(Location { store, path, url })
}

/// The store a URL names and the path inside it: the one place vidx turns URLs into stores, for
/// the planner, the worker's reader and the evidence index alike.
///
/// Cloud stores (`s3://`, `gs://`, `az://` and the other Azure schemes, and each cloud's
/// `https://` forms) are configured from the environment the way each cloud's own tools are
/// (`AWS_*` including `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`), then from
/// `options`, `object_store` configuration keys such as `aws_endpoint_url` that take
/// precedence; keys that do not apply to the URL's store are ignored. `file://` URLs open the
/// local file system, `memory://` a fresh in-memory store.
pub fn store_for_url(
    url: &Url,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    use object_store::ObjectStoreScheme;
    use object_store::aws::AmazonS3Builder;
    use object_store::azure::MicrosoftAzureBuilder;
    use object_store::gcp::GoogleCloudStorageBuilder;

    let (scheme, path) =
        ObjectStoreScheme::parse(url).map_err(|error| store_config_error(url, error.into()))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
        ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
        ObjectStoreScheme::AmazonS3 => Arc::new(
            configure(
                AmazonS3Builder::from_env().with_url(url.as_str()),
                options,
                |builder, key, value| builder.with_config(key, value),
            )
            .build()
            .map_err(|error| store_config_error(url, error))?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            configure(
                GoogleCloudStorageBuilder::from_env().with_url(url.as_str()),
                options,
                |builder, key, value| builder.with_config(key, value),
            )
            .build()
            .map_err(|error| store_config_error(url, error))?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            configure(
                MicrosoftAzureBuilder::from_env().with_url(url.as_str()),
                options,
                |builder, key, value| builder.with_config(key, value),
            )
            .build()
            .map_err(|error| store_config_error(url, error))?,
        ),
        other => {
            return Err(Error::invalid(format!(
                "unsupported store {other:?} for {}",
                url.scheme()
            )));
        }
    };
    Ok((store, path))
}

/// Applies the options whose keys parse as configuration keys of builder `B`.
fn configure<B, K: std::str::FromStr>(
    builder: B,
    options: &[(String, String)],
    apply: impl Fn(B, K, String) -> B,
) -> B {
    options.iter().fold(builder, |builder, (key, value)| {
        match key.to_ascii_lowercase().parse::<K>() {
            Ok(key) => apply(builder, key, value.clone()),
            Err(_) => builder,
        }
    })
}

fn store_config_error(url: &Url, error: object_store::Error) -> Error {
    Error::invalid(format!(
        "cannot configure a store for {}://{}: {error}",
        url.scheme(),
        url.host_str().unwrap_or("")
    ))
}

/// The URL of `path` in the same store as `base`.
pub fn url_of(base: &Url, path: &Path) -> String {
    let mut url = base.clone();
    url.set_path(&format!("/{path}"));
    url.to_string()
}

/// File extensions treated as video.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "m2ts", "mts", "flv", "wmv",
    "3gp", "ogv", "mxf",
];

/// Whether an object key looks like a video, by extension.
pub fn is_video_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.starts_with('.') {
        return false;
    }
    name.rsplit_once('.').is_some_and(|(_, extension)| {
        VIDEO_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_keys_by_extension() {
        assert!(is_video_key("a/b/clip.MP4"));
        assert!(is_video_key("clip.webm"));
        assert!(!is_video_key("a/readme.txt"));
        assert!(!is_video_key("a/.hidden.mp4"));
        assert!(!is_video_key("noextension"));
    }

    #[test]
    fn local_paths_become_file_urls() {
        assert_eq!(normalize("/data/videos/").unwrap(), "file:///data/videos/");
        assert_eq!(normalize("s3://bucket/x").unwrap(), "s3://bucket/x");
        assert!(normalize("").is_err());
        assert!(normalize("relative/dir").unwrap().starts_with("file:///"));
    }

    #[test]
    fn urls_round_trip_through_paths() {
        let location = open("file:///data/videos/a%20b.mp4").unwrap();
        assert_eq!(location.path.as_ref(), "data/videos/a b.mp4");
        assert_eq!(
            url_of(&location.url, &location.path),
            "file:///data/videos/a%20b.mp4"
        );
    }
}
