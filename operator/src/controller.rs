//! The I/O shell around [`crate::plan`]: watches RolloutPolicies, their target Deployments,
//! the Deployments' ReplicaSets (metadata only) and the pods quiesce manages (see
//! [`PodCache`]), turns the caches into an [`Observed`], and applies the [`Plan`]:
//! pod-status patches for the readiness gate (server-side apply, fixed field manager, UID
//! precondition), the rollback patch, annotation removal, Events, and one status apply per
//! change. It requeues only when the plan has a timer due.
//!
//! Reads come from the caches, which lag behind the operator's own writes; so the shell keeps
//! what it last wrote (policy status, pod gates) and lays it over the cache until the cache
//! catches up. Without that, a reconcile triggered right after an admission could count the
//! admitted pod as held and admit one pod too many.
//!
//! This file holds what a reconcile shares ([`Context`], the shell's memory), the reconcile
//! itself ([`reconcile`], [`Context::apply`]) and the mappers from a watch event to the
//! policies it concerns. The rest, one concern a file:
//! - `watches`: the watch streams, the caches they fill and the kube `Controller` ([`run`]);
//! - `observe`: the caches and the memory turned into an [`Observed`] ([`Context::observe`]),
//!   the views of a pod ([`pod_view`]);
//! - `execute`: the plan's actions and the status apply carried out against the apiserver;
//! - [`cached`], [`pod_cache`], [`owner_index`]: what the caches keep and how pods are found;
//! - `drains`: drain reports, counted once; `policies`: the policy watch that survives a
//!   policy it cannot decode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use quiesce_api::constants::{POD_TEMPLATE_HASH_LABEL, POLICY_FINALIZER};
use quiesce_api::{DrainMode, RolloutPolicy, RolloutPolicyStatus};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::metrics::{Metrics, PolicyGauges};
use crate::plan::{
    self, Action, GateView, Observed, Plan, ServicePortView, ServiceView, TargetPort,
    status_write::StatusWrite,
};

pub mod cached;
mod drains;
mod execute;
mod observe;
pub mod owner_index;
pub mod pod_cache;
mod policies;
#[cfg(test)]
mod tests;
mod watches;

pub use cached::{CachedDeployment, CachedPod};
use drains::CountedDrains;
pub use drains::{DrainInbox, Taken, drain_report};
use execute::GATE_WRITES_IN_FLIGHT;
pub use execute::action_batches;
pub use observe::{condition, pod_condition, pod_view, sidecar_view};
pub use pod_cache::PodCache;
pub use policies::{Undecodable, Undecodables, decode_event, policy_events};
pub(crate) use watches::watch_failed;
pub use watches::{replicaset_events, run};

/// A clock, injectable for tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on policies.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Cache of RolloutPolicies.
    pub policies: Store<RolloutPolicy>,
    /// Cache of Deployments.
    pub deployments: Store<CachedDeployment>,
    /// Cache of ReplicaSet metadata.
    pub replicasets: Store<PartialObjectMeta<ReplicaSet>>,
    /// Cache of the pods quiesce manages (see [`PodCache`]).
    pub pods: PodCache,
    /// Cache of Services (metadata and spec): which ports the drain proxy can take over.
    pub services: Store<Service>,
    /// Current time.
    pub clock: Clock,
    /// Drain reports recorded by the pod watch (see [`pod_event`]).
    pub drain_inbox: Arc<DrainInbox>,
    /// Gate writes in flight across all reconciles ([`GATE_WRITES_IN_FLIGHT`]).
    gate_writes: Arc<tokio::sync::Semaphore>,
    memory: Mutex<Memory>,
    /// `true` once every cache is synced. One task waits on the stores and flips this:
    /// `Store::wait_until_ready` wakes only one of several concurrent waiters (its oneshot keeps
    /// the last waker), so reconciles must not call it themselves.
    ready: tokio::sync::watch::Receiver<bool>,
    /// Requeues other policies (the policy that wins a conflict once the winner is deleted).
    retrigger: Option<futures::channel::mpsc::UnboundedSender<ObjectRef<RolloutPolicy>>>,
}

/// What the shell wrote and the caches may not show yet.
#[derive(Default)]
struct Memory {
    /// Policy UID → what that policy's passes wrote. Keyed per policy so that one policy's
    /// pass prunes only its own entries (pruning another's pending gate writes would let that
    /// policy admit one pod too many); a policy's entry goes with the policy.
    policies: HashMap<String, PolicyMemory>,
    /// Pod UIDs whose drain report was counted (pruned by [`CountedDrains::forget_gone`]).
    drains: CountedDrains,
}

