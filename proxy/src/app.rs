//! The proxy as a value: [`bind`] starts everything and binds the admin port, returning the
//! addresses it listens on ([`Bound`]); [`Bound::serve`] serves until its shutdown future
//! resolves, drains, and stops every task it owns. The binary is `bind(options)` then
//! `serve(SIGTERM or Ctrl-C)`; a test runs the same in-process, the admin port on port 0:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use isthmus_proxy::app;
//! use isthmus_proxy::bootstrap::Options;
//!
//! let options = Options {
//!     admin_addr: "127.0.0.1:0".parse()?,
//!     ..Options::default()
//! };
//! let bound = app::bind(options).await?;
//! let admin = bound.admin_address();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let proxy = tokio::spawn(bound.serve(async move {
//!     let _ = stopped.await;
//! }));
//! // ... GET http://{admin}/ready ...
//! # let _ = admin;
//! let _ = stop.send(());
//! proxy.await??;
//! # Ok(())
//! # }
//! ```
//!
//! Shutdown order: the shutdown future resolves, the drain starts (listeners stop accepting,
//! connections are asked to finish) and is waited for up to `--drain-timeout` while the admin
//! port still answers; then the admin server stops, and the long-lived tasks (xDS client,
//! certificate renewal, listener manager) are stopped and awaited.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::AdminState;
use crate::bootstrap::{self, Options, StartError};
use crate::drain;
use crate::listener::BoundListeners;
use crate::metrics::Metrics;
use crate::xds::client::{Protocol, XdsClient};
use crate::xds::state::AdsState;

/// A started proxy whose ports are bound, not yet serving its admin port.
///
/// Dropping it without [`Bound::serve`] stops its tasks (they are owned by its `JoinSet`).
#[derive(Debug)]
pub struct Bound {
    admin_address: SocketAddr,
    admin_listener: TcpListener,
    admin: axum::Router,
    listeners: watch::Receiver<BoundListeners>,
    drain: drain::Trigger,
    drain_timeout: Duration,
    /// The long-lived tasks: certificate renewal, xDS client, listener manager (with its
    /// accept loops). Per-connection tasks are detached and hold a drain `Watch` instead.
    tasks: JoinSet<()>,
}

/// Why a bound proxy stopped serving with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("admin server")]
    Admin(#[source] std::io::Error),
}

/// Starts the proxy's halves that `options` enable (identity, xDS and the listeners it
/// configures) and binds the admin port.
pub async fn bind(options: Options) -> Result<Bound, StartError> {
    // Owned from the start: an error below drops the set, which stops what was spawned.
    let mut tasks = JoinSet::new();
    let certs = match bootstrap::start_identity(&options)? {
        Some((certs, renewal)) => {
            tasks.spawn(owned(renewal));
            Some(certs)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut admin = AdminState::new(certs.clone()).with_metrics(registry);
    let (drain, watch) = drain::new();
    let (addresses, listeners) = watch::channel(BoundListeners::new());
    if let Some(node_id) = &options.node_id {
        let channel = bootstrap::xds_channel(&options, certs.as_ref())?;
        let node = bootstrap::node(node_id, options.role, &options.metadata);
        let protocol = if options.xds_sotw {
            Protocol::StateOfTheWorld
        } else {
            Protocol::Delta
        };
        let (client, config, status) =
            XdsClient::new(channel, protocol, AdsState::new(node), metrics.clone());
        let (runtime_tx, runtime) = watch::channel(Arc::default());
        tasks.spawn(crate::listener::run(
            config.clone(),
            runtime_tx,
            addresses,
            watch,
            metrics.clone(),
            crate::runtime::Settings {
                handshake_timeout: options.handshake_timeout,
            },
        ));
        admin = admin.with_xds(config, status, runtime);
        // Over mTLS the first connection must already present the certificate: HTTP/2 keeps
        // that connection for every later stream.
        let first_cert = (!options.xds_plaintext).then(|| certs.clone()).flatten();
        tasks.spawn(async move {
            if let Some(certs) = first_cert {
                let mut current = certs.subscribe();
                if current.wait_for(Option::is_some).await.is_err() {
                    return;
                }
            }
            client.run().await;
        });
    } else {
        // No listeners: nothing to drain.
        drop((watch, addresses));
    }
    let admin_listener = TcpListener::bind(options.admin_addr)
        .await
        .map_err(|source| StartError::AdminBind {
            address: options.admin_addr,
            source,
        })?;
    let admin_address = admin_listener
        .local_addr()
        .map_err(|source| StartError::AdminBind {
            address: options.admin_addr,
            source,
        })?;
    tracing::info!(
        identity = ?options.identity.as_ref().map(ToString::to_string),
        node = ?options.node_id,
        admin = %admin_address,
        "isthmus-proxy started"
    );
    Ok(Bound {
        admin_address,
        admin_listener,
        admin: crate::admin::router(admin),
        listeners,
        drain,
        drain_timeout: options.drain_timeout,
        tasks,
    })
}

impl Bound {
    /// The address the admin port is bound to (the port the kernel picked for port 0).
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The data-plane listeners bound now, by name, and their changes: empty at start (LDS
    /// names them), empty again once the proxy has stopped.
    pub fn listeners(&self) -> watch::Receiver<BoundListeners> {
        self.listeners.clone()
    }

    /// Serves until `shutdown` resolves, then drains (up to the drain timeout, the admin port
    /// still answering), stops the admin server and every task this proxy owns, and returns
    /// once they have ended.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let Bound {
            admin_listener,
            admin,
            drain,
            drain_timeout,
            mut tasks,
            ..
        } = self;
        // The drain runs here, not in the admin server's shutdown future (axum spawns that
        // one): dropping `serve` drops it too. The admin port answers until it is over.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let draining = async move {
            shutdown.await;
            tracing::info!(deadline = ?drain_timeout, "draining");
            if !drain.drain(drain_timeout).await {
                tracing::warn!("drain deadline reached with connections still open");
            }
            let _ = admin_stop.send(());
        };
        let server = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stopped.await;
            })
            .into_future();
        tokio::pin!(draining, server);
        let mut drained = false;
        let served = loop {
            tokio::select! {
                served = &mut server => break served,
                () = &mut draining, if !drained => drained = true,
                Some(ended) = tasks.join_next() => {
                    // The listener manager ends at the drain; nothing else should end early.
                    if let Err(e) = ended
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "a proxy task panicked");
                    }
                }
            }
        };
        tasks.shutdown().await;
        tracing::info!("isthmus-proxy stopped");
        served.map_err(ServeError::Admin)
    }
}

/// A task spawned elsewhere (the certificate manager's renewal) as a future of this proxy's
/// `JoinSet`: stopping that entry aborts the task.
fn owned(task: JoinHandle<()>) -> impl Future<Output = ()> + Send + 'static {
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    async move {
        let mut task = AbortOnDrop(task);
        let _ = (&mut task.0).await;
    }
}
