//! The rollout walk: when a rollout starts, its steps (admit, pause, promote), waiting for
//! displaced old pods to drain between steps, and its completion.

use super::*;

impl Planner<'_> {
    pub(super) fn rollout(&mut self, t: &TargetView) {
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
    pub(super) fn steady(&mut self, t: &TargetView, update: &str) {
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

    pub(super) fn start(&mut self, stable: &str, update: &str) {
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

    pub(super) fn promote(&mut self, value: &str) {
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

    /// Walks the steps as far as the observed state allows, admitting pods on the way.
    pub(super) fn walk(&mut self, t: &TargetView, desired: i32, update: &str) {
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
    pub(super) fn complete(&mut self, t: &TargetView, desired: i32, update: &str) -> bool {
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

    pub(super) fn advance(&mut self, step: usize, why: &str) {
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
    pub(super) fn displaced_old_pods(
        &self,
        update: &str,
        desired: i32,
        admitted: i32,
    ) -> Option<String> {
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
}
