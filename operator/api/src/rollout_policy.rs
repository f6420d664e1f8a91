//! The `RolloutPolicy` custom resource (`quiesce.dev/v1alpha1`, namespaced).
//!
//! A policy targets one existing Deployment and never replaces it: the Deployment controller
//! still does the rolling, quiesce decides when each new pod counts as Ready (a readiness gate)
//! and drains every old pod before it is terminated.
//!
//! Durations are integers whose field name carries the unit, the Kubernetes way
//! (`terminationGracePeriodSeconds`, `progressDeadlineSeconds`): `...Seconds` everywhere, and
//! `quietPeriodMillis` where sub-second precision matters. Defaults live in [`crate::defaults`].
//!
//! Validation lives in the CRD itself (OpenAPI bounds plus CEL `x-kubernetes-validations` rules);
//! each rule's message is a `pub const` in [`messages`] so tests and examples can refer to it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

#[cfg(test)]
mod tests;

/// The messages of the CRD's validation rules, exactly as the apiserver reports them.
pub mod messages {
    /// `spec.targetRef.apiVersion` is not `apps/v1`.
    pub const TARGET_API_VERSION: &str = "targetRef.apiVersion must be apps/v1";
    /// `spec.targetRef.kind` is not `Deployment`.
    pub const TARGET_KIND: &str =
        "targetRef.kind must be Deployment: quiesce paces Deployments only";
    /// `spec.targetRef.name` is not a DNS-1123 subdomain.
    pub const TARGET_NAME: &str = "targetRef.name must be a valid Deployment name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit";
    /// A step sets both or neither of `admit` and `pause`.
    pub const STEP_ONE_OF: &str = "each step must set exactly one of admit or pause";
    /// An integer `admit` below 1.
    pub const ADMIT_COUNT: &str = "an admit count must be at least 1";
    /// A string `admit` that is not a percentage from 1% to 100%.
    pub const ADMIT_PERCENT: &str =
        "an admit percentage must be a whole number from 1% to 100%, like '25%'";
    /// Admit counts decrease from one step to a later one.
    pub const ADMIT_COUNTS_ORDER: &str = "admit counts must not decrease from one step to the next";
    /// Admit percentages decrease from one step to a later one.
    pub const ADMIT_PERCENTS_ORDER: &str =
        "admit percentages must not decrease from one step to the next";
    /// The last step is not `admit: 100%`.
    pub const LAST_STEP_FULL: &str = "the last step must be admit: 100%";
    /// `failOpenAfterSeconds` is not longer than `minHealthySeconds`.
    pub const FAIL_OPEN_AFTER_MIN_HEALTHY: &str =
        "readiness.failOpenAfterSeconds must be greater than readiness.minHealthySeconds";
    /// The quiet period is not shorter than the drain timeout, which bounds it (the sidecar
    /// refuses such a drain configuration).
    pub const QUIET_PERIOD_WITHIN_TIMEOUT: &str =
        "drain.quietPeriodMillis must be shorter than drain.timeoutSeconds, which bounds it";
    /// A quiet period shorter than one observation of the sidecar (it refuses it).
    pub const QUIET_PERIOD_MIN: &str = "drain.quietPeriodMillis must be 0 or at least 100: the sidecar looks for new connections every 100 ms";
}

/// The CEL rules of `spec.steps`.
///
/// `admit` is `x-kubernetes-int-or-string`, which the apiserver's cost estimator sizes as a
/// string of the maximum request size (3 MiB): any string function on it (`replace`, `matches`,
/// `int()`) exceeds the CRD's cost budget. Percentages are therefore only compared for equality
/// and looked up in a literal table `{'1%': 1, ..., '100%': 100}`, which costs per entry, not per
/// byte. `maxItems: 32` on `steps` bounds the rest.
mod cel {
    /// Integer admit values are at least 1.
    pub const ADMIT_COUNTS_POSITIVE: &str =
        "self.all(s, !has(s.admit) || type(s.admit) != int || s.admit >= 1)";
    /// Integer admit values never decrease.
    pub const ADMIT_COUNTS_SORTED: &str =
        "self.filter(s, has(s.admit) && type(s.admit) == int).map(s, s.admit).isSorted()";
    /// The last step is `admit: 100%`.
    pub const LAST_STEP_FULL: &str = "size(self) == 0 || (has(self[size(self) - 1].admit) && \
         type(self[size(self) - 1].admit) == string && self[size(self) - 1].admit == '100%')";

