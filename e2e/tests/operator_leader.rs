//! The leader operator replica is deleted in the middle of a paced rollout: the other replica
//! takes the Lease over, the rollout completes, and no request fails.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use quiesce_api::Phase;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::rollout;

const APP: &str = "web";
const REPLICAS: i32 = 3;
/// The chart's operator replicas.
const OPERATOR_REPLICAS: u64 = 2;

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
        // One policy watch per replica (the chart's 2, the replacement included), the leader's
        // too: its controller subscribes to the watch its webhook reads (it used to open two).
        eventually("one policy watch per operator replica", Duration::from_secs(60), || async {
            let open = harness::apiserver_watches(&client, "rolloutpolicies").await?;
            println!("cluster-wide RolloutPolicy watches open: {open}");
            Ok((open == OPERATOR_REPLICAS).then_some(()))
        })
        .await?;
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
        Ok(())
    })
    .await;
}
