use super::*;
use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use kube::runtime::reflector;
use kube::runtime::watcher;
use quiesce_api::RolloutPolicySpec;
use quiesce_api::constants::SIDECAR_FAIL_OPEN_ENV;
use serde_json::{Value, json};
use tower::ServiceExt;

fn policy(name: &str, target: &str) -> RolloutPolicy {
    let mut p = RolloutPolicy::new(name, RolloutPolicySpec::for_deployment(target));
    p.metadata.namespace = Some("shop".into());
    p
}

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"generateName": "web-5d8f7c9b4-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d8f7c9b4", "uid": "rs-uid", "controller": true}]},
        "spec": {"containers": [{
            "name": "app", "image": "demo",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}
        }], "terminationGracePeriodSeconds": 60}
    }))
    .unwrap()
}

fn injected(pod: &Pod, policy: &RolloutPolicy) -> (Pod, Option<String>) {
    match inject(pod, policy, &SidecarSettings::default()) {
        Decision::Inject { pod, short_grace } => (*pod, short_grace),
        other => panic!("not injected: {other:?}"),
    }
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn injects_a_native_sidecar_gate_and_prestop() {
    let (p, short) = injected(&pod(), &policy("web", "web"));
    assert_eq!(short, None);
    let spec = p.spec.unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, SIDECAR_CONTAINER_NAME);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(env(sidecar, "QUIESCE_APP_PORTS").as_deref(), Some("8080"));
    assert_eq!(
        env(sidecar, "QUIESCE_PROBE_PATH").as_deref(),
        Some("/healthz")
    );
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8080"));
    assert_eq!(
        env(sidecar, "QUIESCE_DRAIN_TIMEOUT").as_deref(),
        Some("30s")
    );
    assert_eq!(env(sidecar, SIDECAR_FAIL_OPEN_ENV).as_deref(), Some("600"));
    let pod_ip = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_IP")
        .unwrap();
    assert_eq!(
        pod_ip
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "status.podIP"
    );
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        spec.readiness_gates.unwrap()[0].condition_type,
        READY_GATE_CONDITION
    );
    let pre_stop = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    let get = pre_stop.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some(SIDECAR_DRAIN_PATH));
    assert_eq!(get.port, IntOrString::Int(9901));
    assert_eq!(
        p.metadata.annotations.unwrap()[annotations::INJECTED_BY],
        "web"
    );
}

#[test]
fn proxy_mode_takes_over_the_named_port_and_says_so() {
    let mut proxy = policy("web", "web");
    proxy.spec.drain.mode = DrainMode::Proxy;
    proxy.spec.drain.app_shutdown = quiesce_api::AppShutdown::Graceful;
    let (p, _) = injected(&pod(), &proxy);
    let spec = p.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    let ports: Vec<_> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        vec![("quiesce-admin".into(), 9901), ("http".into(), 15001)]
    );
    assert_eq!(env(sidecar, "QUIESCE_DRAIN_MODE").as_deref(), Some("proxy"));
    assert_eq!(
        env(sidecar, "QUIESCE_PROXY_PORTS").as_deref(),
        Some("15001:8080")
    );
    assert_eq!(
        env(sidecar, "QUIESCE_APP_SHUTDOWN").as_deref(),
        Some("graceful")
    );
    assert_eq!(env(sidecar, "QUIESCE_APP_PORTS").as_deref(), Some("8080"));
    // The sidecar probes the app itself, on the app's port.
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8080"));
    let app = &spec.containers[0];
    assert_eq!(
        app.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("qz-8080")
    );
    let probe = app
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.port, IntOrString::Int(8080));
    assert_eq!(
        p.annotations()
            .get(annotations::DRAIN_MODE)
            .map(String::as_str),
        Some("Proxy")
    );

    // Without a named port nothing routes through a proxy: Observe, and the pod says so.
    let mut unnamed = pod();
    let c = &mut unnamed.spec.as_mut().unwrap().containers[0];
    c.ports.as_mut().unwrap()[0].name = None;
    c.readiness_probe = None;
    let (p, _) = injected(&unnamed, &proxy);
    let sidecar = &p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(
        env(sidecar, "QUIESCE_DRAIN_MODE").as_deref(),
        Some("observe")
    );
    assert_eq!(env(sidecar, "QUIESCE_PROXY_PORTS"), None);
    assert_eq!(
        p.annotations()
            .get(annotations::DRAIN_MODE)
            .map(String::as_str),
        Some("Observe")
    );
}

#[test]
fn keeps_an_existing_prestop_and_reports_a_short_grace_period() {
    let mut p = pod();
    let spec = p.spec.as_mut().unwrap();
    spec.termination_grace_period_seconds = Some(10);
    spec.containers[0].lifecycle = Some(
        serde_json::from_value(json!({
            "preStop": {"exec": {"command": ["sleep", "5"]}}
        }))
        .unwrap(),
    );
    let (p, short) = injected(&p, &policy("web", "web"));
    let c = &p.spec.unwrap().containers[0];
    assert!(
        c.lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .is_some()
    );
    assert!(
        short
            .unwrap()
            .contains("shorter than the drain budget of 41s")
    );
}

#[test]
fn opt_out_label_and_reinjection_are_skipped() {
    let mut p = pod();
    p.labels_mut()
        .insert(INJECT_LABEL.into(), INJECT_DISABLED.into());
    assert_eq!(
        inject(&p, &policy("web", "web"), &SidecarSettings::default()),
        Decision::Skip("opted out by label")
    );
    let (once, _) = injected(&pod(), &policy("web", "web"));
    assert_eq!(
        inject(&once, &policy("web", "web"), &SidecarSettings::default()),
        Decision::Skip("already injected")
    );
}

fn state(policies: Vec<RolloutPolicy>) -> WebhookState {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in policies {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    std::mem::forget(writer);
    let (replicasets, rs_writer) = reflector::store();
    std::mem::forget(rs_writer);
    WebhookState {
        policies: reader,
        replicasets,
        settings: Arc::new(SidecarSettings::default()),
        metrics: Arc::new(Metrics::default()),
        recorder: None,
    }
}

async fn review(state: WebhookState, pod: Pod) -> Value {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    });
    let resp = router(state)
        .oneshot(
            Request::post(MUTATE_PATH)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn a_pod_of_a_targeted_deployment_gets_a_json_patch() {
    let v = review(state(vec![policy("web", "web")]), pod()).await;
    let r = &v["response"];
    assert_eq!(r["uid"], "req-1");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    // kube-core serializes the patch bytes as a JSON array of numbers, which the apiserver's
    // decoder accepts for a []byte field like base64.
    let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    let text = patch.to_string();
    assert!(
        text.contains("quiesce-sidecar") && text.contains(READY_GATE_CONDITION),
        "{text}"
    );
}

#[tokio::test]
async fn a_pod_of_another_deployment_is_allowed_unchanged() {
    let v = review(state(vec![policy("api", "api")]), pod()).await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
}

#[tokio::test]
async fn the_oldest_policy_injects_when_two_target_one_deployment() {
    let mut old = policy("first", "web");
    old.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
    ));
    let mut new = policy("second", "web");
    new.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
    ));
    let s = state(vec![new, old]);
    assert_eq!(
        governing_policy(&s.policies, "shop", "web")
            .unwrap()
            .name_any(),
        "first"
    );
}