/// What the shell wrote for one policy.
#[derive(Default)]
struct PolicyMemory {
    /// Last status written.
    status: Option<RolloutPolicyStatus>,
    /// When this process last wrote it.
    written_at: Option<Timestamp>,
    /// A newer status whose write waits (only counts changed, [`plan::status_write`]).
    pending: Option<RolloutPolicyStatus>,
    /// Pod UID → gate written, until the cache shows it.
    gates: HashMap<String, GateView>,
    /// Pod UID → when its gate was last written `False`, while not opened since: the pods this
    /// operator holds (a gate found `True` on one was opened by someone else, see
    /// [`plan::foreign_opened`]).
    held: HashMap<String, Timestamp>,
}

impl Memory {
    /// The entry of the policy with UID `uid`.
    fn policy(&mut self, uid: &str) -> &mut PolicyMemory {
        self.policies.entry(uid.to_owned()).or_default()
    }

    /// Forgets the policies whose UID is not `present` any more (deleted without a final pass
    /// of this process: another leader ran it, or the finalizer was removed by hand).
    fn forget_policies(&mut self, present: impl Fn(&str) -> bool) {
        self.policies.retain(|uid, _| present(uid));
    }
}

impl Context {
    /// A context over the given caches.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        policies: Store<RolloutPolicy>,
        deployments: Store<CachedDeployment>,
        replicasets: Store<PartialObjectMeta<ReplicaSet>>,
        pods: PodCache,
        services: Store<Service>,
        clock: Clock,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            policies,
            deployments,
            replicasets,
            pods,
            services,
            clock,
            drain_inbox: Arc::default(),
            gate_writes: Arc::new(tokio::sync::Semaphore::new(GATE_WRITES_IN_FLIGHT)),
            memory: Mutex::default(),
            ready: tokio::sync::watch::channel(true).1,
            retrigger: None,
        }
    }

    /// Reconciles wait until `ready` is `true` (the caches are synced).
    pub fn with_readiness(mut self, ready: tokio::sync::watch::Receiver<bool>) -> Self {
        self.ready = ready;
        self
    }

    /// Sends the policies to reconcile again after a policy's deletion to `tx`.
    pub fn with_retrigger(
        mut self,
        tx: futures::channel::mpsc::UnboundedSender<ObjectRef<RolloutPolicy>>,
    ) -> Self {
        self.retrigger = Some(tx);
        self
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().expect("controller memory lock")
    }
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// Whether `obj` lives in `namespace`. Without `ResourceExt::namespace`, which clones the name:
/// the pod watch's mapper and the webhook run this over every cached policy for every event.
pub fn in_namespace(obj: &impl Resource, namespace: &str) -> bool {
    obj.meta().namespace.as_deref() == Some(namespace)
}

/// Policies in `namespace` that target the Deployment `name`.
pub fn policies_for(
    store: &Store<RolloutPolicy>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<RolloutPolicy>> {
    store
        .state_filter(|p| p.spec.target_ref.name == name && in_namespace(p, namespace))
        .iter()
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The pod watch's mapper: the policies to reconcile for a touched pod (created, changed or
/// deleted). A finished drain report on the pod is recorded in `inbox` on the way, so it is
/// counted even if the pod is gone before the reconcile looks.
pub fn pod_event(
    pod: &CachedPod,
    policies: &Store<RolloutPolicy>,
    replicasets: &Store<PartialObjectMeta<ReplicaSet>>,
    inbox: &DrainInbox,
    now: Timestamp,
) -> Vec<ObjectRef<RolloutPolicy>> {
    let Some(deployment) = pod_deployment(pod, replicasets) else {
        return Vec::new();
    };
    let refs = policies_for(policies, &pod.namespace().unwrap_or_default(), &deployment);
    if !refs.is_empty() {
        inbox.record(pod, &deployment, now);
    }
    refs
}

/// The Service watch's mapper: every `drain.mode: Proxy` policy in the Service's namespace.
/// All of them, not only those whose pods the Service selects now: a Service that stopped
/// selecting a target (or was deleted) must drop out of that policy's `ProxyTakeover` too.
pub fn service_event(
    svc: &Service,
    policies: &Store<RolloutPolicy>,
) -> Vec<ObjectRef<RolloutPolicy>> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    policies
        .state_filter(|p| p.spec.drain.mode == DrainMode::Proxy && in_namespace(p, ns))
        .iter()
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The plan's view of a Service: its selector and TCP ports.
pub fn service_view(svc: &Service) -> ServiceView {
    let spec = svc.spec.as_ref();
    ServiceView {
        name: svc.name_any(),
        selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
        ports: spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| ServicePortView {
                port: p.port,
                target: match &p.target_port {
                    None => TargetPort::Number(p.port),
                    Some(IntOrString::Int(n)) => TargetPort::Number(*n),
                    Some(IntOrString::String(name)) => match name.parse() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(name.clone()),
                    },
                },
            })
            .collect(),
    }
}

