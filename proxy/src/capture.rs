//! `isthmus-proxy capture`: the transparent-capture rules of a pod, as the injected init
//! container installs them (Istio's `istio-iptables`, same exclusions and the same
//! `traffic.sidecar.istio.io/*` annotations): the pod's inbound TCP is redirected to the proxy's
//! inbound port (15006) and its outbound TCP to the outbound port (15001), except
//!
//! - traffic of the proxy itself (its UID and GID), so that the proxy's own connections leave;
//! - loopback destinations (the application's own calls to itself);
//! - the proxy's own inbound ports (15020 merged metrics and health, 15021 readiness, 15090
//!   Prometheus) and `--exclude-inbound-ports` (`excludeInboundPorts`);
//! - with `--include-inbound-ports` (`includeInboundPorts`) other than `*`, every inbound port
//!   not listed; the exclusions above still win over a listed port;
//! - `--exclude-outbound-ports` (`excludeOutboundPorts`) and `--exclude-outbound-ip-ranges`
//!   (`excludeOutboundIPRanges`); and, with `--include-outbound-ip-ranges`
//!   (`includeOutboundIPRanges`) other than `*`, every destination outside those ranges;
//! - traffic on the interfaces of `--exclude-interfaces` (`excludeInterfaces`), either way.
//!
//! With `--capture-dns` (Istio's `ISTIO_META_DNS_CAPTURE`), the application's DNS to the name
//! servers of its `resolv.conf` (any server with `--capture-all-dns`), UDP and TCP port 53, is
//! redirected to the sidecar's DNS proxy (15053), the proxy's own queries excepted.
//!
//! Every list flag takes its whole value at once, comma-separated (`--flag=a,b`; given once),
//! items trimmed and empty items ignored, as Istio splits annotations; an empty value
//! (`--flag=` or `--flag ""`) is the empty list. For the exclusions that means "none" (their
//! default); for `--include-inbound-ports` and `--include-outbound-ip-ranges` (default `*`,
//! everything) it means "nothing": no capture at all in that direction, Istio's
//! `includeInboundPorts: ""` and `includeOutboundIPRanges: ""`. A `*` among the items of an
//! include list means everything. Every item is checked (ports 1–65535, IPv4 CIDRs
//! `a.b.c.d[/0-32]`, interface names as Linux allows them with the characters narrowed, 1 to 15
//! of `A-Z a-z 0-9 _ . -`, not `.` or `..`) and the script is written from the parsed values, so
//! no flag can add anything else to it (an interface name is one word of the script:
//! `iptables-restore` splits its lines on blanks, and an option's argument is the word after it
//! even when it starts with `-`).
//!
//! The rules are one `iptables-restore --noflush` script: with `--capture-dns` the `raw` table's
//! conntrack zones first, then the `nat` table. `iptables-nft` applies it as one transaction;
//! legacy `iptables-restore` commits table by table and stops at the first that fails, so the
//! redirects are installed whole or not at all either way (at worst the zones alone, which
//! change nothing without them). `--dry-run` prints it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Ports of the proxy that are never captured inbound (Istio's list).
pub const PROXY_INBOUND_PORTS: [u16; 3] = [15020, 15021, 15090];

/// The chains the rules create (their names say whose they are).
const INBOUND: &str = "ISTHMUS_INBOUND";
const IN_REDIRECT: &str = "ISTHMUS_IN_REDIRECT";
const OUTPUT: &str = "ISTHMUS_OUTPUT";
const REDIRECT: &str = "ISTHMUS_REDIRECT";
const DNS: &str = "ISTHMUS_DNS";

/// Linux's longest interface name (`IFNAMSIZ` less the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;

