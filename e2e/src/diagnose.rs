//! What a failed test leaves behind for the reader of CI's log: the namespace's pods with their
//! conditions and containers, its Events in order, and the operator's log lines about it (or
//! about its leadership), gathered before the namespace is deleted.

use std::fmt::Write;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

/// The pods and Events of `namespace` as text; a failing list is reported in the text.
pub async fn namespace_report(client: &Client, namespace: &str) -> String {
    let mut out = format!("--- namespace {namespace} at the failure ---\n");
    match Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(pods) => pods.items.iter().for_each(|p| out.push_str(&pod_line(p))),
        Err(e) => _ = writeln!(out, "pods: {e}"),
    }
    match Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(events) => {
            let mut events = events.items;
            events.sort_by_key(|e| event_time(e).unwrap_or_default());
            for e in &events {
                let _ = writeln!(
                    out,
                    "event {} {}/{} {}: {}",
                    event_time(e).unwrap_or_default(),
                    e.involved_object.kind.as_deref().unwrap_or("?"),
                    e.involved_object.name.as_deref().unwrap_or("?"),
                    e.reason.as_deref().unwrap_or("?"),
                    e.message.as_deref().unwrap_or_default().trim_end(),
                );
            }
        }
        Err(e) => _ = writeln!(out, "events: {e}"),
    }
    out.push_str(&operator_lines(client, namespace).await);
    out
}

/// The operator replicas' recent log lines that name `namespace` or its leadership.
async fn operator_lines(client: &Client, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), crate::chart::NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/component=operator");
    let mut out = String::new();
    let list = match pods.list(&selector).await {
        Ok(list) => list,
        Err(e) => return format!("operator pods: {e}\n"),
    };
    let recent = LogParams {
        tail_lines: Some(2000),
        ..LogParams::default()
    };
    for pod in list.items {
        let name = pod.name_any();
        match pods.logs(&name, &recent).await {
            Ok(log) => log
                .lines()
                .filter(|l| l.contains(namespace) || l.contains("lead"))
                .for_each(|l| _ = writeln!(out, "{name}: {l}")),
            Err(e) => _ = writeln!(out, "{name}: no log: {e}"),
        }
    }
    out
}

/// `pod <name> <phase> [Type=Status(reason) ...] [container ready=… restarts=… state]`.
fn pod_line(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut line = format!(
        "pod {} {} deleting={}",
        pod.name_any(),
        status.phase.unwrap_or_default(),
        pod.metadata.deletion_timestamp.is_some()
    );
    for c in status.conditions.unwrap_or_default() {
        let reason = c.reason.map(|r| format!("({r})")).unwrap_or_default();
        let _ = write!(line, " {}={}{reason}", c.type_, c.status);
    }
    let containers = status.init_container_statuses.into_iter().flatten();
    for c in containers.chain(status.container_statuses.into_iter().flatten()) {
        let state = c.state.as_ref().map_or("unknown", |s| {
            if s.running.is_some() {
                "running"
            } else if s.terminated.is_some() {
                "terminated"
            } else {
                "waiting"
            }
        });
        let _ = write!(
            line,
            " [{} ready={} restarts={} {state}]",
            c.name, c.ready, c.restart_count
        );
    }
    line.push('\n');
    line
}

fn event_time(e: &Event) -> Option<String> {
    let time = e.last_timestamp.as_ref().map(|t| t.0.to_string());
    time.or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
}
