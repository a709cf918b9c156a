//! The webhook's serving certificate: issued by the mesh CA for `isthmusd`'s `Service` names
//! (`isthmusd.<ns>.svc` is what the API server dials), renewed at half-life by a task. The API
//! server verifies it against the `caBundle` `isthmusd` writes into the webhook
//! configurations: the mesh root.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{Authority, SignError};

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("the mesh CA refused the webhook certificate")]
    Sign(#[source] SignError),
    #[error("the issued webhook certificate does not load: {0}")]
    Load(String),
}

/// The names the certificate is for: the `Service` `isthmusd` in `namespace`, in every form a
/// client may use.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// The certificate in force, for the TLS configuration.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServingCert {
    /// Issues the first certificate now; [`renew`] keeps it fresh.
    pub fn issue(
        authority: &Authority,
        names: &[String],
    ) -> Result<(Arc<Self>, SystemTime), ServingCertError> {
        let (key, renew_at) = issue(authority, names)?;
        Ok((
            Arc::new(Self {
                current: ArcSwap::from_pointee(key),
            }),
            renew_at,
        ))
    }
}

/// Replaces the certificate at half its life, for as long as the daemon runs; a failure is
/// retried a minute later while the current certificate stays.
pub async fn renew(
    cert: Arc<ServingCert>,
    authority: Arc<Authority>,
    names: Vec<String>,
    mut renew_at: SystemTime,
) {
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        match issue(&authority, &names) {
            Ok((key, next)) => {
                cert.current.store(Arc::new(key));
                renew_at = next;
                tracing::info!("webhook serving certificate renewed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the webhook certificate; retrying in a minute");
                renew_at = SystemTime::now() + Duration::from_secs(60);
            }
        }
    }
}

fn issue(
    authority: &Authority,
    names: &[String],
) -> Result<(CertifiedKey, SystemTime), ServingCertError> {
    let issued = authority
        .issue_dns_server(names)
        .map_err(ServingCertError::Sign)?;
    let load = |e: &dyn std::fmt::Display| ServingCertError::Load(e.to_string());
    let chain = issued
        .chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| load(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|e| load(&e))?;
    let signing = isthmus_identity::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| load(&e))?;
    let life = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default();
    Ok((
        CertifiedKey::new(chain, signing),
        issued.not_before + life / 2,
    ))
}
