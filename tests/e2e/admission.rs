//! The admission webhooks of a running `isthmusd` (Kubernetes mode, against the test API
//! server): real `AdmissionReview` requests (`tests/fixtures/admission/`) sent by `curl` over
//! TLS, verified against the CA bundle `isthmusd` wrote into its webhook configurations; the
//! patched pods checked by `kubernetes-validate`; `isthmusctl kube-inject` compared with the
//! webhook.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use isthmus_e2e::kube::ApiServer;
use isthmus_e2e::{Isthmusd, bin, curl_with};
use serde_json::{Value, json};

/// The name the API server dials: `isthmusd`'s `Service`.
const SERVICE_HOST: &str = "isthmusd.isthmus-system.svc";

/// A running `isthmusd` with its webhooks, and the bundle it published.
struct Webhooks {
    dir: tempfile::TempDir,
    _api: ApiServer,
    daemon: Isthmusd,
    /// The PEM `isthmusd` wrote (base64) into the webhook configurations' `caBundle`.
    bundle: PathBuf,
}

impl Webhooks {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start();
        // The webhook configurations as installed, without a `caBundle`: isthmusd writes it.
        let manifests = workspace().join("manifests/base/webhooks.yaml");
        api.apply(&std::fs::read_to_string(manifests).unwrap());
        let kubeconfig = api.kubeconfig(dir.path()).to_string_lossy().into_owned();
        let daemon = Isthmusd::start(
            dir.path(),
            "cluster.local",
            &["--config-source", "kubernetes", "--kubeconfig", &kubeconfig],
        )
        .unwrap();
        let pem = wait_for_bundle(&api, &daemon);
        let bundle = dir.path().join("ca-bundle.pem");
        std::fs::write(&bundle, pem).unwrap();
        Self {
            dir,
            _api: api,
            daemon,
            bundle,
        }
    }

    /// POSTs `body` to `path` as the API server would (TLS to the Service name, verified
    /// against the published bundle); the status and the JSON answer.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let file = self.dir.path().join("review.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let port = self.daemon.webhook.unwrap().port();
        let resolve = format!("{SERVICE_HOST}:{port}:127.0.0.1");
        let url = format!("https://{SERVICE_HOST}:{port}{path}");
        let data = format!("@{}", file.display());
        let (status, text) = curl_with(
            Command::new("curl"),
            &[
                "--cacert",
                self.bundle.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
                &url,
            ],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.daemon.logs()));
        let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, answer)
    }

    /// Sends the review; its response, checked to answer this request.
    fn review(&self, path: &str, review: &Value) -> Value {
        let (status, answer) = self.post(path, review);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "{answer}");
        response
    }
}

