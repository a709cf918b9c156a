//! The configuration API at the edge: real Istio/Maistra documents are accepted; every bad field
//! is reported with its path and reason.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use isthmus_api::{Resource, ResourceError, from_value};
use serde_json::{Value, json};

fn parse(v: Value) -> Result<Resource, ResourceError> {
    from_value(v)
}

/// The errors of `v`, as `path: reason` strings.
fn errors(v: Value) -> Vec<String> {
    match parse(v) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => {
            let fields = e.field_errors();
            if fields.is_empty() {
                vec![e.to_string()]
            } else {
                fields.iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn vs(spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "bookinfo"}, "spec": spec})
}

#[test]
fn istio_and_maistra_examples_are_accepted() {
    let docs = [
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "bookinfo", "resourceVersion": "123", "uid": "x"},
            "spec": {"hosts": ["reviews"], "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api"}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 75},
                           {"destination": {"host": "reviews", "subset": "v3"}, "weight": 25}],
                 "timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,connect-failure"},
                 "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-b"]}}}]}}),
        json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "reviews"},
            "spec": {"host": "reviews.bookinfo.svc.cluster.local",
                "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST",
                        "localityLbSetting": {"enabled": true, "failover": [{"from": "red", "to": "green"}]}},
                    "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 100},
                    "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "2s"}, "http": {"http2MaxRequests": 1000}},
                    "tls": {"mode": "ISTIO_MUTUAL"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "ratings"},
            "spec": {"hosts": ["ratings.bookinfo.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "127.0.0.1", "ports": {"http": 19080}, "labels": {"version": "v1"}, "locality": "red/zone-a"}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm1"},
            "spec": {"address": "127.0.0.2", "labels": {"app": "ratings"}, "serviceAccount": "ratings"}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "default"},
            "spec": {"mtls": {"mode": "STRICT"}}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "ratings"},
            "spec": {"selector": {"matchLabels": {"app": "ratings"}}, "action": "DENY",
                "rules": [{"from": [{"source": {"principals": ["red.local/ns/bookinfo/sa/productpage"]}}],
                           "to": [{"operation": {"methods": ["GET"], "paths": ["/ratings/*"], "ports": ["9080"]}}],
                           "when": [{"key": "request.headers[x-user]", "values": ["admin"]}]}]}}),
        json!({"apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer",
            "metadata": {"name": "green-mesh", "namespace": "red-mesh-system"},
            "spec": {"remote": {"addresses": ["ingress-red-mesh.green-mesh-system.svc.cluster.local"]},
                "gateways": {"ingress": {"name": "ingress-green-mesh"}, "egress": {"name": "egress-green-mesh"}},
                "security": {"trustDomain": "green-mesh.local",
                    "clientID": "green-mesh.local/ns/green-mesh-system/sa/egress-red-mesh-service-account",
                    "certificateChain": {"kind": "ConfigMap", "name": "green-mesh-ca-root-cert"}}}}),
        json!({"apiVersion": "federation.maistra.io/v1", "kind": "ExportedServiceSet",
            "metadata": {"name": "green-mesh", "namespace": "red-mesh-system"},
            "spec": {"exportRules": [
                {"type": "NameSelector", "nameSelector": {"namespace": "bookinfo", "name": "ratings", "alias": {"namespace": "bookinfo", "name": "red-ratings"}}},
                {"type": "LabelSelector", "labelSelector": {"namespace": "bookinfo", "selector": {"matchLabels": {"export-service": "true"}},
                    "aliases": [{"alias": {"namespace": "red-bookinfo"}}]}}]}}),
        json!({"apiVersion": "federation.maistra.io/v1", "kind": "ImportedServiceSet",
            "metadata": {"name": "red-mesh", "namespace": "green-mesh-system"},
            "spec": {"locality": {"region": "us-west"}, "importRules": [
                {"type": "NameSelector", "importAsLocal": true, "nameSelector": {"namespace": "bookinfo", "name": "ratings", "alias": {"namespace": "bookinfo"}}},
                {"type": "NameSelector", "nameSelector": {"namespace": "*", "name": "*"}}]}}),
    ];
    for doc in docs {
        let kind = doc["kind"].clone();
        let r = parse(doc).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(Value::from(r.kind().name()), kind);
    }
}

