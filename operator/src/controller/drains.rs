//! Drain reports, each counted once per pod — also when the pod is gone before a reconcile
//! looks.
//!
//! The sidecar reports a finished drain as the pod condition `quiesce.dev/drained=True`. An app
//! that exits right after its drain lets the pod disappear within milliseconds, often before the
//! reconcile the report triggered runs, and then the pod cache no longer holds it. So the pod
//! watch records every finished report at event time in the [`DrainInbox`], keyed by
//! (namespace, Deployment); a reconcile takes its target's reports from there as well as from
//! the pods still in the cache, and [`CountedDrains`] remembers the pod UIDs it counted.
//!
//! Both are bounded: a report nobody takes (its policy went away) is dropped after
//! [`RETENTION`] or when the inbox holds [`MAX_PENDING`] reports, and a counted UID is
//! forgotten once its pod has been gone from the cache for [`RETENTION`] (a gone pod sends no
//! more events, so it cannot be counted twice).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use quiesce_api::constants::{DRAINED_CONDITION, reasons};

use super::CachedPod;
use crate::plan::DrainReport;

/// How long a report waits in the inbox, and how long a counted UID is kept after its pod was
/// last seen.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// Most reports the inbox holds; the oldest go first.
pub const MAX_PENDING: usize = 10_000;

/// How often the inbox looks for expired reports.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Longest drain duration taken from a report (a day), whatever the pod's grace period says.
const MAX_DURATION_MILLIS: u64 = 86_400_000;

/// Added to a pod's grace period for the longest plausible drain: the sidecar measures with its
/// own clock, and the kubelet's kill is not instantaneous.
const GRACE_SLACK_MILLIS: u64 = 5_000;

/// The sidecar's finished-drain report on a pod, if any. A finished condition whose message is
/// not a report (an older sidecar's prose) still counts as a drain, forced as its reason says,
/// without a duration. The app container shares the pod's token and can write the condition:
/// a JSON message that does not parse, or whose numbers are not plausible for the pod (see
/// `longest_drain_millis`), is an invalid report — the drain counts, none of its numbers do.
pub fn drain_report(pod: &CachedPod) -> Option<DrainReport> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == DRAINED_CONDITION && c.status == "True")?;
    let message = c.message.as_deref().unwrap_or_default();
    let report = quiesce_api::DrainReport::from_condition_message(message)
        .filter(|r| r.is_plausible(longest_drain_millis(pod)));
    let by_reason = c.reason.as_deref() == Some(reasons::DRAIN_TIMED_OUT);
    Some(DrainReport {
        forced: by_reason || report.as_ref().is_some_and(|r| r.forced),
        duration_millis: report
            .as_ref()
            .and_then(|r| bounded_duration_millis(r.duration_ms)),
        invalid: report.is_none() && message.trim_start().starts_with('{'),
    })
}

/// The longest drain the pod could have had: its grace period (the larger of the spec's and
/// the deletion's; the kubelet kills the pod after it) plus [`GRACE_SLACK_MILLIS`], at most
/// [`MAX_DURATION_MILLIS`].
pub fn longest_drain_millis(pod: &CachedPod) -> u64 {
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let deletion = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
    let grace = u64::try_from(spec.max(deletion)).unwrap_or(0);
    grace
        .saturating_mul(1000)
        .saturating_add(GRACE_SLACK_MILLIS)
        .min(MAX_DURATION_MILLIS)
}

/// A reported drain duration when it is plausible (at most a day).
pub fn bounded_duration_millis(millis: u64) -> Option<i64> {
    (millis <= MAX_DURATION_MILLIS)
        .then(|| i64::try_from(millis).ok())
        .flatten()
}

/// A report waiting for its policy's reconcile.
#[derive(Clone, Debug)]
struct Pending {
    pod: String,
    report: DrainReport,
    at: Timestamp,
}

/// A finished drain taken from the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Pod UID.
    pub uid: String,
    /// Pod name.
    pub pod: String,
    /// The report.
    pub report: DrainReport,
}

/// Reports by (namespace, Deployment), then pod UID.
type ByTarget = HashMap<(String, String), HashMap<String, Pending>>;

/// Finished drain reports seen by the pod watch, by (namespace, Deployment) and pod UID.
#[derive(Debug, Default)]
pub struct DrainInbox {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: ByTarget,
    /// When to look for expired reports next (once a minute at most).
    next_prune: Option<Timestamp>,
}

