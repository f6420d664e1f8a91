//! A rolling update of the demo app under load, measured: what `make demo` and `make bench` run.
//!
//! One namespace holds one variant of the same Deployment (`demo-app`, 3 replicas, `maxSurge: 1`,
//! `maxUnavailable: 0`, the app exiting the moment it gets SIGTERM): plain, with a
//! `preStop: sleep`, or governed by a `RolloutPolicy` (quiesce). [`Tracker`] watches the
//! namespace's pods and EndpointSlices and timestamps what happens to each pod with the local
//! monotonic clock (API timestamps have one-second precision); [`roll`] changes the app's
//! `VERSION` under open-loop load and returns the load's outcome with the timeline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::{DRAINED_CONDITION, SIDECAR_CONTAINER_NAME, reasons};

use crate::demo_app::DemoApp;
use crate::harness::{self, apply_yaml};
use crate::hey::{self, HeyConfig, HeyReport};
use crate::loadgen::{self, LoadConfig, Protocol, SlowMix, Summary};

/// Name of the Deployment, its Service and its RolloutPolicy.
pub const APP: &str = "demo-app";
/// Replicas of the demo Deployment; with `maxSurge: 1` a rollout is this many batches.
pub const REPLICAS: usize = 3;
/// The policy's `readiness.minHealthySeconds` (the plain Deployment's `minReadySeconds` is 0 too).
pub const MIN_HEALTHY_SECONDS: u64 = 0;
/// Pod grace period: covers the policy's drain budget (10 s endpoints + 1 s quiet + 30 s).
pub const GRACE_SECONDS: u64 = 60;

/// How the Deployment shuts its old pods down. Unless a variant says `Graceful`, the app exits
/// the moment it gets SIGTERM (the worst case); a graceful app finishes in-flight requests and
/// closes its idle keep-alive connections (HTTP/2: GOAWAY) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Nothing: the app gets SIGTERM the moment its pod is deleted.
    Plain,
    /// `lifecycle.preStop.sleep.seconds`: the usual workaround.
    PreStopSleep(u32),
    /// `preStop: sleep N` in front of an app that shuts down gracefully.
    GracefulPreStopSleep(u32),
    /// A `RolloutPolicy` targets the Deployment: the webhook injects the sidecar, the operator
    /// paces the rollout through the readiness gate. `drain.mode: Observe`.
    Quiesce,
    /// quiesce, `Observe` with `appShutdown: Graceful`, in front of a graceful app.
    QuiesceGraceful,
    /// quiesce, `drain.mode: Proxy`: the sidecar proxies the app's traffic.
    QuiesceProxy,
    /// quiesce Proxy, but the Service targets the app's port by number: its traffic bypasses
    /// the proxy (the policy says so) and is drained as in Observe mode.
    QuiesceProxyNumericPort,
}

impl Variant {
    /// Human name, as in the report.
    pub fn label(self) -> String {
        match self {
            Variant::Plain => "plain Deployment".into(),
            Variant::PreStopSleep(s) => format!("`preStop: sleep {s}`"),
            Variant::GracefulPreStopSleep(s) => format!("graceful app, `preStop: sleep {s}`"),
            Variant::Quiesce => "quiesce".into(),
            Variant::QuiesceGraceful => "graceful app, quiesce Observe+Graceful".into(),
            Variant::QuiesceProxy => "quiesce Proxy".into(),
            Variant::QuiesceProxyNumericPort => "quiesce Proxy, numeric targetPort".into(),
        }
    }

    /// Short name, for namespaces and `--variants`.
    pub fn slug(self) -> String {
        match self {
            Variant::Plain => "plain".into(),
            Variant::PreStopSleep(s) => format!("sleep{s}"),
            Variant::GracefulPreStopSleep(s) => format!("graceful-sleep{s}"),
            Variant::Quiesce => "quiesce".into(),
            Variant::QuiesceGraceful => "graceful-quiesce".into(),
            Variant::QuiesceProxy => "proxy".into(),
            Variant::QuiesceProxyNumericPort => "proxy-numeric".into(),
        }
    }

    /// Whether a RolloutPolicy governs the Deployment.
    pub fn is_quiesce(self) -> bool {
        matches!(
            self,
            Variant::Quiesce
                | Variant::QuiesceGraceful
                | Variant::QuiesceProxy
                | Variant::QuiesceProxyNumericPort
        )
    }

