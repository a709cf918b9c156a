//! A sidecar's L4 routes for one TCP or TLS service port: what its capture chains (or its
//! `OUTBOUND_TCP_PORTS` listener) do with a connection, from the service's
//! `VirtualService` `tls` and `tcp` routes, as Istio's sidecars do.
//!
//! - `tls` routes, on `TLS` and `HTTPS` ports only (Istio's rule): a chain per SNI of a
//!   match's `sniHosts`; the bytes go to the route's destinations unterminated. `*` is any
//!   TLS connection.
//! - `tcp` routes: a match with `destinationSubnets` is a chain on those addresses (capture);
//!   the first route with a match without them (or with no match) takes the rest; with none,
//!   the service's own cluster does.
//!
//! A match applies to this sidecar when its `port` is the service port and its
//! `sourceLabels` / `sourceNamespace` are the workload's; the `VirtualService` applies when it
//! is exported to the workload's namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;

use isthmus_api::networking::{L4MatchAttributes, RouteDestination, TlsMatchAttributes};
use isthmus_proto::envoy::envoy::config::listener::v3::{Filter, filter};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};

use super::names::outbound_cluster;
use super::pack;
use super::routes::{Scope, destination_cluster};
use crate::model::ingress::exported_to;
use crate::model::{MeshModel, Port, Protocol, Service, Workload};

/// The SNI of a chain that takes any TLS connection (`sniHosts: ["*"]`).
pub const ANY_SNI: &str = "*";

/// What a sidecar does with connections to one service port.
#[derive(Debug, Clone)]
pub struct PortRoutes {
    /// TLS connections by SNI, one entry per name (lower-cased; exact, `*.` wildcards, or
    /// [`ANY_SNI`]), the first match to name it first.
    pub by_sni: Vec<(String, Filter)>,
    /// Connections to the addresses of a `tcp` match's `destinationSubnets`.
    pub by_subnet: Vec<(Vec<String>, Filter)>,
    /// Every other connection.
    pub default: Filter,
}

/// The L4 routes of `service`'s `port` as `workload`'s sidecar takes them. `stat_prefix` names
/// the chain in the proxy's statistics.
pub fn port_routes(
    model: &MeshModel,
    workload: &Workload,
    service: &Service,
    port: &Port,
    stat_prefix: &str,
) -> PortRoutes {
    let host = service.key.hostname.as_str();
    let scope = Scope::new(host, port.number);
    let own = || tcp_proxy(stat_prefix, &[], &outbound_cluster(port.number, None, host));
    let vs = model
        .routes
        .get(host)
        .filter(|(key, vs)| exported_to(&vs.export_to, &key.namespace, &workload.namespace))
        .map(|(_, vs)| vs);
    let Some(vs) = vs else {
        return PortRoutes {
            by_sni: Vec::new(),
            by_subnet: Vec::new(),
            default: own(),
        };
    };
    let mut by_sni: Vec<(String, Filter)> = Vec::new();
    if matches!(port.protocol, Protocol::Tls | Protocol::Https) {
        let mut taken = BTreeSet::new();
        for route in &vs.tls {
            let filter = to_destinations(model, scope, stat_prefix, &route.route);
            for m in route
                .matches
                .iter()
                .filter(|m| tls_applies(m, workload, port.number))
            {
                for name in &m.sni_hosts {
                    // Envoy compares names lower-cased, and two chains cannot share one.
                    let name = name.to_ascii_lowercase();
                    if taken.insert(name.clone()) {
                        by_sni.push((name, filter.clone()));
                    }
                }
            }
        }
    }
    let mut by_subnet = Vec::new();
    let mut default = None;
    for route in &vs.tcp {
        let applying: Vec<&L4MatchAttributes> = route
            .matches
            .iter()
            .filter(|m| tcp_applies(m, workload, port.number))
            .collect();
        if !route.matches.is_empty() && applying.is_empty() {
            continue;
        }
        let filter = to_destinations(model, scope, stat_prefix, &route.route);
        for m in applying
            .iter()
            .filter(|m| !m.destination_subnets.is_empty())
        {
            by_subnet.push((m.destination_subnets.clone(), filter.clone()));
        }
        if route.matches.is_empty() || applying.iter().any(|m| m.destination_subnets.is_empty()) {
            default = Some(filter);
            break;
        }
    }
    PortRoutes {
        by_sni,
        by_subnet,
        default: default.unwrap_or_else(own),
    }
}

