//! The status port, Istio's pilot-agent port 15020 (`--status-addr`, off unless given): what
//! the kubelet calls once the sidecar injector has rewritten a pod's probes, so that they work
//! when the application's own ports accept only mTLS (`PeerAuthentication` STRICT), which the
//! kubelet cannot speak.
//!
//! - `GET /healthz/ready`: `200` when the proxy is ready, `503` with what is missing otherwise;
//!   the rule is the admin port's `/ready` (`AdminState::not_ready` in `admin.rs`).
//! - `GET /app-health/<container>/<readyz|livez|startupz>`: runs the application's original
//!   probe that `--app-probers` holds under that path and answers as the kubelet would have
//!   seen it: an HTTP probe answers with the application's status code (the kubelet counts
//!   200–399 as success) and the first 10 KiB of its body, never its headers (a `Location`
//!   would make the kubelet follow a redirect the application meant for the probe); a TCP probe
//!   answers `200` when the connection opens. A probe that cannot connect, fails its TLS or
//!   HTTP exchange, or takes longer than its `timeoutSeconds` answers `503` with the reason; a
//!   path with no probe, `404`.
//! - `GET /stats/prometheus`: the proxy's metrics, exactly the admin port's `/stats/prometheus`
//!   (the same registry and the same `Accept` negotiation: the request goes to the admin
//!   router), so that Prometheus in the cluster, which cannot reach the loopback admin port,
//!   scrapes the sidecar at the port and path the injector's `prometheus.io/*` annotations name,
//!   as it scrapes Istio's pilot-agent.
//!
//! `--app-probers` (env `ISTHMUS_KUBE_APP_PROBERS`) is Istio's `ISTIO_KUBE_APP_PROBERS` JSON: an
//! object from the rewritten path to the original probe,
//!
//! ```json
//! {"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP",
//!    "host": "", "httpHeaders": [{"name": "X-A", "value": "b"}]}, "timeoutSeconds": 1},
//!  "/app-health/app/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2}}
//! ```
//!
//! Each probe has exactly one of `httpGet` (`port`; `path`, default `/`; `scheme` `HTTP` or
//! `HTTPS`, any case, default `HTTP`; `host`, default `127.0.0.1`; `httpHeaders`, sent as given,
//! a `Host` among them replacing the default `host:port`) and `tcpSocket` (`port`; `host`,
//! default `127.0.0.1`); `timeoutSeconds` defaults to 1 (0 counts as 1, the kubelet's minimum).
//! Ports are numbers (the injector resolves named ports; a numeric string is accepted). Unknown
//! fields are ignored; a `grpc` probe is refused (not supported). A key must be
//! `/app-health/<container>/<readyz|livez|startupz>`. An empty value means no probes. Errors
//! name the field's path (`/app-health/app/readyz.httpGet.port`); the proxy does not start with
//! a bad value (`StartError::AppProbers`).
//!
//! HTTPS probes do not verify the application's certificate, as the kubelet does not (the
//! handshake's signatures are still checked). The application is in the same network namespace:
//! the default host is loopback, and the connections go out from the proxy's UID, which the
//! transparent-capture rules exclude (`capture.rs`), so they reach the application directly,
//! never through the outbound listener; the status port itself is one of the proxy ports that
//! inbound capture leaves alone (`capture::PROXY_INBOUND_PORTS`).
//!
//! An injected sidecar listens on every address (`0.0.0.0:15020`: the kubelet comes from the
//! node), so anyone in the cluster can reach the port, and [`serve`] bounds what a client can
//! hold: HTTP/1.1 only, a request head must arrive within [`HEADER_TIMEOUT`] (also the longest
//! a kept-alive connection stays idle) and fit in [`MAX_HEAD`], and at most
//! [`MAX_CONNECTIONS`] connections are open at once (more are closed as soon as they are
//! accepted). A request in progress is bounded by its probe's `timeoutSeconds`. On shutdown it
//! stops accepting, lets the requests in progress finish (idle connections close at once) and
//! returns once every connection has closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::admin::AdminState;

/// The probe kinds of `/app-health/<container>/<kind>`.
pub const PROBE_KINDS: [&str; 3] = ["readyz", "livez", "startupz"];

/// How long a client may take to send a request's head, and stay idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; the kubelet needs a few per probed container.
pub const MAX_CONNECTIONS: usize = 64;
/// The largest request head (hyper answers a larger one `431` or closes the connection).
pub const MAX_HEAD: usize = 64 * 1024;

/// How much of the application's body an HTTP probe reads and passes on (the kubelet's limit).
const MAX_BODY: usize = 10 * 1024;

/// The application's original probes, by the path the injector rewrote them to.
#[derive(Debug, Clone, Default)]
pub struct AppProbers {
    probers: BTreeMap<String, Prober>,
}

