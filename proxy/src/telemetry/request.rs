//! One HTTP request's telemetry, from its head to the end of its response body: Istio's
//! request metrics on both reporters, the metadata exchange headers, and the request's span.
//!
//! The forward path tells the recorder where the request went ([`UpstreamFacts`], handed to
//! [`Observation::finish`]) and, in the response's extensions, the flags of a local answer
//! ([`ResponseFlags`]); it is handed what it must add to the upstream request ([`Outgoing`]);
//! the request's body is counted into [`RequestBytes`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};

use super::Telemetry;
use super::header_scan::HeaderScan;
use super::istio::{Finished, HandleCache};
use super::labels::{self, CallLabels, Label, Reporter, RequestLabels, Service, Workload};
use super::peer_metadata::{self, PeerCache, UpstreamExchange};
use super::trace::{RequestSpan, SpanKind};
use crate::config::telemetry::{ClusterFacts, NodeFacts};
use crate::config::tracing::Tracing;
use crate::http::{Body, BoxError};

/// What the forward path learnt: the cluster the request went to (its service and mesh) and
/// the principal its connection was verified against.
#[derive(Debug, Clone)]
pub struct UpstreamFacts {
    pub cluster: Arc<str>,
    pub facts: Arc<ClusterFacts>,
    pub principal: Option<Label>,
    /// The upstream connection's metadata exchange (a verified upstream).
    pub exchange: Option<Arc<UpstreamExchange>>,
}

/// Envoy's response flags of a local answer (`NR`, `UH`, `UF`, `UO`, `UT`, `URX`, `UC`,
/// `RBAC`, ...).
#[derive(Debug, Clone, Copy)]
pub struct ResponseFlags(pub &'static str);

/// The request body's size so far.
#[derive(Debug, Clone, Default)]
pub struct RequestBytes(pub Arc<AtomicU64>);

/// Headers the forward path adds to the upstream request: this side's metadata (sent only to
/// mesh peers, over mTLS) and the trace context.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub metadata: Option<(HeaderValue, HeaderValue)>,
    pub trace: Option<crate::telemetry::trace::propagation::Outgoing>,
    /// Where the forward path counts the request body's bytes; `None` for a request without
    /// a body.
    pub bytes: Option<RequestBytes>,
}

/// What one connection's requests share.
#[derive(Debug)]
pub struct ConnectionTelemetry {
    pub telemetry: Arc<Telemetry>,
    pub node: Arc<NodeFacts>,
    pub reporter: Reporter,
    /// The caller, as its certificate says (destination reporter): principal and mesh.
    pub peer: Option<Arc<Workload>>,
    /// The caller's verified SPIFFE ID (destination reporter): whose metadata header is read.
    pub peer_id: Option<Arc<str>>,
    pub mutual_tls: bool,
    pub peers: Arc<PeerCache>,
    /// This connection's label sets and their series.
    pub handles: Arc<HandleCache>,
    /// The last metadata header this connection read and whom it named: a connection's peer
    /// sends the same bytes on every request.
    pub last_peer: parking_lot::Mutex<Option<PeerMemo>>,
    /// The other side's labels in this connection's last request: its requests mostly name
    /// the same one, whose labels are then shared rather than built again.
    pub other_side: parking_lot::Mutex<Option<SideMemo>>,
    /// The connection manager's tracing settings.
    pub tracing: Option<Arc<Tracing>>,
    /// Destination reporter: the service this workload serves here, for requests answered
    /// before a cluster is chosen (RBAC denials, no route).
    pub served: Option<UpstreamFacts>,
    /// The downstream address (the span's `peer.address`).
    pub remote: std::net::SocketAddr,
}

/// The other side's labels of a connection's last request, and what they were made of:
/// the same parts (the same `Arc`s) make the same labels, found without building them.
#[derive(Debug)]
pub struct SideMemo {
    said: Option<Arc<peer_metadata::PeerWorkload>>,
    principal: Option<Label>,
    mesh: Label,
    labels: Arc<Workload>,
}

