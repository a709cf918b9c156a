//! Status written back to Kubernetes by the Lease holder only: the election
//! (`kubernetes/leader.rs`) and the status writer (`kubernetes/status_writer.rs`) with the real
//! kube-rs client against the API server test double, on tokio's real clock (the server is
//! real HTTP).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use isthmus_controlplane::federation::status::{
    Condition, ConditionStatus, DiscoveryStatus, ExportStatus, FederationStatus, ImportStatus,
    LocalServiceRef, PeerStatus, PodStatus, ServiceStatus,
};
use isthmus_controlplane::kubernetes::leader::{LeaseSettings, elect};
use isthmus_controlplane::kubernetes::status_writer::write_status;
use isthmus_e2e::test_api_server::TestApiServer;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

const NS: &str = "istio-system";

fn client(server: &TestApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// Polls `check` every 20 ms until it holds; fails after `limit`.
async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The election.

fn lease(holder: &str) -> LeaseSettings {
    let duration = Duration::from_secs(2);
    LeaseSettings {
        name: "isthmusd-status".into(),
        namespace: "isthmus-system".into(),
        holder: holder.into(),
        duration,
        renew_every: duration / 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_once_its_lease_expires() {
    let server = TestApiServer::start().await.unwrap();
    let (a, run_a) = elect(client(&server), lease("isthmusd-a"));
    let (b, run_b) = elect(client(&server), lease("isthmusd-b"));
    let task_a = tokio::spawn(run_a);
    let task_b = tokio::spawn(run_b);

    until(Duration::from_secs(3), "a leader", || {
        *a.borrow() || *b.borrow()
    })
    .await;
    // Exactly one, for a while (several renewals).
    let watch_until = Instant::now() + Duration::from_millis(1500);
    let first = *a.borrow();
    while Instant::now() < watch_until {
        // Never two; and the other never leads while the first renews (a slow round on a
        // loaded machine may make the leader step down for a moment, which is safe).
        assert!(!(*a.borrow() && *b.borrow()), "two leaders");
        let other = if first { *b.borrow() } else { *a.borrow() };
        assert!(!other, "the leader stays");
        sleep(Duration::from_millis(20)).await;
    }
    let (leader, mut follower, leader_task, follower_task, leader_name, follower_name) = if first {
        (a, b, task_a, task_b, "isthmusd-a", "isthmusd-b")
    } else {
        (b, a, task_b, task_a, "isthmusd-b", "isthmusd-a")
    };
    let stored = server
        .get("Lease", Some("isthmus-system"), "isthmusd-status")
        .unwrap();
    let spec = &stored["spec"];
    assert_eq!(spec["holderIdentity"], leader_name, "{stored}");
    assert_eq!(spec["leaseDurationSeconds"], 2);
    assert!(spec["acquireTime"].is_string() && spec["renewTime"].is_string());
    let transitions = spec["leaseTransitions"].as_i64().unwrap();

    // The leader stops without releasing: the other takes over once the lease has gone
    // unrenewed for its duration by the other's clock, counted from the other's first read of
    // the last renewal (up to a renewal period after it), noticed at its next round (another
    // period), plus slack for the HTTP round trips.
    leader_task.abort();
    let stopped = Instant::now();
    let _ = leader_task.await;
    assert!(
        leader.has_changed().is_err(),
        "the stopped elector's watch is closed"
    );
    timeout(Duration::from_millis(2000 + 2 * 667 + 1500), async {
        while !*follower.borrow_and_update() {
            follower.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{follower_name} did not take over"));
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "taken over after {took:?}: before the lease could have expired"
    );
    let stored = server
        .get("Lease", Some("isthmus-system"), "isthmusd-status")
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], follower_name, "{stored}");
    assert_eq!(
        stored["spec"]["leaseTransitions"].as_i64(),
        Some(transitions + 1)
    );
    follower_task.abort();
}

// ---------------------------------------------------------------------------------------------
// The status writer.

/// Red's federation resources (as `examples/two-meshes/*/federation.yaml`).
const FEDERATION: &str = "\
apiVersion: federation.maistra.io/v1
kind: ServiceMeshPeer
metadata: {name: green, namespace: istio-system}
spec:
  remote:
    addresses: [ingress-red.green.example]
  gateways:
    ingress: {name: ingress-green}
    egress: {name: egress-green}
  security:
    trustDomain: green.local
    clientID: green.local/ns/istio-system/sa/egress-red-service-account
    certificateChain: {kind: ConfigMap, name: green-ca-root-cert}
---
apiVersion: federation.maistra.io/v1
kind: ExportedServiceSet
metadata: {name: green, namespace: istio-system}
spec:
  exportRules:
  - type: NameSelector
    nameSelector: {namespace: shop, name: inventory}
---
apiVersion: federation.maistra.io/v1
kind: ImportedServiceSet
metadata: {name: green, namespace: istio-system}
spec:
  importRules:
  - type: NameSelector
    nameSelector: {namespace: bookinfo, name: ratings}
";

fn ready(reason: &str) -> Vec<Condition> {
    let mut condition = Condition::ready(ConditionStatus::True, reason, "fine");
    condition.last_transition_time = Some("2025-01-01T00:00:00Z".into());
    vec![condition]
}

/// A status for the three objects; `pod` and `warnings` vary it.
fn status(pod: &str, warnings: &[&str]) -> FederationStatus {
    let id = format!("{NS}/green");
    let mut status = FederationStatus::default();
    status.service_mesh_peers.insert(
        id.clone(),
        PeerStatus {
            discovery_status: DiscoveryStatus {
                active: vec![PodStatus {
                    pod: pod.into(),
                    remotes: Vec::new(),
                    watch: None,
                }],
            },
            warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
            conditions: ready("Connected"),
        },
    );
    status.exported_service_sets.insert(
        id.clone(),
        ExportStatus {
            exported_services: vec![ServiceStatus {
                exported_name: "inventory.shop.svc.green-exports.local".into(),
                local_service: LocalServiceRef {
                    hostname: "inventory.shop.svc.cluster.local".into(),
                    name: "inventory".into(),
                    namespace: "shop".into(),
                },
                reason: None,
            }],
            warnings: Vec::new(),
            conditions: ready("Exported"),
        },
    );
    status.imported_service_sets.insert(
        id,
        ImportStatus {
            imported_services: Vec::new(),
            unmatched_rules: Vec::new(),
            stale: false,
            warnings: Vec::new(),
            conditions: ready("Imported"),
        },
    );
    status
}

const KINDS: [(&str, &str); 3] = [
    ("ServiceMeshPeer", "servicemeshpeers"),
    ("ExportedServiceSet", "exportedservicesets"),
    ("ImportedServiceSet", "importedservicesets"),
];

/// The stored `.status` of each object, peer, export, import.
fn stored(server: &TestApiServer) -> [Value; 3] {
    KINDS.map(|(kind, _)| server.get(kind, Some(NS), "green").unwrap()["status"].clone())
}

/// The documents `status` should leave in the API server.
fn expected(status: &FederationStatus) -> [Value; 3] {
    let id = format!("{NS}/green");
    [
        serde_json::to_value(&status.service_mesh_peers[&id]).unwrap(),
        serde_json::to_value(&status.exported_service_sets[&id]).unwrap(),
        serde_json::to_value(&status.imported_service_sets[&id]).unwrap(),
    ]
}

/// Requests of `method` on the status subresources (of `plural`, if given).
fn count(server: &TestApiServer, method: &str, plural: Option<&str>) -> usize {
    server
        .requests()
        .iter()
        .filter(|(m, path)| {
            m == method
                && path.contains("/status")
                && path.contains("federation.maistra.io")
                && plural.is_none_or(|p| path.contains(&format!("/{p}/")))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_patches_status_only_on_change_and_at_most_once_a_second() {
    let server = TestApiServer::start().await.unwrap();
    server.apply_yaml(FEDERATION).unwrap();
    let first = status("isthmusd-0", &["a warning"]);
    let (status_tx, status_rx) = watch::channel(Arc::new(first.clone()));
    let (_leader_tx, leader_rx) = watch::channel(true);
    let writer = tokio::spawn(write_status(client(&server), status_rx, leader_rx));

    // Each object read once, then written once.
    until(Duration::from_secs(3), "status written", || {
        stored(&server) == expected(&first)
    })
    .await;
    sleep(Duration::from_millis(300)).await;
    for (_, plural) in KINDS {
        assert_eq!(count(&server, "PATCH", Some(plural)), 1, "{plural}");
        assert_eq!(count(&server, "GET", Some(plural)), 1, "{plural}");
    }
    assert_eq!(
        server.get("ServiceMeshPeer", Some(NS), "green").unwrap()["spec"]["remote"]["addresses"][0],
        "ingress-red.green.example",
        "the spec is untouched"
    );

    // The same documents again: nothing written.
    status_tx.send(Arc::new(first.clone())).unwrap();
    sleep(Duration::from_millis(1200)).await;
    assert_eq!(count(&server, "PATCH", None), 3);

    // A field the new document lacks is removed (the merge patch sets it to null).
    let second = status("isthmusd-0", &[]);
    status_tx.send(Arc::new(second.clone())).unwrap();
    until(Duration::from_secs(2), "warnings removed", || {
        stored(&server) == expected(&second)
    })
    .await;
    assert_eq!(count(&server, "PATCH", Some("servicemeshpeers")), 2);
    assert_eq!(count(&server, "PATCH", None), 4, "only the peer changed");
    sleep(Duration::from_millis(1100)).await;

    // A burst: five changes in 200 ms, one object.
    let before = count(&server, "PATCH", Some("servicemeshpeers"));
    let started = Instant::now();
    for i in 0..5 {
        status_tx
            .send(Arc::new(status(&format!("isthmusd-{i}"), &[])))
            .unwrap();
        sleep(Duration::from_millis(40)).await;
    }
    sleep(Duration::from_millis(900).saturating_sub(started.elapsed())).await;
    let within = count(&server, "PATCH", Some("servicemeshpeers")) - before;
    assert!(within <= 1, "{within} PATCHes in the first 900 ms");
    let last = status("isthmusd-4", &[]);
    until(Duration::from_secs(2), "the newest landed", || {
        stored(&server) == expected(&last)
    })
    .await;
    let landed = started.elapsed();
    sleep(Duration::from_millis(1200)).await;
    let patches = count(&server, "PATCH", Some("servicemeshpeers")) - before;
    assert!(
        (1..=2).contains(&patches),
        "{patches} PATCHes for the burst (newest landed after {landed:?})"
    );
    assert_eq!(
        count(&server, "PATCH", None),
        4 + patches,
        "the others untouched"
    );
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_writes_nothing_and_a_new_leader_rewrites_what_differs() {
    let server = TestApiServer::start().await.unwrap();
    server.apply_yaml(FEDERATION).unwrap();
    let first = status("isthmusd-0", &[]);
    let (status_tx, status_rx) = watch::channel(Arc::new(first.clone()));
    let (leader_tx, leader_rx) = watch::channel(false);
    let writer = tokio::spawn(write_status(client(&server), status_rx, leader_rx));

    // A follower: nothing, whatever changes.
    sleep(Duration::from_millis(500)).await;
    status_tx
        .send(Arc::new(status("isthmusd-1", &["w"])))
        .unwrap();
    sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(&server, "PATCH", None), 0);
    assert_eq!(count(&server, "GET", None), 0);
    assert_eq!(stored(&server), [Value::Null, Value::Null, Value::Null]);

    // Leader: everything written.
    let second = status("isthmusd-1", &["w"]);
    leader_tx.send(true).unwrap();
    until(Duration::from_secs(3), "status written", || {
        stored(&server) == expected(&second)
    })
    .await;
    assert_eq!(count(&server, "PATCH", None), 3);

    // Leadership lost; meanwhile another replica writes the export's status.
    leader_tx.send(false).unwrap();
    sleep(Duration::from_millis(200)).await;
    let other = json!({"exportedServices": [], "conditions": [], "writtenBy": "another replica"});
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        client(&server),
        NS,
        &isthmus_controlplane::kubernetes::status_writer::StatusKind::ExportedServiceSet
            .api_resource(),
    );
    api.patch_status(
        "green",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": other})),
    )
    .await
    .unwrap();
    let patches = count(&server, "PATCH", None);
    sleep(Duration::from_millis(1200)).await;
    assert_eq!(count(&server, "PATCH", None), patches, "a follower again");

    // Leader again: every object read, the one that differs rewritten (the other replica's
    // extra field removed), the others left alone.
    let gets = count(&server, "GET", None);
    leader_tx.send(true).unwrap();
    until(Duration::from_secs(3), "status rewritten", || {
        stored(&server) == expected(&second)
    })
    .await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&server, "GET", None), gets + 3, "every object read");
    assert_eq!(
        count(&server, "PATCH", None),
        patches + 1,
        "only the export rewritten"
    );

    // An object deleted meanwhile: its 404 is no error, and not retried.
    assert!(server.delete("ImportedServiceSet", Some(NS), "green"));
    let mut third = second.clone();
    if let Some(import) = third.imported_service_sets.get_mut(&format!("{NS}/green")) {
        import.stale = true;
    }
    let patches = count(&server, "PATCH", None);
    let import_patches = count(&server, "PATCH", Some("importedservicesets"));
    status_tx.send(Arc::new(third)).unwrap();
    until(Duration::from_secs(3), "the import's PATCH", || {
        count(&server, "PATCH", Some("importedservicesets")) > import_patches
    })
    .await;
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&server, "PATCH", None),
        patches + 1,
        "no retry after a 404"
    );
    assert!(!writer.is_finished());

    // The election stops: so does the writer.
    drop(leader_tx);
    timeout(Duration::from_secs(2), writer)
        .await
        .unwrap()
        .unwrap();
}
