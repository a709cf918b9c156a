//! The proxy's configuration: Envoy xDS v3 resources converted, at the edge, into a validated
//! model that the data path works on. This is the profile `docs/xds-profile.md` documents:
//! every field a conversion does not honour is refused with its path (`filter_chains[0]
//! .filters[1].typed_config(HttpConnectionManager).via: not supported by isthmus-proxy`),
//! so a resource is either applied as meant or NACKed, never half-understood.
//!
//! The model holds values as the data path uses them — `http::HeaderName` and `HeaderValue`,
//! `StatusCode`, `uri::Authority` and `Scheme`, compiled regexes, header keys with the
//! pseudo-headers told apart — so nothing is parsed again per request, and a value that would
//! not parse is a rejection at its field, never a setting skipped at run time. `tests/` holds
//! the table tests of each conversion.

// The conversions destructure every field, deprecated ones too, so that they can refuse them.
pub mod check;
#[allow(deprecated)]
pub mod cluster;
pub mod decode;
pub mod dns;
#[allow(deprecated)]
pub mod endpoint;
pub mod jwt_authn;
#[allow(deprecated)]
pub mod listener;
pub mod listener_filter;
#[allow(deprecated)]
pub mod matcher;
#[allow(deprecated)]
pub mod rbac;
#[allow(deprecated)]
pub mod route;
pub mod route_policies;
#[allow(deprecated)]
pub mod secret;
pub mod telemetry;
#[allow(deprecated)]
pub mod tls;
pub mod tracing;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isthmus_proto::dns::{NAME_TABLE_TYPE, NameTable};
use isthmus_proto::envoy::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use isthmus_proto::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use isthmus_proto::envoy::envoy::config::listener::v3::Listener as EnvoyListener;
use isthmus_proto::envoy::envoy::config::route::v3::RouteConfiguration;
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::Secret as EnvoySecret;
use isthmus_proto::envoy::google::protobuf::Any;
use prost::Name;

use self::check::{Checked, Invalid, Path};
use self::cluster::{Cluster, Discovery};
use self::dns::NameIndex;
use self::endpoint::LoadAssignment;
use self::listener::{Listener, RouteSource, Terminal};
use self::route::RouteTable;
use self::secret::Secret;

/// The xDS types, in the order a proxy subscribes to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
    /// `isthmus.dns.v1.NameTable`: the DNS proxy's names, subscribed to only when the DNS
    /// proxy runs (not in [`XdsType::ALL`], Envoy's types).
    NameTable,
}

impl XdsType {
    pub const ALL: [XdsType; 5] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Secret,
    ];

    pub fn type_url(self) -> String {
        match self {
            XdsType::Cluster => EnvoyCluster::type_url(),
            XdsType::Endpoint => ClusterLoadAssignment::type_url(),
            XdsType::Listener => EnvoyListener::type_url(),
            XdsType::Route => RouteConfiguration::type_url(),
            XdsType::Secret => EnvoySecret::type_url(),
            XdsType::NameTable => NAME_TABLE_TYPE.to_owned(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([XdsType::NameTable])
            .find(|t| t.type_url() == url)
    }

    /// Envoy's short name: `CDS`, `EDS`, ...
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
            XdsType::Secret => "SDS",
            XdsType::NameTable => "NDS",
        }
    }

    /// LDS, CDS and the name table are subscribed to as a whole; the others by the names
    /// those reference.
    pub fn is_wildcard(self) -> bool {
        matches!(
            self,
            XdsType::Cluster | XdsType::Listener | XdsType::NameTable
        )
    }
}

/// One accepted resource of any type.
#[derive(Debug, Clone)]
pub enum Resource {
    Listener(Arc<Listener>),
    Route(Arc<RouteTable>),
    Cluster(Arc<Cluster>),
    Endpoints(Arc<LoadAssignment>),
    Secret(Arc<Secret>),
    Names(Arc<NameIndex>),
}

