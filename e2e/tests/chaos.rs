//! Chaos under load: things that go wrong in the middle of a paced rollout (or of serving),
//! each with zero failed requests and no rollout left stuck.
//!
//! - the leader operator's process is SIGKILLed (not a graceful pod deletion);
//! - the sidecar's process is SIGKILLed in a serving pod: the app keeps its container, the
//!   sidecar restarts, the pod is not replaced;
//! - the operator is scaled to 0 and back: pods fail open, the rollout resumes;
//! - a second template change, `kubectl rollout undo`, and a scale of the Deployment, each
//!   while the rollout pauses between steps.
//!
//! The stories share the operator and kill parts of it, so they run one at a time.

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::{Api, Patch, PatchParams};
use quiesce_api::constants::SIDECAR_CONTAINER_NAME;
use quiesce_e2e::chaos;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig, LoadHandle};
use quiesce_e2e::rollout;

const APP: &str = "web";
const REPLICAS: i32 = 3;
/// A pause long enough to act in, and quick drains.
const SPEC: &str = "    steps: [{admit: 1}, {pause: {durationSeconds: 15}}, {admit: \"100%\"}]\n    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10}\n    readiness: {failOpenAfterSeconds: 20}";

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// v1 serving under load (40 req/s, a new connection each).
async fn serving_v1(client: &kube::Client, ns: &str) -> anyhow::Result<LoadHandle> {
    apply_yaml(client, ns, &policy(APP, APP, SPEC)).await?;
    apply_yaml(client, ns, &demo_app(APP, REPLICAS, "v1", &[])).await?;
    harness::wait_rollout(client, ns, APP, Duration::from_secs(120)).await?;
    let url = format!("http://{}:80", cluster_ip(client, ns, APP).await?);
    harness::wait_serving(&url, Duration::from_secs(60)).await?;
    let load = loadgen::spawn(LoadConfig::new(url, 40.0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(load)
}

/// Starts the rollout to `version` and waits for its pause step.
async fn paused_rollout_to(client: &kube::Client, ns: &str, version: &str) -> anyhow::Result<()> {
    apply_yaml(client, ns, &demo_app(APP, REPLICAS, version, &[])).await?;
    eventually("the pause step", Duration::from_secs(120), || async {
        let s = rollout::policy_status(client, ns, APP).await?;
        Ok((s.current_step == Some(1)).then_some(()))
    })
    .await
}

/// Waits until `replicas` pods run the template's `version`, all ready, none terminating.
async fn settled_on(
    client: &kube::Client,
    ns: &str,
    version: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    harness::wait_rollout(client, ns, APP, Duration::from_secs(240)).await?;
    eventually(
        &format!("{replicas} pods of {version}, old ones gone"),
        Duration::from_secs(120),
        || async {
            let pods = harness::pods(client, ns, &format!("app={APP}")).await?;
            Ok((pods.len() == replicas
                && pods.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && pod_version(p).as_deref() == Some(version)
                        && ready(p)
                }))
            .then_some(()))
        },
    )
    .await
}

/// Waits up to `secs` for the policy to report the rollout Completed.
async fn completed(client: &kube::Client, ns: &str, secs: u64) -> anyhow::Result<()> {
    let done = Duration::from_secs(secs);
    rollout::wait_phase(client, ns, APP, quiesce_api::Phase::Completed, done).await?;
    Ok(())
}

fn pod_version(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "app")?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "VERSION")?
        .value
        .clone()
}

fn ready(p: &Pod) -> bool {
    rollout::condition(p, "Ready") == Some("True")
}

/// Stops the load and asserts that no request failed and `version` was served.
async fn no_request_failed(load: LoadHandle, version: &str) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop();
    let summary = load.finish().await;
    println!("load: {}", serde_json::to_string(&summary)?);
    assert_eq!(summary.failed(), 0, "failed requests: {summary:?}");
    assert!(
        summary.ok_by_version.contains_key(version),
        "{version} never served: {summary:?}"
    );
    Ok(())
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

#[tokio::test]
async fn leader_operator_sigkilled_mid_rollout() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("chaos-leader", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        paused_rollout_to(&client, &ns, "v2").await?;
        let leader = chart::leader(&client).await?;
        let pid = chaos::kill_in_pod(&uid(&leader), "quiesce-operato")?;
        println!(
            "SIGKILLed the leader {} (pid {pid})",
            leader.metadata.name.unwrap_or_default()
        );
        settled_on(&client, &ns, "v2", REPLICAS as usize).await?;
        completed(&client, &ns, 120).await?;
        no_request_failed(load, "v2").await
    })
    .await;
    // The killed container restarts; the next story needs a leader.
    chart::wait_ready(&client).await.expect("operator back");
}