#[test]
fn bad_fields_are_reported_by_path() {
    let cases: Vec<(Value, &str)> = vec![
        // Istio fields Isthmus does not implement.
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "delegate": {"name": "m"}}]}),
            ),
            "spec.http[0]: exactly one of route, redirect, directResponse or delegate is required",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "fault": {"delay": {"fixedDelay": "1s", "exponentialDelay": "1s"}}}]}),
            ),
            "spec.http[0].fault.delay.exponentialDelay: not supported by Isthmus",
        ),
        (
            vs(json!({"hosts": ["r"], "tls": [{"match": []}]})),
            "spec.tls[0].match: at least one match (with sniHosts) is required",
        ),
        (
            vs(
                json!({"hosts": ["r"], "tls": [{"match": [{"sniHosts": ["other.example.com"]}],
                                              "route": [{"destination": {"host": "r"}}]}]}),
            ),
            "spec.tls[0].match[0].sniHosts[0]: \"other.example.com\" is not within the VirtualService's hosts",
        ),
        // Typos.
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "timeuot": "1s"}]}),
            ),
            "spec.http[0].timeuot: unknown field; did you mean `timeout`?",
        ),
        (
            vs(json!({"hosts": ["r"], "http": [{"route": [{"destination": {"hots": "r"}}]}]})),
            "spec.http[0].route[0].destination.hots: unknown field; did you mean `host`?",
        ),
        // Wrong types and values.
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "timeout": "soon"}]}),
            ),
            "spec.http[0].timeout: \"soon\" is not a duration",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "half"}]}]}),
            ),
            "spec.http[0].route[0].weight: invalid type",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [{"destination": {"host": "r"}}]}]}),
            ),
            "spec.http[0].match[0].uri",
        ),
        // Semantic rules.
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "a"}, "weight": 50}, {"destination": {"host": "b"}, "weight": 40}]}]}),
            ),
            "spec.http[0].route: weights add up to 90, not 100",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"match": [{"uri": {"regex": "(unclosed"}}], "route": [{"destination": {"host": "r"}}]}]}),
            ),
            "spec.http[0].match[0].uri.regex: invalid regular expression",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "redirect": {"uri": "/x"}}]}),
            ),
            "spec.http[0]: exactly one of route, redirect, directResponse or delegate",
        ),
        (
            vs(
                json!({"hosts": ["bad host!"], "http": [{"route": [{"destination": {"host": "r"}}]}]}),
            ),
            "spec.hosts[0]: \"bad host!\" is not a valid host",
        ),
        (
            vs(
                json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]}),
            ),
            "spec.http[0].retries.retryOn: \"sometimes\" is not a retry policy",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "x"}, "spec": {"mtls": {"mode": "MAYBE"}}}),
            "spec.mtls.mode: unknown variant `MAYBE`",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"}, "spec": {"action": "CUSTOM", "provider": {"name": "opa"}}}),
            "spec.provider: not supported by Isthmus",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"},
                "spec": {"rules": [{"when": [{"key": "request.regex.headers[x-user]", "values": ["a"]}]}]}}),
            "spec.rules[0].when[0].key: request.regex.headers[x-user] is not supported by Isthmus",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"},
                "spec": {"rules": [{"when": [{"key": "request.regex.headers[x-a]", "values": ["a.*"]}]}]}}),
            "spec.rules[0].when[0].key: request.regex.headers[x-a] is not supported by Isthmus",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x"},
                "spec": {"rules": [{"when": [{"key": "source.nmespace", "values": ["a"]}]}]}}),
            "spec.rules[0].when[0].key: \"source.nmespace\" is not an Istio condition key",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"},
                "spec": {"host": "r", "trafficPolicy": {"outlierDetection": {"consecutiveLocalOriginFailures": 5}}}}),
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: not supported by Isthmus",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"},
                "spec": {"host": "r", "subsets": [{"name": "v1"}, {"name": "v1"}]}}),
            "spec.subsets[1].name: duplicate subset \"v1\"",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "x"},
                "spec": {"hosts": ["a"], "ports": [{"number": 70000, "name": "p"}]}}),
            "spec.ports[0].number: port 70000 is not in 1-65535",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer", "metadata": {"name": "Green_Mesh"},
                "spec": {"remote": {"addresses": ["a"]}, "security": {}}}),
            "metadata.name: \"Green_Mesh\" is not a DNS label",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer", "metadata": {"name": "green"},
                "spec": {"remote": {"addresses": ["a"]}, "security": {"trustDomain": "Green.Local"}}}),
            "spec.security.trustDomain: invalid trust domain",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ServiceMeshPeer", "metadata": {"name": "green"},
                "spec": {"remote": {"addresses": ["a"]}, "security": {"trustDomain": "green.local",
                    "controlPlaneID": "blue.local/ns/isthmus-system/sa/isthmusd"}}}),
            "spec.security.controlPlaneID: \"blue.local/ns/isthmus-system/sa/isthmusd\" is not in the peer's trust domain",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ImportedServiceSet", "metadata": {"name": "red"},
                "spec": {"importRules": [{"type": "NameSelector", "importAsLocal": true, "nameSelector": {"name": "ratings"}}]}}),
            "spec.importRules[0].nameSelector.alias.namespace: importAsLocal requires a concrete alias namespace",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ImportedServiceSet", "metadata": {"name": "red"},
                "spec": {"importRules": [{"type": "LabelSelector"}]}}),
            "spec.importRules[0].type: imports support only NameSelector",
        ),
        (
            json!({"apiVersion": "federation.maistra.io/v1", "kind": "ExportedServiceSet", "metadata": {"name": "red"},
                "spec": {"exportRules": [{"type": "Everything"}]}}),
            "spec.exportRules[0].type: unknown variant `Everything`",
        ),
        // Names.
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm", "namespace": "Bad_NS"}, "spec": {}}),
            "metadata.namespace: \"Bad_NS\" is not a valid namespace",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "VM 1"}, "spec": {}}),
            "metadata.name: \"VM 1\" is not a valid name",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm"}, "spec": {"serviceAccount": "../x"}}),
            "spec.serviceAccount: \"../x\" is not a valid service account name",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"},
                   "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                       "distribute": [{"from": "eu/*", "to": {"eu/a/*": 70, "us/*": 20}}]}}}}}),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: the shares add up to 90, not 100",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"},
                   "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                       "failover": [{"from": "eu", "to": "us"}],
                       "distribute": [{"from": "eu/*", "to": {"us/*": 100}}]}}}}}),
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute: distribute and failover (or failoverPriority) cannot both be set",
        ),
        // The envelope.
        (
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "x"}, "spec": {}}),
            "unsupported resource type gateway.networking.k8s.io/v1 Gateway",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "x"},
                   "spec": {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]}]}}),
            "spec.servers[0].tls: an HTTPS server needs tls",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "x"},
                   "spec": {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
                                         "tls": {"mode": "SIMPLE", "credentialName": "edge-cert", "privateKey": "/k.pem"}}]}}),
            "spec.servers[0].tls.privateKey: not with credentialName, whose Secret holds it",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "x"},
                   "spec": {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
                                         "tls": {"mode": "SIMPLE", "serverCertificate": "certs/a.pem", "privateKey": "/k.pem"}}]}}),
            "spec.servers[0].tls.serverCertificate: \"certs/a.pem\" is not an absolute path",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "x"},
                   "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
                                        {"port": {"number": 80, "name": "tls", "protocol": "TLS"}, "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}}]}}),
            "spec.servers[1].port.protocol: port 80 is already HTTP in spec.servers[0]",
        ),
        (
            json!({"kind": "VirtualService"}),
            "apiVersion and kind are required",
        ),
        (
            json!(["not", "a", "mapping"]),
            "expected a mapping, found a list",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}}),
            "missing field `spec`",
        ),
    ];
    for (doc, expected) in cases {
        let errs = errors(doc.clone());
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errs:?}\nfor {doc}"
        );
    }
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let errs = errors(vs(json!({"hosts": [], "http": [
        {"route": [{"destination": {"host": "a"}, "weight": 10}, {"destination": {"host": "b"}}]},
        {"directResponse": {"status": 99}},
        {"delegate": {"name": "deeper"}}]})));
    assert!(
        errs.contains(
            &"spec.http[2].delegate: a delegate VirtualService (no hosts) cannot delegate again"
                .to_owned()
        ),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.http[0].route: every destination needs a weight")),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"spec.http[1].directResponse.status: 99 is not an HTTP status".to_owned()),
        "{errs:?}"
    );
}

#[test]
fn hostile_values_never_panic() {
    let deep = (0..200).fold(json!(1), |acc, _| json!({"a": acc}));
    for doc in [
        json!(null),
        json!("string"),
        json!({"apiVersion": 5, "kind": []}),
        vs(deep.clone()),
        vs(
            json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": 4_294_967_295u64}, {"destination": {"host": "s"}, "weight": 4_294_967_295u64}]}]}),
        ),
        vs(json!({"hosts": ["r".repeat(100_000)], "http": []})),
        vs(
            json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "timeout": "99999999999999999999h"}]}),
        ),
    ] {
        let _ = parse(doc);
    }
}

#[test]
fn istios_opaque_protocols_are_accepted_and_udp_is_not_supported() {
    let se = |protocol: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"hosts": ["db.shop.local"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                "ports": [{"number": 27017, "name": "db", "protocol": protocol}]}})
    };
    for protocol in [
        "MONGO", "REDIS", "MYSQL", "GRPC-WEB", "mongo", "TCP", "HTTP",
    ] {
        assert!(parse(se(protocol)).is_ok(), "{protocol}");
    }
    assert_eq!(
        errors(se("UDP")),
        ["spec.ports[0].protocol: UDP is not supported by Isthmus"]
    );
    let unknown = errors(se("SMTP"));
    assert!(
        unknown.len() == 1 && unknown[0].contains("\"SMTP\" is not one of"),
        "{unknown:?}"
    );
}

#[test]
fn tls_origination_needs_a_name_to_send_and_to_check() {
    let dr = |host: &str, tls: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "api"}, "spec": {"host": host, "trafficPolicy": {"tls": tls}}})
    };
    // A wildcard host names no server: the certificate would be checked for nothing.
    assert_eq!(
        errors(dr("*.example.com", json!({"mode": "SIMPLE"}))),
        [
            "spec.trafficPolicy.tls.sni: a wildcard host with SIMPLE or MUTUAL needs sni or subjectAltNames: taking the SNI from each request is not supported by Isthmus"
        ]
    );
    for tls in [
        json!({"mode": "SIMPLE", "sni": "api.example.com"}),
        json!({"mode": "SIMPLE", "subjectAltNames": ["api.example.com"]}),
        json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
    ] {
        assert!(parse(dr("*.example.com", tls.clone())).is_ok(), "{tls}");
    }
    // Names rustls would refuse to send, which would otherwise fail every connection.
    for sni in ["a.123", "10.0.0.1", "*.example.com", "two words"] {
        let e = errors(dr("api.example.com", json!({"mode": "SIMPLE", "sni": sni})));
        assert!(
            e[0].starts_with("spec.trafficPolicy.tls.sni: "),
            "{sni}: {e:?}"
        );
    }
    let e = errors(dr("api.123", json!({"mode": "SIMPLE"})));
    assert!(e[0].starts_with("spec.host: "), "{e:?}");
    // MUTUAL presents a certificate; ISTIO_MUTUAL takes no files.
    assert_eq!(
        errors(dr(
            "api.example.com",
            json!({"mode": "MUTUAL", "caCertificates": "/ca.pem"})
        )),
        [
            "spec.trafficPolicy.tls.clientCertificate: MUTUAL needs a client certificate (or credentialName)",
            "spec.trafficPolicy.tls.privateKey: MUTUAL needs a private key (or credentialName)"
        ]
    );
    assert_eq!(
        errors(dr(
            "api.example.com",
            json!({"mode": "ISTIO_MUTUAL", "caCertificates": "/ca.pem"})
        )),
        [
            "spec.trafficPolicy.tls.caCertificates: not with ISTIO_MUTUAL, which uses the mesh's own certificates"
        ]
    );
}
