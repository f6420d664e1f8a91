//! Unit tests of the admin endpoints: the answers, the drain's authorization and the bounds on
//! what callers cost.

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
