//! Names shared by every quiesce component. Changing one is an API change.

/// API group of every quiesce resource and the prefix of its labels and conditions.
pub const GROUP: &str = "quiesce.dev";

/// Pod readiness-gate condition owned by the operator: `True` once the pod may take traffic.
pub const READY_GATE_CONDITION: &str = "quiesce.dev/ready";

/// Pod condition owned by the sidecar: `False`/`Draining` while draining, `True` with a report
/// once the drain finished.
pub const DRAINED_CONDITION: &str = "quiesce.dev/drained";

/// Name of the injected native sidecar container.
pub const SIDECAR_CONTAINER_NAME: &str = "quiesce-sidecar";

/// Default admin port of the sidecar (`/livez`, `/readyz`, `/status`, `/metrics`, drain).
pub const SIDECAR_ADMIN_PORT: u16 = 9901;

/// Path of the sidecar's drain endpoint, the target of the injected preStop hook.
pub const SIDECAR_DRAIN_PATH: &str = "/drain";

/// Label set by the Deployment controller on every pod of a revision.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Namespace or pod label; the value `disabled` opts out of injection.
pub const INJECT_LABEL: &str = "quiesce.dev/inject";

/// Value of [`INJECT_LABEL`] that opts a namespace or pod out of injection.
pub const INJECT_DISABLED: &str = "disabled";

/// Pod annotation written by the webhook: the RolloutPolicy that injected the pod.
pub const INJECTED_BY_ANNOTATION: &str = "quiesce.dev/injected-by";

/// Field manager of the operator's server-side applies and status patches.
pub const OPERATOR_FIELD_MANAGER: &str = "quiesce-operator";

/// Field manager of the sidecar's pod-status patches (the drained condition).
pub const SIDECAR_FIELD_MANAGER: &str = "quiesce-sidecar";

/// Finalizer the operator puts on a RolloutPolicy: on deletion every held pod of the target is
/// admitted before the policy goes away, so nothing stays stuck behind the readiness gate.
pub const POLICY_FINALIZER: &str = "quiesce.dev/release-pods";

/// Environment variable of the injected sidecar: seconds after which the sidecar admits its
/// own pod (readiness gate `True`, reason `FailOpen`) when the operator has not decided — the
/// condition is absent, or `False` with a `lastProbeTime` (the operator's heartbeat) older than
/// this. The value is the policy's `spec.readiness.failOpenAfterSeconds`.
pub const SIDECAR_FAIL_OPEN_ENV: &str = "QUIESCE_FAIL_OPEN_AFTER_SECONDS";

/// Condition types of a `RolloutPolicy`'s `status.conditions` (a list-map keyed by `type`).
///
/// Pod condition types (the readiness gate and the drain report) are
/// [`READY_GATE_CONDITION`] and
/// [`DRAINED_CONDITION`].
pub mod conditions {
    /// `True` when the policy is usable: its spec is valid beyond what the schema checks, its
    /// target exists and no other policy targets the same Deployment. `False` reasons:
    /// [`INVALID_SPEC`](super::reasons::INVALID_SPEC),
    /// [`TARGET_NOT_FOUND`](super::reasons::TARGET_NOT_FOUND),
    /// [`CONFLICT`](super::reasons::CONFLICT).
    pub const ACCEPTED: &str = "Accepted";

    /// `True` while a rollout of a new revision is in progress (also while it is paused).
    pub const PROGRESSING: &str = "Progressing";

    /// `True` while admission of new pods is held: `spec.paused`, a pause step, or the failure
    /// action `Pause`.
    pub const PAUSED: &str = "Paused";

    /// `True` when every pod of the target is ready on the update revision and no rollout is
    /// in progress.
    pub const AVAILABLE: &str = "Available";

    /// `True` when the rollout failed (progress deadline exceeded, too many restarts) or was
    /// aborted; the reason says which and whether it was rolled back.
    pub const DEGRADED: &str = "Degraded";

    /// `False` when pods of the target run without the quiesce sidecar (created while the
    /// webhook was unavailable, or opted out), so they are not drained before termination.
    pub const INJECTED: &str = "Injected";

    /// `False` when the pods' `terminationGracePeriodSeconds` is shorter than the drain budget
    /// (see `DrainSpec::budget_seconds`), so the kubelet could kill a pod mid-drain.
    pub const DRAIN_BUDGET_SUFFICIENT: &str = "DrainBudgetSufficient";

