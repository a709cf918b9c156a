//! Istio's `Gateway` (networking.istio.io): the ports a gateway workload listens on for
//! traffic from outside the mesh, with their hosts and TLS. `VirtualService`s bound to it by
//! `spec.gateways` route what it accepts.
//!
//! Isthmus serves `HTTP` (`HTTP2`, `GRPC`) servers, with `tls.httpsRedirect`; `HTTPS` servers
//! that terminate TLS (`SIMPLE`, or `MUTUAL` with the clients' roots) with a certificate and
//! key from files on the gateway's machine; and `TLS` servers in `PASSTHROUGH` mode, routed by
//! SNI through a `VirtualService`'s `tls` routes. The rest of Istio's fields are refused with
//! "not supported by Isthmus" at their path.

use std::collections::BTreeMap;

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Validate;
use super::meta::{Unsupported, Validator, is_host};

resource!(
    /// A gateway's servers: ports, protocols, hosts and TLS; `selector` picks the gateway
    /// workloads (by their labels) that serve them.
    Gateway,
    GatewaySpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "networking.istio.io",
        version = "v1",
        kind = "Gateway",
        plural = "gateways",
        shortname = "gw",
        namespaced,
        root = "KubeGateway",
        doc = "A gateway for traffic from outside the mesh: servers (port, hosts, TLS) on the workloads its selector picks."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub servers: Vec<Server>,
    /// The gateway workloads' labels (`istio: ingressgateway`); empty selects none.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    /// The hosts this server accepts, `[namespace/]host` with `*` wildcards.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bind: Option<Unsupported>,
    #[serde(default)]
    pub default_endpoint: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    pub number: u32,
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<Unsupported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// On an `HTTP` server: every request is answered with a redirect to `https`.
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub mode: Option<ServerTlsMode>,
    /// The certificate chain the gateway presents, a PEM file on the gateway's machine.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Its private key, a PEM file on the gateway's machine.
    #[serde(default)]
    pub private_key: Option<String>,
    /// `MUTUAL`: the roots the clients' certificates must verify against, a PEM file.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// `MUTUAL`: the client's certificate must carry one of these (DNS names, URIs).
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: Option<TlsProtocolVersion>,
    #[serde(default)]
    pub max_protocol_version: Option<TlsProtocolVersion>,
    /// Kubernetes mode: the `Secret` (in the gateway workload's namespace) holding the
    /// certificate and key (`tls.crt`/`tls.key`, or `cert`/`key`) and, for `MUTUAL`, the
    /// clients' roots (`ca.crt`/`cacert`, or the `Secret` `<name>-cacert`).
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Option<Unsupported>,
    #[serde(default)]
    pub ca_cert_credential_name: Option<Unsupported>,
    #[serde(default)]
    pub tls_certificates: Option<Unsupported>,
    #[serde(default)]
    pub ca_crl: Option<Unsupported>,
    #[serde(default)]
    pub verify_certificate_spki: Option<Unsupported>,
    #[serde(default)]
    pub verify_certificate_hash: Option<Unsupported>,
    #[serde(default)]
    pub cipher_suites: Option<Unsupported>,
    #[serde(default)]
    pub insecure_skip_verify: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// The client's TLS goes through untouched, routed by its SNI.
    Passthrough,
    /// TLS terminated with the server's certificate.
    Simple,
    /// TLS terminated; the client presents a certificate verified against `caCertificates`.
    Mutual,
}

/// The TLS versions rustls speaks (1.2 and 1.3); Istio's older ones are "not supported".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
pub enum TlsProtocolVersion {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

/// What a server carries, from its port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerProtocol {
    /// `HTTP`, `HTTP2`, `GRPC`: plaintext HTTP (with `httpsRedirect`, redirects only).
    Http,
    /// `HTTPS`: TLS terminated (`SIMPLE`, `MUTUAL`), then HTTP.
    Https,
    /// `TLS`: passed through by SNI (`PASSTHROUGH`), or terminated then TCP (not supported).
    Tls,
}

/// Istio's protocols a gateway server may name; the supported ones map to a [`ServerProtocol`].
const GATEWAY_PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "HTTP2",
    "GRPC",
    "GRPC-WEB",
    "TLS",
    "TCP",
    "MONGO",
    "REDIS",
    "MYSQL",
    "UDP",
    "HTTP_PROXY",
];

impl ServerPort {
    /// The protocol as Isthmus serves it, or why not.
    pub fn server_protocol(&self) -> Result<ServerProtocol, String> {
        let upper = self.protocol.to_ascii_uppercase();
        match upper.as_str() {
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Ok(ServerProtocol::Http),
            "HTTPS" => Ok(ServerProtocol::Https),
            "TLS" => Ok(ServerProtocol::Tls),
            other if GATEWAY_PROTOCOLS.contains(&other) => Err(format!(
                "{} is not supported by Isthmus on a gateway (HTTP, HTTP2, GRPC, HTTPS and TLS are)",
                self.protocol
            )),
            _ => Err(format!("{:?} is not a protocol", self.protocol)),
        }
    }
}

