//! The status the plan reports: step bookkeeping, conditions and their transition times, the
//! message and the phase-change Event.

use super::report::NOTE_MARKER;
use super::*;

impl Planner<'_> {
    pub(super) fn current_step(&self) -> usize {
        self.status
            .current_step
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(0)
    }

    pub(super) fn current_action(&self) -> Option<StepAction> {
        self.spec
            .steps
            .get(self.current_step())
            .and_then(|s| s.action())
    }

    pub(super) fn step_label(&self) -> String {
        if self.spec.steps.is_empty() {
            "-".to_owned()
        } else {
            self.current_step().to_string()
        }
    }

    pub(super) fn step_start(&self) -> Timestamp {
        self.status
            .current_step_start_time
            .as_ref()
            .map_or(self.now, |t| t.0)
    }

    pub(super) fn set_paused(&mut self, paused: bool, reason: &'static str, message: &str) {
        self.set(conditions::PAUSED, paused, reason, message.to_owned());
    }

    /// Sets a condition (keeping `lastTransitionTime` unless the status changes); returns
    /// whether the status flipped or the condition is new.
    pub(super) fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) -> bool {
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

    pub(super) fn finish(mut self, before: Option<Phase>) -> Plan {
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
