//! The [`Tracker`]: a namespace's pods and EndpointSlices watched, each pod's milestones
//! timestamped on the local monotonic clock, with its drain as the sidecar reported it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::constants::{DRAINED_CONDITION, SIDECAR_CONTAINER_NAME, reasons};

/// A drain as the sidecar reported it in the pod's `quiesce.dev/drained` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainReport {
    /// `True` once finished.
    pub status: String,
    /// `Draining`, `Drained` or `DrainTimedOut`.
    pub reason: String,
    /// The condition's message: the sidecar's report as JSON once finished (see
    /// [`Self::report`]), `draining connections` before.
    pub message: String,
}

impl DrainReport {
    /// The sidecar's report, once finished.
    pub fn report(&self) -> Option<quiesce_api::DrainReport> {
        quiesce_api::DrainReport::from_condition_message(&self.message)
    }

    /// Whether a bound was hit.
    pub fn forced(&self) -> bool {
        self.reason == reasons::DRAIN_TIMED_OUT || self.report().is_some_and(|r| r.forced)
    }

    /// The drain's duration, once finished.
    pub fn duration(&self) -> Option<Duration> {
        self.report().map(|r| Duration::from_millis(r.duration_ms))
    }

    /// One line for people: the report's summary (`drained in 2.41s (...)`), or the message
    /// as it is while draining.
    pub fn summary(&self) -> String {
        self.report()
            .map_or_else(|| self.message.clone(), |r| r.summary())
    }
}

/// What happened to one pod, on the local monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct PodTrack {
    /// The app's `VERSION`.
    pub version: String,
    /// Pod IP once assigned.
    pub ip: Option<String>,
    /// First seen (created).
    pub first_seen: Option<Instant>,
    /// First seen with `ContainersReady=True`.
    pub containers_ready: Option<Instant>,
    /// First seen with `Ready=True`.
    pub ready: Option<Instant>,
    /// First seen with a `deletionTimestamp`.
    pub deleting: Option<Instant>,
    /// Seen deleted.
    pub gone: Option<Instant>,
    /// First seen not ready (or absent) in the EndpointSlices after having been ready there.
    pub endpoint_removed: Option<Instant>,
    /// First seen as a ready endpoint in an EndpointSlice.
    pub endpoint_ready: Option<Instant>,
    /// First seen with the app container running.
    pub app_started: Option<Instant>,
    /// The app's container ID (`containerd://...`).
    pub app_container_id: Option<String>,
    /// First seen with the sidecar container running.
    pub sidecar_started: Option<Instant>,
    /// First seen with the sidecar container ready.
    pub sidecar_ready: Option<Instant>,
    /// The sidecar's container ID (`containerd://...`).
    pub sidecar_container_id: Option<String>,
    /// The last `quiesce.dev/drained` condition.
    pub drain: Option<DrainReport>,
}

/// Pods and EndpointSlices of one namespace, watched.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pods: Arc<Mutex<BTreeMap<String, PodTrack>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

fn sidecar_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)
}

fn condition_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

