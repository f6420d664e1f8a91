//! Failure detection (progress deadline, restarts) and the failure action: roll back or pause.

use super::*;

impl Planner<'_> {
    /// The rollout failed (or was aborted): roll back or hold.
    pub(super) fn fail(
        &mut self,
        reason: &'static str,
        message: String,
        rollback: bool,
        stable: &str,
    ) {
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
    pub(super) fn failure(&mut self, update: &str) -> Option<(&'static str, String)> {
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
}
