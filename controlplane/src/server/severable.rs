//! Connections that can be cut from outside. A tonic server's graceful shutdown waits for its
//! connections to finish, and it runs each in a task of its own that outlives the server's
//! future; xDS streams and discovery watches never finish by themselves. So `isthmusd` wraps
//! every connection of its gRPC ports in a [`Severable`]: when the drain ends it cuts them, the
//! connections fail, and their tasks (and the streams' tasks) end, in-process too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tonic::transport::server::Connected;

/// The signal that cuts connections: `true` cuts, and so does dropping the sender.
pub type Cut = watch::Receiver<bool>;

/// `io` until `cut` fires; then every read and write fails (`ConnectionAborted`).
pub struct Severable<IO> {
    io: IO,
    /// `None` once cut.
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<IO> std::fmt::Debug for Severable<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Severable")
            .field("cut", &self.cut.is_none())
            .finish_non_exhaustive()
    }
}

impl<IO> Severable<IO> {
    pub fn new(io: IO, mut cut: Cut) -> Self {
        Self {
            io,
            cut: Some(Box::pin(async move {
                let _ = cut.wait_for(|cut| *cut).await;
            })),
        }
    }

    /// Whether the connection is cut; registers the task to be woken when it is.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(cut) = &mut self.cut
            && cut.as_mut().poll(cx).is_ready()
        {
            self.cut = None;
        }
        self.cut.is_none()
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed at shutdown",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Severable<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Severable<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connection's information (peer address, TLS certificates) is the wrapped one's.
impl<IO: Connected> Connected for Severable<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_pending_read_fails_when_cut() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (cut, cutting) = watch::channel(false);
        let mut conn = Severable::new(ours, cutting);
        theirs.write_all(b"hi").await.unwrap();
        let mut buf = [0; 2];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let read = tokio::spawn(async move {
            let mut buf = [0; 1];
            conn.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cut.send(true).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
