//! Choosing a listener's filter chain, by Envoy's rules: criteria are applied in order —
//! destination port, destination address (longest prefix), server name, transport protocol,
//! application protocols — and at each step
//! the chains that match the connection specifically win over chains that leave the
//! criterion unset. Chains that set it and do not match drop out. No chain left: the default
//! chain, if any.

use std::net::{IpAddr, SocketAddr};

use crate::config::listener::{ChainMatch, FilterChain, Listener};
use crate::config::rbac::Cidr;
use crate::runtime::ChainId;

/// What is known of a connection when its chain is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// The local address, or the original destination on a capture listener.
    pub destination: SocketAddr,
    pub server_name: Option<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'static str,
    pub alpn: Vec<String>,
}

impl Default for ConnectionFacts {
    fn default() -> Self {
        ConnectionFacts {
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            server_name: None,
            transport_protocol: "raw_buffer",
            alpn: Vec::new(),
        }
    }
}

pub fn select<'l>(
    listener: &'l Listener,
    facts: &ConnectionFacts,
) -> Option<(ChainId, &'l FilterChain)> {
    let mut candidates: Vec<(usize, &FilterChain)> = listener.chains.iter().enumerate().collect();
    // Each step: 2 = specific match, 1 = criterion unset, 0 = no match.
    let steps: [&dyn Fn(&ChainMatch) -> u8; 5] = [
        &|m| match m.destination_port {
            None => 1,
            Some(p) => 2 * u8::from(p == facts.destination.port()),
        },
        &|m| prefix_rank(&m.prefix_ranges, facts.destination.ip()),
        &|m| server_name_rank(&m.server_names, facts.server_name.as_deref()),
        &|m| match &m.transport_protocol {
            None => 1,
            Some(t) => 2 * u8::from(t == facts.transport_protocol),
        },
        &|m| {
            if m.application_protocols.is_empty() {
                1
            } else {
                2 * u8::from(
                    m.application_protocols
                        .iter()
                        .any(|p| facts.alpn.contains(p)),
                )
            }
        },
    ];
    for step in steps {
        let ranks: Vec<u8> = candidates.iter().map(|(_, c)| step(&c.matcher)).collect();
        let best = ranks.iter().copied().max().unwrap_or(0);
        if best == 0 {
            candidates.clear();
            break;
        }
        candidates = candidates
            .into_iter()
            .zip(ranks)
            .filter(|(_, r)| *r == best)
            .map(|(c, _)| c)
            .collect();
    }
    match candidates.first() {
        Some((i, chain)) => Some((ChainId::Index(*i), *chain)),
        None => listener
            .default_chain
            .as_ref()
            .map(|c| (ChainId::Default, c)),
    }
}

/// The longest range that holds `ip` ranks highest. Ranks: 0 no match, 1 unset, 2 + length.
fn prefix_rank(ranges: &[Cidr], ip: IpAddr) -> u8 {
    if ranges.is_empty() {
        return 1;
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.prefix_len.saturating_add(2))
        .max()
        .unwrap_or(0)
}

