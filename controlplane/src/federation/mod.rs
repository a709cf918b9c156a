//! `isthmusd`'s side of federation: the discovery importers (one stream per peer), the trust
//! the discovery port extends to peers, and the status of peers and export/import sets.
//!
//! Flow: the model names the peers -> [`importers`] keep a stream to each -> their catalogs
//! feed the pipeline, which builds the model with the imported services -> the model's
//! exports feed the discovery service (`isthmus_federation::discovery::Exporter`) ->
//! [`status`] reports all of it. [`crossings`] evaluates what would cross from configuration
//! alone, for dry runs.

pub mod crossings;
pub mod importers;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_federation::discovery::ImportState;

/// Peer name to what its importer holds.
pub type ImportStates = BTreeMap<String, ImportState>;

/// The catalogs in `states`, for the model.
pub fn catalogs(states: &ImportStates) -> crate::model::imports::RemoteCatalogs {
    states
        .iter()
        .filter_map(|(peer, s)| s.catalog.clone().map(|c| (peer.clone(), c)))
        .collect()
}

pub type SharedImportStates = Arc<ImportStates>;
