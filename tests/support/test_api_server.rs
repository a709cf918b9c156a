//! A test double of the Kubernetes API server: the HTTP/JSON the real kube-rs client (and its
//! runtime reflectors and watchers) speaks, served in memory on `127.0.0.1:0` over plain
//! HTTP/1.1, so that `isthmusd`'s Kubernetes sources can be tested without a cluster.
//!
//! What it implements:
//! - a fixed registry of resources ([`RESOURCES`]): core `v1` services, pods, configmaps,
//!   namespaces (cluster-scoped); `discovery.k8s.io/v1` endpointslices;
//!   `coordination.k8s.io/v1` leases; `admissionregistration.k8s.io/v1`
//!   mutatingwebhookconfigurations and validatingwebhookconfigurations (cluster-scoped); the
//!   Istio networking and security kinds; the Maistra federation kinds. Objects are kept as
//!   `serde_json::Value`;
//! - one global `resourceVersion` counter, bumped by every write; `uid`, `creationTimestamp`
//!   and `generation` (bumped when anything outside `metadata` and `status` changes) set by
//!   the server; a write that changes nothing bumps nothing and emits no event, as the real one;
//! - LIST with equality label selectors and `metadata.name` / `metadata.namespace` field
//!   selectors (no pagination: `limit` and `continue` are ignored, no `continue` is returned);
//! - WATCH from a `resourceVersion` (the event log after it, then live events), from `0` or
//!   none (ADDED for every current object, then live), `timeoutSeconds`, bookmarks every second
//!   with `allowWatchBookmarks=true`, and the in-stream `410 Expired` error event for a
//!   `resourceVersion` older than the last [`TestApiServer::compact`];
//! - CREATE, UPDATE (PUT), PATCH (`merge-patch+json`, and `apply-patch+yaml` treated as a merge
//!   of the given fields), DELETE, and the `status` subresource of the resources that have one;
//! - `TokenReview` for the tokens registered with [`TestApiServer::add_token`].
//!
//! Where it is strict (answering with the `Status` body and code the real one uses):
//! unknown paths and resources, and a namespaced path for a cluster-scoped resource, are `404`;
//! `/status` of a resource without that subresource is `404`; CREATE of an existing name is
//! `409 AlreadyExists`; PUT without the stored `metadata.resourceVersion` is `409 Conflict`,
//! as is a PATCH carrying a stale one; PUT and PATCH of the main resource never change
//! `.status`, and of `/status` change only `.status`; apply without `fieldManager` is `400`;
//! JSON patch and strategic merge patch are `415`; a body whose `apiVersion`, `kind`, name or
//! namespace disagrees with the path is `400`; set-based label selectors and other field
//! selectors are `400`.
//!
//! DELETE of an object with `metadata.finalizers` sets `deletionTimestamp` (MODIFIED); the
//! update that empties the finalizers removes it (DELETED). DELETE preconditions
//! (`resourceVersion`, `uid`) are checked (`409`); `dryRun` is refused (`400`) rather than
//! silently written.
//!
//! With [`TestApiServer::enforce_namespace_lifecycle`], a CREATE (POST) of a namespaced object
//! is checked as the `NamespaceLifecycle` admission plugin does: `404 NotFound` when its
//! namespace does not exist, `403 Forbidden` (cause `NamespaceTerminating`) when it is being
//! deleted (`deletionTimestamp` set, or phase `Terminating`). Off by default: older tests write
//! into namespaces they never create; `apply_yaml` is never checked.
//!
//! Not implemented: namespace existence checks (but see above), `managedFields` and field ownership conflicts of server-side apply,
//! `sendInitialEvents` streaming lists, discovery (`/api`, `/apis`, `/version`), pagination.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::{Mutex, MutexGuard};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};

/// One kind of object the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether it has the `status` subresource.
    pub status: bool,
}

impl ResourceType {
    /// `apiVersion` as objects spell it: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn res(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        kind,
        namespaced,
        status,
    }
}

