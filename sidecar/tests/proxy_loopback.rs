//! Proxy drain mode on loopback: the real `quiesce-sidecar` binary (standalone mode,
//! `--drain-mode proxy`) in front of a real `demo-app` process, or in front of a tiny upstream
//! written here when the demo app cannot play the part (a WebSocket-style upgrade, a non-HTTP
//! protocol). The drain is triggered as the kubelet would (GET the drain endpoint), and every
//! request's outcome is counted.
//!
//! In standalone mode the proxy starts draining as soon as the drain starts (there is no
//! EndpointSlice phase): kept-alive HTTP/1.1 connections get `Connection: close` on their next
//! response or are closed once idle for `--proxy-idle-close`, HTTP/2 connections get GOAWAY,
//! tunnels are waited for.
//!
//! Tests run one at a time: they measure drains, and on two cores concurrent tests would
//! disturb each other's timing.

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use quiesce_loadgen::{self as loadgen, LoadConfig, SlowMix, Targets};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{Proc, demo_app, get, kube_proxy, prestop, serial, start_sidecar, wait_until};

/// The sidecar in proxy mode in front of 127.0.0.1:`app_port`; returns it with the proxy's
/// address (read from `/status`).
fn proxy_sidecar(app_port: u16, probe: &[&str], extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiesce-sidecar"));
    let port = app_port.to_string();
    let route = format!("0:{app_port}");
    cmd.args([
        "--mode",
        "standalone",
        "--admin-bind",
        "127.0.0.1",
        "--admin-port",
        "0",
        "--app-ports",
        &port,
        "--drain-mode",
        "proxy",
        "--proxy-bind",
        "127.0.0.1",
        "--proxy-ports",
        &route,
        "--poll-interval",
        "20ms",
        "--probe-period",
        "100ms",
        "--probe-timeout",
        "100ms",
    ])
    .args(probe)
    .args(extra)
    .env("RUST_LOG", "info");
    let p = start_sidecar(cmd);
    let status = status(p.addr);
    let proxy = status["proxy"]["listeners"][0]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no proxy listener in /status: {status}"));
    (p, proxy)
}

const HTTP_PROBE: [&str; 2] = ["--probe-path", "/healthz"];
const TCP_PROBE: [&str; 2] = ["--probe", "tcp"];

fn status(admin: SocketAddr) -> Value {
    serde_json::from_str(&get(admin, "/status").1).unwrap_or(Value::Null)
}

fn counters(admin: SocketAddr) -> Value {
    status(admin)["proxy"]["counters"].clone()
}

async fn wait_until_async(bound: Duration, f: impl FnMut() -> bool + Send + 'static) {
    tokio::task::spawn_blocking(move || wait_until(bound, f))
        .await
        .unwrap();
}

