//! The generated CRDs are current, valid Kubernetes objects with structural schemas, and the
//! examples validate against them (and against Isthmus's own parser). The kustomize install
//! (`manifests/base`, `manifests/examples/{red,green}`) renders, validates, and declares what
//! `isthmusd` and the federation peers need (`docs/kubernetes.md`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use isthmus_controlplane::kubernetes::access::{API_ACCESS, Scope};
use isthmus_e2e::{isthmusctl, sh};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(workspace().join("examples/config"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_check_names_a_stale_crd() {
    // (That the checked-in files are current is a unit test of `isthmus-api`.)
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir]);
    assert!(out.status.success());
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir, "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = dir.path().join("virtualservices.networking.istio.io.yaml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(
        &edited,
        text.replace("plural: virtualservices", "plural: vses"),
    )
    .unwrap();
    let out = isthmusctl(&["manifests", "crds", "--out", out_dir, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is stale: virtualservices.networking.istio.io.yaml"),
        "{stderr}"
    );
}

#[test]
fn crds_pass_kubernetes_validate() {
    let text = sh(
        &workspace(),
        "kubernetes-validate --strict --quiet manifests/crds/*.networking.istio.io.yaml \
         manifests/crds/*.security.istio.io.yaml manifests/crds/*.federation.maistra.io.yaml",
    )
    .unwrap();
    assert!(!text.contains("ERROR") && !text.contains("FAIL"), "{text}");
}

#[test]
fn examples_validate_against_the_crd_schemas() {
    let files = examples().join(" ");
    let text = sh(
        &workspace(),
        &format!("python3 tests/crds/validate.py manifests/crds {files}"),
    )
    .unwrap();
    assert!(
        text.contains("11 CRD schemas checked for structure"),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn examples_are_valid_isthmus_configuration() {
    let dir = workspace().join("examples/config");
    let out = isthmusctl(&["config", "validate", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid (11 resources"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// The kustomize install (manifests/base and the two example overlays), rendered by the real
// `kubectl kustomize`. kubectl and kubernetes-validate are installed by tests/run.sh: a missing
// one fails these tests, it does not skip them.

/// Every kustomization the tests render.
const KUSTOMIZATIONS: [&str; 3] = [
    "manifests/base",
    "manifests/examples/red",
    "manifests/examples/green",
];

/// The Kubernetes version the rendered objects are validated against (pinned, so that a new
/// kubernetes-validate release does not change the check).
const KUBERNETES_VERSION: &str = "1.29.0";

/// API groups whose kinds are our CRDs: validated against `manifests/crds`, not by
/// kubernetes-validate (which has no schema for them).
const CRD_GROUPS: [&str; 3] = [
    "networking.istio.io/",
    "security.istio.io/",
    "federation.maistra.io/",
];

/// Runs a program the tests need, failing loudly (not skipping) when it is not installed.
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): tests/run.sh installs it; install it and rerun")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl kustomize DIR`: the rendered text, or the test fails with kubectl's reason.
fn kustomize(dir: &str) -> String {
    let (ok, stdout, stderr) = run("kubectl", &["kustomize", dir]);
    assert!(ok, "kubectl kustomize {dir} failed:\n{stderr}");
    stdout
}

fn documents(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn rendered(dir: &str) -> Vec<Value> {
    documents(&kustomize(dir))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The object of `kind` named `name` in `namespace` (`""`: cluster-scoped).
fn object<'a>(docs: &'a [Value], kind: &str, namespace: &str, name: &str) -> &'a Value {
    find(docs, kind, namespace, name)
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} in the rendered manifests"))
}

fn find<'a>(docs: &'a [Value], kind: &str, namespace: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        str_at(d, "/kind") == kind
            && str_at(d, "/metadata/namespace") == namespace
            && str_at(d, "/metadata/name") == name
    })
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| str_at(d, "/kind") == kind)
}

/// The value of `--flag=VALUE` in `args`.
fn flag<'a>(args: &'a [Value], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// The value of environment variable `name` set literally on `container`.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    array_at(container, "/env")
        .iter()
        .find(|e| str_at(e, "/name") == name)
        .and_then(|e| e.pointer("/value").and_then(Value::as_str))
}