    /// `{'1%': 1, '2%': 2, ..., '100%': 100}`.
    fn percent_table() -> String {
        let entries: Vec<String> = (1..=100).map(|p| format!("'{p}%': {p}")).collect();
        format!("{{{}}}", entries.join(", "))
    }

    /// String admit values are percentages from 1% to 100%.
    pub fn admit_percents_valid() -> String {
        format!(
            "self.all(s, !has(s.admit) || type(s.admit) != string || s.admit in {})",
            percent_table()
        )
    }

    /// Percentage admit values never decrease.
    pub fn admit_percents_sorted() -> String {
        let table = percent_table();
        format!(
            "self.filter(s, has(s.admit) && type(s.admit) == string && s.admit in {table})\
             .map(s, {table}[s.admit]).isSorted()"
        )
    }
}

/// Regular expression of an admit percentage: `1%` to `100%`.
pub const ADMIT_PERCENT_PATTERN: &str = "^([1-9][0-9]?|100)%$";

/// Specification of a RolloutPolicy: how rolling updates of one Deployment are paced and how
/// its old pods are drained.
// clippy reads repeated `type_ = "integer"` keys of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiesce.dev",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    plural = "rolloutpolicies",
    singular = "rolloutpolicy",
    shortname = "rp",
    shortname = "qrp",
    category = "quiesce",
    doc = "RolloutPolicy paces the rolling updates of one Deployment: new pods become Ready step by step (a readiness gate owned by the quiesce operator) and every old pod is drained by the quiesce sidecar before it is stopped, so no request is lost.",
    namespaced,
    status = "RolloutPolicyStatus",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The Deployment this policy paces"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Phase of the current rollout"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.currentStep",
        description = "Steps done (the index of the current step; kubectl quiesce get shows done/all)"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Desired pods of the target"
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Pods of the update revision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready pods of any revision"
    ),
    printcolumn(
        name = "Drains",
        type_ = "integer",
        json_path = ".status.drains.completed",
        description = "Drains completed"
    ),
    printcolumn(
        name = "Forced",
        type_ = "integer",
        json_path = ".status.drains.forced",
        description = "Drains that hit a bound (endpoint, quiet or in-flight timeout)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicySpec {
    /// The workload this policy paces. Only `apps/v1` `Deployment` in the policy's namespace is
    /// supported. At most one policy may target a Deployment (the oldest one wins; the others
    /// report `Accepted=False`, reason `Conflict`).
    pub target_ref: TargetRef,

    /// Steps of a rollout, in order. An `admit` step lets the given number (or percentage of the
    /// new revision's desired replicas) of new pods become Ready; a `pause` step holds admission
    /// for a duration or until promoted. Admit values must not decrease and the last step must
    /// be `admit: 100%`. Empty or absent: every healthy new pod is admitted (readiness gate and
    /// drain only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = defaults::MAX_STEPS))]
    #[x_kube(
        validation = Rule::new(cel::ADMIT_COUNTS_POSITIVE).message(messages::ADMIT_COUNT),
        validation = Rule::new(cel::admit_percents_valid()).message(messages::ADMIT_PERCENT),
        validation = Rule::new(cel::ADMIT_COUNTS_SORTED).message(messages::ADMIT_COUNTS_ORDER),
        validation = Rule::new(cel::admit_percents_sorted()).message(messages::ADMIT_PERCENTS_ORDER),
        validation = Rule::new(cel::LAST_STEP_FULL).message(messages::LAST_STEP_FULL),
    )]
    pub steps: Vec<Step>,

    /// When a new pod counts as healthy enough to be admitted.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.failOpenAfterSeconds > self.minHealthySeconds").message(messages::FAIL_OPEN_AFTER_MIN_HEALTHY))]
    pub readiness: ReadinessSpec,

    /// How an old pod is drained before the kubelet stops it.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self.quietPeriodMillis < self.timeoutSeconds * 1000").message(messages::QUIET_PERIOD_WITHIN_TIMEOUT),
        validation = Rule::new("self.quietPeriodMillis == 0 || self.quietPeriodMillis >= 100").message(messages::QUIET_PERIOD_MIN),
    )]
    pub drain: DrainSpec,

    /// What counts as a failed rollout and what to do about it.
    #[serde(default)]
    pub failure: FailureSpec,

    /// Hold admission of new pods (the rollout resumes when set back to false). Pods already
    /// admitted stay Ready.
    #[serde(default)]
    pub paused: bool,
}

