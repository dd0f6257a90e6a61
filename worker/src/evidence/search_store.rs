//! The search index in object storage: its files under `search/files/`, and `search/index.json`
//! naming the files of the current generation.
//!
//! ```text
//! search/index.json            {"schema":"vidx.search/v1","generation":3,"pass_id":..,"files":[..]}
//! search/files/{name}          tantivy's files (segments are immutable, named by uuid)
//! ```
//!
//! [`SearchIndex::update`] runs at finalization: it copies the current generation to a temporary
//! directory, replaces the rows of the pass's videos × tasks, uploads the files the new generation
//! adds, then writes `index.json` (one `put`, so readers see the old generation or the new one),
//! then deletes the files no generation needs any more. Two finalizations must not run at once on
//! the same index (finalization is once per pass).
//!
//! [`SearchIndex::open_cached`] is the reader: it keeps a copy in a local cache directory, downloads
//! what is missing when `index.json` names a newer generation, and opens it. A local index (a
//! directory or `file://`) goes through the same path: its cache copy is a file copy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::search_index::{IndexWriterOptions, SearchIndex};
use super::store::EvidenceIndex;
use super::table::{AnswerRow, ClaimRow};
use super::{Error, Result};

/// Schema tag of `search/index.json`.
pub const SEARCH_SCHEMA: &str = "vidx.search/v1";
/// The current generation's file list, relative to the index prefix.
pub const SEARCH_POINTER: &str = "search/index.json";
/// Where the index files live, relative to the index prefix.
pub const SEARCH_FILES: &str = "search/files";
/// Name of the pointer copy in a local cache directory.
const CACHED_POINTER: &str = "index.json";
/// Folder of the index files in a local cache directory.
const CACHED_FILES: &str = "files";
/// Files moved at once.
const TRANSFER_CONCURRENCY: usize = 8;
/// Times a reader starts over when a newer generation replaced files it was downloading.
const SYNC_ATTEMPTS: usize = 3;

/// One file of a generation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IndexFile {
    /// File name (no directories).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// `search/index.json`: which files make the current generation of the search index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPointer {
    /// Always [`SEARCH_SCHEMA`].
    pub schema: String,
    /// Counts updates, from 1.
    pub generation: u64,
    /// The pass whose finalization wrote this generation.
    pub pass_id: String,
    /// Rows (claims and answers) in the index.
    pub documents: u64,
    /// The files, sorted by name.
    pub files: Vec<IndexFile>,
}

impl SearchPointer {
    /// Total size of the files, bytes.
    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    fn check(&self, key: &str) -> Result<()> {
        let corrupt = |reason: String| Error::Corrupt {
            key: key.to_owned(),
            reason,
        };
        if self.schema != SEARCH_SCHEMA {
            return Err(corrupt(format!("unknown schema {}", self.schema)));
        }
        for file in &self.files {
            if !is_plain_name(&file.name) {
                return Err(corrupt(format!("bad file name {:?}", file.name)));
            }
        }
        Ok(())
    }
}

/// A file name with no path in it (what the pointer may name).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && name != CACHED_POINTER
}

/// tantivy files rewritten in place (every other file is written once under a new name).
fn is_mutable(name: &str) -> bool {
    name == "meta.json" || name == ".managed.json"
}

async fn read_pointer(index: &EvidenceIndex) -> Result<Option<SearchPointer>> {
    let key = index.relative_key(SEARCH_POINTER);
    let bytes = match index.get_bytes(&key).await {
        Ok(bytes) => bytes,
        Err(Error::Store(object_store::Error::NotFound { .. })) => return Ok(None),
        Err(error) => return Err(error),
    };
    let pointer: SearchPointer =
        serde_json::from_slice(&bytes).map_err(|error| Error::Corrupt {
            key: key.to_string(),
            reason: error.to_string(),
        })?;
    pointer.check(key.as_ref())?;
    Ok(Some(pointer))
}

fn file_key(index: &EvidenceIndex, name: &str) -> object_store::path::Path {
    index.relative_key(&format!("{SEARCH_FILES}/{name}"))
}

