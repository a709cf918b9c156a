//! The label sets of Istio's standard metrics. The sides of a call (who called, who answered,
//! which service) are shared `Arc`s built once per connection or per peer, so a request's
//! label set is a handful of pointers plus its response code and flags.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

/// A label value, shared.
pub type Label = Arc<str>;

static UNKNOWN: LazyLock<Label> = LazyLock::new(|| Arc::from("unknown"));

/// Istio's value for what is not known.
pub fn unknown() -> Label {
    UNKNOWN.clone()
}

/// One side of a call: a workload, who it is (its verified principal) and its mesh.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Workload {
    pub workload: Label,
    pub namespace: Label,
    pub principal: Label,
    pub app: Label,
    pub mesh: Label,
}

impl Workload {
    /// Every field `unknown`.
    pub fn unknown() -> Self {
        Self {
            workload: unknown(),
            namespace: unknown(),
            principal: unknown(),
            app: unknown(),
            mesh: unknown(),
        }
    }
}

/// The service a call was for.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Service {
    /// The host (`destination_service`).
    pub host: Label,
    pub name: Label,
    pub namespace: Label,
}

impl Service {
    /// A cluster Isthmus knows nothing of: its name stands for the service, as Istio shows
    /// `PassthroughCluster`.
    pub fn unnamed(cluster: &str) -> Self {
        Self {
            host: unknown(),
            name: Arc::from(cluster),
            namespace: unknown(),
        }
    }
}

/// Which side of the call reports it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's sidecar.
    Source,
    /// The callee's sidecar.
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }

    /// Istio's `connection_security_policy`: only the callee knows (`mutual_tls` or `none`);
    /// the caller says `unknown`.
    pub fn security_policy(self, mutual_tls: bool) -> &'static str {
        match (self, mutual_tls) {
            (Self::Source, _) => "unknown",
            (Self::Destination, true) => "mutual_tls",
            (Self::Destination, false) => "none",
        }
    }
}

/// The labels every Istio metric of one connection or request shares.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct CallLabels {
    pub reporter: Reporter,
    pub source: Arc<Workload>,
    pub destination: Arc<Workload>,
    pub service: Arc<Service>,
    /// `http`, `grpc` or `tcp`.
    pub protocol: &'static str,
    /// Envoy's response flags (`-` when none).
    pub flags: &'static str,
    pub security: &'static str,
}

/// An HTTP request's labels: the call's, with its response code and gRPC status.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    pub call: CallLabels,
    pub response_code: u16,
    /// The `grpc-status` of a gRPC response; `None` for plain HTTP (shown as `-`).
    pub grpc_status: Option<u16>,
}

impl EncodeLabelSet for CallLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (s, d, svc) = (&*self.source, &*self.destination, &*self.service);
        let labels: [(&str, &str); 17] = [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &s.workload),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_mesh", &s.mesh),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_mesh", &d.mesh),
            ("destination_service", &svc.host),
            ("destination_service_name", &svc.name),
            ("destination_service_namespace", &svc.namespace),
            ("request_protocol", self.protocol),
            ("response_flags", self.flags),
            ("connection_security_policy", self.security),
        ];
        for label in &labels {
            label.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.call.encode(encoder)?;
        // Istio's TCP metrics carry no response code: only HTTP's label sets add these.
        let code = self.response_code.to_string();
        ("response_code", code.as_str()).encode(encoder.encode_label())?;
        let grpc = self.grpc_status.map(|s| s.to_string());
        ("grpc_response_status", grpc.as_deref().unwrap_or("-")).encode(encoder.encode_label())
    }
}

/// The peers' principals named in labels, bounded: a peer mesh's CA could otherwise mint a new
/// SPIFFE ID per connection and grow every sidecar's series without end. At most
/// [`Principals::PER_TRUST_DOMAIN`] per trust domain and [`Principals::MAX`] in all; beyond
/// that a new one is `unknown` (its mesh, from the trust domain, is still named).
#[derive(Debug, Default)]
pub struct Principals {
    inner: parking_lot::Mutex<PrincipalSets>,
}

#[derive(Debug, Default)]
struct PrincipalSets {
    by_trust_domain: std::collections::HashMap<String, std::collections::HashSet<Label>>,
    total: usize,
}

impl Principals {
    pub const MAX: usize = 4096;
    pub const PER_TRUST_DOMAIN: usize = 1024;

    /// The label for a verified SPIFFE ID.
    pub fn label(&self, spiffe_id: &str) -> Label {
        let td = spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let mut sets = self.inner.lock();
        let total = sets.total;
        let set = sets.by_trust_domain.entry(td.to_owned()).or_default();
        if let Some(known) = set.get(spiffe_id) {
            return known.clone();
        }
        if set.len() >= Self::PER_TRUST_DOMAIN || total >= Self::MAX {
            return unknown();
        }
        let label: Label = Arc::from(spiffe_id);
        set.insert(label.clone());
        sets.total += 1;
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_bounded_per_trust_domain() {
        let p = Principals::default();
        for i in 0..Principals::PER_TRUST_DOMAIN {
            let id = format!("spiffe://green.local/ns/x/sa/{i}");
            assert_eq!(&*p.label(&id), id.as_str());
        }
        assert_eq!(&*p.label("spiffe://green.local/ns/x/sa/new"), "unknown");
        assert_eq!(
            &*p.label("spiffe://green.local/ns/x/sa/0"),
            "spiffe://green.local/ns/x/sa/0",
            "known ones stay named"
        );
        assert_eq!(
            &*p.label("spiffe://red.local/ns/shop/sa/client"),
            "spiffe://red.local/ns/shop/sa/client",
            "another trust domain has its own share"
        );
    }
}
