//! The shell against an exact sequence of API calls (a `tower-test` mock apiserver, after
//! kube-rs/controller-rs `fixtures.rs`): each test states the calls a reconcile must make, in
//! order, with the bodies that matter.

use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use quiesce_api::constants::{
    DRAINED_CONDITION, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME, annotations, conditions,
    reasons,
};
use quiesce_api::{Phase, RolloutPolicy, RolloutPolicySpec, RolloutPolicyStatus};
use serde_json::{Value, json};

use super::*;
use crate::plan::SidecarView;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NOW: i64 = 1_800_000_000;

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // Keep the writer alive so the store stays ready.
    std::mem::forget(writer);
    reader
}

fn policy(status: RolloutPolicyStatus) -> RolloutPolicy {
    let mut p = RolloutPolicy::new("web", RolloutPolicySpec::for_deployment("web"));
    p.metadata.namespace = Some("shop".into());
    p.metadata.uid = Some("policy-uid".into());
    p.metadata.generation = Some(1);
    p.metadata.finalizers = Some(vec![POLICY_FINALIZER.into()]);
    p.status = Some(status);
    p
}

fn deployment() -> CachedDeployment {
    deployment_of("web")
}

/// The UID of the Deployment `app` (`deploy-uid` for `web`).
fn deploy_uid(app: &str) -> String {
    match app {
        "web" => "deploy-uid".to_owned(),
        _ => format!("{app}-deploy-uid"),
    }
}

/// The UID of the ReplicaSet `hash` of `app` (`rs-<hash>` for `web`).
fn rs_uid(app: &str, hash: &str) -> String {
    match app {
        "web" => format!("rs-{hash}"),
        _ => format!("{app}-rs-{hash}"),
    }
}

fn deployment_of(app: &str) -> CachedDeployment {
    serde_json::from_value(json!({
        "metadata": {"name": app, "namespace": "shop", "uid": deploy_uid(app)},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}},
                "spec": {"terminationGracePeriodSeconds": 60, "containers": [{"name": "app", "image": "demo:v2",
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}
    }))
    .unwrap()
}

fn rs(hash: &str, revision: &str) -> PartialObjectMeta<ReplicaSet> {
    rs_of("web", hash, revision)
}

fn rs_of(app: &str, hash: &str, revision: &str) -> PartialObjectMeta<ReplicaSet> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{app}-{hash}"), "namespace": "shop", "uid": rs_uid(app, hash),
            "labels": {"pod-template-hash": hash},
            "annotations": {"deployment.kubernetes.io/revision": revision},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app,
                "uid": deploy_uid(app), "controller": true}]}
    }))
    .unwrap()
}

fn pod(name: &str, hash: &str, gate: Option<&str>) -> CachedPod {
    pod_of("web", name, hash, gate)
}

fn pod_of(app: &str, name: &str, hash: &str, gate: Option<&str>) -> CachedPod {
    let mut conditions = vec![json!({"type": "ContainersReady", "status": "True",
        "lastTransitionTime": "2027-01-15T07:00:00Z"})];
    if let Some(status) = gate {
        conditions
            .push(json!({"type": READY_GATE_CONDITION, "status": status, "reason": "StablePod"}));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app": app, "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"),
                "uid": rs_uid(app, hash), "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "demo"}],
            "initContainers": [{"name": SIDECAR_CONTAINER_NAME, "image": "sidecar", "restartPolicy": "Always"}],
            "readinessGates": [{"conditionType": READY_GATE_CONDITION}]},
        "status": {"conditions": conditions}
    }))
    .unwrap()
}

fn context(client: Client, policies: Vec<RolloutPolicy>, pods: Vec<CachedPod>) -> Context {
    context_with_services(client, policies, pods, vec![])
}

fn context_with_services(
    client: Client,
    policies: Vec<RolloutPolicy>,
    pods: Vec<CachedPod>,
    services: Vec<Service>,
) -> Context {
    Context::new(
        client.clone(),
        Recorder::new(
            client,
            Reporter {
                controller: "quiesce-operator".into(),
                instance: Some("test".into()),
            },
        ),
        Arc::new(Metrics::default()),
        store(policies),
        store(vec![deployment()]),
        store(vec![rs("old", "1"), rs("new", "2")]),
        PodCache::fixed(store(pods)),
        store(services),
        Arc::new(|| Timestamp::from_second(NOW).unwrap()),
    )
}

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// Expects the next call to be `method` on a path starting with `path`; answers `reply` and
/// returns the request body.
async fn expect(handle: &mut Handle, method: Method, path: &str, reply: Value) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("service not called");
    let uri = request.uri().to_string();
    if request.method() != method {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        panic!(
            "expected {method} {path}, got {uri}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(uri.starts_with(path), "expected {method} {path}, got {uri}");
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

/// The next call publishes an Event of namespace `shop`: its body.
async fn expect_event(handle: &mut Handle) -> Value {
    expect(
        handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/shop/events",
        event_reply(),
    )
    .await
}

fn event_reply() -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"},
        "eventTime": "2027-01-15T08:00:00.000000Z"})
}