/// Makes `dir` hold exactly the files of `pointer`: downloads what is missing or mutable, deletes
/// what is not listed. `Ok(false)` when a file was gone (a newer generation replaced it).
async fn download(index: &EvidenceIndex, pointer: &SearchPointer, dir: &Path) -> Result<bool> {
    tokio::fs::create_dir_all(dir).await?;
    let listed: BTreeSet<&str> = pointer
        .files
        .iter()
        .map(|file| file.name.as_str())
        .collect();
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut present = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(name.as_str()) {
            if entry.file_type().await?.is_dir() {
                tokio::fs::remove_dir_all(entry.path()).await?;
            } else {
                tokio::fs::remove_file(entry.path()).await?;
            }
        } else {
            present.push((name, entry.metadata().await?.len()));
        }
    }
    let wanted: Vec<&IndexFile> = pointer
        .files
        .iter()
        .filter(|file| {
            is_mutable(&file.name)
                || !present
                    .iter()
                    .any(|(name, size)| *name == file.name && *size == file.size)
        })
        .collect();
    // Owned items and a cloned index, so the stream's futures borrow nothing: a borrowing
    // closure makes the whole finalization future fail `Send` for a spawned task.
    let wanted: Vec<(IndexFile, PathBuf)> = wanted
        .into_iter()
        .map(|file| (file.clone(), dir.to_path_buf()))
        .collect();
    let fetched: Vec<bool> = futures::stream::iter(wanted)
        .map(|(file, dir)| {
            let index = index.clone();
            async move {
                let key = file_key(&index, &file.name);
                let bytes = match index.get_bytes(&key).await {
                    Ok(bytes) => bytes,
                    Err(Error::Store(object_store::Error::NotFound { .. })) => return Ok(false),
                    Err(error) => return Err(error),
                };
                if bytes.len() as u64 != file.size {
                    return Err(Error::Corrupt {
                        key: key.to_string(),
                        reason: format!("{} bytes, the pointer says {}", bytes.len(), file.size),
                    });
                }
                let partial = dir.join(format!("{}.partial", file.name));
                tokio::fs::write(&partial, &bytes).await?;
                tokio::fs::rename(&partial, dir.join(&file.name)).await?;
                Ok::<_, Error>(true)
            }
        })
        .buffer_unordered(TRANSFER_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(fetched.into_iter().all(|found| found))
}

/// Downloads the generation `index.json` names into `dir`, starting over (a bounded number of
/// times) when a newer generation replaced files mid-way. `Ok(None)`: there is no search index.
async fn download_current(index: &EvidenceIndex, dir: &Path) -> Result<Option<SearchPointer>> {
    for _ in 0..SYNC_ATTEMPTS {
        let Some(pointer) = read_pointer(index).await? else {
            return Ok(None);
        };
        if download(index, &pointer, dir).await? {
            return Ok(Some(pointer));
        }
        debug!(
            generation = pointer.generation,
            "search index changed while downloading"
        );
    }
    Err(Error::Corrupt {
        key: index.relative_key(SEARCH_POINTER).to_string(),
        reason: format!("the files it names kept changing over {SYNC_ATTEMPTS} downloads"),
    })
}

/// The default cache directory of an index URL: `$XDG_CACHE_HOME/vidx/search/{hash}` (or
/// `~/.cache/...`, or the temporary directory).
pub fn default_cache_dir(index_url: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let digest = Sha256::digest(index_url.as_bytes());
    base.join("vidx")
        .join("search")
        .join(super::task::hex(&digest[..12]))
}

/// What an update wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateSummary {
    /// The new pointer.
    pub pointer: SearchPointer,
    /// Files uploaded.
    pub uploaded: usize,
    /// Files deleted (no longer part of any generation).
    pub deleted: usize,
}

