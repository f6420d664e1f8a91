//! This process's watch of the namespace's pods: which were injected, and when each one's
//! containers became ready and its gate opened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::constants::READY_GATE_CONDITION;
use quiesce_e2e::rollout;

/// What this process's pod watch saw of one pod.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The webhook injected it (quiesce's gate is in its spec).
    gated: bool,
    containers_ready: Option<Instant>,
    gate_open: Option<Instant>,
    terminating: bool,
}

/// The pods of the namespace, as the watch sees them.
#[derive(Default)]
pub struct Pods {
    by_uid: HashMap<String, Seen>,
}

impl Pods {
    fn observe(&mut self, pod: &Pod, now: Instant) {
        let Some(uid) = pod.uid() else { return };
        let condition = |t: &str| rollout::condition(pod, t) == Some("True");
        let seen = self.by_uid.entry(uid).or_default();
        seen.gated = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == READY_GATE_CONDITION));
        seen.terminating = pod.metadata.deletion_timestamp.is_some();
        if condition("ContainersReady") && seen.containers_ready.is_none() {
            seen.containers_ready = Some(now);
        }
        if condition(READY_GATE_CONDITION) && seen.gate_open.is_none() {
            seen.gate_open = Some(now);
        }
    }

    /// Live pods: all, those without quiesce's gate (not injected: created before the
    /// webhook's cache had their policy, or admitted while the webhook failed open), and the
    /// injected ones whose gate is open.
    pub fn counts(&self) -> (usize, usize, usize) {
        let live = self.by_uid.values().filter(|s| !s.terminating);
        let (mut all, mut ungated, mut open) = (0, 0, 0);
        for s in live {
            all += 1;
            ungated += usize::from(!s.gated);
            open += usize::from(s.gated && s.gate_open.is_some());
        }
        (all, ungated, open)
    }

    /// Containers ready → gate open, for the pods whose containers became ready after `since`.
    pub fn gate_latencies(&self, since: Instant) -> Vec<Duration> {
        self.by_uid
            .values()
            .filter_map(|s| Some((s.containers_ready?, s.gate_open?)))
            .filter(|(ready, _)| *ready >= since)
            .map(|(ready, open)| open.saturating_duration_since(ready))
            .collect()
    }
}

pub async fn watch_pods(client: Client, ns: String, pods: Arc<Mutex<Pods>>) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let mut pods = pods.lock().expect("pods lock");
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => pods.observe(&p, now),
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.uid() {
                    pods.by_uid.remove(&uid);
                }
            }
            _ => {}
        }
    }
}