/// Decodes and validates one resource of `kind`; its name must be `name`.
pub fn convert(kind: XdsType, name: &str, any: &Any) -> Checked<Resource> {
    let root = Path::root();
    let expected = kind.type_url();
    if any.type_url != expected {
        return Err(Invalid::new(
            &root,
            format!("expected a {expected}, got {:?}", any.type_url),
        ));
    }
    Ok(match kind {
        XdsType::Listener => Resource::Listener(named(any, name, |l| &l.name, listener::convert)?),
        XdsType::Route => Resource::Route(named(any, name, |r| &r.name, route::convert)?),
        XdsType::Cluster => Resource::Cluster(named(any, name, |c| &c.name, cluster::convert)?),
        XdsType::Endpoint => {
            Resource::Endpoints(named(any, name, |e| &e.cluster_name, endpoint::convert)?)
        }
        XdsType::Secret => Resource::Secret(named(any, name, |s| &s.name, secret::convert)?),
        XdsType::NameTable => {
            let table: NameTable = decode::typed(any, &root)?;
            Resource::Names(Arc::new(dns::convert(table, &root)?))
        }
    })
}

/// Decodes `any` as the Envoy message `M` and converts it; the name the message gives itself
/// (`name_of`) must be `name`, checked after the conversion (a resource that does not convert
/// says why first).
fn named<M: prost::Message + Name + Default, T>(
    any: &Any,
    name: &str,
    name_of: impl FnOnce(&M) -> &String,
    convert: impl FnOnce(M, &Path) -> Checked<T>,
) -> Checked<Arc<T>> {
    let root = Path::root();
    let envoy: M = decode::typed(any, &root)?;
    let actual = name_of(&envoy).clone();
    let converted = convert(envoy, &root)?;
    if actual != name {
        return Err(Invalid::new(
            &root.field("name"),
            format!("{actual:?} differs from the resource's name {name:?}"),
        ));
    }
    Ok(Arc::new(converted))
}

/// Everything the proxy has applied: the one state the data path reads, replaced as a whole.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub endpoints: BTreeMap<String, Arc<LoadAssignment>>,
    pub secrets: BTreeMap<String, Arc<Secret>>,
    /// The DNS proxy's name tables (one, `name-table`, when it runs).
    pub names: BTreeMap<String, Arc<NameIndex>>,
}

impl ProxyConfig {
    pub fn insert(&mut self, name: String, resource: Resource) {
        match resource {
            Resource::Listener(r) => drop(self.listeners.insert(name, r)),
            Resource::Route(r) => drop(self.routes.insert(name, r)),
            Resource::Cluster(r) => drop(self.clusters.insert(name, r)),
            Resource::Endpoints(r) => drop(self.endpoints.insert(name, r)),
            Resource::Secret(r) => drop(self.secrets.insert(name, r)),
            Resource::Names(r) => drop(self.names.insert(name, r)),
        }
    }

    pub fn remove(&mut self, kind: XdsType, name: &str) {
        match kind {
            XdsType::Listener => drop(self.listeners.remove(name)),
            XdsType::Route => drop(self.routes.remove(name)),
            XdsType::Cluster => drop(self.clusters.remove(name)),
            XdsType::Endpoint => drop(self.endpoints.remove(name)),
            XdsType::Secret => drop(self.secrets.remove(name)),
            XdsType::NameTable => drop(self.names.remove(name)),
        }
    }

    /// The names of `kind` the applied listeners and clusters refer to: what to subscribe to.
    pub fn wanted(&self, kind: XdsType) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        match kind {
            XdsType::Route => {
                for l in self.listeners.values() {
                    for chain in l.chains.iter().chain(&l.default_chain) {
                        if let Terminal::Http(hcm) = &chain.terminal
                            && let RouteSource::Rds(name) = &hcm.routes
                        {
                            names.insert(name.clone());
                        }
                    }
                }
            }
            XdsType::Endpoint => {
                for c in self.clusters.values() {
                    if let Discovery::Eds { service_name } = &c.discovery {
                        names.insert(service_name.clone());
                    }
                }
            }
            // The mesh's secrets and the credentials' (`kubernetes://…`) of TLS outside the
            // mesh, of listeners and clusters alike.
            XdsType::Secret => {
                for l in self.listeners.values() {
                    for chain in l.chains.iter().chain(&l.default_chain) {
                        if let Some(t) = &chain.tls {
                            names.extend(t.secret_names().map(str::to_owned));
                        }
                    }
                }
                for c in self.clusters.values() {
                    if let Some(t) = &c.tls {
                        names.extend(t.secret_names().map(str::to_owned));
                    }
                }
            }
            XdsType::Cluster | XdsType::Listener | XdsType::NameTable => {}
        }
        names
    }
}