/// Every resource the server serves.
pub const RESOURCES: &[ResourceType] = &[
    res("", "services", "Service", true, true),
    res("", "pods", "Pod", true, true),
    res("", "namespaces", "Namespace", false, true),
    res("", "configmaps", "ConfigMap", true, false),
    res("", "secrets", "Secret", true, false),
    res(
        "discovery.k8s.io",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    res("coordination.k8s.io", "leases", "Lease", true, false),
    res(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        false,
    ),
    res(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        false,
    ),
    res(
        "networking.istio.io",
        "serviceentries",
        "ServiceEntry",
        true,
        true,
    ),
    res(
        "networking.istio.io",
        "workloadentries",
        "WorkloadEntry",
        true,
        true,
    ),
    res(
        "networking.istio.io",
        "virtualservices",
        "VirtualService",
        true,
        true,
    ),
    res(
        "networking.istio.io",
        "destinationrules",
        "DestinationRule",
        true,
        true,
    ),
    res("networking.istio.io", "gateways", "Gateway", true, true),
    res(
        "security.istio.io",
        "peerauthentications",
        "PeerAuthentication",
        true,
        true,
    ),
    res(
        "security.istio.io",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        true,
    ),
    res(
        "security.istio.io",
        "requestauthentications",
        "RequestAuthentication",
        true,
        true,
    ),
    res(
        "federation.maistra.io",
        "servicemeshpeers",
        "ServiceMeshPeer",
        true,
        true,
    ),
    res(
        "federation.maistra.io",
        "exportedservicesets",
        "ExportedServiceSet",
        true,
        true,
    ),
    res(
        "federation.maistra.io",
        "importedservicesets",
        "ImportedServiceSet",
        true,
        true,
    ),
];

/// The audience of a token registered without one, as the API server's own.
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The resource registered under a plural or a kind (case-insensitive for kinds).
pub fn resource(kind_or_plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.plural == kind_or_plural || r.kind.eq_ignore_ascii_case(kind_or_plural))
}

