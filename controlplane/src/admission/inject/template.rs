//! What an injected pod gets:
//! - the init container `isthmus-init`, `isthmus-proxy capture …`, which installs the capture
//!   rules (root with `NET_ADMIN`/`NET_RAW` only, and only until it exits) with Istio's
//!   exclusions from the pod's `traffic.sidecar.istio.io/*` annotations;
//! - the sidecar `isthmus-proxy` as a native sidecar (an init container with
//!   `restartPolicy: Always`, started after the capture and before the pod's own init
//!   containers, which so reach the mesh too), with its node id, identity, `isthmusd`'s address
//!   and its token and root paths in its environment, and a startup probe that holds the
//!   application back until the sidecar has its certificate and configuration;
//! - the volumes `isthmus-token` (a service-account token projected for the audience
//!   `isthmus-ca`) and `isthmus-ca-root` (the `ConfigMap` `isthmus-ca-root-cert`);
//! - the applications' HTTP and TCP probes rewritten to the status port ([`super::probes`]);
//! - with DNS capture ([`super::dns_capture`]), `--capture-dns` in the init container and the
//!   sidecar's DNS proxy on 127.0.0.1:15053 (`ISTHMUS_DNS_ADDR`);
//! - the annotation `sidecar.isthmus.io/status` saying what was added;
//! - Istio's scrape annotations, `prometheus.io/scrape: "true"`, `prometheus.io/port: "15020"`,
//!   `prometheus.io/path: /stats/prometheus` (the sidecar's metrics on its status port), unless
//!   the pod has a `prometheus.io/scrape`, `port` or `path` annotation of its own: those are
//!   left as they are (Istio's agent would merge the application's metrics into its own; ours
//!   does not, so the pod's own scraping is kept and `docs/observability.md`'s Kubernetes
//!   configuration scrapes such sidecars by the status annotation instead).

use serde_json::{Map, Value, json};

use super::dns_capture::{DNS_ADDRESS, dns_capture};
use super::probes::{self, Probers, REWRITE_ANNOTATION};
use super::settings::{
    PROXY_UID, ROOT_CONFIG_MAP, ROOT_DIR, ROOT_FILE, STATUS_PORT, TOKEN_AUDIENCE, TOKEN_DIR,
    TOKEN_FILE,
};
use super::{
    INIT_CONTAINER, InjectError, InjectSettings, PROXY_CONTAINER, STATUS_ANNOTATION, meta_value,
};

/// The token volume and the mesh root volume.
pub const TOKEN_VOLUME: &str = "isthmus-token";
pub const ROOT_VOLUME: &str = "isthmus-ca-root";

/// Istio's capture annotations, as `isthmus-proxy capture` flags.
const CAPTURE_ANNOTATIONS: [(&str, &str, Syntax); 6] = [
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        "--include-inbound-ports",
        Syntax::PortsOrAll,
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        "--exclude-inbound-ports",
        Syntax::Ports,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "--exclude-outbound-ports",
        Syntax::Ports,
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "--include-outbound-ip-ranges",
        Syntax::RangesOrAll,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "--exclude-outbound-ip-ranges",
        Syntax::Ranges,
    ),
    (
        "traffic.sidecar.istio.io/excludeInterfaces",
        "--exclude-interfaces",
        Syntax::Interfaces,
    ),
];

/// Istio's annotations for Prometheus's pod discovery: the sidecar's metrics on the status
/// port ([`STATUS_PORT`]).
pub const PROMETHEUS_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15020"),
    ("prometheus.io/path", "/stats/prometheus"),
];

/// The annotation that replaces the sidecar's image for one pod.
const IMAGE_ANNOTATION: &str = "sidecar.istio.io/proxyImage";

/// What a capture annotation holds: a comma list of
#[derive(Clone, Copy)]
enum Syntax {
    /// ports; empty is none;
    Ports,
    /// ports, or `*` for all; empty is none (so the flag is passed even empty);
    PortsOrAll,
    /// IPv4 CIDRs; empty is none;
    Ranges,
    /// IPv4 CIDRs, or `*` for all; empty is none (the flag is passed even empty);
    RangesOrAll,
    /// network interface names; empty is none.
    Interfaces,
}

