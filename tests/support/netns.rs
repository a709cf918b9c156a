//! Network namespaces a test creates and removes: hosts of their own on one machine, joined by
//! veth pairs, with their own iptables rules (transparent capture). Needs root, `ip` and
//! `iptables` (the test command installs them).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// A network namespace, deleted on drop (with its interfaces and iptables rules).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `isthmus-<pid>-<name>`, with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let name = format!("isthmus-{}-{name}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.run("ip", &["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program.as_ref());
        c
    }

    /// Runs `program args` inside the namespace; its stdout, or an error with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs each line of `rules` as `iptables <line>` inside the namespace.
    pub fn iptables(&self, rules: &str) -> anyhow::Result<()> {
        for rule in rules.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let args: Vec<&str> = rule.split_whitespace().collect();
            self.run("iptables", &args)
                .with_context(|| format!("iptables {rule}"))?;
        }
        Ok(())
    }

    /// curl from inside the namespace: (HTTP status, body), or why there was no response.
    pub fn curl(&self, args: &[&str]) -> Result<(u16, String), crate::CurlError> {
        crate::curl_with(self.command("curl"), args)
    }

    /// curl from inside the namespace as the user `uid` (whose traffic capture rules skip).
    pub fn curl_as(&self, uid: u32, args: &[&str]) -> Result<(u16, String), crate::CurlError> {
        let mut c = self.command("setpriv");
        c.args(setpriv_args(uid)).arg("curl");
        crate::curl_with(c, args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `setpriv` arguments that run a program as `uid` (group `uid`, no other groups).
pub fn setpriv_args(uid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// Joins `a` and `b` with a veth pair, `a_ip` and `b_ip` on a /24.
pub fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> anyhow::Result<()> {
    // Interface names are at most 15 bytes, and unique on the machine while they are created
    // (a test may join several pairs).
    static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tag = std::process::id() % 1_000_000;
    let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (va, vb) = (format!("ith{tag}x{n}a"), format!("ith{tag}x{n}b"));
    run(Command::new("ip").args([
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]))?;
    for (ns, dev, ip) in [(a, &va, a_ip), (b, &vb, b_ip)] {
        ns.run("ip", &["addr", "add", &format!("{ip}/24"), "dev", dev])?;
        ns.run("ip", &["link", "set", dev, "up"])?;
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
