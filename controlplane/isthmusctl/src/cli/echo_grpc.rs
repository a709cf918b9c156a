//! The gRPC side of `isthmusctl echo` (`isthmus.echo.v1.Echo`): a unary call and a
//! bidirectional stream that answer each message at once with the service's name and the
//! request metadata it saw. A message `status:<code>` is answered with that gRPC status, so
//! tests can see statuses (trailers) cross the sidecars.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::echo_proto::echo_server::{Echo, EchoServer};
use crate::echo_proto::{EchoReply, EchoRequest};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

pub struct GrpcEcho {
    name: Arc<str>,
}

/// Serves the echo service on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, name: Arc<str>) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(GrpcEcho { name }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// The request metadata, ASCII values only.
fn metadata(map: &MetadataMap) -> HashMap<String, String> {
    map.clone()
        .into_headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// `status:<code>` asks for that status.
fn requested_status(message: &str) -> Option<Status> {
    let code: i32 = message.strip_prefix("status:")?.trim().parse().ok()?;
    Some(Status::new(
        tonic::Code::from(code),
        format!("status {code} requested by the client"),
    ))
}

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let metadata = metadata(request.metadata());
        let message = request.into_inner().message;
        if let Some(status) = requested_status(&message) {
            return Err(status);
        }
        Ok(Response::new(EchoReply {
            name: self.name.to_string(),
            message,
            metadata,
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let metadata = metadata(request.metadata());
        let mut inbound = request.into_inner();
        let name = self.name.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let reply = match inbound.message().await {
                    Ok(Some(request)) => match requested_status(&request.message) {
                        Some(status) => Err(status),
                        None => Ok(EchoReply {
                            name: name.to_string(),
                            message: request.message,
                            metadata: metadata.clone(),
                        }),
                    },
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let last = reply.is_err();
                if tx.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Binds `address` for the gRPC echo; the bound address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (gRPC)"))
}
