//! The service registry: services and their endpoints, from `ServiceEntry` and `WorkloadEntry`
//! (local mode's registry), and from Kubernetes `Service`s and `EndpointSlice`s ([`super::cluster`]).
//!
//! Istio's rules, as users know them:
//! - one service per host of a `ServiceEntry`, in the entry's namespace;
//! - endpoints are the entry's inline `endpoints`, or the `WorkloadEntry`s of the same namespace
//!   whose labels match its `workloadSelector`;
//! - an endpoint's port for a service port is `ports[<port name>]`, else the port's
//!   `targetPort`, else its number;
//! - the protocol is the port's `protocol`, else the prefix of its name (`http-web` is HTTP),
//!   else TCP;
//! - `resolution: DNS` without endpoints resolves the host itself;
//! - an endpoint's identity is `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>` (`default`
//!   when unset); a host resolved by DNS has none.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::networking::{
    Location, Resolution, ServiceEntry, WorkloadEntry, WorkloadEntrySpec,
};
use isthmus_identity::{SpiffeId, TrustDomain};

use crate::config::{ConfigSnapshot, ResourceKey};

/// A service, by namespace and host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" | "grpc-web" => Self::Grpc,
            "https" => Self::Https,
            "tls" => Self::Tls,
            // Istio carries these as opaque TCP unless a protocol filter is on.
            "tcp" | "mongo" | "redis" | "mysql" => Self::Tcp,
            _ => return None,
        })
    }

    /// Istio's name of the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Https => "HTTPS",
            Self::Tls => "TLS",
            Self::Tcp => "TCP",
        }
    }

    /// Whether requests are routed at L7 (HTTP routes apply).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    pub target_port: Option<u32>,
}

/// `region/zone/subzone`, each part possibly empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(s: &str) -> Self {
        let mut parts = s.split('/').map(str::to_owned);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

/// Labels, shared: a pod's are the same map in its workload and in every endpoint it is (and
/// a cluster's pods are many).
pub type Labels = Arc<BTreeMap<String, String>>;

/// Service port name to an endpoint's port, shared by the endpoints of one `EndpointSlice`.
pub type EndpointPorts = Arc<BTreeMap<String, u32>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or DNS name.
    pub address: String,
    /// Service port name to the endpoint's port.
    pub ports: EndpointPorts,
    pub labels: Labels,
    pub locality: Locality,
    pub weight: u32,
    /// The workload's SPIFFE ID; `None` for an endpoint resolved from a DNS name (outside the
    /// mesh, no mesh identity).
    pub identity: Option<SpiffeId>,
    pub network: Option<String>,
    /// `WorkloadEntry` it came from, if any.
    pub workload_entry: Option<String>,
    /// The peer this endpoint leads to (a local egress gateway standing for a peer's
    /// service): never a destination for traffic that came from a peer.
    pub via_peer: Option<String>,
}

impl Endpoint {
    /// The endpoint's port for `port` of its service: named in the endpoint, else the port's
    /// `targetPort`, else its number (Istio's rule).
    pub fn port_for(&self, port: &Port) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// Virtual addresses (`ServiceEntry.addresses`: IPs or CIDR ranges), by which captured
    /// traffic is recognised as going to this service.
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub location: Location,
    pub resolution: Resolution,
    pub endpoints: Vec<Endpoint>,
    pub export_to: Vec<String>,
    /// What declared it.
    pub source: ServiceSource,
    /// The peer it was imported from: such a service is never exported.
    pub imported_from: Option<String>,
    /// For an imported service: how the peer exports it.
    pub remote: Option<RemoteService>,
    /// For a local service that peers' copies join (`importAsLocal`): how each exports it.
    pub failover: Vec<RemoteService>,
}

/// What declared a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSource {
    /// A `ServiceEntry` (for an imported service, the `ImportedServiceSet`).
    Config(ResourceKey),
    /// A Kubernetes `Service`, with its labels (export rules select on them).
    Kubernetes {
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
    },
}