/// A metadata header, the identity it came from, and whom it named.
pub type PeerMemo = (
    HeaderValue,
    String,
    Option<Arc<peer_metadata::PeerWorkload>>,
);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const PEER_METADATA: HeaderName = peer_metadata::HEADER_NAME;
const PEER_METADATA_ID: HeaderName = peer_metadata::ID_HEADER_NAME;
const KEPT: HeaderName = peer_metadata::KEPT_HEADER_NAME;

impl ConnectionTelemetry {
    /// At a request's head: strips the caller's metadata (reading it only from a verified
    /// caller, destination reporter), starts the span, and says what the upstream request
    /// carries.
    pub fn begin<B: http_body::Body>(
        self: &Arc<Self>,
        request: &mut http::Request<B>,
    ) -> Observation {
        // What the request carries, read once: nothing below removes or adds a telemetry
        // header before the scan's last use (`take_peer`) but `x-request-id`.
        let scan = HeaderScan::of_request(request.headers());
        // The id the forward path would give it, now, so that the span carries it too.
        if !scan.request_id {
            request
                .headers_mut()
                .insert(REQUEST_ID.clone(), crate::http::forward::request_id());
        }
        let grpc = scan.grpc;
        let head = request.method() == http::Method::HEAD;
        let span = self.tracing.as_ref().and_then(|tracing| {
            let kind = match self.reporter {
                Reporter::Source => SpanKind::Client,
                Reporter::Destination => SpanKind::Server,
            };
            // Envoy's span name: the authority, then `/*` (made only for a sampled span).
            let name = || format!("{}/*", crate::http::request_authority(request));
            let span =
                self.telemetry
                    .tracer
                    .start_scanned(tracing, kind, name, request.headers(), scan);
            span.map(|mut span| {
                if span.is_recording() {
                    span.set_attribute("http.method", request.method().to_string());
                    span.set_attribute("peer.address", self.remote.ip().to_string());
                }
                span
            })
        });
        let headers = request.headers_mut();
        let verified = match self.reporter {
            Reporter::Destination => self.peer_id.as_deref(),
            Reporter::Source => None,
        };
        let (caller_sent, mut caller) = take_peer(headers, scan, self, verified);
        if !caller_sent && let Some(id) = verified {
            // A caller told that this connection keeps its metadata sends it no more.
            caller = self.kept_caller(id);
        }
        let mut outgoing = Outgoing::default();
        if self.reporter == Reporter::Source {
            outgoing.metadata = Some((
                self.node.headers.metadata.clone(),
                self.node.headers.id.clone(),
            ));
        }
        outgoing.trace = span.as_ref().map(RequestSpan::outgoing);
        // Most requests have no body, and nothing to count.
        outgoing.bytes = (!request.body().is_end_stream()).then(RequestBytes::default);
        let bytes = outgoing.bytes.clone();
        Observation {
            state: Some(Pending {
                conn: Arc::clone(self),
                start: tokio::time::Instant::now(),
                grpc,
                head,
                caller_sent,
                caller,
                bytes,
                span,
            }),
            outgoing: Some(outgoing),
        }
    }
}

/// A request under way. Dropped before its response head (the client went away, or its
/// stream was reset), it is recorded as Istio records it: code `0`, `DC`.
#[derive(Debug)]
pub struct Observation {
    state: Option<Pending>,
    /// What the upstream request carries, until the forward path takes it.
    outgoing: Option<Outgoing>,
}

#[derive(Debug)]
struct Pending {
    conn: Arc<ConnectionTelemetry>,
    start: tokio::time::Instant,
    grpc: bool,
    head: bool,
    /// The caller sent its metadata (destination reporter): it gets ours.
    caller_sent: bool,
    /// The caller's workload, from its metadata header (destination reporter).
    caller: Option<Arc<peer_metadata::PeerWorkload>>,
    bytes: Option<RequestBytes>,
    span: Option<RequestSpan>,
}

