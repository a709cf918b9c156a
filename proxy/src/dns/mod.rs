//! The sidecar's DNS proxy (issue 20; Istio's DNS capture is the model): UDP and TCP on one
//! address (`--dns-addr`, 127.0.0.1:15053 in a pod), where the capture rules send the
//! application's DNS (`isthmus-proxy capture --capture-dns`).
//!
//! - `answer.rs`: what to say to a query, pure: the mesh's names from the name table
//!   `isthmusd` pushes (`isthmus.dns.v1.NameTable` over ADS, `config/dns.rs`), short names
//!   through the search domains, everything else forwarded;
//! - `forward.rs`: the pod's original name servers (`resolv_conf.rs`, read at start);
//! - `server.rs`: the UDP and TCP loops. A malformed query gets FORMERR (or nothing, without
//!   a header), never blocks the loop; forwarded queries wait in their own tasks, bounded.

pub mod answer;
pub mod forward;
pub mod resolv_conf;
pub mod server;

pub use resolv_conf::Upstream;
pub use server::{DnsServer, bind};
