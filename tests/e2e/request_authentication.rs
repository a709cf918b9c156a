//! `RequestAuthentication` with inline keys and `AuthorizationPolicy` on the token, real
//! processes: a workload's sidecar (`isthmus-proxy`, then a stock Envoy on the same
//! `isthmusd` configuration) in front of `isthmusctl echo`, called in plaintext with tokens
//! signed in the test (ES256).

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use isthmus_e2e::envoy::{Echo, Envoy, curl};
use isthmus_e2e::mesh::{bootstrap, until};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.example.com";

/// A signing key and its public half as a JWK.
struct Signer {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        // An uncompressed P-256 point: 0x04, x, y.
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                         "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
        Self {
            key: EncodingKey::from_ec_der(pair.serialized_der()),
            kid: kid.to_owned(),
            jwk,
        }
    }

    fn token(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, sub: &str, aud: &str, exp: u64, groups: &[&str]) -> Value {
    json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "iat": now(), "groups": groups})
}

/// `keys`: the rule's `jwks: '…'` or `jwksUri: …` line.
fn config(keys: &str, isthmus_port: u16, envoy_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [api.shop.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: api}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-isthmus, namespace: shop}}
spec: {{address: 127.0.75.1, labels: {{app: api}}, serviceAccount: api, ports: {{http: {isthmus_port}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-envoy, namespace: shop}}
spec: {{address: 127.0.75.2, labels: {{app: api}}, serviceAccount: api, ports: {{http: {envoy_port}}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: issuer, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api]
    {keys}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  rules:
  - to: [{{operation: {{paths: ['/open*']}}}}]
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/alice']}}}}]
    to: [{{operation: {{paths: ['/secure*']}}}}]
  - to: [{{operation: {{paths: ['/group*']}}}}]
    when: [{{key: 'request.auth.claims[groups]', values: [admins]}}]
"
    )
}

/// (status, body) of `GET http://<address><path>` with the token, if any.
fn call(address: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("http://{address}{path}");
    let auth;
    let mut args = vec![url.as_str()];
    if let Some(token) = token {
        auth = format!("authorization: Bearer {token}");
        args.extend(["-H", auth.as_str()]);
    }
    curl(&args).unwrap_or_else(|e| panic!("{url}: {e}"))
}

struct Keys {
    trusted: Signer,
    stranger: Signer,
}

fn check_tokens(address: &str, keys: &Keys, logs: &dyn Fn() -> String) {
    until(
        "the sidecar enforces the policies",
        Duration::from_secs(20),
        || matches!(curl(&[&format!("http://{address}/secure")]), Ok((403, _))),
    );
    let hour = now() + 3600;
    let alice = keys
        .trusted
        .token(claims(ISSUER, "alice", "api", hour, &["admins"]));
    let bob = keys
        .trusted
        .token(claims(ISSUER, "bob", "api", hour, &["users"]));
    let expired = keys
        .trusted
        .token(claims(ISSUER, "alice", "api", now() - 3600, &[]));
    let wrong_issuer = keys.trusted.token(claims(
        "https://other.example.com",
        "alice",
        "api",
        hour,
        &[],
    ));
    let wrong_audience = keys
        .trusted
        .token(claims(ISSUER, "alice", "web", hour, &[]));
    let bad_signature = keys
        .stranger
        .token(claims(ISSUER, "alice", "api", hour, &[]));
    let tampered = {
        let mut parts: Vec<String> = alice.split('.').map(str::to_owned).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] = b64.encode(claims(ISSUER, "mallory", "api", hour, &["admins"]).to_string());
        parts.join(".")
    };

    // No token: the RequestAuthentication lets it through; a valid token too, and the app
    // does not see it (forwardOriginalToken is false).
    let (status, body) = call(address, "/open", None);
    assert_eq!(status, 200, "{body}\n{}", logs());
    let (status, body) = call(address, "/open", Some(&alice));
    assert_eq!(status, 200, "{body}\n{}", logs());
    let echoed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert!(
        echoed["headers"].is_object() && echoed["headers"].get("authorization").is_none(),
        "the token is removed once verified: {body}"
    );

    // Tokens that fail: 401, whatever the path; a valid token for another audience: 403
    // (Envoy's, so Istio's, answers).
    for (what, token, expected) in [
        ("expired", &expired, 401),
        ("another issuer", &wrong_issuer, 401),
        ("another audience", &wrong_audience, 403),
        ("a key not in the JWKS", &bad_signature, 401),
        ("a payload changed after signing", &tampered, 401),
        ("not a JWT", &"not-a-jwt".to_owned(), 401),
    ] {
        for path in ["/open", "/secure"] {
            let (status, body) = call(address, path, Some(token));
            assert_eq!(status, expected, "{what} on {path}: {body}\n{}", logs());
        }
    }

    // requestPrincipals: a missing token is refused (403), another subject too.
    assert_eq!(call(address, "/secure", None).0, 403);
    assert_eq!(call(address, "/secure", Some(&alice)).0, 200);
    assert_eq!(call(address, "/secure", Some(&bob)).0, 403);
    // A claim condition, on a list claim.
    assert_eq!(call(address, "/group", Some(&alice)).0, 200);
    assert_eq!(call(address, "/group", Some(&bob)).0, 403);
    assert_eq!(call(address, "/group", None).0, 403);
}

fn keys_and_config(dir: &std::path::Path) -> (Keys, u16, u16) {
    let keys = Keys {
        trusted: Signer::new("trusted"),
        stranger: Signer::new("trusted"),
    };
    let jwks = json!({"keys": [keys.trusted.jwk]}).to_string();
    let (isthmus_port, envoy_port) = (free_port(), free_port());
    write_config(dir, &format!("jwks: '{jwks}'"), isthmus_port, envoy_port);
    (keys, isthmus_port, envoy_port)
}

fn write_config(dir: &std::path::Path, keys: &str, isthmus_port: u16, envoy_port: u16) {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("jwt.yaml"),
        config(keys, isthmus_port, envoy_port),
    )
    .unwrap();
}

