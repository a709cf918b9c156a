//! The names services cross under.

/// A service's short name and namespace, as rules see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How an exported service is named to `peer`: `<name>.<namespace>.svc.<peer>-exports.local`.
pub fn exported_host(exported: &ServiceName, peer: &str) -> String {
    format!(
        "{}.{}.svc.{peer}-exports.local",
        exported.name, exported.namespace
    )
}

/// The default name of a service imported from `peer`:
/// `<name>.<namespace>.svc.<peer>-imports.local`.
pub fn imported_host(imported: &ServiceName, peer: &str) -> String {
    format!(
        "{}.{}.svc.{peer}-imports.local",
        imported.name, imported.namespace
    )
}

/// The name with a `domainSuffix` (Maistra: `<name>.<namespace>.<suffix>`).
pub fn suffixed_host(imported: &ServiceName, suffix: &str) -> String {
    format!(
        "{}.{}.{}",
        imported.name,
        imported.namespace,
        suffix.trim_start_matches('.')
    )
}

/// A local service's name in the mesh's own domain (`importAsLocal` merges into it).
pub fn local_host(service: &ServiceName, domain: &str) -> String {
    format!("{}.{}.svc.{domain}", service.name, service.namespace)
}
