//! What `kubectl quiesce get` shows, built from the objects as they are: pure, so every line a
//! person reads is unit-tested from fixtures. Serialized as is for `-o json|yaml`.

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use quiesce_api::constants::{
    DRAINED_CONDITION, POD_TEMPLATE_HASH_LABEL, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME,
    conditions,
};
use quiesce_api::{DrainReport, RolloutPolicy};
use quiesce_operator::controller::condition;
use serde::Serialize;

/// One rollout: the policy, its step, its pods and its last Events.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
    /// The Deployment it paces.
    pub target: String,
    /// Phase (`Idle` before the first report).
    pub phase: String,
    /// Steps done of `spec.steps` (`1/3`: at the second step), `-` without steps or rollout.
    pub step: String,
    /// What the step does, e.g. `admit 50%`, `pause 60s`, `pause until promoted`.
    pub step_action: Option<String>,
    /// Desired, updated, admitted and ready pods.
    pub desired: i32,
    /// Pods of the update revision.
    pub updated: i32,
    /// Of those, behind an open gate.
    pub admitted: i32,
    /// Ready pods of any revision.
    pub ready: i32,
    /// Drains completed and forced, the longest in seconds.
    pub drains_completed: i64,
    /// Drains that hit a bound.
    pub drains_forced: i64,
    /// Longest drain, seconds.
    pub longest_drain_seconds: Option<f64>,
    /// Revision being rolled out and the stable one.
    pub update_revision: Option<String>,
    /// The revision fully rolled out before.
    pub stable_revision: Option<String>,
    /// `spec.paused`.
    pub paused_by_spec: bool,
    /// The status message.
    pub message: Option<String>,
    /// Conditions that are not as they should be (type, reason, message).
    pub problems: Vec<String>,
    /// The target's pods, new revision first.
    pub pods: Vec<PodRow>,
    /// The policy's last Events, oldest first.
    pub events: Vec<EventRow>,
}

/// One pod of the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRow {
    /// Pod name.
    pub name: String,
    /// `pod-template-hash`.
    pub revision: String,
    /// `new`, `stable` or `old` relative to the policy's revisions.
    pub role: String,
    /// `Ready` condition.
    pub ready: bool,
    /// The readiness gate: `open`, `held (reason)`, `-` without gate.
    pub gate: String,
    /// Runs the quiesce sidecar.
    pub injected: bool,
    /// `Terminating` set.
    pub terminating: bool,
    /// The drain as the sidecar reports it.
    pub drain: Option<DrainRow>,
    /// Restarts of its containers.
    pub restarts: i32,
}

/// A pod's drain.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRow {
    /// `draining` or `drained`.
    pub phase: String,
    /// Seconds, once drained.
    pub seconds: Option<f64>,
    /// A bound was hit.
    pub forced: bool,
    /// Where the time went, once drained (the report's summary).
    pub summary: Option<String>,
}

/// One Event of the policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// When it last happened.
    pub time: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// How many times.
    pub count: i32,
}

/// Condition types that are a problem unless `True` (`Degraded` is one when `True`).
const PROBLEM_UNLESS_TRUE: [&str; 5] = [
    conditions::ACCEPTED,
    conditions::INJECTED,
    conditions::DRAIN_BUDGET_SUFFICIENT,
    conditions::SIDECAR_HEALTHY,
    conditions::PROXY_TAKEOVER,
];

