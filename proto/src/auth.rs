//! The cluster token on every RPC: `authorization: Bearer <token>`.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// Server side: rejects requests without the cluster token.
#[derive(Clone)]
pub struct RequireToken {
    expected: String,
}

impl RequireToken {
    /// Accepts only `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            expected: token.into(),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.expected.as_bytes()) => {
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster token: use the token of this cluster (the head's session dir `token` file, or PHOTON_TOKEN)",
            )),
            None => Err(Status::unauthenticated(
                "missing cluster token: pass it with --token-file or PHOTON_TOKEN (the head writes it to its session dir `token` file)",
            )),
        }
    }
}

/// Client side: adds the token to every request.
#[derive(Clone)]
pub struct AttachToken {
    header: MetadataValue<Ascii>,
}

impl AttachToken {
    /// Attaches `token`; fails if it is not printable ASCII.
    pub fn new(token: &str) -> Result<Self, String> {
        format!("Bearer {token}")
            .parse()
            .map(|header| Self { header })
            .map_err(|_| "the cluster token must be printable ASCII".to_string())
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.header.clone());
        Ok(request)
    }
}

/// Compares without an early exit, so timing does not reveal the token.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token: 32 hex characters.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_and_missing_tokens_are_refused_with_a_hint() {
        let mut check = RequireToken::new("secret");
        let mut attach = AttachToken::new("secret").unwrap();
        assert!(check.call(attach.call(Request::new(())).unwrap()).is_ok());
        let mut wrong = AttachToken::new("guess").unwrap();
        let status = check
            .call(wrong.call(Request::new(())).unwrap())
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status.message().contains("wrong cluster token"),
            "{}",
            status.message()
        );
        let status = check.call(Request::new(())).unwrap_err();
        assert!(
            status.message().contains("missing cluster token"),
            "{}",
            status.message()
        );
        assert_eq!(generate_token().len(), 32);
    }
}
