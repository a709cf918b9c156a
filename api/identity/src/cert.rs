//! Inspecting X.509 certificates with `x509-parser`: SPIFFE ID (URI SAN), validity, CA flag.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::{SpiffeId, SpiffeIdError};

/// A certificate that cannot be used as an X.509 SVID (a SPIFFE identity document).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    #[error("the certificate has no URI SAN, so no SPIFFE ID")]
    NoSpiffeId,
    #[error("the certificate has {0} URI SANs; an X.509 SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("the certificate's URI SAN: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
}

/// What a certificate says, decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `basicConstraints: CA:TRUE`.
    pub is_ca: bool,
    /// DER of the SubjectPublicKeyInfo, to match a certificate against a private key.
    pub public_key_der: Vec<u8>,
}

impl CertInfo {
    /// Decodes a DER certificate. Trailing bytes after the certificate are an error.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let cert = decode(der)?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Malformed(format!("subjectAltName: {e}")))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                _ => {}
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            uri_sans,
            dns_sans,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The SPIFFE ID in the single URI SAN, as the X.509-SVID specification requires.
    pub fn spiffe_id(&self) -> Result<SpiffeId, CertError> {
        spiffe_id_of(self.uri_sans.iter().map(String::as_str))
    }

    /// Whether `at` lies within the validity period.
    pub fn is_valid_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// What checking a peer needs from its certificate, decoded on every handshake: the SPIFFE ID,
/// the CA flag and the validity. [`CertInfo`] also formats the names and copies the key, which
/// a handshake does not need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCert {
    pub id: SpiffeId,
    pub is_ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl PeerCert {
    /// Decodes a DER certificate as an X.509 SVID: the same errors as [`CertInfo::parse`]
    /// followed by [`CertInfo::spiffe_id`].
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let cert = decode(der)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Malformed(format!("subjectAltName: {e}")))?;
        let uris = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        Ok(Self {
            id: spiffe_id_of(uris)?,
            is_ca: cert.is_ca(),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
        })
    }
}

/// Decodes one DER certificate; trailing bytes after it are an error.
fn decode(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Malformed(format!(
            "{} bytes of trailing data",
            rest.len()
        )));
    }
    Ok(cert)
}

/// A CA certificate's validity period, or `None` if it is self-issued (a root: subject and
/// issuer the same).
pub(crate) fn validity_unless_self_issued(
    der: &[u8],
) -> Result<Option<(SystemTime, SystemTime)>, CertError> {
    let cert = decode(der)?;
    if cert.subject().as_raw() == cert.issuer().as_raw() {
        return Ok(None);
    }
    Ok(Some((
        to_system_time(cert.validity().not_before.timestamp()),
        to_system_time(cert.validity().not_after.timestamp()),
    )))
}

/// The SPIFFE ID of a certificate whose URI SANs are `uris`: exactly one, a SPIFFE ID.
fn spiffe_id_of<'a>(mut uris: impl Iterator<Item = &'a str>) -> Result<SpiffeId, CertError> {
    match (uris.next(), uris.next()) {
        (None, _) => Err(CertError::NoSpiffeId),
        (Some(uri), None) => Ok(SpiffeId::parse(uri)?),
        (Some(_), Some(_)) => Err(CertError::MultipleUriSans(2 + uris.count())),
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// Formats a time as RFC 3339 UTC, for messages and status.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        for input in [
            &b""[..],
            b"\x30\x03abc",
            b"not der at all",
            &[0x30, 0x82, 0xff, 0xff],
        ] {
            let err = CertInfo::parse(input).unwrap_err();
            assert!(
                err.to_string().starts_with("not a valid X.509 certificate"),
                "{err}"
            );
        }
    }

    #[test]
    fn format_time_is_rfc3339() {
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02T00:00:00Z"
        );
    }
}
