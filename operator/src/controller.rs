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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Future, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodCondition, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use quiesce_api::constants::{
    DRAINED_CONDITION, OPERATOR_FIELD_MANAGER, POD_TEMPLATE_HASH_LABEL, POLICY_FINALIZER,
    READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME, annotations,
};
use quiesce_api::{DrainMode, RolloutPolicy, RolloutPolicyStatus};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::error::{Error, Result, RollbackError};
use crate::metrics::{Metrics, PolicyGauges};
use crate::plan::{
    self, Action, AppPort, DrainedView, GateView, Observed, Plan, PodView, PolicyView,
    ServicePortView, ServiceView, SidecarView, TargetPort, TargetState, TargetView,
    status_write::StatusWrite,
};

pub mod cached;
mod drains;
pub mod owner_index;
pub mod pod_cache;
mod policies;
#[cfg(test)]
mod tests;

pub use cached::{CachedDeployment, CachedPod};
use drains::CountedDrains;
pub use drains::{DrainInbox, Taken, drain_report};
pub use pod_cache::PodCache;
pub use policies::{Undecodable, decode_event, policy_events};

/// Annotation of a ReplicaSet: the Deployment revision it belongs to.
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

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

/// The metadata of every Deployment-owned ReplicaSet (label `pod-template-hash`), without
/// `managedFields`: what the controller and the webhook map a pod to its Deployment with.
pub fn replicaset_events(
    client: Client,
) -> impl Stream<Item = Result<watcher::Event<PartialObjectMeta<ReplicaSet>>, watcher::Error>> + Send
{
    watcher(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client),
        watcher::Config::default().labels(POD_TEMPLATE_HASH_LABEL),
    )
    .default_backoff()
    .modify(|rs| rs.metadata.managed_fields = None)
}

/// Counts the objects and errors a watch delivers (`quiesce_operator_watch_events_total` and
/// `watch_errors_total{watch}`) and logs its errors: the Controller hands them on only at
/// debug level, and a watch that fails again and again leaves the caches behind the cluster.
fn counted<T, S: Stream<Item = Result<T, watcher::Error>>>(
    metrics: &Arc<Metrics>,
    watch: &'static str,
    stream: S,
) -> impl Stream<Item = S::Item> + use<T, S> {
    let metrics = metrics.clone();
    stream.inspect(move |item| match item {
        Ok(_) => metrics.watch_event(watch),
        Err(err) => watch_failed(&metrics, watch, err),
    })
}

