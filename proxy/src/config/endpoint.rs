//! `ClusterLoadAssignment` (EDS, and the static assignment of static and DNS clusters): the
//! endpoints of a cluster, grouped by priority and locality.

use isthmus_proto::envoy::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality};
use isthmus_proto::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    cluster_load_assignment, lb_endpoint,
};

use super::check::{Checked, Invalid, Path, each, reject_set};
use super::decode::{host_port, u32_or};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadAssignment {
    pub cluster_name: String,
    /// Locality groups; priority 0 is preferred, higher ones take over as it fails.
    pub groups: Vec<LocalityGroup>,
    /// Envoy's overprovisioning factor, in percent (140 by default).
    pub overprovisioning: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityGroup {
    pub locality: Locality,
    pub priority: u32,
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address for EDS and static clusters; a DNS name for DNS clusters.
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// Whether the control plane marked it healthy (or did not say).
    pub healthy: bool,
}

pub fn convert(assignment: ClusterLoadAssignment, path: &Path) -> Checked<LoadAssignment> {
    let ClusterLoadAssignment {
        cluster_name,
        endpoints,
        named_endpoints,
        policy,
    } = assignment;
    reject_set!(path; named_endpoints);
    let mut overprovisioning = 140;
    if let Some(policy) = policy {
        let path = path.field("policy");
        #[allow(deprecated)]
        let cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = policy;
        reject_set!(path; drop_overloads, endpoint_stale_after, weighted_priority_health);
        overprovisioning = u32_or(overprovisioning_factor, 140);
    }
    let groups = each(endpoints, path, "endpoints", locality_group)?;
    Ok(LoadAssignment {
        cluster_name,
        groups,
        overprovisioning,
    })
}

fn locality_group(group: LocalityLbEndpoints, path: &Path) -> Checked<LocalityGroup> {
    let LocalityLbEndpoints {
        locality,
        metadata,
        lb_endpoints,
        load_balancing_weight,
        priority,
        proximity,
        lb_config,
    } = group;
    reject_set!(path; metadata, proximity, lb_config);
    let locality = locality
        .map(
            |EnvoyLocality {
                 region,
                 zone,
                 sub_zone,
             }| Locality {
                region,
                zone,
                sub_zone,
            },
        )
        .unwrap_or_default();
    let endpoints = each(lb_endpoints, path, "lb_endpoints", endpoint)?;
    Ok(LocalityGroup {
        locality,
        priority,
        weight: load_balancing_weight.map(|w| w.value),
        endpoints,
    })
}

fn endpoint(e: LbEndpoint, path: &Path) -> Checked<Endpoint> {
    let LbEndpoint {
        health_status,
        metadata: _,
        load_balancing_weight,
        host_identifier,
    } = e;
    let path_e = path.field("endpoint");
    let EnvoyEndpoint {
        address,
        health_check_config,
        hostname: _,
        additional_addresses,
        observability_name: _,
    } = match host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
        _ => {
            return Err(Invalid::new(
                &path_e,
                "required (named endpoints are not supported)",
            ));
        }
    };
    reject_set!(path_e; health_check_config, additional_addresses);
    let (host, port) = host_port(address, &path_e.field("address"))?;
    let weight = u32_or(load_balancing_weight, 1);
    if weight == 0 {
        return Err(Invalid::new(
            &path.field("load_balancing_weight"),
            "must be at least 1",
        ));
    }
    let healthy = matches!(
        HealthStatus::try_from(health_status),
        Ok(HealthStatus::Unknown | HealthStatus::Healthy)
    );
    Ok(Endpoint {
        host,
        port,
        weight,
        healthy,
    })
}