/// Why `--app-probers` does not parse. `path` is the failing field's path.
#[derive(Debug, thiserror::Error)]
pub enum ProbersError {
    /// Not JSON, or not of the probes' shape.
    #[error("at {path}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// JSON of the right shape with a value a probe cannot use.
    #[error("at {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl AppProbers {
    /// Parses Istio's `ISTIO_KUBE_APP_PROBERS` JSON (module documentation); empty text is no
    /// probes.
    pub fn parse(json: &str) -> Result<Self, ProbersError> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let wire: BTreeMap<String, WireProber> =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
                let path = match e.path().to_string() {
                    // `.`: the value itself; `?`: a map key that did not parse.
                    top if top == "." || top == "?" => "the top level".to_owned(),
                    path => path,
                };
                ProbersError::Json {
                    path,
                    source: e.into_inner(),
                }
            })?;
        deserializer.end().map_err(|source| ProbersError::Json {
            path: "the end of the object".to_owned(),
            source,
        })?;
        let probers = wire
            .into_iter()
            .map(|(key, prober)| {
                check_key(&key)?;
                let prober = Prober::from_wire(&key, prober)?;
                Ok((key, prober))
            })
            .collect::<Result<_, ProbersError>>()?;
        Ok(Self { probers })
    }

    pub fn is_empty(&self) -> bool {
        self.probers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.probers.len()
    }

    /// The probe under `path` (`/app-health/<container>/<kind>`).
    pub fn get(&self, path: &str) -> Option<&Prober> {
        self.probers.get(path)
    }
}

fn check_key(key: &str) -> Result<(), ProbersError> {
    let valid = key
        .strip_prefix("/app-health/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(container, kind)| {
            !container.is_empty() && PROBE_KINDS.contains(&kind) && !container.contains('?')
        });
    if valid {
        Ok(())
    } else {
        Err(ProbersError::Invalid {
            path: key.to_owned(),
            reason: format!(
                "expected a key /app-health/<container>/<{}>",
                PROBE_KINDS.join("|")
            ),
        })
    }
}

// The JSON as Istio writes it (Kubernetes' probe handler fields). Unknown fields are ignored.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProber {
    http_get: Option<WireHttpGet>,
    tcp_socket: Option<WireTcpSocket>,
    grpc: Option<serde::de::IgnoredAny>,
    timeout_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireHttpGet {
    path: Option<String>,
    port: Port,
    host: Option<String>,
    scheme: Option<String>,
    http_headers: Option<Vec<WireHeader>>,
}

#[derive(Deserialize)]
struct WireHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct WireTcpSocket {
    port: Port,
    host: Option<String>,
}

/// A port number: a JSON number, or a string of digits (Kubernetes' `IntOrString`); never a
/// name.
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Port;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number 1-65535")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(port) if port != 0 => Ok(Port(port)),
                    _ => Err(E::custom(format!("{v} is not a port number 1-65535"))),
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is not a port number 1-65535"))),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "{v:?} is not a port number (named ports must be resolved to numbers by the injector)"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One application probe, validated.
#[derive(Debug, Clone)]
pub struct Prober {
    check: Check,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Check {
    Http(Box<HttpCheck>),
    Tcp(Target),
}

/// Where a probe connects.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
}

#[derive(Debug, Clone)]
struct HttpCheck {
    target: Target,
    /// `Some` for `HTTPS`: the name the TLS handshake sends (none for an IP address).
    tls: Option<ServerName<'static>>,
    path: PathAndQuery,
    /// `host:port`, unless `headers` has a `Host`.
    host_header: HeaderValue,
    headers: HeaderMap,
}

