//! `isthmus-proxy` as a real process for end-to-end tests.

// Wall-clock time is right here: these helpers wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::envoy::curl;
use crate::free_port;
use crate::netns::{Netns, setpriv_args};

/// A running `isthmus-proxy`, killed on drop.
#[derive(Debug)]
pub struct IsthmusProxy {
    child: Child,
    admin: String,
    log: PathBuf,
    /// The network namespace it runs in, if not this one.
    netns: Option<String>,
}

impl Drop for IsthmusProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IsthmusProxy {
    /// Starts `isthmus-proxy` with `args` and a free admin port; its log is `dir/<name>.log`.
    pub fn start(dir: &Path, name: &str, args: &[String]) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        Self::spawn(
            Command::new(crate::bin("isthmus-proxy")),
            dir,
            name,
            admin,
            args,
            None,
        )
    }

    /// A proxy with node id `node_id` running as `identity`, the way a deployed proxy runs: a
    /// bootstrap token from `daemon`'s token store gets its certificate, and the certificate
    /// opens its xDS stream on the mTLS port (the gate hands it its own node's configuration
    /// only). `args` are more flags (`--role`, `--metadata`, …).
    pub fn with_identity(
        dir: &Path,
        daemon: &crate::Isthmusd,
        node_id: &str,
        name: &str,
        identity: &str,
        args: &[String],
    ) -> Self {
        // A folder per proxy: two proxies' tokens never share a file (it is re-read at each
        // renewal).
        let tokens = dir.join(format!("{name}-token"));
        std::fs::create_dir_all(&tokens).expect("a token folder");
        let token = crate::create_token(daemon, &tokens, identity);
        let mut all = vec![
            "--node-id".to_owned(),
            node_id.to_owned(),
            "--identity".to_owned(),
            identity.to_owned(),
            "--token-file".to_owned(),
            token.to_string_lossy().into_owned(),
            "--root-cert".to_owned(),
            daemon.root_file().to_string_lossy().into_owned(),
            "--ca-address".to_owned(),
            daemon.grpc.to_string(),
            "--xds-address".to_owned(),
            daemon.grpc.to_string(),
        ];
        all.extend_from_slice(args);
        Self::start(dir, name, &all)
    }

    /// A federation gateway (`--role federation`, node id `router~…`), configured by `daemon`
    /// over its loopback plaintext xDS port.
    pub fn gateway(dir: &Path, daemon: &crate::Isthmusd, node_id: &str, name: &str) -> Self {
        let args = [
            "--role",
            "federation",
            "--node-id",
            node_id,
            "--xds-plaintext",
            "--xds-address",
            &daemon.xds.to_string(),
        ]
        .map(str::to_owned);
        Self::start(dir, name, &args)
    }

    /// A proxy with node id `node_id` (any role and namespace), configured by `daemon` over
    /// its loopback plaintext xDS port, with `metadata` (`KEY=VALUE`).
    pub fn node(
        dir: &Path,
        daemon: &crate::Isthmusd,
        node_id: &str,
        name: &str,
        metadata: &[String],
    ) -> Self {
        let mut args = vec![
            "--node-id".to_owned(),
            node_id.to_owned(),
            "--xds-plaintext".to_owned(),
            "--xds-address".to_owned(),
            daemon.xds.to_string(),
        ];
        for m in metadata {
            args.extend(["--metadata".to_owned(), m.clone()]);
        }
        Self::start(dir, name, &args)
    }

    /// The sidecar of `workload` (namespace `shop`) at `ip`, configured by `daemon` over its
    /// loopback plaintext xDS port, with `metadata` (`KEY=VALUE`).
    pub fn sidecar(
        dir: &Path,
        daemon: &crate::Isthmusd,
        ip: &str,
        workload: &str,
        metadata: &[String],
    ) -> Self {
        let mut args = vec![
            "--node-id".to_owned(),
            format!("sidecar~{ip}~{workload}.shop~shop.svc.cluster.local"),
            "--xds-plaintext".to_owned(),
            "--xds-address".to_owned(),
            daemon.xds.to_string(),
        ];
        for m in metadata {
            args.extend(["--metadata".to_owned(), m.clone()]);
        }
        Self::start(dir, workload, &args)
    }

    /// Starts `isthmus-proxy` inside `netns` as the user `uid` (the one capture rules skip, as
    /// Istio's 1337), its admin port on 127.0.0.1:15000 there.
    pub fn start_in_netns(
        netns: &Netns,
        uid: u32,
        dir: &Path,
        name: &str,
        args: &[String],
    ) -> Self {
        let mut command = netns.command("setpriv");
        command
            .args(setpriv_args(uid))
            .arg(crate::bin("isthmus-proxy"));
        Self::spawn(
            command,
            dir,
            name,
            "127.0.0.1:15000".into(),
            args,
            Some(netns.name.clone()),
        )
    }

    fn spawn(
        mut command: Command,
        dir: &Path,
        name: &str,
        admin: String,
        args: &[String],
        netns: Option<String>,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        // `ISTHMUS_E2E_PROXY_CONCURRENCY=N`: every proxy with N worker threads (benchmarks).
        let concurrency: Vec<String> = std::env::var("ISTHMUS_E2E_PROXY_CONCURRENCY")
            .map(|n| vec!["--concurrency".to_owned(), n])
            .unwrap_or_default();
        // `ISTHMUS_E2E_PROXY_ARGS="--dns-addr 127.0.0.1:0"`: more flags for every proxy
        // (benchmarks: the DNS proxy on, docs/benchmarks.md).
        let extra: Vec<String> = std::env::var("ISTHMUS_E2E_PROXY_ARGS")
            .map(|a| a.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let child = command
            .args(["--admin-addr", &admin])
            .args(args)
            .args(&concurrency)
            .args(&extra)
            // `ISTHMUS_E2E_PROXY_LOG=debug` for more detail when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("ISTHMUS_E2E_PROXY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the proxy log"))
            .spawn()
            .expect("spawn isthmus-proxy");
        Self {
            child,
            admin,
            log,
            netns,
        }
    }

    /// An admin-port request: (status, body), or why there was no answer.
    pub fn get(&self, path: &str) -> Result<(u16, String), crate::CurlError> {
        let url = format!("http://{}{path}", self.admin);
        match &self.netns {
            None => curl(&[&url]),
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "curl"]);
                crate::curl_with(command, &[&url])
            }
        }
    }

    /// Waits up to `limit` for `/ready` to answer 200; the last answer (a status, or why
    /// there was none) otherwise.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::from("not asked");
        while start.elapsed() < limit {
            match self.get("/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("/ready: {last}\n{}", self.logs()))
    }

    /// An admin-port request that must be answered: fails the test with the proxy's log
    /// when the admin port does not answer (the proxy is gone).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.get(path)
            .unwrap_or_else(|e| panic!("{}'s admin port: {e}\n{}", self.admin, self.logs()))
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; its exit status, or
    /// `None` if it is still running.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The admin address (`host:port`).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the proxy logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn config_dump(&self) -> Value {
        let (status, body) = self.admin_get("/config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/config_dump is JSON")
    }
}
