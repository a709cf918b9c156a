//! A pod as the injector makes it, run in network namespaces the test creates: the injected
//! init container's command installs capture, the injected sidecar starts with the injected
//! environment, and then the application's plain `curl` to a mesh service goes through both
//! sidecars with mTLS, and the application's rewritten readiness probe passes under STRICT
//! (where the original probe, straight to the application's port, is refused).
//!
//! The pods come from the injector's own code (`inject_pod`); the kubelet's part is played by
//! the test: it fills in the downward-API fields, expands `$(VAR)`, mounts the token and root
//! files (here a bootstrap token of the directory-mode `isthmusd`, in place of the projected
//! service-account token), runs the containers' commands, and sends the probe.

#![allow(clippy::unwrap_used)]
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use isthmus_controlplane::admission::inject::{InjectSettings, Injection, inject_pod};
use isthmus_e2e::mesh::write;
use isthmus_e2e::netns::{Netns, link, setpriv_args};
use isthmus_e2e::{Isthmusd, bin, create_token};
use serde_json::{Value, json};

const CLIENT_IP: &str = "10.78.0.1";
const SERVER_IP: &str = "10.78.0.2";
const VIP: &str = "10.96.0.30";
const PROXY_UID: u32 = 1337;

/// `web` (HTTP, VIP 10.96.0.30) on the server pod, the client pod, STRICT mTLS.
fn mesh_yaml() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web.shop.svc.cluster.local]
  addresses: [{VIP}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: shop}}
spec: {{address: {SERVER_IP}, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {CLIENT_IP}, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
"
    )
}

/// A pod of `app` as a user writes it; the server's `isthmusd` port is excluded from its
/// inbound capture with Istio's annotation (in a cluster `isthmusd` is in a pod of its own).
fn pod(name: &str, service_account: &str, probe: bool) -> Value {
    let mut container = json!({"name": "app", "image": "example/app", "ports": [{"name": "http", "containerPort": 8080}]});
    if probe {
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"app": name},
            "annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "15012"},
        },
        "spec": {"serviceAccountName": service_account, "containers": [container]},
    })
}

fn inject(pod: &Value) -> Value {
    let mut settings = InjectSettings::new("cluster.local".parse().unwrap(), "isthmus-system");
    settings.isthmusd_address = format!("{SERVER_IP}:15012");
    match inject_pod(pod, "shop", &settings).unwrap() {
        Injection::Injected(pod) => pod,
        Injection::Skipped(reason) => panic!("not injected: {reason}"),
    }
}

fn init_container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs the injected `isthmus-init` container's command in `netns`, as root (the container
/// has `NET_ADMIN` and `NET_RAW`).
fn run_init_container(netns: &Netns, pod: &Value) {
    let init = init_container(pod, "isthmus-init");
    assert_eq!(strings(&init["command"]), ["isthmus-proxy"]);
    let args = strings(&init["args"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netns
        .run(&bin("isthmus-proxy").to_string_lossy(), &args)
        .unwrap_or_else(|e| panic!("the init container failed: {e:#}"));
    let rules = netns.run("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(rules.contains("--to-ports 15001"), "{rules}");
    assert!(rules.contains("--to-ports 15006"), "{rules}");
}

/// A process inside a namespace, killed on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the injected sidecar as the kubelet would: the container's environment with the
/// downward-API fields filled in and `$(VAR)` expanded, its mounts at `dir`, its user.
fn start_sidecar(netns: &Netns, dir: &Path, pod: &Value, ip: &str, daemon: &Isthmusd) -> Running {
    let sidecar = init_container(pod, "isthmus-proxy");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["runAsUser"], PROXY_UID);
    let name = pod["metadata"]["name"].as_str().unwrap();
    let fields: BTreeMap<&str, String> = [
        ("metadata.name", name.to_owned()),
        ("metadata.namespace", "shop".to_owned()),
        ("status.podIP", ip.to_owned()),
        (
            "spec.serviceAccountName",
            pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
    ]
    .into();
    // The volumes, mounted under the pod's directory.
    let pod_dir = dir.join(name);
    let mounts: BTreeMap<String, PathBuf> = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let path = m["mountPath"].as_str().unwrap().to_owned();
            let local = pod_dir.join(m["name"].as_str().unwrap());
            std::fs::create_dir_all(&local).unwrap();
            (path, local)
        })
        .collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in sidecar["env"].as_array().unwrap() {
        let key = entry["name"].as_str().unwrap().to_owned();
        let value = match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some(field) => fields[field].clone(),
            None => {
                let mut value = entry["value"].as_str().unwrap().to_owned();
                for (k, v) in &env {
                    value = value.replace(&format!("$({k})"), v);
                }
                value
            }
        };
        // A mounted path, where the test mounted it.
        let value = mounts
            .iter()
            .find_map(|(mount, local)| {
                value
                    .strip_prefix(mount.as_str())
                    .map(|rest| format!("{}{rest}", local.display()))
            })
            .unwrap_or(value);
        env.push((key, value));
    }
    let get = |key: &str| env.iter().find(|(k, _)| k == key).unwrap().1.clone();
    // The projected token: here the directory-mode isthmusd's bootstrap token for the identity.
    let token = create_token(daemon, dir, &get("ISTHMUS_IDENTITY"));
    std::fs::copy(&token, get("ISTHMUS_TOKEN_FILE")).unwrap();
    std::fs::copy(daemon.root_file(), get("ISTHMUS_ROOT_CERT")).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    assert_eq!(strings(&sidecar["command"]), ["isthmus-proxy"]);
    let log = dir.join(format!("{name}-sidecar.log"));
    let mut command = netns.command("setpriv");
    command
        .args(setpriv_args(PROXY_UID))
        .arg(bin("isthmus-proxy"))
        .args(strings(&sidecar["args"]))
        .envs(env)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Running {
        child: command.spawn().unwrap(),
        log,
    }
}

