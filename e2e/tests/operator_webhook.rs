//! The webhook is unreachable: pods are still created (failurePolicy Ignore), without the
//! sidecar, and the policy reports them as not injected; once the webhook is back, new pods are
//! injected again.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use quiesce_api::constants::conditions;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout::{self, injected};
use serde_json::json;

const APP: &str = "web";

async fn point_webhook_at_port(client: &kube::Client, port: i32) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let patch = json!({"webhooks": [{"name": "inject.quiesce.dev", "clientConfig": {"service": {"port": port}}}]});
    api.patch(
        chart::WEBHOOK_CONFIGURATION,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn pods_are_created_without_the_webhook_and_reported() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-webhook", |client, ns| async move {
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        // Nothing listens on 8443 of the webhook Service: every call fails.
        point_webhook_at_port(&client, 8443).await?;
        let outcome = async {
            apply_yaml(&client, &ns, &demo_app(APP, 2, "v1", &[])).await?;
            harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            assert!(
                pods.iter().all(|p| !injected(p)),
                "pods created without the sidecar"
            );
            let s = rollout::wait_pods_not_injected(&client, &ns, APP).await?;
            println!("reported: {}", s.message);
            assert!(
                s.message
                    .starts_with("2 of 2 pods run without the quiesce sidecar"),
                "{}",
                s.message
            );
            anyhow::Ok(())
        }
        .await;
        point_webhook_at_port(&client, 443).await?;
        outcome?;

        // Back: a restart injects every pod and the condition clears.
        apply_yaml(&client, &ns, &demo_app(APP, 2, "v2", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        eventually("Injected=True", Duration::from_secs(90), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            Ok((pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .all(injected)
                && s.condition(conditions::INJECTED)
                    .is_some_and(|c| c.status == "True"))
            .then_some(()))
        })
        .await?;
        Ok(())
    })
    .await;
}
