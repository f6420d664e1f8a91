use super::*;
use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::reflector;
use kube::runtime::watcher;
use quiesce_api::constants::{
    INJECT_DISABLED, INJECT_LABEL, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME,
    SIDECAR_DRAIN_PATH, SIDECAR_FAIL_OPEN_ENV, annotations,
};
use quiesce_api::{DrainMode, RolloutPolicySpec, SidecarProbe};
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
    let (pod, short_grace, _) = injected_with(pod, policy, &SidecarSettings::default());
    (pod, short_grace)
}

fn injected_with(
    pod: &Pod,
    policy: &RolloutPolicy,
    settings: &SidecarSettings,
) -> (Pod, Option<String>, Vec<Notice>) {
    match inject(pod, policy, settings) {
        Decision::Inject {
            pod,
            short_grace,
            notices,
        } => (*pod, short_grace, notices),
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
    // The app's readiness probe moved to the sidecar (the kubelet probes the sidecar), which
    // holds a probe of a pod not yet ready for less than the probe's timeout.
    assert!(app.readiness_probe.is_none());
    let readiness = sidecar.readiness_probe.as_ref().unwrap();
    let path = readiness.http_get.as_ref().unwrap().path.clone().unwrap();
    let hold = path.strip_prefix("/readyz?waitMillis=").expect(&path);
    let timeout_ms = 1000 * u64::from(readiness.timeout_seconds.unwrap().unsigned_abs());
    assert!(hold.parse::<u64>().unwrap() + 300 <= timeout_ms, "{path}");
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
fn replaces_a_prestop_sleep_and_reports_a_short_grace_period() {
    let mut p = pod();
    let spec = p.spec.as_mut().unwrap();
    spec.termination_grace_period_seconds = Some(10);
    spec.containers[0].lifecycle = Some(
        serde_json::from_value(json!({
            "preStop": {"exec": {"command": ["sleep", "5"]}}
        }))
        .unwrap(),
    );
    let (p, short, notices) = injected_with(&p, &policy("web", "web"), &Default::default());
    let c = &p.spec.as_ref().unwrap().containers[0];
    let hook = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    assert!(hook.exec.is_none(), "the sleep is gone");
    assert_eq!(
        hook.http_get.as_ref().unwrap().path.as_deref(),
        Some(SIDECAR_DRAIN_PATH)
    );
    let replaced = notices
        .iter()
        .find(|n| n.reason == fidelity::reasons::PRESTOP_SLEEP_REPLACED)
        .expect("an Event says so");
    assert!(!replaced.warning);
    assert!(replaced.message.contains("container app"), "{replaced:?}");
    assert!(
        !p.annotations()
            .contains_key(fidelity::annotations::NOT_DRAINED)
    );
    assert!(
        short
            .unwrap()
            .contains("shorter than the drain budget of 41s")
    );
}

#[test]
fn any_other_prestop_is_kept_and_the_pod_is_not_drained_by_quiesce() {
    let mut p = pod();
    let spec = p.spec.as_mut().unwrap();
    spec.containers[0].lifecycle = Some(
        serde_json::from_value(json!({
            "preStop": {"exec": {"command": ["/app/deregister", "--wait"]}}
        }))
        .unwrap(),
    );
    // A second container without a hook gets no drain hook either: it would race the first.
    spec.containers.push(Container {
        name: "worker".into(),
        image: Some("worker".into()),
        ..Default::default()
    });
    let (p, _, notices) = injected_with(&p, &policy("web", "web"), &Default::default());
    let spec = p.spec.as_ref().unwrap();
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_deref(),
        Some(&["/app/deregister".to_owned(), "--wait".to_owned()][..])
    );
    assert!(
        spec.containers[1]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_none()
    );
    let kept = notices
        .iter()
        .find(|n| n.reason == fidelity::reasons::PRESTOP_KEPT)
        .expect("reported");
    assert!(kept.warning);
    let note = &p.annotations()[fidelity::annotations::NOT_DRAINED];
    assert!(note.contains("container app"), "{note}");
    assert_eq!(note, &kept.message);
    // The sidecar still gates readiness.
    assert!(spec.readiness_gates.is_some());
}

#[test]
fn prestop_hooks_are_classified() {
    use fidelity::{PreStop, classify_pre_stop, is_sleep_command};
    let cmd = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for sleep in [
        &["sleep", "5"][..],
        &["/bin/sleep", "10s"],
        &["/usr/bin/sleep", "0.5"],
        &["sh", "-c", "sleep 15"],
        &["/bin/sh", "-c", " sleep 15; "],
        &["/bin/bash", "-ec", "sleep 3"],
    ] {
        assert!(is_sleep_command(&cmd(sleep)), "{sleep:?}");
    }
    for other in [
        &["sleep"][..],
        &["sleep", "5", "&&", "kill", "1"],
        &["sh", "-c", "sleep 5 && nginx -s quit"],
        &["sh", "-c", "sleep $DELAY"],
        &["sleep", "-5"],
        &["sleep", "5m"],
        &["python", "-c", "sleep 5"],
        &["nginx", "-s", "quit"],
    ] {
        assert!(!is_sleep_command(&cmd(other)), "{other:?}");
    }
    let handler = |v: Value| -> LifecycleHandler { serde_json::from_value(v).unwrap() };
    assert_eq!(classify_pre_stop(None), PreStop::Absent);
    assert!(matches!(
        classify_pre_stop(Some(&handler(json!({"sleep": {"seconds": 5}})))),
        PreStop::Sleep(_)
    ));
    assert!(matches!(
        classify_pre_stop(Some(&handler(
            json!({"exec": {"command": ["sh", "-c", "sleep 5"]}})
        ))),
        PreStop::Sleep(_)
    ));
    assert!(matches!(
        classify_pre_stop(Some(&handler(
            json!({"httpGet": {"path": "/quit", "port": 8080}})
        ))),
        PreStop::Other(_)
    ));
}

fn probe_of(v: Value) -> Probe {
    serde_json::from_value(v).unwrap()
}

#[test]
fn readiness_probes_are_translated_faithfully_or_not_at_all() {
    use fidelity::translate_probe;
    let resolve = |p: &IntOrString| match p {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n != 0),
        IntOrString::String(name) => (name == "https").then_some(8443),
    };
    let t = |v: Value| translate_probe(Some(&probe_of(v)), resolve, true);
    assert_eq!(
        t(
            json!({"httpGet": {"scheme": "HTTPS", "port": "https", "path": "/ready",
            "httpHeaders": [{"name": "Host", "value": "web.example"},
                            {"name": "X-Probe", "value": "a, b"}]}})
        ),
        Ok(SidecarProbe::Http {
            port: 8443,
            path: "/ready".into(),
            https: true,
            headers: vec![
                ("Host".into(), "web.example".into()),
                ("X-Probe".into(), "a, b".into())
            ],
        })
    );
    assert_eq!(
        t(json!({"httpGet": {"port": 8080}})),
        Ok(SidecarProbe::Http {
            port: 8080,
            path: "/".into(),
            https: false,
            headers: Vec::new(),
        })
    );
    assert_eq!(
        t(json!({"grpc": {"port": 9090, "service": "shop.Cart"}})),
        Ok(SidecarProbe::Grpc {
            port: 9090,
            service: "shop.Cart".into()
        })
    );
    assert_eq!(
        t(json!({"grpc": {"port": 9090}})),
        Ok(SidecarProbe::Grpc {
            port: 9090,
            service: String::new()
        })
    );
    assert_eq!(
        t(json!({"tcpSocket": {"port": "https"}})),
        Ok(SidecarProbe::Tcp { port: Some(8443) })
    );
    for (untranslatable, why) in [
        (json!({"exec": {"command": ["true"]}}), "exec probe"),
        (
            json!({"httpGet": {"host": "db.internal", "port": 80}}),
            "another host (db.internal)",
        ),
        (
            json!({"tcpSocket": {"host": "10.0.0.1", "port": 80}}),
            "another host",
        ),
        (
            json!({"httpGet": {"port": "metrics"}}),
            "\"metrics\" is not a container port",
        ),
        (
            json!({"httpGet": {"port": 80, "httpHeaders": [{"name": "Bad Name", "value": "x"}]}}),
            "not a valid HTTP header",
        ),
    ] {
        let err = t(untranslatable).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    // No readiness probe: wait for the first declared port; none declared: no check at all.
    assert_eq!(
        translate_probe(None, resolve, true),
        Ok(SidecarProbe::Tcp { port: None })
    );
    assert_eq!(
        translate_probe(None, resolve, false),
        Ok(SidecarProbe::None)
    );
}

#[test]
fn an_exec_probe_does_not_gate_and_the_app_keeps_its_own_probe() {
    let mut p = pod();
    let exec = probe_of(json!({"exec": {"command": ["true"]}, "periodSeconds": 3}));
    p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(exec.clone());
    let (p, _, notices) = injected_with(&p, &policy("web", "web"), &Default::default());
    let spec = p.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_PROBE").as_deref(), Some("none"));
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT"), None);
    assert_eq!(spec.containers[0].readiness_probe.as_ref(), Some(&exec));
    let n = notices
        .iter()
        .find(|n| n.reason == fidelity::reasons::PROBE_NOT_REPRODUCED)
        .expect("reported");
    assert!(n.message.contains("exec probe"), "{n:?}");
    assert!(
        p.annotations()[fidelity::annotations::APP_PROBE].starts_with("none: it is an exec probe")
    );
}

#[test]
fn https_and_grpc_probes_reach_the_sidecar() {
    let mut p = pod();
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.ports = Some(vec![
        serde_json::from_value(json!({"name": "https", "containerPort": 8443})).unwrap(),
    ]);
    c.readiness_probe = Some(probe_of(
        json!({"httpGet": {"scheme": "HTTPS", "port": "https",
        "path": "/ready", "httpHeaders": [{"name": "Host", "value": "web.example"}]}}),
    ));
    let (p, _, notices) = injected_with(&p, &policy("web", "web"), &Default::default());
    assert!(notices.is_empty(), "{notices:?}");
    let sidecar = &p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_PROBE").as_deref(), Some("http"));
    assert_eq!(
        env(sidecar, "QUIESCE_PROBE_SCHEME").as_deref(),
        Some("https")
    );
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8443"));
    assert_eq!(
        env(sidecar, "QUIESCE_PROBE_HEADERS").as_deref(),
        Some("Host: web.example")
    );
    assert_eq!(p.annotations()[fidelity::annotations::APP_PROBE], "https");

    let mut g = pod();
    g.spec.as_mut().unwrap().containers[0].readiness_probe = Some(probe_of(
        json!({"grpc": {"port": 8080, "service": "ready"}}),
    ));
    let (g, _) = injected(&g, &policy("web", "web"));
    let sidecar = &g.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_PROBE").as_deref(), Some("grpc"));
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8080"));
    assert_eq!(
        env(sidecar, "QUIESCE_PROBE_GRPC_SERVICE").as_deref(),
        Some("ready")
    );
}

#[test]
fn the_admin_port_avoids_the_pods_ports() {
    use fidelity::choose_admin_port;
    let spec_with = |ports: &[i32], probe_port: Option<i32>| -> PodSpec {
        serde_json::from_value(json!({"containers": [{
            "name": "app",
            "ports": ports.iter().map(|p| json!({"containerPort": p})).collect::<Vec<_>>(),
            "livenessProbe": probe_port.map(|p| json!({"tcpSocket": {"port": p}})),
        }]}))
        .unwrap()
    };
    assert_eq!(
        choose_admin_port(&spec_with(&[8080], None), 9901),
        Some(9901)
    );
    assert_eq!(
        choose_admin_port(&spec_with(&[9901], None), 9901),
        Some(9902)
    );
    // An undeclared port an app's probe reaches counts too.
    assert_eq!(
        choose_admin_port(&spec_with(&[9901], Some(9902)), 9901),
        Some(9903)
    );
    assert_eq!(
        choose_admin_port(&spec_with(&[9901], None), 7000),
        Some(7000)
    );
    let all: Vec<i32> = (9901..9911).collect();
    assert_eq!(choose_admin_port(&spec_with(&all, None), 9901), None);
    assert_eq!(choose_admin_port(&spec_with(&[65535], None), 65535), None);
    let all_but_last: Vec<i32> = (9901..9910).collect();
    assert_eq!(
        choose_admin_port(&spec_with(&all_but_last, None), 9901),
        Some(9910)
    );

    // All taken: not injected, and reported.
    let mut p = pod();
    p.spec.as_mut().unwrap().containers[0].ports = Some(
        all.iter()
            .map(|n| serde_json::from_value(json!({"containerPort": n})).unwrap())
            .collect(),
    );
    let d = inject(&p, &policy("web", "web"), &SidecarSettings::default());
    assert_eq!(d, Decision::Skip(fidelity::SKIP_NO_ADMIN_PORT));
    let n = fidelity::skip_notice(fidelity::SKIP_NO_ADMIN_PORT).unwrap();
    assert!(n.warning && n.reason == fidelity::reasons::NO_ADMIN_PORT);
    assert_eq!(fidelity::skip_notice("opted out by label"), None);
}

#[test]
fn an_app_on_port_9901_gets_the_sidecar_on_the_next_port_everywhere() {
    let mut p = pod();
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.ports
        .as_mut()
        .unwrap()
        .push(serde_json::from_value(json!({"name": "admin", "containerPort": 9901})).unwrap());
    let mut proxy = policy("web", "web");
    proxy.spec.drain.mode = DrainMode::Proxy;
    let (p, _, notices) = injected_with(&p, &proxy, &Default::default());
    let spec = p.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_ADMIN_PORT").as_deref(), Some("9902"));
    let ports: Vec<_> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(
        ports,
        vec![9902, 15001, 15002],
        "admin, then the proxy listeners"
    );
    for probe in [&sidecar.readiness_probe, &sidecar.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.port, IntOrString::Int(9902));
    }
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert_eq!(hook.http_get.as_ref().unwrap().port, IntOrString::Int(9902));
    assert_eq!(p.annotations()[fidelity::annotations::ADMIN_PORT], "9902");
    let moved = notices
        .iter()
        .find(|n| n.reason == fidelity::reasons::ADMIN_PORT_MOVED)
        .expect("reported");
    assert!(moved.warning && moved.message.contains("9902"), "{moved:?}");

    // The configured port is used when free; the proxy listeners skip a port a probe reaches.
    let mut q = pod();
    q.spec.as_mut().unwrap().containers[0].liveness_probe =
        Some(probe_of(json!({"tcpSocket": {"port": 15001}})));
    let settings = SidecarSettings {
        admin_port: 7070,
        ..Default::default()
    };
    let (q, _, notices) = injected_with(&q, &proxy, &settings);
    assert!(notices.is_empty(), "{notices:?}");
    let sidecar = &q.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    let ports: Vec<_> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, vec![7070, 15002]);
    assert_eq!(env(sidecar, "QUIESCE_ADMIN_PORT").as_deref(), Some("7070"));
}

