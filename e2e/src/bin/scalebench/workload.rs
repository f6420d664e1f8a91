//! The benchmark's workload: its namespace, Deployments `app-NNNN` each with its policy, and
//! the waits until every gate is open or every rollout complete.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_e2e::harness;
use quiesce_e2e::scale::{kwok_deployment, kwok_policy};

use crate::pods::Pods;
use crate::progress;

/// Creates namespace `ns` unless it exists.
pub async fn ensure_namespace(client: &Client, ns: &str) -> Result<()> {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("quiesce-scalebench").force(),
            &Patch::Apply(&namespace),
        )
        .await?;
    Ok(())
}

pub fn deployment_name(i: usize) -> String {
    format!("app-{i:04}")
}

/// Creates policy and Deployment `app-NNNN` for each of `range`, 16 at a time (the policy
/// first, so that the webhook injects the first pods).
pub async fn create_deployments(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    replicas: i32,
) -> Result<()> {
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(range)
        .map(|i| {
            let (policies, deployments) = (policies.clone(), deployments.clone());
            async move {
                let name = deployment_name(i);
                let policy: RolloutPolicy = serde_json::from_value(kwok_policy(&name))?;
                policies.create(&PostParams::default(), &policy).await?;
                let d: Deployment =
                    serde_json::from_value(kwok_deployment(&name, replicas, "step-init"))?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Waits until there are `want` pods and every injected one's gate is open; returns how many
/// were not injected.
pub async fn wait_gates_open(
    pods: &Arc<Mutex<Pods>>,
    want: usize,
    start: Instant,
    timeout: Duration,
) -> Result<usize> {
    let mut last_report = Instant::now();
    loop {
        let (all, ungated, open) = pods.lock().expect("pods lock").counts();
        if all >= want && open + ungated >= all {
            progress(&format!(
                "{open} gates open in {:.1}s ({ungated} pods not injected)",
                start.elapsed().as_secs_f64()
            ));
            return Ok(ungated);
        }
        if start.elapsed() > timeout {
            bail!(
                "after {timeout:?}: {all} pods, {ungated} not injected, {open} gates open, want {want}"
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            progress(&format!(
                "{all} pods, {ungated} not injected, {open} gates open (want {want})"
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Deployments `app-0000..rolled` have completed their rollout: every replica
/// updated and available, no old one left (the gate holds availability until quiesce admits).
pub async fn wait_rollouts_complete(
    client: &Client,
    ns: &str,
    rolled: usize,
    start: Instant,
    timeout: Duration,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..rolled).map(deployment_name).collect();
    let mut last_report = Instant::now();
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| names.contains(&d.name_any()) && harness::rollout_complete(d))
            .count();
        if done == rolled {
            progress(&format!(
                "{rolled} rollouts complete in {:.1}s",
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("after {timeout:?}: {done} of {rolled} rollouts complete");
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            progress(&format!("{done} of {rolled} rollouts complete"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
