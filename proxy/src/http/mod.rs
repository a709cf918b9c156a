//! The HTTP connection manager: HTTP/1.1 and HTTP/2 from downstream (by the codec setting, or
//! by the connection preface), routing, HTTP RBAC, and forwarding to upstream clusters over
//! pooled connections, with Envoy's header handling and its error answers (404 no route, 403
//! RBAC, 503 no healthy upstream or connect failure, 504 timeout).

pub mod affinity;
pub mod connect;
pub mod error;
pub mod forward;
pub mod jwt;
pub mod pool;
pub mod route_policies;
pub mod router;
pub mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;

use self::error::ConnectionError;
use self::pool::Pool;
use self::router::RequestFacts;
use crate::authz::{self, Decision, Subject};
use crate::config::listener::{Codec, HttpManager, RouteSource, Terminal};
use crate::config::matcher::RequestHead;
use crate::config::route::{Action, Route, RouteTable, VirtualHost};
use crate::drain;
use crate::metrics::{ListenerLabels, ResponseLabels};
use crate::runtime::{ChainId, Runtime};
use crate::telemetry::request::{
    ConnectionTelemetry, Observation, Outgoing, ResponseFlags, UpstreamFacts,
};
use crate::telemetry::tcp::TcpContext;
use crate::transport::BoxedIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body this proxy passes on: downstream and upstream, streaming or local.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What the connection knows of itself, for routing, RBAC and `x-forwarded-client-cert`.
///
/// The listener's settings are those the connection started with (a listener change reaches
/// new connections, as in Envoy); routes, clusters and per-route policies are read anew for
/// every request, so an RDS or CDS change (an `AuthorizationPolicy`, a new route) reaches
/// connections that are already open.
#[derive(Debug, Clone)]
pub struct Connection {
    pub runtime: Arc<Runtime>,
    pub latest: tokio::sync::watch::Receiver<Arc<Runtime>>,
    pub pool: Arc<Pool>,
    pub listener: String,
    pub chain: ChainId,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub server_name: Option<String>,
    pub tls: Option<TlsPeer>,
    /// The connection's part in a drain: held by the connection, and by the tunnels (CONNECT,
    /// upgrades) it hands over, so that a drain waits for them and ends them at its deadline.
    pub drain: drain::Watch,
    /// A sidecar's request telemetry (Istio's metrics, metadata exchange, spans); `None` with
    /// telemetry off or on a gateway.
    pub telemetry: Option<Arc<ConnectionTelemetry>>,
    /// A federation gateway's tunnel telemetry.
    pub gateway: Option<TcpContext>,
}

/// The verified peer of an mTLS connection, and this side's identity.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    pub peer_id: Option<String>,
    /// Hex SHA-256 of the peer's leaf certificate.
    pub peer_hash: Option<String>,
    pub local_id: Option<String>,
}

impl Connection {
    fn manager(&self) -> Option<&HttpManager> {
        let listener = self.runtime.config.listeners.get(&self.listener)?;
        let chain = match self.chain {
            ChainId::Index(i) => listener.chains.get(i)?,
            ChainId::Default => listener.default_chain.as_ref()?,
        };
        match &chain.terminal {
            Terminal::Http(hcm) => Some(hcm),
            Terminal::Tcp(_) => None,
        }
    }
}