impl Drop for Observation {
    fn drop(&mut self) {
        if let Some(pending) = self.state.take() {
            let call = pending.call_labels(None, None, "DC");
            pending
                .recorder(call, 0, None, None, true)
                .record(Outcome::Complete);
        }
    }
}

impl Observation {
    /// What the forward path adds to the upstream request (handed over, not put in the
    /// request's extensions: that would cost two allocations per request).
    pub fn take_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.take()
    }

    /// At the response's head: reads (and removes) the callee's metadata (source reporter,
    /// from a callee whose certificate was verified), adds ours for a verified caller
    /// (destination reporter), and wraps the body so that the request is recorded when it
    /// ends. `upstream`: where the forward path sent the request, if it did.
    pub fn finish(
        mut self,
        mut response: http::Response<Body>,
        upstream: Option<UpstreamFacts>,
    ) -> http::Response<Body> {
        let Some(pending) = self.state.take() else {
            return response;
        };
        let upstream = upstream.or_else(|| pending.conn.served.clone());
        let flags = response
            .extensions_mut()
            .remove::<ResponseFlags>()
            .map_or("-", |f| f.0);
        let headers = response.headers_mut();
        let scan = HeaderScan::of(headers);
        let verified = match pending.conn.reporter {
            Reporter::Source => upstream.as_ref().and_then(|u| u.principal.as_deref()),
            Reporter::Destination => None,
        };
        let (callee_sent, mut callee) = take_peer(headers, scan, &pending.conn, verified);
        let kept = scan.kept && headers.remove(&KEPT).is_some();
        if let Some(exchange) = upstream.as_ref().and_then(|u| u.exchange.as_ref())
            && pending.conn.reporter == Reporter::Source
        {
            if callee_sent {
                exchange.remember(callee.clone());
                if kept {
                    exchange.set_kept(pending.conn.node.headers.metadata.clone());
                }
            } else {
                callee = exchange.remembered();
            }
        }
        if pending.conn.reporter == Reporter::Destination
            && pending.caller_sent
            && pending.conn.peer.is_some()
        {
            headers.insert(
                PEER_METADATA.clone(),
                pending.conn.node.headers.metadata.clone(),
            );
            headers.insert(
                PEER_METADATA_ID.clone(),
                pending.conn.node.headers.id.clone(),
            );
            // The connection's memo holds what the caller said: an isthmus-proxy caller,
            // which offered it, may stop saying it on this connection.
            if pending
                .caller
                .as_ref()
                .is_some_and(|c| c.once_per_connection)
            {
                headers.insert(KEPT.clone(), HeaderValue::from_static("1"));
            }
        }
        let call = pending.call_labels(upstream.as_ref(), callee.as_ref(), flags);
        let status = response.status().as_u16();
        let grpc_status = pending
            .grpc
            .then(|| grpc_status(response.headers()))
            .flatten();
        // A response that has no body, or whose length is known, is complete when that much
        // was sent (hyper may drop the body without polling it to its end).
        let no_body = pending.head || matches!(status, 100..=199 | 204 | 304);
        let expected = response.body().size_hint().exact();
        let cluster = upstream.map(|u| u.cluster);
        let recorder = pending.recorder(call, status, grpc_status, cluster, no_body);
        let expected = if no_body { Some(0) } else { expected };
        response.map(|body| {
            Body::new(Recorded {
                body,
                expected,
                recorder: Some(recorder),
            })
        })
    }
}

impl Pending {
    fn recorder(
        self,
        call: CallLabels,
        status: u16,
        grpc_status: Option<u16>,
        cluster: Option<Arc<str>>,
        no_body: bool,
    ) -> Recorder {
        let mut span = self.span;
        if let (Some(span), Some(cluster)) = (&mut span, cluster)
            && span.is_recording()
        {
            span.set_attribute("upstream_cluster", cluster.to_string());
        }
        Recorder {
            telemetry: self.conn.telemetry.clone(),
            handles: self.conn.handles.clone(),
            call,
            status,
            grpc: self.grpc,
            grpc_status,
            start: self.start,
            request_bytes: self.bytes,
            response_bytes: 0,
            no_body,
            span,
        }
    }

