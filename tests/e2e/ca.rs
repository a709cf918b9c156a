//! The mesh CA end to end: a real `isthmusd`, tokens from a real `isthmusctl`, CSRs over gRPC,
//! chains checked with the `openssl` command line.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::Duration;

use isthmus_e2e::{Isthmusd, create_token, isthmusctl, isthmusd_start_failure, sh};
use isthmus_identity::ca_client::{BearerToken, CaClient};
use isthmus_identity::pem::{certs_to_pem, read_certs};
use isthmus_identity::testing::{TestCa, hours_ago, minutes_ago};
use isthmus_identity::{
    CertificateSource, IssueError, PeerPolicy, SpiffeId, TrustBundle, TrustBundles, generate_csr,
    shared_bundles,
};

const WEB: &str = "spiffe://red.local/ns/app/sa/web";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn client(daemon: &Isthmusd, token: BearerToken) -> CaClient {
    let bundle = TrustBundle::new(
        "red.local".parse().unwrap(),
        read_certs(&daemon.root_file()).unwrap(),
    )
    .unwrap();
    CaClient::new(
        &daemon.grpc.to_string(),
        shared_bundles(TrustBundles::new(bundle)),
        PeerPolicy::OneOf(vec![id("spiffe://red.local/ns/isthmus-system/sa/isthmusd")]),
        token,
    )
    .unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, IssueError>) -> (String, String) {
    match result {
        Err(IssueError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn token_from_isthmusctl_gets_a_chain_that_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "token file mode");

    let request = generate_csr(&id(WEB)).unwrap();
    let issued = client(&daemon, BearerToken::File(token))
        .issue(request.csr_pem, Duration::from_secs(3600))
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("leaf.pem"),
        certs_to_pem(&issued.chain[..1]),
    )
    .unwrap();
    std::fs::write(dir.path().join("chain.pem"), certs_to_pem(&issued.chain)).unwrap();
    let verified = sh(
        dir.path(),
        &format!(
            "openssl verify -CAfile {} -untrusted chain.pem leaf.pem",
            daemon.root_file().display()
        ),
    )
    .unwrap();
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    let text = sh(
        dir.path(),
        "openssl x509 -in leaf.pem -noout -ext subjectAltName,basicConstraints",
    )
    .unwrap();
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert_eq!(
        daemon.metric("isthmus_ca_certificates_issued_total"),
        Some(1)
    );
}

