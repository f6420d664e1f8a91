//! When a planned status goes to the apiserver. Pod counts change with every pod a rollout
//! creates, readies or removes; writing each change made the policy's status the operator's
//! most frequent write (two per gate at 3,000 pods, docs/benchmarks.md "Operator at scale").
//! A change of counts alone (with the messages and progress time that follow them) is
//! written at most once per [`COUNTS_INTERVAL`] per policy; anything else — phase, step,
//! revisions, conditions, drain statistics — at once. The operator plans from the newest
//! status meanwhile (kept in memory), so decisions never wait for the write.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use quiesce_api::RolloutPolicyStatus;

/// The least time between two writes of a policy's status that change only counts.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with a planned status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// Nothing to write: the apiserver has it.
    Unchanged,
    /// Write it now.
    Now,
    /// Write it after this long (plan again then).
    After(Duration),
}

/// The status without what changes with every pod: replica counts, the summary message, the
/// condition messages that quote counts, and the progress time.
fn without_counts(status: &RolloutPolicyStatus) -> RolloutPolicyStatus {
    let mut s = status.clone();
    s.desired_replicas = None;
    s.updated_replicas = None;
    s.admitted_replicas = None;
    s.ready_replicas = None;
    s.message = None;
    s.last_progress_time = None;
    for c in &mut s.conditions {
        c.message.clear();
    }
    s
}

/// Whether and when to write `planned`, given the status last `written` (at `written_at`).
pub fn status_write(
    written: &RolloutPolicyStatus,
    planned: &RolloutPolicyStatus,
    written_at: Option<Timestamp>,
    now: Timestamp,
) -> StatusWrite {
    if planned == written {
        return StatusWrite::Unchanged;
    }
    if without_counts(planned) != without_counts(written) {
        return StatusWrite::Now;
    }
    let since = written_at
        .and_then(|at| now.duration_since(at).try_into().ok())
        .unwrap_or(COUNTS_INTERVAL);
    match COUNTS_INTERVAL.checked_sub(since) {
        Some(rest) if !rest.is_zero() => StatusWrite::After(rest),
        _ => StatusWrite::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use quiesce_api::Phase;

    fn status(ready: i32) -> RolloutPolicyStatus {
        RolloutPolicyStatus {
            phase: Some(Phase::Progressing),
            current_step: Some(0),
            ready_replicas: Some(ready),
            message: Some(format!("{ready} of 10 pods ready")),
            conditions: vec![Condition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: "RolloutInProgress".into(),
                message: format!("{ready} of 10 pods ready"),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: Some(1),
            }],
            ..Default::default()
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    #[test]
    fn counts_alone_wait_for_the_interval() {
        let (written, planned) = (status(3), status(4));
        assert_eq!(
            status_write(&written, &planned, Some(at(10_000)), at(10_300)),
            StatusWrite::After(Duration::from_millis(700))
        );
        assert_eq!(
            status_write(&written, &planned, Some(at(10_000)), at(11_000)),
            StatusWrite::Now
        );
        assert_eq!(
            status_write(&written, &planned, None, at(10_000)),
            StatusWrite::Now,
            "never written by this process"
        );
        let mut progressed = status(4);
        progressed.last_progress_time = Some(Time(at(10_300)));
        assert!(matches!(
            status_write(&written, &progressed, Some(at(10_000)), at(10_300)),
            StatusWrite::After(_)
        ));
    }

    #[test]
    fn anything_else_is_written_at_once() {
        let written = status(3);
        let mut step = status(4);
        step.current_step = Some(1);
        let mut phase = status(3);
        phase.phase = Some(Phase::Paused);
        let mut condition = status(3);
        condition.conditions[0].status = "False".into();
        let mut drains = status(3);
        drains.drains = Some(Default::default());
        for planned in [step, phase, condition, drains] {
            assert_eq!(
                status_write(&written, &planned, Some(at(10_000)), at(10_001)),
                StatusWrite::Now,
                "{planned:?}"
            );
        }
        assert_eq!(
            status_write(&written, &status(3), Some(at(10_000)), at(10_001)),
            StatusWrite::Unchanged
        );
    }
}
