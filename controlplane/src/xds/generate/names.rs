//! Resource names, in Istio's spelling.

/// The SDS secret holding a proxy's own certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// The SDS secret holding the trust bundles, one per trust domain.
pub const ROOT_CA_SECRET: &str = "ROOTCA";
/// The RDS route configuration of the outbound HTTP listener.
pub const OUTBOUND_ROUTE: &str = "outbound";
/// The outbound HTTP listener.
pub const OUTBOUND_LISTENER: &str = "outbound_http";
/// Capture mode: the listener iptables sends outbound TCP to (`OUTBOUND_PORT`, 15001).
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Capture mode: the listener iptables sends inbound TCP to.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const INBOUND_CAPTURE_PORT: u32 = 15006;
/// Captured traffic to no known service goes where it was going.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

pub fn outbound_cluster(port: u32, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or_default())
}

pub fn inbound_cluster(port: u32) -> String {
    format!("inbound|{port}||")
}

pub fn inbound_listener(address: &str, port: u32) -> String {
    format!("inbound_{address}_{port}")
}

pub fn inbound_route(port: u32) -> String {
    format!("inbound|{port}")
}

/// The inbound HTTP filters that enforce `AuthorizationPolicy`, DENY first.
pub const RBAC_DENY_FILTER: &str = "isthmus.rbac.deny";
pub const RBAC_ALLOW_FILTER: &str = "isthmus.rbac.allow";

/// The SDS secret holding one peer mesh's bundle alone (federation gateways verify the peer
/// against it, so no other trust domain can pass for the peer).
pub fn peer_root_secret(trust_domain: &str) -> String {
    format!("{ROOT_CA_SECRET}/{trust_domain}")
}

/// The federation gateways' listeners.
pub const FEDERATION_EGRESS_LISTENER: &str = "federation-egress";
pub const FEDERATION_INGRESS_LISTENER: &str = "federation-ingress";

/// Egress: the tunnel to `peer` for one exported service port.
pub fn federation_egress_cluster(peer: &str, port: u32, exported_host: &str) -> String {
    format!("federation|{peer}|{port}|{exported_host}")
}

/// Ingress: the local endpoints of one exported service port.
pub fn federation_ingress_cluster(port: u32, host: &str) -> String {
    format!("inbound-federation|{port}||{host}")
}

/// The SNI a sidecar sends for an imported service port (Istio's spelling).
pub fn imported_sni(port: u32, host: &str) -> String {
    format!("outbound_.{port}_._.{host}")
}

/// The SNI an importing control plane sends its egress gateway for `peer`'s discovery.
pub fn discovery_sni(peer: &str) -> String {
    format!("discovery.{peer}.federation.local")
}

/// Between gateways, discovery is this name: the SNI and the CONNECT host (with the peer's
/// `discoveryPort`). An ingress gateway sends it to its own control plane.
pub const DISCOVERY_AUTHORITY: &str = "discovery.federation.local";
pub const FEDERATION_DISCOVERY_CLUSTER: &str = "federation-discovery";
