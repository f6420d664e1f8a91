//! Defaults of every optional `RolloutPolicy` field, and the bounds the CRD schema enforces.
//!
//! Durations are integers whose field name carries the unit (`...Seconds`, and `...Millis` where
//! sub-second precision matters), like `terminationGracePeriodSeconds`.

/// `spec.readiness.minHealthySeconds`: how long a new pod's containers must have been ready
/// before it may be admitted.
pub const MIN_HEALTHY_SECONDS: i32 = 0;
/// `spec.readiness.failOpenAfterSeconds`: a pod whose gate is still undecided after this long is
/// admitted anyway (so an absent operator never blocks a rollout forever).
pub const FAIL_OPEN_AFTER_SECONDS: i32 = 600;

/// `spec.drain.endpointTimeoutSeconds`: bound on waiting for the pod to leave every EndpointSlice.
pub const ENDPOINT_TIMEOUT_SECONDS: i32 = 10;
/// `spec.drain.quietPeriodMillis`: no new connection for this long means traffic stopped.
pub const QUIET_PERIOD_MILLIS: i32 = 1000;
/// `spec.drain.timeoutSeconds`: bound on waiting for in-flight work.
pub const DRAIN_TIMEOUT_SECONDS: i32 = 30;
/// `spec.drain.waitBeforeNextStep`.
pub const WAIT_BEFORE_NEXT_STEP: bool = true;

/// `spec.failure.progressDeadlineSeconds`.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// `spec.failure.maxRestarts`.
pub const MAX_RESTARTS: i32 = 3;

/// Upper bound of every `...Seconds` field except the ones below: one hour.
pub const MAX_SECONDS: i32 = 3600;
/// Upper bound of `failOpenAfterSeconds`, `progressDeadlineSeconds` and pause durations: one day.
pub const MAX_LONG_SECONDS: i32 = 86400;
/// Upper bound of `quietPeriodMillis`: one minute.
pub const MAX_QUIET_PERIOD_MILLIS: i32 = 60000;
/// Upper bound of `maxRestarts`.
pub const MAX_MAX_RESTARTS: i32 = 100;
/// Maximum number of steps (bounds the cost of the CRD's CEL rules).
pub const MAX_STEPS: usize = 32;
