//! The fields of the API objects the sidecar reads; serde skips everything else.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The metadata fields the sidecar reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub deletion_timestamp: Option<DateTime<Utc>>,
}

/// An object with metadata (what a watch needs of it).
pub trait Object {
    fn metadata(&self) -> &ObjectMeta;
}

/// A list's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// A list response.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound(deserialize = "K: Deserialize<'de>"))]
pub struct List<K> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new", deserialize_with = "null_as_default")]
    pub items: Vec<K>,
}

/// A pod, as the sidecar sees its own.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

impl Object for Pod {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub last_probe_time: Option<DateTime<Utc>>,
}

impl Pod {
    /// The condition of type `type_`, if the pod has one.
    pub fn condition(&self, type_: &str) -> Option<&PodCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// An EndpointSlice: its endpoints' addresses and readiness.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<Endpoint>,
}

impl Object for EndpointSlice {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoint {
    #[serde(default, deserialize_with = "null_as_default")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

/// The API writes `null` for some empty lists (an EndpointSlice without endpoints).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_decodes_the_fields_the_sidecar_reads_and_ignores_the_rest() {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "uid": "u-1", "resourceVersion": "42",
                "deletionTimestamp": "2026-05-01T10:00:00Z", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": {"startTime": "2026-05-01T09:00:00Z", "conditions": [
                {"type": "Ready", "status": "True", "lastProbeTime": null},
                {"type": "quiesce.dev/ready", "status": "False", "lastProbeTime": "2026-05-01T09:30:00Z"}
            ]}
        }))
        .unwrap();
        assert_eq!(pod.metadata.name, "web-1");
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        assert!(pod.metadata.deletion_timestamp.is_some());
        assert_eq!(pod.condition("Ready").unwrap().status, "True");
        assert!(pod.condition("Ready").unwrap().last_probe_time.is_none());
        assert!(
            pod.condition("quiesce.dev/ready")
                .unwrap()
                .last_probe_time
                .is_some()
        );
        assert!(pod.condition("ContainersReady").is_none());
    }

    #[test]
    fn an_endpoint_slice_without_endpoints_decodes_as_empty() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": null
        }))
        .unwrap();
        assert!(s.endpoints.is_empty());
        let l: List<EndpointSlice> =
            serde_json::from_value(json!({"metadata": {"resourceVersion": "9"}, "items": null}))
                .unwrap();
        assert!(l.items.is_empty());
        assert_eq!(l.metadata.resource_version.as_deref(), Some("9"));
    }
}