async fn no_more_calls(handle: &mut Handle) {
    let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    if let Ok(Some((request, _))) = next {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        panic!(
            "unexpected extra API call: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

fn stable(phase: Phase) -> RolloutPolicyStatus {
    RolloutPolicyStatus {
        stable_revision: Some("old".into()),
        update_revision: Some("old".into()),
        phase: Some(phase),
        ..Default::default()
    }
}

fn settled_on_new() -> RolloutPolicyStatus {
    RolloutPolicyStatus {
        stable_revision: Some("new".into()),
        update_revision: Some("new".into()),
        phase: Some(Phase::Completed),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_new_revision_is_an_event_a_gate_and_one_status_apply() {
    let (client, mut handle) = mock();
    let p = policy(stable(Phase::Completed));
    let ctx = context(
        client,
        vec![p.clone()],
        vec![pod("o1", "old", Some("True")), pod("n1", "new", None)],
    );
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status?&force=true&fieldManager=quiesce-operator",
            json!(policy(RolloutPolicyStatus::default())),
        )
        .await;
        assert_eq!(status["metadata"]["uid"], "policy-uid");
        assert_eq!(status["status"]["phase"], "Progressing");
        assert_eq!(status["status"]["updateRevision"], "new");
        assert_eq!(status["status"]["admittedReplicas"], 1);
        let e = expect_event(&mut handle).await;
        assert_eq!(e["reason"], reasons::ROLLOUT_STARTED);
        let gate = expect(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/n1/status?&force=true&fieldManager=quiesce-operator",
            json!(pod("n1", "new", Some("True"))),
        )
        .await;
        assert_eq!(gate["metadata"]["uid"], "uid-n1", "UID precondition");
        let c = &gate["status"]["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some(READY_GATE_CONDITION), Some("True"))
        );
        assert_eq!(c["reason"], reasons::ADMITTED);
        no_more_calls(&mut handle).await;
    });
    let action = ctx.apply(&p, false).await.unwrap();
    // Until the admission is observed the rollout is open: the progress deadline is the timer.
    assert_eq!(action, Requeue::requeue(Duration::from_millis(600_050)));
    verifier.await.unwrap();
}

#[tokio::test]
async fn an_unchanged_world_makes_no_call_and_remembers_its_writes() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    let ctx = context(
        client,
        vec![p.clone()],
        vec![pod("n0", "new", Some("True"))],
    );
    // The first pass writes the status (conditions are new); the cache still has the old one.
    let verifier = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(policy(RolloutPolicyStatus::default())),
        )
        .await;
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    // The second pass reads the remembered status: nothing to write.
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn abort_clears_the_annotation_and_restores_the_stable_template() {
    let (client, mut handle) = mock();
    let mut p = policy(RolloutPolicyStatus {
        update_revision: Some("new".into()),
        phase: Some(Phase::Progressing),
        ..stable(Phase::Progressing)
    });
    p.metadata.annotations = Some([(annotations::ABORT.to_owned(), "true".to_owned())].into());
    let ctx = context(
        client,
        vec![p.clone()],
        vec![pod("o1", "old", Some("True"))],
    );
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        assert_eq!(status["status"]["phase"], "RolledBack");
        let clear = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web?",
            json!(p_reply()),
        )
        .await;
        assert_eq!(
            clear,
            json!({"metadata": {"annotations": {annotations::ABORT: null}}})
        );
        expect(
            &mut handle,
            Method::GET,
            "/apis/apps/v1/namespaces/shop/replicasets/web-old",
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "web-old", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "old"}},
                        "spec": {"containers": [{"name": "app", "image": "demo:v1"}]}}}}),
        )
        .await;
        let undo = expect(
            &mut handle,
            Method::PATCH,
            "/apis/apps/v1/namespaces/shop/deployments/web?",
            json!(deployment()),
        )
        .await;
        assert_eq!(
            undo[0],
            json!({"op": "test", "path": "/metadata/uid", "value": "deploy-uid"})
        );
        assert_eq!(undo[1]["path"], "/spec/template");
        assert_eq!(
            undo[1]["value"]["spec"]["containers"][0]["image"],
            "demo:v1"
        );
        assert_eq!(
            undo[1]["value"]["metadata"]["labels"],
            json!({"app": "web"}),
            "hash label dropped"
        );
        let e = expect_event(&mut handle).await;
        assert_eq!(e["reason"], reasons::ABORTED);
        assert_eq!(e["type"], "Warning");
        expect_event(&mut handle).await;
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

fn p_reply() -> RolloutPolicy {
    policy(RolloutPolicyStatus::default())
}

#[tokio::test]
async fn deletion_admits_held_pods_then_drops_the_finalizer() {
    let (client, mut handle) = mock();
    let mut p = policy(RolloutPolicyStatus {
        update_revision: Some("new".into()),
        current_step: Some(1),
        ..stable(Phase::Paused)
    });
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(NOW).unwrap(),
    ));
    let ctx = Arc::new(context(
        client,
        vec![p.clone()],
        vec![pod("n1", "new", Some("False"))],
    ));
    let verifier = tokio::spawn(async move {
        let gate = expect(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/n1/status",
            json!(pod("n1", "new", Some("True"))),
        )
        .await;
        assert_eq!(
            gate["status"]["conditions"][0]["reason"],
            reasons::POLICY_DELETED
        );
        let fin = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web?",
            json!(p_reply()),
        )
        .await;
        assert!(
            fin.to_string().contains("remove"),
            "finalizer removed: {fin}"
        );
        no_more_calls(&mut handle).await;
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    verifier.await.unwrap();
}

#[test]
fn drain_reports_are_parsed_from_the_sidecar_condition() {
    let mut p = pod("o1", "old", None);
    p.status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .push(
            serde_json::from_value(json!({"type": DRAINED_CONDITION, "status": "True",
            "reason": "DrainTimedOut", "message": report_message(30_000, true)}))
            .unwrap(),
        );
    let r = drain_report(&p).unwrap();
    assert!(r.forced);
    assert_eq!(r.duration_millis, Some(30000));
}

