//! The CustomResourceDefinitions of every supported kind, generated from the Rust types (kube's
//! `CustomResource` derive, schemas by `schemars`), as checked in under `manifests/crds/`.
//! `isthmusctl manifests crds` writes them; a test fails when the checked-in files are stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use super::federation::{KubeExportedServiceSet, KubeImportedServiceSet, KubeServiceMeshPeer};
use super::gateway::KubeGateway;
use super::networking::{
    KubeDestinationRule, KubeServiceEntry, KubeVirtualService, KubeWorkloadEntry,
};
use super::security::{KubeAuthorizationPolicy, KubePeerAuthentication, KubeRequestAuthentication};

/// Every CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        KubeServiceEntry::crd(),
        KubeWorkloadEntry::crd(),
        KubeVirtualService::crd(),
        KubeDestinationRule::crd(),
        KubeGateway::crd(),
        KubePeerAuthentication::crd(),
        KubeAuthorizationPolicy::crd(),
        KubeRequestAuthentication::crd(),
        KubeServiceMeshPeer::crd(),
        KubeExportedServiceSet::crd(),
        KubeImportedServiceSet::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            let spec = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("spec"));
            if let Some(spec) = spec {
                keep_unknown_fields(spec);
            }
        }
    }
    crds
}

/// Every object of a `spec` keeps the fields its schema does not list: the API server would
/// otherwise prune a field of Istio's API that Isthmus does not implement, silently, before
/// any webhook sees it. Isthmus itself refuses such a field at its path ("not supported by
/// Isthmus", or "unknown field" for a typo), in the validating webhook and in the watch.
fn keep_unknown_fields(schema: &mut JSONSchemaProps) {
    if schema.properties.is_some() {
        schema.x_kubernetes_preserve_unknown_fields = Some(true);
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => std::slice::from_mut(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(s) => s.as_mut_slice(),
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        )
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten());
    for child in children {
        keep_unknown_fields(child);
    }
}

const HEADER: &str =
    "# Generated from the types in api/src by `isthmusctl manifests crds`. Do not edit.\n";

/// Each CRD as (file name, YAML), plus the `kustomization.yaml` that lists them.
pub fn crd_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml =
                serde_saphyr::to_string(crd).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
            (format!("{name}.yaml"), format!("{HEADER}{yaml}"))
        })
        .collect();
    let mut kustomization = format!(
        "{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for (name, _) in &files {
        kustomization.push_str(&format!("- {name}\n"));
    }
    files.push(("kustomization.yaml".into(), kustomization));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
        let mut stale = Vec::new();
        for (name, expected) in crd_files() {
            let actual = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if actual != expected {
                stale.push(name);
            }
        }
        let mut extra: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !crd_files().iter().any(|(f, _)| f == n))
                    .collect()
            })
            .unwrap_or_default();
        extra.sort();
        assert!(
            stale.is_empty() && extra.is_empty(),
            "manifests/crds is stale (changed: {stale:?}, unknown: {extra:?}): run `isthmusctl manifests crds --out manifests/crds`"
        );
    }

    #[test]
    fn unsupported_fields_are_preserved_for_isthmus_to_reject() {
        let crd = KubeVirtualService::crd();
        let json = serde_json::to_string(&crd).unwrap_or_default();
        assert!(json.contains("\"statPrefix\":{\"description\":\"Not supported by Isthmus: setting it is an error.\",\"x-kubernetes-preserve-unknown-fields\":true"), "{json}");
    }
}