/// The view of `policy` with `pods` (the target's) and `events` (the policy's).
pub fn rollout(policy: &RolloutPolicy, pods: &[Pod], events: &[Event]) -> RolloutView {
    let status = policy.status.clone().unwrap_or_default();
    let steps = &policy.spec.steps;
    let current = status.current_step.and_then(|i| usize::try_from(i).ok());
    let phase = status.phase.unwrap_or_default();
    // Steps done of all, as `kubectl argo rollouts` counts; the operator's messages name a
    // step by the same index ("pause step 1").
    let step = match status.steps_completed(steps.len()) {
        Some(done) => format!("{done}/{}", steps.len()),
        None => "-".to_string(),
    };
    let step_action = current
        .and_then(|i| steps.get(i))
        .map(|s| match (&s.admit, &s.pause) {
            (Some(admit), _) => format!("admit {}", int_or_string(admit)),
            (None, Some(p)) => match p.duration_seconds {
                Some(d) => format!("pause {d}s"),
                None => "pause until promoted".to_string(),
            },
            (None, None) => "-".to_string(),
        });
    let problems = status
        .conditions
        .iter()
        .filter(|c| match c.type_.as_str() {
            conditions::DEGRADED => c.status == "True",
            t if PROBLEM_UNLESS_TRUE.contains(&t) => c.status != "True",
            // Progressing, Paused, Available: the phase tells that story.
            _ => false,
        })
        .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect();
    let update = status.update_revision.clone();
    let stable = status.stable_revision.clone();
    let mut rows: Vec<PodRow> = pods
        .iter()
        .map(|p| pod_row(p, update.as_deref(), stable.as_deref()))
        .collect();
    let order = |r: &PodRow| match r.role.as_str() {
        "new" => 0,
        "stable" => 1,
        _ => 2,
    };
    rows.sort_by(|a, b| order(a).cmp(&order(b)).then(a.name.cmp(&b.name)));
    let mut events: Vec<EventRow> = events.iter().map(event_row).collect();
    events.sort_by_key(|e| e.time);
    let drains = status.drains.clone().unwrap_or_default();
    RolloutView {
        namespace: policy.namespace().unwrap_or_default(),
        name: policy.name_any(),
        target: policy.spec.target_ref.name.clone(),
        phase: phase.as_str().to_string(),
        step,
        step_action,
        desired: status.desired_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        admitted: status.admitted_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        drains_completed: drains.completed,
        drains_forced: drains.forced,
        longest_drain_seconds: drains.max_duration_millis.map(|ms| ms as f64 / 1000.0),
        update_revision: update,
        stable_revision: stable,
        paused_by_spec: policy.spec.paused,
        message: status.message,
        problems,
        pods: rows,
        events,
    }
}

fn int_or_string(v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> String {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// One pod as a row.
pub fn pod_row(pod: &Pod, update: Option<&str>, stable: Option<&str>) -> PodRow {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref());
    let revision = pod
        .labels()
        .get(POD_TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default();
    let role = if Some(revision.as_str()) == update {
        "new"
    } else if Some(revision.as_str()) == stable {
        "stable"
    } else {
        "old"
    };
    let spec = pod.spec.as_ref();
    let has_gate = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READY_GATE_CONDITION));
    let gate = match (has_gate, condition(conditions, READY_GATE_CONDITION)) {
        (false, _) => "-".to_string(),
        (true, Some(c)) if c.status == "True" => "open".to_string(),
        (true, Some(c)) => format!("held ({})", c.reason.as_deref().unwrap_or("-")),
        (true, None) => "held".to_string(),
    };
    let injected = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_CONTAINER_NAME)
    });
    let drain = condition(conditions, DRAINED_CONDITION).map(|c| {
        let report = c
            .message
            .as_deref()
            .and_then(DrainReport::from_condition_message);
        match (c.status.as_str(), report) {
            ("True", Some(r)) => DrainRow {
                phase: "drained".into(),
                seconds: Some(r.duration_ms as f64 / 1000.0),
                forced: r.forced,
                summary: Some(r.summary()),
            },
            (status, _) => DrainRow {
                phase: if status == "True" {
                    "drained"
                } else {
                    "draining"
                }
                .into(),
                seconds: None,
                forced: c.reason.as_deref()
                    == Some(quiesce_api::constants::reasons::DRAIN_TIMED_OUT),
                summary: c.message.clone(),
            },
        }
    });
    let statuses = pod.status.as_ref();
    let restarts = statuses
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    PodRow {
        name: pod.name_any(),
        revision,
        role: role.into(),
        ready: condition(conditions, "Ready").is_some_and(|c| c.status == "True"),
        gate,
        injected,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        drain,
        restarts,
    }
}

fn event_row(e: &Event) -> EventRow {
    let time = e
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
    EventRow {
        time,
        kind: e.type_.clone().unwrap_or_else(|| "Normal".into()),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count: e.count.unwrap_or(1),
    }
}

#[cfg(test)]
mod tests;