fn drained(mut p: CachedPod, reason: &str, message: &str) -> CachedPod {
    p.status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .push(
            serde_json::from_value(json!({"type": DRAINED_CONDITION, "status": "True",
                "reason": reason, "message": message}))
            .unwrap(),
        );
    p
}

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

#[tokio::test]
async fn a_drain_seen_only_by_the_pod_watch_is_counted_once() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    // The pod reported its drain and was deleted before the reconcile: never in the cache.
    let ctx = context(client, vec![p.clone()], vec![]);
    let gone = drained(
        pod("o1", "old", Some("True")),
        reasons::DRAINED,
        &report_message(1250, false),
    );
    let refs = pod_event(
        &gone,
        &ctx.policies,
        &ctx.replicasets,
        &ctx.drain_inbox,
        now(),
    );
    assert_eq!(refs, vec![ObjectRef::from_obj(&p)]);
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        assert_eq!(
            status["status"]["drains"],
            json!({"completed": 1, "forced": 0, "lastDurationMillis": 1250, "maxDurationMillis": 1250})
        );
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    assert!(ctx.drain_inbox.is_empty(), "taken by the reconcile");
    // The deletion event brings the same report again: not counted twice, nothing to write.
    pod_event(
        &gone,
        &ctx.policies,
        &ctx.replicasets,
        &ctx.drain_inbox,
        now(),
    );
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn a_drain_seen_by_the_cache_and_the_pod_watch_is_counted_once() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    let report = drained(
        pod("o1", "old", Some("True")),
        reasons::DRAIN_TIMED_OUT,
        &report_message(30_020, true),
    );
    let ctx = context(client, vec![p.clone()], vec![report.clone()]);
    pod_event(
        &report,
        &ctx.policies,
        &ctx.replicasets,
        &ctx.drain_inbox,
        now(),
    );
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        assert_eq!(status["status"]["drains"]["forced"], 1);
        assert_eq!(status["status"]["drains"]["completed"], 0);
        let e = expect_event(&mut handle).await;
        assert_eq!(e["reason"], crate::plan::DRAINS_FORCED);
        assert_eq!(e["type"], "Warning");
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

#[test]
fn pods_of_deployments_without_a_policy_leave_no_report() {
    let inbox = DrainInbox::default();
    let report = drained(
        pod("o1", "old", None),
        reasons::DRAINED,
        &report_message(1000, false),
    );
    let refs = pod_event(
        &report,
        &store(vec![]),
        &store(vec![rs("old", "1")]),
        &inbox,
        now(),
    );
    assert!(refs.is_empty());
    assert!(inbox.is_empty());
}

#[test]
fn the_drain_inbox_and_memory_are_bounded() {
    let inbox = DrainInbox::default();
    let report = |i: usize| {
        let mut p = drained(
            pod(&format!("o{i}"), "old", None),
            reasons::DRAINED,
            &report_message(1000, false),
        );
        p.metadata.uid = Some(format!("uid-{i}"));
        p
    };
    assert!(inbox.record(&report(0), "web", now()));
    assert!(
        !inbox.record(&pod("n1", "new", None), "web", now()),
        "no report, nothing recorded"
    );
    // Nobody took it for longer than the retention: dropped with the next record.
    let later = Timestamp::from_second(NOW + 2 * drains::RETENTION.as_secs() as i64).unwrap();
    inbox.record(&report(1), "web", later);
    assert_eq!(
        inbox
            .take("shop", "web")
            .iter()
            .map(|t| t.pod.as_str())
            .collect::<Vec<_>>(),
        vec!["o1"]
    );
    // A hard cap on top: the oldest go first.
    for i in 0..drains::MAX_PENDING + 5 {
        let at = Timestamp::from_millisecond(NOW * 1000 + i as i64).unwrap();
        inbox.record(&report(i), "web", at);
    }
    assert_eq!(inbox.len(), drains::MAX_PENDING);
    assert!(!inbox.take("shop", "web").iter().any(|t| t.pod == "o0"));

    // Counted UIDs are forgotten once the pod has been gone for the retention.
    let mut counted = drains::CountedDrains::default();
    assert!(counted.first_sight("uid-a", "shop", "a", now()));
    assert!(counted.first_sight("uid-b", "shop", "b", now()));
    assert!(!counted.first_sight("uid-a", "shop", "a", now()), "once");
    counted.forget_gone(now(), |_, _, _| false);
    assert_eq!(counted.len(), 2, "recently seen: kept");
    counted.forget_gone(later, |_, name, _| name == "b");
    assert_eq!(counted.len(), 1, "a is gone, b still present");
    assert!(!counted.first_sight("uid-b", "shop", "b", later));
}

/// A drained condition's message as the sidecar writes it.
fn report_message(duration_ms: u64, forced: bool) -> String {
    quiesce_api::DrainReport {
        duration_ms,
        forced,
        ..Default::default()
    }
    .to_condition_message()
}

