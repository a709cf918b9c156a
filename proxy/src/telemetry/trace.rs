//! One span per sidecar per request, exported with OpenTelemetry over OTLP/gRPC (issue 19).
//!
//! The connection manager's [`Tracing`] (from the control plane: Envoy's OpenTelemetry tracer,
//! its sampling and literal tags) says how; [`Tracer::configure`] says where (the collector
//! cluster's first endpoint, at each new runtime). Per request, [`Tracer::start`] continues
//! the caller's trace (W3C `traceparent`/`tracestate`, else B3 single or multi:
//! `propagation.rs`) or starts one, keeps the caller's sampling decision or makes one with the
//! configured probability, and returns the [`RequestSpan`] whose context is injected into the
//! upstream request, both forms, so that the next hop continues it whatever it speaks. An
//! unsampled request gets a span context too (not recorded), so the decision travels with
//! the request as Envoy's does: the server side never samples a call its client did not.
//!
//! Sampled spans go through the OpenTelemetry SDK: one `SdkTracerProvider` per
//! `service.name` (the resource; Istio's `<app>.<namespace>`), with the batch span processor
//! on tokio and `opentelemetry-otlp`'s tonic exporter. A failing collector never slows a
//! request: spans queue (bounded) and are dropped when the queue is full; export failures are
//! logged once, and their recovery.

pub mod propagation;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use parking_lot::Mutex;

use self::propagation::{Format, Incoming, Outgoing, Parent};
use crate::config::tracing::Tracing;
use crate::telemetry::header_scan::HeaderScan;

/// The span's side of the call: a client sidecar's (outbound) or a server sidecar's
/// (inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Client,
    Server,
}

impl From<SpanKind> for opentelemetry::trace::SpanKind {
    fn from(kind: SpanKind) -> Self {
        match kind {
            SpanKind::Client => Self::Client,
            SpanKind::Server => Self::Server,
        }
    }
}

/// How long one export may take (tonic's request timeout).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the batch processor exports (Envoy flushes every 5 s; spans show up sooner).
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Spans waiting for export; beyond, new ones are dropped.
const QUEUE: usize = 2048;
/// Service names (providers) per collector: they come from configuration, bounded anyway.
const MAX_SERVICES: usize = 16;
/// Longest attribute value taken from a request header (`guid:x-request-id`, `user_agent`).
const MAX_HEADER_ATTRIBUTE: usize = 256;

/// Makes the provider for (collector endpoint, service name); `None` if it cannot.
/// (collector endpoint, service name, resource attributes) -> a provider.
type ProviderFactory =
    dyn Fn(&str, &str, &[(String, String)]) -> Option<SdkTracerProvider> + Send + Sync;

/// The proxy's tracer. Process-wide; cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Inner {
    /// The node's id (`node_id` attribute, as Envoy's spans carry it).
    node_id: Option<Arc<str>>,
    state: Mutex<State>,
    factory: Arc<ProviderFactory>,
}

#[derive(Default)]
struct State {
    /// The collector, `host:port`.
    endpoint: Option<String>,
    /// Per service name, for that collector; `None`: it could not be made (not tried again
    /// until the endpoint changes).
    providers: HashMap<String, Option<Exporting>>,
}

