//! Who is asking: turns a caller's credential into the one SPIFFE ID it may get a certificate
//! for, behind one [`Authenticator`] interface:
//!
//! - local mode: bootstrap tokens ([`tokens`]), bound to an identity by `isthmusctl token create`;
//! - Kubernetes mode: the pod's service-account token, checked by the API server with a
//!   `TokenReview` for the audience [`token_review::AUDIENCE`] ([`token_review`]); the identity
//!   is `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! [`CallerAuthenticator`] is the one the daemon picks by mode.

pub mod token_review;
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
    /// The Kubernetes API server did not authenticate the token (its `status.error`).
    #[error("the Kubernetes API server rejected the token: {reason}")]
    Rejected { reason: String },
    /// The token was authenticated, but not for the CA's audience.
    #[error(
        "the token is not for the audience `{}` (it is for: {audiences})",
        token_review::AUDIENCE
    )]
    WrongAudience { audiences: String },
    /// The token was authenticated, but not as a service account.
    #[error("{username:?} is not a service account (`system:serviceaccount:<namespace>:<name>`)")]
    NotServiceAccount { username: String },
    /// The token could not be reviewed: the API server is unreachable or failed.
    #[error("cannot review the token with the Kubernetes API server: {0}")]
    ApiServer(String),
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
            Self::Rejected { .. } => "token_rejected",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::NotServiceAccount { .. } => "not_service_account",
            Self::ApiServer(_) => "token_review_failed",
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Store(_) => tonic::Code::Internal,
            Self::ApiServer(_) => tonic::Code::Unavailable,
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

/// The caller authentication of a mode: bootstrap tokens (local) or `TokenReview`
/// (Kubernetes).
#[derive(Debug, Clone)]
pub enum CallerAuthenticator {
    Tokens(tokens::TokenStore),
    Kubernetes(token_review::TokenReviewAuthenticator),
}

impl Authenticator for CallerAuthenticator {
    async fn authenticate(&self, bearer: String) -> Result<SpiffeId, AuthError> {
        match self {
            Self::Tokens(store) => store.authenticate(bearer).await,
            Self::Kubernetes(review) => review.authenticate(bearer).await,
        }
    }
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
