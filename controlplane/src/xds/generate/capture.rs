//! Transparent capture (`INTERCEPTION_MODE=REDIRECT`): iptables sends the pod's outbound TCP
//! to one listener and its inbound TCP to another, and both choose a filter chain by each
//! connection's original destination, as Istio's `virtualOutbound` and `virtualInbound` do.
//!
//! - `virtualOutbound` (`0.0.0.0:<OUTBOUND_PORT>`, 15001): one chain per HTTP service port
//!   (the outbound routes, by authority), one per TCP service port and virtual address (or
//!   endpoint addresses, for a service without one) to that service's cluster, and a default
//!   chain that passes anything else through to where it was going (`PassthroughCluster`,
//!   Istio's `ALLOW_ANY`).
//! - `virtualInbound` (`0.0.0.0:15006`): the workload's inbound chains, each matched on its
//!   port. A port the workload does not declare matches nothing and is closed.

use std::collections::BTreeSet;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{Cluster, cluster};
use isthmus_proto::envoy::envoy::config::core::v3::{CidrRange, TrafficDirection};
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::endpoints::socket;
use super::l4_routes::{ANY_SNI, port_routes};
use super::listeners::{Inbound, outbound_http, tcp_proxy_to, tls_inspector, tls_inspector_on};
use super::names::{
    INBOUND_CAPTURE_PORT, PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND, VIRTUAL_OUTBOUND, outbound_cluster,
};
use super::{duration, pack};
use crate::model::{MeshModel, ProxyNode, Service, Workload};

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

/// `10.96.0.10` or `10.96.0.0/16` as Envoy's CIDR range; `None` if it is neither.
fn cidr(text: &str) -> Option<CidrRange> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u32>().ok()?)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = ip.parse().ok()?;
    Some(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 }),
        }),
    })
}

/// The addresses that say a captured connection goes to `service`: its virtual addresses,
/// else its endpoints' IP addresses. An allocated address (`allocated`) is only the DNS
/// proxy's answer: an application that resolves the name elsewhere still connects to an
/// endpoint, so those match too.
fn service_ranges(service: &Service, allocated: bool) -> Vec<CidrRange> {
    let mut ranges: Vec<CidrRange> = service.addresses.iter().filter_map(|a| cidr(a)).collect();
    if !ranges.is_empty() && !allocated {
        return ranges;
    }
    let ips: BTreeSet<&str> = service
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    ranges.extend(ips.into_iter().filter_map(cidr));
    ranges
}

/// The outbound capture listener and the passthrough cluster its default chain uses.
pub fn virtual_outbound(
    model: &MeshModel,
    node: &ProxyNode,
    workload: &Workload,
    visible: &[&Service],
    tracing: Option<&Tracing>,
) -> (Listener, Cluster) {
    let mut chains = Vec::new();
    let http_ports: BTreeSet<u32> = visible
        .iter()
        .flat_map(|s| &s.ports)
        .filter(|p| p.protocol.is_http())
        .map(|p| p.number)
        .collect();
    for port in &http_ports {
        chains.push(FilterChain {
            name: format!("0.0.0.0_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: *port }),
                ..Default::default()
            }),
            filters: vec![outbound_http(tracing)],
            ..Default::default()
        });
    }
    // Envoy refuses a listener where two chains share a (port, address, SNI): each is
    // claimed by the first chain to name it, and a chain keeps only what it claimed.
    let mut claims = Claims::default();
    let mut sni_ports = BTreeSet::new();
    for service in visible {
        let allocated = model.virtual_addresses.contains_key(&service.key.hostname);
        let ranges = service_ranges(service, allocated);
        for port in service.ports.iter().filter(|p| !p.protocol.is_http()) {
            let cluster = outbound_cluster(port.number, None, &service.key.hostname);
            let routes = port_routes(model, workload, service, port, &cluster);
            // A service without addresses is reached by SNI alone (its `tls` routes), as
            // Istio's `0.0.0.0_<port>` chains are; its other bytes pass through.
            for (name, filter) in routes.by_sni {
                let Some(free) = claims.claim(port.number, &ranges, Some(&name)) else {
                    continue;
                };
                sni_ports.insert(port.number);
                chains.push(sni_chain(
                    format!("{cluster}|sni:{name}"),
                    Some(port.number),
                    free,
                    &name,
                    filter,
                ));
            }
            for (subnets, filter) in routes.by_subnet {
                let subnets: Vec<CidrRange> = subnets.iter().filter_map(|s| cidr(s)).collect();
                let Some(free) = claims.claim(port.number, &subnets, None) else {
                    continue;
                };
                chains.push(port_chain(
                    format!("{cluster}|subnets"),
                    port.number,
                    free,
                    filter,
                ));
            }
            if ranges.is_empty() {
                continue;
            }
            let Some(free) = claims.claim(port.number, &ranges, None) else {
                continue;
            };
            chains.push(port_chain(
                cluster.clone(),
                port.number,
                free,
                routes.default,
            ));
        }
    }
    let mut listener_filters = vec![original_dst()];
    if !sni_ports.is_empty() {
        listener_filters.push(tls_inspector_on(&sni_ports));
    }
    let listener = Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket("0.0.0.0", node.outbound_port)),
        listener_filters,
        // A client that sends nothing (a server-first protocol) on a port with SNI chains is
        // passed on as plaintext when the inspector gives up, not closed.
        continue_on_listener_filters_timeout: !sni_ports.is_empty(),
        filter_chains: chains,
        default_filter_chain: Some(FilterChain {
            name: PASSTHROUGH_CLUSTER.into(),
            filters: vec![tcp_proxy_to(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)],
            ..Default::default()
        }),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    let passthrough = Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(Duration::from_secs(10))),
        ..Default::default()
    };
    (listener, passthrough)
}

