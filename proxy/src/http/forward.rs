//! Forwarding a routed request: the weighted target, header edits at every level, rewrites,
//! `x-forwarded-client-cert`, the upstream request over a pooled connection with the route's
//! timeout and retry policy, and redirects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;

use super::pool::{Pool, SendError};
use super::{Body, Connection, TlsPeer, local_reply};
use crate::config::listener::{ForwardClientCert, HttpManager};
use crate::config::route::{
    AppendAction, Edits, Forward, HeaderEdits, PathMatch, Redirect, Retry, Targets,
};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::upstream::breakers::Breaker;
use crate::upstream::outlier::Outcome;
use crate::upstream::{ClusterRuntime, ConnectError, Host};

/// What the forward needs of the matched route: its path match (for a prefix rewrite) and the
/// header edits of every level, most specific first.
#[derive(Debug)]
pub struct Levels<'a> {
    pub path: &'a PathMatch,
    pub route: &'a Edits,
    pub vhost: &'a Edits,
    pub table: &'a Edits,
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];
const XFCC: &str = "x-forwarded-client-cert";

pub async fn forward(
    mut request: http::Request<Incoming>,
    action: &Forward,
    levels: &Levels<'_>,
    authority: &str,
    hcm: &HttpManager,
    conn: &Connection,
    runtime: &Runtime,
) -> http::Response<Body> {
    let (cluster_name, target_edits) = pick_target(&action.targets);
    let Some(cluster) = runtime.clusters.get(cluster_name).cloned() else {
        return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    let empty = Edits::default();
    let edits: [&Edits; 4] = [
        target_edits.unwrap_or(&empty),
        levels.route,
        levels.vhost,
        levels.table,
    ];

    let upgrade = super::upgrade::requested(&request);
    if let Some(protocol) = &upgrade
        && !hcm.upgrades.contains(protocol)
    {
        return local_reply(http::StatusCode::FORBIDDEN, "");
    }
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let (authority, path_and_query) = upstream_head(
        &mut parts,
        &edits,
        action,
        levels,
        authority,
        hcm,
        conn.tls.as_ref(),
    );
    let http2 = cluster.cluster.protocol.http == Some(crate::config::cluster::HttpVersion::Http2);

    if let (Some(protocol), Some(on_upgrade)) = (&upgrade, on_upgrade) {
        let mut upstream = http::Request::new(super::full(Bytes::new()));
        *upstream.method_mut() = parts.method.clone();
        if let Ok(uri) = path_and_query.parse() {
            *upstream.uri_mut() = uri;
        }
        *upstream.headers_mut() = parts.headers;
        if let Ok(value) = HeaderValue::from_str(&authority) {
            upstream.headers_mut().insert(header::HOST, value);
        }
        let mut response = super::upgrade::forward(on_upgrade, upstream, protocol, &cluster).await;
        edit(response.headers_mut(), edits.iter().map(|e| &e.response));
        return response;
    }

    // A request with a body goes once (it is streamed, not kept for a retry).
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    let retry = action.retry.as_ref().filter(|_| replayable);
    let attempts = 1 + retry.map_or(0, |r| r.num_retries);
    let limits = &cluster.cluster.limits;
    let mut backoff = retry.map_or(Duration::from_millis(25), |r| r.base_interval);
    let mut last = local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    // The hosts this request went to, for a retry that avoids them.
    let mut tried: Vec<Arc<Host>> = Vec::new();
    for attempt in 0..attempts {
        // A retry holds a slot of the cluster's retry limit (`max_retries`, or its budget)
        // for as long as it runs; none free, no retry (Envoy's retry overflow).
        let _retry = if attempt > 0 {
            let Some(slot) = cluster.load.try_acquire(Breaker::Retries, limits) else {
                Metrics::cluster(&runtime.metrics.upstream_retry_overflows, cluster_name);
                break;
            };
            Metrics::cluster(&runtime.metrics.upstream_retries, cluster_name);
            let jitter = rand::rng().random_range(Duration::ZERO..=backoff);
            tokio::time::sleep(jitter).await;
            backoff = (backoff * 2).min(retry.map_or(backoff, |r| r.max_interval));
            Some(slot)
        } else {
            None
        };
        let picked = match retry {
            Some(r) if r.avoid_previous_hosts && !tried.is_empty() => cluster.pick_avoiding(&tried),
            _ => cluster.pick(),
        };
        let Some(host) = picked else {
            return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        tried.push(host.clone());
        let mut upstream = http::Request::builder()
            .method(parts.method.clone())
            .version(if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            });
        upstream = if http2 {
            upstream.uri(format!("http://{authority}{path_and_query}"))
        } else {
            upstream.uri(path_and_query.as_str())
        };
        let request_body: Body = match body.take() {
            Some(b) => b.map_err(|e| Box::new(e) as super::BoxError).boxed_unsync(),
            None => super::full(Bytes::new()),
        };
        let Ok(mut upstream) = upstream.body(request_body) else {
            return local_reply(http::StatusCode::BAD_REQUEST, "invalid request");
        };
        *upstream.headers_mut() = parts.headers.clone();
        if !http2 && let Ok(value) = HeaderValue::from_str(&authority) {
            upstream.headers_mut().insert(header::HOST, value);
        } else {
            upstream.headers_mut().remove(header::HOST);
        }
        let per_try = retry.and_then(|r| r.per_try_timeout).or(action.timeout);
        // The `max_requests` circuit breaker: over it, fail at once (Envoy's overflow).
        let Some(open) = cluster.load.try_acquire(Breaker::Requests, limits) else {
            runtime.metrics.overflow(cluster_name, "max_requests");
            return overflow_reply();
        };
        let outcome = send_attempt(&conn.pool, &cluster, &host, upstream, per_try).await;
        drop(open);
        if let Some(health) = health_outcome(&outcome) {
            cluster.record(&host, health);
        }
        let (response, retriable) = match outcome {
            None => (
                {
                    Metrics::cluster(&runtime.metrics.upstream_timeouts, cluster_name);
                    local_reply(
                        http::StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                    )
                },
                retry.is_some_and(|r| r.on.server_error || r.on.gateway_error),
            ),
            // The connection or pending-request breakers: fail at once, never retried.
            Some(Err(SendError::Connect(ConnectError::Overflow(_)) | SendError::Overflow)) => {
                (overflow_reply(), false)
            }
            Some(Err(e)) => {
                tracing::debug!(cluster = cluster_name, host = host.host, error = %e, "upstream failed");
                let connect = matches!(e, SendError::Connect(_));
                // Envoy's wording, reset reason included.
                let reason = match &e {
                    SendError::Connect(crate::upstream::ConnectError::Timeout { .. }) => {
                        "connection timeout"
                    }
                    SendError::Connect(_) => "remote connection failure",
                    _ => "connection termination",
                };
                let retried = if attempt > 0 {
                    "retried and the latest "
                } else {
                    ""
                };
                let text = format!(
                    "upstream connect error or disconnect/reset before headers. {retried}reset reason: {reason}"
                );
                let retriable = retry.is_some_and(|r| {
                    r.on.server_error
                        || r.on.gateway_error
                        || r.on.reset
                        || (connect && r.on.connect_failure)
                        || r.on.refused_stream
                });
                (
                    local_reply(http::StatusCode::SERVICE_UNAVAILABLE, &text),
                    retriable,
                )
            }
            Some(Ok(response)) => {
                let retriable = retry.is_some_and(|r| retriable_status(r, &response));
                (response, retriable)
            }
        };
        last = response;
        if !retriable || attempt + 1 == attempts {
            break;
        }
    }
    let mut response = last;
    strip_hop_by_hop(response.headers_mut());
    edit(response.headers_mut(), edits.iter().map(|e| &e.response));
    response
}

/// The request head as it goes upstream: hop-by-hop headers gone, the header edits of every
/// level (`edits`, most specific first), `x-forwarded-client-cert`, `x-forwarded-proto`,
/// `x-request-id`; returns the authority and the path and query to send.
pub fn upstream_head(
    parts: &mut http::request::Parts,
    edits: &[&Edits; 4],
    action: &Forward,
    levels: &Levels<'_>,
    authority: &str,
    hcm: &HttpManager,
    tls: Option<&TlsPeer>,
) -> (String, String) {
    strip_hop_by_hop(&mut parts.headers);
    edit(&mut parts.headers, edits.iter().map(|e| &e.request));
    client_cert_header(&mut parts.headers, hcm, tls);
    if !parts.headers.contains_key("x-forwarded-proto") {
        let proto = if tls.is_some() { "https" } else { "http" };
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    let authority = action
        .host_rewrite
        .as_deref()
        .unwrap_or(authority)
        .to_owned();
    let path_and_query = rewrite_path(&parts.uri, action, levels);
    (authority, path_and_query)
}

/// One attempt on the wire, within `per_try` (`None`: timed out). The host counts it as open
/// until its response body ends, or until it is dropped (a downstream reset, an attempt given
/// up): see [`Host::track_active`]. Least-request balancing then sees streams and slow
/// downloads as the open work they are, as Envoy's does.
async fn send_attempt(
    pool: &Arc<Pool>,
    cluster: &ClusterRuntime,
    host: &Arc<Host>,
    request: http::Request<Body>,
    per_try: Option<Duration>,
) -> Option<Result<http::Response<Body>, SendError>> {
    let active = host.track_active();
    let sent = pool.send(cluster, host, request);
    let outcome = match per_try {
        Some(t) => tokio::time::timeout(t, sent).await.ok(),
        None => Some(sent.await),
    };
    outcome.map(|result| {
        result.map(|response| {
            response.map(|body| {
                Body::new(Holding {
                    body,
                    _active: active,
                })
            })
        })
    })
}

/// A response body that keeps its request counted on its host until it ends or is dropped.
struct Holding {
    body: Body,
    _active: crate::upstream::Active,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A circuit breaker said no (Envoy's wording and header).
fn overflow_reply() -> http::Response<Body> {
    let mut response = local_reply(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    );
    response
        .headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    response
}

/// What an attempt means for outlier detection.
/// A circuit breaker's refusal says nothing of the host.
fn health_outcome(outcome: &Option<Result<http::Response<Body>, SendError>>) -> Option<Outcome> {
    Some(match outcome {
        Some(Err(SendError::Connect(ConnectError::Overflow(_)) | SendError::Overflow)) => {
            return None;
        }
        Some(Ok(r)) if matches!(r.status().as_u16(), 502..=504) => Outcome::GatewayError,
        Some(Ok(r)) if r.status().is_server_error() => Outcome::ServerError,
        Some(Ok(_)) => Outcome::Success,
        Some(Err(_)) | None => Outcome::GatewayError,
    })
}

fn pick_target(targets: &Targets) -> (&str, Option<&Edits>) {
    match targets {
        Targets::Cluster(c) => (c, None),
        Targets::Weighted(all) => {
            let total: u64 = all.iter().map(|t| u64::from(t.weight)).sum();
            let mut slot = rand::rng().random_range(0..total.max(1));
            for t in all {
                if slot < u64::from(t.weight) {
                    return (&t.cluster, Some(&t.headers));
                }
                slot -= u64::from(t.weight);
            }
            all.last()
                .map_or(("", None), |t| (t.cluster.as_str(), Some(&t.headers)))
        }
    }
}

fn retriable_status(r: &Retry, response: &http::Response<Body>) -> bool {
    let status = response.status().as_u16();
    if r.on.server_error && status >= 500 {
        return true;
    }
    if r.on.gateway_error && matches!(status, 502..=504) {
        return true;
    }
    if r.on.retriable_4xx && status == 409 {
        return true;
    }
    if r.on.retriable_status_codes && r.retriable_status_codes.contains(&status) {
        return true;
    }
    let grpc = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok());
    match grpc {
        Some(1) => r.on.grpc.cancelled,
        Some(4) => r.on.grpc.deadline_exceeded,
        Some(8) => r.on.grpc.resource_exhausted,
        Some(13) => r.on.grpc.internal,
        Some(14) => r.on.grpc.unavailable,
        _ => false,
    }
}

/// The path and query to send: the route's prefix rewrite replaces the matched prefix (the
/// whole path for an exact match).
fn rewrite_path(uri: &http::Uri, action: &Forward, levels: &Levels<'_>) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let Some(new_prefix) = &action.prefix_rewrite else {
        return path_and_query.to_owned();
    };
    let matched = match levels.path {
        PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => p.len(),
        PathMatch::Exact(_) => uri.path().len(),
        PathMatch::Regex(_) | PathMatch::Connect => return path_and_query.to_owned(),
    };
    match path_and_query.get(matched..) {
        Some(rest) => format!("{new_prefix}{rest}"),
        None => path_and_query.to_owned(),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let keep_te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("trailers"));
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Applies header edits, most specific level first, so that a less specific level has the
/// last word (Envoy's default, `most_specific_header_mutations_wins: false`).
fn edit<'a>(headers: &mut HeaderMap, levels: impl Iterator<Item = &'a HeaderEdits>) {
    for level in levels {
        for name in &level.remove {
            headers.remove(name.as_str());
        }
        for add in &level.add {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(add.name.as_bytes()),
                HeaderValue::from_str(&add.value),
            ) else {
                continue;
            };
            match add.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(name, value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&name) {
                        headers.insert(name, value);
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(name, value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&name) {
                        headers.insert(name, value);
                    }
                }
            }
        }
    }
}

