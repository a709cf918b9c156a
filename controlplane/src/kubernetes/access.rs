//! What `isthmusd` asks of the Kubernetes API server, in one table: the manifests' RBAC must
//! grant exactly this (a test in `tests/e2e/manifests.rs` checks the rendered roles against
//! it), and the code below uses nothing that is not listed here.
//!
//! Where `isthmusd` only ever touches objects of known names (the webhook configurations, the
//! mesh root `ConfigMap`), the rows name them (`resourceNames`). Kubernetes authorizes `get`,
//! `update` and `patch` by name, and `list` and `watch` too when the request carries the field
//! selector `metadata.name=<name>`, as every watch of those objects here does; `create` cannot
//! be restricted by name, so it has a row of its own. A non-default
//! `--injector-webhook-config` or `--validator-webhook-config` needs the same name in the role.

use super::leader::DEFAULT_LEASE_NAME;
use super::root_publisher::ROOT_CERT_CONFIG_MAP;
use super::webhook_bundle::{DEFAULT_INJECTOR_CONFIG, DEFAULT_VALIDATOR_CONFIG};

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a `ClusterRole` bound by a `ClusterRoleBinding`).
    Cluster,
    /// The mesh's root namespace only (`--root-namespace`, `istio-system` by default).
    RootNamespace,
    /// The namespace `isthmusd` runs in (`--namespace`, `isthmus-system` by default).
    OwnNamespace,
}

/// One RBAC rule: API group (`""` for core), resource (with `/status` for the subresource),
/// verbs, scope, and the objects' names (`resourceNames`; empty: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    pub resource_names: &'static [&'static str],
}

const READ_LIST: &[&str] = &["list", "watch"];
/// The federation kinds are also read one by one: the status writer tells an object that is
/// gone from one whose CRD lacks the status subresource.
const READ_GET: &[&str] = &["get", "list", "watch"];

/// Everything `isthmusd --config-source kubernetes` does against the API server.
pub const API_ACCESS: &[Access] = &[
    // The ten Istio and Maistra kinds of the configuration.
    rule(
        "networking.istio.io",
        "serviceentries",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "networking.istio.io",
        "workloadentries",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "networking.istio.io",
        "virtualservices",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "networking.istio.io",
        "destinationrules",
        READ_LIST,
        Scope::Cluster,
    ),
    rule("networking.istio.io", "gateways", READ_LIST, Scope::Cluster),
    rule(
        "security.istio.io",
        "peerauthentications",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "security.istio.io",
        "authorizationpolicies",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "security.istio.io",
        "requestauthentications",
        READ_LIST,
        Scope::Cluster,
    ),
    rule(
        "federation.maistra.io",
        "servicemeshpeers",
        READ_GET,
        Scope::Cluster,
    ),
    rule(
        "federation.maistra.io",
        "exportedservicesets",
        READ_GET,
        Scope::Cluster,
    ),
    rule(
        "federation.maistra.io",
        "importedservicesets",
        READ_GET,
        Scope::Cluster,
    ),
    // Status written back (by the lease holder only).
    rule(
        "federation.maistra.io",
        "servicemeshpeers/status",
        &["get", "patch"],
        Scope::Cluster,
    ),
    rule(
        "federation.maistra.io",
        "exportedservicesets/status",
        &["get", "patch"],
        Scope::Cluster,
    ),
    rule(
        "federation.maistra.io",
        "importedservicesets/status",
        &["get", "patch"],
        Scope::Cluster,
    ),
    // The service registry.
    rule("", "services", READ_LIST, Scope::Cluster),
    rule(
        "discovery.k8s.io",
        "endpointslices",
        READ_LIST,
        Scope::Cluster,
    ),
    rule("", "pods", READ_LIST, Scope::Cluster),
    rule("", "namespaces", READ_LIST, Scope::Cluster),
    // `credentialName`: the TLS keys of `Secret`s (service-account tokens excluded by the
    // watch's field selector), served only to proxies of the `Secret`'s namespace.
    rule("", "secrets", READ_LIST, Scope::Cluster),
    // Peers' roots (`ServiceMeshPeer.spec.security.certificateChain`), which live beside the
    // federation resources.
    rule("", "configmaps", READ_LIST, Scope::RootNamespace),
    // Proxies' service-account tokens.
    rule(
        "authentication.k8s.io",
        "tokenreviews",
        &["create"],
        Scope::Cluster,
    ),
    // The status writer's lease: created once (a create names no object yet), then read and
    // renewed by name only.
    rule(
        "coordination.k8s.io",
        "leases",
        &["create"],
        Scope::OwnNamespace,
    ),
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "update"],
        scope: Scope::OwnNamespace,
        resource_names: &[DEFAULT_LEASE_NAME],
    },
    // The admission webhooks' `caBundle`, kept at the mesh root by the lease holder
    // (`webhook_bundle.rs`: watch by name, replace with the `resourceVersion`).
    named(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        WEBHOOK_VERBS,
        &[DEFAULT_INJECTOR_CONFIG],
    ),
    named(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        WEBHOOK_VERBS,
        &[DEFAULT_VALIDATOR_CONFIG],
    ),
    // The mesh root published in every namespace of the mesh (`root_publisher.rs`), by the
    // lease holder: created where missing (a create names no object yet), read and updated by
    // name only.
    rule("", "configmaps", &["create"], Scope::Cluster),
    named(
        "",
        "configmaps",
        &["get", "list", "watch", "update"],
        &[ROOT_CERT_CONFIG_MAP],
    ),
];

/// The webhook configurations: watched by name, re-read after a conflict, replaced.
const WEBHOOK_VERBS: &[&str] = &["get", "list", "watch", "update"];

const fn rule(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    scope: Scope,
) -> Access {
    Access {
        group,
        resource,
        verbs,
        scope,
        resource_names: &[],
    }
}

/// A cluster-wide rule for the objects named `names` only.
const fn named(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    names: &'static [&'static str],
) -> Access {
    Access {
        group,
        resource,
        verbs,
        scope: Scope::Cluster,
        resource_names: names,
    }
}
