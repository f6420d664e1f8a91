//! What the leader's caches keep of each object: only the fields the controller reads.
//!
//! The leader caches every Deployment of the cluster and every Deployment pod (label
//! `pod-template-hash`): as full objects, most of their bytes are what the controller never
//! reads — `managedFields`, `kubectl.kubernetes.io/last-applied-configuration`, container
//! images, env, probes, volumes. Each object is slimmed as it arrives from the watch, before
//! it is stored. What stays is listed here; a unit test checks that every view the controller
//! builds reads the same from a slimmed object as from the full one.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, Pod, PodSpec, PodStatus,
};

/// A container reduced to its name (and, with `ports`, its ports).
fn container_name(c: &Container, ports: bool) -> Container {
    Container {
        name: c.name.clone(),
        ports: if ports {
            c.ports.as_ref().map(|ps| {
                ps.iter()
                    .map(|p| ContainerPort {
                        name: p.name.clone(),
                        container_port: p.container_port,
                        protocol: p.protocol.clone(),
                        ..ContainerPort::default()
                    })
                    .collect()
            })
        } else {
            None
        },
        ..Container::default()
    }
}

/// The parts of a pod spec the controller reads: container names (is the sidecar injected),
/// readiness gates, the grace period (drain report bounds), the service account (sidecar
/// bindings); container ports with `ports`.
fn slim_spec(spec: &PodSpec, ports: bool) -> PodSpec {
    PodSpec {
        containers: spec
            .containers
            .iter()
            .map(|c| container_name(c, ports))
            .collect(),
        init_containers: spec
            .init_containers
            .as_ref()
            .map(|cs| cs.iter().map(|c| container_name(c, ports)).collect()),
        readiness_gates: spec.readiness_gates.clone(),
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        service_account_name: spec.service_account_name.clone(),
        ..PodSpec::default()
    }
}

/// A container status reduced to what the restart and crash-loop checks read: name, restart
/// count, current and last state.
fn slim_container_status(c: &ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        restart_count: c.restart_count,
        ready: c.ready,
        started: c.started,
        state: c.state.clone(),
        last_state: c.last_state.clone(),
        ..ContainerStatus::default()
    }
}

/// The parts of a pod status the controller reads: conditions (readiness, the gate, the drain
/// report), container statuses (restarts, the sidecar's state), the phase.
fn slim_status(status: &PodStatus) -> PodStatus {
    let statuses = |cs: &Option<Vec<ContainerStatus>>| {
        cs.as_ref()
            .map(|cs| cs.iter().map(slim_container_status).collect())
    };
    PodStatus {
        conditions: status.conditions.clone(),
        container_statuses: statuses(&status.container_statuses),
        init_container_statuses: statuses(&status.init_container_statuses),
        phase: status.phase.clone(),
        ..PodStatus::default()
    }
}

/// A pod as the leader caches it: metadata without `managedFields` and annotations, the spec's
/// and the status' few read fields.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = slim_spec(spec, false);
    }
    if let Some(status) = pod.status.as_mut() {
        *status = slim_status(status);
    }
}

/// A Deployment as the leader caches it: metadata without `managedFields` and annotations,
/// the replica count, the template's labels, grace period, service account and container
/// ports; no status.
pub fn slim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    d.metadata.annotations = None;
    d.status = None;
    if let Some(spec) = d.spec.as_mut() {
        if let Some(meta) = spec.template.metadata.as_mut() {
            meta.annotations = None;
        }
        if let Some(pod_spec) = spec.template.spec.as_mut() {
            *pod_spec = slim_spec(pod_spec, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the webhook leaves it (sidecar, gate, probes, env, volumes, managed fields),
    /// written by the sidecar and the kubelet.
    fn full_pod() -> Pod {
        serde_json::from_str(include_str!("../../tests/fixtures/injected-pod.json"))
            .expect("fixture pod")
    }

    fn full_deployment() -> Deployment {
        serde_json::from_str(include_str!("../../tests/fixtures/deployment.json"))
            .expect("fixture deployment")
    }

    #[test]
    fn a_slimmed_pod_reads_the_same_to_the_controller() {
        let full = full_pod();
        let mut slim = full.clone();
        slim_pod(&mut slim);
        assert_eq!(super::super::pod_view(&slim), super::super::pod_view(&full));
        assert!(
            super::super::pod_view(&full).injected,
            "the fixture is injected"
        );
        assert_eq!(
            super::super::drains::longest_drain_millis(&slim),
            super::super::drains::longest_drain_millis(&full)
        );
        assert_eq!(
            slim.metadata.owner_references,
            full.metadata.owner_references
        );
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(
            slim.spec.as_ref().unwrap().service_account_name,
            full.spec.as_ref().unwrap().service_account_name
        );
        let (before, after) = (
            serde_json::to_vec(&full).unwrap().len(),
            serde_json::to_vec(&slim).unwrap().len(),
        );
        assert!(after < before / 2, "{before} → {after} bytes");
    }

    #[test]
    fn a_slimmed_deployment_keeps_what_the_target_view_reads() {
        let full = full_deployment();
        let mut slim = full.clone();
        slim_deployment(&mut slim);
        let (f, s) = (full.spec.unwrap(), slim.spec.unwrap());
        assert_eq!(s.replicas, f.replicas);
        assert_eq!(
            s.template.metadata.as_ref().unwrap().labels,
            f.template.metadata.as_ref().unwrap().labels
        );
        let (fs, ss) = (f.template.spec.unwrap(), s.template.spec.unwrap());
        assert_eq!(
            ss.termination_grace_period_seconds,
            fs.termination_grace_period_seconds
        );
        assert_eq!(ss.service_account_name, fs.service_account_name);
        let ports = |s: &PodSpec| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .map(|p| (p.name.clone(), p.container_port, p.protocol.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(&ss), ports(&fs));
        assert!(!ports(&fs).is_empty(), "the fixture declares ports");
        assert_eq!(slim.metadata.uid, full.metadata.uid);
    }
}
