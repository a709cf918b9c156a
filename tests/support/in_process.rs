//! `isthmusd` and `isthmus-proxy` in this process: each is the library's `bind` (every port on
//! 127.0.0.1:0, the addresses read back from what was bound) and `serve` on a task of the
//! test's runtime, stopped through its shutdown future. No binary is built or started, no port
//! is guessed, and a proxy talks to `isthmusd` exactly as the processes do: a bootstrap token,
//! its certificate from the CA, then delta ADS over mTLS on the gRPC port.
//!
//! Tests that need processes (signals, iptables, crashes, a stock Envoy) keep using
//! [`crate::Isthmusd`] and [`crate::IsthmusProxy`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_controlplane::auth::tokens::TokenStore;
use isthmus_controlplane::daemon::{Addresses, DaemonConfig, DaemonError};
use isthmus_identity::{SpiffeId, TrustDomain};
use isthmus_proxy::app::ServeError;
use isthmus_proxy::bootstrap::Options;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process `isthmusd`.
#[derive(Debug)]
pub struct InProcessIsthmusd {
    pub addresses: Addresses,
    pub state_dir: PathBuf,
    pub trust_domain: TrustDomain,
    /// Bootstrap tokens of the proxies started from here, one file each.
    tokens_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl InProcessIsthmusd {
    /// `isthmusd` on `config_dir` (read and watched as `--config-dir`), its state (CA, tokens)
    /// in `state_dir`, every port on 127.0.0.1:0.
    pub async fn start(config_dir: &Path, state_dir: &Path, trust_domain: &str) -> Self {
        let trust_domain: TrustDomain = trust_domain.parse().expect("a trust domain");
        let config = DaemonConfig::local(
            config_dir.to_owned(),
            state_dir.to_owned(),
            trust_domain.clone(),
        );
        Self::start_with(config).await
    }

    /// `isthmusd` with a configuration the test adjusted (start from [`DaemonConfig::local`]).
    pub async fn start_with(config: DaemonConfig) -> Self {
        let state_dir = config.state_dir.clone();
        let trust_domain = config.trust_domain.clone();
        let bound = isthmus_controlplane::daemon::bind(config)
            .await
            .unwrap_or_else(|e| panic!("isthmusd in-process: {}", chain(&e)));
        let addresses = *bound.addresses();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addresses,
            state_dir,
            trust_domain,
            tokens_dir: tempfile::tempdir().expect("a token folder"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A proxy for `node_id` acting for `identity`, configured by this `isthmusd` over mTLS.
    pub async fn proxy(
        &self,
        node_id: &str,
        identity: &SpiffeId,
        metadata: &[(String, String)],
    ) -> InProcessProxy {
        let (_, token) = TokenStore::new(&self.state_dir)
            .create(identity)
            .unwrap_or_else(|e| panic!("a bootstrap token for {identity}: {e}"));
        let token_file = self
            .tokens_dir
            .path()
            .join(format!("{}.token", sanitize(node_id)));
        std::fs::write(&token_file, format!("{token}\n")).expect("the token file");
        let grpc = self.addresses.grpc.to_string();
        let options = Options {
            identity: Some(identity.clone()),
            ca_address: grpc.clone(),
            root_cert: Some(self.state_dir.join("root-cert.pem")),
            token_file: Some(token_file),
            node_id: Some(node_id.to_owned()),
            metadata: metadata.to_vec(),
            xds_address: Some(grpc),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout: Duration::from_millis(200),
            ..Options::default()
        };
        InProcessProxy::start(options).await
    }

    /// `GET path` on the debug port: (status code, body).
    pub async fn debug_get(&self, path: &str) -> (u16, String) {
        http_get(self.addresses.debug, path).await
    }

    /// Stops it (drain, then every task) and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("isthmusd's serve task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessIsthmusd {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A running in-process `isthmus-proxy`.
#[derive(Debug)]
pub struct InProcessProxy {
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl InProcessProxy {
    /// A proxy with `options` (the admin port should be on port 0).
    pub async fn start(options: Options) -> Self {
        let bound = isthmus_proxy::app::bind(options)
            .await
            .unwrap_or_else(|e| panic!("isthmus-proxy in-process: {}", chain(&e)));
        let admin = bound.admin_address();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until its admin port reports ready (every subscribed resource received).
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = http_get(self.admin, "/ready").await;
            if status == 200 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not ready after {within:?}: {status} {body}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the admin port: (status code, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Stops it (drain, then every task) and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("the proxy's serve task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One `GET` over HTTP/1.1 with `Connection: close`: (status code, body).
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("GET {address}{path}: {e}"));
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .await
        .unwrap_or_else(|e| panic!("GET {address}{path}: {e}"));
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {address}{path}: no status in {head:?}"));
    (status, body.to_owned())
}

/// An error and its sources, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

fn sanitize(node_id: &str) -> String {
    node_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
