//! A new pod is Ready when its app turns healthy, not a probe period later: the sidecar holds
//! the kubelet's readiness probe of a pod that is not ready yet (`/readyz?waitMillis=`, set by
//! the webhook below the probe's timeout) and answers it the moment the app's health check
//! first passes. Real kubelet, real probes, an app that warms up for 2.5 s.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use quiesce_api::constants::SIDECAR_ADMIN_PORT;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, with_namespace};
use quiesce_e2e::rollout;

const APP: &str = "warming";

#[tokio::test]
async fn a_warming_app_is_ready_through_a_held_probe_that_never_times_out() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("sidecar-ready", |client, ns| async move {
        apply_yaml(
            &client,
            &ns,
            &policy(APP, APP, "    steps: [{admit: \"100%\"}]"),
        )
        .await?;
        rollout::wait_policy_known(&client, &ns, APP).await?;
        // Not a whole number of probe periods: the app turns healthy between two probes.
        let yaml = demo_app(APP, 1, "v1", &[("HEALTHY_AFTER_MS", "2500")]);
        apply_yaml(&client, &ns, &yaml).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = pods
            .list(&ListParams::default().labels(&format!("app={APP}")))
            .await?
            .items
            .into_iter()
            .next()
            .expect("one pod");
        assert!(rollout::injected(&pod), "the webhook injected the pod");
        assert_eq!(rollout::condition(&pod, "Ready"), Some("True"));
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        let metrics = harness::http_get(&format!("http://{ip}:{SIDECAR_ADMIN_PORT}/metrics"))
            .await?
            .1;
        let answered_on_health = chart::metric_value(
            &metrics,
            "quiesce_sidecar_readiness_holds_total",
            &[("outcome", "ready")],
        );
        assert_eq!(
            answered_on_health,
            Some(1.0),
            "the probe in flight when the app turned healthy was answered then:\n{metrics}"
        );

        // A held probe is answered before the kubelet's timeout: the kubelet records failed
        // probes (503 while warming) but never one that timed out.
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let name = pod.metadata.name.clone().unwrap();
        let timeouts: Vec<String> = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?
            .items
            .into_iter()
            .filter_map(|e| e.message)
            .filter(|m| m.contains("probe") && (m.contains("deadline") || m.contains("Timeout")))
            .collect();
        assert!(timeouts.is_empty(), "probe timeouts: {timeouts:?}");
        Ok(())
    })
    .await;
}
