//! What a reconcile reads: the caches and the shell's memory turned into the plan's
//! [`Observed`] ([`Context::observe`]), the drains counted on the way (and uncounted when the
//! status write fails), and the plan's views of a pod, its sidecar and its readiness gate.

use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use quiesce_api::constants::{
    DRAINED_CONDITION, POD_TEMPLATE_HASH_LABEL, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME,
    annotations,
};
use quiesce_api::{DrainMode, RolloutPolicy};

use super::{
    CachedDeployment, CachedPod, Context, Taken, drain_report, in_namespace, service_view,
};
use crate::plan::{
    self, AppPort, DrainedView, GateView, Observed, PodView, PolicyView, SidecarView, TargetState,
    TargetView,
};

/// Annotation of a ReplicaSet: the Deployment revision it belongs to.
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

impl Context {
    /// Builds the plan's input from the caches and the shell's memory.
    pub fn observe(&self, policy: &RolloutPolicy, deleting: bool) -> Observed {
        self.observe_counting(policy, deleting).0
    }

    /// Forgets that the drains of a pass were counted (its status write failed) and puts them
    /// back in the inbox, so the next pass counts them even if their pods are gone by then.
    pub(super) fn uncount(&self, ns: &str, deployment: &str, counted: Vec<Taken>, now: Timestamp) {
        let mut memory = self.memory();
        for taken in counted {
            memory.drains.forget(&taken.uid);
            self.drain_inbox.put_back(ns, deployment, taken, now);
        }
    }

    /// [`Self::observe`], and the drains it counted (pod UID, name, report).
    pub(super) fn observe_counting(
        &self,
        policy: &RolloutPolicy,
        deleting: bool,
    ) -> (Observed, Vec<Taken>) {
        let ns = policy.namespace().unwrap_or_default();
        let uid = policy.uid().unwrap_or_default();
        let mut memory = self.memory();
        let known: HashSet<String> = self
            .policies
            .state()
            .iter()
            .filter_map(|p| p.uid())
            .collect();
        memory.forget_policies(|u| u == uid || known.contains(u));
        let mine = memory.policy(&uid);
        let status = mine
            .pending
            .clone()
            .or_else(|| mine.status.clone())
            .or_else(|| policy.status.clone())
            .unwrap_or_default();
        let target_name = &policy.spec.target_ref.name;
        let rivals = self.policies.state_filter(|p| {
            p.spec.target_ref.name == *target_name
                && in_namespace(p, &ns)
                && p.metadata.uid != policy.metadata.uid
        });
        let winner = plan::conflict_winner(policy, rivals);
        let deployment = self
            .deployments
            .get(&ObjectRef::new(target_name).within(&ns));
        let (target, pods) = match (winner, deployment) {
            (Some(winner), _) => (TargetState::Conflict { winner }, Vec::new()),
            (None, None) => (TargetState::NotFound, Vec::new()),
            (None, Some(d)) => {
                let (view, pods) = self.target_view(&d);
                (TargetState::Found(view), pods)
            }
        };
        let services = if policy.spec.drain.mode == DrainMode::Proxy {
            self.services
                .state_filter(|s| in_namespace(s, &ns))
                .iter()
                .map(|s| service_view(s))
                .collect()
        } else {
            Vec::new()
        };
        let now = (self.clock)();
        let mut counted = Vec::new();
        let mut views = Vec::new();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        for pod in &pods {
            let mut view = pod_view(pod);
            let pod_uid = pod.uid().unwrap_or_default();
            let mine = memory.policy(&uid);
            overlay_gate(&mut view, mine.gates.entry(pod_uid.clone()));
            view.held_since = mine.held.get(&pod_uid).copied();
            if let Some(report) = drain_report(pod)
                && memory
                    .drains
                    .first_sight(&pod_uid, &ns, &pod.name_any(), now)
            {
                counted.push(Taken {
                    uid: pod_uid.clone(),
                    pod: pod.name_any(),
                    report,
                });
            }
            views.push(view);
        }
        if matches!(target, TargetState::Found(_)) {
            // Pods that reported and went away before this reconcile (see `pod_event`).
            for taken in self.drain_inbox.take(&ns, target_name) {
                if memory.drains.first_sight(&taken.uid, &ns, &taken.pod, now) {
                    counted.push(taken);
                }
            }
        }
        memory.drains.forget_gone(now, |ns, name, uid| {
            self.pods
                .get(ns, name)
                .is_some_and(|p| p.uid().as_deref() == Some(uid))
        });
        let mine = memory.policy(&uid);
        mine.gates.retain(|pod_uid, _| live.contains(pod_uid));
        mine.held.retain(|pod_uid, _| live.contains(pod_uid));
        let new_drains = counted.iter().map(|t| t.report).collect();
        let observed = Observed {
            policy: PolicyView {
                name: policy.name_any(),
                generation: policy.meta().generation,
                spec: policy.spec.clone(),
                status,
                promote: policy.annotations().get(annotations::PROMOTE).cloned(),
                abort: policy.annotations().contains_key(annotations::ABORT),
                deleting,
            },
            target,
            pods: views,
            new_drains,
            services,
        };
        (observed, counted)
    }

