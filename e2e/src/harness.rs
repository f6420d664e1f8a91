//! What every e2e test needs from the cluster: a client, a namespace of its own, apply of plain
//! manifests, and waits that fail with a message instead of hanging.
//!
//! Tests run where the cluster is reachable (`e2e/cluster/cluster.sh exec`, which sets
//! `KUBECONFIG`); `make e2e` does that.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, pinned_kind};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Field manager of everything the e2e suite applies.
pub const FIELD_MANAGER: &str = "quiesce-e2e";

/// Label on every namespace the suite creates, so leftovers can be found.
pub const NAMESPACE_LABEL: &str = "quiesce.dev/e2e";

/// Image tag of the project images loaded by `make images`.
pub fn image(name: &str) -> String {
    let registry = std::env::var("QUIESCE_IMAGE_REGISTRY").unwrap_or("quiesce.local".into());
    let tag = std::env::var("QUIESCE_IMAGE_TAG").unwrap_or("dev".into());
    format!("{registry}/{name}:{tag}")
}

/// A client for the cluster `KUBECONFIG` points at.
pub async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .context("no cluster: run the e2e suite through `make e2e` (it sets KUBECONFIG)")
}

/// Runs `test` in a fresh namespace (`prefix-<random>`) that is deleted afterwards, whether the
/// test passed or panicked; a failing test's namespace is reported first (pods, Events).
pub async fn with_namespace<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let client = client().await.expect("cluster client");
    let name = format!("{prefix}-{:x}", rand_suffix());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true",
            "pod-security.kubernetes.io/enforce": "restricted"}}
    }))
    .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create test namespace");
    let outcome = AssertUnwindSafe(test(client.clone(), name.clone()))
        .catch_unwind()
        .await;
    if !matches!(outcome, Ok(Ok(()))) {
        eprintln!(
            "{}",
            crate::diagnose::namespace_report(&client, &name).await
        );
    }
    if std::env::var_os("QUIESCE_E2E_KEEP_NAMESPACES").is_none() {
        let _ = namespaces.delete(&name, &DeleteParams::background()).await;
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("test in namespace {name} failed: {e:#}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A token of service account `sa` from the TokenRequest API: bound to `pod` (the token the
/// kubelet mounts, whose claims name the pod) or, with `None`, unbound (what
/// `kubectl create token` or a legacy token Secret gives).
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    sa: &str,
    pod: Option<&Pod>,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: pod.map(|pod| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
        },
        ..TokenRequest::default()
    };
    Ok(
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("token of {namespace}/{sa}"))?
            .status
            .context("token request without status")?
            .token,
    )
}

/// A client of the same cluster that authenticates with `token` only.
pub async fn client_with_token(token: String) -> Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    Ok(Client::try_from(config)?)
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::SystemTime::now()) & 0x00ff_ffff) as u32
}

/// Server-side applies every document of a multi-document YAML string. Namespaced objects
/// without a namespace go to `namespace`.
pub async fn apply_yaml(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value)?;
        applied.push(apply(client, namespace, obj).await?);
    }
    Ok(applied)
}

/// Server-side applies one object, as `kubectl apply --server-side` does.
pub async fn apply(client: &Client, namespace: &str, obj: DynamicObject) -> Result<DynamicObject> {
    let api = dynamic_api(client, namespace, &obj).await?;
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| {
        format!(
            "apply {} {name}",
            obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("?")
        )
    })
}

/// Creates one object (not apply): for tests that assert the apiserver's answer to a create.
pub async fn create(
    client: &Client,
    namespace: &str,
    obj: DynamicObject,
) -> kube::Result<DynamicObject> {
    let api = dynamic_api(client, namespace, &obj).await.map_err(|e| {
        kube::Error::Discovery(kube::error::DiscoveryError::MissingResource(e.to_string()))
    })?;
    api.create(&PostParams::default(), &obj).await
}

async fn dynamic_api(
    client: &Client,
    namespace: &str,
    obj: &DynamicObject,
) -> Result<Api<DynamicObject>> {
    let types = obj
        .types
        .as_ref()
        .context("object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, caps): (ApiResource, ApiCapabilities) = pinned_kind(client, &gvk).await?;
    Ok(match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.metadata.namespace.as_deref().unwrap_or(namespace),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    })
}

/// Polls `probe` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the object `name` meets `condition`, watching it (kube's `await_condition`: no
/// polling, woken by each change); fails with `what` after `timeout`.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Condition<K>,
) -> Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + DeserializeOwned + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{what}: {name} is gone"),
        Ok(Err(e)) => Err(e).with_context(|| format!("waiting for {what}")),
        Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Waits until a Deployment's rollout is complete, like `kubectl rollout status`: the newest
