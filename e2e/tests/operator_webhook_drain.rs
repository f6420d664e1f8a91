//! The operator's own rollout while pods are being created: a stopping replica keeps serving
//! admission calls until the apiserver stops sending them, so every pod created meanwhile gets
//! the sidecar (a webhook that stopped accepting at SIGTERM let pods through uninjected, since
//! the webhook fails open).
//!
//! Its own test binary: it restarts the operator every other test relies on.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, with_namespace};
use quiesce_e2e::rollout::injected;

const APP: &str = "churn";

#[tokio::test]
async fn pods_created_during_the_operators_rollout_are_all_injected() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-webhook-drain", |client, ns| async move {
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        // Give the webhook's cache the policy before the first pod.
        tokio::time::sleep(Duration::from_secs(2)).await;
        apply_yaml(&client, &ns, &demo_app(APP, 0, "v1", &[])).await?;

        // Every pod, as first seen: injected or not.
        let seen: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let recorder = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut events = watcher(pods, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
                    .boxed();
                while let Some(Ok(p)) = events.next().await {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    seen.lock().unwrap().entry(name).or_insert(injected(&p));
                }
            }
        });

        // Churn: scale between 0 and 4 every second (4 pod creations a cycle) while the
        // operator Deployment rolls.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let churn = tokio::spawn({
            let deployments = deployments.clone();
            async move {
                for i in 0.. {
                    let replicas = if i % 2 == 0 { 4 } else { 0 };
                    let _ = deployments
                        .patch_scale(
                            APP,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
                        )
                        .await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let out = tokio::process::Command::new("kubectl")
            .args([
                "rollout",
                "restart",
                &format!("deployment/{}", chart::OPERATOR),
                "-n",
                chart::NAMESPACE,
            ])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl rollout restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let operators: Api<Deployment> = Api::namespaced(client.clone(), chart::NAMESPACE);
        harness::eventually(
            "the operator's rollout",
            Duration::from_secs(180),
            || async {
                let d = operators.get(chart::OPERATOR).await?;
                let pods = harness::pods(
                    &client,
                    chart::NAMESPACE,
                    "app.kubernetes.io/component=operator",
                )
                .await?;
                Ok((harness::rollout_complete(&d)
                    && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
                .then_some(()))
            },
        )
        .await?;
        // A few more cycles against the new replicas.
        tokio::time::sleep(Duration::from_secs(4)).await;
        churn.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        recorder.abort();
        chart::wait_ready(&client).await?;

        let seen = seen.lock().unwrap().clone();
        let missed: Vec<&String> = seen.iter().filter(|(_, i)| !**i).map(|(n, _)| n).collect();
        println!(
            "{} pods created during the operator's rollout, {} without the sidecar",
            seen.len(),
            missed.len()
        );
        assert!(seen.len() >= 20, "too few pods created: {}", seen.len());
        assert!(
            missed.is_empty(),
            "pods created without the sidecar: {missed:?}"
        );
        Ok(())
    })
    .await;
}