impl ServiceSource {
    /// The declaring object's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Config(key) => &key.name,
            Self::Kubernetes { name, .. } => name,
        }
    }
}

impl std::fmt::Display for ServiceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(key) => write!(f, "{key}"),
            Self::Kubernetes {
                namespace, name, ..
            } => write!(f, "Service {namespace}/{name}"),
        }
    }
}

impl Service {
    /// What declared it, as messages name it.
    pub fn to_string_source(&self) -> String {
        self.source.to_string()
    }
}

/// An imported service as its peer exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteService {
    pub peer: String,
    /// `<name>.<ns>.svc.<us>-exports.local`: the target of the gateways' tunnel.
    pub exported_host: String,
    /// The SPIFFE IDs its endpoints present: callers verify them end to end.
    pub identities: Vec<String>,
}

/// Something that is valid alone but odd in context; reported in status, not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelWarning {
    pub resource: ResourceKey,
    pub message: String,
}

/// Builds every service of the snapshot. `trust_domain` names the endpoints' identities.
pub fn build_registry(
    snapshot: &ConfigSnapshot,
    trust_domain: &TrustDomain,
) -> (BTreeMap<ServiceKey, Service>, Vec<ModelWarning>) {
    let mut services = BTreeMap::new();
    let mut warnings = Vec::new();
    // Kubernetes `Service`s first: a `ServiceEntry` of the same host and namespace is the
    // duplicate.
    // A Kubernetes Service's host belongs to its namespace: a `ServiceEntry` elsewhere that
    // declares it is ignored, or any namespace could take over another's service.
    let mut cluster_hosts: BTreeMap<String, String> = BTreeMap::new();
    for service in super::cluster::services(snapshot.cluster(), trust_domain) {
        cluster_hosts.insert(service.key.hostname.clone(), service.key.namespace.clone());
        services.insert(service.key.clone(), service);
    }
    let workload_entries: Vec<(&ResourceKey, &WorkloadEntrySpec)> = snapshot
        .of_type::<WorkloadEntry>()
        .map(|(k, w)| (k, &w.spec))
        .collect();

    for (entry_key, entry) in snapshot.of_type::<ServiceEntry>() {
        let ports = entry.spec.ports.iter().map(port).collect::<Vec<_>>();
        let endpoints = endpoints_of(
            entry_key,
            entry,
            &workload_entries,
            trust_domain,
            &mut warnings,
        );
        for host in &entry.spec.hosts {
            if let Some(owner) = cluster_hosts
                .get(host)
                .filter(|owner| **owner != entry_key.namespace)
            {
                warnings.push(ModelWarning {
                    resource: entry_key.clone(),
                    message: format!(
                        "host {host} is the Kubernetes Service of namespace {owner}: only a ServiceEntry in {owner} may declare it; ignored"
                    ),
                });
                continue;
            }
            let key = ServiceKey {
                namespace: entry_key.namespace.clone(),
                hostname: host.clone(),
            };
            let mut endpoints = endpoints.clone();
            if endpoints.is_empty() && entry.spec.resolution == Resolution::Dns {
                endpoints.push(dns_endpoint(host));
            }
            let service = Service {
                key: key.clone(),
                addresses: entry.spec.addresses.clone(),
                ports: ports.clone(),
                location: entry.spec.location,
                resolution: entry.spec.resolution,
                endpoints,
                export_to: entry.spec.export_to.clone(),
                source: ServiceSource::Config(entry_key.clone()),
                imported_from: None,
                remote: None,
                failover: Vec::new(),
            };
            if let Some(existing) = services.get(&key) {
                let existing: &Service = existing;
                warnings.push(ModelWarning {
                    resource: entry_key.clone(),
                    message: format!(
                        "host {host} is already declared by {}; this declaration is ignored",
                        existing.source
                    ),
                });
                continue;
            }
            services.insert(key, service);
        }
    }
    (services, warnings)
}