/// generation observed, every replica updated and available, no old replica left. A timeout
/// says how far it got.
pub async fn wait_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let complete = |d: Option<&Deployment>| d.is_some_and(rollout_complete);
    let what = format!("rollout of deployment {name}");
    match wait_for(&api, name, &what, timeout, complete).await {
        Ok(d) => Ok(d),
        Err(e) => {
            let status = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status);
            Err(e.context(format!("its last status: {status:?}")))
        }
    }
}

/// Whether a Deployment has finished rolling out (the `kubectl rollout status` rule).
pub fn rollout_complete(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
}

/// The ClusterIP of a Service.
pub async fn cluster_ip(client: &Client, namespace: &str, service: &str) -> Result<String> {
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(service)
        .await?;
    svc.spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| ip != "None")
        .with_context(|| format!("service {service} has no ClusterIP"))
}

/// Cluster-wide watches of `resource` the apiserver holds open now: the sum of its
/// `apiserver_longrunning_requests{verb="WATCH",scope="cluster",resource}` gauges (each
/// watching client counts once; a test's own namespaced watches are not counted).
pub async fn apiserver_watches(client: &Client, resource: &str) -> Result<u64> {
    let text = client
        .request_text(hyper::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(watch_gauges(&text, resource))
}

/// The sum over the `apiserver_longrunning_requests` lines of cluster-wide WATCHes of
/// `resource` (pure: the exposition text in).
pub fn watch_gauges(exposition: &str, resource: &str) -> u64 {
    let wanted = [
        "verb=\"WATCH\"".to_owned(),
        "scope=\"cluster\"".to_owned(),
        format!("resource=\"{resource}\""),
    ];
    exposition
        .lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests{"))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Pods matching a label selector.
pub async fn pods(client: &Client, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// One plain HTTP/1.1 GET (a new connection): the status code and the body as text.
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let client: HttpClient<_, Empty<hyper::body::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse()?))
        .await
        .with_context(|| format!("GET {url}: timed out"))??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until `url` answers 200 twenty times in a row, each on a new connection: a Service's
/// endpoints can be ready in the API before kube-proxy has programmed them (a fresh ClusterIP
/// refuses connections meanwhile), and load started earlier would count that against the
/// rollout.
pub async fn wait_serving(url: &str, timeout: Duration) -> Result<()> {
    eventually(&format!("{url} to serve"), timeout, || async {
        for _ in 0..20 {
            if !http_get(url).await.is_ok_and(|(status, _)| status == 200) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

/// Every `quiesce.dev/drained` condition any pod of a namespace shows, by pod: (status,
/// reason, message), the last one seen. Recorded by a watch of its own from [`DrainWatch::start`]
/// until dropped, so it sees the reports of pods that are gone by the time the test looks.
pub struct DrainWatch {
    seen: std::sync::Arc<std::sync::Mutex<DrainConditions>>,
    task: tokio::task::JoinHandle<()>,
}

/// Pod name → the last `quiesce.dev/drained` condition seen: (status, reason, message).
pub type DrainConditions = std::collections::BTreeMap<String, (String, String, String)>;

impl DrainWatch {
    /// Starts watching the pods of `namespace`.
    pub fn start(client: &Client, namespace: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen: std::sync::Arc<std::sync::Mutex<DrainConditions>> = Default::default();
        let record = std::sync::Arc::clone(&seen);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(pod) = event else { continue };
                let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
                let drained = conditions
                    .into_iter()
                    .find(|c| c.type_ == quiesce_api::constants::DRAINED_CONDITION);
                if let (Some(c), Some(name)) = (drained, pod.metadata.name) {
                    let entry = (
                        c.status,
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default(),
                    );
                    record.lock().expect("drain watch").insert(name, entry);
                }
            }
        });
        Self { seen, task }
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> DrainConditions {
        self.seen.lock().expect("drain watch").clone()
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_gauges_count_cluster_wide_watches_of_one_resource() {
        let exposition = r#"# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{component="apiserver",group="quiesce.dev",resource="rolloutpolicies",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 2
apiserver_longrunning_requests{component="apiserver",group="quiesce.dev",resource="rolloutpolicies",scope="namespace",subresource="",verb="WATCH",version="v1alpha1"} 1
apiserver_longrunning_requests{component="apiserver",group="apps",resource="replicasets",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_total{resource="rolloutpolicies",scope="cluster",verb="WATCH"} 40
"#;
        assert_eq!(watch_gauges(exposition, "rolloutpolicies"), 2);
        assert_eq!(watch_gauges(exposition, "replicasets"), 3);
        assert_eq!(watch_gauges(exposition, "pods"), 0);
    }
}
