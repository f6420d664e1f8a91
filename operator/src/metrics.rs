//! Prometheus metrics of the operator (prefix `quiesce_operator_`), served at `/metrics` on the
//! admin port.
//!
//! | metric | labels |
//! |---|---|
//! | `reconciles_total` | `result` (`ok`, `error`) |
//! | `reconcile_errors_total` | `error` ([`crate::Error::metric_label`]) |
//! | `reconcile_duration_seconds` (histogram) | |
//! | `reconcile_decision_seconds` (histogram: its own time, without API calls) | |
//! | `api_request_duration_seconds` (histogram, watches not included) | `verb`, `resource` |
//! | `policy_phase` (gauge, 1 for the current phase) | `namespace`, `policy`, `phase` |
//! | `policy_replicas` (gauge) | `namespace`, `policy`, `state` (`desired`, `updated`, `admitted`, `ready`) |
//! | `policy_steps`, `policy_steps_completed` (gauges: steps of the policy, steps done) | `namespace`, `policy` |
//! | `pods_without_sidecar` (gauge: live target pods the webhook did not inject) | `namespace`, `policy` |
//! | `last_progress_timestamp_seconds` (gauge: when the rollout last made progress) | `namespace`, `policy` |
//! | `admissions_total` (readiness gates set `True`) | `namespace`, `policy`, `reason` |
//! | `drains_total` (drains reported by sidecars) | `namespace`, `policy`, `result` |
//! | `drain_duration_seconds` (histogram of the reported drain durations) | `namespace`, `policy`, `result` |
//! | `invalid_drain_reports_total` (reports whose numbers were not plausible) | `namespace`, `policy` |
//! | `gate_resets_total` (gates someone else opened on a held pod, reset to `False`) | `namespace`, `policy` |
//! | `webhook_requests_total` | `result` (`injected`, `skipped`, `error`) |
//! | `webhook_duration_seconds` (histogram) | |
//! | `leader` (gauge) | |
//! | `watch_events_total`, `watch_errors_total` (objects and errors of each watch) | `watch` |

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::api_timing::{ApiDurations, api_histogram};

use prometheus_client::encoding::text::encode;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use quiesce_api::{Phase, RolloutPolicyStatus};

mod labels;
pub use labels::{
    ApiCall, ErrorKind, Outcome, Policy, PolicyAdmission, PolicyDrain, PolicyPhase, PolicyReplicas,
    Watch,
};

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<Outcome, Counter>,
    /// Failed reconciles by error kind.
    pub reconcile_errors: Family<ErrorKind, Counter>,
    /// Reconcile durations.
    pub reconcile_duration: Histogram,
    /// The reconcile's own time: observing the caches and planning, without API calls.
    pub reconcile_decision: Histogram,
    /// Requests to the apiserver until their response headers, by verb and resource.
    pub api_request_duration: Arc<ApiDurations>,
    /// 1 for each policy's current phase, 0 for the others.
    pub policy_phase: Family<PolicyPhase, Gauge>,
    /// Replica counts of each policy's status, by `state`.
    pub policy_replicas: Family<PolicyReplicas, Gauge>,
    /// Length of each policy's `spec.steps`.
    pub policy_steps: Family<Policy, Gauge>,
    /// Steps done in each policy's current or last rollout.
    pub policy_steps_completed: Family<Policy, Gauge>,
    /// Live pods of each policy's target that run without the sidecar.
    pub pods_without_sidecar: Family<Policy, Gauge>,
    /// When each policy's rollout last made progress (unix seconds).
    pub last_progress: Family<Policy, Gauge<f64, AtomicU64>>,
    /// Pods admitted (readiness gate set True).
    pub admissions: Family<PolicyAdmission, Counter>,
    /// Drains reported by the sidecars.
    pub drains: Family<PolicyDrain, Counter>,
    /// Durations of the drains reported by the sidecars.
    pub drain_duration: Family<PolicyDrain, Histogram, fn() -> Histogram>,
    /// Drain reports whose numbers were not plausible (counted as drains without them).
    pub invalid_drain_reports: Family<Policy, Counter>,
    /// Gates set `True` by someone else while the operator held the pod, reset to `False`.
    pub gate_resets: Family<Policy, Counter>,
    /// Admission webhook requests by result.
    pub webhook_requests: Family<Outcome, Counter>,
    /// Admission webhook latency.
    pub webhook_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Namespaces whose not-injected Deployment pods the leader watches (those with a policy).
    pub pod_watch_namespaces: Gauge,
    /// Objects delivered by each of the leader's watches, by `watch`: a watch that goes quiet
    /// while the cluster changes shows here.
    pub watch_events: Family<Watch, Counter>,
    /// Errors of each of the leader's watches, by `watch` (each is retried with backoff; a
    /// watch the apiserver closed for being too slow resumes or lists again).
    pub watch_errors: Family<Watch, Counter>,
    phases: Mutex<std::collections::HashMap<(String, String), Phase>>,
}

