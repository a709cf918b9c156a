//! Forwarding a routed request: the weighted target, header edits at every level, rewrites,
//! `x-forwarded-client-cert`, the upstream request over a pooled connection with the route's
//! timeout and retry policy, and redirects.
//!
//! The way upstream is a composition of small steps over an [`Exchange`] (what every attempt
//! of one request shares):
//!
//! - [`with_retries`] runs attempts as the retry policy allows: each retry takes a slot of the
//!   cluster's retry breaker ([`retry_slot`]), waits its [`Backoff`], and goes to a host chosen
//!   by [`choose_host`] (one not tried yet, with `previous_hosts`);
//! - [`attempt`] takes the `max_requests` breaker and sends within the per-try timeout
//!   ([`send_attempt`]);
//! - [`record`] reports each outcome to outlier detection, the metrics and the log;
//! - [`retriable`] says whether an outcome is retried (`retry_on`).
//!
//! Failures are [`RequestError`]s, answered locally in Envoy's words.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use isthmus_runtime::backoff::Backoff;
use rand::Rng;

use super::error::RequestError;
use super::pool::{Pool, SendError, VerifiedUpstream};
use super::route_policies::sampled;
use super::{Body, Connection, TlsPeer};
use crate::config::listener::{ForwardClientCert, HttpManager};
use crate::config::route::{
    AppendAction, Edits, Forward, HeaderEdits, PathMatch, Redirect, Retry, Targets,
};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::telemetry::peer_metadata::{self, MetadataHeaders};
use crate::telemetry::request::{Counted, Outgoing, RequestBytes, UpstreamFacts};
use crate::upstream::breakers::{Breaker, Slot};
use crate::upstream::outlier::Outcome;
use crate::upstream::{ClusterRuntime, Host};
use crate::weighted;

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
/// Envoy's default first retry interval.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// Forwards a routed request to the route's cluster and answers with the upstream's response
/// (or a local one), the response edits of every level applied. `outgoing`: what telemetry
/// adds to the upstream request; `upstream`: where telemetry is told which cluster the request
/// went to and who the upstream proved to be.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    mut request: http::Request<Incoming>,
    action: &Forward,
    levels: &Levels<'_>,
    authority: &str,
    hcm: &HttpManager,
    conn: &Connection,
    runtime: &Arc<Runtime>,
    outgoing: Option<Outgoing>,
    upstream: &mut Option<UpstreamFacts>,
) -> http::Response<Body> {
    let (cluster_name, target_edits) = pick_target(&action.targets);
    let Some(cluster) = runtime.clusters.get(cluster_name).cloned() else {
        return RequestError::NoCluster.reply();
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
        return RequestError::UpgradeRefused(protocol.clone()).reply();
    }
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let request_bytes = outgoing.as_ref().and_then(|o| o.bytes.clone());
    let head = upstream_head(
        &mut parts,
        &edits,
        action,
        levels,
        authority,
        hcm,
        (conn.tls.as_ref(), conn.remote.ip()),
    );
    let target = match head {
        Ok(target) => target,
        Err(e) => return e.reply(),
    };
    // Mirrors get a copy of a request without a body (a body is streamed once, not kept),
    // as sent upstream, with `-shadow` on its authority; their answers are ignored.
    if upgrade.is_none() && body.is_end_stream() {
        for mirror in action.mirrors.iter().filter(|m| sampled(m.share)) {
            shadow(
                &parts,
                &target,
                &mirror.cluster,
                &conn.pool,
                runtime,
                action.timeout,
            );
        }
    }

    if let (Some(protocol), Some(on_upgrade)) = (&upgrade, on_upgrade) {
        let mut response = match upgrade_request(parts, &target) {
            Ok(mut upstream_request) => {
                if let Some(outgoing) = outgoing {
                    add_outgoing(upstream_request.headers_mut(), &outgoing, to_mesh(&cluster));
                }
                super::upgrade::forward(
                    on_upgrade,
                    upstream_request,
                    protocol,
                    &cluster,
                    &conn.drain,
                )
                .await
            }
            Err(e) => e.reply(),
        };
        edit(response.headers_mut(), edits.iter().map(|e| &e.response));
        *upstream = Some(UpstreamFacts {
            cluster: cluster.name.clone(),
            facts: cluster.cluster.telemetry.clone(),
            principal: None,
            exchange: None,
        });
        return response;
    }

    // A request with a body goes once (it is streamed, not kept for a retry).
    let retry = action.retry.as_ref().filter(|_| body.is_end_stream());
    let mut body: Body = body
        .map_err(|e| Box::new(e) as super::BoxError)
        .boxed_unsync();
    // A request without a body (most) has no bytes to count.
    if let Some(RequestBytes(bytes)) = request_bytes
        && !body.is_end_stream()
    {
        body = Body::new(Counted { body, bytes });
    }
    let per_try = retry.and_then(|r| r.per_try_timeout).or(action.timeout);
    let metrics = &runtime.metrics;
    let (hash, set_cookie) = if action.hash.is_empty() {
        (None, None)
    } else {
        super::affinity::request_hash(
            &action.hash,
            &parts.headers,
            parts.uri.query(),
            conn.remote.ip(),
        )
    };
    let mut exchange = match Exchange::new(
        &conn.pool, &cluster, metrics, parts, &target, retry, per_try,
    ) {
        Ok(exchange) => exchange,
        Err(e) => return e.reply(),
    };
    exchange.hash = hash;
    let mut upstream_facts = outgoing.map(|outgoing| {
        if let Some(trace) = &outgoing.trace {
            crate::telemetry::trace::propagation::inject(exchange.headers.get_mut(), trace);
        }
        exchange.metadata = outgoing.metadata.filter(|_| to_mesh(&cluster));
        UpstreamFacts {
            cluster: cluster.name.clone(),
            facts: cluster.cluster.telemetry.clone(),
            principal: None,
            exchange: None,
        }
    });
    let mut response = match with_retries(&exchange, body).await {
        Ok(Ok(response)) => response,
        // The last attempt's failure is answered like a response: edited.
        Ok(Err(failed)) => failed.reply(),
        // Answered at once, as is.
        Err(refused) => {
            tracing::debug!(cluster = cluster_name, reason = refused.reason(), error = %refused, "request not sent");
            *upstream = upstream_facts;
            return refused.reply();
        }
    };
    strip_hop_by_hop(response.headers_mut());
    edit(response.headers_mut(), edits.iter().map(|e| &e.response));
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    if let Some(mut facts) = upstream_facts.take() {
        // Who the upstream proved to be with its certificate (`destination_principal`).
        if let Some(verified) = response.extensions().get::<VerifiedUpstream>() {
            facts.principal = Some(verified.id.clone());
            facts.exchange = Some(verified.exchange.clone());
        }
        *upstream = Some(facts);
    }
    response
}

