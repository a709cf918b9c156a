//! Every field of every claimed kind, as Istio's and Maistra's published CRDs define it
//! (`api/schema/published.json`): a valid document that sets it is accepted, or refused with
//! "not supported by Isthmus" at the field (or at a field around it). Never "unknown field",
//! never "invalid". Every value of every enum is tried.
//!
//! The outcome is the field table of `docs/config-fields.md`; the test fails when the file
//! differs. `ISTHMUS_BLESS=1 cargo test -p isthmus-api --test field_coverage` rewrites it.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::fmt::Write as _;

use isthmus_api::published::{self, SchemaNode};
use isthmus_api::{Kind, from_value};
use serde_json::{Value, json};

/// A valid document of `kind` that sets as little as Istio or Maistra requires.
fn base(kind: Kind) -> Value {
    let (group, name, spec) = match kind {
        Kind::ServiceEntry => (
            "networking.istio.io/v1",
            "ServiceEntry",
            json!({"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                   "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
        ),
        Kind::WorkloadEntry => (
            "networking.istio.io/v1",
            "WorkloadEntry",
            json!({"address": "10.0.0.1"}),
        ),
        Kind::VirtualService => (
            "networking.istio.io/v1",
            "VirtualService",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
        Kind::DestinationRule => (
            "networking.istio.io/v1",
            "DestinationRule",
            json!({"host": "reviews"}),
        ),
        Kind::Gateway => (
            "networking.istio.io/v1",
            "Gateway",
            json!({"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                "hosts": ["*"]}]}),
        ),
        Kind::PeerAuthentication => ("security.istio.io/v1", "PeerAuthentication", json!({})),
        Kind::AuthorizationPolicy => ("security.istio.io/v1", "AuthorizationPolicy", json!({})),
        Kind::RequestAuthentication => ("security.istio.io/v1", "RequestAuthentication", json!({})),
        Kind::ServiceMeshPeer => (
            "federation.maistra.io/v1",
            "ServiceMeshPeer",
            json!({"remote": {"addresses": ["green-ingress.example.com"]},
                   "gateways": {"ingress": {"name": "red-ingress"}, "egress": {"name": "red-egress"}},
                   "security": {"trustDomain": "green.local",
                                "clientID": "green.local/ns/green-mesh/sa/green-egress-service-account",
                                "certificateChain": {"kind": "ConfigMap", "name": "green-ca-root-cert"}}}),
        ),
        Kind::ExportedServiceSet => ("federation.maistra.io/v1", "ExportedServiceSet", json!({})),
        Kind::ImportedServiceSet => ("federation.maistra.io/v1", "ImportedServiceSet", json!({})),
        Kind::ConfigMap => unreachable!("Kubernetes' kind, not covered here"),
    };
    json!({"apiVersion": group, "kind": name,
           "metadata": {"name": "sample", "namespace": "default"}, "spec": spec})
}

/// A new list item where Istio or Maistra needs more than `{}` for it to be valid.
fn new_item(kind: Kind, list: &str) -> Value {
    let route = json!([{"destination": {"host": "reviews"}}]);
    match (kind, list) {
        (Kind::VirtualService, "spec.tcp") => json!({"route": route}),
        (Kind::VirtualService, "spec.tls") => {
            json!({"match": [{"sniHosts": ["reviews"]}], "route": route})
        }
        (_, "spec.http[].route" | "spec.tcp[].route" | "spec.tls[].route") => {
            json!({"destination": {"host": "reviews"}})
        }
        (Kind::DestinationRule, "spec.subsets") => {
            json!({"name": "v1", "labels": {"version": "v1"}})
        }
        (Kind::ServiceEntry, "spec.ports") => json!({"number": 8080, "name": "http"}),
        (Kind::DestinationRule, list) if list.ends_with("portLevelSettings") => {
            json!({"port": {"number": 8080}})
        }
        (Kind::DestinationRule, list) if list.ends_with("localityLbSetting.failover") => {
            json!({"from": "us-east1", "to": "us-west1"})
        }
        (Kind::ExportedServiceSet, "spec.exportRules") => {
            json!({"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "ratings"}})
        }
        (Kind::ImportedServiceSet, "spec.importRules") => {
            json!({"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "ratings"}})
        }
        (Kind::RequestAuthentication, "spec.jwtRules") => {
            json!({"issuer": "https://issuer.example.com", "jwks": JWKS})
        }
        (Kind::AuthorizationPolicy, "spec.rules[].when") => {
            json!({"key": "request.headers[x-user]", "values": ["alice"]})
        }
        _ => json!({}),
    }
}

/// The object holding the field at `path` (`spec.subsets[].trafficPolicy.tls.mode`: the `tls`
/// of the first subset).
fn parent_mut<'a>(doc: &'a mut Value, path: &str) -> &'a mut Value {
    let parts: Vec<&str> = path.split('.').collect();
    let mut node = doc;
    for part in &parts[..parts.len() - 1] {
        node = match part.strip_suffix("[]") {
            Some(list) => &mut node[list][0],
            None => &mut node[*part],
        };
    }
    node
}

/// Changes that make the document valid again once `path` is set (Istio's one-of rules).
fn fix_up(kind: Kind, path: &str, doc: &mut Value) {
    let spec = &mut doc["spec"];
    match kind {
        Kind::VirtualService => {
            let http = &mut spec["http"][0];
            let one_of = ["route", "redirect", "directResponse", "delegate"];
            if let Some(chosen) = one_of
                .iter()
                .find(|f| path.starts_with(&format!("spec.http[].{f}")))
                && *chosen != "route"
            {
                http.as_object_mut().unwrap().remove("route");
            }
            // A fault's abort needs a status, its delay a fixed delay.
            let fault = &mut http["fault"];
            if path.starts_with("spec.http[].fault.abort.percentage") {
                fault["abort"]["httpStatus"] = json!(503);
            }
            if path.starts_with("spec.http[].fault.delay.percent") {
                fault["delay"]["fixedDelay"] = json!("1s");
            }
            // Istio's validation wants the delegate's name.
            if path.starts_with("spec.http[].delegate") && http["delegate"]["name"].is_null() {
                http["delegate"]["name"] = json!("reviews-routes");
            }
            if path.starts_with("spec.http[].route[].weight") {
                http["route"][0]["weight"] = json!(100);
            }
        }
        Kind::DestinationRule if path.contains("localityLbSetting.distribute[]") => {
            // Istio's rule: the shares of a `to` add up to 100.
            let item = parent_mut(doc, path);
            item["to"] = json!({"us-west1/*": 100});
            if item["from"].is_null() {
                item["from"] = json!("us-east1/*");
            }
        }
        Kind::DestinationRule if path.ends_with("tls.credentialName") => {
            // A Secret's certificate is for TLS origination.
            parent_mut(doc, path)["mode"] = json!("SIMPLE");
        }
        Kind::DestinationRule if path.ends_with("tls.mode") => {
            // Istio: MUTUAL presents a certificate; the files are not ISTIO_MUTUAL's.
            let tls = parent_mut(doc, path);
            if tls["mode"] == "MUTUAL" {
                tls["clientCertificate"] = json!("/etc/certs/cert.pem");
                tls["privateKey"] = json!("/etc/certs/key.pem");
            }
        }
        Kind::Gateway => gateway_fix_up(path, &mut spec["servers"][0]),
        Kind::RequestAuthentication if path.ends_with("jwksUri") => {
            // The inline keys would take precedence over the URL.
            spec["jwtRules"][0].as_object_mut().unwrap().remove("jwks");
        }
        Kind::PeerAuthentication if path.starts_with("spec.portLevelMtls") => {
            spec["selector"] = json!({"matchLabels": {"app": "reviews"}});
        }
        Kind::AuthorizationPolicy if path == "spec.action" && spec["action"] == "CUSTOM" => {
            spec["provider"] = json!({"name": "ext-authz"});
        }
        Kind::AuthorizationPolicy if path.starts_with("spec.provider") => {
            spec["action"] = json!("CUSTOM");
        }
        Kind::ExportedServiceSet | Kind::ImportedServiceSet => {
            let list = if kind == Kind::ExportedServiceSet {
                "exportRules"
            } else {
                "importRules"
            };
            if path.contains("labelSelector") {
                let rule = &mut spec[list][0];
                rule["type"] = json!("LabelSelector");
                rule.as_object_mut().unwrap().remove("nameSelector");
            }
            if path == "spec.importRules[].importAsLocal" {
                // Maistra merges such an import with the local service of the alias.
                spec[list][0]["nameSelector"]["alias"] =
                    json!({"namespace": "bookinfo", "name": "ratings"});
            }
            // Maistra's locality is region, then zone, then subzone.
            if path.starts_with("spec.locality.") {
                let locality = spec["locality"].as_object_mut().unwrap();
                for level in ["region", "zone"] {
                    locality.entry(level).or_insert(json!("us-east1"));
                    if path.ends_with(level) {
                        break;
                    }
                }
            }
        }
        _ => {}
    }
}

/// A gateway server made valid for the TLS field or protocol at `path`: HTTPS terminates with
/// files (MUTUAL with the clients' roots), TLS passes through.
fn gateway_fix_up(path: &str, server: &mut Value) {
    let protocol = server["port"]["protocol"]
        .as_str()
        .unwrap()
        .to_ascii_uppercase();
    let tls_field =
        path.starts_with("spec.servers[].tls") && path != "spec.servers[].tls.httpsRedirect";
    if !tls_field && protocol != "HTTPS" && protocol != "TLS" {
        return;
    }
    let passthrough = server["tls"]["mode"] == "PASSTHROUGH" || (!tls_field && protocol == "TLS");
    if passthrough {
        server["port"]["protocol"] = json!("TLS");
        server["tls"]["mode"] = json!("PASSTHROUGH");
        return;
    }
    server["port"]["protocol"] = json!("HTTPS");
    let tls = &mut server["tls"];
    let from_secret = path.ends_with("tls.credentialName");
    for (field, file) in [
        ("serverCertificate", "/etc/certs/cert.pem"),
        ("privateKey", "/etc/certs/key.pem"),
    ] {
        if tls[field].is_null() && !from_secret {
            tls[field] = json!(file);
        }
    }
    if path.ends_with("subjectAltNames") && tls["mode"].is_null() {
        tls["mode"] = json!("MUTUAL");
    }
    if tls["mode"] == "MUTUAL" && tls["caCertificates"].is_null() && !from_secret {
        tls["caCertificates"] = json!("/etc/certs/ca.pem");
    }
}

/// A JWKS document with one RSA key.
const JWKS: &str = r#"{"keys": [{"kty": "RSA", "e": "AQAB", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}]}"#;

/// The port protocols Istio knows (its `pkg/config/protocol`).
const ISTIO_PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "HTTP2",
    "GRPC",
    "GRPC-WEB",
    "TCP",
    "TLS",
    "MONGO",
    "REDIS",
    "MYSQL",
    "UDP",
    "HTTP_PROXY",
    "http",
];

/// Values a field of this schema can hold, each one valid for Istio or Maistra.
fn samples(path: &str, node: &SchemaNode) -> Vec<Value> {
    if !node.values.is_empty() {
        return node.values.clone();
    }
    let leaf = path
        .trim_end_matches("[]")
        .rsplit('.')
        .next()
        .unwrap_or(path);
    if leaf == "protocol" && (path.starts_with("spec.ports") || path.starts_with("spec.servers")) {
        // A string in the schema; Istio's protocol names are its enum (case does not matter).
        return ISTIO_PROTOCOLS.iter().map(|p| json!(p)).collect();
    }
    let duration_named = [
        "Timeout", "timeout", "Interval", "interval", "Time", "Duration",
    ]
    .iter()
    .any(|suffix| leaf.ends_with(suffix))
        || leaf == "ttl";
    match node.value_type.as_deref() {
        Some("string") if node.duration || duration_named => vec![json!("5s")],
        Some("string") => vec![json!(string_sample(path, leaf))],
        Some("integer") => vec![json!(integer_sample(leaf, node))],
        Some("number") => vec![json!(50.0)],
        Some("boolean") => vec![json!(true)],
        Some("array") => {
            let items = node.items.as_deref().unwrap();
            samples(&format!("{path}[]"), items)
                .into_iter()
                .take(1)
                .map(|v| json!([v]))
                .collect()
        }
        _ if node.int_or_string => vec![json!(8080)],
        Some("object") | None => {
            let value = match node.additional_properties.as_deref() {
                Some(values) => {
                    let key = if path.ends_with("portLevelMtls") {
                        "8080"
                    } else if path.to_ascii_lowercase().ends_with("headers") {
                        "x-user"
                    } else {
                        "app"
                    };
                    let sample = samples(&format!("{path}.*"), values)
                        .into_iter()
                        .next()
                        .unwrap_or(json!("v1"));
                    json!({key: sample})
                }
                None => json!({}),
            };
            vec![value]
        }
        Some(other) => panic!("{path}: schema type {other}"),
    }
}

fn string_sample(path: &str, leaf: &str) -> String {
    let sample = match leaf {
        "host" | "hosts" | "exportedHost" => "reviews.default.svc.cluster.local",
        "sniHosts" => "reviews",
        "address" | "addresses" if path.starts_with("spec.remote") => "green-ingress.example.com",
        "address" => "10.0.0.2",
        "addresses" | "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks"
        | "destinationSubnets" => "10.0.0.0/24",
        "namespace" | "namespaces" | "notNamespaces" | "sourceNamespace" | "exportTo" => "default",
        "principals" | "notPrincipals" => "cluster.local/ns/default/sa/sleep",
        "requestPrincipals" | "notRequestPrincipals" => "https://issuer.example.com/alice",
        "ports" | "notPorts" => "8080",
        "methods" | "notMethods" => "GET",
        "paths" | "notPaths" | "uri" | "prefix" | "path" => "/api",
        "regex" => "^/api.*",
        "key" => "request.headers[x-user]",
        "locality" => "us-east1/zone-a",
        "from" => "us-east1",
        "to" => "us-west1",
        "kind" => "ConfigMap",
        "operator" => "In",
        "type" => "NameSelector",
        "protocol" => "HTTP",
        "network" => "network-2",
        "scheme" => "https",
        "trustDomain" => "green.local",
        "clientID" => "green.local/ns/green-mesh/sa/green-egress-service-account",
        "domainSuffix" => "green-imports.local",
        "retryOn" => "5xx,connect-failure",
        "sni" => "api.example.com",
        "caCertificates" | "caCrl" => "/etc/certs/ca.pem",
        "clientCertificate" | "serverCertificate" => "/etc/certs/cert.pem",
        "privateKey" => "/etc/certs/key.pem",
        "credentialName" | "credentialNames" => "api-credentials",
        "serviceAccount" => "reviews",
        "grpcStatus" => "UNAVAILABLE",
        "issuer" => "https://issuer.example.com",
        "jwks" => JWKS,
        "jwksUri" | "jwks_uri" => "https://issuer.example.com/jwks.json",
        _ => "v1",
    };
    sample.to_owned()
}

fn integer_sample(leaf: &str, node: &SchemaNode) -> i64 {
    match leaf {
        "number" | "port" | "targetPort" | "portNumber" => 8080,
        "weight" => 100,
        "redirectCode" => 301,
        "status" | "httpStatus" => 503,
        "grpcStatus" => 14,
        "maxEjectionPercent" | "minHealthPercent" => 50,
        // Maglev's table is prime (Envoy's default size).
        "tableSize" => 65537,
        // Integers in the schema may be bounded (percentages, ports).
        _ => node.minimum.map_or(1, |m| (m as i64).max(1)),
    }
}

/// Sets `value` at `path` (`spec.http[].match[].uri.exact`), creating what is missing with the
/// fields the schema requires.
fn set(kind: Kind, doc: &mut Value, path: &str, value: Value) {
    let mut schema = published::spec_schema(kind).unwrap();
    let mut node = &mut doc["spec"];
    let mut walked = String::from("spec");
    let parts: Vec<&str> = path.split('.').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let (key, is_list) = match part.strip_suffix("[]") {
            Some(key) => (key, true),
            None => (*part, false),
        };
        walked.push('.');
        walked.push_str(key);
        schema = schema
            .properties
            .get(key)
            .or(schema.additional_properties.as_deref())
            .unwrap();
        let map = node.as_object_mut().unwrap();
        if last && !is_list {
            map.insert(key.to_owned(), value);
            return;
        }
        if !is_list {
            node = map
                .entry(key)
                .or_insert_with(|| with_required(&walked, schema, json!({})));
            continue;
        }
        let list = map.entry(key).or_insert_with(|| json!([]));
        let items = list.as_array_mut().unwrap();
        schema = schema.items.as_deref().unwrap();
        if items.is_empty() {
            items.push(with_required(&walked, schema, new_item(kind, &walked)));
        }
        walked.push_str("[]");
        node = &mut items[0];
    }
    unreachable!("{path}: a list is set whole, never an item of it");
}

/// `object` with each field the schema requires and it lacks.
fn with_required(path: &str, schema: &SchemaNode, mut object: Value) -> Value {
    for name in &schema.required {
        let child = &schema.properties[name];
        let child_path = format!("{path}.{name}");
        if object.get(name).is_none() {
            let sample = samples(&child_path, child).remove(0);
            let sample = if child.properties.is_empty() {
                sample
            } else {
                with_required(&child_path, child, sample)
            };
            object[name.as_str()] = sample;
        }
    }
    object
}

/// What Isthmus does with one field (or one value of an enum).
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Accepted,
    NotSupported(String),
}

/// Every field of `node` under `path`: leaves, lists of scalars, maps and empty messages.
fn fields<'a>(path: String, node: &'a SchemaNode, out: &mut Vec<(String, &'a SchemaNode)>) {
    let list_of_messages = node
        .items
        .as_deref()
        .is_some_and(|items| !items.properties.is_empty());
    if !node.properties.is_empty() {
        for (name, child) in &node.properties {
            fields(format!("{path}.{name}"), child, out);
        }
    } else if list_of_messages {
        let items = node.items.as_deref().unwrap();
        for (name, child) in &items.properties {
            fields(format!("{path}[].{name}"), child, out);
        }
    } else {
        out.push((path, node));
    }
}

fn try_field(kind: Kind, path: &str, value: Value) -> Result<Outcome, String> {
    let mut doc = base(kind);
    set(kind, &mut doc, path, value.clone());
    fix_up(kind, path, &mut doc);
    let concrete = path.replace("[]", "[0]");
    match from_value(doc.clone()) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) => {
            let errors = e.field_errors();
            // Every problem is an honest refusal, and one of them is at the field or around
            // it (`action: CUSTOM` also names the `provider` it needs).
            let on_field = errors
                .iter()
                .find(|f| concrete.starts_with(&f.path) || f.path.starts_with(&concrete));
            let honest = errors
                .iter()
                .all(|f| f.reason.contains("not supported by Isthmus"));
            if let (true, Some(on_field)) = (honest, on_field) {
                Ok(Outcome::NotSupported(on_field.path.clone()))
            } else {
                Err(format!("{path} = {value}: {e}\n    document: {doc}"))
            }
        }
    }
}

#[test]
fn every_published_field_is_accepted_or_not_supported_never_invalid() {
    let mut table = String::from(TABLE_HEADER);
    for (source, text) in published::sources() {
        writeln!(table, "- {source}: {text}").unwrap();
    }
    let mut failures = Vec::new();
    for (kind, group, name) in Kind::ALL {
        let Some(schema) = published::spec_schema(kind) else {
            continue;
        };
        let mut all = Vec::new();
        fields("spec".to_owned(), schema, &mut all);
        writeln!(table, "\n## {name} (`{group}`)\n").unwrap();
        table.push_str("| field | Isthmus |\n|---|---|\n");
        for (path, node) in all {
            let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let samples = samples(&path, node);
            let enumerated = samples.len() > 1;
            for value in samples {
                match try_field(kind, &path, value.clone()) {
                    Ok(outcome) => {
                        let label = match outcome {
                            Outcome::Accepted => "accepted".to_owned(),
                            Outcome::NotSupported(at) if at == path.replace("[]", "[0]") => {
                                "not supported".to_owned()
                            }
                            Outcome::NotSupported(at) => format!("not supported (`{at}`)"),
                        };
                        let shown = value.as_str().map_or(value.to_string(), str::to_owned);
                        outcomes.entry(label).or_default().push(shown);
                    }
                    Err(failure) => failures.push(failure),
                }
            }
            let cell = if enumerated {
                outcomes
                    .iter()
                    .map(|(label, values)| {
                        let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                        format!("{label}: {}", values.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                outcomes.keys().cloned().collect::<Vec<_>>().join("; ")
            };
            writeln!(table, "| `{path}` | {cell} |").unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} fields of the published APIs were called invalid:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config-fields.md");
    if std::env::var_os("ISTHMUS_BLESS").is_some() {
        std::fs::write(file, &table).unwrap();
    }
    let current = std::fs::read_to_string(file).unwrap_or_default();
    assert!(
        current == table,
        "docs/config-fields.md is stale: run ISTHMUS_BLESS=1 cargo test -p isthmus-api --test field_coverage"
    );
}

const TABLE_HEADER: &str = "\
# Fields of the Istio and Maistra APIs in Isthmus

Generated by `api/tests/field_coverage.rs` from the validator itself (`ISTHMUS_BLESS=1 cargo test
-p isthmus-api --test field_coverage`); the test fails when this page and the code disagree.
Each field of each kind's published CRD is set in a valid document: **accepted** means Isthmus
takes it, **not supported** means the document is refused with `<path>: not supported by
Isthmus` (at the field, or at the field around it, shown in brackets). Every value of an enum is
tried. No field is ever called unknown or invalid. How accepted fields behave is in
[config.md](config.md).

Schemas:
";

#[test]
fn unknown_fields_stay_unknown_and_every_problem_is_reported() {
    let mut doc = base(Kind::DestinationRule);
    doc["spec"]["trafficPolicy"] = json!({
        "loadBalancer": {"simple": "PASSTHROUGH", "zoneAwareLbSetting": {"enabled": true}},
        "connectionPool": {"tcp": {"maxConections": 1}},
        "proxyProtocol": {"version": "V1"},
    });
    doc["spec"]["subsets"] = json!([{"name": "v1"}, {"name": "v1"}]);
    let errors: Vec<String> = from_value(doc)
        .unwrap_err()
        .field_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported by Isthmus",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting: not supported by Isthmus",
        "spec.trafficPolicy.connectionPool.tcp.maxConections: unknown field; did you mean `maxConnections`?",
        "spec.trafficPolicy.proxyProtocol: not supported by Isthmus",
    ];
    for line in expected {
        assert!(errors.iter().any(|e| e == line), "{line} in {errors:#?}");
    }
    assert!(
        errors.iter().any(|e| e.starts_with("spec.subsets[1].name")),
        "the duplicate subset is reported with the rest: {errors:#?}"
    );
}
