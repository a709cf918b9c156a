//! `isthmusctl doctor SERVICE`: follows one imported service along its whole path in the
//! running meshes and says at which hop, and why, it breaks:
//!
//! 1. name resolution — the importing mesh imports the name (else: is it exported? imported?
//!    is discovery up?);
//! 2. sidecar listener — the calling workload's sidecar is ready and routes the name;
//! 3. local egress gateway — running, with a chain for the name;
//! 4. peer ingress gateway — accepting connections, and presenting a certificate that the
//!    importing mesh's root for that peer verifies;
//! 5. peer endpoint and 6. authorization — a real call through the sidecar: 200, or 403 from
//!    the destination's policy, or no healthy endpoint.
//!
//! Discovery travels through the same gateways, so when it is down the gateway hops are
//! checked first: a broken gateway is the cause.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use isthmus_api::core::ConfigMap;
use isthmus_api::federation::ServiceMeshPeer;
use serde_json::Value;

use super::debug_client::get_json;
use crate::runner::http::{get, get_via};
use crate::runner::run::located;
use crate::runner::run_file::{GatewayEntry, MeshEntry, RunFile, WorkloadEntry, default_state};
use isthmus_controlplane::config::ConfigSnapshot;

mod tls_probe;

#[derive(Debug, Args)]
pub struct DoctorCommand {
    /// The imported service: its host, e.g. ratings.bookinfo.svc.green-imports.local[:9080].
    pub service: String,
    /// The calling workload, MESH/NAMESPACE/NAME (default: the importing mesh's first workload).
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = default_state())]
    pub state: PathBuf,
}

/// One hop's verdict: what was seen, or why it is broken; `None` when not checked.
#[derive(Debug)]
struct Hop {
    name: &'static str,
    verdict: Option<Result<String, String>>,
}

impl DoctorCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let run = RunFile::read(&self.state)?;
        let (host, port) = match self.service.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().context("SERVICE: bad port")?),
            None => (self.service.clone(), 9080),
        };
        let path = Path::resolve(&run, &host, self.from.as_deref())?;
        println!(
            "doctor: {host}:{port} from {}/{}/{} ({} imports it from {})",
            path.importer.name,
            path.caller.namespace,
            path.caller.name,
            path.importer.name,
            path.exporter.name
        );
        let hops = path.check(&host, port).await;
        for hop in &hops {
            let (mark, text) = match &hop.verdict {
                Some(Ok(seen)) => ("ok", seen.clone()),
                Some(Err(why)) => ("BROKEN", why.clone()),
                None => ("-", "not checked".into()),
            };
            println!("  {mark:<7} {:<22} {text}", hop.name);
        }
        let broken: Vec<&Hop> = hops
            .iter()
            .filter(|h| h.verdict.as_ref().is_some_and(Result::is_err))
            .collect();
        // An unknown name with a broken gateway: discovery crosses that gateway, so the
        // gateway is the cause.
        let cause = match broken.as_slice() {
            [first, gateway, ..] if first.name == "name resolution" => Some((
                gateway.name,
                format!(
                    "{} (and so {} cannot hear from {}: discovery crosses this hop)",
                    gateway
                        .verdict
                        .clone()
                        .and_then(Result::err)
                        .unwrap_or_default(),
                    path.importer.name,
                    path.exporter.name
                ),
            )),
            [first, ..] => Some((
                first.name,
                first
                    .verdict
                    .clone()
                    .and_then(Result::err)
                    .unwrap_or_default(),
            )),
            [] => None,
        };
        match cause {
            Some((hop, why)) => anyhow::bail!("broken at {hop}: {why}"),
            None => {
                println!("every hop works");
                Ok(())
            }
        }
    }
}

/// The parts one imported service's path runs through.
struct Path<'a> {
    importer: &'a MeshEntry,
    exporter: &'a MeshEntry,
    caller: &'a WorkloadEntry,
    /// The importer's `ServiceMeshPeer` for the exporter, and the exporter's for the importer.
    peer_here: String,
    peer_there: String,
    importer_config: ConfigSnapshot,
}

