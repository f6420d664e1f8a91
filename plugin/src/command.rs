//! The steering commands (`pause`, `resume`, `promote`, `abort`, `retry`): which change of the
//! policy each makes in the policy's current phase, or why it does not apply. Pure; the
//! operator does the rest (it removes the promote and abort annotations once it acted).

use quiesce_api::Phase;
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::annotations;
use serde_json::{Value, json};

/// A steering command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Hold admission of new pods (`spec.paused: true`).
    Pause,
    /// Let admission continue (`spec.paused: false`).
    Resume,
    /// End the current pause step (`full`: skip every remaining step).
    Promote {
        /// Skip every remaining step.
        full: bool,
    },
    /// Roll back to the stable revision.
    Abort,
    /// Continue a rollout that failed and was paused by `failure.action: Pause`.
    Retry,
}

/// What a command does to the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// JSON merge patch of the policy.
    pub patch: Value,
    /// What was done, for the person who asked.
    pub done: String,
}

/// The change `command` makes to `policy`, or why it does not apply now.
pub fn change(command: Command, policy: &RolloutPolicy) -> Result<Change, String> {
    let name = policy.metadata.name.as_deref().unwrap_or("?");
    let status = policy.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let rolling = matches!(phase, Phase::Progressing | Phase::Paused);
    let update = status.update_revision.as_deref().unwrap_or("?");
    let stable = status.stable_revision.as_deref().unwrap_or("?");
    let annotate = |key: &str, value: &str| json!({"metadata": {"annotations": {key: value}}});
    match command {
        Command::Pause if policy.spec.paused => Err(format!(
            "{name} is already paused (spec.paused is true); `kubectl quiesce resume {name}` lets it go on"
        )),
        Command::Pause => Ok(Change {
            patch: json!({"spec": {"paused": true}}),
            done: format!(
                "{name} paused: no new pod is admitted until `kubectl quiesce resume {name}` (old pods keep serving)"
            ),
        }),
        Command::Resume if !policy.spec.paused => Err(format!(
            "{name} is not paused by spec.paused{}",
            match phase {
                Phase::Paused => "; it waits at a pause step: `kubectl quiesce promote` ends it",
                Phase::Failed =>
                    "; it failed: `kubectl quiesce retry` continues, `abort` rolls back",
                _ => "",
            }
        )),
        Command::Resume => Ok(Change {
            patch: json!({"spec": {"paused": false}}),
            done: format!("{name} resumed"),
        }),
        Command::Promote { .. } if !rolling => Err(format!(
            "{name} has no rollout in progress to promote (phase {}){}",
            phase.as_str(),
            if phase == Phase::Failed {
                "; a failed rollout is continued by `kubectl quiesce retry`"
            } else {
                ""
            }
        )),
        Command::Promote { full } => Ok(Change {
            patch: annotate(
                annotations::PROMOTE,
                if full {
                    annotations::PROMOTE_FULL
                } else {
                    "step"
                },
            ),
            done: if full {
                format!(
                    "{name} promoted fully: every remaining step of revision {update} is skipped"
                )
            } else {
                format!("{name} promoted: the current pause step of revision {update} ends")
            },
        }),
        Command::Abort if !(rolling || phase == Phase::Failed) => Err(format!(
            "{name} has no rollout in progress to abort (phase {})",
            phase.as_str()
        )),
        Command::Abort => Ok(Change {
            patch: annotate(annotations::ABORT, "true"),
            done: format!(
                "{name} aborted: the Deployment goes back to revision {stable}, {update} is no longer admitted"
            ),
        }),
        Command::Retry if phase != Phase::Failed => Err(format!(
            "{name} has no failed rollout to retry (phase {}){}",
            phase.as_str(),
            if phase == Phase::RolledBack {
                "; it was rolled back: apply the new template again (e.g. `kubectl rollout undo`) to start over"
            } else {
                ""
            }
        )),
        Command::Retry => Ok(Change {
            patch: annotate(annotations::PROMOTE, "step"),
            done: format!(
                "{name}: the failed rollout of revision {update} continues from its current step"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiesce_api::RolloutPolicyStatus;

    fn policy(phase: Phase, paused: bool) -> RolloutPolicy {
        let mut p =
            RolloutPolicy::new("web", quiesce_api::RolloutPolicySpec::for_deployment("web"));
        p.metadata.name = Some("web".into());
        p.spec.paused = paused;
        p.status = Some(RolloutPolicyStatus {
            phase: Some(phase),
            update_revision: Some("new1".into()),
            stable_revision: Some("old1".into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn pause_and_resume_flip_spec_paused_once() {
        let c = change(Command::Pause, &policy(Phase::Progressing, false)).unwrap();
        assert_eq!(c.patch, json!({"spec": {"paused": true}}));
        let e = change(Command::Pause, &policy(Phase::Paused, true)).unwrap_err();
        assert!(e.contains("already paused"), "{e}");
        let c = change(Command::Resume, &policy(Phase::Paused, true)).unwrap();
        assert_eq!(c.patch, json!({"spec": {"paused": false}}));
        let e = change(Command::Resume, &policy(Phase::Paused, false)).unwrap_err();
        assert!(e.contains("pause step") && e.contains("promote"), "{e}");
    }

    #[test]
    fn promote_applies_to_a_rollout_in_progress_only() {
        let c = change(
            Command::Promote { full: true },
            &policy(Phase::Paused, false),
        )
        .unwrap();
        assert_eq!(
            c.patch,
            json!({"metadata": {"annotations": {"quiesce.dev/promote": "full"}}})
        );
        assert!(c.done.contains("new1"), "{}", c.done);
        let c = change(
            Command::Promote { full: false },
            &policy(Phase::Progressing, false),
        );
        assert_eq!(
            c.unwrap().patch,
            json!({"metadata": {"annotations": {"quiesce.dev/promote": "step"}}})
        );
        for phase in [Phase::Idle, Phase::Completed, Phase::RolledBack] {
            let e = change(Command::Promote { full: false }, &policy(phase, false)).unwrap_err();
            assert!(e.contains("no rollout in progress"), "{e}");
        }
        let e = change(
            Command::Promote { full: false },
            &policy(Phase::Failed, false),
        )
        .unwrap_err();
        assert!(e.contains("retry"), "{e}");
    }

    #[test]
    fn abort_names_the_revision_it_goes_back_to() {
        let c = change(Command::Abort, &policy(Phase::Failed, false)).unwrap();
        assert_eq!(
            c.patch,
            json!({"metadata": {"annotations": {"quiesce.dev/abort": "true"}}})
        );
        assert!(c.done.contains("old1"), "{}", c.done);
        let e = change(Command::Abort, &policy(Phase::Completed, false)).unwrap_err();
        assert!(e.contains("no rollout in progress"), "{e}");
    }

    #[test]
    fn retry_continues_a_failed_rollout_and_explains_a_rolled_back_one() {
        let c = change(Command::Retry, &policy(Phase::Failed, false)).unwrap();
        assert_eq!(
            c.patch,
            json!({"metadata": {"annotations": {"quiesce.dev/promote": "step"}}})
        );
        let e = change(Command::Retry, &policy(Phase::RolledBack, false)).unwrap_err();
        assert!(e.contains("rolled back"), "{e}");
        let e = change(Command::Retry, &policy(Phase::Progressing, false)).unwrap_err();
        assert!(e.contains("no failed rollout"), "{e}");
    }
}
