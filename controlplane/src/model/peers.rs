//! The peers of this mesh: each `ServiceMeshPeer` of the control plane's namespace, with its
//! addresses, its trust domain and its root certificate (from the `ConfigMap` its
//! `spec.security.certificateChain` names, key `root-cert.pem`). A peer without a usable trust
//! domain or root cannot be trusted and is left out, with a warning saying why.

use isthmus_api::core::ROOT_CERT_KEY;
use isthmus_api::federation::ServiceMeshPeer;
use isthmus_api::{Kind, Resource};
use isthmus_identity::{SpiffeId, TrustBundle, TrustDomain};

use super::ModelWarning;
use crate::config::{ConfigSnapshot, ResourceKey};

/// The namespace a peer's `isthmusd` runs in unless its `ServiceMeshPeer` says otherwise
/// (`isthmusd --namespace`'s default, where the manifests install it).
pub const DEFAULT_CONTROL_PLANE_NAMESPACE: &str = "isthmus-system";

/// A peer mesh this mesh may talk to.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub source: ResourceKey,
    /// `host:port` of the peer's discovery service, in order of preference.
    pub discovery_addresses: Vec<String>,
    /// `remote.discoveryPort`.
    pub discovery_port: u32,
    /// `host:port` of the local egress gateway's endpoints: discovery goes through them when
    /// there are any (filled in once the registry is built).
    pub discovery_via: Vec<String>,
    /// `host:port` of the peer's federation ingress for service traffic.
    pub service_addresses: Vec<String>,
    pub trust_domain: TrustDomain,
    /// The identity the peer presents when it calls us (`security.clientID`).
    pub client_id: Option<SpiffeId>,
    /// The one identity of the peer that may watch our exports: its control plane
    /// (`security.controlPlaneID`, by default `<trustDomain>/ns/isthmus-system/sa/isthmusd`).
    pub control_plane_id: SpiffeId,
    /// The peer's roots, trusted for `trust_domain` only.
    pub roots: TrustBundle,
    /// Local gateway services (`gateways.ingress` / `gateways.egress`) by name.
    pub ingress_gateway: Option<String>,
    pub egress_gateway: Option<String>,
}

impl Peer {
    pub fn roots_pem(&self) -> String {
        self.roots.to_pem()
    }
}

/// Every usable peer, and why the others are not.
pub fn peers(
    config: &ConfigSnapshot,
    root_namespace: &str,
    local: &TrustDomain,
) -> (Vec<Peer>, Vec<ModelWarning>) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut warnings = Vec::new();
    for (key, peer) in config.of_type::<ServiceMeshPeer>() {
        let mut warn = |message: String| {
            warnings.push(ModelWarning {
                resource: key.clone(),
                message,
            });
        };
        if key.namespace != root_namespace {
            warn(format!(
                "ignored: federation resources count only in the control plane's namespace {root_namespace:?}"
            ));
            continue;
        }
        let spec = &peer.spec;
        let Ok(trust_domain) = TrustDomain::new(&spec.security.trust_domain) else {
            warn("ignored: spec.security.trustDomain is required to trust the peer".into());
            continue;
        };
        if &trust_domain == local {
            warn(format!(
                "ignored: spec.security.trustDomain {trust_domain} is this mesh's own trust domain"
            ));
            continue;
        }
        if let Some(other) = peers.iter().find(|p| p.trust_domain == trust_domain) {
            warn(format!(
                "ignored: trust domain {trust_domain} is already the peer {}'s",
                other.name
            ));
            continue;
        }
        let roots = match root_of(config, root_namespace, &peer.spec.security, &trust_domain) {
            Ok(roots) => roots,
            Err(why) => {
                warn(format!("ignored: {why}"));
                continue;
            }
        };
        let control_plane_id = if spec.security.control_plane_id.is_empty() {
            SpiffeId::workload(&trust_domain, DEFAULT_CONTROL_PLANE_NAMESPACE, "isthmusd")
        } else {
            SpiffeId::parse(&format!("spiffe://{}", spec.security.control_plane_id))
        };
        let control_plane_id = match control_plane_id {
            Ok(id) if id.trust_domain() == &trust_domain => id,
            Ok(id) => {
                warn(format!(
                    "ignored: spec.security.controlPlaneID {id} is not in trust domain {trust_domain}"
                ));
                continue;
            }
            Err(e) => {
                warn(format!("ignored: spec.security.controlPlaneID: {e}"));
                continue;
            }
        };
        let at = |port: u32| {
            spec.remote
                .addresses
                .iter()
                .map(|a| format!("{a}:{port}"))
                .collect::<Vec<_>>()
        };
        peers.push(Peer {
            name: key.name.clone(),
            source: key.clone(),
            discovery_addresses: at(spec.remote.discovery_port()),
            discovery_port: spec.remote.discovery_port(),
            discovery_via: Vec::new(),
            service_addresses: at(spec.remote.service_port()),
            trust_domain,
            client_id: (!spec.security.client_id.is_empty())
                .then(|| SpiffeId::parse(&format!("spiffe://{}", spec.security.client_id)).ok())
                .flatten(),
            control_plane_id,
            roots,
            ingress_gateway: spec.gateways.ingress.as_ref().map(|g| g.name.clone()),
            egress_gateway: spec.gateways.egress.as_ref().map(|g| g.name.clone()),
        });
    }
    (peers, warnings)
}

fn root_of(
    config: &ConfigSnapshot,
    namespace: &str,
    security: &isthmus_api::federation::ServiceMeshPeerSecurity,
    trust_domain: &TrustDomain,
) -> Result<TrustBundle, String> {
    let Some(chain) = &security.certificate_chain else {
        return Err("spec.security.certificateChain is required: it names the ConfigMap holding the peer's root".into());
    };
    let key = ResourceKey {
        kind: Kind::ConfigMap,
        namespace: namespace.to_owned(),
        name: chain.name.clone(),
    };
    let Some(Resource::ConfigMap(map)) = config.get(&key) else {
        return Err(format!(
            "spec.security.certificateChain: no ConfigMap {namespace}/{}",
            chain.name
        ));
    };
    let Some(pem) = map.data.get(ROOT_CERT_KEY) else {
        return Err(format!(
            "ConfigMap {namespace}/{} has no {ROOT_CERT_KEY:?} key",
            chain.name
        ));
    };
    TrustBundle::from_pem(
        trust_domain.clone(),
        pem.as_bytes(),
        &format!("ConfigMap {namespace}/{} key {ROOT_CERT_KEY}", chain.name),
    )
    .map_err(|e| e.to_string())
}
