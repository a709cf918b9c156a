//! Network plumbing shared by `isthmusd`'s servers.

pub mod debug;
pub mod severable;
pub mod tls_incoming;