#[tokio::test]
async fn isthmusctl_cert_request_writes_files_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let out_dir = dir.path().join("certs");
    let out = isthmusctl(&[
        "cert",
        "request",
        "--ca-addr",
        &daemon.grpc.to_string(),
        "--root",
        daemon.root_file().to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--identity",
        WEB,
        "--ttl",
        "2h",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified = sh(
        &out_dir,
        "openssl verify -CAfile root-cert.pem cert-chain.pem",
    )
    .unwrap();
    assert!(verified.contains("cert-chain.pem: OK"), "{verified}");
    // The key matches the certificate.
    let a = sh(&out_dir, "openssl pkey -in key.pem -pubout").unwrap();
    let b = sh(&out_dir, "openssl x509 -in cert-chain.pem -noout -pubkey").unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn revoked_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let ca = client(&daemon, BearerToken::File(token.clone()));
    ca.issue(generate_csr(&id(WEB)).unwrap().csr_pem, Duration::ZERO)
        .await
        .unwrap();

    let token_id = std::fs::read_to_string(&token)
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let out = isthmusctl(&[
        "token",
        "revoke",
        "--state-dir",
        daemon.state_dir.to_str().unwrap(),
        &token_id,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, message) = refused(
        ca.issue(generate_csr(&id(WEB)).unwrap().csr_pem, Duration::ZERO)
            .await,
    );
    assert_eq!(code, "Unauthenticated");
    assert!(
        message.contains(&format!("token {token_id} was revoked")),
        "{message}"
    );
    assert_eq!(
        daemon.metric("isthmus_ca_csr_refused_total{reason=\"revoked_token\"}"),
        Some(1)
    );
}

#[tokio::test]
async fn every_refusal_has_a_specific_status_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let ca = client(&daemon, BearerToken::File(token));
    let csr_for = |s: &str| generate_csr(&id(s)).unwrap().csr_pem;

    // Another identity of the same mesh.
    let (code, msg) = refused(
        ca.issue(
            csr_for("spiffe://red.local/ns/app/sa/admin"),
            Duration::ZERO,
        )
        .await,
    );
    assert_eq!(code, "PermissionDenied");
    assert!(
        msg.contains("entitled only to spiffe://red.local/ns/app/sa/web"),
        "{msg}"
    );

    // Another trust domain.
    let (code, msg) = refused(
        ca.issue(
            csr_for("spiffe://green.local/ns/app/sa/web"),
            Duration::ZERO,
        )
        .await,
    );
    assert_eq!(code, "PermissionDenied");
    assert!(msg.contains("trust domain green.local"), "{msg}");

    // A CA certificate.
    let (code, msg) = refused(ca.issue(ca_csr(WEB), Duration::ZERO).await);
    assert_eq!(code, "PermissionDenied");
    assert!(msg.contains("asks for a CA certificate"), "{msg}");

    // Longer than the maximum lifetime (90 days by default).
    let (code, msg) = refused(
        ca.issue(csr_for(WEB), Duration::from_secs(91 * 24 * 3600))
            .await,
    );
    assert_eq!(code, "InvalidArgument");
    assert!(msg.contains("exceeds the maximum"), "{msg}");

    // Garbage, empty, and oversized CSRs.
    for (csr, expected) in [
        ("hello".to_owned(), "no PEM CERTIFICATE REQUEST block"),
        (String::new(), "malformed CSR: empty"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIBIjAN\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            "malformed CSR",
        ),
        ("x".repeat(30_000), "larger than"),
    ] {
        let (code, msg) = refused(ca.issue(csr, Duration::ZERO).await);
        assert_eq!(code, "InvalidArgument", "{msg}");
        assert!(msg.contains(expected), "{msg}");
    }

    // Far too large: refused by the transport's message limit before it is even decoded.
    let (code, msg) = refused(ca.issue("x".repeat(100_000), Duration::ZERO).await);
    assert_eq!(code, "OutOfRange");
    assert!(msg.contains("message length too large"), "{msg}");

    // A CSR whose signature does not match its key.
    let (code, msg) = refused(ca.issue(tampered_csr(WEB), Duration::ZERO).await);
    assert_eq!(code, "InvalidArgument");
    assert!(msg.contains("signature"), "{msg}");

    // No token, and an unknown token.
    let anonymous = client(&daemon, BearerToken::Value("isth.000000000000.nope".into()));
    let (code, _) = refused(anonymous.issue(csr_for(WEB), Duration::ZERO).await);
    assert_eq!(code, "Unauthenticated");

    for (reason, count) in [
        ("identity_mismatch", 1),
        ("wrong_trust_domain", 1),
        ("ca_requested", 1),
        ("ttl_too_long", 1),
        ("malformed_csr", 3),
        ("csr_too_large", 1),
        ("bad_csr_signature", 1),
        ("unknown_token", 1),
    ] {
        assert_eq!(
            daemon.metric(&format!(
                "isthmus_ca_csr_refused_total{{reason=\"{reason}\"}}"
            )),
            Some(count),
            "{reason}\n{}",
            daemon.metrics()
        );
    }
    // Present and zero: the counter is there from the start, and nothing was issued.
    assert_eq!(
        daemon.metric("isthmus_ca_certificates_issued_total"),
        Some(0)
    );
    // The daemon is still serving.
    ca.issue(csr_for(WEB), Duration::ZERO).await.unwrap();
}

/// A CSR for `uri` that also asks for `CA:TRUE`.
fn ca_csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A valid CSR with one byte of its signed content flipped.
fn tampered_csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // Flip a byte inside the SAN (".../sa/web" -> ".../sa/wec"): the structure stays valid.
    let at = der.windows(3).position(|w| w == b"web").unwrap();
    der[at + 2] = b'c';
    isthmus_identity::pem::to_pem("CERTIFICATE REQUEST", &der)
}

