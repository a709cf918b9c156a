//! Workloads (from `WorkloadEntry`, and in Kubernetes mode `Pod`s) and the proxies that speak
//! for them.
//!
//! A proxy names its workload in its xDS node id, in Istio's format
//! `sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`, so that tools which
//! read Istio node ids keep working. Node metadata carries what a `WorkloadEntry` cannot say in
//! local mode (where the application listens, which local port the sidecar's outbound listener
//! uses); see [`ProxyNode::from_metadata`].

use std::collections::BTreeMap;

use isthmus_api::networking::{WorkloadEntry, WorkloadEntrySpec};
use isthmus_identity::{SpiffeId, TrustDomain};

use super::registry::Locality;
use crate::config::ConfigSnapshot;

/// A workload: one `WorkloadEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// Where the workload's sidecar accepts mesh traffic.
    pub address: String,
    pub labels: super::registry::Labels,
    pub service_account: String,
    pub identity: SpiffeId,
    pub locality: Locality,
}

/// Every workload, by (namespace, name).
pub fn build_workloads(
    snapshot: &ConfigSnapshot,
    td: &TrustDomain,
) -> BTreeMap<(String, String), Workload> {
    let mut workloads = super::cluster::workloads(snapshot.cluster(), td);
    for (key, entry) in snapshot.of_type::<WorkloadEntry>() {
        // A Pod of the same name keeps its workload: a `WorkloadEntry` cannot stand in for a
        // running pod (its identity and address come from the pod).
        if let Some(w) = workload(&key.namespace, &key.name, &entry.spec, td) {
            workloads
                .entry((key.namespace.clone(), key.name.clone()))
                .or_insert(w);
        }
    }
    workloads
}

fn workload(
    namespace: &str,
    name: &str,
    spec: &WorkloadEntrySpec,
    td: &TrustDomain,
) -> Option<Workload> {
    let service_account = spec
        .service_account
        .clone()
        .unwrap_or_else(|| "default".into());
    Some(Workload {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        address: spec.address.clone()?,
        labels: std::sync::Arc::new(spec.labels.clone()),
        identity: SpiffeId::workload(td, namespace, &service_account).ok()?,
        service_account,
        locality: spec
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default(),
    })
}

/// A connected proxy, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyNode {
    pub id: String,
    /// `sidecar`, or `router` for a gateway (Istio's node types).
    pub role: NodeRole,
    pub namespace: String,
    pub workload: String,
    /// Service port name (or inbound port number) to the application's local port, from the
    /// `APP_PORTS` metadata (`http=8080,grpc=9090`). Unlisted ports reach the application on
    /// the same port number.
    pub app_ports: BTreeMap<String, u32>,
    /// The application's address, from `APP_ADDRESS`; `127.0.0.1` by default.
    pub app_address: String,
    /// The local port of the outbound HTTP listener (the application's HTTP proxy), from
    /// `OUTBOUND_PORT`; 15001 by default.
    pub outbound_port: u32,
    /// Where the outbound listener binds, from `OUTBOUND_ADDRESS`; `127.0.0.1` by default.
    pub outbound_address: String,
    /// How the application's traffic reaches the proxy, from `INTERCEPTION_MODE`.
    pub interception: Interception,
    /// Local ports for TCP services (explicit mode), from `OUTBOUND_TCP_PORTS`
    /// (`db.shop.local:5432=15432,…`): (host, service port) -> local port.
    pub outbound_tcp_ports: BTreeMap<(String, u32), u32>,
    /// A proxyless gRPC client with gRPC's xDS credentials and a `default` certificate
    /// provider in its bootstrap (`ISTHMUS_XDS_CREDENTIALS: true`): its clusters originate mTLS.
    pub xds_credentials: bool,
}

/// What kind of proxy a node is, from the first part of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NodeRole {
    #[default]
    Sidecar,
    /// A gateway: in Isthmus, a federation ingress or egress gateway of some peer.
    Router,
    /// A proxyless gRPC client: a `sidecar~` node whose metadata says `GENERATOR: grpc`
    /// (Istio's), gRPC's own xDS client in the application.
    Proxyless,
}

/// How traffic reaches a sidecar (Istio's `INTERCEPTION_MODE` node metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Interception {
    /// `NONE` (the default): the application uses the outbound listener as its HTTP proxy,
    /// and callers reach the inbound listeners bound on the workload's address.
    #[default]
    Explicit,
    /// `REDIRECT`: iptables redirects the pod's outbound TCP to the outbound port (15001) and
    /// its inbound TCP to 15006; the proxy reads each connection's original destination.
    Redirect,
}

