//! A probe of HTTP/2 CONNECT over mTLS, as a federation egress gateway speaks to a peer's
//! ingress gateway: TLS with a chosen SNI and client certificate (or none), then one CONNECT
//! stream to a chosen authority. Returns the response status, or why there was none
//! ([`ProbeError`]: the stage that failed and how, so that a negative check can name the
//! refusal it expects and a dead gateway's "connection refused" never passes for one).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_identity::pem::{read_certs, read_key};
use isthmus_identity::{
    CredentialCell, PeerPolicy, SpiffeVerifier, TrustBundle, TrustBundles, TrustDomain,
    WorkloadCertificate, client_config, shared_bundles,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The probe's own certificates, keys and configuration.
    Setup,
    /// The TCP connection.
    Tcp,
    /// The TLS handshake.
    Tls,
    /// The HTTP/2 connection preface and settings.
    Http2,
    /// The CONNECT request and its response.
    Connect,
    /// No outcome within 5 s.
    Timeout,
}

/// Why a probe got no CONNECT status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub stage: Stage,
    /// The I/O error's kind, where one is at the bottom of the failure.
    pub io_kind: Option<std::io::ErrorKind>,
    /// The error and its causes, joined by ": ".
    pub message: String,
}

impl ProbeError {
    fn new(stage: Stage, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = error.to_string();
        let mut io_kind = None;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                io_kind = Some(io.kind());
                // An I/O error's source skips the error it wraps (rustls's, with the alert).
                if let Some(inner) = io.get_ref() {
                    let text = inner.to_string();
                    if !message.contains(&text) {
                        message = format!("{message}: {text}");
                    }
                }
            }
            next = e.source();
            if let Some(cause) = next {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
            }
        }
        Self {
            stage,
            io_kind,
            message,
        }
    }

    fn setup(message: impl std::fmt::Display) -> Self {
        Self {
            stage: Stage::Setup,
            io_kind: None,
            message: message.to_string(),
        }
    }

    /// Nothing listens at the address: the gateway is gone (never a gateway's refusal).
    pub fn is_refused(&self) -> bool {
        self.stage == Stage::Tcp && self.io_kind == Some(std::io::ErrorKind::ConnectionRefused)
    }

    /// The TLS alert the server sent, by rustls's name (`"CertificateRequired"`,
    /// `"UnknownCA"`, `"BadCertificate"`...), in the handshake or right after it.
    pub fn tls_alert(&self) -> Option<&str> {
        let at = self.message.find("received fatal alert: ")? + "received fatal alert: ".len();
        let rest = &self.message[at..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    /// The server reset the connection (RST).
    pub fn is_reset(&self) -> bool {
        self.io_kind == Some(std::io::ErrorKind::ConnectionReset)
            || self.message.contains("reset by peer")
    }

    /// The server closed the connection without an alert or a response (end of file).
    pub fn is_closed(&self) -> bool {
        self.tls_alert().is_none()
            && !self.is_reset()
            && (self.io_kind == Some(std::io::ErrorKind::UnexpectedEof)
                || self.message.contains("unexpected EOF")
                || self.message.contains("connection closed"))
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.stage, self.message)
    }
}

impl std::error::Error for ProbeError {}

/// `client`: a folder with `cert-chain.pem` and `key.pem`. The server is verified as an SVID
/// of `server_td` against `server_root`.
pub fn connect(
    addr: SocketAddr,
    sni: &str,
    target: &str,
    client: Option<&Path>,
    server_root: &Path,
    server_td: &str,
) -> Result<u16, ProbeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::setup)?;
    runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            probe(addr, sni, target, client, server_root, server_td),
        )
        .await
        .map_err(|_| ProbeError {
            stage: Stage::Timeout,
            io_kind: None,
            message: "no outcome in 5 s".into(),
        })?
    })
}

async fn probe(
    addr: SocketAddr,
    sni: &str,
    target: &str,
    client: Option<&Path>,
    server_root: &Path,
    server_td: &str,
) -> Result<u16, ProbeError> {
    let td = TrustDomain::new(server_td).map_err(ProbeError::setup)?;
    let roots = read_certs(server_root).map_err(ProbeError::setup)?;
    let bundle = TrustBundle::new(td, roots.clone()).map_err(ProbeError::setup)?;
    let verifier = SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::AnyTrusted,
    );
    let certs = match client {
        Some(dir) => {
            let chain = read_certs(&dir.join("cert-chain.pem")).map_err(ProbeError::setup)?;
            let key = read_key(&dir.join("key.pem")).map_err(ProbeError::setup)?;
            let cell = CredentialCell::new();
            cell.store(&WorkloadCertificate::new(chain, key, roots).map_err(ProbeError::setup)?);
            Some(Arc::new(cell) as Arc<dyn rustls::client::ResolvesClientCert>)
        }
        None => None,
    };
    let tls = client_config(certs, Arc::new(verifier), &[b"h2"]).map_err(ProbeError::setup)?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::new(Stage::Tcp, &e))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(ProbeError::setup)?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| ProbeError::new(Stage::Tls, &e))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(AlertFirst::new(stream)),
    )
    .await
    .map_err(|e| ProbeError::new(Stage::Http2, &e))?;
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::setup)?;
    match sender.send_request(request).await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => {
            let mut error = ProbeError::new(Stage::Connect, &e);
            // The connection's own error says why (an alert, a reset, a GOAWAY).
            let ended = tokio::time::timeout(std::time::Duration::from_secs(1), connection).await;
            if let Ok(Ok(Err(cause))) = ended {
                let cause = ProbeError::new(Stage::Connect, &cause);
                if !error.message.contains(&cause.message) {
                    error.message = format!("{}: {}", error.message, cause.message);
                }
                error.io_kind = error.io_kind.or(cause.io_kind);
            }
            Err(error)
        }
    }
}

/// The TLS stream, reporting what the server said rather than what the probe ran into. In TLS
/// 1.3 the server judges the client's certificate after the client's side of the handshake:
/// its alert (then its close) races the probe's first HTTP/2 writes, and a write to the closed
/// connection fails with "broken pipe" or "reset". Such a write waits for what the server had
/// sent before closing and fails with the alert, if there was one (the probe's 5 s bound
/// holds).
struct AlertFirst<S> {
    inner: S,
    /// The write error (broken pipe or reset) held while the alert is read.
    failed: Option<io::Error>,
}

impl<S: AsyncRead + Unpin> AlertFirst<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            failed: None,
        }
    }

    /// Takes a write error; a broken pipe or reset becomes the alert read after it.
    fn failed<T>(&mut self, cx: &mut Context<'_>, error: io::Error) -> Poll<io::Result<T>> {
        if !matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return Poll::Ready(Err(error));
        }
        self.failed = Some(error);
        self.why(cx)
    }

    /// The alert the server sent, once read; the write error if there was none.
    fn why<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(alert)) if alert.kind() == io::ErrorKind::InvalidData => {
                    self.failed = None;
                    return Poll::Ready(Err(alert));
                }
                // What the server sent before its alert (nothing is expected): skipped.
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => {
                    let error = self.failed.take().expect("a write error is held");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AlertFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return self.why(cx);
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AlertFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.failed.is_some() {
            return self.why(cx);
        }
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Err(e)) => self.failed(cx, e),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_some() {
            return self.why(cx);
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.failed(cx, e),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
