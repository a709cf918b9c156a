//! The CA's signing material: generated on first start and kept in the state directory, or
//! plugged in as files in the layout Istio users know as `cacerts`:
//!
//! | file | content |
//! |---|---|
//! | `ca-cert.pem` | the signing (intermediate) CA certificate |
//! | `ca-key.pem` | its private key, PKCS#8 (convert with `openssl pkcs8 -topk8 -nocrypt`) |
//! | `root-cert.pem` | the root(s) of the trust domain |
//! | `cert-chain.pem` | `ca-cert.pem` followed by the intermediates up to the root |
//!
//! Anything wrong (unreadable file, garbage, a key that does not match its certificate, an
//! expired or not-yet-valid CA, a chain that does not lead to the root) stops start-up with an
//! error naming the file and the problem.

use crate::private_files::{create_private_dir, write_private};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use isthmus_identity::pem::{PemError, cert_to_pem, read_certs};
use isthmus_identity::{CertInfo, TrustDomain, format_time, profile};
use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Lifetime of a generated root.
const GENERATED_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// CA material that cannot be used; names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CaLoadError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{file}: {problem}")]
    Invalid { file: PathBuf, problem: String },
    #[error("{dir}: cannot write the CA: {source}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CaLoadError {
    fn invalid(file: &Path, problem: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A usable signing CA.
#[derive(Debug)]
pub struct CaMaterial {
    pub key: KeyPair,
    /// The signing CA's certificate.
    pub cert: CertificateDer<'static>,
    /// Certificates between the signing CA and the root, excluding both.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The trust domain's roots.
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    /// Where it was loaded from, for logs.
    pub origin: String,
}

impl CaMaterial {
    /// Loads `STATE/ca/{root-cert,root-key}.pem`, or generates and writes them on first start.
    pub fn load_or_generate(
        state_dir: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<Self, CaLoadError> {
        let dir = state_dir.join("ca");
        let cert_file = dir.join("root-cert.pem");
        let key_file = dir.join("root-key.pem");
        if !cert_file.exists() && !key_file.exists() {
            generate(&dir, &cert_file, &key_file, trust_domain)?;
        }
        let mut material = load_signing_pair(&cert_file, &key_file, SystemTime::now())?;
        material.roots = vec![material.cert.clone()];
        material.origin = format!("self-signed root in {}", dir.display());
        Ok(material)
    }

    /// Loads a plugged-in CA from `dir` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`).
    pub fn load_plugged(dir: &Path) -> Result<Self, CaLoadError> {
        let now = SystemTime::now();
        let mut material =
            load_signing_pair(&dir.join("ca-cert.pem"), &dir.join("ca-key.pem"), now)?;
        let root_file = dir.join("root-cert.pem");
        let roots = read_certs(&root_file)?;
        for (i, root) in roots.iter().enumerate() {
            let info = parse(&root_file, root)?;
            if !info.is_ca {
                return Err(CaLoadError::invalid(
                    &root_file,
                    format!("certificate {i} is not a CA"),
                ));
            }
            check_validity(&root_file, &info, now)?;
        }
        let chain_file = dir.join("cert-chain.pem");
        let chain = read_certs(&chain_file)?;
        if chain[0] != material.cert {
            return Err(CaLoadError::invalid(
                &chain_file,
                "must start with the certificate in ca-cert.pem",
            ));
        }
        // Walk the chain: each certificate must be signed by the next, the last by a root.
        let mut intermediates = Vec::new();
        for (i, cert) in chain.iter().enumerate() {
            if roots.contains(cert) {
                break; // cert-chain.pem may end with the root itself.
            }
            let issuer = match chain.get(i + 1) {
                Some(next) if !roots.contains(next) => next,
                _ => roots
                    .iter()
                    .find(|root| signed_by(cert, root))
                    .ok_or_else(|| {
                        CaLoadError::invalid(
                            &chain_file,
                            format!("certificate {i} is not signed by any root in root-cert.pem"),
                        )
                    })?,
            };
            if !signed_by(cert, issuer) {
                return Err(CaLoadError::invalid(
                    &chain_file,
                    format!("certificate {i} is not signed by certificate {}", i + 1),
                ));
            }
            check_validity(&chain_file, &parse(&chain_file, cert)?, now)?;
            if i > 0 {
                intermediates.push(cert.clone());
            }
        }
        material.intermediates = intermediates;
        material.roots = roots;
        material.origin = format!("plugged-in CA from {}", dir.display());
        Ok(material)
    }

    /// The roots as PEM text.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|c| cert_to_pem(c)).collect()
    }
}

fn load_signing_pair(
    cert_file: &Path,
    key_file: &Path,
    now: SystemTime,
) -> Result<CaMaterial, CaLoadError> {
    let certs = read_certs(cert_file)?;
    let cert = certs[0].clone();
    let info = parse(cert_file, &cert)?;
    if !info.is_ca {
        return Err(CaLoadError::invalid(
            cert_file,
            "not a CA certificate (basicConstraints CA:TRUE is missing)",
        ));
    }
    check_validity(cert_file, &info, now)?;
    let key_text = fs::read_to_string(key_file).map_err(|e| PemError::Read {
        origin: key_file.display().to_string(),
        source: e,
    })?;
    if key_text.trim().is_empty() {
        return Err(PemError::Empty {
            origin: key_file.display().to_string(),
        }
        .into());
    }
    let key = KeyPair::from_pem(&key_text).map_err(|e| {
        let hint = if key_text.contains("BEGIN RSA PRIVATE KEY")
            || key_text.contains("BEGIN EC PRIVATE KEY")
        {
            " (convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`)"
        } else {
            ""
        };
        CaLoadError::invalid(key_file, format!("not a usable private key: {e}{hint}"))
    })?;
    if key.subject_public_key_info() != info.public_key_der {
        return Err(CaLoadError::invalid(
            key_file,
            format!("does not match the certificate in {}", cert_file.display()),
        ));
    }
    Ok(CaMaterial {
        key,
        cert,
        intermediates: Vec::new(),
        roots: Vec::new(),
        not_after: info.not_after,
        origin: String::new(),
    })
}

fn parse(file: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, CaLoadError> {
    CertInfo::parse(der).map_err(|e| CaLoadError::invalid(file, e.to_string()))
}

fn check_validity(file: &Path, info: &CertInfo, now: SystemTime) -> Result<(), CaLoadError> {
    if now > info.not_after {
        return Err(CaLoadError::invalid(
            file,
            format!(
                "the CA certificate expired at {}",
                format_time(info.not_after)
            ),
        ));
    }
    if now < info.not_before {
        return Err(CaLoadError::invalid(
            file,
            format!(
                "the CA certificate is not valid before {}",
                format_time(info.not_before)
            ),
        ));
    }
    Ok(())
}

fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(issuer),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn generate(
    dir: &Path,
    cert_file: &Path,
    key_file: &Path,
    td: &TrustDomain,
) -> Result<(), CaLoadError> {
    let write_err = |source| CaLoadError::Write {
        dir: dir.to_owned(),
        source,
    };
    let now = SystemTime::now();
    let params = profile::ca_cert_params(
        td,
        &format!("Isthmus root CA for {td}"),
        now - Duration::from_secs(300),
        now + GENERATED_ROOT_LIFETIME,
    );
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| write_err(std::io::Error::other(e)))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| write_err(std::io::Error::other(e)))?;
    create_private_dir(dir).map_err(write_err)?;
    write_private(key_file, key.serialize_pem().as_bytes()).map_err(write_err)?;
    write_private(cert_file, cert.pem().as_bytes()).map_err(write_err)?;
    tracing::info!(dir = %dir.display(), trust_domain = %td, "generated a new root CA");
    Ok(())
}