impl<'a> Path<'a> {
    fn resolve(run: &'a RunFile, host: &str, from: Option<&str>) -> anyhow::Result<Self> {
        let (importer, caller) = match from {
            Some(from) => {
                let mut parts = from.splitn(3, '/');
                let (Some(mesh), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    anyhow::bail!("--from {from}: expected MESH/NAMESPACE/NAME");
                };
                let mesh = run.mesh(mesh)?;
                let caller = mesh
                    .workloads
                    .iter()
                    .find(|w| w.namespace == ns && w.name == name)
                    .with_context(|| format!("--from {from}: no such workload"))?;
                (mesh, caller)
            }
            None => {
                let mesh = run
                    .meshes
                    .iter()
                    .find(|m| peers(m).ok().is_some_and(|p| p.iter().any(|(name, _)| host.ends_with(&format!(".svc.{name}-imports.local")))))
                    .with_context(|| format!("no mesh of this run has a ServiceMeshPeer whose imports are named like {host}; pass --from MESH/NAMESPACE/NAME"))?;
                let caller = mesh
                    .workloads
                    .first()
                    .with_context(|| format!("{} runs no workload to call from", mesh.name))?;
                (mesh, caller)
            }
        };
        let importer_config = isthmus_controlplane::config::load_dir(&importer.config_dir)
            .map_err(|e| located(&e))?;
        let (peer_here, trust_domain) = peers(importer)?
            .into_iter()
            .find(|(name, _)| host.ends_with(&format!(".svc.{name}-imports.local")))
            .or_else(|| peers(importer).ok()?.into_iter().next())
            .with_context(|| format!("{} has no ServiceMeshPeer", importer.name))?;
        let exporter = run
            .meshes
            .iter()
            .find(|m| m.trust_domain == trust_domain)
            .with_context(|| {
                format!(
                    "{}'s peer {peer_here} ({trust_domain}) is not a mesh of this run",
                    importer.name
                )
            })?;
        let peer_there = peers(exporter)?
            .into_iter()
            .find(|(_, td)| *td == importer.trust_domain)
            .map(|(name, _)| name)
            .with_context(|| {
                format!(
                    "{} has no ServiceMeshPeer for {}",
                    exporter.name, importer.trust_domain
                )
            })?;
        Ok(Self {
            importer,
            exporter,
            caller,
            peer_here,
            peer_there,
            importer_config,
        })
    }

