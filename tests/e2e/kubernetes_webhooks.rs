//! The Kubernetes writes that go with the admission webhooks, by a real `isthmusd`
//! (`--config-source kubernetes`) against the strict test API server: the mesh root as the
//! `caBundle` of every webhook of `manifests/base/webhooks.yaml`'s two configurations
//! (`kubernetes/webhook_bundle.rs`), and the `isthmus-ca-root-cert` `ConfigMap` in every
//! namespace of the mesh (`kubernetes/root_publisher.rs`), both kept as they are edited.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::Path;
use std::time::Duration;

use isthmus_e2e::Isthmusd;
use isthmus_e2e::kube::ApiServer;
use isthmus_e2e::mesh::until;
use serde_json::{Value, json};

const INJECTOR: &str = "isthmus-sidecar-injector";
const VALIDATOR: &str = "isthmus-validator";
const ROOT_CONFIG_MAP: &str = "isthmus-ca-root-cert";

/// Enough for a start, a leader election and a few watch rounds on a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Standard base64 with padding (what a `caBundle` holds on the wire), written out here so
/// that the test does not share the code it checks.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn kubernetes_isthmusd(dir: &Path, api: &ApiServer, extra: &[&str]) -> Isthmusd {
    api.isthmusd(dir, "cluster.local", extra)
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// The `caBundle` of each webhook of a configuration (`None`: it has none).
fn bundles(api: &ApiServer, kind: &str, name: &str) -> Vec<Option<String>> {
    let Some(config) = api.server.get(kind, None, name) else {
        return Vec::new();
    };
    config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["clientConfig"]["caBundle"].as_str().map(str::to_owned))
        .collect()
}

fn all_hold(api: &ApiServer, kind: &str, name: &str, bundle: &str) -> bool {
    let bundles = bundles(api, kind, name);
    !bundles.is_empty() && bundles.iter().all(|b| b.as_deref() == Some(bundle))
}

/// The root `ConfigMap` of `namespace`, if it holds `pem`.
fn published(api: &ApiServer, namespace: &str, pem: &str) -> Option<Value> {
    api.server
        .get("ConfigMap", Some(namespace), ROOT_CONFIG_MAP)
        .filter(|m| m["data"]["root-cert.pem"] == pem)
}

/// Writes `object` back as a user would (`kubectl replace` with what was read).
fn replace(api: &ApiServer, object: &Value) {
    api.apply(&serde_json::to_string(object).unwrap());
}

/// Requests of `method` whose path contains `fragment`.
fn count(api: &ApiServer, method: &str, fragment: &str) -> usize {
    api.server
        .requests()
        .iter()
        .filter(|(m, path)| m == method && path.contains(fragment))
        .count()
}

#[test]
fn the_lease_holder_keeps_the_mesh_root_in_the_webhooks_and_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    // Creates are refused outside live namespaces, as the real server's admission does.
    api.server.enforce_namespace_lifecycle();
    let webhooks =
        std::fs::read_to_string(workspace().join("manifests/base/webhooks.yaml")).unwrap();
    api.apply(&webhooks);
    for ns in ["isthmus-system", "bookinfo", "shop", "kube-system"] {
        api.apply(&namespace(ns));
    }
    // Being deleted (a finalizer holds it): nothing may be created there.
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: leaving, finalizers: [example.io/hold]}\n");
    assert!(api.server.delete("Namespace", None, "leaving"));
    // An older root ConfigMap in shop, with a key and a label of its own.
    api.apply(&format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: {ROOT_CONFIG_MAP}, namespace: shop, labels: {{team: shop}}}}