// The list flags' fields are written `::std::vec::Vec<…>`: so written, clap takes the flag's
// whole value to the parser (which splits it and accepts an empty value) instead of splitting
// it itself and parsing each item.

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
    /// Inbound ports captured: `*` (all but the excluded ones, the default), a comma-separated
    /// list, or empty (`--include-inbound-ports=`): no inbound capture
    /// (`traffic.sidecar.istio.io/includeInboundPorts`).
    #[arg(long, default_value = "*", value_parser = inbound_ports)]
    pub include_inbound_ports: Ports,
    /// Inbound ports not captured (comma-separated; the annotation
    /// `traffic.sidecar.istio.io/excludeInboundPorts`).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = ports)]
    pub exclude_inbound_ports: ::std::vec::Vec<u16>,
    /// Outbound ports not captured (`traffic.sidecar.istio.io/excludeOutboundPorts`).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = ports)]
    pub exclude_outbound_ports: ::std::vec::Vec<u16>,
    /// Outbound destinations captured: `*` (all, the default), comma-separated IPv4 CIDRs, or
    /// empty (`--include-outbound-ip-ranges=`): no outbound capture
    /// (`traffic.sidecar.istio.io/includeOutboundIPRanges`).
    #[arg(long, default_value = "*", value_parser = ranges)]
    pub include_outbound_ip_ranges: Ranges,
    /// Outbound destinations not captured: comma-separated IPv4 CIDRs
    /// (`traffic.sidecar.istio.io/excludeOutboundIPRanges`).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = cidrs)]
    pub exclude_outbound_ip_ranges: ::std::vec::Vec<Cidr>,
    /// Interfaces whose traffic is never captured, either way: comma-separated names
    /// (`traffic.sidecar.istio.io/excludeInterfaces`).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = interfaces)]
    pub exclude_interfaces: ::std::vec::Vec<Interface>,
    /// Send the application's DNS (UDP and TCP to port 53) to the sidecar's DNS proxy
    /// (`--dns-port`), Istio's DNS capture: by default only DNS to the name servers of
    /// `--resolv-conf`, so an application that asks a server of its own choosing still
    /// reaches it.
    #[arg(long)]
    pub capture_dns: bool,
    /// With `--capture-dns`: DNS to any server is captured.
    #[arg(long)]
    pub capture_all_dns: bool,
    /// Where captured DNS goes (the proxy's `--dns-addr` port).
    #[arg(long, default_value_t = 15053)]
    pub dns_port: u16,
    /// The pod's resolver settings: their name servers are whose DNS `--capture-dns` captures.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: std::path::PathBuf,
    /// Print the `iptables-restore` script instead of installing it.
    #[arg(long)]
    pub dry_run: bool,
}

/// The outbound destinations to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// `*`: every destination.
    All,
    /// Only these; none when empty.
    Cidrs(Vec<Cidr>),
}

/// The inbound ports to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// `*`: every port.
    All,
    /// Only these; none when empty.
    Only(Vec<u16>),
}