    /// Present only with `spec.drain.mode: Proxy`. `True` when every Service selecting the
    /// target's pods targets a *named* port, which the sidecar's proxy takes over; `False` when a
    /// Service's numeric `targetPort` bypasses the proxy
    /// ([`NUMERIC_TARGET_PORT`](super::reasons::NUMERIC_TARGET_PORT)) or the pods have no named
    /// port to take over ([`NO_NAMED_PORT`](super::reasons::NO_NAMED_PORT)).
    pub const PROXY_TAKEOVER: &str = "ProxyTakeover";

    /// `False` ([`SIDECAR_CRASH_LOOPING`](super::reasons::SIDECAR_CRASH_LOOPING)) while the
    /// quiesce sidecar of any pod of the target has restarted or is in `CrashLoopBackOff`, with
    /// the pod and the sidecar's last termination message; `True`
    /// ([`SIDECAR_RUNNING`](super::reasons::SIDECAR_RUNNING)) otherwise. Sidecar restarts of
    /// new-revision pods also count toward `spec.failure.maxRestarts`.
    pub const SIDECAR_HEALTHY: &str = "SidecarHealthy";
}

/// Reasons: CamelCase, machine-readable, for policy conditions, pod conditions and events.
pub mod reasons {
    // --- Accepted ---
    /// `Accepted=True`: the policy is valid and its target resolved.
    pub const ACCEPTED: &str = "Accepted";
    /// `Accepted=False`: the spec is invalid in a way the CRD schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `Accepted=False`: `spec.targetRef` names a Deployment that does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// `Accepted=False`: another RolloutPolicy already targets the same Deployment (the oldest
    /// one wins).
    pub const CONFLICT: &str = "Conflict";

    // --- Progressing / phase changes ---
    /// No rollout in progress: every pod runs the stable revision.
    pub const IDLE: &str = "Idle";
    /// A new revision of the target was detected and the rollout started.
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// The rollout moved on to the next step.
    pub const STEP_ADVANCED: &str = "StepAdvanced";
    /// Every step is done and all pods run the update revision.
    pub const ROLLOUT_COMPLETED: &str = "RolloutCompleted";
    /// No progress within `spec.failure.progressDeadlineSeconds`.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// A new-revision container restarted more than `spec.failure.maxRestarts` times.
    pub const TOO_MANY_RESTARTS: &str = "TooManyRestarts";
    /// The target's template was restored to the stable revision.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// The rollout was aborted with the abort annotation.
    pub const ABORTED: &str = "Aborted";
    /// The rollout was promoted with the promote annotation.
    pub const PROMOTED: &str = "Promoted";

    // --- Paused ---
    /// `spec.paused` is true.
    pub const PAUSED_BY_SPEC: &str = "PausedBySpec";
    /// The current step is a pause step.
    pub const PAUSE_STEP: &str = "PauseStep";
    /// The rollout failed and `spec.failure.action` is `Pause`.
    pub const PAUSED_ON_FAILURE: &str = "PausedOnFailure";
    /// Admission is not held.
    pub const NOT_PAUSED: &str = "NotPaused";

    // --- Injected / DrainBudgetSufficient ---
    /// Every pod of the target carries the sidecar.
    pub const ALL_PODS_INJECTED: &str = "AllPodsInjected";
    /// Some pods of the target run without the sidecar.
    pub const PODS_NOT_INJECTED: &str = "PodsNotInjected";
    /// `terminationGracePeriodSeconds` covers the drain budget.
    pub const GRACE_PERIOD_SUFFICIENT: &str = "GracePeriodSufficient";
    /// `terminationGracePeriodSeconds` is shorter than the drain budget.
    pub const GRACE_PERIOD_TOO_SHORT: &str = "GracePeriodTooShort";

    // --- ProxyTakeover ---
    /// `ProxyTakeover=True`: every Service selecting the pods targets a named port the proxy
    /// serves (or no Service selects them).
    pub const ALL_SERVICES_NAMED: &str = "AllServicesNamed";
    /// `ProxyTakeover=False`: a Service selecting the pods has a numeric `targetPort`, so its
    /// traffic goes straight to the app, around the drain proxy.
    pub const NUMERIC_TARGET_PORT: &str = "NumericTargetPort";
    /// `ProxyTakeover=False`: the pod template declares no named TCP container port, so the
    /// sidecar takes over nothing and drains in `Observe` mode.
    pub const NO_NAMED_PORT: &str = "NoNamedPort";

    // --- SidecarHealthy ---
    /// `SidecarHealthy=True`: no pod's quiesce sidecar has restarted.
    pub const SIDECAR_RUNNING: &str = "SidecarRunning";
    /// `SidecarHealthy=False`: a pod's quiesce sidecar restarted or is in `CrashLoopBackOff`.
    pub const SIDECAR_CRASH_LOOPING: &str = "SidecarCrashLooping";

