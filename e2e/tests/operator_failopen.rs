//! Fail-open: a pod behind the `quiesce.dev/ready` gate that no operator decides on (here a
//! bare pod no policy governs) is admitted by its own sidecar after `failOpenAfterSeconds`;
//! and a pod the operator deliberately holds (a paused rollout) is *not* admitted by its
//! sidecar, because the operator keeps its hold's heartbeat fresh.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use quiesce_api::Phase;
use quiesce_api::constants::{READY_GATE_CONDITION, reasons};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout::{self, gate_open, revision};

fn lonely_pod(fail_open_after: u32) -> String {
    let spec = fixtures::hand_injected_pod_spec(fail_open_after);
    format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: lonely, labels: {{app: lonely}}}}\nspec: {spec}\n",
        fixtures::SIDECAR_BINDING_FOR_DEFAULT
    )
}

fn gate_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == READY_GATE_CONDITION)?
        .reason
        .clone()
}

#[tokio::test]
async fn an_undecided_pod_is_admitted_by_its_sidecar() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-failopen", |client, ns| async move {
        let started = Instant::now();
        apply_yaml(&client, &ns, &lonely_pod(10)).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = eventually(
            "the sidecar admits its pod",
            Duration::from_secs(90),
            || async {
                let p = pods.get("lonely").await?;
                Ok(gate_open(&p).then_some(p))
            },
        )
        .await?;
        let took = started.elapsed();
        println!("fail-open admission after {:.1}s", took.as_secs_f64());
        assert_eq!(gate_reason(&pod).as_deref(), Some(reasons::FAIL_OPEN));
        // startTime has whole seconds: allow for its truncation.
        assert!(
            took >= Duration::from_secs(9),
            "not before failOpenAfterSeconds: {took:?}"
        );
        // The kubelet folds an opened gate into `Ready` on its next probe result, not at once
        // (this read raced it now and then: the gate was True, Ready still False).
        eventually(
            "Ready to follow the gate",
            Duration::from_secs(10),
            || async {
                let p = pods.get("lonely").await?;
                Ok((rollout::condition(&p, "Ready") == Some("True")).then_some(()))
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_the_operator_holds_is_not_failed_open() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-hold", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {pause: {}}, {admit: \"100%\"}]\n    readiness: {failOpenAfterSeconds: 9}";
        apply_yaml(&client, &ns, &policy("web", "web", spec)).await?;
        apply_yaml(&client, &ns, &demo_app("web", 2, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, "web", Duration::from_secs(120)).await?;
        apply_yaml(&client, &ns, &demo_app("web", 2, "v2", &[])).await?;
        let s = eventually("the pause step", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, "web").await?;
            Ok((s.phase == Some(Phase::Paused) && s.current_step == Some(1)).then_some(s))
        })
        .await?;
        // Three fail-open periods: the held v2 pod stays held (heartbeat every 3 s).
        tokio::time::sleep(Duration::from_secs(27)).await;
        let pods = harness::pods(&client, &ns, "app=web").await?;
        let held: Vec<&Pod> = pods
            .iter()
            .filter(|p| revision(p) == s.update_revision.as_deref() && !gate_open(p))
            .collect();
        assert_eq!(held.len(), 1, "one v2 pod held by the pause");
        assert_eq!(gate_reason(held[0]).as_deref(), Some(reasons::PAUSED));
        Ok(())
    })
    .await;
}