/// Sends a copy of the request head to the mirror `cluster`, in the background.
fn shadow(
    parts: &http::request::Parts,
    target: &Target,
    cluster: &str,
    pool: &Arc<Pool>,
    runtime: &Arc<Runtime>,
    timeout: Option<Duration>,
) {
    let Some(cluster) = runtime.clusters.get(cluster).cloned() else {
        tracing::debug!(cluster, "mirror cluster unknown: not mirrored");
        return;
    };
    let Ok(slot) = pool.mirrors.0.clone().try_acquire_owned() else {
        tracing::debug!(cluster = %cluster.cluster.name, "too many mirrored requests in flight: not mirrored");
        return;
    };
    // A mirror never runs longer than this, whatever the route's timeout.
    const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
    let timeout = Some(timeout.map_or(MIRROR_TIMEOUT, |t| t.min(MIRROR_TIMEOUT)));
    let mut copy = http::Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    let (copy, ()) = copy.into_parts();
    let target = Target {
        authority: shadow_authority(&target.authority),
        path_and_query: target.path_and_query.clone(),
    };
    let (pool, metrics) = (pool.clone(), runtime.metrics.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let exchange = Exchange::new(&pool, &cluster, &metrics, copy, &target, None, timeout);
        if let Ok(exchange) = exchange {
            let sent = with_retries(&exchange, super::full(Bytes::new()));
            let _ignored = tokio::time::timeout(MIRROR_TIMEOUT, sent).await;
        }
    });
}

/// Envoy's shadow host: `-shadow` after the host, before the port.
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

/// Whether a cluster leads to mesh workloads: TLS that verifies SPIFFE identities (never an
/// external service, which must not learn who calls it).
fn to_mesh(cluster: &ClusterRuntime) -> bool {
    cluster.cluster.tls.as_ref().is_some_and(|t| {
        !t.context.peer_ids.is_empty()
            && t.context
                .peer_ids
                .iter()
                .all(|id| id.starts_with("spiffe://"))
    })
}

/// The telemetry headers of an upgrade request (its own connection, no exchange kept): this
/// side's metadata (only toward a mesh workload, over verified mTLS) and the trace context
/// (replacing the caller's).
fn add_outgoing(headers: &mut HeaderMap, outgoing: &Outgoing, to_mesh: bool) {
    if let (true, Some((metadata, id))) = (to_mesh, outgoing.metadata.clone()) {
        headers.insert(peer_metadata::HEADER_NAME, metadata);
        headers.insert(peer_metadata::ID_HEADER_NAME, id);
    }
    // Traces (issue 19): ours replaces the caller's context, a stale `b3` included.
    if let Some(trace) = &outgoing.trace {
        crate::telemetry::trace::propagation::inject(headers, trace);
    }
}

/// The outcome of one attempt: the upstream's response, or why there is none.
type Attempted = Result<http::Response<Body>, RequestError>;

/// What every attempt of one request shares: where it goes, the request head as sent
/// upstream, and the route's retry policy and per-try timeout.
struct Exchange<'a> {
    pool: &'a Arc<Pool>,
    cluster: &'a ClusterRuntime,
    metrics: &'a Metrics,
    method: http::Method,
    version: http::Version,
    uri: http::Uri,
    /// Edited, with `Host` for HTTP/1.1 (HTTP/2 carries the authority in the URI). The last
    /// attempt the retry policy allows takes them rather than a copy (copying a header map
    /// allocates: its tables, and each header whose bytes are not shared yet). A route
    /// without retries (an inbound one: `isthmusd` gives outbound routes Istio's default of
    /// two) sends one attempt, and copies nothing.
    headers: parking_lot::Mutex<HeaderMap>,
    /// `None` when the request has a body (it cannot be replayed).
    retry: Option<&'a Retry>,
    per_try: Option<Duration>,
    /// This side's metadata-exchange headers, for a mesh upstream: the pool adds them on a
    /// connection whose callee does not keep them yet.
    metadata: Option<MetadataHeaders>,
    /// The request's hash for a consistent-hash cluster (`hash_policy`).
    hash: Option<u64>,
}

