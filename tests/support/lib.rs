//! Helpers for end-to-end tests: locate the workspace's binaries, pick free loopback ports,
//! run `isthmusd` as a real process that is killed when the test ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use isthmus_controlplane::daemon::Addresses;

pub mod certs;
pub mod discovery;
pub mod envoy;
pub mod federation;
pub mod grpc_echo;
pub mod h2connect;
pub mod in_process;
pub mod kube;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod promtool;
pub mod proxy;
pub mod test_api_server;
pub mod traffic;
pub mod up;

/// Path of a workspace binary in the same target directory as the running test.
/// The test command builds them first (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // A test: target/<profile>/deps/<test> -> target/<profile>/<name>; a benchmark binary:
    // target/<profile>/<bench> -> target/<profile>/<name>.
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago, never handed out twice in this process.
///
/// Taken below the kernel's ephemeral range (32768 and up), so that no port-0 bind and no
/// outgoing connection of a parallel test can take it between now and its use; a counter
/// (starting where this process's id points) keeps parallel tests from getting the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start + n) % SPAN;
        let port = u16::try_from(port).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Why curl got no complete HTTP response: its exit code and what it said on stderr.
///
/// Negative checks name the refusal they expect ([`CurlError::is_empty_reply`],
/// [`CurlError::tls_alert`], ...): a proxy that died gives [`CurlError::is_refused`] instead,
/// which no such check accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlError {
    /// curl's exit code (`None`: killed by a signal). 7 connection refused, 28 timeout, 35 TLS
    /// handshake failure, 52 empty reply, 56 receive failure, 60 server certificate refused.
    pub code: Option<i32>,
    /// The HTTP status curl had received before it failed, if any.
    pub status: Option<u16>,
    /// curl's message (it runs with `-sS`), and anything a wrapper printed.
    pub stderr: String,
    /// The command, for the failure message.
    pub command: String,
}

/// [`CurlError`]'s exit code, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurlFailure {
    /// 7: nothing listens there: the process under test is gone (or never bound).
    Refused,
    /// 28: no answer within `--max-time`.
    Timeout,
    /// 35: the TLS handshake failed (an alert, or the connection closed or reset mid-way).
    TlsHandshake,
    /// 52: the server closed the connection without a byte of response.
    EmptyReply,
    /// 56: receiving failed: a reset, or a TLS alert after the handshake.
    RecvFailure,
    /// 60: the server's certificate was not accepted.
    PeerCertificate,
    /// Anything else (the exit code is in [`CurlError::code`]).
    Other,
}

impl CurlError {
    pub fn kind(&self) -> CurlFailure {
        match self.code {
            Some(7) => CurlFailure::Refused,
            Some(28) => CurlFailure::Timeout,
            Some(35) => CurlFailure::TlsHandshake,
            Some(52) => CurlFailure::EmptyReply,
            Some(56) => CurlFailure::RecvFailure,
            Some(60) => CurlFailure::PeerCertificate,
            _ => CurlFailure::Other,
        }
    }

    /// Connection refused: nothing listens (a dead process), never a proxy's refusal.
    pub fn is_refused(&self) -> bool {
        self.kind() == CurlFailure::Refused
    }

    pub fn is_timeout(&self) -> bool {
        self.kind() == CurlFailure::Timeout
    }

    /// The connection was accepted, then closed before any response.
    pub fn is_empty_reply(&self) -> bool {
        self.kind() == CurlFailure::EmptyReply
    }

    /// The peer reset the connection (RST), during the TLS handshake or after it.
    pub fn is_reset(&self) -> bool {
        matches!(
            self.kind(),
            CurlFailure::TlsHandshake | CurlFailure::RecvFailure | CurlFailure::EmptyReply
        ) && self.stderr.contains("reset by peer")
    }

    /// The connection was accepted, then closed with no response and no TLS alert: an empty
    /// reply (FIN), or a reset (RST: the kernel's answer when the server closes with the
    /// request still unread, which races with the request's arrival). A dead process is
    /// [`CurlError::is_refused`] instead.
    pub fn is_closed(&self) -> bool {
        self.tls_alert().is_none() && (self.is_empty_reply() || self.is_reset())
    }

    /// Sending the request failed: the server had torn the connection down (55, or 16 with
    /// HTTP/2: "Send failure").
    pub fn is_send_failure(&self) -> bool {
        self.code == Some(55) || (self.code == Some(16) && self.stderr.contains("Send failure"))
    }