#[test]
fn a_pod_without_ports_tracks_no_guessed_port() {
    let mut p = pod();
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.ports = None;
    c.readiness_probe = None;
    let (p, _, notices) = injected_with(&p, &policy("web", "web"), &Default::default());
    let sidecar = &p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_APP_PORTS").as_deref(), Some(""));
    assert_eq!(env(sidecar, "QUIESCE_PROBE").as_deref(), Some("none"));
    assert!(
        notices
            .iter()
            .any(|n| n.reason == fidelity::reasons::NO_APP_PORTS && !n.warning)
    );
    // The drain hook is still there: endpoints removal and the quiet period are worth waiting.
    let c = &p.spec.as_ref().unwrap().containers[0];
    assert!(c.lifecycle.as_ref().unwrap().pre_stop.is_some());

    // A probe on a numeric port still checks the app.
    let mut q = pod();
    let c = &mut q.spec.as_mut().unwrap().containers[0];
    c.ports = None;
    c.readiness_probe = Some(probe_of(
        json!({"httpGet": {"port": 8080, "path": "/healthz"}}),
    ));
    let (q, _) = injected(&q, &policy("web", "web"));
    let sidecar = &q.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_APP_PORTS").as_deref(), Some(""));
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8080"));
}

#[test]
fn host_network_pods_are_not_injected_and_say_why() {
    let mut p = pod();
    p.spec.as_mut().unwrap().host_network = Some(true);
    let d = inject(&p, &policy("web", "web"), &SidecarSettings::default());
    assert_eq!(d, Decision::Skip(fidelity::SKIP_HOST_NETWORK));
    let n = fidelity::skip_notice(fidelity::SKIP_HOST_NETWORK).unwrap();
    assert_eq!(n.reason, fidelity::reasons::HOST_NETWORK);
    assert!(n.warning && n.message.contains("hostNetwork"), "{n:?}");
}

