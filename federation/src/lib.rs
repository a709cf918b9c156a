//! # isthmus-federation
//!
//! Federation between meshes. What is here so far is the pure core of Maistra's semantics:
//!
//! - [`names`]: the host names services cross under (`…svc.<peer>-exports.local`,
//!   `…svc.<peer>-imports.local`, a rule's `domainSuffix`, `importAsLocal`);
//! - [`exports`]: which local services an `ExportedServiceSet` offers to its peer, and under
//!   which name (ordered rules, first match wins; never a service imported from a peer, never
//!   a `MESH_EXTERNAL` one);
//! - [`imports`]: which of the names a peer offers an `ImportedServiceSet` takes, and as what.
//!
//! Each is a function from the resources to decisions, with the reason for every service left
//! out, so that status (`exportedServices`, `importedServices`, "exported but not imported")
//! and `isthmusctl federation check` can say why. The discovery protocol and the gateways
//! build on these. Trust between meshes — each peer's root bound to the peer's trust domain —
//! lives in `isthmus_identity::TrustBundles`.

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