#[derive(Clone)]
struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Tracer")
            .field("node_id", &self.inner.node_id)
            .field("endpoint", &state.endpoint)
            .field("services", &state.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracer {
    /// A tracer exporting over OTLP/gRPC once [`Tracer::configure`]d with a collector.
    pub fn new() -> Self {
        Self::with_factory(None, Arc::new(otlp_provider))
    }

    /// The same, naming the node in every span (`node_id`). At construction: the result is
    /// a new tracer, not yet configured.
    #[must_use]
    pub fn with_node_id(self, node_id: impl Into<String>) -> Self {
        Self::with_factory(Some(Arc::from(node_id.into())), self.inner.factory.clone())
    }

    fn with_factory(node_id: Option<Arc<str>>, factory: Arc<ProviderFactory>) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                state: Mutex::new(State::default()),
                factory,
            }),
        }
    }

    /// Called with each new runtime: the collector cluster's first endpoint (`host:port`), or
    /// `None` without tracing. A different endpoint replaces the exporters (the old ones flush
    /// and shut down in the background); `None` shuts them down.
    pub fn configure(&self, collector: Option<String>) {
        let old = {
            let mut state = self.inner.state.lock();
            if state.endpoint == collector {
                return;
            }
            if let Some(endpoint) = &collector {
                tracing::info!(endpoint = %endpoint, "exporting spans over OTLP/gRPC");
            } else if state.endpoint.is_some() {
                tracing::info!("span export off");
            }
            state.endpoint = collector;
            std::mem::take(&mut state.providers)
        };
        shut_down(old.into_values().flatten().collect());
    }

    /// Flushes and stops the exporters (at the proxy's shutdown); spans started afterwards are
    /// not exported.
    pub async fn shutdown(&self) {
        let old = {
            let mut state = self.inner.state.lock();
            state.endpoint = None;
            std::mem::take(&mut state.providers)
        };
        let old: Vec<Exporting> = old.into_values().flatten().collect();
        if old.is_empty() {
            return;
        }
        let stop = tokio::task::spawn_blocking(move || {
            for e in old {
                let _ = e.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
            }
        });
        let _ = tokio::time::timeout(EXPORT_TIMEOUT * 2, stop).await;
    }

    /// At a request's start. `kind`: [`SpanKind::Client`] on an outbound sidecar listener,
    /// [`SpanKind::Server`] on an inbound one. Continues the trace `headers` carry
    /// (`traceparent`/`tracestate`, else `b3`, else `x-b3-*`) with its sampling decision, or
    /// starts one sampled with `tracing.sampling`. Always `Some` today (an unsampled request
    /// gets a context too, so that its decision is propagated); `None` is kept for a tracer
    /// that has nothing to propagate.
    pub fn start(
        &self,
        tracing: &Tracing,
        kind: SpanKind,
        name: impl FnOnce() -> String,
        headers: &http::HeaderMap,
    ) -> Option<RequestSpan> {
        self.start_scanned(
            tracing,
            kind,
            name,
            headers,
            HeaderScan::of_request(headers),
        )
    }

    /// [`Self::start`], with `headers`' telemetry headers already found.
    pub fn start_scanned(
        &self,
        tracing: &Tracing,
        kind: SpanKind,
        name: impl FnOnce() -> String,
        headers: &http::HeaderMap,
        scan: HeaderScan,
    ) -> Option<RequestSpan> {
        let incoming = propagation::extract_scanned(headers, scan);
        let (parent, decided, trace_state, b3) = match incoming {
            Some(Incoming {
                parent,
                sampled,
                trace_state,
                format,
            }) => (parent, sampled, trace_state, format != Format::W3c),
            None => (None, None, None, false),
        };
        // B3 goes on wherever the trace's origin spoke it: a W3C context that came with B3
        // alongside (a sidecar upstream of this one sent both) keeps both.
        let b3 = b3 || scan.b3 || (scan.x_b3 && headers.contains_key(propagation::B3_TRACE_ID));
        let sampled = decided.unwrap_or_else(|| sample(tracing.sampling));
        let recorded = sampled
            .then(|| self.exporting(tracing))
            .flatten()
            .map(|tracer| {
                let builder = SpanBuilder::from_name(name()).with_kind(kind.into());
                let parent_cx = match parent {
                    Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                        TraceId::from(p.trace_id),
                        SpanId::from(p.span_id),
                        TraceFlags::SAMPLED,
                        true,
                        trace_state
                            .as_deref()
                            .and_then(|s| TraceState::from_str(s).ok())
                            .unwrap_or_default(),
                    )),
                    None => Context::new(),
                };
                Box::new(Recording {
                    span: tracer.build_with_context(builder, &parent_cx),
                    attributes: self.start_attributes(tracing, headers),
                })
            });
        let (trace_id, span_id) = match &recorded {
            Some(recording) => {
                let cx = recording.span.span_context();
                (
                    u128::from_be_bytes(cx.trace_id().to_bytes()),
                    u64::from_be_bytes(cx.span_id().to_bytes()),
                )
            }
            None => (
                parent.map_or_else(new_trace_id, |p| p.trace_id),
                new_span_id(),
            ),
        };
        Some(RequestSpan {
            trace_id,
            span_id,
            parent,
            sampled,
            trace_state,
            b3,
            span: recorded,
        })
    }

    /// The tracer of the service's provider for the current collector, made on first use; its
    /// resource carries the manager's tags (the mesh, workload and namespace `isthmusd` sets).
    fn exporting(&self, tracing: &Tracing) -> Option<SdkTracer> {
        let service_name = tracing.service_name.as_str();
        let mut state = self.inner.state.lock();
        let endpoint = state.endpoint.clone()?;
        if let Some(exporting) = state.providers.get(service_name) {
            return exporting.as_ref().map(|e| e.tracer.clone());
        }
        if state.providers.len() >= MAX_SERVICES {
            return None;
        }
        let exporting =
            (self.inner.factory)(&endpoint, service_name, &tracing.tags).map(|provider| {
                let scope = InstrumentationScope::builder("isthmus-proxy")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build();
                Exporting {
                    tracer: provider.tracer_with_scope(scope),
                    provider,
                }
            });
        let tracer = exporting.as_ref().map(|e| e.tracer.clone());
        state.providers.insert(service_name.to_owned(), exporting);
        tracer
    }

    /// The attributes a span starts with: the manager's tags, the node, the request id.
    fn start_attributes(&self, tracing: &Tracing, headers: &http::HeaderMap) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(tracing.tags.len() + 4);
        attributes.push(KeyValue::new("component", "proxy"));
        if let Some(node_id) = &self.inner.node_id {
            attributes.push(KeyValue::new("node_id", node_id.to_string()));
        }
        for (header, attribute) in [
            ("x-request-id", "guid:x-request-id"),
            ("user-agent", "user_agent"),
        ] {
            if let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) {
                let value = truncate(value, MAX_HEADER_ATTRIBUTE);
                attributes.push(KeyValue::new(attribute, value.to_owned()));
            }
        }
        for (tag, value) in &tracing.tags {
            attributes.push(KeyValue::new(tag.clone(), value.clone()));
        }
        attributes
    }
}

