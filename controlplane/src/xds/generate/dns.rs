//! The name table of a sidecar's DNS proxy (`isthmus.dns.v1.NameTable`, issue 20): every
//! service the workload can see, by host name, with its virtual addresses (declared, cluster
//! IPs, or allocated by `isthmusd`). Wildcard hosts, services without an address (a
//! `resolution: NONE` entry, a headless Service) and names DNS cannot carry (a peer's odd
//! catalog entry, say: the proxy would refuse the whole table for it) are left out.

use std::net::IpAddr;

use isthmus_proto::dns::{NameInfo, NameTable};

use crate::model::Service;

pub fn name_table(visible: &[&Service]) -> NameTable {
    let mut table = NameTable::default();
    for service in visible {
        let host = service.key.hostname.to_ascii_lowercase();
        if table.table.contains_key(&host) || isthmus_runtime::dns_name::check(&host).is_err() {
            continue;
        }
        let ips: Vec<String> = service
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| ip.to_string())
            .collect();
        if !ips.is_empty() {
            table.table.insert(host, NameInfo { ips });
        }
    }
    table
}
