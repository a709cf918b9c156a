//! Which services cross between meshes, from configuration alone: each mesh's export rules
//! decide what each peer is offered, the peer's import rules decide what it takes and under
//! which name. No discovery and no processes are involved, so a change can be judged before
//! it is applied (`isthmusctl federation check`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isthmus_federation::imports::ImportDecision;
use isthmus_identity::TrustDomain;

use crate::config::ConfigSnapshot;
use crate::model::MeshModel;
use crate::model::federation::discovery_exports;
use crate::model::imports::RemoteCatalogs;

/// One mesh's configuration.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: String,
    pub trust_domain: TrustDomain,
    pub config: Arc<ConfigSnapshot>,
}

/// A service one mesh exports and another imports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Crossing {
    pub exporter: String,
    /// `namespace/name` as exported (after any alias).
    pub service: String,
    /// The host the exporter offers it as (`…svc.<importer>-exports.local`).
    pub exported_host: String,
    pub importer: String,
    /// The host the importer's workloads call.
    pub imported_as: String,
    /// Merged into the importer's own service of that name (`importAsLocal`).
    pub as_local: bool,
}

impl std::fmt::Display for Crossing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} as {}{}",
            self.exporter,
            self.service,
            self.importer,
            self.imported_as,
            if self.as_local {
                " (imported as local)"
            } else {
                ""
            }
        )
    }
}

/// Each mesh's model with what its peers among `meshes` export to it, as discovery would
/// deliver it (peers are matched to meshes by trust domain). Also returns, per mesh, which
/// mesh each of its peers is (peer name -> index in `meshes`).
pub fn federated_models(
    meshes: &[MeshConfig],
    root_namespace: &str,
) -> Vec<(MeshModel, BTreeMap<String, usize>)> {
    let models: Vec<MeshModel> = meshes
        .iter()
        .map(|m| MeshModel::build(m.config.clone(), &m.trust_domain, root_namespace))
        .collect();
    let exports: Vec<_> = models.iter().map(discovery_exports).collect();
    meshes
        .iter()
        .enumerate()
        .map(|(n, importer)| {
            let mut catalogs = RemoteCatalogs::new();
            let mut exporter_of: BTreeMap<String, usize> = BTreeMap::new();
            for peer in &models[n].peers {
                let Some(m) = meshes
                    .iter()
                    .position(|x| x.trust_domain == peer.trust_domain)
                else {
                    continue;
                };
                // The exporter's name for the importer is its own `ServiceMeshPeer`'s.
                let Some(us_there) = exports[m]
                    .peers
                    .get(&importer.trust_domain.to_string())
                    .map(|p| &p.name)
                else {
                    continue;
                };
                if let Some(catalog) = exports[m].catalogs.get(us_there) {
                    catalogs.insert(peer.name.clone(), catalog.clone());
                    exporter_of.insert(peer.name.clone(), m);
                }
            }
            let model = MeshModel::build_with_imports(
                importer.config.clone(),
                &catalogs,
                &importer.trust_domain,
                root_namespace,
            );
            (model, exporter_of)
        })
        .collect()
}

/// Every crossing among `meshes` (peers are matched to meshes by trust domain).
pub fn crossings(meshes: &[MeshConfig], root_namespace: &str) -> BTreeSet<Crossing> {
    let mut out = BTreeSet::new();
    for ((model, exporter_of), importer) in
        federated_models(meshes, root_namespace).iter().zip(meshes)
    {
        for (peer, entries) in &model.imports {
            let Some(&m) = exporter_of.get(peer) else {
                continue;
            };
            for entry in entries {
                if let ImportDecision::Imported { host, as_local, .. } = &entry.decision {
                    out.insert(Crossing {
                        exporter: meshes[m].name.clone(),
                        service: entry.offered.to_string(),
                        exported_host: entry.exported_host.clone(),
                        importer: importer.name.clone(),
                        imported_as: host.clone(),
                        as_local: *as_local,
                    });
                }
            }
        }
    }
    out
}
