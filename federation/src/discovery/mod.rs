//! The discovery protocol between control planes (`proto/isthmus/federation/v1/discovery.proto`):
//! the [`exporter`] streams to each peer what this mesh exports to it, the [`importer`] keeps
//! one stream open to each peer and holds what it exports to us, and both compute the same
//! [`catalog::Catalog`] checksum so that a lost change is noticed and repaired by a resync.

pub mod catalog;
pub mod exporter;
pub mod importer;

pub use catalog::Catalog;
pub use exporter::{Exporter, Exports};
pub use importer::{ImportState, ImporterSettings};