impl PortRoutes {
    /// For a connection known to go to `service` (a local TCP port, which has no address to
    /// match): the first subnet route holding every virtual address of the service, else the
    /// default.
    pub fn for_service(&self, service: &Service) -> Filter {
        self.by_subnet
            .iter()
            .find(|(subnets, _)| {
                !service.addresses.is_empty()
                    && service
                        .addresses
                        .iter()
                        .all(|a| subnets.iter().any(|subnet| subnet_holds(subnet, a)))
            })
            .map_or_else(|| self.default.clone(), |(_, f)| f.clone())
    }
}

fn source_applies(
    labels: &std::collections::BTreeMap<String, String>,
    namespace: Option<&String>,
    workload: &Workload,
) -> bool {
    labels
        .iter()
        .all(|(k, v)| workload.labels.get(k) == Some(v))
        && namespace.is_none_or(|ns| *ns == workload.namespace)
}

fn tls_applies(m: &TlsMatchAttributes, workload: &Workload, port: u32) -> bool {
    m.port.is_none_or(|p| p == port)
        && source_applies(&m.source_labels, m.source_namespace.as_ref(), workload)
}

fn tcp_applies(m: &L4MatchAttributes, workload: &Workload, port: u32) -> bool {
    m.port.is_none_or(|p| p == port)
        && source_applies(&m.source_labels, m.source_namespace.as_ref(), workload)
}

/// Whether `subnet` (`10.0.0.0/8`, or one address) holds `address` (an address or a range).
fn subnet_holds(subnet: &str, address: &str) -> bool {
    let parse = |text: &str| -> Option<(IpAddr, u32)> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip.parse().ok()?, len.parse().ok()?),
            None => {
                let ip: IpAddr = text.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        Some((ip, len))
    };
    let (Some((net, net_len)), Some((ip, len))) = (parse(subnet), parse(address)) else {
        return false;
    };
    if len < net_len {
        return false;
    }
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((net, width), (ip, ip_width)) = (bits(net), bits(ip));
    if width != ip_width || net_len > width {
        return false;
    }
    let shift = width - net_len;
    shift >= 128 || (net >> shift) == (ip >> shift)
}

/// A TCP proxy to a route's destinations (weighted when several). Scope: where the route is
/// served (a destination without a port takes the port of its own service, as in HTTP).
pub(super) fn to_destinations(
    model: &MeshModel,
    scope: Scope<'_>,
    stat_prefix: &str,
    destinations: &[RouteDestination],
) -> Filter {
    let clusters: Vec<(String, u32)> = destinations
        .iter()
        .filter(|d| d.weight.unwrap_or(100) > 0)
        .map(|d| {
            (
                destination_cluster(model, scope, &d.destination),
                d.weight.unwrap_or(100),
            )
        })
        .collect();
    match clusters.as_slice() {
        [(only, _)] => tcp_proxy(stat_prefix, &[], only),
        _ => tcp_proxy(stat_prefix, &clusters, ""),
    }
}

/// Envoy's TCP proxy to `cluster`, or to `weighted` clusters when given.
fn tcp_proxy(stat_prefix: &str, weighted: &[(String, u32)], cluster: &str) -> Filter {
    let specifier = if weighted.is_empty() {
        tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())
    } else {
        tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: weighted
                .iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    },
                )
                .collect(),
        })
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(specifier),
            ..Default::default()
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::subnet_holds;

    #[test]
    fn subnets_hold_addresses_and_narrower_ranges() {
        assert!(subnet_holds("10.0.0.0/8", "10.96.0.10"));
        assert!(subnet_holds("10.0.0.0/8", "10.96.0.0/16"));
        assert!(subnet_holds("10.96.0.10", "10.96.0.10"));
        assert!(subnet_holds("0.0.0.0/0", "192.168.1.1"));
        assert!(!subnet_holds("10.0.0.0/16", "10.96.0.10"));
        assert!(!subnet_holds("10.96.0.10/32", "10.96.0.0/16"));
        assert!(!subnet_holds("10.0.0.0/8", "fd00::1"));
        assert!(subnet_holds("fd00::/8", "fd00::1"));
        assert!(!subnet_holds("not-a-subnet", "10.0.0.1"));
    }
}
