//! # isthmus-api
//!
//! The configuration API: Istio's `networking.istio.io/v1` and `security.istio.io/v1` kinds and
//! Maistra's `federation.maistra.io/v1` kinds, for the supported subset, with their field names,
//! and the core `v1 ConfigMap` that holds a peer's root certificate.
//!
//! Input is converted here, at the edge, into validated types. Every problem carries the path of
//! the field at fault: unknown fields (`spec.http[0].mirrorr: unknown field ...`), Istio fields
//! Isthmus does not implement (`spec.http[0].mirror: not supported by Isthmus`) and semantic
//! rules (`spec.http[0].route: weights add up to 90, not 100`). Nothing is silently dropped.
//!
//! - [`networking`]: `ServiceEntry`, `WorkloadEntry`, `VirtualService`, `DestinationRule`;
//! - [`security`]: `PeerAuthentication`, `AuthorizationPolicy`;
//! - [`federation`]: `ServiceMeshPeer`, `ExportedServiceSet`, `ImportedServiceSet`;
//! - [`core`]: `v1 ConfigMap`;
//! - [`meta`]: object metadata, label selectors, `Unsupported` (an Istio field Isthmus does not
//!   implement), field errors and the [`Validator`];
//! - [`duration`]: Istio's duration notation (`1m30s`);
//! - `crd` (feature `crd`): the CustomResourceDefinitions;
//! - here: [`Resource`] (one variant per kind, each variant's type a [`TypedResource`]) and
//!   [`from_value`], which dispatches on `apiVersion`/`kind`, deserialises with the failing
//!   field's path, then validates.
//!
//! With the `crd` feature, `crd` derives the CustomResourceDefinitions of every kind (kube's
//! derive, schemas by schemars). Without it this crate pulls in neither `kube`, `k8s-openapi` nor
//! `schemars`: the proxy never depends on it, and the federation rules use it without them.

/// Declares a resource type: the Kubernetes envelope around a spec type.
macro_rules! resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            pub api_version: String,
            pub kind: String,
            pub metadata: $crate::meta::ObjectMeta,
            pub spec: $spec,
            /// Written by a control plane; accepted and ignored on input.
            #[serde(default, skip_serializing)]
            pub status: Option<serde::de::IgnoredAny>,
        }
    };
}

pub mod core;
#[cfg(feature = "crd")]
pub mod crd;
pub mod duration;
pub mod federation;
pub mod gateway;
pub mod meta;
pub mod networking;
pub mod published;
pub mod route_policies;
pub mod security;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use meta::{FieldError, LabelSelector, ObjectMeta, Unsupported, Validator, WorkloadSelector};

/// A typed, validated resource of any supported kind.
// Resources are held a few hundred at a time in a map, off any hot path: boxing the larger
// variants would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    ServiceEntry(networking::ServiceEntry),
    WorkloadEntry(networking::WorkloadEntry),
    VirtualService(networking::VirtualService),
    DestinationRule(networking::DestinationRule),
    Gateway(gateway::Gateway),
    PeerAuthentication(security::PeerAuthentication),
    AuthorizationPolicy(security::AuthorizationPolicy),
    RequestAuthentication(security::RequestAuthentication),
    ServiceMeshPeer(federation::ServiceMeshPeer),
    ExportedServiceSet(federation::ExportedServiceSet),
    ImportedServiceSet(federation::ImportedServiceSet),
    ConfigMap(core::ConfigMap),
}

/// The type of one kind's resources: its [`Kind`], and how to find it in a [`Resource`].
pub trait TypedResource {
    const KIND: Kind;
    /// `resource` as this type, if it is of this kind.
    fn from_resource(resource: &Resource) -> Option<&Self>;
}

macro_rules! typed_resources {
    ($($kind:ident: $type:ty),* $(,)?) => {$(
        impl TypedResource for $type {
            const KIND: Kind = Kind::$kind;
            fn from_resource(resource: &Resource) -> Option<&Self> {
                match resource {
                    Resource::$kind(r) => Some(r),
                    _ => None,
                }
            }
        }
    )*};
}