#[test]
fn kustomizations_render_and_pass_kubernetes_validate() {
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        assert!(!docs.is_empty(), "{kustomization} renders nothing");
        let (custom, builtin): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| {
            let api = str_at(d, "/apiVersion");
            CRD_GROUPS.iter().any(|g| api.starts_with(g))
        });
        let name = kustomization.replace('/', "-");

        // Kubernetes' own kinds, strictly (unknown fields are errors). A kind it has no schema
        // for is reported as WARN, which fails here too: every document must be checked.
        let file = dir.path().join(format!("{name}-builtin.yaml"));
        write_documents(&file, &builtin);
        let (ok, stdout, stderr) = run(
            "kubernetes-validate",
            &[
                "--strict",
                "--kubernetes-version",
                KUBERNETES_VERSION,
                file.to_str().unwrap(),
            ],
        );
        let text = format!("{stdout}{stderr}");
        assert!(ok, "{kustomization}: kubernetes-validate failed:\n{text}");
        for line in text.lines() {
            assert!(
                line.starts_with("INFO ") && line.contains("passed for resource"),
                "{kustomization}: {line}\n{text}"
            );
        }
        assert_eq!(
            text.lines().count(),
            builtin.len(),
            "{kustomization}: every document validated once:\n{text}"
        );

        // Our custom resources (the overlays' federation YAML), against our CRDs' schemas.
        if !custom.is_empty() {
            let file = dir.path().join(format!("{name}-custom.yaml"));
            write_documents(&file, &custom);
            let (ok, stdout, stderr) = run(
                "python3",
                &[
                    "tests/crds/validate.py",
                    "manifests/crds",
                    file.to_str().unwrap(),
                ],
            );
            assert!(ok && !stdout.contains("FAIL"), "{stdout}{stderr}");
            assert!(
                stdout.contains(&format!("{} example documents validated", custom.len())),
                "{stdout}"
            );
        }
    }
}

fn write_documents(path: &Path, docs: &[&Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    // JSON is YAML: one document per `---`.
    std::fs::write(path, text.join("\n---\n")).unwrap();
}

/// The port of each listening address `isthmusd` has by default, from its `--help`.
fn isthmusd_default_ports() -> BTreeMap<&'static str, u16> {
    let out = Command::new(isthmus_e2e::bin("isthmusd"))
        .arg("--help")
        .env("COLUMNS", "1000")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut ports = BTreeMap::new();
    for name in ["--grpc-addr", "--debug-addr", "--federation-addr"] {
        let start = help
            .find(&format!("{name} <"))
            .unwrap_or_else(|| panic!("isthmusd --help has no {name}:\n{help}"));
        // The flag's description runs until the next flag.
        let rest = &help[start + name.len()..];
        let end = rest.find("\n  -").unwrap_or(rest.len());
        let default = rest[..end]
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .unwrap_or_else(|| panic!("{name} has no default in isthmusd --help:\n{help}"));
        let address: std::net::SocketAddr = default.parse().unwrap();
        ports.insert(name, address.port());
    }
    ports
}

/// The port a `Service` port or probe names: a number, or a container port's name.
fn resolve_port(container: &Value, target: &Value) -> Option<u64> {
    if let Some(n) = target.as_u64() {
        return Some(n);
    }
    let name = target.as_str()?;
    array_at(container, "/ports")
        .iter()
        .find(|p| str_at(p, "/name") == name)
        .and_then(|p| p.pointer("/containerPort").and_then(Value::as_u64))
}

#[test]
fn isthmusd_ports_and_service_account_are_declared() {
    let defaults = isthmusd_default_ports();
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        let deployment = object(&docs, "Deployment", "isthmus-system", "isthmusd");
        let pod = deployment.pointer("/spec/template/spec").unwrap();
        let container = array_at(pod, "/containers")
            .iter()
            .find(|c| str_at(c, "/name") == "isthmusd")
            .unwrap();
        let args = array_at(container, "/args");
        assert_eq!(flag(args, "--config-source"), Some("kubernetes"));
        let service = object(&docs, "Service", "isthmus-system", "isthmusd");
        for (name, default) in &defaults {
            // A flag in the manifest would move the port; none does today.
            let port = match flag(args, name) {
                Some(addr) => addr.parse::<std::net::SocketAddr>().unwrap().port(),
                None => *default,
            };
            let declared = array_at(container, "/ports")
                .iter()
                .any(|p| p.pointer("/containerPort").and_then(Value::as_u64) == Some(port.into()));
            assert!(
                declared,
                "{kustomization}: isthmusd listens on {port} ({name}), no containerPort"
            );
            let exposed = array_at(service, "/spec/ports").iter().any(|p| {
                let target = p
                    .pointer("/targetPort")
                    .or_else(|| p.pointer("/port"))
                    .unwrap();
                resolve_port(container, target) == Some(port.into())
            });
            assert!(
                exposed,
                "{kustomization}: Service isthmusd does not expose {port} ({name})"
            );
        }
        // Readiness on the debug port's /ready.
        let probe = container.pointer("/readinessProbe/httpGet").unwrap();
        assert_eq!(str_at(probe, "/path"), "/ready");
        assert_eq!(
            resolve_port(container, probe.pointer("/port").unwrap()),
            Some(defaults["--debug-addr"].into())
        );

        // It runs as the service account its identity and RBAC name, in its --namespace.
        let namespace = flag(args, "--namespace").unwrap();
        assert_eq!(namespace, "isthmus-system");
        assert_eq!(str_at(pod, "/serviceAccountName"), "isthmusd");
        object(&docs, "ServiceAccount", namespace, "isthmusd");
        object(&docs, "Namespace", "", namespace);
        object(
            &docs,
            "Namespace",
            "",
            flag(args, "--root-namespace").unwrap(),
        );
    }
}

