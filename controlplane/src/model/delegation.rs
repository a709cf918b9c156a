//! Istio's `VirtualService` delegation: an HTTP route with `delegate` takes the place of the
//! HTTP routes of another `VirtualService`, one without hosts (the delegate), each of whose
//! matches must lie within the parent route's. One level only, as in Istio.
//!
//! The merge follows Istio's: for each pair of a parent match and a delegate match, the
//! delegate's conditions stay and the parent's fill what it leaves unset; a pair whose
//! conditions cannot both hold (a delegate prefix outside the parent's, another exact path, a
//! regex on either side beside any other path condition, two different ports...) is a
//! conflict and gives no match. A delegate route whose every pair conflicts is dropped, with a
//! warning. The delegate's route settings (timeout, retries, rewrite, headers, fault, CORS,
//! mirrors) win; the parent's fill the ones it does not set. A delegate is looked up in the
//! parent's namespace unless `delegate.namespace` names another, and must be exported to the
//! parent's namespace.

use isthmus_api::Resource;
use isthmus_api::networking::{HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec};
use isthmus_api::{Kind, networking::ValueMatch};

use super::ModelWarning;
use crate::config::{ConfigSnapshot, ResourceKey};

/// `spec` with every delegating route replaced by its delegate's routes, merged.
pub fn expand(
    config: &ConfigSnapshot,
    key: &ResourceKey,
    spec: &VirtualServiceSpec,
    warnings: &mut Vec<ModelWarning>,
) -> VirtualServiceSpec {
    if spec.http.iter().all(|r| r.delegate.is_none()) {
        return spec.clone();
    }
    let mut warn = |message: String| {
        warnings.push(ModelWarning {
            resource: key.clone(),
            message,
        })
    };
    let mut out = spec.clone();
    out.http.clear();
    for (i, route) in spec.http.iter().enumerate() {
        let Some(delegate) = &route.delegate else {
            out.http.push(route.clone());
            continue;
        };
        let namespace = delegate.namespace.as_deref().unwrap_or(&key.namespace);
        let child_key = ResourceKey {
            kind: Kind::VirtualService,
            namespace: namespace.to_owned(),
            name: delegate.name.clone(),
        };
        let child = match config.get(&child_key) {
            Some(Resource::VirtualService(vs)) => &vs.spec,
            _ => {
                warn(format!(
                    "spec.http[{i}].delegate: no VirtualService {namespace}/{}: the route applies to no request",
                    delegate.name
                ));
                continue;
            }
        };
        if !child.hosts.is_empty() {
            warn(format!(
                "spec.http[{i}].delegate: VirtualService {namespace}/{} has hosts, so it is not a delegate: the route applies to no request",
                delegate.name
            ));
            continue;
        }
        if !super::ingress::exported_to(&child.export_to, namespace, &key.namespace) {
            warn(format!(
                "spec.http[{i}].delegate: VirtualService {namespace}/{} is not exported to namespace {}: the route applies to no request",
                delegate.name, key.namespace
            ));
            continue;
        }
        for (j, child_route) in child.http.iter().enumerate() {
            match merge_route(route, child_route) {
                Some(merged) => out.http.push(merged),
                None => warn(format!(
                    "spec.http[{i}].delegate: route {j} of VirtualService {namespace}/{} matches nothing within this route's match: skipped",
                    delegate.name
                )),
            }
        }
    }
    out
}

/// The delegate's route within the parent's, or `None` when their matches conflict.
fn merge_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &delegate.matches)?;
    let mut merged = delegate.clone();
    merged.matches = matches;
    merged.name = match (&root.name, &delegate.name) {
        (Some(r), Some(d)) => Some(format!("{r}-{d}")),
        (r, d) => d.clone().or_else(|| r.clone()),
    };
    fill(&mut merged.rewrite, &root.rewrite);
    fill(&mut merged.timeout, &root.timeout);
    fill(&mut merged.retries, &root.retries);
    fill(&mut merged.fault, &root.fault);
    fill(&mut merged.mirror, &root.mirror);
    fill(&mut merged.mirror_percent, &root.mirror_percent);
    fill(&mut merged.mirror_percentage, &root.mirror_percentage);
    fill(&mut merged.cors_policy, &root.cors_policy);
    fill(&mut merged.headers, &root.headers);
    if merged.mirrors.is_empty() {
        merged.mirrors.clone_from(&root.mirrors);
    }
    Some(merged)
}

/// The delegate's setting, else the parent's.
fn fill<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
    if mine.is_none() {
        mine.clone_from(theirs);
    }
}