fn echo(netns: &Netns, dir: &Path, listen: &str, name: &str) -> Running {
    let log = dir.join(format!("{name}-app.log"));
    let child = netns
        .command(bin("isthmusctl"))
        .args(["echo", "--listen", listen, "--name", name])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Running { child, log }
}

/// The kubelet's request from `ns`, as the proxy's user (so not captured there).
fn kubelet(
    ns: &Netns,
    url: String,
) -> impl FnMut() -> Result<(u16, String), isthmus_e2e::CurlError> + '_ {
    move || ns.curl_as(PROXY_UID, &[url.as_str()])
}

/// Retries `probe` for up to 20 s until it answers `status`.
fn until_status(
    what: &str,
    status: u16,
    mut probe: impl FnMut() -> Result<(u16, String), isthmus_e2e::CurlError>,
    logs: impl Fn() -> String,
) -> String {
    let mut last = probe();
    for _ in 0..100 {
        if matches!(&last, Ok((s, _)) if *s == status) {
            return last.unwrap().1;
        }
        std::thread::sleep(Duration::from_millis(200));
        last = probe();
    }
    panic!("{what}: wanted {status}, got {last:?}\n{}", logs())
}

#[test]
fn an_injected_pod_captures_its_traffic_into_mtls_and_its_rewritten_probe_passes_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let client_ns = Netns::create("client").unwrap();
    let server_ns = Netns::create("server").unwrap();
    link(&client_ns, CLIENT_IP, &server_ns, SERVER_IP).unwrap();
    for (ns, via) in [(&client_ns, SERVER_IP), (&server_ns, CLIENT_IP)] {
        ns.run("ip", &["route", "add", "default", "via", via])
            .unwrap();
    }
    let server_pod = inject(&pod("web", "web", true));
    let client_pod = inject(&pod("client", "client", false));
    // The probe now points at the sidecar's status port.
    let probe = &server_pod["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"], 15020);
    let probe_path = probe["path"].as_str().unwrap().to_owned();
    assert_eq!(probe_path, "/app-health/app/readyz");

    // The init containers run first, in each pod's network namespace.
    run_init_container(&server_ns, &server_pod);
    run_init_container(&client_ns, &client_pod);

    let root = dir.path().join("isthmusd");
    std::fs::create_dir_all(root.join("config")).unwrap();
    write(&root.join("config"), "mesh.yaml", &mesh_yaml());
    let daemon =
        Isthmusd::start_in_netns(&root, "cluster.local", &server_ns.name, "0.0.0.0:15012").unwrap();
    let app = echo(&server_ns, dir.path(), "0.0.0.0:8080", "web");
    let server = start_sidecar(&server_ns, dir.path(), &server_pod, SERVER_IP, &daemon);
    let client = start_sidecar(&client_ns, dir.path(), &client_pod, CLIENT_IP, &daemon);
    let logs = || {
        format!(
            "server sidecar:\n{}\nclient sidecar:\n{}\nisthmusd:\n{}",
            server.logs(),
            client.logs(),
            daemon.logs()
        )
    };

    // The kubelet (outside the pod, so not captured by its rules: here the proxy's user in
    // the client's namespace) checks the sidecars' readiness, then the application's
    // rewritten probe.
    until_status(
        "server sidecar ready",
        200,
        kubelet(
            &client_ns,
            format!("http://{SERVER_IP}:15020/healthz/ready"),
        ),
        logs,
    );
    until_status(
        "client sidecar ready",
        200,
        kubelet(
            &server_ns,
            format!("http://{CLIENT_IP}:15020/healthz/ready"),
        ),
        logs,
    );
    until_status(
        "the rewritten readiness probe",
        200,
        kubelet(&client_ns, format!("http://{SERVER_IP}:15020{probe_path}")),
        logs,
    );
    // The original probe, straight to the application's port, is captured and refused:
    // STRICT wants mTLS.
    let original = client_ns.curl_as(PROXY_UID, &[&format!("http://{SERVER_IP}:8080/healthz")]);
    assert!(
        matches!(&original, Err(e) if e.is_closed()),
        "the original probe must not reach the application under STRICT: {original:?}"
    );

    // The application's plain curl to the service's address: through the client sidecar,
    // mTLS to the server's, which hands it to the application with the caller's identity.
    let body = until_status(
        "plain curl to the mesh service",
        200,
        || client_ns.curl(&[&format!("http://{VIP}:8080/from-the-app")]),
        logs,
    );
    assert!(body.contains("\"name\":\"web\""), "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/shop/sa/client"),
        "the server sidecar verified the client's certificate: {body}"
    );

    // The probe follows the application: stopped, it fails.
    drop(app);
    until_status(
        "the rewritten probe once the application is gone",
        503,
        kubelet(&client_ns, format!("http://{SERVER_IP}:15020{probe_path}")),
        logs,
    );
}