/// One grant: (API group, resource, verb, the object's name: `None` for any).
type Grant = (String, String, String, Option<String>);

/// What the rendered RBAC grants `namespace/account`, by scope: cluster-wide (`None`) or in a
/// namespace. Fails on wildcards, and on names where Kubernetes cannot authorize by name
/// (`create`, `deletecollection`: the name is not known when the request is authorized).
fn granted(
    docs: &[Value],
    namespace: &str,
    account: &str,
) -> BTreeMap<Option<String>, BTreeSet<Grant>> {
    let mut grants: BTreeMap<Option<String>, BTreeSet<Grant>> = BTreeMap::new();
    for binding in docs.iter().filter(|d| {
        matches!(str_at(d, "/kind"), "ClusterRoleBinding" | "RoleBinding")
            && array_at(d, "/subjects").iter().any(|s| {
                str_at(s, "/kind") == "ServiceAccount"
                    && str_at(s, "/name") == account
                    && str_at(s, "/namespace") == namespace
            })
    }) {
        let cluster_wide = str_at(binding, "/kind") == "ClusterRoleBinding";
        let binding_ns = str_at(binding, "/metadata/namespace");
        let role_kind = str_at(binding, "/roleRef/kind");
        let role_ns = if role_kind == "ClusterRole" {
            ""
        } else {
            binding_ns
        };
        let role = object(docs, role_kind, role_ns, str_at(binding, "/roleRef/name"));
        let scope = (!cluster_wide).then(|| binding_ns.to_owned());
        for rule in array_at(role, "/rules") {
            let list = |key: &str| -> Vec<String> {
                array_at(rule, key)
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            assert!(
                list("/nonResourceURLs").is_empty(),
                "unexpected rule shape in {role_kind} {}: {rule}",
                str_at(role, "/metadata/name")
            );
            let names: Vec<Option<String>> = match list("/resourceNames") {
                names if names.is_empty() => vec![None],
                names => {
                    assert!(
                        list("/verbs")
                            .iter()
                            .all(|v| v != "create" && v != "deletecollection"),
                        "{role_kind} {}: create and deletecollection cannot be restricted by \
                         name: {rule}",
                        str_at(role, "/metadata/name")
                    );
                    names.into_iter().map(Some).collect()
                }
            };
            for group in list("/apiGroups") {
                for resource in list("/resources") {
                    for verb in list("/verbs") {
                        assert!(
                            ![&group, &resource, &verb].iter().any(|s| s.contains('*')),
                            "wildcard in {role_kind} {}: {rule}",
                            str_at(role, "/metadata/name")
                        );
                        for name in &names {
                            grants.entry(scope.clone()).or_default().insert((
                                group.clone(),
                                resource.clone(),
                                verb.clone(),
                                name.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    grants
}

/// What `API_ACCESS` asks for, by scope, with the namespaces the Deployment gives isthmusd.
fn required(own: &str, root: &str) -> BTreeMap<Option<String>, BTreeSet<Grant>> {
    let mut required: BTreeMap<Option<String>, BTreeSet<Grant>> = BTreeMap::new();
    for access in API_ACCESS {
        let scope = match access.scope {
            Scope::Cluster => None,
            Scope::RootNamespace => Some(root.to_owned()),
            Scope::OwnNamespace => Some(own.to_owned()),
        };
        let names: Vec<Option<String>> = if access.resource_names.is_empty() {
            vec![None]
        } else {
            access
                .resource_names
                .iter()
                .map(|n| Some((*n).to_owned()))
                .collect()
        };
        for verb in access.verbs {
            for name in &names {
                required.entry(scope.clone()).or_default().insert((
                    access.group.to_owned(),
                    access.resource.to_owned(),
                    (*verb).to_owned(),
                    name.clone(),
                ));
            }
        }
    }
    required
}

#[test]
fn isthmusd_rbac_is_exactly_its_api_access() {
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        let deployment = object(&docs, "Deployment", "isthmus-system", "isthmusd");
        let pod = deployment.pointer("/spec/template/spec").unwrap();
        let args = array_at(&pod["containers"][0], "/args");
        let own = flag(args, "--namespace").unwrap();
        let root = flag(args, "--root-namespace").unwrap();
        let account = str_at(pod, "/serviceAccountName");
        let granted = granted(&docs, own, account);
        let required = required(own, root);
        for (scope, grants) in &required {
            for grant in grants {
                assert!(
                    granted.get(scope).is_some_and(|g| g.contains(grant)),
                    "{kustomization}: isthmusd needs {grant:?} {} but no role grants it",
                    scope
                        .as_deref()
                        .map_or("cluster-wide".to_owned(), |n| format!("in namespace {n}"))
                );
            }
        }
        // Least privilege: nothing beyond the table, in no other scope.
        assert_eq!(
            granted, required,
            "{kustomization}: isthmusd's RBAC differs from API_ACCESS"
        );
        // Nothing in the install binds cluster-admin.
        for binding in of_kind(&docs, "ClusterRoleBinding").chain(of_kind(&docs, "RoleBinding")) {
            assert_ne!(
                str_at(binding, "/roleRef/name"),
                "cluster-admin",
                "{binding}"
            );
        }
    }
}

/// A label selector's `matchExpressions` as key -> (operator, values); fails on `matchLabels`
/// (the webhooks spell everything as expressions) and on a key given twice.
fn requirements(selector: &Value) -> BTreeMap<String, (String, Vec<String>)> {
    assert!(selector.pointer("/matchLabels").is_none(), "{selector}");
    let mut out = BTreeMap::new();
    for e in array_at(selector, "/matchExpressions") {
        let values = array_at(e, "/values")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let previous = out.insert(
            str_at(e, "/key").to_owned(),
            (str_at(e, "/operator").to_owned(), values),
        );
        assert!(previous.is_none(), "a key twice in {selector}");
    }
    out
}

/// `(operator, values)` as `requirements` returns them.
fn req(operator: &str, values: &[&str]) -> (String, Vec<String>) {
    (
        operator.to_owned(),
        values.iter().map(|v| (*v).to_owned()).collect(),
    )
}

#[test]
fn webhook_configurations_call_isthmusd_with_istios_injection_semantics() {
    use isthmus_controlplane::kubernetes::source::CONFIG_KINDS;
    use isthmus_controlplane::kubernetes::webhook_bundle::{
        DEFAULT_INJECTOR_CONFIG, DEFAULT_VALIDATOR_CONFIG,
    };
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        let deployment = object(&docs, "Deployment", "isthmus-system", "isthmusd");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args = array_at(container, "/args");
        // The webhook port: declared on the container, reached through the Service.
        let webhook_addr: std::net::SocketAddr = flag(args, "--webhook-addr")
            .unwrap_or_else(|| panic!("{kustomization}: isthmusd has no --webhook-addr"))
            .parse()
            .unwrap();
        let service = object(&docs, "Service", "isthmus-system", "isthmusd");
        // Every webhook calls Service isthmusd in isthmusd's namespace at `path`, on a Service
        // port that leads to the webhook port; no caBundle (isthmusd writes it).
        let calls_isthmusd = |webhook: &Value, path: &str| {
            let at = format!("{kustomization}: webhook {}", str_at(webhook, "/name"));
            let client = &webhook["clientConfig"];
            assert!(client.pointer("/caBundle").is_none(), "{at}");
            assert!(client.pointer("/url").is_none(), "{at}");
            assert_eq!(str_at(client, "/service/name"), "isthmusd", "{at}");
            assert_eq!(
                str_at(client, "/service/namespace"),
                "isthmus-system",
                "{at}"
            );
            assert_eq!(str_at(client, "/service/path"), path, "{at}");
            let port = client
                .pointer("/service/port")
                .and_then(Value::as_u64)
                .unwrap_or(443);
            let target = array_at(service, "/spec/ports")
                .iter()
                .find(|p| p.pointer("/port").and_then(Value::as_u64) == Some(port))
                .and_then(|p| resolve_port(container, &p["targetPort"]))
                .unwrap_or_else(|| panic!("{at}: the Service has no port {port}"));
            assert_eq!(target, u64::from(webhook_addr.port()), "{at}");
            assert!(
                array_at(container, "/ports")
                    .iter()
                    .any(|p| p.pointer("/containerPort").and_then(Value::as_u64) == Some(target)),
                "{at}: no containerPort {target}"
            );
            assert_eq!(
                array_at(webhook, "/admissionReviewVersions"),
                [json!("v1")],
                "{at}"
            );
            assert_eq!(str_at(webhook, "/sideEffects"), "None", "{at}");
            assert_eq!(
                webhook.pointer("/timeoutSeconds").and_then(Value::as_u64),
                Some(10),
                "{at}"
            );
        };

        // Injection: isthmusd keeps the caBundle of the configuration its flag names.
        let injector_name =
            flag(args, "--injector-webhook-config").unwrap_or(DEFAULT_INJECTOR_CONFIG);
        let injector = object(&docs, "MutatingWebhookConfiguration", "", injector_name);
        let webhooks = array_at(injector, "/webhooks");
        let names: Vec<&str> = webhooks.iter().map(|w| str_at(w, "/name")).collect();
        assert_eq!(
            names,
            [
                "namespace.sidecar-injector.isthmus.io",
                "isthmus-namespace.sidecar-injector.isthmus.io",
                "object.sidecar-injector.isthmus.io"
            ],
            "{kustomization}"
        );
        for webhook in webhooks {
            let at = format!("{kustomization}: webhook {}", str_at(webhook, "/name"));
            calls_isthmusd(webhook, "/inject");
            // A pod that cannot be injected is not created uninjected; injected again when a
            // later webhook changed it.
            assert_eq!(str_at(webhook, "/failurePolicy"), "Fail", "{at}");
            assert_eq!(str_at(webhook, "/reinvocationPolicy"), "IfNeeded", "{at}");
            assert_eq!(
                webhook["rules"],
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["pods"]}]),
                "{at}"
            );
            // Never the control plane's own namespace.
            let namespaces = requirements(&webhook["namespaceSelector"]);
            let (operator, excluded) = &namespaces["kubernetes.io/metadata.name"];
            assert_eq!(operator, "NotIn", "{at}");
            assert!(excluded.iter().any(|n| n == "isthmus-system"), "{at}");
        }
        let selectors: Vec<_> = webhooks
            .iter()
            .map(|w| {
                (
                    requirements(&w["namespaceSelector"]),
                    requirements(&w["objectSelector"]),
                )
            })
            .collect();
        let not_false = BTreeMap::from([(
            "sidecar.istio.io/inject".to_owned(),
            req("NotIn", &["false"]),
        )]);
        let own = (
            "kubernetes.io/metadata.name".to_owned(),
            req("NotIn", &["isthmus-system"]),
        );
        assert_eq!(
            selectors[0],
            (
                BTreeMap::from([
                    ("istio-injection".to_owned(), req("In", &["enabled"])),
                    own.clone(),
                ]),
                not_false.clone()
            ),
            "{kustomization}: istio-injection=enabled namespaces"
        );
        assert_eq!(
            selectors[1],
            (
                BTreeMap::from([
                    ("isthmus.io/inject".to_owned(), req("In", &["enabled"])),
                    ("istio-injection".to_owned(), req("DoesNotExist", &[])),
                    own,
                ]),
                not_false
            ),
            "{kustomization}: isthmus.io/inject=enabled namespaces"
        );
        assert_eq!(
            selectors[2],
            (
                BTreeMap::from([
                    ("istio-injection".to_owned(), req("DoesNotExist", &[])),
                    ("isthmus.io/inject".to_owned(), req("DoesNotExist", &[])),
                    (
                        "kubernetes.io/metadata.name".to_owned(),
                        req("NotIn", &["isthmus-system", "kube-system", "kube-public"])
                    ),
                ]),
                BTreeMap::from([("sidecar.istio.io/inject".to_owned(), req("In", &["true"]))])
            ),
            "{kustomization}: pods that ask for it elsewhere"
        );

        // Validation of the nine kinds isthmusd reads; isthmusd down never blocks kubectl.
        let validator_name =
            flag(args, "--validator-webhook-config").unwrap_or(DEFAULT_VALIDATOR_CONFIG);
        let validator = object(&docs, "ValidatingWebhookConfiguration", "", validator_name);
        let webhooks = array_at(validator, "/webhooks");
        assert_eq!(webhooks.len(), 1, "{kustomization}");
        let webhook = &webhooks[0];
        assert_eq!(str_at(webhook, "/name"), "validation.isthmus.io");
        calls_isthmusd(webhook, "/validate");
        assert_eq!(
            str_at(webhook, "/failurePolicy"),
            "Ignore",
            "{kustomization}"
        );
        let mut validated = BTreeSet::new();
        for rule in array_at(webhook, "/rules") {
            assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]), "{rule}");
            assert_eq!(rule["apiVersions"], json!(["*"]), "{rule}");
            for group in array_at(rule, "/apiGroups") {
                for resource in array_at(rule, "/resources") {
                    let new = validated.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                    ));
                    assert!(new, "{kustomization}: {group}/{resource} twice");
                }
            }
        }
        let read: BTreeSet<(String, String)> = CONFIG_KINDS
            .iter()
            .map(|(_, group, plural)| ((*group).to_owned(), (*plural).to_owned()))
            .collect();
        assert_eq!(
            validated, read,
            "{kustomization}: exactly the kinds isthmusd reads"
        );
    }
}

