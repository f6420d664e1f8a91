//! Leader election with a `coordination.k8s.io/v1` Lease: only the holder reconciles and
//! writes; every replica serves the webhook.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it over when
//! `renewTime + leaseDurationSeconds` has passed. Every write is a `replace` at the read
//! `resourceVersion`, so two candidates racing for an expired Lease cannot both win: the
//! apiserver rejects the second with 409 Conflict. A holder that cannot renew within the
//! lease duration steps down before anyone else may take over (it stops at
//! `renew deadline < lease duration`).
//!
//! [`lead`] is the leader's loop around the election: wait to lead, run the controller for
//! the term, stop it within 5 s, release the Lease on the way out.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub renew_every: Duration,
    /// Owner of the Lease (the operator Deployment), so uninstalling removes it.
    pub owner: Option<OwnerReference>,
}

/// Whether `lease` may be acquired by `me` at `now`.
pub fn can_acquire(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map_or(0, |t| t.0.as_second());
            now.as_second() > renewed + duration
        }
    }
}

fn spec_for(cfg: &LeaseConfig, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|s| s.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            previous.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// One attempt to acquire or renew; `Ok(true)` when this replica holds the Lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let now = Timestamp::now();
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    owner_references: cfg.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(spec_for(cfg, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !can_acquire(&lease, &cfg.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(spec_for(cfg, lease.spec.as_ref(), now));
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election until the returned task is aborted, publishing leadership on the
/// returned channel. Abort the task before [`release`], or a renewal racing the release takes
/// the Lease back for a full lease duration.
pub fn spawn(
    client: Client,
    cfg: LeaseConfig,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            let leading = *tx.borrow();
            let attempt = tokio::time::timeout(cfg.renew_every, try_acquire(&api, &cfg)).await;
            let lost = matches!(attempt, Ok(Ok(false)));
            let holds = match attempt {
                Ok(Ok(holds)) => holds,
                Ok(Err(err)) => {
                    warn!(error = %err, "lease request failed");
                    false
                }
                Err(_) => {
                    warn!("lease request timed out");
                    false
                }
            };
            if holds {
                last_renewal = tokio::time::Instant::now();
                if !leading {
                    info!(identity = %cfg.identity, lease = %cfg.name, "became the leader");
                    let _ = tx.send(true);
                }
            } else if leading {
                // Step down before the lease can expire for the others: a renewal failing for
                // two thirds of the lease duration ends leadership.
                if lost || last_renewal.elapsed() > cfg.lease_duration * 2 / 3 {
                    warn!(identity = %cfg.identity, "lost the leader lease; stepping down");
                    let _ = tx.send(false);
                }
            }
            tokio::time::sleep(cfg.renew_every).await;
        }
    });
    (rx, task)
}

/// Releases the Lease on shutdown so the other replica takes over at once.
pub async fn release(client: Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(cfg.identity.as_str())
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match api.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => info!("leader lease released"),
            Err(err) => warn!(error = %err, "releasing the lease failed"),
        }
    }
}

/// Resolves when a leadership term ends: the Lease lost or the process stopping.
pub type TermEnd = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Runs the election ([`spawn`]) and, in every term this replica leads, the future
/// `controller` makes (spawned; given the [`TermEnd`] to stop on), until `stop` is `true`;
/// then releases the Lease. A stop waits for the controller's running reconciles at most 5 s:
/// the Lease must be released before the kubelet's SIGKILL. Fails only if the election task
/// is gone (then the Lease is not released).
pub async fn lead<F>(
    client: Client,
    lease: LeaseConfig,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
    mut controller: impl FnMut(TermEnd) -> F,
) -> Result<(), watch::error::RecvError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (mut leading, election) = spawn(client.clone(), lease.clone());
    let mut stop_wait = stop.clone();
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { r?; }
            _ = stop_wait.wait_for(|s| *s) => break,
        }
        metrics.leader.set(1);
        let mut lost = leading.clone();
        let mut stopping = stop.clone();
        let shutdown = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        info!("starting the controller");
        let mut ctrl = tokio::spawn(controller(Box::pin(shutdown)));
        // A graceful stop waits for running reconciles, but never longer than 5 s: the Lease
        // must be released before the kubelet's SIGKILL.
        let mut stopping = stop.clone();
        tokio::select! {
            _ = &mut ctrl => {}
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            } => ctrl.abort(),
        }
        metrics.leader.set(0);
        info!("controller stopped");
        if *stop.borrow() {
            break;
        }
    }
    election.abort();
    let _ = election.await;
    release(client, &lease).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_ours_or_expired() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(can_acquire(&lease(None, 990, 15), "a", now));
        assert!(can_acquire(&lease(Some("a"), 999, 15), "a", now));
        assert!(!can_acquire(&lease(Some("b"), 990, 15), "a", now));
        assert!(can_acquire(&lease(Some("b"), 984, 15), "a", now));
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let cfg = LeaseConfig {
            namespace: "q".into(),
            name: "quiesce-operator".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            owner: None,
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let prev = lease(Some("b"), 900, 15).spec.unwrap();
        let s = spec_for(
            &cfg,
            Some(&LeaseSpec {
                lease_transitions: Some(2),
                ..prev
            }),
            now,
        );
        assert_eq!(s.lease_transitions, Some(3));
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        let renewed = spec_for(&cfg, Some(&s), now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, s.acquire_time);
    }
}