    /// The demo app's `EXIT_ON_SIGTERM`.
    pub fn app_exit(self) -> &'static str {
        match self {
            Variant::GracefulPreStopSleep(_) | Variant::QuiesceGraceful => "graceful",
            _ => "immediate",
        }
    }
}

/// Milliseconds the demo app answers `/healthz` with 503 after it starts (`HEALTHY_AFTER_MS`, an
/// app that warms up); 0: healthy at once. Set by the bench's `--app-warmup-ms`.
pub static APP_WARMUP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The demo app's Deployment and Service, at `version`, shutting down as `variant` says. The
/// app keeps its own readiness probe in every variant: with quiesce the sidecar copies it.
pub fn deployment_yaml(variant: Variant, version: &str) -> String {
    let mut app = DemoApp::new(APP, REPLICAS, version)
        .env("EXIT_ON_SIGTERM", variant.app_exit())
        .grace_seconds(GRACE_SECONDS)
        .probe(Some(DemoApp::app_probe(2)))
        .pull_policy("IfNotPresent")
        .resources(serde_json::json!({"requests": {"cpu": "10m", "memory": "16Mi"}}));
    match APP_WARMUP_MS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        ms => app = app.env("HEALTHY_AFTER_MS", &ms.to_string()),
    }
    if let Variant::PreStopSleep(s) | Variant::GracefulPreStopSleep(s) = variant {
        app = app.pre_stop(serde_json::json!({"sleep": {"seconds": s}}));
    }
    if variant == Variant::QuiesceProxyNumericPort {
        app = app.service_target_port(serde_json::json!(8080));
    }
    app.yaml()
}

/// The demo's RolloutPolicy: no steps (admit every new pod once healthy), drain every old pod
/// before the next one goes; the drain mode and app shutdown as `variant` says.
pub fn policy_yaml(variant: Variant) -> String {
    let (mode, app_shutdown) = match variant {
        Variant::QuiesceProxy | Variant::QuiesceProxyNumericPort => ("Proxy", "Immediate"),
        Variant::QuiesceGraceful => ("Observe", "Graceful"),
        _ => ("Observe", "Immediate"),
    };
    format!(
        r#"apiVersion: quiesce.dev/v1alpha1
kind: RolloutPolicy
metadata: {{name: {APP}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {APP}}}
  readiness: {{minHealthySeconds: {MIN_HEALTHY_SECONDS}}}
  drain:
    endpointTimeoutSeconds: 10
    quietPeriodMillis: 1000
    timeoutSeconds: 30
    waitBeforeNextStep: true
    mode: {mode}
    appShutdown: {app_shutdown}
"#
    )
}

/// Label on the namespaces `make demo` and `make bench` create; the value names the tool.
pub const NAMESPACE_LABEL: &str = "quiesce.dev/scenario";

/// Deletes (without waiting) the namespaces an earlier run of `tool` left behind.
pub async fn delete_leftovers(client: &Client, tool: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{NAMESPACE_LABEL}={tool}");
    for ns in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        if ns.metadata.deletion_timestamp.is_none() {
            let _ = api
                .delete(&ns.name_any(), &DeleteParams::background())
                .await;
        }
    }
    Ok(())
}

/// Creates a namespace `<prefix>-<random>` (Pod Security `restricted`) labelled for `tool`.
/// A fresh name every run: nothing of an earlier run (still terminating, or remembered by a
/// controller) can leak into this one.
pub async fn fresh_namespace(client: &Client, tool: &str, prefix: &str) -> Result<String> {
    use std::hash::{BuildHasher, RandomState};
    let suffix = RandomState::new().hash_one(std::time::SystemTime::now()) & 0xffff;
    let name = format!("{prefix}-{suffix:04x}");
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            NAMESPACE_LABEL: tool,
            "pod-security.kubernetes.io/enforce": "restricted"}}
    }))?;
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name)
}

