//! What the leader's caches hold of each pod and Deployment: only the fields the controller
//! reads, decoded straight from the API's JSON.
//!
//! The leader caches every Deployment of the cluster and the Deployment pods quiesce manages
//! ([`super::PodCache`]: those it injected, and every pod of namespaces with a policy), because
//! a policy's target and its pods of every revision — including pods created before the policy
//! existed, which carry no quiesce label — are what it paces.
//! As k8s-openapi structs even slimmed objects are large (a `Container` is kilobytes of
//! `Option`s), so the watches decode into the types below instead: serde skips every other
//! field without allocating it, and a cached pod holds a few hundred bytes instead of the tens
//! of kilobytes of the full object (`make bench-cache`). Field names mirror the API's, so the
//! code that reads them reads like code over `Pod` and `Deployment`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PodCondition, PodReadinessGate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use quiesce_api::constants::{DRAINED_CONDITION, READY_GATE_CONDITION};
use serde::{Deserialize, Deserializer, Serialize};

/// The metadata the controller reads: identity, labels, owners, creation and deletion.
/// Annotations and `managedFields` (most of a metadata's bytes) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
}

/// Decodes an object's metadata into an `ObjectMeta` holding only [`CachedMeta`]'s fields.
fn cached_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = CachedMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        labels: m.labels,
        owner_references: m.owner_references.map(shrink),
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        ..ObjectMeta::default()
    })
}

/// Decodes an optional list without spare capacity: serde grows a decoded `Vec` by doubling,
/// and in a cache of ten thousand objects the unused half is most of the bytes.
fn shrunk<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.map(shrink))
}

/// A list (absent: empty) without spare capacity.
fn shrunk_or_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(shrunk(d)?.unwrap_or_default())
}

/// `v` without spare capacity.
fn shrink<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

/// A pod as the leader caches it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    /// Identity, labels (revision, policy), owners, deletion.
    #[serde(deserialize_with = "cached_meta", default)]
    pub metadata: ObjectMeta,
    /// Containers (is the sidecar injected), gates, grace period, service account.
    pub spec: Option<CachedPodSpec>,
    /// Conditions (readiness, the gate, the drain report) and container states.
    pub status: Option<CachedPodStatus>,
}

/// The read fields of a pod spec (also a Deployment's pod template).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    /// App containers (and a sidecar injected as a container).
    #[serde(deserialize_with = "shrunk_or_empty", default)]
    pub containers: Vec<CachedContainer>,
    /// Init containers (the native sidecar).
    #[serde(deserialize_with = "shrunk", default)]
    pub init_containers: Option<Vec<CachedContainer>>,
    /// Readiness gates (the webhook adds quiesce's).
    #[serde(deserialize_with = "shrunk", default)]
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
    /// Bounds a plausible drain report; the drain budget check.
    pub termination_grace_period_seconds: Option<i64>,
    /// Whose service account the sidecar binding is for.
    pub service_account_name: Option<String>,
}

/// A container's name and ports.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    /// Container name.
    pub name: String,
    /// Declared ports (the drain proxy takes over named TCP ports).
    #[serde(deserialize_with = "shrunk", default)]
    pub ports: Option<Vec<CachedPort>>,
}

/// A declared container port.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPort {
    /// Port name.
    pub name: Option<String>,
    /// Port number.
    pub container_port: i32,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// The pod conditions the controller reads; the kubelet's others (`PodScheduled`,
/// `Initialized`, `Ready`, ...) are not kept.
pub const READ_CONDITIONS: [&str; 3] = ["ContainersReady", READY_GATE_CONDITION, DRAINED_CONDITION];

/// Decodes a pod's conditions, keeping the [`READ_CONDITIONS`].
fn read_conditions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PodCondition>>, D::Error> {
    let conditions = Option::<Vec<PodCondition>>::deserialize(d)?;
    Ok(conditions.map(|mut cs| {
        cs.retain(|c| READ_CONDITIONS.contains(&c.type_.as_str()));
        shrink(cs)
    }))
}

