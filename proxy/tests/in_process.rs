//! `isthmus-proxy` run in-process, as a test harness does: bound with its admin port on port
//! 0, asked over the address it reports, then stopped by its shutdown future; `serve` returns
//! and the proxy's own tasks (xDS client, listener manager, admin server) have ended.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_proxy::app;
use isthmus_proxy::bootstrap::Options;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(10);

/// `GET path` over HTTP/1.1: the status and the body.
async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn admin_on_port_zero() -> Options {
    Options {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(2),
        ..Options::default()
    }
}

/// With xDS pointed at a server that accepts and never answers: the admin port serves (not
/// ready: no configuration), and shutdown stops the xDS client (its connection closes) and
/// the listener manager.
#[tokio::test]
async fn bound_in_process_it_serves_admin_and_stops_on_shutdown() {
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = Options {
        node_id: Some("sidecar~127.0.0.1~web.shop~shop.svc.cluster.local".to_owned()),
        xds_plaintext: true,
        xds_address: Some(xds.local_addr().unwrap().to_string()),
        ..admin_on_port_zero()
    };
    let bound = app::bind(options).await.unwrap();
    let admin = bound.admin_address();
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");
    let mut listeners = bound.listeners();
    assert!(listeners.borrow().is_empty(), "no LDS yet, no listener");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));

    let (status, body) = get(admin, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("PRE_INITIALIZING"), "{body}");
    // The xDS client dialled the (silent) server.
    let (mut stream, _) = tokio::time::timeout(LIMIT, xds.accept())
        .await
        .expect("the xDS client connects")
        .unwrap();
    let (status, _) = get(admin, "/stats/prometheus").await;
    assert_eq!(status, 200);

    stop.send(()).unwrap();
    tokio::time::timeout(LIMIT, serving)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();

    // The xDS client is gone: its connection closes.
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the xDS connection is still open");
    // The listener manager is gone: it published no listener and dropped its sender.
    assert!(listeners.borrow_and_update().is_empty());
    assert!(
        listeners.changed().await.is_err(),
        "the listener manager still runs"
    );
    // The admin port is closed.
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "admin still accepts"
    );
}

/// Without identity or xDS the proxy is ready at once, and stops as soon as it is asked (no
/// listener to drain).
#[tokio::test]
async fn without_xds_it_is_ready_and_stops_at_once() {
    let bound = app::bind(admin_on_port_zero()).await.unwrap();
    let admin = bound.admin_address();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    assert_eq!(get(admin, "/ready").await, (200, "LIVE\n".to_owned()));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), serving)
        .await
        .expect("nothing to drain: serve returns at once")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "admin still accepts"
    );
}

/// A start-up error names what is wrong and keeps its cause.
#[tokio::test]
async fn an_admin_port_in_use_is_a_start_error_with_its_cause() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = Options {
        admin_addr: taken.local_addr().unwrap(),
        ..Options::default()
    };
    let error = app::bind(options).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("admin address {}", taken.local_addr().unwrap())
    );
    let cause = std::error::Error::source(&error).expect("the bind error is the source");
    assert!(
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse),
        "{cause}"
    );
}
