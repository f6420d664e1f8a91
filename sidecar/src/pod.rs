//! The sidecar's own pod through the Kubernetes API: is it terminating (who may drain), and
//! the `quiesce.dev/drained` condition on its status (the drain report, as JSON).
//!
//! API failures never block or fail a drain. Whether the pod is terminating comes from a watch
//! of the pod kept from start: a drain call is answered from memory (no API round-trip an
//! outsider could multiply), and a deletion seen before the apiserver became unreachable still
//! authorizes the kubelet's preStop call. Reports are retried until the API takes them (the
//! latest state wins) for as long as the sidecar runs.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use quiesce_api::constants::{
    DRAINED_CONDITION, SIDECAR_FIELD_MANAGER,
    reasons::{DRAIN_TIMED_OUT, DRAINED, DRAINING},
};
use serde_json::json;
use tokio::sync::watch;

use crate::{config::PodIdentity, metrics::Metrics};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Access to the own pod.
#[derive(Clone)]
pub struct OwnPod {
    api: Api<Pod>,
    pod: PodIdentity,
    metrics: Arc<Metrics>,
    terminating: watch::Receiver<bool>,
}

impl std::fmt::Debug for OwnPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnPod").field("pod", &self.pod).finish()
    }
}

impl OwnPod {
    /// Handle on `pod` through `client`; starts watching the pod.
    pub fn new(client: Client, pod: PodIdentity, metrics: Arc<Metrics>) -> Self {
        let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
        let terminating = watch_terminating(api.clone(), &pod.name, metrics.clone());
        Self {
            api,
            pod,
            metrics,
            terminating,
        }
    }

    /// Whether the pod is terminating (has a deletionTimestamp), waiting up to `bound` for
    /// the watch to say so: the kubelet calls the preStop hook right after it learned of the
    /// deletion from the same apiserver, so the watch is at most a moment behind.
    pub async fn is_terminating(&self, bound: Duration) -> bool {
        let mut rx = self.terminating.clone();
        matches!(
            tokio::time::timeout(bound, rx.wait_for(|t| *t)).await,
            Ok(Ok(_))
        )
    }

    async fn patch_condition(&self, body: &serde_json::Value) -> Result<(), String> {
        let pp = PatchParams {
            field_manager: Some(SIDECAR_FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.api
                .patch_status(&self.pod.name, &pp, &Patch::Strategic(body)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
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
fn watch_terminating(api: Api<Pod>, name: &str, metrics: Arc<Metrics>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    if p.metadata.deletion_timestamp.is_some() {
                        tx.send_replace(true);
                    }
                }
                Ok(watcher::Event::Delete(_)) => {
                    tx.send_replace(true);
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
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
