//! A catalog: the services one mesh exports to one peer, by exported host name, with the
//! order-independent checksum both ends of a discovery stream compute (`discovery.proto`).

use std::collections::BTreeMap;

use isthmus_proto::federation::{Change, ExportedService, change, watch_event};
use prost::Message;
use sha2::{Digest, Sha256};

/// The exported services, by host name, and their checksum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    services: BTreeMap<String, (ExportedService, u64)>,
    checksum: u64,
}

/// The hash of one service, in its canonical form (ports by number, identities sorted).
fn service_hash(service: &ExportedService) -> u64 {
    let digest = Sha256::digest(service.encode_to_vec());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn canonical(mut service: ExportedService) -> ExportedService {
    service.ports.sort_by_key(|p| p.number);
    service.identities.sort();
    service.identities.dedup();
    service
}

/// Why an event could not be applied: the importer's copy and the exporter's list differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("checksum mismatch: ours {ours:016x}, the exporter's {theirs:016x}")]
    Checksum { ours: u64, theirs: u64 },
    #[error("malformed event: {0}")]
    Malformed(&'static str),
}

impl Catalog {
    pub fn new(services: impl IntoIterator<Item = ExportedService>) -> Self {
        let mut catalog = Self::default();
        for service in services {
            catalog.upsert(service);
        }
        catalog
    }

    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn get(&self, host: &str) -> Option<&ExportedService> {
        self.services.get(host).map(|(s, _)| s)
    }

    pub fn services(&self) -> impl Iterator<Item = &ExportedService> {
        self.services.values().map(|(s, _)| s)
    }

    /// Adds or replaces the service of the same host name.
    pub fn upsert(&mut self, service: ExportedService) {
        let service = canonical(service);
        let hash = service_hash(&service);
        self.checksum = self.checksum.wrapping_add(hash);
        if let Some((_, old)) = self
            .services
            .insert(service.hostname.clone(), (service, hash))
        {
            self.checksum = self.checksum.wrapping_sub(old);
        }
    }

    pub fn remove(&mut self, host: &str) -> bool {
        match self.services.remove(host) {
            Some((_, old)) => {
                self.checksum = self.checksum.wrapping_sub(old);
                true
            }
            None => false,
        }
    }

    /// The changes that turn `self` into `newer`: deletions first, then upserts, by host name.
    pub fn diff(&self, newer: &Catalog) -> Vec<Change> {
        let deleted = self
            .services
            .keys()
            .filter(|host| !newer.services.contains_key(*host))
            .map(|host| Change {
                kind: change::Kind::Delete as i32,
                service: Some(ExportedService {
                    hostname: host.clone(),
                    ..Default::default()
                }),
            });
        let upserted = newer
            .services
            .iter()
            .filter(|(host, (_, hash))| self.services.get(*host).map(|(_, h)| h) != Some(hash))
            .map(|(_, (service, _))| Change {
                kind: change::Kind::Upsert as i32,
                service: Some(service.clone()),
            });
        deleted.chain(upserted).collect()
    }

    /// Applies one change.
    pub fn apply_change(&mut self, change: &Change) -> Result<(), ApplyError> {
        let service = change
            .service
            .as_ref()
            .ok_or(ApplyError::Malformed("a change without a service"))?;
        if service.hostname.is_empty() {
            return Err(ApplyError::Malformed("a service without a hostname"));
        }
        match change::Kind::try_from(change.kind) {
            Ok(change::Kind::Upsert) => self.upsert(service.clone()),
            Ok(change::Kind::Delete) => {
                self.remove(&service.hostname);
            }
            _ => return Err(ApplyError::Malformed("a change of unknown kind")),
        }
        Ok(())
    }

    /// Applies a full list or a change, then checks the event's checksum against ours.
    /// Heartbeats change nothing but are checked too.
    pub fn apply(&mut self, event: &watch_event::Event, checksum: u64) -> Result<(), ApplyError> {
        match event {
            watch_event::Event::Full(full) => {
                // As for a change: a service is known by its host name (an empty one would
                // be held, then never named by a change, and the diff to it refused).
                if full.services.iter().any(|s| s.hostname.is_empty()) {
                    return Err(ApplyError::Malformed("a service without a hostname"));
                }
                *self = Catalog::new(full.services.iter().cloned());
            }
            watch_event::Event::Change(change) => self.apply_change(change)?,
            watch_event::Event::Heartbeat(_) => {}
        }
        if self.checksum != checksum {
            return Err(ApplyError::Checksum {
                ours: self.checksum,
                theirs: checksum,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use isthmus_proto::federation::{FullList, ServicePort};

    use super::*;

    fn service(host: &str, port: u32) -> ExportedService {
        ExportedService {
            hostname: host.into(),
            name: host.split('.').next().unwrap_or_default().into(),
            namespace: "bookinfo".into(),
            ports: vec![ServicePort {
                number: port,
                name: "http".into(),
                protocol: "HTTP".into(),
            }],
            identities: vec!["spiffe://green.local/ns/bookinfo/sa/ratings".into()],
        }
    }

    #[test]
    fn the_checksum_does_not_depend_on_order_and_follows_every_change() {
        let a = Catalog::new([service("a.x", 1), service("b.x", 2)]);
        let b = Catalog::new([service("b.x", 2), service("a.x", 1)]);
        assert_eq!(a.checksum(), b.checksum());
        assert_eq!(Catalog::default().checksum(), 0);
        let mut c = a.clone();
        c.upsert(service("a.x", 3));
        assert_ne!(c.checksum(), a.checksum());
        c.upsert(service("a.x", 1));
        assert_eq!(c.checksum(), a.checksum(), "back to the same content");
        c.remove("a.x");
        c.remove("b.x");
        assert_eq!(c.checksum(), 0);
    }

    #[test]
    fn applying_the_diff_reaches_the_newer_catalog_and_its_checksum() {
        let old = Catalog::new([service("a.x", 1), service("b.x", 2), service("c.x", 3)]);
        let new = Catalog::new([service("b.x", 2), service("c.x", 4), service("d.x", 5)]);
        let changes = old.diff(&new);
        let kinds: Vec<(i32, &str)> = changes
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.service.as_ref().map_or("", |s| s.hostname.as_str()),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (change::Kind::Delete as i32, "a.x"),
                (change::Kind::Upsert as i32, "c.x"),
                (change::Kind::Upsert as i32, "d.x"),
            ],
            "unchanged b.x is not sent"
        );
        let mut importer = old.clone();
        let mut exporter = old.clone();
        for change in &changes {
            exporter.apply_change(change).unwrap();
            importer
                .apply(
                    &watch_event::Event::Change(change.clone()),
                    exporter.checksum(),
                )
                .unwrap();
        }
        assert_eq!(importer, new);
    }

    #[test]
    fn a_missed_change_is_a_checksum_mismatch_and_a_full_list_repairs_it() {
        let mut importer = Catalog::new([service("a.x", 1)]);
        let exporter = Catalog::new([service("a.x", 1), service("b.x", 2), service("c.x", 3)]);
        // The importer missed b.x and now hears of c.x.
        let change = Change {
            kind: change::Kind::Upsert as i32,
            service: Some(service("c.x", 3)),
        };
        let err = importer
            .apply(&watch_event::Event::Change(change), exporter.checksum())
            .unwrap_err();
        assert!(matches!(err, ApplyError::Checksum { .. }), "{err}");
        let full = FullList {
            services: exporter.services().cloned().collect(),
        };
        importer
            .apply(&watch_event::Event::Full(full), exporter.checksum())
            .unwrap();
        assert_eq!(importer, exporter);
    }

    #[test]
    fn malformed_changes_are_refused_by_name() {
        let mut c = Catalog::default();
        for (change, expected) in [
            (
                Change {
                    kind: 1,
                    service: None,
                },
                "without a service",
            ),
            (
                Change {
                    kind: 1,
                    service: Some(ExportedService::default()),
                },
                "without a hostname",
            ),
            (
                Change {
                    kind: 7,
                    service: Some(service("a.x", 1)),
                },
                "unknown kind",
            ),
        ] {
            let err = c.apply_change(&change).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(c.is_empty());
        // Nor in a full list (found by the fuzz target `discovery_importer`).
        let full = FullList {
            services: vec![service("a.x", 1), ExportedService::default()],
        };
        let err = c
            .apply(&watch_event::Event::Full(full), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("without a hostname"), "{err}");
        assert!(c.is_empty(), "nothing applied");
    }
}