/// Why a node id or its metadata cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {id:?}: {reason}")]
pub struct NodeError {
    pub id: String,
    pub reason: String,
}

impl ProxyNode {
    /// Parses `sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.<domain>` and the metadata.
    pub fn from_metadata(id: &str, metadata: &BTreeMap<String, String>) -> Result<Self, NodeError> {
        let err = |reason: String| NodeError {
            id: id.to_owned(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [role, _ip, workload_ns, domain] = parts.as_slice() else {
            return Err(err(
                "expected <role>~<ip>~<workload>.<namespace>~<namespace>.svc.<domain>".into(),
            ));
        };
        let role = match *role {
            "sidecar" => NodeRole::Sidecar,
            "router" => NodeRole::Router,
            other => {
                return Err(err(format!(
                    "role {other:?} is not supported (sidecar, router)"
                )));
            }
        };
        // `isthmus-proxy --role` says what it was started as; it must agree with the id (a
        // stock Envoy sends no such key).
        match (role, metadata.get("ISTHMUS_ROLE").map(String::as_str)) {
            (_, None)
            | (NodeRole::Sidecar, Some("sidecar"))
            | (NodeRole::Router, Some("federation" | "ingress" | "egress")) => {}
            (_, Some(started_as)) => {
                return Err(err(format!(
                    "ISTHMUS_ROLE {started_as:?} does not fit a {} node id (sidecar: --role sidecar; router~: a gateway, --role federation or ingress)",
                    if role == NodeRole::Router {
                        "router~"
                    } else {
                        "sidecar~"
                    }
                )));
            }
        }
        let role = match metadata.get("GENERATOR").map(String::as_str) {
            Some("grpc") if role == NodeRole::Sidecar => NodeRole::Proxyless,
            Some("grpc") => {
                return Err(err(
                    "metadata GENERATOR \"grpc\" (a proxyless gRPC client) needs a sidecar~ node id"
                        .into(),
                ));
            }
            _ => role,
        };
        let namespace = domain.split('.').next().unwrap_or_default();
        let workload = workload_ns
            .strip_suffix(&format!(".{namespace}"))
            .filter(|w| !w.is_empty() && !namespace.is_empty())
            .ok_or_else(|| {
                err(format!(
                    "{workload_ns:?} is not <workload>.{namespace} (the namespace of {domain:?})"
                ))
            })?;
        let mut app_ports = BTreeMap::new();
        if let Some(spec) = metadata.get("APP_PORTS") {
            for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (name, port) = pair
                    .split_once('=')
                    .ok_or_else(|| err(format!("metadata APP_PORTS: {pair:?} is not name=port")))?;
                let port = parse_port(port)
                    .ok_or_else(|| err(format!("metadata APP_PORTS: {port:?} is not a port")))?;
                app_ports.insert(name.trim().to_owned(), port);
            }
        }
        let outbound_port = match metadata.get("OUTBOUND_PORT") {
            Some(p) => parse_port(p)
                .ok_or_else(|| err(format!("metadata OUTBOUND_PORT: {p:?} is not a port")))?,
            None => 15001,
        };
        let address = |key: &str| -> Result<String, NodeError> {
            match metadata.get(key) {
                Some(a) if a.parse::<std::net::IpAddr>().is_ok() => Ok(a.clone()),
                Some(a) => Err(err(format!("metadata {key}: {a:?} is not an IP address"))),
                None => Ok("127.0.0.1".into()),
            }
        };
        let interception = match metadata.get("INTERCEPTION_MODE").map(String::as_str) {
            None | Some("NONE") => Interception::Explicit,
            Some("REDIRECT") => Interception::Redirect,
            Some(other) => {
                return Err(err(format!(
                    "metadata INTERCEPTION_MODE: {other:?} is not supported (NONE, REDIRECT)"
                )));
            }
        };
        let mut outbound_tcp_ports = BTreeMap::new();
        if let Some(spec) = metadata.get("OUTBOUND_TCP_PORTS") {
            for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let parsed = pair.split_once('=').and_then(|(service, local)| {
                    let (host, port) = service.trim().rsplit_once(':')?;
                    Some((host.to_owned(), parse_port(port)?, parse_port(local)?))
                });
                let (host, port, local) = parsed.ok_or_else(|| {
                    err(format!(
                        "metadata OUTBOUND_TCP_PORTS: {pair:?} is not host:port=local-port"
                    ))
                })?;
                outbound_tcp_ports.insert((host, port), local);
            }
        }
        Ok(Self {
            id: id.to_owned(),
            role,
            interception,
            outbound_tcp_ports,
            xds_credentials: role == NodeRole::Proxyless
                && metadata
                    .get("ISTHMUS_XDS_CREDENTIALS")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            namespace: namespace.to_owned(),
            workload: (*workload).to_owned(),
            app_ports,
            app_address: address("APP_ADDRESS")?,
            outbound_port,
            outbound_address: address("OUTBOUND_ADDRESS")?,
        })
    }
}