/// Response edits of a direct response (route, virtual host, configuration).
pub fn edit_response(headers: &mut HeaderMap, levels: &[&Edits]) {
    edit(headers, levels.iter().map(|e| &e.response));
}

/// `x-forwarded-client-cert` as Envoy writes it: `By=<our SAN>;Hash=<peer cert SHA-256>;URI=<peer SAN>`.
fn client_cert_header(headers: &mut HeaderMap, hcm: &HttpManager, tls: Option<&TlsPeer>) {
    let mtls = tls.filter(|t| t.peer_id.is_some());
    match hcm.forward_client_cert {
        ForwardClientCert::Sanitize => {
            headers.remove(XFCC);
        }
        ForwardClientCert::ForwardOnly => {
            if mtls.is_none() {
                headers.remove(XFCC);
            }
        }
        ForwardClientCert::AlwaysForwardOnly => {}
        ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet => {
            if hcm.forward_client_cert == ForwardClientCert::SanitizeSet || mtls.is_none() {
                headers.remove(XFCC);
            }
            let Some(tls) = mtls else { return };
            let mut value = String::new();
            if let Some(by) = &tls.local_id {
                value.push_str(&format!("By={by}"));
            }
            if let Some(hash) = &tls.peer_hash {
                value.push_str(&format!(";Hash={hash}"));
            }
            if hcm.set_client_cert_uri
                && let Some(uri) = &tls.peer_id
            {
                value.push_str(&format!(";URI={uri}"));
            }
            if let Ok(v) = HeaderValue::from_str(value.trim_start_matches(';')) {
                headers.append(XFCC, v);
            }
        }
    }
}

