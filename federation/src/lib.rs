//! # isthmus-federation
//!
//! The home of federation between meshes: the peer discovery protocol (server and client),
//! export/import rule evaluation for `ExportedServiceSet` / `ImportedServiceSet`, and peer
//! status. Nothing is implemented here yet; trust between meshes — each peer's root bound to the
//! peer's trust domain — already lives in `isthmus_api::identity::TrustBundles`.
