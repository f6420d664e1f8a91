//! The leader operator replica is deleted in the middle of a paced rollout: the other replica
//! takes the Lease over, the rollout completes, and no request fails.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quiesce_api::Phase;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::rollout;

const APP: &str = "web";
const REPLICAS: i32 = 3;
/// The chart's operator replicas, and their pods' labels.
const OPERATOR_REPLICAS: u64 = 2;
const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=quiesce,app.kubernetes.io/component=operator";

#[tokio::test]
async fn the_other_replica_takes_over_mid_rollout() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-leader", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {pause: {durationSeconds: 15}}, {admit: \"100%\"}]\n    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10}";
        apply_yaml(&client, &ns, &policy(APP, APP, spec)).await?;
        apply_yaml(&client, &ns, &demo_app(APP, REPLICAS, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(60)).await?;
        let load = loadgen::spawn(LoadConfig::new(url, 40.0));
        tokio::time::sleep(Duration::from_secs(2)).await;

        let started = Instant::now();
        apply_yaml(&client, &ns, &demo_app(APP, REPLICAS, "v2", &[])).await?;
        eventually("the pause step", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.current_step == Some(1)).then_some(()))
        })
        .await?;
        let leader = chart::leader(&client).await?;
        let old_leader = leader.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), chart::NAMESPACE);
        pods.delete(&old_leader, &DeleteParams::default()).await?;
        let killed = Instant::now();
        let new_leader = eventually("a new leader", Duration::from_secs(60), || async {
            let p = chart::leader(&client).await?;
            let name = p.metadata.name.unwrap_or_default();
            Ok((name != old_leader).then_some(name))
        })
        .await?;
        println!("leader {old_leader} deleted; {new_leader} leads after {:.1}s", killed.elapsed().as_secs_f64());

        rollout::wait_phase(&client, &ns, APP, Phase::Completed, Duration::from_secs(240)).await?;
        let took = started.elapsed();
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(60)).await?;
        eventually("old pods to exit", Duration::from_secs(90), || async {
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            Ok((pods.len() == REPLICAS as usize && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
                .then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        load.stop();
        let summary = load.finish().await;
        println!("rollout with a leader change completed in {:.1}s; load: {}", took.as_secs_f64(), serde_json::to_string(&summary)?);
        assert_eq!(summary.failed(), 0, "{summary:?}");
        // Let the operator Deployment heal before the next test.
        harness::wait_rollout(&client, chart::NAMESPACE, chart::OPERATOR, Duration::from_secs(120)).await?;
        one_policy_watch_per_replica(&client).await
    })
    .await;
}

/// Every operator replica, the leader included, holds one cluster-wide RolloutPolicy watch:
/// the leader's controller subscribes to the watch its webhook reads (it used to open its own).
/// Counted on the apiserver's gauge against the operator scaled to 0, as other clients (the
/// garbage collector) watch policies too. Leaves the operator at the chart's replicas, ready.
async fn one_policy_watch_per_replica(client: &kube::Client) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let scale = |replicas: u64| {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        let deployments = deployments.clone();
        async move {
            deployments
                .patch_scale(
                    chart::OPERATOR,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
        }
    };
    // The count once two reads 3 s apart agree.
    let steady = || async {
        let mut last = harness::apiserver_watches(client, "rolloutpolicies").await?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = harness::apiserver_watches(client, "rolloutpolicies").await?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        anyhow::bail!("the policy watch count did not settle (last {last})")
    };
    scale(0).await?;
    // Gone, not terminating: a stopping replica serves (and watches) until it exits.
    eventually("no operator pod left", Duration::from_secs(120), || async {
        let left = harness::pods(client, chart::NAMESPACE, OPERATOR_SELECTOR).await?;
        Ok(left.is_empty().then_some(()))
    })
    .await?;
    let others = steady().await?;
    scale(OPERATOR_REPLICAS).await?;
    harness::wait_rollout(
        client,
        chart::NAMESPACE,
        chart::OPERATOR,
        Duration::from_secs(120),
    )
    .await?;
    chart::wait_ready(client).await?;
    chart::leader(client).await?;
    let open = steady().await?;
    println!(
        "cluster-wide RolloutPolicy watches: {others} without the operator, {open} with {OPERATOR_REPLICAS} replicas"
    );
    assert_eq!(
        open,
        others + OPERATOR_REPLICAS,
        "one policy watch per operator replica"
    );
    Ok(())
}
