//! What one xDS stream records, on tokio's clock (paused in tests):
//!
//! - **push time** (`pilot_xds_push_time{type}`): per type, from the moment a response of that
//!   type became due on the stream (after the request or the snapshot change that called for
//!   it, once the node's configuration exists) to the moment the response is handed to gRPC.
//!   It includes building the response, delta's flow control (a type's next response waits
//!   for the proxy's answer to the previous one: the next batch of a large push is timed from
//!   the previous batch's hand-over) and a slow proxy's back-pressure. Istio times generation
//!   and send of one push; here generation happens earlier, in the pipeline, for all types
//!   at once.
//! - **convergence** (`pilot_proxy_convergence_time`): from the publication (by the pipeline,
//!   into the snapshot cache) of the first configuration change this proxy did not have yet,
//!   to the proxy having acknowledged every type it subscribes to with nothing more due, at a
//!   configuration that includes the change. Changes that come meanwhile are covered by the
//!   same observation (timed from the first); a NACK keeps the clock running until a later
//!   configuration is accepted. Not observed: a proxy's first configuration on a stream (no
//!   change, a connection), and a change that leaves what the stream sends unchanged. A
//!   change published and superseded before the stream saw it is timed from its successor.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::xds::{XdsMetrics, XdsType};
use crate::xds::status::Reply;

/// One stream's timing state over the shared [`XdsMetrics`].
#[derive(Debug)]
pub struct StreamTelemetry {
    metrics: XdsMetrics,
    /// By type URL: since when a response of that type has been due.
    due_since: BTreeMap<String, Instant>,
    /// Whether the stream has seen its node's computed configuration.
    configured: bool,
    /// The publication of the first change the proxy has not acknowledged yet.
    unconverged_since: Option<Instant>,
}

impl StreamTelemetry {
    pub fn new(metrics: XdsMetrics) -> Self {
        Self {
            metrics,
            due_since: BTreeMap::new(),
            configured: false,
            unconverged_since: None,
        }
    }

    /// The stream read its node's snapshot without it having changed (`computed`: not the
    /// placeholder of a node not computed yet).
    pub fn seen(&mut self, computed: bool) {
        self.configured |= computed;
    }

    /// The stream took up a new snapshot published at `published`; `in_sync` is the state
    /// machine's after it did.
    pub fn changed(&mut self, published: Instant, computed: bool, in_sync: bool) {
        if !computed {
            return;
        }
        if self.configured && !in_sync && self.unconverged_since.is_none() {
            self.unconverged_since = Some(published);
        }
        self.configured = true;
    }

    /// A response of `type_url` is handed to gRPC.
    pub fn sent(&mut self, type_url: &str) {
        let push_time = self.due_since.remove(type_url).map(|since| since.elapsed());
        self.metrics.pushed(XdsType::of_url(type_url), push_time);
    }

    /// The proxy answered a response.
    pub fn reply(&self, reply: Option<&Reply>) {
        if let Some(Reply::Nack {
            type_url, reason, ..
        }) = reply
        {
            self.metrics.rejected(type_url, reason);
        }
    }

