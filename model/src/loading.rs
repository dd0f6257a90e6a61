//! Loading at the edge: a local Hugging Face model directory (sharded or single safetensors,
//! `config.json`, `tokenizer.json`, `preprocessor_config.json`) with memory-mapped weights, or a
//! hub repository downloaded with `hf-hub` under a hard timeout.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::{Config, PreprocessorConfig};
use crate::model::Model;
use crate::prompt::QwenTokenizer;
use crate::{Error, Result};

/// The files of a model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// Safetensors shards.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
    /// `preprocessor_config.json`, when present (defaults are used otherwise).
    pub preprocessor: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

/// Unique shard file names listed in a `model.safetensors.index.json`, in first-seen order.
pub fn shards_from_index(index_json: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(index_json)
        .map_err(|e| Error::Config(format!("model.safetensors.index.json: {e}")))?;
    let mut shards: Vec<String> = index.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(Error::Config(
            "model.safetensors.index.json lists no shards".into(),
        ));
    }
    Ok(shards)
}

impl ModelFiles {
    /// Finds the files of a local model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = existing(dir.join("config.json"))
            .ok_or_else(|| Error::MissingFile(dir.join("config.json")))?;
        let index = dir.join("model.safetensors.index.json");
        let weights = if index.is_file() {
            let shards = shards_from_index(&read(&index)?)?;
            shards
                .into_iter()
                .map(|name| {
                    existing(dir.join(&name)).ok_or_else(|| Error::MissingFile(dir.join(name)))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![
                existing(dir.join("model.safetensors"))
                    .ok_or_else(|| Error::MissingFile(dir.join("model.safetensors")))?,
            ]
        };
        Ok(Self {
            config,
            weights,
            tokenizer: existing(dir.join("tokenizer.json")),
            preprocessor: existing(dir.join("preprocessor_config.json")),
        })
    }

    /// Parses `config.json`.
    pub fn config(&self) -> Result<Config> {
        Config::from_json(&read(&self.config)?)
    }

    /// Parses `preprocessor_config.json`, or the hub defaults when the file is absent.
    pub fn preprocessor(&self) -> Result<PreprocessorConfig> {
        match &self.preprocessor {
            Some(path) => PreprocessorConfig::from_json(&read(path)?),
            None => Ok(PreprocessorConfig::default()),
        }
    }

    /// Loads `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<QwenTokenizer> {
        let path = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::MissingFile(PathBuf::from("tokenizer.json")))?;
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        QwenTokenizer::from_json_bytes(&bytes)
    }

    /// Builds the model over memory-mapped weights.
    pub fn model(&self, options: &LoadOptions) -> Result<Model> {
        let config = self.config()?;
        let device = options.device.device()?;
        let dtype = options.dtype.unwrap_or(if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        });
        tracing::info!(
            shards = self.weights.len(),
            ?dtype,
            "loading qwen2.5-vl weights"
        );
        // SAFETY: the shards are mapped read-only; they must not be modified while the model is
        // alive, which holds for checkpoint files.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&self.weights, dtype, &device)? };
        Model::new(&config, vb)
    }
}

/// Where the weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// Host memory (f32 by default).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (bf16 by default); needs the `cuda` feature.
    Cuda(usize),
}

impl DeviceKind {
    /// The candle device; [`Error::Device`] when it cannot be used ([`DeviceKind::check`]).
    pub fn device(self) -> Result<Device> {
        self.check()?;
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Ok(Device::new_cuda(ordinal)?),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Target device.
    pub device: DeviceKind,
    /// Weight and compute dtype; `None` picks f32 on CPU and bf16 on CUDA.
    pub dtype: Option<DType>,
}

/// Settings for downloading from the Hugging Face hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Git revision.
    pub revision: String,
    /// Cache directory (hf-hub's default, `$HF_HOME/hub`, when `None`).
    pub cache_dir: Option<PathBuf>,
    /// Hub endpoint (`https://huggingface.co` when `None`).
    pub endpoint: Option<String>,
    /// Bound on reaching the endpoint (DNS + TCP connect); without a network the call fails
    /// after at most this long.
    pub connect_timeout: Duration,
    /// Bound on the whole download (the 7B checkpoint is about 16 GB).
    pub timeout: Duration,
    /// Access token for gated or private repositories (`None`: hf-hub's token file, if any).
    pub token: Option<String>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            cache_dir: None,
            endpoint: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(4 * 3600),
            token: None,
        }
    }
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

enum Progress {
    Reachable,
    Done(Result<ModelFiles>),
}

