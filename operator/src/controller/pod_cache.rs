//! The leader's pods: only those quiesce manages, not every pod of the cluster.
//!
//! Two kinds of watch, disjoint by label:
//! - one cluster-wide watch of the pods the webhook injected (label `quiesce.dev/policy`): they
//!   drain and report through quiesce wherever they run, also after their policy is gone;
//! - one watch per namespace that holds a RolloutPolicy, of the Deployment pods there that the
//!   webhook did not inject (`pod-template-hash,!quiesce.dev/policy`): pods that predate their
//!   policy, or were admitted while the webhook failed open, still count for availability and
//!   for the `Injected` condition.
//!
//! Pods of namespaces without a policy are neither listed nor held, so the operator's cost
//! follows what it manages, not the size of the cluster. A namespace's watch starts with the
//! first policy seen there and stops when the last one is gone; a reconcile waits until the
//! watch of its namespace has listed ([`PodCache::listed`]), so it never plans over a partial
//! view.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::POD_TEMPLATE_HASH_LABEL;
use quiesce_api::constants::labels::POLICY;
use tracing::{info, warn};

use super::cached::CachedPod;
use super::owner_index::OwnerIndex;

#[cfg(test)]
mod tests;

/// The namespaces whose pods are watched: those holding a policy (deleting ones included:
/// their last pass still admits held pods).
pub fn policy_namespaces(policies: &[Arc<RolloutPolicy>]) -> BTreeSet<String> {
    policies.iter().filter_map(|p| p.namespace()).collect()
}

/// How long a reconcile waits for its namespace's pods to be listed before it gives up and is
/// retried (the watch goes on listing meanwhile).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Touched pods of the namespace watches wait here for the controller (bounded: a slow
/// controller slows the watches down instead of growing a queue).
const TOUCHED_BUFFER: usize = 1024;

/// The label selector of the injected pods' watch.
pub fn injected_selector() -> String {
    POLICY.to_owned()
}

/// The label selector of a namespace watch: Deployment pods the webhook did not inject.
pub fn not_injected_selector() -> String {
    format!("{POD_TEMPLATE_HASH_LABEL},!{POLICY}")
}

/// The pods the controller reads (cheap to clone: every clone shares the same caches).
#[derive(Clone)]
pub struct PodCache {
    /// Pods with the webhook's label, in every namespace.
    injected: Store<CachedPod>,
    /// The injected pods by ReplicaSet.
    injected_by_owner: OwnerIndex,
    /// Namespace → its watch of the pods without it.
    namespaces: Arc<Mutex<HashMap<String, NamespaceWatch>>>,
    /// Where namespace watches come from; `None`: fixed caches (tests), nothing is watched.
    source: Option<Source>,
}