fn resource_at(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Where an object lives: its resource, namespace (empty if cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    plural: &'static str,
    group: &'static str,
    namespace: String,
    name: String,
}

impl Key {
    fn new(res: &'static ResourceType, namespace: &str, name: &str) -> Self {
        Self {
            plural: res.plural,
            group: res.group,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    res: &'static ResourceType,
    object: Value,
}

#[derive(Debug, Clone)]
struct Token {
    username: String,
    groups: Vec<String>,
    audiences: Vec<String>,
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    /// Events after `compacted`, oldest first.
    log: Vec<Event>,
    compacted: u64,
    tokens: HashMap<String, Token>,
    requests: Vec<(String, String)>,
    /// [`TestApiServer::enforce_namespace_lifecycle`].
    namespace_lifecycle: bool,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// Every event, sent under the store lock (so in resourceVersion order).
    events: broadcast::Sender<Event>,
    /// Bumped by [`TestApiServer::close_watches`].
    close: watch::Sender<u64>,
    /// While `true` ([`TestApiServer::hold_watches`]), new watch requests wait before they
    /// are answered, as behind a slow load balancer.
    hold: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock()
    }
}

/// A running test API server; stops when dropped.
#[derive(Debug)]
pub struct TestApiServer {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.close.send_modify(|n| *n += 1);
    }
}

/// Why a request failed: the `Status` the server answers.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

fn fail(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> ApiError {
    fail(StatusCode::NOT_FOUND, "NotFound", message)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    fail(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn conflict(message: impl Into<String>) -> ApiError {
    fail(StatusCode::CONFLICT, "Conflict", message)
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = status_body(self.code.as_u16(), self.reason, &self.message);
        json_response(self.code, &body)
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

type ApiResult = Result<Response, ApiError>;

impl TestApiServer {
    /// Binds `127.0.0.1:0` and serves on a task of the current runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(4096);
        let (close, _) = watch::channel(0);
        let (hold, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            close,
            hold,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the cluster URL for a kube-rs `Config`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current (latest assigned) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Drops the event log up to now: a watch from an older resourceVersion gets `410`.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.rv;
        store.log.clear();
    }

    /// Makes new watch requests wait (they are answered, from the state of that moment, once
    /// [`TestApiServer::release_watches`] is called), so that a test can change objects while
    /// no watch is open.
    pub fn hold_watches(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Answers the watch requests held by [`TestApiServer::hold_watches`].
    pub fn release_watches(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Ends every open watch stream now (as an API server restart or a load balancer would).
    pub fn close_watches(&self) {
        self.shared.close.send_modify(|n| *n += 1);
    }

    /// Creates or replaces every document of `yaml` (multi-document), as `kubectl apply`;
    /// `.status` is kept for an existing object and dropped for a new one.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            self.apply_one(doc)?;
        }
        Ok(())
    }

    fn apply_one(&self, mut doc: Value) -> anyhow::Result<()> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let res = resource(&kind).ok_or_else(|| anyhow::anyhow!("unknown kind {kind:?}"))?;
        check_kind(res, &doc).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = if res.namespaced {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            ns.to_owned()
        } else {
            String::new()
        };
        let mut store = self.shared.lock();
        let key = Key::new(res, &namespace, &name);
        let result = match store.objects.get(&key) {
            Some(stored) => {
                doc["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
                replace(&mut store, &self.shared, res, &key, doc, Part::Main)
            }
            None => create(&mut store, &self.shared, res, &namespace, doc),
        };
        result
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// Writes `status` through the object's `status` subresource, as the component that owns
    /// it would (the kubelet for a Pod's `podIP`); whether the object was there.
    pub fn set_status(
        &self,
        kind_or_plural: &str,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> anyhow::Result<()> {
        let res = resource(kind_or_plural)
            .ok_or_else(|| anyhow::anyhow!("unknown kind {kind_or_plural:?}"))?;
        let mut store = self.shared.lock();
        let key = Key::new(res, namespace.unwrap_or_default(), name);
        let mut doc = store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {kind_or_plural} {name}"))?;
        doc["status"] = status;
        replace(&mut store, &self.shared, res, &key, doc, Part::Status)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// Deletes an object as `kubectl delete` (DELETED, or with finalizers a MODIFIED that sets
    /// `deletionTimestamp`); whether it was there.
    pub fn delete(&self, kind_or_plural: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(res) = resource(kind_or_plural) else {
            return false;
        };
        let mut store = self.shared.lock();
        let key = Key::new(res, namespace.unwrap_or_default(), name);
        remove(&mut store, &self.shared, res, &key).is_ok()
    }

    /// The stored object, if any.
    pub fn get(&self, kind_or_plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = resource(kind_or_plural)?;
        let key = Key::new(res, namespace.unwrap_or_default(), name);
        self.shared.lock().objects.get(&key).cloned()
    }

    /// From now on, a CREATE into a namespace that does not exist is `404`, into one being
    /// deleted `403`, as the real server's `NamespaceLifecycle` admission answers.
    pub fn enforce_namespace_lifecycle(&self) {
        self.shared.lock().namespace_lifecycle = true;
    }

    /// Every request so far: method and path with query.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// Registers a service-account token for TokenReview, bound to [`DEFAULT_AUDIENCE`].
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str]) {
        self.add_token_with_audiences(token, username, groups, &[DEFAULT_AUDIENCE]);
    }

    /// Registers a token bound to `audiences`: a review authenticates it only when its
    /// audiences (or, if it names none, [`DEFAULT_AUDIENCE`]) intersect them.
    pub fn add_token_with_audiences(
        &self,
        token: &str,
        username: &str,
        groups: &[&str],
        audiences: &[&str],
    ) {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        let entry = Token {
            username: username.to_owned(),
            groups: strings(groups),
            audiences: strings(audiences),
        };
        self.shared.lock().tokens.insert(token.to_owned(), entry);
    }
}

/// What a path names.
#[derive(Debug)]
enum Target {
    Collection {
        res: &'static ResourceType,
        /// `None`: across all namespaces (or a cluster-scoped resource).
        namespace: Option<String>,
    },
    Object {
        res: &'static ResourceType,
        namespace: String,
        name: String,
        part: Part,
    },
    TokenReview,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Main,
    Status,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            return Some(Target::TokenReview);
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", name, "status"] => (None, "namespaces", Some(*name), Some("status")),
        ["namespaces", ns, plural, tail @ ..] => (
            Some(*ns),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return None,
    };
    if rest.len() > if namespace.is_some() { 5 } else { 3 } {
        return None;
    }
    let res = resource_at(group, version, plural)?;
    if namespace.is_some() && !res.namespaced {
        return None;
    }
    let part = match sub {
        None => Part::Main,
        Some("status") if res.status => Part::Status,
        Some(_) => return None,
    };
    match name {
        None => Some(Target::Collection {
            res,
            namespace: namespace.map(str::to_owned),
        }),
        Some(name) if res.namespaced == namespace.is_some() => Some(Target::Object {
            res,
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.to_owned(),
            part,
        }),
        Some(_) => None,
    }
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    let query = uri.query().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let logged = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    shared.lock().requests.push((method.to_string(), logged));
    let Some(target) = parse_path(uri.path()) else {
        return not_found(format!(
            "the server could not find the requested resource ({})",
            uri.path()
        ))
        .into_response();
    };
    let params = query_params(&uri);
    if params.contains_key("dryRun") {
        return bad_request("dryRun is not supported by the test API server").into_response();
    }
    let result = match (target, &method) {
        (Target::TokenReview, &Method::POST) => token_review(&shared, &body),
        (Target::Collection { res, namespace }, &Method::GET) => {
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
                let mut hold = shared.hold.subscribe();
                let _ = hold.wait_for(|held| !held).await;
                start_watch(&shared, res, namespace, &params)
            } else {
                list(&shared, res, namespace.as_deref(), &params)
            }
        }
        (Target::Collection { res, namespace }, &Method::POST) => {
            post(&shared, res, namespace.as_deref(), &body)
        }
        (
            Target::Object {
                res,
                namespace,
                name,
                part,
            },
            method,
        ) => {
            let key = Key::new(res, &namespace, &name);
            object_request(&shared, res, &key, part, method, &headers, &params, &body)
        }
        _ => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::too_many_arguments)]
fn object_request(
    shared: &Shared,
    res: &'static ResourceType,
    key: &Key,
    part: Part,
    method: &Method,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: &[u8],
) -> ApiResult {
    let mut store = shared.lock();
    let object = match *method {
        Method::GET => store
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| missing(res, key))?,
        Method::PUT => {
            let doc = parse_json(body)?;
            check_identity(res, key, &doc)?;
            replace(&mut store, shared, res, key, doc, part)?
        }
        Method::PATCH => patch(&mut store, shared, res, key, part, headers, params, body)?,
        Method::DELETE if part == Part::Main => {
            check_preconditions(&store, res, key, body)?;
            remove(&mut store, shared, res, key)?
        }
        _ => {
            return Err(fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
            ));
        }
    };
    Ok(json_response(StatusCode::OK, &object))
}

/// DeleteOptions' `preconditions`: the stored `resourceVersion` and `uid`, where given.
fn check_preconditions(
    store: &Store,
    res: &ResourceType,
    key: &Key,
    body: &[u8],
) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let options = parse_json(body)?;
    let Some(stored) = store.objects.get(key) else {
        return Err(missing(res, key));
    };
    for field in ["resourceVersion", "uid"] {
        let want = options["preconditions"][field].as_str();
        if want.is_some_and(|w| Some(w) != stored["metadata"][field].as_str()) {
            return Err(conflict(format!(
                "Precondition failed: {field} in precondition: {}, {field} in object meta: {}",
                want.unwrap_or_default(),
                stored["metadata"][field].as_str().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn missing(res: &ResourceType, key: &Key) -> ApiError {
    let what = if res.group.is_empty() {
        res.plural.to_owned()
    } else {
        format!("{}.{}", res.plural, res.group)
    };
    not_found(format!("{what} \"{}\" not found", key.name))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the body of the request was not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad_request("the body of the request is not a JSON object"));
    }
    Ok(value)
}

/// The body's `apiVersion` and `kind` must be the path's resource's, its name and namespace
/// (where given) the path's.
fn check_identity(res: &ResourceType, key: &Key, doc: &Value) -> Result<(), ApiError> {
    check_kind(res, doc)?;
    let name = doc["metadata"]["name"].as_str();
    if name.is_some_and(|n| n != key.name) {
        return Err(bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            name.unwrap_or_default(),
            key.name
        )));
    }
    check_namespace(res, &key.namespace, doc)
}

fn check_kind(res: &ResourceType, doc: &Value) -> Result<(), ApiError> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    if kind != res.kind || api_version != res.api_version() {
        return Err(bad_request(format!(
            "the API version ({api_version}) and kind ({kind}) in the body do not match {}, {}",
            res.api_version(),
            res.kind
        )));
    }
    Ok(())
}

fn check_namespace(res: &ResourceType, namespace: &str, doc: &Value) -> Result<(), ApiError> {
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) if res.namespaced && ns != namespace => Err(bad_request(format!(
            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
        ))),
        _ => Ok(()),
    }
}

fn post(
    shared: &Shared,
    res: &'static ResourceType,
    namespace: Option<&str>,
    body: &[u8],
) -> ApiResult {
    if res.namespaced && namespace.is_none() {
        return Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "create needs a namespaced path",
        ));
    }
    let doc = parse_json(body)?;
    check_kind(res, &doc)?;
    let namespace = namespace.unwrap_or_default();
    check_namespace(res, namespace, &doc)?;
    let mut store = shared.lock();
    if store.namespace_lifecycle && res.namespaced {
        namespace_admits(&store, res, namespace, &doc)?;
    }
    let object = create(&mut store, shared, res, namespace, doc)?;
    Ok(json_response(StatusCode::CREATED, &object))
}

