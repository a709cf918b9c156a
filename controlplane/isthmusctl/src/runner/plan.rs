//! From a [`Description`] to what runs where: every workload and federation gateway gets its
//! own loopback address, and each mesh's configuration directory is rendered (pure functions,
//! no processes).
//!
//! Addresses: a run owns the block `127.<block>.0.0/16`; mesh *i* (in folder order) gets
//! `127.<block>.<i+1>.0/24`, its gateways `.2` upwards, its workloads `.100` upwards. With an
//! address each, the ports are fixed: admin 15000, outbound 15001 (or the workload's
//! `outboundPort`), inbound 15006 upwards (one per named port), the application 18080 upwards,
//! gateways 15443 (Maistra's federation port, for discovery and services alike).
//!
//! Rendering keeps the mesh's own documents and adds, in `zz-isthmusctl-up.yaml`:
//! - a `WorkloadEntry` per `Workload` (its address, labels, service account, inbound ports);
//! - a `ServiceEntry` and `WorkloadEntry` per gateway named by a `ServiceMeshPeer`;
//! - for each peer that is another mesh of DIR (matched by trust domain), a `ConfigMap` with
//!   that mesh's root under the name `spec.security.certificateChain` gives, unless DIR
//!   defines that ConfigMap itself.
//!
//! And it points each such peer's `spec.remote.addresses` at the other mesh's ingress gateway
//! for us (the other mesh's `ServiceMeshPeer` for us names it), with the default ports.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde_json::{Value, json};

use super::description::{Description, MeshDescription, WorkloadDescription};

pub const ADMIN_PORT: u16 = 15000;
pub const FIRST_INBOUND_PORT: u16 = 15006;
pub const FIRST_APP_PORT: u16 = 18080;
pub const GATEWAY_PORT: u16 = 15443;
/// The generated file in each mesh's configuration directory.
pub const GENERATED_FILE: &str = "zz-isthmusctl-up.yaml";

/// Where everything of one run goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub meshes: Vec<MeshPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeshPlan {
    pub name: String,
    pub trust_domain: String,
    pub index: usize,
    pub gateways: Vec<GatewayPlan>,
    pub workloads: Vec<WorkloadPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPlan {
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    /// `ingress` or `egress`, and for which peer.
    pub direction: &'static str,
    /// The `ServiceMeshPeer` it serves, and that peer's trust domain.
    pub peer: String,
    pub peer_trust_domain: String,
}

impl GatewayPlan {
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::from((self.address, GATEWAY_PORT))
    }
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.address, ADMIN_PORT))
    }
    pub fn node_id(&self) -> String {
        format!(
            "router~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.address,
            self.name,
            ns = self.namespace
        )
    }
    pub fn service_account(&self) -> String {
        format!("{}-service-account", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPlan {
    pub workload: WorkloadDescription,
    pub address: Ipv4Addr,
    /// Port name -> (inbound port on the workload's address, the application's port).
    pub ports: BTreeMap<String, (u16, u16)>,
}

impl WorkloadPlan {
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.address, ADMIN_PORT))
    }
    /// The sidecar's outbound HTTP listener: the application's HTTP proxy.
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from((self.address, self.workload.outbound_port))
    }
    pub fn node_id(&self) -> String {
        let w = &self.workload;
        format!(
            "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
            if w.ingress { "router" } else { "sidecar" },
            self.address,
            w.name,
            ns = w.namespace
        )
    }
    /// The sidecar's metadata flags (`KEY=VALUE`).
    pub fn metadata(&self) -> Vec<String> {
        let mut metadata = vec![
            format!("OUTBOUND_ADDRESS={}", self.address),
            format!("OUTBOUND_PORT={}", self.workload.outbound_port),
            format!("APP_ADDRESS={}", self.address),
        ];
        if !self.ports.is_empty() {
            let app_ports: Vec<String> = self
                .ports
                .iter()
                .map(|(name, (_, app))| format!("{name}={app}"))
                .collect();
            metadata.push(format!("APP_PORTS={}", app_ports.join(",")));
        }
        metadata
    }
    /// The environment of the workload's command: `ADDRESS`, `PORT_<NAME>` per port,
    /// `HTTP_PROXY` (its sidecar), then the workload's own `env`.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            ("ADDRESS".to_owned(), self.address.to_string()),
            (
                "HTTP_PROXY".to_owned(),
                format!("http://{}", self.outbound()),
            ),
            ("WORKLOAD".to_owned(), self.workload.name.clone()),
        ]);
        for (name, (_, app)) in &self.ports {
            env.insert(
                format!("PORT_{}", name.to_uppercase().replace('-', "_")),
                app.to_string(),
            );
        }
        env.extend(self.workload.env.clone());
        env
    }
    /// The command with `${VAR}` replaced from [`Self::env`] (no shell is involved).
    pub fn command(&self) -> Vec<String> {
        let env = self.env();
        self.workload
            .command
            .iter()
            .map(|arg| substitute(arg, &env))
            .collect()
    }
}

