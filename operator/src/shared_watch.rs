//! One watch per kind for the caches every replica keeps — RolloutPolicies and the metadata of
//! Deployment-owned ReplicaSets ([`SharedCaches`]). The webhook reads their stores on every
//! replica; on the leader, the controller of the current term subscribes to what they touch.
//!
//! Not kube's shared reflector (`reflect_shared`): its watch waits for the slowest subscriber,
//! so a controller that stops reading (a term ending, a term not yet polling) would hold up the
//! webhook's cache. Here the watch never waits. A subscriber that falls behind loses events
//! and is told so through its `lagged` channel; the controller then reconciles every policy,
//! as it does at the start of each term (the events before its subscription are not replayed).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use quiesce_api::RolloutPolicy;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::controller::{Undecodables, policy_events, replicaset_events, watch_failed};
use crate::metrics::Metrics;

/// Touched objects a subscriber may fall behind by before it loses some (and reconciles
/// everything instead). A term's controller reads them as they come; a burst of this size is
/// a relist of a large cluster.
const SUBSCRIBER_BUFFER: usize = 1024;

/// An object a watch event carried, after the store applied it.
#[derive(Debug)]
pub enum Touched<K> {
    /// Listed, created or changed.
    Applied(Arc<K>),
    /// Deleted (its last state).
    Deleted(Arc<K>),
}

impl<K> Clone for Touched<K> {
    fn clone(&self) -> Self {
        match self {
            Self::Applied(k) => Self::Applied(k.clone()),
            Self::Deleted(k) => Self::Deleted(k.clone()),
        }
    }
}

impl<K> Touched<K> {
    /// The object, whichever way it was touched.
    pub fn object(self) -> Arc<K> {
        match self {
            Self::Applied(k) | Self::Deleted(k) => k,
        }
    }
}