/// The `state` label values of `policy_replicas`, in the order of [`PolicyGauges::replicas`].
pub const REPLICA_STATES: [&str; 4] = ["desired", "updated", "admitted", "ready"];

/// The `result` label values of `drains_total` and `drain_duration_seconds`.
const DRAIN_RESULTS: [&str; 2] = ["completed", "forced"];

/// The `result` label values of `webhook_requests_total`.
const WEBHOOK_RESULTS: [&str; 3] = ["injected", "skipped", "error"];

/// What the per-policy gauges show after one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyGauges {
    /// The phase (no phase gauge without one).
    pub phase: Option<Phase>,
    /// Replicas by [`REPLICA_STATES`].
    pub replicas: [i64; 4],
    /// Length of `spec.steps`.
    pub steps: i64,
    /// Steps done (0 before a rollout).
    pub steps_completed: i64,
    /// Live target pods without the sidecar.
    pub pods_without_sidecar: i64,
    /// When the rollout last made progress, in unix seconds.
    pub last_progress: Option<f64>,
}

impl PolicyGauges {
    /// The gauges of a policy with `status`, `steps` steps and `pods_without_sidecar`.
    pub fn new(status: &RolloutPolicyStatus, steps: usize, pods_without_sidecar: usize) -> Self {
        let count = |n: Option<i32>| i64::from(n.unwrap_or(0));
        PolicyGauges {
            phase: status.phase,
            replicas: [
                count(status.desired_replicas),
                count(status.updated_replicas),
                count(status.admitted_replicas),
                count(status.ready_replicas),
            ],
            steps: steps as i64,
            steps_completed: status.steps_completed(steps).unwrap_or(0) as i64,
            pods_without_sidecar: pods_without_sidecar as i64,
            last_progress: status
                .last_progress_time
                .as_ref()
                .map(|t| t.0.as_millisecond() as f64 / 1000.0),
        }
    }
}

/// Drain durations from 100 ms (a pod without connections) to the longest drain budgets.
fn drain_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