fn substitute(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (key, value) in env {
        out = out.replace(&format!("${{{key}}}"), value);
    }
    out
}

/// Addresses and ports for every mesh of `description` in the block `127.<block>.0.0/16`.
pub fn plan(description: &Description, block: u8) -> Plan {
    let meshes = description
        .meshes
        .iter()
        .enumerate()
        .map(|(index, mesh)| plan_mesh(mesh, index, block))
        .collect();
    Plan { meshes }
}

fn plan_mesh(mesh: &MeshDescription, index: usize, block: u8) -> MeshPlan {
    let subnet = u8::try_from(index + 1).unwrap_or(u8::MAX);
    let gateways = peers(mesh)
        .flat_map(|(peer_name, namespace, spec)| {
            [("ingress", "ingress"), ("egress", "egress")]
                .into_iter()
                .filter_map(move |(field, direction)| {
                    let name = spec["gateways"][field]["name"].as_str()?;
                    let trust_domain = spec["security"]["trustDomain"].as_str().unwrap_or_default();
                    Some((
                        name.to_owned(),
                        namespace.clone(),
                        direction,
                        peer_name.clone(),
                        trust_domain.to_owned(),
                    ))
                })
        })
        .collect::<Vec<_>>();
    let mut seen = Vec::new();
    let gateways = gateways
        .into_iter()
        .filter(|(name, ns, ..)| {
            let fresh = !seen.contains(&(name.clone(), ns.clone()));
            seen.push((name.clone(), ns.clone()));
            fresh
        })
        .enumerate()
        .map(
            |(i, (name, namespace, direction, peer, peer_trust_domain))| GatewayPlan {
                name,
                namespace,
                address: Ipv4Addr::new(127, block, subnet, host(2 + i)),
                direction,
                peer,
                peer_trust_domain,
            },
        )
        .collect();
    let workloads = mesh
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| WorkloadPlan {
            workload: w.clone(),
            address: Ipv4Addr::new(127, block, subnet, host(100 + i)),
            ports: w
                .ports
                .iter()
                .zip(0u16..)
                .map(|(name, n)| (name.clone(), (FIRST_INBOUND_PORT + n, FIRST_APP_PORT + n)))
                .collect(),
        })
        .collect();
    MeshPlan {
        name: mesh.name.clone(),
        trust_domain: mesh.trust_domain.clone(),
        index,
        gateways,
        workloads,
    }
}

fn host(n: usize) -> u8 {
    u8::try_from(n.min(254)).unwrap_or(254)
}

/// The mesh's `ServiceMeshPeer`s: (name, namespace, spec).
fn peers(mesh: &MeshDescription) -> impl Iterator<Item = (String, String, &Value)> {
    documents_of(mesh, "ServiceMeshPeer").map(|doc| {
        (
            doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            namespace_of(doc),
            &doc["spec"],
        )
    })
}

fn documents_of<'a>(mesh: &'a MeshDescription, kind: &'a str) -> impl Iterator<Item = &'a Value> {
    mesh.files
        .iter()
        .flat_map(|f| f.documents.iter())
        .filter(move |doc| doc["kind"].as_str() == Some(kind))
}

fn namespace_of(doc: &Value) -> String {
    doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned()
}

/// One rendered configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub relative: PathBuf,
    pub text: String,
}

/// Something worth telling the user while rendering.
pub type Warning = String;

/// The configuration directory of `description.meshes[index]`: its files, then the generated
/// one. `roots` maps a trust domain to its mesh's root (PEM), for the meshes started so far.
pub fn render(
    description: &Description,
    plan: &Plan,
    index: usize,
    roots: &BTreeMap<String, String>,
) -> (Vec<RenderedFile>, Vec<Warning>) {
    let mesh = &description.meshes[index];
    let mesh_plan = &plan.meshes[index];
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    for file in &mesh.files {
        let docs: Vec<Value> = file
            .documents
            .iter()
            .map(|doc| {
                if doc["kind"].as_str() == Some("ServiceMeshPeer") {
                    point_at_peer(doc, mesh, plan, &mut warnings)
                } else {
                    doc.clone()
                }
            })
            .collect();
        files.push(RenderedFile {
            relative: file.relative.clone(),
            text: to_yaml(&docs),
        });
    }
    let mut generated = Vec::new();
    for w in &mesh_plan.workloads {
        generated.push(workload_entry(w));
    }
    for g in &mesh_plan.gateways {
        generated.extend(gateway_entries(g));
    }
    generated.extend(root_config_maps(mesh, roots, &mut warnings));
    files.push(RenderedFile {
        relative: GENERATED_FILE.into(),
        text: to_yaml(&generated),
    });
    (files, warnings)
}

