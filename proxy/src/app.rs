//! The proxy as a value: [`bind`] starts everything and binds the admin port (and the status
//! port, with `--status-addr`), returning the addresses it listens on ([`Bound`]); [`Bound::serve`] serves until its shutdown future
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
//! and status ports still answer; then their servers stop, and the long-lived tasks (xDS
//! client, certificate renewal, listener manager) are stopped and awaited.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::AdminState;
use crate::bootstrap::{self, Options, StartError};
use crate::config::XdsType;
use crate::drain;
use crate::listener::BoundListeners;
use crate::metrics::Metrics;
use crate::status::AppProbers;
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
    /// With `--status-addr`.
    status: Option<StatusPort>,
    /// With `--dns-addr`: where the DNS proxy listens (UDP and TCP).
    dns_address: Option<SocketAddr>,
    listeners: watch::Receiver<BoundListeners>,
    drain: drain::Trigger,
    drain_timeout: Duration,
    /// The long-lived tasks: certificate renewal, xDS client, listener manager (with its
    /// accept loops). Per-connection tasks are detached and hold a drain `Watch` instead.
    tasks: JoinSet<()>,
    /// Its span exporters are flushed at the end.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// The status port, bound (`status.rs`).
#[derive(Debug)]
struct StatusPort {
    address: SocketAddr,
    listener: TcpListener,
    router: axum::Router,
}

