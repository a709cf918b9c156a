//! What `isthmusctl up DIR` runs, read from DIR: every folder of DIR is one mesh. A folder holds
//! standard resources (Istio's and Maistra's kinds, as `isthmusd` reads them) plus two local
//! kinds of ours, `local.isthmus.dev/v1alpha1`:
//!
//! - `Mesh` (one per folder): the mesh's name and trust domain;
//! - `Workload`: a workload to run with a sidecar — its namespace, service account, labels,
//!   the named ports its services reach, and the command that runs it.
//!
//! Everything is checked before anything runs; each problem names its file, line and field.

// Errors are built once per bad document, on a cold path: their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use isthmus_api::meta::{is_dns_label, is_dns_subdomain};
use serde::Deserialize;
use serde_json::Value;

use isthmus_controlplane::config::yaml::documents;
use isthmus_controlplane::config::{ConfigError, SourceRef, directory::check_document};

/// The API version of the local kinds.
pub const LOCAL_API_VERSION: &str = "local.isthmus.dev/v1alpha1";

/// The outbound listener's port on each workload's own address, unless the workload sets one.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

/// Every mesh DIR describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub dir: PathBuf,
    pub meshes: Vec<MeshDescription>,
}

/// One folder: a mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshDescription {
    pub name: String,
    pub trust_domain: String,
    pub folder: PathBuf,
    /// The standard resources, file by file (paths relative to the folder), in order.
    pub files: Vec<SourceFile>,
    pub workloads: Vec<WorkloadDescription>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    pub relative: PathBuf,
    pub documents: Vec<Value>,
}

/// A `Workload`: what runs, and its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadDescription {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Named ports its services reach (the `ServiceEntry` port names).
    pub ports: Vec<String>,
    /// Program and arguments; empty for a workload that only calls out (its sidecar alone).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub outbound_port: u16,
    /// `ingress`: the proxy is an ingress gateway (a `router` node serving the Istio
    /// `Gateway`s whose selector picks the workload's labels) and runs no command.
    pub ingress: bool,
}

impl WorkloadDescription {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalDocument<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: LocalMeta,
    spec: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeshSpec {
    trust_domain: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadSpec {
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    outbound_port: Option<u16>,
    /// `sidecar` (the default) or `ingress`.
    #[serde(default)]
    role: Option<String>,
}

/// Reads DIR; either every mesh, or every problem found.
pub fn read_description(dir: &Path) -> Result<Description, Vec<ConfigError>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![ConfigError::file(
            dir.to_owned(),
            format!("cannot read the folder: {e}"),
        )]
    })?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    folders.sort();
    let mut errors = Vec::new();
    let mut meshes = Vec::new();
    for folder in folders {
        match read_mesh(&folder) {
            Ok(mesh) => meshes.push(mesh),
            Err(e) => errors.extend(e),
        }
    }
    if meshes.is_empty() && errors.is_empty() {
        errors.push(ConfigError::file(
            dir.to_owned(),
            format!(
                "no mesh here: each mesh is a folder with a `kind: Mesh` ({LOCAL_API_VERSION})"
            ),
        ));
    }
    check_unique(&meshes, dir, &mut errors);
    if errors.is_empty() {
        Ok(Description {
            dir: dir.to_owned(),
            meshes,
        })
    } else {
        Err(errors)
    }
}

