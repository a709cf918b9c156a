//! A federation gateway's metrics: connections and bytes per peer and per service, open
//! connections per peer, and refusals by reason. The gateway sees only the end-to-end session's
//! encrypted bytes, so this is all it can honestly say.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::Label;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub peer: Label,
    pub service: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub direction: &'static str,
    pub peer: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub direction: &'static str,
    pub peer: Label,
    pub reason: &'static str,
}

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub connections: Family<TunnelLabels, Counter>,
    pub active: Family<PeerLabels, Gauge>,
    pub sent: Family<TunnelLabels, Counter>,
    pub received: Family<TunnelLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("isthmus_federation_gateway");
        r.register(
            "connections",
            "Connections carried across the federation boundary, by peer and service",
            self.connections.clone(),
        );
        r.register(
            "connections_active",
            "Connections open across the federation boundary, by peer",
            self.active.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes sent to the downstream side of federation connections",
            self.sent.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes received from the downstream side of federation connections",
            self.received.clone(),
        );
        r.register(
            "refused",
            "Connections and tunnels refused at the federation boundary, by reason",
            self.refused.clone(),
        );
    }

    /// One tunnel: counted now, its bytes as they move, open until the guard drops.
    pub fn tunnel(&self, labels: TunnelLabels) -> TunnelCounters {
        self.connections.get_or_create(&labels).inc();
        let active = self
            .active
            .get_or_create(&PeerLabels {
                direction: labels.direction,
                peer: labels.peer.clone(),
            })
            .clone();
        active.inc();
        TunnelCounters {
            sent: self.sent.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            active,
        }
    }

    pub fn refused(&self, direction: &'static str, peer: Label, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels {
                direction,
                peer,
                reason,
            })
            .inc();
    }
}

/// The counters of one tunnel; the peer's open count goes down when dropped.
#[derive(Debug)]
pub struct TunnelCounters {
    pub sent: Counter,
    pub received: Counter,
    active: Gauge,
}

impl Drop for TunnelCounters {
    fn drop(&mut self) {
        self.active.dec();
    }
}
