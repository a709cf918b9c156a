#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::workloads::{Outcome, inject_document};
use super::*;

fn settings() -> InjectSettings {
    InjectSettings::new("cluster.local".parse().unwrap(), "isthmus-system")
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "app",
                "image": "nginx",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                "startupProbe": {"exec": {"command": ["true"]}},
            }],
        },
    })
}

fn injected(pod: &Value) -> Value {
    match inject_pod(pod, "shop", &settings()).unwrap() {
        Injection::Injected(pod) => pod,
        Injection::Skipped(reason) => panic!("skipped: {reason}"),
    }
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[test]
fn a_pod_gets_the_capture_init_container_the_native_sidecar_volumes_and_annotation() {
    let pod = injected(&pod());
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], INIT_CONTAINER);
    assert_eq!(init[0]["args"][0], "capture");
    assert_eq!(
        init[0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let sidecar = &init[1];
    assert_eq!(sidecar["name"], PROXY_CONTAINER);
    assert_eq!(sidecar["restartPolicy"], "Always");
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
    assert_eq!(
        env(sidecar, "ISTHMUS_IDENTITY"),
        "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)"
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(
        volumes[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "isthmus-ca"
    );
    assert_eq!(volumes[1]["configMap"]["name"], "isthmus-ca-root-cert");
    assert!(pod["metadata"]["annotations"][STATUS_ANNOTATION].is_string());
    // The application container itself is still the only container.
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn http_and_tcp_probes_go_through_the_status_port_and_exec_probes_stay() {
    let pod = injected(&pod());
    let app = &pod["spec"]["containers"][0];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "periodSeconds": 5})
    );
    assert_eq!(
        app["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/app/livez", "port": 15020, "scheme": "HTTP"}, "timeoutSeconds": 3})
    );
    assert_eq!(app["startupProbe"], json!({"exec": {"command": ["true"]}}));
    let probers: Value = serde_json::from_str(env(
        &pod["spec"]["initContainers"][1],
        "ISTHMUS_KUBE_APP_PROBERS",
    ))
    .unwrap();
    assert_eq!(
        probers,
        json!({
            "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 1},
            "/app-health/app/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
        })
    );
}

#[test]
fn a_probe_the_sidecar_could_not_send_is_left_to_the_kubelet() {
    let mut pod = pod();
    pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = json!("/health check");
    let injected = injected(&pod);
    assert_eq!(
        injected["spec"]["containers"][0]["readinessProbe"],
        pod["spec"]["containers"][0]["readinessProbe"]
    );
}

#[test]
fn the_rewrite_annotation_false_keeps_the_probes() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({probes::REWRITE_ANNOTATION: "false"});
    let injected = injected(&pod);
    assert_eq!(
        injected["spec"]["containers"][0]["readinessProbe"],
        pod["spec"]["containers"][0]["readinessProbe"]
    );
}

#[test]
fn opted_out_host_network_control_plane_and_injected_pods_are_skipped() {
    let s = settings();
    let mut out = pod();
    out["metadata"]["labels"][policy::INJECT_LABEL] = json!("false");
    assert_eq!(
        inject_pod(&out, "shop", &s).unwrap(),
        Injection::Skipped(SkipReason::OptedOut)
    );
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(
        inject_pod(&host, "shop", &s).unwrap(),
        Injection::Skipped(SkipReason::HostNetwork)
    );
    assert!(matches!(
        inject_pod(&pod(), "isthmus-system", &s).unwrap(),
        Injection::Skipped(SkipReason::ExcludedNamespace(_))
    ));
    let once = injected(&pod());
    assert_eq!(
        inject_pod(&once, "shop", &s).unwrap(),
        Injection::Skipped(SkipReason::AlreadyInjected)
    );
    // A label "true" is no reason to skip.
    let mut opted_in = pod();
    opted_in["metadata"]["labels"][policy::INJECT_LABEL] = json!("true");
    assert!(matches!(
        inject_pod(&opted_in, "shop", &s).unwrap(),
        Injection::Injected(_)
    ));
}

#[test]
fn the_patch_turns_the_pod_into_the_injected_pod() {
    let original = pod();
    let injected = injected(&original);
    let patch = json_patch::diff(&original, &injected);
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched, injected);
}