/// Waits until both webhook configurations carry one bundle in every webhook; that bundle
/// (PEM), checked to be `isthmusd`'s root.
fn wait_for_bundle(api: &ApiServer, daemon: &Isthmusd) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bundles: Vec<Option<String>> = [
            ("MutatingWebhookConfiguration", "isthmus-sidecar-injector"),
            ("ValidatingWebhookConfiguration", "isthmus-validator"),
        ]
        .iter()
        .flat_map(|(kind, name)| {
            let object = api.server.get(kind, None, name).unwrap_or(Value::Null);
            object["webhooks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|w| w["clientConfig"]["caBundle"].as_str().map(str::to_owned))
        })
        .collect();
        if bundles.len() == 4 && bundles.iter().all(|b| b.is_some() && *b == bundles[0]) {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(bundles[0].as_ref().unwrap())
                .unwrap();
            let pem = String::from_utf8(pem).unwrap();
            let root = std::fs::read_to_string(daemon.root_file()).unwrap();
            assert_eq!(pem.trim(), root.trim(), "the bundle is isthmusd's root");
            return pem;
        }
        assert!(
            Instant::now() < deadline,
            "isthmusd did not write its CA bundle into the webhook configurations: {bundles:?}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Value {
    let path = workspace().join("tests/fixtures/admission").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The response's patch applied to the request's object.
fn patched(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// `kubernetes-validate --strict` of `object` (Kubernetes 1.33: native sidecars are GA).
fn assert_valid_kubernetes(dir: &Path, object: &Value) {
    let mut object = object.clone();
    // A created pod has its name; the fixtures' pods come with `generateName` only.
    if object["metadata"]["name"].is_null() {
        object["metadata"]["name"] = json!("reviews-v1-7d8c6b9f4-abcde");
    }
    let file = dir.join("pod.json");
    std::fs::write(&file, object.to_string()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "kubernetes-validate refused the injected pod:\n{}{}\n{object:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

fn env(container: &Value, name: &str) -> String {
    let entry = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {container:#}"));
    entry["value"].as_str().unwrap_or_default().to_owned()
}

/// What `docs/kubernetes.md` says an injected pod gets.
fn assert_injected_as_documented(pod: &Value, app: &str) {
    let init = &pod["spec"]["initContainers"];
    let names: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["isthmus-init", "isthmus-proxy"], "{pod:#}");
    let capture = container(init, "isthmus-init");
    assert_eq!(capture["command"], json!(["isthmus-proxy"]));
    assert_eq!(capture["args"][0], "capture");
    assert_eq!(
        capture["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let sidecar = container(init, "isthmus-proxy");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        env(sidecar, "ISTHMUS_NODE_ID"),
        "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
    );
    assert_eq!(
        env(sidecar, "ISTHMUS_CA_ADDRESS"),
        "isthmusd.isthmus-system.svc:15012"
    );
    assert_eq!(
        env(sidecar, "ISTHMUS_TOKEN_FILE"),
        "/var/run/secrets/tokens/isthmus-ca"
    );
    let volumes = &pod["spec"]["volumes"];
    let token = container(volumes, "isthmus-token");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "isthmus-ca"
    );
    assert_eq!(
        container(volumes, "isthmus-ca-root")["configMap"]["name"],
        "isthmus-ca-root-cert"
    );
    // The pod's own volume is still there.
    assert!(container(volumes, "kube-api-access-x7k2p")["projected"].is_object());
    let app_container = container(&pod["spec"]["containers"], app);
    assert_eq!(
        app_container["readinessProbe"]["httpGet"],
        json!({"path": format!("/app-health/{app}/readyz"), "port": 15020, "scheme": "HTTP"})
    );
    assert_eq!(
        app_container["livenessProbe"]["httpGet"],
        json!({"path": format!("/app-health/{app}/livez"), "port": 15020, "scheme": "HTTP"})
    );
    assert!(app_container["livenessProbe"].get("tcpSocket").is_none());
    let probers: Value = serde_json::from_str(&env(sidecar, "ISTHMUS_KUBE_APP_PROBERS")).unwrap();
    assert_eq!(
        probers[format!("/app-health/{app}/readyz")]["httpGet"]["port"],
        9080,
        "the named port resolved: {probers}"
    );
    assert!(pod["metadata"]["annotations"]["sidecar.isthmus.io/status"].is_string());
}

#[test]
fn injection_answers_real_reviews_over_tls_with_a_patch_making_a_valid_injected_pod() {
    let webhooks = Webhooks::start();
    for (name, app) in [
        ("pod-create.json", "reviews"),
        ("pod-dry-run.json", "productpage"),
    ] {
        let review = fixture(name);
        let response = webhooks.review("/inject", &review);
        let pod = patched(&review, &response);
        assert_injected_as_documented(&pod, app);
        assert_valid_kubernetes(webhooks.dir.path(), &pod);

        // Reinvoked (reinvocationPolicy: IfNeeded) or sent again: nothing more to do.
        let mut again = review.clone();
        again["request"]["object"] = pod;
        let response = webhooks.review("/inject", &again);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{response}");
    }
    // The capture annotation reaches the init container.
    let review = fixture("pod-dry-run.json");
    let pod = patched(&review, &webhooks.review("/inject", &review));
    let args = &container(&pod["spec"]["initContainers"], "isthmus-init")["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--exclude-outbound-ports=5432")),
        "{args}"
    );
}

#[test]
fn opted_out_and_host_network_pods_are_allowed_without_a_patch() {
    let webhooks = Webhooks::start();
    for name in ["pod-opted-out.json", "pod-host-network.json"] {
        let response = webhooks.review("/inject", &fixture(name));
        assert_eq!(response["allowed"], true, "{name}: {response}");
        assert!(response.get("patch").is_none(), "{name}: {response}");
    }
    // The control plane's own namespace is never injected.
    let mut review = fixture("pod-create.json");
    review["request"]["namespace"] = json!("isthmus-system");
    review["request"]["object"]["metadata"]["namespace"] = json!("isthmus-system");
    let response = webhooks.review("/inject", &review);
    assert!(response.get("patch").is_none(), "{response}");
}

#[test]
fn validation_denies_a_bad_virtual_service_at_its_field_and_allows_a_good_one() {
    let webhooks = Webhooks::start();
    let response = webhooks.review("/validate", &fixture("virtualservice-create-bad.json"));
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 400, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.http[0].timeuot: unknown field; did you mean `timeout`?"),
        "{message}"
    );
    assert!(
        message.contains("VirtualService bookinfo/reviews"),
        "{message}"
    );

    let response = webhooks.review("/validate", &fixture("virtualservice-update-good.json"));
    assert_eq!(response["allowed"], true, "{response}");

    // An object stored while the webhook was down stays updatable where its spec does not
    // change (a label, a finalizer removed), and while it is being deleted.
    let mut relabel = fixture("virtualservice-create-bad.json");
    relabel["request"]["operation"] = json!("UPDATE");
    relabel["request"]["oldObject"] = relabel["request"]["object"].clone();
    relabel["request"]["object"]["metadata"]["labels"] = json!({"team": "reviews"});
    let response = webhooks.review("/validate", &relabel);
    assert_eq!(response["allowed"], true, "{response}");
    let mut changed = relabel.clone();
    changed["request"]["object"]["spec"]["hosts"] = json!(["reviews", "reviews.bookinfo"]);
    let response = webhooks.review("/validate", &changed);
    assert_eq!(
        response["allowed"], false,
        "a changed spec is checked: {response}"
    );

    // A deletion is never refused.
    let mut delete = fixture("virtualservice-create-bad.json");
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = delete["request"]["object"].take();
    let response = webhooks.review("/validate", &delete);
    assert_eq!(response["allowed"], true, "{response}");

    // A body that is no review is a 400 naming why.
    let (status, answer) = webhooks.post("/validate", &json!({"kind": "Pod"}));
    assert_eq!(status, 400);
    assert!(
        answer.as_str().unwrap().contains("AdmissionReview"),
        "{answer}"
    );
}

#[test]
fn the_webhook_certificate_verifies_against_the_published_bundle_only() {
    let webhooks = Webhooks::start();
    let port = webhooks.daemon.webhook.unwrap().port();
    // openssl: the chain verifies against the bundle, for the Service's name.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            SERVICE_HOST,
            "-verify_hostname",
            SERVICE_HOST,
        ])
        .args(["-verify_return_error", "-CAfile"])
        .arg(&webhooks.bundle)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another CA's bundle does not verify it, nor does a name the certificate is not for.
    let other = webhooks.dir.path().join("other-ca.pem");
    let ca = isthmus_identity::testing::TestCa::new("cluster.local");
    std::fs::write(&other, ca.root_pem()).unwrap();
    let url = format!("https://{SERVICE_HOST}:{port}/inject");
    let resolve = format!("{SERVICE_HOST}:{port}:127.0.0.1");
    let refused = curl_with(
        Command::new("curl"),
        &[
            "--cacert",
            other.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ],
    );
    assert_eq!(refused.unwrap_err().code, Some(60), "an unknown CA");
    let refused = curl_with(
        Command::new("curl"),
        &[
            "--cacert",
            webhooks.bundle.to_str().unwrap(),
            &format!("https://localhost:{port}/inject"),
        ],
    );
    assert_eq!(
        refused.unwrap_err().code,
        Some(60),
        "a name not in the certificate"
    );
}

