//! Integration on loopback: the real `quiesce-sidecar` binary (standalone mode) next to a real
//! `demo-app` process, load from the loadgen, the drain triggered as the kubelet would (GET the
//! drain endpoint, then SIGTERM the app when it answers).
//!
//! On loopback there is no Service: a stand-in for kube-proxy polls the sidecar's `/readyz`
//! and, a moment after it turns 503, stops sending new requests to the old backend (they go to
//! a second demo-app, the "new version"). What the sidecar must guarantee is then testable:
//! the preStop answer comes only once requests stopped arriving and in-flight work is done, so
//! an app that exits at once on SIGTERM loses nothing.
//!
//! Tests run one at a time: they share the host's network namespace, and the netns-wide
//! new-connection signal would see each other's traffic.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use quiesce_loadgen::{self as loadgen, LoadConfig, SlowMix, Summary, Targets};
use serde_json::Value;

mod common;
use common::{Proc, demo_app, get, kube_proxy, prestop, serial, start_sidecar, wait_until};

fn sidecar(app: &Proc, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiesce-sidecar"));
    cmd.args([
        "--mode",
        "standalone",
        "--admin-bind",
        "127.0.0.1",
        "--admin-port",
        "0",
    ])
    .args(["--app-ports", &app.addr.port().to_string()])
    .args([
        "--probe-path",
        "/healthz",
        "--probe-period",
        "100ms",
        "--probe-timeout",
        "100ms",
    ])
    .args(["--poll-interval", "20ms"])
    .args(extra)
    .env("RUST_LOG", "info");
    start_sidecar(cmd)
}

/// One slow request outside the load, started now; resolves to its status (0: failed).
fn slow_request(app: SocketAddr, ms: u64) -> tokio::task::JoinHandle<u16> {
    tokio::task::spawn_blocking(move || get(app, &format!("/slow?ms={ms}")).0)
}

fn url(p: &Proc) -> String {
    format!("http://{}", p.addr)
}

fn show(name: &str, s: &Summary, report: &Value, took: Duration) {
    eprintln!(
        "[{name}] sent={} ok={} failed={} (reset={} refused={} timeout={} status={} other={}) slow {}/{} by_version={:?} drain_took={:?} report={}",
        s.sent,
        s.ok,
        s.failed(),
        s.reset,
        s.refused,
        s.timeout,
        s.http_status,
        s.other,
        s.slow_ok,
        s.slow_sent,
        s.ok_by_version,
        took,
        report
    );
}