    fn target_view(&self, d: &CachedDeployment) -> (TargetView, Vec<Arc<CachedPod>>) {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.uid();
        let rs: Vec<Arc<PartialObjectMeta<ReplicaSet>>> = self.replicasets.state_filter(|rs| {
            in_namespace(rs, &ns)
                && rs
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
        });
        let hash =
            |rs: &PartialObjectMeta<ReplicaSet>| rs.labels().get(POD_TEMPLATE_HASH_LABEL).cloned();
        let update_revision = rs
            .iter()
            .max_by_key(|rs| {
                rs.annotations()
                    .get(REVISION_ANNOTATION)
                    .and_then(|r| r.parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .and_then(|rs| hash(rs));
        let rs_names: Vec<String> = rs.iter().map(|rs| rs.name_any()).collect();
        let pods = self.pods.owned_by(&ns, &rs_names);
        let spec = d.spec.as_ref();
        let template = spec.map(|s| &s.template);
        let view = TargetView {
            name: d.name_any(),
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            update_revision,
            revisions: rs.iter().filter_map(|rs| hash(rs)).collect(),
            termination_grace_period_seconds: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30),
            template_labels: template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            app_ports: template
                .and_then(|t| t.spec.as_ref())
                .map(|s| s.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .map(|p| AppPort {
                    name: p.name.clone(),
                    number: p.container_port,
                })
                .collect(),
        };
        (view, pods)
    }
}

/// Lays the gate the shell wrote (`written`, if any) over the cache's: until the cache shows
/// it, the pod's gate is what was written. A held gate the cache shows open is left to the
/// plan to judge: someone else opened it after the write (or, right after a reset, the cache
/// still shows the gate from before; judged again, it is reset again).
fn overlay_gate(view: &mut PodView, written: Entry<'_, String, GateView>) {
    let Entry::Occupied(written) = written else {
        return;
    };
    let shown = view.gate.as_ref();
    let caught_up =
        shown.is_some_and(|g| g.ready == written.get().ready && g.reason == written.get().reason);
    let opened_since = !written.get().ready && shown.is_some_and(|g| g.ready);
    if caught_up || opened_since {
        written.remove();
    } else {
        view.gate = Some(written.get().clone());
    }
}

/// The condition `type_` of `pod`, if present.
pub fn pod_condition<'a>(pod: &'a CachedPod, type_: &str) -> Option<&'a PodCondition> {
    condition(pod.status.as_ref()?.conditions.as_deref(), type_)
}

/// The condition `type_` among a pod's `conditions`, if present.
pub fn condition<'a>(
    conditions: Option<&'a [PodCondition]>,
    type_: &str,
) -> Option<&'a PodCondition> {
    conditions?.iter().find(|c| c.type_ == type_)
}

/// The quiesce sidecar's status on a pod: the native sidecar's entry in
/// `initContainerStatuses` (or in `containerStatuses`, for a sidecar injected as a container).
pub fn sidecar_view(pod: &CachedPod) -> Option<SidecarView> {
    let status = pod.status.as_ref()?;
    let c = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)?;
    let last_termination = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| match t.message.as_deref().and_then(last_line) {
            Some(m) => m.to_owned(),
            _ => format!(
                "{}, exit code {}",
                t.reason.as_deref().unwrap_or("Terminated"),
                t.exit_code
            ),
        });
    Some(SidecarView {
        restarts: c.restart_count,
        crash_looping: c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff"),
        last_termination,
    })
}

/// The last non-empty line of a termination message: the sidecar's termination message policy
/// is `FallbackToLogsOnError`, so after a crash it is the tail of its log, which ends with the
/// error.
fn last_line(message: &str) -> Option<&str> {
    message.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The plan's view of a pod.
pub fn pod_view(pod: &CachedPod) -> PodView {
    let containers_ready_since = pod_condition(pod, "ContainersReady")
        .filter(|c| c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        });
    let gate = pod_condition(pod, READY_GATE_CONDITION).map(|c| GateView {
        ready: c.status == "True",
        reason: c.reason.clone().unwrap_or_default(),
        last_probe: c.last_probe_time.as_ref().map(|t| t.0),
    });
    let drained = pod_condition(pod, DRAINED_CONDITION).map(|c| DrainedView {
        done: c.status == "True",
    });
    let spec = pod.spec.as_ref();
    let has_gate = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READY_GATE_CONDITION));
    let injected = spec.is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_CONTAINER_NAME)
    });
    let status = pod.status.as_ref();
    let sidecar = sidecar_view(pod);
    let restarts = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.name != SIDECAR_CONTAINER_NAME)
        .map(|c| c.restart_count)
        .chain(sidecar.as_ref().map(|s| s.restarts))
        .max()
        .unwrap_or(0);
    PodView {
        name: pod.name_any(),
        revision: pod.labels().get(POD_TEMPLATE_HASH_LABEL).cloned(),
        containers_ready_since,
        gate,
        has_gate,
        injected,
        drained,
        restarts,
        sidecar,
        terminating: pod.meta().deletion_timestamp.is_some(),
        held_since: None,
    }
}