/// Why a bound proxy stopped serving with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("admin server")]
    Admin(#[source] std::io::Error),
    /// Not returned at present: the status server (`status::serve`) logs and retries a failed
    /// accept, as the admin port's server does.
    #[error("status server")]
    Status(#[source] std::io::Error),
}

/// Starts the proxy's halves that `options` enable (identity, xDS and the listeners it
/// configures) and binds the admin port, and the status port with `--status-addr`.
pub async fn bind(options: Options) -> Result<Bound, StartError> {
    // Checked before anything starts.
    let probers = bootstrap::app_probers(&options)?;
    // Owned from the start: an error below drops the set, which stops what was spawned.
    let mut tasks = JoinSet::new();
    let certs = match bootstrap::start_identity(&options)? {
        Some((certs, renewal)) => {
            tasks.spawn(owned(renewal));
            Some(certs)
        }
        None => None,
    };
    let telemetry = options.telemetry.then(|| {
        let tracer = crate::telemetry::trace::Tracer::new();
        Arc::new(crate::telemetry::Telemetry {
            tracer: match &options.node_id {
                Some(id) => tracer.with_node_id(id.clone()),
                None => tracer,
            },
            ..Default::default()
        })
    });
    let metrics = Arc::new(Metrics {
        telemetry: telemetry.clone(),
        ..Metrics::default()
    });
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut admin = AdminState::new(certs.clone()).with_metrics(registry);
    let (drain, watch) = drain::new();
    let (addresses, listeners) = watch::channel(BoundListeners::new());
    // Checked before anything binds.
    let upstream = match options.dns_addr {
        Some(_) if options.node_id.is_none() => return Err(StartError::DnsNeedsXds),
        // Elsewhere it would answer (and forward for) anyone who can reach it.
        Some(address) if !address.ip().is_loopback() => {
            return Err(StartError::DnsNotLoopback { address });
        }
        Some(address) => {
            let mut upstream =
                crate::dns::Upstream::read(&options.resolv_conf).map_err(StartError::ResolvConf)?;
            // Never itself: a query would go round until the forwarding slots ran out.
            upstream.servers.retain(|server| *server != address);
            Some(upstream)
        }
        None => None,
    };
    let mut dns_address = None;
    if let Some(node_id) = &options.node_id {
        let channel = bootstrap::xds_channel(&options, certs.as_ref())?;
        let node = bootstrap::node(node_id, options.role, &options.metadata);
        let protocol = if options.xds_sotw {
            Protocol::StateOfTheWorld
        } else {
            Protocol::Delta
        };
        // The name table only when the DNS proxy runs (Envoy's five types otherwise).
        let types = XdsType::ALL
            .into_iter()
            .chain(options.dns_addr.map(|_| XdsType::NameTable));
        let (client, config, status) = XdsClient::new(
            channel,
            protocol,
            AdsState::with_types(node, types),
            metrics.clone(),
        );
        if let (Some(address), Some(upstream)) = (options.dns_addr, upstream) {
            let server = crate::dns::bind(address, upstream, config.clone(), metrics.clone())
                .await
                .map_err(|source| StartError::DnsBind { address, source })?;
            dns_address = Some(
                server
                    .local_addr()
                    .map_err(|source| StartError::DnsBind { address, source })?,
            );
            tasks.spawn(server.serve());
        }
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
    let status = bind_status(&options, &admin, probers).await?;
    tracing::info!(
        identity = ?options.identity.as_ref().map(ToString::to_string),
        node = ?options.node_id,
        admin = %admin_address,
        status = ?status.as_ref().map(|s| s.address),
        dns = ?dns_address,
        "isthmus-proxy started"
    );
    Ok(Bound {
        admin_address,
        admin_listener,
        admin: crate::admin::router(admin),
        status,
        dns_address,
        listeners,
        drain,
        drain_timeout: options.drain_timeout,
        tasks,
        telemetry,
    })
}

/// The status port with `--status-addr`, its readiness that of `admin`; else `None` (and the
/// probes, if any, unused).
async fn bind_status(
    options: &Options,
    admin: &AdminState,
    probers: AppProbers,
) -> Result<Option<StatusPort>, StartError> {
    let Some(requested) = options.status_addr else {
        if !probers.is_empty() {
            tracing::warn!(
                probes = probers.len(),
                "--app-probers without --status-addr: the application probes are not served"
            );
        }
        return Ok(None);
    };
    let router = crate::status::router(admin.clone(), probers).map_err(StartError::ProbeTls)?;
    let bind_error = |source| StartError::StatusBind {
        address: requested,
        source,
    };
    let listener = TcpListener::bind(requested).await.map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    Ok(Some(StatusPort {
        address,
        listener,
        router,
    }))
}

impl Bound {
    /// The address the admin port is bound to (the port the kernel picked for port 0).
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The address the status port is bound to (the port the kernel picked for port 0);
    /// `None` without `--status-addr`.
    pub fn status_address(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(|s| s.address)
    }

    /// The address the DNS proxy listens on (UDP and TCP); `None` without `--dns-addr`.
    pub fn dns_address(&self) -> Option<SocketAddr> {
        self.dns_address
    }

    /// The data-plane listeners bound now, by name, and their changes: empty at start (LDS
    /// names them), empty again once the proxy has stopped.
    pub fn listeners(&self) -> watch::Receiver<BoundListeners> {
        self.listeners.clone()
    }

    /// Serves until `shutdown` resolves, then drains (up to the drain timeout, the admin and
    /// status ports still answering), stops their servers and every task this proxy owns, and
    /// returns once they have ended.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let Bound {
            admin_listener,
            admin,
            status,
            drain,
            drain_timeout,
            mut tasks,
            telemetry,
            ..
        } = self;
        // The drain runs here, not in the servers' shutdown futures (axum spawns those): dropping
        // `serve` drops it too. The admin and status ports answer until it is over.
        let (servers_stop, servers_stopped) = watch::channel(false);
        let draining = async move {
            shutdown.await;
            tracing::info!(deadline = ?drain_timeout, "draining");
            if !drain.drain(drain_timeout).await {
                tracing::warn!("drain deadline reached with connections still open");
            }
            let _ = servers_stop.send(true);
        };
        let admin_server = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(stopped(servers_stopped.clone()))
            .into_future();
        // Bounded connections (header timeout, connection cap): the status port listens on
        // every address.
        let status_server = async move {
            if let Some(status) = status {
                crate::status::serve(
                    status.listener,
                    status.router,
                    crate::status::Limits::default(),
                    stopped(servers_stopped),
                )
                .await;
            }
            Ok(())
        };
        // Both end at the drain's end; one failing ends the other.
        let server = async move {
            tokio::try_join!(
                async move { admin_server.await.map_err(ServeError::Admin) },
                status_server
            )
            .map(|((), ())| ())
        };
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
        // The last spans of the drain reach the collector.
        if let Some(telemetry) = telemetry {
            telemetry.tracer.shutdown().await;
        }
        tracing::info!("isthmus-proxy stopped");
        served
    }
}

/// Resolves once `stop` turns true (or its sender is gone): the servers' shutdown signal.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
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