    fn call_labels(
        &self,
        upstream: Option<&UpstreamFacts>,
        callee: Option<&Arc<peer_metadata::PeerWorkload>>,
        flags: &'static str,
    ) -> CallLabels {
        let me = self.conn.node.me.clone();
        let service = upstream
            .map(|u| {
                u.facts
                    .service
                    .clone()
                    .unwrap_or_else(|| Arc::new(Service::unnamed(&u.cluster)))
            })
            .unwrap_or_else(|| Arc::new(Service::unnamed("unknown")));
        let (source, destination) = match self.conn.reporter {
            Reporter::Source => {
                let principal = upstream.and_then(|u| u.principal.clone());
                let mesh = upstream
                    .and_then(|u| u.facts.mesh.clone())
                    .or_else(|| principal.as_deref().map(|p| self.conn.node.mesh_of(p)))
                    .unwrap_or_else(labels::unknown);
                (me, self.conn.shared_side(callee, principal, mesh))
            }
            Reporter::Destination => {
                let source = match (&self.conn.peer, &self.caller) {
                    // The common case: the caller as its certificate says, no header.
                    (Some(peer), None) => peer.clone(),
                    (peer, caller) => {
                        let (principal, mesh) = match peer {
                            Some(p) => (Some(p.principal.clone()), p.mesh.clone()),
                            None => (None, labels::unknown()),
                        };
                        self.conn.shared_side(caller.as_ref(), principal, mesh)
                    }
                };
                (source, me)
            }
        };
        CallLabels {
            reporter: self.conn.reporter,
            source,
            destination,
            service,
            protocol: if self.grpc { "grpc" } else { "http" },
            flags,
            security: self.conn.reporter.security_policy(self.conn.mutual_tls),
        }
    }
}

/// The other side of a call from what it said (its workload) and what was verified (its
/// principal and mesh).
fn side(
    said: Option<&peer_metadata::PeerWorkload>,
    principal: Option<Label>,
    mesh: Label,
) -> Workload {
    let mut w = Workload::unknown();
    if let Some(said) = said {
        w.workload = said.workload.clone();
        w.namespace = said.namespace.clone();
        w.app = said.app.clone();
    }
    if let Some(principal) = principal {
        w.principal = principal;
    }
    w.mesh = mesh;
    w
}

/// Removes a peer's metadata headers, whoever sent them; says whether there were any and, for
/// a peer that proved to be `verified`, whom they describe.
fn take_peer(
    headers: &mut HeaderMap,
    scan: HeaderScan,
    conn: &ConnectionTelemetry,
    verified: Option<&str>,
) -> (bool, Option<Arc<peer_metadata::PeerWorkload>>) {
    if !scan.peer_metadata {
        return (false, None);
    }
    headers.remove(&PEER_METADATA_ID);
    let Some(value) = headers.remove(&PEER_METADATA) else {
        return (false, None);
    };
    let Some(id) = verified else {
        return (true, None);
    };
    if let Some((v, i, found)) = &*conn.last_peer.lock()
        && *v == value
        && i == id
    {
        return (true, found.clone());
    }
    let found = conn.peers.lookup(&value, id);
    *conn.last_peer.lock() = Some((value, id.to_owned(), found.clone()));
    (true, found)
}

impl ConnectionTelemetry {
    /// The other side's labels ([`side`]), shared with the connection's last request when
    /// they are the same.
    fn shared_side(
        &self,
        said: Option<&Arc<peer_metadata::PeerWorkload>>,
        principal: Option<Label>,
        mesh: Label,
    ) -> Arc<Workload> {
        let mut memo = self.other_side.lock();
        if let Some(last) = &*memo
            && same(last.said.as_ref(), said)
            && same(last.principal.as_ref(), principal.as_ref())
            && Arc::ptr_eq(&last.mesh, &mesh)
        {
            return last.labels.clone();
        }
        let built = side(said.map(|s| &**s), principal.clone(), mesh.clone());
        let labels = match &*memo {
            Some(last) if *last.labels == built => last.labels.clone(),
            _ => Arc::new(built),
        };
        *memo = Some(SideMemo {
            said: said.cloned(),
            principal,
            mesh,
            labels: labels.clone(),
        });
        labels
    }

