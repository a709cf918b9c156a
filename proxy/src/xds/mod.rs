//! The proxy's xDS client: one ADS stream to `isthmusd` ([`client`], delta or, through
//! [`sotw`], state of the world) driving a pure
//! protocol state machine ([`state`]) that turns responses into a validated
//! [`crate::config::ProxyConfig`], ACKs or NACKs them, and follows what listeners and clusters
//! reference with RDS, EDS and SDS subscriptions.

pub mod client;
pub mod sotw;
pub mod state;

#[cfg(test)]
mod tests;
