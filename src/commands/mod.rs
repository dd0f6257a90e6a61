//! One module per group of subcommands; each turns parsed flags into a validated config and runs.

pub mod ask;
pub mod coordinator;
pub mod evidence;
pub mod fetch_model;
pub mod finalize;
pub mod index_progress;
pub mod media;
pub mod passes;
pub mod worker;

use anyhow::{Context, Result};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};

use crate::cli::ClientArgs;

/// Reads the token from `--token-file`, else `$VIDX_TOKEN`; `None` when neither is set.
pub fn token_from(file: Option<&std::path::Path>, env: Option<&str>) -> Result<Option<Token>> {
    if let Some(file) = file {
        return Ok(Some(Token::from_file(file)?));
    }
    match env {
        Some(raw) if !raw.trim().is_empty() => Ok(Some(Token::new(raw)?)),
        _ => Ok(None),
    }
}

impl ClientArgs {
    /// The validated client configuration.
    pub fn config(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new(
            self.coordinator.clone(),
            token_from(self.token_file.as_deref(), self.token.as_deref())?,
        );
        config.tls_ca = self.tls_ca.clone();
        Ok(config)
    }

    /// Connects.
    pub async fn connect(&self) -> Result<CoordinatorClient> {
        let config = self.config()?;
        CoordinatorClient::connect(&config)
            .await
            .with_context(|| format!("cannot connect to coordinator {}", self.coordinator))
    }
}