impl Server {
    /// The TLS mode a server works in; `None` for plaintext HTTP.
    pub fn tls_mode(&self) -> Option<ServerTlsMode> {
        let tls = self.tls.as_ref()?;
        let plain_http = self.port.server_protocol() == Ok(ServerProtocol::Http);
        match (tls.mode, plain_http) {
            (Some(mode), _) => Some(mode),
            // `httpsRedirect` alone on an HTTP server; an HTTPS server terminates (SIMPLE).
            (None, true) => None,
            (None, false) => Some(ServerTlsMode::Simple),
        }
    }

    /// What of `host` (a `VirtualService` host, or a `tls` route's SNI, in `vs_namespace`) this
    /// server serves: for each of the server's hosts that takes that namespace, the narrower
    /// of the two patterns, when they meet. The server's hosts are `[namespace/]host`, where
    /// the namespace `*` or none is any and `.` is the gateway's own.
    pub fn serves(&self, gateway_namespace: &str, vs_namespace: &str, host: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for entry in &self.hosts {
            let (ns, pattern) = split_host(entry);
            let ns_ok = match ns {
                None | Some("*") => true,
                Some(".") => vs_namespace == gateway_namespace,
                Some(ns) => ns == vs_namespace,
            };
            if let Some(name) = narrower(pattern, host).filter(|_| ns_ok)
                && !out.contains(&name)
            {
                out.push(name);
            }
        }
        out
    }
}

/// `ns/host` -> (`Some("ns")`, `host`); `host` -> (`None`, `host`).
pub fn split_host(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, entry),
    }
}

/// Whether every name `other` (a pattern) matches, `pattern` matches too: `*` covers all,
/// `*.example.com` covers `a.example.com` and `*.shop.example.com`, a name only itself.
pub fn host_covers(pattern: &str, other: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => {
            let other_suffix = other.strip_prefix('*').unwrap_or(other);
            (other_suffix.ends_with(suffix) && other_suffix.len() > suffix.len())
                || (other_suffix == suffix && other.starts_with('*'))
        }
        None => pattern.eq_ignore_ascii_case(other),
    }
}

/// The names two host patterns have in common, as one pattern: the narrower of the two
/// (Istio's intersection of a server's and a `VirtualService`'s hosts), if they meet.
pub fn narrower(a: &str, b: &str) -> Option<String> {
    if host_covers(a, b) {
        Some(b.to_ascii_lowercase())
    } else if host_covers(b, a) {
        Some(a.to_ascii_lowercase())
    } else {
        None
    }
}

impl Validate for Gateway {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        v.check(
            !s.servers.is_empty(),
            "spec.servers",
            "at least one server is required",
        );
        let mut names = std::collections::BTreeSet::new();
        let mut protocol_of_port: BTreeMap<u32, (ServerProtocol, usize)> = BTreeMap::new();
        for (i, server) in s.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            validate_server(v, &path, server);
            if let Some(name) = &server.name {
                v.check(
                    names.insert(name.as_str()),
                    format!("{path}.name"),
                    format!("duplicate server name {name:?}"),
                );
            }
            if let Ok(protocol) = server.port.server_protocol() {
                match protocol_of_port.get(&server.port.number) {
                    // Istio: servers sharing a port share its listener, so their protocols
                    // must be alike (HTTPS and TLS may share one: both are TLS by SNI).
                    Some((other, j))
                        if *other != protocol
                            && !(matches!(other, ServerProtocol::Https | ServerProtocol::Tls)
                                && matches!(
                                    protocol,
                                    ServerProtocol::Https | ServerProtocol::Tls
                                )) =>
                    {
                        v.error(
                            format!("{path}.port.protocol"),
                            format!(
                                "port {} is already {} in spec.servers[{j}]: servers on one port must both be HTTP or both TLS",
                                server.port.number, s.servers[*j].port.protocol
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        protocol_of_port.insert(server.port.number, (protocol, i));
                    }
                }
            }
        }
        for (key, value) in &s.selector {
            v.check(
                !key.is_empty(),
                "spec.selector",
                format!("empty label name (value {value:?})"),
            );
        }
    }
}

fn validate_server(v: &mut Validator, path: &str, server: &Server) {
    let port = &server.port;
    v.check(
        (1..=65535).contains(&port.number),
        format!("{path}.port.number"),
        format!("port {} is not in 1-65535", port.number),
    );
    let protocol = match port.server_protocol() {
        Ok(p) => Some(p),
        Err(reason) => {
            v.error(format!("{path}.port.protocol"), reason);
            None
        }
    };
    v.check(
        !server.hosts.is_empty(),
        format!("{path}.hosts"),
        "at least one host is required",
    );
    for (i, entry) in server.hosts.iter().enumerate() {
        let (ns, host) = split_host(entry);
        let ns_ok = ns.is_none_or(|ns| ns == "*" || ns == "." || super::meta::is_dns_label(ns));
        v.check(
            ns_ok && is_host(host),
            format!("{path}.hosts[{i}]"),
            format!("{entry:?} is not [namespace/]host"),
        );
    }
    let tls_path = format!("{path}.tls");
    match (protocol, &server.tls) {
        (Some(ServerProtocol::Http), Some(tls)) => {
            v.check(
                tls.https_redirect && tls.mode.is_none(),
                &tls_path,
                "an HTTP server takes only tls.httpsRedirect (TLS is for HTTPS and TLS servers)",
            );
        }
        (Some(ServerProtocol::Https | ServerProtocol::Tls), None) => {
            v.error(&tls_path, format!("an {} server needs tls", port.protocol));
        }
        (Some(protocol), Some(tls)) => validate_tls(v, &tls_path, protocol, server, tls),
        _ => {}
    }
}