/// The `NamespaceLifecycle` admission plugin's check of a create in `namespace`.
fn namespace_admits(
    store: &Store,
    res: &ResourceType,
    namespace: &str,
    doc: &Value,
) -> Result<(), ApiError> {
    let Some(namespaces) = resource("namespaces") else {
        return Ok(());
    };
    let Some(ns) = store.objects.get(&Key::new(namespaces, "", namespace)) else {
        return Err(not_found(format!("namespaces \"{namespace}\" not found")));
    };
    let terminating = ns["metadata"].get("deletionTimestamp").is_some()
        || ns["status"]["phase"].as_str() == Some("Terminating");
    if terminating {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        return Err(fail(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                res.plural
            ),
        ));
    }
    Ok(())
}

fn create(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    namespace: &str,
    mut doc: Value,
) -> Result<Value, ApiError> {
    let name = object_name(store, &doc)?;
    let key = Key::new(res, namespace, &name);
    if store.objects.contains_key(&key) {
        let mut error = missing(res, &key);
        error.code = StatusCode::CONFLICT;
        error.reason = "AlreadyExists";
        error.message = error.message.replace("not found", "already exists");
        return Err(error);
    }
    if res.status
        && let Some(map) = doc.as_object_mut()
    {
        map.remove("status");
    }
    doc["apiVersion"] = json!(res.api_version());
    doc["kind"] = json!(res.kind);
    let meta = metadata(&mut doc)?;
    meta.insert("name".into(), json!(name));
    meta.remove("generateName");
    if res.namespaced {
        meta.insert("namespace".into(), json!(namespace));
    } else {
        meta.remove("namespace");
    }
    let serial = store.rv + 1;
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-4000-8000-{serial:012x}")),
    );
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    Ok(commit(store, shared, res, key, doc, "ADDED"))
}