/// One request's span: its context (always) and, when sampled and exported, the recording.
pub struct RequestSpan {
    trace_id: u128,
    span_id: u64,
    parent: Option<Parent>,
    sampled: bool,
    trace_state: Option<String>,
    /// The caller spoke B3: it is sent on in B3 too (W3C always).
    b3: bool,
    /// Boxed: an SDK span is several hundred bytes, and most requests are not sampled, yet
    /// their `RequestSpan` moves with the request from its head to its response's end.
    span: Option<Box<Recording>>,
}

/// A sampled span under way, and its attributes: kept here, one value per key (a later
/// value replaces an earlier one; OTLP wants keys unique), and set when the span ends.
struct Recording {
    span: opentelemetry_sdk::trace::Span,
    attributes: Vec<KeyValue>,
}

impl Recording {
    fn set(&mut self, attribute: KeyValue) {
        match self.attributes.iter_mut().find(|a| a.key == attribute.key) {
            Some(existing) => *existing = attribute,
            None => self.attributes.push(attribute),
        }
    }

    fn end(mut self) {
        self.span
            .set_attributes(std::mem::take(&mut self.attributes));
        self.span.end();
    }
}

/// A span dropped without [`RequestSpan::end`] (the request was cancelled) still ends, with
/// what it has.
impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(recording) = self.span.take() {
            recording.end();
        }
    }
}