/// Every pair of a parent and a delegate match that can both hold, merged; `None` when no pair
/// can (the delegate route is outside the parent's).
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let merged: Vec<HttpMatchRequest> = delegate
        .iter()
        .flat_map(|leaf| root.iter().filter_map(move |r| merge_match(r, leaf)))
        .collect();
    (!merged.is_empty()).then_some(merged)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    if conflicts(root, leaf) {
        return None;
    }
    let mut m = leaf.clone();
    fill(&mut m.uri, &root.uri);
    fill(&mut m.scheme, &root.scheme);
    fill(&mut m.method, &root.method);
    fill(&mut m.authority, &root.authority);
    if m.port.is_none() {
        m.port = root.port;
    }
    if m.source_namespace.is_none() {
        m.source_namespace.clone_from(&root.source_namespace);
    }
    if m.gateways.is_empty() {
        m.gateways.clone_from(&root.gateways);
    }
    for (name, value) in &root.headers {
        m.headers
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    for (name, value) in &root.query_params {
        m.query_params
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    for (name, value) in &root.without_headers {
        m.without_headers
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    for (name, value) in &root.source_labels {
        m.source_labels
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    Some(m)
}

/// Whether a parent and a delegate match cannot both hold (Istio's rules).
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let strings = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    let value_maps = [
        (&root.headers, &leaf.headers),
        (&root.query_params, &leaf.query_params),
    ];
    strings
        .iter()
        .any(|(r, l)| matches!((r, l), (Some(r), Some(l)) if string_conflict(r, l)))
        || value_maps.iter().any(|(r, l)| {
            r.iter()
                .any(|(name, rv)| l.get(name).is_some_and(|lv| value_conflict(rv, lv)))
        })
        || root.ignore_uri_case != leaf.ignore_uri_case
        || matches!((root.port, leaf.port), (Some(a), Some(b)) if a != b)
        || matches!((&root.source_namespace, &leaf.source_namespace), (Some(a), Some(b)) if a != b)
        || root
            .source_labels
            .iter()
            .any(|(k, v)| leaf.source_labels.get(k).is_some_and(|lv| lv != v))
}

fn value_conflict(root: &ValueMatch, leaf: &ValueMatch) -> bool {
    match (root.string_match(), leaf.string_match()) {
        (Some(r), Some(l)) => string_conflict(&r, &l),
        _ => false,
    }
}

/// Istio's rule for one condition set on both sides: the delegate's must lie within the
/// parent's; a regex on either side cannot be compared, so it conflicts.
fn string_conflict(root: &StringMatch, leaf: &StringMatch) -> bool {
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Exact(_), StringMatch::Prefix(_)) => true,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn model_spec(yaml: &str) -> (VirtualServiceSpec, Vec<ModelWarning>) {
        let config = crate::config::load_text(yaml, Path::new("t.yaml")).unwrap();
        let key = ResourceKey {
            kind: Kind::VirtualService,
            namespace: "shop".into(),
            name: "parent".into(),
        };
        let Some(Resource::VirtualService(vs)) = config.get(&key) else {
            panic!()
        };
        let mut warnings = Vec::new();
        let spec = expand(&config, &key, &vs.spec, &mut warnings);
        (spec, warnings)
    }

    const PARENT: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: parent, namespace: shop}
spec:
  hosts: [reviews.shop.local]
  http:
  - name: api
    match: [{uri: {prefix: /api}, headers: {x-team: {exact: red}}}]
    timeout: 3s
    delegate: {name: api-routes, namespace: teams}
  - route: [{destination: {host: reviews.shop.local}}]
---
";

    #[test]
    fn delegate_routes_merge_within_the_parents_match_and_conflicts_are_dropped() {
        let (spec, warnings) = model_spec(&format!(
            "{PARENT}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api-routes, namespace: teams}}
spec:
  http:
  - name: v2
    match: [{{uri: {{prefix: /api/v2}}}}]
    route: [{{destination: {{host: reviews.shop.local, subset: v2}}}}]
  - match: [{{uri: {{exact: /other}}}}]
    route: [{{destination: {{host: reviews.shop.local, subset: v1}}}}]
  - timeout: 1s
    route: [{{destination: {{host: reviews.shop.local, subset: v1}}}}]
"
        ));
        // The conflicting /other route is dropped, with a warning; the rest merged in place.
        assert_eq!(spec.http.len(), 3, "{spec:#?}");
        let v2 = &spec.http[0];
        assert_eq!(v2.name.as_deref(), Some("api-v2"));
        assert_eq!(
            v2.matches[0].uri,
            Some(StringMatch::Prefix("/api/v2".into()))
        );
        assert!(v2.matches[0].headers.contains_key("x-team"), "{v2:?}");
        assert!(v2.timeout.is_some(), "the parent's timeout fills in");
        // A delegate route without a match takes the parent's, and keeps its own timeout.
        let catch_all = &spec.http[1];
        assert_eq!(
            catch_all.matches[0].uri,
            Some(StringMatch::Prefix("/api".into()))
        );
        assert_eq!(catch_all.timeout.as_ref().unwrap().0.as_secs(), 1);
        assert!(spec.http[2].delegate.is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("route 1"), "{warnings:?}");
    }

    #[test]
    fn a_missing_hosted_or_unexported_delegate_routes_nothing_and_says_so() {
        for (child, expected) in [
            ("", "no VirtualService teams/api-routes"),
            (
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-routes, namespace: teams}
spec:
  hosts: [other.shop.local]
  http: [{route: [{destination: {host: reviews.shop.local}}]}]
",
                "has hosts",
            ),
            (
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-routes, namespace: teams}
spec:
  exportTo: [.]
  http: [{route: [{destination: {host: reviews.shop.local}}]}]
",
                "not exported to namespace shop",
            ),
        ] {
            let (spec, warnings) = model_spec(&format!("{PARENT}{child}"));
            assert_eq!(spec.http.len(), 1, "{spec:#?}");
            assert!(
                warnings.iter().any(|w| w.message.contains(expected)),
                "{expected}: {warnings:?}"
            );
        }
    }

    #[test]
    fn istio_conflict_rules() {
        use StringMatch::{Exact, Prefix, Regex};
        for (root, leaf, conflict) in [
            (Prefix("/a".into()), Prefix("/a/b".into()), false),
            (Prefix("/a/b".into()), Prefix("/a".into()), true),
            (Prefix("/a".into()), Exact("/a/x".into()), false),
            (Exact("/a".into()), Exact("/a".into()), false),
            (Exact("/a".into()), Prefix("/a".into()), true),
            (Regex("/a.*".into()), Prefix("/a".into()), true),
            (Prefix("/a".into()), Regex("/a.*".into()), true),
        ] {
            assert_eq!(string_conflict(&root, &leaf), conflict, "{root:?} {leaf:?}");
        }
    }
}