#[tokio::test]
async fn plugged_in_ca_made_with_openssl_signs_through_its_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("cacerts");
    std::fs::create_dir(&ca).unwrap();
    sh(
        &ca,
        r#"
        cat > ext.cnf <<'X'
[root]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[inter]
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
X
        openssl ecparam -name prime256v1 -genkey -noout -out root-key.sec1
        openssl req -x509 -new -key root-key.sec1 -subj "/O=red.local/CN=Red Root" -days 3650 \
            -extensions root -config <(cat /etc/ssl/openssl.cnf ext.cnf) -out root-cert.pem 2>/dev/null
        openssl ecparam -name prime256v1 -genkey -noout -out inter.sec1
        openssl pkcs8 -topk8 -nocrypt -in inter.sec1 -out ca-key.pem
        openssl req -new -key ca-key.pem -subj "/O=red.local/CN=Red Intermediate" -out inter.csr
        openssl x509 -req -in inter.csr -CA root-cert.pem -CAkey root-key.sec1 -CAcreateserial \
            -days 365 -extfile ext.cnf -extensions inter -out ca-cert.pem 2>/dev/null
        cat ca-cert.pem root-cert.pem > cert-chain.pem
        "#,
    )
    .unwrap();
    let daemon = Isthmusd::start(
        dir.path(),
        "red.local",
        &["--cacerts", ca.to_str().unwrap()],
    )
    .unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let issued = client(&daemon, BearerToken::File(token))
        .issue(generate_csr(&id(WEB)).unwrap().csr_pem, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf and intermediate");
    std::fs::write(ca.join("leaf.pem"), certs_to_pem(&issued.chain[..1])).unwrap();
    std::fs::write(ca.join("chain.pem"), certs_to_pem(&issued.chain)).unwrap();
    let verified = sh(
        &ca,
        "openssl verify -CAfile root-cert.pem -untrusted chain.pem leaf.pem",
    )
    .unwrap();
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    // Without the intermediate the leaf does not verify: it really was signed by it.
    assert!(sh(&ca, "openssl verify -CAfile root-cert.pem leaf.pem").is_err());
}