/// Reads an HTTP/1.1 response head from `s` (up to the blank line); returns it lower-cased.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pool_under_load_loses_nothing_and_every_connection_is_closed_safely() {
    let _g = serial().await;
    let mut old = demo_app("v1", "immediate");
    let new = demo_app("v2", "graceful");
    let (side, proxy) = proxy_sidecar(
        old.addr.port(),
        &HTTP_PROBE,
        &["--quiet-period", "500ms", "--drain-timeout", "15s"],
    );
    let proxy_url = format!("http://{proxy}");
    let targets = Targets::new([proxy_url.clone(), format!("http://{}", new.addr)]);
    let mut cfg = LoadConfig::new(proxy_url.clone(), 200.0);
    cfg.targets = targets.clone();
    cfg.keep_alive = true;
    cfg.slow = Some(SlowMix {
        ms: 800,
        fraction: 0.03,
    });
    cfg.timeout = Duration::from_secs(20);
    let load = loadgen::spawn(cfg);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let routing = kube_proxy(
        targets.clone(),
        proxy_url,
        side.addr,
        Duration::from_millis(300),
    );
    let (code, v, took) = prestop(side.addr).await;
    routing.await.unwrap();
    assert_eq!(code, 200, "drain answer: {v}\n{}", side.output());
    let report = &v["report"];
    let c = counters(side.addr);
    // Now the app can go: nothing is left on it.
    old.signal("-TERM");
    assert!(old.wait_exit(Duration::from_secs(5)).is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = load.finish().await;
    eprintln!(
        "[h1 keep-alive] sent={} ok={} failed={} {:?} slow {}/{} by_version={:?} took={took:?}\nreport={report}\ncounters={c}",
        s.sent,
        s.ok,
        s.failed(),
        s.error_samples,
        s.slow_ok,
        s.slow_sent,
        s.ok_by_version
    );

    assert_eq!(s.failed(), 0, "{s:#?}");
    assert_eq!(s.slow_ok, s.slow_sent);
    assert!(
        s.ok_by_version.get("v1").copied().unwrap_or(0) > 100
            && s.ok_by_version.get("v2").copied().unwrap_or(0) > 100,
        "{s:?}"
    );
    assert_eq!(report["forced"], false, "{report}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        report["proxy"]["requests_while_draining"].as_u64().unwrap() > 0,
        "the routing lag sent requests during the drain: {report}"
    );
    // Every pooled connection was ended by the drain, at a safe moment; none is left.
    let accepted = c["accepted"].as_u64().unwrap();
    let closed = &c["closed"];
    let safe = closed["connection_close"].as_u64().unwrap() + closed["idle"].as_u64().unwrap();
    assert!(accepted >= 2, "{c}");
    assert_eq!(c["open"], 0, "{c}");
    assert_eq!(closed["client"], 0, "{c}");
    assert_eq!(safe, accepted, "{c}");
    assert!(c["connection_close_sent"].as_u64().unwrap() >= 1, "{c}");
    let (_, m) = get(side.addr, "/metrics");
    assert!(
        m.contains("quiesce_sidecar_proxy_requests_total{class=\"2xx\"}"),
        "{m}"
    );
    assert!(m.contains("quiesce_sidecar_drains_total{result=\"completed\"} 1"));
}

