//! The quiesce API: the `RolloutPolicy` custom resource and the names (conditions, labels,
//! annotations, ports) that the operator, the sidecar and the e2e suite must agree on.
//!
//! - [`RolloutPolicy`] / [`RolloutPolicySpec`] / [`RolloutPolicyStatus`]: the CRD types.
//! - [`constants`]: condition types, reasons, labels, annotations, ports.
//! - [`defaults`]: the default of every optional field and the schema's bounds.
//! - [`crd`]: the generated CustomResourceDefinition and where its YAML is committed.
//! - [`DrainReport`]: the sidecar's drain report, the drained condition's message.
//! - [`sidecar`]: the environment the webhook writes and the sidecar reads ([`SidecarEnv`]).
//! - [`log_line`]: the JSON log line both binaries write.

pub mod constants;
pub mod crd;
pub mod defaults;
mod drain_report;
pub mod log_line;
mod rollout_policy;
pub mod sidecar;

pub use drain_report::{DrainReport, ProxyDrainReport};
pub use rollout_policy::{
    ADMIT_PERCENT_PATTERN, Admit, AppShutdown, DrainMode, DrainSpec, DrainStats, FailureAction,
    FailureSpec, InvalidAdmit, PauseStep, Phase, ReadinessSpec, RolloutPolicy, RolloutPolicySpec,
    RolloutPolicyStatus, Step, StepAction, TargetRef, messages,
};
pub use sidecar::{SidecarEnv, SidecarProbe};