/// Reference to the workload a policy paces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version of the target. Only `apps/v1` is supported.
    #[serde(default = "default_target_api_version")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self == 'apps/v1'").message(messages::TARGET_API_VERSION))]
    pub api_version: String,

    /// Kind of the target. Only `Deployment` is supported.
    #[serde(default = "default_target_kind")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self == 'Deployment'").message(messages::TARGET_KIND))]
    pub kind: String,

    /// Name of the target in the policy's namespace (a DNS-1123 subdomain).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message(messages::TARGET_NAME))]
    pub name: String,
}

fn default_target_api_version() -> String {
    TargetRef::API_VERSION.to_owned()
}

fn default_target_kind() -> String {
    TargetRef::KIND.to_owned()
}

impl TargetRef {
    /// The only supported `apiVersion`.
    pub const API_VERSION: &str = "apps/v1";
    /// The only supported `kind`.
    pub const KIND: &str = "Deployment";

    /// A reference to the `apps/v1` Deployment `name`.
    pub fn deployment(name: impl Into<String>) -> Self {
        Self {
            api_version: Self::API_VERSION.to_owned(),
            kind: Self::KIND.to_owned(),
            name: name.into(),
        }
    }
}

/// One step of a rollout: exactly one of `admit` or `pause`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.admit) != has(self.pause)").message(messages::STEP_ONE_OF))]
pub struct Step {
    /// Let new pods become Ready until this many pods of the new revision are admitted: an
    /// integer count (at least 1) or a percentage `1%`..`100%` of the new revision's desired
    /// replicas, rounded up. Counts above the desired replicas mean all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = ADMIT_PERCENT_PATTERN))]
    pub admit: Option<IntOrString>,

    /// Hold admission: for `durationSeconds`, or until promoted (annotation `quiesce.dev/promote`)
    /// when no duration is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
}

/// A pause step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to hold admission, in seconds (1..86400). Absent: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::MAX_LONG_SECONDS))]
    pub duration_seconds: Option<i32>,
}

/// When a new pod counts as healthy enough to be admitted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadinessSpec {
    /// Seconds a new pod's containers must have been ready before the pod may be admitted
    /// (0..3600, default 0). Like a Deployment's `minReadySeconds`, but before traffic.
    #[schemars(range(min = 0, max = defaults::MAX_SECONDS))]
    pub min_healthy_seconds: i32,

    /// Seconds after which a pod whose readiness gate is still undecided (operator down,
    /// rollout stuck) is admitted anyway, so quiesce never blocks a workload forever
    /// (1..86400, default 600).
    #[schemars(range(min = 1, max = defaults::MAX_LONG_SECONDS))]
    pub fail_open_after_seconds: i32,
}

impl Default for ReadinessSpec {
    fn default() -> Self {
        Self {
            min_healthy_seconds: defaults::MIN_HEALTHY_SECONDS,
            fail_open_after_seconds: defaults::FAIL_OPEN_AFTER_SECONDS,
        }
    }
}

impl ReadinessSpec {
    /// [`Self::min_healthy_seconds`] as a [`Duration`] (negative values count as zero).
    pub fn min_healthy(&self) -> Duration {
        secs(self.min_healthy_seconds)
    }

    /// [`Self::fail_open_after_seconds`] as a [`Duration`].
    pub fn fail_open_after(&self) -> Duration {
        secs(self.fail_open_after_seconds)
    }
}

/// How the sidecar finds in-flight work during a drain.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DrainMode {
    /// Watch the pod's TCP connections from the shared network namespace; no traffic goes
    /// through the sidecar.
    #[default]
    Observe,
    /// Traffic goes through the sidecar's HTTP proxy, which knows every in-flight request and
    /// closes connections gracefully (`Connection: close`, HTTP/2 GOAWAY).
    Proxy,
}

/// How the app treats SIGTERM, which decides what a drain must wait for.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AppShutdown {
    /// The app exits at once on SIGTERM: the drain waits until no request arrives, on new or
    /// kept-alive connections, and none is in flight (with kept-alive clients in `Observe` mode
    /// that can take until `timeoutSeconds`: use `Proxy`, which closes them).
    #[default]
    Immediate,
    /// The app shuts down gracefully on SIGTERM (finishes in-flight requests, closes idle
    /// keep-alive connections, like Go's `http.Server.Shutdown`, Spring graceful shutdown or
    /// nginx quit): the drain releases SIGTERM once the pod is out of the endpoints and no new
    /// connection arrived for the quiet period, and then follows the app's own shutdown.
    Graceful,
}

