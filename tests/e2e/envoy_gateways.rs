//! Stock Envoy 1.40 as a federation gateway, beside `isthmus-proxy` gateways of the other
//! mesh: the gateway configuration `isthmusd` generates is plain Envoy (TLS inspector and SNI
//! filter chains, `tcp_proxy` tunnelling over HTTP/2 CONNECT, CONNECT routes, SDS certificates
//! and per-trust-domain roots), so an Envoy bootstrapped by `isthmusctl bootstrap envoy --role
//! federation` is a gateway. Checked on each side: discovery and service traffic cross, the
//! caller's identity reaches green's workload end to end, the refusals of
//! `federation_gateways.rs` hold, and Envoy rejected no update.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests drive real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_e2e::federation::{DENY_RED_CLIENT, EnvoyGateway, Federation, IMPORTED};
use isthmus_e2e::h2connect::{self, ProbeError, Stage};
use isthmus_e2e::mesh::until;
use isthmus_e2e::{Isthmusd, request_cert};

const RED_CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";
const EXPORTED: &str = "ratings.bookinfo.svc.red-exports.local";
/// The identity green's `ServiceMeshPeer red` names as its `clientID`.
const PEER_CLIENT: &str = "spiffe://red.local/ns/istio-system/sa/egress-green-service-account";

/// A certificate for `identity` from `daemon`'s CA.
fn cert(f: &Federation, daemon: &Isthmusd, identity: &str) -> PathBuf {
    let dir = f
        .dir
        .path()
        .join("certs")
        .join(identity.replace(['/', ':'], "_"));
    std::fs::create_dir_all(&dir).unwrap();
    request_cert(daemon, &dir, identity)
}

/// The gateway refused the connection in the TLS handshake: it sent an alert, reset or closed
/// the connection (not the probe refusing the gateway's certificate).
fn refused_in_handshake(out: &Result<u16, ProbeError>) -> bool {
    // A TLS 1.3 server refuses a client certificate after the client's side of the handshake
    // is done: the alert then comes with the first read, at the CONNECT stage.
    matches!(out, Err(e) if matches!(e.stage, Stage::Tls | Stage::Http2 | Stage::Connect)
        && (e.tls_alert().is_some() || e.is_reset() || e.is_closed()))
}

/// The cross-mesh call passes, green's workload answers and sees red's client identity, and
/// red's discovery stream runs through its egress gateway.
fn assert_crosses(f: &Federation) {
    f.wait_up();
    let (status, body) = f.call(IMPORTED).expect("the cross-mesh call");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ratings-v1"), "green's ratings: {body}");
    assert!(
        body.contains(&format!("URI={RED_CLIENT}")),
        "green's sidecar saw red's caller identity (end-to-end mTLS): {body}"
    );
    let watch = || f.red_watch();
    until(
        "red's discovery stream through its egress gateway",
        Duration::from_secs(10),
        || watch()["connected"] == true,
    );
    assert_eq!(watch()["source"], format!("127.0.10.2:{}", f.ports.egress));
    // Not imported by red: no route; green's denial: green's sidecar's 403, through Envoy too.
    assert!(matches!(
        f.call("details.bookinfo.svc.green-imports.local"),
        Ok((404, _))
    ));
    f.write_green(true, DENY_RED_CLIENT);
    until(
        "green's DENY policy to apply",
        Duration::from_secs(10),
        || matches!(f.call(IMPORTED), Ok((403, _))),
    );
}

#[test]
fn an_envoy_ingress_gateway_admits_the_peer_and_refuses_the_rest() {
    let f = Federation::start_with_envoy(EnvoyGateway::GreenIngress);
    assert_crosses(&f);
    let envoy = f.envoy.as_ref().unwrap();

    let ingress = format!("127.0.20.2:{}", f.ports.ingress).parse().unwrap();
    let root = f.green().root_file();
    let probe = |cert: Option<&Path>, sni: &str, target: &str| {
        h2connect::connect(ingress, sni, target, cert, &root, "green.local")
    };
    let peer = cert(&f, &f.red, PEER_CLIENT);
    let target = format!("{EXPORTED}:9080");
    assert_eq!(probe(Some(&peer), EXPORTED, &target), Ok(200), "the peer");
    assert_eq!(
        probe(
            Some(&peer),
            EXPORTED,
            "details.bookinfo.svc.red-exports.local:9080"
        ),
        Ok(404),
        "a CONNECT target that is not exported"
    );
    let forged = probe(
        Some(&peer),
        "details.bookinfo.svc.red-exports.local",
        "details.bookinfo.svc.red-exports.local:9080",
    );
    assert!(
        refused_in_handshake(&forged),
        "an SNI not exported: {forged:?}"
    );
    let anonymous = probe(None, EXPORTED, &target);
    assert!(
        refused_in_handshake(&anonymous),
        "no certificate: {anonymous:?}"
    );
    let blue = Isthmusd::start(&f.dir.path().join("blue"), "blue.local", &[]).unwrap();
    let third = cert(
        &f,
        &blue,
        "spiffe://blue.local/ns/istio-system/sa/egress-green-service-account",
    );
    let out = probe(Some(&third), EXPORTED, &target);
    assert!(refused_in_handshake(&out), "a third trust domain: {out:?}");
    let workload = cert(&f, &f.red, RED_CLIENT);
    let out = probe(Some(&workload), EXPORTED, &target);
    assert!(
        refused_in_handshake(&out),
        "a red identity other than the clientID: {out:?}"
    );
    envoy.assert_no_rejected_update();
}

#[test]
fn an_envoy_egress_gateway_carries_only_imported_services() {
    let f = Federation::start_with_envoy(EnvoyGateway::RedEgress);
    assert_crosses(&f);
    let envoy = f.envoy.as_ref().unwrap();

    let client = cert(&f, &f.red, RED_CLIENT);
    let egress = format!("127.0.10.2:{}", f.ports.egress).parse().unwrap();
    // `details` is green's but not imported by red: no chain at red's egress.
    let out = h2connect::connect(
        egress,
        "outbound_.9080_._.details.bookinfo.svc.green-imports.local",
        "x:9080",
        Some(&client),
        &f.green().root_file(),
        "green.local",
    );
    assert!(
        refused_in_handshake(&out),
        "no chain at red's egress: {out:?}"
    );
    // Discovery through the egress is `isthmusd`'s alone: a workload is refused.
    let out = h2connect::connect(
        egress,
        "discovery.green.federation.local",
        "x:8188",
        Some(&client),
        &f.red.root_file(),
        "red.local",
    );
    assert!(
        refused_in_handshake(&out),
        "a workload on the discovery chain: {out:?}"
    );
    envoy.assert_no_rejected_update();
}