fn request_id() -> HeaderValue {
    let bytes: [u8; 16] = rand::rng().random();
    let hex = hex::encode(bytes);
    let id = format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    );
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

pub fn redirect<B>(
    r: &Redirect,
    request: &http::Request<B>,
    authority: &str,
    tls: bool,
) -> http::Response<Body> {
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| if tls { "https".into() } else { "http".into() });
    let mut host = r.host.clone().unwrap_or_else(|| authority.to_owned());
    if let Some(port) = r.port {
        let bare = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_owned();
        host = format!("{bare}:{port}");
    }
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(prefix)) => prefix.clone(),
        _ => request.uri().path().to_owned(),
    };
    let query = if r.strip_query || path.contains('?') {
        String::new()
    } else {
        request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    };
    let status =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
    let mut response = local_reply(status, "");
    if let Ok(location) = HeaderValue::from_str(&format!("{scheme}://{host}{path}{query}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::upstream::testing;

    /// A client reset drops the request's future mid-flight: the host must not stay busy for
    /// least-request balancing.
    #[tokio::test]
    async fn a_cancelled_attempt_gives_its_active_count_back() {
        let (port, mut accepted) = testing::silent_upstream().await;
        let config = Arc::new(testing::config([testing::cluster("backend", port)]));
        let runtime = testing::runtime(&config);
        let cluster = runtime.clusters["backend"].clone();
        let host = cluster.priorities[0][0].clone();
        let task = tokio::spawn({
            let (cluster, host) = (cluster.clone(), host.clone());
            async move {
                let pool = Arc::new(Pool::default());
                let request = http::Request::get("/")
                    .body(super::super::full(Bytes::new()))
                    .unwrap();
                send_attempt(&pool, &cluster, &host, request, None).await
            }
        });
        // The request reached the upstream, which never answers: the attempt is in flight.
        let mut upstream = accepted.recv().await.unwrap();
        let mut head = [0; 4];
        upstream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET ");
        assert_eq!(host.active.load(Ordering::Relaxed), 1);

        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(host.active.load(Ordering::Relaxed), 0, "the count leaked");
    }

    /// A response counts on its host until its body has been read, not just until its head
    /// came in: a stream or a slow download is open work for least-request balancing.
    #[tokio::test]
    async fn a_response_counts_on_its_host_until_its_body_ends() {
        use http_body_util::BodyExt as _;
        let (port, _open, _accepted) = testing::http_upstream().await;
        let config = Arc::new(testing::config([testing::cluster("backend", port)]));
        let runtime = testing::runtime(&config);
        let cluster = runtime.clusters["backend"].clone();
        let host = cluster.priorities[0][0].clone();
        let pool = Arc::new(Pool::default());
        let request = http::Request::get("/")
            .body(super::super::full(Bytes::new()))
            .unwrap();
        let response = send_attempt(&pool, &cluster, &host, request, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            host.active.load(Ordering::Relaxed),
            1,
            "the body is still to come"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(host.active.load(Ordering::Relaxed), 0);
    }
}