fn validate_tls(
    v: &mut Validator,
    path: &str,
    protocol: ServerProtocol,
    server: &Server,
    tls: &ServerTlsSettings,
) {
    let mode = server.tls_mode();
    if protocol == ServerProtocol::Tls && mode != Some(ServerTlsMode::Passthrough) {
        v.error(
            format!("{path}.mode"),
            "a TLS server that terminates TLS and carries TCP is not supported by Isthmus (PASSTHROUGH is; use HTTPS to terminate)",
        );
        return;
    }
    if protocol == ServerProtocol::Https && mode == Some(ServerTlsMode::Passthrough) {
        v.error(
            format!("{path}.mode"),
            "PASSTHROUGH needs a TLS server (port.protocol: TLS)",
        );
        return;
    }
    match mode {
        Some(ServerTlsMode::Passthrough) => {
            for (field, set) in [
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
            ] {
                v.check(
                    !set,
                    format!("{path}.{field}"),
                    "a PASSTHROUGH server does not terminate TLS",
                );
            }
        }
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual) => {
            if let Some(name) = &tls.credential_name {
                v.check(
                    super::meta::is_dns_subdomain(name),
                    format!("{path}.credentialName"),
                    format!("{name:?} is not a Secret name"),
                );
                for (field, set) in [
                    ("serverCertificate", tls.server_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                ] {
                    v.check(
                        !set,
                        format!("{path}.{field}"),
                        "not with credentialName, whose Secret holds it",
                    );
                }
            } else {
                for (field, value) in [
                    ("serverCertificate", &tls.server_certificate),
                    ("privateKey", &tls.private_key),
                ] {
                    match value {
                        None => v.error(
                            format!("{path}.{field}"),
                            "is required to terminate TLS (or credentialName)",
                        ),
                        Some(file) => v.check(
                            file.starts_with('/'),
                            format!("{path}.{field}"),
                            format!("{file:?} is not an absolute path"),
                        ),
                    }
                }
            }
            if mode == Some(ServerTlsMode::Mutual) {
                match &tls.ca_certificates {
                    None if tls.credential_name.is_none() => v.error(
                        format!("{path}.caCertificates"),
                        "MUTUAL needs the roots of the clients' certificates",
                    ),
                    None => {}
                    Some(file) => v.check(
                        file.starts_with('/'),
                        format!("{path}.caCertificates"),
                        format!("{file:?} is not an absolute path"),
                    ),
                }
            } else {
                v.check(
                    tls.subject_alt_names.is_empty(),
                    format!("{path}.subjectAltNames"),
                    "checks a client certificate: only with MUTUAL",
                );
            }
        }
        None => {}
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version) {
        v.check(
            min == TlsProtocolVersion::Auto || max == TlsProtocolVersion::Auto || min <= max,
            format!("{path}.minProtocolVersion"),
            "is above maxProtocolVersion",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_meet_like_istio_wildcards() {
        for (a, b, expected) in [
            ("*", "bookinfo.example.com", Some("bookinfo.example.com")),
            (
                "*.example.com",
                "bookinfo.example.com",
                Some("bookinfo.example.com"),
            ),
            ("*.example.com", "example.com", None),
            (
                "*.example.com",
                "*.shop.example.com",
                Some("*.shop.example.com"),
            ),
            (
                "bookinfo.example.com",
                "BOOKINFO.example.com",
                Some("bookinfo.example.com"),
            ),
            ("a.example.com", "b.example.com", None),
            ("*.com", "*.example.com", Some("*.example.com")),
        ] {
            assert_eq!(narrower(a, b).as_deref(), expected, "{a} vs {b}");
            assert_eq!(narrower(b, a).as_deref(), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn server_hosts_with_namespaces() {
        let server = Server {
            hosts: vec!["./a.example.com".into(), "shop/*".into()],
            ..Default::default()
        };
        assert_eq!(
            server.serves("gw", "gw", "a.example.com"),
            ["a.example.com"]
        );
        // The narrower pattern of each pair: a VirtualService's `*` takes only the server's.
        assert_eq!(server.serves("gw", "gw", "*"), ["a.example.com"]);
        assert_eq!(
            server.serves("gw", "shop", "*.example.com"),
            ["*.example.com"]
        );
        assert!(server.serves("gw", "other", "a.example.com").is_empty());
        assert_eq!(
            server.serves("gw", "shop", "anything.example.com"),
            ["anything.example.com"]
        );
        assert!(server.serves("gw", "gw", "b.example.com").is_empty());
    }
}