const PHASES: [Phase; 6] = [
    Phase::Idle,
    Phase::Progressing,
    Phase::Paused,
    Phase::Completed,
    Phase::Failed,
    Phase::RolledBack,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quiesce_operator");
        let m = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            reconcile_decision: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
            api_request_duration: Arc::new(Family::new_with_constructor(api_histogram)),
            policy_phase: Family::default(),
            policy_replicas: Family::default(),
            policy_steps: Family::default(),
            policy_steps_completed: Family::default(),
            pods_without_sidecar: Family::default(),
            last_progress: Family::default(),
            admissions: Family::default(),
            drains: Family::default(),
            drain_duration: Family::new_with_constructor(drain_histogram),
            invalid_drain_reports: Family::default(),
            gate_resets: Family::default(),
            webhook_requests: Family::default(),
            webhook_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            leader: Gauge::default(),
            pod_watch_namespaces: Gauge::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            phases: Mutex::default(),
        };
        registry.register("reconciles", "Reconciles by result", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_decision_seconds",
            "The reconcile's own time: reading the caches and planning, without API calls",
            m.reconcile_decision.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Requests of the operator to the apiserver until their response headers (watches not included)",
            (*m.api_request_duration).clone(),
        );
        registry.register(
            "policy_phase",
            "1 for the current phase of each RolloutPolicy",
            m.policy_phase.clone(),
        );
        registry.register(
            "admissions",
            "Pods whose quiesce.dev/ready gate the operator set True",
            m.admissions.clone(),
        );
        registry.register(
            "policy_replicas",
            "Replicas of each RolloutPolicy's target by state (desired, updated, admitted, ready)",
            m.policy_replicas.clone(),
        );
        registry.register(
            "policy_steps",
            "Steps in each RolloutPolicy's spec.steps",
            m.policy_steps.clone(),
        );
        registry.register(
            "policy_steps_completed",
            "Steps done in each RolloutPolicy's current or last rollout",
            m.policy_steps_completed.clone(),
        );
        registry.register(
            "pods_without_sidecar",
            "Live pods of each RolloutPolicy's target that run without the quiesce sidecar",
            m.pods_without_sidecar.clone(),
        );
        registry.register(
            "last_progress_timestamp_seconds",
            "When each RolloutPolicy's rollout last made progress (a pod admitted or a step done)",
            m.last_progress.clone(),
        );
        registry.register("drains", "Drains reported by sidecars", m.drains.clone());
        registry.register(
            "drain_duration_seconds",
            "Durations of the drains reported by sidecars",
            m.drain_duration.clone(),
        );
        registry.register(
            "invalid_drain_reports",
            "Drain reports whose numbers were not plausible, counted as drains without them",
            m.invalid_drain_reports.clone(),
        );
        registry.register(
            "gate_resets",
            "quiesce.dev/ready gates set True by someone else on a held pod, reset to False",
            m.gate_resets.clone(),
        );
        registry.register(
            "webhook_requests",
            "Admission webhook requests by result",
            m.webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Admission webhook latency",
            m.webhook_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        registry.register(
            "pod_watch_namespaces",
            "Namespaces whose Deployment pods the leader watches (those with a RolloutPolicy)",
            m.pod_watch_namespaces.clone(),
        );
        registry.register(
            "watch_events",
            "Objects delivered by each of the leader's watches (policies, deployments, replicasets, pods, services)",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors of each of the leader's watches (retried with backoff)",
            m.watch_errors.clone(),
        );
        // Every result from 0, so that `increase()` sees the first error.
        for result in WEBHOOK_RESULTS {
            let _ = m.webhook_requests.get_or_create(&Outcome { result });
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Times one reconcile; the duration is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.reconcile_duration,
        }
    }

    /// Records a reconcile's result.
    pub fn reconciled(&self, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&Outcome { result }).inc();
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorKind { error })
                .inc();
        }
    }

    /// Sets the gauges of a policy (`None`: the policy is gone, its series are removed).
    pub fn set_policy(&self, namespace: &str, policy: &str, gauges: Option<&PolicyGauges>) {
        let labels = Policy::new(namespace, policy);
        let drain = |result| PolicyDrain {
            policy: labels.clone(),
            result,
        };
        let replicas = |state| PolicyReplicas {
            policy: labels.clone(),
            state,
        };
        self.set_phase(namespace, policy, gauges.and_then(|g| g.phase));
        let Some(g) = gauges else {
            for result in DRAIN_RESULTS {
                self.drains.remove(&drain(result));
                self.drain_duration.remove(&drain(result));
            }
            for state in REPLICA_STATES {
                self.policy_replicas.remove(&replicas(state));
            }
            self.policy_steps.remove(&labels);
            self.policy_steps_completed.remove(&labels);
            self.pods_without_sidecar.remove(&labels);
            self.last_progress.remove(&labels);
            return;
        };
        // Both drain results exist from the first reconcile at 0, so that `increase()` sees
        // the first forced drain of a policy (a series born at 1 shows no increase).
        for result in DRAIN_RESULTS {
            let _ = self.drains.get_or_create(&drain(result));
            let _ = self.drain_duration.get_or_create(&drain(result));
        }
        for (state, n) in REPLICA_STATES.into_iter().zip(g.replicas) {
            self.policy_replicas.get_or_create(&replicas(state)).set(n);
        }
        self.policy_steps.get_or_create(&labels).set(g.steps);
        self.policy_steps_completed
            .get_or_create(&labels)
            .set(g.steps_completed);
        self.pods_without_sidecar
            .get_or_create(&labels)
            .set(g.pods_without_sidecar);
        match g.last_progress {
            Some(t) => {
                self.last_progress.get_or_create(&labels).set(t);
            }
            None => {
                self.last_progress.remove(&labels);
            }
        }
    }

    /// Counts one drain a sidecar reported, with its duration when it reported one.
    pub fn drained(&self, namespace: &str, policy: &str, forced: bool, seconds: Option<f64>) {
        let labels = PolicyDrain {
            policy: Policy::new(namespace, policy),
            result: DRAIN_RESULTS[usize::from(forced)],
        };
        self.drains.get_or_create(&labels).inc();
        if let Some(s) = seconds {
            self.drain_duration.get_or_create(&labels).observe(s);
        }
    }

    /// Sets the phase gauge of a policy (`None`: the policy is gone).
    fn set_phase(&self, namespace: &str, policy: &str, phase: Option<Phase>) {
        let key = (namespace.to_owned(), policy.to_owned());
        let mut phases = self.phases.lock().expect("metrics lock");
        for p in PHASES {
            let labels = PolicyPhase {
                policy: Policy::new(namespace, policy),
                phase: p.as_str(),
            };
            if phase == Some(p) {
                self.policy_phase.get_or_create(&labels).set(1);
            } else if phases.contains_key(&key) || phase.is_none() {
                self.policy_phase.remove(&labels);
            }
        }
        match phase {
            Some(p) => {
                phases.insert(key, p);
            }
            None => {
                phases.remove(&key);
            }
        }
    }

    /// Counts one object delivered by the leader's watch `watch`.
    pub fn watch_event(&self, watch: &'static str) {
        self.watch_events.get_or_create(&Watch { watch }).inc();
    }

    /// Counts one error of the leader's watch `watch`.
    pub fn watch_error(&self, watch: &'static str) {
        self.watch_errors.get_or_create(&Watch { watch }).inc();
    }

    /// Counts one webhook request and its latency.
    pub fn webhook(&self, result: &'static str, seconds: f64) {
        self.webhook_requests
            .get_or_create(&Outcome { result })
            .inc();
        self.webhook_duration.observe(seconds);
    }
}

