//! Whether an injected pod gets DNS capture (issue 20): its application's DNS sent to the
//! sidecar's DNS proxy, which answers the mesh's names (imported services included) and
//! forwards the rest. Off by default, as in Istio; on for a pod with
//! `sidecar.isthmus.io/dnsCapture: "true"`, or with Istio's own switch, `proxyMetadata:
//! {ISTIO_META_DNS_CAPTURE: "true"}` in its `proxy.istio.io/config` annotation.

use serde_json::{Map, Value};

use super::{InjectError, meta_value};

/// Isthmus's own switch.
pub const DNS_CAPTURE_ANNOTATION: &str = "sidecar.isthmus.io/dnsCapture";
/// Istio's per-pod proxy configuration (YAML).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Where the sidecar's DNS proxy listens (Istio's port).
pub const DNS_ADDRESS: &str = "127.0.0.1:15053";

pub fn dns_capture(metadata: Option<&Map<String, Value>>) -> Result<bool, InjectError> {
    if let Some(value) = meta_value(metadata, "annotations", DNS_CAPTURE_ANNOTATION) {
        return match value.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(InjectError::new(
                format!("metadata.annotations[{DNS_CAPTURE_ANNOTATION:?}]"),
                format!("{other:?} is not \"true\" or \"false\""),
            )),
        };
    }
    let Some(config) = meta_value(metadata, "annotations", PROXY_CONFIG_ANNOTATION) else {
        return Ok(false);
    };
    let path = format!("metadata.annotations[{PROXY_CONFIG_ANNOTATION:?}]");
    let config: Value = serde_saphyr::from_str(config)
        .map_err(|e| InjectError::new(&path, format!("not YAML: {e}")))?;
    let switch = &config["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"];
    Ok(match switch {
        Value::String(s) => s.trim() == "true",
        Value::Bool(b) => *b,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn of(annotations: Value) -> Result<bool, InjectError> {
        let metadata = json!({ "annotations": annotations });
        dns_capture(metadata.as_object())
    }

    #[test]
    fn off_unless_the_pod_asks_in_isthmus_or_istio_words() {
        assert_eq!(of(json!({})), Ok(false));
        assert_eq!(of(json!({DNS_CAPTURE_ANNOTATION: "true"})), Ok(true));
        assert_eq!(of(json!({DNS_CAPTURE_ANNOTATION: "false"})), Ok(false));
        let istio = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n  ISTIO_META_DNS_AUTO_ALLOCATE: \"true\"\n";
        assert_eq!(of(json!({PROXY_CONFIG_ANNOTATION: istio})), Ok(true));
        assert_eq!(
            of(json!({PROXY_CONFIG_ANNOTATION: "holdApplicationUntilProxyStarts: true"})),
            Ok(false)
        );
        // Isthmus's switch wins.
        assert_eq!(
            of(json!({PROXY_CONFIG_ANNOTATION: istio, DNS_CAPTURE_ANNOTATION: "false"})),
            Ok(false)
        );
        let bad = of(json!({DNS_CAPTURE_ANNOTATION: "yes"})).unwrap_err();
        assert_eq!(
            bad.path,
            "metadata.annotations[\"sidecar.isthmus.io/dnsCapture\"]"
        );
        let bad = of(json!({PROXY_CONFIG_ANNOTATION: "proxyMetadata: [unclosed"})).unwrap_err();
        assert!(bad.reason.starts_with("not YAML"), "{bad}");
    }
}
