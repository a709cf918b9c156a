//! The ADS gRPC service, framed here instead of by tonic's generated server.
//!
//! tonic encodes a stream's responses into one buffer per stream that keeps the capacity of
//! the largest response it ever carried (often twice that) until the stream ends. A proxy's
//! outbound route configuration can be a few hundred kilobytes, so a thousand idle streams
//! would hold a few hundred megabytes of empty buffer. Here each response is encoded into its
//! own exactly sized buffer, freed once HTTP/2 has written the last of it; a delta response's
//! large resources are not copied at all, but handed to HTTP/2 as the snapshot's own buffers
//! ([`DeltaResponse::encode_chunks`]). Requests are still decoded by tonic.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use isthmus_proto::envoy::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

use super::delta::DeltaStream;
use super::delta_response::DeltaResponse;
use super::server::{AdsServer, ResponseStream, SotwMachine, StreamMachine};

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The largest request accepted. Envoy's requests carry names, versions and an error message.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// `AggregatedDiscoveryService` for a tonic server: `Server::builder().add_service(AdsService::new(server))`.
#[derive(Debug, Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub fn new(server: AdsServer) -> Self {
        Self { server }
    }

    fn open<M>(&self, request: http::Request<Body>) -> http::Response<Body>
    where
        M: StreamMachine,
        M::Request: Message + Default,
        M::Response: GrpcResponse,
    {
        let (parts, body) = request.into_parts();
        // Only the decoder: responses are framed here.
        let decoder = ProstCodec::<(), M::Request>::default().decoder();
        let inbound = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
        let request = tonic::Request::from_parts(
            MetadataMap::from_headers(parts.headers),
            parts.extensions,
            inbound,
        );
        match self.server.check_peer(&request) {
            Ok(peer) => grpc_response(self.server.spawn::<M>(request.into_inner(), peer)),
            Err(status) => status.into_http(),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = match request.uri().path() {
            SOTW_PATH => self.open::<SotwMachine>(request),
            DELTA_PATH => self.open::<DeltaStream>(request),
            path => Status::unimplemented(format!("no method {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

/// A response as the bytes of one gRPC message, in one or more chunks.
pub(super) trait GrpcResponse: Send + 'static {
    fn frame(&self) -> Result<Vec<Bytes>, Status>;
}

impl GrpcResponse for DiscoveryResponse {
    fn frame(&self) -> Result<Vec<Bytes>, Status> {
        frame(self).map(|bytes| vec![bytes])
    }
}

impl GrpcResponse for DeltaResponse {
    fn frame(&self) -> Result<Vec<Bytes>, Status> {
        Ok(self.encode_chunks(&message_prefix(self.encoded_len())?))
    }
}

fn grpc_response<T: GrpcResponse>(responses: ResponseStream<T>) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(GrpcFrames {
        responses,
        chunks: VecDeque::new(),
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A response body of length-prefixed gRPC messages, then the status in the trailers.
struct GrpcFrames<T> {
    responses: ResponseStream<T>,
    /// The rest of the message being sent.
    chunks: VecDeque<Bytes>,
    done: bool,
}

impl<T: GrpcResponse> http_body::Body for GrpcFrames<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(this.responses.as_mut().poll_next(cx)) {
            Some(Ok(message)) => match message.frame() {
                Ok(chunks) => {
                    this.chunks = chunks.into();
                    match this.chunks.pop_front() {
                        Some(first) => Frame::data(first),
                        None => Frame::data(Bytes::new()),
                    }
                }
                Err(status) => {
                    this.done = true;
                    Frame::trailers(trailers(&status))
                }
            },
            Some(Err(status)) => {
                this.done = true;
                Frame::trailers(trailers(&status))
            }
            None => {
                this.done = true;
                Frame::trailers(trailers(&Status::ok("")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.is_empty()
    }
}

/// What precedes a gRPC message of `len` bytes: not compressed, 4-byte big-endian length.
fn message_prefix(len: usize) -> Result<[u8; 5], Status> {
    let len = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted(format!("a {len}-byte response is too big")))?;
    let [a, b, c, d] = len.to_be_bytes();
    Ok([0, a, b, c, d])
}

/// One message as gRPC frames it: the prefix, then the encoding.
fn frame<T: Message>(message: &T) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = message_prefix(len)?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.extend_from_slice(&prefix);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
    Ok(Bytes::from(buf))
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", HeaderValue::from_static("13"));
    }
    map
}

#[cfg(test)]
mod tests {
    use isthmus_proto::envoy::envoy::service::discovery::v3::DiscoveryResponse;

    use super::*;

    #[test]
    fn a_frame_is_the_length_prefixed_encoding_with_no_spare_capacity() {
        let message = DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "7".into(),
            ..DiscoveryResponse::default()
        };
        let bytes = frame(&message).unwrap();
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        assert_eq!(DiscoveryResponse::decode(&bytes[5..]).unwrap(), message);
    }

    #[test]
    fn the_trailers_carry_the_status() {
        let map = trailers(&Status::permission_denied("node n: not yours"));
        assert_eq!(map["grpc-status"], "7");
        assert!(map["grpc-message"].to_str().unwrap().contains("not"));
        assert_eq!(trailers(&Status::ok(""))["grpc-status"], "0");
    }
}
