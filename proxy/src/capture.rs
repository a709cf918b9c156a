//! `isthmus-proxy capture`: the transparent-capture rules of a pod, as the injected init
//! container installs them (Istio's `istio-iptables`, same exclusions): the pod's inbound TCP is
//! redirected to the proxy's inbound port (15006) and its outbound TCP to the outbound port
//! (15001), except
//!
//! - traffic of the proxy itself (its UID and GID), so that the proxy's own connections leave;
//! - loopback destinations (the application's own calls to itself);
//! - the proxy's own inbound ports (15020 merged metrics and health, 15021 readiness, 15090
//!   Prometheus) and `--exclude-inbound-ports`;
//! - `--exclude-outbound-ports`; and, with `--include-outbound-ip-ranges` other than `*`, every
//!   destination outside those ranges.
//!
//! The rules are one `iptables-restore --noflush` script for the `nat` table, so they are
//! installed all at once or not at all; `--dry-run` prints it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Ports of the proxy that are never captured inbound (Istio's list).
pub const PROXY_INBOUND_PORTS: [u16; 3] = [15020, 15021, 15090];

/// The chains the rules create (their names say whose they are).
const INBOUND: &str = "ISTHMUS_INBOUND";
const IN_REDIRECT: &str = "ISTHMUS_IN_REDIRECT";
const OUTPUT: &str = "ISTHMUS_OUTPUT";
const REDIRECT: &str = "ISTHMUS_REDIRECT";

/// `isthmus-proxy capture` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "isthmus-proxy capture",
    about = "Install the pod's transparent-capture rules (run once, as root, in the pod's network namespace)"
)]
pub struct CaptureArgs {
    /// The proxy's user id: its own traffic is never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's group id (default: the user id).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Where inbound TCP is redirected (the proxy's `virtualInbound` listener).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Where outbound TCP is redirected (the proxy's `virtualOutbound` listener).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Inbound ports not captured (comma-separated; the annotation
    /// `traffic.sidecar.istio.io/excludeInboundPorts`).
    #[arg(long, value_delimiter = ',', value_parser = port)]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports not captured (`traffic.sidecar.istio.io/excludeOutboundPorts`).
    #[arg(long, value_delimiter = ',', value_parser = port)]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations captured: `*` (all, the default) or CIDRs
    /// (`traffic.sidecar.istio.io/includeOutboundIPRanges`).
    #[arg(long, value_delimiter = ',', default_value = "*", value_parser = range)]
    pub include_outbound_ip_ranges: Vec<Range>,
    /// Print the `iptables-restore` script instead of installing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// An outbound range to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    All,
    /// An IPv4 CIDR, `address/prefix`.
    Cidr(IpAddr, u8),
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn range(text: &str) -> Result<Range, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(Range::All);
    }
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{text:?} is not `*` or an IPv4 CIDR"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32 && address.is_ipv4())
        .ok_or_else(|| format!("{text:?} is not `*` or an IPv4 CIDR"))?;
    Ok(Range::Cidr(address, prefix))
}