/// One namespace's watch of the pods the webhook did not inject.
struct NamespaceWatch {
    store: Store<CachedPod>,
    by_owner: OwnerIndex,
    listed: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Source {
    client: Client,
    touched: mpsc::Sender<CachedPod>,
}

/// The watch streams behind a [`PodCache`], for the controller to drive and map.
pub type TouchedPods =
    std::pin::Pin<Box<dyn Stream<Item = Result<CachedPod, watcher::Error>> + Send>>;

impl PodCache {
    /// The cache and the stream of pods touched by any of its watches (the injected pods'
    /// watch runs as part of that stream, the namespace watches as tasks that feed it).
    pub fn watch(client: Client) -> (Self, TouchedPods) {
        let (injected, writer) = reflector::store::<CachedPod>();
        let injected_by_owner = OwnerIndex::new("ReplicaSet");
        let index = injected_by_owner.clone();
        let injected_stream = watcher(
            Api::<CachedPod>::all(client.clone()),
            watcher::Config::default().labels(&injected_selector()),
        )
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index.apply(event);
            }
        })
        .touched_objects();
        let (touched, from_namespaces) = mpsc::channel(TOUCHED_BUFFER);
        let cache = Self {
            injected,
            injected_by_owner,
            namespaces: Arc::default(),
            source: Some(Source { client, touched }),
        };
        let stream = futures::stream::select(injected_stream, from_namespaces.map(Ok)).boxed();
        (cache, stream)
    }

    /// Fixed caches: `injected` answers for every namespace; nothing is watched (tests).
    pub fn fixed(injected: Store<CachedPod>) -> Self {
        let injected_by_owner = OwnerIndex::new("ReplicaSet");
        for pod in injected.state() {
            injected_by_owner.apply(&watcher::Event::Apply(pod.as_ref().clone()));
        }
        Self {
            injected,
            injected_by_owner,
            namespaces: Arc::default(),
            source: None,
        }
    }

    /// The store of the injected pods (its readiness is the cache's initial sync).
    pub fn injected(&self) -> &Store<CachedPod> {
        &self.injected
    }

    /// Watches exactly `namespaces` (those holding a policy): starts the missing watches and
    /// stops the others. Returns how many namespaces are watched.
    pub fn watch_namespaces(&self, namespaces: &BTreeSet<String>) -> usize {
        let mut watched = self.namespaces.lock().expect("pod cache lock");
        watched.retain(|ns, _| {
            let keep = namespaces.contains(ns);
            if !keep {
                info!(namespace = %ns, "no RolloutPolicy left: pods of the namespace no longer watched");
            }
            keep
        });
        for ns in namespaces {
            self.start(&mut watched, ns);
        }
        watched.len()
    }

    /// Waits until the pods of `namespace` are listed, starting its watch if none runs.
    /// `false` after [`LIST_TIMEOUT`] or when the watch was stopped meanwhile.
    pub async fn listed(&self, namespace: &str) -> bool {
        let mut listed = {
            let mut watched = self.namespaces.lock().expect("pod cache lock");
            match self.start(&mut watched, namespace) {
                Some(w) => w.listed.clone(),
                None => return true,
            }
        };
        matches!(
            tokio::time::timeout(LIST_TIMEOUT, listed.wait_for(|l| *l)).await,
            Ok(Ok(_))
        )
    }

    /// The watch of `namespace`, started if missing; `None` for fixed caches.
    fn start<'a>(
        &self,
        watched: &'a mut HashMap<String, NamespaceWatch>,
        namespace: &str,
    ) -> Option<&'a NamespaceWatch> {
        let source = self.source.as_ref()?;
        Some(
            watched
                .entry(namespace.to_owned())
                .or_insert_with(|| namespace_watch(source.clone(), namespace)),
        )
    }

    /// The pod `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedPod>> {
        let key = ObjectRef::new(name).within(namespace);
        self.injected.get(&key).or_else(|| {
            let watched = self.namespaces.lock().expect("pod cache lock");
            watched.get(namespace)?.store.get(&key)
        })
    }

    /// The pods of `namespace` that the ReplicaSets `replicasets` control: read through the
    /// owner indexes, so the cost follows these pods, not every pod cached.
    pub fn owned_by(&self, namespace: &str, replicasets: &[String]) -> Vec<Arc<CachedPod>> {
        let lookup = |store: &Store<CachedPod>, index: &OwnerIndex, pods: &mut Vec<_>| {
            for rs in replicasets {
                for name in index.owned(namespace, rs) {
                    pods.extend(store.get(&ObjectRef::new(&name).within(namespace)));
                }
            }
        };
        let mut pods = Vec::new();
        lookup(&self.injected, &self.injected_by_owner, &mut pods);
        let watched = self.namespaces.lock().expect("pod cache lock");
        if let Some(w) = watched.get(namespace) {
            lookup(&w.store, &w.by_owner, &mut pods);
        }
        pods
    }

    /// Every pod the webhook injected.
    pub fn injected_pods(&self) -> Vec<Arc<CachedPod>> {
        self.injected.state()
    }
}

/// Starts the watch of the not-injected pods of `namespace`; its touched pods go to the
/// controller through `source.touched`.
fn namespace_watch(source: Source, namespace: &str) -> NamespaceWatch {
    let (store, writer) = reflector::store::<CachedPod>();
    let by_owner = OwnerIndex::new("ReplicaSet");
    let index = by_owner.clone();
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let ns = namespace.to_owned();
    let mut touched = source.touched;
    let stream = watcher(
        Api::<CachedPod>::namespaced(source.client, namespace),
        watcher::Config::default().labels(&not_injected_selector()),
    )
    .default_backoff()
    .reflect(writer)
    .inspect(move |event| {
        if let Ok(event) = event {
            index.apply(event);
        }
        if matches!(event, Ok(watcher::Event::InitDone)) {
            listed_tx.send_replace(true);
        }
    })
    .touched_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(pod) => {
                    if touched.send(pod).await.is_err() {
                        return;
                    }
                }
                Err(err) => warn!(namespace = %ns, error = %err, "pod watch failed; retrying"),
            }
        }
    })
    .abort_handle();
    info!(namespace = %namespace, "RolloutPolicy in the namespace: watching its pods");
    NamespaceWatch {
        store,
        by_owner,
        listed,
        task,
    }
}
