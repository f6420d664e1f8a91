//! The leader's watches and the kube `Controller` over them ([`run`]): the streams that fill
//! the caches (Deployments, ReplicaSet metadata, pods, Services, policies), which policies an
//! event on each requeues, the one task that marks the caches synced, and the count and log
//! line of every watch event and error ([`counted`]).

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
    pod_event, policies, policies_for, policy_events, reconcile, service_event, system_clock,
};
use crate::error::Result;
use crate::metrics::Metrics;

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
