//! One JWKS fetch: `GET` over HTTP or HTTPS (verified against the system's roots), bounded in
//! time and size, the answer checked to be a JWKS document with keys.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// How long one fetch may take (Istio's default JWKS fetch timeout).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest document accepted.
const MAX_BYTES: usize = 1 << 20;
/// Where the system's roots are (Debian, Ubuntu, Alpine).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The JWKS document at `uri`, or why not.
pub async fn fetch(uri: &str) -> Result<String, String> {
    tokio::time::timeout(TIMEOUT, get(uri))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

async fn get(uri: &str) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("not a URI: {e}"))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("only http and https".into()),
    };
    let host = parsed.host().ok_or("no host")?.to_owned();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host.clone());
    let body = if https {
        let config = client_config()?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        request(TokioIo::new(tls), &authority, &path).await?
    } else {
        request(TokioIo::new(tcp), &authority, &path).await?
    };
    let text = String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())?;
    check(&text)?;
    Ok(text)
}

async fn request<T>(io: T, authority: &str, path: &str) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body: {e}"))
}

fn client_config() -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(SYSTEM_ROOTS).map_err(|e| format!("{SYSTEM_ROOTS}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        isthmus_identity::pem::certs_from_pem(&pem, SYSTEM_ROOTS).map_err(|e| e.to_string())?;
    roots.add_parsable_certificates(certs);
    rustls::ClientConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| e.to_string())
}

/// A JWKS document: JSON with a non-empty `keys` list.
pub fn check(text: &str) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match doc.get("keys") {
        Some(serde_json::Value::Array(keys)) if !keys.is_empty() => Ok(()),
        _ => Err("not a JWKS document (no keys)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_jwks_with_keys_is_taken() {
        assert!(check(r#"{"keys": [{"kty": "RSA"}]}"#).is_ok());
        for bad in [r#"{"keys": []}"#, r#"{"key": 1}"#, "<html>", ""] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn other_schemes_and_dead_ports_are_errors_not_hangs() {
        assert!(fetch("ftp://example.com/jwks").await.is_err());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or(1, |a| a.port());
        let e = fetch(&format!("http://127.0.0.1:{port}/jwks")).await;
        assert!(e.as_ref().is_err_and(|e| e.contains("connect")), "{e:?}");
    }
}
