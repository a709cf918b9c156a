//! Maistra's name selectors: a part that is empty or `*` matches anything, and an alias part
//! that is empty or `*` keeps the original part.

use isthmus_api::federation::{ServiceName as AliasName, ServiceNameMapping};

use crate::names::ServiceName;

fn part_matches(pattern: &str, value: &str) -> bool {
    pattern.is_empty() || pattern == "*" || pattern == value
}

fn renamed(alias: &str, original: &str) -> String {
    if alias.is_empty() || alias == "*" {
        original.to_owned()
    } else {
        alias.to_owned()
    }
}

/// Whether `mapping` selects `service`.
pub fn selects(mapping: &ServiceNameMapping, service: &ServiceName) -> bool {
    part_matches(&mapping.namespace, &service.namespace)
        && part_matches(&mapping.name, &service.name)
}

/// `service` under `alias` (its concrete parts replace the original ones).
pub fn alias(service: &ServiceName, alias: Option<&AliasName>) -> ServiceName {
    match alias {
        None => service.clone(),
        Some(a) => ServiceName {
            namespace: renamed(&a.namespace, &service.namespace),
            name: renamed(&a.name, &service.name),
        },
    }
}

/// Whether `namespace` (a selector's, empty or `*` for any) admits `value`.
pub fn namespace_matches(namespace: &str, value: &str) -> bool {
    part_matches(namespace, value)
}
