//! Admin server: `/livez`, `/readyz`, the drain endpoint (preStop target), `/status`,
//! `/metrics`. Reachable from the pod network, so nothing it answers costs more than a bounded
//! amount of work, and nothing but the pod's own deletion (or loopback in standalone mode)
//! starts a drain.

mod serve;
#[cfg(test)]
mod tests;

pub use serve::serve;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use quiesce_api::constants::SIDECAR_DRAIN_PATH;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore, watch};

use crate::{
    config::RunMode, drainer::Drainer, metrics::Metrics, pod::OwnPod, proxy::ProxyHandle, sockets,
};

/// The app's health as last probed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Healthy per thresholds.
    pub healthy: bool,
    /// Last probe's error, if it failed.
    pub last_error: Option<String>,
    /// Probes run so far.
    pub probes: u64,
    /// The app passed its health check at least once since the sidecar started.
    pub ever_healthy: bool,
}

/// Who may start a drain.
#[derive(Debug, Clone)]
pub enum Authorizer {
    /// Only callers on loopback.
    Loopback,
    /// Anyone, but only once the pod is terminating as its watch tells (`None`: no API
    /// access, so every call is refused).
    PodTerminating(Option<Box<OwnPod>>),
}

/// How long a drain call waits for the pod watch to report the deletion the kubelet acts on.
const TERMINATING_WAIT: Duration = Duration::from_secs(3);

/// Why a drain call was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not from loopback in standalone mode.
    NotLoopback(SocketAddr),
    /// The pod is not terminating.
    NotTerminating,
    /// The API could not tell.
    Unverifiable(String),
    /// Too many calls are already waiting to be verified.
    Busy,
}

impl Authorizer {
    /// Decides on a drain call from `peer`.
    pub async fn check(&self, peer: SocketAddr) -> Result<(), Refusal> {
        match self {
            Authorizer::Loopback => loopback_only(peer),
            Authorizer::PodTerminating(None) => {
                Err(Refusal::Unverifiable("no Kubernetes API access".into()))
            }
            Authorizer::PodTerminating(Some(pod)) => {
                if pod.is_terminating(TERMINATING_WAIT).await {
                    Ok(())
                } else {
                    Err(Refusal::NotTerminating)
                }
            }
        }
    }
}

