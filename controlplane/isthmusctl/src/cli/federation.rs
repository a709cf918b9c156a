//! `isthmusctl federation graph` (who exports what to whom, and who imports it under which
//! name, as the running control planes report it) and `isthmusctl federation check DIR` (which
//! services a changed folder would start or stop sending across, without applying it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

use super::debug_client::get_json;
use crate::runner::offline::{mesh_configs, running_configs};
use crate::runner::run_file::default_state;
use crate::runner::{RunFile, read_description, run::located};
use isthmus_controlplane::federation::crossings::crossings;
use isthmus_controlplane::model::DEFAULT_ROOT_NAMESPACE;

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Who exports what to whom and who imports it under which name (the running meshes).
    Graph {
        /// Graphviz DOT instead of a table (`| dot -Tsvg > federation.svg`).
        #[arg(long)]
        dot: bool,
        #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = default_state())]
        state: PathBuf,
    },
    /// Dry-run a changed folder (as `isthmusctl up` reads it): which services would start or
    /// stop crossing, compared with the running meshes (or with --base).
    Check {
        dir: PathBuf,
        /// Compare with this folder instead of the running meshes.
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = default_state())]
        state: PathBuf,
    },
}

impl FederationCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Graph { dot, state } => {
                let run = RunFile::read(&state)?;
                let mut meshes = Vec::new();
                for mesh in &run.meshes {
                    let federation = get_json(&mesh.debug.to_string(), "/debug/federation").await?;
                    let config = isthmus_controlplane::config::load_dir(&mesh.config_dir)
                        .map_err(|e| located(&e))?;
                    meshes.push(MeshView {
                        name: mesh.name.clone(),
                        peers: peer_meshes(&config, &run),
                        federation,
                    });
                }
                let rows = graph(&meshes);
                print!(
                    "{}",
                    if dot {
                        render_dot(&meshes, &rows)
                    } else {
                        render_table(&rows)
                    }
                );
                Ok(())
            }
            Self::Check { dir, base, state } => {
                let after = mesh_configs(&read_description(&dir).map_err(|e| located(&e))?)?;
                let (before, against) = match &base {
                    Some(base) => (
                        mesh_configs(&read_description(base).map_err(|e| located(&e))?)?,
                        base.display().to_string(),
                    ),
                    None => {
                        let run = RunFile::read(&state).map_err(|e| {
                            e.context("nothing to compare with: start the meshes with `isthmusctl up`, or pass --base DIR")
                        })?;
                        (
                            running_configs(&run)?,
                            format!("the running meshes ({})", state.display()),
                        )
                    }
                };
                let before = crossings(&before, DEFAULT_ROOT_NAMESPACE);
                let after = crossings(&after, DEFAULT_ROOT_NAMESPACE);
                let stop: Vec<_> = before.difference(&after).collect();
                let start: Vec<_> = after.difference(&before).collect();
                println!("{} compared with {against}:", dir.display());
                println!("would stop crossing ({}):", stop.len());
                for c in &stop {
                    println!("  - {c}");
                }
                println!("would start crossing ({}):", start.len());
                for c in &start {
                    println!("  + {c}");
                }
                println!("unchanged: {}", after.intersection(&before).count());
                Ok(())
            }
        }
    }
}

/// A peer name of a mesh to the mesh of the run with that trust domain.
fn peer_meshes(
    config: &isthmus_controlplane::config::ConfigSnapshot,
    run: &RunFile,
) -> BTreeMap<String, String> {
    config
        .of_type::<isthmus_api::federation::ServiceMeshPeer>()
        .filter_map(|(key, peer)| {
            let mesh = run
                .meshes
                .iter()
                .find(|m| m.trust_domain == peer.spec.security.trust_domain)?;
            Some((key.name.clone(), mesh.name.clone()))
        })
        .collect()
}

/// What one running mesh says about federation.
#[derive(Debug, Clone)]
pub struct MeshView {
    pub name: String,
    /// Its `ServiceMeshPeer` names to the meshes they are.
    pub peers: BTreeMap<String, String>,
    /// Its `/debug/federation` document.
    pub federation: Value,
}

impl MeshView {
    /// Its sets of `field` (`exportedServiceSets` or `importedServiceSets` of its
    /// `/debug/federation`), each with the mesh its peer is (the peer's name when no mesh of
    /// the run is that peer).
    fn sets_by_peer_mesh<'a>(&'a self, field: &str) -> impl Iterator<Item = (String, &'a Value)> {
        let sets = self.federation[field].as_object();
        sets.into_iter().flatten().map(|(key, set)| {
            let peer = set_name(key);
            let mesh = self.peers.get(peer).cloned();
            (mesh.unwrap_or_else(|| peer.to_owned()), set)
        })
    }
}

/// One line of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRow {
    pub exporter: String,
    /// `namespace/name` in the exporting mesh; empty for an import rule nothing matches.
    pub service: String,
    pub exported_as: String,
    pub importer: String,
    /// The host the importer's workloads call; empty when not imported.
    pub imported_as: String,
    pub state: String,
}