/// An IPv4 CIDR, `address/prefix` (`/32` when written without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    /// 0–32.
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A network interface name, checked (module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface(String);

impl Interface {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The items of a comma-separated list: trimmed, the empty ones ignored (Istio's split).
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// `items` in their order, the second and later of equal ones dropped.
fn unique<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut unique = Vec::new();
    for item in items {
        if !unique.contains(&item) {
            unique.push(item);
        }
    }
    unique
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn ports(text: &str) -> Result<Vec<u16>, String> {
    items(text).map(port).collect()
}

fn inbound_ports(text: &str) -> Result<Ports, String> {
    let mut all = false;
    let mut only = Vec::new();
    for item in items(text) {
        if item == "*" {
            all = true;
        } else {
            only.push(port(item).map_err(|_| format!("{item:?} is not a port (1-65535) or `*`"))?);
        }
    }
    Ok(if all { Ports::All } else { Ports::Only(only) })
}

fn cidr(text: &str) -> Result<Cidr, String> {
    let invalid = || format!("{text:?} is not an IPv4 CIDR");
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(invalid)?;
    Ok(Cidr { address, prefix })
}

fn cidrs(text: &str) -> Result<Vec<Cidr>, String> {
    Ok(unique(
        items(text).map(cidr).collect::<Result<Vec<_>, _>>()?,
    ))
}

fn ranges(text: &str) -> Result<Ranges, String> {
    let mut all = false;
    let mut only = Vec::new();
    for item in items(text) {
        if item == "*" {
            all = true;
        } else {
            only.push(cidr(item).map_err(|_| format!("{item:?} is not `*` or an IPv4 CIDR"))?);
        }
    }
    Ok(if all {
        Ranges::All
    } else {
        Ranges::Cidrs(unique(only))
    })
}

fn interface(text: &str) -> Result<Interface, String> {
    let valid = (1..=MAX_INTERFACE_NAME).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && text != "."
        && text != "..";
    if valid {
        Ok(Interface(text.to_owned()))
    } else {
        Err(format!(
            "{text:?} is not an interface name (1-{MAX_INTERFACE_NAME} of A-Z a-z 0-9 _ . -, \
             not `.` or `..`)"
        ))
    }
}

fn interfaces(text: &str) -> Result<Vec<Interface>, String> {
    Ok(unique(
        items(text).map(interface).collect::<Result<Vec<_>, _>>()?,
    ))
}

impl CaptureArgs {
    /// The `iptables-restore --noflush` script of the `nat` table, DNS captured (with
    /// `--capture-dns`) to `name_servers` (all with `--capture-all-dns`), after the `raw`
    /// table's conntrack zones of captured DNS.
    pub fn script(&self, name_servers: &[Ipv4Addr]) -> String {
        let mut s = String::new();
        // First: where a table is committed on its own (legacy iptables), a kernel without
        // the CT target fails the script before any redirect is in place.
        if self.capture_dns {
            self.dns_zones(&mut s, name_servers);
        }
        s.push_str("*nat\n");
        for chain in [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT] {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        if self.capture_dns {
            let _ = writeln!(s, ":{DNS} - [0:0]");
        }
        self.inbound(&mut s);
        let _ = writeln!(
            s,
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        self.outbound(&mut s, name_servers);
        let _ = writeln!(
            s,
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        s.push_str("COMMIT\n");
        s
    }

    /// The `raw` table's conntrack zones of captured DNS (Istio's): the proxy's queries to the
    /// name servers and their answers in zone 1; the application's queries (redirected to the
    /// proxy) and the proxy's answers to them in zone 2, so an answer meets the query's NAT
    /// entry and leaves with the name server's address. Without them an application query that
    /// happens to reuse the source port of one of the proxy's would match the proxy's
    /// conntrack entry, skip the redirect and reach the name server directly. The first `CT`
    /// rule a packet meets sets its zone, so the proxy's own rules come first.
    fn dns_zones(&self, s: &mut String, name_servers: &[Ipv4Addr]) {
        let gid = self.proxy_gid.unwrap_or(self.proxy_uid);
        let servers: Vec<Option<Ipv4Addr>> = if self.capture_all_dns {
            vec![None]
        } else {
            unique(name_servers.iter().copied())
                .into_iter()
                .map(Some)
                .collect()
        };
        s.push_str("*raw\n");
        for owner in [
            format!("--uid-owner {}", self.proxy_uid),
            format!("--gid-owner {gid}"),
        ] {
            for server in &servers {
                let to = server.map(|ip| format!(" -d {ip}/32")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "-A OUTPUT{to} -p udp --dport 53 -m owner {owner} -j CT --zone 1"
                );
            }
            let _ = writeln!(
                s,
                "-A OUTPUT -p udp --sport {} -m owner {owner} -j CT --zone 2",
                self.dns_port
            );
        }
        for server in &servers {
            let to = server.map(|ip| format!(" -d {ip}/32")).unwrap_or_default();
            let _ = writeln!(s, "-A OUTPUT{to} -p udp --dport 53 -j CT --zone 2");
        }
        for server in &servers {
            let from = server.map(|ip| format!(" -s {ip}/32")).unwrap_or_default();
            let _ = writeln!(s, "-A PREROUTING{from} -p udp --sport 53 -j CT --zone 1");
        }
        s.push_str("COMMIT\n");
    }

    /// Inbound: the included ports (all by default) but the proxy's own and the excluded ones;
    /// nothing at all when no port is included.
    fn inbound(&self, s: &mut String) {
        if self.include_inbound_ports == Ports::Only(Vec::new()) {
            return;
        }
        for name in &self.exclude_interfaces {
            let _ = writeln!(s, "-A PREROUTING -i {name} -j RETURN");
        }
        let _ = writeln!(s, "-A PREROUTING -p tcp -j {INBOUND}");
        let mut exempt: Vec<u16> = PROXY_INBOUND_PORTS.to_vec();
        exempt.extend(&self.exclude_inbound_ports);
        exempt.sort_unstable();
        exempt.dedup();
        for p in &exempt {
            let _ = writeln!(s, "-A {INBOUND} -p tcp --dport {p} -j RETURN");
        }
        match &self.include_inbound_ports {
            Ports::All => {
                let _ = writeln!(s, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
            }
            Ports::Only(only) => {
                let mut only = only.clone();
                only.sort_unstable();
                only.dedup();
                // An exempt port returns before its redirect would be reached: none is written.
                for p in only.iter().filter(|p| !exempt.contains(p)) {
                    let _ = writeln!(s, "-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}");
                }
            }
        }
    }

    /// Outbound: the included destinations (all by default) but the proxy's own traffic,
    /// loopback, and the excluded ports and destinations; nothing at all when no destination is
    /// included.
    fn outbound(&self, s: &mut String, name_servers: &[Ipv4Addr]) {
        let capture_tcp = self.include_outbound_ip_ranges != Ranges::Cidrs(Vec::new());
        if !capture_tcp && !self.capture_dns {
            return;
        }
        for name in &self.exclude_interfaces {
            let _ = writeln!(s, "-A OUTPUT -o {name} -j RETURN");
        }
        let gid = self.proxy_gid.unwrap_or(self.proxy_uid);
        if self.capture_dns {
            self.dns(s, gid, name_servers);
        }
        if !capture_tcp {
            return;
        }
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
        for cidr in &self.exclude_outbound_ip_ranges {
            let _ = writeln!(s, "-A {OUTPUT} -d {cidr} -j RETURN");
        }
        match &self.include_outbound_ip_ranges {
            Ranges::All => {
                let _ = writeln!(s, "-A {OUTPUT} -j {REDIRECT}");
            }
            Ranges::Cidrs(cidrs) => {
                for cidr in cidrs {
                    let _ = writeln!(s, "-A {OUTPUT} -d {cidr} -j {REDIRECT}");
                }
            }
        }
    }

    /// DNS to port 53 (UDP, and TCP before the TCP capture sees it) redirected to the DNS
    /// proxy, but the proxy's own (its forwarding to the real servers).
    fn dns(&self, s: &mut String, gid: u32, name_servers: &[Ipv4Addr]) {
        for protocol in ["udp", "tcp"] {
            let _ = writeln!(s, "-A OUTPUT -p {protocol} --dport 53 -j {DNS}");
        }
        let _ = writeln!(
            s,
            "-A {DNS} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(s, "-A {DNS} -m owner --gid-owner {gid} -j RETURN");
        let port = self.dns_port;
        for protocol in ["udp", "tcp"] {
            if self.capture_all_dns {
                let _ = writeln!(s, "-A {DNS} -p {protocol} -j REDIRECT --to-ports {port}");
                continue;
            }
            for server in unique(name_servers.iter().copied()) {
                let _ = writeln!(
                    s,
                    "-A {DNS} -d {server}/32 -p {protocol} -j REDIRECT --to-ports {port}"
                );
            }
        }
    }

    /// The IPv4 name servers of `--resolv-conf` (read only with `--capture-dns` and without
    /// `--capture-all-dns`).
    fn name_servers(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        if !self.capture_dns || self.capture_all_dns {
            return Ok(Vec::new());
        }
        let upstream = crate::dns::Upstream::read(&self.resolv_conf)?;
        let mut v4 = Vec::new();
        for server in &upstream.servers {
            match server.ip() {
                std::net::IpAddr::V4(ip) => v4.push(ip),
                // The rules are IPv4 (iptables) only.
                std::net::IpAddr::V6(ip) => tracing::warn!(
                    server = %ip,
                    "IPv6 name server in resolv.conf: its DNS is not captured"
                ),
            }
        }
        Ok(v4)
    }

    /// Installs the rules with `iptables-restore --noflush` (or prints them).
    pub fn run(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let script = self.script(&self.name_servers()?);
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
        let script = args(&[]).script(&[]);
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
    fn dns_to_the_pods_name_servers_goes_to_the_dns_proxy_but_the_proxys_own() {
        let servers = [Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11)];
        let script = args(&["--capture-dns"]).script(&servers);
        let lines: Vec<&str> = script.lines().collect();
        let at = |line: &str| {
            lines
                .iter()
                .position(|l| *l == line)
                .unwrap_or_else(|| panic!("{line}\n{script}"))
        };
        at(":ISTHMUS_DNS - [0:0]");
        let udp = at("-A OUTPUT -p udp --dport 53 -j ISTHMUS_DNS");
        let tcp = at("-A OUTPUT -p tcp --dport 53 -j ISTHMUS_DNS");
        let tcp_capture = at("-A OUTPUT -p tcp -j ISTHMUS_OUTPUT");
        assert!(
            udp < tcp_capture && tcp < tcp_capture,
            "DNS first\n{script}"
        );
        let own = at("-A ISTHMUS_DNS -m owner --uid-owner 1337 -j RETURN");
        let redirect = at("-A ISTHMUS_DNS -d 10.96.0.10/32 -p udp -j REDIRECT --to-ports 15053");
        assert!(own < redirect);
        at("-A ISTHMUS_DNS -d 10.96.0.11/32 -p tcp -j REDIRECT --to-ports 15053");
        // Every server, and another port.
        let all = args(&["--capture-dns", "--capture-all-dns", "--dns-port", "5353"]).script(&[]);
        assert!(
            all.contains("-A ISTHMUS_DNS -p udp -j REDIRECT --to-ports 5353\n"),
            "{all}"
        );
        // DNS capture without outbound TCP capture.
        let dns_only = args(&["--capture-dns", "--include-outbound-ip-ranges="]).script(&servers);
        assert!(dns_only.contains("-j ISTHMUS_DNS") && !dns_only.contains("-j ISTHMUS_OUTPUT"));
        // Conntrack zones keep the proxy's own DNS apart from the application's.
        for line in [
            "*raw",
            "-A OUTPUT -d 10.96.0.10/32 -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
            "-A OUTPUT -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2",
            "-A PREROUTING -s 10.96.0.11/32 -p udp --sport 53 -j CT --zone 1",
        ] {
            assert!(lines.contains(&line), "{line}\n{script}");
        }
        // The application's queries share zone 2 with the answers, after the proxy's own.
        let app_zone = at("-A OUTPUT -d 10.96.0.10/32 -p udp --dport 53 -j CT --zone 2");
        assert!(
            at("-A OUTPUT -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2")
                < app_zone
        );
        assert!(script.starts_with("*raw\n") && script.ends_with("COMMIT\n"));
        assert!(at("*raw") < at("*nat"), "zones before redirects\n{script}");
        // With every server: Istio's rules, no address.
        for line in [
            "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
            "-A OUTPUT -p udp --dport 53 -j CT --zone 2",
            "-A PREROUTING -p udp --sport 53 -j CT --zone 1",
            "-A OUTPUT -p udp --sport 5353 -m owner --uid-owner 1337 -j CT --zone 2",
        ] {
            assert!(all.lines().any(|l| l == line), "{line}\n{all}");
        }
        // Off by default.
        let plain = args(&[]).script(&servers);
        assert!(!plain.contains("ISTHMUS_DNS") && !plain.contains("*raw"));
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
        .script(&[]);
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

    /// Whether `script` has `line`, exactly.
    fn has(script: &str, line: &str) -> bool {
        script.lines().any(|l| l == line)
    }

    /// Where `line` is in `script` (it must be there).
    fn at(script: &str, line: &str) -> usize {
        script
            .lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no {line:?} in\n{script}"))
    }

    #[test]
    fn an_empty_include_outbound_list_captures_no_outbound_traffic() {
        for flags in [
            &["--include-outbound-ip-ranges="][..],
            &["--include-outbound-ip-ranges", ""],
            &["--include-outbound-ip-ranges", " , "],
        ] {
            let parsed = args(flags);
            assert_eq!(parsed.include_outbound_ip_ranges, Ranges::Cidrs(vec![]));
            let script = parsed.script(&[]);
            assert!(
                !script.contains("-j ISTHMUS_REDIRECT"),
                "{flags:?}\n{script}"
            );
            assert!(!script.contains("-A OUTPUT"), "{flags:?}\n{script}");
            // Inbound is untouched.
            assert!(has(
                &script,
                "-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT"
            ));
            assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"));
        }
        // `*` among the items: everything, as before.
        let script = args(&["--include-outbound-ip-ranges=10.0.0.0/8,*"]).script(&[]);
        assert!(
            has(&script, "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT"),
            "{script}"
        );
        assert!(!script.contains("-d 10.0.0.0/8"), "{script}");
    }

    #[test]
    fn excluded_outbound_ranges_return_before_any_redirect() {
        let parsed = args(&["--exclude-outbound-ip-ranges=169.254.169.254, 10.96.0.0/12,"]);
        assert_eq!(
            parsed.exclude_outbound_ip_ranges,
            [
                Cidr {
                    address: Ipv4Addr::new(169, 254, 169, 254),
                    prefix: 32
                },
                Cidr {
                    address: Ipv4Addr::new(10, 96, 0, 0),
                    prefix: 12
                }
            ]
        );
        let script = parsed.script(&[]);
        let redirect = at(&script, "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT");
        assert!(at(&script, "-A ISTHMUS_OUTPUT -d 169.254.169.254/32 -j RETURN") < redirect);
        assert!(at(&script, "-A ISTHMUS_OUTPUT -d 10.96.0.0/12 -j RETURN") < redirect);

        // With included ranges too: the exclusion comes first.
        let script = args(&[
            "--include-outbound-ip-ranges=10.0.0.0/8",
            "--exclude-outbound-ip-ranges=10.96.0.0/12,10.96.0.0/12",
        ])
        .script(&[]);
        let redirect = at(
            &script,
            "-A ISTHMUS_OUTPUT -d 10.0.0.0/8 -j ISTHMUS_REDIRECT",
        );
        assert!(at(&script, "-A ISTHMUS_OUTPUT -d 10.96.0.0/12 -j RETURN") < redirect);
        assert_eq!(script.matches("10.96.0.0/12").count(), 1, "{script}");

        // None by default, and an empty value is none.
        for flags in [&[][..], &["--exclude-outbound-ip-ranges="]] {
            let parsed = args(flags);
            assert!(parsed.exclude_outbound_ip_ranges.is_empty());
            assert!(!parsed.script(&[]).contains("-d 10."));
        }
    }

    #[test]
    fn included_inbound_ports_are_the_only_ones_redirected() {
        let parsed = args(&[
            "--include-inbound-ports=9080, 8080,9080,15020,22",
            "--exclude-inbound-ports=22",
        ]);
        assert_eq!(
            parsed.include_inbound_ports,
            Ports::Only(vec![9080, 8080, 9080, 15020, 22])
        );
        let script = parsed.script(&[]);
        let first_redirect = at(
            &script,
            "-A ISTHMUS_INBOUND -p tcp --dport 8080 -j ISTHMUS_IN_REDIRECT",
        );
        assert!(
            at(
                &script,
                "-A ISTHMUS_INBOUND -p tcp --dport 9080 -j ISTHMUS_IN_REDIRECT"
            ) > first_redirect
        );
        // The exclusions (the flag's and the proxy's own) come first and win.
        for p in [22, 15020, 15021, 15090] {
            let line = format!("-A ISTHMUS_INBOUND -p tcp --dport {p} -j RETURN");
            assert!(at(&script, &line) < first_redirect, "{line}\n{script}");
            assert!(!has(
                &script,
                &format!("-A ISTHMUS_INBOUND -p tcp --dport {p} -j ISTHMUS_IN_REDIRECT")
            ));
        }
        assert_eq!(
            script.matches("-j ISTHMUS_IN_REDIRECT").count(),
            2,
            "{script}"
        );
        assert!(!has(
            &script,
            "-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT"
        ));
        // Outbound is untouched.
        assert!(has(&script, "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT"));

        // `*` (the default, or among the items): every port but the exempt ones.
        for flags in [
            &[][..],
            &["--include-inbound-ports=*"],
            &["--include-inbound-ports=80,*"],
        ] {
            let parsed = args(flags);
            assert_eq!(parsed.include_inbound_ports, Ports::All, "{flags:?}");
            let script = parsed.script(&[]);
            assert!(has(
                &script,
                "-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT"
            ));
            assert!(!script.contains("--dport 80 "), "{script}");
        }
    }

    #[test]
    fn an_empty_include_inbound_list_captures_no_inbound_traffic() {
        for flags in [
            &["--include-inbound-ports="][..],
            &["--include-inbound-ports", ""],
            &["--include-inbound-ports=", "--exclude-interfaces=eth1"],
        ] {
            let parsed = args(flags);
            assert_eq!(parsed.include_inbound_ports, Ports::Only(vec![]));
            let script = parsed.script(&[]);
            assert!(
                !script.contains("-j ISTHMUS_IN_REDIRECT"),
                "{flags:?}\n{script}"
            );
            assert!(!script.contains("-A PREROUTING"), "{flags:?}\n{script}");
            assert!(
                !script.contains("-A ISTHMUS_INBOUND"),
                "{flags:?}\n{script}"
            );
            // Outbound is untouched.
            assert!(has(&script, "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT"));
        }
        // Neither direction: the chains, and nothing jumps to them.
        let script =
            args(&["--include-inbound-ports=", "--include-outbound-ip-ranges="]).script(&[]);
        assert!(!script.contains("-A PREROUTING") && !script.contains("-A OUTPUT"));
        assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"));
    }

    #[test]
    fn excluded_interfaces_return_before_both_jumps() {
        let parsed = args(&["--exclude-interfaces=eth1, cni.0_a-b,eth1"]);
        let names: Vec<&str> = parsed
            .exclude_interfaces
            .iter()
            .map(Interface::as_str)
            .collect();
        assert_eq!(names, ["eth1", "cni.0_a-b"]);
        let script = parsed.script(&[]);
        let inbound = at(&script, "-A PREROUTING -p tcp -j ISTHMUS_INBOUND");
        let outbound = at(&script, "-A OUTPUT -p tcp -j ISTHMUS_OUTPUT");
        for name in names {
            assert!(at(&script, &format!("-A PREROUTING -i {name} -j RETURN")) < inbound);
            assert!(at(&script, &format!("-A OUTPUT -o {name} -j RETURN")) < outbound);
        }
        assert_eq!(script.matches("eth1").count(), 2, "{script}");
        // The longest name Linux allows.
        assert!(
            args(&["--exclude-interfaces=abcdefghijklmno"])
                .script(&[])
                .contains("-i abcdefghijklmno ")
        );
        // None by default, and an empty value is none.
        for flags in [&[][..], &["--exclude-interfaces="]] {
            let script = args(flags).script(&[]);
            assert!(
                !script.contains(" -i ") && !script.contains(" -o "),
                "{script}"
            );
        }
    }

    #[test]
    fn empty_exclusion_lists_are_none() {
        let parsed = args(&["--exclude-inbound-ports=", "--exclude-outbound-ports", ""]);
        assert!(parsed.exclude_inbound_ports.is_empty());
        assert!(parsed.exclude_outbound_ports.is_empty());
        assert_eq!(parsed.script(&[]), args(&[]).script(&[]));
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let bad = |flags: &[&str]| {
            let mut all = vec!["capture"];
            all.extend_from_slice(flags);
            let error = CaptureArgs::try_parse_from(all).unwrap_err().to_string();
            // The flag is named.
            let flag = flags[0].split('=').next().unwrap();
            assert!(error.contains(flag), "{flag}: {error}");
            error
        };
        assert!(bad(&["--exclude-inbound-ports", "0"]).contains("not a port"));
        assert!(bad(&["--exclude-outbound-ports", "http"]).contains("not a port"));
        assert!(bad(&["--exclude-outbound-ports", "22,70000"]).contains("not a port"));
        assert!(bad(&["--include-outbound-ip-ranges", "10.0.0.0/33"]).contains("CIDR"));
        assert!(bad(&["--include-outbound-ip-ranges", "fd00::/8"]).contains("CIDR"));
        assert!(bad(&["--include-outbound-ip-ranges", "*,10.0.0.0/33"]).contains("CIDR"));
        assert!(bad(&["--include-inbound-ports", "http"]).contains("not a port"));
        assert!(bad(&["--include-inbound-ports", "80,0"]).contains("not a port"));
        assert!(bad(&["--include-inbound-ports", "**"]).contains("not a port"));
        assert!(bad(&["--exclude-outbound-ip-ranges", "*"]).contains("CIDR"));
        assert!(bad(&["--exclude-outbound-ip-ranges", "10.0.0.0/8/8"]).contains("CIDR"));
        assert!(bad(&["--exclude-outbound-ip-ranges", "10.0.0/8"]).contains("CIDR"));
        for name in [
            "abcdefghijklmnop", // 16
            ".",
            "..",
            "eth0:1",
            "eth/0",
            "eth0+",
            "éth0",
            "*",
        ] {
            assert!(
                bad(&[&format!("--exclude-interfaces={name}")]).contains("not an interface name"),
                "{name}"
            );
        }
        // Given twice: refused, not merged or overridden.
        assert!(
            CaptureArgs::try_parse_from([
                "capture",
                "--exclude-inbound-ports=22",
                "--exclude-inbound-ports=23"
            ])
            .is_err()
        );
        // No way to smuggle rules into the script.
        assert!(bad(&["--include-outbound-ip-ranges=10.0.0.0/8 -j ACCEPT"]).contains("CIDR"));
        assert!(
            bad(&["--exclude-outbound-ip-ranges=10.0.0.0/8\n-A OUTPUT -j ACCEPT"]).contains("CIDR")
        );
        assert!(bad(&["--include-inbound-ports=80 -j ACCEPT"]).contains("not a port"));
        assert!(bad(&["--exclude-inbound-ports=80\nCOMMIT"]).contains("not a port"));
        for smuggled in [
            "eth0 -j ACCEPT",
            "eth0\n-A",
            "eth0\nCOMMIT",
            "eth\t0",
            "eth0\0",
            "eth0;x",
            "eth0#",
            "eth0\"",
        ] {
            assert!(
                bad(&[&format!("--exclude-interfaces={smuggled}")])
                    .contains("not an interface name"),
                "{smuggled:?}"
            );
        }
    }
}
