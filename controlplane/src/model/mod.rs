//! The mesh model: what the configuration means, independent of where it came from (YAML
//! directory or Kubernetes) and of how it is delivered (xDS). Built by a pure function from a
//! [`ConfigSnapshot`]; per-proxy xDS resources are computed from it by [`crate::xds::generate`].

pub mod cluster;
pub mod delegation;
pub mod federation;
pub mod imports;
pub mod ingress;
pub mod peers;
pub mod policy;
pub mod registry;
pub mod telemetry;
pub mod vips;
pub mod vs_gateways;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::Resource;
use isthmus_api::networking::{DestinationRuleSpec, VirtualServiceSpec};
use isthmus_identity::{SpiffeId, TrustDomain};

pub use policy::{InboundMtls, MtlsPolicy};
pub use registry::{
    Endpoint, Locality, ModelWarning, Port, Protocol, Service, ServiceKey, ServiceSource,
    build_registry,
};
pub use workload::{Interception, NodeError, NodeRole, ProxyNode, Workload};

use crate::config::{ConfigSnapshot, ResourceKey};

/// Istio's root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Everything the configuration says, indexed for per-proxy generation.
#[derive(Debug, Clone)]
pub struct MeshModel {
    pub trust_domain: TrustDomain,
    pub root_namespace: String,
    pub config: Arc<ConfigSnapshot>,
    pub services: BTreeMap<ServiceKey, Service>,
    /// Host name to the service that declared it first.
    pub hosts: BTreeMap<String, ServiceKey>,
    pub workloads: BTreeMap<(String, String), Workload>,
    /// (namespace, workload) to the services whose endpoints it is.
    pub services_of_workload: BTreeMap<(String, String), Vec<ServiceKey>>,
    /// Host name to the `VirtualService` that routes it (the first one, by key).
    pub routes: BTreeMap<String, (ResourceKey, VirtualServiceSpec)>,
    /// Host name to its `DestinationRule` (the first one, by key).
    pub destination_rules: BTreeMap<String, (ResourceKey, DestinationRuleSpec)>,
    /// Istio `Gateway`s by `<namespace>/<name>`.
    pub gateways: BTreeMap<String, (ResourceKey, isthmus_api::gateway::GatewaySpec)>,
    /// `VirtualService`s bound to at least one of those gateways, whole (each gateway takes
    /// its share with `vs_gateways::bound_to`).
    pub gateway_routes: Vec<(ResourceKey, VirtualServiceSpec)>,
    pub warnings: Vec<ModelWarning>,
    /// The usable `ServiceMeshPeer`s.
    pub peers: Vec<peers::Peer>,
    /// Per peer with an `ImportedServiceSet`: every name it offers and what the rules made of it.
    pub imports: BTreeMap<String, Vec<imports::ImportEntry>>,
    /// Where this control plane serves federation discovery, for its ingress gateways (set by
    /// whoever runs the model; not configuration).
    pub discovery_address: Option<String>,
    /// This control plane's own identity: the only local caller whose discovery stream the
    /// egress gateways carry to a peer (set by whoever runs the model; by default `isthmusd`
    /// in `isthmus-system`).
    pub control_plane_identity: Option<SpiffeId>,
    /// The mesh's name and trace export (set by whoever runs the model; not configuration).
    pub telemetry: telemetry::TelemetrySettings,
    /// The addresses allocated to services that declare none ([`vips`]; set by whoever runs
    /// the model with [`MeshModel::assign_virtual_addresses`]).
    pub virtual_addresses: vips::VipTable,
    /// The keys fetched for `RequestAuthentication` rules that name a `jwksUri`, by URI (set
    /// by whoever runs the model: `isthmusd`'s JWKS resolver).
    pub jwks: Arc<BTreeMap<String, String>>,
}

impl MeshModel {
    /// The model of `config`; odd but valid input becomes a warning, never an error.
    pub fn build(
        config: Arc<ConfigSnapshot>,
        trust_domain: &TrustDomain,
        root_namespace: &str,
    ) -> Self {
        Self::build_with_imports(
            config,
            &imports::RemoteCatalogs::new(),
            trust_domain,
            root_namespace,
        )
    }

