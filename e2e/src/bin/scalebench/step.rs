//! One measuring step: Deployments added until every gate is open, then a share of them rolled
//! at once, measured into one [`Row`] of the table.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use quiesce_e2e::chart;

use crate::operator::{
    RssPeak, operator_rss, p50_p99, quantiles, reconcile_time_split, service_account_requests,
};
use crate::pods::Pods;
use crate::workload::{
    create_deployments, deployment_name, wait_gates_open, wait_rollouts_complete,
};
use crate::{Args, progress};

/// One measuring step's row.
pub struct Row {
    pub deployments: usize,
    pub pods: usize,
    pub settle: Duration,
    pub not_injected: usize,
    pub leader_rss_kib: Option<u64>,
    pub follower_rss_kib: Option<u64>,
    /// The leader's highest RSS read during the step (every
    /// [`RSS_EVERY`](crate::operator::RSS_EVERY)).
    pub leader_rss_peak_kib: Option<u64>,
    pub reconcile: (Option<f64>, Option<f64>),
    /// p99 of the reconcile's own time and of its gate writes (apiserver).
    pub reconcile_parts: (Option<f64>, Option<f64>),
    pub webhook: (Option<f64>, Option<f64>),
    pub gate: (Option<Duration>, Option<Duration>),
    pub rolled: usize,
    pub rollout: Duration,
    pub rollout_reconcile_p99: Option<f64>,
    pub rollout_reconcile_parts: (Option<f64>, Option<f64>),
    pub rollout_gate: (Option<Duration>, Option<Duration>),
    pub requests_per_rollout: Option<f64>,
}

pub async fn measure_step(
    args: &Args,
    client: &Client,
    pods: &Arc<Mutex<Pods>>,
    step: usize,
    from: usize,
    to: usize,
) -> Result<Row> {
    let ns = args.namespace.as_str();
    let timeout = Duration::from_secs(args.timeout_minutes * 60);
    let want = to * args.replicas as usize;
    progress(&format!(
        "step {step}: {from} → {to} Deployments ({want} pods)"
    ));
    let before = chart::leader_metrics(client).await?;
    let peak = RssPeak::start(client.clone());
    let start = Instant::now();
    create_deployments(client, ns, from..to, args.replicas).await?;
    progress(&format!(
        "created {} Deployments and policies in {:.1}s",
        to - from,
        start.elapsed().as_secs_f64()
    ));
    let not_injected = wait_gates_open(pods, want, start, timeout).await?;
    let settle = start.elapsed();
    let after = chart::leader_metrics(client).await?;
    // Let the last reconciles and the allocator settle before reading memory.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (leader_rss_kib, follower_rss_kib) = operator_rss(client).await?;
    let reconcile = quantiles(
        &before,
        &after,
        "quiesce_operator_reconcile_duration_seconds",
    );
    let reconcile_parts = reconcile_time_split(&before, &after);
    let webhook = quantiles(&before, &after, "quiesce_operator_webhook_duration_seconds");
    let gate = p50_p99(pods.lock().expect("pods lock").gate_latencies(start));

    // Roll a share of all Deployments at once.
    let rolled = ((to as f64 * args.rollout_share).ceil() as usize).clamp(1, to);
    let before = chart::leader_metrics(client).await?;
    let requests_before = service_account_requests(client).await?;
    let start = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..rolled)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "env": [{"name": "VERSION", "value": format!("step-{step}")}]}
                ]}}}});
                deployments
                    .patch(
                        &deployment_name(i),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    progress(&format!("rolling {rolled} Deployments at once"));
    wait_rollouts_complete(client, ns, rolled, start, timeout).await?;
    let rollout = start.elapsed();
    let requests_after = service_account_requests(client).await?;
    let after = chart::leader_metrics(client).await?;
    let rollout_reconcile_p99 = quantiles(
        &before,
        &after,
        "quiesce_operator_reconcile_duration_seconds",
    )
    .1;
    let rollout_reconcile_parts = reconcile_time_split(&before, &after);
    let rollout_gate = p50_p99(pods.lock().expect("pods lock").gate_latencies(start));
    let requests_per_rollout = match (requests_before, requests_after) {
        (Some(b), Some(a)) => Some((a - b) / rolled as f64),
        _ => None,
    };
    let leader_rss_peak_kib = peak.stop().await.max(leader_rss_kib);
    Ok(Row {
        deployments: to,
        pods: want,
        settle,
        not_injected,
        leader_rss_kib,
        follower_rss_kib,
        leader_rss_peak_kib,
        reconcile,
        reconcile_parts,
        webhook,
        gate,
        rolled,
        rollout,
        rollout_reconcile_p99,
        rollout_reconcile_parts,
        rollout_gate,
        requests_per_rollout,
    })
}
