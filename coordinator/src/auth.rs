//! Bearer-token authentication for every gRPC call except health checks. The token is compared
//! in constant time and never logged.

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

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
    pub fn new(raw: &str) -> Result<Self, crate::Error> {
        let token = raw.trim();
        if token.is_empty() {
            return Err(crate::Error::invalid("auth token is empty"));
        }
        if MetadataValue::try_from(format!("Bearer {token}")).is_err() {
            return Err(crate::Error::invalid(
                "auth token holds characters not allowed in a header",
            ));
        }
        Ok(Token(token.to_owned()))
    }

    /// Reads a token from a file (trailing newline ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, crate::Error> {
        let raw = std::fs::read_to_string(path).map_err(|error| {
            crate::Error::invalid(format!(
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

/// Server side: rejects calls without `authorization: Bearer <token>`.
#[derive(Clone, Debug)]
pub struct RequireToken {
    expected: Option<Token>,
}

impl RequireToken {
    /// `None` disables authentication (the coordinator warns loudly at start-up).
    pub fn new(expected: Option<Token>) -> Self {
        RequireToken { expected }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be 'Bearer <token>'"))?;
        if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(interceptor: &mut RequireToken, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        interceptor
            .call(request)
            .map(|_| ())
            .map_err(|status| status.code())
    }

    #[test]
    fn only_the_right_token_passes() {
        let mut interceptor = RequireToken::new(Some(Token::new("s3cret\n").unwrap()));
        assert_eq!(call(&mut interceptor, Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            call(&mut interceptor, Some("Bearer s3cre")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut interceptor, Some("Bearer s3cretx")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut interceptor, Some("s3cret")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut interceptor, None),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let token = Token::new("hunter2").unwrap();
        assert!(!format!("{token:?}").contains("hunter2"));
        assert!(Token::new("  ").is_err());
    }
}