/// Splits `isthmusctl kube-inject`'s output into its documents.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(text).unwrap()
}

#[test]
fn kube_inject_matches_the_webhook_and_passes_other_kinds_through() {
    let webhooks = Webhooks::start();
    let review = fixture("pod-create.json");
    let pod = review["request"]["object"].clone();
    let template = json!({"metadata": {"labels": pod["metadata"]["labels"]}, "spec": pod["spec"]});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "reviews-v1", "namespace": "bookinfo"},
        "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "template": template}});
    let cron_job = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "reviews-report", "namespace": "bookinfo"},
        "spec": {"schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": template}}}});
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: reviews-settings\n  namespace: bookinfo\ndata:\n  mode: \"fast\"\n";
    let input = format!(
        "{}\n---\n{config_map}---\n{}\n---\n{}\n",
        deployment, cron_job, pod
    );
    let file = webhooks.dir.path().join("workloads.yaml");
    std::fs::write(&file, &input).unwrap();
    let out = Command::new(bin("isthmusctl"))
        .args(["kube-inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 4);
    assert_eq!(
        docs[1],
        yaml_documents(config_map)[0],
        "the ConfigMap passes unchanged"
    );

    // The Pod document: exactly the webhook's patch applied to the same pod.
    let webhook_pod = patched(&review, &webhooks.review("/inject", &review));
    assert_eq!(docs[3], webhook_pod);
    // The workloads' pod templates: the webhook's pod, minus what a template does not have.
    let mut as_pod = review.clone();
    as_pod["request"]["object"] = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": template["metadata"], "spec": template["spec"]});
    let webhook_template = patched(&as_pod, &webhooks.review("/inject", &as_pod));
    let deployment_template = &docs[0]["spec"]["template"];
    let cron_template = &docs[2]["spec"]["jobTemplate"]["spec"]["template"];
    for injected in [deployment_template, cron_template] {
        assert_eq!(injected["spec"], webhook_template["spec"]);
        assert_eq!(injected["metadata"], webhook_template["metadata"]);
        assert_injected_as_documented(injected, "reviews");
    }
    // Fed its own output, kube-inject changes nothing.
    let again = webhooks.dir.path().join("again.yaml");
    let first = Command::new(bin("isthmusctl"))
        .args(["kube-inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::write(&again, &first.stdout).unwrap();
    let second = Command::new(bin("isthmusctl"))
        .args(["kube-inject", "-f"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(
        yaml_documents(&String::from_utf8(second.stdout).unwrap()),
        docs
    );
}