impl fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpan")
            .field("trace_id", &format_args!("{:032x}", self.trace_id))
            .field("span_id", &format_args!("{:016x}", self.span_id))
            .field("sampled", &self.sampled)
            .field("recording", &self.span.is_some())
            .finish()
    }
}

impl RequestSpan {
    /// The context the next hop gets, for [`propagation::inject`] into the upstream request:
    /// `traceparent` (and `tracestate`), and B3 multi when the caller spoke B3, naming this
    /// span as the parent.
    pub fn outgoing(&self) -> Outgoing {
        Outgoing {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent.map(|p| p.span_id),
            sampled: self.sampled,
            trace_state: self.trace_state.clone(),
            b3: self.b3,
        }
    }

    /// Sets an attribute of the recorded span (nothing when not sampled).
    pub fn set_attribute(&mut self, key: &'static str, value: String) {
        if let Some(recording) = &mut self.span {
            recording.set(KeyValue::new(key, value));
        }
    }

    /// Whether the span is recorded (sampled and exported): attributes worth computing.
    pub fn is_recording(&self) -> bool {
        self.span.is_some()
    }

    /// Whether the trace is sampled (the decision sent on).
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This span's id, 16 hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Ends the span with the response status (`http.status_code`; error for 5xx, as Envoy
    /// does) and hands it to the exporter if sampled.
    pub fn end(mut self, status: u16) {
        let Some(mut recording) = self.span.take() else {
            return;
        };
        recording.set(KeyValue::new("http.status_code", status.to_string()));
        if status >= 500 {
            recording.set(KeyValue::new("error", "true"));
            recording.span.set_status(Status::error(Cow::Borrowed("")));
        }
        recording.end();
    }
}

/// `true` with probability `p` (0 to 1).
fn sample(p: f64) -> bool {
    if p >= 1.0 {
        true
    } else if p > 0.0 {
        rand::random::<f64>() < p
    } else {
        false
    }
}

fn new_trace_id() -> u128 {
    rand::random::<u128>().max(1)
}

fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Stops providers without blocking a runtime thread: their shutdown waits for the batch
/// processor's task to flush.
fn shut_down(old: Vec<Exporting>) {
    if old.is_empty() {
        return;
    }
    let stop = move || {
        for e in old {
            let _ = e.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(stop)),
        Err(_) => stop(),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let old = std::mem::take(&mut self.state.get_mut().providers);
        shut_down(old.into_values().flatten().collect());
    }
}

/// The OTLP/gRPC provider for `service_name`, exporting to `endpoint`: batches on tokio
/// (`None` outside a runtime, or for an endpoint tonic refuses).
fn otlp_provider(
    endpoint: &str,
    service_name: &str,
    resource: &[(String, String)],
) -> Option<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

    tokio::runtime::Handle::try_current().ok()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{endpoint}"))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| tracing::warn!(endpoint, error = %e, "cannot export spans"))
        .ok()?;
    let processor = BatchSpanProcessor::builder(
        Logged::new(exporter, endpoint),
        opentelemetry_sdk::runtime::Tokio,
    )
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build(),
    )
    .build();
    Some(provider(processor, service_name, resource))
}

/// A provider for `service_name` over `processor`: every span it is asked for is recorded
/// (the sampling decision is made before, per request).
fn provider(
    processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
    service_name: &str,
    resource: &[(String, String)],
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service_name.to_owned())
                .with_attributes(
                    resource
                        .iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
                )
                .build(),
        )
        .build()
}

/// An exporter that logs when exports start failing and when they work again.
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> Logged<E> {
    fn new(inner: E, endpoint: &str) -> Self {
        Self {
            inner,
            endpoint: endpoint.to_owned(),
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(endpoint = %self.endpoint, spans = count, error = %e,
                    "span export failed (logged once until it works again)");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "span export works again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests;