typed_resources!(
    ServiceEntry: networking::ServiceEntry,
    WorkloadEntry: networking::WorkloadEntry,
    VirtualService: networking::VirtualService,
    DestinationRule: networking::DestinationRule,
    Gateway: gateway::Gateway,
    PeerAuthentication: security::PeerAuthentication,
    AuthorizationPolicy: security::AuthorizationPolicy,
    RequestAuthentication: security::RequestAuthentication,
    ServiceMeshPeer: federation::ServiceMeshPeer,
    ExportedServiceSet: federation::ExportedServiceSet,
    ImportedServiceSet: federation::ImportedServiceSet,
    ConfigMap: core::ConfigMap,
);

/// A resource kind, by API group and kind name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    VirtualService,
    DestinationRule,
    Gateway,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    ServiceMeshPeer,
    ExportedServiceSet,
    ImportedServiceSet,
    ConfigMap,
}

impl Kind {
    /// `(api group, kind)` of every supported kind.
    pub const ALL: [(Kind, &'static str, &'static str); 12] = [
        (Kind::ServiceEntry, "networking.istio.io", "ServiceEntry"),
        (Kind::WorkloadEntry, "networking.istio.io", "WorkloadEntry"),
        (
            Kind::VirtualService,
            "networking.istio.io",
            "VirtualService",
        ),
        (
            Kind::DestinationRule,
            "networking.istio.io",
            "DestinationRule",
        ),
        (Kind::Gateway, "networking.istio.io", "Gateway"),
        (
            Kind::PeerAuthentication,
            "security.istio.io",
            "PeerAuthentication",
        ),
        (
            Kind::AuthorizationPolicy,
            "security.istio.io",
            "AuthorizationPolicy",
        ),
        (
            Kind::RequestAuthentication,
            "security.istio.io",
            "RequestAuthentication",
        ),
        (
            Kind::ServiceMeshPeer,
            "federation.maistra.io",
            "ServiceMeshPeer",
        ),
        (
            Kind::ExportedServiceSet,
            "federation.maistra.io",
            "ExportedServiceSet",
        ),
        (
            Kind::ImportedServiceSet,
            "federation.maistra.io",
            "ImportedServiceSet",
        ),
        (Kind::ConfigMap, "", "ConfigMap"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, ..)| *k == self)
            .map_or("", |(_, _, n)| n)
    }

    /// The versions of the group accepted for this kind. Istio's `v1beta1` and `v1alpha3` have
    /// the same schema as `v1` for the supported subset.
    fn accepts_version(self, group: &str, version: &str) -> bool {
        match group {
            "networking.istio.io" => matches!(version, "v1" | "v1beta1" | "v1alpha3"),
            "security.istio.io" => matches!(version, "v1" | "v1beta1"),
            "federation.maistra.io" => version == "v1",
            "" => version == "v1",
            _ => false,
        }
    }
}