#[test]
fn garbled_drain_durations_are_ignored() {
    let millis = drains::bounded_duration_millis;
    assert_eq!(millis(1250), Some(1250));
    assert_eq!(millis(0), Some(0));
    assert_eq!(millis(86_400_000), Some(86_400_000));
    assert_eq!(millis(90_000_000), None);
    assert_eq!(millis(u64::MAX), None);
    let duration = |message: &str| {
        drain_report(&drained(pod("o1", "old", None), reasons::DRAINED, message))
            .expect("still a finished drain")
            .duration_millis
    };
    assert_eq!(duration(&report_message(1250, false)), Some(1250));
    for garbled in [
        "drained in inf s".to_owned(),
        "drained in 1.25s (endpoints 0.01s)".to_owned(),
        report_message(90_000_000_000, false),
        report_message(u64::MAX, false),
        r#"{"durationMs":-3,"endpointsMs":0,"quietMs":0,"inFlightMs":0,"connectionsAtStart":0,"busyAtStart":0,"busyAtEnd":0,"forced":false}"#.to_owned(),
        r#"{"durationMs":1e300,"endpointsMs":0,"quietMs":0,"inFlightMs":0,"connectionsAtStart":0,"busyAtStart":0,"busyAtEnd":0,"forced":false}"#.to_owned(),
    ] {
        assert_eq!(duration(&garbled), None, "{garbled}");
    }
    // Forced comes from the reason, and from the report.
    let p = drained(
        pod("o1", "old", None),
        reasons::DRAINED,
        &report_message(5, true),
    );
    assert!(drain_report(&p).unwrap().forced);
}

fn service(name: &str, target_port: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": target_port}]}
    }))
    .unwrap()
}

fn proxy_policy() -> RolloutPolicy {
    let mut p = policy(settled_on_new());
    p.spec.drain.mode = DrainMode::Proxy;
    p
}

#[tokio::test]
async fn a_service_with_a_numeric_target_port_is_reported_on_a_proxy_policy() {
    let (client, mut handle) = mock();
    let p = proxy_policy();
    let ctx = context_with_services(
        client,
        vec![p.clone()],
        vec![],
        vec![
            service("web", json!("http")),
            service("web-direct", json!(8080)),
        ],
    );
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        let conditions = status["status"]["conditions"].as_array().unwrap();
        let c = conditions
            .iter()
            .find(|c| c["type"] == conditions::PROXY_TAKEOVER)
            .expect("ProxyTakeover condition");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], reasons::NUMERIC_TARGET_PORT);
        let message = c["message"].as_str().unwrap();
        assert!(
            message.contains("set targetPort: http instead of 8080 in Service web-direct"),
            "{message}"
        );
        let e = expect_event(&mut handle).await;
        assert_eq!(e["reason"], reasons::NUMERIC_TARGET_PORT);
        assert_eq!(e["type"], "Warning");
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

#[test]
fn a_service_change_requeues_the_proxy_policies_of_its_namespace() {
    let proxy = proxy_policy();
    let mut observe = policy(settled_on_new());
    observe.metadata.name = Some("other".into());
    let mut elsewhere = proxy_policy();
    elsewhere.metadata.namespace = Some("elsewhere".into());
    let policies = store(vec![proxy.clone(), observe, elsewhere]);
    assert_eq!(
        service_event(&service("web", json!(8080)), &policies),
        vec![ObjectRef::from_obj(&proxy)]
    );
    let view = service_view(&service("web", json!(8080)));
    assert_eq!(
        view.ports,
        vec![ServicePortView {
            port: 80,
            target: TargetPort::Number(8080)
        }]
    );
    assert_eq!(
        service_view(&service("web", json!("http"))).ports[0].target,
        TargetPort::Name("http".into())
    );
}

fn with_sidecar_status(mut p: CachedPod, status: Value) -> CachedPod {
    p.status.as_mut().unwrap().init_container_statuses =
        Some(vec![serde_json::from_value(status).unwrap()]);
    p
}

#[test]
fn the_native_sidecar_status_is_read_from_init_container_statuses() {
    let crashing = with_sidecar_status(
        pod("n1", "new", None),
        json!({"name": SIDECAR_CONTAINER_NAME, "image": "sidecar", "imageID": "", "ready": false,
            "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": "{\"level\":\"INFO\"}\ninvalid QUIESCE_PROXY_PORTS\n"}}}),
    );
    let v = pod_view(&crashing);
    assert_eq!(v.restarts, 5, "sidecar restarts count like app restarts");
    assert_eq!(
        v.sidecar,
        Some(SidecarView {
            restarts: 5,
            crash_looping: true,
            last_termination: Some("invalid QUIESCE_PROXY_PORTS".into()),
        })
    );
    // No termination message: reason and exit code.
    let oom = with_sidecar_status(
        pod("n2", "new", None),
        json!({"name": SIDECAR_CONTAINER_NAME, "image": "sidecar", "imageID": "", "ready": true,
            "restartCount": 1, "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}),
    );
    let s = pod_view(&oom).sidecar.unwrap();
    assert!(!s.crash_looping);
    assert_eq!(
        s.last_termination.as_deref(),
        Some("OOMKilled, exit code 137")
    );
    assert_eq!(pod_view(&pod("n3", "new", None)).sidecar, None);
}

#[tokio::test]
async fn a_crash_looping_sidecar_shows_in_the_policy_status() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    let crashing = with_sidecar_status(
        pod("n1", "new", Some("True")),
        json!({"name": SIDECAR_CONTAINER_NAME, "image": "sidecar", "imageID": "", "ready": false,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}),
    );
    let ctx = context(client, vec![p.clone()], vec![crashing]);
    let verifier = tokio::spawn(async move {
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        let c = status["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == conditions::SIDECAR_HEALTHY)
            .expect("SidecarHealthy condition")
            .clone();
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], reasons::SIDECAR_CRASH_LOOPING);
        let m = c["message"].as_str().unwrap();
        assert!(
            m.contains(
                "pod n1 restarted it 3 times and is in CrashLoopBackOff (last termination: boom)"
            ),
            "{m}"
        );
        let message = status["status"]["message"].as_str().unwrap();
        assert!(message.contains("SidecarHealthy=False"), "{message}");
        let e = expect_event(&mut handle).await;
        assert_eq!(e["reason"], reasons::SIDECAR_CRASH_LOOPING);
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn a_drain_whose_status_write_failed_is_counted_next_time() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    let ctx = context(client, vec![p.clone()], vec![]);
    let gone = drained(
        pod("o1", "old", Some("True")),
        reasons::DRAINED,
        &report_message(2000, false),
    );
    pod_event(
        &gone,
        &ctx.policies,
        &ctx.replicasets,
        &ctx.drain_inbox,
        now(),
    );
    let verifier = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("status patch");
        assert!(
            request
                .uri()
                .path()
                .ends_with("/rolloutpolicies/web/status")
        );
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(
                    serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "message": "etcdserver: request timed out",
                        "reason": "InternalError", "code": 500}))
                    .unwrap(),
                ))
                .unwrap(),
        );
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status",
            json!(p_reply()),
        )
        .await;
        assert_eq!(status["status"]["drains"]["completed"], 1);
        no_more_calls(&mut handle).await;
    });
    assert!(ctx.apply(&p, false).await.is_err());
    ctx.apply(&p, false).await.unwrap();
    verifier.await.unwrap();
}