    /// The model of `config` plus what peers export to us (`catalogs`, from discovery).
    pub fn build_with_imports(
        config: Arc<ConfigSnapshot>,
        catalogs: &imports::RemoteCatalogs,
        trust_domain: &TrustDomain,
        root_namespace: &str,
    ) -> Self {
        let (mut services, mut warnings) = build_registry(&config, trust_domain);
        let (mut peers, peer_warnings) = peers::peers(&config, root_namespace, trust_domain);
        for peer in &mut peers {
            peer.discovery_via = imports::egress_addresses(peer, root_namespace, &services);
        }
        warnings.extend(peer_warnings);
        let imports = imports::add_imports(
            &config,
            root_namespace,
            &peers,
            catalogs,
            &mut services,
            &mut warnings,
        );
        let mut hosts = BTreeMap::new();
        for key in services.keys() {
            hosts
                .entry(key.hostname.clone())
                .or_insert_with(|| key.clone());
        }
        let mut routes = BTreeMap::new();
        let mut destination_rules = BTreeMap::new();
        let gateways = ingress::gateways(&config);
        let mut gateway_routes = Vec::new();
        for (key, resource) in config.iter().map(|(k, r, _)| (k, r)) {
            match resource {
                Resource::VirtualService(vs) => {
                    // A delegate (no hosts) routes nothing by itself: its parents take it in.
                    if vs.spec.hosts.is_empty() {
                        continue;
                    }
                    let spec = delegation::expand(&config, key, &vs.spec, &mut warnings);
                    let (for_sidecars, named) = vs_gateways::for_sidecars(&key.namespace, &spec);
                    let unserved: Vec<&String> = named
                        .iter()
                        .filter(|g| !gateways.contains_key(*g))
                        .collect();
                    if !unserved.is_empty() {
                        warnings.push(ModelWarning {
                            resource: key.clone(),
                            message: format!(
                                "spec.gateways: no Gateway {} in the configuration: the routes bound to it apply to no proxy",
                                unserved
                                    .iter()
                                    .map(|g| g.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            ),
                        });
                    }
                    if named.len() > unserved.len() {
                        gateway_routes.push((key.clone(), spec.clone()));
                    }
                    let Some(spec) = for_sidecars else { continue };
                    for host in &spec.hosts {
                        claim(&mut routes, &mut warnings, host, key, &spec, "routes");
                    }
                }
                Resource::DestinationRule(dr) => {
                    if config.cluster().is_empty()
                        && let Some(name) = dr.spec.credential_names().next()
                    {
                        warnings.push(ModelWarning {
                            resource: key.clone(),
                            message: format!(
                                "tls.credentialName {name}: Secrets are read in Kubernetes mode only; the rule's TLS fails until it has one"
                            ),
                        });
                    }
                    claim(
                        &mut destination_rules,
                        &mut warnings,
                        &dr.spec.host,
                        key,
                        &dr.spec,
                        "traffic policy",
                    );
                }
                _ => {}
            }
        }
        let workloads = workload::build_workloads(&config, trust_domain);
        warnings.extend(ingress::credential_warnings(&config, &gateways, &workloads));
        let mut services_of_workload: BTreeMap<(String, String), Vec<ServiceKey>> = BTreeMap::new();
        for service in services.values() {
            for name in service
                .endpoints
                .iter()
                .filter_map(|e| e.workload_entry.as_ref())
            {
                let list = services_of_workload
                    .entry((service.key.namespace.clone(), name.clone()))
                    .or_default();
                if !list.contains(&service.key) {
                    list.push(service.key.clone());
                }
            }
        }
        Self {
            trust_domain: trust_domain.clone(),
            root_namespace: root_namespace.to_owned(),
            config,
            services,
            hosts,
            workloads,
            services_of_workload,
            routes,
            destination_rules,
            gateways,
            gateway_routes,
            warnings,
            peers,
            imports,
            discovery_address: None,
            control_plane_identity: SpiffeId::workload(
                trust_domain,
                peers::DEFAULT_CONTROL_PLANE_NAMESPACE,
                "isthmusd",
            )
            .ok(),
            telemetry: telemetry::TelemetrySettings::default(),
            virtual_addresses: vips::VipTable::new(),
            jwks: Arc::default(),
        }
    }

    /// Gives every service without addresses whose host `table` names that address, as if
    /// it had declared it: capture chains and the DNS name table then see it like any other.
    pub fn assign_virtual_addresses(&mut self, table: &vips::VipTable) {
        for service in self.services.values_mut() {
            if let Some(ip) = table.get(&service.key.hostname)
                && service.addresses.is_empty()
            {
                service.addresses = vec![ip.to_string()];
            }
        }
        self.virtual_addresses = table.clone();
    }

    pub fn service_of_host(&self, host: &str) -> Option<&Service> {
        self.hosts.get(host).and_then(|k| self.services.get(k))
    }

    /// The mTLS policy of `workload`'s inbound ports.
    pub fn mtls_policy(&self, workload: &Workload) -> MtlsPolicy {
        policy::mtls_policy(&self.config, &self.root_namespace, workload)
    }

    pub fn authorization_policies(
        &self,
        workload: &Workload,
    ) -> Vec<(
        &ResourceKey,
        &isthmus_api::security::AuthorizationPolicySpec,
    )> {
        policy::authorization_policies(&self.config, &self.root_namespace, workload)
    }

    /// The JWT rules of every `RequestAuthentication` that applies to `workload`.
    pub fn jwt_rules(&self, workload: &Workload) -> Vec<&isthmus_api::security::JwtRule> {
        policy::request_authentications(&self.config, &self.root_namespace, workload)
            .into_iter()
            .flat_map(|(_, p)| &p.jwt_rules)
            .collect()
    }
}

fn claim<T: Clone>(
    map: &mut BTreeMap<String, (ResourceKey, T)>,
    warnings: &mut Vec<ModelWarning>,
    host: &str,
    key: &ResourceKey,
    value: &T,
    what: &str,
) {
    if let Some((first, _)) = map.get(host) {
        warnings.push(ModelWarning {
            resource: key.clone(),
            message: format!("the {what} of host {host} are already set by {first}; ignored"),
        });
        return;
    }
    map.insert(host.to_owned(), (key.clone(), value.clone()));
}