/// Records a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::default();
        m.reconciled(Some("kube"));
        drop(m.reconcile_timer());
        let status = RolloutPolicyStatus {
            phase: Some(Phase::Progressing),
            current_step: Some(1),
            desired_replicas: Some(4),
            updated_replicas: Some(2),
            ..Default::default()
        };
        m.set_policy("ns", "web", Some(&PolicyGauges::new(&status, 3, 1)));
        let completed = RolloutPolicyStatus {
            phase: Some(Phase::Completed),
            ..status
        };
        m.set_policy("ns", "web", Some(&PolicyGauges::new(&completed, 3, 0)));
        m.drained("ns", "web", true, Some(2.5));
        m.drained("ns", "web", false, None);
        m.webhook("injected", 0.002);
        let text = m.encode();
        for name in [
            "quiesce_operator_reconciles_total{result=\"error\"} 1",
            "quiesce_operator_reconcile_errors_total{error=\"kube\"} 1",
            "quiesce_operator_reconcile_duration_seconds_count 1",
            "quiesce_operator_policy_phase{namespace=\"ns\",policy=\"web\",phase=\"Completed\"} 1",
            "quiesce_operator_policy_replicas{namespace=\"ns\",policy=\"web\",state=\"updated\"} 2",
            "quiesce_operator_policy_steps{namespace=\"ns\",policy=\"web\"} 3",
            "quiesce_operator_policy_steps_completed{namespace=\"ns\",policy=\"web\"} 3",
            "quiesce_operator_pods_without_sidecar{namespace=\"ns\",policy=\"web\"} 0",
            "quiesce_operator_drains_total{namespace=\"ns\",policy=\"web\",result=\"completed\"} 1",
            "quiesce_operator_drains_total{namespace=\"ns\",policy=\"web\",result=\"forced\"} 1",
            "quiesce_operator_drain_duration_seconds_bucket{le=\"5.0\",namespace=\"ns\",policy=\"web\",result=\"forced\"} 1",
            "quiesce_operator_webhook_requests_total{result=\"injected\"} 1",
            "quiesce_operator_webhook_requests_total{result=\"error\"} 0",
            "quiesce_operator_webhook_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(!text.contains("phase=\"Progressing\""), "old phase removed");
        assert!(
            text.contains("quiesce_operator_drain_duration_seconds_count{namespace=\"ns\",policy=\"web\",result=\"completed\"} 0"),
            "a drain without a duration is not observed:\n{text}"
        );
    }

    #[test]
    fn a_deleted_policy_leaves_no_series() {
        let m = Metrics::default();
        let status = RolloutPolicyStatus {
            phase: Some(Phase::Progressing),
            ..Default::default()
        };
        m.set_policy("ns", "web", Some(&PolicyGauges::new(&status, 2, 1)));
        m.set_policy("ns", "web", None);
        let text = m.encode();
        assert!(!text.contains("policy=\"web\""), "series left:\n{text}");
    }
}