fn set_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The graph: every exported service with its importer's fate, and every import rule that
/// matches nothing.
pub fn graph(meshes: &[MeshView]) -> Vec<GraphRow> {
    let mut rows = Vec::new();
    for exporter in meshes {
        for (importer_name, set) in exporter.sets_by_peer_mesh("exportedServiceSets") {
            let importer = meshes.iter().find(|m| m.name == importer_name);
            // The importer's set for the exporter.
            let imported = importer.and_then(|m| {
                let ours = m.peers.iter().find(|(_, mesh)| **mesh == exporter.name)?.0;
                m.federation["importedServiceSets"]
                    .as_object()?
                    .iter()
                    .find(|(k, _)| set_name(k) == ours)
                    .map(|(_, v)| v.clone())
            });
            for e in set["exportedServices"].as_array().into_iter().flatten() {
                let exported_as = e["exportedName"].as_str().unwrap_or_default().to_owned();
                let local = &e["localService"];
                let service = format!(
                    "{}/{}",
                    local["namespace"].as_str().unwrap_or_default(),
                    local["name"].as_str().unwrap_or_default()
                );
                let entry = imported.as_ref().and_then(|set| {
                    set["importedServices"]
                        .as_array()?
                        .iter()
                        .find(|i| i["exportedName"] == exported_as.as_str())
                        .cloned()
                });
                let stale = imported.as_ref().is_some_and(|s| s["stale"] == true);
                let (imported_as, state) = match (&entry, importer) {
                    (_, None) => (
                        String::new(),
                        format!("{importer_name} is not running here"),
                    ),
                    (None, Some(_)) if imported.is_none() => (
                        String::new(),
                        "not imported: the importer has no ImportedServiceSet for it".into(),
                    ),
                    (None, Some(_)) => (String::new(), "not yet heard by the importer".into()),
                    (Some(i), Some(_)) => {
                        let host = i["localService"]["hostname"].as_str().unwrap_or_default();
                        if host.is_empty() {
                            let reason = i["reason"].as_str().unwrap_or("not imported");
                            (String::new(), format!("not imported: {reason}"))
                        } else if stale {
                            (host.to_owned(), "crossing (stale: the peer is away)".into())
                        } else {
                            (host.to_owned(), "crossing".into())
                        }
                    }
                };
                rows.push(GraphRow {
                    exporter: exporter.name.clone(),
                    service,
                    exported_as,
                    importer: importer_name.clone(),
                    imported_as,
                    state,
                });
            }
        }
    }
    for importer in meshes {
        for (exporter, set) in importer.sets_by_peer_mesh("importedServiceSets") {
            for rule in set["unmatchedRules"].as_array().into_iter().flatten() {
                rows.push(GraphRow {
                    exporter: exporter.clone(),
                    service: String::new(),
                    exported_as: String::new(),
                    importer: importer.name.clone(),
                    imported_as: String::new(),
                    state: format!(
                        "import rule matches nothing: {}",
                        rule.as_str().unwrap_or_default()
                    ),
                });
            }
        }
    }
    rows
}

pub fn render_table(rows: &[GraphRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<20} {:<44} {:<9} {:<44} STATE",
        "EXPORTER", "SERVICE", "EXPORTED AS", "IMPORTER", "IMPORTED AS"
    );
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for r in rows {
        let _ = writeln!(
            out,
            "{:<9} {:<20} {:<44} {:<9} {:<44} {}",
            r.exporter,
            dash(&r.service),
            dash(&r.exported_as),
            r.importer,
            dash(&r.imported_as),
            r.state
        );
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(nothing is exported)");
    }
    out
}

/// A DOT string; `\n` in `s` stays a DOT line break.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// Meshes as clusters, services as nodes; an edge per exported service to the name it is
/// imported under (dashed to the importer's mesh when it is not imported).
pub fn render_dot(meshes: &[MeshView], rows: &[GraphRow]) -> String {
    let mut out = String::from("digraph federation {\n  rankdir=LR;\n  node [shape=box];\n");
    let mut nodes: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for m in meshes {
        nodes
            .entry(&m.name)
            .or_default()
            .push((m.name.clone(), m.name.clone()));
    }
    for r in rows {
        if !r.service.is_empty() {
            nodes
                .entry(&r.exporter)
                .or_default()
                .push((format!("{}/{}", r.exporter, r.service), r.service.clone()));
        }
        if !r.imported_as.is_empty() {
            nodes.entry(&r.importer).or_default().push((
                format!("{}/{}", r.importer, r.imported_as),
                r.imported_as.clone(),
            ));
        }
    }
    for (i, (mesh, list)) in nodes.iter_mut().enumerate() {
        list.sort();
        list.dedup();
        let _ = writeln!(out, "  subgraph cluster_{i} {{\n    label={};", quote(mesh));
        for (id, label) in list.iter() {
            let shape = if id == mesh { " shape=ellipse" } else { "" };
            let _ = writeln!(out, "    {} [label={}{shape}];", quote(id), quote(label));
        }
        let _ = writeln!(out, "  }}");
    }
    for r in rows.iter().filter(|r| !r.service.is_empty()) {
        let from = format!("{}/{}", r.exporter, r.service);
        if r.imported_as.is_empty() {
            let _ = writeln!(
                out,
                "  {} -> {} [style=dashed label={}];",
                quote(&from),
                quote(&r.importer),
                quote(&format!("{}\\n{}", r.exported_as, r.state))
            );
        } else {
            let _ = writeln!(
                out,
                "  {} -> {} [label={}];",
                quote(&from),
                quote(&format!("{}/{}", r.importer, r.imported_as)),
                quote(&r.exported_as)
            );
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests;
