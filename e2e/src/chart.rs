//! The quiesce Helm chart, installed once per test run (`helm upgrade --install`, idempotent,
//! so every test binary may call [`install`]), and what the operator tests read from it: the
//! leader replica and its metrics.
//!
//! Helm runs where the tests run (`e2e/cluster/cluster.sh exec` puts `.tools/bin` on `PATH`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::demo_app::DemoApp;
use crate::harness::{self, eventually};

/// Helm release name.
pub const RELEASE: &str = "quiesce";
/// Namespace of the operator.
pub const NAMESPACE: &str = "quiesce-system";
/// Name of the operator Deployment, ServiceAccount and leader Lease.
pub const OPERATOR: &str = "quiesce-operator";
/// Name of the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION: &str = "quiesce-sidecar-injector";
/// Admin port of the operator (`/metrics`).
pub const ADMIN_PORT: u16 = 8080;

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A project tool: `.tools/bin/<name>` (what `e2e/cluster/tools.sh` installs), else the PATH's.
pub fn tool(name: &str) -> PathBuf {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// Runs helm with `args`, failing with its output.
pub async fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new(tool("helm"))
        .args(args)
        .output()
        .await
        .context("running helm (run the e2e suite through e2e/cluster/cluster.sh exec)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("helm {} failed: {text}", args.join(" "));
    }
    Ok(text)
}

/// A fingerprint of the operator image tarball loaded into the cluster, so an upgrade
/// restarts the operator when the image under the same tag changed.
fn image_stamp() -> String {
    let cache = std::env::var("QUIESCE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/quiesce")
        });
    std::fs::metadata(cache.join("images/project/operator.tar"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Installs (or upgrades to) the chart from this tree with the locally loaded images, once
/// per process; waits until the operator serves the webhook with its CA in the caBundle.
pub async fn install(client: &Client) -> Result<()> {
    INSTALLED
        .get_or_try_init(|| install_from_tree(client))
        .await
        .copied()
}

/// What [`install`] does once: `helm upgrade --install` of this tree's chart, then
/// [`wait_ready`]. For a test that installed another chart and puts this one back.
pub async fn install_from_tree(client: &Client) -> Result<()> {
    let chart = repo_root().join("charts/quiesce");
    let stamp = format!(
        "operator.podAnnotations.quiesce\\.dev/image-stamp={}",
        image_stamp()
    );
    helm(&[
        "upgrade",
        "--install",
        RELEASE,
        chart.to_str().unwrap_or("charts/quiesce"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set-string",
        &stamp,
        "--wait",
        "--timeout",
        "180s",
    ])
    .await?;
    wait_ready(client).await
}

/// Waits until the webhook configuration carries a caBundle and a leader holds the Lease.
pub async fn wait_ready(client: &Client) -> Result<()> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually("webhook caBundle", Duration::from_secs(60), || async {
        let m = mwcs.get(WEBHOOK_CONFIGURATION).await?;
        Ok(m.webhooks
            .unwrap_or_default()
            .iter()
            .all(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            })
            .then_some(()))
    })
    .await?;
    leader(client).await.map(|_| ())
}

/// The operator pod holding the leader Lease.
pub async fn leader(client: &Client) -> Result<Pod> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("a leader operator", Duration::from_secs(60), || async {
        let lease = leases.get_opt(OPERATOR).await?;
        let Some(holder) = lease.and_then(|l| l.spec?.holder_identity) else {
            return Ok(None);
        };
        Ok(pods
            .get_opt(&holder)
            .await?
            .filter(|p| p.metadata.deletion_timestamp.is_none()))
    })
    .await
}

/// The leader's `/metrics` text.
pub async fn leader_metrics(client: &Client) -> Result<String> {
    let pod = leader(client).await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("leader pod has no IP")?;
    let (_, body) = crate::harness::http_get(&format!("http://{ip}:{ADMIN_PORT}/metrics")).await?;
    Ok(body)
}

/// The value of the first sample of `metric` whose labels contain every `label="value"` of
/// `labels`.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Image of a project component (re-exported for the operator tests).
pub fn image(name: &str) -> String {
    harness::image(name)
}

// ----- the apps and policies the operator tests roll --------------------------------------

/// A demo-app Deployment `app` (pods labelled `app=<app>`) with `replicas`, serving `version`,
/// exiting at once on SIGTERM (so only quiesce's drain keeps requests from failing), and its
/// Service. `extra_env` adds env vars (`FAIL_HEALTH`, `CRASH_AFTER_SECS` make bad versions).
pub fn demo_app(app: &str, replicas: i32, version: &str, extra_env: &[(&str, &str)]) -> String {
    demo(app, replicas, version, extra_env).yaml()
}

/// [`demo_app`] as its builder, for a test that changes more of it.
pub fn demo(app: &str, replicas: i32, version: &str, extra_env: &[(&str, &str)]) -> DemoApp {
    let base = DemoApp::new(app, usize::try_from(replicas).unwrap_or(0), version)
        .env("EXIT_ON_SIGTERM", "immediate")
        .env_field("POD_NAME", "metadata.name");
    extra_env
        .iter()
        .fold(base, |app, (name, value)| app.env(name, value))
}

