use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use quiesce_api::{DrainMode, RolloutPolicy, RolloutPolicySpec};
use quiesce_operator::webhook::SidecarSettings;
use serde_json::json;

use super::*;

/// A Deployment `web` with named port `http` 8080, an HTTP readiness probe on it, and
/// `grace` seconds of termination grace.
fn deployment(grace: i64, pre_stop: Option<serde_json::Value>) -> Deployment {
    let mut app = json!({
        "name": "app", "image": "demo",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2}
    });
    if let Some(hook) = pre_stop {
        app["lifecycle"] = json!({"preStop": hook});
    }
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": grace, "containers": [app]}
            }
        }
    }))
    .unwrap()
}

fn policy(name: &str, mode: DrainMode, created: &str) -> RolloutPolicy {
    let mut p = RolloutPolicy::new(name, RolloutPolicySpec::for_deployment("web"));
    p.spec.drain.mode = mode;
    p.metadata.namespace = Some("shop".into());
    p.metadata.creation_timestamp = Some(serde_json::from_value(json!(created)).unwrap());
    p
}

fn service(target_port: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": target_port}]}
    }))
    .unwrap()
}

fn run(d: &Deployment, policies: &[RolloutPolicy], services: &[Service]) -> CheckReport {
    check(d, policies, services, false, &SidecarSettings::default())
}

#[test]
fn a_well_prepared_deployment_has_no_problem_and_says_what_changes() {
    let r = run(
        &deployment(60, None),
        &[policy("web", DrainMode::Proxy, "2026-01-01T00:00:00Z")],
        &[service(json!("http"))],
    );
    assert_eq!(r.policy.as_deref(), Some("web"));
    assert!(r.problems.is_empty(), "{r:#?}");
    let changes = r.changes.join("\n");
    for part in [
        "admin port 9901",
        "readiness gate quiesce.dev/ready",
        "moves the readiness probe of container app to the sidecar",
        "drains in Proxy mode: the proxy takes over the named ports http",
        "preStop hook",
    ] {
        assert!(changes.contains(part), "missing {part:?} in\n{changes}");
    }
}

#[test]
fn every_problem_is_named_with_its_fix() {
    let r = run(
        &deployment(5, None),
        &[
            policy("web", DrainMode::Proxy, "2026-01-01T00:00:00Z"),
            policy("web-2", DrainMode::Observe, "2026-02-01T00:00:00Z"),
        ],
        &[service(json!(8080))],
    );
    let problems = r.problems.join("\n");
    assert_eq!(r.problems.len(), 3, "{problems}");
    assert!(problems.contains("web-2 also target"), "{problems}");
    assert!(
        problems.contains("terminationGracePeriodSeconds"),
        "{problems}"
    );
    assert!(
        problems.contains("set targetPort: http instead of 8080"),
        "{problems}"
    );
}

#[test]
fn a_policy_that_cannot_act_is_reported() {
    let r = run(&deployment(60, None), &[], &[]);
    assert!(
        r.problems[0].contains("no RolloutPolicy targets deployment/web"),
        "{r:?}"
    );
    let p = [policy("web", DrainMode::Observe, "2026-01-01T00:00:00Z")];
    let r = check(
        &deployment(60, None),
        &p,
        &[],
        true,
        &SidecarSettings::default(),
    );
    assert!(
        r.problems[0].contains("quiesce.dev/inject=disabled"),
        "{r:?}"
    );
}

#[test]
fn a_sleep_prestop_is_replaced_and_any_other_hook_is_kept_and_reported() {
    let p = [policy("web", DrainMode::Observe, "2026-01-01T00:00:00Z")];
    let sleep = json!({"exec": {"command": ["sleep", "5"]}});
    let r = run(&deployment(60, Some(sleep)), &p, &[]);
    assert!(r.problems.is_empty(), "{r:#?}");
    assert!(r.notes.iter().any(|n| n.contains("sleep")), "{r:#?}");
    let script = json!({"exec": {"command": ["/bin/flush-queues"]}});
    let r = run(&deployment(60, Some(script)), &p, &[]);
    assert!(
        r.problems
            .iter()
            .any(|n| n.contains("quiesce does not drain this pod")),
        "{r:#?}"
    );
}
