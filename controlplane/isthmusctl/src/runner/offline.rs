//! A description's meshes as configuration snapshots, without running anything: what
//! `isthmusctl federation check` evaluates. Each mesh's root is a throwaway one (peers need a
//! root to be usable; which root does not change what crosses).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use isthmus_identity::{TrustDomain, profile};

use super::description::Description;
use super::plan::{plan, render};
use super::run::located;
use isthmus_controlplane::config::load_text;
use isthmus_controlplane::federation::crossings::MeshConfig;

/// Every mesh of `description`, rendered as `isthmusctl up` would and validated.
pub fn mesh_configs(description: &Description) -> anyhow::Result<Vec<MeshConfig>> {
    let mut roots = BTreeMap::new();
    for mesh in &description.meshes {
        roots.insert(
            mesh.trust_domain.clone(),
            throwaway_root(&mesh.trust_domain)?,
        );
    }
    let plan = plan(description, 0);
    description
        .meshes
        .iter()
        .enumerate()
        .map(|(index, mesh)| {
            let (files, _) = render(description, &plan, index, &roots);
            let text: String = files.iter().map(|f| f.text.as_str()).collect();
            let config = load_text(&text, &mesh.folder).map_err(|e| located(&e))?;
            Ok(MeshConfig {
                name: mesh.name.clone(),
                trust_domain: TrustDomain::new(&mesh.trust_domain)
                    .with_context(|| format!("{}: trust domain", mesh.folder.display()))?,
                config: Arc::new(config),
            })
        })
        .collect()
}

fn throwaway_root(trust_domain: &str) -> anyhow::Result<String> {
    let td = TrustDomain::new(trust_domain)?;
    let now = SystemTime::now();
    let params = profile::ca_cert_params(
        &td,
        "isthmusctl federation check",
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok(params.self_signed(&key)?.pem())
}

/// The configuration each mesh of a running `isthmusctl up` has now (its config folders).
pub fn running_configs(run: &super::RunFile) -> anyhow::Result<Vec<MeshConfig>> {
    run.meshes
        .iter()
        .map(|mesh| {
            let config = isthmus_controlplane::config::load_dir(&mesh.config_dir)
                .map_err(|e| located(&e))?;
            Ok(MeshConfig {
                name: mesh.name.clone(),
                trust_domain: TrustDomain::new(&mesh.trust_domain)?,
                config: Arc::new(config),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::runner::read_description;
    use isthmus_controlplane::federation::crossings::crossings;
    use isthmus_controlplane::model::DEFAULT_ROOT_NAMESPACE;

    fn example() -> Description {
        read_description(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-meshes"))
            .unwrap()
    }

    fn crossing_lines(d: &Description) -> Vec<String> {
        crossings(&mesh_configs(d).unwrap(), DEFAULT_ROOT_NAMESPACE)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_example_sends_ratings_and_inventory_from_green_to_red() {
        assert_eq!(
            crossing_lines(&example()),
            [
                "green bookinfo/ratings -> red as ratings.bookinfo.svc.green-imports.local",
                "green shop/inventory -> red as inventory.shop.svc.cluster.local (imported as local)",
            ]
        );
    }

    #[test]
    fn without_the_export_rule_ratings_stops_crossing() {
        let mut d = example();
        let green = &mut d.meshes[0];
        for file in &mut green.files {
            for doc in &mut file.documents {
                if doc["kind"] == "ExportedServiceSet" {
                    let rules = doc["spec"]["exportRules"].as_array_mut().unwrap();
                    rules.retain(|r| r["nameSelector"]["name"] != "ratings");
                }
            }
        }
        assert_eq!(
            crossing_lines(&d),
            ["green shop/inventory -> red as inventory.shop.svc.cluster.local (imported as local)"]
        );
    }
}
