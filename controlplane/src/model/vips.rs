//! Virtual addresses for services that declare none: imported services and `ServiceEntry`s
//! without `addresses`. Istio's auto-allocation is the model (a range, 240.240.0.0/16 by
//! default): with an address, transparent capture can tell a connection to such a service
//! from any other (TCP chains match on it) and the sidecar's DNS proxy can answer its name.
//!
//! Pure: [`allocate`] maps the previous table and the names that want an address to the new
//! table. An address is kept as long as its name exists; a new name starts at a slot derived
//! from a hash of the name (so two control planes allocating the same names from nothing
//! agree) and probes upwards for a free one. The address of a name that goes is held for
//! [`HOLD_SECONDS`] before another name may take it, and its name gets it back if it returns
//! meanwhile: at start, before the configuration is loaded and the peers' catalogs have
//! arrived, every name is missing for a moment, and an application may still hold a cached
//! answer for a name removed by mistake. The pipeline keeps the table in the state directory,
//! so addresses survive restarts and reloads.
//!
//! Left out, as Istio does: wildcard hosts (no single name to answer), `resolution: NONE`
//! (traffic goes where the application connects, so a made-up address would lead nowhere) and
//! Kubernetes `Service`s (they have cluster IPs, or are headless on purpose).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use isthmus_api::networking::Resolution;
use sha2::{Digest, Sha256};

use super::{Service, ServiceSource};

/// Istio's default auto-allocation range.
pub const DEFAULT_RANGE: &str = "240.240.0.0/16";

/// Host name to its allocated address.
pub type VipTable = BTreeMap<String, Ipv4Addr>;

/// How long an address whose name went is held for that name (an hour).
pub const HOLD_SECONDS: u64 = 3600;

/// An address whose name is no longer wanted, and since when (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub address: Ipv4Addr,
    pub since: u64,
}

/// Host name to the address held for it.
pub type HeldTable = BTreeMap<String, Held>;

/// An IPv4 range addresses are allocated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    prefix: u8,
}

/// Why a range was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VipRangeError {
    #[error("virtual address range {0:?}: expected an IPv4 CIDR such as 240.240.0.0/16")]
    Syntax(String),
    #[error("virtual address range {0}: the prefix must be between /8 and /28")]
    Size(String),
    #[error("virtual address range {range}: has host bits set (the network is {network})")]
    HostBits { range: String, network: String },
}

impl std::str::FromStr for VipRange {
    type Err = VipRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || VipRangeError::Syntax(text.to_owned());
        let (ip, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=28).contains(&prefix) {
            return Err(VipRangeError::Size(text.to_owned()));
        }
        let base = u32::from(ip);
        let mask = u32::MAX << (32 - prefix);
        if base & !mask != 0 {
            return Err(VipRangeError::HostBits {
                range: text.to_owned(),
                network: format!("{}/{prefix}", Ipv4Addr::from(base & mask)),
            });
        }
        Ok(Self { base, prefix })
    }
}

impl Default for VipRange {
    fn default() -> Self {
        Self {
            base: u32::from(Ipv4Addr::new(240, 240, 0, 0)),
            prefix: 16,
        }
    }
}

impl std::fmt::Display for VipRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl VipRange {
    fn size(self) -> u32 {
        1 << (32 - self.prefix)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.base) < self.size()
    }

    /// Whether `ip` may be handed out: inside the range, and not ending in .0 or .255
    /// (addresses some software reads as network or broadcast).
    fn usable(self, ip: Ipv4Addr) -> bool {
        let last = ip.octets()[3];
        self.contains(ip) && last != 0 && last != 255
    }

    fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n % self.size())
    }
}

/// The names that want an allocated address: every service without addresses that is not a
/// wildcard, not `resolution: NONE` and not a Kubernetes `Service`.
pub fn wanted<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeSet<String> {
    services
        .into_iter()
        .filter(|s| s.addresses.is_empty())
        .filter(|s| !s.key.hostname.contains('*'))
        .filter(|s| s.imported_from.is_some() || s.resolution != Resolution::None)
        .filter(|s| !matches!(s.source, ServiceSource::Kubernetes { .. }))
        .map(|s| s.key.hostname.clone())
        .collect()
}