/// Counts and logs one error of the leader's watch `watch` (retried with backoff).
fn watch_failed(metrics: &Metrics, watch: &'static str, err: &watcher::Error) {
    metrics.watch_error(watch);
    warn!(watch, error = %err, "watch failed; retrying");
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// Runs the controller until `shutdown` resolves (leadership lost or process stopping).
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    bindings: Option<crate::bindings::Settings>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Woken on every change of the caches the sidecar bindings are computed from.
    let changed = Arc::new(tokio::sync::Notify::new());
    let (deployments, deploy_writer) = reflector::store::<CachedDeployment>();
    let (replicasets, rs_writer) = reflector::store::<PartialObjectMeta<ReplicaSet>>();
    let (services, svc_writer) = reflector::store::<Service>();
    let deploy_stream = counted(
        &metrics,
        "deployments",
        watcher(
            Api::<CachedDeployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(deploy_writer)
        .touched_objects(),
    );
    let rs_stream = counted(
        &metrics,
        "replicasets",
        replicaset_events(client.clone())
            .reflect(rs_writer)
            .touched_objects(),
    );
    let (pods, pod_stream) = PodCache::watch(client.clone());
    let pod_stream = counted(&metrics, "pods", pod_stream);
    let svc_stream = counted(
        &metrics,
        "services",
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|svc| {
            // Only the selector and ports are read: keep the cache small.
            svc.managed_fields_mut().clear();
            svc.annotations_mut().clear();
            svc.status = None;
        })
        .reflect(svc_writer)
        .touched_objects(),
    );

    // Policies are decoded one by one: one that does not decode is reported, not a stall.
    let (policies, policy_writer) = reflector::store::<RolloutPolicy>();
    let (undecodable_tx, undecodable_rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(policies::report_undecodable(
        client.clone(),
        recorder.clone(),
        undecodable_rx,
    ));
    let policy_changed = changed.clone();
    let (pod_cache, policy_store, watch_metrics) =
        (pods.clone(), policies.clone(), metrics.clone());
    // The policy store's one waiter is the Controller itself: its listing is told apart here.
    let (policies_listed_tx, policies_listed) = tokio::sync::watch::channel(false);
    let policy_stream = policy_events(client.clone(), Some(undecodable_tx))
        .default_backoff()
        .reflect(policy_writer)
        .inspect(move |event| {
            use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
            match event {
                Ok(InitDone) => {
                    policies_listed_tx.send_replace(true);
                }
                Ok(InitApply(_) | Apply(_) | Delete(_)) => watch_metrics.watch_event("policies"),
                Ok(Init) => {}
                Err(err) => watch_failed(&watch_metrics, "policies", err),
            }
            // The store changes on Apply and Delete, and on InitDone for a whole (re)list.
            if matches!(event, Ok(InitDone | Apply(_) | Delete(_))) {
                let namespaces = pod_cache::policy_namespaces(&policy_store.state());
                let watched = pod_cache.watch_namespaces(&namespaces);
                watch_metrics.pod_watch_namespaces.set(watched as i64);
            }
            policy_changed.notify_one();
        })
        .applied_objects();
    let controller = Controller::for_stream(policy_stream, policies.clone())
        .with_config(ControllerConfig::default().concurrency(concurrency));
    let (p1, p2, p3, p4) = (
        policies.clone(),
        policies.clone(),
        policies.clone(),
        policies.clone(),
    );
    let rs_for_pods = replicasets.clone();
    let (retrigger, retriggered) = futures::channel::mpsc::unbounded();
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    {
        // The single waiter on the stores (see `Context::ready`).
        let (d, r, p, s) = (
            deployments.clone(),
            replicasets.clone(),
            pods.injected().clone(),
            services.clone(),
        );
        tokio::spawn(async move {
            if d.wait_until_ready().await.is_ok()
                && r.wait_until_ready().await.is_ok()
                && p.wait_until_ready().await.is_ok()
                && s.wait_until_ready().await.is_ok()
            {
                let _ = ready_tx.send(true);
            }
        });
    }
    let ctx = Arc::new(
        Context::new(
            client,
            recorder,
            metrics,
            policies,
            deployments,
            replicasets,
            pods,
            services,
            system_clock(),
        )
        .with_retrigger(retrigger)
        .with_readiness(ready_rx.clone()),
    );
    let binder = bindings.map(|settings| {
        tokio::spawn(
            crate::bindings::Bindings {
                client: ctx.client.clone(),
                settings,
                policies: ctx.policies.clone(),
                deployments: ctx.deployments.clone(),
                pods: ctx.pods.clone(),
                changed: changed.clone(),
                synced: ready_rx,
                policies_listed,
            }
            .run(),
        )
    });
    let (inbox, clock) = (ctx.drain_inbox.clone(), ctx.clock.clone());
    let (deploy_changed, pod_changed) = (changed.clone(), changed);
    controller
        .reconcile_on(retriggered)
        .watches_stream(deploy_stream, move |d: CachedDeployment| {
            deploy_changed.notify_one();
            policies_for(&p1, &d.namespace().unwrap_or_default(), &d.name_any())
        })
        .watches_stream(
            rs_stream,
            move |rs: PartialObjectMeta<ReplicaSet>| match deployment_of(&rs.metadata) {
                Some(name) => policies_for(&p2, &rs.namespace().unwrap_or_default(), &name),
                None => Vec::new(),
            },
        )
        .watches_stream(pod_stream, move |pod: CachedPod| {
            pod_changed.notify_one();
            pod_event(&pod, &p3, &rs_for_pods, &inbox, clock())
        })
        .watches_stream(svc_stream, move |svc: Service| service_event(&svc, &p4))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(policy = %obj, "reconciled"),
                Err(err) => debug!(error = %err, "reconcile failed"),
            }
        })
        .await;
    // Leadership ends: the bindings are the next leader's to keep.
    if let Some(binder) = binder {
        binder.abort();
    }
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
    warn!(policy = %policy.name_any(), namespace = ?policy.namespace(), error = %err, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(5))
}

