//! The cluster itself works as quiesce needs it: probes, preStop hooks, EndpointSlices with
//! terminating endpoints, and kube-proxy routing ClusterIP traffic during a rolling update.
//! No quiesce component is involved.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use quiesce_e2e::demo_app::DemoApp;
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};

const APP: &str = "smoke";

fn manifests(version: &str) -> String {
    DemoApp::new(APP, 2, version)
        .grace_seconds(20)
        .pre_stop(serde_json::json!({"httpGet": {"path": "/prestop?ms=3000", "port": "http"}}))
        .yaml()
}

#[tokio::test]
async fn rolling_update_calls_prestop_and_publishes_terminating_endpoints() {
    with_namespace("smoke", |client, ns| async move {
        apply_yaml(&client, &ns, &manifests("v1")).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(90)).await?;
        let old_pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        let old_ips: BTreeSet<String> = old_pods
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        assert_eq!(old_ips.len(), 2, "two running v1 pods");

        // Follow every old pod's log until its container exits: the preStop call shows there.
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut log_tasks = Vec::new();
        for pod in &old_pods {
            let stream = pods_api
                .log_stream(
                    pod.metadata.name.as_deref().unwrap(),
                    &LogParams {
                        follow: true,
                        ..LogParams::default()
                    },
                )
                .await?;
            // Keep every line read: the stream may end with an error when the container exits.
            log_tasks.push(tokio::spawn(async move {
                let mut lines = Vec::new();
                let mut stream = std::pin::pin!(stream.lines());
                while let Some(Ok(line)) = stream.next().await {
                    lines.push(line);
                }
                lines
            }));
        }

        // Record every endpoint seen terminating, from the Service's EndpointSlices.
        let terminating_seen = Arc::new(Mutex::new(BTreeSet::new()));
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let watch_cfg =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={APP}"));
        let seen = terminating_seen.clone();
        let slice_watch = tokio::spawn(async move {
            let mut events = watcher(slices, watch_cfg).applied_objects().boxed();
            while let Some(Ok(slice)) = events.next().await {
                for ep in slice.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.terminating) == Some(true) {
                        seen.lock().unwrap().extend(ep.addresses);
                    }
                }
            }
        });

        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(30)).await?;
        let load = loadgen::spawn(LoadConfig {
            keep_alive: false,
            ..LoadConfig::new(url, 50.0)
        });
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The rolling update: the same manifests with a new version.
        apply_yaml(&client, &ns, &manifests("v2")).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        // Old pods are gone from the Deployment's counts; wait for them to really exit.
        harness::eventually("old pods to exit", Duration::from_secs(60), || async {
            let left = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            Ok(left
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_none())
                .then_some(()))
        })
        .await?;
        load.stop();
        let summary = load.finish().await;
        slice_watch.abort();
        println!(
            "load during the plain rolling update: {}",
            serde_json::to_string(&summary)?
        );

        let mut prestop_calls = 0;
        for task in log_tasks {
            let lines = task.await?;
            prestop_calls += lines
                .iter()
                .filter(|l| l.contains("preStop hook called"))
                .count();
        }
        assert_eq!(
            prestop_calls, 2,
            "each old pod's preStop hook was called once"
        );

        let seen = terminating_seen.lock().unwrap().clone();
        assert!(
            old_ips.iter().all(|ip| seen.contains(ip)),
            "old pods {old_ips:?} seen terminating in the EndpointSlice; saw {seen:?}"
        );
        let new_versions = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        assert!(
            new_versions.iter().all(|p| p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some())
        );
        assert!(
            summary.sent > 0 && summary.ok > 0,
            "traffic reached the Service: {summary:?}"
        );
        assert!(
            summary.ok_by_version.contains_key("v2"),
            "the new version served traffic"
        );
        Ok(())
    })
    .await;
}
