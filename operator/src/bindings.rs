//! The sidecar's RoleBindings: the sidecar ClusterRole bound to exactly the service accounts
//! that run quiesce's sidecar, in namespaces where injection is on, and nowhere else.
//!
//! Wanted: the service account of the target of every live RolloutPolicy, and of every pod
//! that carries the sidecar (a pod injected before its policy was deleted still drains and
//! reports through it), in namespaces where the webhook injects. The bindings themselves are
//! watched (by label), so one deleted or edited by hand is put back and one no longer wanted is
//! deleted — from what the caches show, never from memory.
//!
//! Each binding carries [`SIDECAR_BINDING`]: the ValidatingAdmissionPolicy takes the labelled
//! bindings of a request's namespace as its parameters and holds every subject to its own
//! pod's `quiesce.dev/` conditions, with a pod-bound token only. Service accounts quiesce did
//! not bind are not touched by that policy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::labels::{MANAGED_BY, MANAGED_BY_VALUE, POLICY};
use quiesce_api::constants::{INJECT_DISABLED, INJECT_LABEL, OPERATOR_FIELD_MANAGER};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::controller::PodCache;
use crate::controller::cached::{CachedDeployment, CachedPod, CachedPodSpec};

/// Label on every sidecar RoleBinding: the admission policy's parameter selector.
pub const SIDECAR_BINDING: &str = "quiesce.dev/sidecar-binding";

/// A service account in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Account {
    /// Namespace of the service account (and of its binding).
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

impl Account {
    fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// Where the webhook injects, as its `namespaceSelector` says: not in an excluded namespace
/// (kube-system, the operator's own, the chart's `webhook.excludeNamespaces`), not in one
/// labelled `quiesce.dev/inject=disabled`.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Namespaces never injected.
    pub excluded: BTreeSet<String>,
}

impl Scope {
    /// Whether the webhook injects in the namespace with these labels (`None`: unknown
    /// namespace, never bound).
    pub fn injects(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        let Some(labels) = labels else {
            return false;
        };
        !self.excluded.contains(namespace)
            && labels.get(INJECT_LABEL).map(String::as_str) != Some(INJECT_DISABLED)
    }
}

/// The service account a pod (spec) runs as.
fn account_name(spec: Option<&CachedPodSpec>) -> String {
    spec.and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The accounts that need the sidecar role: targets of live policies (whose Deployment
/// exists) and pods that carry the sidecar, in namespaces where `injects` holds.
pub fn wanted<'a>(
    policies: impl IntoIterator<Item = &'a RolloutPolicy>,
    deployment: impl Fn(&str, &str) -> Option<Arc<CachedDeployment>>,
    pods: impl IntoIterator<Item = &'a CachedPod>,
    injects: impl Fn(&str) -> bool,
) -> BTreeSet<Account> {
    let from_policies = policies
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ns = p.namespace()?;
            let target = deployment(&ns, &p.spec.target_ref.name)?;
            let template = target.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            Some(Account::new(&ns, &account_name(template)))
        });
    let from_pods = pods
        .into_iter()
        .filter(|p| p.labels().contains_key(POLICY))
        .filter_map(|p| {
            let ns = p.namespace()?;
            Some(Account::new(&ns, &account_name(p.spec.as_ref())))
        });
    from_policies
        .chain(from_pods)
        .filter(|a| injects(&a.namespace))
        .collect()
}

/// Name of the binding of `role` to `account`.
pub fn binding_name(role: &str, account: &Account) -> String {
    format!("{role}-{}", account.name)
}

/// The binding of the ClusterRole `role` to `account`.
pub fn binding(role: &str, account: &Account, owner: Option<&OwnerReference>) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name(role, account)),
            namespace: Some(account.namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (SIDECAR_BINDING.to_owned(), "true".to_owned()),
            ])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: account.name.clone(),
            namespace: Some(account.namespace.clone()),
            api_group: None,
        }]),
    }
}

/// What to do to reach the wanted bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create the binding, or put it back as it should be.
    Apply(Account),
    /// Delete the binding `name` in `namespace`.
    Delete { namespace: String, name: String },
}

