//! Prometheus metrics of the operator (prefix `quiesce_operator_`), served at `/metrics` on the
//! admin port.
//!
//! | metric | labels |
//! |---|---|
//! | `reconciles_total` | `result` (`ok`, `error`) |
//! | `reconcile_errors_total` | `error` ([`crate::Error::metric_label`]) |
//! | `reconcile_duration_seconds` (histogram) | |
//! | `policy_phase` (gauge, 1 for the current phase) | `namespace`, `policy`, `phase` |
//! | `admissions_total` (readiness gates set `True`) | `namespace`, `policy`, `reason` |
//! | `drains_total` (drains reported by sidecars) | `namespace`, `policy`, `result` |
//! | `invalid_drain_reports_total` (reports whose numbers were not plausible) | `namespace`, `policy` |
//! | `gate_resets_total` (gates someone else opened on a held pod, reset to `False`) | `namespace`, `policy` |
//! | `webhook_requests_total` | `result` (`injected`, `skipped`, `error`) |
//! | `webhook_duration_seconds` (histogram) | |
//! | `leader` (gauge) | |

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use quiesce_api::Phase;

/// Label set of a metric: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<Labels, Counter>,
    /// Failed reconciles by error kind.
    pub reconcile_errors: Family<Labels, Counter>,
    /// Reconcile durations.
    pub reconcile_duration: Histogram,
    /// 1 for each policy's current phase, 0 for the others.
    pub policy_phase: Family<Labels, Gauge>,
    /// Pods admitted (readiness gate set True).
    pub admissions: Family<Labels, Counter>,
    /// Drains reported by the sidecars.
    pub drains: Family<Labels, Counter>,
    /// Drain reports whose numbers were not plausible (counted as drains without them).
    pub invalid_drain_reports: Family<Labels, Counter>,
    /// Gates set `True` by someone else while the operator held the pod, reset to `False`.
    pub gate_resets: Family<Labels, Counter>,
    /// Admission webhook requests by result.
    pub webhook_requests: Family<Labels, Counter>,
    /// Admission webhook latency.
    pub webhook_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    phases: Mutex<std::collections::HashMap<(String, String), Phase>>,
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
            policy_phase: Family::default(),
            admissions: Family::default(),
            drains: Family::default(),
            invalid_drain_reports: Family::default(),
            gate_resets: Family::default(),
            webhook_requests: Family::default(),
            webhook_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            leader: Gauge::default(),
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
            "policy_phase",
            "1 for the current phase of each RolloutPolicy",
            m.policy_phase.clone(),
        );
        registry.register(
            "admissions",
            "Pods whose quiesce.dev/ready gate the operator set True",
            m.admissions.clone(),
        );
        registry.register("drains", "Drains reported by sidecars", m.drains.clone());
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
    pub fn reconciled(&self, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        if let Some(label) = error {
            self.reconcile_errors
                .get_or_create(&vec![("error", label.to_owned())])
                .inc();
        }
    }

    /// Sets the phase gauge of a policy (`None`: the policy is gone).
    pub fn set_phase(&self, namespace: &str, policy: &str, phase: Option<Phase>) {
        let key = (namespace.to_owned(), policy.to_owned());
        let mut phases = self.phases.lock().expect("metrics lock");
        for p in PHASES {
            let labels = vec![
                ("namespace", namespace.to_owned()),
                ("policy", policy.to_owned()),
                ("phase", p.as_str().to_owned()),
            ];
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

    /// Counts one webhook request and its latency.
    pub fn webhook(&self, result: &str, seconds: f64) {
        self.webhook_requests
            .get_or_create(&vec![("result", result.to_owned())])
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
        m.set_phase("ns", "web", Some(Phase::Progressing));
        m.set_phase("ns", "web", Some(Phase::Completed));
        m.webhook("injected", 0.002);
        let text = m.encode();
        for name in [
            "quiesce_operator_reconciles_total{result=\"error\"} 1",
            "quiesce_operator_reconcile_errors_total{error=\"kube\"} 1",
            "quiesce_operator_reconcile_duration_seconds_count 1",
            "quiesce_operator_policy_phase{namespace=\"ns\",policy=\"web\",phase=\"Completed\"} 1",
            "quiesce_operator_webhook_requests_total{result=\"injected\"} 1",
            "quiesce_operator_webhook_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(!text.contains("phase=\"Progressing\""), "old phase removed");
    }
}