impl<'a> Exchange<'a> {
    /// `per_try`: the retry policy's per-try timeout, else the route's.
    fn new(
        pool: &'a Arc<Pool>,
        cluster: &'a ClusterRuntime,
        metrics: &'a Metrics,
        parts: http::request::Parts,
        target: &Target,
        retry: Option<&'a Retry>,
        per_try: Option<Duration>,
    ) -> Result<Self, RequestError> {
        let http2 =
            cluster.cluster.protocol.http == Some(crate::config::cluster::HttpVersion::Http2);
        let mut headers = parts.headers;
        if http2 {
            headers.remove(header::HOST);
        } else {
            headers.insert(header::HOST, target.host()?);
        }
        Ok(Self {
            pool,
            cluster,
            metrics,
            method: parts.method,
            version: if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            },
            uri: target.uri(http2)?,
            headers: parking_lot::Mutex::new(headers),
            retry,
            per_try,
            metadata: None,
            hash: None,
        })
    }

    fn cluster_name(&self) -> &str {
        &self.cluster.cluster.name
    }

    /// The upstream request of one attempt; a retry sends an empty body (only requests
    /// without one are retried). `last`: no attempt follows this one, which takes the headers.
    fn request(&self, body: Option<Body>, last: bool) -> http::Request<Body> {
        let body = body.unwrap_or_else(|| super::full(Bytes::new()));
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.version_mut() = self.version;
        *request.uri_mut() = self.uri.clone();
        let mut headers = self.headers.lock();
        *request.headers_mut() = if last {
            std::mem::take(&mut *headers)
        } else {
            headers.clone()
        };
        request
    }
}

/// Runs the attempts the retry policy allows. `Err`: the request is answered at once (no
/// host, the `max_requests` breaker); otherwise the last attempt's outcome.
async fn with_retries(x: &Exchange<'_>, body: Body) -> Result<Attempted, RequestError> {
    let mut body = Some(body);
    let attempts = 1 + x.retry.map_or(0, |r| r.num_retries);
    let mut backoff = retry_backoff(x.retry);
    // The hosts this request went to, for a retry that avoids them.
    let mut tried: Vec<Arc<Host>> = Vec::new();
    let mut last = None;
    for n in 0..attempts {
        // Held for as long as the retry runs.
        let _retry = if n > 0 {
            let Some(slot) = retry_slot(x) else {
                break;
            };
            tokio::time::sleep(backoff.next_delay()).await;
            Some(slot)
        } else {
            None
        };
        let host = choose_host(x, &tried).ok_or(RequestError::NoHealthyUpstream)?;
        tried.push(host.clone());
        let outcome = attempt(x, &host, body.take(), n > 0, n + 1 == attempts).await?;
        let again = retriable(x.retry, &outcome);
        last = Some(outcome);
        if !again {
            break;
        }
    }
    // The first attempt always runs: `last` is set.
    Ok(last.unwrap_or(Err(RequestError::NoHealthyUpstream)))
}

/// A slot of the cluster's retry limit (`max_retries`, or its budget), the retry counted;
/// `None` when none is free (Envoy's retry overflow, counted as such): no retry.
fn retry_slot(x: &Exchange<'_>) -> Option<Slot> {
    let limits = &x.cluster.cluster.limits;
    let Some(slot) = x.cluster.load.try_acquire(Breaker::Retries, limits) else {
        Metrics::cluster(&x.metrics.upstream_retry_overflows, x.cluster_name());
        return None;
    };
    Metrics::cluster(&x.metrics.upstream_retries, x.cluster_name());
    Some(slot)
}

/// The host of the next attempt: with `previous_hosts`, one not tried yet when there is one.
fn choose_host(x: &Exchange<'_>, tried: &[Arc<Host>]) -> Option<Arc<Host>> {
    match x.retry {
        Some(r) if r.avoid_previous_hosts && !tried.is_empty() => {
            x.cluster.pick_avoiding(tried, x.hash)
        }
        _ => x.cluster.pick_hashed(x.hash),
    }
}

/// One attempt on `host`; `last` when the policy allows no other. `Err` when the
/// `max_requests` breaker is open (Envoy's overflow: answered at once, never retried);
/// otherwise the outcome, [`record`]ed.
async fn attempt(
    x: &Exchange<'_>,
    host: &Arc<Host>,
    body: Option<Body>,
    retried: bool,
    last: bool,
) -> Result<Attempted, RequestError> {
    let request = x.request(body, last);
    let Some(open) = x
        .cluster
        .load
        .try_acquire(Breaker::Requests, &x.cluster.cluster.limits)
    else {
        x.metrics.overflow(x.cluster_name(), "max_requests");
        return Err(RequestError::Overflow("max_requests"));
    };
    let sent = send_attempt(
        x.pool,
        x.cluster,
        host,
        request,
        x.per_try,
        x.metadata.as_ref(),
    )
    .await;
    drop(open);
    let outcome = match sent {
        None => Err(RequestError::Timeout),
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => Err(RequestError::from_send(e, retried)),
    };
    record(x, host, &outcome);
    Ok(outcome)
}

