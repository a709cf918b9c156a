//! Who is asking: turns a caller's credential into the one SPIFFE ID it may get a certificate
//! for. Local mode uses bootstrap tokens ([`tokens`]); a Kubernetes service-account token check
//! plugs in behind the same [`Authenticator`] interface.

pub mod tokens;

use std::future::Future;

use isthmus_identity::SpiffeId;
use tonic::metadata::MetadataMap;

/// A caller that could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization metadata is not `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    UnknownToken,
    #[error("token {token_id} was revoked at {revoked_at}")]
    Revoked {
        token_id: String,
        revoked_at: String,
    },
    #[error("token store: {0}")]
    Store(String),
}

impl AuthError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "no_credential",
            Self::Malformed => "malformed_credential",
            Self::UnknownToken => "unknown_token",
            Self::Revoked { .. } => "revoked_token",
            Self::Store(_) => "internal",
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Store(_) => tonic::Code::Internal,
            _ => tonic::Code::Unauthenticated,
        }
    }
}

/// Maps a bearer credential to the identity it is bound to.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        bearer: String,
    ) -> impl Future<Output = Result<SpiffeId, AuthError>> + Send;
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(metadata: &MetadataMap) -> Result<String, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.to_owned())
}