/// Deletes a namespace without waiting.
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Deploys `variant` at version `v1` in `ns` and waits until it is rolled out. With quiesce the
/// policy goes first, and the pods are checked for the injected sidecar.
pub async fn deploy(client: &Client, ns: &str, variant: Variant) -> Result<()> {
    if variant.is_quiesce() {
        apply_yaml(client, ns, &policy_yaml(variant)).await?;
        // The webhook injects only once the operator has seen the policy.
        let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
        harness::eventually(
            "the operator to pick up the RolloutPolicy (status written)",
            Duration::from_secs(60),
            || async { Ok(api.get(APP).await?.status.map(|_| ())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    apply_yaml(client, ns, &deployment_yaml(variant, "v1")).await?;
    if let Err(e) = harness::wait_rollout(client, ns, APP, Duration::from_secs(180)).await {
        bail!("{e:#}\n{}", diagnose(client, ns).await);
    }
    if variant.is_quiesce() {
        let pods = harness::pods(client, ns, &format!("app={APP}")).await?;
        let injected = |p: &Pod| {
            p.spec.as_ref().is_some_and(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == SIDECAR_CONTAINER_NAME)
            })
        };
        let bare: Vec<String> = pods
            .iter()
            .filter(|p| !injected(p))
            .map(|p| p.name_any())
            .collect();
        if !bare.is_empty() {
            bail!(
                "pods created without the quiesce sidecar: {bare:?} (is the webhook running? \
                 see docs/troubleshooting.md)"
            );
        }
    }
    Ok(())
}

/// Where a rollout stands, for an error message: the policy's status message and each pod's
/// readiness and gate.
pub async fn diagnose(client: &Client, ns: &str) -> String {
    let mut out = String::new();
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    if let Ok(Some(p)) = policies.get_opt(APP).await {
        let st = p.status.unwrap_or_default();
        out += &format!(
            "RolloutPolicy {APP}: phase {:?}: {}\n",
            st.phase,
            st.message.unwrap_or_default()
        );
    }
    for pod in harness::pods(client, ns, &format!("app={APP}"))
        .await
        .unwrap_or_default()
    {
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let show = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| {
                    format!(
                        "{}={} {}",
                        t,
                        c.status,
                        c.reason.clone().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| format!("{t} unset"))
        };
        out += &format!(
            "  pod {}: {}, {}{}\n",
            pod.name_any(),
            show("Ready"),
            show(quiesce_api::constants::READY_GATE_CONDITION),
            if pod.metadata.deletion_timestamp.is_some() {
                ", terminating"
            } else {
                ""
            }
        );
    }
    out += "(docs/troubleshooting.md explains each gate reason; the operator's log: \
            kubectl -n quiesce-system logs deploy/quiesce-operator)";
    out
}

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

/// The load of a rollout.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per second (open loop).
    pub rate: f64,
    /// How the clients connect: a new connection per request, a keep-alive pool, or HTTP/2.
    pub protocol: Protocol,
    /// Slow requests in the mix.
    pub slow: Option<SlowMix>,
    /// Keep-alive: send again what a reused connection dropped before its response
    /// ([`LoadConfig::retry_reused`]).
    pub retry_reused: bool,
    /// Also run hey, a third-party generator, at this rate beside our own load, with the same
    /// kind of connections (HTTP/1.1 only: hey has no h2c).
    pub hey_rate: Option<f64>,
}

/// How a load's clients connect, in words.
pub fn clients(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "new connection per request",
        Protocol::KeepAlive => "keep-alive pool",
        Protocol::H2c => "HTTP/2 (h2c)",
    }
}

impl Load {
    /// Longest request the app is asked to serve, beyond the network.
    pub fn longest_request(&self) -> Duration {
        Duration::from_millis(self.slow.map_or(0, |s| s.ms))
    }
}

/// One rollout, measured.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Outcome of every request sent while it ran.
    pub summary: Summary,
    /// From the template change until the last old pod was gone.
    pub wall: Duration,
    /// Old pods (deleted during the rollout), in deletion order.
    pub old: Vec<(String, PodTrack)>,
    /// New pods (created during the rollout), in creation order.
    pub new: Vec<(String, PodTrack)>,
    /// kube-proxy's mean network programming latency during the rollout, when readable.
    pub kube_proxy_programming: Option<Duration>,
    /// When the load started (the origin of `summary.failed_at_ms`).
    pub load_started: Instant,
    /// When the template was changed.
    pub started: Instant,
    /// hey's outcome, when it ran beside our load.
    pub hey: Option<HeyReport>,
    /// Share of the machine's CPU time busy while the load ran (all processes, the load
    /// generators included), when `/proc/stat` is readable.
    pub cpu_busy: Option<f64>,
}