#[tokio::test]
async fn sidecar_sigkilled_in_a_serving_pod_restarts_alone() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("chaos-sidecar", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        let victim = pods.first().cloned().expect("a pod");
        let name = victim.metadata.name.clone().unwrap_or_default();
        let restarts_before = sidecar_restarts(&victim);
        let pid = chaos::kill_in_pod(&uid(&victim), "quiesce-sidecar")?;
        println!("SIGKILLed the sidecar of {name} (pid {pid})");
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let after = eventually(
            "the sidecar restarted and the pod ready again",
            Duration::from_secs(90),
            || async {
                let p = api.get(&name).await?;
                Ok((sidecar_restarts(&p) > restarts_before && ready(&p)).then_some(p))
            },
        )
        .await?;
        assert_eq!(uid(&after), uid(&victim), "the pod was replaced");
        assert!(after.metadata.deletion_timestamp.is_none(), "pod deleted");
        let app_restarts = after
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "app"))
            .map(|c| c.restart_count);
        assert_eq!(app_restarts, Some(0), "the app container restarted");
        no_request_failed(load, "v1").await
    })
    .await;
}

fn sidecar_restarts(p: &Pod) -> i32 {
    let s = p.status.as_ref();
    s.and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .chain(s.and_then(|s| s.container_statuses.as_ref()))
        .flatten()
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)
        .map_or(0, |c| c.restart_count)
}

/// Scales the operator Deployment.
async fn scale_operator(client: &kube::Client, replicas: i32) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), chart::NAMESPACE);
    api.patch_scale(
        chart::OPERATOR,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn operator_scaled_to_zero_mid_rollout_fails_open_then_resumes() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    let result = AssertUnwindSafe(with_namespace("chaos-noop", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        paused_rollout_to(&client, &ns, "v2").await?;
        scale_operator(&client, 0).await?;
        println!("operator scaled to 0");
        // No operator: new pods open their own gate after failOpenAfterSeconds (or, created
        // while the webhook is gone too, run without the sidecar), so the Deployment
        // controller is never stuck behind an absent operator.
        settled_on(&client, &ns, "v2", REPLICAS as usize).await?;
        println!("rollout finished without the operator (fail-open)");
        scale_operator(&client, 2).await?;
        chart::wait_ready(&client).await?;
        // The operator, back, takes over and reports the rollout done.
        completed(&client, &ns, 120).await?;
        no_request_failed(load, "v2").await
    }))
    .catch_unwind()
    .await;
    // Whatever happened, the operator comes back for the other tests.
    scale_operator(&client, 2)
        .await
        .expect("operator scaled back");
    chart::wait_ready(&client).await.expect("operator back");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn second_template_change_mid_rollout() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("chaos-v3", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        paused_rollout_to(&client, &ns, "v2").await?;
        apply_yaml(&client, &ns, &demo_app(APP, REPLICAS, "v3", &[])).await?;
        println!("v3 applied while v2 paused");
        settled_on(&client, &ns, "v3", REPLICAS as usize).await?;
        completed(&client, &ns, 180).await?;
        no_request_failed(load, "v3").await
    })
    .await;
}

#[tokio::test]
async fn rollout_undo_mid_rollout() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("chaos-undo", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        paused_rollout_to(&client, &ns, "v2").await?;
        let out = tokio::process::Command::new("kubectl")
            .args(["rollout", "undo", &format!("deployment/{APP}"), "-n", &ns])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl rollout undo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        settled_on(&client, &ns, "v1", REPLICAS as usize).await?;
        no_request_failed(load, "v1").await?;
        let s = rollout::policy_status(&client, &ns, APP).await?;
        assert_ne!(
            s.phase,
            Some(quiesce_api::Phase::Progressing),
            "policy left progressing: {s:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deployment_scaled_mid_rollout() {
    let _one = one_at_a_time().await;
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("chaos-scale", |client, ns| async move {
        let load = serving_v1(&client, &ns).await?;
        paused_rollout_to(&client, &ns, "v2").await?;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        api.patch_scale(
            APP,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})),
        )
        .await?;
        println!("scaled to 5 while paused");
        settled_on(&client, &ns, "v2", 5).await?;
        completed(&client, &ns, 180).await?;
        no_request_failed(load, "v2").await
    })
    .await;
}
