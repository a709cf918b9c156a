//! HTTP/1.1 upgrades across the proxy (WebSocket): an upgrade type the connection manager
//! allows (`upgrade_configs`) is forwarded on an upstream connection of its own; on `101
//! Switching Protocols` both connections are handed over and bytes are copied both ways until
//! either side closes. Other upgrade requests get 403, as in Envoy.

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::pool::Pool;
use super::{Body, BoxError, local_reply};
use crate::drain;
use crate::upstream::ClusterRuntime;
use crate::upstream::outlier::Outcome;

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` with
/// `Upgrade: <protocol>`), lowercase.
pub fn requested(request: &http::Request<hyper::body::Incoming>) -> Option<String> {
    if request.version() != http::Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE)?.to_str().ok()?;
    asks.then(|| protocol.trim().to_ascii_lowercase())
}

/// Puts back the hop-by-hop headers an upgrade needs.
fn upgrade_headers(headers: &mut HeaderMap, protocol: &str) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(value) = HeaderValue::from_str(protocol) {
        headers.insert(header::UPGRADE, value);
    }
}

/// Forwards the upgrade request `upstream` (headers already edited) to a host of `cluster`,
/// and on 101 joins `downstream` to the upstream connection, holding `drain` (a drain waits
/// for the upgraded connection and ends it at its deadline). Not retried.
pub async fn forward(
    downstream: OnUpgrade,
    mut upstream: http::Request<Body>,
    protocol: &str,
    cluster: &ClusterRuntime,
    drain: &drain::Watch,
) -> http::Response<Body> {
    let Some(host) = cluster.pick() else {
        return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    upgrade_headers(upstream.headers_mut(), protocol);
    let mut response = match Pool::send_upgrade(cluster, &host, upstream).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(cluster = cluster.cluster.name, error = %e, "upgrade failed");
            cluster.record(&host, Outcome::GatewayError);
            return local_reply(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            );
        }
    };
    cluster.record(&host, Outcome::Success);
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return response.map(|b| {
            http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(b, |e| {
                Box::new(e) as BoxError
            }))
        });
    }
    let upstream_io = hyper::upgrade::on(&mut response);
    let name = cluster.cluster.name.clone();
    // Detached, ending when either side closes or the drain is over. The downstream connection
    // is handed over after the 101: the task holds a drain `Watch` of its own, so a drain waits
    // for the upgraded connection (up to the deadline).
    let drain = drain.clone();
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream_io) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(cluster = name, error = %e, "upgrade not completed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match drain
            .until_ended(tokio::io::copy_bidirectional(&mut down, &mut up))
            .await
        {
            Some(Err(e)) => {
                tracing::debug!(cluster = name, error = %e, "upgraded connection ended");
            }
            Some(Ok(_)) => {}
            None => tracing::debug!(cluster = name, "upgraded connection cut: drain deadline"),
        }
    });
    let (mut parts, _) = response.into_parts();
    upgrade_headers(&mut parts.headers, protocol);
    http::Response::from_parts(parts, super::full(bytes::Bytes::new()))
}