fn port(p: &isthmus_api::networking::ServicePort) -> Port {
    let protocol = p
        .protocol
        .as_deref()
        .and_then(Protocol::from_name)
        .or_else(|| {
            // Istio's naming convention: `<protocol>[-<suffix>]`.
            let prefix = p.name.split('-').next().unwrap_or_default();
            Protocol::from_name(prefix)
        })
        .unwrap_or(Protocol::Tcp);
    Port {
        name: p.name.clone(),
        number: p.number,
        protocol,
        target_port: p.target_port,
    }
}

fn endpoints_of(
    entry_key: &ResourceKey,
    entry: &ServiceEntry,
    workload_entries: &[(&ResourceKey, &WorkloadEntrySpec)],
    td: &TrustDomain,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<Endpoint> {
    let ns = &entry_key.namespace;
    let spec = &entry.spec;
    let resolve = |w: &WorkloadEntrySpec, from: Option<&ResourceKey>| {
        // Without an address there is nothing to send traffic to (auto-registration is not
        // supported); the selection warning below says so when nothing is left.
        let address = w.address.clone()?;
        let ports = spec
            .ports
            .iter()
            .map(|p| {
                let number = w
                    .ports
                    .get(&p.name)
                    .copied()
                    .or(p.target_port)
                    .unwrap_or(p.number);
                (p.name.clone(), number)
            })
            .collect::<BTreeMap<_, _>>();
        let sa = w.service_account.as_deref().unwrap_or("default");
        let namespace = from.map_or(ns.as_str(), |k| k.namespace.as_str());
        let identity = SpiffeId::workload(td, namespace, sa).ok();
        Some(Endpoint {
            address,
            ports: Arc::new(ports),
            labels: Arc::new(w.labels.clone()),
            locality: w
                .locality
                .as_deref()
                .map(Locality::parse)
                .unwrap_or_default(),
            weight: w.weight.unwrap_or(1),
            identity,
            network: w.network.clone(),
            workload_entry: from.map(|k| k.name.clone()),
            via_peer: None,
        })
    };

    let Some(selector) = &spec.workload_selector else {
        return spec
            .endpoints
            .iter()
            .filter_map(|e| resolve(e, None))
            .collect();
    };
    let selected: Vec<Endpoint> = workload_entries
        .iter()
        .filter(|(k, w)| {
            &k.namespace == ns
                && selector
                    .labels
                    .iter()
                    .all(|(lk, lv)| w.labels.get(lk) == Some(lv))
        })
        .filter_map(|(k, w)| resolve(w, Some(k)))
        .collect();
    if selected.is_empty() {
        warnings.push(ModelWarning {
            resource: entry_key.clone(),
            message: "workloadSelector matches no WorkloadEntry with an address in this namespace"
                .to_owned(),
        });
    }
    selected
}

fn dns_endpoint(host: &str) -> Endpoint {
    Endpoint {
        address: host.to_owned(),
        ports: EndpointPorts::default(),
        labels: Labels::default(),
        locality: Locality::default(),
        weight: 1,
        identity: None,
        network: None,
        workload_entry: None,
        via_peer: None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_text;

    fn registry(yaml: &str) -> (BTreeMap<ServiceKey, Service>, Vec<ModelWarning>) {
        let snapshot = load_text(yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        build_registry(&snapshot, &TrustDomain::new("red.local").unwrap())
    }

    fn key(ns: &str, host: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            hostname: host.into(),
        }
    }

    const RATINGS: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local, ratings.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http-api}
  - {number: 9090, name: admin, protocol: GRPC, targetPort: 19090}
  - {number: 7000, name: data}
  endpoints:
  - {address: 127.0.0.1, ports: {http-api: 19080}, labels: {version: v1}, locality: red/a, serviceAccount: ratings}
  - {address: 127.0.0.2, weight: 3}
";

    #[test]
    fn inline_endpoints_ports_protocols_and_identities() {
        let (services, warnings) = registry(RATINGS);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(services.len(), 2, "one service per host");
        let s = &services[&key("bookinfo", "ratings.bookinfo.svc.cluster.local")];
        let protocols: Vec<_> = s
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol))
            .collect();
        assert_eq!(
            protocols,
            [
                ("http-api", Protocol::Http),
                ("admin", Protocol::Grpc),
                ("data", Protocol::Tcp)
            ]
        );
        let [a, b] = s.endpoints.as_slice() else {
            panic!("{:?}", s.endpoints)
        };
        // Port by name, else targetPort, else the service port.
        assert_eq!(a.ports["http-api"], 19080);
        assert_eq!(a.ports["admin"], 19090);
        assert_eq!(a.ports["data"], 7000);
        assert_eq!(b.ports["http-api"], 9080);
        assert_eq!(
            a.locality,
            Locality {
                region: "red".into(),
                zone: "a".into(),
                subzone: String::new()
            }
        );
        assert_eq!(
            a.identity.as_ref().unwrap().to_string(),
            "spiffe://red.local/ns/bookinfo/sa/ratings"
        );
        assert_eq!(
            b.identity.as_ref().unwrap().to_string(),
            "spiffe://red.local/ns/bookinfo/sa/default"
        );
        assert_eq!((a.weight, b.weight), (1, 3));
    }

    #[test]
    fn workload_selector_picks_workload_entries_of_the_same_namespace() {
        let yaml = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: bookinfo}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}, serviceAccount: reviews, ports: {http: 18080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-other-ns, namespace: other}
