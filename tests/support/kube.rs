//! Kubernetes mode's test fixtures: a [`TestApiServer`] on its own runtime (so that tests which
//! wait on real processes can stay synchronous), a kubeconfig pointing `isthmusd` at it, and
//! the core objects (`Service`, `EndpointSlice`, `Pod`) that place a workload at a loopback
//! address, as a cluster's controllers and kubelet would.

// Wall-clock time is right here: these helpers wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::test_api_server::TestApiServer;

/// The audience proxies' projected tokens are bound to.
pub const CA_AUDIENCE: &str = "isthmus-ca";

/// A test API server served by a runtime of its own.
#[derive(Debug)]
pub struct ApiServer {
    pub server: TestApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl ApiServer {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(TestApiServer::start()).unwrap();
        Self {
            server,
            _runtime: runtime,
        }
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: \"{url}\"}}
users:
- name: isthmusd
  user: {{token: isthmusd-token}}
contexts:
- name: test
  context: {{cluster: test, user: isthmusd}}
current-context: test
",
            url = self.server.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `isthmusd --config-source kubernetes` against this server for `trust_domain`,
    /// plus `extra` flags; the gateways reach the discovery port on loopback here, not through a
    /// cluster `Service`.
    pub fn isthmusd(&self, dir: &Path, trust_domain: &str, extra: &[&str]) -> crate::Isthmusd {
        let kubeconfig = self.kubeconfig(dir).to_string_lossy().into_owned();
        let mut args = vec![
            "--config-source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--federation-advertise-host",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        crate::Isthmusd::start(dir, trust_domain, &args).unwrap()
    }

    /// `apply_yaml`, failing the test on an error.
    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.server.apply_yaml(yaml) {
            panic!("applying to the test API server: {e}\n{yaml}");
        }
    }

    /// A pod at `ip` running as `service_account` (its status set as the kubelet would), with
    /// a service-account token for the CA registered under `token`.
    pub fn pod(&self, namespace: &str, name: &str, ip: &str, service_account: &str, app: &str) {
        self.apply(&format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
spec:
  serviceAccountName: {service_account}
  containers: [{{name: app, image: app}}]
"
        ));
        self.server
            .set_status(
                "Pod",
                Some(namespace),
                name,
                json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}),
            )
            .unwrap();
    }

    /// A proxy as a pod runs it: its certificate from `daemon`'s CA with the pod's
    /// service-account token (checked by TokenReview), then xDS over mTLS.
    pub fn pod_proxy(
        &self,
        dir: &Path,
        daemon: &crate::Isthmusd,
        node_id: &str,
        (namespace, service_account): (&str, &str),
        td: &str,
        extra: &[&str],
    ) -> crate::proxy::IsthmusProxy {
        let token = self.token(dir, namespace, service_account);
        let mut args: Vec<String> = [
            "--node-id",
            node_id,
            "--identity",
            &format!("spiffe://{td}/ns/{namespace}/sa/{service_account}"),
            "--token-file",
            &token.to_string_lossy(),
            "--root-cert",
            &daemon.root_file().to_string_lossy(),
            "--ca-address",
            &daemon.grpc.to_string(),
            "--xds-address",
            &daemon.grpc.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        crate::proxy::IsthmusProxy::start(dir, &format!("{namespace}-{service_account}"), &args)
    }

    /// Registers a projected service-account token for the CA and writes it to a file.
    pub fn token(&self, dir: &Path, namespace: &str, service_account: &str) -> PathBuf {
        let token = format!("sa-token-{namespace}-{service_account}");
        self.server.add_token_with_audiences(
            &token,
            &format!("system:serviceaccount:{namespace}:{service_account}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
            ],
            &[CA_AUDIENCE],
        );
        let file = dir.join(format!("{namespace}-{service_account}.token"));
        std::fs::write(&file, &token).unwrap();
        file
    }

    /// A `Service` with one TCP port, and the `EndpointSlice` placing its endpoint (`pod`,
    /// at `ip`) on `target` (the port the sidecar's inbound listener binds).
    #[allow(clippy::too_many_arguments)]
    pub fn service(
        &self,
        namespace: &str,
        name: &str,
        port_name: &str,
        port: u16,
        ip: &str,
        target: u16,
        pod: &str,
    ) {
        self.apply(&format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-slice
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {target}, protocol: TCP}}]
endpoints:
- addresses: [{ip}]
  conditions: {{ready: true, serving: true, terminating: false}}
  targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}
"
        ));
    }

    /// Waits up to `limit` for `check` on the stored object of `kind` to hold; its last value.
    pub fn wait_for(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Option<serde_json::Value>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let object = self.server.get(kind, Some(namespace), name);
            if let Some(o) = object.as_ref().filter(|o| check(o)) {
                return Ok(o.clone());
            }
            if std::time::Instant::now() > deadline {
                return Err(object);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
