//! A RolloutPolicy the CRD schema accepts but the operator's Rust type cannot read (an integer
//! `admit` above `i32::MAX`: the schema only asks for an integer of at least 1) is skipped and
//! reported — `Accepted=False`, reason `Undecodable`, and a Warning Event — while the other
//! policies go on: a good policy in the same namespace is accepted and its pods are injected
//! and admitted (issue 10, item 11).

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::{conditions, reasons};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout::{self, gate_open, injected};

/// Condition and Event reason of a policy the operator cannot decode.
const UNDECODABLE: &str = "Undecodable";

#[tokio::test]
async fn an_undecodable_policy_is_reported_and_does_not_stall_the_others() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-bad-policy", |client, ns| async move {
        apply_yaml(
            &client,
            &ns,
            &policy(
                "bad",
                "other",
                "    steps: [{admit: 3000000000}, {admit: \"100%\"}]",
            ),
        )
        .await?;

        // The bad one says why, on its own status (read raw: it does not decode).
        let raw: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ApiResource::erase::<RolloutPolicy>(&()),
        );
        let message = eventually(
            "bad Accepted=False, reason Undecodable",
            Duration::from_secs(60),
            || async {
                let o = raw.get("bad").await?;
                let accepted = o.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == conditions::ACCEPTED)
                    .cloned();
                Ok(accepted
                    .filter(|c| c["status"] == "False" && c["reason"] == UNDECODABLE)
                    .and_then(|c| c["message"].as_str().map(str::to_owned)))
            },
        )
        .await?;
        assert!(message.contains("3000000000"), "{message}");
        let events = rollout::policy_events(&client, &ns, "bad").await?;
        assert!(events.iter().any(|(r, _)| r == UNDECODABLE), "{events:?}");

        // The others go on: a good policy is accepted, its pods injected and admitted.
        apply_yaml(&client, &ns, &policy("web", "web", "    steps: []")).await?;
        apply_yaml(&client, &ns, &demo_app("web", 2, "v1", &[])).await?;
        eventually("web Accepted", Duration::from_secs(60), || async {
            let s = rollout::policy_status(&client, &ns, "web").await?;
            Ok(s.condition(conditions::ACCEPTED)
                .filter(|c| c.reason == reasons::ACCEPTED)
                .map(|_| ()))
        })
        .await?;
        harness::wait_rollout(&client, &ns, "web", Duration::from_secs(120)).await?;
        eventually(
            "web pods injected and admitted",
            Duration::from_secs(60),
            || async {
                let pods = harness::pods(&client, &ns, "app=web").await?;
                Ok(
                    (pods.len() == 2 && pods.iter().all(|p| injected(p) && gate_open(p)))
                        .then_some(()),
                )
            },
        )
        .await?;
        Ok(())
    })
    .await;
}
