//! Reach (issue 20): applications that know nothing of the mesh call imported services by
//! name, in network namespaces the test creates, with Istio's capture rules and DNS capture.
//!
//! ```text
//!  red-app (pod)            red (node)                         green (node)          green-app (pod)
//!  10.10.0.5  ──veth──  10.10.0.1 | 192.168.77.1  ──veth──  192.168.77.2 | 10.10.0.1  ──veth──  10.10.0.5
//!  curl, getent,        isthmusd red, egress gateway,         isthmusd green,          ratings (HTTP),
//!  python (TCP);        dnsmasq (the pod's resolver)          ingress gateway          tcp-echo (TCP);
//!  sidecar + capture                                                                   sidecar + capture
//! ```
//!
//! Both meshes use the same addresses (10.10.0.0/24, the workloads both 10.10.0.5): only the
//! gateways' addresses cross, as in two clusters whose pod networks overlap.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use isthmus_e2e::federation::indent;
use isthmus_e2e::mesh::write;
use isthmus_e2e::netns::{Netns, link};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, bin, create_token};

const POD_IP: &str = "10.10.0.5";
const NODE_IP: &str = "10.10.0.1";
const RED_WAN: &str = "192.168.77.1";
const GREEN_WAN: &str = "192.168.77.2";
const PROXY_UID: u32 = 1337;
const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";
const IMPORTED_TCP: &str = "tcp-echo.bookinfo.svc.green-imports.local";
const OUTSIDE: &str = "outside.example.test";

/// Green: its ingress gateway for red (on the WAN), `ratings` (HTTP) and `tcp-echo` (TCP) on
/// its pod, both exported to red; red's root and `ServiceMeshPeer red`.
fn green_config(red_root: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ingress-red, namespace: istio-system}}
spec:
  hosts: [ingress-red.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls-federation}}]
  workloadSelector: {{labels: {{app: ingress-red}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress-red, namespace: istio-system}}
spec: {{address: {GREEN_WAN}, labels: {{app: ingress-red}}, serviceAccount: ingress-red-service-account}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: bookinfo}}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo, namespace: bookinfo}}
spec:
  hosts: [tcp-echo.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9000, name: tcp-echo}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1, namespace: bookinfo}}
spec: {{address: {POD_IP}, labels: {{app: ratings}}, serviceAccount: ratings}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: bookinfo}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: red-ca-root-cert, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: red, namespace: istio-system}}
spec:
  remote: {{addresses: [{RED_WAN}], servicePort: 15443}}
  gateways: {{ingress: {{name: ingress-red}}, egress: {{name: egress-red}}}}
  security:
    trustDomain: red.local
    clientID: red.local/ns/istio-system/sa/egress-green-service-account
    certificateChain: {{kind: ConfigMap, name: red-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {{name: red, namespace: istio-system}}
spec:
  exportRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: ratings}}
  - type: NameSelector
    nameSelector: {{namespace: bookinfo, name: tcp-echo}}
",
        root = indent(red_root),
    )
}

/// Red: its client on its pod, its egress gateway on the node, green's root,
/// `ServiceMeshPeer green` and the import of everything green exports from `bookinfo`.
fn red_config(green_root: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: {POD_IP}, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec:
  hosts: [egress-green.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 15443, name: tls-federation}}]
  workloadSelector: {{labels: {{app: egress-green}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: egress-green, namespace: istio-system}}
spec: {{address: {NODE_IP}, labels: {{app: egress-green}}, serviceAccount: egress-green-service-account}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: green-ca-root-cert, namespace: istio-system}}
data:
  root-cert.pem: |
{root}---
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {{name: green, namespace: istio-system}}
spec:
  remote: {{addresses: [{GREEN_WAN}], servicePort: 15443}}
  gateways: {{ingress: {{name: ingress-green}}, egress: {{name: egress-green}}}}
  security:
    trustDomain: green.local
    clientID: green.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {{kind: ConfigMap, name: green-ca-root-cert}}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {{name: green, namespace: istio-system}}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {{namespace: bookinfo}}
",
        root = indent(green_root),
    )
}

