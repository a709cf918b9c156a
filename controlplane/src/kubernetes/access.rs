//! What `isthmusd` asks of the Kubernetes API server, in one table: the manifests' RBAC must
//! grant exactly this (a test in `tests/e2e/manifests.rs` checks the rendered roles against
//! it), and the code below uses nothing that is not listed here.

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
/// verbs, scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
}

const READ_LIST: &[&str] = &["list", "watch"];
/// The federation kinds are also read one by one: the status writer tells an object that is
/// gone from one whose CRD lacks the status subresource.
const READ_GET: &[&str] = &["get", "list", "watch"];

/// Everything `isthmusd --config-source kubernetes` does against the API server.
pub const API_ACCESS: &[Access] = &[
    // The nine Istio and Maistra kinds of the configuration.
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
    // The status writer's lease.
    rule(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
        Scope::OwnNamespace,
    ),
];

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
    }
}