/// Reports an attempt's outcome: to outlier detection (a breaker's refusal says nothing of the
/// host), to the timeout count, and to the log.
fn record(x: &Exchange<'_>, host: &Host, outcome: &Attempted) {
    if let Some(health) = health_outcome(outcome) {
        x.cluster.record(host, health);
    }
    match outcome {
        Err(RequestError::Timeout) => {
            Metrics::cluster(&x.metrics.upstream_timeouts, x.cluster_name());
        }
        Err(e @ RequestError::Upstream { .. }) => {
            tracing::debug!(cluster = x.cluster_name(), host = host.host, reason = e.reason(), error = %e, "upstream failed");
        }
        _ => {}
    }
}

/// Whether the retry policy retries this outcome (`retry_on`).
fn retriable(retry: Option<&Retry>, outcome: &Attempted) -> bool {
    let Some(r) = retry else {
        return false;
    };
    match outcome {
        Ok(response) => retriable_status(r, response),
        Err(RequestError::Timeout) => r.on.server_error || r.on.gateway_error,
        // The connection or pending-request breakers: never retried.
        Err(RequestError::Overflow(_)) => false,
        Err(e) => {
            r.on.server_error
                || r.on.gateway_error
                || r.on.reset
                || (e.is_connect_failure() && r.on.connect_failure)
                || r.on.refused_stream
        }
    }
}

/// Envoy's retry back-off: a wait drawn up to the current interval (full jitter), which doubles
/// after each retry up to the maximum and is never reset within a request.
fn retry_backoff(retry: Option<&Retry>) -> Backoff {
    let base = retry.map_or(DEFAULT_BACKOFF, |r| r.base_interval);
    Backoff::new(base, retry.map_or(base, |r| r.max_interval))
}

/// Where the upstream request goes: the authority (the request's, or the route's host
/// rewrite) and the path and query (rewritten).
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: String,
    pub path_and_query: PathAndQuery,
}

impl Target {
    /// The request target: origin form (`/path?query`) for HTTP/1.1, absolute for HTTP/2.
    pub fn uri(&self, http2: bool) -> Result<http::Uri, RequestError> {
        if !http2 {
            return Ok(http::Uri::from(self.path_and_query.clone()));
        }
        http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.as_str())
            .path_and_query(self.path_and_query.clone())
            .build()
            .map_err(|e| RequestError::InvalidRequest(format!("authority: {e}")))
    }

    /// The `Host` header (HTTP/1.1).
    pub fn host(&self) -> Result<HeaderValue, RequestError> {
        HeaderValue::from_str(&self.authority)
            .map_err(|e| RequestError::InvalidRequest(format!("Host: {e}")))
    }
}

