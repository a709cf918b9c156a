//! Which local services an `ExportedServiceSet` offers to its peer, and under which names.
//!
//! Rules are tried in order and the first that selects a service decides its exported name.
//! A `NameSelector` selects by namespace and name and may rename with its alias; a
//! `LabelSelector` selects by namespace and the service's labels and renames with the first
//! of its aliases that selects the service. Some services are never exported, whatever the
//! rules say: those imported from a peer (no transitive federation), `MESH_EXTERNAL` ones, and
//! those the control plane's namespace cannot see (`exportTo`).

use std::collections::BTreeMap;

use isthmus_api::federation::{ExportRule, ExportedServiceSetSpec, RuleType};

use crate::names::{ServiceName, exported_host};
use crate::selector::{alias, namespace_matches, selects};

/// A local service, as export rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub name: ServiceName,
    /// Its host in the local registry.
    pub host: String,
    pub labels: BTreeMap<String, String>,
    /// Set when the service may not be exported at all.
    pub not_exportable: Option<NotExportable>,
}

/// Why a service is never exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotExportable {
    /// Imported from this peer: exporting it onward would be transitive federation.
    ImportedFrom(String),
    /// A `ServiceEntry` with `location: MESH_EXTERNAL`.
    MeshExternal,
    /// Its `exportTo` hides it from the control plane's namespace.
    NotVisible,
}

impl std::fmt::Display for NotExportable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ImportedFrom(peer) => write!(
                f,
                "imported from peer {peer}: services imported from a peer are never exported"
            ),
            Self::MeshExternal => f.write_str("MESH_EXTERNAL services are never exported"),
            Self::NotVisible => {
                f.write_str("its exportTo hides it from the control plane's namespace")
            }
        }
    }
}

/// What the rules decided for one local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportDecision {
    Exported {
        /// The name the peer sees (after any alias).
        as_name: ServiceName,
        /// `<name>.<namespace>.svc.<peer>-exports.local`.
        host: String,
        /// The index of the rule that selected it.
        rule: usize,
    },
    /// A rule selected it, but it may not be exported.
    Refused { rule: usize, reason: NotExportable },
    /// No rule selects it.
    NotSelected,
}

/// The decision for every service, in the order given.
pub fn evaluate(
    peer: &str,
    spec: &ExportedServiceSetSpec,
    services: &[LocalService],
) -> Vec<(ServiceName, ExportDecision)> {
    services
        .iter()
        .map(|service| (service.name.clone(), decide(peer, spec, service)))
        .collect()
}

fn decide(peer: &str, spec: &ExportedServiceSetSpec, service: &LocalService) -> ExportDecision {
    let Some((rule, as_name)) = spec
        .export_rules
        .iter()
        .enumerate()
        .find_map(|(i, r)| select(r, service).map(|name| (i, name)))
    else {
        return ExportDecision::NotSelected;
    };
    if let Some(reason) = &service.not_exportable {
        return ExportDecision::Refused {
            rule,
            reason: reason.clone(),
        };
    }
    ExportDecision::Exported {
        host: exported_host(&as_name, peer),
        as_name,
        rule,
    }
}

/// The exported name if `rule` selects `service`.
fn select(rule: &ExportRule, service: &LocalService) -> Option<ServiceName> {
    match rule.rule_type {
        RuleType::NameSelector => {
            let mapping = rule.name_selector.as_ref()?;
            selects(mapping, &service.name).then(|| alias(&service.name, mapping.alias.as_ref()))
        }
        RuleType::LabelSelector => {
            let selector = rule.label_selector.as_ref()?;
            if !namespace_matches(&selector.namespace, &service.name.namespace)
                || !selector.selector.matches(&service.labels)
            {
                return None;
            }
            let renamed = selector
                .aliases
                .iter()
                .find(|a| selects(a, &service.name))
                .map_or_else(
                    || service.name.clone(),
                    |a| alias(&service.name, a.alias.as_ref()),
                );
            Some(renamed)
        }
    }
}