    /// The TLS alert the server sent (`"certificate required"`, `"handshake failure"`,
    /// `"unknown ca"`...), during the handshake (35) or at the first read after it (56).
    pub fn tls_alert(&self) -> Option<&str> {
        if !matches!(
            self.kind(),
            CurlFailure::TlsHandshake | CurlFailure::RecvFailure
        ) {
            return None;
        }
        // OpenSSL: "...:SSL routines::tlsv13 alert certificate required, errno 0".
        let at = self.stderr.find(" alert ")? + " alert ".len();
        let rest = &self.stderr[at..];
        let end = rest.find([',', '\n', '(']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }

    /// The server sent a TLS alert.
    pub fn is_tls_alert(&self) -> bool {
        self.tls_alert().is_some()
    }
}

impl std::fmt::Display for CurlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "curl exited with {code} ({:?})", self.kind())?,
            None => write!(f, "curl was killed by a signal")?,
        }
        if let Some(status) = self.status {
            write!(f, " after HTTP status {status}")?;
        }
        write!(f, ": {} [{}]", self.stderr.trim(), self.command)
    }
}

impl std::error::Error for CurlError {}

/// Runs `command` (curl, perhaps behind a wrapper) with `args` (5 s at most); the HTTP status
/// and body of a complete response, or why there was none.
pub fn curl_with(mut command: Command, args: &[&str]) -> Result<(u16, String), CurlError> {
    let out = command
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse::<u16>().ok().filter(|s| *s != 0);
    match (out.status.code(), status) {
        (Some(0), Some(status)) => Ok((status, body.to_owned())),
        (code, status) => Err(CurlError {
            code,
            status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command: format!("{command:?}"),
        }),
    }
}

/// Runs `isthmusctl` with `args` to completion.
pub fn isthmusctl(args: &[&str]) -> Output {
    Command::new(bin("isthmusctl"))
        .args(args)
        .output()
        .expect("run isthmusctl")
}

