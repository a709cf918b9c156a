//! Certificates outside the mesh for end-to-end tests (rcgen), and `openssl s_server` as a TLS
//! server that is not part of any mesh.

// Wall-clock time is right here: the server is a real process.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

pub use rcgen::ExtendedKeyUsagePurpose as Usage;

/// A CA, written to `<dir>/<name>-ca.pem`.
pub fn ca(dir: &Path, name: &str) -> (CertifiedIssuer<'static, KeyPair>, PathBuf) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&file, issuer.pem()).unwrap();
    (issuer, file)
}

/// A certificate for `names` signed by `ca`, written to `<dir>/<name>.pem` and
/// `<dir>/<name>-key.pem`.
pub fn leaf(
    dir: &Path,
    name: &str,
    names: &[&str],
    ca: &CertifiedIssuer<'static, KeyPair>,
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let files = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&files.0, cert.pem()).unwrap();
    std::fs::write(&files.1, key.serialize_pem()).unwrap();
    files
}

/// `openssl s_server -www` on a free loopback port (its status page names the client
/// certificate it got), killed on drop.
#[derive(Debug)]
pub struct HttpsServer {
    child: Child,
    pub port: u16,
}

impl HttpsServer {
    /// With `client_ca`, a client certificate is required and verified against it.
    pub fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let port = crate::free_port();
        let mut command = Command::new("openssl");
        command
            .args(["s_server", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key);
        if let Some(ca) = client_ca {
            command.args(["-Verify", "1", "-CAfile"]).arg(ca);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let server = Self { child, port };
        crate::mesh::until("s_server listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The common name of the server certificate `curl` meets, and verifies against `ca`, for
/// `https://<sni>:<port>/` with the name resolved to `address`. `curl` is the command to run
/// it with (a network namespace's, or plain `curl`). curl reports the certificate before it
/// verifies it: only a success counts.
pub fn server_common_name(
    mut curl: Command,
    ca: &Path,
    sni: &str,
    port: u16,
    address: &str,
) -> Result<String, String> {
    let out = curl
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{certs}",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{sni}:{port}:{address}"))
        .arg(format!("https://{sni}:{port}/"))
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "curl {sni}: {}: {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .map(|s| s.trim().trim_start_matches("CN =").trim().to_owned())
        .ok_or_else(|| format!("curl {sni}: no server certificate: {text}"))
}