    // --- pod condition quiesce.dev/ready (readiness gate) ---
    /// Gate `True`: a pod of the stable revision, or any pod outside a rollout.
    pub const STABLE_POD: &str = "StablePod";
    /// Gate `True`: a new-revision pod admitted by the current step.
    pub const ADMITTED: &str = "Admitted";
    /// Gate `True`: no decision was made within `failOpenAfterSeconds`, so the pod was let in.
    pub const FAIL_OPEN: &str = "FailOpen";
    /// Gate `False`: the containers are not ready yet.
    pub const CONTAINERS_NOT_READY: &str = "ContainersNotReady";
    /// Gate `False`: containers ready for less than `minHealthySeconds`.
    pub const WAITING_FOR_MIN_HEALTHY: &str = "WaitingForMinHealthy";
    /// Gate `False`: the current step admits no more pods.
    pub const WAITING_FOR_STEP: &str = "WaitingForStep";
    /// Gate `False`: old pods removed by the previous step have not finished draining.
    pub const WAITING_FOR_DRAIN: &str = "WaitingForDrain";
    /// Gate `False`: the rollout is paused.
    pub const PAUSED: &str = "Paused";
    /// Gate `True`: the policy was deleted, so every held pod is let in (it is Ready once its
    /// containers are).
    pub const POLICY_DELETED: &str = "PolicyDeleted";
    /// `Progressing=False`: the target went back to the stable revision without quiesce
    /// (`kubectl rollout undo` or a re-apply of the old template) before the rollout finished.
    pub const ROLLOUT_ABANDONED: &str = "RolloutAbandoned";

    // --- pod condition quiesce.dev/drained (sidecar) ---
    /// Drained `False`: the drain is in progress.
    pub const DRAINING: &str = "Draining";
    /// Drained `True`: in-flight work finished within the budget.
    pub const DRAINED: &str = "Drained";
    /// Drained `True`: the drain timeout expired with work still in flight.
    pub const DRAIN_TIMED_OUT: &str = "DrainTimedOut";
}

/// Labels (all under the `quiesce.dev/` prefix except the well-known ones).
pub mod labels {
    /// Namespace or pod label; the value [`INJECT_DISABLED`](super::INJECT_DISABLED) opts out of
    /// injection. Same as [`INJECT_LABEL`](super::INJECT_LABEL).
    pub const INJECT: &str = super::INJECT_LABEL;
    /// Pod label set by the webhook: name of the RolloutPolicy that governs the pod.
    pub const POLICY: &str = "quiesce.dev/policy";
    /// Well-known label on objects created by quiesce (webhook configuration, certificates).
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "quiesce";
    /// Label set by the Deployment controller on every pod of a revision.
    pub const POD_TEMPLATE_HASH: &str = super::POD_TEMPLATE_HASH_LABEL;
}

/// Annotations (user-facing commands on a RolloutPolicy, and markers on pods).
pub mod annotations {
    /// On a RolloutPolicy: promote the current rollout, like `kubectl argo rollouts promote`.
    /// Any value ends the current pause step; the value [`PROMOTE_FULL`] skips every remaining
    /// step. The operator removes the annotation once it has acted on it.
    ///
    /// `kubectl annotate rolloutpolicy web quiesce.dev/promote=step`
    pub const PROMOTE: &str = "quiesce.dev/promote";
    /// Value of [`PROMOTE`] that skips all remaining steps (admit every healthy pod).
    pub const PROMOTE_FULL: &str = "full";
    /// On a RolloutPolicy: abort the current rollout, like `kubectl argo rollouts abort`: the
    /// target is rolled back to the stable revision regardless of `spec.failure.action`. The
    /// operator removes the annotation once it has acted on it.
    pub const ABORT: &str = "quiesce.dev/abort";
    /// Pod annotation written by the webhook: the RolloutPolicy that injected the pod. Same as
    /// [`INJECTED_BY_ANNOTATION`](super::INJECTED_BY_ANNOTATION).
    pub const INJECTED_BY: &str = super::INJECTED_BY_ANNOTATION;
    /// Pod annotation written by the webhook: the drain configuration handed to the sidecar, as
    /// JSON of `DrainSpec`.
    pub const DRAIN_CONFIG: &str = "quiesce.dev/drain-config";
    /// Pod annotation written by the webhook: the drain mode the sidecar really runs
    /// (`Observe` when the policy asks for `Proxy` but the pod has no named port to take over).
    pub const DRAIN_MODE: &str = "quiesce.dev/drain-mode";
}
