//! Injection never makes a healthy pod unhealthy: an app whose readiness probe the sidecar
//! cannot reproduce (exec) and an app listening on the sidecar's default admin port 9901 both
//! become Ready under quiesce and roll out; a hostNetwork Deployment is not injected, and the
//! reason is on the policy for the user to see.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use quiesce_api::constants::{SIDECAR_CONTAINER_NAME, SIDECAR_DRAIN_PATH, conditions, reasons};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout::{self, injected, policy_events};
use serde_json::json;

const APP: &str = "web";

fn sidecar(pod: &Pod) -> &Container {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == SIDECAR_CONTAINER_NAME))
        .expect("the sidecar")
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn ready(pod: &Pod) -> bool {
    rollout::condition(pod, "Ready") == Some("True")
}

/// Every live pod of the app runs `version`, is injected and Ready.
async fn all_ready_and_injected(
    client: &kube::Client,
    ns: &str,
    version: &str,
) -> anyhow::Result<Vec<Pod>> {
    harness::wait_rollout(client, ns, APP, Duration::from_secs(180)).await?;
    eventually(
        "every pod injected and Ready",
        Duration::from_secs(60),
        || async {
            let pods: Vec<Pod> = harness::pods(client, ns, &format!("app={APP}"))
                .await?
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let runs_version = |p: &Pod| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers[0]
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "VERSION" && e.value.as_deref() == Some(version))
                })
            };
            Ok((!pods.is_empty()
                && pods
                    .iter()
                    .all(|p| injected(p) && ready(p) && runs_version(p)))
            .then_some(pods))
        },
    )
    .await
}

#[tokio::test]
async fn an_app_with_an_exec_readiness_probe_becomes_ready_and_rolls_out() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("fidelity-exec", |client, ns| async move {
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        rollout::wait_policy_known(&client, &ns, APP).await?;
        let app = |version: &str| {
            // The image has nothing but the app: its --help is the command that exists.
            let probe = json!({"exec": {"command": ["/demo-app", "--help"]}, "periodSeconds": 1});
            fixtures::demo(APP, 2, version, &[])
                .probe(Some(probe))
                .yaml()
        };
        apply_yaml(&client, &ns, &app("v1")).await?;
        let pods = all_ready_and_injected(&client, &ns, "v1").await?;
        for p in &pods {
            // The sidecar does not guess (it used to TCP-check the lowest port) ...
            assert_eq!(env(sidecar(p), "QUIESCE_PROBE"), Some("none"));
            let note = annotation(p, "quiesce.dev/app-probe").unwrap_or_default();
            assert!(note.starts_with("none: it is an exec probe"), "{note}");
            // ... and the kubelet's exec probe of the app stays in place.
            let probe = p.spec.as_ref().unwrap().containers[0]
                .readiness_probe
                .as_ref();
            assert!(probe.and_then(|p| p.exec.as_ref()).is_some());
        }
        let events = policy_events(&client, &ns, APP).await?;
        assert!(
            events
                .iter()
                .any(|(reason, _)| reason == "ProbeNotReproduced"),
            "{events:?}"
        );

        // A rollout under quiesce completes.
        apply_yaml(&client, &ns, &app("v2")).await?;
        all_ready_and_injected(&client, &ns, "v2").await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_app_on_port_9901_gets_the_sidecar_on_9902_and_rolls_out() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("fidelity-9901", |client, ns| async move {
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        rollout::wait_policy_known(&client, &ns, APP).await?;
        let app = |version: &str| {
            fixtures::demo(APP, 2, version, &[("PORT", "9901")])
                .app_port(9901)
                .yaml()
        };
        apply_yaml(&client, &ns, &app("v1")).await?;
        let pods = all_ready_and_injected(&client, &ns, "v1").await?;
        for p in &pods {
            let s = sidecar(p);
            assert_eq!(env(s, "QUIESCE_ADMIN_PORT"), Some("9902"));
            assert_eq!(env(s, "QUIESCE_APP_PORTS"), Some("9901"));
            assert_eq!(annotation(p, "quiesce.dev/admin-port"), Some("9902"));
            let admin: Vec<i32> = s.ports.iter().flatten().map(|p| p.container_port).collect();
            assert_eq!(admin, vec![9902]);
            let hook = p.spec.as_ref().unwrap().containers[0]
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.http_get.as_ref())
                .expect("the drain hook");
            assert_eq!(hook.path.as_deref(), Some(SIDECAR_DRAIN_PATH));
            assert_eq!(
                hook.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9902)
            );
        }
        let events = policy_events(&client, &ns, APP).await?;
        assert!(
            events
                .iter()
                .any(|(reason, note)| reason == "AdminPortMoved" && note.contains("9902")),
            "{events:?}"
        );

        // The old pods drain through the moved admin port; the rollout completes.
        apply_yaml(&client, &ns, &app("v2")).await?;
        all_ready_and_injected(&client, &ns, "v2").await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_host_network_deployment_is_not_injected_and_says_why() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("fidelity-hostnet", |client, ns| async move {
        // hostNetwork is outside the restricted Pod Security Standard of test namespaces.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "pod-security.kubernetes.io/enforce": "privileged"}}})),
            )
            .await?;
        apply_yaml(&client, &ns, &policy(APP, APP, "    steps: []")).await?;
        rollout::wait_policy_known(&client, &ns, APP).await?;
        // One replica on a port unlikely to be taken on the node.
        let app = fixtures::demo(APP, 1, "v1", &[("PORT", "18431")]).app_port(18431);
        let mut deployment = app.deployment();
        deployment["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        let yaml = format!("{deployment}\n---\n{}", app.service());
        apply_yaml(&client, &ns, &yaml).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        assert!(
            !pods.is_empty() && pods.iter().all(|p| !injected(p)),
            "not injected"
        );

        // Visible on the policy: the webhook's Event with the reason, and the controller's
        // Injected condition.
        let note = eventually(
            "HostNetworkNotInjected event",
            Duration::from_secs(60),
            || async {
                let events = policy_events(&client, &ns, APP).await?;
                Ok(events
                    .into_iter()
                    .find(|(reason, _)| reason == "HostNetworkNotInjected")
                    .map(|(_, note)| note))
            },
        )
        .await?;
        println!("reported: {note}");
        assert!(note.contains("hostNetwork pods are not injected"), "{note}");
        eventually("Injected=False", Duration::from_secs(60), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok(s.condition(conditions::INJECTED)
                .filter(|c| c.status == "False" && c.reason == reasons::PODS_NOT_INJECTED)
                .cloned())
        })
        .await?;
        Ok(())
    })
    .await;
}