data: {{root-cert.pem: stale, notes: kept}}
"
    ));
    assert_eq!(
        bundles(&api, "MutatingWebhookConfiguration", INJECTOR),
        [None, None, None]
    );
    assert_eq!(
        bundles(&api, "ValidatingWebhookConfiguration", VALIDATOR),
        [None]
    );

    let daemon = kubernetes_isthmusd(dir.path(), &api, &[]);
    let pem = std::fs::read_to_string(daemon.root_file()).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let bundle = base64(pem.as_bytes());

    let everywhere = || {
        all_hold(&api, "MutatingWebhookConfiguration", INJECTOR, &bundle)
            && all_hold(&api, "ValidatingWebhookConfiguration", VALIDATOR, &bundle)
            && ["isthmus-system", "bookinfo", "shop"]
                .iter()
                .all(|ns| published(&api, ns, &pem).is_some())
    };
    let took = until(
        "the mesh root in both webhook configurations and every namespace",
        LIMIT,
        everywhere,
    );
    eprintln!("published after {took:?}");

    // A new ConfigMap is labelled as isthmusd's; the older one keeps its own key and label.
    let bookinfo = published(&api, "bookinfo", &pem).unwrap();
    assert_eq!(
        bookinfo["metadata"]["labels"],
        json!({"isthmus.io/managed-by": "isthmusd"})
    );
    let shop = published(&api, "shop", &pem).unwrap();
    assert_eq!(shop["data"]["notes"], "kept", "{shop}");
    assert_eq!(
        shop["metadata"]["labels"],
        json!({"team": "shop", "isthmus.io/managed-by": "isthmusd"})
    );
    // Kubernetes' own namespaces and one being deleted get nothing; no create was tried there.
    assert!(
        api.server
            .get("ConfigMap", Some("kube-system"), ROOT_CONFIG_MAP)
            .is_none()
    );
    assert!(
        api.server
            .get("ConfigMap", Some("leaving"), ROOT_CONFIG_MAP)
            .is_none()
    );
    assert_eq!(count(&api, "POST", "/namespaces/leaving/"), 0);
    assert_eq!(count(&api, "POST", "/namespaces/kube-system/"), 0);
    // The rest of the webhook configurations is as applied.
    let injector = api
        .server
        .get("MutatingWebhookConfiguration", None, INJECTOR)
        .unwrap();
    assert_eq!(
        injector["webhooks"][2]["objectSelector"]["matchExpressions"][0]["values"],
        json!(["true"])
    );
    assert_eq!(
        injector["webhooks"][0]["clientConfig"]["service"]["path"],
        "/inject"
    );

    // Written on change only: once current, nothing more is written.
    std::thread::sleep(Duration::from_millis(1500));
    let puts = count(&api, "PUT", "webhookconfigurations");
    let writes = count(&api, "POST", "/configmaps") + count(&api, "PUT", "/configmaps/");
    assert_eq!(
        puts,
        2,
        "one replace per configuration: {:?}",
        api.server.requests()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&api, "PUT", "webhookconfigurations"), puts);
    assert_eq!(
        count(&api, "POST", "/configmaps") + count(&api, "PUT", "/configmaps/"),
        writes
    );

    // A caBundle blanked by hand comes back, in that configuration only.
    let mut injector = api
        .server
        .get("MutatingWebhookConfiguration", None, INJECTOR)
        .unwrap();
    injector["webhooks"][1]["clientConfig"]["caBundle"] = json!("");
    replace(&api, &injector);
    let mut validator = api
        .server
        .get("ValidatingWebhookConfiguration", None, VALIDATOR)
        .unwrap();
    validator["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    replace(&api, &validator);
    until("the blanked caBundles restored", LIMIT, || {
        all_hold(&api, "MutatingWebhookConfiguration", INJECTOR, &bundle)
            && all_hold(&api, "ValidatingWebhookConfiguration", VALIDATOR, &bundle)
    });

    // A new namespace gets its ConfigMap; one deleted by hand, or edited, comes back.
    api.apply(&namespace("payments"));
    assert!(
        api.server
            .delete("ConfigMap", Some("bookinfo"), ROOT_CONFIG_MAP)
    );
    let mut shop = api
        .server
        .get("ConfigMap", Some("shop"), ROOT_CONFIG_MAP)
        .unwrap();
    shop["data"]["root-cert.pem"] = json!("edited");
    replace(&api, &shop);
    until(
        "the new namespace's, the deleted and the edited ConfigMap",
        LIMIT,
        || {
            ["payments", "bookinfo", "shop"]
                .iter()
                .all(|ns| published(&api, ns, &pem).is_some())
        },
    );
    assert_eq!(
        published(&api, "shop", &pem).unwrap()["data"]["notes"],
        "kept"
    );
    drop(daemon);
}

