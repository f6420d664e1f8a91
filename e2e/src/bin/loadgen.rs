//! `loadgen`: open-loop HTTP load, one JSON summary on stdout.
//!
//! `loadgen --url http://127.0.0.1:8080 --rate 100 --duration-secs 10 [--keep-alive]
//!  [--slow-ms 2000 --slow-fraction 0.05]`; exits 1 with `--fail-on-error` if a request failed.

use std::time::Duration;

use clap::Parser;
use quiesce_e2e::loadgen::{self, LoadConfig, SlowMix, Targets};

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
    /// Reuse connections.
    #[arg(long)]
    keep_alive: bool,
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
    /// Exit 1 if any request failed.
    #[arg(long)]
    fail_on_error: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let cfg = LoadConfig {
        targets: Targets::new(a.url),
        rate: a.rate,
        duration: Some(Duration::from_secs_f64(a.duration_secs)),
        count: a.count,
        keep_alive: a.keep_alive,
        path: a.path,
        slow: a.slow_ms.map(|ms| SlowMix {
            ms,
            fraction: a.slow_fraction,
        }),
        timeout: Duration::from_millis(a.timeout_ms),
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