    /// After each step of the stream: the types now due (their clocks start now unless already
    /// running; the others stop) and whether the proxy is in sync (which ends a convergence).
    pub fn settle<'a>(&mut self, due: impl IntoIterator<Item = &'a str>, in_sync: bool) {
        let now = Instant::now();
        let due: BTreeSet<&str> = due.into_iter().collect();
        self.due_since.retain(|t, _| due.contains(t.as_str()));
        for type_url in due {
            if !self.due_since.contains_key(type_url) {
                self.due_since.insert(type_url.to_owned(), now);
            }
        }
        if in_sync && let Some(since) = self.unconverged_since.take() {
            self.metrics
                .convergence
                .observe(now.duration_since(since).as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::telemetry::value_of;
    use crate::xds::resources::{CLUSTER, LISTENER};

    fn registered() -> (Registry, XdsMetrics) {
        let mut registry = Registry::default();
        let metrics = XdsMetrics::register(&mut registry);
        (registry, metrics)
    }

    /// Pushes, push time observations and their sum, of `r#type`.
    fn pushes(registry: &Registry, r#type: &str) -> (f64, f64, f64) {
        let of = |series: String| value_of(registry, &series).unwrap_or(f64::NAN);
        (
            of(format!("pilot_xds_pushes_total{{type=\"{type}\"}}")),
            of(format!("pilot_xds_push_time_count{{type=\"{type}\"}}")),
            of(format!("pilot_xds_push_time_sum{{type=\"{type}\"}}")),
        )
    }

    /// Convergence observations and their sum.
    fn convergence(registry: &Registry) -> (f64, f64) {
        let of = |series: &str| value_of(registry, series).unwrap_or(f64::NAN);
        (
            of("pilot_proxy_convergence_time_count"),
            of("pilot_proxy_convergence_time_sum"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn push_time_runs_from_due_to_sent_per_type() {
        let (registry, metrics) = registered();
        let mut stream = StreamTelemetry::new(metrics);
        stream.settle([CLUSTER], false);
        tokio::time::sleep(Duration::from_millis(30)).await;
        stream.settle([CLUSTER, LISTENER], false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.sent(CLUSTER);
        stream.settle([LISTENER], false);
        tokio::time::sleep(Duration::from_millis(10)).await;
        stream.sent(LISTENER);
        stream.settle([], true);
        assert_eq!(pushes(&registry, "cds"), (1.0, 1.0, 0.05));
        assert_eq!(pushes(&registry, "lds"), (1.0, 1.0, 0.03));
        // A response nobody timed (not due) is counted, not timed.
        stream.sent(LISTENER);
        assert_eq!(pushes(&registry, "lds"), (2.0, 1.0, 0.03));
        // A type no longer due stops its clock.
        stream.settle([CLUSTER], false);
        stream.settle([], true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stream.settle([CLUSTER], false);
        stream.sent(CLUSTER);
        assert_eq!(pushes(&registry, "cds"), (2.0, 2.0, 0.05));
    }

    #[tokio::test(start_paused = true)]
    async fn convergence_runs_from_the_first_unacknowledged_change_to_in_sync() {
        let (registry, metrics) = registered();
        let mut stream = StreamTelemetry::new(metrics);
        // The first configuration is not a change.
        stream.changed(Instant::now(), true, false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stream.settle([], true);
        assert_eq!(convergence(&registry), (0.0, 0.0));

        // Published, then seen 100 ms later; a second change before the ACK.
        let published = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.changed(published, true, false);
        stream.settle([CLUSTER], false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.changed(Instant::now(), true, false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.settle([], true);
        assert_eq!(convergence(&registry), (1.0, 0.5));

        // A change that leaves the stream in sync (nothing for this proxy) is not observed.
        stream.changed(Instant::now(), true, true);
        stream.settle([], true);
        assert_eq!(convergence(&registry), (1.0, 0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_read_its_configuration_counts_the_next_change() {
        let (registry, metrics) = registered();
        let mut stream = StreamTelemetry::new(metrics);
        stream.seen(false);
        stream.changed(Instant::now(), false, false);
        stream.seen(true);
        let published = Instant::now();
        stream.changed(published, true, false);
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.settle([], true);
        assert_eq!(convergence(&registry), (1.0, 0.25));
    }

    #[test]
    fn nacks_are_counted_acks_are_not() {
        let (registry, metrics) = registered();
        let stream = StreamTelemetry::new(metrics);
        stream.reply(Some(&Reply::Ack {
            type_url: CLUSTER.into(),
            version: "1".into(),
        }));
        stream.reply(Some(&Reply::Nack {
            type_url: CLUSTER.into(),
            version: "2".into(),
            reason: "cds \"a\": type: required".into(),
        }));
        stream.reply(None);
        let rejects = |series| value_of(&registry, series);
        assert_eq!(
            rejects("pilot_total_xds_rejects_total{type=\"cds\"}"),
            Some(1.0)
        );
        assert_eq!(
            rejects("isthmus_xds_rejects_total{type=\"cds\",reason=\"type\"}"),
            Some(1.0)
        );
    }
}
