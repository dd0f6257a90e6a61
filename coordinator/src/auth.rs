//! Server side of bearer-token authentication for every gRPC call except health checks. The
//! token is compared in constant time and never logged; the token type and the client side live
//! in `vidx_core::auth`.

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use vidx_core::auth::Token;

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