/// A resource that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("not a resource: {0}")]
    NotAnObject(String),
    #[error("apiVersion and kind are required")]
    MissingType,
    #[error("unsupported resource type {api_version} {kind}")]
    UnsupportedType { api_version: String, kind: String },
    #[error("{kind} {name}: {}", join(.errors))]
    Invalid {
        kind: &'static str,
        name: String,
        errors: Vec<FieldError>,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ResourceError {
    /// The field errors, if the type was known.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

/// Validation after parsing: rules a schema alone cannot say.
pub trait Validate {
    fn validate(&self, v: &mut Validator);
}

/// Converts one parsed document (YAML or JSON, as a JSON value) into a validated resource.
pub fn from_value(value: Value) -> Result<Resource, ResourceError> {
    let Value::Object(object) = &value else {
        return Err(ResourceError::NotAnObject(format!(
            "expected a mapping, found {}",
            value_type(&value)
        )));
    };
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind_name = object.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(ResourceError::MissingType);
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = Kind::ALL
        .iter()
        .find(|(k, g, n)| *g == group && *n == kind_name && k.accepts_version(group, version))
        .map(|(k, ..)| *k)
        .ok_or_else(|| ResourceError::UnsupportedType {
            api_version: api_version.to_owned(),
            kind: kind_name.to_owned(),
        })?;
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let typed = |value| match kind {
        Kind::ServiceEntry => typed(kind, value).map(Resource::ServiceEntry),
        Kind::WorkloadEntry => typed(kind, value).map(Resource::WorkloadEntry),
        Kind::VirtualService => typed(kind, value).map(Resource::VirtualService),
        Kind::DestinationRule => typed(kind, value).map(Resource::DestinationRule),
        Kind::Gateway => typed(kind, value).map(Resource::Gateway),
        Kind::PeerAuthentication => typed(kind, value).map(Resource::PeerAuthentication),
        Kind::AuthorizationPolicy => typed(kind, value).map(Resource::AuthorizationPolicy),
        Kind::RequestAuthentication => typed(kind, value).map(Resource::RequestAuthentication),
        Kind::ServiceMeshPeer => typed(kind, value).map(Resource::ServiceMeshPeer),
        Kind::ExportedServiceSet => typed(kind, value).map(Resource::ExportedServiceSet),
        Kind::ImportedServiceSet => typed(kind, value).map(Resource::ImportedServiceSet),
        Kind::ConfigMap => typed(kind, value).map(Resource::ConfigMap),
    };
    let invalid = |errors| ResourceError::Invalid {
        kind: kind.name(),
        name: name.clone(),
        errors,
    };
    let resource = typed(value).map_err(invalid)?;
    let mut v = Validator::new();
    validate_metadata(resource.metadata(), &mut v);
    v.finish().map_err(invalid)?;
    Ok(resource)
}

/// Kubernetes' rules for names: a namespace is a DNS label, a name a DNS subdomain.
fn validate_metadata(meta: &ObjectMeta, v: &mut Validator) {
    v.check(
        meta::is_dns_subdomain(&meta.name),
        "metadata.name",
        format!(
            "{:?} is not a valid name (lowercase DNS subdomain)",
            meta.name
        ),
    );
    if let Some(ns) = &meta.namespace {
        v.check(
            meta::is_dns_label(ns),
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace (lowercase DNS label)"),
        );
    }
}

/// At most this many fields of one document are reported as unknown or unsupported.
const MAX_FIELD_REFUSALS: usize = 64;

/// Deserializes with the failing field's path, then validates. Every unknown or unsupported
/// field is reported, not only the first: each is taken out of the document and the rest is
/// read again, then what remains is validated too.
fn typed<T: DeserializeOwned + Validate>(
    kind: Kind,
    mut value: Value,
) -> Result<T, Vec<FieldError>> {
    let mut errors = Vec::new();
    let resource = loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(resource) => break resource,
            Err(error) => error,
        };
        let path = error.path().to_string();
        let steps = published::steps(error.path());
        let reason = error.into_inner().to_string();
        let refusal = steps
            .as_deref()
            .and_then(|steps| field_refusal(kind, steps, &reason));
        match (refusal, steps) {
            (Some(reason), Some(steps)) if published::remove(&mut value, &steps) => {
                errors.push(FieldError { path, reason });
                if errors.len() >= MAX_FIELD_REFUSALS {
                    errors.push(FieldError {
                        path: String::new(),
                        reason: format!(
                            "{MAX_FIELD_REFUSALS} fields refused; the rest are not shown"
                        ),
                    });
                    return Err(errors);
                }
            }
            _ => {
                errors.push(FieldError {
                    path,
                    reason: shorten_reason(&reason),
                });
                return Err(errors);
            }
        }
    };
    let mut v = Validator::new();
    resource.validate(&mut v);
    if let Err(more) = v.finish() {
        // A rule on what holds a refused field (a route with only a `delegate`: "exactly one
        // of route, redirect …") is about the document without it: not reported.
        let around_refused = |e: &FieldError| {
            errors.iter().any(|refused: &FieldError| {
                refused.path.strip_prefix(&e.path).is_some_and(|rest| {
                    e.path.is_empty() || rest.starts_with('.') || rest.starts_with('[')
                })
            })
        };
        let more: Vec<FieldError> = more.into_iter().filter(|e| !around_refused(e)).collect();
        errors.extend(more);
    }
    if errors.is_empty() {
        Ok(resource)
    } else {
        Err(errors)
    }
}