/// The name of a new object: `metadata.name`, or `generateName` plus a suffix.
fn object_name(store: &Store, doc: &Value) -> Result<String, ApiError> {
    let meta = &doc["metadata"];
    if let Some(name) = meta["name"].as_str().filter(|n| !n.is_empty()) {
        return Ok(name.to_owned());
    }
    match meta["generateName"].as_str() {
        Some(prefix) => Ok(format!("{prefix}{:05x}", store.rv + 1)),
        None => Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value: name or generateName is required",
        )),
    }
}

fn metadata(doc: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = doc
        .as_object_mut()
        .ok_or_else(|| bad_request("the object is not a JSON object"))?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .ok_or_else(|| bad_request("metadata is not an object"))
}

/// Replaces the stored object by `doc` (PUT), whose resourceVersion must be the stored one.
fn replace(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    key: &Key,
    doc: Value,
    part: Part,
) -> Result<Value, ApiError> {
    let stored = store
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| missing(res, key))?;
    let given = doc["metadata"]["resourceVersion"].as_str();
    let current = stored["metadata"]["resourceVersion"].as_str();
    if given.is_none() || given != current {
        return Err(stale(res, key));
    }
    let next = merge_part(res, &stored, doc, part);
    update(store, shared, res, key, &stored, next)
}

fn stale(res: &ResourceType, key: &Key) -> ApiError {
    let what = if res.group.is_empty() {
        res.plural.to_owned()
    } else {
        format!("{}.{}", res.plural, res.group)
    };
    conflict(format!(
        "Operation cannot be fulfilled on {what} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
        key.name
    ))
}

/// The object a write of `part` produces: the main resource keeps the stored `.status`, the
/// `status` subresource takes only `.status` from `doc`.
fn merge_part(res: &ResourceType, stored: &Value, mut doc: Value, part: Part) -> Value {
    match part {
        Part::Main if res.status => {
            set_field(&mut doc, "status", stored.get("status").cloned());
            doc
        }
        Part::Main => doc,
        Part::Status => {
            let mut next = stored.clone();
            set_field(&mut next, "status", doc.get("status").cloned());
            next
        }
    }
}

