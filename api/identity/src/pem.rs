//! Reading certificates and keys from PEM, with errors that say where the input came from
//! (a file path, or a description such as "CSR") and what is wrong with it.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM input that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: is empty")]
    Empty { origin: String },
    #[error("{origin}: no PEM {label} block found")]
    NoItems { origin: String, label: &'static str },
    #[error("{origin}: malformed PEM: {detail}")]
    Malformed { origin: String, detail: String },
}

/// All `CERTIFICATE` blocks of a PEM text, in order. Other block types are skipped.
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    check_not_empty(pem, origin)?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(e, origin))?;
    if certs.is_empty() {
        return Err(PemError::NoItems {
            origin: origin.to_owned(),
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) of a PEM text.
pub fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    check_not_empty(pem, origin)?;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::NoItems {
            origin: origin.to_owned(),
            label: "PRIVATE KEY",
        },
        other => malformed(other, origin),
    })
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certs_from_pem(&read(path)?, &path.display().to_string())
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    key_from_pem(&read(path)?, &path.display().to_string())
}

/// PEM text of certificates, one block each.
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs.into_iter().map(|c| cert_to_pem(c)).collect()
}

/// PEM text of one certificate.
pub fn cert_to_pem(cert: &CertificateDer<'_>) -> String {
    to_pem("CERTIFICATE", cert.as_ref())
}

/// PEM text of a DER blob with the given label (RFC 7468, 64-column base64).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 64);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        origin: path.display().to_string(),
        source,
    })
}

fn check_not_empty(pem: &[u8], origin: &str) -> Result<(), PemError> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(PemError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(())
}

fn malformed(e: pem::Error, origin: &str) -> PemError {
    let detail = match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "missing \"-----END {}-----\"",
                String::from_utf8_lossy(&end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            let line: String = String::from_utf8_lossy(&line).chars().take(80).collect();
            format!("bad BEGIN line {line:?}")
        }
        pem::Error::Base64Decode(msg) => format!("bad base64: {msg}"),
        other => other.to_string(),
    };
    PemError::Malformed {
        origin: origin.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_input_name_the_origin_and_problem() {
        let err = certs_from_pem(b"  \n", "root-cert.pem").unwrap_err();
        assert_eq!(err.to_string(), "root-cert.pem: is empty");

        let err = certs_from_pem(b"hello world", "root-cert.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "root-cert.pem: no PEM CERTIFICATE block found"
        );

        let err = certs_from_pem(
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "x.pem",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.pem: malformed PEM: bad base64"),
            "{err}"
        );

        let err = certs_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n", "x.pem").unwrap_err();
        assert!(
            err.to_string()
                .contains("missing \"-----END CERTIFICATE-----\""),
            "{err}"
        );

        let err = key_from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "k.pem",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "k.pem: no PEM PRIVATE KEY block found");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = read_certs(Path::new("/nonexistent/ca-cert.pem")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/ca-cert.pem: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = to_pem("CERTIFICATE", &der);
        assert!(
            text.lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        let back = certs_from_pem(text.as_bytes(), "t").unwrap();
        assert_eq!(back[0].as_ref(), der.as_slice());
        for len in 0..6 {
            let text = to_pem("CERTIFICATE", &der[..len + 1]);
            assert_eq!(
                certs_from_pem(text.as_bytes(), "t").unwrap()[0].as_ref(),
                &der[..len + 1]
            );
        }
    }
}
