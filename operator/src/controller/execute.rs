//! What a reconcile writes: the plan's actions carried out against the apiserver (readiness
//! gate patches, the rollback, annotation removal, Events) in batches, and the policy's status
//! apply; each write is recorded in the shell's memory once the apiserver took it.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::{
    OPERATOR_FIELD_MANAGER, POD_TEMPLATE_HASH_LABEL, READY_GATE_CONDITION,
};
use serde_json::json;
use tracing::{debug, warn};

use super::{CachedPod, Context, in_namespace, pod_condition};
use crate::error::{Result, RollbackError};
use crate::metrics::{Policy, PolicyAdmission};
use crate::plan::{Action, GateView, Observed, Plan};

/// Gate writes in flight at once, across all reconciles: each holds a connection to the
/// apiserver and its buffers, so the bound is the leader's, not each reconcile's (16 per
/// reconcile, with 16 reconciles, added up to 256 and 8–14 MiB of RSS).
pub(super) const GATE_WRITES_IN_FLIGHT: usize = 16;

/// The plan's actions in the order they are to be carried out, as batches: consecutive gate
/// writes form one batch (carried out concurrently), every other action a batch of its own.
pub fn action_batches(actions: &[Action]) -> Vec<&[Action]> {
    actions
        .chunk_by(|a, b| matches!(a, Action::SetGate { .. }) && matches!(b, Action::SetGate { .. }))
        .collect()
}

impl Context {
    pub(super) async fn execute(
        &self,
        policy: &RolloutPolicy,
        o: &Observed,
        action: &Action,
        now: Timestamp,
    ) -> Result<()> {
        let ns = policy.namespace().unwrap_or_default();
        match action {
            Action::SetGate {
                pod,
                ready,
                reason,
                message,
            } => {
                let Some(current) = self.pods.get(&ns, pod) else {
                    return Ok(());
                };
                let previous = o
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.gate.clone());
                let transition = match &previous {
                    Some(g) if g.ready == *ready => gate_transition_time(&current).unwrap_or(now),
                    _ => now,
                };
                let status = if *ready { "True" } else { "False" };
                let patch = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "uid": current.uid()},
                    "status": {"conditions": [{
                        "type": READY_GATE_CONDITION,
                        "status": status,
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": now.to_string(),
                        "lastTransitionTime": transition.to_string(),
                    }]}
                });
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let _in_flight = self
                    .gate_writes
                    .acquire()
                    .await
                    .expect("the gate write semaphore is never closed");
                api.patch_status(
                    pod,
                    &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
                if *ready {
                    self.metrics
                        .admissions
                        .get_or_create(&PolicyAdmission {
                            policy: Policy::new(&ns, &policy.name_any()),
                            reason,
                        })
                        .inc();
                    // Debug, one line per pod (as the webhook's injections): the admission is
                    // in the pod's gate condition and in `admissions_total`.
                    debug!(pod = %pod, reason, "pod admitted");
                }
                let pod_uid = current.uid().unwrap_or_default();
                let mut memory = self.memory();
                let mine = memory.policy(&policy.uid().unwrap_or_default());
                if *ready {
                    mine.held.remove(&pod_uid);
                } else {
                    mine.held.insert(pod_uid.clone(), now);
                }
                mine.gates.insert(
                    pod_uid,
                    GateView {
                        ready: *ready,
                        reason: (*reason).to_owned(),
                        last_probe: Some(now),
                    },
                );
            }
            Action::Rollback { revision } => self.rollback(policy, revision).await?,
            Action::ClearAnnotation(key) => {
                let api: Api<RolloutPolicy> = Api::namespaced(self.client.clone(), &ns);
                let patch = json!({"metadata": {"annotations": {*key: null}}});
                api.patch(
                    &policy.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            Action::Event {
                warning,
                reason,
                note,
                action,
            } => {
                let event = Event {
                    type_: if *warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: (*reason).to_owned(),
                    note: Some(truncate(note, 1000)),
                    action: action.clone(),
                    secondary: None,
                };
                if let Err(err) = self.recorder.publish(&event, &policy.object_ref(&())).await {
                    // Events are best effort: never fail a reconcile over one.
                    warn!(error = %err, reason, "publishing event failed");
                }
            }
        }
        Ok(())
    }

    /// Restores the pod template of the stable revision's ReplicaSet on the target, like
    /// `kubectl rollout undo`.
    async fn rollback(&self, policy: &RolloutPolicy, revision: &str) -> Result<()> {
        let ns = policy.namespace().unwrap_or_default();
        let target = &policy.spec.target_ref.name;
        let deployment = self
            .deployments
            .get(&ObjectRef::new(target).within(&ns))
            .ok_or_else(|| RollbackError::TargetGone(target.clone()))?;
        let rs = self
            .replicasets
            .find(|rs| {
                in_namespace(rs, &ns)
                    && rs.labels().get(POD_TEMPLATE_HASH_LABEL).map(String::as_str)
                        == Some(revision)
                    && rs
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == deployment.uid().as_ref())
            })
            .ok_or_else(|| RollbackError::NoReplicaSet(revision.to_owned()))?;
        let rs = Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
            .get(&rs.name_any())
            .await?;
        let mut template = rs
            .spec
            .and_then(|s| s.template)
            .ok_or_else(|| RollbackError::NoTemplate(revision.to_owned()))?;
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": deployment.uid()},
            {"op": "replace", "path": "/spec/template", "value": template},
        ]))?;
        Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .patch(target, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
        warn!(deployment = %target, revision, "rolled back to the stable revision");
        Ok(())
    }

    pub(super) async fn patch_status(
        &self,
        policy: &RolloutPolicy,
        plan: &Plan,
        now: Timestamp,
    ) -> Result<()> {
        let api: Api<RolloutPolicy> =
            Api::namespaced(self.client.clone(), &policy.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": "quiesce.dev/v1alpha1",
            "kind": "RolloutPolicy",
            "metadata": {"name": policy.name_any(), "uid": policy.uid()},
            "status": plan.status,
        });
        api.patch_status(
            &policy.name_any(),
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        let mut memory = self.memory();
        let mine = memory.policy(&policy.uid().unwrap_or_default());
        mine.status = Some(plan.status.clone());
        mine.written_at = Some(now);
        mine.pending = None;
        Ok(())
    }
}

fn gate_transition_time(pod: &CachedPod) -> Option<Timestamp> {
    pod_condition(pod, READY_GATE_CONDITION)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
