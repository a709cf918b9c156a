//! Proxyless gRPC: grpcio's own xDS client (Python, `xds:///` target, a bootstrap written by
//! `isthmusctl bootstrap grpc`) configured by `isthmusd` with no sidecar. Three gRPC echo
//! servers (`isthmusctl echo --grpc-listen`) are the endpoints of `ratings`: two of subset v1,
//! one of v2; a `VirtualService` splits 90/10 between the subsets (with a timeout and no
//! retries, which gRPC reads differently from Envoy), and the `DestinationRule` leaves the
//! load balancer to its default (least request for a sidecar, round robin for gRPC). Over 1,000 calls the split
//! holds within ±5 points, both v1 endpoints are used evenly, and `isthmusd` shows the client
//! with every type ACKed and no NACK.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests drive real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use isthmus_e2e::mesh::write;
use isthmus_e2e::{Isthmusd, bin, isthmusctl};
use serde_json::Value;

const TARGET: &str = "xds:///ratings.shop.svc.cluster.local:9080";
const CLIENT_NODE: &str = "sidecar~127.0.0.1~client.shop~shop.svc.cluster.local";

/// `isthmusctl echo` serving gRPC as `name`; killed on drop.
struct GrpcEcho {
    child: Child,
    addr: SocketAddr,
}

impl GrpcEcho {
    fn start(dir: &Path, name: &str) -> Self {
        let file = dir.join(format!("{name}.grpc-addr"));
        let mut child = Command::new(bin("isthmusctl"))
            .args(["echo", "--listen", "127.0.0.1:0", "--name", name])
            .args(["--grpc-listen", "127.0.0.1:0", "--grpc-address-file"])
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(addr) = text.trim().parse()
            {
                return Self { child, addr };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{name} did not publish its gRPC address");
    }
}

/// A child process killed and reaped on drop, also when an assertion fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mesh(endpoints: &[(&GrpcEcho, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(echo, version)| {
            format!(
                "  - {{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{version: {version}}}}}\n",
                echo.addr.port()
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.0.1, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: shop}}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: grpc, protocol: GRPC}}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: shop}}
spec:
  host: ratings.shop.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: shop}}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  http:
  - timeout: 5s
    retries: {{attempts: 0}}
    route:
    - {{destination: {{host: ratings.shop.svc.cluster.local, subset: v1}}, weight: 90}}
    - {{destination: {{host: ratings.shop.svc.cluster.local, subset: v2}}, weight: 10}}
"
    )
}

/// The client: `calls` unary calls on one channel, counting which server answered (field 1 of
/// `EchoReply`, decoded by hand so the test needs no generated stubs).
const CLIENT: &str = r#"
import collections, json, sys
import grpc
import grpc.experimental
target, calls = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(target)
unary = channel.unary_unary(
    "/isthmus.echo.v1.Echo/Unary",
    request_serializer=lambda b: b,
    response_deserializer=lambda b: b,
)
counts = collections.Counter()
for i in range(calls):
    reply = unary(b"\x0a\x02hi", timeout=10, wait_for_ready=(i == 0))
    assert reply[0] == 0x0A, reply
    counts[reply[2 : 2 + reply[1]].decode()] += 1
print(json.dumps(counts))
"#;

/// `isthmusctl bootstrap grpc` for the workload `client` in `shop`, with `extra` flags.
fn grpc_bootstrap(dir: &Path, daemon: &Isthmusd, extra: &[&str]) -> std::path::PathBuf {
    let bootstrap = dir.join("grpc-bootstrap.json");
    let xds = daemon.xds.to_string();
    let file = bootstrap.to_string_lossy().into_owned();
    let mut args = vec![
        "bootstrap",
        "grpc",
        "--workload",
        "client",
        "--namespace",
        "shop",
        "--xds-address",
        &xds,
        "--insecure-plaintext",
        "-o",
        &file,
    ];
    args.extend_from_slice(extra);
    let out = isthmusctl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bootstrap
}