/// Serves HTTP on one downstream connection until it closes; on drain (`conn.drain`), asks the
/// client to go away (HTTP/2 GOAWAY; HTTP/1.1 closes after the response in progress) and lets
/// the requests in flight finish.
pub async fn serve_connection(
    io: BoxedIo,
    codec: Codec,
    conn: Connection,
) -> Result<(), ConnectionError> {
    let drain = conn.drain.clone();
    let header_timeout = conn.runtime.settings.handshake_timeout;
    // The first bytes must come within the timeout (hyper's header timeout starts only once
    // it knows the protocol); they are replayed to the codec.
    let mut io = io;
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(
        header_timeout,
        tokio::io::AsyncReadExt::read(&mut io, &mut first),
    )
    .await
    .map_err(|_| ConnectionError::FirstBytesTimeout)??;
    if n == 0 {
        return Ok(());
    }
    first.truncate(n);
    let io: BoxedIo = Box::new(crate::listener::rewind::Rewind::new(first, io));
    // The response counters of this listener, looked up once per connection, not per request.
    let responses: Arc<[Counter; 5]> = Arc::new(std::array::from_fn(|i| {
        conn.runtime
            .metrics
            .http_responses
            .get_or_create(&ResponseLabels {
                listener: conn.listener.clone(),
                code_class: format!("{}xx", i + 1),
            })
            .clone()
    }));
    let conn = Arc::new(conn);
    let service = hyper::service::service_fn(move |request| {
        let conn = conn.clone();
        let responses = responses.clone();
        async move {
            let mut request = request;
            let mut observation = conn.telemetry.as_ref().map(|t| t.begin(&mut request));
            let outgoing = observation.as_mut().and_then(Observation::take_outgoing);
            // Told by the forward path, for telemetry: handed over, not put in the response's
            // extensions (that would cost up to three allocations per response).
            let mut upstream = None;
            let response = handle(request, &conn, outgoing, &mut upstream).await;
            let class = usize::from(response.status().as_u16() / 100).clamp(1, 5);
            responses[class - 1].inc();
            let response = match observation {
                Some(o) => o.finish(response, upstream),
                None => response,
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Bounded headers (64 KiB) and a deadline for them (slowloris); hyper answers 431 or closes.
    builder
        .http1()
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    // HTTP/2 floods: streams reset by the client before they are served (rapid reset,
    // CVE-2023-44487) and streams the proxy had to reset are bounded per connection; over
    // either bound the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    builder
        .http2()
        .max_concurrent_streams(1024)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(64 * 1024);
    let builder = match codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    result.map_err(ConnectionError::from_session)
}

/// Client resets of streams not yet served, per connection (hyper's default, named).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the proxy reset because of a client's protocol errors, per connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// A local answer (Envoy's wording), `text/plain`.
pub fn local_reply(status: http::StatusCode, text: &str) -> http::Response<Body> {
    let mut response = http::Response::new(full(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
    }
    response
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `outgoing`: what telemetry adds to the upstream request, if the request goes upstream;
/// `upstream`: where the forward path tells telemetry where the request went.
async fn handle(
    request: http::Request<Incoming>,
    conn: &Connection,
    outgoing: Option<Outgoing>,
    upstream: &mut Option<UpstreamFacts>,
) -> http::Response<Body> {
    let Some(hcm) = conn.manager() else {
        return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "listener changed");
    };
    let latest = conn.latest.borrow().clone();
    let table = match &hcm.routes {
        RouteSource::Rds(name) => latest.config.routes.get(name).map(|t| &**t),
        RouteSource::Inline(table) => Some(&**table),
    };
    let Some(table) = table else {
        return flagged(local_reply(http::StatusCode::NOT_FOUND, ""), "NR");
    };
    // The JWT filter runs first: a token that fails is answered here (401), and what it
    // verified is what RBAC's `requestPrincipals` see.
    let mut request = request;
    let jwt_payloads = match &hcm.jwt {
        Some(authn) => match jwt::authenticate(&mut request, authn) {
            Ok(payloads) => Some(payloads),
            Err(failure) => return jwt::unauthorized(&request, failure),
        },
        None => None,
    };
    let mut authority = request_authority(&request);
    if hcm.strip_any_host_port {
        // Envoy's `strip_any_host_port`: the port is gone before routing, and from what goes
        // upstream and into a redirect's `Location`.
        authority = without_port(&authority).to_owned();
    }
    let peer = ConnectionFacts {
        peer: conn.tls.as_ref().and_then(|t| t.peer_id.as_deref()),
        remote: conn.remote.ip(),
        local: conn.local,
        server_name: conn.server_name.as_deref(),
        tls: conn.tls.is_some(),
        jwt: jwt_payloads.as_ref(),
    };
    let (vh, route) = match decide(&request, &authority, hcm, table, &peer) {
        Verdict::Refused(status) => {
            if let Some(g) = &conn.gateway {
                g.refused(&Default::default(), "not_exported");
            }
            return flagged(local_reply(status, ""), "NR");
        }
        Verdict::Denied(policy) => {
            let path = request.uri().path();
            tracing::info!(listener = conn.listener, peer = ?peer.peer, path, policy = ?policy, "request denied by RBAC");
            conn.runtime
                .metrics
                .http_rbac_denied
                .get_or_create(&ListenerLabels {
                    listener: conn.listener.clone(),
                })
                .inc();
            if let Some(g) = &conn.gateway {
                g.refused(&Default::default(), "rbac");
            }
            return flagged(
                local_reply(http::StatusCode::FORBIDDEN, "RBAC: access denied"),
                "RBAC",
            );
        }
        Verdict::Route { vh, route } => (vh, route),
    };

    // CORS, then fault injection, as Istio orders the filters; a route's own settings, else
    // its virtual host's.
    let mut cors_headers = http::HeaderMap::new();
    if hcm.cors_filter
        && let Some(cors) = route.policies.cors.as_ref().or(vh.policies.cors.as_ref())
    {
        match route_policies::cors(&request, cors) {
            route_policies::CorsVerdict::Answer(answer) => return answer,
            route_policies::CorsVerdict::Pass(headers) => cors_headers = headers,
        }
    }
    let mut delayed = false;
    if hcm.fault_filter
        && let Some(fault) = route.policies.fault.as_ref().or(vh.policies.fault.as_ref())
    {
        let outcome = route_policies::fault(&request, fault).await;
        if let Some(mut abort) = outcome.abort {
            abort.headers_mut().extend(cors_headers);
            return flagged(abort, "FI");
        }
        delayed = outcome.delayed;
    }
    let mut response = respond(
        request, conn, hcm, &latest, table, vh, route, &authority, outgoing, upstream,
    )
    .await;
    response.headers_mut().extend(cors_headers);
    if delayed && response.extensions().get::<ResponseFlags>().is_none() {
        response = flagged(response, "DI");
    }
    response
}

/// The route's action on the request.
#[allow(clippy::too_many_arguments)]
async fn respond(
    request: http::Request<Incoming>,
    conn: &Connection,
    hcm: &HttpManager,
    latest: &Arc<Runtime>,
    table: &RouteTable,
    vh: &VirtualHost,
    route: &Route,
    authority: &str,
    outgoing: Option<Outgoing>,
    upstream: &mut Option<UpstreamFacts>,
) -> http::Response<Body> {
    match &route.action {
        Action::Direct { status, body } => {
            let mut response = local_reply(*status, body.as_deref().unwrap_or_default());
            forward::edit_response(
                response.headers_mut(),
                &[&route.headers, &vh.headers, &table.headers],
            );
            response
        }
        Action::Redirect(redirect) => {
            forward::redirect(redirect, &request, authority, conn.tls.is_some())
                .unwrap_or_else(|e| e.reply())
        }
        Action::Forward(action) if facts_connect(&request) => {
            if !action.terminate_connect {
                // The profile terminates CONNECT; it never forwards the request itself.
                return local_reply(http::StatusCode::FORBIDDEN, "");
            }
            connect::terminate(request, action, latest, &conn.drain, conn.gateway.clone()).await
        }
        Action::Forward(action) => {
            let edits = forward::Levels {
                path: &route.matcher.path,
                route: &route.headers,
                vhost: &vh.headers,
                table: &table.headers,
            };
            forward::forward(
                request, action, &edits, authority, hcm, conn, latest, outgoing, upstream,
            )
            .await
        }
    }
}

/// A local answer with Envoy's response flag for it (Istio's `response_flags`).
fn flagged(mut response: http::Response<Body>, flag: &'static str) -> http::Response<Body> {
    response
        .extensions_mut()
        .insert(crate::telemetry::request::ResponseFlags(flag));
    response
}

/// `host:port` without its port (`[::1]:80` -> `[::1]`); anything else as it is.
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

/// The request's authority as routing sees it: the URI's, else the `Host` header's, lower-case.
pub fn request_authority<B>(request: &http::Request<B>) -> String {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default()
}

/// What RBAC may know of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts<'a> {
    pub peer: Option<&'a str>,
    pub remote: std::net::IpAddr,
    pub local: SocketAddr,
    pub server_name: Option<&'a str>,
    /// The connection is TLS (the `:scheme` of a request that does not say).
    pub tls: bool,
    /// The request's verified JWT payloads (the JWT filter ran before RBAC).
    pub jwt: Option<&'a jwt::JwtMetadata>,
}

/// What the connection manager makes of a request before any I/O.
#[derive(Debug)]
pub enum Verdict<'t> {
    /// A local answer with an empty body: 403 (CONNECT not allowed), 404 (no route).
    Refused(http::StatusCode),
    /// HTTP RBAC refused it: the policy that matched (DENY) or none (no ALLOW policy matched).
    Denied(Option<String>),
    /// The route to act on.
    Route {
        vh: &'t VirtualHost,
        route: &'t Route,
    },
}

/// Virtual host, route and HTTP RBAC (a route's or virtual host's override replaces the
/// filter's own rules), for a request whose authority is `authority`.
pub fn decide<'t, B>(
    request: &http::Request<B>,
    authority: &str,
    hcm: &HttpManager,
    table: &'t RouteTable,
    conn: &ConnectionFacts<'_>,
) -> Verdict<'t> {
    let uri = request.uri();
    let path = uri.path();
    let head = RequestHead {
        headers: request.headers(),
        method: request.method(),
        authority: uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or(authority),
        scheme: uri
            .scheme_str()
            .unwrap_or(if conn.tls { "https" } else { "http" }),
        path_and_query: uri.path_and_query().map_or("", |p| p.as_str()),
    };
    let facts = RequestFacts {
        head,
        path,
        query: uri.query(),
        connect: request.method() == http::Method::CONNECT,
    };
    if facts.connect && !hcm.allow_connect {
        return Verdict::Refused(http::StatusCode::FORBIDDEN);
    }
    let Some(vh) = router::virtual_host(table, authority) else {
        return Verdict::Refused(http::StatusCode::NOT_FOUND);
    };
    let Some(route) = router::route(vh, &facts) else {
        return Verdict::Refused(http::StatusCode::NOT_FOUND);
    };
    let subject = Subject {
        peer: conn.peer,
        remote: conn.remote,
        local: conn.local,
        server_name: conn.server_name,
        headers: Some(head),
        path: Some(path),
        jwt: conn.jwt,
    };
    for (filter, own) in &hcm.rbac {
        let rules = route
            .rbac
            .get(filter)
            .or_else(|| vh.rbac.get(filter))
            .unwrap_or(own);
        if let Some(rules) = rules
            && let Decision::Deny(policy) = authz::evaluate(rules, &subject)
        {
            return Verdict::Denied(policy);
        }
    }
    Verdict::Route { vh, route }
}

fn facts_connect(request: &http::Request<Incoming>) -> bool {
    request.method() == http::Method::CONNECT
}

#[cfg(test)]
mod tests {
    use super::without_port;

    #[test]
    fn an_authority_loses_only_its_port() {
        for (authority, bare) in [
            ("shop.example.com:8443", "shop.example.com"),
            ("shop.example.com", "shop.example.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("10.0.0.1:8080", "10.0.0.1"),
            ("shop.example.com:", "shop.example.com:"),
            ("shop.example.com:x1", "shop.example.com:x1"),
        ] {
            assert_eq!(without_port(authority), bare, "{authority}");
        }
    }
}