/// The read fields of a pod status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// Readiness, the gate, the drain report (the [`READ_CONDITIONS`] only).
    #[serde(deserialize_with = "read_conditions", default)]
    pub conditions: Option<Vec<PodCondition>>,
    /// App containers (restarts, crash loops).
    #[serde(deserialize_with = "shrunk", default)]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    /// Init containers (the native sidecar's restarts and crash loops).
    #[serde(deserialize_with = "shrunk", default)]
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// The read fields of a container status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    /// Container name.
    pub name: String,
    /// Restarts so far.
    #[serde(default)]
    pub restart_count: i32,
    /// Current state (is it crash-looping).
    pub state: Option<CachedContainerState>,
    /// Previous state (why it last ended).
    pub last_state: Option<CachedContainerState>,
}

/// A container state: waiting (why) or terminated (how); running is not read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainerState {
    /// Why the container waits (`CrashLoopBackOff`).
    pub waiting: Option<CachedWaiting>,
    /// How the container ended.
    pub terminated: Option<CachedTerminated>,
}

/// A waiting container's reason.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedWaiting {
    /// E.g. `CrashLoopBackOff`.
    pub reason: Option<String>,
}

/// How a container ended.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedTerminated {
    /// Exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// E.g. `Error`, `OOMKilled`.
    pub reason: Option<String>,
    /// The termination message (the tail of the sidecar's log after a crash).
    pub message: Option<String>,
}

/// A Deployment as the leader caches it: replicas and the pod template's read fields.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedDeployment {
    /// Identity and labels.
    #[serde(deserialize_with = "cached_meta", default)]
    pub metadata: ObjectMeta,
    /// Replicas and template.
    pub spec: Option<CachedDeploymentSpec>,
}

/// The read fields of a Deployment spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedDeploymentSpec {
    /// Desired replicas (the API defaults it to 1).
    pub replicas: Option<i32>,
    /// The pod template.
    #[serde(default)]
    pub template: CachedTemplate,
}

/// A pod template: its labels (which Services select the pods) and spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedTemplate {
    /// Template metadata (labels only).
    pub metadata: Option<CachedTemplateMeta>,
    /// Template spec.
    pub spec: Option<CachedPodSpec>,
}

/// A pod template's labels.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedTemplateMeta {
    /// The pods' labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// `kube::Resource` for a cached type: the API identity of the object it is read from.
macro_rules! cached_resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cached_resource!(CachedPod, "Pod", "", "v1", "pods");
cached_resource!(CachedDeployment, "Deployment", "apps", "v1", "deployments");

impl CachedPod {
    /// The cached form of a full pod (as the watch would decode it).
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        recode(pod)
    }
}

impl CachedDeployment {
    /// The cached form of a full Deployment (as the watch would decode it).
    pub fn of(d: &k8s_openapi::api::apps::v1::Deployment) -> Self {
        recode(d)
    }
}

