//! `security.istio.io/v1`: `PeerAuthentication`, `AuthorizationPolicy` and
//! `RequestAuthentication`.

use std::collections::BTreeMap;

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Validate;
use super::meta::{Unsupported, Validator, WorkloadSelector};

resource!(
    /// Whether workloads accept plaintext (PERMISSIVE) or only mTLS (STRICT).
    PeerAuthentication,
    PeerAuthenticationSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "security.istio.io",
        version = "v1",
        kind = "PeerAuthentication",
        plural = "peerauthentications",
        shortname = "pa",
        namespaced,
        root = "KubePeerAuthentication",
        doc = "Whether workloads accept plaintext (PERMISSIVE) or only mutual TLS (STRICT)."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh) policy.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl Validate for PeerAuthentication {
    fn validate(&self, v: &mut Validator) {
        v.check(
            self.spec.port_level_mtls.is_empty() || self.spec.selector.is_some(),
            "spec.portLevelMtls",
            "requires a workload selector",
        );
        for port in self.spec.port_level_mtls.keys() {
            v.check(
                (1..=65535).contains(port),
                format!("spec.portLevelMtls.{port}"),
                format!("port {port} is not in 1-65535"),
            );
        }
    }
}

resource!(
    /// ALLOW / DENY rules on the verified caller (principal, namespace, IP) and the request
    /// (host, port, method, path).
    AuthorizationPolicy,
    AuthorizationPolicySpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "security.istio.io",
        version = "v1",
        kind = "AuthorizationPolicy",
        plural = "authorizationpolicies",
        shortname = "ap",
        namespaced,
        root = "KubeAuthorizationPolicy",
        doc = "ALLOW and DENY rules on the verified caller and the request."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub target_ref: Option<Unsupported>,
    #[serde(default)]
    pub target_refs: Option<Unsupported>,
    #[serde(default)]
    pub provider: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    /// The name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// `<iss>/<sub>` of the request's verified JWT (`*`: any valid token).
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Option<Unsupported>,
    #[serde(default)]
    pub not_remote_ip_blocks: Option<Unsupported>,
    #[serde(default)]
    pub service_accounts: Option<Unsupported>,
    #[serde(default)]
    pub not_service_accounts: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// Condition keys Isthmus evaluates (Istio's names); `request.headers[<name>]` too.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

/// Istio's other condition keys (whole, or a prefix ending in `[` or `.`): valid Istio that
/// Isthmus does not evaluate yet.
const ISTIO_CONDITION_KEYS: &[&str] = &[
    "remote.ip",
    "request.regex.headers[",
    "experimental.envoy.filters.",
];

/// Why `key` is refused, or `None` when Isthmus evaluates it.
fn condition_key_problem(key: &str) -> Option<String> {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|inner| !inner.is_empty())
    };
    let evaluated = CONDITION_KEYS.contains(&key)
        || bracketed("request.headers[")
        || bracketed("request.auth.claims[");
    if evaluated {
        return None;
    }
    let istio = ISTIO_CONDITION_KEYS.iter().any(|k| {
        if k.ends_with('[') {
            key.starts_with(k) && key.ends_with(']') && key.len() > k.len() + 1
        } else if k.ends_with('.') {
            key.starts_with(k) && key.len() > k.len()
        } else {
            key == *k
        }
    });
    Some(if istio {
        format!("{key} is not supported by Isthmus")
    } else {
        format!("{key:?} is not an Istio condition key")
    })
}

impl Validate for AuthorizationPolicy {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        v.check(
            matches!(s.action, Action::Allow | Action::Deny),
            "spec.action",
            format!(
                "{} is not supported by Isthmus (ALLOW and DENY are)",
                s.action.name()
            ),
        );
        for (i, rule) in s.rules.iter().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                let op = &to.operation;
                for (field, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, port) in ports.iter().enumerate() {
                        v.check(
                            port.parse::<u16>().is_ok_and(|p| p > 0),
                            format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]"),
                            format!("{port:?} is not a port number"),
                        );
                    }
                }
            }
            for (j, cond) in rule.when.iter().enumerate() {
                if let Some(problem) = condition_key_problem(&cond.key) {
                    v.check(false, format!("spec.rules[{i}].when[{j}].key"), problem);
                }
                v.check(
                    !cond.values.is_empty() || !cond.not_values.is_empty(),
                    format!("spec.rules[{i}].when[{j}]"),
                    "values or notValues is required",
                );
            }
        }
    }
}

