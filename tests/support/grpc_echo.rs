//! The checks of a gRPC call through sidecars to `isthmusctl echo --grpc-listen`: a unary call
//! that names its server and shows the caller's verified identity, an application status in
//! trailers-only form, and a bidirectional stream answered message by message that ends with a
//! status in its trailers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use isthmusctl::echo_proto::EchoRequest;
use isthmusctl::echo_proto::echo_client::EchoClient;

/// Calls `authority` (an `http://host:port` origin) over h2c through the HTTP proxy `proxy`
/// (`host:port`) and checks every answer: from the echo named `server`, seeing `caller` (a
/// SPIFFE ID) in `x-forwarded-client-cert`. `logs` is printed with a failed call.
pub fn check_calls(
    proxy: &str,
    authority: &str,
    server: &str,
    caller: &str,
    logs: &dyn Fn() -> String,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limit = Duration::from_secs(5);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
            .unwrap()
            .origin(authority.parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut echo = EchoClient::new(channel);
        let request = |message: &str| EchoRequest {
            message: message.into(),
        };

        let reply = echo
            .unary(request("hello"))
            .await
            .unwrap_or_else(|e| panic!("gRPC to {authority}: {e}\n{}", logs()))
            .into_inner();
        assert_eq!(
            (reply.name.as_str(), reply.message.as_str()),
            (server, "hello")
        );
        let xfcc = reply
            .metadata
            .get("x-forwarded-client-cert")
            .cloned()
            .unwrap_or_default();
        assert!(
            xfcc.contains(&format!("URI={caller}")),
            "the caller's identity: {:?}",
            reply.metadata
        );
        // A status from the application (in trailers-only form) reaches the caller as is.
        let status = echo.unary(request("status:5")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        assert!(
            status.message().contains("status 5 requested"),
            "{status:?}"
        );

        // Each reply arrives before the next message is sent (nothing is buffered until the
        // end), then the stream ends with a status in its trailers.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = echo
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for message in ["one", "two", "three"] {
            tx.send(request(message)).await.unwrap();
            let reply = tokio::time::timeout(limit, replies.message())
                .await
                .expect("a reply per message, at once")
                .unwrap()
                .unwrap();
            assert_eq!(reply.message, message);
        }
        tx.send(request("status:7")).await.unwrap();
        let end = tokio::time::timeout(limit, replies.message())
            .await
            .expect("the stream's end")
            .unwrap_err();
        assert_eq!(end.code(), tonic::Code::PermissionDenied, "{end:?}");
        assert!(end.message().contains("status 7 requested"), "{end:?}");
    });
}
