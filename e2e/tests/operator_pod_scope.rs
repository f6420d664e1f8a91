//! The leader watches pods only where quiesce has work (issue 10, item 13): the pods it
//! injected, anywhere, and the other Deployment pods of namespaces that hold a RolloutPolicy.
//! A namespace's pods are listed when its first policy appears — pods that predate the policy
//! are counted at once — and are no longer watched once its last policy is gone.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout::{self, injected};

const APP: &str = "web";
const WATCHED: &str = "quiesce_operator_pod_watch_namespaces";

/// Namespaces that hold a RolloutPolicy now, and the leader's count of watched namespaces.
async fn policy_namespaces_and_watched(client: &Client) -> anyhow::Result<(usize, Option<f64>)> {
    let policies: Api<RolloutPolicy> = Api::all(client.clone());
    let namespaces: BTreeSet<String> = policies
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter_map(|p| p.namespace())
        .collect();
    let metrics = chart::leader_metrics(client).await?;
    Ok((
        namespaces.len(),
        chart::metric_value(&metrics, WATCHED, &[]),
    ))
}

/// Waits until the leader watches the pods of exactly the namespaces that hold a policy.
async fn wait_watched_as_policies(client: &Client, what: &str) -> anyhow::Result<usize> {
    eventually(what, Duration::from_secs(60), || async {
        let (namespaces, watched) = policy_namespaces_and_watched(client).await?;
        Ok((watched == Some(namespaces as f64)).then_some(namespaces))
    })
    .await
}

#[tokio::test]
async fn pods_are_watched_only_in_namespaces_that_hold_a_policy() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-pod-scope", |client, ns| async move {
        // A Deployment without a policy: its pods are none of the operator's business.
        apply_yaml(&client, &ns, &demo_app(APP, 2, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        assert!(pods.iter().all(|p| !injected(p)), "no policy, no sidecar");
        let without =
            wait_watched_as_policies(&client, "watched = namespaces with a policy").await?;
        println!("namespaces watched without this one's policy: {without}");

        // The first policy of the namespace: its pods are listed, the two that predate it
        // (not injected, so only the namespace watch sees them) included.
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        let s = rollout::wait_pods_not_injected(&client, &ns, APP).await?;
        assert!(
            s.message
                .starts_with("2 of 2 pods run without the quiesce sidecar"),
            "{}",
            s.message
        );
        let with = wait_watched_as_policies(&client, "this namespace watched").await?;
        println!("namespaces watched with this one's policy: {with}");

        // The last policy of the namespace goes: so does the watch of its pods.
        let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), &ns);
        policies.delete(APP, &DeleteParams::default()).await?;
        eventually("policy gone", Duration::from_secs(60), || async {
            Ok(policies.get_opt(APP).await?.is_none().then_some(()))
        })
        .await?;
        let after = wait_watched_as_policies(&client, "this namespace no longer watched").await?;
        println!("namespaces watched after the policy's deletion: {after}");
        Ok(())
    })
    .await;
}