impl Tracker {
    /// Starts watching `ns`.
    pub fn start(client: &Client, ns: &str) -> Self {
        let tracker = Tracker::default();
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let t = tracker.clone();
        let pods_task = tokio::spawn(async move {
            let mut events = watcher(pods_api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        t.observe_pod(&pod, now)
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let mut pods = t.pods.lock().expect("tracker lock");
                        let track = pods.entry(pod.name_any()).or_default();
                        track.gone.get_or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let t = tracker.clone();
        let slices_task = tokio::spawn(async move {
            // Ready pods per slice, to notice a pod that left a slice.
            let mut ready_in: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut events = watcher(slices_api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(slice)) = events.next().await {
                let now = Instant::now();
                let ready: BTreeSet<String> = slice
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                    .collect();
                let before = ready_in.insert(slice.name_any(), ready.clone());
                let mut pods = t.pods.lock().expect("tracker lock");
                for pod in &ready {
                    let track = pods.entry(pod.clone()).or_default();
                    track.endpoint_ready.get_or_insert(now);
                }
                for left in before.unwrap_or_default().difference(&ready) {
                    let track = pods.entry(left.clone()).or_default();
                    track.endpoint_removed.get_or_insert(now);
                }
            }
        });
        tracker
            .tasks
            .lock()
            .expect("tracker lock")
            .extend([pods_task, slices_task]);
        tracker
    }

    fn observe_pod(&self, pod: &Pod, now: Instant) {
        let mut pods = self.pods.lock().expect("tracker lock");
        let track = pods.entry(pod.name_any()).or_default();
        track.first_seen.get_or_insert(now);
        if track.version.is_empty() {
            track.version = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
                .and_then(|c| c.env.as_ref())
                .and_then(|env| env.iter().find(|e| e.name == "VERSION"))
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
        }
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            track.ip = Some(ip);
        }
        if condition_true(pod, "ContainersReady") {
            track.containers_ready.get_or_insert(now);
        }
        if condition_true(pod, "Ready") {
            track.ready.get_or_insert(now);
        }
        if pod.metadata.deletion_timestamp.is_some() {
            track.deleting.get_or_insert(now);
        }
        let app = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "app"));
        if let Some(app) = app {
            if app
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_some()
            {
                track.app_started.get_or_insert(now);
            }
            if app.container_id.is_some() {
                track.app_container_id = app.container_id.clone();
            }
        }
        if let Some(s) = sidecar_status(pod) {
            if s.state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .is_some()
            {
                track.sidecar_started.get_or_insert(now);
            }
            if s.ready {
                track.sidecar_ready.get_or_insert(now);
            }
            if s.container_id.is_some() {
                track.sidecar_container_id = s.container_id.clone();
            }
        }
        let drained = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == DRAINED_CONDITION));
        if let Some(c) = drained {
            track.drain = Some(DrainReport {
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            });
        }
    }

    /// Everything seen so far, by pod name.
    pub fn snapshot(&self) -> BTreeMap<String, PodTrack> {
        self.pods.lock().expect("tracker lock").clone()
    }

    /// Stops watching.
    pub fn stop(&self) {
        for t in self.tasks.lock().expect("tracker lock").drain(..) {
            t.abort();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_reports_are_parsed() {
        let report = quiesce_api::DrainReport {
            duration_ms: 2410,
            quiet_ms: 850,
            in_flight_ms: 1560,
            connections_at_start: 3,
            busy_at_start: 3,
            ..Default::default()
        };
        let r = DrainReport {
            status: "True".into(),
            reason: "Drained".into(),
            message: report.to_condition_message(),
        };
        assert_eq!(r.duration(), Some(Duration::from_millis(2410)));
        assert!(!r.forced());
        assert_eq!(
            r.summary(),
            "drained in 2.41s (endpoints 0.00s, quiet 0.85s, in-flight 1.56s); \
             3 connections at start (3 busy); not forced"
        );
        let forced = DrainReport {
            reason: "DrainTimedOut".into(),
            ..r.clone()
        };
        assert!(forced.forced());
        let forced_by_report = DrainReport {
            message: quiesce_api::DrainReport {
                forced: true,
                ..report
            }
            .to_condition_message(),
            ..r
        };
        assert!(forced_by_report.forced());
        // While draining, and for garbage, there is no report: the message is shown as it is.
        let draining = DrainReport {
            status: "False".into(),
            reason: "Draining".into(),
            message: "draining connections".into(),
        };
        assert_eq!(draining.report(), None);
        assert_eq!(draining.duration(), None);
        assert_eq!(draining.summary(), "draining connections");
        let garbage = DrainReport {
            message: "drained in inf s".into(),
            ..forced_by_report
        };
        assert_eq!(garbage.duration(), None);
        assert!(!garbage.forced());
    }
}
