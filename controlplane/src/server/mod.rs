//! Network plumbing shared by `isthmusd`'s servers.

pub mod debug;
pub mod tls_incoming;
