//! Who may read a mesh's export catalog, with real processes: red and green federated through
//! their gateways (`isthmus_e2e::federation`). Only red's control plane may watch what green
//! exports to red, directly or through red's egress gateway; a workload of red's mesh, with a
//! certificate from red's own CA, is refused on both paths. Green's status shows every stream
//! of red's control plane, each on its own.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_controlplane::daemon::Addresses;
use isthmus_e2e::discovery::{Side, WatchError, watch};
use isthmus_e2e::federation::Federation;
use isthmus_e2e::mesh::until;
use isthmus_e2e::{Isthmusd, request_cert};
use serde_json::Value;

/// Red's control plane as green's `ServiceMeshPeer red` names it (the default
/// `controlPlaneID`: `isthmusd` in `isthmus-system`, where the fixture's red runs).
const RED_CONTROL_PLANE: &str = "spiffe://red.local/ns/isthmus-system/sa/isthmusd";
const RED_WORKLOAD: &str = "spiffe://red.local/ns/shop/sa/client";
const DISCOVERY_SNI: &str = "discovery.green.federation.local";

/// A certificate for `identity` from `daemon`'s CA, in a folder of its own under `dir`.
fn cert(dir: &Path, daemon: &Isthmusd, identity: &str) -> PathBuf {
    let dir = dir.join(identity.replace(['/', ':'], "_"));
    std::fs::create_dir_all(&dir).unwrap();
    request_cert(daemon, &dir, identity)
}

struct Peers {
    f: Federation,
    red_root: PathBuf,
    green_root: PathBuf,
    control_plane: PathBuf,
    workload: PathBuf,
}

impl Peers {
    fn start() -> Self {
        let f = Federation::start();
        f.wait_up();
        let certs = f.dir.path().join("certs");
        let control_plane = cert(&certs, &f.red, RED_CONTROL_PLANE);
        let workload = cert(&certs, &f.red, RED_WORKLOAD);
        Self {
            red_root: f.red.root_file(),
            green_root: f.green().root_file(),
            control_plane,
            workload,
            f,
        }
    }

    /// A session with green's control plane as `cert`.
    fn to_green<'a>(&'a self, cert: &'a Path) -> Side<'a> {
        Side {
            cert,
            server_root: &self.green_root,
            server_td: "green.local",
        }
    }

    /// A session with red's egress gateway as `cert`.
    fn to_egress<'a>(&'a self, cert: &'a Path) -> Side<'a> {
        Side {
            cert,
            server_root: &self.red_root,
            server_td: "red.local",
        }
    }

    fn green_discovery(&self) -> String {
        self.f.green().federation.unwrap().to_string()
    }

    fn red_egress(&self) -> String {
        format!("127.0.10.2:{}", self.f.ports.egress)
    }

