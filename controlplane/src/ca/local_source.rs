//! `isthmusd`'s own serving certificate comes from its own CA, in-process, through the same
//! certificate manager the proxies use (so it renews at half-life like everything else).

use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{CertificateSource, IssueError, IssuedChain, SpiffeId};

use super::authority::Authority;

/// Signs CSRs for one fixed identity with the local authority.
#[derive(Debug, Clone)]
pub struct LocalSource {
    pub authority: Arc<Authority>,
    pub identity: SpiffeId,
}

impl CertificateSource for LocalSource {
    async fn issue(&self, csr_pem: String, ttl: Duration) -> Result<IssuedChain, IssueError> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let issued = self
            .authority
            .sign(&csr_pem, &self.identity, ttl)
            .map_err(|e| IssueError::Refused {
                code: e.reason().to_owned(),
                message: e.to_string(),
            })?;
        IssuedChain::from_pem(&issued.chain, &issued.roots)
    }
}