impl DrainInbox {
    /// Records the pod's drain report, if it has a finished one, for the Deployment
    /// `deployment` in the pod's namespace. Returns whether it had one.
    pub fn record(&self, pod: &CachedPod, deployment: &str, now: Timestamp) -> bool {
        let (Some(report), Some(uid)) = (drain_report(pod), pod.uid()) else {
            return false;
        };
        let key = (pod.namespace().unwrap_or_default(), deployment.to_owned());
        let mut inner = self.lock();
        if inner.next_prune.is_none_or(|t| now >= t) {
            prune(&mut inner.pending, now);
            inner.next_prune = now.checked_add(PRUNE_EVERY).ok();
        }
        let pending = &mut inner.pending;
        pending
            .entry(key)
            .or_default()
            .entry(uid)
            .or_insert(Pending {
                pod: pod.name_any(),
                report,
                at: now,
            });
        let total: usize = pending.values().map(HashMap::len).sum();
        if total > MAX_PENDING {
            drop_oldest(pending, total - MAX_PENDING);
        }
        true
    }

    /// Puts a report taken by a pass whose status write failed back, for the next pass.
    pub fn put_back(&self, namespace: &str, deployment: &str, taken: Taken, now: Timestamp) {
        let key = (namespace.to_owned(), deployment.to_owned());
        self.lock()
            .pending
            .entry(key)
            .or_default()
            .entry(taken.uid)
            .or_insert(Pending {
                pod: taken.pod,
                report: taken.report,
                at: now,
            });
    }

    /// Takes every report recorded for `deployment` in `namespace`.
    pub fn take(&self, namespace: &str, deployment: &str) -> Vec<Taken> {
        let key = (namespace.to_owned(), deployment.to_owned());
        let mut taken: Vec<Taken> = self
            .lock()
            .pending
            .remove(&key)
            .into_iter()
            .flatten()
            .map(|(uid, p)| Taken {
                uid,
                pod: p.pod,
                report: p.report,
            })
            .collect();
        taken.sort_by(|a, b| a.pod.cmp(&b.pod));
        taken
    }

    /// Reports waiting, over every Deployment.
    pub fn len(&self) -> usize {
        self.lock().pending.values().map(HashMap::len).sum()
    }

    /// Whether no report waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("drain inbox lock")
    }
}

fn prune(pending: &mut ByTarget, now: Timestamp) {
    for reports in pending.values_mut() {
        reports.retain(|_, p| !expired(p.at, now));
    }
    pending.retain(|_, reports| !reports.is_empty());
}

fn drop_oldest(pending: &mut ByTarget, n: usize) {
    let mut all: Vec<(Timestamp, (String, String), String)> = pending
        .iter()
        .flat_map(|(key, reports)| {
            reports
                .iter()
                .map(|(uid, p)| (p.at, key.clone(), uid.clone()))
        })
        .collect();
    all.sort();
    for (_, key, uid) in all.into_iter().take(n) {
        if let Some(reports) = pending.get_mut(&key) {
            reports.remove(&uid);
        }
    }
    pending.retain(|_, reports| !reports.is_empty());
}

fn expired(at: Timestamp, now: Timestamp) -> bool {
    let retention = i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
    now.as_millisecond().saturating_sub(at.as_millisecond()) > retention
}

/// A counted pod: where to look for it, and when it was last seen.
#[derive(Clone, Debug)]
struct Seen {
    namespace: String,
    pod: String,
    last_seen: Timestamp,
}

/// Pod UIDs whose drain was counted.
#[derive(Debug, Default)]
pub struct CountedDrains {
    seen: HashMap<String, Seen>,
}

impl CountedDrains {
    /// Remembers the pod as seen now; returns `true` the first time (count its drain).
    pub fn first_sight(&mut self, uid: &str, namespace: &str, pod: &str, now: Timestamp) -> bool {
        match self.seen.get_mut(uid) {
            Some(seen) => {
                seen.last_seen = now;
                false
            }
            None => {
                self.seen.insert(
                    uid.to_owned(),
                    Seen {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        last_seen: now,
                    },
                );
                true
            }
        }
    }

    /// Forgets that the pod's drain was counted.
    pub fn forget(&mut self, uid: &str) {
        self.seen.remove(uid);
    }

    /// Forgets the UIDs last seen more than [`RETENTION`] ago whose pod is not `present`
    /// (namespace, name, UID) any more.
    pub fn forget_gone(&mut self, now: Timestamp, present: impl Fn(&str, &str, &str) -> bool) {
        self.seen
            .retain(|uid, s| !expired(s.last_seen, now) || present(&s.namespace, &s.pod, uid));
    }

    /// UIDs remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}
