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

pub mod status_write;

/// Everything [`plan`] looks at for one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The policy.
    pub policy: PolicyView,
    /// What became of `spec.targetRef`.
    pub target: TargetState,
    /// Pods of the target (every revision, terminating ones included).
    pub pods: Vec<PodView>,
    /// Drains reported since the last call (the shell counts each pod's report once).
    pub new_drains: Vec<DrainReport>,
    /// Services of the policy's namespace (filled only with `spec.drain.mode: Proxy`).
    pub services: Vec<ServiceView>,
}

/// The policy as the plan needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec`.
    pub spec: RolloutPolicySpec,
    /// `status` as last written (default when absent).
    pub status: RolloutPolicyStatus,
    /// Value of the promote annotation, if set.
    pub promote: Option<String>,
    /// Whether the abort annotation is set.
    pub abort: bool,
    /// Whether the policy is being deleted.
    pub deleting: bool,
}

/// The target of a policy.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetState {
    /// The Deployment exists and this policy governs it.
    Found(TargetView),
    /// No Deployment of that name.
    NotFound,
    /// An older policy already targets the Deployment.
    Conflict {
        /// Name of the policy that governs the Deployment.
        winner: String,
    },
}

/// The target Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    /// Name.
    pub name: String,
    /// `spec.replicas` (desired replicas).
    pub replicas: i32,
    /// `pod-template-hash` of the newest ReplicaSet (the highest `deployment.kubernetes.io/revision`).
    pub update_revision: Option<String>,
    /// `pod-template-hash` of every ReplicaSet of the Deployment.
    pub revisions: Vec<String>,
    /// `spec.template.spec.terminationGracePeriodSeconds` (Kubernetes' default: 30).
    pub termination_grace_period_seconds: i64,
    /// `spec.template.metadata.labels`: what a Service selector must match.
    pub template_labels: BTreeMap<String, String>,
    /// The TCP ports of the template's app containers (`spec.containers[].ports`).
    pub app_ports: Vec<AppPort>,
}

/// A TCP container port of the target's app containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPort {
    /// `name`, if any: only named ports can be taken over by the drain proxy.
    pub name: Option<String>,
    /// `containerPort`.
    pub number: i32,
}

/// A Service, as the proxy-takeover check needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// `spec.selector` (empty: the Service selects no pods by itself).
    pub selector: BTreeMap<String, String>,
    /// The TCP ports (`spec.ports`).
    pub ports: Vec<ServicePortView>,
}

/// One TCP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortView {
    /// `port`.
    pub port: i32,
    /// `targetPort` (absent means the same number as `port`).
    pub target: TargetPort,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A container port number: resolved once for all pods, so it goes straight to the app.
    Number(i32),
    /// A container port name: resolved per pod, so it reaches the sidecar's proxy listener.
    Name(String),
}

/// The `ProxyTakeover` condition: `(status, reason, message)`.
pub type ConditionDecision = (bool, &'static str, String);

/// One pod of the target.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// `pod-template-hash` label.
    pub revision: Option<String>,
    /// Since when the `ContainersReady` condition is `True`; `None` while not ready.
    pub containers_ready_since: Option<Timestamp>,
    /// The readiness-gate condition, if set.
    pub gate: Option<GateView>,
    /// Whether `spec.readinessGates` lists the gate (the webhook injected the pod).
    pub has_gate: bool,
    /// Whether the pod runs the quiesce sidecar.
    pub injected: bool,
    /// The drained condition reported by the sidecar.
    pub drained: Option<DrainedView>,
    /// Highest restart count of the pod's app containers and its quiesce sidecar.
    pub restarts: i32,
    /// The quiesce sidecar's container status, when the pod runs it and the kubelet reported.
    pub sidecar: Option<SidecarView>,
    /// `deletionTimestamp` is set.
    pub terminating: bool,
    /// When the operator last wrote this pod's gate `False` (its last heartbeat), if it has not
    /// opened the gate since: the operator holds the pod. From the shell's memory, so `None`
    /// after an operator restart.
    pub held_since: Option<Timestamp>,
}

/// The status of a pod's quiesce sidecar (`status.initContainerStatuses[quiesce-sidecar]`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SidecarView {
    /// `restartCount`.
    pub restarts: i32,
    /// `state.waiting.reason == CrashLoopBackOff`.
    pub crash_looping: bool,
    /// `lastState.terminated`: its message, else its reason and exit code.
    pub last_termination: Option<String>,
}

/// The pod's `quiesce.dev/ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateView {
    /// `status == "True"`.
    pub ready: bool,
    /// `reason`.
    pub reason: String,
    /// `lastProbeTime`: the operator's heartbeat on held pods.
    pub last_probe: Option<Timestamp>,
}

/// The pod's `quiesce.dev/drained` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainedView {
    /// `status == "True"`: the drain finished (completely or forced).
    pub done: bool,
}

/// One finished drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// The drain timeout expired with work in flight.
    pub forced: bool,
    /// How long it took, when reported.
    pub duration_millis: Option<i64>,
    /// The report was not plausible (unparsable JSON, or a number out of bounds): the drain
    /// counts, its numbers do not.
    pub invalid: bool,
}

/// What [`plan`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status the policy should have.
    pub status: RolloutPolicyStatus,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// When to call [`plan`] again if nothing changes before (a timer is due).
    pub requeue_after: Option<Duration>,
    /// Pods whose gate someone else opened while the operator held them, reset to `False` by
    /// this plan (the shell counts them).
    pub gate_resets: Vec<String>,
}

/// Event reason: a held pod's gate was opened by someone other than the operator, and reset.
pub const GATE_RESET: &str = "GateReset";

/// Event reason: drain reports whose numbers could not be trusted.
pub const INVALID_DRAIN_REPORT: &str = "InvalidDrainReport";

