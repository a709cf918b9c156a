//! Which security policies apply to a workload, with Istio's precedence:
//!
//! - `PeerAuthentication`: a policy with a matching selector in the workload's namespace wins
//!   over the namespace's policy without selector, which wins over the mesh-wide one (root
//!   namespace, no selector). `UNSET` inherits from the next level; the default is PERMISSIVE.
//!   Port-level modes override the workload's mode for that port.
//! - `AuthorizationPolicy` and `RequestAuthentication`: every policy of the root namespace and
//!   of the workload's namespace whose selector (if any) matches the workload's labels.

use std::collections::BTreeMap;

use isthmus_api::meta::WorkloadSelector;
use isthmus_api::security::{
    AuthorizationPolicy, AuthorizationPolicySpec, MtlsMode, PeerAuthentication,
    PeerAuthenticationSpec, RequestAuthentication, RequestAuthenticationSpec,
};

use super::workload::Workload;
use crate::config::{ConfigSnapshot, ResourceKey};

/// The mTLS mode a workload's inbound ports enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMtls {
    /// Plaintext and mTLS both accepted.
    Permissive,
    /// mTLS with a certificate from a trusted domain, nothing else.
    Strict,
    /// Plaintext only.
    Disable,
}

/// A workload's mTLS policy: a default and per-port overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsPolicy {
    pub default: InboundMtls,
    pub ports: BTreeMap<u32, InboundMtls>,
}

impl MtlsPolicy {
    pub fn for_port(&self, port: u32) -> InboundMtls {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

fn selects(selector: Option<&WorkloadSelector>, workload: &Workload) -> bool {
    selector.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| workload.labels.get(k) == Some(v))
    })
}

fn mode(m: MtlsMode) -> Option<InboundMtls> {
    match m {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(InboundMtls::Disable),
        MtlsMode::Permissive => Some(InboundMtls::Permissive),
        MtlsMode::Strict => Some(InboundMtls::Strict),
    }
}

/// The `PeerAuthentication` in force for `workload`.
pub fn mtls_policy(
    snapshot: &ConfigSnapshot,
    root_namespace: &str,
    workload: &Workload,
) -> MtlsPolicy {
    let policies: Vec<(&ResourceKey, &PeerAuthenticationSpec)> = snapshot
        .of_type::<PeerAuthentication>()
        .map(|(k, p)| (k, &p.spec))
        .collect();
    // Oldest-wins is Istio's tie-break; without creation times, name order stands in for it.
    let workload_level = policies.iter().find(|(k, p)| {
        k.namespace == workload.namespace
            && p.selector.is_some()
            && selects(p.selector.as_ref(), workload)
    });
    let namespace_level = policies
        .iter()
        .find(|(k, p)| k.namespace == workload.namespace && p.selector.is_none());
    let mesh_level = policies
        .iter()
        .find(|(k, p)| k.namespace == root_namespace && p.selector.is_none());
    let inherited = [namespace_level, mesh_level]
        .into_iter()
        .flatten()
        .find_map(|(_, p)| p.mtls.and_then(|m| mode(m.mode)))
        .unwrap_or(InboundMtls::Permissive);
    let default = workload_level
        .and_then(|(_, p)| p.mtls.and_then(|m| mode(m.mode)))
        .unwrap_or(inherited);
    let ports = workload_level
        .map(|(_, p)| {
            p.port_level_mtls
                .iter()
                .filter_map(|(port, m)| mode(m.mode).map(|m| (*port, m)))
                .collect()
        })
        .unwrap_or_default();
    MtlsPolicy { default, ports }
}

/// The `AuthorizationPolicy`s that apply to `workload`, in key order.
pub fn authorization_policies<'a>(
    snapshot: &'a ConfigSnapshot,
    root_namespace: &str,
    workload: &Workload,
) -> Vec<(&'a ResourceKey, &'a AuthorizationPolicySpec)> {
    snapshot
        .of_type::<AuthorizationPolicy>()
        .map(|(k, p)| (k, &p.spec))
        .filter(|(k, p)| {
            (k.namespace == workload.namespace || k.namespace == root_namespace)
                && selects(p.selector.as_ref(), workload)
        })
        .collect()
}

