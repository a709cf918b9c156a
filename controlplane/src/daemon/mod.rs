//! `isthmusd`'s life in two steps, after istio/ztunnel's `app::build`:
//!
//! - [`bind`] sets everything up, in order: the configuration source, the state directory and
//!   the CA, the control plane's own certificate, every listening port, the pipeline,
//!   federation. It returns a [`Bound`] daemon that serves nothing yet, with the
//!   [`Addresses`] it is bound to (a port of 0 picks a free one), also written to
//!   `STATE/addresses.json` for callers in other processes.
//! - [`Bound::serve`] serves until its shutdown future resolves, then lets the servers finish
//!   their connections (up to [`DaemonConfig::drain_timeout`]) and stops every task it owns.
//!   A server or background task that stops on its own before that is an error.
//!
//! [`DaemonConfig::local`] is a configuration for tests and in-process use: every port on
//! `127.0.0.1:0`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use isthmus_controlplane::daemon::{DaemonConfig, bind};
//!
//! let config = DaemonConfig::local("config".into(), "state".into(), "cluster.local".parse()?);
//! let bound = bind(config).await?;
//! println!("debug port: {}", bound.addresses().debug);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let daemon = tokio::spawn(bound.serve(async {
//!     let _ = stopped.await;
//! }));
//! // … use it …
//! let _ = stop.send(());
//! daemon.await??;
//! # Ok(())
//! # }
//! ```

mod addresses;
mod config;
mod error;
mod servers;
mod setup;
mod tasks;

use std::time::Duration;

use isthmus_identity::{CertManager, SpiffeId, TrustDomain};

pub use addresses::{ADDRESSES_FILE, Addresses, AddressesError};
pub use config::{DaemonConfig, FederationSettings, KubernetesSettings};
pub use error::{DaemonError, Listener};
use servers::{Running, Servers};
use setup::Tasks;

/// The identity `isthmusd` presents on its mTLS port.
pub fn control_plane_identity(
    trust_domain: &TrustDomain,
    namespace: &str,
) -> Result<SpiffeId, DaemonError> {
    SpiffeId::workload(trust_domain, namespace, "isthmusd").map_err(|source| {
        DaemonError::Identity {
            namespace: namespace.to_owned(),
            source,
        }
    })
}

/// Sets `isthmusd` up and binds every port; nothing is served before [`Bound::serve`].
/// Background work (configuration watch, pipeline, importers, certificate renewal) starts
/// here and is owned by the returned [`Bound`]: dropping it stops everything.
pub async fn bind(config: DaemonConfig) -> Result<Bound, DaemonError> {
    setup::check(&config)?;
    let mut tasks = Tasks::default();
    let kube = setup::kubernetes_client(&config).await?;
    let store = setup::config_source(&config, kube.as_ref(), &mut tasks)?;
    let ca = setup::state_and_ca(&config)?;
    let own = setup::own_certificate(&config, &ca, &mut tasks).await?;
    let listeners = setup::Listeners::bind(&config).await?;
    let addresses = listeners.addresses()?;
    // Peers' catalogs, from the federation importers to the pipeline.
    let (imports, imported) = tokio::sync::watch::channel(Default::default());
    let flow = setup::pipeline(&config, &ca, &own, &store, &addresses, imported, &mut tasks);
    let federation = setup::federation(
        &config,
        &ca,
        &own,
        &flow.pipeline,
        imports,
        kube.as_ref(),
        &mut tasks,
    );
    let servers = setup::servers(
        &config, &ca, &own, kube, store, flow, federation, listeners, &mut tasks,
    )?;
    addresses
        .write(&config.state_dir)
        .map_err(|source| DaemonError::StateFile {
            path: Addresses::path(&config.state_dir),
            source,
        })?;
    tracing::info!(?addresses, identity = %own.identity, "isthmusd bound");
    Ok(Bound {
        addresses,
        servers,
        tasks,
        certificate: own.manager,
        drain_timeout: config.drain_timeout,
    })
}

/// Sets up, serves until `shutdown` resolves, and stops: [`bind`] then [`Bound::serve`].
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    bind(config).await?.serve(shutdown).await
}

/// A bound `isthmusd`: its ports are open (connections wait in the backlog) and its background
/// tasks run; [`Bound::serve`] serves.
pub struct Bound {
    addresses: Addresses,
    servers: Servers,
    tasks: Tasks,
    /// `isthmusd`'s own certificate: renewed (a task of `tasks`) while this is held.
    certificate: CertManager,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addresses", &self.addresses)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The addresses every port is bound to (as in `STATE/addresses.json`).
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// Serves until `shutdown` resolves; then every server stops accepting and gets
    /// [`DaemonConfig::drain_timeout`] to finish its connections (xDS streams and discovery
    /// watches last until the client goes: the connections still open then are cut), and
    /// every background task is stopped. Returns once all of them have; an error if a server
    /// or a background task stopped before `shutdown`. Dropping the returned future instead
    /// stops everything at once.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Self {
            addresses,
            servers,
            mut tasks,
            certificate,
            drain_timeout,
        } = self;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (cut, cutting) = tokio::sync::watch::channel(false);
        let mut running = servers.start(&stopping, &cutting);
        tracing::info!(?addresses, "isthmusd serving");
        let early = tokio::select! {
            () = shutdown => None,
            Some((listener, ended)) = running.next() => Some(match ended {
                Ok(Ok(())) => DaemonError::ServerEnded { listener },
                Ok(Err(e)) => e,
                Err(e) => DaemonError::Serve { listener, source: e.into() },
            }),
            Some((task, ended)) = tasks.next() => {
                Some(DaemonError::TaskEnded { task, source: ended.err() })
            }
        };
        tracing::info!("isthmusd stopping");
        let _ = stop.send(true);
        let drained = match tokio::time::timeout(drain_timeout, drain(&mut running)).await {
            Ok(drained) => drained,
            Err(_) => {
                tracing::info!(
                    ?drain_timeout,
                    "closing the connections still open at the end of the drain"
                );
                let _ = cut.send(true);
                match tokio::time::timeout(CUT_GRACE, drain(&mut running)).await {
                    Ok(drained) => drained,
                    Err(_) => {
                        tracing::warn!("servers still running after their connections were cut");
                        running.shutdown().await;
                        Ok(())
                    }
                }
            }
        };
        tasks.shutdown().await;
        drop(certificate);
        tracing::info!("isthmusd stopped");
        match early {
            Some(e) => Err(e),
            None => drained,
        }
    }
}

/// How long servers get to end once their connections are cut.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Waits for every server to end; the first failure, if any.
async fn drain(running: &mut Running) -> Result<(), DaemonError> {
    let mut outcome = Ok(());
    while let Some((listener, ended)) = running.next().await {
        let result = ended.unwrap_or_else(|e| {
            Err(DaemonError::Serve {
                listener,
                source: e.into(),
            })
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "while stopping");
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    outcome
}