/// Event reason: drains that hit `drain.timeoutSeconds` with connections still open.
pub const DRAINS_FORCED: &str = "DrainsForced";

/// One thing the shell does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the pod's readiness-gate condition.
    SetGate {
        /// Pod name.
        pod: String,
        /// `True` (admitted) or `False` (held).
        ready: bool,
        /// Reason (a [`reasons`] constant).
        reason: &'static str,
        /// Human-readable message.
        message: String,
    },
    /// Restore the template of the ReplicaSet with this `pod-template-hash` on the target.
    Rollback {
        /// The stable revision.
        revision: String,
    },
    /// Remove an annotation from the policy (a promote/abort command was carried out).
    ClearAnnotation(&'static str),
    /// Publish a Kubernetes Event on the policy.
    Event {
        /// Warning (else Normal).
        warning: bool,
        /// Reason (a [`reasons`] constant).
        reason: &'static str,
        /// Message.
        note: String,
        /// What was done (`AdvanceToStep2abc123`, `StartRolloutabc123`): Events with the same reason
        /// and action are folded into one series by the recorder, so distinct steps and
        /// revisions get distinct actions.
        action: String,
    },
}

impl Action {
    fn event(reason: &'static str, note: impl Into<String>) -> Self {
        Action::Event {
            warning: false,
            reason,
            note: note.into(),
            action: "Reconcile".to_owned(),
        }
    }

    fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Action::Event {
            warning: true,
            reason,
            note: note.into(),
            action: "Reconcile".to_owned(),
        }
    }

    fn with_action(mut self, what: impl Into<String>) -> Self {
        if let Action::Event { action, .. } = &mut self {
            *action = what.into();
        }
        self
    }
}

