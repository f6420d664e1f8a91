//! The sidecar's own pod through the Kubernetes API: is it terminating (who may drain), and
//! the `quiesce.dev/drained` condition on its status (the drain report, as JSON).
//!
//! API failures never block or fail a drain. Whether the pod is terminating comes from a watch
//! of the pod kept from start: a drain call is answered from memory (no API round-trip an
//! outsider could multiply), and a deletion seen before the apiserver became unreachable still
//! authorizes the kubelet's preStop call. Only while the watch is not current (an error since
//! its last event, e.g. backing off after an outage) does one GET back its "no". Reports are retried until the API takes them (the
//! latest state wins) for as long as the sidecar runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use quiesce_api::constants::{
    DRAINED_CONDITION, SIDECAR_FIELD_MANAGER,
    reasons::{DRAIN_TIMED_OUT, DRAINED, DRAINING},
};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    apiserver::{
        ApiClient, Error as ApiError, Patch, pod_path, pods_path,
        types::Pod,
        watch::{Event, Watcher},
    },
    config::PodIdentity,
    metrics::Metrics,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Access to the own pod.
#[derive(Clone)]
pub struct OwnPod {
    client: ApiClient,
    pod: PodIdentity,
    metrics: Arc<Metrics>,
    terminating: watch::Receiver<bool>,
    /// Whether the watch is current: its last event was not an error (see
    /// [`OwnPod::is_terminating`]).
    watch_current: Arc<AtomicBool>,
}

impl std::fmt::Debug for OwnPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnPod").field("pod", &self.pod).finish()
    }
}

impl OwnPod {
    /// Handle on `pod` through `client`; starts watching the pod.
    pub fn new(client: ApiClient, pod: PodIdentity, metrics: Arc<Metrics>) -> Self {
        let watch_current = Arc::new(AtomicBool::new(false));
        let terminating =
            watch_terminating(client.clone(), &pod, metrics.clone(), watch_current.clone());
        Self {
            client,
            pod,
            metrics,
            terminating,
            watch_current,
        }
    }

    /// Whether the pod is terminating (has a deletionTimestamp), waiting up to `bound` for
    /// the watch to say so: the kubelet calls the preStop hook right after it learned of the
    /// deletion from the same apiserver, so the watch is at most a moment behind. When the
    /// watch is not current (not listed yet, or failing since its last error — right after an
    /// apiserver outage it backs off before it reconnects), one GET of the pod decides: a
    /// current watch's "no" needs no API call, so outsiders cannot multiply them.
    pub async fn is_terminating(&self, bound: Duration) -> bool {
        let mut rx = self.terminating.clone();
        if matches!(
            tokio::time::timeout(bound, rx.wait_for(|t| *t)).await,
            Ok(Ok(_))
        ) {
            return true;
        }
        if self.watch_current.load(Ordering::Relaxed) {
            return false;
        }
        let path = pod_path(&self.pod.namespace, &self.pod.name);
        match tokio::time::timeout(CALL_TIMEOUT, self.client.get::<Pod>(&path)).await {
            Ok(Ok(p)) => p.metadata.deletion_timestamp.is_some(),
            Ok(Err(e)) if e.is_not_found() => true,
            _ => {
                self.metrics
                    .api_errors
                    .get_or_create(&vec![("op", "get_pod")])
                    .inc();
                false
            }
        }
    }

    async fn patch_condition(&self, body: &serde_json::Value) -> Result<(), ApiError> {
        let patch = self.client.patch_pod_status(
            &self.pod.namespace,
            &self.pod.name,
            Patch::Strategic,
            body,
            SIDECAR_FIELD_MANAGER,
        );
        tokio::time::timeout(CALL_TIMEOUT, patch)
            .await
            .map_err(|_| ApiError::Silent(CALL_TIMEOUT))?
    }
}

