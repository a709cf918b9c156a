//! Reading `isthmusd`'s debug port (JSON over HTTP/1.1) with hyper's client.

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `GET http://<addr><path>` and the JSON it returns.
pub async fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach isthmusd's debug port at {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{path}: HTTP {status}");
    serde_json::from_slice(&body).with_context(|| format!("{path}: not JSON"))
}