impl SearchIndex {
    /// Adds a pass's rows to the index in object storage, replacing earlier rows of the same
    /// videos × tasks, and publishes the new generation.
    pub async fn update(
        index: &EvidenceIndex,
        pass_id: &str,
        claims: &[ClaimRow],
        answers: &[AnswerRow],
        options: &IndexWriterOptions,
    ) -> Result<UpdateSummary> {
        let work = tempfile::tempdir()?;
        let dir = work.path().join(CACHED_FILES);
        let previous = download_current(index, &dir).await?;
        let (claims, answers, options) = (claims.to_vec(), answers.to_vec(), options.clone());
        let build_dir = dir.clone();
        let (documents, files) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut search = SearchIndex::create(&build_dir)?;
            search.add_rows(&claims, &answers, true, &options)?;
            let documents = search.num_docs();
            drop(search);
            Ok((documents, SearchIndex::files(&build_dir)?))
        })
        .await??;
        let files: Vec<IndexFile> = files
            .into_iter()
            .map(|(name, size)| IndexFile { name, size })
            .collect();
        let already: BTreeSet<&IndexFile> = previous
            .iter()
            .flat_map(|pointer| pointer.files.iter())
            .filter(|file| !is_mutable(&file.name))
            .collect();
        let to_upload: Vec<&IndexFile> = files
            .iter()
            .filter(|file| !already.contains(file))
            .collect();
        let uploaded = to_upload.len();
        let uploads: Vec<(PathBuf, object_store::path::Path)> = to_upload
            .iter()
            .map(|file| (dir.join(&file.name), file_key(index, &file.name)))
            .collect();
        futures::stream::iter(uploads)
            .map(|(local, key)| {
                let store = Arc::clone(index.store());
                async move {
                    let bytes = tokio::fs::read(&local).await?;
                    store.put(&key, Bytes::from(bytes).into()).await?;
                    Ok::<_, Error>(())
                }
            })
            .buffer_unordered(TRANSFER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let pointer = SearchPointer {
            schema: SEARCH_SCHEMA.to_owned(),
            generation: previous.as_ref().map_or(0, |pointer| pointer.generation) + 1,
            pass_id: pass_id.to_owned(),
            documents,
            files,
        };
        index
            .store()
            .put(
                &index.relative_key(SEARCH_POINTER),
                Bytes::from(serde_json::to_vec_pretty(&pointer)?).into(),
            )
            .await?;
        let deleted = delete_unlisted(index, &pointer).await?;
        info!(
            pass_id,
            generation = pointer.generation,
            documents,
            uploaded,
            deleted,
            size_bytes = pointer.size_bytes(),
            "search index updated"
        );
        Ok(UpdateSummary {
            pointer,
            uploaded,
            deleted,
        })
    }

    /// Opens the index of `index` from a local copy in `cache_dir`, downloading what a newer
    /// generation added first. [`Error::NoSearchIndex`] when no pass has built one.
    pub async fn open_cached(
        index: &EvidenceIndex,
        cache_dir: &Path,
    ) -> Result<(Self, SearchPointer)> {
        let pointer_path = cache_dir.join(CACHED_POINTER);
        let files = cache_dir.join(CACHED_FILES);
        let cached: Option<SearchPointer> = match tokio::fs::read(&pointer_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(_) => None,
        };
        let remote = read_pointer(index).await?;
        let pointer = match (remote, cached) {
            (None, _) => {
                return Err(Error::NoSearchIndex(
                    index.relative_key(SEARCH_POINTER).to_string(),
                ));
            }
            (Some(remote), Some(cached)) if remote == cached => cached,
            (Some(_), _) => {
                // Forget the old copy's pointer first: a crash mid-download then starts over.
                match tokio::fs::remove_file(&pointer_path).await {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error.into());
                    }
                    _ => {}
                }
                let Some(pointer) = download_current(index, &files).await? else {
                    return Err(Error::NoSearchIndex(
                        index.relative_key(SEARCH_POINTER).to_string(),
                    ));
                };
                tokio::fs::write(&pointer_path, serde_json::to_vec_pretty(&pointer)?).await?;
                debug!(generation = pointer.generation, cache = %cache_dir.display(), "search index downloaded");
                pointer
            }
        };
        let search = tokio::task::spawn_blocking(move || SearchIndex::open(&files)).await??;
        Ok((search, pointer))
    }
}

/// Deletes every object under `search/files/` that `pointer` does not name; returns how many.
async fn delete_unlisted(index: &EvidenceIndex, pointer: &SearchPointer) -> Result<usize> {
    let keep: BTreeSet<object_store::path::Path> = pointer
        .files
        .iter()
        .map(|file| file_key(index, &file.name))
        .collect();
    let prefix = index.relative_key(SEARCH_FILES);
    let stale: Vec<object_store::path::Path> = index
        .store()
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .try_filter(|location| futures::future::ready(!keep.contains(location)))
        .try_collect()
        .await?;
    let count = stale.len();
    futures::stream::iter(stale)
        .map(|location| {
            let store = Arc::clone(index.store());
            async move {
                match store.delete(&location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(error) => Err(Error::from(error)),
                }
            }
        })
        .buffer_unordered(TRANSFER_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}