impl AppShutdown {
    /// The value as written in the API and in the sidecar's environment.
    pub fn as_str(self) -> &'static str {
        match self {
            AppShutdown::Immediate => "Immediate",
            AppShutdown::Graceful => "Graceful",
        }
    }
}

impl DrainMode {
    /// The value as written in the API and in the sidecar's environment.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainMode::Observe => "Observe",
            DrainMode::Proxy => "Proxy",
        }
    }
}

/// How an old pod is drained before the kubelet stops it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct DrainSpec {
    /// Seconds to wait for the pod's address to leave every EndpointSlice (1..3600, default 10).
    #[schemars(range(min = 1, max = defaults::MAX_SECONDS))]
    pub endpoint_timeout_seconds: i32,

    /// Milliseconds without a new inbound connection after which traffic counts as stopped
    /// (0..60000, default 1000). Bounded by `endpointTimeoutSeconds` + `timeoutSeconds`.
    #[schemars(range(min = 0, max = defaults::MAX_QUIET_PERIOD_MILLIS))]
    pub quiet_period_millis: i32,

    /// Seconds to wait for in-flight work to finish before the app is stopped anyway
    /// (1..3600, default 30).
    #[schemars(range(min = 1, max = defaults::MAX_SECONDS))]
    pub timeout_seconds: i32,

    /// Admit the next step's pods only after the old pods removed by the previous step have
    /// drained or are gone (default true).
    pub wait_before_next_step: bool,

    /// How in-flight work is observed: `Observe` (connection tracking, default) or `Proxy`
    /// (the sidecar proxies HTTP).
    pub mode: DrainMode,

    /// How the app treats SIGTERM: `Immediate` (default: it exits at once, so the drain waits
    /// for in-flight work itself) or `Graceful` (it finishes in-flight work and closes its
    /// keep-alive connections itself, so SIGTERM is released once no new connection arrives).
    pub app_shutdown: AppShutdown,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            endpoint_timeout_seconds: defaults::ENDPOINT_TIMEOUT_SECONDS,
            quiet_period_millis: defaults::QUIET_PERIOD_MILLIS,
            timeout_seconds: defaults::DRAIN_TIMEOUT_SECONDS,
            wait_before_next_step: defaults::WAIT_BEFORE_NEXT_STEP,
            mode: DrainMode::default(),
            app_shutdown: AppShutdown::default(),
        }
    }
}

impl DrainSpec {
    /// [`Self::endpoint_timeout_seconds`] as a [`Duration`].
    pub fn endpoint_timeout(&self) -> Duration {
        secs(self.endpoint_timeout_seconds)
    }

    /// [`Self::quiet_period_millis`] as a [`Duration`].
    pub fn quiet_period(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.quiet_period_millis).unwrap_or(0))
    }

    /// [`Self::timeout_seconds`] as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        secs(self.timeout_seconds)
    }

    /// Longest time a drain can take, in whole seconds (the quiet period rounded up):
    /// `endpointTimeoutSeconds + ceil(quietPeriodMillis / 1000) + timeoutSeconds`.
    /// A pod's `terminationGracePeriodSeconds` should be at least this plus the app's own
    /// shutdown time; see [`Self::grace_period_covers`].
    pub fn budget_seconds(&self) -> i64 {
        let quiet = (i64::from(self.quiet_period_millis.max(0)) + 999) / 1000;
        i64::from(self.endpoint_timeout_seconds.max(0))
            + quiet
            + i64::from(self.timeout_seconds.max(0))
    }

    /// Whether `termination_grace_period_seconds` (the pod's; Kubernetes' default is 30) leaves
    /// `app_shutdown_seconds` for the app after a full drain.
    pub fn grace_period_covers(
        &self,
        termination_grace_period_seconds: i64,
        app_shutdown_seconds: i64,
    ) -> bool {
        termination_grace_period_seconds >= self.budget_seconds() + app_shutdown_seconds
    }
}

/// What to do when a rollout fails.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureAction {
    /// Restore the stable revision's pod template on the target, like `kubectl rollout undo`.
    Rollback,
    /// Hold admission and wait for a person (promote, abort or a new revision).
    #[default]
    Pause,
}