#[tokio::test]
async fn a_host_network_pod_is_allowed_unchanged_with_a_warning() {
    let mut p = pod();
    p.spec.as_mut().unwrap().host_network = Some(true);
    let v = review(state(vec![policy("web", "web")]), p).await;
    let r = &v["response"];
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("quiesce: hostNetwork pods are not injected"),
        "{warning}"
    );
}

#[tokio::test]
async fn notices_of_an_injected_pod_are_admission_warnings() {
    let mut p = pod();
    p.spec.as_mut().unwrap().containers[0].readiness_probe =
        Some(probe_of(json!({"exec": {"command": ["true"]}})));
    let v = review(state(vec![policy("web", "web")]), p).await;
    let r = &v["response"];
    assert_eq!(r["patchType"], "JSONPatch");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("exec probe"), "{warnings}");
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

#[test]
fn a_policy_in_another_namespace_does_not_govern() {
    let mut elsewhere = policy("web", "web");
    elsewhere.metadata.namespace = Some("elsewhere".into());
    let s = state(vec![elsewhere]);
    assert!(governing_policy(&s.policies, "shop", "web").is_none());
    assert!(governing_policy(&s.policies, "elsewhere", "web").is_some());
}

#[test]
fn a_readiness_probe_the_sidecar_reproduces_moves_to_it() {
    // The kubelet keeps probing readiness while a pod terminates: left on the app, an HTTP
    // probe every second is a new connection every second to the drain's eyes.
    let (p, _) = injected(&pod(), &policy("web", "web"));
    let spec = p.spec.as_ref().unwrap();
    assert!(spec.containers[0].readiness_probe.is_none());
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "QUIESCE_PROBE_PORT").as_deref(), Some("8080"));
    assert!(
        sidecar.readiness_probe.is_some(),
        "the kubelet probes the sidecar"
    );
}
