//! What one admission costs the webhook, without a cluster: the demo Deployment's pod (from the
//! fixture) admitted through the webhook's router, with the caches as the scale benchmark
//! fills them (1,000 policies and 1,000 ReplicaSets in one namespace). Prints the time of the
//! whole call (JSON in, patch out) and of its parts, p50 / p99 / max over many calls on one
//! thread, so that the webhook's latency in `make bench-scale` can be split into its own work
//! and the time its thread waited for a core.
//!
//! `cargo run --release -p quiesce-operator --example webhook_cost`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMetaExt;
use kube::runtime::{reflector, watcher};
use quiesce_api::{RolloutPolicy, RolloutPolicySpec};
use quiesce_operator::metrics::Metrics;
use quiesce_operator::webhook::{self, Decision, SidecarSettings, WebhookState};
use serde_json::json;
use tower::ServiceExt;

const DEPLOYMENT: &str = include_str!("../tests/fixtures/deployment.json");
const NAMESPACE: &str = "quiesce-scale";
const POLICIES: usize = 1_000;
const CALLS: usize = 20_000;

/// The pod the ReplicaSet controller of `web-{target}` creates from the fixture's template.
fn pod(target: usize) -> Pod {
    let deployment: Deployment = serde_json::from_str(DEPLOYMENT).expect("fixture");
    let template = deployment.spec.expect("spec").template;
    let rs = format!("web-{target}-5d8f7c9b4");
    let mut labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    labels.insert("pod-template-hash".into(), "5d8f7c9b4".into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{rs}-")),
            namespace: Some(NAMESPACE.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner("ReplicaSet", &rs)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn owner(kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("{name}-uid"),
        controller: Some(true),
        ..OwnerReference::default()
    }
}

/// The webhook's caches with `POLICIES` policies, each targeting its own Deployment, and
/// their ReplicaSets.
fn state() -> WebhookState {
    let (policies, mut policy_writer) = reflector::store();
    let (replicasets, mut rs_writer) = reflector::store();
    policy_writer.apply_watcher_event(&watcher::Event::Init);
    rs_writer.apply_watcher_event(&watcher::Event::Init);
    for i in 0..POLICIES {
        let mut p = RolloutPolicy::new(
            &format!("web-{i}"),
            RolloutPolicySpec::for_deployment(format!("web-{i}")),
        );
        p.metadata.namespace = Some(NAMESPACE.into());
        policy_writer.apply_watcher_event(&watcher::Event::InitApply(p));
        let rs = ObjectMeta {
            name: Some(format!("web-{i}-5d8f7c9b4")),
            namespace: Some(NAMESPACE.into()),
            owner_references: Some(vec![owner("Deployment", &format!("web-{i}"))]),
            ..ObjectMeta::default()
        }
        .into_response_partial::<ReplicaSet>();
        rs_writer.apply_watcher_event(&watcher::Event::InitApply(rs));
    }
    policy_writer.apply_watcher_event(&watcher::Event::InitDone);
    rs_writer.apply_watcher_event(&watcher::Event::InitDone);
    // The stores stay readable without their writers' channels.
    std::mem::forget((policy_writer, rs_writer));
    WebhookState {
        policies,
        replicasets,
        settings: Arc::new(SidecarSettings::default()),
        metrics: Arc::new(Metrics::default()),
        recorder: None,
    }
}

fn review_body(pod: &Pod) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": NAMESPACE,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    })
    .to_string()
}

/// p50 / p99 / max of `samples` in µs.
fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} |",
        us(at(0.5)),
        us(at(0.99)),
        us(*samples.last().expect("samples"))
    );
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state = state();
    let router = webhook::router(state.clone());
    let pods: Vec<Pod> = (0..POLICIES).map(pod).collect();
    let bodies: Vec<String> = pods.iter().map(review_body).collect();
    let policy = webhook::governing_policy(&state.policies, NAMESPACE, "web-0").expect("policy");

    let (mut lookup, mut decide, mut patch, mut whole) = (vec![], vec![], vec![], vec![]);
    for i in 0..CALLS {
        let pod = &pods[i % POLICIES];
        let ((), t) = timed(|| {
            let deployment = quiesce_operator::controller::pod_deployment(pod, &state.replicasets);
            let found = webhook::governing_policy(
                &state.policies,
                NAMESPACE,
                &deployment.expect("deployment"),
            );
            assert!(found.is_some());
        });
        lookup.push(t);
        let (decision, t) = timed(|| webhook::inject(pod, &policy, &state.settings));
        decide.push(t);
        let Decision::Inject { pod: mutated, .. } = decision else {
            panic!("not injected: {decision:?}");
        };
        let (_, t) = timed(|| {
            let before = serde_json::to_value(pod).expect("pod");
            let after = serde_json::to_value(&*mutated).expect("pod");
            serde_json::to_vec(&json_patch::diff(&before, &after)).expect("patch")
        });
        patch.push(t);

        let request = Request::post(webhook::MUTATE_PATH)
            .header("content-type", "application/json")
            .body(Body::from(bodies[i % POLICIES].clone()))
            .expect("request");
        let start = Instant::now();
        let response = router.clone().oneshot(request).await.expect("response");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        whole.push(start.elapsed());
        assert!(bytes.len() > 100);
    }
    println!(
        "{CALLS} admissions of the demo pod ({} bytes of AdmissionReview), {POLICIES} policies and ReplicaSets cached, one thread\n",
        bodies[0].len()
    );
    println!("| part | p50 (µs) | p99 (µs) | max (µs) |");
    println!("|---|---:|---:|---:|");
    row("policy lookup (ReplicaSet → Deployment → policy)", lookup);
    row("injection decision (`inject`)", decide);
    row("JSON patch (pod → JSON twice, diff, bytes)", patch);
    row(
        "whole call through the router (parse, respond, serialize)",
        whole,
    );
}