/// The changes from `existing` (the operator's labelled bindings of `role`) to `wanted`.
pub fn changes(
    role: &str,
    wanted: &BTreeSet<Account>,
    existing: &[Arc<RoleBinding>],
) -> Vec<Change> {
    let mut found: BTreeSet<(String, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for rb in existing.iter().filter(|rb| rb.role_ref.name == role) {
        let ns = rb.namespace().unwrap_or_default();
        let name = rb.name_any();
        let wanted_here = wanted
            .iter()
            .find(|a| a.namespace == ns && binding_name(role, a) == name);
        match wanted_here {
            Some(account) => {
                let expected = binding(role, account, None);
                let intact = rb.subjects == expected.subjects
                    && rb.role_ref == expected.role_ref
                    && rb.labels().get(SIDECAR_BINDING).map(String::as_str) == Some("true");
                if !intact {
                    out.push(Change::Apply(account.clone()));
                }
                found.insert((ns, name));
            }
            None => out.push(Change::Delete {
                namespace: ns,
                name,
            }),
        }
    }
    for account in wanted {
        let key = (account.namespace.clone(), binding_name(role, account));
        if !found.contains(&key) {
            out.push(Change::Apply(account.clone()));
        }
    }
    out
}

/// What is bound, to whom it belongs, and where (the operator's flags).
pub struct Settings {
    /// The sidecar ClusterRole.
    pub role: String,
    /// Owner of the bindings (the ClusterRole: uninstalling removes them).
    pub owner: Option<OwnerReference>,
    /// Where the webhook injects.
    pub scope: Scope,
}

/// What the binding loop reads and writes.
pub struct Bindings {
    /// API client.
    pub client: Client,
    /// Role, owner, scope.
    pub settings: Settings,
    /// The leader's caches.
    pub policies: Store<RolloutPolicy>,
    /// The leader's Deployment cache.
    pub deployments: Store<CachedDeployment>,
    /// The leader's pod cache (bindings read its injected pods).
    pub pods: PodCache,
    /// Woken when one of those caches changed.
    pub changed: Arc<Notify>,
    /// `true` once the Deployment and pod caches are synced. `Store::wait_until_ready` wakes
    /// only one of several waiters, and each store has one already (the controller's).
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// `true` once the policy watch has listed.
    pub policies_listed: tokio::sync::watch::Receiver<bool>,
}

/// Bindings are checked at least this often, even without a change seen.
const RESYNC: Duration = Duration::from_secs(60);

impl Bindings {
    /// Keeps the bindings as wanted (until aborted).
    pub async fn run(self) {
        let (namespaces, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let (bindings, rb_writer) = reflector::store::<RoleBinding>();
        let changed = self.changed.clone();
        let ns_watch = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(ns_writer)
        .for_each(move |_| {
            changed.notify_one();
            async {}
        });
        let changed = self.changed.clone();
        let rb_watch = watcher(
            Api::<RoleBinding>::all(self.client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}")),
        )
        .default_backoff()
        .reflect(rb_writer)
        .for_each(move |_| {
            changed.notify_one();
            async {}
        });
        let work = async {
            // Nothing is deleted before every cache is complete: an empty cache would read as
            // "no binding wanted".
            let (mut leader_caches, mut policies) =
                (self.synced.clone(), self.policies_listed.clone());
            let synced = async {
                leader_caches.wait_for(|s| *s).await.is_ok()
                    && policies.wait_for(|l| *l).await.is_ok()
                    && namespaces.wait_until_ready().await.is_ok()
                    && bindings.wait_until_ready().await.is_ok()
            };
            if !synced.await {
                return;
            }
            // A failed change is tried again with the operator's retry policy.
            let mut backoff = crate::retry::Backoff::default();
            loop {
                let pending = self.sync(&namespaces, &bindings).await;
                let wait = if pending {
                    backoff.next_wait()
                } else {
                    backoff.reset();
                    RESYNC
                };
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                // Let a burst of events settle into one pass.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            () = ns_watch => {}
            () = rb_watch => {}
            () = work => {}
        }
    }

    /// One pass; `true` when a change failed (to be tried again soon).
    async fn sync(
        &self,
        namespaces: &Store<PartialObjectMeta<Namespace>>,
        bindings: &Store<RoleBinding>,
    ) -> bool {
        let ns_labels: BTreeMap<String, BTreeMap<String, String>> = namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let policies = self.policies.state();
        let pods = self.pods.injected_pods();
        let wanted = wanted(
            policies.iter().map(|p| p.as_ref()),
            |ns, name| {
                self.deployments
                    .get(&reflector::ObjectRef::new(name).within(ns))
            },
            pods.iter().map(|p| p.as_ref()),
            |ns| self.settings.scope.injects(ns, ns_labels.get(ns)),
        );
        let mut failed = false;
        for change in changes(&self.settings.role, &wanted, &bindings.state()) {
            if let Err(err) = self.apply(&change).await {
                warn!(?change, error = %err, "sidecar RoleBinding not changed; retrying");
                failed = true;
            }
        }
        failed
    }

    async fn apply(&self, change: &Change) -> kube::Result<()> {
        match change {
            Change::Apply(account) => {
                let role = &self.settings.role;
                let rb = binding(role, account, self.settings.owner.as_ref());
                Api::<RoleBinding>::namespaced(self.client.clone(), &account.namespace)
                    .patch(
                        &binding_name(role, account),
                        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                        &Patch::Apply(&rb),
                    )
                    .await?;
                info!(namespace = %account.namespace, service_account = %account.name, "sidecar role bound");
            }
            Change::Delete { namespace, name } => {
                match Api::<RoleBinding>::namespaced(self.client.clone(), namespace)
                    .delete(name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
                info!(%namespace, binding = %name, "sidecar RoleBinding no longer needed: deleted");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
