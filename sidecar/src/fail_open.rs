//! Fail-open admission: the sidecar lets its own pod in when the operator is not deciding, so
//! an operator outage never holds a pod behind the `quiesce.dev/ready` readiness gate forever.
//!
//! The operator owns the gate. It writes it `True` when it admits a pod and `False` (with a
//! reason) while it holds one, and refreshes `lastProbeTime` on held pods every third of
//! `failOpenAfterSeconds` — a heartbeat. The sidecar reads its own pod now and then and sets the
//! gate `True` with reason `FailOpen` when its containers are ready and either
//! - the gate was never written and the pod started `failOpenAfterSeconds` ago (the operator
//!   never saw the pod: down, or the webhook injected a pod of a policy it does not reconcile),
//! - or the gate is `False` and its heartbeat is older than `failOpenAfterSeconds` (the operator
//!   stopped looking).
//!
//! A live operator holding a pod (a pause, a failed rollout) keeps its heartbeat fresh, so the
//! sidecar never overrides a decision. The timeout comes from the policy through the env
//! variable [`SIDECAR_FAIL_OPEN_ENV`] set by the webhook; without it the sidecar never fails
//! open. [`decide`] is pure; [`run`] is its loop.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quiesce_api::constants::{
    READY_GATE_CONDITION, SIDECAR_FAIL_OPEN_ENV, SIDECAR_FIELD_MANAGER, reasons::FAIL_OPEN,
};
use serde_json::json;

use crate::apiserver::{ApiClient, Patch, pod_path, types::Pod};
use crate::config::PodIdentity;
use crate::metrics::Metrics;

/// The fail-open timeout from [`SIDECAR_FAIL_OPEN_ENV`] (whole seconds, at least 1).
pub fn from_env() -> Option<Duration> {
    parse_seconds(&std::env::var(SIDECAR_FAIL_OPEN_ENV).ok()?)
}

/// A fail-open timeout as the webhook writes it: whole seconds, at least 1.
pub fn parse_seconds(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// What the sidecar sees of its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// `status.startTime`.
    pub started: Option<DateTime<Utc>>,
    /// `ContainersReady` is `True`.
    pub containers_ready: bool,
    /// The gate: `(status is True, lastProbeTime)`, if written.
    pub gate: Option<(bool, Option<DateTime<Utc>>)>,
    /// The pod is terminating.
    pub terminating: bool,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the gate to the operator; look again after this long.
    Wait(Duration),
    /// Admit the pod: the operator has not decided for `after`.
    Admit(String),
    /// The pod is admitted or going away: stop looking.
    Done,
}

/// The pure rule (see the module docs).
pub fn decide(o: &Observation, now: DateTime<Utc>, after: Duration) -> Decision {
    let check = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    if o.terminating || matches!(o.gate, Some((true, _))) {
        return Decision::Done;
    }
    let since = match &o.gate {
        None => o.started,
        Some((false, probe)) => probe.or(o.started),
        Some((true, _)) => unreachable!("handled above"),
    };
    let Some(since) = since else {
        return Decision::Wait(check);
    };
    let waited = (now - since).to_std().unwrap_or_default();
    if waited < after {
        return Decision::Wait((after - waited).min(check).max(Duration::from_secs(1)));
    }
    if !o.containers_ready {
        return Decision::Wait(check);
    }
    let why = match o.gate {
        None => format!(
            "no decision by the quiesce operator {}s after the pod started: admitted by its sidecar",
            waited.as_secs()
        ),
        _ => format!(
            "the quiesce operator's hold was not renewed for {}s: admitted by its sidecar",
            waited.as_secs()
        ),
    };
    Decision::Admit(why)
}

/// What the sidecar sees of `pod`.
pub fn observe(pod: &Pod) -> Observation {
    Observation {
        started: pod.status.as_ref().and_then(|s| s.start_time),
        containers_ready: pod
            .condition("ContainersReady")
            .is_some_and(|c| c.status == "True"),
        gate: pod
            .condition(READY_GATE_CONDITION)
            .map(|c| (c.status == "True", c.last_probe_time)),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// Watches the own pod's gate and admits it when the operator does not decide in time.
pub async fn run(client: ApiClient, pod: PodIdentity, after: Duration, metrics: Arc<Metrics>) {
    let path = pod_path(&pod.namespace, &pod.name);
    tracing::info!(after_seconds = after.as_secs(), "fail-open admission armed");
    loop {
        let wait =
            match tokio::time::timeout(Duration::from_secs(5), client.get::<Pod>(&path)).await {
                Ok(Ok(p)) => match decide(&observe(&p), Utc::now(), after) {
                    Decision::Done => return,
                    Decision::Wait(d) => d,
                    Decision::Admit(message) => {
                        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                        let patch = json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod.name, "uid": p.metadata.uid},
                            "status": {"conditions": [{
                                "type": READY_GATE_CONDITION, "status": "True", "reason": FAIL_OPEN,
                                "message": message, "lastProbeTime": now, "lastTransitionTime": now,
                            }]}
                        });
                        match client
                            .patch_pod_status(
                                &pod.namespace,
                                &pod.name,
                                Patch::ApplyForce,
                                &patch,
                                SIDECAR_FIELD_MANAGER,
                            )
                            .await
                        {
                            Ok(_) => {
                                metrics.fail_open.inc();
                                tracing::warn!(%message, "pod admitted by fail-open");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "fail-open admission failed; retrying");
                                Duration::from_secs(5)
                            }
                        }
                    }
                },
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading own pod failed");
                    Duration::from_secs(5)
                }
                Err(_) => Duration::from_secs(5),
            };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn obs(gate: Option<(bool, Option<i64>)>, ready: bool) -> Observation {
        Observation {
            started: Some(t(0)),
            containers_ready: ready,
            gate: gate.map(|(s, p)| (s, p.map(t))),
            terminating: false,
        }
    }

    const AFTER: Duration = Duration::from_secs(60);

    #[test]
    fn an_undecided_pod_is_admitted_after_the_timeout() {
        assert_eq!(
            decide(&obs(None, true), t(30), AFTER),
            Decision::Wait(Duration::from_secs(15))
        );
        assert!(
            matches!(decide(&obs(None, true), t(60), AFTER), Decision::Admit(m) if m.contains("no decision"))
        );
    }

    #[test]
    fn a_fresh_operator_hold_is_respected_and_a_stale_one_is_not() {
        assert!(matches!(
            decide(&obs(Some((false, Some(100))), true), t(130), AFTER),
            Decision::Wait(_)
        ));
        assert!(
            matches!(decide(&obs(Some((false, Some(100))), true), t(161), AFTER), Decision::Admit(m) if m.contains("not renewed"))
        );
    }

    #[test]
    fn unready_admitted_or_terminating_pods_are_not_touched() {
        assert!(matches!(
            decide(&obs(None, false), t(600), AFTER),
            Decision::Wait(_)
        ));
        assert_eq!(
            decide(&obs(Some((true, None)), true), t(600), AFTER),
            Decision::Done
        );
        let mut o = obs(None, true);
        o.terminating = true;
        assert_eq!(decide(&o, t(600), AFTER), Decision::Done);
    }
}