resource!(
    /// Which JWTs a workload accepts: a request that carries a token must carry a valid one
    /// (else 401); whether a token is required at all is an `AuthorizationPolicy`'s
    /// `requestPrincipals`.
    RequestAuthentication,
    RequestAuthenticationSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "security.istio.io",
        version = "v1",
        kind = "RequestAuthentication",
        plural = "requestauthentications",
        shortname = "ra",
        namespaced,
        root = "KubeRequestAuthentication",
        doc = "The JWT issuers a workload accepts, with their keys."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
    #[serde(default)]
    pub target_ref: Option<Unsupported>,
    #[serde(default)]
    pub target_refs: Option<Unsupported>,
}

/// One accepted issuer: its keys, audiences and where the token is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    pub issuer: String,
    /// The token's `aud` must hold one of these; empty: any (Istio).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The keys, a JWKS document inline.
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Where the token is; unset (with `fromParams`): `Authorization: Bearer`, then
    /// `?access_token=`.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Option<Unsupported>,
    #[serde(default)]
    pub output_payload_to_header: Option<Unsupported>,
    #[serde(default)]
    pub output_claim_to_headers: Option<Unsupported>,
    /// Keep the token on the request (Istio removes it by default).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims whose string value is a space-separated list (`scope` and `permission` always
    /// are, as in Istio).
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    #[serde(default)]
    pub timeout: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    /// Stripped from the header's value (`"Bearer "`).
    #[serde(default)]
    pub prefix: Option<String>,
}

impl Validate for RequestAuthentication {
    fn validate(&self, v: &mut Validator) {
        let mut issuers = std::collections::BTreeSet::new();
        for (i, rule) in self.spec.jwt_rules.iter().enumerate() {
            let path = format!("spec.jwtRules[{i}]");
            v.check(
                !rule.issuer.is_empty(),
                format!("{path}.issuer"),
                "is required",
            );
            v.check(
                issuers.insert(rule.issuer.as_str()),
                format!("{path}.issuer"),
                format!("issuer {:?} has a rule already", rule.issuer),
            );
            // With both, Istio uses the inline keys.
            match (&rule.jwks, &rule.jwks_uri) {
                (Some(jwks), _) => {
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(jwks)
                        .map_err(|e| e.to_string())
                        .and_then(|doc| match doc.get("keys") {
                            Some(serde_json::Value::Array(keys)) if keys.iter().any(usable_jwk) => {
                                Ok(())
                            }
                            _ => Err("no usable key (kty RSA, EC, OKP or oct)".to_owned()),
                        })
                    {
                        v.error(format!("{path}.jwks"), format!("not a JWKS document: {e}"));
                    }
                }
                (None, Some(uri)) => {
                    let web = uri.parse::<http::Uri>().is_ok_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                    });
                    v.check(
                        web,
                        format!("{path}.jwksUri"),
                        format!("{uri:?} is not an http or https URL"),
                    );
                }
                // Istio would discover the keys from the issuer (OpenID discovery).
                (None, None) => v.error(
                    format!("{path}.jwks"),
                    "keys discovered from the issuer are not supported by Isthmus: give jwks",
                ),
            }
            for (j, header) in rule.from_headers.iter().enumerate() {
                v.check(
                    http_header_name(&header.name),
                    format!("{path}.fromHeaders[{j}].name"),
                    format!("{:?} is not a header name", header.name),
                );
            }
            for (j, param) in rule.from_params.iter().enumerate() {
                v.check(
                    !param.is_empty(),
                    format!("{path}.fromParams[{j}]"),
                    "an empty parameter name",
                );
            }
        }
    }
}

/// A JWK of a type proxies verify with.
fn usable_jwk(key: &serde_json::Value) -> bool {
    matches!(
        key.get("kty").and_then(serde_json::Value::as_str),
        Some("RSA" | "EC" | "OKP" | "oct")
    )
}

/// RFC 9110 token characters.
fn http_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
