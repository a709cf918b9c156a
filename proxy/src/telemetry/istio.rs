//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`), with Istio's names, labels
//! and buckets, plus `source_mesh` and `destination_mesh`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{CallLabels, RequestLabels};

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Istio's size buckets: 1 byte to 100 MB by powers of ten.
fn size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

/// The families, registered at the registry's root (no prefix: Istio's names).
#[derive(Debug)]
pub struct IstioMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<RequestLabels>,
    pub request_bytes: HistogramFamily<RequestLabels>,
    pub response_bytes: HistogramFamily<RequestLabels>,
    pub tcp_sent: Family<CallLabels, Counter>,
    pub tcp_received: Family<CallLabels, Counter>,
    pub tcp_opened: Family<CallLabels, Counter>,
    pub tcp_closed: Family<CallLabels, Counter>,
    /// Every request label set's series, by a fast hash: the families hash all labels with
    /// SipHash, four times, under their locks. Holds what the families hold, no more.
    series: parking_lot::Mutex<SeriesMap<RequestLabels, RequestHandles>>,
    /// The same for TCP connections.
    tcp_series: parking_lot::Mutex<SeriesMap<CallLabels, TcpHandles>>,
}

type SeriesMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The four series of one TCP label set.
#[derive(Debug, Clone)]
struct TcpHandles {
    opened: Counter,
    sent: Counter,
    received: Counter,
    closed: Counter,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(size_histogram),
            response_bytes: Family::new_with_constructor(size_histogram),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            series: parking_lot::Mutex::default(),
            tcp_series: parking_lot::Mutex::default(),
        }
    }
}