/// The Deployment owning a ReplicaSet.
pub fn deployment_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    owner_index::controller_owner(meta, "Deployment")
}

/// The Deployment a pod belongs to: its ReplicaSet owner's owner (from the cache), or by the
/// Deployment controller's naming rule `<deployment>-<pod-template-hash>`. Reads only the
/// pod's metadata (the webhook's pod is a full one, the cache's a [`CachedPod`]).
pub fn pod_deployment(
    pod: &impl Resource,
    replicasets: &Store<PartialObjectMeta<ReplicaSet>>,
) -> Option<String> {
    let rs = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let ns = pod.namespace().unwrap_or_default();
    if let Some(meta) = replicasets.get(&ObjectRef::new(&rs.name).within(&ns)) {
        return deployment_of(&meta.metadata);
    }
    let hash = pod.labels().get(POD_TEMPLATE_HASH_LABEL)?;
    rs.name.strip_suffix(&format!("-{hash}")).map(str::to_owned)
}

fn error_policy(policy: Arc<RolloutPolicy>, err: &Error, _ctx: Arc<Context>) -> Requeue {
    let (name, ns) = (policy.name_any(), policy.namespace().unwrap_or_default());
    if err.is_stale_cache() {
        debug!(policy = %name, namespace = %ns, error = %err, "cache behind the last write; retrying");
        return Requeue::requeue(STALE_CACHE_RETRY);
    }
    warn!(policy = %name, namespace = %ns, error = %err, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(5))
}

/// A pass that failed on a cache behind the operator's own write runs again this soon: the
/// watch delivers that write within milliseconds.
const STALE_CACHE_RETRY: Duration = Duration::from_millis(500);

/// The finalizer helper's outcome as the reconcile's. Removing the finalizer of a policy that
/// is already gone (deleted with its namespace, whose deletion does not wait for the patch) is
/// the end of its cleanup, not an error to log and retry.
pub fn gone_is_done(
    outcome: std::result::Result<Requeue, kube::runtime::finalizer::Error<Error>>,
) -> Result<Requeue> {
    use kube::runtime::finalizer::Error as F;
    match outcome {
        Err(F::RemoveFinalizer(kube::Error::Api(status))) if status.is_not_found() => {
            Ok(Requeue::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    }
}

/// One reconcile of one policy: finalizer handling around [`Context::apply`]. Its span names the
/// policy, so the lines logged inside do not repeat it.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    policy = %policy.name_any(),
    namespace = %policy.namespace().unwrap_or_default(),
))]
pub async fn reconcile(policy: Arc<RolloutPolicy>, ctx: Arc<Context>) -> Result<Requeue> {
    let _timer = ctx.metrics.reconcile_timer();
    // The triggers are polled while this waits; a closed channel means shutdown.
    let mut ready = ctx.ready.clone();
    if ready.wait_for(|r| *r).await.is_err() {
        return Ok(Requeue::await_change());
    }
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let result = if ctx.pods.listed(&ns).await {
        let outcome = finalizer(&api, POLICY_FINALIZER, policy, |event| async {
            match event {
                Finalizer::Apply(p) => ctx.apply(&p, false).await,
                Finalizer::Cleanup(p) => ctx.apply(&p, true).await,
            }
        })
        .await;
        gone_is_done(outcome)
    } else {
        Err(Error::PodsNotListed(ns))
    };
    ctx.metrics
        .reconciled(result.as_ref().err().map(Error::metric_label));
    result
}