/// The refusal of a field the typed model does not take, when reading can go on without it: a
/// field of the published API (or one of its values) Isthmus does not implement, or a field no
/// API has.
fn field_refusal(kind: Kind, steps: &[published::Step], reason: &str) -> Option<String> {
    const UNSUPPORTED: &str = "not supported by Isthmus";
    if reason == UNSUPPORTED {
        return Some(UNSUPPORTED.to_owned());
    }
    let published = published::node_at(kind, steps);
    if reason.starts_with("unknown field `") {
        return Some(match published {
            Some(_) => UNSUPPORTED.to_owned(),
            None => shorten_reason(reason),
        });
    }
    // `simple: PASSTHROUGH`: a value of the published enum that the model has no variant for.
    let variant = reason
        .strip_prefix("unknown variant `")?
        .split('`')
        .next()?;
    published?
        .values
        .iter()
        .any(|value| value.as_str() == Some(variant))
        .then(|| format!("{variant} is {UNSUPPORTED}"))
}

/// serde's "unknown field `x`, expected one of `a`, `b`, …" lists every field, including the
/// unsupported ones; the path already names the field, so say "unknown field" and suggest the
/// closest known name.
fn shorten_reason(reason: &str) -> String {
    let Some(rest) = reason.strip_prefix("unknown field `") else {
        return reason.to_owned();
    };
    let Some((field, expected)) = rest.split_once("`, expected ") else {
        return "unknown field".to_owned();
    };
    let closest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (strsim::levenshtein(field, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min();
    match closest {
        Some((_, candidate)) => format!("unknown field; did you mean `{candidate}`?"),
        None => "unknown field".to_owned(),
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Self::ServiceEntry(_) => Kind::ServiceEntry,
            Self::WorkloadEntry(_) => Kind::WorkloadEntry,
            Self::VirtualService(_) => Kind::VirtualService,
            Self::DestinationRule(_) => Kind::DestinationRule,
            Self::Gateway(_) => Kind::Gateway,
            Self::PeerAuthentication(_) => Kind::PeerAuthentication,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::RequestAuthentication(_) => Kind::RequestAuthentication,
            Self::ServiceMeshPeer(_) => Kind::ServiceMeshPeer,
            Self::ExportedServiceSet(_) => Kind::ExportedServiceSet,
            Self::ImportedServiceSet(_) => Kind::ImportedServiceSet,
            Self::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::ServiceEntry(r) => &r.metadata,
            Self::WorkloadEntry(r) => &r.metadata,
            Self::VirtualService(r) => &r.metadata,
            Self::DestinationRule(r) => &r.metadata,
            Self::Gateway(r) => &r.metadata,
            Self::PeerAuthentication(r) => &r.metadata,
            Self::AuthorizationPolicy(r) => &r.metadata,
            Self::RequestAuthentication(r) => &r.metadata,
            Self::ServiceMeshPeer(r) => &r.metadata,
            Self::ExportedServiceSet(r) => &r.metadata,
            Self::ImportedServiceSet(r) => &r.metadata,
            Self::ConfigMap(r) => &r.metadata,
        }
    }
}
