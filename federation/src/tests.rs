//! Table-driven tests of export and import rule evaluation, on Maistra's examples and the
//! edge cases of its semantics.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;

use isthmus_api::federation::{ExportedServiceSetSpec, ImportedServiceSetSpec};
use serde_json::json;

use crate::exports::{self, ExportDecision, LocalService, NotExportable};
use crate::imports::{self, ImportDecision};
use crate::names::ServiceName;

fn service(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    not: Option<NotExportable>,
) -> LocalService {
    LocalService {
        name: ServiceName::new(ns, name),
        host: format!("{name}.{ns}.svc.cluster.local"),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        not_exportable: not,
    }
}

#[test]
fn export_rules_first_match_wins_with_aliases_and_never_export_what_may_not_cross() {
    let spec: ExportedServiceSetSpec = serde_json::from_value(json!({"exportRules": [
        {"type": "NameSelector", "nameSelector":
            {"namespace": "red-bookinfo", "name": "red-ratings",
             "alias": {"namespace": "bookinfo", "name": "ratings"}}},
        {"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "ratings"}},
        {"type": "LabelSelector", "labelSelector": {"namespace": "*",
            "selector": {"matchLabels": {"export": "true"}},
            "aliases": [{"namespace": "shop", "name": "*", "alias": {"namespace": "store"}}]}},
        {"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "*"}}
    ]}))
    .unwrap();
    let services = vec![
        service("red-bookinfo", "red-ratings", &[], None),
        service("bookinfo", "ratings", &[("export", "true")], None),
        service("shop", "db", &[("export", "true")], None),
        service("shop", "cache", &[("export", "false")], None),
        service("bookinfo", "reviews", &[], None),
        service(
            "bookinfo",
            "details",
            &[],
            Some(NotExportable::ImportedFrom("green".into())),
        ),
        service(
            "external",
            "httpbin",
            &[("export", "true")],
            Some(NotExportable::MeshExternal),
        ),
        service("other", "thing", &[], None),
    ];
    let exported = |ns: &str, name: &str, rule: usize| ExportDecision::Exported {
        as_name: ServiceName::new(ns, name),
        host: format!("{name}.{ns}.svc.green-exports.local"),
        rule,
    };
    // (service, expected decision, why)
    let table: Vec<(&str, ExportDecision, &str)> = vec![
        (
            "red-bookinfo/red-ratings",
            exported("bookinfo", "ratings", 0),
            "renamed by its alias",
        ),
        (
            "bookinfo/ratings",
            exported("bookinfo", "ratings", 1),
            "the first matching rule wins over the label rule",
        ),
        (
            "shop/db",
            exported("store", "db", 2),
            "label rule, first alias that selects it",
        ),
        (
            "shop/cache",
            ExportDecision::NotSelected,
            "labels do not match; not in bookinfo",
        ),
        (
            "bookinfo/reviews",
            exported("bookinfo", "reviews", 3),
            "wildcard name",
        ),
        (
            "bookinfo/details",
            ExportDecision::Refused {
                rule: 3,
                reason: NotExportable::ImportedFrom("green".into()),
            },
            "no transitive federation",
        ),
        (
            "external/httpbin",
            ExportDecision::Refused {
                rule: 2,
                reason: NotExportable::MeshExternal,
            },
            "MESH_EXTERNAL is never exported",
        ),
        ("other/thing", ExportDecision::NotSelected, "no rule"),
    ];
    let decisions = exports::evaluate("green", &spec, &services);
    assert_eq!(decisions.len(), table.len());
    for ((name, decision), (expected_name, expected, why)) in decisions.iter().zip(&table) {
        assert_eq!(name.to_string(), *expected_name);
        assert_eq!(decision, expected, "{expected_name}: {why}");
    }
}

#[test]
fn an_empty_or_wildcard_selector_matches_everything_and_keeps_names() {
    let spec: ExportedServiceSetSpec = serde_json::from_value(json!({"exportRules": [
        {"type": "NameSelector", "nameSelector": {"namespace": "", "name": "*",
            "alias": {"namespace": "*", "name": ""}}}
    ]}))
    .unwrap();
    let decisions = exports::evaluate("red", &spec, &[service("a", "b", &[], None)]);
    assert_eq!(
        decisions[0].1,
        ExportDecision::Exported {
            as_name: ServiceName::new("a", "b"),
            host: "b.a.svc.red-exports.local".into(),
            rule: 0
        }
    );
    let none = ExportedServiceSetSpec::default();
    assert_eq!(
        exports::evaluate("red", &none, &[service("a", "b", &[], None)])[0].1,
        ExportDecision::NotSelected,
        "no rules, nothing exported"
    );
}

#[test]
fn import_rules_name_the_local_host_by_alias_suffix_or_as_local() {
    let spec: ImportedServiceSetSpec = serde_json::from_value(json!({
        "locality": {"region": "us-west"},
        "importRules": [
            {"type": "NameSelector", "importAsLocal": true, "nameSelector":
                {"namespace": "bookinfo", "name": "ratings",
                 "alias": {"namespace": "bookinfo", "name": "ratings"}}},
            {"type": "NameSelector", "domainSuffix": "green.global",
             "nameSelector": {"namespace": "bookinfo", "name": "reviews"}},
            {"type": "NameSelector", "nameSelector": {"namespace": "shop", "name": "*",
                "alias": {"namespace": "store"}}},
            {"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "*"}}
        ]
    }))
    .unwrap();
    let offered: Vec<ServiceName> = [
        ("bookinfo", "ratings"),
        ("bookinfo", "reviews"),
        ("shop", "db"),
        ("bookinfo", "details"),
        ("other", "thing"),
    ]
    .iter()
    .map(|(ns, n)| ServiceName::new(ns, n))
    .collect();
    let locality = spec.locality.clone();
    let imported =
        |ns: &str, name: &str, host: &str, as_local: bool, rule: usize| ImportDecision::Imported {
            as_name: ServiceName::new(ns, name),
            host: host.into(),
            as_local,
            locality: locality.clone(),
            rule,
        };
    let table = vec![
        (
            imported(
                "bookinfo",
                "ratings",
                "ratings.bookinfo.svc.cluster.local",
                true,
                0,
            ),
            "importAsLocal: the local service",
        ),
        (
            imported(
                "bookinfo",
                "reviews",
                "reviews.bookinfo.green.global",
                false,
                1,
            ),
            "the rule's domainSuffix",
        ),
        (
            imported("store", "db", "db.store.svc.green-imports.local", false, 2),
            "alias namespace",
        ),
        (
            imported(
                "bookinfo",
                "details",
                "details.bookinfo.svc.green-imports.local",
                false,
                3,
            ),
            "the default name",
        ),
        (
            ImportDecision::NotSelected,
            "exported by the peer, not imported",
        ),
    ];
    let decisions = imports::evaluate("green", &spec, &offered, "cluster.local");
    for ((name, decision), (expected, why)) in decisions.iter().zip(&table) {
        assert_eq!(decision, expected, "{name}: {why}");
    }
}

#[test]
fn a_spec_domain_suffix_applies_to_rules_without_their_own() {
    let spec: ImportedServiceSetSpec = serde_json::from_value(json!({
        "domainSuffix": "imported.local",
        "importRules": [{"type": "NameSelector", "nameSelector":
            {"namespace": "custom-ns", "name": "bar", "alias": {"namespace": "other-mesh"}}}]
    }))
    .unwrap();
    let decisions = imports::evaluate(
        "red",
        &spec,
        &[ServiceName::new("custom-ns", "bar")],
        "cluster.local",
    );
    match &decisions[0].1 {
        ImportDecision::Imported { host, .. } => assert_eq!(host, "bar.other-mesh.imported.local"),
        other => panic!("{other:?}"),
    }
}