/// The addresses services declare themselves: never handed out.
pub fn declared<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeSet<Ipv4Addr> {
    services
        .into_iter()
        .flat_map(|s| &s.addresses)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// What [`allocate`] made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    pub table: VipTable,
    /// Addresses held for names that went.
    pub held: HeldTable,
    /// Names left without an address: the range is full.
    pub exhausted: Vec<String>,
}

/// The state [`allocate`] starts from.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub table: &'a VipTable,
    pub held: &'a HeldTable,
    /// Unix seconds now.
    pub now: u64,
}

/// The new table: the previous address for every `wanted` name that had a usable one (in the
/// table, or held for it), and a free address for each of the others; names no longer wanted
/// have theirs held ([`HOLD_SECONDS`]). `reserved` addresses (declared by services) are never
/// handed out.
pub fn allocate(
    previous: Previous<'_>,
    wanted: &BTreeSet<String>,
    reserved: &BTreeSet<Ipv4Addr>,
    range: VipRange,
) -> Allocation {
    let mut table = VipTable::new();
    let mut used: BTreeSet<Ipv4Addr> = reserved.clone();
    for name in wanted {
        let earlier = previous
            .table
            .get(name)
            .copied()
            .or_else(|| previous.held.get(name).map(|h| h.address));
        if let Some(ip) = earlier
            && range.usable(ip)
            && used.insert(ip)
        {
            table.insert(name.clone(), ip);
        }
    }
    // Held: what went now, and what went within the hold and has not come back.
    let mut held = HeldTable::new();
    let went = previous
        .table
        .iter()
        .filter(|(name, _)| !wanted.contains(*name))
        .map(|(name, address)| {
            let since = previous.now;
            (
                name,
                Held {
                    address: *address,
                    since,
                },
            )
        });
    let still = previous
        .held
        .iter()
        .filter(|(name, h)| {
            !wanted.contains(*name) && previous.now.saturating_sub(h.since) < HOLD_SECONDS
        })
        .map(|(name, h)| (name, *h));
    for (name, h) in still.chain(went) {
        if range.usable(h.address) && used.insert(h.address) {
            held.insert(name.clone(), h);
        }
    }
    let mut exhausted = Vec::new();
    let unplaced: Vec<&String> = wanted.iter().filter(|n| !table.contains_key(*n)).collect();
    for name in unplaced {
        let start = preferred_slot(name);
        let free = (0..range.size())
            .map(|i| range.nth(start.wrapping_add(i)))
            .find(|ip| range.usable(*ip) && !used.contains(ip));
        match free {
            Some(ip) => {
                used.insert(ip);
                table.insert(name.clone(), ip);
            }
            None => exhausted.push(name.clone()),
        }
    }
    Allocation {
        table,
        held,
        exhausted,
    }
}

