//! RolloutPolicies watched as raw JSON and decoded one by one.
//!
//! A typed watcher fails its whole list when one object does not decode — for instance an
//! `admit: 3000000000` (the CRD schema allows any integer there, the Rust type an `i32`) — and
//! retries forever: every policy stalls and the webhook's cache never becomes ready. Here an
//! object that does not decode is left out of the cache (as if deleted) and reported: a log
//! line, a Warning Event and an `Accepted=False` condition on that object; the others go on.
//! A status that does not decode (only the operator writes it) is dropped instead: the policy is
//! reconciled and its status written anew.
//!
//! Every replica's watch keeps the set of policies that do not decode now ([`Undecodables`]);
//! the leader reports them ([`report_undecodable`]), once per object version and term, and not
//! again when the object already says so (a previous leader reported it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// The policies that do not decode now, by UID (filled by the policy watch).
#[derive(Default)]
pub struct Undecodables {
    now: Mutex<HashMap<String, Undecodable>>,
    changed: tokio::sync::Notify,
}

impl Undecodables {
    /// Records `bad` (`true` when it is news: a new object or version, logged then).
    pub fn insert(&self, bad: Undecodable) -> bool {
        let uid = cache_key(&bad.object);
        let mut now = self.now.lock().expect("undecodables lock");
        let news = now.get(&uid).map(|b| b.object.resource_version())
            != Some(bad.object.resource_version());
        if news {
            warn!(policy = %bad.object.name_any(), namespace = %bad.object.namespace().unwrap_or_default(), error = %bad.error, "RolloutPolicy does not decode; skipped");
            now.insert(uid, bad);
            self.changed.notify_one();
        }
        news
    }

    /// The object `uid` decodes now, or is gone.
    pub fn remove(&self, uid: &str) {
        self.now.lock().expect("undecodables lock").remove(uid);
    }

    /// Forgets everything (a relist follows and brings back what still does not decode).
    pub fn clear(&self) {
        self.now.lock().expect("undecodables lock").clear();
    }

    /// The policies that do not decode now.
    pub fn snapshot(&self) -> Vec<Undecodable> {
        let now = self.now.lock().expect("undecodables lock");
        now.values().cloned().collect()
    }
}

/// What [`Undecodables`] keys an object by: its UID (its name before it has one).
fn cache_key(object: &impl ResourceExt) -> String {
    object.uid().unwrap_or_else(|| object.name_any())
}

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
        // Gone: whether it decoded no longer matters.
        watcher::Event::Delete(o) => {
            watcher::Event::Delete(decode(&o).unwrap_or_else(|_| placeholder(&o)))
        }
    })
}

/// The API resource of RolloutPolicies.
fn resource() -> ApiResource {
    ApiResource::erase::<RolloutPolicy>(&())
}

/// Watches every RolloutPolicy as raw JSON and yields the ones that decode (see the module
/// docs); `undecodable` holds the others.
pub fn policy_events(
    client: Client,
    undecodable: Arc<Undecodables>,
) -> impl Stream<Item = Result<watcher::Event<RolloutPolicy>, watcher::Error>> + Send {
    let api = Api::<DynamicObject>::all_with(client, &resource());
    watcher(api, watcher::Config::default()).filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => decode_tracked(event, &undecodable).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

/// [`decode_event`], keeping `undecodable` current: what decodes or is gone leaves it (a bad
/// change arrives here as a deletion), what does not decode enters it.
pub(super) fn decode_tracked(
    event: watcher::Event<DynamicObject>,
    undecodable: &Undecodables,
) -> Option<watcher::Event<RolloutPolicy>> {
    if matches!(event, watcher::Event::Init) {
        undecodable.clear();
    }
    let mut bad = Vec::new();
    let typed = decode_event(event, &mut bad);
    if let Some(
        watcher::Event::InitApply(p) | watcher::Event::Apply(p) | watcher::Event::Delete(p),
    ) = &typed
    {
        undecodable.remove(&cache_key(p));
    }
    for b in bad {
        undecodable.insert(b);
    }
    typed
}

/// Reports the policies that do not decode, for as long as this replica leads: a Warning Event
/// on the object and `Accepted=False` on its status, by a JSON merge patch that needs no
/// decoding. Each object version once a term; not at all when the object already carries that
/// condition (a previous leader wrote it).
pub async fn report_undecodable(
    client: Client,
    recorder: Recorder,
    undecodable: Arc<Undecodables>,
) {
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        // Taken before the snapshot: a change while reporting wakes the next pass.
        let changed = undecodable.changed.notified();
        for b in undecodable.snapshot() {
            let (uid, version) = (b.object.uid(), b.object.resource_version());
            if let (Some(uid), Some(version)) = (&uid, &version) {
                if reported.get(uid) == Some(version) {
                    continue;
                }
                reported.insert(uid.clone(), version.clone());
            }
            report(&client, &recorder, &b).await;
        }
        changed.await;
    }
}

/// One undecodable policy's Event and condition, unless the object says so already.
async fn report(client: &Client, recorder: &Recorder, bad: &Undecodable) {
    let note = undecodable_note(&bad.error);
    if already_reported(&bad.object, &note) {
        return;
    }
    let (name, ns) = (
        bad.object.name_any(),
        bad.object.namespace().unwrap_or_default(),
    );
    let event = Event {
        type_: EventType::Warning,
        reason: UNDECODABLE.to_owned(),
        note: Some(note.clone()),
        action: "Decode".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder
        .publish(&event, &bad.object.object_ref(&resource()))
        .await
    {
        warn!(error = %e, "publishing event failed");
    }
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource());
    let patch = status_patch(&bad.object, &note, Timestamp::now());
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        warn!(policy = %name, namespace = %ns, error = %e, "setting Accepted=False failed");
    }
}

/// Whether `object` already carries the `Accepted=False` condition `status_patch` writes
/// with `note`, for its current generation. Its own status write makes a new version of the
/// object, which must not be reported again.
fn already_reported(object: &DynamicObject, note: &str) -> bool {
    let conditions = object.data["status"]["conditions"].as_array();
    conditions.into_iter().flatten().any(|c| {
        c["type"] == conditions::ACCEPTED
            && c["status"] == "False"
            && c["reason"] == UNDECODABLE
            && c["message"] == note
            && c["observedGeneration"].as_i64() == object.meta().generation
    })
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
