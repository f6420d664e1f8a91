//! The mutating admission webhook (pod CREATE, path [`MUTATE_PATH`], HTTPS on the webhook
//! port): pods whose Deployment is targeted by a RolloutPolicy get the quiesce sidecar as a
//! native sidecar, the `quiesce.dev/ready` readiness gate, an httpGet preStop hook to the
//! sidecar's drain endpoint on app containers that have none (or a plain `sleep`), and the env
//! the sidecar needs. Injection never makes a healthy pod unhealthy: see [`fidelity`] for the
//! probe translation, the admin port choice and the preStop rules; hostNetwork pods are not
//! injected. What departs from the pod as written is reported ([`Notice`]s: Events on the
//! policy and admission warnings).
//!
//! [`inject()`] is pure (tested on plain pods); [`router`] wires it to the caches; [`serve`] is
//! the TLS server. Both replicas serve (the webhook needs no leadership). Every failure allows
//! the pod unchanged — the configuration's `failurePolicy: Ignore` says the same — and the
//! controller reports pods that run without the sidecar.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PartialObjectMeta;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::{SIDECAR_ADMIN_PORT, reasons};
use tracing::{debug, warn};

pub mod fidelity;
mod inject;
mod proxy_ports;
mod server;

pub use server::serve;

pub use fidelity::Notice;
pub use inject::{Decision, inject, restricted_security_context};
pub use proxy_ports::{ProxyRoute, take_over_named_ports};

use crate::controller::{in_namespace, pod_deployment};
use crate::metrics::Metrics;

/// Path of the mutating webhook.
pub const MUTATE_PATH: &str = "/mutate-pods";

/// How the sidecar container is built (from the chart's values).
#[derive(Clone, Debug)]
pub struct SidecarSettings {
    /// Sidecar image.
    pub image: String,
    /// Image pull policy.
    pub pull_policy: String,
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// Memory limit.
    pub memory_limit: String,
    /// Log format of the sidecar (`json` or `plain`).
    pub log_format: String,
    /// The sidecar's admin port, unless a container of the pod uses it (then the next free one
    /// of [`fidelity::ADMIN_PORT_RANGE`]).
    pub admin_port: u16,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        Self {
            image: "quiesce.local/sidecar:dev".into(),
            pull_policy: "IfNotPresent".into(),
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "64Mi".into(),
            log_format: "json".into(),
            admin_port: SIDECAR_ADMIN_PORT,
        }
    }
}

/// The policy governing the Deployment `deployment` in `namespace`: the oldest one that is not
/// being deleted (the others are in Conflict).
pub fn governing_policy(
    policies: &Store<RolloutPolicy>,
    namespace: &str,
    deployment: &str,
) -> Option<Arc<RolloutPolicy>> {
    let targeting = policies
        .state_filter(|p| p.spec.target_ref.name == deployment && in_namespace(p, namespace));
    crate::plan::governing(targeting)
}

/// Shared state of the webhook handlers.
#[derive(Clone)]
pub struct WebhookState {
    /// Cache of policies.
    pub policies: Store<RolloutPolicy>,
    /// Cache of ReplicaSet metadata (pod → Deployment).
    pub replicasets: Store<PartialObjectMeta<ReplicaSet>>,
    /// Sidecar settings.
    pub settings: Arc<SidecarSettings>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events for short grace periods (`None` in tests).
    pub recorder: Option<Recorder>,
}

/// The webhook's routes.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .with_state(state)
}

async fn mutate(
    State(state): State<WebhookState>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let start = Instant::now();
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(req) => req,
        Err(err) => {
            warn!(error = %err, "invalid AdmissionReview");
            state
                .metrics
                .webhook("error", start.elapsed().as_secs_f64());
            return Json(AdmissionResponse::invalid(err.to_string()).into_review());
        }
    };
    let (response, result) = respond(&state, &req);
    state.metrics.webhook(result, start.elapsed().as_secs_f64());
    Json(response.into_review())
}

fn respond(state: &WebhookState, req: &AdmissionRequest<Pod>) -> (AdmissionResponse, &'static str) {
    let allow = AdmissionResponse::from(req);
    if req.operation != Operation::Create {
        return (allow, "skipped");
    }
    let Some(pod) = req.object.as_ref() else {
        return (allow, "skipped");
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_default();
    let Some(deployment) = pod_deployment(pod, &state.replicasets) else {
        return (allow, "skipped");
    };
    let Some(policy) = governing_policy(&state.policies, &namespace, &deployment) else {
        return (allow, "skipped");
    };
    match inject(pod, &policy, &state.settings) {
        Decision::Skip(why) => match fidelity::skip_notice(why) {
            None => {
                debug!(deployment = %deployment, namespace = %namespace, why, "not injected");
                (allow, "skipped")
            }
            Some(notice) => {
                warn!(deployment = %deployment, namespace = %namespace, reason = notice.reason, why, "not injected");
                let notices = [notice];
                publish_notices(state, &policy, &notices);
                (with_warnings(allow, &notices), "skipped")
            }
        },
        Decision::Inject {
            pod: mutated,
            short_grace,
            notices,
        } => {
            let patch = match (serde_json::to_value(pod), serde_json::to_value(&*mutated)) {
                (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
                _ => return (allow, "error"),
            };
            if let (Some(message), Some(recorder)) = (short_grace, state.recorder.clone()) {
                let reference = policy.object_ref(&());
                tokio::spawn(async move {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: reasons::GRACE_PERIOD_TOO_SHORT.into(),
                        note: Some(message),
                        action: "Inject".into(),
                        secondary: None,
                    };
                    if let Err(err) = recorder.publish(&event, &reference).await {
                        warn!(error = %err, "publishing event failed");
                    }
                });
            }
            publish_notices(state, &policy, &notices);
            match allow.clone().with_patch(patch) {
                Ok(resp) => {
                    // Debug, one line per pod: each line written to stdout wakes the container
                    // runtime's log reader, which on a busy node takes this thread's core in
                    // the middle of the admission (webhook p99 at 3,000 pods: 9.0 ms with it at
                    // info, 5.4 without). `webhook_requests_total` counts injections.
                    debug!(deployment = %deployment, namespace = %namespace, policy = %policy.name_any(), notices = notices.len(), "sidecar injected");
                    (with_warnings(resp, &notices), "injected")
                }
                Err(err) => {
                    warn!(error = %err, "serializing the patch failed");
                    (allow, "error")
                }
            }
        }
    }
}

/// The notices as warnings of the admission response (shown by `kubectl`, logged by the
/// controller that created the pod).
fn with_warnings(mut response: AdmissionResponse, notices: &[Notice]) -> AdmissionResponse {
    if !notices.is_empty() {
        response
            .warnings
            .get_or_insert_with(Vec::new)
            .extend(notices.iter().map(|n| format!("quiesce: {}", n.message)));
    }
    response
}

/// The notices as Events on the policy (the pod has no name yet at admission).
fn publish_notices(state: &WebhookState, policy: &RolloutPolicy, notices: &[Notice]) {
    let Some(recorder) = state.recorder.clone() else {
        return;
    };
    if notices.is_empty() {
        return;
    }
    let reference = policy.object_ref(&());
    let events: Vec<Event> = notices
        .iter()
        .map(|n| Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(n.message.clone()),
            action: "Inject".into(),
            secondary: None,
        })
        .collect();
    tokio::spawn(async move {
        for event in events {
            if let Err(err) = recorder.publish(&event, &reference).await {
                warn!(error = %err, "publishing event failed");
            }
        }
    });
}

#[cfg(test)]
mod tests;