/// The strategic-merge patch of `pods/status` that sets the drained condition (conditions
/// merge by `type`, so other conditions are untouched).
pub fn condition_patch(
    status: bool,
    reason: &str,
    message: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    json!({
        "status": {
            "conditions": [{
                "type": DRAINED_CONDITION,
                "status": if status { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }]
        }
    })
}

/// Watches the pod named `name` and publishes whether it is terminating (once true, stays
/// true: a deletionTimestamp is never removed, and a deleted pod was terminating).
fn watch_terminating(
    client: ApiClient,
    pod: &PodIdentity,
    metrics: Arc<Metrics>,
    current: Arc<AtomicBool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut watcher: Watcher<Pod> = Watcher::new(
        client,
        pods_path(&pod.namespace),
        Some(format!("metadata.name={}", pod.name)),
    );
    tokio::spawn(async move {
        loop {
            let ev = watcher.next().await;
            current.store(ev.is_ok(), Ordering::Relaxed);
            match ev {
                Ok(Event::Listed(pods)) => {
                    if pods.iter().any(|p| p.metadata.deletion_timestamp.is_some()) {
                        tx.send_replace(true);
                    }
                }
                Ok(Event::Applied(p)) => {
                    if p.metadata.deletion_timestamp.is_some() {
                        tx.send_replace(true);
                    }
                }
                Ok(Event::Deleted(_)) => {
                    tx.send_replace(true);
                }
                Err(e) => {
                    metrics
                        .api_errors
                        .get_or_create(&vec![("op", "watch_pod")])
                        .inc();
                    tracing::warn!(error = %e, "watching the own pod failed; retrying");
                }
            }
            if *tx.borrow() {
                // Nothing more to learn.
                return;
            }
        }
    });
    rx
}

/// The condition the reporter should leave on the pod, with a version so a waiter can tell
/// when its own update (or a later one) was written.
#[derive(Debug, Clone, Default)]
struct Desired {
    version: u64,
    body: Option<serde_json::Value>,
}

/// Writes the drained condition from one background task: the latest state wins (a
/// `Draining` not yet written is superseded by the report), and a failed write is retried
/// with capped backoff until the API takes it, so a report made while the apiserver is
/// unreachable arrives when it is back.
#[derive(Debug, Clone)]
pub struct Reporter {
    desired: Arc<watch::Sender<Desired>>,
    written: watch::Receiver<u64>,
}

impl Reporter {
    /// Starts the reporting task.
    pub fn spawn(pod: OwnPod) -> Self {
        let (desired, mut wanted) = watch::channel(Desired::default());
        let (written_tx, written) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut delay = RETRY_MIN;
            loop {
                let Desired { version, body } = wanted.borrow_and_update().clone();
                if let Some(body) = body
                    && version > *written_tx.borrow()
                {
                    match pod.patch_condition(&body).await {
                        Ok(()) => {
                            written_tx.send_replace(version);
                            delay = RETRY_MIN;
                        }
                        Err(e) => {
                            pod.metrics
                                .api_errors
                                .get_or_create(&vec![("op", "patch_pod_status")])
                                .inc();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "patching the drained condition failed; retrying");
                            // Wake early for a newer state, else retry after the delay.
                            let _ = tokio::time::timeout(delay, wanted.changed()).await;
                            delay = (delay * 2).min(RETRY_MAX);
                            continue;
                        }
                    }
                }
                if wanted.changed().await.is_err() {
                    return;
                }
            }
        });
        Self {
            desired: Arc::new(desired),
            written,
        }
    }

    fn set(&self, body: serde_json::Value) -> u64 {
        let mut version = 0;
        self.desired.send_modify(|d| {
            d.version += 1;
            d.body = Some(body);
            version = d.version;
        });
        version
    }

    /// Condition False/Draining; does not wait.
    pub fn draining(&self) {
        self.set(condition_patch(
            false,
            DRAINING,
            "draining connections",
            chrono::Utc::now(),
        ));
    }

    /// Condition True with the report as its message (JSON, see
    /// [`quiesce_api::DrainReport::to_condition_message`]); waits at most `bound` (the write
    /// goes on after that). Returns whether it was written within the bound.
    pub async fn drained(&self, report: &quiesce_api::DrainReport, bound: Duration) -> bool {
        let reason = if report.forced {
            DRAIN_TIMED_OUT
        } else {
            DRAINED
        };
        let version = self.set(condition_patch(
            true,
            reason,
            &report.to_condition_message(),
            chrono::Utc::now(),
        ));
        self.wait_written(version, bound).await
    }

    /// Waits at most `bound` for everything reported so far to be written.
    pub async fn flush(&self, bound: Duration) -> bool {
        let version = self.desired.borrow().version;
        self.wait_written(version, bound).await
    }

    async fn wait_written(&self, version: u64, bound: Duration) -> bool {
        let mut written = self.written.clone();
        matches!(
            tokio::time::timeout(bound, written.wait_for(|w| *w >= version)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    use crate::apiserver::fake::{FakeApiserver, Reply};

    /// A client of a fake apiserver: the watch's list gets the pod, not being deleted
    /// (`list_ok`) or a 500; a watch stays open; a GET of the pod is counted and gets the pod
    /// being deleted.
    async fn fake_api(list_ok: bool) -> (ApiClient, FakeApiserver, Arc<AtomicUsize>) {
        let gets = Arc::new(AtomicUsize::new(0));
        let counted = gets.clone();
        let pod = |deleting: bool| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "7",
                    "deletionTimestamp": deleting.then_some("2026-05-01T10:00:00Z")}})
        };
        let fake = FakeApiserver::start(move |req| {
            let uri = &req.path_and_query;
            if uri.contains("watch=true") {
                Reply::open()
            } else if uri.contains("/pods/web-1") {
                gets.fetch_add(1, Ordering::SeqCst);
                Reply::json(200, pod(true))
            } else if list_ok {
                Reply::json(
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "7"}, "items": [pod(false)]}),
                )
            } else {
                Reply::json(
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "etcd unavailable", "reason": "InternalError", "code": 500}),
                )
            }
        })
        .await;
        (ApiClient::for_tests(&fake.base), fake, counted)
    }

    fn own_pod(client: ApiClient) -> OwnPod {
        let identity = PodIdentity {
            name: "web-1".into(),
            namespace: "shop".into(),
            ip: "10.0.0.1".parse().unwrap(),
        };
        OwnPod::new(client, identity, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn a_current_watch_answers_a_running_pods_drain_call_without_an_api_call() {
        let (client, _fake, gets) = fake_api(true).await;
        let pod = own_pod(client);
        // Let the watch list the pod.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !pod.watch_current.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the watch lists the pod");
        for _ in 0..5 {
            assert!(!pod.is_terminating(Duration::from_millis(20)).await);
        }
        assert_eq!(gets.load(Ordering::SeqCst), 0, "no GET per call");
    }

    #[tokio::test]
    async fn a_watch_that_is_not_current_is_backed_by_one_get() {
        let (client, _fake, gets) = fake_api(false).await;
        let pod = own_pod(client);
        assert!(pod.is_terminating(Duration::from_millis(50)).await);
        assert_eq!(gets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn condition_patch_shape() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let p = condition_patch(true, DRAINED, "drained in 1.00s", now);
        assert_eq!(
            p,
            json!({"status": {"conditions": [{
                "type": "quiesce.dev/drained", "status": "True", "reason": "Drained",
                "message": "drained in 1.00s", "lastTransitionTime": "2026-05-01T10:00:00Z"
            }]}})
        );
        assert_eq!(
            condition_patch(false, DRAINING, "", now)["status"]["conditions"][0]["status"],
            "False"
        );
    }
}
