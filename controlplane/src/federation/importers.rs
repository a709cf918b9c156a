//! One discovery importer per usable peer of the model in force: started when a peer appears,
//! restarted when its addresses, trust domain, control plane or root change, stopped when it
//! goes. Each dials with `isthmusd`'s own certificate and accepts only the peer's control plane
//! (`controlPlaneID`), verified against that peer's root alone.
//! The discovery port's client verification trusts the peers' roots the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_federation::discovery::importer::{self, Dialer};
use isthmus_federation::discovery::{ImportState, ImporterSettings};
use isthmus_identity::channel::{tls_channel, tls_in_tls_channel};
use isthmus_identity::{
    CredentialCell, PeerPolicy, SharedBundles, SpiffeVerifier, TrustBundle, TrustBundles,
    client_config, shared_bundles,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ImportStates;
use crate::model::MeshModel;
use crate::model::peers::Peer;
use crate::xds::generate::discovery_sni;

/// What restarts an importer when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerKey {
    addresses: Vec<String>,
    via: Vec<String>,
    trust_domain: String,
    control_plane: String,
    roots_pem: String,
}

impl PeerKey {
    fn of(peer: &Peer) -> Self {
        Self {
            addresses: peer.discovery_addresses.clone(),
            via: peer.discovery_via.clone(),
            trust_domain: peer.trust_domain.to_string(),
            control_plane: peer.control_plane_id.to_string(),
            roots_pem: peer.roots_pem(),
        }
    }
}

/// A peer's importer and the task forwarding its state; both stop when this is dropped (when
/// the peer changes or goes, and when the task of [`start`] that holds them is dropped).
struct Running {
    key: PeerKey,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The bundles the discovery port trusts, and the task that runs the importers of the model's
/// peers (and keeps those bundles to the peers' roots). The caller runs and owns the task; it
/// ends when the model is no longer published, and dropping it stops every importer.
pub fn start(
    mut model: watch::Receiver<Arc<MeshModel>>,
    credentials: Arc<CredentialCell>,
    local: TrustBundle,
    settings: ImporterSettings,
    states: watch::Sender<Arc<ImportStates>>,
) -> (SharedBundles, impl Future<Output = ()> + Send + 'static) {
    let bundles = shared_bundles(TrustBundles::new(local.clone()));
    let server_bundles = bundles.clone();
    let task = async move {
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        loop {
            let current = model.borrow_and_update().clone();
            let mut trusted = TrustBundles::new(local.clone());
            for peer in &current.peers {
                if let Err(e) = trusted.insert_peer(peer.roots.clone()) {
                    tracing::warn!(peer = peer.name, error = %e, "peer root not trusted");
                }
            }
            bundles.store(Arc::new(trusted));
            reconcile(
                &current.peers,
                &mut running,
                &credentials,
                &local,
                settings,
                &states,
            );
            if model.changed().await.is_err() {
                return;
            }
        }
    };
    (server_bundles, task)
}

fn reconcile(
    peers: &[Peer],
    running: &mut BTreeMap<String, Running>,
    credentials: &Arc<CredentialCell>,
    local: &TrustBundle,
    settings: ImporterSettings,
    states: &watch::Sender<Arc<ImportStates>>,
) {
    let gone: Vec<String> = running
        .iter()
        .filter(|(name, r)| {
            !peers
                .iter()
                .any(|p| &&p.name == name && PeerKey::of(p) == r.key)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        tracing::info!(peer = name, "discovery importer stopped");
        running.remove(&name);
        states.send_modify(|s| {
            Arc::make_mut(s).remove(&name);
        });
    }
    for peer in peers {
        if running.contains_key(&peer.name) {
            continue;
        }
        match start_peer(peer, credentials, local, settings, states) {
            Ok(r) => {
                tracing::info!(peer = peer.name, addresses = ?peer.discovery_addresses, "discovery importer started");
                running.insert(peer.name.clone(), r);
            }
            Err(e) => tracing::warn!(peer = peer.name, error = e, "cannot watch peer"),
        }
    }
}

fn start_peer(
    peer: &Peer,
    credentials: &Arc<CredentialCell>,
    local: &TrustBundle,
    settings: ImporterSettings,
    states: &watch::Sender<Arc<ImportStates>>,
) -> Result<Running, String> {
    // Only the peer's root, and only its control plane (`controlPlaneID`): a gateway or a
    // workload of the peer on the path cannot answer for it.
    let verifier = SpiffeVerifier::new(
        shared_bundles(TrustBundles::new(peer.roots.clone())),
        PeerPolicy::OneOf(vec![peer.control_plane_id.clone()]),
    );
    let tls = client_config(Some(credentials.clone()), Arc::new(verifier), &[b"h2"])
        .map_err(|e| format!("TLS: {e}"))?;
    // Through the local egress gateway when there is one (it admits this control plane's
    // certificate on an outer session, routes by SNI and tunnels to the peer's ingress), else
    // straight to the peer's discovery addresses.
    let (addresses, dialer): (Vec<String>, Arc<dyn Dialer>) = if peer.discovery_via.is_empty() {
        (
            peer.discovery_addresses.clone(),
            Arc::new(move |address: &str| tls_channel(address, tls.clone(), None)),
        )
    } else {
        let sni = discovery_sni(&peer.name);
        let gateway = SpiffeVerifier::new(
            shared_bundles(TrustBundles::new(local.clone())),
            PeerPolicy::TrustDomain(local.trust_domain().clone()),
        );
        let outer = client_config(Some(credentials.clone()), Arc::new(gateway), &[])
            .map_err(|e| format!("TLS: {e}"))?;
        (
            peer.discovery_via.clone(),
            Arc::new(move |address: &str| {
                tls_in_tls_channel(address, &sni, outer.clone(), tls.clone())
            }),
        )
    };
    let (tx, mut rx) = watch::channel(ImportState::default());
    let importer = tokio::spawn(importer::run(
        peer.name.clone(),
        addresses,
        dialer,
        settings,
        tx,
    ));
    let name = peer.name.clone();
    let states = states.clone();
    let forward = tokio::spawn(async move {
        loop {
            let state = rx.borrow_and_update().clone();
            states.send_modify(|s| {
                Arc::make_mut(s).insert(name.clone(), state);
            });
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Running {
        key: PeerKey::of(peer),
        tasks: [importer, forward],
    })
}
