//! The drain's I/O shell: runs one [`DrainMachine`] with real time, real socket snapshots, the
//! EndpointSlice watch and the pod-condition reporter. One drain per process: every caller —
//! concurrent or repeated preStop calls, SIGTERM — waits for the same drain and gets the same
//! report.
//!
//! The sidecar must never block the app because of its own failure: a drain task that panics or
//! overruns its bounds still releases every caller, with a forced report.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    config::{AppShutdown, DrainConfig, NewConnectionSignal},
    drain::{DrainMachine, DrainReport, Observation, Phase, Timings},
    endpoints::{EndpointWatch, watch_pod_ip},
    metrics::Metrics,
    pod::Reporter,
    proxy::{ProxyHandle, ProxyReport},
    sockets::{self, AdminServer, ArrivalTracker, ConnCounts},
};

/// Where the drain is, for `/readyz`, `/status` and waiting callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DrainState {
    /// No drain yet.
    Idle,
    /// Draining.
    Running {
        /// Current phase.
        phase: Phase,
        /// What started it.
        trigger: String,
    },
    /// Finished.
    Done {
        /// The report.
        report: DrainReport,
        /// What started it.
        trigger: String,
    },
}

/// Kubernetes side of a drain (kubernetes mode only).
#[derive(Clone)]
pub struct KubeDrain {
    /// Client for the EndpointSlice watch.
    pub client: crate::apiserver::ApiClient,
    /// Own name (the drain's log span).
    pub name: String,
    /// Own namespace.
    pub namespace: String,
    /// Own IP.
    pub pod_ip: String,
    /// Condition reporter.
    pub reporter: Reporter,
}

impl std::fmt::Debug for KubeDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDrain")
            .field("namespace", &self.namespace)
            .field("pod_ip", &self.pod_ip)
            .finish()
    }
}

/// Handle on the process's drain.
#[derive(Clone, Debug)]
pub struct Drainer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: DrainConfig,
    ports: Vec<u16>,
    kube: Option<KubeDrain>,
    metrics: Arc<Metrics>,
    admin: AdminListener,
    started: AtomicBool,
    state: watch::Sender<DrainState>,
    /// Proxy mode: the proxy, whose counts replace the socket table.
    proxy: OnceLock<ProxyHandle>,
}

/// The sidecar's admin listener: its connections are not arrivals for the app.
#[derive(Debug, Clone)]
pub struct AdminListener {
    /// The port it listens on.
    pub port: u16,
    /// Connections it accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl Drainer {
    /// Waits at most `bound` for the drain reports made so far to be written to the pod
    /// (true at once outside Kubernetes).
    pub async fn flush_report(&self, bound: Duration) -> bool {
        match &self.inner.kube {
            Some(k) => k.reporter.flush(bound).await,
            None => true,
        }
    }

    /// A drainer for the app `ports`.
    pub fn new(
        cfg: DrainConfig,
        ports: Vec<u16>,
        kube: Option<KubeDrain>,
        metrics: Arc<Metrics>,
        admin: AdminListener,
    ) -> Self {
        let (state, _) = watch::channel(DrainState::Idle);
        Self {
            inner: Arc::new(Inner {
                cfg,
                ports,
                kube,
                metrics,
                admin,
                started: AtomicBool::new(false),
                state,
                proxy: OnceLock::new(),
            }),
        }
    }

    /// Proxy mode: drains observe `proxy` instead of the socket table, and tell it to start
    /// draining when the Endpoints phase ends (at once in standalone mode). Set once, before
    /// any drain.
    pub fn attach_proxy(&self, proxy: ProxyHandle) {
        let _ = self.inner.proxy.set(proxy);
    }

    /// Whether a drain started (readiness is then 503 for good).
    pub fn started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Current state.
    pub fn state(&self) -> DrainState {
        self.inner.state.borrow().clone()
    }

    fn timings(&self) -> Timings {
        let c = &self.inner.cfg;
        Timings {
            endpoint_timeout: self.inner.kube.as_ref().map(|_| c.endpoint_timeout),
            quiet_period: c.quiet_period,
            drain_timeout: c.drain_timeout,
            // Proxy mode ends every client connection itself, whatever the app does on
            // SIGTERM: a graceful app stopping first would answer the proxy's next request on a
            // kept-alive client connection with a refused connection (502).
            wait_in_flight: c.app_shutdown == AppShutdown::Immediate
                || self.inner.proxy.get().is_some(),
        }
    }

    /// Upper bound of a whole drain, after which callers are released whatever happens.
    fn hard_bound(&self) -> Duration {
        let c = &self.inner.cfg;
        self.timings().endpoint_timeout.unwrap_or_default()
            + c.drain_timeout
            + c.report_timeout
            + c.poll_interval * 4
            + Duration::from_secs(2)
    }

