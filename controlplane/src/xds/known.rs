//! What one delta stream's proxy holds of one type: name to version, as far as it was sent.
//!
//! Once every due name has been sent, the proxy holds exactly the part of the type's last
//! snapshot that it subscribes to. A map per stream of every name would then repeat, a
//! thousand proxies over, what the shared snapshot already says (about a hundred kilobytes per
//! proxy at a thousand services). So the stream keeps a reference to that snapshot (the base;
//! [`TypeResources`] shares its parts) and a map of only what changed since: names sent,
//! removed, or newly subscribed. The map grows during a push and is dropped when the push is
//! complete ([`Known::settle`]).
//!
//! The base answers only for names in the current subscription, which the caller passes in
//! (`in_scope`): a narrowed subscription needs no bookkeeping, and a name subscribed anew is
//! marked as not held ([`Known::subscribed`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::resources::TypeResources;

/// The proxy's resources of one type, by name.
#[derive(Debug, Default)]
pub struct Known {
    /// A snapshot the proxy was sent in full, for the names it subscribes to.
    base: Option<TypeResources>,
    /// What differs from the base (`None`: the proxy does not hold it).
    changes: BTreeMap<Arc<str>, Option<u64>>,
}

impl Known {
    /// What a reconnecting proxy says it holds (`initial_resource_versions`).
    pub fn reported(versions: impl IntoIterator<Item = (Arc<str>, u64)>) -> Self {
        Self {
            base: None,
            changes: versions.into_iter().map(|(n, v)| (n, Some(v))).collect(),
        }
    }

    /// The version the proxy holds of `name`, if it holds it.
    pub fn get(&self, name: &str, in_scope: bool) -> Option<u64> {
        match self.changes.get(name) {
            Some(version) => *version,
            None if in_scope => self.in_base(name).map(|(_, version)| version),
            None => None,
        }
    }

    /// `name` was sent at `version`.
    pub fn insert(&mut self, name: Arc<str>, version: u64) {
        self.changes.insert(name, Some(version));
    }

    /// `name` was removed, or unsubscribed from: the proxy no longer holds it.
    pub fn forget(&mut self, name: &str) {
        match self.in_base(name) {
            Some((shared, _)) => {
                let shared = shared.clone();
                self.changes.insert(shared, None);
            }
            None => {
                self.changes.remove(name);
            }
        }
    }

    /// `name` has just been added to the subscription: whatever the base has of it was never
    /// sent (it was not subscribed when the base was settled, or it was forgotten since).
    pub fn subscribed(&mut self, name: &str) {
        if !self.changes.contains_key(name)
            && let Some((shared, _)) = self.in_base(name)
        {
            let shared = shared.clone();
            self.changes.insert(shared, None);
        }
    }

    /// Every name the proxy holds, given the subscription.
    pub fn names<'a>(
        &'a self,
        in_scope: impl Fn(&str) -> bool + Copy + 'a,
    ) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        let changed = self
            .changes
            .iter()
            .filter(move |(name, version)| version.is_some() && in_scope(name))
            .map(|(name, _)| name);
        let kept = self
            .base
            .as_ref()
            .map(TypeResources::items)
            .into_iter()
            .flatten()
            .map(|r| &r.name)
            .filter(move |name| !self.changes.contains_key(*name) && in_scope(name));
        changed.chain(kept)
    }

    /// Keeps the base's answers in the map, for the names `in_scope` (the subscription before
    /// it grows by more than names can say: everything).
    pub fn detach(&mut self, in_scope: impl Fn(&str) -> bool) {
        if let Some(resources) = self.base.take() {
            for item in resources.items() {
                if in_scope(&item.name) {
                    self.changes
                        .entry(item.name.clone())
                        .or_insert(Some(item.version));
                }
            }
        }
        self.changes.retain(|_, version| version.is_some());
    }

    /// Forgets what the map says of names outside the subscription (the base is asked only
    /// about names inside it).
    pub fn retain(&mut self, in_scope: impl Fn(&str) -> bool) {
        self.changes.retain(|name, _| in_scope(name));
    }

    /// Every due name has been sent: the proxy holds exactly the subscribed part of
    /// `resources`, and nothing else.
    pub fn settle(&mut self, resources: Option<&TypeResources>) {
        self.base = resources.cloned();
        self.changes = BTreeMap::new();
    }

    /// How many names are kept apart from the base (for tests: a settled stream keeps none).
    #[cfg(test)]
    pub fn changes_len(&self) -> usize {
        self.changes.len()
    }

    fn in_base(&self, name: &str) -> Option<(&Arc<str>, u64)> {
        self.base.as_ref()?.get(name).map(|r| (&r.name, r.version))
    }
}