fn set_field(doc: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = doc.as_object_mut() {
        match value {
            Some(value) => map.insert(field.to_owned(), value),
            None => map.remove(field),
        };
    }
}

/// Stores `next` in place of `stored`, keeping the server's metadata; a no-op write changes
/// nothing and emits nothing.
fn update(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    key: &Key,
    stored: &Value,
    mut next: Value,
) -> Result<Value, ApiError> {
    next["apiVersion"] = json!(res.api_version());
    next["kind"] = json!(res.kind);
    let old_meta = stored["metadata"].as_object().cloned().unwrap_or_default();
    let meta = metadata(&mut next)?;
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "generation",
        "resourceVersion",
    ] {
        match old_meta.get(field) {
            Some(value) => meta.insert(field.into(), value.clone()),
            None => meta.remove(field),
        };
    }
    if next == *stored {
        return Ok(next);
    }
    if next["metadata"].get("deletionTimestamp").is_some() && !has_finalizers(&next) {
        return Ok(commit(store, shared, res, key.clone(), next, "DELETED"));
    }
    if without_meta_and_status(&next) != without_meta_and_status(stored) {
        let generation = stored["metadata"]["generation"].as_u64().unwrap_or(0) + 1;
        next["metadata"]["generation"] = json!(generation);
    }
    Ok(commit(store, shared, res, key.clone(), next, "MODIFIED"))
}

fn without_meta_and_status(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(map) = doc.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    doc
}

/// Assigns the next resourceVersion, stores (or, for DELETED, removes) and emits the event.
fn commit(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    key: Key,
    mut object: Value,
    kind: &'static str,
) -> Value {
    store.rv += 1;
    let rv = store.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if kind == "DELETED" {
        store.objects.remove(&key);
    } else {
        store.objects.insert(key, object.clone());
    }
    let event = Event {
        rv,
        kind,
        res,
        object: object.clone(),
    };
    store.log.push(event.clone());
    let _ = shared.events.send(event);
    object
}

fn remove(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    key: &Key,
) -> Result<Value, ApiError> {
    let mut stored = store
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| missing(res, key))?;
    if !has_finalizers(&stored) {
        return Ok(commit(store, shared, res, key.clone(), stored, "DELETED"));
    }
    if stored["metadata"].get("deletionTimestamp").is_some() {
        return Ok(stored);
    }
    stored["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    Ok(commit(store, shared, res, key.clone(), stored, "MODIFIED"))
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

#[allow(clippy::too_many_arguments)]
fn patch(
    store: &mut Store,
    shared: &Shared,
    res: &'static ResourceType,
    key: &Key,
    part: Part,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patch = match media {
        "application/merge-patch+json" => parse_json(body)?,
        "application/apply-patch+yaml" => parse_apply(res, key, params, body)?,
        _ => {
            return Err(fail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({content_type}): accepted media types include: application/merge-patch+json, application/apply-patch+yaml"
                ),
            ));
        }
    };
    let Some(stored) = store.objects.get(key).cloned() else {
        if media == "application/apply-patch+yaml" && part == Part::Main {
            return create(store, shared, res, &key.namespace, patch);
        }
        return Err(missing(res, key));
    };
    if let Some(given) = patch["metadata"]["resourceVersion"].as_str()
        && Some(given) != stored["metadata"]["resourceVersion"].as_str()
    {
        return Err(stale(res, key));
    }
    let mut merged = stored.clone();
    merge_patch(&mut merged, &patch);
    let next = merge_part(res, &stored, merged, part);
    update(store, shared, res, key, &stored, next)
}

