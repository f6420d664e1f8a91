//! Admin server: `/livez`, `/readyz`, the drain endpoint (preStop target), `/status`,
//! `/metrics`. Reachable from the pod network, so nothing it answers costs more than a bounded
//! amount of work, and nothing but the pod's own deletion (or loopback in standalone mode)
//! starts a drain.

mod serve;

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

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicU64, time::Duration};

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::{DrainConfig, NewConnectionSignal};
    use crate::drainer::AdminListener;

    fn state(healthy: bool) -> AdminState {
        state_with_health(healthy).0
    }

    fn state_with_health(healthy: bool) -> (AdminState, watch::Sender<Health>) {
        let metrics = Arc::new(Metrics::default());
        let cfg = DrainConfig {
            app_shutdown: crate::config::AppShutdown::Immediate,
            endpoint_timeout: Duration::from_secs(1),
            quiet_period: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(2),
            signal: NewConnectionSignal::Ports,
            poll_interval: Duration::from_millis(10),
            exit_timeout: Duration::from_secs(1),
            report_timeout: Duration::from_secs(1),
        };
        // Port 1: nothing listens there, so the drain has nothing to wait for.
        let drainer = Drainer::new(
            cfg,
            vec![1],
            None,
            metrics.clone(),
            AdminListener {
                port: 0,
                accepted: Arc::new(AtomicU64::new(0)),
            },
        );
        let (tx, health) = watch::channel(Health {
            healthy,
            ever_healthy: healthy,
            ..Default::default()
        });
        let state = AdminState {
            mode: RunMode::Standalone,
            ports: vec![1],
            drainer,
            health,
            auth: Arc::new(Authorizer::Loopback),
            metrics,
            proxy: None,
            limits: Default::default(),
        };
        (state, tx)
    }

    async fn get(s: AdminState, peer: &str, path: &str) -> (StatusCode, String) {
        call(s, peer, Method::GET, path).await
    }

    async fn call(s: AdminState, peer: &str, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let res = handle(s, peer.parse().unwrap(), req).await;
        let code = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn drain_from_outside_loopback_is_refused_in_standalone_mode() {
        let s = state(true);
        let (code, body) = get(s.clone(), "10.0.0.7:5555", SIDECAR_DRAIN_PATH).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("not loopback"), "{body}");
        assert!(!s.drainer.started());
        assert_eq!(
            get(s.clone(), "10.0.0.7:5555", "/readyz").await.0,
            StatusCode::OK
        );
        // IPv4-mapped loopback is loopback.
        assert_eq!(
            loopback_only("[::ffff:127.0.0.1]:1".parse().unwrap()),
            Ok(())
        );
        assert!(loopback_only("[::ffff:10.0.0.1]:1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn drain_from_loopback_turns_readiness_off_and_reports() {
        let s = state(true);
        let (code, body) = get(s.clone(), "127.0.0.1:5555", SIDECAR_DRAIN_PATH).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["report"]["forced"], false);
        assert_eq!(
            get(s.clone(), "127.0.0.1:5555", "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (_, status) = get(s.clone(), "127.0.0.1:5555", "/status").await;
        assert!(status.contains("\"state\":\"done\""), "{status}");
        // Repeated call: same drain, same report, even from elsewhere once it started.
        let (code, again) = get(s.clone(), "10.0.0.7:1", SIDECAR_DRAIN_PATH).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&again).unwrap()["report"],
            v["report"]
        );
        let (_, m) = get(s, "127.0.0.1:5555", "/metrics").await;
        assert!(
            m.contains("quiesce_sidecar_drains_total{result=\"completed\"} 1"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn readiness_follows_app_health() {
        assert_eq!(
            get(state(false), "127.0.0.1:1", "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(state(false), "127.0.0.1:1", "/livez").await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused_without_draining() {
        let s = state(true);
        assert_eq!(
            get(s.clone(), "127.0.0.1:1", "/drainz").await.0,
            StatusCode::NOT_FOUND
        );
        for (method, path) in [
            (Method::DELETE, SIDECAR_DRAIN_PATH),
            (Method::POST, "/readyz"),
            (Method::PUT, "/metrics"),
        ] {
            let (code, _) = call(s.clone(), "127.0.0.1:1", method, path).await;
            assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        }
        assert!(!s.drainer.started());
        // The preStop hook's POST is a drain call like the kubelet's GET.
        let (code, _) = call(s.clone(), "127.0.0.1:1", Method::POST, SIDECAR_DRAIN_PATH).await;
        assert_eq!(code, StatusCode::OK);
        assert!(s.drainer.started());
    }

    #[test]
    fn readiness_hold_is_read_from_the_query_and_capped() {
        assert_eq!(
            readiness_hold(Some("waitMillis=800")),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            readiness_hold(Some("a=1&waitMillis=20")),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            readiness_hold(Some("waitMillis=99999999")),
            Some(MAX_READINESS_HOLD)
        );
        assert_eq!(readiness_hold(Some("waitMillis=soon")), None);
        assert_eq!(readiness_hold(Some("wait=1")), None);
        assert_eq!(readiness_hold(None), None);
    }

    #[tokio::test]
    async fn held_readiness_answers_when_the_app_turns_healthy() {
        let (s, health) = state_with_health(false);
        let s2 = s.clone();
        let probe = tokio::spawn(get(s, "10.0.0.7:1", "/readyz?waitMillis=5000"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!probe.is_finished(), "held while the app is unhealthy");
        health.send_modify(|h| h.healthy = true);
        let (code, body) = tokio::time::timeout(Duration::from_secs(4), probe)
            .await
            .expect("answered on the health change, not at the hold's end")
            .unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        let (_, m) = get(s2, "127.0.0.1:1", "/metrics").await;
        assert!(
            m.contains("quiesce_sidecar_readiness_holds_total{outcome=\"ready\"} 1"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn held_readiness_ends_unready_after_the_hold() {
        let (s, _health) = state_with_health(false);
        let (code, body) = get(s, "10.0.0.7:1", "/readyz?waitMillis=20").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "app unhealthy\n");
    }

    #[tokio::test]
    async fn an_app_that_was_healthy_once_is_not_held() {
        let (s, health) = state_with_health(false);
        health.send_modify(|h| h.ever_healthy = true);
        let answer = tokio::time::timeout(
            Duration::from_secs(4),
            get(s, "10.0.0.7:1", "/readyz?waitMillis=5000"),
        )
        .await
        .expect("answered at once: the kubelet's failure threshold counts from here");
        assert_eq!(
            answer,
            (StatusCode::SERVICE_UNAVAILABLE, "app unhealthy\n".into())
        );
    }

    #[tokio::test]
    async fn a_draining_pod_is_not_held() {
        let (s, _health) = state_with_health(true);
        let (code, _) = get(s.clone(), "127.0.0.1:5555", SIDECAR_DRAIN_PATH).await;
        assert_eq!(code, StatusCode::OK);
        let answer = tokio::time::timeout(
            Duration::from_secs(4),
            get(s, "10.0.0.7:1", "/readyz?waitMillis=5000"),
        )
        .await
        .expect("answered at once");
        assert_eq!(
            answer,
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        );
    }

    #[tokio::test]
    async fn only_a_few_readiness_calls_are_held_at_once() {
        let (s, _health) = state_with_health(false);
        let held: Vec<_> = (0..HELD_READINESS_CALLS)
            .map(|_| tokio::spawn(get(s.clone(), "10.0.0.7:1", "/readyz?waitMillis=5000")))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(4),
            get(s, "10.0.0.7:1", "/readyz?waitMillis=5000"),
        )
        .await
        .expect("one call too many is answered at once");
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
        held.iter().for_each(|h| h.abort());
    }
}
