//! The body of the fuzz target `discovery_importer` of `fuzz/` (cargo-fuzz, libFuzzer), here
//! so that the stable test `tests/e2e/fuzz_regressions.rs` replays the saved inputs through
//! the same code. It panics only on a bug.

use isthmus_proto::federation::WatchEvent;
use prost::Message;

use crate::discovery::Catalog;
use crate::discovery::importer::{Step, on_event};

/// At most this many events per input.
const MAX_EVENTS: usize = 256;

/// The input as one discovery stream seen by the importer: `WatchEvent`s, each a 2-byte
/// big-endian length then that many bytes of protobuf (a short last chunk is taken as it is;
/// a chunk that does not decode is skipped, as if the transport had dropped it). Each event
/// goes through the importer's [`on_event`] until the stream would end.
///
/// Checked: an applied event leaves the catalog at the exporter's checksum and the checksum
/// equal to the catalog's content recomputed; the exporter's diff from the previous catalog
/// to the new one, applied by the importer, reaches the new one; an ignored event changes
/// nothing.
pub fn discovery_importer(data: &[u8]) {
    let mut catalog = Catalog::default();
    let mut synced = false;
    let mut rest = data;
    for _ in 0..MAX_EVENTS {
        let [a, b, tail @ ..] = rest else {
            return;
        };
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let Ok(event) = WatchEvent::decode(chunk) else {
            continue;
        };
        let checksum = event.checksum;
        let before = catalog.clone();
        match on_event(&mut catalog, &mut synced, event) {
            Step::Ignored => assert_eq!(catalog, before, "an ignored event changed the catalog"),
            Step::Heartbeat | Step::Publish { .. } => {
                assert_eq!(catalog.checksum(), checksum, "applied at another checksum");
                consistent(&catalog);
                let mut replayed = before.clone();
                for change in before.diff(&catalog) {
                    replayed
                        .apply_change(&change)
                        .expect("the exporter's own change is refused by the importer");
                }
                assert_eq!(replayed, catalog, "the diff does not reach the new catalog");
            }
            Step::Resync { ours, theirs } => {
                assert_ne!(ours, theirs);
                assert_eq!(ours, catalog.checksum());
                consistent(&catalog);
            }
            Step::End(why) => {
                assert!(!why.is_empty());
                return;
            }
        }
    }
}

/// The running checksum is the checksum of the content.
fn consistent(catalog: &Catalog) {
    let rebuilt = Catalog::new(catalog.services().cloned());
    assert_eq!(
        rebuilt.checksum(),
        catalog.checksum(),
        "the running checksum drifted from the content"
    );
    assert_eq!(&rebuilt, catalog);
    for service in catalog.services() {
        assert_eq!(catalog.get(&service.hostname), Some(service));
    }
}