/// What counts as a failed rollout and what to do about it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct FailureSpec {
    /// Seconds without progress (a pod admitted or a step completed) after which the rollout
    /// fails (1..86400, default 600). Time spent in pause steps does not count.
    #[schemars(range(min = 1, max = defaults::MAX_LONG_SECONDS))]
    pub progress_deadline_seconds: i32,

    /// Container restarts of a new-revision pod above which the rollout fails (0..100,
    /// default 3).
    #[schemars(range(min = 0, max = defaults::MAX_MAX_RESTARTS))]
    pub max_restarts: i32,

    /// `Pause` (default: hold admission, keep what is admitted) or `Rollback` (restore the
    /// stable revision's template on the target).
    pub action: FailureAction,
}

impl Default for FailureSpec {
    fn default() -> Self {
        Self {
            progress_deadline_seconds: defaults::PROGRESS_DEADLINE_SECONDS,
            max_restarts: defaults::MAX_RESTARTS,
            action: FailureAction::default(),
        }
    }
}

impl FailureSpec {
    /// [`Self::progress_deadline_seconds`] as a [`Duration`].
    pub fn progress_deadline(&self) -> Duration {
        secs(self.progress_deadline_seconds)
    }
}

/// Phase of a policy's current (or last) rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// No rollout yet, or the target is steady on one revision without a completed rollout.
    #[default]
    Idle,
    /// A rollout is admitting new pods.
    Progressing,
    /// A rollout is held: `spec.paused`, a pause step, or the failure action `Pause`.
    Paused,
    /// The last rollout finished: every pod runs the update revision.
    Completed,
    /// The last rollout failed and was left as it was.
    Failed,
    /// The last rollout failed or was aborted and the target was restored to the stable
    /// revision.
    RolledBack,
}

impl Phase {
    /// The phase as it appears in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drain statistics reported by the sidecars of the target's pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrainStats {
    /// Drains that finished with no work left in flight.
    #[serde(default)]
    pub completed: i64,
    /// Drains that hit `timeoutSeconds` with work still in flight.
    #[serde(default)]
    pub forced: i64,
    /// Duration of the most recent drain, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_millis: Option<i64>,
    /// Longest drain observed, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_millis: Option<i64>,
}

/// Observed state of a RolloutPolicy, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicyStatus {
    /// The `metadata.generation` of the policy this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Phase of the current or last rollout: Idle, Progressing, Paused, Completed, Failed or
    /// RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `pod-template-hash` of the revision that was fully rolled out before the current
    /// rollout (the rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,

    /// `pod-template-hash` of the revision being rolled out (equal to `stableRevision` when
    /// idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,

    /// Index into `spec.steps` of the step in effect (0-based); absent without steps or rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<i32>,

    /// When the current step started (pause durations are measured from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_start_time: Option<Time>,

    /// When the rollout last made progress (a pod admitted or a step completed); the progress
    /// deadline is measured from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,

    /// Desired replicas of the target (`spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// Pods of the update revision, admitted or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,

    /// Pods of the update revision whose readiness gate is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_replicas: Option<i32>,

    /// Ready pods of any revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Drain statistics of the target's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drains: Option<DrainStats>,

    /// Conditions of the policy (Accepted, Progressing, Paused, Available, Degraded, Injected,
    /// DrainBudgetSufficient, SidecarHealthy, and ProxyTakeover in Proxy mode), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// A human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl RolloutPolicyStatus {
    /// Steps done of `steps` (the length of `spec.steps`), as `kubectl argo rollouts` counts:
    /// the index of the step in effect, all of them once Completed; `None` without steps or
    /// before a rollout.
    pub fn steps_completed(&self, steps: usize) -> Option<usize> {
        match (
            steps,
            self.current_step.and_then(|i| usize::try_from(i).ok()),
        ) {
            (0, _) => None,
            (m, _) if self.phase == Some(Phase::Completed) => Some(m),
            (m, Some(i)) => Some(i.min(m)),
            (_, None) => None,
        }
    }

    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Insert or replace the condition of `condition.type_`. Like upstream `SetStatusCondition`,
    /// `lastTransitionTime` is kept from the existing condition unless `status` changed.
    /// Returns whether anything changed.
    pub fn set_condition(&mut self, mut condition: Condition) -> bool {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                if existing.status == condition.status {
                    condition.last_transition_time = existing.last_transition_time.clone();
                }
                let changed = *existing != condition;
                *existing = condition;
                changed
            }
            None => {
                self.conditions.push(condition);
                true
            }
        }
    }
}

