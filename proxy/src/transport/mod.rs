//! Byte streams: TLS configurations from SDS secrets (or from PEM outside the mesh), and the
//! boxed stream type that connections pass around (plain TCP or TLS, either direction).

pub mod digest;
pub mod edge_tls;
pub mod external_tls;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod tls_cache;

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type BoxedIo = Box<dyn Io>;