/// A bootstrap token for `identity` from `isthmusctl token create`, in a file under `dir`.
pub fn create_token(daemon: &Isthmusd, dir: &Path, identity: &str) -> PathBuf {
    let file = dir.join(format!(
        "token-{}",
        identity.rsplit('/').next().unwrap_or("x")
    ));
    let out = isthmusctl(&[
        "token",
        "create",
        "--state-dir",
        &daemon.state_dir.to_string_lossy(),
        "--identity",
        identity,
        "--out",
        &file.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

/// A certificate for `identity` from `daemon`'s CA, the way a workload gets one (a token, then
/// `isthmusctl cert request`): the folder holding `cert-chain.pem`, `key.pem`, `root-cert.pem`.
pub fn request_cert(daemon: &Isthmusd, dir: &Path, identity: &str) -> PathBuf {
    let token = create_token(daemon, dir, identity);
    let out_dir = dir.join(format!(
        "tls-{}",
        identity.rsplit('/').next().unwrap_or("x")
    ));
    let out = isthmusctl(&[
        "cert",
        "request",
        "--ca-addr",
        &daemon.grpc.to_string(),
        "--root",
        &daemon.root_file().to_string_lossy(),
        "--token-file",
        &token.to_string_lossy(),
        "--identity",
        identity,
        "--out-dir",
        &out_dir.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_dir
}

/// A running `isthmusd`, killed on drop.
#[derive(Debug)]
pub struct Isthmusd {
    child: Child,
    pub grpc: SocketAddr,
    /// Plaintext xDS (loopback).
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    /// Federation discovery (peers' control planes connect here).
    pub federation: Option<SocketAddr>,
    /// The admission webhooks (HTTPS).
    pub webhook: Option<SocketAddr>,
    pub state_dir: PathBuf,
    stderr_file: PathBuf,
    /// What it was started with, for [`Isthmusd::restart`].
    root: PathBuf,
    trust_domain: String,
    extra: Vec<String>,
}

/// The address flags `launch` gives a port-0 default unless `extra` names them.
const ADDRESS_FLAGS: [&str; 5] = [
    "--grpc-addr",
    "--debug-addr",
    "--xds-plaintext-addr",
    "--federation-addr",
    "--webhook-addr",
];

impl Isthmusd {
    /// Starts `isthmusd` for `trust_domain` with fresh config and state dirs under `root`, plus
    /// `extra` flags, and waits until its ports answer.
    pub fn start(root: &Path, trust_domain: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(root, trust_domain, extra, None)
    }

    /// Starts `isthmusd` inside the network namespace `netns`, its gRPC port (CA and mTLS
    /// xDS) on `grpc_addr` so that other namespaces reach it; the other ports on loopback.
    pub fn start_in_netns(
        root: &Path,
        trust_domain: &str,
        netns: &str,
        grpc_addr: &str,
    ) -> anyhow::Result<Self> {
        Self::launch(root, trust_domain, &[], Some((netns, grpc_addr)))
    }

    fn launch(
        root: &Path,
        trust_domain: &str,
        extra: &[&str],
        netns: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let config_dir = root.join("config");
        let state_dir = root.join("state");
        std::fs::create_dir_all(&config_dir)?;
        // Port 0 everywhere: isthmusd binds free ports and publishes them, so parallel tests
        // cannot race for a port.
        let _ = std::fs::remove_file(Addresses::path(&state_dir));
        let stderr_file = root.join("isthmusd.log");
        let mut command = match netns {
            Some((netns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(bin("isthmusd"));
                c
            }
            None => Command::new(bin("isthmusd")),
        };
        let grpc_addr = netns.map_or("127.0.0.1:0", |(_, grpc)| grpc);
        let mut child = command
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--trust-domain", trust_domain])
            .args(
                ADDRESS_FLAGS
                    .into_iter()
                    .filter(|flag| !extra.contains(flag))
                    .flat_map(|flag| {
                        let value = if flag == "--grpc-addr" {
                            grpc_addr
                        } else {
                            "127.0.0.1:0"
                        };
                        [flag, value]
                    }),
            )
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_file)?)
            .spawn()
            .context("spawn isthmusd")?;
        let addresses = match wait_for_addresses(&mut child, &state_dir) {
            Ok(addresses) => addresses,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let logs = std::fs::read_to_string(&stderr_file).unwrap_or_default();
                bail!("{e}:\n{logs}");
            }
        };
        let (grpc, debug, federation) = (addresses.grpc, addresses.debug, addresses.federation);
        let xds = addresses
            .xds_plaintext
            .context("isthmusd published no plaintext xDS address")?;
        let mut daemon = Self {
            child,
            grpc,
            xds,
            debug,
            federation,
            webhook: addresses.webhook,
            state_dir,
            stderr_file,
            root: root.to_owned(),
            trust_domain: trust_domain.to_owned(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        // In another namespace its ports cannot be tried from here; bound is enough there.
        if netns.is_none() {
            daemon.wait_ready()?;
        }
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        // The addresses file is written after binding; this waits for the servers to answer.
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                bail!("isthmusd exited with {status}:\n{}", self.logs());
            }
            if [self.grpc, self.xds, self.debug]
                .iter()
                .all(|addr| TcpStream::connect(addr).is_ok())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("isthmusd did not become ready:\n{}", self.logs())
    }

    /// What isthmusd logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }

    /// The root workloads trust, as published in the state directory.
    pub fn root_file(&self) -> PathBuf {
        self.state_dir.join("root-cert.pem")
    }

    /// The body of `GET <path>` on the debug port, fetched with curl; fails the test when
    /// the port does not answer (isthmusd is gone).
    pub fn http_get(&self, path: &str) -> String {
        match curl_with(
            Command::new("curl"),
            &[&format!("http://{}{path}", self.debug)],
        ) {
            Ok((_, body)) => body,
            Err(e) => panic!("isthmusd's debug port: {e}\n{}", self.logs()),
        }
    }

    /// The text of the debug port's `/metrics`.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
    }

    /// The value of one metric line (`name{labels}` exactly); `None` when `/metrics` has no
    /// such series (a labelled series appears at its first count).
    pub fn metric(&self, series: &str) -> Option<u64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Isthmusd {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it outright (SIGKILL, as a crash), waits `down`, and starts it again with the same
    /// directories, trust domain, flags and addresses, so that its proxies and peers find it
    /// where it was.
    pub fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let mut args: Vec<String> = Vec::new();
        let mut extra = self.extra.iter();
        while let Some(arg) = extra.next() {
            if ADDRESS_FLAGS.contains(&arg.as_str()) {
                extra.next();
            } else {
                args.push(arg.clone());
            }
        }
        for (flag, addr) in [
            ("--grpc-addr", Some(self.grpc)),
            ("--debug-addr", Some(self.debug)),
            ("--xds-plaintext-addr", Some(self.xds)),
            ("--federation-addr", self.federation),
            ("--webhook-addr", self.webhook),
        ] {
            if let Some(addr) = addr {
                args.extend([flag.to_owned(), addr.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        *self = Self::launch(&self.root.clone(), &self.trust_domain.clone(), &args, None)?;
        Ok(())
    }
}

impl Drop for Isthmusd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) for the addresses file isthmusd writes once its ports are bound.
/// The addresses `isthmusd` publishes in `STATE/addresses.json` once every port is bound.
fn wait_for_addresses(child: &mut Child, state_dir: &Path) -> anyhow::Result<Addresses> {
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("isthmusd exited with {status}");
        }
        if let Ok(addresses) = Addresses::read(state_dir) {
            return Ok(addresses);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("isthmusd did not publish its addresses")
}

/// Runs `isthmusd` expecting it to fail at start-up; returns its exit code and stderr.
pub fn isthmusd_start_failure(root: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("isthmusd"))
        .args(args)
        .args(["--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .args(if args.contains(&"--xds-plaintext-addr") {
            Vec::new()
        } else {
            vec!["--xds-plaintext-addr", "127.0.0.1:0"]
        })
        .args(["--federation-addr", "127.0.0.1:0"])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run isthmusd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a shell command (openssl and friends); fails with its output if it fails.
pub fn sh(dir: &Path, script: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{script}` failed:\n{text}");
    }
    Ok(text)
}
