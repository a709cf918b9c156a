//! One HTTP/1.1 request on a fresh connection, with a deadline: the runner's probes of admin
//! ports and debug ports, and calls through a sidecar's outbound listener (its HTTP proxy).

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one request may take, connection included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// `GET <target>` sent to `addr` (`target` is a path, or an absolute URL when `addr` is a
/// proxy), with `Host: host`: the status and body.
pub async fn get(addr: &str, target: &str, host: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(REQUEST_DEADLINE, get_inner(addr, target, host))
        .await
        .with_context(|| format!("{addr}: no answer to GET {target} within {REQUEST_DEADLINE:?}"))?
}

async fn get_inner(addr: &str, target: &str, host: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(target)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{addr}: GET {target}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET http://<host>/<path>` through the HTTP proxy at `proxy` (a sidecar's outbound port).
pub async fn get_via(proxy: &str, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    get(proxy, &format!("http://{host}{path}"), host).await
}