/// The RoleBinding that lets the `default` service account's sidecars run, for pods that carry
/// the sidecar without the webhook ([`hand_injected_pod_spec`]).
pub const SIDECAR_BINDING_FOR_DEFAULT: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: quiesce-sidecar-default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: quiesce-sidecar}
subjects: [{kind: ServiceAccount, name: default}]
"#;

/// The quiesce sidecar as a native sidecar container added by hand (no webhook), for the
/// demo app on port 8080: the pod's identity from the downward API, the app's port and health
/// path, then `extra_env` (name, value).
pub fn hand_sidecar(extra_env: &[(&str, &str)]) -> serde_json::Value {
    let field = |path: &str| serde_json::json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        serde_json::json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        serde_json::json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        serde_json::json!({"name": "POD_IP", "valueFrom": field("status.podIP")}),
        serde_json::json!({"name": "QUIESCE_APP_PORTS", "value": "8080"}),
        serde_json::json!({"name": "QUIESCE_PROBE_PATH", "value": "/healthz"}),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value})),
    );
    serde_json::json!({
        "name": quiesce_api::constants::SIDECAR_CONTAINER_NAME,
        "image": harness::image("sidecar"),
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "ports": [{"name": "quiesce-admin", "containerPort": quiesce_api::constants::SIDECAR_ADMIN_PORT}],
        "env": env,
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}},
    })
}

/// A pod spec (JSON, which YAML embeds as it is) with the demo app and the sidecar added by
/// hand behind the readiness gate, as an injected pod whose operator is gone: no policy governs
/// it, so its sidecar opens the gate itself after `fail_open_after` seconds.
pub fn hand_injected_pod_spec(fail_open_after: u32) -> serde_json::Value {
    let fail_open = fail_open_after.to_string();
    serde_json::json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}},
        "readinessGates": [{"conditionType": quiesce_api::constants::READY_GATE_CONDITION}],
        "initContainers": [hand_sidecar(&[(quiesce_api::constants::SIDECAR_FAIL_OPEN_ENV, &fail_open)])],
        "containers": [{
            "name": "app",
            "image": harness::image("demo-app"),
            "imagePullPolicy": "Never",
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}},
        }],
    })
}

/// A RolloutPolicy `name` for Deployment `target`; `spec` is YAML of the other spec fields,
/// indented by four spaces (e.g. `"    steps: [{admit: 1}, {admit: '100%'}]"`).
pub fn policy(name: &str, target: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: quiesce.dev/v1alpha1
kind: RolloutPolicy
metadata: {{name: {name}}}
spec:
    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
{spec}
"#
    )
}

/// Waits until the operator has reconciled policy `name` (an `Accepted` condition, `False`
/// too: the Deployment may not exist yet), then 2 s more: the webhook injects only pods of
/// policies its own cache knows, and a pod created before would start without the sidecar.
pub async fn wait_policy_known(client: &Client, ns: &str, name: &str) -> Result<()> {
    harness::eventually("the policy reconciled", Duration::from_secs(60), || async {
        let s = policy_status(client, ns, name).await?;
        Ok(s.condition(quiesce_api::constants::conditions::ACCEPTED)
            .is_some()
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// A policy `app` for the demo app `app` (`spec` as for [`policy`]), known to the webhook,
/// then the demo app with `replicas` pods, rolled out (every pod injected).
pub async fn demo_app_with_policy(
    client: &Client,
    ns: &str,
    app: &str,
    spec: &str,
    replicas: i32,
) -> Result<()> {
    harness::apply_yaml(client, ns, &policy(app, app, spec)).await?;
    wait_policy_known(client, ns, app).await?;
    harness::apply_yaml(client, ns, &demo_app(app, replicas, "v1", &[])).await?;
    harness::wait_rollout(client, ns, app, Duration::from_secs(120)).await?;
    Ok(())
}

/// The status of a policy (default when it has none yet).
pub async fn policy_status(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<quiesce_api::RolloutPolicyStatus> {
    let api: Api<quiesce_api::RolloutPolicy> = Api::namespaced(client.clone(), ns);
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

/// Waits until the policy's phase is `phase`.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: quiesce_api::Phase,
    timeout: Duration,
) -> Result<quiesce_api::RolloutPolicyStatus> {
    eventually(
        &format!("policy {name} in phase {phase}"),
        timeout,
        || async {
            let s = policy_status(client, ns, name).await?;
            Ok((s.phase == Some(phase)).then_some(s))
        },
    )
    .await
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
    let api: Api<quiesce_api::RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Merges `spec` into a policy's spec (e.g. `{"paused": true}`).
pub async fn patch_policy_spec(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<()> {
    let api: Api<quiesce_api::RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "spec": spec });
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
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

#[cfg(test)]
mod tests {
    use super::repo_root;

    /// A release is tagged with the workspace's version (`images.sh push`); the chart in the
    /// tree says the same, so a chart packaged from it names the images released with it.
    #[test]
    fn the_charts_version_and_app_version_are_the_workspaces() {
        let chart = std::fs::read_to_string(repo_root().join("charts/quiesce/Chart.yaml"))
            .expect("Chart.yaml");
        let field = |name: &str| {
            chart
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        let workspace = env!("CARGO_PKG_VERSION");
        assert_eq!(field("version").as_deref(), Some(workspace));
        assert_eq!(field("appVersion").as_deref(), Some(workspace));
    }
}
