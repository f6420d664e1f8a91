//! The operator's decisions, as a pure function: [`plan`] takes what the shell observed about
//! one RolloutPolicy (its spec and last status, its target Deployment, the target's pods) and
//! the current time, and returns the next status, the actions to apply and when to look again.
//!
//! Nothing here does I/O or reads a clock, so every transition is a plain unit test
//! (`plan/tests.rs`). The rules (see `docs/operator.md`):
//!
//! - Pods outside a rollout (stable revision, scale-ups) are admitted — readiness gate
//!   `quiesce.dev/ready=True` — once their containers are ready.
//! - A rollout starts when the target's newest ReplicaSet has a `pod-template-hash` other than
//!   the stable revision. New-revision pods are admitted step by step: an `admit` step lets the
//!   admitted count grow to its target (count or percent of desired replicas, recomputed from
//!   the current desired count on every call), a `pause` step holds for a duration or until
//!   promoted. A pod is admitted only after its containers have been ready for
//!   `minHealthySeconds`. With `waitBeforeNextStep`, a step's first admission waits until the
//!   Deployment controller has removed the old pods the previous step displaced and each of
//!   them reported Drained or is gone.
//! - `spec.paused`, the promote and abort annotations, the progress deadline and the restart
//!   limit drive the phase; failures run the failure action (Rollback or Pause).
//! - A pod's gate, once `True`, is never turned back to `False` — unless someone else opened
//!   it while the operator held the pod (the app container shares the sidecar's token): such a
//!   gate is reset and reported ([`foreign_opened`]).
//! - Held pods carry `quiesce.dev/ready=False` with a reason and a `lastProbeTime` heartbeat the
//!   sidecar's fail-open path reads: a pod the operator stopped looking at is let in after
//!   `failOpenAfterSeconds`.
//!
//! One file per concern, each an `impl` block of the same planner over the same observation:
//! `view.rs` (the input), `action.rs` (the output), `rollout.rs` (start, steps, pauses,
//! promotion, completion), `admission.rs` (who gets the gate, the counts), `conflict.rs` (which policy governs a
//! Deployment several target), `failure.rs`
//! (progress deadline, restarts, rollback or pause), `report.rs` (drains, injection, grace
//! period, proxy takeover, sidecar health), `status.rs` (conditions, message, phase Events);
//! this file holds the entry point and the order of the passes (`Planner::run`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use quiesce_api::constants::{READY_GATE_CONDITION, annotations, conditions, reasons};
use quiesce_api::{
    DrainMode, DrainStats, FailureAction, Phase, RolloutPolicySpec, RolloutPolicyStatus, StepAction,
};

#[cfg(test)]
mod tests;

mod action;
mod admission;
mod conflict;
mod failure;
mod report;
mod rollout;
mod status;
pub mod status_write;
mod view;

pub use action::{Action, DRAINS_FORCED, GATE_RESET, INVALID_DRAIN_REPORT, Plan};
pub use conflict::{conflict_winner, governing, seniority};
pub use report::{proxy_takeover, sidecar_health};
pub use view::{
    AppPort, ConditionDecision, DrainReport, DrainedView, GateView, Observed, PodView, PolicyView,
    ServicePortView, ServiceView, SidecarView, TargetPort, TargetState, TargetView,
    pods_without_sidecar,
};

/// Computes the next status and actions of one policy at `now`.
pub fn plan(o: &Observed, now: Timestamp) -> Plan {
    let foreign = foreign_opened(o, now);
    if foreign.is_empty() {
        return Planner::new(o, now).run();
    }
    // Plan as if the foreign-opened gates were still held: the pods go in when a step lets
    // them, and are reset otherwise.
    let mut trusted = o.clone();
    for pod in trusted
        .pods
        .iter_mut()
        .filter(|p| foreign.contains(&p.name))
    {
        pod.gate = Some(GateView {
            ready: false,
            reason: String::new(),
            last_probe: None,
        });
    }
    let mut plan = Planner::new(&trusted, now).run();
    report_resets(&mut plan, &foreign);
    plan
}

/// Pods whose gate is `True` although the operator holds them and its heartbeat is younger
/// than `failOpenAfterSeconds` (so the sidecar's fail-open had no reason to open it): someone
/// else — the app, with the pod's shared token — opened it.
pub fn foreign_opened(o: &Observed, now: Timestamp) -> Vec<String> {
    if o.policy.deleting {
        return Vec::new();
    }
    let fail_open = o.policy.spec.readiness.fail_open_after();
    o.pods
        .iter()
        .filter(|p| !p.terminating && gate_ready(p))
        .filter(|p| p.held_since.is_some_and(|t| now < add(t, fail_open)))
        .map(|p| p.name.clone())
        .collect()
}

/// A Warning per foreign-opened gate the plan closes again, and the list for the shell.
fn report_resets(plan: &mut Plan, foreign: &[String]) {
    let reset: Vec<String> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SetGate {
                pod, ready: false, ..
            } if foreign.contains(pod) => Some(pod.clone()),
            _ => None,
        })
        .collect();
    for pod in &reset {
        let note = format!(
            "pod {pod}: readiness gate {READY_GATE_CONDITION} was set True by someone other than \
             the operator while the operator held the pod (the app container shares the \
             sidecar's token); reset to False"
        );
        plan.actions
            .push(Action::warning(GATE_RESET, note).with_action(format!("ResetGate{pod}")));
    }
    plan.gate_resets = reset;
}

