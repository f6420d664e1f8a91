//! Which cached objects each owner has, kept beside a reflector's store: a reconcile reads the
//! pods of its target's ReplicaSets (and the ReplicaSets of its Deployment) instead of
//! filtering every object the leader caches, so its own time follows the size of its target,
//! not of the cluster (docs/benchmarks.md, "Operator at scale").
//!
//! The index follows the watch's events as the store does: a relist (`Init` … `InitDone`)
//! is built aside and replaces the index whole at `InitDone`. Readers get names and look the
//! objects up in the store; for a moment after an event the two may disagree by that event's
//! object, which the event's own reconcile, queued behind it, then sees.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::api::ObjectMeta;
use kube::runtime::watcher;

/// Namespace and name of an object.
type Key = (String, String);

/// The controlling owner of an object of kind `kind` (`ReplicaSet` for pods, `Deployment` for
/// ReplicaSets), by name.
pub fn controller_owner(meta: &ObjectMeta, kind: &str) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == kind && o.controller == Some(true))
        .map(|o| o.name.clone())
}

/// Names of objects by their namespace and controlling owner (cheap to clone: clones share it).
#[derive(Clone)]
pub struct OwnerIndex {
    owner_kind: &'static str,
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    current: Index,
    /// The index being rebuilt by a relist, swapped in at `InitDone`.
    relist: Option<Index>,
}

#[derive(Default)]
struct Index {
    /// (namespace, owner) → names.
    owned: HashMap<Key, BTreeSet<String>>,
    /// (namespace, name) → owner, to move or drop an object's entry.
    owner_of: HashMap<Key, String>,
}

impl Index {
    fn insert(&mut self, ns: &str, name: &str, owner: Option<String>) {
        self.remove(ns, name);
        if let Some(owner) = owner {
            self.owned
                .entry((ns.to_owned(), owner.clone()))
                .or_default()
                .insert(name.to_owned());
            self.owner_of
                .insert((ns.to_owned(), name.to_owned()), owner);
        }
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let Some(owner) = self.owner_of.remove(&(ns.to_owned(), name.to_owned())) else {
            return;
        };
        let key = (ns.to_owned(), owner);
        if let Some(names) = self.owned.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.owned.remove(&key);
            }
        }
    }
}

impl OwnerIndex {
    /// An empty index of objects by their controlling owner of kind `owner_kind`.
    pub fn new(owner_kind: &'static str) -> Self {
        Self {
            owner_kind,
            inner: Arc::default(),
        }
    }

    /// Follows one event of the watch whose store this index stands beside.
    pub fn apply<K: Resource>(&self, event: &watcher::Event<K>) {
        let key = |o: &K| {
            let m = o.meta();
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let mut inner = self.inner.write().expect("owner index lock");
        match event {
            watcher::Event::Init => inner.relist = Some(Index::default()),
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(o);
                let owner = controller_owner(o.meta(), self.owner_kind);
                inner
                    .relist
                    .get_or_insert_with(Index::default)
                    .insert(&ns, &name, owner);
            }
            watcher::Event::InitDone => {
                if let Some(index) = inner.relist.take() {
                    inner.current = index;
                }
            }
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                let owner = controller_owner(o.meta(), self.owner_kind);
                inner.current.insert(&ns, &name, owner);
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                inner.current.remove(&ns, &name);
            }
        }
    }

    /// The names of the objects in `namespace` that `owner` controls.
    pub fn owned(&self, namespace: &str, owner: &str) -> Vec<String> {
        let inner = self.inner.read().expect("owner index lock");
        inner
            .current
            .owned
            .get(&(namespace.to_owned(), owner.to_owned()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use watcher::Event;

    fn pod(ns: &str, name: &str, rs: Option<&str>) -> Pod {
        let owners = rs.map(|rs| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": "u", "controller": true}])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "ownerReferences": owners}
        }))
        .unwrap()
    }

    #[test]
    fn follows_applies_moves_and_deletes() {
        let index = OwnerIndex::new("ReplicaSet");
        index.apply(&Event::Apply(pod("shop", "web-a-1", Some("web-a"))));
        index.apply(&Event::Apply(pod("shop", "web-a-2", Some("web-a"))));
        index.apply(&Event::Apply(pod("other", "web-a-3", Some("web-a"))));
        index.apply(&Event::Apply(pod("shop", "bare", None)));
        assert_eq!(index.owned("shop", "web-a"), ["web-a-1", "web-a-2"]);
        assert_eq!(index.owned("other", "web-a"), ["web-a-3"]);
        // Orphaned, then adopted by another ReplicaSet.
        index.apply(&Event::Apply(pod("shop", "web-a-2", None)));
        assert_eq!(index.owned("shop", "web-a"), ["web-a-1"]);
        index.apply(&Event::Apply(pod("shop", "web-a-2", Some("web-b"))));
        assert_eq!(index.owned("shop", "web-b"), ["web-a-2"]);
        index.apply(&Event::Delete(pod("shop", "web-a-1", Some("web-a"))));
        assert!(index.owned("shop", "web-a").is_empty());
        assert!(index.owned("shop", "nobody").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_at_its_end() {
        let index = OwnerIndex::new("ReplicaSet");
        index.apply(&Event::Apply(pod("shop", "gone", Some("web-a"))));
        index.apply(&Event::<Pod>::Init);
        index.apply(&Event::InitApply(pod("shop", "new", Some("web-a"))));
        // Until the relist is complete, readers see the previous state (as the store does).
        assert_eq!(index.owned("shop", "web-a"), ["gone"]);
        index.apply(&Event::<Pod>::InitDone);
        assert_eq!(index.owned("shop", "web-a"), ["new"]);
    }

    #[test]
    fn only_the_controlling_owner_of_the_kind_counts() {
        let mut p = pod("shop", "p", Some("web-a"));
        p.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert_eq!(controller_owner(&p.metadata, "ReplicaSet"), None);
        assert_eq!(
            controller_owner(&pod("shop", "p", Some("web-a")).metadata, "Deployment"),
            None
        );
    }
}
