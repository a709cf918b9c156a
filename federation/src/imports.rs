//! Which of the services a peer offers an `ImportedServiceSet` takes, and as what.
//!
//! The peer offers names (`<name>.<namespace>`, as it exports them). Rules are tried in order
//! and the first that selects a name decides: the local name is the alias (or the offered
//! name), the host `<name>.<namespace>.svc.<peer>-imports.local` unless the rule or the spec
//! sets a `domainSuffix`; `importAsLocal` merges the peer's endpoints into the local service of
//! the aliased name instead, with the spec's `locality` on them.

use isthmus_api::federation::{ImportedServiceLocality, ImportedServiceSetSpec, RuleType};

use crate::names::{ServiceName, imported_host, local_host, suffixed_host};
use crate::selector::{alias, selects};

/// What the rules decided for one offered name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportDecision {
    Imported {
        /// The local name (after any alias).
        as_name: ServiceName,
        /// The host local workloads call.
        host: String,
        /// The peer's endpoints join the local service of that host.
        as_local: bool,
        /// The locality given to the peer's endpoints (`spec.locality`).
        locality: Option<ImportedServiceLocality>,
        rule: usize,
    },
    /// Offered by the peer, but no rule selects it: exported, not imported.
    NotSelected,
}

/// The decision for every offered name, in the order given. `local_domain` is the mesh's own
/// domain (`cluster.local`), for `importAsLocal`.
pub fn evaluate(
    peer: &str,
    spec: &ImportedServiceSetSpec,
    offered: &[ServiceName],
    local_domain: &str,
) -> Vec<(ServiceName, ImportDecision)> {
    offered
        .iter()
        .map(|name| (name.clone(), decide(peer, spec, name, local_domain)))
        .collect()
}

fn decide(
    peer: &str,
    spec: &ImportedServiceSetSpec,
    offered: &ServiceName,
    local_domain: &str,
) -> ImportDecision {
    for (i, rule) in spec.import_rules.iter().enumerate() {
        if rule.rule_type != RuleType::NameSelector {
            continue;
        }
        let Some(mapping) = &rule.name_selector else {
            continue;
        };
        if !selects(mapping, offered) {
            continue;
        }
        let as_name = alias(offered, mapping.alias.as_ref());
        let suffix = rule
            .domain_suffix
            .as_deref()
            .or(spec.domain_suffix.as_deref())
            .filter(|s| !s.is_empty());
        let host = if rule.import_as_local {
            local_host(&as_name, local_domain)
        } else if let Some(suffix) = suffix {
            suffixed_host(&as_name, suffix)
        } else {
            imported_host(&as_name, peer)
        };
        return ImportDecision::Imported {
            host,
            as_local: rule.import_as_local,
            locality: spec.locality.clone(),
            as_name,
            rule: i,
        };
    }
    ImportDecision::NotSelected
}
