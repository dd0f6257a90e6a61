//! The Azure Blob Storage emulator (Azurite, installed by `scripts/install-test-servers.sh` under `.tools/bin`)
//! on loopback port 0; readiness is the address it logs once bound ("Azurite Blob service
//! successfully listens on http://127.0.0.1:PORT").

use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{ChildGuard, tool};

/// How long Azurite (a Node.js program) may take to bind.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The emulator's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known development key for [`ACCOUNT`].
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service with its data folder; killed by its pid on drop.
#[derive(Debug)]
pub struct Azurite {
    process: ChildGuard,
    _data: tempfile::TempDir,
    endpoint: String,
}

impl Azurite {
    /// Starts the blob service on port 0 over a fresh data folder.
    pub fn start() -> Result<Self> {
        let data = tempfile::tempdir()?;
        let mut process = ChildGuard::spawn(
            "azurite-blob",
            Command::new(tool("azurite-blob")?)
                .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
                .arg("--location")
                .arg(data.path())
                .args(["--silent", "--skipApiVersionCheck", "--loose"]),
        )?;
        let endpoint = process.wait_for_line("report its address", START_TIMEOUT, |line| {
            let address = line.text.split("successfully listens on ").nth(1)?;
            Some(address.trim().to_owned())
        })?;
        if endpoint.ends_with(":0") {
            return Err(Error::Unexpected {
                name: "azurite-blob".into(),
                line: endpoint,
                reason: "it reported the requested port, not the bound one".into(),
            });
        }
        Ok(Self {
            process,
            _data: data,
            endpoint,
        })
    }

    /// `http://127.0.0.1:PORT` (the account name is the first path segment below it).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The connection string Microsoft's SDKs take for this emulator.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};\
             BlobEndpoint={}/{ACCOUNT};",
            self.endpoint
        )
    }

    /// The variables `object_store` reads to talk to this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".to_owned(), "true".to_owned()),
            ("AZURITE_BLOB_STORAGE_URL".to_owned(), self.endpoint.clone()),
        ]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
