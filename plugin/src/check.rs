//! `kubectl quiesce check DEPLOYMENT`: what injection would do to the Deployment's pods, and
//! every problem found, before a pod is created. Pure: it runs the webhook's own [`inject`] on
//! the pod template and the operator's own [`proxy_takeover`] on the Services, so the answer
//! is the one the cluster would give.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use quiesce_api::constants::{INJECT_DISABLED, INJECT_LABEL, READY_GATE_CONDITION, annotations};
use quiesce_api::{DrainMode, RolloutPolicy};
use quiesce_operator::controller::service_view;
use quiesce_operator::plan::{AppPort, TargetView, proxy_takeover, seniority};
use quiesce_operator::webhook::{Decision, SidecarSettings, fidelity, inject};
use serde::Serialize;

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// The Deployment checked.
    pub deployment: String,
    /// The policy that governs it, if any.
    pub policy: Option<String>,
    /// What injection does to each new pod.
    pub changes: Vec<String>,
    /// Worth knowing, nothing to fix.
    pub notes: Vec<String>,
    /// What to fix for quiesce to drain and pace these pods as asked.
    pub problems: Vec<String>,
}

/// Checks `deployment` against the namespace's `policies` and `services`;
/// `namespace_opted_out`: the namespace carries `quiesce.dev/inject=disabled`.
pub fn check(
    deployment: &Deployment,
    policies: &[RolloutPolicy],
    services: &[Service],
    namespace_opted_out: bool,
    settings: &SidecarSettings,
) -> CheckReport {
    let name = deployment.name_any();
    let mut r = CheckReport {
        deployment: name.clone(),
        ..Default::default()
    };
    let mut targeting: Vec<&RolloutPolicy> = policies
        .iter()
        .filter(|p| p.spec.target_ref.name == name && p.metadata.deletion_timestamp.is_none())
        .collect();
    // The oldest governs (the order the webhook and the controller use); the others are in
    // Conflict.
    targeting.sort_by_key(|p| seniority(p));
    let Some(policy) = targeting.first() else {
        r.problems.push(format!(
            "no RolloutPolicy targets deployment/{name}: nothing is injected and its rollouts are not paced"
        ));
        return r;
    };
    r.policy = Some(policy.name_any());
    if targeting.len() > 1 {
        let others: Vec<String> = targeting[1..].iter().map(|p| p.name_any()).collect();
        r.problems.push(format!(
            "RolloutPolicies {} also target deployment/{name}: they are in Conflict and ignored ({} governs, the oldest)",
            others.join(", "),
            policy.name_any()
        ));
    }
    if namespace_opted_out {
        r.problems.push(format!(
            "the namespace is labelled {INJECT_LABEL}={INJECT_DISABLED}: nothing is injected"
        ));
        return r;
    }
    let Some(template) = deployment.spec.as_ref().map(|s| &s.template) else {
        r.problems.push("the Deployment has no spec".into());
        return r;
    };
    let pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    match inject(&pod, policy, settings) {
        Decision::Skip(why) => r
            .problems
            .push(format!("the webhook leaves these pods alone: {why}")),
        Decision::Inject {
            pod: injected,
            short_grace,
            notices,
        } => {
            describe(&pod, &injected, policy, &mut r);
            r.problems.extend(short_grace);
            for n in notices {
                let line = format!("{}: {}", n.reason, n.message);
                if n.warning {
                    r.problems.push(line);
                } else {
                    r.notes.push(line);
                }
            }
        }
    }
    if policy.spec.drain.mode == DrainMode::Proxy {
        let (ok, _, message) = proxy_takeover(&target_view(deployment), &services_of(services));
        if ok {
            r.notes.push(message);
        } else {
            r.problems.push(message);
        }
    }
    r
}

/// The changes the webhook made, in words.
fn describe(before: &Pod, after: &Pod, policy: &RolloutPolicy, r: &mut CheckReport) {
    let note = |key: &str| after.annotations().get(key).cloned().unwrap_or_default();
    let admin_port = note(fidelity::annotations::ADMIN_PORT);
    r.changes.push(format!(
        "adds the native sidecar quiesce-sidecar (admin port {admin_port}: /readyz, /livez, the drain)"
    ));
    r.changes.push(format!(
        "adds the readiness gate {READY_GATE_CONDITION}: a new pod joins its Services when the policy admits it"
    ));
    let probe = note(fidelity::annotations::APP_PROBE);
    let moved: Vec<String> = before
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.readiness_probe.is_some())
        .filter(|c| {
            after
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|a| a.name == c.name && a.readiness_probe.is_none())
        })
        .map(|c| c.name.clone())
        .collect();
    r.changes.push(if moved.is_empty() {
        format!("app health as the sidecar checks it: {probe}")
    } else {
        format!(
            "moves the readiness probe of container {} to the sidecar, which checks the app ({probe}) and answers the kubelet",
            moved.join(", ")
        )
    });
    let mode = note(annotations::DRAIN_MODE);
    let proxied: Vec<String> = after
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.name == quiesce_api::constants::SIDECAR_CONTAINER_NAME)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.name.as_deref() != Some("quiesce-admin"))
        .map(|p| {
            format!(
                "{} (:{})",
                p.name.as_deref().unwrap_or("?"),
                p.container_port
            )
        })
        .collect();
    r.changes.push(if proxied.is_empty() {
        format!("drains in {mode} mode")
    } else {
        format!(
            "drains in {mode} mode: the proxy takes over the named ports {}",
            proxied.join(", ")
        )
    });
    if policy.spec.drain.mode == DrainMode::Proxy && mode != DrainMode::Proxy.as_str() {
        r.problems.push(
            "the policy asks for drain.mode Proxy, but the pods have no named port to take over: they drain in Observe mode (kept-alive connections wait for the drain's timeout)".into(),
        );
    }
    match after.annotations().get(fidelity::annotations::NOT_DRAINED) {
        Some(why) => r.problems.push(why.clone()),
        None => r.changes.push(
            "sets the preStop hook of the app containers to the sidecar's drain (SIGTERM waits until the pod is out of the endpoints and quiet)".into(),
        ),
    }
}

fn target_view(d: &Deployment) -> TargetView {
    let template = d.spec.as_ref().map(|s| &s.template);
    let app_ports = template
        .and_then(|t| t.spec.as_ref())
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| AppPort {
            name: p.name.clone(),
            number: p.container_port,
        })
        .collect();
    TargetView {
        name: d.name_any(),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        update_revision: None,
        revisions: Vec::new(),
        termination_grace_period_seconds: 30,
        template_labels: template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        app_ports,
    }
}

fn services_of(services: &[Service]) -> Vec<quiesce_operator::plan::ServiceView> {
    services.iter().map(service_view).collect()
}

#[cfg(test)]
mod tests;
