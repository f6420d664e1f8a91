//! What the tests read and change of a rollout: a policy's status, phase and Events, its
//! annotations and spec; a pod's readiness gate, conditions, injection and revision.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use quiesce_api::RolloutPolicy;

use crate::harness::{self, eventually};

/// Waits until the operator has reconciled policy `name` (an `Accepted` condition, `False`
/// too: the Deployment may not exist yet), then 2 s more: the webhook injects only pods of
/// policies its own cache knows, and a pod created before would start without the sidecar.
pub async fn wait_policy_known(client: &Client, ns: &str, name: &str) -> Result<()> {
    use quiesce_api::constants::conditions::ACCEPTED;
    let accepted = |p: Option<&RolloutPolicy>| {
        p.and_then(|p| p.status.as_ref())
            .is_some_and(|s| s.condition(ACCEPTED).is_some())
    };
    let what = "the policy reconciled";
    harness::wait_for(
        &policies(client, ns),
        name,
        what,
        Duration::from_secs(60),
        accepted,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// The RolloutPolicies of namespace `ns`.
fn policies(client: &Client, ns: &str) -> Api<RolloutPolicy> {
    Api::namespaced(client.clone(), ns)
}

/// The status of a policy (default when it has none yet).
pub async fn policy_status(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<quiesce_api::RolloutPolicyStatus> {
    let api = policies(client, ns);
    Ok(api.get(name).await?.status.unwrap_or_default())
}

/// Waits until policy `name` reports pods without the sidecar (`Injected=False`,
/// `PodsNotInjected`); returns that condition.
pub async fn wait_pods_not_injected(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    use quiesce_api::constants::{conditions, reasons};
    eventually("Injected=False", Duration::from_secs(60), || async {
        let s = policy_status(client, ns, name).await?;
        Ok(s.condition(conditions::INJECTED)
            .filter(|c| c.status == "False" && c.reason == reasons::PODS_NOT_INJECTED)
            .cloned())
    })
    .await
}

/// Waits until the policy's phase is `phase`; a timeout names the phase it was in.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: quiesce_api::Phase,
    timeout: Duration,
) -> Result<quiesce_api::RolloutPolicyStatus> {
    let api = policies(client, ns);
    let in_phase =
        |p: Option<&RolloutPolicy>| p.and_then(|p| p.status.as_ref()?.phase) == Some(phase);
    let what = format!("policy {name} in phase {phase}");
    match harness::wait_for(&api, name, &what, timeout, in_phase).await {
        Ok(p) => Ok(p.status.unwrap_or_default()),
        Err(e) => {
            let last = policy_status(client, ns, name).await.ok();
            let seen = last.as_ref().map(|s| (s.phase, s.message.clone()));
            Err(e.context(format!("its last phase and message: {seen:?}")))
        }
    }
}

/// Whether a pod's readiness gate `quiesce.dev/ready` is True.
pub fn gate_open(pod: &Pod) -> bool {
    condition(pod, quiesce_api::constants::READY_GATE_CONDITION) == Some("True")
}

/// The status of a pod condition.
pub fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Whether the pod carries the quiesce sidecar.
pub fn injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == quiesce_api::constants::SIDECAR_CONTAINER_NAME)
    })
}

/// The `pod-template-hash` of a pod.
pub fn revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(quiesce_api::constants::POD_TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

/// Reasons of the Events regarding the policy `name`, oldest first.
pub async fn policy_events(client: &Client, ns: &str, name: &str) -> Result<Vec<(String, String)>> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut events: Vec<Event> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("RolloutPolicy") && r.name.as_deref() == Some(name)
            })
        })
        .collect();
    events.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    Ok(events
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

/// Sets an annotation on a policy (`quiesce.dev/promote`, `quiesce.dev/abort`), like
/// `kubectl annotate rolloutpolicy NAME KEY=VALUE`.
pub async fn annotate_policy(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    merge_patch_policy(client, ns, name, &patch).await
}

/// Merges `spec` into a policy's spec (e.g. `{"paused": true}`).
pub async fn patch_policy_spec(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<()> {
    merge_patch_policy(client, ns, name, &serde_json::json!({ "spec": spec })).await
}

/// Applies a JSON merge patch to policy `name`.
async fn merge_patch_policy(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<()> {
    let params = kube::api::PatchParams::default();
    policies(client, ns)
        .patch(name, &params, &kube::api::Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Pods of `app` on the policy's update revision whose gate is open (not terminating).
pub async fn admitted_new(client: &Client, ns: &str, app: &str, policy: &str) -> Result<usize> {
    let status = policy_status(client, ns, policy).await?;
    let pods = harness::pods(client, ns, &format!("app={app}")).await?;
    Ok(pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| revision(p) == status.update_revision.as_deref() && gate_open(p))
        .count())
}

/// The `VERSION` env of the Deployment's pod template.
pub async fn template_version(client: &Client, ns: &str, app: &str) -> Result<Option<String>> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
    let d = api.get(app).await?;
    Ok(d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.env)
        .and_then(|env| env.into_iter().find(|e| e.name == "VERSION"))
        .and_then(|e| e.value))
}

/// The reason of a policy condition.
pub fn condition_reason(status: &quiesce_api::RolloutPolicyStatus, type_: &str) -> Option<String> {
    status.condition(type_).map(|c| c.reason.clone())
}
