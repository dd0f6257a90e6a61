//! Where a video lives: a URL parsed into an `object_store` store and a path inside it.
//!
//! Cloud stores come from `vidx_core::objects::store_for_url`, the one place URLs become
//! stores, configured from the environment the way each cloud's own tools are (`AWS_*`
//! including `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for S3-compatible servers, `GOOGLE_*`,
//! `AZURE_*`). Plain paths, relative or absolute, and `file://` URLs are read from the local file
//! system through the same interface.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

use super::error::{MediaError, Result};

/// A video object: the store holding it, its path in that store, and the URI it was named by
/// (kept for error messages and output).
#[derive(Clone)]
pub struct VideoSource {
    /// The store the video is read from.
    pub store: Arc<dyn ObjectStore>,
    /// The object's path inside `store`.
    pub path: Path,
    /// The address the caller gave, for messages and manifests.
    pub uri: String,
}

impl std::fmt::Debug for VideoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoSource")
            .field("uri", &self.uri)
            .field("path", &self.path)
            .finish()
    }
}

impl VideoSource {
    /// A source over a store the caller already built (the worker shares one store per bucket).
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, uri: impl Into<String>) -> Self {
        Self {
            store,
            path,
            uri: uri.into(),
        }
    }

    /// Parses `s3://`, `s3a://`, `gs://`, `az://` (and the other Azure schemes), `file://` URLs,
    /// and plain absolute or relative local paths. Cloud credentials and endpoints come from the
    /// environment.
    pub fn from_url(address: &str) -> Result<Self> {
        Self::from_url_with_options(address, std::iter::empty::<(&str, &str)>())
    }

    /// Like [`VideoSource::from_url`], with store options (`object_store` configuration keys such
    /// as `aws_endpoint_url`, `aws_allow_http`, `google_service_account`) that take precedence
    /// over the environment. Keys that do not apply to the URL's store are ignored.
    pub fn from_url_with_options<K, V>(
        address: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(key, value)| (key.as_ref().to_ascii_lowercase(), value.into()))
            .collect();
        let invalid = |reason: String| MediaError::InvalidUrl {
            url: address.to_owned(),
            reason,
        };
        if address.is_empty() {
            return Err(invalid("empty address".into()));
        }
        let url = match Url::parse(address) {
            // A one-letter "scheme" is a Windows drive letter, never a store.
            Ok(url) if url.scheme().len() > 1 => url,
            _ => return Self::local(address),
        };
        if url.scheme() == "file" {
            let file = url
                .to_file_path()
                .map_err(|()| invalid("not a local file path".into()))?;
            return Self::local_path(address, &file);
        }
        let (store, path) = vidx_core::objects::store_for_url(&url, &options)
            .map_err(|error| invalid(error.to_string()))?;
        if path.as_ref().is_empty() {
            return Err(invalid("the url names a bucket but no object".into()));
        }
        Ok(Self {
            store,
            path,
            uri: address.to_owned(),
        })
    }

    fn local(address: &str) -> Result<Self> {
        Self::local_path(address, std::path::Path::new(address))
    }

    fn local_path(address: &str, file: &std::path::Path) -> Result<Self> {
        let invalid = |reason: String| MediaError::InvalidUrl {
            url: address.to_owned(),
            reason,
        };
        let absolute = std::path::absolute(file).map_err(|error| invalid(error.to_string()))?;
        let path = Path::from_absolute_path(normalize(&absolute))
            .map_err(|error| invalid(error.to_string()))?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            path,
            uri: address.to_owned(),
        })
    }
}

/// Resolves `.` and `..` lexically (object paths may not contain them), without touching the
/// file system, so that a missing file is still reported as not found.
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut normalized = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normalized.pop();
            }
            Component::CurDir => {}
            other => normalized.push(other.as_os_str()),
        }
    }
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_file_paths_are_local() {
        let source = VideoSource::from_url("/tmp/some dir/video.mp4").unwrap();
        assert_eq!(source.path.as_ref(), "tmp/some dir/video.mp4");
        let source = VideoSource::from_url("file:///tmp/some%20dir/video.mp4").unwrap();
        assert_eq!(source.path.as_ref(), "tmp/some dir/video.mp4");
        let dotted = VideoSource::from_url("/tmp/a/../b/./video.mp4").unwrap();
        assert_eq!(dotted.path.as_ref(), "tmp/b/video.mp4");
        let relative = VideoSource::from_url("clips/a.mp4").unwrap();
        assert!(relative.path.as_ref().ends_with("clips/a.mp4"));
    }

    #[test]
    fn s3_url_names_bucket_and_key() {
        let source = VideoSource::from_url("s3://bucket/dir/video.mp4").unwrap();
        assert_eq!(source.path.as_ref(), "dir/video.mp4");
        assert_eq!(source.uri, "s3://bucket/dir/video.mp4");
    }

    #[test]
    fn bad_addresses_are_typed_errors() {
        assert!(matches!(
            VideoSource::from_url(""),
            Err(MediaError::InvalidUrl { .. })
        ));
        assert!(matches!(
            VideoSource::from_url("ftp://host/video.mp4"),
            Err(MediaError::InvalidUrl { .. })
        ));
        assert!(matches!(
            VideoSource::from_url("s3://bucket"),
            Err(MediaError::InvalidUrl { .. })
        ));
    }
}
