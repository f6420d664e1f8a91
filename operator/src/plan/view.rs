//! What [`plan`](super::plan) reads: the shell's observation of one policy, its target and pods.

use super::*;

/// Everything [`plan`] looks at for one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The policy.
    pub policy: PolicyView,
    /// What became of `spec.targetRef`.
    pub target: TargetState,
    /// Pods of the target (every revision, terminating ones included).
    pub pods: Vec<PodView>,
    /// Drains reported since the last call (the shell counts each pod's report once).
    pub new_drains: Vec<DrainReport>,
    /// Services of the policy's namespace (filled only with `spec.drain.mode: Proxy`).
    pub services: Vec<ServiceView>,
}

/// The policy as the plan needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec`.
    pub spec: RolloutPolicySpec,
    /// `status` as last written (default when absent).
    pub status: RolloutPolicyStatus,
    /// Value of the promote annotation, if set.
    pub promote: Option<String>,
    /// Whether the abort annotation is set.
    pub abort: bool,
    /// Whether the policy is being deleted.
    pub deleting: bool,
}

/// The target of a policy.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetState {
    /// The Deployment exists and this policy governs it.
    Found(TargetView),
    /// No Deployment of that name.
    NotFound,
    /// An older policy already targets the Deployment.
    Conflict {
        /// Name of the policy that governs the Deployment.
        winner: String,
    },
}

/// The target Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    /// Name.
    pub name: String,
    /// `spec.replicas` (desired replicas).
    pub replicas: i32,
    /// `pod-template-hash` of the newest ReplicaSet (the highest `deployment.kubernetes.io/revision`).
    pub update_revision: Option<String>,
    /// `pod-template-hash` of every ReplicaSet of the Deployment.
    pub revisions: Vec<String>,
    /// `spec.template.spec.terminationGracePeriodSeconds` (Kubernetes' default: 30).
    pub termination_grace_period_seconds: i64,
    /// `spec.template.metadata.labels`: what a Service selector must match.
    pub template_labels: BTreeMap<String, String>,
    /// The TCP ports of the template's app containers (`spec.containers[].ports`).
    pub app_ports: Vec<AppPort>,
}

/// A TCP container port of the target's app containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPort {
    /// `name`, if any: only named ports can be taken over by the drain proxy.
    pub name: Option<String>,
    /// `containerPort`.
    pub number: i32,
}

/// A Service, as the proxy-takeover check needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// `spec.selector` (empty: the Service selects no pods by itself).
    pub selector: BTreeMap<String, String>,
    /// The TCP ports (`spec.ports`).
    pub ports: Vec<ServicePortView>,
}

/// One TCP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortView {
    /// `port`.
    pub port: i32,
    /// `targetPort` (absent means the same number as `port`).
    pub target: TargetPort,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A container port number: resolved once for all pods, so it goes straight to the app.
    Number(i32),
    /// A container port name: resolved per pod, so it reaches the sidecar's proxy listener.
    Name(String),
}

/// The `ProxyTakeover` condition: `(status, reason, message)`.
pub type ConditionDecision = (bool, &'static str, String);

/// One pod of the target.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// `pod-template-hash` label.
    pub revision: Option<String>,
    /// Since when the `ContainersReady` condition is `True`; `None` while not ready.
    pub containers_ready_since: Option<Timestamp>,
    /// The readiness-gate condition, if set.
    pub gate: Option<GateView>,
    /// Whether `spec.readinessGates` lists the gate (the webhook injected the pod).
    pub has_gate: bool,
    /// Whether the pod runs the quiesce sidecar.
    pub injected: bool,
    /// The drained condition reported by the sidecar.
    pub drained: Option<DrainedView>,
    /// Highest restart count of the pod's app containers and its quiesce sidecar.
    pub restarts: i32,
    /// The quiesce sidecar's container status, when the pod runs it and the kubelet reported.
    pub sidecar: Option<SidecarView>,
    /// `deletionTimestamp` is set.
    pub terminating: bool,
    /// When the operator last wrote this pod's gate `False` (its last heartbeat), if it has not
    /// opened the gate since: the operator holds the pod. From the shell's memory, so `None`
    /// after an operator restart.
    pub held_since: Option<Timestamp>,
}

/// The status of a pod's quiesce sidecar (`status.initContainerStatuses[quiesce-sidecar]`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SidecarView {
    /// `restartCount`.
    pub restarts: i32,
    /// `state.waiting.reason == CrashLoopBackOff`.
    pub crash_looping: bool,
    /// `lastState.terminated`: its message, else its reason and exit code.
    pub last_termination: Option<String>,
}

/// The pod's `quiesce.dev/ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateView {
    /// `status == "True"`.
    pub ready: bool,
    /// `reason`.
    pub reason: String,
    /// `lastProbeTime`: the operator's heartbeat on held pods.
    pub last_probe: Option<Timestamp>,
}

/// The pod's `quiesce.dev/drained` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainedView {
    /// `status == "True"`: the drain finished (completely or forced).
    pub done: bool,
}

/// One finished drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// The drain timeout expired with work in flight.
    pub forced: bool,
    /// How long it took, when reported.
    pub duration_millis: Option<i64>,
    /// The report was not plausible (unparsable JSON, or a number out of bounds): the drain
    /// counts, its numbers do not.
    pub invalid: bool,
}

/// The live pods of `pods` that run without the quiesce sidecar (not drained when they stop).
pub fn pods_without_sidecar(pods: &[PodView]) -> Vec<&str> {
    pods.iter()
        .filter(|p| !p.terminating && !p.injected)
        .map(|p| p.name.as_str())
        .collect()
}
