//! State-of-the-world ADS on top of the delta state machine: each SotW response becomes the
//! delta response it amounts to, and each delta request the SotW request that says the same.
//!
//! - A SotW response carries every resource of its type (LDS, CDS) or every requested one
//!   (RDS, EDS, SDS). For the wildcard types, a resource held but absent is a removal; for
//!   the others absence changes nothing (the names asked for decide what is held).
//! - A SotW request names every resource wanted of its type, with the version last accepted
//!   (`version_info`) and the nonce of the last response of that type. An ACK carries the
//!   response's version; a NACK the previous one, with the error.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_proto::envoy::envoy::config::cluster::v3::Cluster;
use isthmus_proto::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use isthmus_proto::envoy::envoy::config::listener::v3::Listener;
use isthmus_proto::envoy::envoy::config::route::v3::RouteConfiguration;
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::Secret;
use isthmus_proto::envoy::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use prost::Message;

use crate::config::XdsType;

/// The name a resource carries in its own body (SotW responses do not name them apart).
/// `None` when the body does not decode: the delta machine then reports the resource.
pub(crate) fn resource_name(kind: XdsType, bytes: &[u8]) -> Option<String> {
    Some(match kind {
        XdsType::Listener => Listener::decode(bytes).ok()?.name,
        XdsType::Cluster => Cluster::decode(bytes).ok()?.name,
        XdsType::Route => RouteConfiguration::decode(bytes).ok()?.name,
        XdsType::Endpoint => ClusterLoadAssignment::decode(bytes).ok()?.cluster_name,
        XdsType::Secret => Secret::decode(bytes).ok()?.name,
        // The table does not name itself: there is one.
        XdsType::NameTable => isthmus_proto::dns::NAME_TABLE_RESOURCE.to_owned(),
    })
}

/// Per type: the version last accepted and the nonce last received.
#[derive(Debug, Default)]
pub struct SotwAdapter {
    accepted: BTreeMap<String, String>,
    nonces: BTreeMap<String, String>,
    /// The version of the response being answered, by nonce.
    answering: Option<(String, String)>,
}

impl SotwAdapter {
    /// The delta response a SotW response amounts to, given the names of that type held now.
    pub fn delta_response(
        &mut self,
        response: DiscoveryResponse,
        held: &BTreeSet<String>,
    ) -> DeltaDiscoveryResponse {
        self.nonces
            .insert(response.type_url.clone(), response.nonce.clone());
        self.answering = Some((response.nonce.clone(), response.version_info.clone()));
        let kind = XdsType::from_type_url(&response.type_url);
        let mut present = BTreeSet::new();
        let resources: Vec<Resource> = response
            .resources
            .into_iter()
            .enumerate()
            .map(|(i, any)| {
                // Undecodable: named by position, and the delta machine says why it fails.
                let name = kind
                    .and_then(|k| resource_name(k, &any.value))
                    .unwrap_or_else(|| format!("resources[{i}]"));
                present.insert(name.clone());
                Resource {
                    name,
                    version: response.version_info.clone(),
                    resource: Some(any),
                    ..Resource::default()
                }
            })
            .collect();
        let removed_resources = match kind {
            Some(k) if k.is_wildcard() => held.difference(&present).cloned().collect(),
            _ => Vec::new(),
        };
        DeltaDiscoveryResponse {
            system_version_info: response.version_info,
            resources,
            type_url: response.type_url,
            removed_resources,
            nonce: response.nonce,
            ..DeltaDiscoveryResponse::default()
        }
    }

    /// The SotW request saying what `request` says; `subscribed` are the names of its type
    /// wanted now (empty for the wildcard types).
    pub fn sotw_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        subscribed: &BTreeSet<String>,
    ) -> DiscoveryRequest {
        let type_url = request.type_url;
        // The answer to the response in hand: an ACK moves the accepted version forward.
        if let Some((nonce, version)) = &self.answering
            && *nonce == request.response_nonce
            && !nonce.is_empty()
            && request.error_detail.is_none()
        {
            self.accepted.insert(type_url.clone(), version.clone());
        }
        DiscoveryRequest {
            version_info: self.accepted.get(&type_url).cloned().unwrap_or_default(),
            node: request.node,
            resource_names: subscribed.iter().cloned().collect(),
            response_nonce: if request.response_nonce.is_empty() {
                self.nonces.get(&type_url).cloned().unwrap_or_default()
            } else {
                request.response_nonce
            },
            error_detail: request.error_detail,
            type_url,
            ..DiscoveryRequest::default()
        }
    }

    /// A new stream: nonces belong to the old one.
    pub fn reset_stream(&mut self) {
        self.nonces.clear();
        self.answering = None;
    }
}