/// A second policy, `api`, for the Deployment `api` in the same namespace.
fn api_policy(status: RolloutPolicyStatus) -> RolloutPolicy {
    let mut p = policy(status);
    p.metadata.name = Some("api".into());
    p.metadata.uid = Some("api-policy-uid".into());
    p.spec = RolloutPolicySpec::for_deployment("api");
    p
}

/// Policies `web` and `api`, each with its Deployment, revisions and pods.
fn two_policy_context(
    client: Client,
    policies: Vec<RolloutPolicy>,
    web_pods: Vec<CachedPod>,
    api_pods: Vec<CachedPod>,
) -> Context {
    Context::new(
        client.clone(),
        Recorder::new(
            client,
            Reporter {
                controller: "quiesce-operator".into(),
                instance: Some("test".into()),
            },
        ),
        Arc::new(Metrics::default()),
        store(policies),
        store(vec![deployment(), deployment_of("api")]),
        store(vec![
            rs("old", "1"),
            rs("new", "2"),
            rs_of("api", "old", "1"),
            rs_of("api", "new", "2"),
        ]),
        PodCache::fixed(store(web_pods.into_iter().chain(api_pods).collect())),
        store(vec![]),
        Arc::new(|| Timestamp::from_second(NOW).unwrap()),
    )
}