impl Context {
    /// Observes, plans and applies the plan for one policy.
    pub async fn apply(&self, policy: &RolloutPolicy, deleting: bool) -> Result<Requeue> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let decision = std::time::Instant::now();
        let (observed, counted) = self.observe_counting(policy, deleting);
        let now = (self.clock)();
        let plan = plan::plan(&observed, now);
        self.metrics
            .reconcile_decision
            .observe(decision.elapsed().as_secs_f64());
        // The status goes first: whoever reads the status after the pods never sees more pods
        // admitted than the recorded step allows. A failed gate write is redone next time.
        let write = if deleting {
            StatusWrite::Unchanged
        } else {
            self.status_write(policy, &plan.status, now)
        };
        let written = async {
            if write == StatusWrite::Now {
                self.patch_status(policy, &plan, now).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = written {
            // The drains counted in this pass are not recorded: count them next time.
            self.uncount(&ns, &policy.spec.target_ref.name, counted, now);
            return Err(err);
        }
        if !deleting && plan.status.message != observed.policy.status.message {
            info!(phase = ?plan.status.phase, step = ?plan.status.current_step, message = plan.status.message.as_deref().unwrap_or(""),
                "policy status");
        }
        for d in &observed.new_drains {
            // An implausible report counts as a drain without its numbers.
            let seconds = d
                .duration_millis
                .filter(|_| !d.invalid)
                .map(|ms| ms as f64 / 1000.0);
            self.metrics.drained(&ns, &name, d.forced, seconds);
        }
        for batch in action_batches(&plan.actions) {
            // Gate writes of different pods are independent: they wait for the slowest write,
            // not for the sum of them (a loaded apiserver answers each in 10–500 ms).
            let writes = batch
                .iter()
                .map(|action| self.execute(policy, &observed, action, now));
            futures::future::join_all(writes)
                .await
                .into_iter()
                .collect::<Result<Vec<()>>>()?;
        }
        self.count_distrusted(&ns, &name, &observed, &plan);
        if deleting {
            let released = plan.actions.iter().filter_map(Action::admitted_pod).count();
            info!(released, "policy deleted; its held pods released");
            // The finalizer goes next: nothing of this policy is read again.
            self.memory()
                .policies
                .remove(&policy.uid().unwrap_or_default());
            self.metrics.set_policy(&ns, &name, None);
            self.retrigger_siblings(policy);
            return Ok(Requeue::await_change());
        }
        let without_sidecar = crate::plan::pods_without_sidecar(&observed.pods).len();
        let gauges = PolicyGauges::new(&plan.status, policy.spec.steps.len(), without_sidecar);
        self.metrics.set_policy(&ns, &name, Some(&gauges));
        let write_after = match write {
            StatusWrite::After(after) => Some(after),
            StatusWrite::Now | StatusWrite::Unchanged => None,
        };
        Ok(
            match plan.requeue_after.into_iter().chain(write_after).min() {
                Some(after) => Requeue::requeue(after + Duration::from_millis(50)),
                None => Requeue::await_change(),
            },
        )
    }

    /// Whether and when the planned status goes to the apiserver
    /// ([`plan::status_write`]); a deferred one is what the next pass plans from.
    fn status_write(
        &self,
        policy: &RolloutPolicy,
        planned: &RolloutPolicyStatus,
        now: Timestamp,
    ) -> StatusWrite {
        let mut memory = self.memory();
        let mine = memory.policy(&policy.uid().unwrap_or_default());
        let written = mine
            .status
            .clone()
            .or_else(|| policy.status.clone())
            .unwrap_or_default();
        let write = plan::status_write::status_write(&written, planned, mine.written_at, now);
        mine.pending = matches!(write, StatusWrite::After(_)).then(|| planned.clone());
        write
    }

    /// Counts what the plan would not trust: invalid drain reports and gates someone else
    /// opened on a held pod (reset by the plan's actions, just applied).
    fn count_distrusted(&self, ns: &str, name: &str, observed: &Observed, plan: &Plan) {
        let labels = crate::metrics::Policy::new(ns, name);
        let invalid = observed.new_drains.iter().filter(|d| d.invalid).count();
        if invalid > 0 {
            warn!(
                invalid,
                "drain reports not plausible; their numbers are ignored"
            );
            self.metrics
                .invalid_drain_reports
                .get_or_create(&labels)
                .inc_by(invalid as u64);
        }
        for pod in &plan.gate_resets {
            warn!(pod = %pod, "readiness gate opened by someone else while held; reset");
            self.metrics.gate_resets.get_or_create(&labels).inc();
        }
    }

    /// Other policies for the same Deployment: one of them governs it now.
    fn retrigger_siblings(&self, policy: &RolloutPolicy) {
        let Some(tx) = &self.retrigger else { return };
        let ns = policy.namespace().unwrap_or_default();
        for sibling in policies_for(&self.policies, &ns, &policy.spec.target_ref.name) {
            if sibling.name != policy.name_any() {
                let _ = tx.unbounded_send(sibling);
            }
        }
    }
}