/// Exact names rank above wildcards (`*.example.com`), longer wildcards above shorter ones,
/// and any of them above an unset list. Ranks: 0 no match, 1 unset, 2.. wildcard, 255 exact.
fn server_name_rank(names: &[String], sni: Option<&str>) -> u8 {
    if names.is_empty() {
        return 1;
    }
    let Some(sni) = sni else { return 0 };
    let mut best = 0u8;
    for name in names {
        if name == sni {
            return u8::MAX;
        }
        if let Some(suffix) = name.strip_prefix('*')
            && sni.ends_with(suffix)
            && sni.len() > suffix.len()
        {
            best = best.max(u8::try_from(suffix.len().min(200)).unwrap_or(200) + 2);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::listener::{Direction, TcpProxy, Terminal};

    fn chain(name: &str, m: ChainMatch) -> FilterChain {
        FilterChain {
            peer: None,
            name: name.into(),
            matcher: m,
            tls: None,
            rbac: Vec::new(),
            terminal: Terminal::Tcp(TcpProxy {
                stat_prefix: String::new(),
                clusters: vec![("c".into(), 1)],
                idle_timeout: None,
                tunnel: None,
            }),
        }
    }

    fn listener(chains: Vec<FilterChain>, default: Option<FilterChain>) -> Listener {
        Listener {
            telemetry: None,
            name: "l".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            direction: Direction::Inbound,
            tls_inspector: true,
            tls_inspector_disabled: None,
            original_dst: false,
            chains,
            default_chain: default,
        }
    }

    fn facts(
        port: u16,
        sni: Option<&str>,
        transport: &'static str,
        alpn: &[&str],
    ) -> ConnectionFacts {
        ConnectionFacts {
            destination: SocketAddr::from(([127, 0, 0, 1], port)),
            server_name: sni.map(str::to_owned),
            transport_protocol: transport,
            alpn: alpn.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn strict_and_permissive_chains_are_told_apart_by_transport() {
        let tls = chain(
            "mtls",
            ChainMatch {
                transport_protocol: Some("tls".into()),
                ..Default::default()
            },
        );
        let plain = chain(
            "plaintext",
            ChainMatch {
                transport_protocol: Some("raw_buffer".into()),
                ..Default::default()
            },
        );
        let l = listener(vec![tls, plain], None);
        assert_eq!(
            select(&l, &facts(80, None, "tls", &["h2"])).unwrap().1.name,
            "mtls"
        );
        assert_eq!(
            select(&l, &facts(80, None, "raw_buffer", &[]))
                .unwrap()
                .1
                .name,
            "plaintext"
        );
        let strict = listener(
            vec![chain(
                "mtls",
                ChainMatch {
                    transport_protocol: Some("tls".into()),
                    ..Default::default()
                },
            )],
            None,
        );
        assert!(
            select(&strict, &facts(80, None, "raw_buffer", &[])).is_none(),
            "STRICT refuses plaintext"
        );
    }

    #[test]
    fn the_most_specific_chain_wins_step_by_step() {
        let l = listener(
            vec![
                chain("any", ChainMatch::default()),
                chain(
                    "port",
                    ChainMatch {
                        destination_port: Some(9080),
                        ..Default::default()
                    },
                ),
                chain(
                    "wild",
                    ChainMatch {
                        server_names: vec!["*.shop.local".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "exact",
                    ChainMatch {
                        server_names: vec!["reviews.shop.local".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "h2",
                    ChainMatch {
                        application_protocols: vec!["h2".into()],
                        ..Default::default()
                    },
                ),
            ],
            Some(chain("default", ChainMatch::default())),
        );
        assert_eq!(
            select(&l, &facts(9080, Some("x.y"), "tls", &[]))
                .unwrap()
                .1
                .name,
            "port"
        );
        assert_eq!(
            select(&l, &facts(1, Some("reviews.shop.local"), "tls", &[]))
                .unwrap()
                .1
                .name,
            "exact"
        );
        assert_eq!(
            select(&l, &facts(1, Some("ratings.shop.local"), "tls", &[]))
                .unwrap()
                .1
                .name,
            "wild"
        );
        assert_eq!(
            select(&l, &facts(1, Some("other"), "tls", &["h2"]))
                .unwrap()
                .1
                .name,
            "h2"
        );
        assert_eq!(
            select(&l, &facts(1, Some("other"), "tls", &["http/1.1"]))
                .unwrap()
                .1
                .name,
            "any"
        );
        let only_port = listener(
            vec![chain(
                "port",
                ChainMatch {
                    destination_port: Some(9080),
                    ..Default::default()
                },
            )],
            Some(chain("default", ChainMatch::default())),
        );
        assert_eq!(
            select(&only_port, &facts(1, None, "raw_buffer", &[]))
                .unwrap()
                .1
                .name,
            "default"
        );
    }

    #[test]
    fn a_captured_connection_is_matched_on_its_original_destination() {
        let range = |s: &str, len| Cidr {
            address: s.parse().unwrap(),
            prefix_len: len,
        };
        let l = listener(
            vec![
                chain(
                    "vip",
                    ChainMatch {
                        destination_port: Some(80),
                        prefix_ranges: vec![range("10.96.0.10", 32)],
                        ..Default::default()
                    },
                ),
                chain(
                    "port",
                    ChainMatch {
                        destination_port: Some(80),
                        ..Default::default()
                    },
                ),
                chain(
                    "net",
                    ChainMatch {
                        prefix_ranges: vec![range("10.96.0.0", 16)],
                        ..Default::default()
                    },
                ),
            ],
            Some(chain("passthrough", ChainMatch::default())),
        );
        let to = |addr: &str| ConnectionFacts {
            destination: addr.parse().unwrap(),
            transport_protocol: "raw_buffer",
            ..Default::default()
        };
        let chosen = |addr| select(&l, &to(addr)).unwrap().1.name.clone();
        assert_eq!(chosen("10.96.0.10:80"), "vip");
        assert_eq!(chosen("10.96.0.11:80"), "port");
        assert_eq!(chosen("10.96.0.11:81"), "net");
        assert_eq!(chosen("10.1.1.1:81"), "passthrough");
    }
}
