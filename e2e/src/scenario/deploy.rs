//! The namespaces of a run, a variant deployed into one (checked for the injected sidecar), and
//! where a stuck rollout stands, for its error.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::SIDECAR_CONTAINER_NAME;

use super::{APP, Variant, deployment_yaml, policy_yaml};
use crate::harness::{self, apply_yaml};

/// Label on the namespaces `make demo` and `make bench` create; the value names the tool.
pub const NAMESPACE_LABEL: &str = "quiesce.dev/scenario";

/// Deletes (without waiting) the namespaces an earlier run of `tool` left behind.
pub async fn delete_leftovers(client: &Client, tool: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{NAMESPACE_LABEL}={tool}");
    for ns in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        if ns.metadata.deletion_timestamp.is_none() {
            let _ = api
                .delete(&ns.name_any(), &DeleteParams::background())
                .await;
        }
    }
    Ok(())
}

/// Creates a namespace `<prefix>-<random>` (Pod Security `restricted`) labelled for `tool`.
/// A fresh name every run: nothing of an earlier run (still terminating, or remembered by a
/// controller) can leak into this one.
pub async fn fresh_namespace(client: &Client, tool: &str, prefix: &str) -> Result<String> {
    use std::hash::{BuildHasher, RandomState};
    let suffix = RandomState::new().hash_one(std::time::SystemTime::now()) & 0xffff;
    let name = format!("{prefix}-{suffix:04x}");
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            NAMESPACE_LABEL: tool,
            "pod-security.kubernetes.io/enforce": "restricted"}}
    }))?;
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name)
}

/// Deletes a namespace without waiting.
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Deploys `variant` at version `v1` in `ns` and waits until it is rolled out. With quiesce the
/// policy goes first, and the pods are checked for the injected sidecar.
pub async fn deploy(client: &Client, ns: &str, variant: Variant) -> Result<()> {
    if variant.is_quiesce() {
        apply_yaml(client, ns, &policy_yaml(variant)).await?;
        // The webhook injects only once the operator has seen the policy.
        let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
        harness::eventually(
            "the operator to pick up the RolloutPolicy (status written)",
            Duration::from_secs(60),
            || async { Ok(api.get(APP).await?.status.map(|_| ())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    apply_yaml(client, ns, &deployment_yaml(variant, "v1")).await?;
    if let Err(e) = harness::wait_rollout(client, ns, APP, Duration::from_secs(180)).await {
        bail!("{e:#}\n{}", diagnose(client, ns).await);
    }
    if variant.is_quiesce() {
        let pods = harness::pods(client, ns, &format!("app={APP}")).await?;
        let injected = |p: &Pod| {
            p.spec.as_ref().is_some_and(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == SIDECAR_CONTAINER_NAME)
            })
        };
        let bare: Vec<String> = pods
            .iter()
            .filter(|p| !injected(p))
            .map(|p| p.name_any())
            .collect();
        if !bare.is_empty() {
            bail!(
                "pods created without the quiesce sidecar: {bare:?} (is the webhook running? \
                 see docs/troubleshooting.md)"
            );
        }
    }
    Ok(())
}

/// Where a rollout stands, for an error message: the policy's status message and each pod's
/// readiness and gate.
pub async fn diagnose(client: &Client, ns: &str) -> String {
    let mut out = String::new();
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    if let Ok(Some(p)) = policies.get_opt(APP).await {
        let st = p.status.unwrap_or_default();
        out += &format!(
            "RolloutPolicy {APP}: phase {:?}: {}\n",
            st.phase,
            st.message.unwrap_or_default()
        );
    }
    for pod in harness::pods(client, ns, &format!("app={APP}"))
        .await
        .unwrap_or_default()
    {
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let show = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| {
                    format!(
                        "{}={} {}",
                        t,
                        c.status,
                        c.reason.clone().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| format!("{t} unset"))
        };
        out += &format!(
            "  pod {}: {}, {}{}\n",
            pod.name_any(),
            show("Ready"),
            show(quiesce_api::constants::READY_GATE_CONDITION),
            if pod.metadata.deletion_timestamp.is_some() {
                ", terminating"
            } else {
                ""
            }
        );
    }
    out += "(docs/troubleshooting.md explains each gate reason; the operator's log: \
            kubectl -n quiesce-system logs deploy/quiesce-operator)";
    out
}