impl Syntax {
    fn accepts(self, item: &str) -> bool {
        match self {
            Self::Ports => item.parse::<u16>().is_ok_and(|p| p > 0),
            Self::PortsOrAll => item == "*" || Self::Ports.accepts(item),
            Self::Ranges => is_ipv4_cidr(item),
            Self::RangesOrAll => item == "*" || is_ipv4_cidr(item),
            Self::Interfaces => is_interface_name(item),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Ports => "a port number",
            Self::PortsOrAll => "\"*\" or a port number",
            Self::Ranges => "an IPv4 CIDR",
            Self::RangesOrAll => "\"*\" or an IPv4 CIDR",
            Self::Interfaces => "a network interface name",
        }
    }

    /// An empty value means "none" and still changes the default ("all").
    fn empty_is_meaningful(self) -> bool {
        matches!(self, Self::PortsOrAll | Self::RangesOrAll)
    }
}

/// Adds the sidecar, its init container, volumes and annotation to `pod`, and rewrites its
/// probes.
pub fn add_sidecar(
    pod: &mut Map<String, Value>,
    settings: &InjectSettings,
) -> Result<(), InjectError> {
    let metadata = super::optional_object(pod, "metadata", "metadata")?.cloned();
    let mut capture_flags = capture_flags(metadata.as_ref())?;
    let dns = dns_capture(metadata.as_ref())?;
    if dns {
        capture_flags.push("--capture-dns".to_owned());
    }
    let image = meta_value(metadata.as_ref(), "annotations", IMAGE_ANNOTATION)
        .unwrap_or(&settings.proxy_image)
        .to_owned();
    let rewrite_probes = meta_value(metadata.as_ref(), "annotations", REWRITE_ANNOTATION)
        .is_none_or(|v| v.trim() != "false");

    let spec = object_mut(pod, "spec", "spec")?;
    let mut probers = Probers::new();
    if rewrite_probes {
        let containers = array_mut(spec, "containers", "spec.containers")?;
        for container in containers.iter_mut() {
            if let Value::Object(container) = container {
                probes::rewrite(container, &mut probers);
            }
        }
    }
    let volumes = array_mut(spec, "volumes", "spec.volumes")?;
    for name in [TOKEN_VOLUME, ROOT_VOLUME] {
        if volumes
            .iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
        {
            return Err(InjectError::new(
                "spec.volumes",
                format!("the pod already has a volume named {name:?}, which the sidecar needs"),
            ));
        }
    }
    volumes.push(token_volume());
    volumes.push(root_volume());
    let init_containers = array_mut(spec, "initContainers", "spec.initContainers")?;
    let sidecar = sidecar(&image, settings, &probers, dns)?;
    init_containers.splice(0..0, [init_container(&image, capture_flags), sidecar]);

    let metadata = object_mut(pod, "metadata", "metadata")?;
    let annotations = object_mut(metadata, "annotations", "metadata.annotations")?;
    annotations.insert(STATUS_ANNOTATION.into(), Value::String(status_annotation()));
    if !PROMETHEUS_ANNOTATIONS
        .iter()
        .any(|(name, _)| annotations.contains_key(*name))
    {
        for (name, value) in PROMETHEUS_ANNOTATIONS {
            annotations.insert(name.into(), Value::String(value.into()));
        }
    }
    Ok(())
}

