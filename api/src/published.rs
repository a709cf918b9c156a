//! The published APIs: the structure of each claimed kind's `spec` as Istio's and Maistra's own
//! CRDs define it (`api/schema/published.json`, written by `api/schema/generate.py` from the
//! CRDs those projects publish; the file names the versions).
//!
//! The typed model (`networking.rs`, …) holds what Isthmus implements. A field the model does
//! not have is looked up here: a field of the published API is "not supported by Isthmus", a
//! field no API has is an unknown field (a typo). The field-coverage test walks every field in
//! it, so that no valid Istio or Maistra document is ever called invalid.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use super::Kind;

/// One node of a published schema: the parts of OpenAPI v3 that say what a value may be.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaNode {
    #[serde(rename = "type")]
    pub value_type: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, SchemaNode>,
    /// A list's items.
    pub items: Option<Box<SchemaNode>>,
    /// A map's values (`{}` when anything goes).
    pub additional_properties: Option<Box<SchemaNode>>,
    #[serde(default, rename = "enum")]
    pub values: Vec<Value>,
    #[serde(default)]
    pub required: Vec<String>,
    /// An Istio duration (`1s`, `100ms`), checked by a CEL rule in the CRD.
    #[serde(default)]
    pub duration: bool,
    pub format: Option<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    #[serde(default, rename = "x-kubernetes-int-or-string")]
    pub int_or_string: bool,
}

#[derive(Debug, Deserialize)]
struct Published {
    sources: BTreeMap<String, String>,
    kinds: BTreeMap<String, SchemaNode>,
}

static PUBLISHED: LazyLock<Published> = LazyLock::new(|| {
    // Compiled in and parsed by a unit test: it cannot fail at run time.
    serde_json::from_str(include_str!("../schema/published.json"))
        .expect("api/schema/published.json parses")
});

/// Where the schemas come from (project, version, file).
pub fn sources() -> &'static BTreeMap<String, String> {
    &PUBLISHED.sources
}

/// The published schema of `kind`'s `spec` (`None` for `ConfigMap`, which is Kubernetes').
pub fn spec_schema(kind: Kind) -> Option<&'static SchemaNode> {
    let (_, group, name) = Kind::ALL.iter().find(|(k, ..)| *k == kind)?;
    PUBLISHED.kinds.get(&format!("{group}/{name}"))
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Steps from serde's path (`spec.http[0].fault`); `None` when a step is not a key or an index.
pub fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    path.iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            _ => None,
        })
        .collect()
}

/// The published schema's node at `steps` (which start at the document: `spec`, …).
pub fn node_at(kind: Kind, steps: &[Step]) -> Option<&'static SchemaNode> {
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    if first != "spec" {
        return None;
    }
    rest.iter()
        .try_fold(spec_schema(kind)?, |node, step| match step {
            Step::Key(key) => node
                .properties
                .get(key)
                .or(node.additional_properties.as_deref()),
            Step::Index(_) => node.items.as_deref(),
        })
}

/// Removes the value at `steps` from `document`; false when there is none.
pub fn remove(document: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut node = document;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(key), Value::Object(map)) => map.get_mut(key),
            (Step::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        node = next;
    }
    match (last, node) {
        (Step::Key(key), Value::Object(map)) => map.remove(key).is_some(),
        (Step::Index(i), Value::Array(items)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claimed_kind_but_configmap_has_a_published_schema() {
        assert!(sources().contains_key("istio") && sources().contains_key("maistra"));
        for (kind, ..) in Kind::ALL {
            assert_eq!(
                spec_schema(kind).is_some(),
                kind != Kind::ConfigMap,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn fields_are_found_through_lists_and_maps() {
        let key = |s: &str| Step::Key(s.to_owned());
        let zone_aware = [
            key("spec"),
            key("trafficPolicy"),
            key("loadBalancer"),
            key("zoneAwareLbSetting"),
        ];
        assert!(node_at(Kind::DestinationRule, &zone_aware).is_some());
        let fault = [key("spec"), key("http"), Step::Index(3), key("fault")];
        assert!(node_at(Kind::VirtualService, &fault).is_some());
        let label = [key("spec"), key("labels"), key("any-label")];
        assert!(node_at(Kind::WorkloadEntry, &label).is_some());
        let typo = [key("spec"), key("http"), Step::Index(0), key("timeuot")];
        assert!(node_at(Kind::VirtualService, &typo).is_none());
        assert!(node_at(Kind::VirtualService, &[key("metadata")]).is_none());
    }

    #[test]
    fn remove_takes_out_exactly_the_value_at_the_path() {
        let mut doc = serde_json::json!({"spec": {"http": [{"fault": {}, "timeout": "1s"}]}});
        let path = [
            Step::Key("spec".into()),
            Step::Key("http".into()),
            Step::Index(0),
            Step::Key("fault".into()),
        ];
        assert!(remove(&mut doc, &path));
        assert_eq!(
            doc,
            serde_json::json!({"spec": {"http": [{"timeout": "1s"}]}})
        );
        assert!(!remove(&mut doc, &path));
    }
}