/// The `RequestAuthentication`s that apply to `workload`, in key order.
pub fn request_authentications<'a>(
    snapshot: &'a ConfigSnapshot,
    root_namespace: &str,
    workload: &Workload,
) -> Vec<(&'a ResourceKey, &'a RequestAuthenticationSpec)> {
    snapshot
        .of_type::<RequestAuthentication>()
        .map(|(k, p)| (k, &p.spec))
        .filter(|(k, p)| {
            (k.namespace == workload.namespace || k.namespace == root_namespace)
                && selects(p.selector.as_ref(), workload)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use isthmus_identity::TrustDomain;

    use super::*;
    use crate::config::load_text;
    use crate::model::workload::build_workloads;

    const WORKLOADS: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: shop}
spec: {address: 127.0.0.2, labels: {app: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: shop}
spec: {address: 127.0.0.3, labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: c, namespace: other}
spec: {address: 127.0.0.4, labels: {app: a}}
";

    fn peer_auth(ns: &str, name: &str, body: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n"
        )
    }

    fn modes(yaml: &str) -> BTreeMap<String, MtlsPolicy> {
        let snapshot = load_text(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        build_workloads(&snapshot, &TrustDomain::new("red.local").unwrap())
            .into_values()
            .map(|w| (w.name.clone(), mtls_policy(&snapshot, "istio-system", &w)))
            .collect()
    }

    #[test]
    fn peer_authentication_precedence() {
        use InboundMtls::*;
        let table: &[(&str, [InboundMtls; 3])] = &[
            ("", [Permissive, Permissive, Permissive]),
            (
                &peer_auth("istio-system", "mesh", "{mtls: {mode: STRICT}}"),
                [Strict, Strict, Strict],
            ),
            (
                &(peer_auth("istio-system", "mesh", "{mtls: {mode: STRICT}}")
                    + &peer_auth("shop", "ns", "{mtls: {mode: PERMISSIVE}}")),
                [Permissive, Permissive, Strict],
            ),
            (
                &(peer_auth("istio-system", "mesh", "{mtls: {mode: STRICT}}")
                    + &peer_auth("shop", "ns", "{mtls: {mode: UNSET}}")
                    + &peer_auth(
                        "shop",
                        "a",
                        "{selector: {matchLabels: {app: a}}, mtls: {mode: DISABLE}}",
                    )),
                [Disable, Strict, Strict],
            ),
            (
                // A selector in another namespace does not reach across.
                &peer_auth(
                    "other",
                    "a",
                    "{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}}",
                ),
                [Permissive, Permissive, Strict],
            ),
        ];
        for (policies, expected) in table {
            let got = modes(&format!("{WORKLOADS}{policies}"));
            let got = [got["a"].default, got["b"].default, got["c"].default];
            assert_eq!(&got, expected, "{policies}");
        }
    }

    #[test]
    fn port_level_modes_override_the_workload_mode() {
        let yaml = format!(
            "{WORKLOADS}{}",
            peer_auth(
                "shop",
                "a",
                "{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"
            )
        );
        let a = &modes(&yaml)["a"];
        assert_eq!(a.for_port(8080), InboundMtls::Permissive);
        assert_eq!(a.for_port(9090), InboundMtls::Strict);
    }

    #[test]
    fn authorization_policies_by_namespace_and_selector() {
        let policy = |ns: &str, name: &str, selector: &str| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}action: DENY, rules: [{{}}]}}\n"
            )
        };
        let yaml = format!(
            "{WORKLOADS}{}{}{}{}",
            policy("istio-system", "mesh", ""),
            policy("shop", "all-shop", ""),
            policy("shop", "only-b", "selector: {matchLabels: {app: b}}, "),
            policy("other", "other", ""),
        );
        let snapshot = load_text(&yaml, Path::new("t.yaml")).unwrap();
        let workloads = build_workloads(&snapshot, &TrustDomain::new("red.local").unwrap());
        let names = |ns: &str, w: &str| -> Vec<String> {
            authorization_policies(
                &snapshot,
                "istio-system",
                &workloads[&(ns.into(), w.into())],
            )
            .iter()
            .map(|(k, _)| k.name.clone())
            .collect()
        };
        assert_eq!(names("shop", "a"), ["mesh", "all-shop"]);
        assert_eq!(names("shop", "b"), ["mesh", "all-shop", "only-b"]);
        assert_eq!(names("other", "c"), ["mesh", "other"]);
    }
}