#[test]
fn an_existing_init_container_list_gets_insertions_not_a_rewrite() {
    let mut original = pod();
    original["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "db-migrate", "args": ["up"]}]);
    let injected = injected(&original);
    let patch = patch::patch(&original, &injected);
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched, injected);
    let init_ops: Vec<String> = serde_json::to_value(&patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| {
            op["path"]
                .as_str()
                .unwrap()
                .starts_with("/spec/initContainers")
        })
        .map(|op| {
            format!(
                "{} {}",
                op["op"].as_str().unwrap(),
                op["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        init_ops,
        ["add /spec/initContainers/0", "add /spec/initContainers/0"]
    );
    assert_eq!(patched["spec"]["initContainers"][2]["name"], "migrate");
}

#[test]
fn capture_annotations_become_flags_and_bad_ones_name_the_annotation() {
    let mut pod = pod();
    pod["metadata"]["annotations"] = json!({
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432, 6379",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/12",
    });
    let init = &injected(&pod)["spec"]["initContainers"][0]["args"];
    let args: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--exclude-outbound-ports=5432,6379"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--include-outbound-ip-ranges=10.96.0.0/12"),
        "{args:?}"
    );

    // An empty include list means "none", as in Istio, and is passed on as such.
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/includeOutboundIPRanges"] = json!("");
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInterfaces"] = json!("eth1");
    let init = &injected(&pod)["spec"]["initContainers"][0]["args"];
    let args: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--include-outbound-ip-ranges="), "{args:?}");
    assert!(args.contains(&"--exclude-interfaces=eth1"), "{args:?}");
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInterfaces"] =
        json!("eth1 -j ACCEPT");
    let error = inject_pod(&pod, "shop", &settings()).unwrap_err();
    assert!(
        error.reason.contains("not a network interface name"),
        "{error}"
    );
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInterfaces"] = json!("eth1");

    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"] = json!("http");
    let error = inject_pod(&pod, "shop", &settings()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "metadata.annotations[\"traffic.sidecar.istio.io/excludeInboundPorts\"]: \"http\" is not a port number"
    );
}

#[test]
fn workloads_are_injected_in_their_pod_template_and_other_kinds_pass() {
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": pod()["spec"].clone()});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"template": template}});
    let Outcome::Injected(out) = inject_document(&deployment, &settings()).unwrap() else {
        panic!("not injected");
    };
    assert_eq!(
        out["spec"]["template"]["spec"]["initContainers"][1]["name"],
        PROXY_CONTAINER
    );
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
        "spec": {"jobTemplate": {"spec": {"template": template}}}});
    let Outcome::Injected(out) = inject_document(&cron, &settings()).unwrap() else {
        panic!("not injected");
    };
    assert_eq!(
        out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1]["name"],
        PROXY_CONTAINER
    );
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [cron.clone(), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}]});
    let Outcome::Injected(out) = inject_document(&list, &settings()).unwrap() else {
        panic!("not injected");
    };
    assert_eq!(
        out["items"][0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1]["name"],
        PROXY_CONTAINER
    );
    assert_eq!(out["items"][1], list["items"][1]);
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    assert_eq!(
        inject_document(&config_map, &settings()).unwrap(),
        Outcome::NotAWorkload
    );
    let broken = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": "nginx"}}}});
    let error = inject_document(&broken, &settings()).unwrap_err();
    assert_eq!(error.path, "spec.template.spec.containers");
}

#[test]
fn a_pod_asking_for_dns_capture_gets_the_rule_and_the_dns_proxy() {
    let plain = injected(&pod());
    let init = &plain["spec"]["initContainers"];
    assert!(!init[0]["args"].to_string().contains("--capture-dns"));
    assert!(!init[1]["env"].to_string().contains("ISTHMUS_DNS_ADDR"));

    let mut asking = pod();
    asking["metadata"]["annotations"] =
        json!({"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"});
    let pod = injected(&asking);
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert!(
        init[0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--capture-dns")),
        "{}",
        init[0]
    );
    assert_eq!(env(&init[1], "ISTHMUS_DNS_ADDR"), "127.0.0.1:15053");
}