/// Standalone mode's rule: loopback callers only (IPv4-mapped loopback included).
pub fn loopback_only(peer: SocketAddr) -> Result<(), Refusal> {
    if serve::canonical(peer.ip()).is_loopback() {
        Ok(())
    } else {
        Err(Refusal::NotLoopback(peer))
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Run mode, shown in `/status`.
    pub mode: RunMode,
    /// App ports.
    pub ports: Vec<u16>,
    /// The drain.
    pub drainer: Drainer,
    /// App health.
    pub health: watch::Receiver<Health>,
    /// Drain authorization.
    pub auth: Arc<Authorizer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Proxy mode: the proxy, whose counters `/status` shows.
    pub proxy: Option<ProxyHandle>,
    /// Bounds what callers cost: see [`Limits`].
    pub limits: Arc<Limits>,
}

/// What keeps callers of the admin port from costing more than a bounded amount of work.
#[derive(Debug)]
pub struct Limits {
    /// Drain calls waiting for the pod watch to report the deletion: a few at once (the
    /// kubelet makes one); the rest are refused at once instead of holding connections.
    waiting_drain_calls: Semaphore,
    /// `/readyz` calls held until the app turns healthy: a few at once; the rest are answered
    /// at once.
    held_readiness_calls: Semaphore,
    /// The connection counts `/status` shows, reused for [`STATUS_MAX_AGE`]: a socket-table
    /// dump per request would let a caller spend the sidecar's CPU.
    status_connections: Mutex<Option<(tokio::time::Instant, serde_json::Value)>>,
}

/// How many drain calls may wait for the pod's deletion at once.
const WAITING_DRAIN_CALLS: usize = 4;
/// How many `/readyz?waitMillis=` calls may be held at once (the kubelet makes one at a time).
const HELD_READINESS_CALLS: usize = 4;
/// The longest `/readyz` hold granted, whatever the caller asks.
const MAX_READINESS_HOLD: Duration = Duration::from_secs(5);
/// How long `/status` reuses its connection counts.
const STATUS_MAX_AGE: Duration = Duration::from_secs(1);

impl Default for Limits {
    fn default() -> Self {
        Self {
            waiting_drain_calls: Semaphore::new(WAITING_DRAIN_CALLS),
            held_readiness_calls: Semaphore::new(HELD_READINESS_CALLS),
            status_connections: Mutex::new(None),
        }
    }
}

/// The admin server's answers.
pub type AdminResponse = Response<Full<Bytes>>;

/// Answers one admin request from `peer`: five fixed paths, so a match is the whole router.
pub async fn handle<B>(s: AdminState, peer: SocketAddr, req: Request<B>) -> AdminResponse {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/livez" if read => text(StatusCode::OK, "ok\n"),
        "/readyz" if read => readyz(&s, req.uri().query()).await,
        SIDECAR_DRAIN_PATH if read || req.method() == Method::POST => drain(&s, peer).await,
        "/status" if read => status(&s).await,
        "/metrics" if read => metrics(&s),
        "/livez" | "/readyz" | SIDECAR_DRAIN_PATH | "/status" | "/metrics" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(code: StatusCode, body: &'static str) -> AdminResponse {
    respond(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(code: StatusCode, body: &serde_json::Value) -> AdminResponse {
    respond(code, "application/json", Bytes::from(body.to_string()))
}

fn respond(code: StatusCode, content_type: &'static str, body: Bytes) -> AdminResponse {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}

/// `/readyz`, and `/readyz?waitMillis=N`: while a new pod's app has not been healthy yet, hold
/// the answer up to N ms (at most [`MAX_READINESS_HOLD`]) and give it the moment the app turns
/// healthy. The kubelet probes a new container at start and then once a period; a probe that
/// failed because the app was not up yet could leave the pod unready for up to a period after it
/// is. Held, the probe in flight when the app turns healthy answers then: a new pod's readiness
/// follows its app's health as an event, not the probe's clock. Only until the app is healthy
/// once: an app that turns unhealthy later is answered at once, so the kubelet's failure
/// threshold takes it out of the endpoints as fast as without the hold. The webhook sets N below
/// the probe's timeout.
async fn readyz(s: &AdminState, query: Option<&str>) -> AdminResponse {
    let mut verdict = readiness(s);
    if verdict.is_err()
        && !s.drainer.started()
        && !s.health.borrow().ever_healthy
        && let Some(hold) = readiness_hold(query)
        && let Ok(_permit) = s.limits.held_readiness_calls.try_acquire()
    {
        let mut health = s.health.clone();
        // Ends early only on health; a drain that starts meanwhile keeps the answer 503.
        let _ = tokio::time::timeout(hold, health.wait_for(|h| h.healthy)).await;
        verdict = readiness(s);
        let outcome = if verdict.is_ok() { "ready" } else { "unready" };
        s.metrics
            .readiness_holds
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }
    match verdict {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

fn readiness(s: &AdminState) -> Result<(), &'static str> {
    if s.drainer.started() {
        Err("draining\n")
    } else if !s.health.borrow().healthy {
        Err("app unhealthy\n")
    } else {
        Ok(())
    }
}

/// The hold a `/readyz` query asks for (`waitMillis=N`), capped; none if absent or malformed.
pub fn readiness_hold(query: Option<&str>) -> Option<Duration> {
    let millis = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("waitMillis="))?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(millis).min(MAX_READINESS_HOLD))
}

async fn drain(s: &AdminState, peer: SocketAddr) -> AdminResponse {
    // Once a drain started, joining it needs no new check: it cannot be started twice.
    let verdict = if s.drainer.started() {
        Ok(())
    } else {
        match s.limits.waiting_drain_calls.try_acquire() {
            Ok(_permit) => s.auth.check(peer).await,
            Err(_) => Err(Refusal::Busy),
        }
    };
    if let Err(r) = verdict {
        let (code, why) = match &r {
            Refusal::NotLoopback(p) => (
                StatusCode::FORBIDDEN,
                format!("drain refused: {p} is not loopback (standalone mode)"),
            ),
            Refusal::NotTerminating => (
                StatusCode::FORBIDDEN,
                format!(
                    "drain refused: the pod is not terminating (no deletion seen within {}s)",
                    TERMINATING_WAIT.as_secs()
                ),
            ),
            Refusal::Busy => (
                StatusCode::TOO_MANY_REQUESTS,
                "drain refused: too many drain calls waiting for the pod's deletion".to_string(),
            ),
            Refusal::Unverifiable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("drain refused: cannot verify the pod is terminating: {e}"),
            ),
        };
        tracing::warn!(%peer, "{why}");
        s.metrics
            .drain_requests
            .get_or_create(&vec![("trigger", "http"), ("result", "refused")])
            .inc();
        return json(code, &json!({"error": why}));
    }
    s.metrics
        .drain_requests
        .get_or_create(&vec![("trigger", "http"), ("result", "accepted")])
        .inc();
    let report = s.drainer.drain("prestop").await;
    json(
        StatusCode::OK,
        &json!({"drained": true, "report": report, "message": report.message()}),
    )
}

async fn status(s: &AdminState) -> AdminResponse {
    let connections = {
        let mut cached = s.limits.status_connections.lock().await;
        match &*cached {
            Some((at, v)) if at.elapsed() < STATUS_MAX_AGE => v.clone(),
            _ => {
                let v = match sockets::snapshot().await {
                    Ok(snap) => json!(snap.counts(&s.ports)),
                    Err(e) => json!({"error": e.to_string()}),
                };
                *cached = Some((tokio::time::Instant::now(), v.clone()));
                v
            }
        }
    };
    let health = s.health.borrow().clone();
    let mut v = json!({
        "mode": s.mode,
        "app_ports": s.ports,
        "health": health,
        "ready": health.healthy && !s.drainer.started(),
        "drain": s.drainer.state(),
        "connections": connections,
    });
    if let Some(p) = &s.proxy {
        let listeners: Vec<_> = p
            .listeners()
            .iter()
            .map(|(addr, upstream)| json!({"addr": addr.to_string(), "upstream": upstream}))
            .collect();
        v["proxy"] = json!({"listeners": listeners, "counters": p.counters()});
    }
    json(StatusCode::OK, &v)
}

fn metrics(s: &AdminState) -> AdminResponse {
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Bytes::from(s.metrics.encode()),
    )
}