/// The live pods of `pods` that run without the quiesce sidecar (not drained when they stop).
pub fn pods_without_sidecar(pods: &[PodView]) -> Vec<&str> {
    pods.iter()
        .filter(|p| !p.terminating && !p.injected)
        .map(|p| p.name.as_str())
        .collect()
}

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
            self.release_all();
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

    // ----- reporting --------------------------------------------------------------------

    fn count_drains(&mut self) {
        if self.o.new_drains.is_empty() {
            return;
        }
        let invalid = self.o.new_drains.iter().filter(|d| d.invalid).count();
        if invalid > 0 {
            let note = format!(
                "{invalid} drain report(s) not plausible (unparsable, or a number out of bounds): \
                 counted as drains, their numbers ignored"
            );
            self.actions
                .push(Action::warning(INVALID_DRAIN_REPORT, note));
        }
        let stats = self.status.drains.get_or_insert_with(DrainStats::default);
        for d in &self.o.new_drains {
            if d.forced {
                stats.forced += 1;
            } else {
                stats.completed += 1;
            }
            if let Some(ms) = d.duration_millis {
                stats.last_duration_millis = Some(ms);
                stats.max_duration_millis = Some(stats.max_duration_millis.unwrap_or(0).max(ms));
            }
        }
        // In the policy's Events, between the steps they happened in: a forced drain cut
        // connections, which is what a person reading the rollout's timeline looks for.
        let forced: Vec<&DrainReport> = self.o.new_drains.iter().filter(|d| d.forced).collect();
        if !forced.is_empty() {
            let longest = forced
                .iter()
                .filter(|d| !d.invalid)
                .filter_map(|d| d.duration_millis)
                .max()
                .map(|ms| format!(" after {:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default();
            let note = format!(
                "{} drain(s) forced{longest} at drain.timeoutSeconds {}: connections were still open and were cut (kubectl quiesce drains {} shows where the time went)",
                forced.len(),
                self.spec.drain.timeout_seconds,
                self.o.policy.name
            );
            // One Event per batch: the running total makes each its own series.
            let total = self.status.drains.as_ref().map_or(0, |d| d.forced);
            self.actions.push(
                Action::warning(DRAINS_FORCED, note).with_action(format!("ForceDrain{total}")),
            );
        }
    }

    fn check_injection(&mut self) {
        let live: Vec<&PodView> = self.o.pods.iter().filter(|p| !p.terminating).collect();
        let missing = pods_without_sidecar(&self.o.pods);
        if missing.is_empty() {
            self.set(
                conditions::INJECTED,
                true,
                reasons::ALL_PODS_INJECTED,
                format!("all {} pods run the quiesce sidecar", live.len()),
            );
        } else {
            let msg = format!(
                "{} of {} pods run without the quiesce sidecar and are not drained (created while the webhook was unavailable, or opted out): {}",
                missing.len(),
                live.len(),
                missing.join(", ")
            );
            if self.set(
                conditions::INJECTED,
                false,
                reasons::PODS_NOT_INJECTED,
                msg.clone(),
            ) {
                self.actions
                    .push(Action::warning(reasons::PODS_NOT_INJECTED, msg));
            }
        }
    }

    fn check_grace_period(&mut self, t: &TargetView) {
        let budget = self.spec.drain.budget_seconds();
        let grace = t.termination_grace_period_seconds;
        if self.spec.drain.grace_period_covers(grace, 0) {
            self.set(
                conditions::DRAIN_BUDGET_SUFFICIENT,
                true,
                reasons::GRACE_PERIOD_SUFFICIENT,
                format!(
                    "terminationGracePeriodSeconds {grace} covers the drain budget of {budget}s"
                ),
            );
        } else {
            let msg = format!(
                "terminationGracePeriodSeconds {grace} of Deployment {} is shorter than the drain budget of {budget}s (endpointTimeoutSeconds + quietPeriod + timeoutSeconds): the kubelet may kill pods mid-drain; raise it to at least {budget} plus the app's own shutdown time",
                t.name
            );
            if self.set(
                conditions::DRAIN_BUDGET_SUFFICIENT,
                false,
                reasons::GRACE_PERIOD_TOO_SHORT,
                msg.clone(),
            ) {
                self.actions
                    .push(Action::warning(reasons::GRACE_PERIOD_TOO_SHORT, msg));
            }
        }
    }

    fn check_proxy_takeover(&mut self, t: &TargetView) {
        if self.spec.drain.mode != DrainMode::Proxy {
            self.status
                .conditions
                .retain(|c| c.type_ != conditions::PROXY_TAKEOVER);
            return;
        }
        let (ok, reason, msg) = proxy_takeover(t, &self.o.services);
        if self.set(conditions::PROXY_TAKEOVER, ok, reason, msg.clone()) && !ok {
            self.actions.push(Action::warning(reason, msg));
        }
    }

    fn check_sidecars(&mut self) {
        let (ok, reason, msg) = sidecar_health(&self.o.pods);
        if self.set(conditions::SIDECAR_HEALTHY, ok, reason, msg.clone()) && !ok {
            self.actions.push(Action::warning(reason, msg.clone()));
        }
        if !ok {
            self.note = Some(msg);
        }
    }

    // ----- the rollout ------------------------------------------------------------------

    fn rollout(&mut self, t: &TargetView) {
        let desired = t.replicas.max(0);
        self.status.desired_replicas = Some(desired);
        let Some(update) = t.update_revision.clone() else {
            self.status.phase = Some(Phase::Idle);
            self.status.message = Some(format!("Deployment {} has no ReplicaSet yet", t.name));
            self.admit_outside_rollout(None);
            self.counts(None);
            return;
        };
        let stable = match self.status.stable_revision.clone() {
            Some(s) => s,
            None => {
                // First sight of the target: whatever it runs now is the stable revision.
                self.status.stable_revision = Some(update.clone());
                self.status.update_revision = Some(update.clone());
                self.status.phase = Some(Phase::Idle);
                update.clone()
            }
        };

        // The abort command applies to a rollout in progress only.
        if self.o.policy.abort {
            self.actions
                .push(Action::ClearAnnotation(annotations::ABORT));
        }

        if update == stable {
            self.steady(t, &update);
            return;
        }

        if self.status.update_revision.as_deref() != Some(update.as_str()) {
            self.start(&stable, &update);
        }

        if self.o.policy.abort {
            self.fail(
                reasons::ABORTED,
                "aborted by the quiesce.dev/abort annotation".into(),
                true,
                &stable,
            );
            self.hold_new(&update, Hold::Paused, "the rollout was aborted");
            self.counts(Some(&update));
            return;
        }
        if let Some(value) = self.o.policy.promote.clone() {
            self.actions
                .push(Action::ClearAnnotation(annotations::PROMOTE));
            self.promote(&value);
        }

        let phase = self.status.phase.unwrap_or_default();
        if phase == Phase::RolledBack {
            // The rollback was requested; the Deployment controller has not switched back yet.
            self.hold_new(&update, Hold::Paused, "the rollout was rolled back");
            self.counts(Some(&update));
            return;
        }
        if phase == Phase::Failed {
            self.set_paused(
                true,
                reasons::PAUSED_ON_FAILURE,
                "the rollout failed; promote to continue, abort to roll back",
            );
            self.hold_new(&update, Hold::Paused, "the rollout failed and is paused");
            self.counts(Some(&update));
            return;
        }
        if self.spec.paused {
            self.status.phase = Some(Phase::Paused);
            self.set_paused(true, reasons::PAUSED_BY_SPEC, "spec.paused is true");
            self.status.message = Some(format!(
                "rollout of revision {update} paused by spec.paused at step {}",
                self.step_label()
            ));
            self.hold_new(&update, Hold::Paused, "the rollout is paused (spec.paused)");
            self.counts(Some(&update));
            return;
        }

        if let Some((reason, message)) = self.failure(&update) {
            let rollback = self.spec.failure.action == FailureAction::Rollback;
            self.fail(reason, message, rollback, &stable);
            self.hold_new(&update, Hold::Paused, "the rollout failed");
            self.counts(Some(&update));
            return;
        }

        self.walk(t, desired, &update);
    }

    /// No rollout in progress: the target runs its stable revision.
    fn steady(&mut self, t: &TargetView, update: &str) {
        let phase = self.status.phase.unwrap_or_default();
        if self.status.update_revision.as_deref() != Some(update) {
            // The target went back to the stable revision before the rollout finished.
            let abandoned = self.status.update_revision.clone().unwrap_or_default();
            self.status.update_revision = Some(update.to_owned());
            if matches!(phase, Phase::Progressing | Phase::Paused | Phase::Failed) {
                self.status.phase = Some(Phase::Idle);
                let msg = format!(
                    "Deployment {} went back to the stable revision {update} before revision {abandoned} was rolled out",
                    t.name
                );
                self.set(
                    conditions::PROGRESSING,
                    false,
                    reasons::ROLLOUT_ABANDONED,
                    msg.clone(),
                );
                self.actions
                    .push(Action::event(reasons::ROLLOUT_ABANDONED, msg));
            }
        }
        self.status.current_step = None;
        self.status.current_step_start_time = None;
        let phase = self.status.phase.unwrap_or_default();
        if phase != Phase::RolledBack && phase != Phase::Completed {
            self.status.phase = Some(Phase::Idle);
        }
        if self
            .status
            .condition(conditions::PROGRESSING)
            .is_none_or(|c| c.status == "True")
        {
            self.set(
                conditions::PROGRESSING,
                false,
                reasons::IDLE,
                format!("no rollout in progress; stable revision {update}"),
            );
        }
        self.set_paused(false, reasons::NOT_PAUSED, "admission is not held");
        self.admit_outside_rollout(None);
        let (_, admitted, ready) = self.counts(None);
        let desired = t.replicas.max(0);
        let available = ready >= desired && admitted >= desired;
        self.set(
            conditions::AVAILABLE,
            available,
            if available {
                reasons::IDLE
            } else {
                reasons::WAITING_FOR_STEP
            },
            format!("{ready} of {desired} pods ready on revision {update}"),
        );
        self.status.message = Some(match self.status.phase.unwrap_or_default() {
            Phase::RolledBack => format!(
                "rolled back to revision {update}: {}",
                self.status
                    .condition(conditions::DEGRADED)
                    .map(|c| c.message.clone())
                    .unwrap_or_default()
            ),
            Phase::Completed => {
                format!("rollout complete: {ready}/{desired} pods ready on revision {update}")
            }
            _ => {
                format!("no rollout in progress: {ready}/{desired} pods ready on revision {update}")
            }
        });
    }

    fn start(&mut self, stable: &str, update: &str) {
        self.status.update_revision = Some(update.to_owned());
        self.status.current_step = (!self.spec.steps.is_empty()).then_some(0);
        self.status.current_step_start_time = Some(Time(self.now));
        self.status.last_progress_time = Some(Time(self.now));
        self.status.phase = Some(Phase::Progressing);
        let msg = format!("rolling out revision {update} (stable: {stable})");
        self.set(
            conditions::PROGRESSING,
            true,
            reasons::ROLLOUT_STARTED,
            msg.clone(),
        );
        self.set(
            conditions::DEGRADED,
            false,
            reasons::ROLLOUT_STARTED,
            "no failure".into(),
        );
        self.set(
            conditions::AVAILABLE,
            false,
            reasons::ROLLOUT_STARTED,
            msg.clone(),
        );
        self.actions.push(
            Action::event(reasons::ROLLOUT_STARTED, msg)
                .with_action(format!("StartRollout{update}")),
        );
    }

    fn promote(&mut self, value: &str) {
        let full = value == annotations::PROMOTE_FULL;
        let phase = self.status.phase.unwrap_or_default();
        if phase == Phase::Failed {
            self.status.phase = Some(Phase::Progressing);
            self.set(
                conditions::DEGRADED,
                false,
                reasons::PROMOTED,
                "promoted after a failure".into(),
            );
        }
        let steps = self.spec.steps.len();
        let from = self.current_step();
        let to = if full { steps } else { (from + 1).min(steps) };
        if !self.spec.steps.is_empty() {
            self.status.current_step = Some(i32::try_from(to).unwrap_or(i32::MAX));
        }
        self.status.current_step_start_time = Some(Time(self.now));
        self.status.last_progress_time = Some(Time(self.now));
        let note = if full {
            "promoted: every remaining step skipped".to_owned()
        } else {
            format!("promoted from step {from} to step {to}")
        };
        self.actions.push(Action::event(reasons::PROMOTED, note));
    }

    /// The rollout failed (or was aborted): roll back or hold.
    fn fail(&mut self, reason: &'static str, message: String, rollback: bool, stable: &str) {
        let stable_exists = match &self.o.target {
            TargetState::Found(t) => t.revisions.iter().any(|r| r == stable),
            _ => false,
        };
        let message = if rollback && !stable_exists {
            format!(
                "{message}; cannot roll back: the ReplicaSet of stable revision {stable} is gone"
            )
        } else {
            message
        };
        if rollback && stable_exists {
            self.status.phase = Some(Phase::RolledBack);
            self.actions.push(Action::Rollback {
                revision: stable.to_owned(),
            });
            let msg = format!("{message}; rolling back to revision {stable}");
            self.set(conditions::DEGRADED, true, reason, msg.clone());
            self.set(
                conditions::PROGRESSING,
                false,
                reasons::ROLLED_BACK,
                msg.clone(),
            );
            self.set_paused(false, reasons::NOT_PAUSED, "rolled back");
            self.actions.push(Action::warning(reason, msg.clone()));
            self.status.message = Some(msg);
        } else {
            self.status.phase = Some(Phase::Failed);
            let msg = format!(
                "{message}; admission paused (failure action Pause): promote to continue, abort to roll back"
            );
            self.set(conditions::DEGRADED, true, reason, msg.clone());
            self.set_paused(true, reasons::PAUSED_ON_FAILURE, &msg);
            self.actions.push(Action::warning(reason, msg.clone()));
            self.status.message = Some(msg);
        }
    }

    /// Restarts over the limit or no progress within the deadline, for an unpaused rollout.
    fn failure(&mut self, update: &str) -> Option<(&'static str, String)> {
        let max = self.spec.failure.max_restarts;
        if let Some(pod) = self
            .o
            .pods
            .iter()
            .filter(|p| p.revision.as_deref() == Some(update))
            .find(|p| p.restarts > max)
        {
            let which = match &pod.sidecar {
                Some(s) if s.restarts == pod.restarts => " (its quiesce sidecar)",
                _ => "",
            };
            return Some((
                reasons::TOO_MANY_RESTARTS,
                format!(
                    "pod {} of revision {update} restarted {} times{which} (maxRestarts {max})",
                    pod.name, pod.restarts
                ),
            ));
        }
        if matches!(self.current_action(), Some(StepAction::Pause(_))) {
            return None;
        }
        let last = self
            .status
            .last_progress_time
            .as_ref()
            .map_or(self.now, |t| t.0);
        let deadline = add(last, self.spec.failure.progress_deadline());
        if self.now >= deadline {
            return Some((
                reasons::PROGRESS_DEADLINE_EXCEEDED,
                format!(
                    "no progress for {}s (progressDeadlineSeconds {}): new pods of revision {update} were not admitted or their containers did not get ready",
                    elapsed(last, self.now).as_secs(),
                    self.spec.failure.progress_deadline_seconds
                ),
            ));
        }
        self.timers.push(deadline);
        None
    }

    /// Walks the steps as far as the observed state allows, admitting pods on the way.
    fn walk(&mut self, t: &TargetView, desired: i32, update: &str) {
        let steps = self.spec.steps.len();
        loop {
            let step = self.current_step();
            let admitted = self.admitted_new(update);
            if self.complete(t, desired, update) {
                return;
            }
            if steps == 0 || step >= steps {
                self.status.phase = Some(Phase::Progressing);
                self.set_paused(false, reasons::NOT_PAUSED, "admission is not held");
                self.admit_new_final(update, desired, admitted);
                let (updated, admitted, _) = self.counts(Some(update));
                self.status.message = Some(format!(
                    "rolling out revision {update}: {admitted} of {desired} new pods admitted ({updated} created), admitting every healthy pod"
                ));
                return;
            }
            match self.current_action() {
                Some(StepAction::Pause(duration)) => {
                    let start = self.step_start();
                    if let Some(d) = duration {
                        let end = add(start, d);
                        if self.now >= end {
                            self.advance(step, "pause over");
                            continue;
                        }
                        self.timers.push(end);
                    }
                    self.status.phase = Some(Phase::Paused);
                    let why = match duration {
                        Some(d) => format!(
                            "pause step {step}: {}s left",
                            (end_secs(add(start, d), self.now)).max(1)
                        ),
                        None => format!(
                            "pause step {step}: waiting for promotion (kubectl annotate rolloutpolicy {} {}=step)",
                            self.o.policy.name,
                            annotations::PROMOTE
                        ),
                    };
                    self.set_paused(true, reasons::PAUSE_STEP, &why);
                    self.hold_new(update, Hold::Paused, &why);
                    let (_, admitted, _) = self.counts(Some(update));
                    self.status.message = Some(format!(
                        "rolling out revision {update}: {admitted} of {desired} new pods admitted; {why}"
                    ));
                    return;
                }
                Some(StepAction::Admit(_)) => {
                    let target = self.spec.admitted_at_step(step, desired);
                    if admitted >= target {
                        self.advance(step, &format!("{admitted} of {desired} new pods admitted"));
                        continue;
                    }
                    self.status.phase = Some(Phase::Progressing);
                    self.set_paused(false, reasons::NOT_PAUSED, "admission is not held");
                    let previous = if step == 0 {
                        0
                    } else {
                        self.spec.admitted_at_step(step - 1, desired)
                    };
                    let drain_wait = if step > 0
                        && self.spec.drain.wait_before_next_step
                        && admitted <= previous
                    {
                        self.displaced_old_pods(update, desired, admitted)
                    } else {
                        None
                    };
                    let why = match drain_wait {
                        Some(why) => {
                            self.hold_new(update, Hold::Drain, &why);
                            why
                        }
                        None => {
                            self.admit_new(update, target, admitted, false);
                            format!("admitting up to {target}")
                        }
                    };
                    let (updated, admitted, _) = self.counts(Some(update));
                    self.status.message = Some(format!(
                        "rolling out revision {update}: step {step} of {steps}, {admitted} of {desired} new pods admitted ({updated} created); {why}"
                    ));
                    return;
                }
                None => {
                    // Unreachable: invalid_spec rejected the policy.
                    return;
                }
            }
        }
    }

    /// Whether the rollout is done; if so, records it.
    fn complete(&mut self, t: &TargetView, desired: i32, update: &str) -> bool {
        let live: Vec<&PodView> = self.o.pods.iter().filter(|p| !p.terminating).collect();
        let all_new = live.iter().all(|p| p.revision.as_deref() == Some(update));
        // Ready containers too: a pre-admitted pod is not in until they are.
        let all_in = live
            .iter()
            .all(|p| (gate_ready(p) || !p.has_gate) && p.containers_ready_since.is_some());
        let steps_done =
            self.spec.steps.is_empty() || self.current_step() + 1 >= self.spec.steps.len();
        let enough = i32::try_from(live.len()).unwrap_or(i32::MAX) >= desired;
        if !(all_new && all_in && steps_done && enough) {
            return false;
        }
        self.status.stable_revision = Some(update.to_owned());
        self.status.phase = Some(Phase::Completed);
        self.status.current_step = None;
        self.status.current_step_start_time = None;
        self.status.last_progress_time = Some(Time(self.now));
        let msg = format!(
            "revision {update} rolled out to {desired} pods of Deployment {}",
            t.name
        );
        self.set(
            conditions::PROGRESSING,
            false,
            reasons::ROLLOUT_COMPLETED,
            msg.clone(),
        );
        self.set(
            conditions::AVAILABLE,
            true,
            reasons::ROLLOUT_COMPLETED,
            msg.clone(),
        );
        self.set_paused(false, reasons::NOT_PAUSED, "admission is not held");
        self.actions.push(
            Action::event(reasons::ROLLOUT_COMPLETED, msg.clone())
                .with_action(format!("CompleteRollout{update}")),
        );
        self.counts(Some(update));
        self.status.message = Some(format!("rollout complete: {msg}"));
        true
    }

    fn advance(&mut self, step: usize, why: &str) {
        let next = step + 1;
        self.status.current_step = Some(i32::try_from(next).unwrap_or(i32::MAX));
        self.status.current_step_start_time = Some(Time(self.now));
        self.status.last_progress_time = Some(Time(self.now));
        let revision = self.status.update_revision.clone().unwrap_or_default();
        let note = format!("revision {revision}: step {step} done ({why}); now at step {next}");
        self.set(
            conditions::PROGRESSING,
            true,
            reasons::STEP_ADVANCED,
            note.clone(),
        );
        self.actions.push(
            Action::event(reasons::STEP_ADVANCED, note)
                .with_action(format!("AdvanceToStep{next}{revision}")),
        );
    }

    /// With `waitBeforeNextStep`: why the next step must wait for the old pods the previous
    /// step displaced — the Deployment controller has not removed them yet, or they have not
    /// reported Drained.
    fn displaced_old_pods(&self, update: &str, desired: i32, admitted: i32) -> Option<String> {
        let old = || {
            self.o
                .pods
                .iter()
                .filter(move |p| p.revision.as_deref() != Some(update))
        };
        let live_old = i32::try_from(old().filter(|p| !p.terminating).count()).unwrap_or(0);
        let expected = (desired - admitted).max(0);
        if admitted > 0 && live_old > expected {
            return Some(format!(
                "waiting for the Deployment controller to remove old pods ({live_old} left, {expected} expected)"
            ));
        }
        let draining: Vec<&str> = old()
            .filter(|p| p.terminating && p.injected && !p.drained.is_some_and(|d| d.done))
            .map(|p| p.name.as_str())
            .collect();
        (!draining.is_empty())
            .then(|| format!("waiting for old pods to drain: {}", draining.join(", ")))
    }

    // ----- pods -------------------------------------------------------------------------

    /// Pods not of `update` (or every pod without a rollout): admitted once containers are ready.
    fn admit_outside_rollout(&mut self, update: Option<&str>) {
        let mut actions = Vec::new();
        for pod in &self.o.pods {
            if !pod.has_gate || pod.terminating || gate_ready(pod) {
                continue;
            }
            if update.is_some() && pod.revision.as_deref() == update {
                continue;
            }
            if pod.containers_ready_since.is_some() {
                actions.push(Action::SetGate {
                    pod: pod.name.clone(),
                    ready: true,
                    reason: reasons::STABLE_POD,
                    message: match update {
                        Some(_) => "pod of an older revision".to_owned(),
                        None => "no rollout in progress".to_owned(),
                    },
                });
            }
        }
        self.actions.extend(actions);
    }

    /// The last stage (no steps left): every new pod goes in once healthy. With
    /// `minHealthySeconds: 0` nothing is left to wait for but the pod's containers, which the
    /// kubelet already requires for `Ready`: the gate opens at once ("pre-admitted"), so the pod
    /// turns Ready the moment its containers do. Opening it after them costs a kubelet status
    /// round (the kubelet recomputes `Ready` on its next probe result — measured 2 s a pod
    /// with a 2 s probe period, paid once per batch of a rollout).
    fn admit_new_final(&mut self, update: &str, desired: i32, admitted: i32) {
        let pre_admit = self.spec.readiness.min_healthy().is_zero();
        self.record_ready_progress(update);
        self.admit_new(update, desired, admitted, pre_admit);
    }

    /// A pre-admitted pod makes progress when its containers turn ready, not when its gate
    /// opened: the progress deadline must still catch new pods that never get ready.
    fn record_ready_progress(&mut self, update: &str) {
        let newest_ready = self
            .o
            .pods
            .iter()
            .filter(|p| !p.terminating && p.revision.as_deref() == Some(update) && gate_ready(p))
            .filter_map(|p| p.containers_ready_since)
            .max();
        let last = self.status.last_progress_time.as_ref().map(|t| t.0);
        if let Some(ready) = newest_ready
            && last.is_none_or(|last| ready > last)
        {
            self.status.last_progress_time = Some(Time(ready.min(self.now)));
        }
    }

    /// Admits healthy new pods until `target` are admitted; holds the others. With `pre_admit`,
    /// pods whose containers are not ready yet are admitted too (see [`Self::admit_new_final`]).
    fn admit_new(&mut self, update: &str, target: i32, mut admitted: i32, pre_admit: bool) {
        self.admit_outside_rollout(Some(update));
        let min_healthy = self.spec.readiness.min_healthy();
        let mut candidates: Vec<&PodView> = self
            .o
            .pods
            .iter()
            .filter(|p| {
                p.has_gate
                    && !p.terminating
                    && p.revision.as_deref() == Some(update)
                    && !gate_ready(p)
            })
            .collect();
        // Oldest-ready first: the pods that waited longest go in first.
        candidates.sort_by(|a, b| {
            (
                a.containers_ready_since.is_none(),
                a.containers_ready_since,
                &a.name,
            )
                .cmp(&(
                    b.containers_ready_since.is_none(),
                    b.containers_ready_since,
                    &b.name,
                ))
        });
        let mut progressed = false;
        for pod in candidates {
            let (reason, message) = match pod.containers_ready_since {
                None if pre_admit && admitted < target => {
                    admitted += 1;
                    self.actions.push(Action::SetGate {
                        pod: pod.name.clone(),
                        ready: true,
                        reason: reasons::ADMITTED,
                        message: "admitted before its containers are ready (last step, minHealthySeconds 0): Ready follows its containers".to_owned(),
                    });
                    continue;
                }
                None => (
                    reasons::CONTAINERS_NOT_READY,
                    "containers not ready".to_owned(),
                ),
                Some(since) => {
                    let healthy_at = add(since, min_healthy);
                    if self.now < healthy_at {
                        self.timers.push(healthy_at);
                        (
                            reasons::WAITING_FOR_MIN_HEALTHY,
                            format!(
                                "containers ready for less than minHealthySeconds {}",
                                self.spec.readiness.min_healthy_seconds
                            ),
                        )
                    } else if admitted < target {
                        admitted += 1;
                        progressed = true;
                        self.actions.push(Action::SetGate {
                            pod: pod.name.clone(),
                            ready: true,
                            reason: reasons::ADMITTED,
                            message: format!(
                                "admitted at step {} ({admitted} of {target})",
                                self.step_label()
                            ),
                        });
                        continue;
                    } else {
                        (
                            reasons::WAITING_FOR_STEP,
                            format!(
                                "step {} admits {target} new pods, all admitted",
                                self.step_label()
                            ),
                        )
                    }
                }
            };
            self.hold_pod(pod, reason, message);
        }
        if progressed {
            self.status.last_progress_time = Some(Time(self.now));
        }
    }

    /// Holds every not-yet-admitted new pod; still admits pods of other revisions.
    fn hold_new(&mut self, update: &str, hold: Hold, why: &str) {
        self.admit_outside_rollout(Some(update));
        let reason = match hold {
            Hold::Paused => reasons::PAUSED,
            Hold::Drain => reasons::WAITING_FOR_DRAIN,
        };
        let pods: Vec<&PodView> = self
            .o
            .pods
            .iter()
            .filter(|p| {
                p.has_gate
                    && !p.terminating
                    && p.revision.as_deref() == Some(update)
                    && !gate_ready(p)
            })
            .collect();
        for pod in pods {
            self.hold_pod(pod, reason, why.to_owned());
        }
    }

    /// Writes `False` with `reason` unless already there with a fresh heartbeat.
    fn hold_pod(&mut self, pod: &PodView, reason: &'static str, message: String) {
        let heartbeat = heartbeat_interval(self.spec);
        let fresh = pod.gate.as_ref().is_some_and(|g| {
            !g.ready
                && g.reason == reason
                && g.last_probe.is_some_and(|t| self.now < add(t, heartbeat))
        });
        if fresh {
            let last = pod
                .gate
                .as_ref()
                .and_then(|g| g.last_probe)
                .unwrap_or(self.now);
            self.timers.push(add(last, heartbeat));
            return;
        }
        self.timers.push(add(self.now, heartbeat));
        self.actions.push(Action::SetGate {
            pod: pod.name.clone(),
            ready: false,
            reason,
            message,
        });
    }

    /// New-revision pods whose gate is already `True`.
    fn admitted_new(&self, update: &str) -> i32 {
        let n = self
            .o
            .pods
            .iter()
            .filter(|p| !p.terminating && p.revision.as_deref() == Some(update))
            .filter(|p| gate_ready(p) || !p.has_gate && p.containers_ready_since.is_some())
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    /// Fills the replica counts (including this plan's admissions); returns
    /// (updated, admitted, ready).
    fn counts(&mut self, update: Option<&str>) -> (i32, i32, i32) {
        let admitted_now: Vec<&str> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::SetGate {
                    pod, ready: true, ..
                } => Some(pod.as_str()),
                _ => None,
            })
            .collect();
        let live = || self.o.pods.iter().filter(|p| !p.terminating);
        let is_in =
            |p: &PodView| gate_ready(p) || !p.has_gate || admitted_now.contains(&p.name.as_str());
        let revision = update.or(self.status.update_revision.as_deref());
        let updated = live().filter(|p| p.revision.as_deref() == revision).count();
        let admitted = live()
            .filter(|p| p.revision.as_deref() == revision && is_in(p))
            .count();
        let ready = live()
            .filter(|p| p.containers_ready_since.is_some() && is_in(p))
            .count();
        let c = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        self.status.updated_replicas = Some(c(updated));
        self.status.admitted_replicas = Some(c(admitted));
        self.status.ready_replicas = Some(c(ready));
        (c(updated), c(admitted), c(ready))
    }

    // ----- helpers ----------------------------------------------------------------------

    fn current_step(&self) -> usize {
        self.status
            .current_step
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(0)
    }

    fn current_action(&self) -> Option<StepAction> {
        self.spec
            .steps
            .get(self.current_step())
            .and_then(|s| s.action())
    }

    fn step_label(&self) -> String {
        if self.spec.steps.is_empty() {
            "-".to_owned()
        } else {
            self.current_step().to_string()
        }
    }

    fn step_start(&self) -> Timestamp {
        self.status
            .current_step_start_time
            .as_ref()
            .map_or(self.now, |t| t.0)
    }

    fn set_paused(&mut self, paused: bool, reason: &'static str, message: &str) {
        self.set(conditions::PAUSED, paused, reason, message.to_owned());
    }

    /// Sets a condition (keeping `lastTransitionTime` unless the status changes); returns
    /// whether the status flipped or the condition is new.
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) -> bool {
        let status_str = if status { "True" } else { "False" };
        let flipped = self
            .status
            .condition(type_)
            .is_none_or(|c| c.status != status_str);
        self.status.set_condition(Condition {
            type_: type_.to_owned(),
            status: status_str.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: self.o.policy.generation,
            last_transition_time: Time(self.now),
        });
        flipped
    }

    fn finish(mut self, before: Option<Phase>) -> Plan {
        // The note goes at the end of the message, replacing the one of the last pass (a path
        // that keeps the previous message must not stack them).
        if let Some(message) = self.status.message.as_mut() {
            if let Some(at) = message.find(NOTE_MARKER) {
                message.truncate(at);
            }
            if let Some(note) = &self.note {
                message.push_str(NOTE_MARKER);
                message.push_str(note);
            }
        }
        let after = self.status.phase;
        let reason_taken = |reason: &str| {
            self.actions
                .iter()
                .any(|a| matches!(a, Action::Event { reason: r, .. } if *r == reason))
        };
        if after != before
            && let Some(phase) = after
            && !reason_taken(phase_reason(phase))
        {
            let note = format!(
                "phase {} -> {phase}: {}",
                before.map_or("none", Phase::as_str),
                self.status.message.clone().unwrap_or_default()
            );
            let reason = match phase {
                Phase::Paused if self.spec.paused => reasons::PAUSED_BY_SPEC,
                _ => phase_reason(phase),
            };
            let revision = self.status.update_revision.clone().unwrap_or_default();
            self.actions.push(Action::Event {
                warning: matches!(phase, Phase::Failed | Phase::RolledBack),
                reason,
                note,
                action: format!("Phase{phase}{revision}"),
            });
        }
        let requeue_after = self
            .timers
            .iter()
            .filter(|t| **t > self.now)
            .min()
            .map(|t| elapsed(self.now, *t));
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after,
            gate_resets: Vec::new(),
        }
    }
}

