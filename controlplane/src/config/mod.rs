//! Config sources. The YAML directory ([`directory`]) reads every document under a folder into
//! validated [`isthmus_api::Resource`]s (the Kubernetes source, [`crate::kubernetes`], reads
//! the same kinds from the API server, plus the [`cluster`] registry); [`store`] applies a complete, valid set
//! atomically and keeps the last good one when a change is bad.

pub mod cluster;
pub mod directory;
pub mod error;
pub mod loader;
pub mod snapshot;
pub mod store;
pub mod watch;
pub mod yaml;

pub use directory::{load_dir, load_text};
pub use error::ConfigError;
pub use snapshot::{ConfigSnapshot, ResourceKey, SourceRef};
pub use store::ConfigStore;