/// Gate writes in flight at once, across all reconciles: each holds a connection to the
/// apiserver and its buffers, so the bound is the leader's, not each reconcile's (16 per
/// reconcile, with 16 reconciles, added up to 256 and 8–14 MiB of RSS).
const GATE_WRITES_IN_FLIGHT: usize = 16;

/// The plan's actions in the order they are to be carried out, as batches: consecutive gate
/// writes form one batch (carried out concurrently), every other action a batch of its own.
pub fn action_batches(actions: &[Action]) -> Vec<&[Action]> {
    actions
        .chunk_by(|a, b| matches!(a, Action::SetGate { .. }) && matches!(b, Action::SetGate { .. }))
        .collect()
}

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

/// One reconcile of one policy: finalizer handling around [`Context::apply`].
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
            info!(policy = %name, namespace = %ns, phase = ?plan.status.phase,
                step = ?plan.status.current_step, message = plan.status.message.as_deref().unwrap_or(""),
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
            info!(policy = %name, namespace = %ns, released, "policy deleted; its held pods released");
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
        let labels = vec![("namespace", ns.to_owned()), ("policy", name.to_owned())];
        let invalid = observed.new_drains.iter().filter(|d| d.invalid).count();
        if invalid > 0 {
            warn!(policy = %name, namespace = %ns, invalid, "drain reports not plausible; their numbers are ignored");
            self.metrics
                .invalid_drain_reports
                .get_or_create(&labels)
                .inc_by(invalid as u64);
        }
        for pod in &plan.gate_resets {
            warn!(policy = %name, namespace = %ns, pod = %pod, "readiness gate opened by someone else while held; reset");
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

    /// Builds the plan's input from the caches and the shell's memory.
    pub fn observe(&self, policy: &RolloutPolicy, deleting: bool) -> Observed {
        self.observe_counting(policy, deleting).0
    }

    /// Forgets that the drains of a pass were counted (its status write failed) and puts them
    /// back in the inbox, so the next pass counts them even if their pods are gone by then.
    fn uncount(&self, ns: &str, deployment: &str, counted: Vec<Taken>, now: Timestamp) {
        let mut memory = self.memory();
        for taken in counted {
            memory.drains.forget(&taken.uid);
            self.drain_inbox.put_back(ns, deployment, taken, now);
        }
    }

    /// [`Self::observe`], and the drains it counted (pod UID, name, report).
    fn observe_counting(&self, policy: &RolloutPolicy, deleting: bool) -> (Observed, Vec<Taken>) {
        let ns = policy.namespace().unwrap_or_default();
        let uid = policy.uid().unwrap_or_default();
        let mut memory = self.memory();
        let known: HashSet<String> = self
            .policies
            .state()
            .iter()
            .filter_map(|p| p.uid())
            .collect();
        memory.forget_policies(|u| u == uid || known.contains(u));
        let mine = memory.policy(&uid);
        let status = mine
            .pending
            .clone()
            .or_else(|| mine.status.clone())
            .or_else(|| policy.status.clone())
            .unwrap_or_default();
        let target_name = &policy.spec.target_ref.name;
        let rivals = self.policies.state_filter(|p| {
            p.spec.target_ref.name == *target_name
                && in_namespace(p, &ns)
                && p.metadata.uid != policy.metadata.uid
        });
        let winner = plan::conflict_winner(policy, rivals);
        let deployment = self
            .deployments
            .get(&ObjectRef::new(target_name).within(&ns));
        let (target, pods) = match (winner, deployment) {
            (Some(winner), _) => (TargetState::Conflict { winner }, Vec::new()),
            (None, None) => (TargetState::NotFound, Vec::new()),
            (None, Some(d)) => {
                let (view, pods) = self.target_view(&d);
                (TargetState::Found(view), pods)
            }
        };
        let services = if policy.spec.drain.mode == DrainMode::Proxy {
            self.services
                .state_filter(|s| in_namespace(s, &ns))
                .iter()
                .map(|s| service_view(s))
                .collect()
        } else {
            Vec::new()
        };
        let now = (self.clock)();
        let mut counted = Vec::new();
        let mut views = Vec::new();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        for pod in &pods {
            let mut view = pod_view(pod);
            let pod_uid = pod.uid().unwrap_or_default();
            let mine = memory.policy(&uid);
            overlay_gate(&mut view, mine.gates.entry(pod_uid.clone()));
            view.held_since = mine.held.get(&pod_uid).copied();
            if let Some(report) = drain_report(pod)
                && memory
                    .drains
                    .first_sight(&pod_uid, &ns, &pod.name_any(), now)
            {
                counted.push(Taken {
                    uid: pod_uid.clone(),
                    pod: pod.name_any(),
                    report,
                });
            }
            views.push(view);
        }
        if matches!(target, TargetState::Found(_)) {
            // Pods that reported and went away before this reconcile (see `pod_event`).
            for taken in self.drain_inbox.take(&ns, target_name) {
                if memory.drains.first_sight(&taken.uid, &ns, &taken.pod, now) {
                    counted.push(taken);
                }
            }
        }
        memory.drains.forget_gone(now, |ns, name, uid| {
            self.pods
                .get(ns, name)
                .is_some_and(|p| p.uid().as_deref() == Some(uid))
        });
        let mine = memory.policy(&uid);
        mine.gates.retain(|pod_uid, _| live.contains(pod_uid));
        mine.held.retain(|pod_uid, _| live.contains(pod_uid));
        let new_drains = counted.iter().map(|t| t.report).collect();
        let observed = Observed {
            policy: PolicyView {
                name: policy.name_any(),
                generation: policy.meta().generation,
                spec: policy.spec.clone(),
                status,
                promote: policy.annotations().get(annotations::PROMOTE).cloned(),
                abort: policy.annotations().contains_key(annotations::ABORT),
                deleting,
            },
            target,
            pods: views,
            new_drains,
            services,
        };
        (observed, counted)
    }

    fn target_view(&self, d: &CachedDeployment) -> (TargetView, Vec<Arc<CachedPod>>) {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.uid();
        let rs: Vec<Arc<PartialObjectMeta<ReplicaSet>>> = self.replicasets.state_filter(|rs| {
            in_namespace(rs, &ns)
                && rs
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
        });
        let hash =
            |rs: &PartialObjectMeta<ReplicaSet>| rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
        let update_revision = rs
            .iter()
            .max_by_key(|rs| {
                rs.annotations()
                    .get(REVISION_ANNOTATION)
                    .and_then(|r| r.parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .and_then(|rs| hash(rs));
        let rs_names: Vec<String> = rs.iter().map(|rs| rs.name_any()).collect();
        let pods = self.pods.owned_by(&ns, &rs_names);
        let spec = d.spec.as_ref();
        let template = spec.map(|s| &s.template);
        let view = TargetView {
            name: d.name_any(),
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            update_revision,
            revisions: rs.iter().filter_map(|rs| hash(rs)).collect(),
            termination_grace_period_seconds: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30),
            template_labels: template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            app_ports: template
                .and_then(|t| t.spec.as_ref())
                .map(|s| s.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .map(|p| AppPort {
                    name: p.name.clone(),
                    number: p.container_port,
                })
                .collect(),
        };
        (view, pods)
    }

    async fn execute(
        &self,
        policy: &RolloutPolicy,
        o: &Observed,
        action: &Action,
        now: Timestamp,
    ) -> Result<()> {
        let ns = policy.namespace().unwrap_or_default();
        match action {
            Action::SetGate {
                pod,
                ready,
                reason,
                message,
            } => {
                let Some(current) = self.pods.get(&ns, pod) else {
                    return Ok(());
                };
                let previous = o
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.gate.clone());
                let transition = match &previous {
                    Some(g) if g.ready == *ready => gate_transition_time(&current).unwrap_or(now),
                    _ => now,
                };
                let status = if *ready { "True" } else { "False" };
                let patch = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "uid": current.uid()},
                    "status": {"conditions": [{
                        "type": READY_GATE_CONDITION,
                        "status": status,
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": now.to_string(),
                        "lastTransitionTime": transition.to_string(),
                    }]}
                });
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let _in_flight = self
                    .gate_writes
                    .acquire()
                    .await
                    .expect("the gate write semaphore is never closed");
                api.patch_status(
                    pod,
                    &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
                if *ready {
                    self.metrics
                        .admissions
                        .get_or_create(&vec![
                            ("namespace", ns.clone()),
                            ("policy", policy.name_any()),
                            ("reason", (*reason).to_owned()),
                        ])
                        .inc();
                    // Debug, one line per pod (as the webhook's injections): the admission is
                    // in the pod's gate condition and in `admissions_total`.
                    debug!(pod = %pod, namespace = %ns, reason, "pod admitted");
                }
                let pod_uid = current.uid().unwrap_or_default();
                let mut memory = self.memory();
                let mine = memory.policy(&policy.uid().unwrap_or_default());
                if *ready {
                    mine.held.remove(&pod_uid);
                } else {
                    mine.held.insert(pod_uid.clone(), now);
                }
                mine.gates.insert(
                    pod_uid,
                    GateView {
                        ready: *ready,
                        reason: (*reason).to_owned(),
                        last_probe: Some(now),
                    },
                );
            }
            Action::Rollback { revision } => self.rollback(policy, revision).await?,
            Action::ClearAnnotation(key) => {
                let api: Api<RolloutPolicy> = Api::namespaced(self.client.clone(), &ns);
                let patch = json!({"metadata": {"annotations": {*key: null}}});
                api.patch(
                    &policy.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            Action::Event {
                warning,
                reason,
                note,
                action,
            } => {
                let event = Event {
                    type_: if *warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: (*reason).to_owned(),
                    note: Some(truncate(note, 1000)),
                    action: action.clone(),
                    secondary: None,
                };
                if let Err(err) = self.recorder.publish(&event, &policy.object_ref(&())).await {
                    // Events are best effort: never fail a reconcile over one.
                    warn!(error = %err, reason, "publishing event failed");
                }
            }
        }
        Ok(())
    }

    /// Restores the pod template of the stable revision's ReplicaSet on the target, like
    /// `kubectl rollout undo`.
    async fn rollback(&self, policy: &RolloutPolicy, revision: &str) -> Result<()> {
        let ns = policy.namespace().unwrap_or_default();
        let target = &policy.spec.target_ref.name;
        let deployment = self
            .deployments
            .get(&ObjectRef::new(target).within(&ns))
            .ok_or_else(|| RollbackError::TargetGone(target.clone()))?;
        let rs = self
            .replicasets
            .find(|rs| {
                in_namespace(rs, &ns)
                    && rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str)
                        == Some(revision)
                    && rs
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == deployment.uid().as_ref())
            })
            .ok_or_else(|| RollbackError::NoReplicaSet(revision.to_owned()))?;
        let rs = Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
            .get(&rs.name_any())
            .await?;
        let mut template = rs
            .spec
            .and_then(|s| s.template)
            .ok_or_else(|| RollbackError::NoTemplate(revision.to_owned()))?;
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": deployment.uid()},
            {"op": "replace", "path": "/spec/template", "value": template},
        ]))?;
        Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .patch(target, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
        warn!(deployment = %target, namespace = %ns, revision, "rolled back to the stable revision");
        Ok(())
    }

    async fn patch_status(
        &self,
        policy: &RolloutPolicy,
        plan: &Plan,
        now: Timestamp,
    ) -> Result<()> {
        let api: Api<RolloutPolicy> =
            Api::namespaced(self.client.clone(), &policy.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": "quiesce.dev/v1alpha1",
            "kind": "RolloutPolicy",
            "metadata": {"name": policy.name_any(), "uid": policy.uid()},
            "status": plan.status,
        });
        api.patch_status(
            &policy.name_any(),
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        let mut memory = self.memory();
        let mine = memory.policy(&policy.uid().unwrap_or_default());
        mine.status = Some(plan.status.clone());
        mine.written_at = Some(now);
        mine.pending = None;
        Ok(())
    }
}