#[test]
fn a_configuration_created_later_is_patched_and_an_empty_flag_leaves_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    api.apply(&namespace("isthmus-system"));
    let webhooks =
        std::fs::read_to_string(workspace().join("manifests/base/webhooks.yaml")).unwrap();
    let (mutating, validating) = webhooks.split_once("\n---\n").unwrap();
    assert!(mutating.contains("kind: MutatingWebhookConfiguration"));
    assert!(validating.contains("kind: ValidatingWebhookConfiguration"));
    api.apply(mutating);
    let daemon = kubernetes_isthmusd(dir.path(), &api, &["--injector-webhook-config", ""]);
    let pem = std::fs::read_to_string(daemon.root_file()).unwrap();
    let bundle = base64(pem.as_bytes());
    until(
        "the root ConfigMap (the lease holder is at work)",
        LIMIT,
        || published(&api, "isthmus-system", &pem).is_some(),
    );
    // The missing validator is waited for, and reported once by name.
    until("the missing configuration reported", LIMIT, || {
        daemon.logs().contains(VALIDATOR)
    });
    api.apply(validating);
    until("the validator patched once created", LIMIT, || {
        all_hold(&api, "ValidatingWebhookConfiguration", VALIDATOR, &bundle)
    });
    let reports = daemon
        .logs()
        .lines()
        .filter(|l| l.contains(VALIDATOR) && l.contains("does not exist"))
        .count();
    assert_eq!(reports, 1, "{}", daemon.logs());
    // The injector, with an empty --injector-webhook-config, is never touched.
    assert_eq!(
        bundles(&api, "MutatingWebhookConfiguration", INJECTOR),
        [None, None, None]
    );
    assert_eq!(count(&api, "GET", "mutatingwebhookconfigurations"), 0);
}

#[test]
fn a_follower_writes_nothing_until_it_takes_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start();
    api.apply(&namespace("isthmus-system"));
    api.apply(&namespace("bookinfo"));
    api.apply(&std::fs::read_to_string(workspace().join("manifests/base/webhooks.yaml")).unwrap());
    // Another replica holds the lease, and stops renewing it: ours takes it over once it has
    // gone unrenewed for its duration.
    api.apply(
        "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: isthmusd-status, namespace: isthmus-system}
spec: {holderIdentity: isthmusd-other, leaseDurationSeconds: 3, renewTime: '2026-01-01T00:00:00.000000Z'}
",
    );
    let daemon = kubernetes_isthmusd(dir.path(), &api, &["--pod-name", "isthmusd-0"]);
    let pem = std::fs::read_to_string(daemon.root_file()).unwrap();
    let bundle = base64(pem.as_bytes());
    std::thread::sleep(Duration::from_millis(1500));
    // A follower does not even read them.
    assert_eq!(count(&api, "GET", "webhookconfigurations"), 0);
    assert_eq!(count(&api, "GET", "isthmus-ca-root-cert"), 0);
    assert!(
        api.server
            .get("ConfigMap", Some("bookinfo"), ROOT_CONFIG_MAP)
            .is_none()
    );
    assert_eq!(
        bundles(&api, "MutatingWebhookConfiguration", INJECTOR),
        [None, None, None]
    );
    let took = until("the new lease holder's writes", LIMIT, || {
        all_hold(&api, "MutatingWebhookConfiguration", INJECTOR, &bundle)
            && all_hold(&api, "ValidatingWebhookConfiguration", VALIDATOR, &bundle)
            && published(&api, "bookinfo", &pem).is_some()
    });
    let lease = api
        .server
        .get("Lease", Some("isthmus-system"), "isthmusd-status")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "isthmusd-0", "{lease}");
    eprintln!("written {took:?} after the follower's first 1.5 s");
}
