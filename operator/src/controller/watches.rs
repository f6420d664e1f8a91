//! The leader's watches and the kube `Controller` over them ([`run`]): the streams that fill
//! the term's caches (Deployments, pods, Services) and its subscriptions to the shared ones
//! (policies, ReplicaSet metadata: [`crate::shared_watch`]), which policies an event on each
//! requeues, the one task that marks the caches synced, and the count and log line of every
//! watch event and error ([`counted`]).

use std::sync::Arc;

use futures::{Future, Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::POD_TEMPLATE_HASH_LABEL;
use tracing::{debug, warn};

use super::{
    CachedDeployment, CachedPod, Context, PodCache, deployment_of, error_policy, pod_cache,
    pod_event, policies, policies_for, reconcile, service_event, system_clock,
};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::shared_watch::{SharedCaches, SharedWatch, Touched};

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

/// Counts and logs one error of the watch `watch` (retried with backoff).
pub(crate) fn watch_failed(metrics: &Metrics, watch: &'static str, err: &watcher::Error) {
    metrics.watch_error(watch);
    warn!(watch, error = %err, "watch failed; retrying");
}

/// Runs the controller until `shutdown` resolves (leadership lost or process stopping). The
/// policy and ReplicaSet caches are `shared` with the webhook and outlive the term; the
/// Deployment, pod and Service watches are the term's own.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    shared: SharedCaches,
    bindings: Option<crate::bindings::Settings>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Woken on every change of the caches the sidecar bindings are computed from.
    let changed = Arc::new(tokio::sync::Notify::new());
    let (deployments, deploy_writer) = reflector::store::<CachedDeployment>();
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

    let (policies, replicasets) = (shared.policies.store(), shared.replicasets.store());
    // Subscribed before the first reconcile of everything, so that nothing falls in between.
    let (lagged_tx, lagged) = futures::channel::mpsc::unbounded();
    let policy_stream = shared
        .policies
        .subscribe("policies", lagged_tx.clone())
        .filter_map(|touched| {
            futures::future::ready(match touched {
                Touched::Applied(policy) => Some(policy),
                Touched::Deleted(_) => None,
            })
        });
    let rs_stream = shared
        .replicasets
        .subscribe("replicasets", lagged_tx)
        .map(Touched::object);
    // Every policy once the cache has listed (what the watch delivered before this term
    // started is not replayed), and again whenever a subscription fell behind.
    let listed = shared.policies.clone();
    let reconcile_everything = futures::stream::once(async move { listed.wait_listed().await })
        .map(|_| ())
        .chain(lagged);
    let reporter = tokio::spawn(policies::report_undecodable(
        client.clone(),
        recorder.clone(),
        shared.undecodable.clone(),
    ));
    let scope = tokio::spawn(watch_policy_namespaces(
        shared.policies.clone(),
        pods.clone(),
        metrics.clone(),
        changed.clone(),
    ));
    let controller = Controller::for_shared_stream(policy_stream, policies.clone())
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
        // The single waiter on the term's own stores (see `Context::ready`).
        let (d, p, s, shared_rs) = (
            deployments.clone(),
            pods.injected().clone(),
            services.clone(),
            shared.replicasets.clone(),
        );
        tokio::spawn(async move {
            if d.wait_until_ready().await.is_ok()
                && shared_rs.wait_listed().await
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
                policies_listed: shared.policies.listed(),
            }
            .run(),
        )
    });
    let (inbox, clock) = (ctx.drain_inbox.clone(), ctx.clock.clone());
    let (deploy_changed, pod_changed) = (changed.clone(), changed);
    controller
        .reconcile_all_on(reconcile_everything)
        .reconcile_on(retriggered)
        .watches_stream(deploy_stream, move |d: CachedDeployment| {
            deploy_changed.notify_one();
            policies_for(&p1, &d.namespace().unwrap_or_default(), &d.name_any())
        })
        .watches_shared_stream(rs_stream, move |rs: Arc<PartialObjectMeta<ReplicaSet>>| {
            match deployment_of(&rs.metadata) {
                Some(name) => policies_for(&p2, &rs.namespace().unwrap_or_default(), &name),
                None => Vec::new(),
            }
        })
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
    // Leadership ends: the bindings and reports are the next leader's to keep.
    reporter.abort();
    scope.abort();
    if let Some(binder) = binder {
        binder.abort();
    }
}

/// Keeps the pod cache's namespace watches on the namespaces that hold a policy, and wakes the
/// bindings on every change of the policies (until aborted at the end of the term).
async fn watch_policy_namespaces(
    policies: SharedWatch<RolloutPolicy>,
    pods: PodCache,
    metrics: Arc<Metrics>,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut changes = policies.changes();
    if !policies.wait_listed().await {
        return;
    }
    loop {
        changes.mark_unchanged();
        let namespaces = pod_cache::policy_namespaces(&policies.store().state());
        metrics
            .pod_watch_namespaces
            .set(pods.watch_namespaces(&namespaces) as i64);
        changed.notify_one();
        if changes.changed().await.is_err() {
            return;
        }
    }
}