/// Lays the gate the shell wrote (`written`, if any) over the cache's: until the cache shows
/// it, the pod's gate is what was written. A held gate the cache shows open is left to the
/// plan to judge: someone else opened it after the write (or, right after a reset, the cache
/// still shows the gate from before; judged again, it is reset again).
fn overlay_gate(view: &mut PodView, written: Entry<'_, String, GateView>) {
    let Entry::Occupied(written) = written else {
        return;
    };
    let shown = view.gate.as_ref();
    let caught_up =
        shown.is_some_and(|g| g.ready == written.get().ready && g.reason == written.get().reason);
    let opened_since = !written.get().ready && shown.is_some_and(|g| g.ready);
    if caught_up || opened_since {
        written.remove();
    } else {
        view.gate = Some(written.get().clone());
    }
}

/// The condition `type_` of `pod`, if present.
pub fn pod_condition<'a>(pod: &'a CachedPod, type_: &str) -> Option<&'a PodCondition> {
    condition(pod.status.as_ref()?.conditions.as_deref(), type_)
}

/// The condition `type_` among a pod's `conditions`, if present.
pub fn condition<'a>(
    conditions: Option<&'a [PodCondition]>,
    type_: &str,
) -> Option<&'a PodCondition> {
    conditions?.iter().find(|c| c.type_ == type_)
}