async fn replacement_under_load(
    with_sidecar: bool,
    keep_alive: bool,
) -> (Summary, Value, Duration) {
    let mut old = demo_app("v1", "immediate");
    let new = demo_app("v2", "graceful");
    let side = with_sidecar.then(|| {
        sidecar(
            &old,
            &[
                "--quiet-period",
                "500ms",
                "--drain-timeout",
                "15s",
                "--new-connection-signal",
                "ports",
            ],
        )
    });
    let targets = Targets::new([url(&old), url(&new)]);
    let mut cfg = LoadConfig::new(url(&old), 200.0);
    cfg.targets = targets.clone();
    cfg.keep_alive = keep_alive;
    cfg.slow = Some(SlowMix {
        ms: 800,
        fraction: 0.03,
    });
    cfg.timeout = Duration::from_secs(20);
    let load = loadgen::spawn(cfg);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A slow request surely in flight when termination starts.
    let slow = slow_request(old.addr, 2500);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (report, took) = match &side {
        Some(side) => {
            let proxy = kube_proxy(
                targets.clone(),
                url(&old),
                side.addr,
                Duration::from_millis(300),
            );
            let (code, v, took) = prestop(side.addr).await;
            assert_eq!(code, 200, "drain answer: {v}\n{}", side.output());
            proxy.await.unwrap();
            (v["report"].clone(), took)
        }
        None => {
            // Plain Deployment: endpoints removal and SIGTERM race; here SIGTERM wins at once.
            let t = targets.clone();
            let u = url(&old);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                t.set_active(&u, false);
            });
            (Value::Null, Duration::ZERO)
        }
    };
    old.signal("-TERM");
    assert!(
        old.wait_exit(Duration::from_secs(5)).is_some(),
        "old app did not exit"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let summary = load.finish().await;
    let slow_status = slow.await.unwrap();
    if with_sidecar {
        assert_eq!(
            slow_status, 200,
            "the slow request in flight must finish before the drain returns"
        );
        assert!(
            took >= Duration::from_millis(2000),
            "drain returned before the slow request finished: {took:?}"
        );
    }
    (summary, report, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_at_once_app_loses_no_request_when_drained() {
    let _g = serial().await;
    let (s, report, took) = replacement_under_load(true, false).await;
    show("sidecar, new connection per request", &s, &report, took);
    assert_eq!(s.failed(), 0, "{s:#?}");
    assert!(
        s.ok_by_version.get("v1").copied().unwrap_or(0) > 100
            && s.ok_by_version.get("v2").copied().unwrap_or(0) > 100,
        "{s:?}"
    );
    assert_eq!(s.slow_ok, s.slow_sent);
    assert_eq!(report["forced"], false, "{report}");
    assert!(report["busy_at_start"].as_u64().unwrap() >= 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_at_once_app_loses_no_request_when_drained_keep_alive() {
    let _g = serial().await;
    let (s, report, took) = replacement_under_load(true, true).await;
    show("sidecar, keep-alive", &s, &report, took);
    assert_eq!(s.failed(), 0, "{s:#?}");
    assert!(
        s.ok_by_version.get("v1").copied().unwrap_or(0) > 100
            && s.ok_by_version.get("v2").copied().unwrap_or(0) > 100,
        "{s:?}"
    );
    assert_eq!(report["forced"], false, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sidecar_the_same_replacement_loses_requests() {
    let _g = serial().await;
    let (s, report, took) = replacement_under_load(false, false).await;
    show("no sidecar, SIGTERM at once", &s, &report, took);
    assert!(
        s.failed() > 0,
        "the control run should lose requests: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hitting_its_timeout_is_reported_as_forced() {
    let _g = serial().await;
    let app = demo_app("v1", "immediate");
    let side = sidecar(
        &app,
        &["--quiet-period", "200ms", "--drain-timeout", "1500ms"],
    );
    let slow = slow_request(app.addr, 6000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, v, took) = prestop(side.addr).await;
    eprintln!("[forced] drain took {took:?}: {v}");
    assert_eq!(code, 200);
    let r = &v["report"];
    assert_eq!(r["forced"], true, "{v}");
    assert_eq!(r["forced_phases"], serde_json::json!(["in_flight"]));
    assert_eq!(r["busy_at_end"], 1);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("forced (in_flight timeout, 1 busy left)"),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "{took:?}"
    );
    app.signal("-TERM");
    assert_eq!(
        slow.await.unwrap(),
        0,
        "the slow request is cut, as the forced report says"
    );
    let (_, m) = get(side.addr, "/metrics");
    assert!(
        m.contains("quiesce_sidecar_drains_total{result=\"forced\"} 1"),
        "{m}"
    );
    // Every line the binary wrote has the shared shape; the drain's lines carry its span.
    let lines: Vec<Value> = side
        .output
        .lock()
        .unwrap()
        .iter()
        .map(|l| quiesce_api::log_line::check(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let in_drain = |message: &str| {
        lines.iter().any(|l| {
            l["message"].as_str().is_some_and(|m| m.contains(message))
                && l["span"]["name"] == "drain"
                && l["span"]["trigger"] == "prestop"
        })
    };
    for message in ["drain starting", "drain phase", "forced (in_flight timeout"] {
        assert!(
            in_drain(message),
            "no {message:?} line in the drain's span:\n{}",
            side.output()
        );
    }
}

/// Kept-alive clients that never stop sending (a client pool reaching the pod through a
/// ClusterIP: kube-proxy never moves an established connection), once in each app shutdown mode.
/// Returns the drain report and how long the preStop call took.
async fn drain_with_endless_keep_alive(app_shutdown: &str) -> (Value, Duration, Summary) {
    let app = demo_app("v1", "graceful");
    let side = sidecar(
        &app,
        &[
            "--quiet-period",
            "300ms",
            "--drain-timeout",
            "3s",
            "--new-connection-signal",
            "ports",
            "--app-shutdown",
            app_shutdown,
        ],
    );
    let mut cfg = LoadConfig::new(url(&app), 200.0);
    cfg.keep_alive = true;
    let load = loadgen::spawn(cfg);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, v, took) = prestop(side.addr).await;
    assert_eq!(code, 200, "{v}\n{}", side.output());
    load.stop();
    let summary = load.finish().await;
    (v["report"].clone(), took, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_app_is_released_after_the_quiet_period_despite_kept_alive_traffic() {
    let _g = serial().await;
    let (graceful, took, s) = drain_with_endless_keep_alive("graceful").await;
    eprintln!("[graceful] drain took {took:?}: {graceful}; load {s:?}");
    assert_eq!(graceful["forced"], false, "{graceful}");
    assert!(
        graceful["handed_to_app"].as_u64().unwrap() >= 1,
        "the kept-alive connections are left to the app: {graceful}"
    );
    assert_eq!(graceful["in_flight_ms"], 0, "{graceful}");
    assert!(s.ok > 100 && s.failed() == 0, "{s:?}");

    // The same traffic holds an Immediate drain until its bound: requests keep arriving.
    let (immediate, took, _) = drain_with_endless_keep_alive("immediate").await;
    eprintln!("[immediate] drain took {took:?}: {immediate}");
    assert_eq!(immediate["forced"], true, "{immediate}");
    assert_eq!(immediate["forced_phases"], serde_json::json!(["quiet"]));
    assert!(immediate.get("handed_to_app").is_none(), "{immediate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_does_not_hold_the_drain_and_calls_share_one_drain() {
    let _g = serial().await;
    let app = demo_app("v1", "immediate");
    let side = sidecar(&app, &["--quiet-period", "300ms", "--drain-timeout", "10s"]);
    // An idle keep-alive connection: one request answered, connection left open.
    let mut ka = TcpStream::connect(app.addr).unwrap();
    write!(ka, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(ka.read(&mut buf).unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let calls: Vec<_> = (0..3).map(|_| tokio::spawn(prestop(side.addr))).collect();
    let mut reports = Vec::new();
    for c in calls {
        let (code, v, took) = c.await.unwrap();
        assert_eq!(code, 200);
        assert!(
            took < Duration::from_secs(3),
            "idle keep-alive held the drain: {took:?} {v}"
        );
        reports.push(v["report"].clone());
    }
    eprintln!("[keep-alive] report: {}", reports[0]);
    assert!(reports.iter().all(|r| *r == reports[0]), "{reports:?}");
    assert_eq!(reports[0]["forced"], false);
    assert!(reports[0]["connections_at_start"].as_u64().unwrap() >= 1);
    assert_eq!(reports[0]["busy_at_start"], 0);
    // Repeated later: same report, no second drain.
    let (_, again, _) = prestop(side.addr).await;
    assert_eq!(again["report"], reports[0]);
    let (_, m) = get(side.addr, "/metrics");
    assert!(
        m.contains("quiesce_sidecar_drains_total{result=\"completed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("quiesce_sidecar_drain_requests_total{trigger=\"http\",result=\"accepted\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_period_waits_for_traffic_to_stop_netns_signal() {
    let _g = serial().await;
    let app = demo_app("v1", "immediate");
    let side = sidecar(
        &app,
        &[
            "--quiet-period",
            "500ms",
            "--drain-timeout",
            "15s",
            "--new-connection-signal",
            "netns",
        ],
    );
    let targets = Targets::new([url(&app)]);
    let mut cfg = LoadConfig::new(url(&app), 100.0);
    cfg.targets = targets.clone();
    let load = loadgen::spawn(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Slow endpoint propagation: requests keep coming for 1.2 s after readiness turned 503.
    let proxy = kube_proxy(targets, url(&app), side.addr, Duration::from_millis(1200));
    let (code, v, took) = prestop(side.addr).await;
    proxy.await.unwrap();
    app.signal("-TERM");
    let s = load.finish().await;
    show("netns signal", &s, &v["report"], took);
    assert_eq!(code, 200);
    assert_eq!(v["report"]["forced"], false, "{v}");
    // Quiet phase: the 1.2 s of late traffic, then the 0.5 s quiet period.
    let quiet = v["report"]["quiet_ms"].as_u64().unwrap();
    assert!(
        quiet >= 1600,
        "quiet phase ended while requests still arrived: {v}"
    );
    // Every request was sent before SIGTERM; the ones after go nowhere (no second backend).
    assert_eq!(s.failed(), s.no_target, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_without_prestop_drains_then_exits_when_the_app_is_gone() {
    let _g = serial().await;
    let mut app = demo_app("v1", "graceful");
    let mut side = sidecar(
        &app,
        &[
            "--quiet-period",
            "200ms",
            "--drain-timeout",
            "5s",
            "--exit-timeout",
            "10s",
        ],
    );
    side.signal("-TERM");
    wait_until(Duration::from_secs(2), || {
        get(side.addr, "/readyz").0 == 503
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get(side.addr, "/status").1.contains("\"state\":\"done\"") {
        assert!(
            Instant::now() < deadline,
            "drain not done within 5s:\n{}",
            side.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Drained, but the app still listens: the sidecar stays.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        side.child.try_wait().unwrap().is_none(),
        "sidecar exited while the app still listens"
    );
    app.signal("-TERM");
    assert!(app.wait_exit(Duration::from_secs(5)).is_some());
    let st = side
        .wait_exit(Duration::from_secs(5))
        .expect("sidecar did not exit after the app");
    assert!(st.success(), "{st:?}\n{}", side.output());
    assert!(side.output().contains("app ports closed; exiting"));
}

#[test]
fn invalid_configuration_fails_at_start_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_quiesce-sidecar"))
        .args([
            "--mode",
            "standalone",
            "--app-ports",
            "8080",
            "--probe-status",
            "abc",
            "--drain-mode",
            "proxy",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration")
            && err.contains("--probe-status")
            && err.contains("proxy"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quiesce-sidecar"))
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_IP")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("POD_NAME, POD_NAMESPACE, POD_IP"));
}

/// Whether the server closed `s` within `bound` (EOF or reset on read).
async fn closed_within(s: &mut tokio::net::TcpStream, bound: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(bound, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_peer_does_not_starve_the_kubelet() {
    let _g = serial().await;
    let app = demo_app("v1", "graceful");
    let side = sidecar(&app, &[]);
    // Another pod (127.0.0.2) opens many connections and sends nothing.
    let mut flood = Vec::new();
    for _ in 0..48 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(sock.connect(side.addr).await.unwrap());
    }
    let mut closed_at_once = 0;
    for s in &mut flood {
        if closed_within(s, Duration::from_millis(200)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 48 - 16,
        "only {closed_at_once} of 48 connections from one peer were refused"
    );
    // The kubelet (127.0.0.1 here) is still answered while the flood holds its slots.
    let answered = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let code = get(side.addr, "/readyz").0;
        (code, t.elapsed(), side)
    });
    let (code, took, _side) = answered.await.unwrap();
    assert_eq!(code, 200, "readyz during the flood");
    assert!(took < Duration::from_secs(2), "readyz took {took:?}");
    // A connection that never sends a request head is closed after the head timeout.
    let mut held_closed = 0;
    for s in &mut flood {
        if closed_within(s, Duration::from_secs(7)).await {
            held_closed += 1;
        }
    }
    assert_eq!(held_closed, 48, "idle connections were not closed");
}
