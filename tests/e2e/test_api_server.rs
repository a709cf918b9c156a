//! The test double of the Kubernetes API server (`support/test_api_server.rs`), over raw
//! HTTP/1.1: lists and watches with resourceVersions, compaction, closed watches, conflicts,
//! the status subresource, unknown paths and TokenReview.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use isthmus_e2e::test_api_server::TestApiServer;
use serde_json::{Value, json};

/// A hang guard only: every step answers in milliseconds.
const GUARD: Duration = Duration::from_secs(5);

const SERVICES: &str = "/api/v1/namespaces/shop/services";

const YAML: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
  labels: {app: cart, tier: web}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
  labels: {app: db}
spec:
  ports: [{port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external
  namespace: shop
spec:
  hosts: [api.example.com]
";

async fn server() -> TestApiServer {
    let server = TestApiServer::start().await.unwrap();
    server.apply_yaml(YAML).unwrap();
    server
}

/// One request on a fresh connection: the status and the whole body.
async fn request(
    server: &TestApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let response = send(server, method, path, content_type, body).await;
    let status = response.status().as_u16();
    let bytes = tokio::time::timeout(GUARD, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

async fn send(
    server: &TestApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server.addr().to_string())
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .unwrap()
        .unwrap()
}

async fn get(server: &TestApiServer, path: &str) -> (u16, Value) {
    request(server, "GET", path, "application/json", "").await
}

/// A watch stream, read one newline-delimited JSON event at a time.
struct WatchStream {
    body: Incoming,
    buffer: BytesMut,
}

impl WatchStream {
    async fn open(server: &TestApiServer, query: &str) -> Self {
        let path = format!("{SERVICES}?watch=true&{query}");
        let response = send(server, "GET", &path, "application/json", "").await;
        assert_eq!(response.status(), 200);
        Self {
            body: response.into_body(),
            buffer: BytesMut::new(),
        }
    }

    /// The next event; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                return Some(serde_json::from_slice(&line[..end]).unwrap());
            }
            let frame = tokio::time::timeout(GUARD, self.body.frame())
                .await
                .expect("watch event within the guard")?
                .unwrap();
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk().to_vec();
                    data.advance(chunk.len());
                    self.buffer.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// The next event that is not a bookmark, as (type, name, resourceVersion).
    async fn next_change(&mut self) -> Option<(String, String, String)> {
        loop {
            let event = self.next().await?;
            if event["type"] != "BOOKMARK" {
                return Some(summary(&event));
            }
        }
    }
}

fn summary(event: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let meta = &event["object"]["metadata"];
    (
        text(&event["type"]),
        text(&meta["name"]),
        text(&meta["resourceVersion"]),
    )
}

fn rv_of(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn merge_patch(server: &TestApiServer, path: &str, body: Value) -> (u16, Value) {
    let body = body.to_string();
    request(server, "PATCH", path, "application/merge-patch+json", &body).await
}

#[tokio::test]
async fn yaml_is_listed_with_resource_versions_and_selectors() {
    let server = server().await;
    let (status, list) = get(&server, SERVICES).await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    assert!(list["metadata"].get("continue").is_none());
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cart", "db"]);
    let cart = &list["items"][0];
    assert_eq!(cart["metadata"]["generation"], 1);
    assert!(cart["metadata"]["uid"].is_string());
    assert!(cart["metadata"]["creationTimestamp"].is_string());

    let (_, web) = get(
        &server,
        &format!("{SERVICES}?labelSelector=app%3Dcart,tier%3Dweb"),
    )
    .await;
    assert_eq!(web["items"].as_array().unwrap().len(), 1);
    let (_, db) = get(
        &server,
        &format!("{SERVICES}?fieldSelector=metadata.name%3Ddb"),
    )
    .await;
    assert_eq!(db["items"][0]["metadata"]["name"], "db");

    let (status, entries) = get(&server, "/apis/networking.istio.io/v1/serviceentries").await;
    assert_eq!(status, 200);
    assert_eq!(entries["kind"], "ServiceEntryList");
    assert_eq!(entries["items"][0]["metadata"]["namespace"], "shop");
    let (status, namespace) = get(&server, "/api/v1/namespaces/shop").await;
    assert_eq!(
        (status, namespace["kind"].as_str()),
        (200, Some("Namespace"))
    );
}

#[tokio::test]
async fn a_watch_from_a_list_sees_later_changes_in_order() {
    let server = server().await;
    let (_, list) = get(&server, SERVICES).await;
    let from = list["metadata"]["resourceVersion"].as_str().unwrap();
    let mut watch = WatchStream::open(&server, &format!("resourceVersion={from}")).await;

    let cart = server.get("Service", Some("shop"), "cart").unwrap();
    let (status, patched) = merge_patch(
        &server,
        &format!("{SERVICES}/cart"),
        json!({"spec": {"ports": [{"port": 8080}]}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(patched["metadata"]["generation"], 2);
    assert!(rv_of(&patched).parse::<u64>().unwrap() > rv_of(&cart).parse::<u64>().unwrap());
    let (status, _) = request(
        &server,
        "DELETE",
        &format!("{SERVICES}/db"),
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 200);

    let modified = watch.next_change().await.unwrap();
    assert_eq!(
        (modified.0.as_str(), modified.1.as_str()),
        ("MODIFIED", "cart")
    );
    assert_eq!(modified.2, rv_of(&patched));
    let deleted = watch.next_change().await.unwrap();
    assert_eq!((deleted.0.as_str(), deleted.1.as_str()), ("DELETED", "db"));
    assert!(deleted.2.parse::<u64>().unwrap() > modified.2.parse::<u64>().unwrap());

    let (status, _) = request(
        &server,
        "DELETE",
        &format!("{SERVICES}/db"),
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_watch_without_resource_version_starts_with_every_object() {
    let server = server().await;
    let mut watch = WatchStream::open(&server, "timeoutSeconds=1").await;
    assert_eq!(watch.next_change().await.unwrap().1, "cart");
    assert_eq!(watch.next_change().await.unwrap().1, "db");
    // timeoutSeconds ends it.
    assert_eq!(watch.next_change().await, None);
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_gets_410() {
    let server = server().await;
    let old = server.resource_version();
    server
        .apply_yaml(&YAML.replace("tier: web", "tier: api"))
        .unwrap();
    server.compact();
    let mut watch = WatchStream::open(&server, &format!("resourceVersion={old}")).await;
    let event = watch.next().await.unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["kind"], "Status");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    assert_eq!(watch.next().await, None);

    // From the compaction point on, nothing was lost: the watch is served.
    let now = server.resource_version();
    let mut watch =
        WatchStream::open(&server, &format!("resourceVersion={now}&timeoutSeconds=1")).await;
    assert_eq!(watch.next_change().await, None);
}

#[tokio::test]
async fn a_closed_watch_resumes_from_its_last_resource_version_without_loss() {
    let server = server().await;
    let from = server.resource_version();
    let mut watch = WatchStream::open(
        &server,
        &format!("resourceVersion={from}&allowWatchBookmarks=true"),
    )
    .await;
    server
        .apply_yaml(&YAML.replace("port: 80}", "port: 81}"))
        .unwrap();
    let (kind, name, last) = watch.next_change().await.unwrap();
    assert_eq!((kind.as_str(), name.as_str()), ("MODIFIED", "cart"));

    server.close_watches();
    assert_eq!(watch.next_change().await, None);
    // Made while no watch was open.
    assert!(server.delete("services", Some("shop"), "db"));
    server
        .apply_yaml(&YAML.replace("port: 80}", "port: 82}"))
        .unwrap();

    let mut watch = WatchStream::open(&server, &format!("resourceVersion={last}")).await;
    let deleted = watch.next_change().await.unwrap();
    assert_eq!((deleted.0.as_str(), deleted.1.as_str()), ("DELETED", "db"));
    let modified = watch.next_change().await.unwrap();
    assert_eq!(
        (modified.0.as_str(), modified.1.as_str()),
        ("MODIFIED", "cart")
    );
    let added = watch.next_change().await.unwrap();
    assert_eq!((added.0.as_str(), added.1.as_str()), ("ADDED", "db"));
}

#[tokio::test]
async fn put_with_a_stale_resource_version_conflicts() {
    let server = server().await;
    let path = format!("{SERVICES}/cart");
    let (_, mut cart) = get(&server, &path).await;
    cart["spec"]["ports"][0]["port"] = json!(9090);
    let (status, updated) =
        request(&server, "PUT", &path, "application/json", &cart.to_string()).await;
    assert_eq!(status, 200);
    assert_ne!(rv_of(&updated), rv_of(&cart));
    // `cart` still carries the old resourceVersion.
    let (status, error) =
        request(&server, "PUT", &path, "application/json", &cart.to_string()).await;
    assert_eq!(status, 409);
    assert_eq!(error["kind"], "Status");
    assert_eq!(error["reason"], "Conflict");
    // Creating it again is AlreadyExists.
    let (status, error) = request(
        &server,
        "POST",
        SERVICES,
        "application/json",
        &cart.to_string(),
    )
    .await;
    assert_eq!(
        (status, error["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    // A patch carrying a stale resourceVersion conflicts too.
    let stale =
        json!({"metadata": {"resourceVersion": rv_of(&cart)}, "spec": {"type": "ClusterIP"}});
    let (status, _) = merge_patch(&server, &path, stale).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let server = server().await;
    let path = "/apis/networking.istio.io/v1/namespaces/shop/serviceentries/external";
    let patch = json!({"spec": {"hosts": ["other.example.com"]}, "status": {"conditions": [{"type": "Ready"}]}});
    let (status, object) = merge_patch(&server, &format!("{path}/status"), patch.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(object["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(object["spec"]["hosts"][0], "api.example.com");
    assert_eq!(object["metadata"]["generation"], 1);

    let (status, object) = merge_patch(
        &server,
        path,
        json!({"spec": {"hosts": ["new.example.com"]}, "status": null}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(object["spec"]["hosts"][0], "new.example.com");
    assert_eq!(object["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(object["metadata"]["generation"], 2);

    // PUT of the main resource keeps the stored status.
    let mut body = object.clone();
    body["status"] = json!({"conditions": []});
    let (status, put) = request(&server, "PUT", path, "application/json", &body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(put["status"], object["status"]);

    // A write that changes nothing bumps nothing.
    let (_, same) = merge_patch(
        &server,
        path,
        json!({"spec": {"hosts": ["new.example.com"]}}),
    )
    .await;
    assert_eq!(rv_of(&same), rv_of(&put));

    // Server-side apply needs a field manager.
    let apply = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: external}\nspec: {location: MESH_EXTERNAL}\n";
    let (status, _) = request(
        &server,
        "PATCH",
        path,
        "application/apply-patch+yaml",
        apply,
    )
    .await;
    assert_eq!(status, 400);
    let (status, applied) = request(
        &server,
        "PATCH",
        &format!("{path}?fieldManager=isthmusd"),
        "application/apply-patch+yaml",
        apply,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(applied["spec"]["location"], "MESH_EXTERNAL");
    assert_eq!(applied["status"], object["status"]);
    let (status, _) = request(&server, "PATCH", path, "application/json-patch+json", "[]").await;
    assert_eq!(status, 415);
    // ConfigMaps have no status subresource.
    let (status, _) = get(&server, "/api/v1/namespaces/shop/configmaps/x/status").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    let server = server().await;
    let collection = "/api/v1/namespaces/shop/configmaps";
    let config = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mesh", "finalizers": ["isthmus.io/cleanup"]},
        "data": {"a": "b"},
    });
    let (status, created) = request(
        &server,
        "POST",
        collection,
        "application/json",
        &config.to_string(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["metadata"]["namespace"], "shop");
    let path = format!("{collection}/mesh");
    let stale = json!({"preconditions": {"resourceVersion": "1"}}).to_string();
    let (status, _) = request(&server, "DELETE", &path, "application/json", &stale).await;
    assert_eq!(status, 409);

    let (status, deleting) = request(&server, "DELETE", &path, "application/json", "").await;
    assert_eq!(status, 200);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(get(&server, &path).await.0, 200);
    let (status, _) = merge_patch(&server, &path, json!({"metadata": {"finalizers": null}})).await;
    assert_eq!(status, 200);
    assert_eq!(get(&server, &path).await.0, 404);
    let (status, _) = request(
        &server,
        "POST",
        &format!("{collection}?dryRun=All"),
        "application/json",
        &config.to_string(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn webhook_configurations_are_cluster_scoped_and_replaced_by_resource_version() {
    let server = server().await;
    server
        .apply_yaml(
            "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: injector}
webhooks:
- name: a.example.io
  clientConfig: {service: {name: isthmusd, namespace: isthmus-system, path: /inject}}
",
        )
        .unwrap();
    let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/injector";
    let (status, mut config) = get(&server, path).await;
    assert_eq!(status, 200, "{config}");
    assert!(config["metadata"].get("namespace").is_none(), "{config}");
    // Listed by name across the cluster; no namespaced path, no status subresource.
    let (status, list) = get(
        &server,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations?fieldSelector=metadata.name%3Dinjector",
    )
    .await;
    assert_eq!((status, list["items"].as_array().unwrap().len()), (200, 1));
    for missing in [
        "/apis/admissionregistration.k8s.io/v1/namespaces/x/mutatingwebhookconfigurations/injector",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/injector/status",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/injector",
    ] {
        assert_eq!(get(&server, missing).await.0, 404, "{missing}");
    }
    // A list item is replaced with the resourceVersion read; a stale one conflicts.
    config["webhooks"][0]["clientConfig"]["caBundle"] = json!("Y2E=");
    let (status, updated) = request(
        &server,
        "PUT",
        path,
        "application/json",
        &config.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["webhooks"][0]["clientConfig"]["caBundle"], "Y2E=");
    assert_eq!(updated["metadata"]["generation"], 2);
    let (status, _) = request(
        &server,
        "PUT",
        path,
        "application/json",
        &config.to_string(),
    )
    .await;
    assert_eq!(status, 409);
    // JSON patch is refused (a client must replace).
    let (status, _) = request(
        &server,
        "PATCH",
        path,
        "application/json-patch+json",
        r#"[{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}]"#,
    )
    .await;
    assert_eq!(status, 415);
}

#[tokio::test]
async fn with_namespace_lifecycle_a_create_needs_a_live_namespace() {
    let server = server().await;
    server
        .apply_yaml(
            "apiVersion: v1
kind: Namespace
metadata: {name: leaving, finalizers: [example.io/hold]}
",
        )
        .unwrap();
    assert!(server.delete("Namespace", None, "leaving"));
    let config_map = |ns: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "root", "namespace": ns},
               "data": {"k": "v"}})
        .to_string()
    };
    let create = |ns: &'static str| {
        let body = config_map(ns);
        let server = &server;
        async move {
            let path = format!("/api/v1/namespaces/{ns}/configmaps");
            request(server, "POST", &path, "application/json", &body).await
        }
    };
    // Off by default: anywhere.
    assert_eq!(create("nowhere").await.0, 201);
    server.enforce_namespace_lifecycle();
    let (status, error) = create("elsewhere").await;
    assert_eq!((status, error["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(error["message"], "namespaces \"elsewhere\" not found");
    let (status, error) = create("leaving").await;
    assert_eq!((status, error["reason"].as_str()), (403, Some("Forbidden")));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("because it is being terminated"),
        "{error}"
    );
    let (status, created) = create("shop").await;
    assert_eq!(status, 201, "{created}");
    // Then replaced like any object: by resourceVersion, other keys kept as sent.
    let path = "/api/v1/namespaces/shop/configmaps/root";
    let mut map = created;
    map["data"]["root-cert.pem"] = json!("PEM");
    let (status, updated) =
        request(&server, "PUT", path, "application/json", &map.to_string()).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"], json!({"k": "v", "root-cert.pem": "PEM"}));
    let (status, _) = request(&server, "PUT", path, "application/json", &map.to_string()).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn unknown_paths_are_404_with_a_status() {
    let server = server().await;
    for path in [
        "/api/v1/namespaces/shop/widgets",
        "/apis/networking.istio.io/v2/serviceentries",
        "/healthz",
        "/api/v1/namespaces/shop/namespaces/x",
        "/api/v1/namespaces/shop/services/cart/scale",
        "/api/v1/namespaces/shop/services/nope",
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["kind"], "Status", "{path}");
        assert_eq!(body["apiVersion"], "v1", "{path}");
        assert_eq!(body["status"], "Failure", "{path}");
        assert_eq!(body["reason"], "NotFound", "{path}");
        assert_eq!(body["code"], 404, "{path}");
    }
    let logged = server.requests();
    assert_eq!(logged.len(), 6);
    assert_eq!(logged[2], ("GET".to_owned(), "/healthz".to_owned()));
}

#[tokio::test]
async fn token_review_authenticates_registered_tokens_for_their_audiences() {
    let server = server().await;
    server.add_token(
        "good",
        "system:serviceaccount:shop:cart",
        &["system:serviceaccounts"],
    );
    server.add_token_with_audiences("bound", "system:serviceaccount:shop:db", &[], &["isthmus"]);
    let review = |token: &str, audiences: &[&str]| {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        })
        .to_string()
    };
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let (status, body) = request(
        &server,
        "POST",
        path,
        "application/json",
        &review("good", &[]),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["status"]["authenticated"], true);
    assert_eq!(
        body["status"]["user"]["username"],
        "system:serviceaccount:shop:cart"
    );
    assert_eq!(
        body["status"]["user"]["groups"][0],
        "system:serviceaccounts"
    );

    let (_, body) = request(
        &server,
        "POST",
        path,
        "application/json",
        &review("bound", &["isthmus", "x"]),
    )
    .await;
    assert_eq!(body["status"]["authenticated"], true);
    assert_eq!(body["status"]["audiences"], json!(["isthmus"]));

    for (token, audiences) in [
        ("bound", &[][..]),
        ("good", &["isthmus"][..]),
        ("forged", &[][..]),
    ] {
        let (status, body) = request(
            &server,
            "POST",
            path,
            "application/json",
            &review(token, audiences),
        )
        .await;
        assert_eq!(status, 201);
        assert_eq!(body["status"]["authenticated"], false, "{token}");
        assert!(body["status"].get("user").is_none());
    }
}
