//! The demo app's protocols and its graceful shutdown, checked against the real binary on
//! loopback with the clients the zero-loss tests use (`quiesce-e2e`'s loadgen, gRPC, WebSocket
//! and hey helpers): whatever those tests conclude about quiesce rests on the app behaving
//! like a well-behaved server here.

use std::{process::Stdio, sync::Arc, time::Duration};

use quiesce_e2e::{
    grpc::{self, GrpcConfig},
    h2chan::{ChannelStats, H2Channel},
    hey::{self, HeyConfig},
    loadgen::{self, LoadConfig, Protocol},
    ws::{self, WsConfig, WsEnd},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    time::{Instant, timeout},
};

/// A demo-app on a free loopback port.
struct App {
    child: Child,
    addr: String,
}

impl App {
    async fn start(extra: &[&str]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo-app"))
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start demo-app");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("demo-app starts")
            .unwrap()
            .unwrap();
        let addr = first
            .strip_prefix("demo-app listening on ")
            .expect("listening line")
            .to_string();
        // Keep reading stdout so the app never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        App { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }
}

/// One raw HTTP/1.1 exchange on `s`; returns the head and body.
async fn get(s: &mut TcpStream, path: &str, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: {conn}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: Option<usize> = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            });
            if len.is_some_and(|l| body.len() >= l) {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn grpc_unary_streams_and_health() {
    let app = App::start(&[]).await;
    let mut cfg = GrpcConfig::new(app.url(), 200.0);
    cfg.count = Some(100);
    cfg.delay_ms = 2;
    cfg.streams = 2;
    cfg.stream_messages = 3;
    cfg.stream_interval_ms = 20;
    let s = grpc::run(cfg).await;
    assert_eq!((s.unary.sent, s.unary.ok), (100, 100), "{s:?}");
    assert!(s.streams.sent >= 2 && s.streams.failed == 0, "{s:?}");
    assert_eq!(s.stream_messages, 3 * s.streams.sent);
    assert_eq!(
        (s.connections_opened, s.connections_goaway),
        (2, 0),
        "{s:?}"
    );

    let ch = H2Channel::new(app.addr.clone(), 1, Arc::new(ChannelStats::default()));
    assert_eq!(grpc::health_check(&ch, &app.url()).await, Ok(1));
    let sick = App::start(&["--fail-health"]).await;
    let ch = H2Channel::new(sick.addr.clone(), 1, Arc::new(ChannelStats::default()));
    assert_eq!(grpc::health_check(&ch, &sick.url()).await, Ok(2));
}

#[tokio::test]
async fn every_protocol_loses_nothing_against_a_steady_app() {
    let app = App::start(&[]).await;
    for protocol in [Protocol::Http1, Protocol::KeepAlive, Protocol::H2c] {
        let mut cfg = LoadConfig::new(app.url(), 300.0);
        cfg.protocol = protocol;
        cfg.count = Some(150);
        let s = loadgen::run(cfg).await;
        assert_eq!(
            (s.sent, s.ok, s.failed()),
            (150, 150, 0),
            "{protocol:?}: {s:?}"
        );
        assert_eq!(s.ok_by_version.get("v1"), Some(&150));
    }
}

/// The keep-alive pool holds 1k req/s on loopback (the e2e keep-alive load needs that much).
#[tokio::test]
async fn keep_alive_pool_sustains_1k_per_second() {
    let app = App::start(&[]).await;
    let mut cfg = LoadConfig::new(app.url(), 1000.0);
    cfg.protocol = Protocol::KeepAlive;
    cfg.duration = Some(Duration::from_secs(2));
    let s = loadgen::run(cfg).await;
    assert_eq!((s.sent, s.failed()), (2000, 0), "{s:?}");
    // Open loop: finishing near 2 s means the pool kept up.
    assert!(s.elapsed_ms < 3000, "{s:?}");
}

#[tokio::test]
async fn websocket_echoes_until_closed() {
    let app = App::start(&[]).await;
    let mut cfg = WsConfig::new(app.url(), Duration::from_millis(10));
    cfg.duration = Some(Duration::from_millis(200));
    let r = ws::run(cfg).await;
    assert_eq!(r.end, WsEnd::ClientClosed, "{r:?}");
    assert!(r.sent >= 10 && r.clean(), "{r:?}");
}

/// `--exit-on-sigterm graceful`: at SIGTERM an idle keep-alive connection is closed at once,
/// an in-flight request and an in-flight gRPC stream finish, HTTP/2 gets a GOAWAY, a
/// WebSocket gets a Close (1001), and then the process exits.
#[tokio::test]
async fn graceful_sigterm_closes_idle_connections_and_finishes_in_flight_work() {
    let mut app = App::start(&["--exit-on-sigterm", "graceful"]).await;
    // An idle keep-alive connection (one request answered, then nothing).
    let mut idle = TcpStream::connect(&app.addr).await.unwrap();
    assert!(get(&mut idle, "/", false).await.starts_with("HTTP/1.1 200"));
    // A slow request in flight.
    let addr = app.addr.clone();
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        get(&mut s, "/slow?ms=1000", true).await
    });
    // A gRPC stream in flight on an h2c channel.
    let stats = Arc::new(ChannelStats::default());
    let ch = Arc::new(H2Channel::new(app.addr.clone(), 1, stats.clone()));
    let (c, url) = (ch.clone(), app.url());
    let stream = tokio::spawn(async move { grpc::stream(&c, &url, 8, 100).await });
    // A WebSocket.
    let wsession = ws::spawn(WsConfig::new(app.url(), Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.sigterm().await;
    let signalled = Instant::now();
    let mut byte = [0u8; 1];
    let n = timeout(Duration::from_secs(1), idle.read(&mut byte))
        .await
        .expect("idle keep-alive connection closed promptly after SIGTERM")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection ends (EOF)");
    assert!(signalled.elapsed() < Duration::from_millis(500));

    let answer = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (outcome, got) = stream.await.unwrap();
    assert_eq!((outcome, got), (grpc::RpcOutcome::Ok, 8));
    assert_eq!(
        stats.snapshot().goaways,
        1,
        "the h2 connection got a GOAWAY"
    );
    let r = wsession.wait().await;
    assert!(
        matches!(r.end, WsEnd::ServerClosed { code: 1001, .. }),
        "{r:?}"
    );
    // A message sent while the server's Close is on its way cannot be answered (RFC 6455
    // §5.5.1: no data after a Close), so at most one of them is lost.
    assert!(r.lost() <= 1 && r.echoed >= 5, "{r:?}");

    let status = timeout(Duration::from_secs(5), app.child.wait())
        .await
        .expect("the app exits once everything is done")
        .unwrap();
    assert!(status.success());
}

/// hey, the third-party generator, against the app (skipped when not installed).
#[tokio::test]
async fn hey_keep_alive_against_the_app() {
    let bin = hey::hey_bin();
    if std::process::Command::new(&bin).arg("-h").output().is_err() {
        eprintln!("hey not installed ({}), skipped", bin.display());
        return;
    }
    let app = App::start(&[]).await;
    let mut cfg = HeyConfig::new(format!("{}/", app.url()), 400.0, Duration::from_secs(1));
    cfg.workers = 4;
    let r = hey::run(&cfg).await.unwrap();
    assert!(r.ok > 200 && r.failed == 0, "{r:?}");
}