/// A JWKS endpoint (`GET /jwks.json`) serving `document`; counts the requests.
struct JwksServer {
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    fn start(document: String) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        Self { port, hits }
    }
}

/// The `api-isthmus` workload's sidecar, its outbound port a free one (tests run at once).
fn isthmus_sidecar(dir: &std::path::Path, daemon: &Isthmusd, app: u16) -> IsthmusProxy {
    IsthmusProxy::sidecar(
        dir,
        daemon,
        "127.0.75.1",
        "api-isthmus",
        &[
            format!("APP_PORTS=http={app}"),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    )
}

/// A stock Envoy as the `api-envoy` workload's sidecar, its outbound port a free one.
fn envoy_sidecar(dir: &std::path::Path, daemon: &Isthmusd, app: u16) -> Envoy {
    let file = bootstrap(
        dir,
        "api-envoy",
        &[
            "--workload",
            "api-envoy",
            "--address",
            "127.0.75.2",
            "--xds-address",
            &daemon.xds.to_string(),
            "--app-port",
            &format!("http={app}"),
            "--outbound-port",
            &free_port().to_string(),
        ],
    );
    Envoy::start(dir, "api-envoy", &file).expect("start Envoy")
}

/// `jwksUri`: `isthmusd` fetches the keys and pushes them inline; a URI that answers nothing
/// leaves keys that verify nothing (tokens 401, no token passes), as in Istio.
#[test]
fn keys_from_a_jwks_uri_are_fetched_by_isthmusd_and_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start(dir.path(), "api").unwrap();
    let keys = Keys {
        trusted: Signer::new("trusted"),
        stranger: Signer::new("trusted"),
    };
    let server = JwksServer::start(json!({"keys": [keys.trusted.jwk]}).to_string());
    let (port, envoy_port) = (free_port(), free_port());
    write_config(
        dir.path(),
        &format!("jwksUri: 'http://127.0.0.1:{}/jwks.json'", server.port),
        port,
        envoy_port,
    );
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let sidecar = isthmus_sidecar(dir.path(), &daemon, echo.addr.port());
    sidecar.wait_ready(Duration::from_secs(20)).unwrap();
    let envoy = envoy_sidecar(dir.path(), &daemon, echo.addr.port());
    let alice = keys
        .trusted
        .token(claims(ISSUER, "alice", "api", now() + 3600, &["admins"]));
    let addresses = [
        format!("127.0.75.1:{port}"),
        format!("127.0.75.2:{envoy_port}"),
    ];
    for address in &addresses {
        until(
            "the fetched keys verify the token",
            Duration::from_secs(20),
            || call(address, "/secure", Some(&alice)).0 == 200,
        );
        check_tokens(address, &keys, &|| {
            format!("{}\n{}", sidecar.logs(), envoy.logs())
        });
    }
    assert!(server.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // A URI nothing answers: the issuer's tokens fail, requests without one pass.
    write_config(
        dir.path(),
        &format!("jwksUri: 'http://127.0.0.1:{}/jwks.json'", free_port()),
        port,
        envoy_port,
    );
    for address in &addresses {
        until(
            "keys that verify nothing replace them",
            Duration::from_secs(20),
            || call(address, "/open", Some(&alice)).0 == 401,
        );
        assert_eq!(call(address, "/open", None).0, 200, "{address}");
    }
    envoy.assert_no_rejected_update();
}

#[test]
fn isthmus_proxy_verifies_tokens_and_authorizes_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start(dir.path(), "api").unwrap();
    let (keys, port, _) = keys_and_config(dir.path());
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let sidecar = isthmus_sidecar(dir.path(), &daemon, echo.addr.port());
    sidecar.wait_ready(Duration::from_secs(20)).unwrap();
    check_tokens(&format!("127.0.75.1:{port}"), &keys, &|| sidecar.logs());
}

#[test]
fn stock_envoy_takes_the_same_jwt_configuration_with_no_rejected_update() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start(dir.path(), "api").unwrap();
    let (keys, _, port) = keys_and_config(dir.path());
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let envoy = envoy_sidecar(dir.path(), &daemon, echo.addr.port());
    check_tokens(&format!("127.0.75.2:{port}"), &keys, &|| envoy.logs());
    envoy.assert_no_rejected_update();
}