/// Returns the files of `repo_id` from the local hub cache, or downloads them. Fails with
/// [`Error::Hub`] when the endpoint cannot be reached within `connect_timeout` or the download
/// does not finish within `timeout`.
pub fn download(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    if let Some(files) = cached(repo_id, options) {
        return Ok(files);
    }
    let (sender, receiver) = mpsc::channel();
    let repo = repo_id.to_string();
    let thread_options = options.clone();
    std::thread::Builder::new()
        .name("hf-hub-download".into())
        .spawn(move || {
            let endpoint = thread_options
                .endpoint
                .as_deref()
                .unwrap_or(DEFAULT_ENDPOINT);
            if let Err(e) = probe(endpoint, thread_options.connect_timeout) {
                let _ = sender.send(Progress::Done(Err(e)));
                return;
            }
            let _ = sender.send(Progress::Reachable);
            let _ = sender.send(Progress::Done(download_blocking(&repo, &thread_options)));
        })
        .map_err(|e| Error::Hub(format!("cannot start download thread: {e}")))?;
    // DNS resolution is not bounded by the socket timeout, so the wait itself is bounded too.
    match receiver.recv_timeout(options.connect_timeout + Duration::from_secs(1)) {
        Ok(Progress::Reachable) => {}
        Ok(Progress::Done(result)) => return result,
        Err(_) => {
            return Err(Error::Hub(format!(
                "hub endpoint not reachable within {:?}",
                options.connect_timeout
            )));
        }
    }
    match receiver.recv_timeout(options.timeout) {
        Ok(Progress::Done(result)) => result,
        Ok(Progress::Reachable) => Err(Error::Hub("download thread protocol error".into())),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Hub(format!(
            "download timed out after {:?}",
            options.timeout
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Error::Hub("download thread ended without result".into()))
        }
    }
}

/// Opens a TCP connection to the endpoint's host within `timeout`.
fn probe(endpoint: &str, timeout: Duration) -> Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let (default_port, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (80, rest)
    } else {
        return Err(Error::Hub(format!("unsupported hub endpoint {endpoint}")));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| Error::Hub(format!("cannot resolve {authority}: {e}")))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Hub(format!(
        "cannot connect to {authority}: {}",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into())
    )))
}

fn hub_repo(repo_id: &str, options: &HubOptions) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        options.revision.clone(),
    )
}

/// All files of `repo_id` from the local cache, without network access.
fn cached(repo_id: &str, options: &HubOptions) -> Option<ModelFiles> {
    let cache = match &options.cache_dir {
        Some(dir) => hf_hub::Cache::new(dir.clone()),
        None => hf_hub::Cache::from_env(),
    };
    let repo = cache.repo(hub_repo(repo_id, options));
    let config = repo.get("config.json")?;
    let weights = match repo.get("model.safetensors.index.json") {
        Some(index) => shards_from_index(&read(&index).ok()?)
            .ok()?
            .iter()
            .map(|name| repo.get(name))
            .collect::<Option<Vec<_>>>()?,
        None => vec![repo.get("model.safetensors")?],
    };
    Some(ModelFiles {
        config,
        weights,
        tokenizer: Some(repo.get("tokenizer.json")?),
        preprocessor: repo.get("preprocessor_config.json"),
    })
}

fn download_blocking(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .with_retries(0);
    if let Some(dir) = &options.cache_dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(token) = &options.token {
        builder = builder.with_token(Some(token.clone()));
    }
    let api = builder.build().map_err(|e| Error::Hub(e.to_string()))?;
    let repo = api.repo(hub_repo(repo_id, options));
    let get = |name: &str| {
        repo.get(name)
            .map_err(|e| Error::Hub(format!("{repo_id}/{name}: {e}")))
    };
    let config = get("config.json")?;
    let weights = match get("model.safetensors.index.json") {
        Ok(index) => shards_from_index(&read(&index)?)?
            .iter()
            .map(|name| get(name))
            .collect::<Result<Vec<_>>>()?,
        Err(_) => vec![get("model.safetensors")?],
    };
    tracing::info!(
        repo_id,
        shards = weights.len(),
        "downloaded model from the hub"
    );
    Ok(ModelFiles {
        config,
        weights,
        tokenizer: Some(get("tokenizer.json")?),
        preprocessor: get("preprocessor_config.json").ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_unique_and_sorted() {
        let index = r#"{"metadata": {}, "weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors",
            "c": "m-2.safetensors"}}"#;
        assert_eq!(
            shards_from_index(index).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
    }

    #[test]
    fn missing_directory_is_a_typed_error() {
        let err = ModelFiles::from_dir("/nonexistent/vidx-model-dir").unwrap_err();
        assert!(matches!(err, Error::MissingFile(_)));
    }

    #[test]
    fn cuda_without_feature_is_refused() {
        if !cfg!(feature = "cuda") {
            assert!(matches!(
                DeviceKind::Cuda(0).device(),
                Err(Error::Device(_))
            ));
        }
    }
}
