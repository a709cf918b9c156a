//! Endpoints (EDS) of outbound clusters, grouped by locality. With a `DestinationRule` that
//! has outlier detection, localities get priorities relative to the calling workload, as
//! Istio does: same zone and subzone first, then the zone, the region, the `failover` target
//! region, everything else. Envoy moves traffic to the next priority as endpoints are ejected.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use isthmus_api::networking::{LocalityLbSetting, Resolution, TrafficPolicy, locality_matches};
use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, Locality as EnvoyLocality, SocketAddress, address, socket_address,
};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use isthmus_proto::envoy::google::protobuf::UInt32Value;

use super::names::outbound_cluster;
use crate::model::{Endpoint, Locality, MeshModel, Port, Service, ServiceSource, Workload};

pub fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Endpoints of `service` in the subset with `labels` (all of them without a subset).
pub fn subset_endpoints<'s>(
    service: &'s Service,
    labels: Option<&'s BTreeMap<String, String>>,
) -> impl Iterator<Item = &'s Endpoint> {
    service
        .endpoints
        .iter()
        .filter(move |e| labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
}

/// Whether `endpoint` serves `port`. A Kubernetes Service's endpoints serve the ports their
/// `EndpointSlice` lists, by name, and no other (a pod without a named target port is in a
/// slice without it); a `ServiceEntry`'s serve every port.
fn serves(service: &Service, endpoint: &Endpoint, port: &Port) -> bool {
    !matches!(service.source, ServiceSource::Kubernetes { .. })
        || endpoint.ports.contains_key(&port.name)
}

fn lb_endpoint(endpoint: &Endpoint, port: &Port) -> LbEndpoint {
    let number = endpoint
        .ports
        .get(&port.name)
        .copied()
        .unwrap_or(port.number);
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket(&endpoint.address, number)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: endpoint.weight.max(1),
        }),
        ..Default::default()
    }
}

fn envoy_locality(l: &Locality) -> Option<EnvoyLocality> {
    Some(EnvoyLocality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.subzone.clone(),
    })
}

