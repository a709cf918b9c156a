//! The proxy's xDS client: one delta-ADS stream to `isthmusd` ([`client`]) driving a pure
//! protocol state machine ([`state`]) that turns responses into a validated
//! [`crate::config::ProxyConfig`], ACKs or NACKs them, and follows what listeners and clusters
//! reference with RDS, EDS and SDS subscriptions.

pub mod client;
pub mod state;

#[cfg(test)]
mod tests;
