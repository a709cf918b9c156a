//! Helpers for end-to-end tests: locate the workspace's binaries, pick free loopback ports,
//! run `isthmusd` as a real process that is killed when the test ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub mod discovery;
pub mod envoy;
pub mod federation;
pub mod grpc_echo;
pub mod h2connect;
pub mod mesh;
pub mod netns;
pub mod proxy;
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

/// Runs `command` (curl, perhaps behind a wrapper) with `args`; returns (HTTP status or 0 when
/// there was no response, body).
pub fn curl_with(mut command: Command, args: &[&str]) -> (u16, String) {
    let out = command
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
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
    pub state_dir: PathBuf,
    stderr_file: PathBuf,
}

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
        let addresses_file = state_dir.join("addresses.json");
        let _ = std::fs::remove_file(&addresses_file);
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
            .args(["--grpc-addr", grpc_addr, "--debug-addr", "127.0.0.1:0"])
            .args(["--xds-plaintext-addr", "127.0.0.1:0"])
            .args(if extra.contains(&"--federation-addr") {
                &[][..]
            } else {
                &["--federation-addr", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_file)?)
            .spawn()
            .context("spawn isthmusd")?;
        let addresses = match wait_for_addresses(&mut child, &addresses_file) {
            Ok(addresses) => addresses,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let logs = std::fs::read_to_string(&stderr_file).unwrap_or_default();
                bail!("{e}:\n{logs}");
            }
        };
        let address = |key: &str| -> anyhow::Result<SocketAddr> {
            addresses[key]
                .as_str()
                .with_context(|| format!("{key} missing from addresses.json"))?
                .parse()
                .context("address")
        };
        let (grpc, debug, xds) = (
            address("grpc")?,
            address("debug")?,
            address("xdsPlaintext")?,
        );
        let federation = addresses["federation"]
            .as_str()
            .and_then(|a| a.parse().ok());
        let mut daemon = Self {
            child,
            grpc,
            xds,
            debug,
            federation,
            state_dir,
            stderr_file,
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

    /// The body of `GET <path>` on the debug port, fetched with curl.
    pub fn http_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}{path}", self.debug),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The text of the debug port's `/metrics`.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
    }

    /// The value of one metric line (`name{labels}` exactly), 0 when absent.
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Isthmusd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) for the addresses file isthmusd writes once its ports are bound.
fn wait_for_addresses(child: &mut Child, file: &Path) -> anyhow::Result<serde_json::Value> {
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("isthmusd exited with {status}");
        }
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(value) = serde_json::from_str(&text)
        {
            return Ok(value);
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
