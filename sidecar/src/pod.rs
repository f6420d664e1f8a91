//! The sidecar's own pod through the Kubernetes API: is it terminating (who may drain), and
//! the `quiesce.dev/drained` condition on its status (the drain report, as JSON).
//!
//! API failures never block or fail a drain: calls are bounded, reports are retried a few
//! times and then given up with a log line and a metric.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use quiesce_api::constants::{
    DRAINED_CONDITION, SIDECAR_FIELD_MANAGER,
    reasons::{DRAIN_TIMED_OUT, DRAINED, DRAINING},
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::{config::PodIdentity, metrics::Metrics};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: u32 = 4;

/// Access to the own pod.
#[derive(Clone)]
pub struct OwnPod {
    api: Api<Pod>,
    pod: PodIdentity,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OwnPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnPod").field("pod", &self.pod).finish()
    }
}

impl OwnPod {
    /// Handle on `pod` through `client`.
    pub fn new(client: Client, pod: PodIdentity, metrics: Arc<Metrics>) -> Self {
        Self {
            api: Api::namespaced(client, &pod.namespace),
            pod,
            metrics,
        }
    }

    /// Whether the pod has a deletionTimestamp, asked of the API (bounded retries).
    pub async fn is_terminating(&self) -> Result<bool, String> {
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match tokio::time::timeout(CALL_TIMEOUT, self.api.get(&self.pod.name)).await {
                Ok(Ok(p)) => return Ok(p.metadata.deletion_timestamp.is_some()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".to_string(),
            }
            self.metrics
                .api_errors
                .get_or_create(&vec![("op", "get_pod")])
                .inc();
        }
        Err(last)
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

struct Job {
    body: serde_json::Value,
    done: Option<oneshot::Sender<bool>>,
}

/// Sends condition updates in order from one background task.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("body", &self.body).finish()
    }
}

impl Reporter {
    /// Starts the reporting task.
    pub fn spawn(pod: OwnPod) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let ok = send_with_retries(&pod, &job.body).await;
                if let Some(done) = job.done {
                    let _ = done.send(ok);
                }
            }
        });
        Self { tx }
    }

    /// Condition False/Draining; does not wait.
    pub fn draining(&self) {
        let body = condition_patch(false, DRAINING, "draining connections", chrono::Utc::now());
        let _ = self.tx.send(Job { body, done: None });
    }

    /// Condition True with the report as its message (JSON, see
    /// [`quiesce_api::DrainReport::to_condition_message`]); waits at most `bound`. Returns
    /// whether it was written.
    pub async fn drained(&self, report: &quiesce_api::DrainReport, bound: Duration) -> bool {
        let reason = if report.forced {
            DRAIN_TIMED_OUT
        } else {
            DRAINED
        };
        let body = condition_patch(
            true,
            reason,
            &report.to_condition_message(),
            chrono::Utc::now(),
        );
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Job {
                body,
                done: Some(done),
            })
            .is_err()
        {
            return false;
        }
        matches!(tokio::time::timeout(bound, rx).await, Ok(Ok(true)))
    }
}

async fn send_with_retries(pod: &OwnPod, body: &serde_json::Value) -> bool {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match pod.patch_condition(body).await {
            Ok(()) => return true,
            Err(e) => {
                pod.metrics
                    .api_errors
                    .get_or_create(&vec![("op", "patch_pod_status")])
                    .inc();
                tracing::warn!(attempt, error = %e, "patching the drained condition failed");
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    pod.metrics.report_failures.inc();
    tracing::error!("gave up reporting the drained condition; the drain itself is unaffected");
    false
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