    /// What the verified caller `id` said last on this connection, when it said anything.
    fn kept_caller(&self, id: &str) -> Option<Arc<peer_metadata::PeerWorkload>> {
        match &*self.last_peer.lock() {
            Some((_, said_by, found)) if said_by == id => found.clone(),
            _ => None,
        }
    }
}

/// Both absent, or the same allocation.
fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// How a response ended, for its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Complete,
    /// Dropped before its end: the client went away (`DC`).
    Downstream,
    /// The upstream failed mid-body (`UR`).
    Upstream,
}

/// Records the request once: when its response body ends, fails, or is dropped.
#[derive(Debug)]
struct Recorder {
    telemetry: Arc<Telemetry>,
    handles: Arc<HandleCache>,
    call: CallLabels,
    status: u16,
    grpc: bool,
    grpc_status: Option<u16>,
    start: tokio::time::Instant,
    request_bytes: Option<RequestBytes>,
    response_bytes: u64,
    no_body: bool,
    span: Option<RequestSpan>,
}

impl Recorder {
    fn record(mut self, outcome: Outcome) {
        if self.call.flags == "-" {
            match outcome {
                Outcome::Complete => {}
                Outcome::Downstream => self.call.flags = "DC",
                Outcome::Upstream => self.call.flags = "UR",
            }
        }
        let (flags, grpc_status) = (
            self.call.flags,
            if self.grpc { self.grpc_status } else { None },
        );
        let labels = RequestLabels {
            call: self.call,
            response_code: self.status,
            grpc_status,
        };
        let finished = Finished {
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            request_bytes: self
                .request_bytes
                .as_ref()
                .map_or(0, |b| b.0.load(Ordering::Relaxed)),
            response_bytes: self.response_bytes,
        };
        self.handles.record(&self.telemetry.istio, labels, finished);
        if let Some(mut span) = self.span {
            if span.is_recording() {
                span.set_attribute("isthmus.response_flags", flags.to_owned());
                if let Some(status) = grpc_status {
                    span.set_attribute("grpc.status_code", status.to_string());
                }
            }
            span.end(self.status);
        }
    }
}

/// A response body that records its request when it ends.
struct Recorded {
    body: Body,
    /// The body's length when known (0 for a response that has none).
    expected: Option<u64>,
    recorder: Option<Recorder>,
}

impl Recorded {
    fn record(&mut self, outcome: Outcome) {
        if let Some(r) = self.recorder.take() {
            r.record(outcome);
        }
    }
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let this = &mut *self;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut trailers = false;
                if let Some(r) = &mut this.recorder {
                    if let Some(data) = frame.data_ref() {
                        r.response_bytes += data.len() as u64;
                    } else if let Some(t) = frame.trailers_ref() {
                        trailers = true;
                        if r.grpc {
                            r.grpc_status = grpc_status(t).or(r.grpc_status);
                        }
                    }
                }
                // Trailers end a body.
                if trailers || this.body.is_end_stream() {
                    this.record(Outcome::Complete);
                }
            }
            Poll::Ready(None) => this.record(Outcome::Complete),
            Poll::Ready(Some(Err(_))) => this.record(Outcome::Upstream),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let Some(r) = &self.recorder else {
            return;
        };
        // hyper drops a body it has sent in full (its length known) without polling its end.
        let complete = r.no_body
            || self.body.is_end_stream()
            || self.expected.is_some_and(|n| n == r.response_bytes);
        self.record(if complete {
            Outcome::Complete
        } else {
            Outcome::Downstream
        });
    }
}

/// A request body that counts its bytes into [`RequestBytes`].
#[derive(Debug)]
pub struct Counted {
    pub body: Body,
    pub bytes: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