impl Rollout {
    /// What happened when, in seconds after the template change: each old and new pod's
    /// milestones and the failed requests grouped into bursts. For diagnosis (`--timeline`).
    pub fn timeline(&self) -> String {
        let at = |i: Option<Instant>| {
            i.map(|i| {
                let s = if i >= self.started {
                    i.duration_since(self.started).as_secs_f64()
                } else {
                    -self.started.duration_since(i).as_secs_f64()
                };
                format!("{s:+.2}s")
            })
            .unwrap_or_else(|| "-".into())
        };
        let mut out = String::new();
        for (name, t) in &self.new {
            out += &format!(
                "  new {name}: created {} sidecar running {} app running {} containers ready {} \
                 ready {} ready endpoint {}\n",
                at(t.first_seen),
                at(t.sidecar_started),
                at(t.app_started),
                at(t.containers_ready),
                at(t.ready),
                at(t.endpoint_ready)
            );
        }
        for (name, t) in &self.old {
            out += &format!(
                "  old {name}: deleting {} endpoint removed {} gone {}{}\n",
                at(t.deleting),
                at(t.endpoint_removed),
                at(t.gone),
                t.drain
                    .as_ref()
                    .map(|d| format!("; {}", d.summary()))
                    .unwrap_or_default()
            );
        }
        let offset = self.started.saturating_duration_since(self.load_started);
        let mut bursts: Vec<(f64, f64, usize)> = Vec::new();
        for ms in &self.summary.failed_at_ms {
            let t = Duration::from_millis(*ms).as_secs_f64() - offset.as_secs_f64();
            match bursts.last_mut() {
                Some((_, end, n)) if t - *end < 0.5 => {
                    *end = t;
                    *n += 1;
                }
                _ => bursts.push((t, t, 1)),
            }
        }
        for (a, b, n) in bursts {
            out += &format!("  {n} failed requests launched {a:+.2}s..{b:+.2}s\n");
        }
        out
    }

    /// Drain reports of the old pods that have one.
    pub fn drains(&self) -> Vec<&DrainReport> {
        self.old
            .iter()
            .filter_map(|(_, t)| t.drain.as_ref())
            .collect()
    }

    /// Endpoint propagation of each old pod: deletion seen → removal from the EndpointSlices
    /// seen, on the local clock; or kube-proxy's own measurement (pod change → rules
    /// programmed), which includes the dataplane, when available.
    pub fn endpoint_propagation(&self) -> Vec<Duration> {
        self.old
            .iter()
            .map(
                |(_, t)| match (self.kube_proxy_programming, t.deleting, t.endpoint_removed) {
                    (Some(kp), _, _) => kp,
                    (None, Some(d), Some(r)) => r.saturating_duration_since(d),
                    _ => Duration::ZERO,
                },
            )
            .collect()
    }

    /// The physical floor: per batch (one new pod in, one old pod out), the new pod's start
    /// (created → containers ready) + minimum healthy time + the old pod's endpoint propagation
    /// + the longest request; summed over the batches.
    pub fn floor(&self, min_healthy: Duration, longest_request: Duration) -> Duration {
        let prop = self.endpoint_propagation();
        self.new
            .iter()
            .zip(prop.iter().chain(std::iter::repeat(&Duration::ZERO)))
            .map(|((_, t), p)| {
                let start = match (t.first_seen, t.containers_ready) {
                    (Some(a), Some(b)) => b.saturating_duration_since(a),
                    _ => Duration::ZERO,
                };
                start + min_healthy + *p + longest_request
            })
            .sum()
    }
}

/// kube-proxy's `network_programming_duration` histogram (sum seconds, count), read from its
/// metrics endpoint on the node's loopback (local provider); `None` elsewhere.
pub async fn kube_proxy_programming() -> Option<(f64, f64)> {
    let url = std::env::var("QUIESCE_KUBE_PROXY_METRICS")
        .unwrap_or_else(|_| "http://127.0.0.1:10249/metrics".into());
    let (status, body) = harness::http_get(&url).await.ok()?;
    if status != 200 {
        return None;
    }
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    };
    Some((
        value("kubeproxy_network_programming_duration_seconds_sum")?,
        value("kubeproxy_network_programming_duration_seconds_count")?,
    ))
}

