//! The sidecar's privileges stop at its own pod, on a cluster with the chart installed
//! (issue 10, item 1). The operator binds the sidecar role to the service account a policy's
//! target runs as, where injection is on; the chart's ValidatingAdmissionPolicy takes those
//! bindings as parameters. Tried here with that service account's credentials:
//! - a token without the pod-name claim (`kubectl create token`): refused;
//! - a pod-bound token on another pod, on a non-quiesce condition, on another status field
//!   (an allow-list), on labels through `pods/status`: refused; on its own pod's
//!   `quiesce.dev/` condition: allowed;
//! - another controller of the namespace, under its own service account and Role, patches pod
//!   status: allowed (the policy touches only the accounts quiesce bound).
//!
//! And the bindings follow the policies, from a watch: none in a namespace labelled
//! `quiesce.dev/inject=disabled`; one deleted or widened by hand is put back; the last policy
//! of a namespace gone (and its pods) takes the binding with it.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use serde_json::json;

const APP: &str = "web";
/// The operator's binding of the chart's sidecar role to the demo app's service account.
const BINDING: &str = "quiesce-sidecar-default";
const POLICY_SPEC: &str = "    steps: [{admit: \"100%\"}]";

async fn binding(client: &Client, ns: &str) -> Result<Option<RoleBinding>> {
    Ok(Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get_opt(BINDING)
        .await?)
}

/// `patch` on `pod`'s status as `api`'s caller: `Ok(())` or the refusal's message.
async fn patch_status(
    api: &Api<Pod>,
    pod: &str,
    patch: serde_json::Value,
) -> Result<std::result::Result<(), String>> {
    match api
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => Ok(Err(e.message)),
        Err(e) => Err(e.into()),
    }
}

fn condition(type_: &str) -> serde_json::Value {
    json!({"status": {"conditions": [
        {"type": type_, "status": "True", "reason": "E2E", "message": "written by the e2e suite"}
    ]}})
}

fn refused(outcome: std::result::Result<(), String>, what: &str, expect: &str) {
    match outcome {
        Err(message) => {
            assert!(
                message.contains(expect),
                "{what}: refused, but why? {message}"
            );
            println!("{what}: refused: {message}");
        }
        Ok(()) => panic!("{what}: must be refused, was allowed"),
    }
}

#[tokio::test]
async fn the_sidecar_account_is_held_to_its_own_pod_and_bound_only_where_needed() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("sc-off", |client, off| async move {
        // Opted out: a policy here gets no binding.
        Api::<Namespace>::all(client.clone())
            .patch(
                &off,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"quiesce.dev/inject": "disabled"}}})),
            )
            .await?;
        apply_yaml(&client, &off, &policy(APP, APP, POLICY_SPEC)).await?;
        apply_yaml(&client, &off, &demo_app(APP, 1, "v1", &[])).await?;

        with_namespace("sc-priv", |client, ns| {
            let off = off.clone();
            async move { privileges(&client, &ns, &off).await }
        })
        .await;
        Ok(())
    })
    .await;
}

async fn privileges(client: &Client, ns: &str, off: &str) -> Result<()> {
    fixtures::demo_app_with_policy(client, ns, APP, POLICY_SPEC, 2).await?;
    let bound = eventually("the sidecar binding", Duration::from_secs(60), || async {
        binding(client, ns).await
    })
    .await?;
    assert_eq!(
        bound
            .labels()
            .get("quiesce.dev/sidecar-binding")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        binding(client, off).await?.is_none(),
        "no binding where injection is disabled"
    );

    let pods = harness::pods(client, ns, &format!("app={APP}")).await?;
    let (me, other) = (&pods[0], &pods[1]);
    let pod_token = harness::service_account_token(client, ns, "default", Some(me)).await?;
    let as_me: Api<Pod> = Api::namespaced(harness::client_with_token(pod_token).await?, ns);
    let unbound = harness::service_account_token(client, ns, "default", None).await?;
    let as_unbound: Api<Pod> = Api::namespaced(harness::client_with_token(unbound).await?, ns);

    patch_status(&as_me, &me.name_any(), condition("quiesce.dev/e2e"))
        .await?
        .map_err(anyhow::Error::msg)
        .context("a pod-bound token may set a quiesce.dev/ condition of its own pod")?;
    refused(
        patch_status(&as_unbound, &me.name_any(), condition("quiesce.dev/e2e")).await?,
        "a token without the pod-name claim",
        "pod-bound token",
    );
    refused(
        patch_status(&as_me, &other.name_any(), condition("quiesce.dev/e2e")).await?,
        "another pod's status",
        "may patch only its own status",
    );
    refused(
        patch_status(&as_me, &me.name_any(), condition("example.com/checked")).await?,
        "a condition that is not quiesce's",
        "only quiesce.dev/ conditions",
    );
    refused(
        patch_status(
            &as_me,
            &me.name_any(),
            json!({"status": {"message": "hijacked"}}),
        )
        .await?,
        "another status field (status.message)",
        "only quiesce.dev/ conditions",
    );
    refused(
        patch_status(
            &as_me,
            &me.name_any(),
            json!({"metadata": {"labels": {"app": "elsewhere"}}}),
        )
        .await?,
        "labels through pods/status",
        "cannot be changed through pods/status",
    );

    // Another controller of the namespace writes pod status under its own account.
    apply_yaml(
        client,
        ns,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: checker}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: checker}
rules: [{apiGroups: [""], resources: ["pods/status"], verbs: ["patch"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: checker}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: checker}
subjects: [{kind: ServiceAccount, name: checker}]
"#,
    )
    .await?;
    let checker = harness::service_account_token(client, ns, "checker", None).await?;
    let as_checker: Api<Pod> = Api::namespaced(harness::client_with_token(checker).await?, ns);
    eventually(
        "the foreign controller's patch",
        Duration::from_secs(20),
        || async {
            // RBAC may take a moment to see the new binding.
            Ok(patch_status(
                &as_checker,
                &me.name_any(),
                condition("example.com/checked"),
            )
            .await?
            .ok())
        },
    )
    .await?;
    println!("foreign controller's status patch: allowed");

    // Deleted or widened by hand: put back from the watch.
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings.delete(BINDING, &DeleteParams::default()).await?;
    eventually(
        "the deleted binding back",
        Duration::from_secs(30),
        || async {
            Ok(binding(client, ns)
                .await?
                .filter(|b| b.metadata.deletion_timestamp.is_none()))
        },
    )
    .await?;
    bindings
        .patch(
            BINDING,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "add", "path": "/subjects/-",
                 "value": {"kind": "ServiceAccount", "name": "checker", "namespace": ns}}
            ]))?),
        )
        .await?;
    eventually(
        "the widened binding narrowed again",
        Duration::from_secs(30),
        || async {
            let b = binding(client, ns).await?;
            Ok(b.filter(|b| b.subjects.as_ref().is_some_and(|s| s.len() == 1)))
        },
    )
    .await?;
    println!("binding deleted and widened by hand: put back");

    // The last policy goes, then the pods that carry the sidecar: the binding goes.
    Api::<quiesce_api::RolloutPolicy>::namespaced(client.clone(), ns)
        .delete(APP, &DeleteParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        binding(client, ns).await?.is_some(),
        "kept while pods with the sidecar run"
    );
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
        .delete(APP, &DeleteParams::default())
        .await?;
    eventually("the binding gone", Duration::from_secs(90), || async {
        Ok(binding(client, ns).await?.is_none().then_some(()))
    })
    .await?;
    println!("last policy and its pods gone: binding deleted");
    Ok(())
}
