//! The sidecar on a real cluster, added by hand (no operator): an app that exits the moment it
//! gets SIGTERM is rolled under load. Without the sidecar some requests fail; with it none do,
//! and each terminated pod reports `quiesce.dev/drained`. The sidecar's privileges stop at its
//! own pod, and nobody outside the pod can drain it.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use quiesce_api::constants::{DRAINED_CONDITION, SIDECAR_ADMIN_PORT, SIDECAR_DRAIN_PATH};
use quiesce_e2e::demo_app::DemoApp;
use quiesce_e2e::fixtures;
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, http_get, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig, Summary};
use serde_json::json;

const APP: &str = "web";

const RATE: f64 = 40.0;

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The demo app (exit at once on SIGTERM) behind a Service; with `sidecar`, the quiesce sidecar
/// as a native sidecar, its readiness as the pod's, and the app's preStop calling its drain.
fn manifests(version: &str, sidecar: bool) -> String {
    let app = DemoApp::new(APP, 3, version)
        .env("EXIT_ON_SIGTERM", "immediate")
        .service_account(APP);
    let service_account =
        format!("{{apiVersion: v1, kind: ServiceAccount, metadata: {{name: {APP}}}}}");
    if !sidecar {
        return format!("{service_account}\n---\n{}", app.yaml());
    }
    // With the sidecar the pod's readiness is the sidecar's (it probes the app's /healthz
    // itself and pauses during a drain). A kubelet probe straight to the app port would count
    // as a new connection and, at a period shorter than the quiet period, force every drain.
    let app = app
        .probe(None)
        .grace_seconds(60)
        .pre_stop(json!({"httpGet": {"path": SIDECAR_DRAIN_PATH, "port": SIDECAR_ADMIN_PORT}}));
    let admin = |path: &str, period: u32| json!({"httpGet": {"path": path, "port": "quiesce-admin"}, "periodSeconds": period});
    let mut sidecar = fixtures::hand_sidecar(&[
        ("QUIESCE_PROBE_PERIOD", "500ms"),
        ("QUIESCE_PROBE_TIMEOUT", "400ms"),
    ]);
    sidecar["readinessProbe"] = admin("/readyz", 1);
    sidecar["livenessProbe"] = admin("/livez", 5);
    sidecar["resources"] =
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}});
    let mut deployment = app.deployment();
    deployment["spec"]["template"]["spec"]["initContainers"] = json!([sidecar]);
    format!(
        "{service_account}\n---\n{deployment}\n---\n{}",
        app.service()
    )
}

/// The sidecar's Role (bound to the app's service account) and its admission policy.
async fn install_sidecar_privileges(client: &Client, ns: &str) -> Result<()> {
    apply_yaml(client, ns, &repo_file("sidecar/deploy/role.yaml")).await?;
    // Under a name of its own: the chart installs the same policy under the shipped name.
    let policy = repo_file("sidecar/deploy/validating-admission-policy.yaml").replace(
        "quiesce-sidecar-own-pod-status",
        "quiesce-sidecar-own-pod-status-e2e",
    );
    apply_yaml(client, ns, &policy).await?;
    Ok(())
}

