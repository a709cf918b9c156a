//! A TCP connection's telemetry: on a sidecar Istio's `istio_tcp_*` (the caller named by its
//! certificate, the service by the cluster), on a federation gateway the tunnel counters per
//! peer and service. The copy loop adds bytes to the counters as they move, so long-lived
//! connections show their traffic before they close.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use super::Telemetry;
use super::gateway::{TunnelCounters, TunnelLabels};
use super::istio::TcpCounters;
use super::labels::{self, CallLabels, Label, Reporter, Service, Workload};
use crate::config::listener::Direction;
use crate::config::telemetry::{ClusterFacts, GatewaySide, NodeFacts};

/// What a connection's telemetry knows before the cluster is chosen.
#[derive(Debug, Clone)]
pub struct TcpContext {
    pub telemetry: Arc<Telemetry>,
    pub node: Arc<NodeFacts>,
    pub direction: Direction,
    /// The downstream peer's verified SPIFFE ID.
    pub peer_id: Option<String>,
    /// A gateway chain's peer.
    pub chain_peer: Option<Label>,
}

/// The byte counters of one connection and the guards that count it closed.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes from the downstream side.
    pub received: Option<Counter>,
    /// Bytes to the downstream side.
    pub sent: Option<Counter>,
    _tcp: Option<TcpCounters>,
    _tunnel: Option<TunnelCounters>,
}

impl TcpContext {
    /// The meter of a connection to `cluster`, whose host proved to be `upstream` (TLS).
    pub fn meter(&self, cluster: &str, facts: &ClusterFacts, upstream: Option<Label>) -> Meter {
        match self.node.gateway {
            Some(side) => self.tunnel(side, cluster, facts),
            None => self.sidecar(cluster, facts, upstream),
        }
    }

    /// A gateway refused or failed the connection after choosing its chain.
    pub fn refused(&self, facts: &ClusterFacts, reason: &'static str) {
        if let Some(side) = self.node.gateway {
            let peer = self.peer(facts);
            self.telemetry.gateway.refused(side.as_str(), peer, reason);
        }
    }

    fn peer(&self, facts: &ClusterFacts) -> Label {
        facts
            .peer
            .clone()
            .or_else(|| self.chain_peer.clone())
            .unwrap_or_else(labels::unknown)
    }

    fn tunnel(&self, side: GatewaySide, cluster: &str, facts: &ClusterFacts) -> Meter {
        let counters = self.telemetry.gateway.tunnel(TunnelLabels {
            direction: side.as_str(),
            peer: self.peer(facts),
            service: facts
                .gateway_service
                .clone()
                .unwrap_or_else(|| Arc::from(cluster)),
        });
        Meter {
            received: Some(counters.received.clone()),
            sent: Some(counters.sent.clone()),
            _tcp: None,
            _tunnel: Some(counters),
        }
    }

    fn sidecar(&self, cluster: &str, facts: &ClusterFacts, upstream: Option<Label>) -> Meter {
        let reporter = match self.direction {
            Direction::Inbound => Reporter::Destination,
            Direction::Outbound => Reporter::Source,
            Direction::Unspecified => return Meter::default(),
        };
        let service = facts
            .service
            .clone()
            .unwrap_or_else(|| Arc::new(Service::unnamed(cluster)));
        let me = self.node.me.clone();
        let (source, destination) = match reporter {
            Reporter::Source => {
                let mut d = Workload::unknown();
                d.mesh = facts
                    .mesh
                    .clone()
                    .or_else(|| upstream.as_deref().map(|id| self.node.mesh_of(id)))
                    .unwrap_or_else(labels::unknown);
                if let Some(id) = upstream {
                    d.principal = self.telemetry.principals.label(&id);
                }
                (me, Arc::new(d))
            }
            Reporter::Destination => {
                let mut s = Workload::unknown();
                if let Some(id) = &self.peer_id {
                    s.principal = self.telemetry.principals.label(id);
                    s.mesh = self.node.mesh_of(id);
                }
                (Arc::new(s), me)
            }
        };
        let labels = CallLabels {
            reporter,
            source,
            destination,
            service,
            protocol: "tcp",
            flags: "-",
            security: reporter.security_policy(self.peer_id.is_some()),
        };
        let counters = self.telemetry.istio.tcp_connection(&labels);
        Meter {
            received: Some(counters.received.clone()),
            sent: Some(counters.sent.clone()),
            _tcp: Some(counters),
            _tunnel: None,
        }
    }
}