/// Which (port, address range, SNI) the chains so far match; an empty range list is any
/// address, no SNI is a chain without one.
#[derive(Default)]
struct Claims(BTreeSet<(u32, String, Option<String>)>);

impl Claims {
    /// The ranges of `ranges` still free for (`port`, `sni`), now claimed; `None` when none
    /// is (an empty `ranges`, any address, is one claim of its own).
    fn claim(
        &mut self,
        port: u32,
        ranges: &[CidrRange],
        sni: Option<&str>,
    ) -> Option<Vec<CidrRange>> {
        let sni = sni.map(str::to_owned);
        if ranges.is_empty() {
            return self.0.insert((port, "any".into(), sni)).then(Vec::new);
        }
        let free: Vec<CidrRange> = ranges
            .iter()
            .filter(|r| {
                let key = format!(
                    "{}/{}",
                    r.address_prefix,
                    r.prefix_len.as_ref().map_or(0, |l| l.value)
                );
                self.0.insert((port, key, sni.clone()))
            })
            .cloned()
            .collect();
        (!free.is_empty()).then_some(free)
    }
}

/// A chain on `port` and `ranges` (any address when empty).
fn port_chain(name: String, port: u32, ranges: Vec<CidrRange>, filter: Filter) -> FilterChain {
    FilterChain {
        name,
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port }),
            prefix_ranges: ranges,
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// A chain for TLS connections with the SNI `name` ([`ANY_SNI`]: any TLS connection), on
/// `port` when given and `ranges`.
pub(super) fn sni_chain(
    name_of_chain: String,
    port: Option<u32>,
    ranges: Vec<CidrRange>,
    name: &str,
    filter: Filter,
) -> FilterChain {
    let (server_names, transport_protocol) = if name == ANY_SNI {
        (Vec::new(), "tls".to_owned())
    } else {
        (vec![name.to_owned()], String::new())
    };
    FilterChain {
        name: name_of_chain,
        filter_chain_match: Some(FilterChainMatch {
            destination_port: port.map(|value| UInt32Value { value }),
            prefix_ranges: ranges,
            server_names,
            transport_protocol,
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// The inbound capture listener: every inbound chain, matched on its port.
pub fn virtual_inbound(inbound: &Inbound) -> Listener {
    let chains = inbound
        .ports
        .iter()
        .flat_map(|port| {
            port.chains.iter().cloned().map(move |mut chain| {
                let matcher = chain
                    .filter_chain_match
                    .get_or_insert_with(Default::default);
                matcher.destination_port = Some(UInt32Value { value: port.port });
                chain.name = format!("{}_{}", chain.name, port.port);
                chain
            })
        })
        .collect();
    let mut listener_filters = vec![original_dst()];
    if inbound.ports.iter().any(|p| p.inspect_tls) {
        listener_filters.push(tls_inspector());
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket("0.0.0.0", INBOUND_CAPTURE_PORT)),
        listener_filters,
        filter_chains: chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
