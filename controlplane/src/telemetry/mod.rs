//! `isthmusd`'s own metrics beyond the CA's (`ca::metrics`): the xDS server ([`xds`], with the
//! per-stream bookkeeping of [`stream`] and the bounded NACK reasons of [`reasons`]) and
//! federation per peer ([`federation`]). Served on the debug port's `/metrics`
//! (`server::debug`).
//!
//! There is no global registry: the daemon's set-up (`daemon/setup.rs`) creates each family
//! set, registers it in the one [`prometheus_client::registry::Registry`] it builds, and hands
//! clones (shared handles) to the parts that record. Every series a dashboard queries by a
//! fixed label (the five xDS types; every configured peer) exists from the start at 0.
//!
//! Names follow Istio's (`pilot_*`, `citadel_*`) where Istio has one, else `isthmus_*`;
//! prometheus-client appends `_total` to every counter. The list with types, labels and
//! meanings is in `docs/observability.md` (section "isthmusd").

pub mod federation;
pub mod reasons;
pub mod stream;
pub mod xds;

pub use federation::{FederationMetrics, FederationRecorder};
pub use stream::StreamTelemetry;
pub use xds::{XdsMetrics, XdsType};

/// The value of the series `series` (name and labels as the text format writes them) in
/// `registry`'s exposition, for tests.
#[cfg(test)]
pub(crate) fn value_of(
    registry: &prometheus_client::registry::Registry,
    series: &str,
) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}