/// The image every container runs: the one `manifests/Dockerfile` builds, at the workspace's
/// version.
fn image() -> String {
    format!("ghcr.io/isthmus-mesh/isthmus:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn every_container_is_hardened_probed_and_bounded() {
    let dockerfile = std::fs::read_to_string(workspace().join("manifests/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("-t {} .", image())),
        "{dockerfile}"
    );
    // The injected init container (`isthmus-proxy capture`) runs iptables-restore from it.
    let runtime_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        runtime_stage.contains("install -y --no-install-recommends ca-certificates iptables"),
        "the image must carry iptables for the capture init container:\n{dockerfile}"
    );
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        let deployments: Vec<&Value> = of_kind(&docs, "Deployment").collect();
        assert_eq!(
            deployments.len(),
            4,
            "{kustomization}: isthmusd, two federation gateways and the ingress gateway"
        );
        for deployment in deployments {
            let name = str_at(deployment, "/metadata/name");
            // Proxies themselves (the gateways) opt out of injection; isthmusd's namespace is
            // never injected.
            if name != "isthmusd" {
                assert_eq!(
                    deployment.pointer("/spec/template/metadata/labels/sidecar.istio.io~1inject"),
                    Some(&Value::String("false".into())),
                    "{kustomization}: {name} must not get a sidecar"
                );
            }
            for c in array_at(deployment, "/spec/template/spec/containers") {
                let at = format!("{kustomization}: {name}/{}", str_at(c, "/name"));
                assert_eq!(str_at(c, "/image"), image(), "{at}");
                let sc = c.pointer("/securityContext").unwrap_or(&Value::Null);
                assert_eq!(
                    sc.pointer("/runAsNonRoot"),
                    Some(&Value::Bool(true)),
                    "{at}"
                );
                assert!(
                    sc.pointer("/runAsUser")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        > 0,
                    "{at}"
                );
                assert_eq!(
                    sc.pointer("/readOnlyRootFilesystem"),
                    Some(&Value::Bool(true)),
                    "{at}"
                );
                assert_eq!(
                    sc.pointer("/allowPrivilegeEscalation"),
                    Some(&Value::Bool(false)),
                    "{at}"
                );
                assert_eq!(
                    array_at(sc, "/capabilities/drop"),
                    [Value::from("ALL")],
                    "{at}"
                );
                assert!(array_at(sc, "/capabilities/add").is_empty(), "{at}");
                assert_eq!(str_at(sc, "/seccompProfile/type"), "RuntimeDefault", "{at}");
                assert!(
                    c.pointer("/readinessProbe").is_some(),
                    "{at}: readiness probe"
                );
                assert!(
                    c.pointer("/livenessProbe").is_some(),
                    "{at}: liveness probe"
                );
                assert!(c.pointer("/resources/requests/cpu").is_some(), "{at}");
                assert!(c.pointer("/resources/requests/memory").is_some(), "{at}");
                assert!(c.pointer("/resources/limits/memory").is_some(), "{at}");
            }
        }
    }
}

