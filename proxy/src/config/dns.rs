//! `isthmus.dns.v1.NameTable` -> [`NameIndex`]: the names the sidecar's DNS proxy answers
//! itself (`crate::dns`), checked at the edge: every name a valid DNS name, every address an
//! IP address; a bad entry refuses the table at its path (`table["x"].ips[0]`).

use std::collections::HashMap;
use std::net::IpAddr;

use isthmus_proto::dns::NameTable;

use super::check::{Checked, Invalid, Path};

/// Lowercase fully qualified name (no trailing dot) to its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameIndex {
    pub names: HashMap<String, Vec<IpAddr>>,
}

impl NameIndex {
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(name).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

pub fn convert(table: NameTable, path: &Path) -> Checked<NameIndex> {
    let NameTable { table } = table;
    let mut names = HashMap::with_capacity(table.len());
    let table_path = path.field("table");
    for (name, info) in table {
        let at = table_path.key(&name);
        isthmus_runtime::dns_name::check(&name).map_err(|why| Invalid::new(&at, why))?;
        let mut ips = Vec::with_capacity(info.ips.len());
        for (i, ip) in info.ips.iter().enumerate() {
            let parsed: IpAddr = ip.parse().map_err(|_| {
                Invalid::new(
                    &at.field("ips").index(i),
                    format!("{ip:?} is not an IP address"),
                )
            })?;
            ips.push(parsed);
        }
        names.insert(name.to_ascii_lowercase(), ips);
    }
    Ok(NameIndex { names })
}

#[cfg(test)]
mod tests {
    use isthmus_proto::dns::NameInfo;

    use super::*;

    fn table(entries: &[(&str, &[&str])]) -> NameTable {
        NameTable {
            table: entries
                .iter()
                .map(|(n, ips)| {
                    (
                        (*n).to_owned(),
                        NameInfo {
                            ips: ips.iter().map(|s| (*s).to_owned()).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn names_and_addresses_are_checked_at_their_path() {
        let ok = convert(
            table(&[(
                "Ratings.bookinfo.svc.green-imports.local",
                &["240.240.0.7", "2001:2::7"],
            )]),
            &Path::root(),
        )
        .unwrap();
        assert_eq!(
            ok.get("ratings.bookinfo.svc.green-imports.local")
                .unwrap()
                .len(),
            2
        );
        let bad_ip = convert(table(&[("a.example", &["not-an-ip"])]), &Path::root()).unwrap_err();
        assert_eq!(
            bad_ip.to_string(),
            "table[\"a.example\"].ips[0]: \"not-an-ip\" is not an IP address"
        );
        for bad in [
            "",
            "a..example",
            "a.example.",
            "spaces in.example",
            &"x".repeat(64),
        ] {
            let err = convert(table(&[(bad, &["10.0.0.1"])]), &Path::root()).unwrap_err();
            assert!(
                err.to_string().contains("is not a DNS name"),
                "{bad}: {err}"
            );
        }
    }
}