/// Decodes `full`'s JSON as `T`. Cannot fail: every cached field is optional or defaulted and
/// has the API's type.
fn recode<T: serde::de::DeserializeOwned>(full: &impl Serialize) -> T {
    let json = serde_json::to_value(full).expect("a k8s-openapi object serializes");
    serde_json::from_value(json).expect("the cached types decode any object of their kind")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;

    /// A pod as the webhook leaves it (sidecar, gate, probes, env, volumes, managed fields),
    /// written by the sidecar and the kubelet.
    const POD: &str = include_str!("../../tests/fixtures/injected-pod.json");
    const DEPLOYMENT: &str = include_str!("../../tests/fixtures/deployment.json");

    #[test]
    fn a_cached_pod_keeps_what_the_controller_reads() {
        let full: Pod = serde_json::from_str(POD).unwrap();
        let cached: CachedPod = serde_json::from_str(POD).unwrap();
        assert_eq!(cached, CachedPod::of(&full), "decoded = recoded");
        let (fm, cm) = (&full.metadata, &cached.metadata);
        assert_eq!(cm.name, fm.name);
        assert_eq!(cm.namespace, fm.namespace);
        assert_eq!(cm.uid, fm.uid);
        assert_eq!(cm.labels, fm.labels);
        assert_eq!(cm.owner_references, fm.owner_references);
        assert_eq!(cm.creation_timestamp, fm.creation_timestamp);
        assert!(cm.managed_fields.is_none() && cm.annotations.is_none());
        let (fs, cs) = (full.spec.as_ref().unwrap(), cached.spec.as_ref().unwrap());
        let names: Vec<&str> = cs.containers.iter().map(|c| c.name.as_str()).collect();
        let full_names: Vec<&str> = fs.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, full_names);
        assert_eq!(
            cs.init_containers.iter().flatten().count(),
            fs.init_containers.iter().flatten().count()
        );
        assert_eq!(cs.readiness_gates, fs.readiness_gates);
        assert_eq!(
            cs.termination_grace_period_seconds,
            fs.termination_grace_period_seconds
        );
        assert_eq!(cs.service_account_name, fs.service_account_name);
        let (fst, cst) = (
            full.status.as_ref().unwrap(),
            cached.status.as_ref().unwrap(),
        );
        let read = |cs: &Option<Vec<PodCondition>>| -> Vec<PodCondition> {
            cs.iter()
                .flatten()
                .filter(|c| READ_CONDITIONS.contains(&c.type_.as_str()))
                .cloned()
                .collect()
        };
        assert_eq!(cst.conditions.clone().unwrap(), read(&fst.conditions));
        assert_eq!(
            read(&cst.conditions).len(),
            2,
            "the fixture's gate and ContainersReady"
        );
        let restarts: Vec<(&str, i32)> = cst
            .init_container_statuses
            .iter()
            .flatten()
            .chain(cst.container_statuses.iter().flatten())
            .map(|c| (c.name.as_str(), c.restart_count))
            .collect();
        let full_restarts: Vec<(&str, i32)> = fst
            .init_container_statuses
            .iter()
            .flatten()
            .chain(fst.container_statuses.iter().flatten())
            .map(|c| (c.name.as_str(), c.restart_count))
            .collect();
        assert_eq!(restarts, full_restarts);
        let (before, after) = (
            serde_json::to_vec(&full).unwrap().len(),
            serde_json::to_vec(&cached).unwrap().len(),
        );
        assert!(after < before / 2, "{before} → {after} bytes");
    }

    #[test]
    fn a_cached_container_state_keeps_crash_loops_and_terminations() {
        let status: CachedContainerStatus = serde_json::from_value(serde_json::json!({
            "name": "quiesce-sidecar", "restartCount": 3, "ready": false, "image": "x",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": "error: bad config", "startedAt": "2026-11-30T10:00:00Z",
                "finishedAt": "2026-11-30T10:00:01Z", "containerID": "containerd://x"}}
        }))
        .unwrap();
        assert_eq!(status.restart_count, 3);
        let waiting = status.state.unwrap().waiting.unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let terminated = status.last_state.unwrap().terminated.unwrap();
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (2, Some("Error"))
        );
        assert_eq!(terminated.message.as_deref(), Some("error: bad config"));
    }

    #[test]
    fn a_cached_deployment_keeps_what_the_target_view_reads() {
        let full: Deployment = serde_json::from_str(DEPLOYMENT).unwrap();
        let cached: CachedDeployment = serde_json::from_str(DEPLOYMENT).unwrap();
        assert_eq!(cached, CachedDeployment::of(&full));
        let (f, s) = (full.spec.unwrap(), cached.spec.unwrap());
        assert_eq!(s.replicas, f.replicas);
        assert_eq!(
            s.template.metadata.unwrap().labels,
            f.template.metadata.unwrap().labels
        );
        let (fs, ss) = (f.template.spec.unwrap(), s.template.spec.unwrap());
        assert_eq!(
            ss.termination_grace_period_seconds,
            fs.termination_grace_period_seconds
        );
        assert_eq!(ss.service_account_name, fs.service_account_name);
        let full_ports: Vec<_> = fs
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.name.clone(), p.container_port, p.protocol.clone()))
            .collect();
        let cached_ports: Vec<_> = ss
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.name.clone(), p.container_port, p.protocol.clone()))
            .collect();
        assert_eq!(cached_ports, full_ports);
        assert!(!full_ports.is_empty(), "the fixture declares ports");
        assert_eq!(cached.metadata.uid, full.metadata.uid);
    }

    #[test]
    fn the_watch_reads_cached_types_from_their_api_paths() {
        use kube::core::Resource as _;
        assert_eq!(CachedPod::api_version(&()), "v1");
        assert_eq!(CachedPod::plural(&()), "pods");
        assert_eq!(CachedDeployment::api_version(&()), "apps/v1");
        assert_eq!(CachedDeployment::plural(&()), "deployments");
        let url = CachedPod::url_path(&(), Some("web"));
        assert_eq!(url, "/api/v1/namespaces/web/pods");
        let url = CachedDeployment::url_path(&(), None);
        assert_eq!(url, "/apis/apps/v1/deployments");
    }
}
