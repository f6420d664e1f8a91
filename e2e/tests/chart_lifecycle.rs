//! The chart's life cycle: install, upgrade with a changed value, uninstall — and nothing of
//! quiesce is left afterwards (CRDs aside, as Helm does), including the objects the operator
//! created itself (webhook TLS Secret, leader Lease, sidecar RoleBindings).
//!
//! Its own test binary: cargo runs test binaries one after another, so uninstalling here does
//! not pull the operator from under another test. The chart is installed again at the end.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use quiesce_e2e::chart::{self, NAMESPACE, RELEASE, WEBHOOK_CONFIGURATION};
use quiesce_e2e::fixtures;
use quiesce_e2e::harness::{apply_yaml, eventually, with_namespace};

/// Names of the objects of kind `K` that belong to quiesce: chart-labelled, or named after it
/// (the sidecar tests' own copy of the admission policy, `*-e2e`, is not the chart's).
async fn quiesce_objects<K>(api: Api<K>) -> Result<Vec<String>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|o| {
            let labelled = o
                .labels()
                .get("app.kubernetes.io/instance")
                .map(String::as_str)
                == Some(RELEASE)
                || o.labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("quiesce");
            (labelled || o.name_any().starts_with("quiesce")) && !o.name_any().ends_with("-e2e")
        })
        .map(|o| o.name_any())
        .collect())
}

/// Every quiesce object still in the cluster, as `kind/name`.
async fn leftovers(client: &Client) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let mut add = |kind: &str, names: Vec<String>| {
        left.extend(names.into_iter().map(|n| format!("{kind}/{n}")))
    };
    add(
        "MutatingWebhookConfiguration",
        quiesce_objects::<MutatingWebhookConfiguration>(Api::all(client.clone())).await?,
    );
    add(
        "ValidatingAdmissionPolicy",
        quiesce_objects::<ValidatingAdmissionPolicy>(Api::all(client.clone())).await?,
    );
    add(
        "ValidatingAdmissionPolicyBinding",
        quiesce_objects::<ValidatingAdmissionPolicyBinding>(Api::all(client.clone())).await?,
    );
    add(
        "ClusterRole",
        quiesce_objects::<ClusterRole>(Api::all(client.clone())).await?,
    );
    add(
        "ClusterRoleBinding",
        quiesce_objects::<ClusterRoleBinding>(Api::all(client.clone())).await?,
    );
    add(
        "RoleBinding",
        quiesce_objects::<RoleBinding>(Api::all(client.clone())).await?,
    );
    add(
        "Deployment",
        quiesce_objects::<Deployment>(Api::namespaced(client.clone(), NAMESPACE)).await?,
    );
    add(
        "Service",
        quiesce_objects::<Service>(Api::namespaced(client.clone(), NAMESPACE)).await?,
    );
    add(
        "ServiceAccount",
        quiesce_objects::<ServiceAccount>(Api::namespaced(client.clone(), NAMESPACE)).await?,
    );
    add(
        "Secret",
        quiesce_objects::<Secret>(Api::namespaced(client.clone(), NAMESPACE)).await?,
    );
    add(
        "Lease",
        quiesce_objects::<Lease>(Api::namespaced(client.clone(), NAMESPACE)).await?,
    );
    Ok(left)
}

#[tokio::test]
async fn install_upgrade_and_uninstall_leave_nothing_behind() {
    with_namespace("chart", |client, ns| async move {
        chart::install(&client).await?;
        // A policy makes the operator create its own objects: the sidecar RoleBinding here.
        apply_yaml(&client, &ns, &fixtures::demo_app("web", 1, "v1", &[])).await?;
        apply_yaml(&client, &ns, &fixtures::policy("web", "web", "")).await?;
        eventually("the operator's sidecar RoleBinding", Duration::from_secs(60), || async {
            let bindings = quiesce_objects::<RoleBinding>(Api::namespaced(client.clone(), &ns)).await?;
            Ok((!bindings.is_empty()).then_some(()))
        })
        .await?;
        let before = leftovers(&client).await?;
        println!("installed: {before:?}");
        for expected in ["Secret/quiesce-webhook-tls", "Lease/quiesce-operator"] {
            assert!(before.iter().any(|o| o == expected), "{expected} exists while installed: {before:?}");
        }

        let chart_dir = chart::repo_root().join("charts/quiesce");
        let chart_dir = chart_dir.to_str().unwrap();
        chart::helm(&[
            "upgrade", RELEASE, chart_dir, "--namespace", NAMESPACE, "--reuse-values",
            "--set", "webhook.timeoutSeconds=4", "--wait", "--timeout", "180s",
        ])
        .await?;
        let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let timeout = webhooks.get(WEBHOOK_CONFIGURATION).await?.webhooks.unwrap_or_default()[0].timeout_seconds;
        assert_eq!(timeout, Some(4), "the upgrade changed the webhook timeout");
        chart::wait_ready(&client).await?;

        // The policy's finalizer is released by the running operator, before it goes.
        kube::Api::<quiesce_api::RolloutPolicy>::namespaced(client.clone(), &ns)
            .delete("web", &Default::default())
            .await?;
        eventually("policy deleted", Duration::from_secs(60), || async {
            let policies: Api<quiesce_api::RolloutPolicy> = Api::namespaced(client.clone(), &ns);
            Ok(policies.get_opt("web").await?.is_none().then_some(()))
        })
        .await?;

        chart::helm(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "180s"]).await?;
        let left = eventually("every quiesce object gone", Duration::from_secs(90), || async {
            let left = leftovers(&client).await?;
            Ok(left.is_empty().then_some(left))
        })
        .await;
        let crd_kept = kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone())
            .get_opt(quiesce_api::crd::CRD_NAME)
            .await?
            .is_some();

        // Installed again for the test binaries that follow.
        chart::helm(&[
            "upgrade", "--install", RELEASE, chart_dir, "--namespace", NAMESPACE,
            "--create-namespace", "--wait", "--timeout", "180s",
        ])
        .await?;
        chart::wait_ready(&client).await?;

        if let Err(e) = left {
            panic!("after uninstall: {e:#}; still there: {:?}", leftovers(&client).await);
        }
        assert!(crd_kept, "the CRD stays, as Helm does with crds/");
        Ok(())
    })
    .await;
}
