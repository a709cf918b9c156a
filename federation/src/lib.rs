//! # isthmus-federation
//!
//! Federation between meshes: Maistra's export/import semantics as pure functions, and the
//! discovery protocol between the control planes of peer meshes.
//!
//! - [`names`]: the host names services cross under (`…svc.<peer>-exports.local`,
//!   `…svc.<peer>-imports.local`, a rule's `domainSuffix`, `importAsLocal`);
//! - [`exports`]: which local services an `ExportedServiceSet` offers to its peer, and under
//!   which name (ordered rules, first match wins; never a service imported from a peer, never
//!   a `MESH_EXTERNAL` one);
//! - [`imports`]: which of the names a peer offers an `ImportedServiceSet` takes, and as what;
//! - [`discovery`]: the protocol: the exporter service, one importer per peer, the catalog
//!   and its checksum;
//! - [`status`]: what each end of a discovery stream reports, in the shape of Maistra's
//!   `ServiceMeshPeer` status.
//!
//! The rules are functions from the resources to decisions, with the reason for every service
//! left out, so that status (`exportedServices`, `importedServices`, "exported but not
//! imported") and `isthmusctl federation check` can say why. `selector` (private) holds
//! Maistra's name selectors; `fuzzing` (hidden) the body of the `discovery_importer` fuzz
//! target. The gateways are `isthmus-proxy` configured by `isthmus-controlplane`. Trust between
//! meshes — each peer's root bound to the peer's trust domain — lives in
//! `isthmus_identity::TrustBundles`.

pub mod discovery;
pub mod exports;
#[doc(hidden)]
pub mod fuzzing;
pub mod imports;
pub mod names;
mod selector;
pub mod status;

#[cfg(test)]
mod tests;