fn check_unique(meshes: &[MeshDescription], dir: &Path, errors: &mut Vec<ConfigError>) {
    for (i, mesh) in meshes.iter().enumerate() {
        for other in &meshes[..i] {
            if other.name == mesh.name || other.trust_domain == mesh.trust_domain {
                errors.push(ConfigError::file(
                    dir.to_owned(),
                    format!(
                        "meshes {} ({}) and {} ({}) share a name or trust domain",
                        other.name, other.trust_domain, mesh.name, mesh.trust_domain
                    ),
                ));
            }
        }
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn yaml_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !is_hidden(p)
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_mesh(folder: &Path) -> Result<MeshDescription, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let files = yaml_files(folder).map_err(|e| {
        vec![ConfigError::file(
            folder.to_owned(),
            format!("cannot read the folder: {e}"),
        )]
    })?;
    let mut meshes: Vec<(String, String, SourceRef)> = Vec::new();
    let mut workloads = Vec::new();
    let mut sources = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(ConfigError::file(file, format!("cannot read: {e}")));
                continue;
            }
        };
        let docs = match documents(&text) {
            Ok(docs) => docs,
            Err(e) => {
                errors.push(ConfigError {
                    line: e.line,
                    ..ConfigError::file(file, format!("invalid YAML: {}", e.reason))
                });
                continue;
            }
        };
        let mut standard = Vec::new();
        for doc in docs {
            let source = SourceRef {
                file: file.clone(),
                document: doc.index,
                line: doc.line,
            };
            let local =
                doc.value.get("apiVersion").and_then(Value::as_str) == Some(LOCAL_API_VERSION);
            if !local {
                match check_document(doc.value.clone(), &source) {
                    Ok(_) => standard.push(doc.value),
                    Err(e) => errors.extend(e),
                }
                continue;
            }
            match doc.value.get("kind").and_then(Value::as_str) {
                Some("Mesh") => match parse::<MeshSpec>(doc.value, &source) {
                    Ok(mesh) => meshes.push((mesh.metadata.name, mesh.spec.trust_domain, source)),
                    Err(e) => errors.push(e),
                },
                Some("Workload") => match parse::<WorkloadSpec>(doc.value, &source) {
                    Ok(w) => match workload(w, &source) {
                        Ok(w) => workloads.push(w),
                        Err(e) => errors.push(e),
                    },
                    Err(e) => errors.push(e),
                },
                other => errors.push(at(
                    &source,
                    Some("kind"),
                    format!(
                        "{LOCAL_API_VERSION} has kinds Mesh and Workload, not {}",
                        other.unwrap_or("(none)")
                    ),
                )),
            }
        }
        let relative = file.strip_prefix(folder).unwrap_or(&file).to_owned();
        sources.push(SourceFile {
            relative,
            documents: standard,
        });
    }
    let mesh = match meshes.as_slice() {
        [(name, trust_domain, source)] => {
            if !is_dns_subdomain(trust_domain) {
                errors.push(at(
                    source,
                    Some("spec.trustDomain"),
                    format!("{trust_domain:?} is not a DNS name"),
                ));
            }
            Some((name.clone(), trust_domain.clone()))
        }
        [] => {
            errors.push(ConfigError::file(
                folder.to_owned(),
                format!("no `kind: Mesh` ({LOCAL_API_VERSION}) in this folder: which mesh is it?"),
            ));
            None
        }
        [_, second, ..] => {
            errors.push(at(
                &second.2,
                None,
                "a second Mesh in one folder: one folder is one mesh".into(),
            ));
            None
        }
    };
    check_workloads_unique(&workloads, folder, &mut errors);
    match mesh {
        Some((name, trust_domain)) if errors.is_empty() => Ok(MeshDescription {
            name,
            trust_domain,
            folder: folder.to_owned(),
            files: sources,
            workloads,
        }),
        _ => Err(errors),
    }
}

fn check_workloads_unique(
    workloads: &[WorkloadDescription],
    folder: &Path,
    errors: &mut Vec<ConfigError>,
) {
    for (i, w) in workloads.iter().enumerate() {
        if workloads[..i].iter().any(|o| o.key() == w.key()) {
            errors.push(ConfigError::file(
                folder.to_owned(),
                format!("Workload {} is defined twice", w.key()),
            ));
        }
    }
}

fn parse<S: serde::de::DeserializeOwned>(
    value: Value,
    source: &SourceRef,
) -> Result<LocalDocument<S>, ConfigError> {
    serde_path_to_error::deserialize::<_, LocalDocument<S>>(value).map_err(|e| {
        let path = e.path().to_string();
        at(source, Some(&path), e.into_inner().to_string())
    })
}

fn workload(
    doc: LocalDocument<WorkloadSpec>,
    source: &SourceRef,
) -> Result<WorkloadDescription, ConfigError> {
    let LocalDocument { metadata, spec, .. } = doc;
    if !is_dns_label(&metadata.name) {
        return Err(at(
            source,
            Some("metadata.name"),
            format!("{:?} is not a DNS label", metadata.name),
        ));
    }
    let namespace = metadata.namespace.unwrap_or_else(|| "default".into());
    for (i, port) in spec.ports.iter().enumerate() {
        if !is_dns_label(port) || spec.ports[..i].contains(port) {
            return Err(at(
                source,
                Some(&format!("spec.ports[{i}]")),
                format!("{port:?}: port names are distinct DNS labels (a ServiceEntry port name)"),
            ));
        }
    }
    let ingress = match spec.role.as_deref() {
        None | Some("sidecar") => false,
        Some("ingress") => true,
        Some(other) => {
            return Err(at(
                source,
                Some("spec.role"),
                format!("{other:?}: a workload's role is sidecar or ingress"),
            ));
        }
    };
    if ingress && (!spec.command.is_empty() || !spec.ports.is_empty()) {
        return Err(at(
            source,
            Some("spec.role"),
            "an ingress gateway runs no command and serves no ports of its own (its Gateway's servers say where it listens)".into(),
        ));
    }
    if spec.outbound_port == Some(0) {
        return Err(at(
            source,
            Some("spec.outboundPort"),
            "must be a port number (1-65535)".into(),
        ));
    }
    Ok(WorkloadDescription {
        service_account: spec
            .service_account
            .unwrap_or_else(|| metadata.name.clone()),
        labels: spec
            .labels
            .unwrap_or_else(|| BTreeMap::from([("app".to_owned(), metadata.name.clone())])),
        name: metadata.name,
        namespace,
        ports: spec.ports,
        command: spec.command,
        env: spec.env,
        outbound_port: spec.outbound_port.unwrap_or(DEFAULT_OUTBOUND_PORT),
        ingress,
    })
}

fn at(source: &SourceRef, path: Option<&str>, reason: String) -> ConfigError {
    ConfigError {
        file: source.file.clone(),
        document: Some(source.document),
        line: Some(source.line),
        resource: None,
        path: path.map(str::to_owned),
        reason,
    }
}

#[cfg(test)]
mod tests;