    /// Starts the drain if none started, then waits for it; every caller gets the same report.
    pub async fn drain(&self, trigger: &str) -> DrainReport {
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            self.inner.state.send_replace(DrainState::Running {
                phase: if self.inner.kube.is_some() {
                    Phase::Endpoints
                } else {
                    Phase::Quiet
                },
                trigger: trigger.to_string(),
            });
            self.inner.metrics.draining.set(1);
            tokio::spawn(bounded(self.clone(), trigger.to_string()));
        }
        let mut rx = self.inner.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, DrainState::Done { .. }))
            .await
            .map(|s| s.clone());
        match state {
            Ok(DrainState::Done { report, .. }) => report,
            _ => failed_report(),
        }
    }
}

fn failed_report() -> DrainReport {
    DrainReport {
        duration_ms: 0,
        endpoints_ms: 0,
        quiet_ms: 0,
        in_flight_ms: 0,
        connections_at_start: 0,
        busy_at_start: 0,
        busy_at_end: 0,
        forced: true,
        forced_phases: vec![],
        handed_to_app: None,
        proxy: None,
    }
}

/// Observes the socket table for one drain.
struct Observer {
    ports: Vec<u16>,
    tracker: ArrivalTracker,
    use_passive: bool,
    admin: AdminListener,
    last: ConnCounts,
    last_at: Instant,
    /// Proxy mode: the proxy and its accepted count at the previous observation.
    proxy: Option<(ProxyHandle, u64)>,
}

impl Observer {
    async fn observe(&mut self, metrics: &Metrics) -> (ConnCounts, bool) {
        let proxied = self.proxy.as_mut().map(|(proxy, accepted)| {
            // Every open connection holds the drain: the proxy closes each at its safe moment.
            let c = proxy.counters();
            let arrived = c.accepted != *accepted;
            *accepted = c.accepted;
            (c.open, arrived)
        });
        let (direct, arrived_direct) = match sockets::snapshot().await {
            Ok(mut snap) => {
                if proxied.is_some() {
                    // Proxy mode: the proxy's own connections to the app come from loopback
                    // and are counted by the proxy. What is left reached the app directly (a
                    // Service with a numeric targetPort): watch it as Observe mode would. The
                    // netns-wide handshake counter would count the proxy's traffic too.
                    snap.sockets.retain(|s| !s.remote.ip().is_loopback());
                    snap.passive_opens = None;
                }
                // Read after the snapshot (see `ArrivalTracker`).
                let admin = self.use_passive.then(|| AdminServer {
                    port: self.admin.port,
                    accepted: self.admin.accepted.load(Ordering::SeqCst),
                });
                let now = Instant::now();
                let since = now.saturating_duration_since(self.last_at);
                self.last_at = now;
                let arrived = self.tracker.observe(&snap, &self.ports, admin, since);
                self.last = snap.counts(&self.ports);
                metrics.app_connections.set(self.last.established as i64);
                metrics.app_busy_connections.set(self.last.busy as i64);
                (self.last, arrived)
            }
            Err(e) => {
                // Unknown: keep the last counts (busy holds until the bound), no new arrivals.
                tracing::warn!(error = %e, "reading the socket table failed");
                (self.last, false)
            }
        };
        match proxied {
            Some((open, arrived)) => (
                ConnCounts {
                    listening_ports: direct.listening_ports,
                    established: open + direct.established,
                    busy: open + direct.busy,
                },
                arrived || arrived_direct,
            ),
            None => (direct, arrived_direct),
        }
    }
}

/// One drain, its callers released after [`Drainer::hard_bound`] whatever happens. Its span
/// names the trigger and, in a pod, the pod, so the lines logged inside do not repeat them.
#[tracing::instrument(name = "drain", skip_all, fields(
    %trigger,
    pod = this.inner.kube.as_ref().map(|k| k.name.as_str()),
    namespace = this.inner.kube.as_ref().map(|k| k.namespace.as_str()),
))]
async fn bounded(this: Drainer, trigger: String) {
    tracing::info!("drain starting");
    let worker = tokio::spawn(run(this.clone(), trigger.clone()).in_current_span());
    let bound = this.hard_bound();
    let report = match tokio::time::timeout(bound, worker).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "drain task failed; releasing callers");
            failed_report()
        }
        Err(_) => {
            tracing::error!(?bound, "drain overran its bounds; releasing callers");
            failed_report()
        }
    };
    this.inner.state.send_if_modified(|s| {
        if matches!(s, DrainState::Done { .. }) {
            false
        } else {
            *s = DrainState::Done { report, trigger };
            true
        }
    });
}

