//! The apps and policies the tests roll: the demo app (exits at once on SIGTERM, so only
//! quiesce's drain keeps requests from failing), a hand-added sidecar for tests without the
//! webhook, and RolloutPolicy manifests.

use std::time::Duration;

use anyhow::Result;
use kube::Client;

use crate::demo_app::DemoApp;
use crate::harness;
use crate::rollout::wait_policy_known;

/// Image of a project component (re-exported for the operator tests).
pub fn image(name: &str) -> String {
    harness::image(name)
}

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