impl Prober {
    fn from_wire(key: &str, wire: WireProber) -> Result<Self, ProbersError> {
        let invalid = |field: &str, reason: String| ProbersError::Invalid {
            path: if field.is_empty() {
                key.to_owned()
            } else {
                format!("{key}.{field}")
            },
            reason,
        };
        let check = match (wire.http_get, wire.tcp_socket) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "",
                    "httpGet and tcpSocket: a probe has one handler".into(),
                ));
            }
            (None, None) if wire.grpc.is_some() => {
                return Err(invalid("grpc", "gRPC probes are not supported".into()));
            }
            (None, None) => return Err(invalid("", "no httpGet or tcpSocket".into())),
            (None, Some(tcp)) => Check::Tcp(Target {
                host: host(tcp.host.as_deref())
                    .map_err(|reason| invalid("tcpSocket.host", reason))?,
                port: tcp.port.0,
            }),
            (Some(get), None) => {
                let https = match get.scheme.as_deref().unwrap_or("") {
                    "" => false,
                    s if s.eq_ignore_ascii_case("http") => false,
                    s if s.eq_ignore_ascii_case("https") => true,
                    other => {
                        return Err(invalid(
                            "httpGet.scheme",
                            format!("{other:?}: expected HTTP or HTTPS"),
                        ));
                    }
                };
                let target = Target {
                    host: host(get.host.as_deref())
                        .map_err(|reason| invalid("httpGet.host", reason))?,
                    port: get.port.0,
                };
                let tls = if https {
                    Some(
                        ServerName::try_from(target.host.clone())
                            .map_err(|e| invalid("httpGet.host", e.to_string()))?,
                    )
                } else {
                    None
                };
                let path = match get.path.as_deref().unwrap_or("") {
                    "" => Ok(PathAndQuery::from_static("/")),
                    p if p.starts_with('/') => p.parse(),
                    p => format!("/{p}").parse(),
                }
                .map_err(|e: http::uri::InvalidUri| invalid("httpGet.path", e.to_string()))?;
                let authority = match target.host.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", target.port),
                    _ => format!("{}:{}", target.host, target.port),
                };
                let host_header = HeaderValue::try_from(authority)
                    .map_err(|e| invalid("httpGet.host", e.to_string()))?;
                let mut headers = HeaderMap::new();
                for (i, h) in get.http_headers.unwrap_or_default().into_iter().enumerate() {
                    let name = HeaderName::try_from(h.name.as_str()).map_err(|e| {
                        invalid(&format!("httpGet.httpHeaders[{i}].name"), e.to_string())
                    })?;
                    let value = HeaderValue::try_from(h.value).map_err(|e| {
                        invalid(&format!("httpGet.httpHeaders[{i}].value"), e.to_string())
                    })?;
                    headers.append(name, value);
                }
                Check::Http(Box::new(HttpCheck {
                    target,
                    tls,
                    path,
                    host_header,
                    headers,
                }))
            }
        };
        Ok(Self {
            check,
            timeout: Duration::from_secs(u64::from(wire.timeout_seconds.unwrap_or(1).max(1))),
        })
    }

    /// Runs the probe within its timeout. `user_agent`: the kubelet's, passed on unless the
    /// probe sets its own.
    async fn run(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        user_agent: Option<&HeaderValue>,
    ) -> Result<Answer, ProbeFailure> {
        let attempt = async {
            match &self.check {
                Check::Tcp(target) => {
                    connect(target).await?;
                    Ok(Answer {
                        status: StatusCode::OK,
                        content_type: None,
                        body: Bytes::new(),
                    })
                }
                Check::Http(check) => check.run(tls, user_agent).await,
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(ProbeFailure::TimedOut(self.timeout)))
    }
}

/// A probe host: the default is loopback; brackets around an IPv6 address are dropped.
fn host(host: Option<&str>) -> Result<String, String> {
    let host = host.unwrap_or("").trim();
    if host.is_empty() {
        return Ok("127.0.0.1".to_owned());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<IpAddr>().is_ok() || ServerName::try_from(host).is_ok() {
        Ok(host.to_owned())
    } else {
        Err(format!("{host:?} is not an IP address or a host name"))
    }
}

/// What the application answered, as the kubelet would have seen it.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

/// Why a probe failed (answered `503`).
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("connect {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("the application answered {0}")]
    Informational(StatusCode),
    #[error("timed out after {}s", .0.as_secs())]
    TimedOut(Duration),
}

async fn connect(target: &Target) -> Result<TcpStream, ProbeFailure> {
    TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ProbeFailure::Connect {
            host: target.host.clone(),
            port: target.port,
            source,
        })
}

impl HttpCheck {
    async fn run(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        user_agent: Option<&HeaderValue>,
    ) -> Result<Answer, ProbeFailure> {
        let stream = connect(&self.target).await?;
        let request = self.request(user_agent);
        match &self.tls {
            None => exchange(TokioIo::new(stream), request).await,
            Some(name) => {
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name.clone(), stream)
                    .await
                    .map_err(ProbeFailure::Tls)?;
                exchange(TokioIo::new(stream), request).await
            }
        }
    }

    /// `GET path` with the kubelet's default headers, then the probe's own: a name the probe
    /// sets replaces the default.
    fn request(&self, user_agent: Option<&HeaderValue>) -> http::Request<Empty<Bytes>> {
        let mut request = http::Request::new(Empty::new());
        *request.uri_mut() = http::Uri::from(self.path.clone());
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host_header.clone());
        headers.insert(
            header::USER_AGENT,
            user_agent
                .cloned()
                .unwrap_or(HeaderValue::from_static("isthmus-proxy-prober")),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        for name in self.headers.keys() {
            headers.remove(name);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        request
    }
}