/// A step's action, parsed from [`Step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepAction {
    /// Admit pods of the new revision up to this target.
    Admit(Admit),
    /// Hold admission, for the duration or until promoted.
    Pause(Option<Duration>),
}

/// How many new-revision pods an admit step allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// A number of pods (at least 1).
    Count(i32),
    /// A percentage (1..=100) of the new revision's desired replicas.
    Percent(i32),
}

/// An admit value the schema would have rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAdmit(pub IntOrString);

impl std::fmt::Display for InvalidAdmit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            IntOrString::Int(n) => write!(f, "invalid admit count {n}: must be at least 1"),
            IntOrString::String(s) => {
                write!(f, "invalid admit percentage {s:?}: must be 1% to 100%")
            }
        }
    }
}

impl std::error::Error for InvalidAdmit {}

impl Admit {
    /// Parse an admit value: an integer >= 1 or a string `1%`..`100%`.
    pub fn parse(value: &IntOrString) -> Result<Self, InvalidAdmit> {
        let invalid = || InvalidAdmit(value.clone());
        match value {
            IntOrString::Int(n) if *n >= 1 => Ok(Admit::Count(*n)),
            IntOrString::Int(_) => Err(invalid()),
            IntOrString::String(s) => {
                let digits = s.strip_suffix('%').ok_or_else(invalid)?;
                if digits.is_empty()
                    || digits.starts_with('0')
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(invalid());
                }
                match digits.parse::<i32>() {
                    Ok(p @ 1..=100) => Ok(Admit::Percent(p)),
                    _ => Err(invalid()),
                }
            }
        }
    }

    /// Number of new-revision pods this step admits when the new revision wants `desired`
    /// replicas. Percentages round **up** (so any percentage of a non-zero Deployment admits at
    /// least one pod, like `maxSurge`); counts above `desired` mean `desired`. Never negative.
    pub fn resolve(self, desired: i32) -> i32 {
        let desired = desired.max(0);
        match self {
            Admit::Count(n) => n.clamp(0, desired),
            Admit::Percent(p) => {
                let pods = (i64::from(desired) * i64::from(p.clamp(0, 100)) + 99) / 100;
                i32::try_from(pods).unwrap_or(desired).min(desired)
            }
        }
    }
}

impl Step {
    /// An admit step of `n` pods.
    pub fn admit_count(n: i32) -> Self {
        Self {
            admit: Some(IntOrString::Int(n)),
            pause: None,
        }
    }

    /// An admit step of `percent`% of the desired replicas.
    pub fn admit_percent(percent: i32) -> Self {
        Self {
            admit: Some(IntOrString::String(format!("{percent}%"))),
            pause: None,
        }
    }

    /// A pause step; `None` waits for promotion.
    pub fn pause(duration_seconds: Option<i32>) -> Self {
        Self {
            admit: None,
            pause: Some(PauseStep { duration_seconds }),
        }
    }

    /// The step's action, or `None` when the step is not exactly one of admit/pause or its
    /// admit value is invalid (which the CRD schema prevents).
    pub fn action(&self) -> Option<StepAction> {
        match (&self.admit, &self.pause) {
            (Some(admit), None) => Admit::parse(admit).ok().map(StepAction::Admit),
            (None, Some(pause)) => Some(StepAction::Pause(pause.duration_seconds.map(secs))),
            _ => None,
        }
    }
}

impl RolloutPolicySpec {
    /// A policy for the Deployment `name` with every other field defaulted.
    pub fn for_deployment(name: impl Into<String>) -> Self {
        Self {
            target_ref: TargetRef::deployment(name),
            steps: Vec::new(),
            readiness: ReadinessSpec::default(),
            drain: DrainSpec::default(),
            failure: FailureSpec::default(),
            paused: false,
        }
    }

    /// New-revision pods admitted once the steps up to and including `step` have been reached,
    /// for a new revision with `desired` replicas: the largest resolved admit value of those
    /// steps (so a count followed by a smaller-resolving percentage never shrinks the target),
    /// 0 before the first admit step. Without steps (or past the last one) everything is
    /// admitted: `desired`.
    pub fn admitted_at_step(&self, step: usize, desired: i32) -> i32 {
        if self.steps.is_empty() || step >= self.steps.len() {
            return desired.max(0);
        }
        self.steps[..=step]
            .iter()
            .filter_map(|s| match s.action() {
                Some(StepAction::Admit(admit)) => Some(admit.resolve(desired)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

fn secs(seconds: i32) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
