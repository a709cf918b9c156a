//! The gRPC face of the CA: `isthmus.ca.v1.CertificateService`.

use std::sync::Arc;

use isthmus_proto::ca::certificate_service_server::CertificateService;
use isthmus_proto::ca::{CreateCertificateRequest, CreateCertificateResponse};
use tonic::{Request, Response, Status};

use super::authority::Authority;
use super::metrics::CaMetrics;
use crate::auth::{Authenticator, bearer_token};

/// Authenticates the caller, then signs what it is entitled to.
#[derive(Debug)]
pub struct CaService<A> {
    authority: Arc<Authority>,
    authenticator: A,
    metrics: CaMetrics,
}

impl<A: Authenticator> CaService<A> {
    pub fn new(authority: Arc<Authority>, authenticator: A, metrics: CaMetrics) -> Self {
        Self {
            authority,
            authenticator,
            metrics,
        }
    }

    fn refuse(&self, reason: &'static str, code: tonic::Code, message: String) -> Status {
        self.metrics.refuse(reason);
        tracing::warn!(reason, %message, "certificate request refused");
        Status::new(code, message)
    }
}

#[tonic::async_trait]
impl<A: Authenticator> CertificateService for CaService<A> {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        self.metrics.requests.inc();
        let entitled = match bearer_token(request.metadata()) {
            Ok(token) => self.authenticator.authenticate(token).await,
            Err(e) => Err(e),
        }
        .map_err(|e| self.refuse(e.reason(), e.code(), e.to_string()))?;

        let CreateCertificateRequest {
            csr,
            validity_seconds,
        } = request.into_inner();
        let authority = self.authority.clone();
        let who = entitled.clone();
        // Signing is CPU work; keep it off the I/O threads.
        let signed =
            tokio::task::spawn_blocking(move || authority.sign(&csr, &who, validity_seconds))
                .await
                .map_err(|e| self.refuse("internal", tonic::Code::Internal, e.to_string()))?;
        let issued =
            signed.map_err(|e| self.refuse(e.reason(), e.code(), format!("{entitled}: {e}")))?;
        self.metrics.issued.inc();
        tracing::info!(identity = %issued.spiffe_id, "certificate issued");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: issued.chain,
            roots: issued.roots,
            spiffe_id: issued.spiffe_id.to_string(),
        }))
    }
}