spec: {address: 127.0.0.12, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details, namespace: bookinfo}
spec: {address: 127.0.0.13, labels: {app: details}}
";
        let (services, warnings) = registry(yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        let s = &services[&key("bookinfo", "reviews.local")];
        assert_eq!(s.endpoints.len(), 1);
        let e = &s.endpoints[0];
        assert_eq!((e.address.as_str(), e.ports["http"]), ("127.0.0.11", 18080));
        assert_eq!(e.workload_entry.as_deref(), Some("reviews-v1"));
        assert_eq!(e.labels["version"], "v1");
    }

    #[test]
    fn dns_resolution_without_endpoints_resolves_the_host_and_has_no_identity() {
        let yaml = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  resolution: DNS
  ports: [{number: 443, name: https}]
";
        let (services, _) = registry(yaml);
        let s = &services[&key("default", "httpbin.org")];
        assert_eq!(s.location, Location::MeshExternal);
        assert_eq!(s.ports[0].protocol, Protocol::Https);
        assert_eq!(s.endpoints[0].address, "httpbin.org");
        assert!(s.endpoints[0].identity.is_none());
    }

    #[test]
    fn conflicts_and_empty_selections_are_warned_about() {
        let yaml = format!(
            "{RATINGS}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings-again, namespace: bookinfo}}
spec:
  hosts: [ratings.local]
  ports: [{{number: 1, name: tcp}}]
  workloadSelector: {{labels: {{app: nothing}}}}
"
        );
        let (services, warnings) = registry(&yaml);
        assert_eq!(
            services[&key("bookinfo", "ratings.local")].to_string_source(),
            "ServiceEntry bookinfo/ratings",
            "first declaration wins"
        );
        let messages: Vec<_> = warnings
            .iter()
            .map(|w| format!("{}: {}", w.resource, w.message))
            .collect();
        assert!(
            messages.iter().any(|m| m.contains(
                "ServiceEntry bookinfo/ratings-again: workloadSelector matches no WorkloadEntry"
            )),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains(
                "host ratings.local is already declared by ServiceEntry bookinfo/ratings"
            )),
            "{messages:?}"
        );
    }
}