/// `docs` as YAML: each document as JSON (which is YAML), separated by `---`.
fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "---\n{}\n",
                serde_json::to_string_pretty(d).unwrap_or_default()
            )
        })
        .collect()
}

/// The mesh of DIR a peer is, by trust domain.
fn peer_mesh<'a>(peer_spec: &Value, plan: &'a Plan) -> Option<&'a MeshPlan> {
    let trust_domain = peer_spec["security"]["trustDomain"].as_str()?;
    plan.meshes.iter().find(|m| m.trust_domain == trust_domain)
}

/// `doc` (a `ServiceMeshPeer` of `mesh`) with `spec.remote` pointing at the peer mesh's
/// ingress gateway for `mesh`.
fn point_at_peer(
    doc: &Value,
    mesh: &MeshDescription,
    plan: &Plan,
    warnings: &mut Vec<Warning>,
) -> Value {
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let Some(other) = peer_mesh(&doc["spec"], plan) else {
        warnings.push(format!(
            "{}: ServiceMeshPeer {name}: no mesh here has trust domain {}; its spec.remote is used as written",
            mesh.name, doc["spec"]["security"]["trustDomain"]
        ));
        return doc.clone();
    };
    let ingress = other
        .gateways
        .iter()
        .find(|g| g.direction == "ingress" && g.peer_trust_domain == mesh.trust_domain);
    let Some(ingress) = ingress else {
        warnings.push(format!(
            "{}: ServiceMeshPeer {name}: mesh {} names no ingress gateway for {} (its ServiceMeshPeer for {} has no spec.gateways.ingress)",
            mesh.name, other.name, mesh.name, mesh.trust_domain
        ));
        return doc.clone();
    };
    let mut doc = doc.clone();
    doc["spec"]["remote"] = json!({ "addresses": [ingress.address.to_string()] });
    doc
}

fn workload_entry(w: &WorkloadPlan) -> Value {
    let ports: BTreeMap<&str, u16> = w
        .ports
        .iter()
        .map(|(name, (inbound, _))| (name.as_str(), *inbound))
        .collect();
    let mut spec = json!({
        "address": w.address.to_string(),
        "labels": w.workload.labels,
        "serviceAccount": w.workload.service_account,
    });
    if !ports.is_empty() {
        spec["ports"] = json!(ports);
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": w.workload.name, "namespace": w.workload.namespace},
        "spec": spec,
    })
}

fn gateway_entries(g: &GatewayPlan) -> [Value; 2] {
    let labels = json!({"app": g.name});
    [
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": g.name, "namespace": g.namespace},
            "spec": {
                "hosts": [format!("{}.{}.svc.cluster.local", g.name, g.namespace)],
                "location": "MESH_INTERNAL",
                "ports": [{"number": GATEWAY_PORT, "name": "tls-federation"}],
                "workloadSelector": {"labels": labels},
            },
        }),
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": g.name, "namespace": g.namespace},
            "spec": {
                "address": g.address.to_string(),
                "labels": labels,
                "serviceAccount": g.service_account(),
                "ports": {"tls-federation": GATEWAY_PORT},
            },
        }),
    ]
}

/// A `ConfigMap` with the peer mesh's root for each peer whose `certificateChain` names one
/// that DIR does not define.
fn root_config_maps(
    mesh: &MeshDescription,
    roots: &BTreeMap<String, String>,
    warnings: &mut Vec<Warning>,
) -> Vec<Value> {
    let defined: Vec<(String, String)> = documents_of(mesh, "ConfigMap")
        .map(|d| {
            (
                namespace_of(d),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for (peer, namespace, spec) in peers(mesh) {
        let Some(name) = spec["security"]["certificateChain"]["name"].as_str() else {
            continue;
        };
        if defined.contains(&(namespace.clone(), name.to_owned())) {
            continue;
        }
        let trust_domain = spec["security"]["trustDomain"].as_str().unwrap_or_default();
        let Some(root) = roots.get(trust_domain) else {
            warnings.push(format!(
                "{}: ServiceMeshPeer {peer}: no mesh here has trust domain {trust_domain:?}, and ConfigMap {namespace}/{name} is not defined",
                mesh.name
            ));
            continue;
        };
        out.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"root-cert.pem": root},
        }));
    }
    out
}

#[cfg(test)]
mod tests;
