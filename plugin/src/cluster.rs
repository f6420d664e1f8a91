//! The plugin's I/O: what it reads (the policy, the target's ReplicaSets and pods, the policy's
//! Events), the one patch a steering command makes, and the watch behind `get -w`.

use std::{collections::BTreeSet, pin::Pin, time::Duration};

use anyhow::{Context as _, Result, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::{INJECT_DISABLED, INJECT_LABEL};
use quiesce_operator::webhook::SidecarSettings;

use crate::view::{self, PodRow, RolloutView};

/// Events shown by `get`.
const EVENTS_SHOWN: usize = 8;

/// The policy `name`, with a message a person understands when it is not there.
pub async fn policy(client: &Client, ns: &str, name: &str) -> Result<RolloutPolicy> {
    policy_if_any(client, ns, name)
        .await?
        .with_context(|| format!("no RolloutPolicy {name} in namespace {ns}"))
}

/// The policy `name`, if it exists.
pub async fn policy_if_any(client: &Client, ns: &str, name: &str) -> Result<Option<RolloutPolicy>> {
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .with_context(|| format!("reading RolloutPolicy {ns}/{name}"))
}

/// The name of the namespace's only policy (what `get` without a name means).
pub async fn only_policy(client: &Client, ns: &str) -> Result<String> {
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = api
        .list_metadata(&ListParams::default())
        .await
        .with_context(|| format!("listing RolloutPolicies in {ns}"))?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no RolloutPolicy in namespace {ns}"),
        many => bail!(
            "{} RolloutPolicies in namespace {ns}, name one: {}",
            many.len(),
            many.join(", ")
        ),
    }
}

/// Applies a steering command's merge patch.
pub async fn patch_policy(
    client: &Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<()> {
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching RolloutPolicy {ns}/{name}"))?;
    Ok(())
}

/// The pods of Deployment `target`: those owned by its ReplicaSets.
async fn target_pods(client: &Client, ns: &str, target: &str) -> Result<Vec<Pod>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Some(d) = deployments.get_opt(target).await? else {
        return Ok(Vec::new());
    };
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let lp = ListParams::default().labels(&selector);
    let uid = d.uid();
    let owned_by = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
                    kind: &str,
                    ok: &dyn Fn(&str, &str) -> bool| {
        refs.iter().any(|r| r.kind == kind && ok(&r.name, &r.uid))
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let sets: BTreeSet<String> = rs_api
        .list_metadata(&lp)
        .await?
        .items
        .iter()
        .filter(|rs| {
            owned_by(rs.owner_references(), "Deployment", &|_, u| {
                Some(u) == uid.as_deref()
            })
        })
        .map(|rs| rs.name_any())
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(p.owner_references(), "ReplicaSet", &|n, _| sets.contains(n)))
        .collect())
}

/// The policy's last Events.
async fn policy_events(client: &Client, ns: &str, name: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut events = api
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=RolloutPolicy,involvedObject.name={name}"
        )))
        .await?
        .items;
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
    };
    events.sort_by_key(when);
    let skip = events.len().saturating_sub(EVENTS_SHOWN);
    Ok(events.split_off(skip))
}

/// The view of one rollout.
pub async fn rollout(client: &Client, ns: &str, name: &str) -> Result<RolloutView> {
    let p = policy(client, ns, name).await?;
    let pods = target_pods(client, ns, &p.spec.target_ref.name).await?;
    let events = policy_events(client, ns, name).await?;
    Ok(view::rollout(&p, &pods, &events))
}

/// Every policy (of `ns`, or of all namespaces) with its creation time, without pods or
/// Events (`list` reads nothing else).
pub async fn rollouts(
    client: &Client,
    ns: Option<&str>,
) -> Result<Vec<(RolloutView, Option<Timestamp>)>> {
    let api: Api<RolloutPolicy> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut policies = api
        .list(&ListParams::default())
        .await
        .context("listing RolloutPolicies")?
        .items;
    policies.sort_by_key(|p| (p.namespace(), p.name_any()));
    Ok(policies
        .iter()
        .map(|p| {
            (
                view::rollout(p, &[], &[]),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        })
        .collect())
}

/// One pod's row, revisions unknown (`drains POD`).
pub async fn pod_row(client: &Client, ns: &str, name: &str) -> Result<PodRow> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api.get(name).await?;
    Ok(view::pod_row(&pod, None, None))
}

/// What `check` needs: the Deployment, the namespace's policies and Services, the namespace's
/// opt-out label.
pub async fn check(
    client: &Client,
    ns: &str,
    deployment: &str,
    admin_port: u16,
) -> Result<crate::check::CheckReport> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(deployment)
        .await?
        .with_context(|| format!("no Deployment {deployment} in namespace {ns}"))?;
    let lp = ListParams::default();
    let policies = Api::<RolloutPolicy>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let opted_out = Api::<Namespace>::all(client.clone())
        .get_metadata_opt(ns)
        .await
        .ok()
        .flatten()
        .is_some_and(|n| n.labels().get(INJECT_LABEL).map(String::as_str) == Some(INJECT_DISABLED));
    let settings = SidecarSettings {
        admin_port,
        ..SidecarSettings::default()
    };
    Ok(crate::check::check(
        &d, &policies, &services, opted_out, &settings,
    ))
}

/// Changes of a rollout: the policy and the pods of its namespace.
pub struct Changes {
    events: Pin<Box<dyn Stream<Item = ()> + Send>>,
}

impl Changes {
    /// Waits for the next change, then for the burst it starts to pass (a pod deletion moves
    /// several objects at once: one redraw for all).
    pub async fn next_batch(&mut self) {
        let _ = self.events.next().await;
        let quiet = Duration::from_millis(300);
        while let Ok(Some(())) = tokio::time::timeout(quiet, self.events.next()).await {}
    }
}

/// Watches the policy and the pods of its namespace (metadata only: any change of a pod,
/// status included, moves its resourceVersion and so sends an event).
pub fn changes(client: &Client, ns: &str, name: &str) -> Changes {
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), ns);
    let policy = watcher(
        policies,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .map(|_| ());
    let pods = watcher(pods, watcher::Config::default()).map(|_| ());
    let events = futures::stream::select(policy, pods).boxed();
    Changes { events }
}