/// What the status annotation records.
fn status_annotation() -> String {
    json!({
        "initContainers": [INIT_CONTAINER, PROXY_CONTAINER],
        "containers": [],
        "volumes": [TOKEN_VOLUME, ROOT_VOLUME],
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

/// The `isthmus-proxy capture` flags from the pod's annotations, each checked.
fn capture_flags(metadata: Option<&Map<String, Value>>) -> Result<Vec<String>, InjectError> {
    let mut flags = Vec::new();
    for (annotation, flag, syntax) in CAPTURE_ANNOTATIONS {
        let Some(value) = meta_value(metadata, "annotations", annotation) else {
            continue;
        };
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let path = format!("metadata.annotations[{annotation:?}]");
        if let Some(item) = items.iter().find(|item| !syntax.accepts(item)) {
            return Err(InjectError::new(
                path,
                format!("{item:?} is not {}", syntax.expected()),
            ));
        }
        if !items.is_empty() || syntax.empty_is_meaningful() {
            flags.push(format!("{flag}={}", items.join(",")));
        }
    }
    Ok(flags)
}

/// A Linux interface name: 1 to 15 of `[A-Za-z0-9_.-]`, not `.` or `..`.
fn is_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_ipv4_cidr(s: &str) -> bool {
    let (ip, prefix) = s.split_once('/').unwrap_or((s, "32"));
    ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

fn init_container(image: &str, capture_flags: Vec<String>) -> Value {
    let mut args = vec![
        "capture".to_owned(),
        format!("--proxy-uid={PROXY_UID}"),
        format!("--proxy-gid={PROXY_UID}"),
        "--inbound-port=15006".to_owned(),
        "--outbound-port=15001".to_owned(),
    ];
    args.extend(capture_flags);
    json!({
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["isthmus-proxy"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        // iptables needs root with NET_ADMIN and NET_RAW, for the moment the rules take.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn sidecar(
    image: &str,
    settings: &InjectSettings,
    probers: &Probers,
    dns: bool,
) -> Result<Value, InjectError> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: String| json!({"name": name, "value": value});
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value(
            "ISTHMUS_NODE_ID",
            "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
                .to_owned(),
        ),
        value(
            "ISTHMUS_IDENTITY",
            format!(
                "spiffe://{}/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)",
                settings.trust_domain
            ),
        ),
        value("ISTHMUS_CA_ADDRESS", settings.isthmusd_address.clone()),
        value("ISTHMUS_XDS_ADDRESS", settings.isthmusd_address.clone()),
        value("ISTHMUS_TOKEN_FILE", TOKEN_FILE.to_owned()),
        value("ISTHMUS_ROOT_CERT", ROOT_FILE.to_owned()),
        value("ISTHMUS_STATUS_ADDR", format!("0.0.0.0:{STATUS_PORT}")),
    ];
    if dns {
        env.push(value("ISTHMUS_DNS_ADDR", DNS_ADDRESS.to_owned()));
    }
    if !probers.is_empty() {
        let json = serde_json::to_string(probers)
            .map_err(|e| InjectError::new("spec.containers", format!("probes: {e}")))?;
        env.push(value("ISTHMUS_KUBE_APP_PROBERS", json));
    }
    let ready = json!({"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"});
    Ok(json!({
        "name": PROXY_CONTAINER,
        "image": image,
        "command": ["isthmus-proxy"],
        "args": [
            "--role=sidecar",
            format!("--ca-namespace={}", settings.control_plane_namespace),
            "--metadata=INTERCEPTION_MODE=REDIRECT",
            "--admin-addr=127.0.0.1:15000",
        ],
        "restartPolicy": "Always",
        "env": env,
        // The application starts once the sidecar is ready (a native sidecar's startup probe).
        "startupProbe": {
            "httpGet": ready,
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": 600,
        },
        "readinessProbe": {
            "httpGet": ready,
            "periodSeconds": 15,
            "timeoutSeconds": 3,
            "failureThreshold": 4,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": ROOT_VOLUME, "mountPath": ROOT_DIR, "readOnly": true},
        ],
    }))
}

fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": TOKEN_AUDIENCE,
                    "expirationSeconds": 43200,
                    "path": "isthmus-ca",
                },
            }],
        },
    })
}

fn root_volume() -> Value {
    json!({
        "name": ROOT_VOLUME,
        "configMap": {"name": ROOT_CONFIG_MAP},
    })
}

/// `map[key]` as a mapping to change, created when absent or `null`.
fn object_mut<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
        .ok_or_else(|| InjectError::new(path, "must be a mapping"))
}

/// `map[key]` as a list to change, created when absent or `null`.
fn array_mut<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
        .ok_or_else(|| InjectError::new(path, "must be a list"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn injected(annotations: Value) -> Map<String, Value> {
        let mut pod = json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        });
        let settings = InjectSettings::new("cluster.local".parse().unwrap(), "isthmus-system");
        add_sidecar(pod.as_object_mut().unwrap(), &settings).unwrap();
        pod["metadata"]["annotations"].as_object().unwrap().clone()
    }

    #[test]
    fn the_sidecars_metrics_are_announced_on_the_status_port() {
        assert_eq!(PROMETHEUS_ANNOTATIONS[1].1, STATUS_PORT.to_string());
        let annotations = injected(Value::Null);
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "15020");
        assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");
        assert!(annotations[STATUS_ANNOTATION].is_string());
        let annotations = injected(json!({"team": "shop"}));
        assert_eq!(annotations["prometheus.io/port"], "15020");
        assert_eq!(annotations["team"], "shop");
    }

    #[test]
    fn a_pods_own_scrape_annotations_are_kept() {
        let own = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9090"});
        let annotations = injected(own);
        assert_eq!(annotations["prometheus.io/port"], "9090");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert!(!annotations.contains_key("prometheus.io/path"));
        let annotations = injected(json!({"prometheus.io/scrape": "false"}));
        assert_eq!(annotations["prometheus.io/scrape"], "false");
        assert!(!annotations.contains_key("prometheus.io/port"));
    }
}
