//! The golden signals from two scrapes of each sidecar, as Prometheus would compute them from
//! `rate()` over the same window, without Prometheus: requests per second, success rate
//! (responses that are not 5xx), and p50 / p99 latency interpolated in the
//! `istio_request_duration_milliseconds` buckets the way `histogram_quantile` does.
//!
//! Pure: scrapes in ([`Snapshot`]), rows out ([`services`], [`peers`]); `top.rs` does the I/O.
//! The metric and label names are the telemetry contract of issue 19 (Istio's standard
//! metrics, plus `source_mesh` / `destination_mesh`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::exposition::{Labels, Sample};

/// Requests, by every label (`reporter`, `source_mesh`, `destination_service`, `response_code`…).
pub const REQUESTS: &str = "istio_requests_total";
/// The cumulative latency buckets (milliseconds), labelled like [`REQUESTS`] plus `le`.
pub const DURATION_BUCKETS: &str = "istio_request_duration_milliseconds_bucket";

/// A label value that names nothing: absent, empty or Istio's `unknown`.
fn known(value: &str) -> bool {
    !value.is_empty() && value != "unknown"
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

/// Cumulative bucket counts by upper bound, ascending: one histogram series.
pub type Buckets = Vec<(f64, f64)>;

/// What one scrape of one sidecar holds that `top` uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// [`REQUESTS`] by series.
    pub requests: BTreeMap<Labels, f64>,
    /// The latency histogram by series (its labels without `le`).
    pub durations: BTreeMap<Labels, Buckets>,
}

impl Snapshot {
    /// The samples `top` uses, out of a whole exposition; non-finite values are left out (a
    /// counter is never NaN, and a NaN would poison every sum it joins).
    pub fn from_samples(samples: Vec<Sample>) -> Self {
        let mut snapshot = Self::default();
        for Sample {
            name,
            mut labels,
            value,
        } in samples
        {
            if name == REQUESTS {
                if value.is_finite() {
                    snapshot.requests.insert(labels, value);
                }
            } else if name == DURATION_BUCKETS {
                let Some(le) = labels
                    .remove("le")
                    .and_then(|le| super::exposition::parse_float(&le).filter(|le| !le.is_nan()))
                else {
                    continue;
                };
                if value.is_finite() {
                    snapshot
                        .durations
                        .entry(labels)
                        .or_default()
                        .push((le, value));
                }
            }
        }
        for buckets in snapshot.durations.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        snapshot
    }
}

/// The increase of a counter between two scrapes. A counter found lower than before was
/// reset (the proxy restarted): it counted up from zero since, as Prometheus's `rate()` takes
/// it. A series the first scrape did not have started after it, from zero (the proxy creates
/// a series on its first request).
pub fn increase(before: Option<f64>, after: f64) -> f64 {
    match before {
        Some(before) if after >= before => after - before,
        _ => after,
    }
}

/// The increase of each bucket of one histogram series. When any bucket went down, the
/// histogram was reset and its whole current content is new. A bucket the first scrape lacked
/// (while the series existed) has no increase to take, as Prometheus has no rate for a series
/// with one sample: it is left out, and the quantile interpolates over the others.
pub fn bucket_increase(before: Option<&Buckets>, after: &Buckets) -> Buckets {
    let Some(before) = before else {
        return after.clone();
    };
    let earlier = |le: f64| {
        before
            .iter()
            .find(|(b, _)| b.to_bits() == le.to_bits())
            .map(|&(_, count)| count)
    };
    if after
        .iter()
        .any(|&(le, count)| earlier(le).is_some_and(|b| count < b))
    {
        return after.clone();
    }
    after
        .iter()
        .filter_map(|&(le, count)| earlier(le).map(|b| (le, count - b)))
        .collect()
}

/// What one sidecar of `mesh` saw between two scrapes, per second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The mesh the scraped sidecar belongs to (from the run, not from its labels).
    pub mesh: String,
    pub requests: Vec<(Labels, f64)>,
    pub durations: Vec<(Labels, Buckets)>,
}

impl Window {
    /// Rates over `seconds` (the time between the two scrapes); none when no time passed.
    pub fn between(mesh: &str, before: &Snapshot, after: &Snapshot, seconds: f64) -> Self {
        let mut window = Self {
            mesh: mesh.to_owned(),
            ..Self::default()
        };
        if !(seconds.is_finite() && seconds > 0.0) {
            return window;
        }
        for (labels, &value) in &after.requests {
            let delta = increase(before.requests.get(labels).copied(), value);
            window.requests.push((labels.clone(), delta / seconds));
        }
        for (labels, buckets) in &after.durations {
            let delta = bucket_increase(before.durations.get(labels), buckets);
            let rates = delta.into_iter().map(|(le, d)| (le, d / seconds)).collect();
            window.durations.push((labels.clone(), rates));
        }
        window
    }
}