/// An upgrade request as it goes upstream: the edited head, no body.
fn upgrade_request(
    parts: http::request::Parts,
    target: &Target,
) -> Result<http::Request<Body>, RequestError> {
    let mut upstream = http::Request::new(super::full(Bytes::new()));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = target.uri(false)?;
    *upstream.headers_mut() = parts.headers;
    upstream.headers_mut().insert(header::HOST, target.host()?);
    Ok(upstream)
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
    (tls, remote): (Option<&TlsPeer>, std::net::IpAddr),
) -> Result<Target, RequestError> {
    strip_hop_by_hop(&mut parts.headers);
    edit(&mut parts.headers, edits.iter().map(|e| &e.request));
    client_cert_header(&mut parts.headers, hcm, tls);
    let proto = if tls.is_some() { "https" } else { "http" };
    if hcm.use_remote_address {
        // The edge, as Envoy's `use_remote_address`: what the client says it came over, or
        // from, is not believed.
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
        append_forwarded_for(&mut parts.headers, remote);
    } else if !parts.headers.contains_key("x-forwarded-proto") {
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    let authority = match &action.host_rewrite {
        Some(rewrite) => rewrite.as_str().to_owned(),
        None => authority.to_owned(),
    };
    let path_and_query = PathAndQuery::try_from(rewrite_path(&parts.uri, action, levels))
        .map_err(|e| RequestError::InvalidRequest(format!("path: {e}")))?;
    Ok(Target {
        authority,
        path_and_query,
    })
}

/// `x-forwarded-for` with `remote` appended (several such headers are joined first).
fn append_forwarded_for(headers: &mut http::HeaderMap, remote: std::net::IpAddr) {
    let prior: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if prior.is_empty() {
        remote.to_string()
    } else {
        format!("{},{remote}", prior.join(","))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
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
    metadata: Option<&MetadataHeaders>,
) -> Option<Result<http::Response<Body>, SendError>> {
    let active = host.track_active();
    let sent = pool.send(cluster, host, request, metadata);
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

/// What an attempt means for outlier detection.
/// A circuit breaker's refusal says nothing of the host.
fn health_outcome(outcome: &Attempted) -> Option<Outcome> {
    Some(match outcome {
        Err(RequestError::Overflow(_)) => return None,
        Ok(r) if matches!(r.status().as_u16(), 502..=504) => Outcome::GatewayError,
        Ok(r) if r.status().is_server_error() => Outcome::ServerError,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::GatewayError,
    })
}

/// The cluster of the route (drawn by weight from a split) and the split's own edits.
fn pick_target(targets: &Targets) -> (&str, Option<&Edits>) {
    match targets {
        Targets::Cluster(c) => (c, None),
        Targets::Weighted(all) => {
            // The configuration refuses weights that add up to zero; the last one otherwise.
            let i = weighted::pick_random(all.iter().map(|t| u64::from(t.weight)))
                .unwrap_or(all.len().saturating_sub(1));
            all.get(i)
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
    if r.on.retriable_status_codes && r.retriable_status_codes.contains(&response.status()) {
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
            headers.remove(name);
        }
        for add in &level.add {
            let (name, value) = (add.name.clone(), add.value.clone());
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

pub fn request_id() -> HeaderValue {
    // A version-4 UUID, `xxxxxxxx-xxxx-4xxx-axxx-xxxxxxxxxxxx`, written in place: this runs
    // for every request that comes without one.
    let random: [u8; 16] = rand::rng().random();
    let mut id = [b'-'; 36];
    crate::hex::write(&mut id[0..8], &random[0..4]);
    crate::hex::write(&mut id[9..13], &random[4..6]);
    crate::hex::write(&mut id[14..18], &random[6..8]);
    crate::hex::write(&mut id[19..23], &random[8..10]);
    crate::hex::write(&mut id[24..36], &random[10..16]);
    id[14] = b'4';
    id[19] = b'a';
    HeaderValue::from_bytes(&id).expect("hex digits and dashes are a valid header value")
}

/// The redirect's answer: its status and `Location` (scheme, host, port and path from the
/// redirect, the request's where it says nothing).
pub fn redirect<B>(
    r: &Redirect,
    request: &http::Request<B>,
    authority: &str,
    tls: bool,
) -> Result<http::Response<Body>, RequestError> {
    let scheme = match &r.scheme {
        Some(scheme) => scheme.as_str(),
        None if tls => "https",
        None => "http",
    };
    let mut host = r.host.as_ref().map_or(authority, |h| h.as_str()).to_owned();
    if let Some(port) = r.port {
        let bare = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_owned();
        host = format!("{bare}:{port}");
    } else if r.scheme.is_some() {
        // As Envoy: a scheme change drops the old scheme's default port (`http://a:80` to
        // `https://a`), and keeps any other.
        let old_default = if tls { ":443" } else { ":80" };
        if scheme != if tls { "https" } else { "http" }
            && let Some(bare) = host.strip_suffix(old_default)
        {
            host = bare.to_owned();
        }
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
    // The redirect's parts are checked by the configuration and the request's are header
    // text already: this holds.
    let location = HeaderValue::from_str(&format!("{scheme}://{host}{path}{query}"))
        .map_err(|e| RequestError::InvalidRequest(format!("Location: {e}")))?;
    let mut response = super::local_reply(r.status, "");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::config::route::HeaderAdd;
    use crate::upstream::testing;

    /// `x-request-id` is a version-4 UUID in lower-case hex, different each time.
    #[test]
    fn request_ids_are_v4_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let id = a.to_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        for (i, c) in id.bytes().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, b'-', "{id}"),
                14 => assert_eq!(c, b'4', "{id}"),
                19 => assert_eq!(c, b'a', "{id}"),
                _ => assert!(c.is_ascii_digit() || (b'a'..=b'f').contains(&c), "{id}"),
            }
        }
    }

    /// A client reset drops the request's future mid-flight: the host must not stay busy for
    /// least-request balancing.
    #[tokio::test]
    async fn a_cancelled_attempt_gives_its_active_count_back() {
        let (port, mut accepted) = testing::silent_upstream().await;
        let (runtime, host) = testing::backend(port);
        let cluster = runtime.clusters["backend"].clone();
        let task = tokio::spawn({
            let (cluster, host) = (cluster.clone(), host.clone());
            async move {
                let pool = Arc::new(Pool::default());
                let request = http::Request::get("/")
                    .body(super::super::full(Bytes::new()))
                    .unwrap();
                send_attempt(&pool, &cluster, &host, request, None, None).await
            }
        });
        // The request reached the upstream, which never answers: the attempt is in flight.
        let mut upstream = accepted.recv().await.unwrap();
        let mut head = [0; 4];
        upstream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET ");
        assert_eq!(host.active.load(Ordering::Relaxed), 1);
        testing::abort_gives_the_count_back(task, &host).await;
    }

    /// A response counts on its host until its body has been read, not just until its head
    /// came in: a stream or a slow download is open work for least-request balancing.
    #[tokio::test]
    async fn a_response_counts_on_its_host_until_its_body_ends() {
        use http_body_util::BodyExt as _;
        let (port, _open, _accepted) = testing::http_upstream().await;
        let (runtime, host) = testing::backend(port);
        let cluster = runtime.clusters["backend"].clone();
        let pool = Arc::new(Pool::default());
        let request = http::Request::get("/")
            .body(super::super::full(Bytes::new()))
            .unwrap();
        let response = send_attempt(&pool, &cluster, &host, request, None, None)
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

    #[test]
    fn redirects_write_location_from_the_typed_redirect_and_the_request() {
        use http::uri::{Authority, Scheme};
        let request = http::Request::get("/old/page?q=1").body(()).unwrap();
        let to = |r: Redirect, tls: bool| {
            let response = redirect(&r, &request, "shop.local:8080", tls).unwrap();
            let location = response.headers()[header::LOCATION].to_str().unwrap();
            (response.status().as_u16(), location.to_owned())
        };
        let moved = Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            prefix_rewrite: None,
            strip_query: false,
            status: http::StatusCode::MOVED_PERMANENTLY,
        };
        assert_eq!(
            to(moved.clone(), false),
            (301, "http://shop.local:8080/old/page?q=1".into())
        );
        assert_eq!(
            to(moved.clone(), true),
            (301, "https://shop.local:8080/old/page?q=1".into())
        );
        let everything = Redirect {
            scheme: Some(Scheme::HTTPS),
            host: Some(Authority::from_static("www.example.com")),
            port: Some(8443),
            path: Some("/new".into()),
            strip_query: true,
            status: http::StatusCode::PERMANENT_REDIRECT,
            ..moved.clone()
        };
        assert_eq!(
            to(everything, false),
            (308, "https://www.example.com:8443/new".into())
        );
        // A scheme change drops the old scheme's default port only (Envoy's rule).
        let to_https = Redirect {
            scheme: Some(Scheme::HTTPS),
            ..moved
        };
        let at = |authority: &str, tls: bool| {
            let response = redirect(&to_https, &request, authority, tls).unwrap();
            response.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            at("shop.local:80", false),
            "https://shop.local/old/page?q=1"
        );
        assert_eq!(at("[::1]:80", false), "https://[::1]/old/page?q=1");
        assert_eq!(
            at("shop.local:8080", false),
            "https://shop.local:8080/old/page?q=1"
        );
        assert_eq!(
            at("shop.local:80", true),
            "https://shop.local:80/old/page?q=1"
        );
    }

    #[test]
    fn the_edge_appends_the_client_address_and_sets_the_scheme_it_used() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.8.8.8, 10.7.7.7"),
        );
        append_forwarded_for(&mut headers, "192.0.2.1".parse().unwrap());
        assert_eq!(
            headers
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["10.9.9.9,10.8.8.8, 10.7.7.7,192.0.2.1"]
        );
        let mut empty = http::HeaderMap::new();
        append_forwarded_for(&mut empty, "2001:db8::1".parse().unwrap());
        assert_eq!(empty["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn header_edits_apply_typed_names_and_values_by_their_action() {
        let add = |name: &'static str, value: &'static str, action| HeaderAdd {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            action,
        };
        let route = HeaderEdits {
            add: vec![
                add("x-append", "route", AppendAction::AppendIfExistsOrAdd),
                add("x-absent", "route", AppendAction::AddIfAbsent),
                add("x-present", "route", AppendAction::OverwriteIfExists),
                add("x-missing", "route", AppendAction::OverwriteIfExists),
            ],
            remove: vec![HeaderName::from_static("x-drop")],
        };
        // The less specific level has the last word.
        let table = HeaderEdits {
            add: vec![add(
                "x-absent",
                "table",
                AppendAction::OverwriteIfExistsOrAdd,
            )],
            remove: vec![],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-append", HeaderValue::from_static("client"));
        headers.insert("x-present", HeaderValue::from_static("client"));
        headers.insert("x-drop", HeaderValue::from_static("client"));
        edit(&mut headers, [&route, &table].into_iter());
        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-append"), ["client", "route"]);
        assert_eq!(all("x-absent"), ["table"]);
        assert_eq!(all("x-present"), ["route"]);
        assert!(all("x-missing").is_empty());
        assert!(all("x-drop").is_empty());
    }

    mod composition {
        //! The steps of the way upstream: retry predicates, outlier outcomes, back-off, and
        //! `with_retries` against loopback upstreams (breakers, per-try timeouts, metrics).

        use std::sync::atomic::Ordering;
        use std::time::Duration;

        use http::uri::PathAndQuery;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use tokio::net::TcpListener;

        use super::super::*;
        use crate::config::cluster::{Cluster, Discovery, LbPolicy};
        use crate::config::route::{GrpcRetryOn, RetryOn};
        use crate::metrics::{ClusterLabels, OverflowLabels};
        use crate::upstream::ConnectError;
        use crate::upstream::testing;

        fn response(status: u16, grpc: Option<&str>) -> Attempted {
            let mut builder = http::Response::builder().status(status);
            if let Some(g) = grpc {
                builder = builder.header("grpc-status", g);
            }
            Ok(builder.body(crate::http::full(Bytes::new())).unwrap())
        }

        fn refused() -> Attempted {
            Err(RequestError::from_send(
                SendError::Connect(ConnectError::Io {
                    host: "127.0.0.1".into(),
                    port: 1,
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                }),
                false,
            ))
        }

        fn policy(on: RetryOn) -> Retry {
            Retry {
                on,
                num_retries: 1,
                per_try_timeout: None,
                retriable_status_codes: vec![http::StatusCode::IM_A_TEAPOT],
                base_interval: Duration::from_millis(1),
                max_interval: Duration::from_millis(1),
                avoid_previous_hosts: true,
            }
        }

        #[test]
        fn outcomes_are_retried_as_retry_on_says() {
            let on = |f: fn(&mut RetryOn)| {
                let mut on = RetryOn::default();
                f(&mut on);
                on
            };
            // (retry_on, outcome, retried, why)
            let table: Vec<(RetryOn, Attempted, bool, &str)> = vec![
                (
                    on(|o| o.server_error = true),
                    response(500, None),
                    true,
                    "5xx",
                ),
                (
                    on(|o| o.server_error = true),
                    response(404, None),
                    false,
                    "not 5xx",
                ),
                (
                    on(|o| o.gateway_error = true),
                    response(503, None),
                    true,
                    "gateway-error",
                ),
                (
                    on(|o| o.gateway_error = true),
                    response(500, None),
                    false,
                    "500 is not a gateway error",
                ),
                (
                    on(|o| o.retriable_4xx = true),
                    response(409, None),
                    true,
                    "retriable-4xx",
                ),
                (
                    on(|o| o.retriable_status_codes = true),
                    response(418, None),
                    true,
                    "a listed code",
                ),
                (
                    RetryOn::default(),
                    response(418, None),
                    false,
                    "listed, but retriable-status-codes is not on",
                ),
                (
                    on(|o| {
                        o.grpc = GrpcRetryOn {
                            unavailable: true,
                            ..GrpcRetryOn::default()
                        }
                    }),
                    response(200, Some("14")),
                    true,
                    "grpc unavailable",
                ),
                (
                    on(|o| {
                        o.grpc = GrpcRetryOn {
                            unavailable: true,
                            ..GrpcRetryOn::default()
                        }
                    }),
                    response(200, Some("13")),
                    false,
                    "grpc internal is not asked for",
                ),
                (
                    on(|o| o.gateway_error = true),
                    Err(RequestError::Timeout),
                    true,
                    "a timeout is a gateway error",
                ),
                (
                    on(|o| o.reset = true),
                    Err(RequestError::Timeout),
                    false,
                    "a timeout is not a reset",
                ),
                (
                    on(|o| o.connect_failure = true),
                    refused(),
                    true,
                    "connect-failure",
                ),
                (
                    on(|o| o.reset = true),
                    refused(),
                    true,
                    "no response at all",
                ),
                (
                    on(|o| o.server_error = true),
                    Err(RequestError::Overflow("max_pending_requests")),
                    false,
                    "a breaker's refusal is never retried",
                ),
            ];
            for (on, outcome, retried, why) in table {
                assert_eq!(retriable(Some(&policy(on)), &outcome), retried, "{why}");
                assert!(!retriable(None, &outcome), "{why}: no policy, no retry");
            }
        }

        #[test]
        fn outlier_detection_hears_of_everything_but_breakers() {
            let table: Vec<(Attempted, Option<Outcome>)> = vec![
                (response(200, None), Some(Outcome::Success)),
                (response(404, None), Some(Outcome::Success)),
                (response(500, None), Some(Outcome::ServerError)),
                (response(503, None), Some(Outcome::GatewayError)),
                (Err(RequestError::Timeout), Some(Outcome::GatewayError)),
                (refused(), Some(Outcome::GatewayError)),
                (Err(RequestError::Overflow("max_connections")), None),
            ];
            for (outcome, expected) in table {
                assert_eq!(health_outcome(&outcome), expected, "{outcome:?}");
            }
        }

        #[test]
        fn the_back_off_doubles_up_to_its_maximum() {
            let retry = Retry {
                base_interval: Duration::from_millis(25),
                max_interval: Duration::from_millis(150),
                ..policy(RetryOn::default())
            };
            let mut backoff = retry_backoff(Some(&retry));
            let mut seen = Vec::new();
            for _ in 0..4 {
                let cap = backoff.step();
                assert!(backoff.next_delay() <= cap);
                seen.push(backoff.step().as_millis());
            }
            assert_eq!(seen, [50, 100, 150, 150]);
            // Without a policy: Envoy's default interval (no retry waits on it).
            assert_eq!(retry_backoff(None).step(), DEFAULT_BACKOFF);
        }

        /// A round-robin cluster `backend` of these loopback ports (the first pick is the
        /// first port).
        fn backend(ports: &[u16], edit: impl FnOnce(&mut Cluster)) -> Runtime {
            let mut cluster = testing::cluster("backend", ports[0]);
            cluster.lb = LbPolicy::RoundRobin;
            if let Discovery::Static(a) = &mut cluster.discovery {
                for port in &ports[1..] {
                    let mut more = a.groups[0].endpoints[0].clone();
                    more.port = *port;
                    a.groups[0].endpoints.push(more);
                }
            }
            edit(&mut cluster);
            testing::runtime(&Arc::new(testing::config([cluster])))
        }

        async fn closed_port() -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        }

        /// A GET of `/` through `with_retries`.
        async fn send(
            runtime: &Runtime,
            retry: Option<&Retry>,
            per_try: Option<Duration>,
        ) -> Result<Attempted, RequestError> {
            let pool = Arc::new(Pool::default());
            let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
            let target = Target {
                authority: "backend".into(),
                path_and_query: PathAndQuery::from_static("/"),
            };
            let cluster = &runtime.clusters["backend"];
            let x = Exchange::new(
                &pool,
                cluster,
                &runtime.metrics,
                parts,
                &target,
                retry,
                per_try,
            )
            .unwrap();
            with_retries(&x, crate::http::full(Bytes::new())).await
        }

        /// The count of `backend` in a family of cluster counters.
        fn count(
            runtime: &Runtime,
            family: fn(&Metrics) -> &Family<ClusterLabels, Counter>,
        ) -> u64 {
            family(&runtime.metrics)
                .get_or_create(&ClusterLabels {
                    cluster: "backend".into(),
                })
                .get()
        }

        /// Every attempt sends the request's headers; the last one the policy allows takes
        /// them instead of a copy.
        #[tokio::test]
        async fn each_attempt_has_the_headers_and_the_last_takes_them() {
            let runtime = backend(&[closed_port().await], |_| {});
            let pool = Arc::new(Pool::default());
            let (parts, ()) = http::Request::get("/")
                .header("x-kept", "yes")
                .body(())
                .unwrap()
                .into_parts();
            let target = Target {
                authority: "backend".into(),
                path_and_query: PathAndQuery::from_static("/"),
            };
            let cluster = &runtime.clusters["backend"];
            let x = Exchange::new(&pool, cluster, &runtime.metrics, parts, &target, None, None)
                .unwrap();
            let sent = |r: &http::Request<Body>| {
                (
                    r.headers().get("x-kept").cloned(),
                    r.headers().get(header::HOST).cloned(),
                )
            };
            let expected = (
                Some(HeaderValue::from_static("yes")),
                Some(HeaderValue::from_static("backend")),
            );
            assert_eq!(
                sent(&x.request(None, false)),
                expected,
                "a try before the last"
            );
            assert_eq!(sent(&x.request(None, false)), expected, "another");
            assert_eq!(sent(&x.request(None, true)), expected, "the last");
            assert!(x.headers.lock().is_empty(), "taken, not copied");
        }

        #[tokio::test]
        async fn a_connect_failure_is_retried_on_a_host_not_tried_yet() {
            let (live, _open, _accepted) = testing::http_upstream().await;
            let runtime = backend(&[closed_port().await, live], |_| {});
            let retry = policy(RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            });
            let response = send(&runtime, Some(&retry), None).await.unwrap().unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(count(&runtime, |m| &m.upstream_retries), 1);
            assert_eq!(count(&runtime, |m| &m.upstream_retry_overflows), 0);
        }

        #[tokio::test]
        async fn without_a_retry_policy_the_failure_is_answered_as_envoy_words_it() {
            let runtime = backend(&[closed_port().await], |_| {});
            let failed = send(&runtime, None, None).await.unwrap().unwrap_err();
            assert!(failed.is_connect_failure(), "{failed}");
            assert_eq!(failed.reason(), "remote_connection_failure");
            assert_eq!(count(&runtime, |m| &m.upstream_retries), 0);
        }

        #[tokio::test]
        async fn every_try_has_its_own_timeout_and_each_is_counted() {
            let (port, _accepted) = testing::silent_upstream().await;
            let runtime = backend(&[port], |_| {});
            let retry = policy(RetryOn {
                gateway_error: true,
                ..RetryOn::default()
            });
            let per_try = Some(Duration::from_millis(100));
            let failed = send(&runtime, Some(&retry), per_try)
                .await
                .unwrap()
                .unwrap_err();
            assert!(matches!(failed, RequestError::Timeout), "{failed}");
            assert_eq!(count(&runtime, |m| &m.upstream_timeouts), 2);
            assert_eq!(count(&runtime, |m| &m.upstream_retries), 1);
        }

        #[tokio::test]
        async fn breakers_refuse_at_once_and_retries_stop_at_their_limit() {
            let (live, _open, _accepted) = testing::http_upstream().await;
            // No request slot: answered at once, counted by breaker, nothing sent.
            let runtime = backend(&[live], |c| c.limits.max_requests = 0);
            let refused = send(&runtime, None, None).await.unwrap_err();
            assert_eq!(refused.reason(), "max_requests");
            let overflows = runtime
                .metrics
                .upstream_overflows
                .get_or_create(&OverflowLabels {
                    cluster: "backend".into(),
                    breaker: "max_requests",
                })
                .get();
            assert_eq!(overflows, 1);
            // No retry slot: the first failure stands, counted as a retry overflow.
            let runtime = backend(&[closed_port().await, live], |c| c.limits.max_retries = 0);
            let retry = policy(RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            });
            let failed = send(&runtime, Some(&retry), None)
                .await
                .unwrap()
                .unwrap_err();
            assert!(failed.is_connect_failure(), "{failed}");
            assert_eq!(count(&runtime, |m| &m.upstream_retries), 0);
            assert_eq!(count(&runtime, |m| &m.upstream_retry_overflows), 1);
            // Every slot given back.
            let cluster = &runtime.clusters["backend"];
            assert_eq!(cluster.load.requests.load(Ordering::Relaxed), 0);
            assert_eq!(cluster.load.retries.load(Ordering::Relaxed), 0);
        }
    }
}