#[test]
fn broken_ca_files_stop_startup_with_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let good = TestCa::new("red.local");
    let other = TestCa::new("red.local");
    let expired =
        TestCa::new("red.local").intermediate_with_validity("old", hours_ago(48), hours_ago(24));
    let pem = |c: &rustls_pki_types::CertificateDer<'_>| isthmus_identity::pem::cert_to_pem(c);

    struct Case {
        name: &'static str,
        files: Vec<(&'static str, String)>,
        expected: Vec<&'static str>,
    }
    let case = |name, files, expected| Case {
        name,
        files,
        expected,
    };
    let cases = vec![
        case(
            "mismatched key",
            vec![
                ("ca-cert.pem", pem(good.cert())),
                ("ca-key.pem", other.key_pem()),
                ("root-cert.pem", pem(good.cert())),
                ("cert-chain.pem", pem(good.cert())),
            ],
            vec!["ca-key.pem", "does not match the certificate in"],
        ),
        case(
            "expired CA",
            vec![
                ("ca-cert.pem", pem(expired.cert())),
                ("ca-key.pem", expired.key_pem()),
                ("root-cert.pem", pem(expired.root())),
                ("cert-chain.pem", pem(expired.cert())),
            ],
            vec!["ca-cert.pem", "expired at"],
        ),
        case(
            "missing chain file",
            vec![
                ("ca-cert.pem", pem(good.cert())),
                ("ca-key.pem", good.key_pem()),
                ("root-cert.pem", pem(good.cert())),
            ],
            vec!["cert-chain.pem", "cannot read"],
        ),
        case(
            "garbage certificate",
            vec![
                (
                    "ca-cert.pem",
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
                ),
                ("ca-key.pem", good.key_pem()),
            ],
            vec!["ca-cert.pem", "malformed PEM"],
        ),
        case(
            "empty key file",
            vec![
                ("ca-cert.pem", pem(good.cert())),
                ("ca-key.pem", String::new()),
            ],
            vec!["ca-key.pem", "is empty"],
        ),
        case(
            "leaf as CA",
            vec![
                ("ca-cert.pem", good.issue(&id(WEB)).chain_pem()),
                ("ca-key.pem", good.key_pem()),
            ],
            vec!["ca-cert.pem", "not a CA certificate"],
        ),
        case(
            "chain to another root",
            vec![
                ("ca-cert.pem", pem(good.cert())),
                ("ca-key.pem", good.key_pem()),
                ("root-cert.pem", pem(other.cert())),
                ("cert-chain.pem", pem(good.cert())),
            ],
            vec!["cert-chain.pem", "not signed by any root"],
        ),
    ];
    for Case {
        name,
        files,
        expected,
    } in cases
    {
        let ca = dir.path().join(name.replace(' ', "-"));
        std::fs::create_dir(&ca).unwrap();
        for (file, content) in files {
            std::fs::write(ca.join(file), content).unwrap();
        }
        let (code, stderr) = isthmusd_start_failure(
            dir.path(),
            &[
                "--config-dir",
                "config",
                "--state-dir",
                "state",
                "--trust-domain",
                "red.local",
                "--cacerts",
                ca.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(1), "{name}: {stderr}");
        for fragment in expected {
            assert!(
                stderr.contains(fragment),
                "{name}: expected {fragment:?} in:\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let _ = minutes_ago(0);
}

#[test]
fn missing_config_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = isthmusd_start_failure(
        dir.path(),
        &["--config-dir", "nope", "--state-dir", "state"],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--config-dir nope"), "{stderr}");
}

#[test]
fn generated_root_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
        std::fs::read_to_string(daemon.root_file()).unwrap()
    };
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    assert_eq!(std::fs::read_to_string(daemon.root_file()).unwrap(), first);
    let key_mode = std::fs::metadata(daemon.state_dir.join("ca/root-key.pem"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
        0o600
    );
}

#[test]
fn proxy_obtains_its_certificate_and_reports_it_on_the_admin_port() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    let token = create_token(&daemon, dir.path(), WEB);
    let admin = format!("127.0.0.1:{}", isthmus_e2e::free_port());
    let mut proxy = Command::new(isthmus_e2e::bin("isthmus-proxy"))
        .args(["--identity", WEB, "--ca-address", &daemon.grpc.to_string()])
        .arg("--root-cert")
        .arg(daemon.root_file())
        .arg("--token-file")
        .arg(&token)
        .args(["--cert-ttl", "3s", "--admin-addr", &admin])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "2",
                &format!("http://{admin}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut ready = String::new();
    for _ in 0..100 {
        ready = curl("/ready");
        if ready.ends_with("200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let certs = curl("/certs");
    // A 3 s certificate renews every 1.5 s or so: new serials while the proxy stays ready.
    // The leaf's serial: the first one after "cert_chain".
    let serial = |json: &str| {
        let chain = &json[json.find("\"cert_chain\"").unwrap_or(0)..];
        let at = chain.find("\"serial_number\":\"").map_or(0, |i| i + 17);
        chain[at..].split('"').next().unwrap_or_default().to_owned()
    };
    let mut renewed = String::new();
    let mut issued = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        // Unlabelled, so present from the start: absent is a renamed metric, not zero.
        issued = daemon.metric("isthmus_ca_certificates_issued_total");
        if issued.is_none_or(|n| n >= 3) {
            if issued.is_some() {
                renewed = curl("/certs");
            }
            break;
        }
    }
    let still_ready = curl("/ready");
    let _ = proxy.kill();
    let _ = proxy.wait();
    issued.expect("metric isthmus_ca_certificates_issued_total present");
    assert!(ready.ends_with("200"), "{ready}");
    assert!(
        certs.contains(&format!("\"identity\":\"{WEB}\"")),
        "{certs}"
    );
    assert!(certs.contains(&format!("\"uri\":\"{WEB}\"")), "{certs}");
    assert!(
        !renewed.is_empty(),
        "no renewal within 10 s:\n{}",
        daemon.logs()
    );
    assert_ne!(serial(&certs), serial(&renewed));
    assert!(still_ready.ends_with("200"), "{still_ready}");
}
