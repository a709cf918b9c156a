//! Ingress gateways: Istio `Gateway`s, the gateway workloads their selectors pick, and the
//! `VirtualService`s bound to them (pure; `xds/generate/ingress.rs` turns this into listeners).
//!
//! A `Gateway` with an empty selector picks no workload (Istio's would pick every gateway
//! workload of the mesh; naming the workloads is the safer reading). A workload picked by
//! several `Gateway`s serves all their servers.

use std::collections::BTreeMap;

use isthmus_api::gateway::{GatewaySpec, Server};
use isthmus_api::networking::VirtualServiceSpec;

use super::{MeshModel, Workload, vs_gateways};
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
    /// Its index in `spec.servers`.
    pub index: usize,
    pub server: &'m Server,
}

impl IngressServer<'_> {
    /// A name for what is generated from this server, unique on the workload: the server's
    /// `name` when it has one, else its index, with its gateway.
    pub fn id(&self) -> String {
        let gateway = self.gateway.replace('/', ".");
        match &self.server.name {
            Some(name) => format!("{gateway}.{name}"),
            None => format!("{gateway}.{}", self.index),
        }
    }

    /// The `VirtualService`s bound to this server's gateway, each with the part bound to it,
    /// keeping those with a host the server accepts.
    pub fn routes<'m>(
        &self,
        model: &'m MeshModel,
    ) -> Vec<(&'m ResourceKey, VirtualServiceSpec, Vec<String>)> {
        model
            .gateway_routes
            .iter()
            .filter_map(|(key, spec)| {
                let part = vs_gateways::bound_to(&key.namespace, spec, self.gateway)?;
                let hosts: Vec<String> = part
                    .hosts
                    .iter()
                    .filter(|h| {
                        self.server
                            .accepts(self.gateway_namespace, &key.namespace, h)
                    })
                    .cloned()
                    .collect();
                (!hosts.is_empty()).then_some((key, part, hosts))
            })
            .collect()
    }
}

/// The servers `workload` serves, in (gateway, index) order.
pub fn servers_of<'m>(model: &'m MeshModel, workload: &Workload) -> Vec<IngressServer<'m>> {
    let mut out = Vec::new();
    for (name, (key, spec)) in &model.gateways {
        let picked = !spec.selector.is_empty()
            && spec
                .selector
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v));
        if !picked {
            continue;
        }
        for (index, server) in spec.servers.iter().enumerate() {
            out.push(IngressServer {
                gateway: name,
                gateway_namespace: &key.namespace,
                index,
                server,
            });
        }
    }
    out
}