#[tokio::test]
async fn one_policys_pass_keeps_another_policys_pending_gate_writes() {
    let (client, mut handle) = mock();
    let web = policy(stable(Phase::Completed));
    let api = api_policy(settled_on_new());
    let ctx = two_policy_context(
        client,
        vec![web.clone(), api.clone()],
        vec![pod("o1", "old", Some("True")), pod("n1", "new", None)],
        vec![pod_of("api", "a1", "new", Some("True"))],
    );
    let verifier = tokio::spawn(async move {
        let web_status = "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status";
        expect(
            &mut handle,
            Method::PATCH,
            web_status,
            json!(policy(RolloutPolicyStatus::default())),
        )
        .await;
        expect_event(&mut handle).await;
        let gate = expect(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/n1/status",
            json!(pod("n1", "new", Some("True"))),
        )
        .await;
        assert_eq!(gate["status"]["conditions"][0]["status"], "True");
        // The api policy's pass: its status only (its conditions are new).
        expect(
            &mut handle,
            Method::PATCH,
            "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/api/status",
            json!(api_policy(RolloutPolicyStatus::default())),
        )
        .await;
        // The web policy's next pass still sees n1 admitted (the cache does not show it yet):
        // nothing to write, no second admission.
        no_more_calls(&mut handle).await;
    });
    ctx.apply(&web, false).await.unwrap();
    ctx.apply(&api, false).await.unwrap();
    ctx.apply(&web, false).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn a_deleted_policys_memory_is_forgotten() {
    let (client, mut handle) = mock();
    let web = policy(stable(Phase::Completed));
    let api = api_policy(settled_on_new());
    let ctx = two_policy_context(
        client,
        vec![web.clone(), api.clone()],
        vec![pod("o1", "old", Some("True")), pod("n1", "new", None)],
        vec![pod_of("api", "a1", "new", Some("True"))],
    );
    let verifier = tokio::spawn(async move {
        // Whatever the passes write, answered by kind.
        while let Ok(Some((request, send))) =
            tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
        {
            let uri = request.uri().to_string();
            let reply = if uri.contains("/rolloutpolicies/") {
                json!(policy(RolloutPolicyStatus::default()))
            } else if uri.contains("/pods/") {
                json!(pod("n1", "new", Some("True")))
            } else {
                event_reply()
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    ctx.apply(&web, false).await.unwrap();
    ctx.apply(&api, false).await.unwrap();
    assert_eq!(ctx.memory().policies.len(), 2);
    // The api policy's final pass forgets it.
    ctx.apply(&api, true).await.unwrap();
    assert!(!ctx.memory().policies.contains_key("api-policy-uid"));
    assert!(ctx.memory().policies.contains_key("policy-uid"));
    // A policy gone from the cache without a final pass here (another leader ran it) is
    // forgotten by the next pass of any policy.
    ctx.memory().policy("gone-uid").status = Some(RolloutPolicyStatus::default());
    ctx.apply(&web, false).await.unwrap();
    assert!(!ctx.memory().policies.contains_key("gone-uid"));
    verifier.await.unwrap();
}

/// A store and its writer, for tests that change the cache between passes.
fn writable_store<K>(objects: Vec<K>) -> (Store<K>, reflector::store::Writer<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (reader, writer)
}

/// Answers every call (a policy, a pod or an Event, by path) and records
/// `(method, path, body)` until `handle` is idle for 300 ms.
async fn record_calls(handle: &mut Handle) -> Vec<(Method, String, Value)> {
    let mut calls = Vec::new();
    while let Ok(Some((request, send))) =
        tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
    {
        let (method, uri) = (request.method().clone(), request.uri().path().to_owned());
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = if uri.contains("/rolloutpolicies/") {
            json!(policy(RolloutPolicyStatus::default()))
        } else if let Some(name) = uri
            .strip_prefix("/api/v1/namespaces/shop/pods/")
            .and_then(|p| p.strip_suffix("/status"))
        {
            json!(pod(name, "new", None))
        } else {
            event_reply()
        };
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        calls.push((method, uri, body));
    }
    calls
}

/// The gate statuses written, by pod.
fn gate_writes(calls: &[(Method, String, Value)]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|(_, path, _)| path.starts_with("/api/v1/namespaces/shop/pods/"))
        .map(|(_, _, body)| {
            let c = &body["status"]["conditions"][0];
            (
                body["metadata"]["name"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_gate_the_app_opened_on_a_held_pod_is_reset_and_reported() {
    let (client, mut handle) = mock();
    let p = policy(stable(Phase::Completed));
    let (pods, mut pod_writer) = writable_store(vec![
        pod("o1", "old", Some("True")),
        pod("n1", "new", None),
        pod("n2", "new", None),
    ]);
    let mut ctx = context(client, vec![p.clone()], vec![]);
    ctx.pods = PodCache::fixed(pods);
    let ctx = Arc::new(ctx);
    // First pass: one new pod admitted (replicas 1), the other held.
    let (c, policy_) = (ctx.clone(), p.clone());
    let pass = tokio::spawn(async move { c.apply(&policy_, false).await.unwrap() });
    let calls = record_calls(&mut handle).await;
    pass.await.unwrap();
    assert_eq!(
        gate_writes(&calls),
        vec![("n1".into(), "True".into()), ("n2".into(), "False".into())]
    );
    // The cache catches up, and shows n2 opened by the app (it shares the sidecar's token).
    for (name, gate) in [("n1", "True"), ("n2", "True")] {
        pod_writer.apply_watcher_event(&watcher::Event::Apply(pod(name, "new", Some(gate))));
    }
    let (c, policy_) = (ctx.clone(), p.clone());
    let pass = tokio::spawn(async move { c.apply(&policy_, false).await.unwrap() });
    let calls = record_calls(&mut handle).await;
    pass.await.unwrap();
    assert_eq!(gate_writes(&calls), vec![("n2".into(), "False".into())]);
    let warning = calls
        .iter()
        .find(|(_, path, body)| path.ends_with("/events") && body["reason"] == plan::GATE_RESET)
        .expect("a GateReset Event");
    assert_eq!(warning.2["type"], "Warning");
    assert!(
        ctx.metrics
            .encode()
            .contains("quiesce_operator_gate_resets_total{namespace=\"shop\",policy=\"web\"} 1"),
        "{}",
        ctx.metrics.encode()
    );
}

#[test]
fn drain_reports_beyond_the_pods_grace_period_are_invalid() {
    let mut p = drained(
        pod("o1", "old", None),
        reasons::DRAINED,
        &report_message(40_000, false),
    );
    let r = drain_report(&p).unwrap();
    assert!(r.invalid, "40 s > 30 s grace (the default) + slack");
    assert_eq!(r.duration_millis, None);
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(60);
    let r = drain_report(&p).unwrap();
    assert_eq!((r.invalid, r.duration_millis), (false, Some(40_000)));
    // A deletion with a longer grace period than the spec's bounds it.
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(10);
    p.metadata.deletion_grace_period_seconds = Some(45);
    assert_eq!(drain_report(&p).unwrap().duration_millis, Some(40_000));
    // An older sidecar's prose is not a report, but not an invalid one either.
    let prose = drained(pod("o1", "old", None), reasons::DRAINED, "drained in 1.25s");
    let r = drain_report(&prose).unwrap();
    assert_eq!((r.invalid, r.duration_millis), (false, None));
    // A forged report: JSON whose counts are absurd.
    let forged = quiesce_api::DrainReport {
        duration_ms: 10,
        connections_at_start: u64::MAX,
        ..Default::default()
    };
    let p = drained(
        pod("o1", "old", None),
        reasons::DRAINED,
        &forged.to_condition_message(),
    );
    assert!(drain_report(&p).unwrap().invalid);
}

/// A policy object as the apiserver stores it, with `spec` as given.
fn raw_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "quiesce.dev/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("{name}-uid"),
            "resourceVersion": "7", "generation": 1},
        "spec": spec})
}

/// Passes the CRD schema (an integer `admit` of at least 1, not decreasing, last `100%`) but
/// not the Rust type (`admit` is an `i32`).
fn undecodable_spec() -> Value {
    json!({"targetRef": {"name": "api"}, "steps": [{"admit": 3_000_000_000_i64}, {"admit": "100%"}]})
}

fn dynamic(v: Value) -> kube::api::DynamicObject {
    serde_json::from_value(v).unwrap()
}

#[test]
fn an_undecodable_policy_is_left_out_of_the_cache_and_reported() {
    let good = dynamic(raw_policy("web", json!({"targetRef": {"name": "web"}})));
    let bad = dynamic(raw_policy("bad", undecodable_spec()));
    let mut reported = Vec::new();
    let typed = decode_event(watcher::Event::InitApply(good), &mut reported);
    assert!(matches!(typed, Some(watcher::Event::InitApply(p)) if p.spec.target_ref.name == "web"));
    assert!(reported.is_empty());
    // Listed: left out.
    let listed = decode_event(watcher::Event::InitApply(bad.clone()), &mut reported);
    assert!(listed.is_none());
    // Changed into something undecodable: removed from the cache (not left at its old version).
    let typed = decode_event(watcher::Event::Apply(bad.clone()), &mut reported);
    assert!(matches!(typed, Some(watcher::Event::Delete(p)) if p.name_any() == "bad"));
    assert_eq!(reported.len(), 2);
    assert!(
        reported[0].error.starts_with("spec: "),
        "{}",
        reported[0].error
    );
    assert!(
        reported[0].error.contains("3000000000"),
        "{}",
        reported[0].error
    );
    // A status that does not decode is dropped: the policy is reconciled and its status rewritten.
    let mut v = raw_policy("web", json!({"targetRef": {"name": "web"}}));
    v["status"] = json!({"admittedReplicas": 3_000_000_000_i64});
    let p = policies::decode(&dynamic(v)).unwrap();
    assert_eq!(p.status, None);
}

#[tokio::test]
async fn one_undecodable_policy_does_not_stall_the_policy_watch() {
    let list = json!({"apiVersion": "quiesce.dev/v1alpha1", "kind": "RolloutPolicyList",
        "metadata": {"resourceVersion": "9"},
        "items": [raw_policy("web", json!({"targetRef": {"name": "web"}})),
            raw_policy("bad", undecodable_spec())]});
    // The typed watcher (how policies were watched before) fails the whole list.
    let (client, mut handle) = mock();
    let answer = list.clone();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/apis/quiesce.dev/v1alpha1/rolloutpolicies",
            answer,
        )
        .await;
    });
    let mut typed = Box::pin(watcher(
        Api::<RolloutPolicy>::all(client),
        watcher::Config::default(),
    ));
    let failed = loop {
        match typed.next().await.unwrap() {
            Err(e) => break e,
            Ok(watcher::Event::InitDone) => panic!("the typed list went through"),
            Ok(_) => {}
        }
    };
    assert!(failed.to_string().contains("3000000000"), "{failed}");
    server.await.unwrap();
    // The raw watch lists the good policy, and reports the bad one.
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/apis/quiesce.dev/v1alpha1/rolloutpolicies",
            list,
        )
        .await;
    });
    let undecodable = Arc::new(Undecodables::default());
    let mut events = Box::pin(policy_events(client, undecodable.clone()));
    let mut listed = Vec::new();
    loop {
        match events.next().await.unwrap().unwrap() {
            watcher::Event::InitApply(p) => listed.push(p.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, vec!["web"]);
    let bad = undecodable.snapshot();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].object.name_any(), "bad");
    server.await.unwrap();
}