/// The local mesh's gateway that a `ServiceMeshPeer` names: its Deployment's pod spec, found
/// through the Service in the root namespace and its selector.
fn gateway_pod<'a>(docs: &'a [Value], service: &str) -> &'a Value {
    let svc = object(docs, "Service", "istio-system", service);
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .unwrap();
    assert!(!selector.is_empty());
    let matching: Vec<&Value> = of_kind(docs, "Deployment")
        .filter(|d| str_at(d, "/metadata/namespace") == "istio-system")
        .filter(|d| {
            selector
                .iter()
                .all(|(k, v)| d.pointer(&format!("/spec/template/metadata/labels/{k}")) == Some(v))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "Service {service} selects one Deployment"
    );
    let pod = matching[0].pointer("/spec/template/spec").unwrap();
    // The gateway listens where the Service sends traffic: its one port, 15443.
    let ports = array_at(svc, "/spec/ports");
    assert_eq!(ports.len(), 1, "{svc}");
    assert_eq!(
        ports[0].pointer("/port").and_then(Value::as_u64),
        Some(15443)
    );
    assert_eq!(
        resolve_port(&pod["containers"][0], &ports[0]["targetPort"]),
        Some(15443)
    );
    pod
}

/// (trust domain, docs) of the mesh an overlay installs.
fn mesh(name: &str) -> (String, Vec<Value>) {
    let docs = rendered(&format!("manifests/examples/{name}"));
    let isthmusd = object(&docs, "Deployment", "isthmus-system", "isthmusd");
    let container = &isthmusd["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        flag(array_at(container, "/args"), "--trust-domain"),
        Some("$(TRUST_DOMAIN)")
    );
    let td = env(container, "TRUST_DOMAIN").unwrap().to_owned();
    (td, docs)
}