/// A process inside a namespace, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/etc/netns/<ns>/resolv.conf`: what `ip netns exec` shows the namespace's processes as
/// `/etc/resolv.conf` (the pod's own, as the kubelet writes it). Removed on drop.
struct ResolvConf(PathBuf);

impl ResolvConf {
    fn write(netns: &Netns, text: &str) -> Self {
        let dir = Path::new("/etc/netns").join(&netns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        Self(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(netns: &Netns, program: &str, args: &[&str], log: &Path) -> Running {
    Running(
        netns
            .command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A TCP echo server on 127.0.0.1:`port` (the pod's application; Python's standard library).
const TCP_ECHO: &str = "
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', int(sys.argv[1])))
server.listen(16)
def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
";

/// A TCP client that resolves `name` (getaddrinfo: the pod's resolver, so the DNS proxy),
/// sends `payload` and prints what comes back.
const TCP_CLIENT: &str = "
import socket, sys
name, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
with socket.create_connection((name, port), timeout=5) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = b''
    while True:
        data = s.recv(65536)
        if not data:
            break
        got += data
print(got.decode())
";

fn install_capture(netns: &Netns, extra: &[&str]) {
    let uid = PROXY_UID.to_string();
    let mut args = vec!["capture", "--proxy-uid", uid.as_str()];
    args.extend_from_slice(extra);
    netns
        .run(&bin("isthmus-proxy").to_string_lossy(), &args)
        .unwrap_or_else(|e| panic!("isthmus-proxy capture: {e:#}"));
}

struct Proxy<'a> {
    netns: &'a Netns,
    daemon: &'a Isthmusd,
    /// How the proxy reaches its isthmusd.
    isthmusd: String,
    name: &'a str,
    node: String,
    identity: String,
    extra: Vec<String>,
}

impl Proxy<'_> {
    fn start(self, dir: &Path) -> IsthmusProxy {
        let token = create_token(self.daemon, dir, &self.identity);
        // The proxies run as PROXY_UID: they must read their tokens and the roots in the
        // control planes' state folders (beside `dir`).
        std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.parent().unwrap_or(dir))
            .status()
            .unwrap();
        let mut args = vec![
            "--identity".to_owned(),
            self.identity,
            "--root-cert".into(),
            self.daemon.root_file().to_string_lossy().into_owned(),
            "--token-file".into(),
            token.to_string_lossy().into_owned(),
            "--ca-address".into(),
            self.isthmusd,
            "--node-id".into(),
            self.node,
        ];
        args.extend(self.extra);
        IsthmusProxy::start_in_netns(self.netns, PROXY_UID, dir, self.name, &args)
    }
}

fn metric(proxy: &IsthmusProxy, prefix: &str) -> u64 {
    let (_, text) = proxy.admin_get("/stats/prometheus");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn unmodified_applications_reach_imported_services_by_name_across_overlapping_networks() {
    let dir = tempfile::tempdir().unwrap();
    let red_app = Netns::create("red-app").unwrap();
    let red = Netns::create("red").unwrap();
    let green = Netns::create("green").unwrap();
    let green_app = Netns::create("green-app").unwrap();
    link(&red_app, POD_IP, &red, NODE_IP).unwrap();
    link(&red, RED_WAN, &green, GREEN_WAN).unwrap();
    link(&green, NODE_IP, &green_app, POD_IP).unwrap();
    for pod in [&red_app, &green_app] {
        pod.run("ip", &["route", "add", "default", "via", NODE_IP])
            .unwrap();
    }
    // The red pod's resolver is dnsmasq on its node, with the search list of a pod in `shop`
    // (a 1 s timeout, so a lost answer fails the test in seconds rather than glibc's minutes).
    let _resolv = ResolvConf::write(
        &red_app,
        &format!(
            "nameserver {NODE_IP}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:1\n"
        ),
    );
    let _dnsmasq = spawn(
        &red,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={NODE_IP}"),
            // What kube-dns does for names it lacks under the cluster domain: NXDOMAIN.
            "--local=/cluster.local/",
            &format!("--address=/{OUTSIDE}/{NODE_IP}"),
            "--pid-file=",
            "--log-queries",
            "--log-facility=-",
        ],
        &dir.path().join("dnsmasq.log"),
    );

    // The control planes: each on its node, every proxy of its mesh dialling 15012.
    let green_daemon = Isthmusd::start_in_netns(
        &dir.path().join("green"),
        "green.local",
        &green.name,
        "0.0.0.0:15012",
    )
    .unwrap();
    let red_daemon = Isthmusd::start_in_netns(
        &dir.path().join("red"),
        "red.local",
        &red.name,
        "0.0.0.0:15012",
    )
    .unwrap();
    let red_root = std::fs::read_to_string(red_daemon.root_file()).unwrap();
    let green_root = std::fs::read_to_string(green_daemon.root_file()).unwrap();
    write(
        &dir.path().join("green/config"),
        "mesh.yaml",
        &green_config(&red_root),
    );
    write(
        &dir.path().join("red/config"),
        "mesh.yaml",
        &red_config(&green_root),
    );

    // The pods: capture (red's with DNS capture, to the name server of its resolv.conf), the
    // applications on loopback only.
    install_capture(&red_app, &["--capture-dns"]);
    install_capture(&green_app, &[]);
    let rules = red_app.run("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(
        rules.contains(&format!(
            "-A ISTHMUS_DNS -d {NODE_IP}/32 -p udp -j REDIRECT --to-ports 15053"
        )),
        "{rules}"
    );
    let _ratings = spawn(
        &green_app,
        &bin("isthmusctl").to_string_lossy(),
        &["echo", "--listen", "127.0.0.1:9080", "--name", "ratings-v1"],
        &dir.path().join("ratings.log"),
    );
    let _tcp_echo = spawn(
        &green_app,
        "python3",
        &["-c", TCP_ECHO, "9000"],
        &dir.path().join("tcp-echo.log"),
    );

    let proxies_dir = dir.path().join("proxies");
    std::fs::create_dir_all(&proxies_dir).unwrap();
    let gateway = || vec!["--role".to_owned(), "federation".to_owned()];
    let capture = |more: &[&str]| {
        let mut args = vec![
            "--metadata".to_owned(),
            "INTERCEPTION_MODE=REDIRECT".to_owned(),
        ];
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };
    let proxies = [
        Proxy {
            netns: &green,
            daemon: &green_daemon,
            isthmusd: "127.0.0.1:15012".into(),
            name: "green-ingress",
            node: format!(
                "router~{GREEN_WAN}~ingress-red.istio-system~istio-system.svc.cluster.local"
            ),
            identity: "spiffe://green.local/ns/istio-system/sa/ingress-red-service-account".into(),
            extra: gateway(),
        }
        .start(&proxies_dir),
        Proxy {
            netns: &green_app,
            daemon: &green_daemon,
            isthmusd: format!("{NODE_IP}:15012"),
            name: "green-ratings",
            node: format!("sidecar~{POD_IP}~ratings-v1.bookinfo~bookinfo.svc.cluster.local"),
            identity: "spiffe://green.local/ns/bookinfo/sa/ratings".into(),
            extra: capture(&[]),
        }
        .start(&proxies_dir),
        Proxy {
            netns: &red,
            daemon: &red_daemon,
            isthmusd: "127.0.0.1:15012".into(),
            name: "red-egress",
            node: format!(
                "router~{NODE_IP}~egress-green.istio-system~istio-system.svc.cluster.local"
            ),
            identity: "spiffe://red.local/ns/istio-system/sa/egress-green-service-account".into(),
            extra: gateway(),
        }
        .start(&proxies_dir),
        Proxy {
            netns: &red_app,
            daemon: &red_daemon,
            isthmusd: format!("{NODE_IP}:15012"),
            name: "red-client",
            node: format!("sidecar~{POD_IP}~client.shop~shop.svc.cluster.local"),
            identity: "spiffe://red.local/ns/shop/sa/client".into(),
            extra: capture(&["--dns-addr", "127.0.0.1:15053"]),
        }
        .start(&proxies_dir),
    ];
    for proxy in &proxies {
        if let Err(e) = proxy.wait_ready(Duration::from_secs(30)) {
            panic!(
                "{e}\n{}\nred isthmusd:\n{}\ngreen isthmusd:\n{}",
                proxy.logs(),
                red_daemon.logs(),
                green_daemon.logs()
            );
        }
    }
    let client = &proxies[3];

    // The imported names get addresses from 240.240.0.0/16, shown on red's debug port.
    let mut allocated = None;
    for _ in 0..300 {
        let (_, body) = red
            .curl(&[&format!("http://{}/debug/addresses", red_daemon.debug)])
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let find = |host: &str| {
            status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["host"] == host && s["allocated"] == true)
                .and_then(|s| s["addresses"][0].as_str().map(str::to_owned))
        };
        if let (Some(http), Some(tcp)) = (find(IMPORTED), find(IMPORTED_TCP)) {
            allocated = Some((http, tcp));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some((vip, tcp_vip)) = allocated else {
        panic!(
            "no addresses for the imports\nred:\n{}\ngreen:\n{}",
            red_daemon.logs(),
            green_daemon.logs()
        );
    };
    assert!(
        vip.starts_with("240.240.") && tcp_vip.starts_with("240.240."),
        "{vip} {tcp_vip}"
    );
    assert_ne!(vip, tcp_vip);

    // The application's resolver (glibc, through the capture rules) gets it from the sidecar.
    let mut resolved = String::new();
    for _ in 0..100 {
        resolved = red_app
            .run("getent", &["hosts", IMPORTED])
            .unwrap_or_default();
        if resolved.contains(&vip) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        resolved.starts_with(&format!("{vip} ")),
        "getent hosts {IMPORTED}: {resolved:?}\n{}",
        client.logs()
    );

    // Plain curl, no proxy variable: green's answer, over mTLS, naming red's client.
    let url = format!("http://{IMPORTED}:9080/plain");
    let mut answer = red_app.curl(&[&url]);
    for _ in 0..100 {
        if matches!(answer, Ok((200, _))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        answer = red_app.curl(&[&url]);
    }
    let Ok((200, body)) = answer else {
        panic!(
            "{answer:?}\nclient:\n{}\negress:\n{}\ningress:\n{}\nratings:\n{}",
            client.logs(),
            proxies[2].logs(),
            proxies[0].logs(),
            proxies[1].logs()
        );
    };
    assert!(body.contains("\"name\":\"ratings-v1\""), "{body}");
    assert!(
        body.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "green's sidecar saw red's client by its certificate: {body}"
    );

    // Raw TCP to the imported TCP port, by name: the bytes come back.
    let echoed = red_app
        .run(
            "python3",
            &[
                "-c",
                TCP_CLIENT,
                IMPORTED_TCP,
                "9000",
                "bytes across the boundary",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}\nclient:\n{}", client.logs()));
    assert_eq!(echoed.trim(), "bytes across the boundary");

    // A name that is not the mesh's: the pod's own resolver answers, through the sidecar.
    let outside = red_app
        .run("getent", &["hosts", OUTSIDE])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", client.logs()));
    assert!(outside.starts_with(&format!("{NODE_IP} ")), "{outside:?}");
    let mesh = metric(
        client,
        "isthmus_proxy_dns_requests_total{protocol=\"udp\",result=\"mesh\"}",
    );
    let forwarded = metric(
        client,
        "isthmus_proxy_dns_requests_total{protocol=\"udp\",result=\"forwarded\"}",
    );
    assert!(
        mesh > 0 && forwarded > 0,
        "mesh {mesh}, forwarded {forwarded}"
    );
    // The application's DNS went to the sidecar, not straight to dnsmasq: dnsmasq saw only
    // what the sidecar forwarded, never the imported name.
    let dnsmasq = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(dnsmasq.contains(OUTSIDE), "{dnsmasq}");
    assert!(
        !dnsmasq.contains(&format!("query[A] {IMPORTED} ")),
        "{dnsmasq}"
    );
}