/// Where a name's search for a free address starts: the first bytes of its SHA-256, so the
/// same name starts at the same slot in every process and version.
fn preferred_slot(name: &str) -> u32 {
    let digest = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn from(table: &VipTable) -> Previous<'_> {
        static NONE: HeldTable = HeldTable::new();
        Previous {
            table,
            held: &NONE,
            now: 1_000_000,
        }
    }

    fn fresh() -> VipTable {
        VipTable::new()
    }

    #[test]
    fn ranges_parse_with_errors_that_say_why() {
        assert_eq!(
            "240.240.0.0/16".parse::<VipRange>(),
            Ok(VipRange::default())
        );
        assert_eq!(VipRange::default().to_string(), DEFAULT_RANGE);
        assert!(matches!(
            "240.240.0.0".parse::<VipRange>(),
            Err(VipRangeError::Syntax(_))
        ));
        assert!(matches!(
            "240.240.0.0/30".parse::<VipRange>(),
            Err(VipRangeError::Size(_))
        ));
        let err = "240.240.1.0/16".parse::<VipRange>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtual address range 240.240.1.0/16: has host bits set (the network is 240.240.0.0/16)"
        );
    }

    #[test]
    fn every_name_gets_a_distinct_usable_address_in_the_range() {
        let wanted: BTreeSet<String> = (0..2000).map(|i| format!("s{i}.example")).collect();
        let range = VipRange::default();
        let a = allocate(from(&fresh()), &wanted, &BTreeSet::new(), range);
        assert!(a.exhausted.is_empty());
        assert_eq!(a.table.len(), 2000);
        let distinct: BTreeSet<_> = a.table.values().collect();
        assert_eq!(distinct.len(), 2000, "no collisions");
        assert!(a.table.values().all(|ip| range.usable(*ip)));
    }

    #[test]
    fn addresses_stay_while_their_names_exist_whatever_else_changes() {
        let range = VipRange::default();
        let first = allocate(
            from(&fresh()),
            &names(&["a.example", "b.example", "c.example"]),
            &BTreeSet::new(),
            range,
        )
        .table;
        // b goes, d and e come: a and c keep theirs.
        let second = allocate(
            from(&first),
            &names(&["a.example", "c.example", "d.example", "e.example"]),
            &BTreeSet::new(),
            range,
        )
        .table;
        assert_eq!(second["a.example"], first["a.example"]);
        assert_eq!(second["c.example"], first["c.example"]);
        assert!(!second.contains_key("b.example"));
        // From nothing (a lost state file), the same names find the same slots.
        let again = allocate(
            from(&fresh()),
            &names(&["a.example"]),
            &BTreeSet::new(),
            range,
        );
        assert_eq!(again.table["a.example"], first["a.example"]);
    }

    #[test]
    fn a_name_that_goes_has_its_address_held_then_released() {
        let range: VipRange = "10.0.0.0/28".parse().unwrap();
        let start = allocate(from(&fresh()), &names(&["a", "b"]), &BTreeSet::new(), range);
        // Everything missing for a moment (configuration not loaded yet): nothing is lost.
        let empty = allocate(
            Previous {
                table: &start.table,
                held: &start.held,
                now: 1_000,
            },
            &BTreeSet::new(),
            &BTreeSet::new(),
            range,
        );
        assert!(empty.table.is_empty());
        assert_eq!(empty.held.len(), 2);
        // A new name meanwhile does not take a held address; the old names get theirs back.
        let back = allocate(
            Previous {
                table: &empty.table,
                held: &empty.held,
                now: 1_010,
            },
            &names(&["a", "b", "c"]),
            &BTreeSet::new(),
            range,
        );
        assert_eq!(back.table["a"], start.table["a"]);
        assert_eq!(back.table["b"], start.table["b"]);
        assert!(back.held.is_empty());
        // After the hold, the address is free again.
        let gone = allocate(
            Previous {
                table: &back.table,
                held: &back.held,
                now: 2_000,
            },
            &names(&["b", "c"]),
            &BTreeSet::new(),
            range,
        );
        assert!(gone.held.contains_key("a"));
        let later = allocate(
            Previous {
                table: &gone.table,
                held: &gone.held,
                now: 2_000 + HOLD_SECONDS,
            },
            &names(&["b", "c"]),
            &BTreeSet::new(),
            range,
        );
        assert!(later.held.is_empty());
    }

    #[test]
    fn declared_and_taken_addresses_are_never_handed_out_twice() {
        let range: VipRange = "10.0.0.0/28".parse().unwrap();
        // 16 addresses: .0 unusable, one declared, so 14 to hand out.
        let reserved: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 0, 0, 5)].into();
        let wanted: BTreeSet<String> = (0..16).map(|i| format!("s{i:02}")).collect();
        let a = allocate(from(&fresh()), &wanted, &reserved, range);
        assert_eq!(a.table.len(), 14);
        assert_eq!(a.exhausted.len(), 2);
        assert!(!a.table.values().any(|ip| reserved.contains(ip)));
        let distinct: BTreeSet<_> = a.table.values().collect();
        assert_eq!(distinct.len(), 14);
        // A previous table that claims one address twice, or one outside the range, is
        // corrected, not trusted.
        let mut previous = VipTable::new();
        previous.insert("x".into(), Ipv4Addr::new(10, 0, 0, 7));
        previous.insert("y".into(), Ipv4Addr::new(10, 0, 0, 7));
        previous.insert("z".into(), Ipv4Addr::new(192, 168, 0, 1));
        let b = allocate(
            from(&previous),
            &names(&["x", "y", "z"]),
            &BTreeSet::new(),
            range,
        );
        assert_eq!(b.table["x"], Ipv4Addr::new(10, 0, 0, 7));
        assert_ne!(b.table["y"], Ipv4Addr::new(10, 0, 0, 7));
        assert!(range.contains(b.table["z"]));
    }
}