#[test]
fn overlays_name_the_gateways_and_identities_their_peers_expect() {
    let meshes = BTreeMap::from([("red", mesh("red")), ("green", mesh("green"))]);
    assert_eq!(meshes["red"].0, "red.local");
    assert_eq!(meshes["green"].0, "green.local");
    for (local, peer) in [("red", "green"), ("green", "red")] {
        let (td, docs) = &meshes[local];
        let (peer_td, peer_docs) = &meshes[peer];
        let smp = object(docs, "ServiceMeshPeer", "istio-system", peer);
        assert_eq!(str_at(smp, "/spec/security/trustDomain"), peer_td);
        // The peer's root, where certificateChain says, under Maistra's key.
        assert_eq!(
            str_at(smp, "/spec/security/certificateChain/kind"),
            "ConfigMap"
        );
        let roots = object(
            docs,
            "ConfigMap",
            "istio-system",
            str_at(smp, "/spec/security/certificateChain/name"),
        );
        assert!(roots.pointer("/data/root-cert.pem").is_some(), "{roots}");

        for side in ["ingress", "egress"] {
            let service = str_at(smp, &format!("/spec/gateways/{side}/name"));
            let pod = gateway_pod(docs, service);
            let account = str_at(pod, "/serviceAccountName");
            object(docs, "ServiceAccount", "istio-system", account);
            let c = &pod["containers"][0];
            let args = array_at(c, "/args");
            let at = format!("{local}: gateway {service}");
            assert_eq!(flag(args, "--role"), Some("federation"), "{at}");
            // Its node id names its Pod (isthmusd's workloads are Pods) in the root namespace.
            assert_eq!(
                flag(args, "--node-id"),
                Some(
                    "router~$(POD_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
                ),
                "{at}"
            );
            assert_eq!(
                flag(args, "--identity"),
                Some("spiffe://$(TRUST_DOMAIN)/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"),
                "{at}"
            );
            assert_eq!(env(c, "TRUST_DOMAIN"), Some(td.as_str()), "{at}");
            let field = |name: &str| {
                array_at(c, "/env")
                    .iter()
                    .find(|e| str_at(e, "/name") == name)
                    .map(|e| str_at(e, "/valueFrom/fieldRef/fieldPath").to_owned())
            };
            assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"), "{at}");
            assert_eq!(
                field("POD_NAMESPACE").as_deref(),
                Some("metadata.namespace"),
                "{at}"
            );
            assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"), "{at}");
            assert_eq!(
                field("SERVICE_ACCOUNT").as_deref(),
                Some("spec.serviceAccountName"),
                "{at}"
            );
            assert_eq!(
                flag(args, "--ca-address"),
                Some("isthmusd.isthmus-system.svc:15012"),
                "{at}"
            );
            // The CA's credential: a token projected for isthmusd's TokenReview audience.
            let token_file = flag(args, "--token-file").unwrap();
            let projected = array_at(pod, "/volumes")
                .iter()
                .flat_map(|v| array_at(v, "/projected/sources"))
                .find_map(|s| s.pointer("/serviceAccountToken"))
                .unwrap_or_else(|| panic!("{at}: no projected token"));
            assert_eq!(
                str_at(projected, "/audience"),
                isthmus_controlplane::auth::token_review::AUDIENCE,
                "{at}"
            );
            assert!(token_file.ends_with(str_at(projected, "/path")), "{at}");
            // The mesh root, from the ConfigMap docs/kubernetes.md has operators create.
            let root_volume = array_at(pod, "/volumes")
                .iter()
                .find(|v| str_at(v, "/configMap/name") == "isthmus-ca-root-cert")
                .unwrap_or_else(|| panic!("{at}: no isthmus-ca-root-cert volume"));
            let mount = array_at(c, "/volumeMounts")
                .iter()
                .find(|m| str_at(m, "/name") == str_at(root_volume, "/name"))
                .unwrap();
            assert_eq!(
                flag(args, "--root-cert"),
                Some(format!("{}/root-cert.pem", str_at(mount, "/mountPath")).as_str()),
                "{at}"
            );
            if side == "ingress" {
                let svc = object(docs, "Service", "istio-system", service);
                assert_eq!(str_at(svc, "/spec/type"), "LoadBalancer", "{at}");
            }
        }

        // The peer admits this mesh's egress gateway by its identity.
        let egress = str_at(smp, "/spec/gateways/egress/name");
        let account = str_at(gateway_pod(docs, egress), "/serviceAccountName");
        let peer_smp = object(peer_docs, "ServiceMeshPeer", "istio-system", local);
        assert_eq!(
            str_at(peer_smp, "/spec/security/clientID"),
            format!("{td}/ns/istio-system/sa/{account}"),
            "{peer}'s ServiceMeshPeer {local} must admit {local}'s egress gateway"
        );
    }
}

