//! A `DestinationRule`'s `consistentHash`, as Istio writes it for Envoy: the cluster balances
//! by ring hash (or Maglev), and every route to it hashes the request's key (a header, a
//! cookie, the source IP or a query parameter).

use isthmus_api::networking::{ConsistentHashLb, Destination, TrafficPolicy};
use isthmus_proto::envoy::envoy::config::cluster::v3::cluster;
use isthmus_proto::envoy::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use isthmus_proto::envoy::google::protobuf::UInt64Value;

use super::duration;
use crate::model::MeshModel;

/// The policy's consistent hash, if it asks for one.
pub fn of(policy: Option<&TrafficPolicy>) -> Option<&ConsistentHashLb> {
    policy?.load_balancer.as_ref()?.consistent_hash.as_ref()
}

/// The cluster's balancer and its configuration for a consistent hash.
pub fn cluster_lb(hash: &ConsistentHashLb) -> (cluster::LbPolicy, Option<cluster::LbConfig>) {
    if let Some(maglev) = hash.maglev {
        let config = maglev.table_size.map(|size| {
            cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: size }),
            })
        });
        return (cluster::LbPolicy::Maglev, config);
    }
    let minimum = hash
        .ring_hash
        .and_then(|r| r.minimum_ring_size)
        .or(hash.minimum_ring_size);
    let config = minimum.map(|size| {
        cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: size }),
            ..Default::default()
        })
    });
    (cluster::LbPolicy::RingHash, config)
}

/// The route's hash policy toward `destination` (on `port`): its `DestinationRule`'s key.
pub fn route_policy(model: &MeshModel, destination: &Destination, port: u32) -> Vec<HashPolicy> {
    let Some((_, rule)) = model.destination_rules.get(&destination.host) else {
        return Vec::new();
    };
    let number = destination.port.map_or(port, |p| p.number);
    let policy = rule.policy_for(destination.subset.as_deref(), number);
    of(policy.as_ref())
        .map(hash_policy_of)
        .into_iter()
        .flatten()
        .collect()
}

fn hash_policy_of(hash: &ConsistentHashLb) -> Option<HashPolicy> {
    use hash_policy::PolicySpecifier;
    let specifier = if let Some(name) = &hash.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: name.to_ascii_lowercase(),
            ..Default::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|t| duration(t.0)),
            path: cookie.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(name) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    })
}
