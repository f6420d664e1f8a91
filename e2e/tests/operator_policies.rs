//! Policies the operator cannot act on say so: invalid specs are rejected by the apiserver with
//! the CRD's message, a missing target is TargetNotFound, and of two policies for one Deployment
//! the newer reports Conflict naming the older; deleting the older hands the Deployment over.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use quiesce_api::constants::{conditions, reasons};
use quiesce_api::{RolloutPolicy, messages};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout;

async fn accepted(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<String> {
    eventually(
        &format!("{name} Accepted reason {reason}"),
        Duration::from_secs(60),
        || async {
            let s = rollout::policy_status(client, ns, name).await?;
            Ok(s.condition(conditions::ACCEPTED)
                .filter(|c| c.reason == reason)
                .map(|c| c.message.clone()))
        },
    )
    .await
}

#[tokio::test]
async fn invalid_missing_and_conflicting_policies_are_reported() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-policies", |client, ns| async move {
        // Invalid: the apiserver answers with the rule's message.
        let err = apply_yaml(
            &client,
            &ns,
            &policy("bad", "web", "    steps: [{admit: 0}, {admit: \"100%\"}]"),
        )
        .await
        .expect_err("admit 0 is rejected");
        assert!(
            format!("{err:#}").contains(messages::ADMIT_COUNT),
            "{err:#}"
        );

        // Missing target.
        apply_yaml(
            &client,
            &ns,
            &policy("lonely", "nothing-here", "    steps: []"),
        )
        .await?;
        let msg = accepted(&client, &ns, "lonely", reasons::TARGET_NOT_FOUND).await?;
        assert!(msg.contains("Deployment nothing-here not found"), "{msg}");

        // Two policies, one Deployment: the newer is in Conflict.
        apply_yaml(&client, &ns, &demo_app("web", 1, "v1", &[])).await?;
        apply_yaml(&client, &ns, &policy("first", "web", "    steps: []")).await?;
        accepted(&client, &ns, "first", reasons::ACCEPTED).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        apply_yaml(&client, &ns, &policy("second", "web", "    steps: []")).await?;
        let msg = accepted(&client, &ns, "second", reasons::CONFLICT).await?;
        assert!(
            msg.contains("RolloutPolicy first already targets Deployment web"),
            "{msg}"
        );
        let reasons_seen: Vec<String> = rollout::policy_events(&client, &ns, "second")
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(
            reasons_seen.iter().any(|r| r == reasons::CONFLICT),
            "{reasons_seen:?}"
        );

        // The Deployment appears for "lonely"'s target name? No: but deleting "first" hands
        // "web" to "second".
        let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), &ns);
        api.delete("first", &DeleteParams::default()).await?;
        accepted(&client, &ns, "second", reasons::ACCEPTED).await?;
        eventually(
            "first is gone (finalizer released)",
            Duration::from_secs(30),
            || async { Ok(api.get_opt("first").await?.is_none().then_some(())) },
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_policy_mid_rollout_releases_every_held_pod() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-delete", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {pause: {}}, {admit: \"100%\"}]";
        apply_yaml(&client, &ns, &policy("web", "web", spec)).await?;
        apply_yaml(&client, &ns, &demo_app("web", 2, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, "web", Duration::from_secs(120)).await?;
        apply_yaml(&client, &ns, &demo_app("web", 2, "v2", &[])).await?;
        eventually("a held v2 pod", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, "web").await?;
            let pods = harness::pods(&client, &ns, "app=web").await?;
            let held = pods.iter().any(|p| {
                rollout::revision(p) == s.update_revision.as_deref()
                    && rollout::condition(p, quiesce_api::constants::READY_GATE_CONDITION)
                        == Some("False")
            });
            Ok((s.current_step == Some(1) && held).then_some(()))
        })
        .await?;
        let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), &ns);
        api.delete("web", &DeleteParams::default()).await?;
        // Nothing stuck: the Deployment finishes on its own, every pod Ready.
        harness::wait_rollout(&client, &ns, "web", Duration::from_secs(120)).await?;
        eventually("the policy is gone", Duration::from_secs(30), || async {
            Ok(api.get_opt("web").await?.is_none().then_some(()))
        })
        .await?;
        let pods = harness::pods(&client, &ns, "app=web").await?;
        assert!(
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .all(rollout::gate_open)
        );
        Ok(())
    })
    .await;
}