fn gate_transition_time(pod: &CachedPod) -> Option<Timestamp> {
    pod_condition(pod, READY_GATE_CONDITION)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// The quiesce sidecar's status on a pod: the native sidecar's entry in
/// `initContainerStatuses` (or in `containerStatuses`, for a sidecar injected as a container).
pub fn sidecar_view(pod: &CachedPod) -> Option<SidecarView> {
    let status = pod.status.as_ref()?;
    let c = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)?;
    let last_termination = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| match t.message.as_deref().and_then(last_line) {
            Some(m) => m.to_owned(),
            _ => format!(
                "{}, exit code {}",
                t.reason.as_deref().unwrap_or("Terminated"),
                t.exit_code
            ),
        });
    Some(SidecarView {
        restarts: c.restart_count,
        crash_looping: c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff"),
        last_termination,
    })
}

/// The last non-empty line of a termination message: the sidecar's termination message policy
/// is `FallbackToLogsOnError`, so after a crash it is the tail of its log, which ends with the
/// error.
fn last_line(message: &str) -> Option<&str> {
    message.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The plan's view of a pod.
pub fn pod_view(pod: &CachedPod) -> PodView {
    let containers_ready_since = pod_condition(pod, "ContainersReady")
        .filter(|c| c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        });
    let gate = pod_condition(pod, READY_GATE_CONDITION).map(|c| GateView {
        ready: c.status == "True",
        reason: c.reason.clone().unwrap_or_default(),
        last_probe: c.last_probe_time.as_ref().map(|t| t.0),
    });
    let drained = pod_condition(pod, DRAINED_CONDITION).map(|c| DrainedView {
        done: c.status == "True",
    });
    let spec = pod.spec.as_ref();
    let has_gate = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READY_GATE_CONDITION));
    let injected = spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_CONTAINER_NAME)
    });
    let status = pod.status.as_ref();
    let sidecar = sidecar_view(pod);
    let restarts = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name != SIDECAR_CONTAINER_NAME)
        .map(|c| c.restart_count)
        .chain(sidecar.as_ref().map(|s| s.restarts))
        .max()
        .unwrap_or(0);
    PodView {
        name: pod.name_any(),
        revision: pod.labels().get(POD_TEMPLATE_HASH_LABEL).cloned(),
        containers_ready_since,
        gate,
        has_gate,
        injected,
        drained,
        restarts,
        sidecar,
        terminating: pod.meta().deletion_timestamp.is_some(),
        held_since: None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
