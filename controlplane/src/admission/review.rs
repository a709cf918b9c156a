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
        // The API server always sends these; a hand-made review may not, and nothing here
        // depends on them.
        request
            .entry("userInfo")
            .or_insert_with(|| Value::Object(Default::default()));
        if !request.contains_key("resource") {
            let kind = request.get("kind").cloned().unwrap_or(Value::Null);
            let field = |key: &str| {
                kind.get(key)
                    .cloned()
                    .unwrap_or(Value::String(String::new()))
            };
            let resource = serde_json::json!({
                "group": field("group"),
                "version": field("version"),
                "resource": "",
            });
            request.insert("resource".into(), resource);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn body(review: &Value) -> Vec<u8> {
        serde_json::to_vec(review).unwrap()
    }

    #[test]
    fn a_minimal_review_parses_and_keeps_its_objects_as_sent() {
        let object = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": "shop"},
            "spec": {"containers": [{"name": "a", "futureField": {"x": 1}}]}});
        let review = Review::parse(&body(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "UPDATE", "object": object, "oldObject": object},
        })))
        .unwrap();
        assert_eq!(review.request.uid, "u1");
        assert_eq!(review.object.as_ref(), Some(&object));
        assert_eq!(review.old_object.as_ref(), Some(&object));
        assert_eq!(review.namespace(), "shop");
        assert!(review.creates_or_updates());
    }

    #[test]
    fn other_bodies_are_refused_with_the_reason() {
        let refused = |value: Value| Review::parse(&body(&value)).unwrap_err().to_string();
        assert!(
            refused(json!({"kind": "Pod"})).contains("not an admission.k8s.io/v1 AdmissionReview")
        );
        assert!(
            refused(json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}))
                .contains("v1beta1")
        );
        assert_eq!(
            refused(json!({"apiVersion": API_VERSION, "kind": "AdmissionReview"})),
            "the AdmissionReview has no request"
        );
        assert!(
            Review::parse(b"{")
                .unwrap_err()
                .to_string()
                .starts_with("the body is not JSON")
        );
        let no_uid = json!({"apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}});
        assert!(refused(no_uid).contains("uid"));
    }

    #[test]
    fn the_answer_carries_the_uid_and_the_patch_as_base64() {
        let review = Review::parse(&body(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"uid": "u2", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "object": {"metadata": {}}},
        })))
        .unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels", "value": {}}]))
                .unwrap();
        let answer = to_body(review.allow().with_patch(patch).unwrap());
        assert_eq!(answer["apiVersion"], API_VERSION);
        assert_eq!(answer["response"]["uid"], "u2");
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!([{"op": "add", "path": "/metadata/labels", "value": {}}])
        );
        let denied = to_body(review.deny("spec.x: bad".into()));
        assert_eq!(denied["response"]["allowed"], false);
        assert_eq!(denied["response"]["status"]["code"], 400);
        assert_eq!(denied["response"]["status"]["message"], "spec.x: bad");
    }
}