async fn run(d: Drainer, trigger: String) -> DrainReport {
    let inner = &d.inner;
    let cfg = &inner.cfg;
    if let Some(k) = &inner.kube {
        k.reporter.draining();
    }
    let endpoints: Option<EndpointWatch> = inner.kube.as_ref().map(|k| {
        watch_pod_ip(
            k.client.clone(),
            &k.namespace,
            k.pod_ip.clone(),
            inner.metrics.clone(),
        )
    });

    let mut observer = Observer {
        ports: inner.ports.clone(),
        tracker: match cfg.app_shutdown {
            AppShutdown::Immediate => ArrivalTracker::default(),
            // Requests on kept-alive connections are the app's to finish: only new connections
            // say that routing still sends traffic here.
            AppShutdown::Graceful => ArrivalTracker::new_connections_only(),
        },
        use_passive: cfg.signal == NewConnectionSignal::Netns,
        admin: inner.admin.clone(),
        last: ConnCounts::default(),
        last_at: Instant::now(),
        proxy: inner
            .proxy
            .get()
            .map(|p| (p.clone(), p.counters().accepted)),
    };
    let (start, _) = observer.observe(&inner.metrics).await;
    let at_start = Observation {
        endpoints_ready: None,
        new_connections: false,
        established: start.established,
        busy: start.busy,
    };
    let mut machine = DrainMachine::new(d.timings(), Instant::now(), at_start);
    let mut phase = machine.phase();
    if phase != Phase::Endpoints
        && let Some(p) = inner.proxy.get()
    {
        p.start_draining();
    }
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let report = loop {
        tick.tick().await;
        let (counts, arrived) = observer.observe(&inner.metrics).await;
        let obs = Observation {
            endpoints_ready: endpoints.as_ref().and_then(|e| *e.ready.borrow()),
            new_connections: arrived,
            established: counts.established,
            busy: counts.busy,
        };
        let done = machine.observe(Instant::now(), obs).cloned();
        if machine.phase() != phase {
            phase = machine.phase();
            // Phases only move forward: the Endpoints phase is over.
            if let Some(p) = inner.proxy.get() {
                p.start_draining();
            }
            tracing::info!(
                phase = phase.as_str(),
                established = counts.established,
                busy = counts.busy,
                "drain phase"
            );
            if phase != Phase::Done {
                inner.state.send_replace(DrainState::Running {
                    phase,
                    trigger: trigger.clone(),
                });
            }
        }
        if let Some(r) = done {
            break r;
        }
    };
    drop(endpoints);
    let report = DrainReport {
        proxy: inner
            .proxy
            .get()
            .map(|p| ProxyReport::from_counters(&p.counters(), report.forced)),
        ..report
    };

    let message = report.message();
    let result = if report.forced { "forced" } else { "completed" };
    inner
        .metrics
        .drains
        .get_or_create(&vec![("result", result)])
        .inc();
    inner
        .metrics
        .drain_duration
        .observe(report.duration_ms as f64 / 1000.0);
    tracing::info!(
        forced = report.forced,
        duration_ms = report.duration_ms,
        connections_at_start = report.connections_at_start,
        busy_at_end = report.busy_at_end,
        "{message}"
    );
    if let Some(k) = &inner.kube
        && !k
            .reporter
            .drained(&report.to_api(), cfg.report_timeout)
            .await
    {
        inner.metrics.report_failures.inc();
        tracing::warn!("drained condition not written in time; answering anyway (still retrying)");
    }
    if report.handed_to_app.is_some() {
        tokio::spawn(follow_app_shutdown(d.clone(), report.clone()).in_current_span());
    }
    report
}

/// Graceful app: after SIGTERM was released, watch the app close its connections and ports,
/// and add how long that took to the report (log, metric and, in a pod, the condition's
/// `appShutdownMs`; an app still up at the exit timeout is only logged).
async fn follow_app_shutdown(d: Drainer, report: DrainReport) {
    let inner = &d.inner;
    let cfg = &inner.cfg;
    let released = Instant::now();
    let ended = loop {
        tokio::time::sleep(cfg.poll_interval).await;
        match sockets::snapshot().await {
            Ok(snap) => {
                let c = snap.counts(&inner.ports);
                if c.established == 0 && c.listening_ports == 0 {
                    break Some(released.elapsed());
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the socket table failed"),
        }
        if released.elapsed() >= cfg.exit_timeout {
            break None;
        }
    };
    match ended {
        Some(t) => tracing::info!(
            after_release_ms = t.as_millis() as u64,
            "app shut down in {:.2}s after release",
            t.as_secs_f64()
        ),
        None => tracing::info!(
            "app still listening or connected {}s after release",
            cfg.exit_timeout.as_secs()
        ),
    }
    let Some(t) = ended else {
        return;
    };
    inner.metrics.app_shutdown_duration.observe(t.as_secs_f64());
    if let Some(k) = &inner.kube {
        let report = quiesce_api::DrainReport {
            app_shutdown_ms: Some(t.as_millis() as u64),
            ..report.to_api()
        };
        k.reporter.drained(&report, cfg.report_timeout).await;
    }
}
