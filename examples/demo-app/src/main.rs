//! `demo-app`: a tiny HTTP/1.1 + h2c server used by quiesce's demos and tests.
//!
//! - `GET /` answers `demo-app version=<VERSION> pod=<POD_NAME>` (header `x-demo-version`);
//! - `GET /slow?ms=N` answers the same after sleeping `N` milliseconds (at most 10 minutes);
//! - `GET /healthz` answers 200, or 503 with `--fail-health`;
//! - `GET /prestop?ms=N` prints `demo-app: preStop hook called` and answers after `N` ms: a
//!   target for a plain (quiesce-less) `preStop.httpGet` hook whose call tests can see in the log;
//! - gRPC over h2c on the same port ([`grpc`]): `quiesce.demo.Demo/Echo`, `…/Stream` and
//!   `grpc.health.v1.Health/Check`;
//! - `GET /ws`: a WebSocket echo ([`ws`]).
//!
//! On SIGTERM it either exits at once, dropping every connection (`--exit-on-sigterm=immediate`,
//! the worst case quiesce must handle), or shuts down gracefully: stops accepting, finishes
//! in-flight requests, bounded by `--graceful-timeout-secs`. Graceful shutdown (hyper's) also
//! closes idle HTTP/1.1 keep-alive connections, sends GOAWAY on HTTP/2 connections, and the app
//! closes its WebSockets with a Close frame.

mod body;
mod grpc;
mod ws;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header::HeaderName},
    response::IntoResponse,
    routing::{get, post},
};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// What to do on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExitMode {
    /// Exit at once; open connections are dropped (reset) by the kernel.
    Immediate,
    /// Stop accepting, finish in-flight requests, then exit.
    Graceful,
}

#[derive(Debug, Parser)]
#[command(version, about = "HTTP demo app for quiesce")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Port to listen on (0 picks a free port; the chosen address is printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Version reported by `/`.
    #[arg(long = "app-version", env = "VERSION", default_value = "v1")]
    app_version: String,
    /// Pod name reported by `/` (downward API).
    #[arg(long, env = "POD_NAME", default_value = "local")]
    pod_name: String,
    /// Behaviour on SIGTERM.
    #[arg(long, env = "EXIT_ON_SIGTERM", value_enum, default_value = "graceful")]
    exit_on_sigterm: ExitMode,
    /// Bound of a graceful shutdown, in seconds.
    #[arg(long, env = "GRACEFUL_TIMEOUT_SECS", default_value_t = 30)]
    graceful_timeout_secs: u64,
    /// Make `/healthz` answer 503 (a "bad version").
    #[arg(long, env = "FAIL_HEALTH")]
    fail_health: bool,
    /// Make `/healthz` answer 503 until this many milliseconds after start (an app that warms
    /// up before it is ready).
    #[arg(long, env = "HEALTHY_AFTER_MS")]
    healthy_after_ms: Option<u64>,
    /// Exit with status 1 after this many seconds (a crashing "bad version").
    #[arg(long, env = "CRASH_AFTER_SECS")]
    crash_after_secs: Option<u64>,
}

#[derive(Debug)]
struct AppState {
    version: String,
    pod_name: String,
    fail_health: bool,
    /// `/healthz` answers 503 before this instant.
    healthy_from: Option<tokio::time::Instant>,
    /// Turns true when a graceful shutdown starts (WebSockets then close).
    shutdown: watch::Receiver<bool>,
    /// Open WebSockets: a graceful exit waits for their closing handshakes too, since hyper
    /// no longer tracks a connection once it is upgraded.
    websockets: AtomicUsize,
}

impl AppState {
    /// What `/healthz` and the gRPC health service answer: not a bad version, not warming up.
    fn healthy(&self) -> bool {
        let warming = self
            .healthy_from
            .is_some_and(|t| tokio::time::Instant::now() < t);
        !self.fail_health && !warming
    }
}

#[derive(Debug, Deserialize)]
struct SlowParams {
    #[serde(default)]
    ms: u64,
}

const MAX_SLOW_MS: u64 = 600_000;

fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/healthz", get(healthz))
        .route("/prestop", get(prestop))
        .route("/quiesce.demo.Demo/Echo", post(grpc::echo))
        .route("/quiesce.demo.Demo/Stream", post(grpc::stream))
        .route("/grpc.health.v1.Health/Check", post(grpc::health_check))
        .route("/ws", get(ws::ws))
        .with_state(state)
}

async fn hello(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let version = HeaderValue::from_str(&state.version).unwrap_or(HeaderValue::from_static("?"));
    (
        [(HeaderName::from_static("x-demo-version"), version)],
        format!(
            "demo-app version={} pod={}\n",
            state.version, state.pod_name
        ),
    )
}

async fn slow(state: State<Arc<AppState>>, Query(p): Query<SlowParams>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(p.ms.min(MAX_SLOW_MS))).await;
    hello(state).await
}

async fn prestop(state: State<Arc<AppState>>, Query(p): Query<SlowParams>) -> impl IntoResponse {
    println!(
        "demo-app: preStop hook called (sleeping {} ms)",
        p.ms.min(MAX_SLOW_MS)
    );
    slow(state, Query(p)).await
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        version: args.app_version.clone(),
        pod_name: args.pod_name.clone(),
        fail_health: args.fail_health,
        healthy_from: args
            .healthy_after_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms)),
        shutdown: shutdown_rx,
        websockets: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
    // Tests parse this line to learn the port.
    println!("demo-app listening on {}", listener.local_addr()?);

    if let Some(secs) = args.crash_after_secs {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            eprintln!("demo-app: crashing after {secs}s as asked");
            std::process::exit(1);
        });
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };

    match args.exit_on_sigterm {
        ExitMode::Immediate => {
            let server = axum::serve(listener, app(state));
            tokio::select! {
                res = server => res,
                () = shutdown => {
                    println!("demo-app: signal received, exiting at once");
                    std::process::exit(0);
                }
            }
        }
        ExitMode::Graceful => {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let tracked = state.clone();
            let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
                shutdown.await;
                println!("demo-app: signal received, shutting down gracefully");
                let _ = shutdown_tx.send(true);
                let _ = tx.send(());
            });
            let timeout = Duration::from_secs(args.graceful_timeout_secs);
            let bound = async move {
                if rx.await.is_ok() {
                    tokio::time::sleep(timeout).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let server_then_websockets = async move {
                let res = server.await;
                while tracked.websockets.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                res
            };
            tokio::select! {
                res = server_then_websockets => res,
                () = bound => {
                    println!("demo-app: graceful shutdown timed out, exiting");
                    std::process::exit(0);
                }
            }
        }
    }
}