/// The load assignment of a DNS cluster: the host names themselves.
pub fn dns_load_assignment(name: &str, service: &Service, port: &Port) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: service
                .endpoints
                .iter()
                .map(|e| lb_endpoint(e, port))
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// EDS resources for every EDS cluster of `services`, as seen from `workload`.
pub fn outbound(
    model: &MeshModel,
    workload: &Workload,
    services: &[&Service],
) -> Vec<ClusterLoadAssignment> {
    let mut out = Vec::new();
    for service in services {
        if matches!(
            service.resolution,
            Resolution::Dns | Resolution::DnsRoundRobin
        ) {
            continue;
        }
        let rule = model
            .destination_rules
            .get(&service.key.hostname)
            .map(|(_, r)| r);
        let subsets = std::iter::once((None, None)).chain(
            rule.into_iter()
                .flat_map(|r| r.subsets.iter())
                .map(|s| (Some(s.name.as_str()), Some(&s.labels))),
        );
        let subsets: Vec<_> = subsets.collect();
        for port in &service.ports {
            for (subset, labels) in &subsets {
                let name = outbound_cluster(port.number, *subset, &service.key.hostname);
                let endpoints = subset_endpoints(service, *labels)
                    // EDS carries IP addresses only; DNS names need a DNS cluster.
                    .filter(|e| e.address.parse::<IpAddr>().is_ok())
                    .filter(|e| serves(service, e, port));
                let policy = rule.and_then(|r| r.policy_for(*subset, port.number));
                out.push(assignment(name, endpoints, port, workload, policy.as_ref()));
            }
        }
    }
    out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

fn assignment<'e>(
    name: String,
    endpoints: impl Iterator<Item = &'e Endpoint>,
    port: &Port,
    workload: &Workload,
    policy: Option<&TrafficPolicy>,
) -> ClusterLoadAssignment {
    if let Some(setting) = distribution(policy) {
        return distributed(name, endpoints, port, workload, setting);
    }
    let locality_lb = policy.and_then(|p| {
        // Istio applies locality load balancing only with outlier detection, which is what
        // lets Envoy notice that a priority has failed.
        p.outlier_detection.as_ref()?;
        let setting = p
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.locality_lb_setting.clone())
            .unwrap_or_default();
        (setting.enabled != Some(false)).then_some(setting)
    });
    let mut groups: BTreeMap<(u32, Locality), Vec<LbEndpoint>> = BTreeMap::new();
    for e in endpoints {
        let priority = locality_lb.as_ref().map_or(0, |s| priority(s, workload, e));
        groups
            .entry((priority, e.locality.clone()))
            .or_default()
            .push(lb_endpoint(e, port));
    }
    // Envoy requires priorities to be contiguous from 0.
    let mut renumber: HashMap<u32, u32> = HashMap::new();
    for (p, _) in groups.keys() {
        let next = u32::try_from(renumber.len()).unwrap_or(u32::MAX);
        renumber.entry(*p).or_insert(next);
    }
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: groups
            .into_iter()
            .map(|((p, locality), lb_endpoints)| LocalityLbEndpoints {
                locality: envoy_locality(&locality),
                lb_endpoints,
                priority: renumber[&p],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The rule's `localityLbSetting` when it distributes traffic by locality (`distribute`, not
/// turned off): the cluster is then locality-weighted (`clusters.rs`).
pub fn distribution(policy: Option<&TrafficPolicy>) -> Option<&LocalityLbSetting> {
    policy?
        .load_balancer
        .as_ref()?
        .locality_lb_setting
        .as_ref()
        .filter(|s| s.enabled != Some(false) && !s.distribute.is_empty())
}

/// Istio's `distribute`: every locality weighs what its endpoints weigh, unless the first
/// rule whose `from` takes the caller's locality says otherwise. Then each of its `to`
/// patterns (the most specific first) shares its percentage among the localities it takes,
/// in proportion to their own weights, and a locality no pattern takes gets no traffic.
fn distributed<'e>(
    name: String,
    endpoints: impl Iterator<Item = &'e Endpoint>,
    port: &Port,
    workload: &Workload,
    setting: &LocalityLbSetting,
) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<Locality, (u32, Vec<LbEndpoint>)> = BTreeMap::new();
    for e in endpoints {
        let group = groups.entry(e.locality.clone()).or_default();
        group.0 = group.0.saturating_add(e.weight.max(1));
        group.1.push(lb_endpoint(e, port));
    }
    fn parts(l: &Locality) -> [&str; 3] {
        [l.region.as_str(), l.zone.as_str(), l.subzone.as_str()]
    }
    let rule = setting
        .distribute
        .iter()
        .find(|d| locality_matches(parts(&workload.locality), &d.from));
    let mut weights: BTreeMap<Locality, u32> =
        groups.iter().map(|(l, (w, _))| (l.clone(), *w)).collect();
    if let Some(rule) = rule {
        let mut to: Vec<(&String, &u32)> = rule.to.iter().collect();
        // Exact localities before wildcards, longer patterns before shorter ones.
        to.sort_by_key(|(pattern, _)| {
            (
                pattern.ends_with('*'),
                std::cmp::Reverse(pattern.split('/').count()),
            )
        });
        let mut unassigned: Vec<Locality> = groups.keys().cloned().collect();
        let mut assigned = BTreeMap::new();
        for (pattern, share) in to {
            let taken: Vec<Locality> = unassigned
                .iter()
                .filter(|l| locality_matches(parts(l), pattern))
                .cloned()
                .collect();
            unassigned.retain(|l| !taken.contains(l));
            let total: u64 = taken.iter().map(|l| u64::from(weights[l])).sum();
            for l in taken {
                let own = u64::from(weights[&l]);
                let weight = (own * u64::from(*share)).div_ceil(total.max(1));
                if weight > 0 {
                    assigned.insert(l, u32::try_from(weight).unwrap_or(u32::MAX));
                }
            }
        }
        weights = assigned;
    }
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints: groups
            .into_iter()
            .filter_map(|(locality, (_, lb_endpoints))| {
                let weight = *weights.get(&locality)?;
                Some(LocalityLbEndpoints {
                    locality: envoy_locality(&locality),
                    lb_endpoints,
                    load_balancing_weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
            })
            .collect(),
        ..Default::default()
    }
}

/// Istio's priorities. With `failoverPriority` labels: the number of leading labels on which
/// endpoint and caller differ decides. Otherwise by locality: 0 same subzone, 1 same zone, 2
/// same region, 3 the `failover` target of the caller's region, 4 the rest.
fn priority(setting: &LocalityLbSetting, workload: &Workload, e: &Endpoint) -> u32 {
    if !setting.failover_priority.is_empty() {
        let matching = setting
            .failover_priority
            .iter()
            .take_while(|label| {
                let mine = workload.labels.get(*label);
                mine.is_some() && mine == e.labels.get(*label)
            })
            .count();
        let total = setting.failover_priority.len();
        return u32::try_from(total - matching).unwrap_or(u32::MAX);
    }
    let (me, it) = (&workload.locality, &e.locality);
    if me.region == it.region {
        return match (me.zone == it.zone, me.subzone == it.subzone) {
            (true, true) => 0,
            (true, false) => 1,
            _ => 2,
        };
    }
    let failover_target = setting
        .failover
        .iter()
        .any(|f| f.from == me.region && f.to == it.region);
    if failover_target { 3 } else { 4 }
}