/// The set the leader reports follows the watch: a fixed policy leaves it, a broken one enters
/// it, a deleted one leaves it, a relist starts it afresh.
#[test]
fn the_undecodable_set_follows_the_watch() {
    let undecodable = Undecodables::default();
    let bad = dynamic(raw_policy("bad", undecodable_spec()));
    let fixed = dynamic(raw_policy("bad", json!({"targetRef": {"name": "web"}})));
    let names = |u: &Undecodables| -> Vec<String> {
        u.snapshot().iter().map(|b| b.object.name_any()).collect()
    };
    policies::decode_tracked(watcher::Event::InitApply(bad.clone()), &undecodable);
    assert_eq!(names(&undecodable), ["bad"]);
    policies::decode_tracked(watcher::Event::Apply(fixed.clone()), &undecodable);
    assert!(names(&undecodable).is_empty());
    policies::decode_tracked(watcher::Event::Apply(bad.clone()), &undecodable);
    assert_eq!(names(&undecodable), ["bad"]);
    let gone = policies::decode_tracked(watcher::Event::Delete(bad.clone()), &undecodable);
    assert!(matches!(gone, Some(watcher::Event::Delete(p)) if p.name_any() == "bad"));
    assert!(names(&undecodable).is_empty());
    policies::decode_tracked(watcher::Event::Apply(bad), &undecodable);
    policies::decode_tracked(watcher::Event::Init, &undecodable);
    assert!(names(&undecodable).is_empty());
}