    async fn check(&self, host: &str, port: u16) -> Vec<Hop> {
        let resolution = self.name_resolution(host).await;
        let mut hops = vec![Hop {
            name: "name resolution",
            verdict: Some(resolution.clone()),
        }];
        // Discovery crosses the same gateways: when the name is missing, a broken gateway
        // is the likelier cause, so the gateways are checked either way.
        let later: [(&'static str, Option<Result<String, String>>); 5] = [
            ("sidecar listener", None),
            ("local egress gateway", None),
            ("peer ingress gateway", None),
            ("peer endpoint", None),
            ("authorization", None),
        ];
        hops.extend(
            later
                .into_iter()
                .map(|(name, verdict)| Hop { name, verdict }),
        );
        if resolution.is_ok() {
            hops[1].verdict = Some(self.sidecar(host).await);
            if hops[1].verdict.as_ref().is_some_and(Result::is_err) {
                return hops;
            }
        }
        hops[2].verdict = Some(self.egress(host, resolution.is_ok()).await);
        if hops[2].verdict.as_ref().is_some_and(Result::is_err) {
            return hops;
        }
        hops[3].verdict = Some(self.ingress().await);
        if hops[3].verdict.as_ref().is_some_and(Result::is_err) || resolution.is_err() {
            return hops;
        }
        let (endpoint, authorization) = self.call(host, port).await;
        hops[4].verdict = Some(endpoint);
        hops[5].verdict = authorization;
        hops
    }

    async fn federation(&self, mesh: &MeshEntry) -> Result<Value, String> {
        get_json(&mesh.debug.to_string(), "/debug/federation")
            .await
            .map_err(|e| format!("{}'s isthmusd does not answer: {e:#}", mesh.name))
    }

    async fn name_resolution(&self, host: &str) -> Result<String, String> {
        let here = self.federation(self.importer).await?;
        let set_key = format!(
            "{}/{}",
            isthmus_controlplane::model::DEFAULT_ROOT_NAMESPACE,
            self.peer_here
        );
        let set = &here["importedServiceSets"][&set_key];
        let imported = set["importedServices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["localService"]["hostname"] == host);
        if let Some(s) = imported {
            let stale = if set["stale"] == true {
                " (stale: the peer is away)"
            } else {
                ""
            };
            return Ok(format!(
                "{} imports it from {} as {}{stale}",
                self.importer.name,
                self.exporter.name,
                s["exportedName"].as_str().unwrap_or_default()
            ));
        }
        // Why not: exported? imported? discovery?
        let (name, namespace) = {
            let mut labels = host.split('.');
            (
                labels.next().unwrap_or_default(),
                labels.next().unwrap_or_default(),
            )
        };
        let watch = &here["serviceMeshPeers"][&set_key]["discoveryStatus"]["active"][0]["watch"];
        if watch["connected"] != true {
            return Err(format!(
                "{} has not heard from {}: its discovery stream is down (last error: {})",
                self.importer.name,
                self.exporter.name,
                watch["lastDisconnectStatus"].as_str().unwrap_or("none yet")
            ));
        }
        let there = self.federation(self.exporter).await?;
        let export_key = format!(
            "{}/{}",
            isthmus_controlplane::model::DEFAULT_ROOT_NAMESPACE,
            self.peer_there
        );
        let prefix = format!("{name}.{namespace}.svc.");
        let exported = there["exportedServiceSets"][&export_key]["exportedServices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                s["exportedName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            });
        let Some(exported) = exported else {
            return Err(format!(
                "{} does not export {namespace}/{name} to {}: no rule of its ExportedServiceSet {export_key} selects it",
                self.exporter.name, self.importer.name
            ));
        };
        let exported_name = exported["exportedName"].as_str().unwrap_or_default();
        let entry = set["importedServices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["exportedName"] == exported_name);
        let reason = entry
            .and_then(|e| e["reason"].as_str())
            .unwrap_or("not in its imported services yet");
        let other_name = entry
            .and_then(|e| e["localService"]["hostname"].as_str())
            .filter(|h| !h.is_empty());
        Err(match other_name {
            Some(other) => format!(
                "{} imports {exported_name} under another name: {other}",
                self.importer.name
            ),
            None => format!(
                "{} exports it as {exported_name}, but {} does not import it: {reason} (ImportedServiceSet {set_key})",
                self.exporter.name, self.importer.name
            ),
        })
    }

    async fn sidecar(&self, host: &str) -> Result<String, String> {
        let admin = self.caller.admin.to_string();
        match get(&admin, "/ready", &admin).await {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                return Err(format!(
                    "the sidecar of {} is not ready ({status} {})",
                    self.caller.name,
                    body.trim()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "the sidecar of {} does not answer on {admin}: {e:#}",
                    self.caller.name
                ));
            }
        }
        let (_, dump) = get(&admin, "/config_dump", &admin)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !dump.contains(host) {
            return Err(format!(
                "the sidecar of {} has no route for {host}",
                self.caller.name
            ));
        }
        Ok(format!(
            "{}'s sidecar ({}) routes {host}",
            self.caller.name, self.caller.outbound
        ))
    }

    async fn egress(&self, host: &str, expect_chain: bool) -> Result<String, String> {
        let gateway = gateway_of(self.importer, "egress", &self.peer_here)?;
        let admin = gateway.admin.to_string();
        match get(&admin, "/ready", &admin).await {
            Ok((200, _)) => {}
            Ok((status, _)) => return Err(format!("{} is not ready ({status})", gateway.name)),
            Err(e) => {
                return Err(format!(
                    "{} ({}) is not running: {e:#}",
                    gateway.name, gateway.listen
                ));
            }
        }
        if expect_chain {
            let (_, dump) = get(&admin, "/config_dump", &admin)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if !dump.contains(host) {
                return Err(format!("{} has no chain for {host}", gateway.name));
            }
        }
        Ok(if expect_chain {
            format!(
                "{} ({}) is ready and forwards {host} to {}",
                gateway.name, gateway.listen, self.exporter.name
            )
        } else {
            format!("{} ({}) is ready", gateway.name, gateway.listen)
        })
    }

    async fn ingress(&self) -> Result<String, String> {
        let gateway = gateway_of(self.exporter, "ingress", &self.peer_there)?;
        let root = self.configured_root().map_err(|e| format!("{e:#}"))?;
        let local_root = std::fs::read_to_string(
            self.importer
                .config_dir
                .with_file_name("state")
                .join("root-cert.pem"),
        )
        .unwrap_or_else(|_| root.clone());
        tls_probe::verify_gateway(
            gateway.listen,
            &self.exporter.trust_domain,
            &root,
            &self.importer.trust_domain,
            &local_root,
        )
        .await
        .map(|id| {
            format!(
                "{} ({}) accepts connections and proves {id}",
                gateway.name, gateway.listen
            )
        })
        .map_err(|e| {
            format!(
                "{} of {} ({}): {e}",
                gateway.name, self.exporter.name, gateway.listen
            )
        })
    }

    /// The importer's root for the exporter: the ConfigMap its `ServiceMeshPeer` names.
    fn configured_root(&self) -> anyhow::Result<String> {
        let (key, peer) = self
            .importer_config
            .of_type::<ServiceMeshPeer>()
            .find(|(key, _)| key.name == self.peer_here)
            .map(|(key, p)| (key.clone(), p.clone()))
            .with_context(|| {
                format!(
                    "{} has no ServiceMeshPeer {}",
                    self.importer.name, self.peer_here
                )
            })?;
        let chain = peer
            .spec
            .security
            .certificate_chain
            .as_ref()
            .with_context(|| format!("ServiceMeshPeer {key}: no spec.security.certificateChain"))?;
        self.importer_config
            .of_type::<ConfigMap>()
            .find(|(k, _)| k.name == chain.name && k.namespace == key.namespace)
            .and_then(|(_, map)| map.data.get("root-cert.pem").cloned())
            .with_context(|| {
                format!(
                    "ConfigMap {}/{} with root-cert.pem is missing",
                    key.namespace, chain.name
                )
            })
    }

    /// The real call: (peer endpoint, authorization).
    async fn call(
        &self,
        host: &str,
        port: u16,
    ) -> (Result<String, String>, Option<Result<String, String>>) {
        let caller = format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.importer.trust_domain, self.caller.namespace, self.caller.service_account
        );
        match get_via(
            &self.caller.outbound.to_string(),
            &format!("{host}:{port}"),
            "/",
        )
        .await
        {
            Ok((200, body)) => {
                let json: Value = serde_json::from_str(&body).unwrap_or_default();
                let who = json["name"].as_str().unwrap_or("the endpoint");
                (
                    Ok(format!("{who} in {} answered 200", self.exporter.name)),
                    Some(Ok(format!("{caller} is allowed"))),
                )
            }
            Ok((403, body)) => (
                Ok(format!("{}'s sidecar answered", self.exporter.name)),
                Some(Err(format!(
                    "{}'s sidecar refused {caller}: 403 {} (an AuthorizationPolicy denies this caller)",
                    self.exporter.name,
                    body.trim()
                ))),
            ),
            Ok((status, body)) => (
                Err(format!(
                    "{status} {}: no healthy endpoint answered in {}",
                    body.trim(),
                    self.exporter.name
                )),
                None,
            ),
            Err(e) => (Err(format!("the call failed: {e:#}")), None),
        }
    }
}

/// The gateway of `mesh` in `direction` (`egress` or `ingress`) for its peer `peer`.
fn gateway_of<'a>(
    mesh: &'a MeshEntry,
    direction: &str,
    peer: &str,
) -> Result<&'a GatewayEntry, String> {
    mesh.gateways
        .iter()
        .find(|g| g.direction == direction && g.peer == peer)
        .ok_or_else(|| format!("{} runs no {direction} gateway for {peer}", mesh.name))
}

/// A mesh's `ServiceMeshPeer`s: (name, trust domain).
fn peers(mesh: &MeshEntry) -> anyhow::Result<Vec<(String, String)>> {
    let config =
        isthmus_controlplane::config::load_dir(&mesh.config_dir).map_err(|e| located(&e))?;
    Ok(config
        .of_type::<ServiceMeshPeer>()
        .map(|(key, p)| (key.name.clone(), p.spec.security.trust_domain.clone()))
        .collect())
}
