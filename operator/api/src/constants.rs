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