/// One finished HTTP request, as Istio reports it.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl IstioMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_requests",
            "Requests, by both sides of the call (Istio's standard metric)",
            self.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration, until the response ends (Istio's standard metric)",
            self.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes (Istio's standard metric)",
            self.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes (Istio's standard metric)",
            self.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream side of TCP connections (Istio's standard metric)",
            self.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream side of TCP connections (Istio's standard metric)",
            self.tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened (Istio's standard metric)",
            self.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed (Istio's standard metric)",
            self.tcp_closed.clone(),
        );
    }

    /// Records one finished request.
    pub fn request(&self, labels: &RequestLabels, done: Finished) {
        self.handles(labels).record(done);
    }

    /// The series of one label set, to record into without looking them up again.
    pub fn handles(&self, labels: &RequestLabels) -> RequestHandles {
        if let Some(handles) = self.series.lock().get(labels) {
            return handles.clone();
        }
        let handles = RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        };
        self.series.lock().insert(labels.clone(), handles.clone());
        handles
    }

    /// A TCP connection's counters (opened counted now; the byte counters to update as bytes
    /// move; closed when the returned guard drops).
    pub fn tcp_connection(&self, labels: &CallLabels) -> TcpCounters {
        let cached = self.tcp_series.lock().get(labels).cloned();
        let handles = cached.unwrap_or_else(|| {
            let handles = TcpHandles {
                opened: self.tcp_opened.get_or_create(labels).clone(),
                sent: self.tcp_sent.get_or_create(labels).clone(),
                received: self.tcp_received.get_or_create(labels).clone(),
                closed: self.tcp_closed.get_or_create(labels).clone(),
            };
            self.tcp_series
                .lock()
                .insert(labels.clone(), handles.clone());
            handles
        });
        handles.opened.inc();
        TcpCounters {
            sent: handles.sent,
            received: handles.received,
            closed: handles.closed,
        }
    }
}

/// The four series of one request label set.
#[derive(Debug, Clone)]
pub struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestHandles {
    pub fn record(&self, done: Finished) {
        self.requests.inc();
        self.duration.observe(done.duration_ms);
        self.request_bytes.observe(done.request_bytes as f64);
        self.response_bytes.observe(done.response_bytes as f64);
    }
}

/// A connection's recent label sets and their series: its requests mostly repeat a few
/// (same caller, same service, same outcome), so the families (a hash of every label, four
/// times, under their locks) are asked once per label set and connection, not per request.
#[derive(Debug, Default)]
pub struct HandleCache {
    entries: parking_lot::Mutex<Vec<(RequestLabels, RequestHandles)>>,
}

impl HandleCache {
    /// Label sets a connection keeps.
    const SIZE: usize = 8;

    pub fn record(&self, metrics: &IstioMetrics, labels: RequestLabels, done: Finished) {
        // Recorded under the cache's lock, through the cached handles (no copies of them).
        if let Some((_, handles)) = self.entries.lock().iter().find(|(l, _)| *l == labels) {
            handles.record(done);
            return;
        }
        let handles = metrics.handles(&labels);
        handles.record(done);
        let mut entries = self.entries.lock();
        if entries.len() >= Self::SIZE {
            entries.remove(0);
        }
        entries.push((labels, handles));
    }
}

/// The byte counters of one TCP connection; counts the connection closed when dropped.
#[derive(Debug)]
pub struct TcpCounters {
    pub sent: Counter,
    pub received: Counter,
    closed: Counter,
}

impl Drop for TcpCounters {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::telemetry::labels::{Reporter, Service, Workload};

    fn side(workload: &str, mesh: &str) -> Arc<Workload> {
        Arc::new(Workload {
            workload: Arc::from(workload),
            namespace: Arc::from("shop"),
            principal: Arc::from(format!("spiffe://{mesh}.local/ns/shop/sa/{workload}").as_str()),
            app: Arc::from(workload),
            mesh: Arc::from(mesh),
        })
    }

    #[test]
    fn a_request_is_exposed_with_istios_names_labels_and_buckets() {
        let metrics = IstioMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let call = CallLabels {
            reporter: Reporter::Destination,
            source: side("client", "red"),
            destination: side("ratings", "green"),
            service: Arc::new(Service {
                host: Arc::from("ratings.bookinfo.svc.cluster.local"),
                name: Arc::from("ratings"),
                namespace: Arc::from("bookinfo"),
            }),
            protocol: "grpc",
            flags: "-",
            security: Reporter::Destination.security_policy(true),
        };
        let labels = RequestLabels {
            call: call.clone(),
            response_code: 200,
            grpc_status: Some(14),
        };
        let done = Finished {
            duration_ms: 3.0,
            request_bytes: 20,
            response_bytes: 2000,
        };
        metrics.request(&labels, done);
        metrics.request(&labels, done);
        drop(metrics.tcp_connection(&CallLabels {
            protocol: "tcp",
            ..call
        }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let expected = "istio_requests_total{reporter=\"destination\",source_workload=\"client\",\
source_workload_namespace=\"shop\",source_principal=\"spiffe://red.local/ns/shop/sa/client\",\
source_app=\"client\",source_mesh=\"red\",destination_workload=\"ratings\",\
destination_workload_namespace=\"shop\",destination_principal=\"spiffe://green.local/ns/shop/sa/ratings\",\
destination_app=\"ratings\",destination_mesh=\"green\",\
destination_service=\"ratings.bookinfo.svc.cluster.local\",destination_service_name=\"ratings\",\
destination_service_namespace=\"bookinfo\",request_protocol=\"grpc\",response_flags=\"-\",\
connection_security_policy=\"mutual_tls\",response_code=\"200\",grpc_response_status=\"14\"} 2";
        assert!(text.contains(expected), "{text}");
        // Istio's duration buckets: 3 ms falls in le=5, not le=1.
        let bucket = |le: &str| {
            let head = format!("istio_request_duration_milliseconds_bucket{{le=\"{le}\",");
            let line = text.lines().find(|l| l.starts_with(&head)).expect("bucket");
            line.rsplit(' ').next().unwrap_or_default().to_owned()
        };
        assert_eq!(bucket("5.0"), "2");
        assert_eq!(bucket("1.0"), "0");
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
        for tcp in [
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
        ] {
            let line = text.lines().find(|l| l.starts_with(tcp)).expect(tcp);
            assert!(
                line.ends_with(" 1") && !line.contains("response_code"),
                "{line}"
            );
        }
    }
}