/// One kind's watch, its cache, and what it touches for whoever subscribes (cheap to clone).
pub struct SharedWatch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    touched: broadcast::Sender<Touched<K>>,
    listed: watch::Receiver<bool>,
    changes: watch::Receiver<u64>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for SharedWatch<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            touched: self.touched.clone(),
            listed: self.listed.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// Starts the watch `events` into a new store; `name` labels its counts and log lines
    /// (`watch_events_total{watch}`, `watch_errors_total{watch}`).
    pub fn spawn(
        name: &'static str,
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (store, writer) = reflector::store::<K>();
        let (touched, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let (listed_tx, listed) = watch::channel(false);
        let (changes_tx, changes) = watch::channel(0_u64);
        let sender = touched.clone();
        tokio::spawn(events.reflect(writer).for_each(move |event| {
            use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
            let touched = match &event {
                Ok(Init) => None,
                Ok(InitDone) => {
                    listed_tx.send_replace(true);
                    None
                }
                Ok(InitApply(object) | Apply(object)) => Some((object, false)),
                Ok(Delete(object)) => Some((object, true)),
                Err(err) => {
                    watch_failed(&metrics, name, err);
                    None
                }
            };
            if let Some((object, deleted)) = touched {
                metrics.watch_event(name);
                // Cloned only for a subscriber: a follower's watch keeps nothing extra.
                if sender.receiver_count() > 0 {
                    let object = Arc::new(object.clone());
                    let _ = sender.send(if deleted {
                        Touched::Deleted(object)
                    } else {
                        Touched::Applied(object)
                    });
                }
            }
            // The store's content changed: one object, or all of them at the end of a (re)list.
            if matches!(event, Ok(InitDone | Apply(_) | Delete(_))) {
                changes_tx.send_modify(|generation| *generation += 1);
            }
            async {}
        }));
        Self {
            store,
            touched,
            listed,
            changes,
        }
    }

    /// The cache (read by any number of readers).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// `true` once the first list is in the store. Unlike `Store::wait_until_ready`, which
    /// wakes only one of several waiters, any number may wait on this.
    pub fn listed(&self) -> watch::Receiver<bool> {
        self.listed.clone()
    }

    /// Waits until the first list is in the store (`false`: the watch is gone).
    pub async fn wait_listed(&self) -> bool {
        self.listed.clone().wait_for(|listed| *listed).await.is_ok()
    }

    /// Changes each time the store's content changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// What the watch touches from now on. When this subscriber falls behind, the events it
    /// missed are lost and `lagged` is told (reconcile everything then).
    pub fn subscribe(
        &self,
        name: &'static str,
        lagged: UnboundedSender<()>,
    ) -> impl Stream<Item = Touched<K>> + Send + use<K> {
        futures::stream::unfold(
            (self.touched.subscribe(), lagged),
            move |(mut rx, lagged)| async move {
                loop {
                    match rx.recv().await {
                        Ok(touched) => return Some((touched, (rx, lagged))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            warn!(
                                watch = name,
                                missed,
                                "the controller fell behind a watch; reconciling every policy"
                            );
                            let _ = lagged.unbounded_send(());
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}

/// The watches every replica keeps: what the webhook reads, and what the leader's controller
/// subscribes to for each term.
#[derive(Clone)]
pub struct SharedCaches {
    /// Every RolloutPolicy that decodes.
    pub policies: SharedWatch<RolloutPolicy>,
    /// The metadata of every Deployment-owned ReplicaSet.
    pub replicasets: SharedWatch<PartialObjectMeta<ReplicaSet>>,
    /// The policies that do not decode now (reported by the leader).
    pub undecodable: Arc<Undecodables>,
}

impl SharedCaches {
    /// Starts both watches.
    pub fn spawn(client: &Client, metrics: &Arc<Metrics>) -> Self {
        let undecodable = Arc::new(Undecodables::default());
        let policies = SharedWatch::spawn(
            "policies",
            policy_events(client.clone(), undecodable.clone()).default_backoff(),
            metrics.clone(),
        );
        let replicasets = SharedWatch::spawn(
            "replicasets",
            replicaset_events(client.clone()),
            metrics.clone(),
        );
        Self {
            policies,
            replicasets,
            undecodable,
        }
    }

    /// Waits until both have listed (`false`: a watch is gone).
    pub async fn wait_listed(&self) -> bool {
        self.policies.wait_listed().await && self.replicasets.wait_listed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use kube::api::ObjectMeta;

    fn rs(name: &str) -> PartialObjectMeta<ReplicaSet> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(touched: &[Touched<PartialObjectMeta<ReplicaSet>>]) -> Vec<String> {
        touched
            .iter()
            .map(|t| {
                let (kind, k) = match t {
                    Touched::Applied(k) => ("applied", k),
                    Touched::Deleted(k) => ("deleted", k),
                };
                format!("{kind} {}", k.metadata.name.as_deref().unwrap_or_default())
            })
            .collect()
    }

    /// A watch fed by hand: what a subscriber sees, the store, `listed` and `changes`.
    #[tokio::test]
    async fn a_subscriber_sees_what_the_store_applied_from_its_subscription_on() {
        let (events_tx, events_rx) = mpsc::unbounded();
        let shared = SharedWatch::spawn("replicasets", events_rx, Arc::new(Metrics::default()));
        let send = |e| events_tx.unbounded_send(Ok(e)).unwrap();
        // Before anyone subscribes: kept in the store, not buffered for later subscribers.
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(rs("a")));
        send(watcher::Event::InitDone);
        assert!(shared.wait_listed().await);
        assert_eq!(shared.store().state().len(), 1);
        let (lagged_tx, _lagged) = mpsc::unbounded();
        let sub = shared.subscribe("replicasets", lagged_tx);
        let generation = *shared.changes().borrow();
        send(watcher::Event::Apply(rs("b")));
        send(watcher::Event::Delete(rs("a")));
        let seen: Vec<_> = sub.take(2).collect().await;
        assert_eq!(names(&seen), ["applied b", "deleted a"]);
        assert_eq!(shared.store().state().len(), 1);
        assert_eq!(*shared.changes().borrow(), generation + 2);
    }

    /// A subscriber that does not read while more than the buffer goes by is told it lagged,
    /// and the watch went on without waiting for it (the store has everything).
    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_holds_nothing_up() {
        let (events_tx, events_rx) = mpsc::unbounded();
        let shared = SharedWatch::spawn("replicasets", events_rx, Arc::new(Metrics::default()));
        let (lagged_tx, mut lagged) = mpsc::unbounded();
        let sub = shared.subscribe("replicasets", lagged_tx);
        let total = SUBSCRIBER_BUFFER + 10;
        events_tx
            .unbounded_send(Ok(watcher::Event::InitDone))
            .unwrap();
        for i in 0..total {
            events_tx
                .unbounded_send(Ok(watcher::Event::Apply(rs(&format!("rs-{i}")))))
                .unwrap();
        }
        let mut changes = shared.changes();
        changes
            .wait_for(|generation| *generation == 1 + total as u64)
            .await
            .unwrap();
        assert_eq!(shared.store().state().len(), total);
        futures::pin_mut!(sub);
        let first = sub.next().await.unwrap().object();
        assert_eq!(lagged.next().await, Some(()));
        // The oldest events were lost; the newest are still there.
        assert_ne!(first.metadata.name.as_deref(), Some("rs-0"));
    }
}