impl Window {
    /// The mesh labels (`source_mesh`, `destination_mesh`) as mesh names: a value that is a
    /// key of `names` (a mesh's trust domain, the labels' fallback when a proxy does not know
    /// the mesh's name) becomes its value.
    pub fn name_meshes(&mut self, names: &BTreeMap<String, String>) {
        let rename = |labels: &mut Labels| {
            for key in ["source_mesh", "destination_mesh"] {
                if let Some(value) = labels.get_mut(key)
                    && let Some(name) = names.get(value.as_str())
                {
                    value.clone_from(name);
                }
            }
        };
        self.requests
            .iter_mut()
            .for_each(|(labels, _)| rename(labels));
        self.durations
            .iter_mut()
            .for_each(|(labels, _)| rename(labels));
    }
}

/// Prometheus's `histogram_quantile(q, ...)` on cumulative buckets (upper bound, count), in
/// any order: `None` where Prometheus answers NaN (no `+Inf` bucket, fewer than two buckets,
/// no observations). The quantile is interpolated linearly inside the bucket the rank falls
/// in (from 0 for the first bucket); a rank in the `+Inf` bucket answers the highest finite
/// bound. Buckets with the same bound are added together and counts are made monotonic first
/// (a scrape can catch a histogram between two bucket updates), as Prometheus does.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    let mut sorted: Vec<(f64, f64)> = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    if sorted.last().is_none_or(|&(le, _)| le != f64::INFINITY) {
        return None;
    }
    let mut coalesced: Vec<(f64, f64)> = Vec::with_capacity(sorted.len());
    for (le, count) in sorted {
        match coalesced.last_mut() {
            Some(last) if last.0 == le => last.1 += count,
            _ => coalesced.push((le, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in &mut coalesced {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    if coalesced.len() < 2 {
        return None;
    }
    let observations = coalesced[coalesced.len() - 1].1;
    if observations <= 0.0 {
        return None;
    }
    let mut rank = q * observations;
    let last = coalesced.len() - 1;
    let b = coalesced[..last]
        .iter()
        .position(|&(_, count)| count >= rank)
        .unwrap_or(last);
    if b == last {
        return Some(coalesced[last - 1].0);
    }
    if b == 0 && coalesced[0].0 <= 0.0 {
        return Some(coalesced[0].0);
    }
    let (end, mut count) = coalesced[b];
    let mut start = 0.0;
    if b > 0 {
        start = coalesced[b - 1].0;
        count -= coalesced[b - 1].1;
        rank -= coalesced[b - 1].1;
    }
    Some(start + (end - start) * (rank / count))
}

/// Requests per second, the share of them that did not fail with a 5xx, and the latency
/// quantiles; `None` where there was no request to measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signals {
    pub requests_per_second: f64,
    /// Between 0 and 1.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Rates added up for one row.
#[derive(Debug, Clone, Default)]
struct Tally {
    requests: f64,
    failures: f64,
    /// Summed per upper bound, as `sum by (le) (rate(...))`.
    buckets: Vec<(f64, f64)>,
}

impl Tally {
    fn add_requests(&mut self, labels: &Labels, rate: f64) {
        self.requests += rate;
        let code = label(labels, "response_code");
        if code.len() == 3 && code.starts_with('5') {
            self.failures += rate;
        }
    }

    fn add_buckets(&mut self, buckets: &[(f64, f64)]) {
        for &(le, rate) in buckets {
            match self
                .buckets
                .iter_mut()
                .find(|(b, _)| b.to_bits() == le.to_bits())
            {
                Some(bucket) => bucket.1 += rate,
                None => self.buckets.push((le, rate)),
            }
        }
    }

    fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.add_buckets(&other.buckets);
    }

    fn signals(&self) -> Signals {
        let any = self.requests > 0.0;
        Signals {
            requests_per_second: self.requests,
            success_rate: any
                .then(|| ((self.requests - self.failures) / self.requests).clamp(0.0, 1.0)),
            p50_ms: histogram_quantile(0.5, &self.buckets),
            p99_ms: histogram_quantile(0.99, &self.buckets),
        }
    }
}

/// A service as its own sidecars report it (`reporter="destination"`): all its callers, then
/// the callers of each mesh.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    /// The mesh the service is in.
    pub mesh: String,
    /// Its host (`destination_service`).
    pub service: String,
    #[serde(flatten)]
    pub signals: Signals,
    pub by_source_mesh: Vec<SourceRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRow {
    /// The callers' mesh (`source_mesh`; `unknown` for callers outside any mesh).
    pub source_mesh: String,
    #[serde(flatten)]
    pub signals: Signals,
}

/// The service a series is about: its host, else `name.namespace`, else `unknown`.
fn service_of(labels: &Labels) -> String {
    let host = label(labels, "destination_service");
    if known(host) {
        return host.to_owned();
    }
    let name = label(labels, "destination_service_name");
    let namespace = label(labels, "destination_service_namespace");
    match (known(name), known(namespace)) {
        (true, true) => format!("{name}.{namespace}"),
        (true, false) => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn reported_by(labels: &Labels, reporter: &str) -> bool {
    label(labels, "reporter") == reporter
}

/// The rates of every window added up per row (`key`'s first part) and sub-row (its second):
/// requests and latency buckets alike; series `key` answers `None` for are left out.
fn tally_by<K: Ord>(
    windows: &[Window],
    key: impl Fn(&Window, &Labels) -> Option<(K, String)>,
) -> BTreeMap<K, BTreeMap<String, Tally>> {
    let mut tallies: BTreeMap<K, BTreeMap<String, Tally>> = BTreeMap::new();
    for window in windows {
        for (labels, rate) in &window.requests {
            if let Some((row, sub)) = key(window, labels) {
                tallies
                    .entry(row)
                    .or_default()
                    .entry(sub)
                    .or_default()
                    .add_requests(labels, *rate);
            }
        }
        for (labels, buckets) in &window.durations {
            if let Some((row, sub)) = key(window, labels) {
                tallies
                    .entry(row)
                    .or_default()
                    .entry(sub)
                    .or_default()
                    .add_buckets(buckets);
            }
        }
    }
    tallies
}

/// Every (destination mesh, service) that `reporter="destination"` series name, by caller
/// mesh, ordered by mesh and service. The destination mesh is the mesh of the sidecar that
/// reported it (the service's own), whatever its `destination_mesh` label says.
pub fn services(windows: &[Window]) -> Vec<ServiceRow> {
    let tallies = tally_by(windows, |window, labels| {
        if !reported_by(labels, "destination") {
            return None;
        }
        let source = label(labels, "source_mesh");
        let source = if known(source) { source } else { "unknown" };
        Some(((window.mesh.clone(), service_of(labels)), source.to_owned()))
    });
    tallies
        .into_iter()
        .map(|((mesh, service), sources)| {
            let mut total = Tally::default();
            for tally in sources.values() {
                total.merge(tally);
            }
            ServiceRow {
                mesh,
                service,
                signals: total.signals(),
                by_source_mesh: sources
                    .into_iter()
                    .map(|(source_mesh, tally)| SourceRow {
                        source_mesh,
                        signals: tally.signals(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Which way traffic crosses between a mesh and its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Our sidecars calling the peer's services (`reporter="source"`).
    Outbound,
    /// The peer's callers reaching our services (`reporter="destination"`).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// The traffic crossing between one mesh and one peer mesh in one direction, then per service
/// (outbound: the host our callers use, the imported name; inbound: our own host).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub mesh: String,
    pub peer: String,
    pub direction: Direction,
    #[serde(flatten)]
    pub signals: Signals,
    pub services: Vec<PeerServiceRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerServiceRow {
    pub service: String,
    #[serde(flatten)]
    pub signals: Signals,
}

/// Cross-mesh traffic per (mesh, peer, direction): outbound from our client sidecars'
/// `reporter="source"` series whose `destination_mesh` is another mesh, inbound from our
/// server sidecars' `reporter="destination"` series whose `source_mesh` is another mesh.
/// "Our" mesh is the scraped sidecar's.
pub fn peers(windows: &[Window]) -> Vec<PeerRow> {
    let tallies = tally_by(windows, |window, labels| {
        let (direction, other) = if reported_by(labels, "source") {
            (Direction::Outbound, label(labels, "destination_mesh"))
        } else if reported_by(labels, "destination") {
            (Direction::Inbound, label(labels, "source_mesh"))
        } else {
            return None;
        };
        if !known(other) || other == window.mesh {
            return None;
        }
        Some((
            (window.mesh.clone(), direction, other.to_owned()),
            service_of(labels),
        ))
    });
    tallies
        .into_iter()
        .map(|((mesh, direction, peer), services)| {
            let mut total = Tally::default();
            for tally in services.values() {
                total.merge(tally);
            }
            PeerRow {
                mesh,
                peer,
                direction,
                signals: total.signals(),
                services: services
                    .into_iter()
                    .map(|(service, tally)| PeerServiceRow {
                        service,
                        signals: tally.signals(),
                    })
                    .collect(),
            }
        })
        .collect()
}
