#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn service(exported: &str, ns: &str, name: &str, host: &str) -> Value {
    json!({"exportedName": exported, "localService": {"hostname": host, "name": name, "namespace": ns}})
}

/// Green exports ratings, reviews and inventory to red; red imports ratings under its own
/// name, inventory as local, not reviews, and asks for details, which green does not export.
fn meshes() -> Vec<MeshView> {
    let green = MeshView {
        name: "green".into(),
        peers: BTreeMap::from([("red".into(), "red".into())]),
        federation: json!({
            "exportedServiceSets": {"istio-system/red": {"exportedServices": [
                service("ratings.bookinfo.svc.red-exports.local", "bookinfo", "ratings", "ratings.bookinfo.svc.cluster.local"),
                service("reviews.bookinfo.svc.red-exports.local", "bookinfo", "reviews", "reviews.bookinfo.svc.cluster.local"),
            ]}},
            "importedServiceSets": {},
        }),
    };
    let mut reviews = service("reviews.bookinfo.svc.red-exports.local", "", "", "");
    reviews["reason"] = json!("exported by the peer, but no import rule selects it");
    let red = MeshView {
        name: "red".into(),
        peers: BTreeMap::from([("green".into(), "green".into())]),
        federation: json!({
            "exportedServiceSets": {},
            "importedServiceSets": {"istio-system/green": {
                "importedServices": [
                    service("ratings.bookinfo.svc.red-exports.local", "bookinfo", "ratings", "ratings.bookinfo.svc.green-imports.local"),
                    reviews,
                ],
                "unmatchedRules": ["importRules[1] (bookinfo/details): the peer does not export a service it selects"],
                "stale": false,
            }},
        }),
    };
    vec![green, red]
}

#[test]
fn the_graph_joins_each_export_with_its_import() {
    let rows = graph(&meshes());
    let summary: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.exporter.as_str(),
                r.service.as_str(),
                r.imported_as.as_str(),
                r.state.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "green",
                "bookinfo/ratings",
                "ratings.bookinfo.svc.green-imports.local",
                "crossing"
            ),
            (
                "green",
                "bookinfo/reviews",
                "",
                "not imported: exported by the peer, but no import rule selects it"
            ),
            (
                "green",
                "",
                "",
                "import rule matches nothing: importRules[1] (bookinfo/details): the peer does not export a service it selects"
            ),
        ]
    );
    assert!(rows.iter().all(|r| r.importer == "red"));
}

#[test]
fn a_stale_import_says_so() {
    let mut m = meshes();
    m[1].federation["importedServiceSets"]["istio-system/green"]["stale"] = json!(true);
    assert_eq!(graph(&m)[0].state, "crossing (stale: the peer is away)");
}

#[test]
fn dot_has_a_cluster_per_mesh_and_an_edge_per_export() {
    let m = meshes();
    let dot = render_dot(&m, &graph(&m));
    assert!(dot.starts_with("digraph federation {"), "{dot}");
    assert!(dot.contains("label=\"green\""), "{dot}");
    assert!(dot.contains("\"green/bookinfo/ratings\" -> \"red/ratings.bookinfo.svc.green-imports.local\" [label=\"ratings.bookinfo.svc.red-exports.local\"];"), "{dot}");
    assert!(
        dot.contains("\"green/bookinfo/reviews\" -> \"red\" [style=dashed"),
        "{dot}"
    );
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
}

#[test]
fn the_table_lists_every_row() {
    let m = meshes();
    let table = render_table(&graph(&m));
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().next().unwrap().starts_with("EXPORTER"));
}