/// A server-side apply body: YAML (or JSON), naming the path's object, with a `fieldManager`.
fn parse_apply(
    res: &ResourceType,
    key: &Key,
    params: &HashMap<String, String>,
    body: &[u8],
) -> Result<Value, ApiError> {
    if params.get("fieldManager").is_none_or(String::is_empty) {
        return Err(bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| bad_request(e.to_string()))?;
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| bad_request(e.to_string()))?;
    if !doc.is_object() {
        return Err(bad_request("the apply patch is not an object"));
    }
    check_identity(res, key, &doc)?;
    if doc["metadata"]["name"].as_str().is_none() {
        return Err(bad_request(
            "metadata.name: Required value: name is required",
        ));
    }
    Ok(doc)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A label or field selector, as equality requirements.
#[derive(Debug, Default, Clone)]
struct Selector {
    labels: Vec<Requirement>,
    name: Option<String>,
    namespace: Option<String>,
    /// `type=` and `type!=` (Secrets).
    type_: Option<String>,
    not_types: Vec<String>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut selector = Self::default();
        for term in terms(params.get("labelSelector")) {
            selector.labels.push(parse_label_term(term)?);
        }
        for term in terms(params.get("fieldSelector")) {
            if let Some((field, value)) = term.split_once("!=") {
                // The API server's one field a `!=` is used on here: a Secret's type.
                if field.trim() != "type" {
                    return Err(bad_request(format!(
                        "field label not supported: {}",
                        field.trim()
                    )));
                }
                selector.not_types.push(value.trim().to_owned());
                continue;
            }
            let (field, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .ok_or_else(|| bad_request(format!("invalid field selector: {term}")))?;
            match field.trim() {
                "metadata.name" => selector.name = Some(value.trim().to_owned()),
                "metadata.namespace" => selector.namespace = Some(value.trim().to_owned()),
                "type" => selector.type_ = Some(value.trim().to_owned()),
                other => {
                    return Err(bad_request(format!("field label not supported: {other}")));
                }
            }
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let field = |f: &str, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| meta[f].as_str().unwrap_or_default() == w)
        };
        let labels = &meta["labels"];
        let kind_of = object["type"].as_str().unwrap_or_default();
        field("name", &self.name)
            && field("namespace", &self.namespace)
            && self.type_.as_ref().is_none_or(|t| kind_of == t)
            && self.not_types.iter().all(|t| kind_of != t)
            && self.labels.iter().all(|r| match r {
                Requirement::Equals(k, v) => labels[k].as_str() == Some(v),
                Requirement::NotEquals(k, v) => labels[k].as_str() != Some(v),
                Requirement::Exists(k) => labels.get(k).is_some(),
                Requirement::NotExists(k) => labels.get(k).is_none(),
            })
    }
}

fn terms(param: Option<&String>) -> impl Iterator<Item = &str> {
    param
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn parse_label_term(term: &str) -> Result<Requirement, ApiError> {
    let owned = |s: &str| s.trim().to_owned();
    if term.contains(' ') || term.contains('(') {
        return Err(bad_request(format!(
            "unable to parse requirement: set-based label selectors are not supported by the test API server: {term}"
        )));
    }
    Ok(if let Some((k, v)) = term.split_once("!=") {
        Requirement::NotEquals(owned(k), owned(v))
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        Requirement::Equals(owned(k), owned(v))
    } else if let Some(k) = term.strip_prefix('!') {
        Requirement::NotExists(owned(k))
    } else {
        Requirement::Exists(owned(term))
    })
}

fn list(
    shared: &Shared,
    res: &'static ResourceType,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> ApiResult {
    let selector = Selector::parse(params)?;
    let store = shared.lock();
    check_resource_version(&store, params)?;
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, v)| in_scope(k, res, namespace) && selector.matches(v))
        .map(|(_, v)| v.clone())
        .collect();
    let body = json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": { "resourceVersion": store.rv.to_string() },
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn in_scope(key: &Key, res: &ResourceType, namespace: Option<&str>) -> bool {
    key.plural == res.plural
        && key.group == res.group
        && namespace.is_none_or(|ns| key.namespace == ns)
}

/// The `resourceVersion` parameter, as a number (`0` when absent); `400` if it is not one.
fn check_resource_version(
    store: &Store,
    params: &HashMap<String, String>,
) -> Result<u64, ApiError> {
    let rv = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| bad_request(format!("invalid resource version: {text}")))?,
    };
    if rv > store.rv {
        return Err(fail(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {rv}, current: {}", store.rv),
        ));
    }
    Ok(rv)
}

/// One open watch: what it selects, and where it stands.
#[derive(Debug)]
struct Watch {
    res: &'static ResourceType,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    /// The resourceVersion up to which every event was seen.
    seen: u64,
}

