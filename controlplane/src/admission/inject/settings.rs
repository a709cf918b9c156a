//! What the injector puts into pods: the image and where `isthmusd` is. The webhook takes
//! them from `isthmusd`'s flags, `isthmusctl kube-inject` from its own, with the same defaults
//! so that both produce the same pod.

use isthmus_identity::TrustDomain;

/// The image of `isthmus-proxy` by default: the release's, as in `manifests/`.
pub const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/isthmus-mesh/isthmus:", env!("CARGO_PKG_VERSION"));

/// The proxy's user and group: its own traffic is never captured.
pub const PROXY_UID: u32 = 1337;

/// The port of `isthmusd`'s certificate service and xDS.
pub const ISTHMUSD_GRPC_PORT: u16 = 15012;

/// The sidecar's status port: readiness and the applications' rewritten probes.
pub const STATUS_PORT: u16 = 15020;

/// Where the injected sidecar finds its token and the mesh root.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "/var/run/secrets/tokens/isthmus-ca";
pub const ROOT_DIR: &str = "/etc/isthmus/root";
pub const ROOT_FILE: &str = "/etc/isthmus/root/root-cert.pem";
/// The `ConfigMap` `isthmusd` publishes in every mesh namespace, key `root-cert.pem`.
pub const ROOT_CONFIG_MAP: &str = "isthmus-ca-root-cert";
/// The audience of the projected token `isthmusd`'s `TokenReview` requires.
pub const TOKEN_AUDIENCE: &str = "isthmus-ca";

/// The injector's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// The image with `isthmus-proxy` (the sidecar and the capture init container).
    pub proxy_image: String,
    pub trust_domain: TrustDomain,
    /// `isthmusd`'s namespace: never injected; its identity there is what sidecars verify.
    pub control_plane_namespace: String,
    /// `isthmusd`'s certificate service and xDS, `host:port`.
    pub isthmusd_address: String,
}

impl InjectSettings {
    /// The defaults for `isthmusd` in `control_plane_namespace`: its `Service`
    /// `isthmusd.<ns>.svc:15012`, the release's image.
    pub fn new(trust_domain: TrustDomain, control_plane_namespace: &str) -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.to_owned(),
            trust_domain,
            control_plane_namespace: control_plane_namespace.to_owned(),
            isthmusd_address: format!(
                "isthmusd.{control_plane_namespace}.svc:{ISTHMUSD_GRPC_PORT}"
            ),
        }
    }
}
