//! The test helpers tell a refusal from a dead process: a proxy that is gone gives "connection
//! refused", which none of the negative checks (an empty reply, a reset, a TLS alert, an HTTP
//! status) accepts; a listener that closes or resets gives exactly that refusal.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use isthmus_e2e::envoy::curl;
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{CurlFailure, free_port, h2connect};

/// What the STRICT and network-RBAC checks accept as "refused" (`mixed.rs`, `envoy.rs`,
/// `proxy_xds.rs`, `capture.rs`): the connection accepted, then closed before any response.
fn refused_under_strict(answer: &Result<(u16, String), isthmus_e2e::CurlError>) -> bool {
    matches!(answer, Err(e) if e.is_closed())
}

#[test]
fn a_dead_proxy_is_connection_refused_which_no_negative_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    // An isthmus-proxy with no control plane: it runs, unready, and answers on its admin port.
    let proxy = IsthmusProxy::start(
        dir.path(),
        "alone",
        &[
            "--node-id".into(),
            "sidecar~127.0.0.1~alone.shop~shop.svc.cluster.local".into(),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
    );
    let url = format!("http://{}/ready", proxy.admin());
    let mut alive = curl(&[&url]);
    for _ in 0..100 {
        if alive.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        alive = curl(&[&url]);
    }
    assert!(
        matches!(alive, Ok((503, _))),
        "alive and unready: {alive:?}\n{}",
        proxy.logs()
    );

    drop(proxy);
    let dead = curl(&[&url]);
    let Err(e) = &dead else {
        panic!("a dead proxy answered: {dead:?}");
    };
    assert_eq!(e.kind(), CurlFailure::Refused, "{e}");
    assert!(e.is_refused(), "{e}");
    assert!(
        e.stderr.contains("Connection refused") || e.stderr.contains("Couldn't connect"),
        "curl's own words are kept: {e}"
    );
    // Not one of the refusals the negative checks name.
    assert!(!refused_under_strict(&dead), "{e}");
    assert!(
        !e.is_reset() && !e.is_tls_alert() && e.tls_alert().is_none(),
        "{e}"
    );
    assert_eq!(e.status, None, "{e}");
}

#[test]
fn the_helpers_tell_a_close_a_reset_and_a_closed_port_apart() {
    // Accepts, waits for the request, then closes: nothing was answered.
    let closes = TcpListener::bind("127.0.0.1:0").unwrap();
    let closes_at = closes.local_addr().unwrap();
    let closer = std::thread::spawn(move || {
        let (mut stream, _) = closes.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // Read the whole request, so that closing sends FIN, not RST.
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            seen.extend_from_slice(&buf[..n]);
        }
    });
    let closed = curl(&[&format!("http://{closes_at}/")]);
    closer.join().unwrap();
    assert!(refused_under_strict(&closed), "{closed:?}");
    let e = closed.unwrap_err();
    assert!(
        e.is_empty_reply() && !e.is_refused() && !e.is_reset(),
        "{e}"
    );

    // Accepts, leaves the request unread and closes: the kernel answers with RST.
    let resets = TcpListener::bind("127.0.0.1:0").unwrap();
    let resets_at = resets.local_addr().unwrap();
    let resetter = std::thread::spawn(move || {
        let (stream, _) = resets.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(stream);
    });
    let reset = curl(&[&format!("http://{resets_at}/")]);
    resetter.join().unwrap();
    assert!(refused_under_strict(&reset), "{reset:?}");
    let e = reset.unwrap_err();
    assert!(e.is_reset() && !e.is_empty_reply(), "{e}");
    assert!(!e.is_refused(), "{e}");

    // Nothing listens: refused, by curl and by the HTTP/2 CONNECT probe alike.
    let port = free_port();
    let e = curl(&[&format!("http://127.0.0.1:{port}/")]).unwrap_err();
    assert!(e.is_refused() && !e.is_closed(), "{e}");
    let root = tempfile::tempdir().unwrap();
    let root_file = root.path().join("root-cert.pem");
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&root_file, params.self_signed(&ca).unwrap().pem()).unwrap();
    let probe = h2connect::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "svc.example",
        "svc.example:80",
        None,
        &root_file,
        "example.local",
    );
    assert!(
        matches!(&probe, Err(e) if e.is_refused() && !e.is_closed() && e.tls_alert().is_none()),
        "{probe:?}"
    );
}