/// Why new-revision pods are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Paused,
    Drain,
}

struct Planner<'a> {
    o: &'a Observed,
    spec: &'a RolloutPolicySpec,
    now: Timestamp,
    status: RolloutPolicyStatus,
    actions: Vec<Action>,
    timers: Vec<Timestamp>,
    /// Appended to the status message (a crash-looping sidecar).
    note: Option<String>,
}

impl<'a> Planner<'a> {
    fn new(o: &'a Observed, now: Timestamp) -> Self {
        let mut status = o.policy.status.clone();
        status.observed_generation = o.policy.generation;
        Self {
            o,
            spec: &o.policy.spec,
            now,
            status,
            actions: Vec::new(),
            timers: Vec::new(),
            note: None,
        }
    }

    fn run(mut self) -> Plan {
        let before = self.o.policy.status.phase;
        if self.o.policy.deleting {
            // A policy in Conflict never governed the target's pods: the governing one keeps
            // holding and admitting them.
            if !matches!(self.o.target, TargetState::Conflict { .. }) {
                self.release_all();
            }
            return self.finish(before);
        }
        if let Some(problem) = invalid_spec(self.spec) {
            self.reject(reasons::INVALID_SPEC, problem);
            return self.finish(before);
        }
        let target = match &self.o.target {
            TargetState::Found(t) => t,
            TargetState::NotFound => {
                let msg = format!(
                    "Deployment {} not found in this namespace",
                    self.spec.target_ref.name
                );
                self.reject(reasons::TARGET_NOT_FOUND, msg);
                return self.finish(before);
            }
            TargetState::Conflict { winner } => {
                let msg = format!(
                    "RolloutPolicy {winner} already targets Deployment {} (the oldest policy wins); this policy is ignored until {winner} is deleted",
                    self.spec.target_ref.name
                );
                self.reject(reasons::CONFLICT, msg);
                return self.finish(before);
            }
        };
        self.set(
            conditions::ACCEPTED,
            true,
            reasons::ACCEPTED,
            format!("governs Deployment {}", target.name),
        );
        self.count_drains();
        self.check_injection();
        self.check_grace_period(target);
        self.check_proxy_takeover(target);
        self.check_sidecars();
        self.rollout(target);
        self.finish(before)
    }

    // ----- acceptance -------------------------------------------------------------------

    fn reject(&mut self, reason: &'static str, message: String) {
        let changed = self.set(conditions::ACCEPTED, false, reason, message.clone());
        if changed {
            self.actions.push(Action::warning(reason, message.clone()));
        }
        self.status.message = Some(message);
    }

    // ----- deletion ---------------------------------------------------------------------

    fn release_all(&mut self) {
        // Every gated pod, ready or not: the gate only says quiesce no longer objects; the pod is
        // Ready once its containers are. A pod left out here would wait for fail-open.
        for pod in &self.o.pods {
            if pod.has_gate && !pod.terminating && !gate_ready(pod) {
                self.actions.push(Action::SetGate {
                    pod: pod.name.clone(),
                    ready: true,
                    reason: reasons::POLICY_DELETED,
                    message: format!("RolloutPolicy {} was deleted", self.o.policy.name),
                });
            }
        }
    }
}

/// `s` on one line (whitespace runs collapsed), cut to at most `max` bytes.
fn one_line(s: &str, max: usize) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// A problem with the spec the CRD schema cannot see.
pub fn invalid_spec(spec: &RolloutPolicySpec) -> Option<String> {
    for (i, step) in spec.steps.iter().enumerate() {
        if step.action().is_none() {
            return Some(format!(
                "step {i} must set exactly one of admit (a count >= 1 or a percentage 1%..100%) or pause"
            ));
        }
    }
    if let Some(last) = spec.steps.last()
        && last.action() != Some(StepAction::Admit(quiesce_api::Admit::Percent(100)))
    {
        return Some("the last step must be admit: 100%".to_owned());
    }
    None
}

fn phase_reason(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => reasons::IDLE,
        Phase::Progressing => reasons::ROLLOUT_STARTED,
        Phase::Paused => reasons::PAUSE_STEP,
        Phase::Completed => reasons::ROLLOUT_COMPLETED,
        Phase::Failed => reasons::PAUSED_ON_FAILURE,
        Phase::RolledBack => reasons::ROLLED_BACK,
    }
}

fn gate_ready(p: &PodView) -> bool {
    p.gate.as_ref().is_some_and(|g| g.ready)
}

/// How often the operator refreshes `lastProbeTime` on held pods: a third of the fail-open
/// timeout, so a live operator is never mistaken for an absent one.
pub fn heartbeat_interval(spec: &RolloutPolicySpec) -> Duration {
    (spec.readiness.fail_open_after() / 3).max(Duration::from_secs(1))
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
    Timestamp::from_millisecond(t.as_millisecond().saturating_add(ms)).unwrap_or(Timestamp::MAX)
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(to.as_millisecond() - from.as_millisecond()).unwrap_or(0))
}

fn end_secs(end: Timestamp, now: Timestamp) -> u64 {
    elapsed(now, end).as_secs()
}