    /// Green's status of the streams red's side opened (`remotes` of `ServiceMeshPeer red`).
    fn green_remotes(&self) -> Vec<Value> {
        let status: Value =
            serde_json::from_str(&self.f.green().http_get("/debug/federation")).unwrap();
        status["serviceMeshPeers"]["istio-system/red"]["discoveryStatus"]["active"][0]["remotes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
fn a_workload_of_the_peer_mesh_cannot_read_the_export_catalog_on_the_discovery_port() {
    let p = Peers::start();
    let refused = watch(&p.green_discovery(), "green", p.to_green(&p.workload), None);
    match &refused {
        Err(WatchError::Status(tonic::Code::PermissionDenied, message)) => assert!(
            message.contains("not the control plane of peer red"),
            "{message}"
        ),
        other => panic!("red's workload must be refused by green's exporter: {other:?}"),
    }
    // The same port, the same CA, red's control plane: the catalog (ratings and reviews).
    let listed = watch(
        &p.green_discovery(),
        "green",
        p.to_green(&p.control_plane),
        None,
    );
    assert_eq!(
        listed.unwrap(),
        2,
        "red's control plane reads what green exports to red"
    );
}

#[test]
fn the_egress_gateway_carries_discovery_for_its_own_control_plane_only() {
    let p = Peers::start();
    // Red's control plane: an outer session with the egress as itself, its own inside.
    let listed = watch(
        &p.red_egress(),
        DISCOVERY_SNI,
        p.to_green(&p.control_plane),
        Some(p.to_egress(&p.control_plane)),
    );
    assert_eq!(
        listed.unwrap(),
        2,
        "red's control plane watches through its egress"
    );
    // A workload's outer session is refused by the gateway, whatever it would carry.
    let refused = watch(
        &p.red_egress(),
        DISCOVERY_SNI,
        p.to_green(&p.control_plane),
        Some(p.to_egress(&p.workload)),
    );
    let alert = refused.as_ref().err().and_then(WatchError::tls_alert);
    assert!(
        alert.is_some(),
        "the egress must refuse a workload's certificate with a TLS alert: {refused:?}"
    );
    // The attack that worked before: the workload's own session with green, sent to the egress
    // by SNI alone. The egress now terminates that session itself: it is not green.
    let refused = watch(
        &p.red_egress(),
        DISCOVERY_SNI,
        p.to_green(&p.workload),
        None,
    );
    match &refused {
        Err(WatchError::Transport(message)) => assert!(
            message.contains("certificate") && message.contains("red.local"),
            "the session ends at red's egress, whose certificate is red's: {message}"
        ),
        other => panic!("no catalog through the egress for a workload: {other:?}"),
    }
}

#[test]
fn a_second_stream_of_the_control_plane_ending_leaves_the_first_shown_connected() {
    let p = Peers::start();
    until(
        "green to show red's stream",
        Duration::from_secs(20),
        || p.green_remotes().iter().any(|r| r["connected"] == true),
    );
    // A second watch as red's control plane: it gets the list, then goes away.
    let listed = watch(
        &p.green_discovery(),
        "green",
        p.to_green(&p.control_plane),
        None,
    );
    assert_eq!(listed.unwrap(), 2);
    until(
        "green to see the second stream end",
        Duration::from_secs(10),
        || {
            p.green_remotes()
                .iter()
                .any(|r| r["connected"] == false && r["lastDisconnect"].is_string())
        },
    );
    let remotes = p.green_remotes();
    let live: Vec<&Value> = remotes.iter().filter(|r| r["connected"] == true).collect();
    assert_eq!(
        live.len(),
        1,
        "red's importer's stream is still live and shown so: {remotes:#?}"
    );
    assert!(
        live[0]["source"]
            .as_str()
            .unwrap()
            .starts_with(RED_CONTROL_PLANE),
        "{remotes:#?}"
    );
}

/// `isthmusd` with every port on 0 and `extra`; its `addresses.json` and its log once it is up.
fn isthmusd_addresses(dir: &Path, extra: &[&str]) -> (Addresses, String) {
    let state = dir.join("state");
    let log = dir.join("isthmusd.log");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let mut child = std::process::Command::new(isthmus_e2e::bin("isthmusd"))
        .args(["--config-dir", &dir.join("config").to_string_lossy()])
        .args(["--state-dir", &state.to_string_lossy()])
        .args(["--trust-domain", "red.local", "--grpc-addr", "127.0.0.1:0"])
        .args([
            "--debug-addr",
            "127.0.0.1:0",
            "--federation-addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    until(
        "isthmusd to bind its ports",
        Duration::from_secs(20),
        || Addresses::read(&state).is_ok(),
    );
    let addresses = Addresses::read(&state).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    (addresses, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn plaintext_xds_is_off_unless_asked_for_and_then_said_loudly() {
    let dir = tempfile::tempdir().unwrap();
    // By default no port hands out configuration (and with it private keys) without mTLS.
    let (addresses, log) = isthmusd_addresses(&dir.path().join("default"), &[]);
    assert!(
        addresses.xds_plaintext.is_none(),
        "no plaintext xDS by default: {addresses:?}"
    );
    assert!(!log.contains("INSECURE"), "{log}");
    // The opt-in is explicit, and isthmusd says at start-up what it gives away.
    let (addresses, log) = isthmusd_addresses(
        &dir.path().join("opt-in"),
        &["--xds-plaintext-addr", "127.0.0.1:0"],
    );
    assert!(addresses.xds_plaintext.is_some(), "{addresses:?}");
    assert!(
        log.contains("INSECURE") && log.contains("PRIVATE KEY"),
        "the opt-in is stated loudly: {log}"
    );
}

#[test]
fn the_importer_accepts_only_the_peers_control_plane_as_the_discovery_server() {
    let p = Peers::start();
    // Red now expects green's control plane to be another identity than the one green's
    // isthmusd has: whatever answers must not be believed.
    let config = p.f.dir.path().join("red/config/mesh.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replace(
        "    trustDomain: green.local\n",
        "    trustDomain: green.local\n    controlPlaneID: green.local/ns/elsewhere/sa/isthmusd\n",
    );
    assert_ne!(text, changed);
    std::fs::write(&config, changed).unwrap();
    let watch = || -> Value {
        let status: Value = serde_json::from_str(&p.f.red.http_get("/debug/federation")).unwrap();
        status["serviceMeshPeers"]["istio-system/green"]["discoveryStatus"]["active"][0]["watch"]
            .clone()
    };
    let refused = |w: &Value| {
        w["connected"] == false
            && w["lastDisconnectStatus"].as_str().is_some_and(|s| {
                s.contains("UnexpectedIdentity")
                    && s.contains("/ns/isthmus-system/sa/isthmusd")
                    && s.contains("spiffe://green.local/ns/elsewhere/sa/isthmusd")
            })
    };
    for _ in 0..200 {
        if refused(&watch()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        refused(&watch()),
        "red's importer refuses green's isthmusd: {:#}",
        watch()
    );
    // And it stays refused: no stream comes up with the wrong server.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(watch()["connected"], false, "{}", watch());
}

/// `isthmusd` inside `netns` with its debug port on every address of it, and `extra`.
fn isthmusd_in(
    netns: &isthmus_e2e::netns::Netns,
    dir: &Path,
    extra: &[&str],
) -> std::process::Child {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let child = netns
        .command(isthmus_e2e::bin("isthmusd"))
        .args(["--config-dir", &dir.join("config").to_string_lossy()])
        .args(["--state-dir", &dir.join("state").to_string_lossy()])
        .args([
            "--trust-domain",
            "red.local",
            "--grpc-addr",
            "127.0.0.1:15012",
        ])
        .args([
            "--debug-addr",
            "0.0.0.0:15014",
            "--federation-addr",
            "127.0.0.1:8188",
        ])
        .args(extra)
        .stderr(std::fs::File::create(dir.join("isthmusd.log")).unwrap())
        .spawn()
        .unwrap();
    until(
        "isthmusd's debug port in its namespace",
        Duration::from_secs(20),
        || matches!(netns.curl(&["http://127.0.0.1:15014/ready"]), Ok((200, _))),
    );
    child
}

#[test]
fn the_debug_endpoints_answer_loopback_callers_only_unless_allowed() {
    use isthmus_e2e::netns::{Netns, link};
    let dir = tempfile::tempdir().unwrap();
    let (server, other) = (
        Netns::create("dbg-server").unwrap(),
        Netns::create("dbg-other").unwrap(),
    );
    link(&server, "10.78.0.1", &other, "10.78.0.2").unwrap();
    let mut daemon = isthmusd_in(&server, &dir.path().join("default"), &[]);
    // From another host: metrics and readiness, not the configuration or the catalogs.
    for path in [
        "/debug/federation",
        "/debug/xds",
        "/debug/config",
        "/debug/config_dump?proxy=x",
    ] {
        let (status, body) = other
            .curl(&[&format!("http://10.78.0.1:15014{path}")])
            .unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("loopback callers only"), "{body}");
    }
    for path in ["/metrics", "/ready"] {
        let (status, _) = other
            .curl(&[&format!("http://10.78.0.1:15014{path}")])
            .unwrap();
        assert_eq!(status, 200, "{path}");
    }
    // On the host itself (isthmusctl status, kubectl port-forward): everything.
    let (status, body) = server
        .curl(&["http://127.0.0.1:15014/debug/federation"])
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let _ = daemon.kill();
    let _ = daemon.wait();
    // Opted in: remote callers too.
    let mut daemon = isthmusd_in(
        &server,
        &dir.path().join("allowed"),
        &["--debug-allow-remote"],
    );
    let (status, body) = other
        .curl(&["http://10.78.0.1:15014/debug/federation"])
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