#[test]
fn overlays_carry_the_example_federation_yaml() {
    for mesh in ["red", "green"] {
        let docs = rendered(&format!("manifests/examples/{mesh}"));
        let mut ours: Vec<String> = docs
            .iter()
            .filter(|d| str_at(d, "/apiVersion").starts_with("federation.maistra.io/"))
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        let example = std::fs::read_to_string(
            workspace().join(format!("examples/two-meshes/{mesh}/federation.yaml")),
        )
        .unwrap();
        let mut theirs: Vec<String> = documents(&example)
            .iter()
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{mesh}");
        // Isthmus's local-only kinds never reach a cluster.
        assert!(
            docs.iter()
                .all(|d| !str_at(d, "/apiVersion").starts_with("local.isthmus.dev/"))
        );
    }
}

/// The ingress gateway: an `isthmus-proxy --role ingress` that Istio's `Gateway` selectors
/// (`istio: ingressgateway`) pick, binding the servers' ports 80 and 443 without root, behind a
/// Service that exposes those ports.
#[test]
fn the_ingress_gateway_is_what_istio_gateways_select_and_binds_its_ports() {
    for kustomization in KUSTOMIZATIONS {
        let docs = rendered(kustomization);
        let deployment = of_kind(&docs, "Deployment")
            .find(|d| str_at(d, "/metadata/name") == "istio-ingressgateway")
            .unwrap_or_else(|| panic!("{kustomization}: no istio-ingressgateway Deployment"));
        let template = deployment.pointer("/spec/template").unwrap();
        assert_eq!(
            str_at(template, "/metadata/labels/istio"),
            "ingressgateway",
            "{kustomization}"
        );
        let container = &array_at(template, "/spec/containers")[0];
        let args: Vec<&str> = array_at(container, "/args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&"--role=ingress"),
            "{kustomization}: {args:?}"
        );
        assert!(
            args.iter().any(|a| a.starts_with("--node-id=router~")),
            "{kustomization}: {args:?}"
        );
        let sysctls = array_at(template, "/spec/securityContext/sysctls");
        assert!(
            sysctls
                .iter()
                .any(|s| s["name"] == "net.ipv4.ip_unprivileged_port_start" && s["value"] == "0"),
            "{kustomization}: ports 80 and 443 need unprivileged binding: {sysctls:?}"
        );
        let named: Vec<(&str, u64)> = array_at(container, "/ports")
            .iter()
            .map(|p| (str_at(p, "/name"), p["containerPort"].as_u64().unwrap()))
            .collect();
        let service = of_kind(&docs, "Service")
            .find(|s| str_at(s, "/metadata/name") == "istio-ingressgateway")
            .unwrap();
        assert_eq!(
            str_at(service, "/spec/selector/app"),
            str_at(template, "/metadata/labels/app")
        );
        for port in array_at(service, "/spec/ports") {
            let target = str_at(port, "/targetPort");
            let number = port["port"].as_u64().unwrap();
            // The Service's port is the Gateway's, and the pod listens on that same number.
            assert!(
                named.contains(&(target, number)),
                "{kustomization}: Service port {number} -> {target}, pod ports {named:?}"
            );
        }
    }
}