#[tokio::test]
async fn an_undecodable_policy_gets_a_warning_and_accepted_false() {
    let (client, mut handle) = mock();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "quiesce-operator".into(),
            instance: Some("test".into()),
        },
    );
    let undecodable = Arc::new(Undecodables::default());
    let bad = Undecodable {
        object: dynamic(raw_policy("bad", undecodable_spec())),
        error: "spec: invalid value: integer `3000000000`, expected i32".into(),
    };
    // The same version twice (a relist): reported once.
    assert!(undecodable.insert(bad.clone()));
    assert!(!undecodable.insert(bad.clone()));
    let reporter = tokio::spawn(policies::report_undecodable(
        client,
        recorder,
        undecodable.clone(),
    ));
    let event = expect_event(&mut handle).await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some(policies::UNDECODABLE))
    );
    assert_eq!(event["regarding"]["name"], "bad");
    assert!(event["note"].as_str().unwrap().contains("3000000000"));
    let patch = expect(
        &mut handle,
        Method::PATCH,
        "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/bad/status",
        raw_policy("bad", undecodable_spec()),
    )
    .await;
    let c = &patch["status"]["conditions"][0];
    assert_eq!(
        (c["type"].as_str(), c["status"].as_str()),
        (Some("Accepted"), Some("False"))
    );
    assert_eq!(c["reason"], policies::UNDECODABLE);
    // That status write made a new version of the object, which says so already: not again
    // (nor by a new leader that finds it so).
    let mut written = raw_policy("bad", undecodable_spec());
    written["metadata"]["resourceVersion"] = json!("8");
    written["status"] = patch["status"].clone();
    assert!(undecodable.insert(Undecodable {
        object: dynamic(written),
        error: bad.error.clone(),
    }));
    no_more_calls(&mut handle).await;
    // A new version with another spec (and so another generation) is reported again.
    let mut changed = raw_policy("bad", undecodable_spec());
    changed["metadata"]["resourceVersion"] = json!("9");
    changed["metadata"]["generation"] = json!(2);
    changed["status"] = patch["status"].clone();
    assert!(undecodable.insert(Undecodable {
        object: dynamic(changed),
        error: bad.error,
    }));
    // The recorder counts it into the same Event's series.
    let event = expect(
        &mut handle,
        Method::PATCH,
        "/apis/events.k8s.io/v1/namespaces/shop/events/bad.",
        event_reply(),
    )
    .await;
    assert_eq!(event["reason"], policies::UNDECODABLE);
    assert_eq!(event["series"]["count"], 2);
    reporter.abort();
}

#[test]
fn consecutive_gate_writes_form_one_batch() {
    let gate = |pod: &str| Action::SetGate {
        pod: pod.to_owned(),
        ready: true,
        reason: reasons::ADMITTED,
        message: String::new(),
    };
    let event = Action::Event {
        warning: false,
        reason: reasons::ADMITTED,
        note: String::new(),
        action: "Reconcile".to_owned(),
    };
    let actions = vec![
        gate("a"),
        gate("b"),
        event.clone(),
        gate("c"),
        Action::ClearAnnotation("x"),
        Action::ClearAnnotation("y"),
    ];
    let sizes: Vec<usize> = action_batches(&actions).iter().map(|b| b.len()).collect();
    assert_eq!(sizes, vec![2, 1, 1, 1, 1]);
    assert!(action_batches(&[]).is_empty());
}

#[tokio::test]
async fn a_change_of_counts_alone_is_written_at_most_once_a_second() {
    let (client, mut handle) = mock();
    let p = policy(settled_on_new());
    let mut ctx = context(
        client,
        vec![p.clone()],
        vec![pod("n1", "new", Some("True"))],
    );
    let at = |ms: i64| -> Clock { Arc::new(move || Timestamp::from_millisecond(ms).unwrap()) };
    let patch_status = "/apis/quiesce.dev/v1alpha1/namespaces/shop/rolloutpolicies/web/status";
    ctx.clock = at(NOW * 1000);
    let first = tokio::spawn(async move {
        let body = expect(&mut handle, Method::PATCH, patch_status, json!(p)).await;
        (handle, body)
    });
    ctx.apply(&policy(settled_on_new()), false).await.unwrap();
    let (mut handle, body) = first.await.unwrap();
    assert_eq!(body["status"]["readyReplicas"], 1, "{body}");

    // A second ready pod 300 ms later: only counts change; written 700 ms later, not now.
    ctx.pods = PodCache::fixed(store(vec![
        pod("n1", "new", Some("True")),
        pod("n2", "new", Some("True")),
    ]));
    ctx.clock = at(NOW * 1000 + 300);
    let requeue = tokio::time::timeout(
        Duration::from_secs(2),
        ctx.apply(&policy(settled_on_new()), false),
    )
    .await
    .expect("a pass that writes nothing does not wait on the apiserver")
    .unwrap();
    no_more_calls(&mut handle).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_millis(750)));
    assert_eq!(
        ctx.observe(&policy(settled_on_new()), false)
            .policy
            .status
            .ready_replicas,
        Some(2),
        "the next pass plans from the status that waits"
    );

    ctx.clock = at(NOW * 1000 + 1000);
    let second = tokio::spawn(async move {
        let body = expect(
            &mut handle,
            Method::PATCH,
            patch_status,
            json!(policy(settled_on_new())),
        )
        .await;
        (handle, body)
    });
    ctx.apply(&policy(settled_on_new()), false).await.unwrap();
    let (mut handle, body) = second.await.unwrap();
    assert_eq!(body["status"]["readyReplicas"], 2, "{body}");
    no_more_calls(&mut handle).await;
}

#[test]
fn removing_the_finalizer_of_a_policy_already_gone_ends_its_cleanup() {
    use kube::core::Status;
    use kube::runtime::finalizer::Error as F;
    let not_found =
        || kube::Error::Api(Box::new(Status::failure("gone", "NotFound").with_code(404)));
    assert_eq!(
        gone_is_done(Err(F::RemoveFinalizer(not_found()))).unwrap(),
        Requeue::await_change()
    );
    // Anything else stays an error, counted by its cause.
    let conflict = kube::Error::Api(Box::new(
        Status::failure("changed", "Conflict").with_code(409),
    ));
    let err = gone_is_done(Err(F::RemoveFinalizer(conflict))).unwrap_err();
    assert_eq!(err.metric_label(), "finalizer");
    let err = gone_is_done(Err(F::AddFinalizer(not_found()))).unwrap_err();
    assert_eq!(err.metric_label(), "finalizer");
    let err = gone_is_done(Err(F::ApplyFailed(Error::PodsNotListed("shop".into())))).unwrap_err();
    assert_eq!(err.metric_label(), "pods_not_listed");
}