/// One HTTP/1.1 request on `io`, the connection driven alongside; the body read up to
/// [`MAX_BODY`].
async fn exchange<IO>(io: IO, request: http::Request<Empty<Bytes>>) -> Result<Answer, ProbeFailure>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ProbeFailure::Http)?;
    let answer = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let mut body = response.into_body();
        let mut read = BytesMut::new();
        while read.len() < MAX_BODY {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(data) = frame?.into_data() {
                let room = MAX_BODY - read.len();
                read.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok::<_, hyper::Error>(Answer {
            status,
            content_type,
            body: read.freeze(),
        })
    };
    tokio::pin!(connection, answer);
    let mut connection_ended = false;
    let answer = loop {
        tokio::select! {
            answer = &mut answer => break answer,
            // The connection may end (the application closed it) before the answer has been
            // taken; the answer then completes or fails on its own.
            _ = &mut connection, if !connection_ended => connection_ended = true,
        }
    };
    let answer = answer.map_err(ProbeFailure::Http)?;
    if answer.status.is_informational() {
        return Err(ProbeFailure::Informational(answer.status));
    }
    Ok(answer)
}

/// The kubelet does not verify an HTTPS probe's certificate; the handshake's signatures are
/// still checked.
#[derive(Debug)]
struct NoCertificateVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The HTTPS probes' client configuration: no certificate verification, HTTP/1.1.
fn probe_tls() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(isthmus_identity::provider());
    let verifier = NoCertificateVerification(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What the `/app-health` route holds.
#[derive(Debug)]
struct Probes {
    probers: AppProbers,
    tls: Arc<rustls::ClientConfig>,
}

impl Probes {
    async fn answer(
        &self,
        container: &str,
        kind: &str,
        user_agent: Option<&HeaderValue>,
    ) -> Response {
        let key = format!("/app-health/{container}/{kind}");
        let Some(prober) = self.probers.get(&key) else {
            return (
                StatusCode::NOT_FOUND,
                format!("no application probe for {key} (--app-probers)\n"),
            )
                .into_response();
        };
        match prober.run(&self.tls, user_agent).await {
            Ok(answer) => {
                let mut response = (answer.status, answer.body).into_response();
                match answer.content_type {
                    Some(content_type) => {
                        response
                            .headers_mut()
                            .insert(header::CONTENT_TYPE, content_type);
                    }
                    None => {
                        response.headers_mut().remove(header::CONTENT_TYPE);
                    }
                }
                response
            }
            Err(failure) => {
                tracing::debug!(probe = %key, error = %failure, "application probe failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("probe {key} failed: {failure}\n"),
                )
                    .into_response()
            }
        }
    }
}

/// `/stats/prometheus`: the admin router's own answer to `GET /stats/prometheus` with the
/// request's `Accept`, so that both ports serve the same registry the same way.
fn metrics(admin: AdminState) -> axum::routing::MethodRouter {
    let admin = TowerToHyperService::new(crate::admin::router(admin));
    get(move |headers: HeaderMap| {
        let mut request = http::Request::new(axum::body::Body::empty());
        *request.uri_mut() = http::Uri::from_static("/stats/prometheus");
        if let Some(accept) = headers.get(header::ACCEPT) {
            request.headers_mut().insert(header::ACCEPT, accept.clone());
        }
        let answer = hyper::service::Service::call(&admin, request);
        async move {
            match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    })
}

/// The status port's routes: readiness by `ready`'s rule, the application probes of `probers`,
/// the admin port's metrics.
/// Fails only if the HTTPS probes' TLS configuration cannot be built.
pub fn router(ready: AdminState, probers: AppProbers) -> Result<Router, rustls::Error> {
    let probes = Arc::new(Probes {
        probers,
        tls: Arc::new(probe_tls()?),
    });
    let metrics = metrics(ready.clone());
    Ok(Router::new()
        .route("/healthz/ready", crate::admin::readiness(ready))
        .route("/stats/prometheus", metrics)
        .route(
            "/app-health/{container}/{kind}",
            get(
                move |Path((container, kind)): Path<(String, String)>, headers: HeaderMap| {
                    let probes = probes.clone();
                    async move {
                        probes
                            .answer(&container, &kind, headers.get(header::USER_AGENT))
                            .await
                    }
                },
            ),
        ))
}

/// The bounds [`serve`] holds its connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a request's head, and stay idle between requests.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    /// [`HEADER_TIMEOUT`] and [`MAX_CONNECTIONS`].
    fn default() -> Self {
        Self {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` (the status port's, [`router`]) on `listener` within `limits` until `stop`
/// resolves; then stops accepting, lets the requests in progress finish (idle connections
/// close at once) and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = pin!(stop);
    // Warned once each time the limit is reached, not for every connection refused.
    let mut full = false;
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // As axum's own accept loop: a connection that failed before it was
                    // accepted is nothing; anything else (out of file descriptors) is waited
                    // out.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "status port: accept failed");
                        tokio::select! {
                            () = &mut stop => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !full {
                tracing::warn!(
                    limit = limits.max_connections,
                    "status port: too many connections open, closing new ones"
                );
                full = true;
            }
            drop(stream);
            continue;
        };
        full = false;
        let service = TowerToHyperService::new(router.clone());
        let mut closed = closed.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_HEAD);
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async {
                    let _ = closed.wait_for(|closed| *closed).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "status port connection ended");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::http::Uri;
    use isthmus_identity::SpiffeId;
    use isthmus_identity::testing::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::bootstrap::{self, Options, StartError};
    use crate::listener::error::ErrorChain;

    /// What the fake application saw of one request.
    type Seen = (Uri, HeaderMap);

    /// An HTTP application on loopback: `/status/<code>` answers that code, anything else `200`
    /// with body `app says hi`; every request is reported.
    async fn app() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let _ = seen_tx.send((uri.clone(), headers));
            async move { app_answer(&uri) }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, seen)
    }

    fn app_answer(uri: &Uri) -> Response {
        let status = uri
            .path()
            .strip_prefix("/status/")
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::OK);
        (status, "app says hi").into_response()
    }

    /// The status port on loopback with `probers` (ready: no identity, no xDS).
    async fn status_port(probers: &str) -> SocketAddr {
        status_port_with(AdminState::new(None), probers).await
    }

    async fn status_port_with(ready: AdminState, probers: &str) -> SocketAddr {
        let router = router(ready, AppProbers::parse(probers).unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            router,
            Limits::default(),
            std::future::pending(),
        ));
        address
    }

    /// `GET path` as the kubelet sends it; the status code and body.
    async fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response[9..12].parse().unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        (status, body.to_owned())
    }

    fn http_prober(key: &str, port: u16, path: &str) -> String {
        format!(
            r#""{key}":{{"httpGet":{{"path":"{path}","port":{port},"scheme":"HTTP","host":""}},"timeoutSeconds":1}}"#
        )
    }

    #[tokio::test]
    async fn an_http_probe_passes_the_applications_status_code_through() {
        let (app, _seen) = app().await;
        let probers = format!(
            "{{{},{}}}",
            http_prober("/app-health/app/readyz", app.port(), "/ready"),
            http_prober("/app-health/app/livez", app.port(), "/status/500"),
        );
        let status = status_port(&probers).await;
        assert_eq!(
            get(status, "/app-health/app/readyz").await,
            (200, "app says hi".to_owned())
        );
        assert_eq!(
            get(status, "/app-health/app/livez").await,
            (500, "app says hi".to_owned())
        );
    }

    #[tokio::test]
    async fn an_http_probe_sends_its_path_and_headers() {
        let (app, mut seen) = app().await;
        let probers = format!(
            r#"{{"/app-health/web/startupz":{{"httpGet":{{"path":"/started?deep=1","port":{},"httpHeaders":[{{"name":"X-A","value":"b"}},{{"name":"X-A","value":"c"}},{{"name":"Accept","value":"text/plain"}}],"unknownField":true}},"timeoutSeconds":3,"periodSeconds":10}}}}"#,
            app.port()
        );
        let status = status_port(&probers).await;
        assert_eq!(get(status, "/app-health/web/startupz").await.0, 200);
        let (uri, headers) = seen.recv().await.unwrap();
        assert_eq!(uri.to_string(), "/started?deep=1");
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-a"), ["b", "c"]);
        assert_eq!(
            all("accept"),
            ["text/plain"],
            "the probe's header replaces the default"
        );
        assert_eq!(
            all("user-agent"),
            ["kube-probe/1.33"],
            "the kubelet's user agent"
        );
        assert_eq!(all("host"), [format!("127.0.0.1:{}", app.port())]);
    }

    #[tokio::test]
    async fn a_host_header_replaces_the_default_host() {
        let (app, mut seen) = app().await;
        let probers = format!(
            r#"{{"/app-health/app/readyz":{{"httpGet":{{"port":"{}","host":"127.0.0.1","httpHeaders":[{{"name":"Host","value":"app.example"}}]}}}}}}"#,
            app.port()
        );
        let status = status_port(&probers).await;
        assert_eq!(get(status, "/app-health/app/readyz").await.0, 200);
        let (uri, headers) = seen.recv().await.unwrap();
        assert_eq!(uri.path(), "/", "the default path");
        assert_eq!(headers.get("host").unwrap(), "app.example");
    }

    #[tokio::test]
    async fn an_https_probe_does_not_verify_the_certificate() {
        // A certificate of a CA nobody trusts, with no name of the host.
        let ca = TestCa::new("elsewhere.example");
        let cert = ca.issue(&SpiffeId::parse("spiffe://elsewhere.example/ns/a/sa/app").unwrap());
        let cell = isthmus_identity::CredentialCell::new();
        cell.store(&cert);
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(isthmus_identity::provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(cell));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|request: http::Request<_>| {
                        let answer = app_answer(request.uri());
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let probers = format!(
            r#"{{"/app-health/app/readyz":{{"httpGet":{{"path":"/status/204","port":{port},"scheme":"HTTPS"}}}},"/app-health/app/livez":{{"httpGet":{{"path":"/","port":{port},"scheme":"HTTP"}}}}}}"#
        );
        let status = status_port(&probers).await;
        assert_eq!(get(status, "/app-health/app/readyz").await.0, 204);
        // Plain HTTP to a TLS port: the application's TLS stack answers nothing HTTP can read.
        assert_eq!(get(status, "/app-health/app/livez").await.0, 503);
    }

    #[tokio::test]
    async fn a_tcp_probe_answers_200_when_it_connects_and_503_when_refused() {
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let probers = format!(
            r#"{{"/app-health/app/livez":{{"tcpSocket":{{"port":{}}},"timeoutSeconds":2}},"/app-health/app/readyz":{{"tcpSocket":{{"port":{closed},"host":"127.0.0.1"}}}}}}"#,
            open.local_addr().unwrap().port()
        );
        let status = status_port(&probers).await;
        assert_eq!(get(status, "/app-health/app/livez").await.0, 200);
        let (code, body) = get(status, "/app-health/app/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains(&format!("connect 127.0.0.1:{closed}")),
            "{body}"
        );
        drop(open);
    }

    #[tokio::test]
    async fn an_http_probe_that_connects_and_gets_no_answer_times_out() {
        // Accepts, never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let status = status_port(&format!(
            "{{{}}}",
            http_prober("/app-health/app/readyz", port, "/")
        ))
        .await;
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(30),
            get(status, "/app-health/app/readyz"),
        )
        .await
        .expect("the probe's own 1 s timeout ends it long before");
        assert_eq!(code, 503);
        assert!(body.contains("timed out after 1s"), "{body}");
    }

    #[tokio::test]
    async fn a_path_without_a_probe_is_404() {
        let status = status_port(r#"{"/app-health/app/livez":{"tcpSocket":{"port":1}}}"#).await;
        for path in [
            "/app-health/app/readyz",
            "/app-health/other/livez",
            "/app-health/app/whatever",
        ] {
            let (code, body) = get(status, path).await;
            assert_eq!(code, 404, "{path}");
            assert!(body.contains("no application probe"), "{path}: {body}");
        }
        assert_eq!(get(status, "/elsewhere").await.0, 404);
    }

    #[tokio::test]
    async fn healthz_ready_follows_the_admin_ports_readiness() {
        let ready = status_port("").await;
        assert_eq!(get(ready, "/healthz/ready").await, (200, "LIVE\n".into()));
        // An xDS half that has not connected yet.
        let (_config_tx, config) = watch::channel(Arc::default());
        let (_xds_tx, xds) = watch::channel(Default::default());
        let (_runtime_tx, runtime) = watch::channel(Arc::default());
        let waiting =
            status_port_with(AdminState::new(None).with_xds(config, xds, runtime), "").await;
        let (code, body) = get(waiting, "/healthz/ready").await;
        assert_eq!(code, 503);
        assert!(body.starts_with("PRE_INITIALIZING: "), "{body}");
    }

    #[tokio::test]
    async fn stats_prometheus_is_the_admin_ports_metrics() {
        let mut registry = prometheus_client::registry::Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("isthmus_proxy_things", "Things", counter.clone());
        counter.inc_by(3);
        let state = AdminState::new(None).with_metrics(registry);
        let status = status_port_with(state.clone(), "").await;
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(admin_listener, crate::admin::router(state)).await });

        for accept in [
            None,
            Some("*/*"),
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        ] {
            let on_status = raw_get(status, "/stats/prometheus", accept).await;
            let on_admin = raw_get(admin, "/stats/prometheus", accept).await;
            assert_eq!(on_status, on_admin, "Accept {accept:?}");
            let (code, content_type, body) = on_status;
            assert_eq!(code, 200);
            assert!(body.contains("isthmus_proxy_things_total 3"), "{body}");
            assert_eq!(
                content_type.starts_with("application/openmetrics-text"),
                accept.is_some_and(|a| a.starts_with("application/openmetrics-text")),
                "{content_type}"
            );
        }
    }

    /// `GET path` with `accept` (none: no header): status, content type, body.
    async fn raw_get(
        address: SocketAddr,
        path: &str,
        accept: Option<&str>,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let head =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        // Both servers may frame the body differently (chunked or not): compare it unframed.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            unchunk(body)
        } else {
            body.to_owned()
        };
        (head[9..12].parse().unwrap(), content_type, body)
    }

    fn unchunk(mut chunked: &str) -> String {
        let mut body = String::new();
        loop {
            let (size, rest) = chunked.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return body;
            }
            body.push_str(&rest[..size]);
            chunked = &rest[size + 2..];
        }
    }

    /// The status port (no probes) within `limits`, stopped when `stop` is sent or dropped;
    /// its address and the server's task.
    async fn bounded_status_port(
        limits: Limits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let router = router(AdminState::new(None), AppProbers::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        (address, stop, server)
    }

    /// `GET /healthz/ready` on a kept-alive connection; the status code.
    async fn ready_on(stream: &mut TcpStream) -> u16 {
        stream
            .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: status\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let mut buf = [0; 1024];
        // The answer is `LIVE\n`: its head and those 5 bytes.
        while !response.ends_with(b"\r\n\r\nLIVE\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&response[9..12]).parse().unwrap()
    }

    /// Waits (at most 5 s) for the server to close `stream`; what it had sent.
    async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
        let mut sent = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sent)).await {
            Ok(Ok(_)) => {}
            // Closed with what the client sent unread: a reset.
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Err(_) => panic!("the connection is still open"),
        }
        sent
    }

    #[tokio::test]
    async fn a_client_that_sends_no_whole_head_is_disconnected_after_the_header_timeout() {
        let timeout = Duration::from_millis(300);
        let (address, _stop, _server) = bounded_status_port(Limits {
            header_timeout: timeout,
            max_connections: 8,
        })
        .await;
        let started = tokio::time::Instant::now();
        // Nothing at all.
        let mut silent = TcpStream::connect(address).await.unwrap();
        // Half a head.
        let mut half = TcpStream::connect(address).await.unwrap();
        half.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: sta")
            .await
            .unwrap();
        // A kept-alive connection, idle after its request.
        let mut idle = TcpStream::connect(address).await.unwrap();
        assert_eq!(ready_on(&mut idle).await, 200);
        for stream in [&mut silent, &mut half, &mut idle] {
            assert_eq!(
                closed_by_server(stream).await,
                b"",
                "no answer, just closed"
            );
        }
        assert!(
            started.elapsed() >= timeout,
            "not before the timeout: {:?}",
            started.elapsed()
        );
        // The port still answers.
        assert_eq!(get(address, "/healthz/ready").await.0, 200);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let (address, _stop, _server) = bounded_status_port(Limits {
            header_timeout: Duration::from_secs(60),
            max_connections: 2,
        })
        .await;
        // Two connections, answered and kept open.
        let mut first = TcpStream::connect(address).await.unwrap();
        assert_eq!(ready_on(&mut first).await, 200);
        let mut second = TcpStream::connect(address).await.unwrap();
        assert_eq!(ready_on(&mut second).await, 200);
        // A third: closed without an answer, long before the header timeout.
        for _ in 0..3 {
            let mut over = TcpStream::connect(address).await.unwrap();
            let _ = over
                .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: status\r\n\r\n")
                .await;
            assert_eq!(closed_by_server(&mut over).await, b"");
        }
        // The open ones are still served.
        assert_eq!(ready_on(&mut second).await, 200);
        // One closes: its place is free again (once the server has seen it close).
        drop(first);
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut next = TcpStream::connect(address).await.unwrap();
                next.write_all(
                    b"GET /healthz/ready HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                let mut response = Vec::new();
                let _ = next.read_to_end(&mut response).await;
                if !response.is_empty() {
                    return response;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a connection is served again");
        assert!(served.starts_with(b"HTTP/1.1 200 "), "{served:?}");
    }

    #[tokio::test]
    async fn stopping_closes_idle_connections_and_lets_requests_in_progress_finish() {
        // An application that accepts and never answers: its probe takes its whole 1 s timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let probers = format!("{{{}}}", http_prober("/app-health/app/readyz", port, "/"));
        let router = router(AdminState::new(None), AppProbers::parse(&probers).unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            Limits {
                header_timeout: Duration::from_secs(60),
                max_connections: 8,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let mut idle = TcpStream::connect(address).await.unwrap();
        assert_eq!(ready_on(&mut idle).await, 200);
        let probing = tokio::spawn(get(address, "/app-health/app/readyz"));
        // The probe's request is in progress.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
        assert_eq!(
            closed_by_server(&mut idle).await,
            b"",
            "the idle one closes at once"
        );
        let (code, body) = probing.await.unwrap();
        assert_eq!(code, 503, "answered, not cut");
        assert!(body.contains("timed out after 1s"), "{body}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server returns once its connections have closed")
            .unwrap();
        assert!(
            TcpStream::connect(address).await.is_err(),
            "no more accepted"
        );
    }

    /// `app::bind` binds the status port when asked and says where.
    #[tokio::test]
    async fn the_proxy_serves_the_status_port() {
        let options = Options {
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            status_addr: Some("127.0.0.1:0".parse().unwrap()),
            app_probers: Some(r#"{"/app-health/app/livez":{"tcpSocket":{"port":1}}}"#.into()),
            ..Options::default()
        };
        let bound = crate::app::bind(options).await.unwrap();
        let status = bound.status_address().expect("asked for");
        assert_ne!(status.port(), 0);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let proxy = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        assert_eq!(get(status, "/healthz/ready").await.0, 200);
        assert_eq!(get(status, "/app-health/app/livez").await.0, 503);
        let _ = stop.send(());
        proxy.await.unwrap().unwrap();

        let without = crate::app::bind(Options {
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            ..Options::default()
        })
        .await
        .unwrap();
        assert_eq!(without.status_address(), None, "off by default");
    }

    fn start_error(json: &str) -> String {
        let options = Options {
            app_probers: Some(json.to_owned()),
            ..Options::default()
        };
        let error = bootstrap::app_probers(&options).unwrap_err();
        assert!(matches!(error, StartError::AppProbers(_)), "{error:?}");
        ErrorChain(&error).to_string()
    }

    #[test]
    fn bad_probers_are_refused_with_the_flag_and_the_field() {
        let error = start_error("{not json");
        assert!(
            error.starts_with("--app-probers (env ISTHMUS_KUBE_APP_PROBERS): "),
            "{error}"
        );
        assert!(error.contains("key must be a string"), "{error}");

        let error = start_error(r#"{"/app-health/app/readyz":{"httpGet":{"port":true}}}"#);
        assert!(
            error.starts_with("--app-probers (env ISTHMUS_KUBE_APP_PROBERS): "),
            "{error}"
        );
        assert!(
            error.contains("at /app-health/app/readyz.httpGet.port"),
            "{error}"
        );

        let refused = [
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":"http"}}}"#,
                "named ports",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":0}}}"#,
                "not a port number",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":70000}}}"#,
                "not a port number",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{}}}"#,
                "missing field `port`",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":1},"timeoutSeconds":-1}}"#,
                "timeoutSeconds",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":1,"scheme":"FTP"}}}"#,
                "httpGet.scheme: \"FTP\"",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":1,"httpHeaders":[{"name":"a b","value":"c"}]}}}"#,
                "httpGet.httpHeaders[0].name",
            ),
            (
                r#"{"/app-health/app/readyz":{"httpGet":{"port":1,"host":"a/b"}}}"#,
                "httpGet.host",
            ),
            (
                r#"{"/app-health/app/readyz":{"tcpSocket":{"port":1},"httpGet":{"port":1}}}"#,
                "one handler",
            ),
            (
                r#"{"/app-health/app/readyz":{"grpc":{"port":1}}}"#,
                "gRPC probes are not supported",
            ),
            (
                r#"{"/app-health/app/readyz":{}}"#,
                "no httpGet or tcpSocket",
            ),
            (
                r#"{"/healthz/app":{"tcpSocket":{"port":1}}}"#,
                "expected a key /app-health/",
            ),
            (
                r#"{"/app-health/app/ready":{"tcpSocket":{"port":1}}}"#,
                "expected a key /app-health/",
            ),
            (
                r#"{"/app-health//livez":{"tcpSocket":{"port":1}}}"#,
                "expected a key /app-health/",
            ),
            (r#"{} x"#, "trailing characters"),
            (r#"[]"#, "invalid type"),
        ];
        for (json, expected) in refused {
            let error = start_error(json);
            assert!(error.contains("--app-probers"), "{json}: {error}");
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn good_probers_parse() {
        let probers = AppProbers::parse(
            r#"{"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTP","host":"","httpHeaders":[{"name":"X-A","value":"b"}]},"timeoutSeconds":1},"/app-health/app/livez":{"tcpSocket":{"port":8080},"timeoutSeconds":2},"/app-health/side/startupz":{"httpGet":{"port":"8443","scheme":"https","host":"::1","httpHeaders":null},"timeoutSeconds":0}}"#,
        )
        .unwrap();
        assert_eq!(probers.len(), 3);
        let livez = probers.get("/app-health/app/livez").unwrap();
        assert_eq!(livez.timeout, Duration::from_secs(2));
        let Check::Http(startupz) = &probers.get("/app-health/side/startupz").unwrap().check else {
            panic!("an HTTP probe")
        };
        assert!(startupz.tls.is_some());
        assert_eq!(startupz.host_header, "[::1]:8443");
        assert_eq!(startupz.path, "/");
        assert_eq!(
            probers.get("/app-health/side/startupz").unwrap().timeout,
            Duration::from_secs(1),
            "0 is the kubelet's minimum, 1"
        );
        assert!(AppProbers::parse("").unwrap().is_empty());
        assert!(AppProbers::parse(" {} ").unwrap().is_empty());
        let options = Options::default();
        assert!(bootstrap::app_probers(&options).unwrap().is_empty());
    }
}
