//! Process wiring: health-probe loop, admin server, signals.
//!
//! SIGTERM (or SIGINT): if no drain happened (no preStop configured), drain now — unless the
//! app's ports are already closed — then exit once the app's ports are closed or
//! `--exit-timeout` is spent. A second signal exits at once. In proxy mode the proxy stops
//! accepting once that drain is over; open connections end with the process.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    admin::{self, AdminState, Authorizer, Health},
    apiserver::ApiClient,
    config::{Config, ProbeKind, RunMode},
    drainer::{AdminListener, Drainer, KubeDrain},
    metrics::Metrics,
    pod::{OwnPod, Reporter},
    probe::{HealthTracker, probe_once},
    proxy::{self, ProxyHandle},
    sockets,
};

/// Runs the sidecar until a signal ends it.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let admin_accepts = Arc::new(AtomicU64::new(0));
    let listener = crate::listen::bind(SocketAddr::new(cfg.admin_bind, cfg.admin_port))
        .await
        .with_context(|| {
            format!(
                "binding the admin server to {}:{}",
                cfg.admin_bind, cfg.admin_port
            )
        })?;
    let addr = listener.local_addr()?;

    let (kube, auth) = match (&cfg.mode, &cfg.pod) {
        (RunMode::Kubernetes, Some(pod)) => match ApiClient::in_cluster() {
            Ok(client) => {
                let own = OwnPod::new(client.clone(), pod.clone(), metrics.clone());
                if let Some(after) = crate::fail_open::from_env() {
                    tokio::spawn(crate::fail_open::run(
                        client.clone(),
                        pod.clone(),
                        after,
                        metrics.clone(),
                    ));
                }
                let kube = KubeDrain {
                    client,
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    pod_ip: pod.ip.to_string(),
                    reporter: Reporter::spawn(own.clone()),
                };
                (Some(kube), Authorizer::PodTerminating(Some(Box::new(own))))
            }
            Err(e) => {
                // Keep serving health: the app must not suffer from the sidecar's problem.
                tracing::error!(error = %e, "no Kubernetes API access: preStop drains will be refused, SIGTERM still drains");
                (None, Authorizer::PodTerminating(None))
            }
        },
        _ => (None, Authorizer::Loopback),
    };

    let drainer = Drainer::new(
        cfg.drain.clone(),
        cfg.app_ports.clone(),
        kube,
        metrics.clone(),
        AdminListener {
            port: addr.port(),
            accepted: admin_accepts.clone(),
        },
    );
    let proxy = match &cfg.proxy {
        Some(p) => {
            let handle = proxy::start(p, metrics.clone()).await?;
            drainer.attach_proxy(handle.clone());
            Some(handle)
        }
        None => None,
    };
    let (health_tx, health_rx) = watch::channel(Health::default());
    tokio::spawn(probe_loop(
        cfg.clone(),
        drainer.clone(),
        health_tx,
        metrics.clone(),
    ));

    tracing::info!(%addr, mode = ?cfg.mode, app_ports = ?cfg.app_ports, "admin server listening");
    let accepts = admin_accepts.clone();
    let m = metrics.clone();
    let on_accept = move || {
        accepts.fetch_add(1, Ordering::SeqCst);
        m.admin_connections.inc();
    };
    let state = AdminState {
        mode: cfg.mode,
        ports: cfg.app_ports.clone(),
        drainer: drainer.clone(),
        health: health_rx,
        auth: Arc::new(auth),
        metrics,
        proxy: proxy.clone(),
        limits: Default::default(),
    };
    let server = tokio::spawn(admin::serve(listener, state, on_accept));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        res = server => {
            return match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("admin server failed"),
                Err(e) => Err(e).context("admin server task failed"),
            };
        }
    };
    tracing::info!(
        signal = which,
        "signal received; a second one exits at once"
    );
    let shutdown = async {
        shutdown(&cfg, &drainer, proxy.as_ref()).await;
    };
    tokio::select! {
        () = shutdown => {}
        _ = sigterm.recv() => tracing::warn!("second signal: exiting now"),
        _ = sigint.recv() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}

async fn listening_app_ports(ports: &[u16]) -> Option<usize> {
    sockets::snapshot()
        .await
        .ok()
        .map(|s| s.counts(ports).listening_ports)
}

/// Longest wait for a pending drain report before exiting; the pod's grace period (the
/// kubelet's SIGKILL) is the real bound.
const REPORT_FLUSH_BOUND: Duration = Duration::from_secs(600);

async fn shutdown(cfg: &Config, drainer: &Drainer, proxy: Option<&ProxyHandle>) {
    // A native sidecar gets SIGTERM after the app exited: nothing left to drain then.
    let app_up = listening_app_ports(&cfg.app_ports).await.unwrap_or(1) > 0;
    if drainer.started() || app_up {
        drainer.drain("sigterm").await;
    }
    if let Some(p) = proxy {
        p.stop_accepting();
    }
    let deadline = Instant::now() + cfg.drain.exit_timeout;
    loop {
        match listening_app_ports(&cfg.app_ports).await {
            Some(0) => {
                // A report the apiserver has not taken yet (it was unreachable) is worth
                // staying for: the kubelet's grace period ends the wait, not a bound of ours
                // (30 s here lost the report of a drain made early in a 30 s outage).
                if !drainer.flush_report(REPORT_FLUSH_BOUND).await {
                    tracing::warn!("drain report still not written; exiting without it");
                }
                tracing::info!("app ports closed; exiting");
                return;
            }
            None => {
                tracing::warn!("cannot read the socket table; exiting");
                return;
            }
            Some(_) if Instant::now() >= deadline => {
                tracing::warn!("app still listening after --exit-timeout; exiting");
                return;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn probe_loop(
    cfg: Config,
    drainer: Drainer,
    tx: watch::Sender<Health>,
    metrics: Arc<Metrics>,
) {
    let p = cfg.probe;
    let mut tracker = HealthTracker::new(p.success_threshold, p.failure_threshold);
    let mut count = 0u64;
    let mut ever_healthy = false;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + tracker.next_delay(p.period);
        if drainer.started() {
            // No probe traffic during a drain: it would count as a new connection.
            continue;
        }
        let result = if p.kind == ProbeKind::None {
            Ok(())
        } else {
            probe_once(&p).await
        };
        count += 1;
        let was = tracker.healthy();
        let healthy = tracker.record(result.is_ok());
        let label = if result.is_ok() { "success" } else { "failure" };
        metrics.probes.get_or_create(&vec![("result", label)]).inc();
        metrics.app_healthy.set(i64::from(healthy));
        if was != healthy {
            let error = result.as_ref().err().map(tracing::field::display);
            tracing::info!(healthy, error, "app health changed");
        }
        ever_healthy |= healthy;
        tx.send_replace(Health {
            healthy,
            last_error: result.err().map(|e| e.to_string()),
            probes: count,
            ever_healthy,
        });
    }
}
