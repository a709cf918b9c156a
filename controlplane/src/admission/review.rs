//! `admission.k8s.io/v1` `AdmissionReview`: the request as the API server sends it, parsed
//! with kube-rs's types, and the response. The object under review is kept as raw JSON (never a
//! typed round trip) so that a patch is computed against exactly what the API server holds.

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

/// The only version served, as the webhook configurations say (`admissionReviewVersions`).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A body that is not an `AdmissionReview` request.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("not an {API_VERSION} AdmissionReview (apiVersion {api_version:?}, kind {kind:?})")]
    NotAReview { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview's request: {0}")]
    BadRequest(#[source] serde_json::Error),
}

/// One review request: kube-rs's request (its `object`s left out) and the objects as sent.
#[derive(Debug)]
pub struct Review {
    pub request: AdmissionRequest<DynamicObject>,
    /// The object as sent (`None` for `DELETE`).
    pub object: Option<Value>,
    /// The object as it was, on `UPDATE` and `DELETE`.
    pub old_object: Option<Value>,
}

impl Review {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ReviewError> {
        let mut value: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
        let field =
            |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let (api_version, kind) = (field(&value, "apiVersion"), field(&value, "kind"));
        if api_version != API_VERSION || kind != "AdmissionReview" {
            return Err(ReviewError::NotAReview { api_version, kind });
        }
        let request = value
            .get_mut("request")
            .and_then(Value::as_object_mut)
            .ok_or(ReviewError::NoRequest)?;
        let object = request
            .insert("object".into(), Value::Null)
            .filter(|o| !o.is_null());
        // Neither is needed as a typed object; kube-rs's `DynamicObject` would insist on fields.
        let old_object = request
            .insert("oldObject".into(), Value::Null)
            .filter(|o| !o.is_null());
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(value).map_err(ReviewError::BadRequest)?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| ReviewError::NoRequest)?;
        Ok(Self {
            request,
            object,
            old_object,
        })
    }

    /// The namespace the object is in: the request's, else the object's, else `default`.
    pub fn namespace(&self) -> &str {
        self.request
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .or_else(|| {
                self.object
                    .as_ref()?
                    .pointer("/metadata/namespace")?
                    .as_str()
            })
            .unwrap_or("default")
    }

    /// Whether this creates or updates (the operations the webhooks act on).
    pub fn creates_or_updates(&self) -> bool {
        matches!(
            self.request.operation,
            Operation::Create | Operation::Update
        )
    }

    /// The response allowing the request unchanged.
    pub fn allow(&self) -> AdmissionResponse {
        AdmissionResponse::from(&self.request)
    }

    /// The response refusing it, with `message` for `kubectl` (HTTP 400 Invalid, as the API
    /// server's own validation answers).
    pub fn deny(&self, message: String) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(&self.request);
        response.allowed = false;
        response.result = Status::failure(&message, "Invalid").with_code(400);
        response
    }
}

/// The response as the body the API server reads.
pub fn to_body(mut response: AdmissionResponse) -> Value {
    // The API reference types `patch` as bytes, which JSON carries as base64; kube-rs writes
    // the bytes as a list of numbers, which only Go's lenient decoder takes.
    let patch = response
        .patch
        .take()
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    let mut review = serde_json::to_value(response.into_review()).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut review {
        // kube-rs copies the request's type; make it explicit for requests that came without.
        map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        map.insert("kind".into(), Value::String("AdmissionReview".into()));
        if let (Some(patch), Some(Value::Object(response))) = (patch, map.get_mut("response")) {
            response.insert("patch".into(), Value::String(patch));
        }
    }
    review
}