fn parse_port(s: &str) -> Option<u32> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(u32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn istio_node_ids_and_metadata() {
        let node = ProxyNode::from_metadata(
            "sidecar~127.0.0.11~reviews-v1.bookinfo~bookinfo.svc.cluster.local",
            &meta(&[
                ("APP_PORTS", "http=18080, 9090=19090"),
                ("OUTBOUND_PORT", "15101"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (node.namespace.as_str(), node.workload.as_str()),
            ("bookinfo", "reviews-v1")
        );
        assert_eq!(node.app_ports["http"], 18080);
        assert_eq!(node.app_ports["9090"], 19090);
        assert_eq!(node.outbound_port, 15101);
        assert_eq!(node.app_address, "127.0.0.1");
        assert_eq!(node.interception, Interception::Explicit);
        let captured = ProxyNode::from_metadata(
            "sidecar~10.0.0.2~w.ns~ns.svc.cluster.local",
            &meta(&[("INTERCEPTION_MODE", "REDIRECT")]),
        )
        .unwrap();
        assert_eq!(captured.interception, Interception::Redirect);
        let tcp = ProxyNode::from_metadata(
            "sidecar~10.0.0.2~w.ns~ns.svc.cluster.local",
            &meta(&[(
                "OUTBOUND_TCP_PORTS",
                "db.shop.local:5432=15432, cache.shop.local:6379=16379",
            )]),
        )
        .unwrap();
        assert_eq!(
            tcp.outbound_tcp_ports[&("db.shop.local".to_owned(), 5432)],
            15432
        );
        assert_eq!(tcp.outbound_tcp_ports.len(), 2);

        // A workload name with dots keeps them.
        let node =
            ProxyNode::from_metadata("sidecar~1.2.3.4~a.b.ns~ns.svc.cluster.local", &meta(&[]))
                .unwrap();
        assert_eq!(node.workload, "a.b");
    }

    #[test]
    fn bad_node_ids_and_metadata_say_why() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("just-a-name", &[], "expected <role>~<ip>"),
            (
                "router~1.2.3.4~gw.ns~ns.svc.cluster.local",
                &[("ISTHMUS_ROLE", "sidecar")],
                "ISTHMUS_ROLE \"sidecar\" does not fit a router~ node id",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("ISTHMUS_ROLE", "federation")],
                "ISTHMUS_ROLE \"federation\" does not fit a sidecar~ node id",
            ),
            (
                "waypoint~1.2.3.4~gw.ns~ns.svc.cluster.local",
                &[],
                "role \"waypoint\" is not supported (sidecar, router)",
            ),
            (
                "sidecar~1.2.3.4~gw.other~ns.svc.cluster.local",
                &[],
                "is not <workload>.ns",
            ),
            (
                "sidecar~1.2.3.4~.ns~ns.svc.cluster.local",
                &[],
                "is not <workload>.ns",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("APP_PORTS", "http")],
                "APP_PORTS: \"http\" is not name=port",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("OUTBOUND_PORT", "70000")],
                "OUTBOUND_PORT: \"70000\" is not a port",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("APP_ADDRESS", "localhost")],
                "APP_ADDRESS: \"localhost\" is not an IP address",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("OUTBOUND_TCP_PORTS", "db.shop.local=15432")],
                "OUTBOUND_TCP_PORTS: \"db.shop.local=15432\" is not host:port=local-port",
            ),
            (
                "sidecar~1.2.3.4~w.ns~ns.svc.cluster.local",
                &[("INTERCEPTION_MODE", "TPROXY")],
                "INTERCEPTION_MODE: \"TPROXY\" is not supported",
            ),
        ];
        for (id, metadata, expected) in cases {
            let error = ProxyNode::from_metadata(id, &meta(metadata)).unwrap_err();
            assert!(error.to_string().contains(expected), "{id}: {error}");
        }
    }
}