/// Whether the drain proxy sees the Services' traffic to the target's pods (`drain.mode:
/// Proxy`). The webhook renames the app containers' *named* TCP ports and gives their names to
/// the sidecar's proxy listeners, so a Service whose `targetPort` is a name reaches the proxy
/// (the EndpointSlice controller resolves names per pod), while a numeric `targetPort` goes
/// straight to the app. Services whose selector does not match the pod template's labels, and
/// Services without a selector, are not about these pods and are ignored.
pub fn proxy_takeover(t: &TargetView, services: &[ServiceView]) -> ConditionDecision {
    let named: Vec<(&str, i32)> = t
        .app_ports
        .iter()
        .filter_map(|p| Some((p.name.as_deref().filter(|n| !n.is_empty())?, p.number)))
        .collect();
    let mut selecting: Vec<&ServiceView> = services
        .iter()
        .filter(|s| {
            !s.selector.is_empty()
                && s.selector
                    .iter()
                    .all(|(k, v)| t.template_labels.get(k) == Some(v))
        })
        .collect();
    selecting.sort_by(|a, b| a.name.cmp(&b.name));
    let names = || {
        selecting
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if named.is_empty() {
        let services = if selecting.is_empty() {
            String::new()
        } else {
            format!(" (Services: {})", names())
        };
        return (
            false,
            reasons::NO_NAMED_PORT,
            format!(
                "Deployment {} declares no named container port, so the drain proxy takes over nothing and its pods drain in Observe mode: name the app's port (containers[].ports[].name, e.g. http) and set targetPort to that name in its Services{services}",
                t.name
            ),
        );
    }
    let mut fixes = Vec::new();
    for s in &selecting {
        for p in &s.ports {
            let TargetPort::Number(number) = p.target else {
                continue;
            };
            let fix = match named.iter().find(|(_, n)| *n == number) {
                Some((name, _)) => {
                    format!(
                        "set targetPort: {name} instead of {number} in Service {}",
                        s.name
                    )
                }
                None => format!(
                    "name container port {number} (containers[].ports[].name) and set targetPort to that name instead of {number} in Service {}",
                    s.name
                ),
            };
            fixes.push(format!(
                "Service {} port {} targets port {number} by number, so its traffic bypasses the drain proxy (drained as in Observe mode): {fix}",
                s.name, p.port
            ));
        }
    }
    if !fixes.is_empty() {
        return (false, reasons::NUMERIC_TARGET_PORT, fixes.join("; "));
    }
    let msg = if selecting.is_empty() {
        format!(
            "no Service selects the pods of Deployment {}; the proxy serves named ports {}",
            t.name,
            named.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )
    } else {
        format!(
            "every Service selecting the pods targets a named port the drain proxy serves: {}",
            names()
        )
    };
    (true, reasons::ALL_SERVICES_NAMED, msg)
}

/// Separates the status message from the note about crash-looping sidecars.
const NOTE_MARKER: &str = "; SidecarHealthy=False: ";

/// Longest termination message quoted per pod.
const MAX_TERMINATION_MESSAGE: usize = 200;

/// Pods named in `SidecarHealthy=False`; the rest are counted.
const MAX_PODS_NAMED: usize = 3;

/// The `SidecarHealthy` condition: `False` while the quiesce sidecar of any pod has restarted
/// or is in `CrashLoopBackOff`, naming the pods (crash-looping first, then most restarts) with
/// the sidecar's last termination.
pub fn sidecar_health(pods: &[PodView]) -> ConditionDecision {
    let with_sidecar = pods.iter().filter(|p| p.sidecar.is_some()).count();
    let mut bad: Vec<(&PodView, &SidecarView)> = pods
        .iter()
        .filter_map(|p| Some((p, p.sidecar.as_ref()?)))
        .filter(|(_, s)| s.restarts > 0 || s.crash_looping)
        .collect();
    if bad.is_empty() {
        return (
            true,
            reasons::SIDECAR_RUNNING,
            format!("the quiesce sidecar runs without restarts in all {with_sidecar} pods"),
        );
    }
    bad.sort_by(|(a, sa), (b, sb)| {
        (!sa.crash_looping, -sa.restarts, &a.name).cmp(&(!sb.crash_looping, -sb.restarts, &b.name))
    });
    let described: Vec<String> = bad
        .iter()
        .take(MAX_PODS_NAMED)
        .map(|(p, s)| {
            let mut d = format!(
                "pod {} restarted it {} time{}",
                p.name,
                s.restarts,
                if s.restarts == 1 { "" } else { "s" }
            );
            if s.crash_looping {
                d.push_str(" and is in CrashLoopBackOff");
            }
            if let Some(t) = &s.last_termination {
                d.push_str(&format!(
                    " (last termination: {})",
                    one_line(t, MAX_TERMINATION_MESSAGE)
                ));
            }
            d
        })
        .collect();
    let more = match bad.len().saturating_sub(MAX_PODS_NAMED) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    (
        false,
        reasons::SIDECAR_CRASH_LOOPING,
        format!(
            "the quiesce sidecar restarted in {} of {with_sidecar} pods: {}{more}; see kubectl logs POD -c quiesce-sidecar --previous",
            bad.len(),
            described.join("; ")
        ),
    )
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
