//! Client of the mesh CA's `isthmus.ca.v1.CertificateService`, over TLS that verifies the CA's
//! own SPIFFE identity. It is the [`CertificateSource`] a proxy's certificate manager uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use crate::{
    CertificateSource, IssueError, IssuedChain, PeerPolicy, SharedBundles, SpiffeVerifier,
    client_config,
};
use isthmus_proto::ca::CreateCertificateRequest;
use isthmus_proto::ca::certificate_service_client::CertificateServiceClient;

/// The credential a workload proves itself with.
#[derive(Debug, Clone)]
pub enum BearerToken {
    /// Read from this file at every request, so a rotated token is picked up.
    File(PathBuf),
    Value(String),
}

impl BearerToken {
    async fn load(&self) -> Result<String, IssueError> {
        let token = match self {
            Self::Value(v) => v.clone(),
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| IssueError::Local(format!("token file {}: {e}", path.display())))?,
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(IssueError::Local("the bootstrap token is empty".into()));
        }
        Ok(token)
    }
}

/// A connection (made lazily, re-made on failure) to the CA.
#[derive(Debug, Clone)]
pub struct CaClient {
    client: CertificateServiceClient<Channel>,
    token: BearerToken,
}

impl CaClient {
    /// `address` is `host:port`. The CA must present a certificate that verifies against
    /// `bundles` and satisfies `server`.
    pub fn new(
        address: &str,
        bundles: SharedBundles,
        server: PeerPolicy,
        token: BearerToken,
    ) -> Result<Self, IssueError> {
        let verifier = Arc::new(SpiffeVerifier::new(bundles, server));
        let tls = client_config(None, verifier, &[b"h2"])
            .map_err(|e| IssueError::Local(format!("TLS configuration: {e}")))?;
        let channel = crate::channel::tls_channel(address, tls, Some(Duration::from_secs(15)))
            .map_err(|e| IssueError::Local(format!("CA {e}")))?;
        Ok(Self {
            client: CertificateServiceClient::new(channel),
            token,
        })
    }
}

impl CertificateSource for CaClient {
    async fn issue(&self, csr_pem: String, ttl: Duration) -> Result<IssuedChain, IssueError> {
        let token = self.token.load().await?;
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr: csr_pem,
            validity_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        });
        let value = format!("Bearer {token}").parse().map_err(|_| {
            IssueError::Local("the bootstrap token has characters not allowed in a header".into())
        })?;
        request.metadata_mut().insert("authorization", value);
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(status_to_error)?
            .into_inner();
        IssuedChain::from_pem(&response.cert_chain, &response.roots)
    }
}

fn status_to_error(status: tonic::Status) -> IssueError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            let mut message = status.message().to_owned();
            let mut source = std::error::Error::source(&status);
            while let Some(e) = source {
                message.push_str(&format!(": {e}"));
                source = e.source();
            }
            IssueError::Unavailable(message)
        }
        code => IssueError::Refused {
            code: format!("{code:?}"),
            message: status.message().to_owned(),
        },
    }
}
