//! Probe rewriting, as Istio does it: under STRICT mTLS the kubelet's plain HTTP or TCP probe
//! to the application's port would be captured and refused, so each `httpGet` and `tcpSocket`
//! probe of an application container is pointed at the sidecar's status port,
//! `:15020/app-health/<container>/<readyz|livez|startupz>`, and the original goes to the
//! sidecar in `ISTHMUS_KUBE_APP_PROBERS` (Istio's `ISTIO_KUBE_APP_PROBERS` format): the sidecar
//! runs it against the application from inside the pod, where it is not captured.
//!
//! `exec` and `grpc` probes are left alone (the first runs inside the container; the second has
//! no HTTP form). A probe on a named port the container does not declare is left alone too.
//! The annotation `sidecar.istio.io/rewriteAppHTTPProbers: "false"` turns rewriting off.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::settings::STATUS_PORT;

/// The annotation that turns probe rewriting off for a pod.
pub const REWRITE_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";

/// The probes of one container: field and the path segment Istio names it by.
const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readyz"),
    ("livenessProbe", "livez"),
    ("startupProbe", "startupz"),
];

/// The original probes, by their path on the status port.
pub type Probers = BTreeMap<String, Value>;

/// Rewrites the probes of `container` (an application container); the originals go to
/// `probers`.
pub fn rewrite(container: &mut Map<String, Value>, probers: &mut Probers) {
    let Some(name) = container
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    let ports = container.get("ports").cloned();
    for (field, segment) in PROBES {
        let Some(Value::Object(probe)) = container.get_mut(field) else {
            continue;
        };
        let path = format!("/app-health/{name}/{segment}");
        let timeout = probe.get("timeoutSeconds").cloned().unwrap_or(json!(1));
        let original = if let Some(Value::Object(http)) = probe.get("httpGet") {
            let Some(port) = resolve_port(http.get("port"), ports.as_ref()) else {
                continue;
            };
            if !sidecar_can_send(http) {
                continue;
            }
            let mut http = http.clone();
            http.insert("port".into(), json!(port));
            json!({ "httpGet": http, "timeoutSeconds": timeout })
        } else if let Some(Value::Object(tcp)) = probe.get("tcpSocket") {
            let Some(port) = resolve_port(tcp.get("port"), ports.as_ref()) else {
                continue;
            };
            let mut tcp = tcp.clone();
            tcp.insert("port".into(), json!(port));
            json!({ "tcpSocket": tcp, "timeoutSeconds": timeout })
        } else {
            continue;
        };
        probe.remove("tcpSocket");
        probe.insert(
            "httpGet".into(),
            json!({ "path": path, "port": STATUS_PORT, "scheme": "HTTP" }),
        );
        probers.insert(path, original);
    }
}

/// Whether the sidecar can send this `httpGet` as it is (it refuses, at start, what it cannot
/// put on the wire): a probe it could not send is left to the kubelet.
fn sidecar_can_send(http: &Map<String, Value>) -> bool {
    let text = |key: &str| http.get(key).and_then(Value::as_str).unwrap_or("");
    let visible = |s: &str| s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    let scheme_ok = http.get("scheme").is_none_or(|scheme| {
        scheme
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
    });
    let host = text("host");
    let host_ok = host.is_empty()
        || host.parse::<std::net::IpAddr>().is_ok()
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    let headers_ok = match http.get("httpHeaders") {
        None | Some(Value::Null) => true,
        Some(Value::Array(headers)) => headers.iter().all(|h| {
            let name = h.get("name").and_then(Value::as_str).unwrap_or("");
            let value = h.get("value").and_then(Value::as_str).unwrap_or("");
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                && value
                    .bytes()
                    .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
        }),
        Some(_) => false,
    };
    scheme_ok && visible(text("path")) && host_ok && headers_ok
}

/// A probe's port as a number: an integer, a numeric string, or the name of one of the
/// container's ports.
fn resolve_port(port: Option<&Value>, ports: Option<&Value>) -> Option<u16> {
    match port? {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0),
        Value::String(s) => match s.parse::<u16>() {
            Ok(n) => (n > 0).then_some(n),
            Err(_) => ports?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s))?
                .get("containerPort")?
                .as_u64()
                .and_then(|n| u16::try_from(n).ok()),
        },
        _ => None,
    }
}