/// Changes the app's `VERSION` to `to` under `load` and waits until the rollout is complete and
/// every old pod is gone. `progress` is told what happens.
pub async fn roll(
    client: &Client,
    ns: &str,
    variant: Variant,
    tracker: &Tracker,
    to: &str,
    load: Load,
    progress: &dyn Fn(&str),
) -> Result<Rollout> {
    let url = format!("http://{}:80", harness::cluster_ip(client, ns, APP).await?);
    harness::wait_serving(&url, Duration::from_secs(60)).await?;
    let load_started = Instant::now();
    let cpu_before = cpu_times();
    let hey = match (load.hey_rate, load.protocol) {
        (Some(rate), Protocol::Http1 | Protocol::KeepAlive) => Some(hey::spawn(&HeyConfig {
            keep_alive: load.protocol == Protocol::KeepAlive,
            // hey's workers each wait for their answer: ten requests a second each.
            workers: (rate / 10.0).ceil().max(1.0) as u32,
            // Stopped with SIGINT when our load ends.
            ..HeyConfig::new(url.clone(), rate, Duration::from_secs(1800))
        })?),
        _ => None,
    };
    let running = loadgen::spawn(LoadConfig {
        protocol: load.protocol,
        slow: load.slow,
        retry_reused: load.retry_reused,
        ..LoadConfig::new(url, load.rate)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: BTreeSet<String> = tracker
        .snapshot()
        .into_iter()
        .filter(|(_, t)| t.gone.is_none())
        .map(|(n, _)| n)
        .collect();
    let kp_before = kube_proxy_programming().await;
    progress(&format!("rolling to {to} under load"));
    let started = Instant::now();
    apply_yaml(client, ns, &deployment_yaml(variant, to)).await?;
    if let Err(e) = harness::wait_rollout(client, ns, APP, Duration::from_secs(300)).await {
        bail!("{e:#}\n{}", diagnose(client, ns).await);
    }
    harness::eventually("old pods to be gone", Duration::from_secs(180), || async {
        let snap = tracker.snapshot();
        Ok(before
            .iter()
            .all(|n| snap.get(n).is_some_and(|t| t.gone.is_some()))
            .then_some(()))
    })
    .await?;
    let wall = started.elapsed();
    let kp_after = kube_proxy_programming().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = running.finish().await;
    let hey = match hey {
        Some(h) => {
            h.interrupt().await?;
            Some(h.finish().await?)
        }
        None => None,
    };
    let cpu_busy = match (cpu_before, cpu_times()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let snap = tracker.snapshot();
    let mut old: Vec<(String, PodTrack)> = snap
        .iter()
        .filter(|(n, _)| before.contains(*n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    old.sort_by_key(|(_, t)| t.deleting);
    let mut new: Vec<(String, PodTrack)> = snap
        .iter()
        .filter(|(n, t)| !before.contains(*n) && t.first_seen.is_some_and(|f| f >= started))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    new.sort_by_key(|(_, t)| t.first_seen);
    let kube_proxy_programming = match (kp_before, kp_after) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => {
            Some(Duration::from_secs_f64((s1 - s0) / (c1 - c0)))
        }
        _ => None,
    };
    Ok(Rollout {
        summary,
        wall,
        old,
        new,
        kube_proxy_programming,
        load_started,
        started,
        hey,
        cpu_busy,
    })
}

/// The machine's (busy, total) CPU time in clock ticks, from `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    let total: u64 = ticks.iter().take(8).sum();
    Some((total - idle, total))
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

    #[test]
    fn manifests_are_valid_yaml_for_every_variant() {
        for v in [
            Variant::Plain,
            Variant::PreStopSleep(5),
            Variant::GracefulPreStopSleep(5),
            Variant::Quiesce,
            Variant::QuiesceGraceful,
            Variant::QuiesceProxy,
        ] {
            for doc in serde_yaml::Deserializer::from_str(&deployment_yaml(v, "v2")) {
                let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
                assert!(value.get("kind").is_some(), "{v:?}");
            }
        }
        let d = deployment_yaml(Variant::PreStopSleep(15), "v2");
        assert!(d.contains(r#""preStop":{"sleep":{"seconds":15}}"#), "{d}");
        let p: RolloutPolicy = serde_yaml::from_str(&policy_yaml(Variant::Quiesce)).unwrap();
        assert_eq!(p.spec.target_ref.name, APP);
        let p: RolloutPolicy = serde_yaml::from_str(&policy_yaml(Variant::QuiesceProxy)).unwrap();
        assert_eq!(p.spec.drain.mode, quiesce_api::DrainMode::Proxy);
        let p: RolloutPolicy =
            serde_yaml::from_str(&policy_yaml(Variant::QuiesceGraceful)).unwrap();
        assert_eq!(
            p.spec.drain.app_shutdown,
            quiesce_api::AppShutdown::Graceful
        );
        assert!(deployment_yaml(Variant::QuiesceGraceful, "v2").contains(r#""value":"graceful""#));
    }
}
