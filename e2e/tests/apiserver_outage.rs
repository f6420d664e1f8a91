//! The kube-apiserver stops answering while old pods drain (a control-plane restart, an
//! overloaded apiserver): the drains still happen — the deletion the kubelet acts on was seen
//! by the sidecar's watch of its own pod before the outage, and the quiet period needs no API —
//! no request fails, and the drain reports reach the API once it is back.
//!
//! Its own test binary: freezing the apiserver would stall any test running beside it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::provider;
use quiesce_e2e::rollout;

const APP: &str = "outage";
const REPLICAS: i32 = 3;
const OUTAGE: Duration = Duration::from_secs(30);

// Drains must outlast the outage: until the API is back, kube-proxy keeps routing to the old
// pods, so their quiet period cannot come before it.
const POLICY_SPEC: &str =
    r#"    drain: {endpointTimeoutSeconds: 10, quietPeriodMillis: 1000, timeoutSeconds: 90}"#;

/// Freezes the kube-apiserver for `d` through the cluster provider (returns when it is back).
async fn pause_apiserver(d: Duration) -> anyhow::Result<()> {
    provider::run(
        "cluster.sh",
        &["pause-apiserver", &d.as_secs().to_string()],
        &[],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn drains_survive_an_apiserver_outage_and_report_afterwards() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("api-outage", |client, ns| async move {
        // A grace period that covers the drain budget, so the kubelet does not cut it short.
        let app = |v| {
            fixtures::demo(APP, REPLICAS, v, &[])
                .grace_seconds(120)
                .yaml()
        };
        apply_yaml(&client, &ns, &policy(APP, APP, POLICY_SPEC)).await?;
        apply_yaml(&client, &ns, &app("v1")).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(60)).await?;
        let load = loadgen::spawn(LoadConfig::new(url, 40.0));
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The test's own record of every report: the leader steps down while it cannot renew
        // its Lease, and a pod that reported and went while the next leader was starting is
        // not in its caches when it lists.
        let reports = harness::DrainWatch::start(&client, &ns);
        apply_yaml(&client, &ns, &app("v2")).await?;
        let draining = eventually(
            "an old pod terminating",
            Duration::from_secs(90),
            || async {
                let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
                Ok(pods
                    .into_iter()
                    .find(|p| p.metadata.deletion_timestamp.is_some())
                    .and_then(|p| p.metadata.name))
            },
        )
        .await?;
        println!("{draining} is terminating: freezing the apiserver for {OUTAGE:?}");
        pause_apiserver(OUTAGE).await?;
        println!("apiserver answers again");

        let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
        eventually(
            "the rollout to finish after the outage",
            Duration::from_secs(240),
            || async {
                let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
                let d = deployments.get(APP).await?;
                Ok((harness::rollout_complete(&d)
                    && pods.len() == REPLICAS as usize
                    && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
                .then_some(()))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        load.stop();
        let summary = load.finish().await;
        println!("load: {}", serde_json::to_string(&summary)?);
        assert_eq!(
            summary.failed(),
            0,
            "requests failed across the apiserver outage: {summary:?}"
        );
        assert!(summary.ok_by_version.contains_key("v2"), "{summary:?}");

        // Every old pod's drain report reached the API (the one drained during the outage
        // included), as a finished drain; only a drain that spanned the outage may be forced
        // (it could not see its endpoints go).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let reported = loop {
            let seen = reports.snapshot();
            let done: Vec<_> = seen
                .values()
                .filter(|(s, _, _)| s == "True")
                .cloned()
                .collect();
            if done.len() >= REPLICAS as usize {
                break done;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not every old pod's drain report reached the API: {seen:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let forced = reported
            .iter()
            .filter(|(_, reason, _)| reason == "DrainTimedOut")
            .count();
        println!("reports on the pods: {reported:?}");
        assert!(
            forced <= 1,
            "drains forced beyond the one the outage spanned: {reported:?}"
        );
        // The operator resumed counting (drains finished while it changed leaders may be
        // missing from its statistics).
        let counted = eventually(
            "the operator to count drains",
            Duration::from_secs(60),
            || async {
                let d = rollout::policy_status(&client, &ns, APP)
                    .await?
                    .drains
                    .unwrap_or_default();
                Ok((d.completed + d.forced > 0).then_some(d))
            },
        )
        .await?;
        println!("counted by the operator: {counted:?}");
        Ok(())
    })
    .await;
}
