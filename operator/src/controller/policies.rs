//! RolloutPolicies watched as raw JSON and decoded one by one.
//!
//! A typed watcher fails its whole list when one object does not decode — for instance an
//! `admit: 3000000000` (the CRD schema allows any integer there, the Rust type an `i32`) — and
//! retries forever: every policy stalls and the webhook's cache never becomes ready. Here an
//! object that does not decode is left out of the cache (as if deleted) and reported: a log
//! line, a Warning Event and an `Accepted=False` condition on that object; the others go on.
//! A status that does not decode (only the operator writes it) is dropped instead: the policy is
//! reconciled and its status written anew.

use std::collections::HashMap;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use quiesce_api::constants::conditions;
use quiesce_api::{RolloutPolicy, RolloutPolicySpec};
use serde_json::{Value, json};
use tracing::warn;

/// Condition reason and Event reason: the object does not decode as a RolloutPolicy.
pub const UNDECODABLE: &str = "Undecodable";

/// A policy object left out because it does not decode.
#[derive(Clone, Debug)]
pub struct Undecodable {
    /// The raw object (metadata is always readable).
    pub object: DynamicObject,
    /// What failed, prefixed by the part (`spec: …`, `status: …`).
    pub error: String,
}

/// A policy decoded from raw JSON: `Ok` when it decodes (without its status when only the
/// status does not), else what failed.
pub fn decode(object: &DynamicObject) -> Result<RolloutPolicy, String> {
    let data = &object.data;
    let spec: RolloutPolicySpec =
        serde_json::from_value(data["spec"].clone()).map_err(|e| format!("spec: {e}"))?;
    let mut policy = RolloutPolicy::new(&object.name_any(), spec);
    policy.metadata = object.metadata.clone();
    // An absent or undecodable status reads as none: the next pass writes it anew.
    policy.status = match data.get("status") {
        None | Some(Value::Null) => None,
        Some(status) => serde_json::from_value(status.clone()).ok(),
    };
    Ok(policy)
}

/// A policy that stands in for an undecodable object in a `Delete` event: only its name and
/// namespace matter (the cache removes by those).
fn placeholder(object: &DynamicObject) -> RolloutPolicy {
    let mut policy = RolloutPolicy::new(&object.name_any(), RolloutPolicySpec::for_deployment(""));
    policy.metadata = object.metadata.clone();
    policy
}

/// One raw watcher event as a typed one. An object that does not decode is pushed on `bad`
/// and becomes a deletion (an earlier version that decoded must not stay in the cache), or
/// nothing during the initial list.
pub fn decode_event(
    event: watcher::Event<DynamicObject>,
    bad: &mut Vec<Undecodable>,
) -> Option<watcher::Event<RolloutPolicy>> {
    let mut typed = |object: DynamicObject| match decode(&object) {
        Ok(mut policy) => {
            // Never read, and most of a cached policy's bytes.
            policy.metadata.managed_fields = None;
            (true, policy)
        }
        Err(error) => {
            let stand_in = placeholder(&object);
            bad.push(Undecodable { object, error });
            (false, stand_in)
        }
    };
    Some(match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(o) => match typed(o) {
            (true, p) => watcher::Event::InitApply(p),
            (false, _) => return None,
        },
        watcher::Event::Apply(o) => match typed(o) {
            (true, p) => watcher::Event::Apply(p),
            (false, stand_in) => watcher::Event::Delete(stand_in),
        },
        watcher::Event::Delete(o) => watcher::Event::Delete(typed(o).1),
    })
}

/// The API resource of RolloutPolicies.
fn resource() -> ApiResource {
    ApiResource::erase::<RolloutPolicy>(&())
}

/// Watches every RolloutPolicy as raw JSON and yields the ones that decode (see the module
/// docs). Undecodable objects are logged here and sent to `report`, when given.
pub fn policy_events(
    client: Client,
    report: Option<futures::channel::mpsc::UnboundedSender<Undecodable>>,
) -> impl Stream<Item = Result<watcher::Event<RolloutPolicy>, watcher::Error>> + Send {
    let api = Api::<DynamicObject>::all_with(client, &resource());
    watcher(api, watcher::Config::default()).filter_map(move |event| {
        let report = report.clone();
        async move {
            let mut bad = Vec::new();
            let typed = match event {
                Ok(event) => decode_event(event, &mut bad).map(Ok),
                Err(e) => Some(Err(e)),
            };
            for b in bad {
                if let Some(tx) = &report {
                    let _ = tx.unbounded_send(b);
                } else {
                    warn!(policy = %b.object.name_any(), namespace = ?b.object.namespace(), error = %b.error, "RolloutPolicy does not decode; skipped");
                }
            }
            typed
        }
    })
}

/// Reports undecodable policies (once per object version): a log line, a Warning Event on the
/// object and `Accepted=False` on its status, by a JSON merge patch that needs no decoding.
pub async fn report_undecodable(
    client: Client,
    recorder: Recorder,
    mut bad: futures::channel::mpsc::UnboundedReceiver<Undecodable>,
) {
    let mut reported: HashMap<String, String> = HashMap::new();
    while let Some(b) = bad.next().await {
        let (uid, version) = (b.object.uid(), b.object.resource_version());
        if let (Some(uid), Some(version)) = (&uid, &version) {
            if reported.get(uid) == Some(version) {
                continue;
            }
            reported.insert(uid.clone(), version.clone());
        }
        let (name, ns) = (
            b.object.name_any(),
            b.object.namespace().unwrap_or_default(),
        );
        warn!(policy = %name, namespace = %ns, error = %b.error, "RolloutPolicy does not decode; skipped");
        let note = undecodable_note(&b.error);
        let event = Event {
            type_: EventType::Warning,
            reason: UNDECODABLE.to_owned(),
            note: Some(note.clone()),
            action: "Decode".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder
            .publish(&event, &b.object.object_ref(&resource()))
            .await
        {
            warn!(error = %e, "publishing event failed");
        }
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource());
        let patch = status_patch(&b.object, &note, Timestamp::now());
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(policy = %name, namespace = %ns, error = %e, "setting Accepted=False failed");
        }
    }
}

/// The message of an undecodable policy's Event and condition.
pub fn undecodable_note(error: &str) -> String {
    format!(
        "this RolloutPolicy cannot be read by this operator version ({error}); it is ignored until fixed"
    )
}

/// A merge patch setting `Accepted=False` (the only condition left: the others describe a
/// policy this operator cannot read).
pub fn status_patch(object: &DynamicObject, note: &str, now: Timestamp) -> Value {
    json!({"status": {"conditions": [{
        "type": conditions::ACCEPTED,
        "status": "False",
        "reason": UNDECODABLE,
        "message": note,
        "lastTransitionTime": Time(now),
        "observedGeneration": object.meta().generation,
    }]}})
}
