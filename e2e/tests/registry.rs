//! The path a user outside the development cluster takes: the images and the chart pushed to a
//! registry (`make images-push`: skopeo and `helm push`, no Docker), `helm install oci://…` from
//! it, and a rollout under load on what the cluster pulled from that registry.
//!
//! The registry is the provider's own (`cluster.sh registry-up`: Debian's docker-registry inside
//! the cluster's network, plain HTTP). Its own test binary (cargo runs test binaries one after
//! another): it upgrades the shared release to the registry's chart and puts the tree's back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use quiesce_api::Phase;
use quiesce_e2e::chart::{self, NAMESPACE, RELEASE};
use quiesce_e2e::fixtures::{self, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::provider;
use quiesce_e2e::rollout::{self, injected};

const APP: &str = "pulled";
const REPLICAS: i32 = 3;
// Proxy mode: the load keeps its connections alive, and only the sidecar's proxy can close
// them at the drain (observing, the drain waits out its timeout and the app's exit resets them:
// one reset in five CI runs before this).
const POLICY_SPEC: &str = r#"    steps:
      - admit: 1
      - admit: "100%"
    drain: {mode: Proxy, endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 15}"#;

/// `(image, imageID)` of the container `name` in each pod (init containers included: the
/// sidecar is a native sidecar): the image its spec asks for, the one its status says runs. The
/// status's `image` is no help: the runtime names the image by its first tag, whichever run
/// pushed it.
fn images_of(pods: &[Pod], name: &str) -> Vec<(String, String)> {
    pods.iter()
        .flat_map(|p| {
            let spec = p.spec.iter().flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            });
            let status = p.status.iter().flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            });
            let image = spec
                .filter(|c| c.name == name)
                .find_map(|c| c.image.clone());
            let id = status
                .filter(|c| c.name == name)
                .map(|c| c.image_id.clone())
                .next();
            image.zip(id)
        })
        .collect()
}

/// There is at least one, and each runs `reference`, pulled from its registry: the image ID is
/// the registry repository's digest (an image loaded into the node has none).
fn pulled(found: &[(String, String)], reference: &str) -> bool {
    let repository = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
    !found.is_empty()
        && found.iter().all(|(image, id)| {
            image == reference && id.starts_with(&format!("{repository}@sha256:"))
        })
}

#[tokio::test]
async fn a_release_pushed_to_a_registry_installs_with_helm_and_rolls_without_loss() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    let registry = provider::run("cluster.sh", &["registry-up"], &[])
        .await
        .expect("the provider's registry");
    // A tag of this run, so every image below is pulled now, not found from an earlier run; a
    // semver pre-release of the workspace version, so it is the chart's version too.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tag = format!("{}-e2e.{secs}", env!("CARGO_PKG_VERSION"));
    provider::run(
        "images.sh",
        &["push", &registry, &tag],
        &[("QUIESCE_REGISTRY_PLAIN_HTTP", "1")],
    )
    .await
    .expect("make images-push");

    let chart_ref = format!("oci://{registry}/charts/quiesce");
    let shown = chart::helm(&[
        "show",
        "chart",
        &chart_ref,
        "--version",
        &tag,
        "--plain-http",
    ])
    .await
    .expect("helm show chart");
    assert!(
        shown.contains(&format!("appVersion: {tag}")) && shown.contains(&format!("version: {tag}")),
        "the pushed chart's version and appVersion are the tag: {shown}"
    );
    chart::helm(&[
        "upgrade",
        "--install",
        RELEASE,
        &chart_ref,
        "--version",
        &tag,
        "--plain-http",
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
    ])
    .await
    .expect("helm install oci://");
    chart::wait_ready(&client).await.expect("operator ready");
    let operators = harness::pods(
        &client,
        NAMESPACE,
        "app.kubernetes.io/name=quiesce,app.kubernetes.io/component=operator",
    )
    .await
    .expect("operator pods");
    let operator_images: Vec<_> = images_of(&operators, "operator")
        .into_iter()
        .filter(|(image, _)| image.contains(&tag))
        .collect();
    assert!(
        operator_images.len() == 2
            && pulled(&operator_images, &format!("{registry}/operator:{tag}")),
        "both operator replicas run the pushed image: {operator_images:?}"
    );

    let registry_ = registry.clone();
    let tag_ = tag.clone();
    with_namespace("registry", |client, ns| async move {
        let (registry, tag) = (registry_, tag_);
        let app = |version| {
            fixtures::demo(APP, REPLICAS, version, &[])
                .image(&format!("{registry}/demo-app:{tag}"))
                .yaml()
        };
        apply_yaml(&client, &ns, &policy(APP, APP, POLICY_SPEC)).await?;
        rollout::wait_policy_known(&client, &ns, APP).await?;
        apply_yaml(&client, &ns, &app("v1")).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
        assert!(pods.iter().all(injected), "every pod injected");
        let sidecars = images_of(&pods, quiesce_api::constants::SIDECAR_CONTAINER_NAME);
        assert!(
            pulled(&sidecars, &format!("{registry}/sidecar:{tag}")),
            "the injected sidecar is the pushed image: {sidecars:?}"
        );
        let apps = images_of(&pods, "app");
        assert!(
            pulled(&apps, &format!("{registry}/demo-app:{tag}")),
            "the app is the pushed image: {apps:?}"
        );

        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(60)).await?;
        let load = loadgen::spawn(LoadConfig {
            keep_alive: true,
            ..LoadConfig::new(url, 40.0)
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        apply_yaml(&client, &ns, &app("v2")).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(180)).await?;
        rollout::wait_phase(&client, &ns, APP, Phase::Completed, Duration::from_secs(60)).await?;
        eventually("old pods to exit", Duration::from_secs(90), || async {
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            Ok((pods.len() == REPLICAS as usize
                && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
            .then_some(()))
        })
        .await?;
        load.stop();
        let summary = load.finish().await;
        println!("load (keep-alive): {}", serde_json::to_string(&summary)?);
        assert_eq!(summary.failed(), 0, "{summary:?}");
        assert!(summary.ok_by_version.contains_key("v2"), "{summary:?}");
        Ok(())
    })
    .await;

    // The tree's chart and locally loaded images again, as the other test binaries expect.
    chart::install_from_tree(&client)
        .await
        .expect("the tree's chart back");
}
