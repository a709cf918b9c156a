//! The pod's own resolver settings, read once at start from its `resolv.conf` (by the hickory
//! project's `resolv-conf` parser): where names that are not the mesh's go, and the search
//! domains a resolver appends to short names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the DNS proxy takes from `resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The original name servers (port 53), in order.
    pub servers: Vec<SocketAddr>,
    /// Search domains, lowercase, without dots at either end.
    pub search: Vec<String>,
    /// How long one server gets before the next is tried (`options timeout`, glibc's 5 s
    /// default).
    pub timeout: Duration,
}

/// Why `resolv.conf` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

impl Upstream {
    pub fn read(path: &Path) -> Result<Self, ResolvConfError> {
        let bytes = std::fs::read(path).map_err(|source| ResolvConfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes).map_err(|reason| ResolvConfError::Parse {
            path: path.to_owned(),
            reason,
        })
    }

    /// From the file's text. No `nameserver` means the local one, as glibc does. Lines glibc
    /// would skip (an option it does not know, a typo) are skipped with a warning, as glibc
    /// does, rather than keeping the pod from starting; no usable `nameserver` line at all
    /// among lines that were meant as such is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let (config, errors) = resolv_conf::Config::parse_with_errors(bytes);
        for error in &errors {
            tracing::warn!(%error, "resolv.conf: line skipped");
        }
        let meant_servers = String::from_utf8_lossy(bytes)
            .lines()
            .any(|l| l.trim_start().starts_with("nameserver"));
        if config.nameservers.is_empty() && meant_servers {
            return Err(errors
                .first()
                .map_or_else(|| "no usable nameserver".to_owned(), ToString::to_string));
        }
        let servers = config
            .get_nameservers_or_local()
            .into_iter()
            .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
            .collect();
        let search = config
            .get_last_search_or_domain()
            .map(|d| d.trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        Ok(Self {
            servers,
            search,
            timeout: Duration::from_secs(u64::from(config.timeout.clamp(1, 30))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_resolv_conf_gives_servers_search_domains_and_timeout() {
        let text = b"nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2\n";
        let upstream = Upstream::parse(text).unwrap();
        assert_eq!(upstream.servers, ["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(
            upstream.search,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(upstream.timeout, Duration::from_secs(2));
        let empty = Upstream::parse(b"").unwrap();
        assert!(
            !empty.servers.is_empty() && empty.servers.iter().all(|s| s.ip().is_loopback()),
            "the local server, as glibc: {:?}",
            empty.servers
        );
        assert!(Upstream::parse(b"nameserver not-an-ip\n").is_err());
        // A line glibc would skip is skipped, not fatal.
        let odd =
            Upstream::parse(b"nameserver 10.96.0.10\noptions ndots:5 no-such-option\nbogus line\n")
                .unwrap();
        assert_eq!(odd.servers, ["10.96.0.10:53".parse().unwrap()]);
    }
}
