//! What [`plan`](super::plan) returns: the next status and the actions the shell carries out.

use super::*;

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
    /// The pod whose gate this action opens, if it does.
    pub fn admitted_pod(&self) -> Option<&str> {
        match self {
            Action::SetGate {
                pod, ready: true, ..
            } => Some(pod),
            _ => None,
        }
    }

    pub(super) fn event(reason: &'static str, note: impl Into<String>) -> Self {
        Action::Event {
            warning: false,
            reason,
            note: note.into(),
            action: "Reconcile".to_owned(),
        }
    }

    pub(super) fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Action::Event {
            warning: true,
            reason,
            note: note.into(),
            action: "Reconcile".to_owned(),
        }
    }

    pub(super) fn with_action(mut self, what: impl Into<String>) -> Self {
        if let Action::Event { action, .. } = &mut self {
            *action = what.into();
        }
        self
    }
}
