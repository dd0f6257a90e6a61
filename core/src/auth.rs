//! The bearer token every gRPC call but health checks carries, and the client side that attaches
//! it. The server side that checks it lives in the coordinator (`vidx_coordinator::auth`).

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// A secret token. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Wraps a token, rejecting empty ones and ones that cannot travel in a header.
    pub fn new(raw: &str) -> Result<Self> {
        let token = raw.trim();
        if token.is_empty() {
            return Err(Error::invalid("auth token is empty"));
        }
        if MetadataValue::try_from(format!("Bearer {token}")).is_err() {
            return Err(Error::invalid(
                "auth token holds characters not allowed in a header",
            ));
        }
        Ok(Token(token.to_owned()))
    }

    /// Reads a token from a file (trailing newline ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let raw = std::fs::read_to_string(path).map_err(|error| {
            Error::invalid(format!(
                "cannot read auth token file {}: {error}",
                path.display()
            ))
        })?;
        Token::new(&raw)
    }

    /// The secret, for building a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Debug)]
pub struct AttachToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachToken {
    /// `None` sends no header.
    pub fn new(token: Option<&Token>) -> Self {
        let header = token.and_then(|token| format!("Bearer {}", token.expose()).try_into().ok());
        AttachToken { header }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}
