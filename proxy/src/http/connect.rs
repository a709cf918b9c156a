//! CONNECT terminated here: a route with `upgrade_configs: [{upgrade_type: CONNECT,
//! connect_config: {}}]` answers `200` and sends the stream's payload as plain TCP to a host of
//! its cluster (HTTP/2 CONNECT, RFC 9113 §8.5, and HTTP/1.1 CONNECT alike). The federation
//! ingress gateway uses it: the payload is the caller's end-to-end TLS session.

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{Body, local_reply};
use crate::config::route::{Forward, Targets};
use crate::runtime::Runtime;

pub async fn terminate(
    mut request: http::Request<Incoming>,
    action: &Forward,
    runtime: &Runtime,
) -> http::Response<Body> {
    let cluster_name = match &action.targets {
        Targets::Cluster(name) => name.as_str(),
        Targets::Weighted(targets) => match targets.first() {
            Some(t) => t.cluster.as_str(),
            None => return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, ""),
        },
    };
    let Some(cluster) = runtime.clusters.get(cluster_name).cloned() else {
        return local_reply(http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    let (mut upstream, _host) = match cluster.connect().await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::debug!(cluster = cluster_name, error = %e, "CONNECT upstream failed");
            return local_reply(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            );
        }
    };
    let downstream = hyper::upgrade::on(&mut request);
    let name = cluster_name.to_owned();
    // Detached, ending when either side closes. Over HTTP/2 the tunnel is a stream of the
    // downstream connection, whose task (and drain `Watch`) lives until the stream ends; over
    // HTTP/1.1 the connection is handed over here and a drain does not wait for the tunnel
    // (it would need the connection's `Watch` passed in).
    tokio::spawn(async move {
        let downstream = match downstream.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(cluster = name, error = %e, "CONNECT not completed");
                return;
            }
        };
        let mut downstream = TokioIo::new(downstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            tracing::debug!(cluster = name, error = %e, "CONNECT tunnel ended");
        }
    });
    local_reply(http::StatusCode::OK, "")
}