impl Watch {
    fn selects(&self, event: &Event) -> bool {
        event.res == self.res
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| event.object["metadata"]["namespace"].as_str() == Some(ns))
            && self.selector.matches(&event.object)
    }

    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let mut text = json!({ "type": kind, "object": object }).to_string();
        text.push('\n');
        Bytes::from(text)
    }

    fn bookmark(&self) -> Bytes {
        let object = json!({
            "kind": self.res.kind,
            "apiVersion": self.res.api_version(),
            "metadata": { "resourceVersion": self.seen.to_string() },
        });
        self.line("BOOKMARK", &object)
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    res: &'static ResourceType,
    namespace: Option<String>,
    params: &HashMap<String, String>,
) -> ApiResult {
    let selector = Selector::parse(params)?;
    let timeout = match params.get("timeoutSeconds") {
        Some(text) => {
            Some(Duration::from_secs(text.parse().map_err(|_| {
                bad_request(format!("invalid timeoutSeconds: {text}"))
            })?))
        }
        None => None,
    };
    let store = shared.lock();
    let from = check_resource_version(&store, params)?;
    let mut watch = Watch {
        res,
        namespace,
        selector,
        bookmarks: params
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        seen: store.rv,
    };
    let initial = initial_lines(&store, &watch, from);
    let events = shared.events.subscribe();
    let close = shared.close.subscribe();
    drop(store);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let expired = initial.is_err();
        for line in initial.unwrap_or_else(|line| vec![line]) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if !expired {
            stream_live(&mut watch, events, close, timeout, &tx).await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<Bytes, Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The lines a watch from `from` starts with: ADDED for every object (`0`), the log after
/// `from`, or (`Err`) the `410 Expired` error event when the log no longer reaches back.
fn initial_lines(store: &Store, watch: &Watch, from: u64) -> Result<Vec<Bytes>, Bytes> {
    if from == 0 {
        return Ok(store
            .objects
            .iter()
            .filter(|(k, v)| {
                in_scope(k, watch.res, watch.namespace.as_deref()) && watch.selector.matches(v)
            })
            .map(|(_, v)| watch.line("ADDED", v))
            .collect());
    }
    if from < store.compacted {
        let message = format!("too old resource version: {from} ({})", store.compacted);
        return Err(watch.line("ERROR", &status_body(410, "Expired", &message)));
    }
    Ok(store
        .log
        .iter()
        .filter(|e| e.rv > from && watch.selects(e))
        .map(|e| watch.line(e.kind, &e.object))
        .collect())
}

async fn stream_live(
    watch: &mut Watch,
    mut events: broadcast::Receiver<Event>,
    mut close: watch::Receiver<u64>,
    timeout: Option<Duration>,
    tx: &mpsc::Sender<Bytes>,
) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        // Closing first: an event sent after `close_watches` never reaches a closed stream.
        let line = tokio::select! {
            biased;
            _ = close.changed() => return,
            event = events.recv() => match event {
                Ok(event) => {
                    watch.seen = event.rv;
                    if !watch.selects(&event) {
                        continue;
                    }
                    watch.line(event.kind, &event.object)
                }
                // Lagged or closed: end the stream; the client watches again from what it saw.
                Err(_) => return,
            },
            _ = ticker.tick(), if watch.bookmarks => watch.bookmark(),
            () = sleep_until(deadline) => return,
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn token_review(shared: &Shared, body: &[u8]) -> ApiResult {
    let review = parse_json(body)?;
    let kind_ok = review["kind"].as_str() == Some("TokenReview")
        && review["apiVersion"].as_str() == Some("authentication.k8s.io/v1");
    if !kind_ok {
        return Err(bad_request(
            "the body is not an authentication.k8s.io/v1 TokenReview",
        ));
    }
    let Some(token) = review["spec"]["token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.token: Required value",
        ));
    };
    let requested: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![DEFAULT_AUDIENCE.to_owned()],
    };
    let entry = shared.lock().tokens.get(token).cloned();
    let status = review_status(entry.as_ref(), &requested);
    let body = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": review["spec"].clone(),
        "status": status,
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

fn review_status(entry: Option<&Token>, requested: &[String]) -> Value {
    let Some(entry) = entry else {
        return json!({ "authenticated": false, "error": "invalid bearer token" });
    };
    let audiences: Vec<&String> = requested
        .iter()
        .filter(|a| entry.audiences.contains(a))
        .collect();
    if audiences.is_empty() {
        return json!({
            "authenticated": false,
            "error": "invalid bearer token, token audiences is invalid",
        });
    }
    json!({
        "authenticated": true,
        "user": { "username": entry.username, "groups": entry.groups },
        "audiences": audiences,
    })
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