fn run_client(dir: &Path, bootstrap: &Path, calls: u32) -> BTreeMap<String, u32> {
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args([TARGET, &calls.to_string()])
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_grpcio_xds_client_balances_and_follows_a_90_10_split_with_every_type_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        GrpcEcho::start(dir.path(), "v1-a"),
        GrpcEcho::start(dir.path(), "v1-b"),
        GrpcEcho::start(dir.path(), "v2"),
    );
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    write(
        &dir.path().join("config"),
        "mesh.yaml",
        &mesh(&[(&a, "v1"), (&b, "v1"), (&c, "v2")]),
    );
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let bootstrap = grpc_bootstrap(dir.path(), &daemon, &[]);

    let counts = run_client(dir.path(), &bootstrap, 1000);
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<u32>(), 1000, "{counts:?}");
    let v1 = count("v1-a") + count("v1-b");
    assert!(
        (850..=950).contains(&v1),
        "90/10 within ±5 points: {counts:?}"
    );
    // Round robin over v1's two endpoints.
    assert!(
        count("v1-a").abs_diff(count("v1-b")) <= v1 / 5,
        "balanced over both v1 endpoints: {counts:?}"
    );

    // `isthmusd`'s view of the client: a SotW stream, every type it asked for ACKed, no NACK.
    // Read from a second client kept running (the first has gone, and its stream with it).
    let mut client = KillOnDrop(Command::new("python3")
        .arg("-c")
        .arg(
            "import grpc, time, sys\n\
             ch = grpc.insecure_channel(sys.argv[1])\n\
             u = ch.unary_unary('/isthmus.echo.v1.Echo/Unary', request_serializer=lambda b: b, response_deserializer=lambda b: b)\n\
             u(b'\\x0a\\x02hi', timeout=10, wait_for_ready=True)\n\
             print('ready', flush=True)\n\
             time.sleep(30)\n",
        )
        .arg(TARGET)
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let stream = (0..50)
        .find_map(|_| {
            let status: Value = serde_json::from_str(&daemon.http_get("/debug/xds")).unwrap();
            let stream = status["streams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["node"] == CLIENT_NODE)
                .cloned();
            let acked = stream.as_ref().is_some_and(|s| {
                s["types"].as_array().unwrap().len() == 3
                    && s["types"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|t| t["acked"].is_string() && t["acked"] == t["sent"])
            });
            if acked {
                stream
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .unwrap_or_else(|| panic!("{}", daemon.http_get("/debug/xds")));
    // `isthmusctl status` lists it with its versions.
    let out = isthmusctl(&["status", "--debug-addr", &daemon.debug.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(client);
    assert!(text.contains(CLIENT_NODE), "{text}");
    for t in stream["types"].as_array().unwrap() {
        assert!(text.contains(t["acked"].as_str().unwrap()), "{text}");
    }
    assert!(!text.contains("NACK"), "{text}");
    assert_eq!(stream["protocol"], "sotw", "{stream:#}");
    let types: Vec<&str> = stream["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["typeUrl"].as_str().unwrap())
        .collect();
    for url in [
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    ] {
        assert!(types.contains(&url), "{url}: {stream:#}");
    }
    for t in stream["types"].as_array().unwrap() {
        assert!(t["nack"].is_null(), "{stream:#}");
    }
}

/// One call on a channel with gRPC's xDS credentials (`secure`) or plaintext: the raw reply,
/// or the error's status code.
const SECURE_CLIENT: &str = r#"
import sys
import grpc
import grpc.experimental
target, secure = sys.argv[1], sys.argv[2] == "secure"
if secure:
    creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    channel = grpc.secure_channel(target, creds)
else:
    channel = grpc.insecure_channel(target)
unary = channel.unary_unary(
    "/isthmus.echo.v1.Echo/Unary",
    request_serializer=lambda b: b,
    response_deserializer=lambda b: b,
)
try:
    reply = unary(b"\x0a\x02hi", timeout=5, wait_for_ready=secure)
    sys.stdout.buffer.write(reply)
except grpc.RpcError as e:
    print("status:", e.code().name)
"#;

#[test]
fn with_xds_credentials_a_grpcio_client_calls_a_strict_sidecar_over_mtls_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let echo = GrpcEcho::start(dir.path(), "secure-v1");
    let inbound = isthmus_e2e::free_port();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    write(
        &dir.path().join("config"),
        "mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.0.1, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: grpc, protocol: GRPC}}]
  workloadSelector: {{labels: {{app: secure}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: secure-v1, namespace: shop}}
spec: {{address: 127.0.0.61, labels: {{app: secure}}, serviceAccount: secure, ports: {{grpc: {inbound}}}}}
---
{strict}",
            strict = isthmus_e2e::mesh::STRICT
        ),
    );
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let sidecar = isthmus_e2e::proxy::IsthmusProxy::sidecar(
        dir.path(),
        &daemon,
        "127.0.0.61",
        "secure-v1",
        &[format!("APP_PORTS=grpc={}", echo.addr.port())],
    );
    sidecar.wait_ready(Duration::from_secs(20)).unwrap();
    let certs =
        isthmus_e2e::request_cert(&daemon, dir.path(), "spiffe://red.local/ns/shop/sa/client");
    let certs = certs.to_string_lossy();
    let bootstrap = grpc_bootstrap(dir.path(), &daemon, &["--cert-dir", &certs]);
    let script = dir.path().join("secure_client.py");
    std::fs::write(&script, SECURE_CLIENT).unwrap();
    let call = |mode: &str| {
        let out = Command::new("python3")
            .arg(&script)
            .args(["xds:///secure.shop.svc.cluster.local:9080", mode])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // mTLS with the client's own identity, which the sidecar passes on to the application.
    let reply = call("secure");
    assert!(
        reply.contains("secure-v1") && reply.contains("spiffe://red.local/ns/shop/sa/client"),
        "{reply:?}\n{}",
        sidecar.logs()
    );
    // The same client without xDS credentials speaks plaintext, which STRICT refuses.
    let refused = call("plaintext");
    assert_eq!(refused.trim(), "status: UNAVAILABLE", "{}", sidecar.logs());
    // Refused by the sidecar's policy, not because it went away: mTLS still passes.
    assert!(call("secure").contains("secure-v1"));
}
