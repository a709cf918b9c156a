//! # isthmus-runtime
//!
//! Process plumbing that every Isthmus binary (`isthmus-proxy`, `isthmusd`, `isthmusctl`)
//! shares, with no knowledge of the mesh:
//!
//! - [`backoff`]: jittered exponential backoff, the one retry schedule (certificate renewal,
//!   the proxies' xDS stream, federation discovery streams, the proxies' route retries);
//! - [`dns_name`]: the host-name rule of the DNS proxy's name table, on both of its ends;
//! - [`metrics_format`]: the metrics exposition, negotiated by `Accept` (OpenMetrics, or the
//!   classic Prometheus text format 0.0.4 converted from prometheus-client's output), and the
//!   metrics endpoint of every binary ([`metrics_format::handler`]);
//! - [`supervised`]: processes started by `isthmusctl up` stop with it (`PR_SET_PDEATHSIG`).

pub mod backoff;
pub mod dns_name;
pub mod metrics_format;
pub mod supervised;
