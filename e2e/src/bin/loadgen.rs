//! `loadgen`: open-loop load, one JSON summary on stdout.
//!
//! `loadgen --url http://127.0.0.1:8080 --rate 100 --duration-secs 10
//!  [--protocol http1|keepalive|h2c|grpc] [--h2-connections 2] [--keep-alive] [--retry-reused]
//!  [--slow-ms 2000 --slow-fraction 0.05]`; exits 1 with `--fail-on-error` if a request failed.
//! `--keep-alive` is the older spelling of `--protocol keepalive`. With `--protocol grpc` the
//! rate is of unary `Echo` calls (`--grpc-delay-ms` each), `--grpc-streams` server streams run
//! beside them, and the summary is a [`quiesce_e2e::grpc::GrpcSummary`].

use std::time::Duration;

use clap::{Parser, ValueEnum};
use quiesce_e2e::{
    grpc::{self, GrpcConfig},
    loadgen::{self, LoadConfig, Protocol, SlowMix, Targets},
};

/// The wire protocol of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// HTTP/1.1, a new connection per request.
    Http1,
    /// HTTP/1.1 over a keep-alive pool.
    Keepalive,
    /// HTTP/2 cleartext over a few multiplexed connections.
    H2c,
    /// gRPC (demo app's `quiesce.demo.Demo`) over h2c channels.
    Grpc,
}

#[derive(Debug, Parser)]
#[command(about = "Open-loop HTTP load generator that counts every request's outcome")]
struct Args {
    /// Base URL, repeatable (round-robin).
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop launching after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Wire,
    /// Reuse connections (same as `--protocol keepalive`).
    #[arg(long)]
    keep_alive: bool,
    /// Keep-alive: send a GET again, once, when a reused connection ended before its response
    /// began (RFC 9112 §9.3.1, as Go's Transport does); counted in `retried_reused`.
    #[arg(long)]
    retry_reused: bool,
    /// HTTP/2 connections per target (h2c).
    #[arg(long, default_value_t = 2)]
    h2_connections: usize,
    /// Path of ordinary requests.
    #[arg(long, default_value = "/")]
    path: String,
    /// Duration of slow requests (`/slow?ms=`), milliseconds.
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Share of slow requests.
    #[arg(long, default_value_t = 0.05)]
    slow_fraction: f64,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// gRPC: server-side delay of each unary call, milliseconds.
    #[arg(long, default_value_t = 0)]
    grpc_delay_ms: u64,
    /// gRPC: server streams kept open beside the unary calls.
    #[arg(long, default_value_t = 0)]
    grpc_streams: usize,
    /// gRPC: messages per stream.
    #[arg(long, default_value_t = 10)]
    grpc_stream_messages: u64,
    /// gRPC: gap between stream messages, milliseconds.
    #[arg(long, default_value_t = 100)]
    grpc_stream_interval_ms: u64,
    /// Exit 1 if any request failed.
    #[arg(long)]
    fail_on_error: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let protocol = match a.protocol {
        Wire::Http1 => Protocol::Http1,
        Wire::Keepalive => Protocol::KeepAlive,
        Wire::H2c => Protocol::H2c,
        Wire::Grpc => return run_grpc(a).await,
    };
    let cfg = LoadConfig {
        targets: Targets::new(a.url),
        rate: a.rate,
        duration: Some(Duration::from_secs_f64(a.duration_secs)),
        count: a.count,
        keep_alive: a.keep_alive,
        protocol,
        h2_connections: a.h2_connections,
        path: a.path,
        slow: a.slow_ms.map(|ms| SlowMix {
            ms,
            fraction: a.slow_fraction,
        }),
        timeout: Duration::from_millis(a.timeout_ms),
        retry_reused: a.retry_reused,
    };
    let s = loadgen::run(cfg).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&s).expect("summary serializes")
    );
    if a.fail_on_error && s.failed() > 0 {
        std::process::exit(1);
    }
}

async fn run_grpc(a: Args) {
    let cfg = GrpcConfig {
        targets: Targets::new(a.url),
        rate: a.rate,
        duration: Some(Duration::from_secs_f64(a.duration_secs)),
        count: a.count,
        connections: a.h2_connections,
        delay_ms: a.grpc_delay_ms,
        streams: a.grpc_streams,
        stream_messages: a.grpc_stream_messages,
        stream_interval_ms: a.grpc_stream_interval_ms,
        timeout: Duration::from_millis(a.timeout_ms),
    };
    let s = grpc::run(cfg).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&s).expect("summary serializes")
    );
    if a.fail_on_error && s.failed() > 0 {
        std::process::exit(1);
    }
}