/// How an h2 request ended.
enum H2Outcome {
    Ok(u16),
    /// Not sent: the connection had received GOAWAY (or closed) first. Safe to send elsewhere.
    Unsent,
    Failed(String),
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_connect(addr: SocketAddr) -> (H2Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

async fn h2_get(mut send: H2Sender, authority: SocketAddr, path: &str) -> H2Outcome {
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Empty::new())
        .unwrap();
    match send.try_send_request(req).await {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.into_body().collect().await {
                Ok(_) => H2Outcome::Ok(status),
                Err(e) => H2Outcome::Failed(format!("body: {e:?}")),
            }
        }
        Err(mut e) => {
            // Queued when the connection closed: handed back, never sent.
            if e.take_message().is_some() {
                return H2Outcome::Unsent;
            }
            // h2 refuses to open a stream once GOAWAY arrived (NO_ERROR, from the server).
            let debug = format!("{:?}", e.error());
            if debug.contains("GoAway") && debug.contains("NO_ERROR") {
                H2Outcome::Unsent
            } else {
                H2Outcome::Failed(debug)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connection_gets_goaway_and_loses_nothing() {
    let _g = serial().await;
    let mut old = demo_app("v1", "immediate");
    let new = demo_app("v2", "graceful");
    let (side, proxy) = proxy_sidecar(
        old.addr.port(),
        &HTTP_PROBE,
        &["--quiet-period", "300ms", "--drain-timeout", "15s"],
    );
    // One multiplexed connection through the proxy; after its GOAWAY the client moves to a
    // fresh connection, which routing (no longer the old pod) sends to the new version.
    let (via_proxy, proxy_conn) = h2_connect(proxy).await;
    let (direct, _direct_conn) = h2_connect(new.addr).await;
    let ok = Arc::new(AtomicU64::new(0));
    let ok_slow = Arc::new(AtomicU64::new(0));
    let moved = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sent = 0u64;
    let mut slow_sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut drain = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let elapsed = start.elapsed();
        if drain.is_none() && elapsed >= Duration::from_millis(1500) {
            drain = Some(tokio::spawn(prestop(side.addr)));
        }
        if elapsed >= Duration::from_millis(4000) {
            break;
        }
        let slow = sent.is_multiple_of(20);
        slow_sent += u64::from(slow);
        let path = if slow { "/slow?ms=1200" } else { "/" };
        sent += 1;
        let (a, b) = (via_proxy.clone(), direct.clone());
        let (ok, ok_slow, moved, failures) =
            (ok.clone(), ok_slow.clone(), moved.clone(), failures.clone());
        let (pa, na) = (proxy, new.addr);
        tasks.spawn(async move {
            let mut outcome = h2_get(a, pa, path).await;
            if matches!(outcome, H2Outcome::Unsent) {
                moved.fetch_add(1, Ordering::SeqCst);
                outcome = h2_get(b, na, path).await;
            }
            match outcome {
                H2Outcome::Ok(200) => {
                    ok.fetch_add(1, Ordering::SeqCst);
                    if slow {
                        ok_slow.fetch_add(1, Ordering::SeqCst);
                    }
                }
                H2Outcome::Ok(s) => failures.lock().unwrap().push(format!("status {s}")),
                H2Outcome::Unsent => failures.lock().unwrap().push("unsent twice".into()),
                H2Outcome::Failed(e) => failures.lock().unwrap().push(e),
            }
        });
    }
    stop.store(true, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    let (code, v, took) = drain.unwrap().await.unwrap();
    let conn_result = tokio::time::timeout(Duration::from_secs(5), proxy_conn)
        .await
        .expect("the proxied h2 connection did not end")
        .unwrap();
    let c = counters(side.addr);
    old.signal("-TERM");
    assert!(old.wait_exit(Duration::from_secs(5)).is_some());
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "[h2c] sent={sent} ok={} slow {}/{slow_sent} moved_after_goaway={} failures={failures:?} conn={conn_result:?} took={took:?}\nreport={}\ncounters={c}",
        ok.load(Ordering::SeqCst),
        ok_slow.load(Ordering::SeqCst),
        moved.load(Ordering::SeqCst),
        v["report"]
    );
    assert_eq!(code, 200, "{v}");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ok.load(Ordering::SeqCst), sent);
    assert_eq!(ok_slow.load(Ordering::SeqCst), slow_sent);
    assert!(
        conn_result.is_ok(),
        "the connection must end gracefully (GOAWAY), not by a reset: {conn_result:?}"
    );
    assert!(
        moved.load(Ordering::SeqCst) > 0,
        "the client saw the GOAWAY and moved"
    );
    assert_eq!(v["report"]["forced"], false, "{v}");
    assert_eq!(v["report"]["proxy"]["goaways"], 1, "{v}");
    assert_eq!(
        (c["accepted"].as_u64(), c["open"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(c["closed"]["goaway"], 1, "{c}");
    assert!(c["requests"].as_u64().unwrap() > 50, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_in_flight_finishes_with_connection_close_and_holds_the_drain() {
    let _g = serial().await;
    let app = demo_app("v1", "immediate");
    let (side, proxy) = proxy_sidecar(
        app.addr.port(),
        &HTTP_PROBE,
        &[
            "--quiet-period",
            "300ms",
            "--drain-timeout",
            "10s",
            "--proxy-idle-close",
            "300ms",
        ],
    );
    // An idle kept-alive connection: one answered request, then silence.
    let mut idle = TcpStream::connect(proxy).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(idle, "GET / HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
    let head = read_head(&mut idle);
    let mut body = vec![0; content_length(&head)];
    idle.read_exact(&mut body).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    // A slow request on a kept-alive connection, in flight when the drain starts.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /slow?ms=1500 HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
        let head = read_head(&mut s);
        let mut body = vec![0; content_length(&head)];
        let complete = s.read_exact(&mut body).is_ok();
        // Then the server closes: end of stream.
        let eof = matches!(s.read(&mut [0u8; 16]), Ok(0));
        (head, complete, eof)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, v, took) = prestop(side.addr).await;
    let (head, complete, eof) = slow.join().unwrap();
    let idle_closed = matches!(idle.read(&mut [0u8; 16]), Ok(0));
    let c = counters(side.addr);
    eprintln!(
        "[slow] took={took:?} head={head:?}\nreport={}\ncounters={c}",
        v["report"]
    );
    assert_eq!(code, 200);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(complete, "the slow answer's body must be complete");
    assert!(
        head.contains("connection: close"),
        "the answer sent during the drain closes its connection: {head}"
    );
    assert!(eof, "the connection must be closed after the answer");
    assert!(idle_closed, "the idle keep-alive connection must be closed");
    let r = &v["report"];
    assert_eq!(r["forced"], false, "{v}");
    assert!(
        took >= Duration::from_millis(1200),
        "the drain returned before the slow request finished: {took:?}"
    );
    assert!(r["in_flight_ms"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["proxy"]["connection_close"], 1, "{r}");
    assert_eq!(r["proxy"]["idle_closed"], 1, "{r}");
    assert_eq!(r["connections_at_start"], 2, "{r}");
    assert_eq!(
        (
            c["closed"]["connection_close"].as_u64(),
            c["closed"]["idle"].as_u64()
        ),
        (Some(1), Some(1)),
        "{c}"
    );
}

/// A tiny HTTP/1.1 upstream that answers an `Upgrade: echo` request with 101 and then echoes
/// bytes (the demo app does not do upgrades).
async fn echo_upgrade_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    if req.headers().get("upgrade").is_none() {
                        return Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()));
                    }
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let res = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Empty::new())
                        .unwrap();
                    Ok(res)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn echo(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnel_keeps_working_during_the_drain_until_it_closes() {
    let _g = serial().await;
    let upstream = echo_upgrade_server().await;
    let (side, proxy) = proxy_sidecar(
        upstream.port(),
        &TCP_PROBE,
        &["--quiet-period", "300ms", "--drain-timeout", "15s"],
    );
    let mut ws = TcpStream::connect(proxy).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        ws,
        "GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut ws);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert_eq!(echo(&mut ws, b"before the drain"), b"before the drain");

    let drain = tokio::spawn(prestop(side.addr));
    let admin = side.addr;
    wait_until_async(Duration::from_secs(5), move || {
        status(admin)["drain"]["phase"] == "in_flight"
    })
    .await;
    // Draining, and the tunnel still carries bytes both ways.
    assert_eq!(echo(&mut ws, b"during the drain"), b"during the drain");
    let c = counters(side.addr);
    assert_eq!(
        (c["tunnels_open"].as_u64(), c["open"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(echo(&mut ws, b"still"), b"still");
    assert!(
        !drain.is_finished(),
        "the drain must wait for the open tunnel"
    );
    let held = Instant::now();
    drop(ws);
    let (code, v, took) = drain.await.unwrap();
    eprintln!(
        "[tunnel] took={took:?} after close {:?}: {v}",
        held.elapsed()
    );
    assert_eq!(code, 200);
    assert_eq!(v["report"]["forced"], false, "{v}");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    let c = counters(side.addr);
    assert_eq!(
        (c["tunnels_open"].as_u64(), c["open"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
}

/// A non-HTTP upstream: sends a banner on connect, then echoes.
async fn banner_echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(b"banner\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Bytes of a TLS ClientHello record's start: not HTTP.
const TLS_LIKE: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_connection_is_forwarded_and_holds_the_drain_until_closed() {
    let _g = serial().await;
    let upstream = banner_echo_server().await;
    let (side, proxy) = proxy_sidecar(
        upstream.port(),
        &TCP_PROBE,
        &["--quiet-period", "300ms", "--drain-timeout", "15s"],
    );
    // Client speaks first with non-HTTP bytes.
    let mut tls = TcpStream::connect(proxy).unwrap();
    tls.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tls.write_all(TLS_LIKE).unwrap();
    let mut got = vec![0; b"banner\n".len() + TLS_LIKE.len()];
    tls.read_exact(&mut got).unwrap();
    assert_eq!(&got[..7], b"banner\n");
    assert_eq!(&got[7..], TLS_LIKE);
    // A silent connection is a pooled spare, not a server-speaks-first protocol: it is not
    // passed through (no banner), and the drain closes it as idle.
    let mut silent = TcpStream::connect(proxy).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut banner = [0u8; 7];
    assert!(
        silent.read_exact(&mut banner).is_err(),
        "a silent client must not be taken for a server-speaks-first protocol"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let admin = side.addr;
    wait_until_async(Duration::from_secs(5), move || {
        counters(admin)["passthrough_open"] == 1
    })
    .await;

    let drain = tokio::spawn(prestop(side.addr));
    wait_until_async(Duration::from_secs(5), move || {
        status(admin)["drain"]["phase"] == "in_flight"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !drain.is_finished(),
        "the drain must wait for the passthrough"
    );
    assert_eq!(echo(&mut tls, b"during"), b"during");
    // The silent spare was closed by the drain (EOF, no byte).
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
    drop(tls);
    let (code, v, took) = drain.await.unwrap();
    let c = counters(side.addr);
    eprintln!("[passthrough] took={took:?}: {v}\ncounters={c}");
    assert_eq!(code, 200);
    assert_eq!(v["report"]["forced"], false, "{v}");
    assert_eq!(c["closed"]["passthrough"], 1, "{c}");
    assert_eq!(c["closed"]["idle"], 1, "{c}");
    assert_eq!(
        (c["open"].as_u64(), c["passthrough_open"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
    assert_eq!(c["requests"], 0, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_left_open_forces_the_drain_at_its_bound() {
    let _g = serial().await;
    let upstream = banner_echo_server().await;
    let (side, proxy) = proxy_sidecar(
        upstream.port(),
        &TCP_PROBE,
        &["--quiet-period", "200ms", "--drain-timeout", "1500ms"],
    );
    let mut tls = TcpStream::connect(proxy).unwrap();
    tls.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tls.write_all(TLS_LIKE).unwrap();
    let mut got = vec![0; b"banner\n".len() + TLS_LIKE.len()];
    tls.read_exact(&mut got).unwrap();
    let (code, v, took) = prestop(side.addr).await;
    eprintln!("[passthrough forced] took={took:?}: {v}");
    assert_eq!(code, 200);
    let r = &v["report"];
    assert_eq!(r["forced"], true, "{v}");
    assert_eq!(r["forced_phases"], serde_json::json!(["in_flight"]));
    assert_eq!(r["proxy"]["left_open"], 1, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("1 left open"),
        "{v}"
    );
    // Still forwarding: the drain does not cut it, the app's exit will.
    assert_eq!(echo(&mut tls, b"after"), b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_app_in_proxy_mode_still_waits_for_the_proxys_connections() {
    let _g = serial().await;
    let app = demo_app("v1", "graceful");
    let (side, proxy) = proxy_sidecar(
        app.addr.port(),
        &HTTP_PROBE,
        &[
            "--quiet-period",
            "200ms",
            "--drain-timeout",
            "10s",
            "--app-shutdown",
            "graceful",
        ],
    );
    // A slow request on a kept-alive client connection: were SIGTERM released after the quiet
    // period (what --app-shutdown graceful does in observe mode), the app would stop and the
    // client's next request on that connection would find no app behind the proxy.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /slow?ms=1200 HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
        read_head(&mut s)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, v, took) = prestop(side.addr).await;
    let head = slow.join().unwrap();
    eprintln!("[graceful app, proxy] took={took:?}: {v}");
    assert_eq!(code, 200);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(v["report"]["forced"], false, "{v}");
    assert!(
        v["report"]["in_flight_ms"].as_u64().unwrap() > 0 && took >= Duration::from_millis(900),
        "the drain must wait for the proxy's connections: {took:?} {v}"
    );
}

/// A socket that counts the HTTP/2 HEADERS frames read through it (after the client preface),
/// so a test knows which requests reached the app without the app accepting them.
struct HeadersCounter {
    inner: tokio::net::TcpStream,
    headers: Arc<AtomicU64>,
    /// Bytes still to pass before the next frame header (the preface, then each payload).
    skip: usize,
    head: [u8; 9],
    have: usize,
}

impl HeadersCounter {
    fn new(inner: tokio::net::TcpStream, headers: Arc<AtomicU64>) -> Self {
        let skip = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();
        Self {
            inner,
            headers,
            skip,
            head: [0; 9],
            have: 0,
        }
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.have = 0;
                if h[3] == 0x1 {
                    self.headers.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

impl tokio::io::AsyncRead for HeadersCounter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.scan(&new);
        res
    }
}

impl tokio::io::AsyncWrite for HeadersCounter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An h2c app that, like one under CPU overload, accepts no stream until one of its
/// connections was closed for too many resets; then it answers every stream `200`.
struct OverloadedH2App {
    addr: SocketAddr,
    /// HEADERS frames received, over all connections.
    headers: Arc<AtomicU64>,
    /// Connections it closed with GOAWAY(ENHANCE_YOUR_CALM): more than 20 streams reset
    /// before being accepted (the `h2` crate's rapid-reset protection, hyper's servers too).
    calmed: Arc<AtomicU64>,
}

async fn overloaded_h2_app() -> OverloadedH2App {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = OverloadedH2App {
        addr: l.local_addr().unwrap(),
        headers: Arc::new(AtomicU64::new(0)),
        calmed: Arc::new(AtomicU64::new(0)),
    };
    let (headers, calmed) = (app.headers.clone(), app.calmed.clone());
    let gate = Arc::new(tokio::sync::watch::Sender::new(false));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (headers, calmed, gate) = (headers.clone(), calmed.clone(), gate.clone());
            tokio::spawn(async move {
                let io = HeadersCounter::new(s, headers);
                // The sidecar's TCP probes end here: they send no preface.
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_pending_accept_reset_streams(20)
                    .handshake::<_, Bytes>(io)
                    .await
                else {
                    return;
                };
                // Read frames (streams queue up unaccepted) until the gate opens.
                let mut open = gate.subscribe();
                let closed = tokio::select! {
                    r = std::future::poll_fn(|cx| conn.poll_closed(cx)) => Some(r),
                    _ = open.wait_for(|o| *o) => None,
                };
                let result = match closed {
                    Some(r) => r,
                    None => loop {
                        match conn.accept().await {
                            Some(Ok((_req, mut respond))) => {
                                let _ = respond.send_response(Response::new(()), true);
                            }
                            Some(Err(e)) => break Err(e),
                            None => break Ok(()),
                        }
                    },
                };
                if let Err(e) = result
                    && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
                {
                    calmed.fetch_add(1, Ordering::SeqCst);
                    gate.send_replace(true);
                }
            });
        }
    });
    app
}

/// gRPC clients cancel streams all the time (deadlines). Through the proxy one client's
/// cancellations must cost only its own app-side connection, as they would without the proxy:
/// a connection shared by every client would be closed by the app's rapid-reset protection
/// with every other client's requests on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2_clients_cancelled_streams_do_not_fail_another_clients_requests() {
    let _g = serial().await;
    let app = overloaded_h2_app().await;
    let (_side, proxy) = proxy_sidecar(app.addr.port(), &TCP_PROBE, &[]);
    let seen = |n: u64| {
        let headers = app.headers.clone();
        move || headers.load(Ordering::SeqCst) >= n
    };

    // Client B: one request in flight, held by the app.
    let (b, _b_conn) = h2_connect(proxy).await;
    let b_req = tokio::spawn(h2_get(b, proxy, "/b"));
    wait_until_async(Duration::from_secs(10), seen(1)).await;

    // Client A: 25 streams the app holds too, all reaching it, then cancelled.
    let a_tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut a, a_conn) = h2::client::handshake(a_tcp).await.unwrap();
    tokio::spawn(a_conn);
    let mut cancelled = Vec::new();
    for i in 0..25 {
        a = a.ready().await.unwrap();
        let req = Request::get(format!("http://{proxy}/a{i}"))
            .body(())
            .unwrap();
        cancelled.push(a.send_request(req, true).unwrap());
    }
    wait_until_async(Duration::from_secs(10), seen(26)).await;
    for (_res, send) in &mut cancelled {
        send.send_reset(h2::Reason::CANCEL);
    }
    let calmed = app.calmed.clone();
    wait_until_async(Duration::from_secs(10), move || {
        calmed.load(Ordering::SeqCst) >= 1
    })
    .await;

    let b_outcome = tokio::time::timeout(Duration::from_secs(10), b_req)
        .await
        .expect("client B's request did not end")
        .unwrap();
    let b_outcome = match b_outcome {
        H2Outcome::Ok(s) => format!("status {s}"),
        H2Outcome::Unsent => "unsent".into(),
        H2Outcome::Failed(e) => e,
    };
    assert_eq!(
        b_outcome, "status 200",
        "client B must not pay for client A's cancellations"
    );

    // A's next request gets a fresh app-side connection.
    a = a.ready().await.unwrap();
    let req = Request::get(format!("http://{proxy}/again"))
        .body(())
        .unwrap();
    let (res, _send) = a.send_request(req, true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), res)
        .await
        .expect("client A's next request did not end")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.calmed.load(Ordering::SeqCst), 1);
}
