//! Ingress gateways: Istio `Gateway`s, the gateway workloads their selectors pick, and the
//! `VirtualService`s bound to them (pure; `xds/generate/ingress.rs` turns this into listeners).
//!
//! A `Gateway` with an empty selector picks no workload (Istio's would pick every gateway
//! workload of the mesh; naming the workloads is the safer reading). A workload picked by
//! several `Gateway`s serves all their servers.

use std::collections::BTreeMap;

use isthmus_api::gateway::{GatewaySpec, Server, ServerTlsMode};
use isthmus_api::networking::VirtualServiceSpec;

use super::{MeshModel, ModelWarning, Workload, vs_gateways};
use crate::config::{ConfigSnapshot, ResourceKey};

/// Every `Gateway`, by `<namespace>/<name>`.
pub fn gateways(config: &ConfigSnapshot) -> BTreeMap<String, (ResourceKey, GatewaySpec)> {
    config
        .of_type::<isthmus_api::gateway::Gateway>()
        .map(|(key, gw)| {
            (
                format!("{}/{}", key.namespace, key.name),
                (key.clone(), gw.spec.clone()),
            )
        })
        .collect()
}

/// One server of a `Gateway` that a workload serves.
#[derive(Debug, Clone)]
pub struct IngressServer<'m> {
    /// `<namespace>/<name>` of its `Gateway`.
    pub gateway: &'m str,
    pub gateway_namespace: &'m str,
    /// The namespace of the gateway workload serving it (what `exportTo` is checked for).
    pub workload_namespace: &'m str,
    /// Its index in `spec.servers`.
    pub index: usize,
    pub server: &'m Server,
}

impl IngressServer<'_> {
    /// A name for what is generated from this server, unique on the workload:
    /// `<index>.<gateway name>.<gateway namespace>` (a namespace has no dots, so no two
    /// gateways' names can meet; the index, not the server's own name, which may be anything).
    pub fn id(&self) -> String {
        let (namespace, name) = self.gateway.split_once('/').unwrap_or(("", self.gateway));
        format!("{}.{name}.{namespace}", self.index)
    }

    /// The `VirtualService`s bound to this server's gateway and visible to its namespace
    /// (`exportTo`), each with the part bound to it and the hosts of it the server serves
    /// (the narrower pattern of each pair, [`Server::serves`]).
    pub fn routes<'m>(
        &self,
        model: &'m MeshModel,
    ) -> Vec<(&'m ResourceKey, VirtualServiceSpec, Vec<String>)> {
        model
            .gateway_routes
            .iter()
            .filter(|(key, spec)| {
                exported_to(&spec.export_to, &key.namespace, self.workload_namespace)
            })
            .filter_map(|(key, spec)| {
                let part = vs_gateways::bound_to(&key.namespace, spec, self.gateway)?;
                let mut hosts: Vec<String> = Vec::new();
                for host in &part.hosts {
                    for served in self
                        .server
                        .serves(self.gateway_namespace, &key.namespace, host)
                    {
                        if !hosts.contains(&served) {
                            hosts.push(served);
                        }
                    }
                }
                (!hosts.is_empty()).then_some((key, part, hosts))
            })
            .collect()
    }
}

/// Whether a resource of `namespace` with `exportTo` is visible in `to` (Istio: none or `*`
/// is everywhere, `.` its own namespace).
pub(crate) fn exported_to(export_to: &[String], namespace: &str, to: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == to || (e == "." && namespace == to))
}

/// The servers `workload` serves, in (gateway, index) order.
pub fn servers_of<'m>(model: &'m MeshModel, workload: &'m Workload) -> Vec<IngressServer<'m>> {
    let mut out = Vec::new();
    for (name, (key, spec)) in &model.gateways {
        if !picks(spec, workload) {
            continue;
        }
        for (index, server) in spec.servers.iter().enumerate() {
            out.push(IngressServer {
                gateway: name,
                gateway_namespace: &key.namespace,
                workload_namespace: &workload.namespace,
                index,
                server,
            });
        }
    }
    out
}

/// A warning for each `Gateway` server whose `credentialName` a picked workload's namespace
/// cannot serve (no such `Secret`, or no certificate and key in it, or no roots for
/// `MUTUAL`): that server is not served by that workload.
pub fn credential_warnings(
    config: &ConfigSnapshot,
    gateways: &BTreeMap<String, (ResourceKey, GatewaySpec)>,
    workloads: &BTreeMap<(String, String), Workload>,
) -> Vec<ModelWarning> {
    let mut out = Vec::new();
    for (key, spec) in gateways.values() {
        for workload in workloads.values().filter(|w| picks(spec, w)) {
            for (i, server) in spec.servers.iter().enumerate() {
                let Some(tls) = &server.tls else { continue };
                let Some(name) = &tls.credential_name else {
                    continue;
                };
                let mutual = server.tls_mode() == Some(ServerTlsMode::Mutual);
                let found = config.cluster().credential(&workload.namespace, name);
                let usable = found.as_ref().is_some_and(|c| {
                    c.certificate_chain.is_some()
                        && c.private_key.is_some()
                        && (!mutual || c.roots.is_some())
                });
                if usable {
                    continue;
                }
                let needs = if mutual {
                    "tls.crt, tls.key and ca.crt (or a Secret <name>-cacert)"
                } else {
                    "tls.crt and tls.key"
                };
                out.push(ModelWarning {
                    resource: key.clone(),
                    message: format!(
                        "spec.servers[{i}].tls.credentialName: no Secret {}/{name} with {needs} for the gateway workload {}/{}{}: the server is not served there",
                        workload.namespace,
                        workload.namespace,
                        workload.name,
                        if config.cluster().is_empty() {
                            " (Secrets are read in Kubernetes mode only)"
                        } else {
                            ""
                        },
                    ),
                });
            }
        }
    }
    out
}

/// Whether `spec`'s selector picks `workload` (an empty selector picks none).
fn picks(spec: &GatewaySpec, workload: &Workload) -> bool {
    !spec.selector.is_empty()
        && spec
            .selector
            .iter()
            .all(|(k, v)| workload.labels.get(k) == Some(v))
}
