//! CONNECT terminated here: a route with `upgrade_configs: [{upgrade_type: CONNECT,
//! connect_config: {}}]` answers `200` and sends the stream's payload as plain TCP to a host of
//! its cluster (HTTP/2 CONNECT, RFC 9113 §8.5, and HTTP/1.1 CONNECT alike). The federation
//! ingress gateway uses it: the payload is the caller's end-to-end TLS session.

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{Body, local_reply};
use crate::config::route::{Forward, Targets};
use crate::drain;
use crate::runtime::Runtime;
use crate::telemetry::tcp::TcpContext;

/// Answers the CONNECT `request` and joins its payload to a host of the route's cluster,
/// holding `drain` (a drain waits for the tunnel and ends it at its deadline). `telemetry`:
/// a federation gateway's tunnel metrics.
pub async fn terminate(
    mut request: http::Request<Incoming>,
    action: &Forward,
    runtime: &Runtime,
    drain: &drain::Watch,
    telemetry: Option<TcpContext>,
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
    let (upstream, _host, _) = match cluster.connect().await {
        Ok(connected) => connected,
        Err(e) => {
            if let Some(t) = &telemetry {
                t.refused(&cluster.cluster.telemetry, "upstream_connect");
            }
            tracing::debug!(cluster = cluster_name, error = %e, "CONNECT upstream failed");
            return local_reply(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            );
        }
    };
    let downstream = hyper::upgrade::on(&mut request);
    let name = cluster_name.to_owned();
    let meter = telemetry
        .map(|t| t.meter(cluster_name, &cluster.cluster.telemetry, None))
        .unwrap_or_default();
    // Detached, ending when either side closes or the drain is over. Over HTTP/1.1 the
    // connection is handed over here (over HTTP/2 the tunnel is one stream of it): the task
    // holds a drain `Watch` of its own, so a drain waits for the tunnel (up to the deadline).
    let drain = drain.clone();
    tokio::spawn(async move {
        let downstream = match downstream.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(cluster = name, error = %e, "CONNECT not completed");
                return;
            }
        };
        let downstream = TokioIo::new(downstream);
        match drain
            .until_ended(crate::tcp::copy_with_idle_timeout(
                downstream, upstream, None, &meter,
            ))
            .await
        {
            Some(Err(e)) => tracing::debug!(cluster = name, error = %e, "CONNECT tunnel ended"),
            Some(Ok(_)) => {}
            None => tracing::debug!(cluster = name, "CONNECT tunnel cut: drain deadline"),
        }
    });
    local_reply(http::StatusCode::OK, "")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::ProxyConfig;
    use crate::config::listener::{
        ChainMatch, Codec, FilterChain, ForwardClientCert, HttpManager, RouteSource, Terminal,
    };
    use crate::config::route::{Action, Edits, PathMatch, Route, RouteMatch};
    use crate::http::{Connection, serve_connection};
    use crate::runtime::ChainId;
    use crate::upstream::testing;

    /// A listener `in` whose one chain terminates CONNECT to the cluster `backend` on `port`.
    fn connect_config(port: u16) -> Arc<ProxyConfig> {
        let route = Route {
            policies: Default::default(),
            name: "tunnel".to_owned(),
            matcher: RouteMatch {
                path: PathMatch::Connect,
                case_sensitive: true,
                headers: Vec::new(),
                query: Vec::new(),
                grpc: false,
            },
            action: Action::Forward(Forward {
                hash: Vec::new(),
                mirrors: Vec::new(),
                targets: Targets::Cluster("backend".to_owned()),
                timeout: None,
                idle_timeout: None,
                retry: None,
                prefix_rewrite: None,
                host_rewrite: None,
                terminate_connect: true,
            }),
            headers: Edits::default(),
            rbac: HashMap::new(),
        };
        let manager = HttpManager {
            jwt: None,
            cors_filter: false,
            fault_filter: false,
            stat_prefix: "in".to_owned(),
            codec: Codec::Http1,
            routes: RouteSource::Inline(Box::new(testing::table(route))),
            rbac: Vec::new(),
            forward_client_cert: ForwardClientCert::Sanitize,
            set_client_cert_uri: false,
            use_remote_address: false,
            strip_any_host_port: false,
            allow_absolute_url: false,
            upgrades: Vec::new(),
            allow_connect: true,
            stream_idle_timeout: None,
            request_timeout: None,
            tracing: None,
        };
        let mut config = testing::config([testing::cluster("backend", port)]);
        let chain = FilterChain {
            peer: None,
            name: "http".to_owned(),
            matcher: ChainMatch::default(),
            tls: None,
            rbac: Vec::new(),
            terminal: Terminal::Http(Box::new(manager)),
        };
        config
            .listeners
            .insert("in".to_owned(), testing::listener(vec![chain]));
        Arc::new(config)
    }

    /// An HTTP/1.1 CONNECT hands its connection over to the tunnel: the tunnel holds the drain
    /// (which waits for it up to the deadline) and ends when the deadline passes.
    #[tokio::test]
    async fn an_http1_tunnel_is_waited_for_and_ends_at_the_drain_deadline() {
        let (port, mut accepted) = testing::silent_upstream().await;
        let runtime = Arc::new(testing::runtime(&connect_config(port)));
        let (_runtime_tx, latest) = tokio::sync::watch::channel(runtime.clone());
        let (trigger, drain) = drain::new();
        let connection = Connection {
            telemetry: None,
            gateway: None,
            runtime,
            latest,
            pool: Arc::default(),
            listener: "in".to_owned(),
            chain: ChainId::Index(0),
            remote: SocketAddr::from(([127, 0, 0, 1], 40000)),
            local: SocketAddr::from(([127, 0, 0, 1], 15001)),
            server_name: None,
            tls: None,
            drain,
        };
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(serve_connection(Box::new(server), Codec::Http1, connection));
        client
            .write_all(b"CONNECT backend:80 HTTP/1.1\r\nhost: backend:80\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        client.write_all(b"ping").await.unwrap();
        let mut upstream = accepted.recv().await.unwrap();
        let mut bytes = [0; 4];
        upstream.read_exact(&mut bytes).await.unwrap();
        assert_eq!(&bytes, b"ping");
        // Handed over: the HTTP connection is done, the tunnel goes on.
        served.await.unwrap().unwrap();

        assert!(
            !trigger.drain(Duration::from_millis(200)).await,
            "the drain waits for the open tunnel"
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), upstream.read_to_end(&mut rest))
            .await
            .expect("the tunnel ends at the drain deadline");
        assert_eq!(closed.unwrap(), 0);
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the downstream side is closed too");
        assert_eq!(closed.unwrap(), 0);
    }
}