impl CaptureArgs {
    /// The `iptables-restore --noflush` script of the `nat` table.
    pub fn script(&self) -> String {
        let gid = self.proxy_gid.unwrap_or(self.proxy_uid);
        let mut s = String::from("*nat\n");
        for chain in [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT] {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        // Inbound: everything but the proxy's own ports and the excluded ones.
        let _ = writeln!(s, "-A PREROUTING -p tcp -j {INBOUND}");
        let mut exempt: Vec<u16> = PROXY_INBOUND_PORTS.to_vec();
        exempt.extend(&self.exclude_inbound_ports);
        exempt.sort_unstable();
        exempt.dedup();
        for p in exempt {
            let _ = writeln!(s, "-A {INBOUND} -p tcp --dport {p} -j RETURN");
        }
        let _ = writeln!(s, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
        let _ = writeln!(
            s,
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        // Outbound: not the proxy's own traffic, not loopback, not the excluded ports.
        let _ = writeln!(s, "-A OUTPUT -p tcp -j {OUTPUT}");
        let _ = writeln!(
            s,
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(s, "-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN");
        let _ = writeln!(s, "-A {OUTPUT} -d 127.0.0.1/32 -j RETURN");
        let mut excluded = self.exclude_outbound_ports.clone();
        excluded.sort_unstable();
        excluded.dedup();
        for p in excluded {
            let _ = writeln!(s, "-A {OUTPUT} -p tcp --dport {p} -j RETURN");
        }
        if self.include_outbound_ip_ranges.contains(&Range::All) {
            let _ = writeln!(s, "-A {OUTPUT} -j {REDIRECT}");
        } else {
            for r in &self.include_outbound_ip_ranges {
                if let Range::Cidr(address, prefix) = r {
                    let _ = writeln!(s, "-A {OUTPUT} -d {address}/{prefix} -j {REDIRECT}");
                }
            }
        }
        let _ = writeln!(
            s,
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        s.push_str("COMMIT\n");
        s
    }

    /// Installs the rules with `iptables-restore --noflush` (or prints them).
    pub fn run(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let script = self.script();
        if self.dry_run {
            std::io::stdout().write_all(script.as_bytes())?;
            return Ok(());
        }
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run iptables-restore (is iptables installed?)")?;
        child
            .stdin
            .take()
            .context("iptables-restore has no stdin")?
            .write_all(script.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            anyhow::bail!(
                "iptables-restore refused the rules ({}): {}\n{script}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(flags: &[&str]) -> CaptureArgs {
        let mut all = vec!["capture"];
        all.extend_from_slice(flags);
        CaptureArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_capture_everything_but_the_proxy_its_ports_and_loopback() {
        let script = args(&[]).script();
        for line in [
            "-A PREROUTING -p tcp -j ISTHMUS_INBOUND",
            "-A ISTHMUS_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A ISTHMUS_INBOUND -p tcp --dport 15021 -j RETURN",
            "-A ISTHMUS_INBOUND -p tcp --dport 15090 -j RETURN",
            "-A ISTHMUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A ISTHMUS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTHMUS_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTHMUS_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT",
            "-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}\n{script}");
        }
        assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"));
    }

    #[test]
    fn exclusions_and_included_ranges_are_istios_annotations() {
        let script = args(&[
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--exclude-inbound-ports",
            "22,9000",
            "--exclude-outbound-ports",
            "5432",
            "--include-outbound-ip-ranges",
            "10.0.0.0/8,192.168.1.7",
        ])
        .script();
        for line in [
            "-A ISTHMUS_INBOUND -p tcp --dport 22 -j RETURN",
            "-A ISTHMUS_INBOUND -p tcp --dport 9000 -j RETURN",
            "-A ISTHMUS_OUTPUT -m owner --uid-owner 2000 -j RETURN",
            "-A ISTHMUS_OUTPUT -m owner --gid-owner 3000 -j RETURN",
            "-A ISTHMUS_OUTPUT -p tcp --dport 5432 -j RETURN",
            "-A ISTHMUS_OUTPUT -d 10.0.0.0/8 -j ISTHMUS_REDIRECT",
            "-A ISTHMUS_OUTPUT -d 192.168.1.7/32 -j ISTHMUS_REDIRECT",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}\n{script}");
        }
        assert!(!script.contains("-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT"));
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let bad = |flags: &[&str]| {
            let mut all = vec!["capture"];
            all.extend_from_slice(flags);
            CaptureArgs::try_parse_from(all).unwrap_err().to_string()
        };
        assert!(bad(&["--exclude-inbound-ports", "0"]).contains("not a port"));
        assert!(bad(&["--exclude-outbound-ports", "http"]).contains("not a port"));
        assert!(bad(&["--include-outbound-ip-ranges", "10.0.0.0/33"]).contains("CIDR"));
        // No way to smuggle rules into the script.
        assert!(bad(&["--include-outbound-ip-ranges=10.0.0.0/8 -j ACCEPT"]).contains("CIDR"));
    }
}