/// Deploys v1, then rolls to v2 under open-loop load (a new connection per request) and
/// returns the load's outcome once the old pods are gone.
async fn roll_under_load(client: &Client, ns: &str, sidecar: bool) -> Result<(Summary, Duration)> {
    apply_yaml(client, ns, &manifests("v1", sidecar)).await?;
    harness::wait_rollout(client, ns, APP, Duration::from_secs(120)).await?;
    let url = format!("http://{}:80", cluster_ip(client, ns, APP).await?);
    harness::wait_serving(&url, Duration::from_secs(30)).await?;
    let load = loadgen::spawn(LoadConfig {
        keep_alive: false,
        ..LoadConfig::new(url, RATE)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = tokio::time::Instant::now();
    apply_yaml(client, ns, &manifests("v2", sidecar)).await?;
    harness::wait_rollout(client, ns, APP, Duration::from_secs(240)).await?;
    harness::eventually("old pods to be gone", Duration::from_secs(120), || async {
        let pods = harness::pods(client, ns, &format!("app={APP}")).await?;
        Ok(
            (pods.len() == 3 && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
                .then_some(()),
        )
    })
    .await?;
    let rollout = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop();
    Ok((load.finish().await, rollout))
}

#[tokio::test]
async fn without_the_sidecar_an_exit_at_once_app_loses_requests() {
    with_namespace("plain", |client, ns| async move {
        let (summary, rollout) = roll_under_load(&client, &ns, false).await?;
        // How many fail depends on how late kube-proxy hears of the removal: measured and
        // reported, the point of comparison for the test below.
        println!(
            "WITHOUT sidecar: sent {} failed {} (refused {} reset {} timeout {} other {}) rollout {:.1}s",
            summary.sent, summary.failed(), summary.refused, summary.reset, summary.timeout,
            summary.other, rollout.as_secs_f64()
        );
        assert!(summary.ok_by_version.contains_key("v2"), "v2 served: {summary:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn with_the_sidecar_a_rolling_update_loses_nothing_and_reports_drains() {
    with_namespace("sidecar", |client, ns| async move {
        install_sidecar_privileges(&client, &ns).await?;

        let watch = harness::DrainWatch::start(&client, &ns);
        let (summary, rollout) = roll_under_load(&client, &ns, true).await?;
        let drained = watch.snapshot();
        println!(
            "WITH sidecar: sent {} failed {} rollout {:.1}s: {}",
            summary.sent,
            summary.failed(),
            rollout.as_secs_f64(),
            serde_json::to_string(&summary)?
        );
        for (pod, (status, reason, message)) in &drained {
            println!("  {pod}: {DRAINED_CONDITION}={status} {reason}: {message}");
        }
        assert_eq!(
            summary.failed(),
            0,
            "no request failed with the sidecar: {summary:?}"
        );
        assert!(
            summary.sent as f64 > RATE * 5.0,
            "load ran through the rollout: {summary:?}"
        );
        let done: Vec<_> = drained.values().filter(|(s, _, _)| s == "True").collect();
        assert_eq!(
            done.len(),
            3,
            "each of the 3 old pods reported a finished drain: {drained:?}"
        );
        for (_, reason, message) in done {
            assert_eq!(reason, "Drained", "not forced: {message}");
            let report = quiesce_api::DrainReport::from_condition_message(message);
            assert!(report.is_some(), "a structured report: {message}");
        }
        Ok(())
    })
    .await;
}

/// A client that authenticates as `pod`, with the pod-bound token the kubelet would give it.
async fn client_as_pod(client: &Client, ns: &str, pod: &Pod) -> Result<Client> {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .context("pod SA")?;
    let token = harness::service_account_token(client, ns, &sa, Some(pod)).await?;
    harness::client_with_token(token).await
}

fn condition_patch(type_: &str) -> Patch<serde_json::Value> {
    Patch::Strategic(serde_json::json!({"status": {"conditions": [
        {"type": type_, "status": "False", "reason": "E2E", "message": "written by the e2e suite"}
    ]}}))
}

#[tokio::test]
async fn a_sidecar_may_touch_only_its_own_pod_and_nobody_can_drain_a_running_pod() {
    with_namespace("sidecar-rbac", |client, ns| async move {
        install_sidecar_privileges(&client, &ns).await?;
        apply_yaml(&client, &ns, &manifests("v1", true)).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        let (me, other) = (&pods[0], &pods[1]);
        let as_me = client_as_pod(&client, &ns, me).await?;
        let api: Api<Pod> = Api::namespaced(as_me, &ns);
        let pp = PatchParams::default();

        api.patch_status(&me.name_any(), &pp, &condition_patch(DRAINED_CONDITION))
            .await
            .context("a pod may set quiesce's condition on itself")?;
        match api
            .patch_status(&other.name_any(), &pp, &condition_patch(DRAINED_CONDITION))
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert!(
                    e.message.contains("may patch only its own status"),
                    "refused by the policy: {}",
                    e.message
                );
                println!("other pod's status: refused ({}): {}", e.code, e.message);
            }
            other => panic!("patching another pod's status must be refused, got {other:?}"),
        }
        match api
            .patch_status(&me.name_any(), &pp, &condition_patch("Ready"))
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert!(
                    e.message.contains("only quiesce.dev/ conditions"),
                    "refused by the policy: {}",
                    e.message
                );
            }
            other => panic!("changing a non-quiesce condition must be refused, got {other:?}"),
        }

        // An outsider (this test, from the node's network) calls the drain of a running pod.
        let ip = me
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("pod IP")?;
        let (status, body) = http_get(&format!(
            "http://{ip}:{SIDECAR_ADMIN_PORT}{SIDECAR_DRAIN_PATH}"
        ))
        .await?;
        assert_eq!(
            status, 403,
            "a drain call on a running pod is refused: {body}"
        );
        let (ready, _) = http_get(&format!("http://{ip}:{SIDECAR_ADMIN_PORT}/readyz")).await?;
        assert_eq!(ready, 200, "the refused call did not start a drain");
        Ok(())
    })
    .await;
}
