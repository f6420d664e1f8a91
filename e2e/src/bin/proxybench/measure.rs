//! One measured run: a client (hey, or the own open-loop client over keep-alive or h2c)
//! through one path, with the proxy's CPU and RSS and the machine's load around it.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use quiesce_e2e::hey::{self, HeyConfig, HeyReport};
use quiesce_e2e::loadgen::{self, LoadConfig, Protocol};

use crate::Args;
use crate::paths::Target;
use crate::procfs::{cpu_ticks, machine_jiffies, rss_kib};

/// Which client and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    Hey,
    OwnKeepAlive,
    OwnH2c,
}

impl Client {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hey => "hey, HTTP/1.1 keep-alive",
            Self::OwnKeepAlive => "own, HTTP/1.1 keep-alive",
            Self::OwnH2c => "own, h2c",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Achieved req/s (answers, ok or not, per second of the run).
    pub rps: f64,
    /// Requests that did not end in a 2xx.
    pub errors: u64,
    pub sent: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The proxy's RSS at the end, KiB (0 for direct).
    pub rss_kib: u64,
    /// The proxy's CPU over the run, millicores.
    pub mcpu: f64,
    /// The whole machine's busy share over the run, 0–1.
    pub machine_busy: f64,
    /// The machine's busy share just before the run (other work), 0–1.
    pub background_busy: f64,
}

/// Waits (at most `bound`) until a one-second sample of the machine is less busy than
/// `below`; returns the last sample's busy share.
async fn wait_quiet(below: f64, bound: Duration) -> f64 {
    let deadline = Instant::now() + bound;
    loop {
        let a = machine_jiffies();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = machine_jiffies();
        let total = (b.1 - a.1) as f64;
        let busy = if total > 0.0 {
            (b.0 - a.0) as f64 / total
        } else {
            0.0
        };
        if busy < below || Instant::now() >= deadline {
            return busy;
        }
    }
}

/// Runs `hey` with `args`, returns its parsed summary.
async fn hey_with(args: Vec<String>) -> Result<HeyReport> {
    let out = tokio::process::Command::new(hey::hey_bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (install it with e2e/cluster/tools.sh)",
                hey::hey_bin().display()
            )
        })?;
    hey::parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "hey {args:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs one load through `target`, measuring the proxy around it. `rate` `None`: hey
/// without a rate limit (saturation).
pub async fn measure(
    target: &Target,
    client: Client,
    rate: Option<f64>,
    duration: Duration,
    args: &Args,
    tck: f64,
) -> Result<Sample> {
    let background_busy =
        wait_quiet(args.quiet_below, Duration::from_secs(args.quiet_wait_secs)).await;
    let pids = target.pids();
    let cpu0 = cpu_ticks(&pids);
    let m0 = machine_jiffies();
    let t0 = Instant::now();
    let mut s = Sample {
        background_busy,
        ..Sample::default()
    };
    match client {
        Client::Hey => {
            let mut cfg = HeyConfig::new(target.url.clone(), rate.unwrap_or(1.0), duration);
            cfg.workers = args.workers;
            let mut a = cfg.args();
            if rate.is_none() {
                // No `-q`: as fast as the workers go.
                let q = a.iter().position(|x| x == "-q").context("-q")?;
                a.drain(q..q + 2);
            }
            let r = hey_with(a).await?;
            s.rps = r.requests_per_sec;
            s.errors = r.failed;
            s.sent = r.sent;
            s.p50_ms = r.latency_ms.get(&50).copied().unwrap_or(f64::NAN);
            s.p99_ms = r.latency_ms.get(&99).copied().unwrap_or(f64::NAN);
        }
        Client::OwnKeepAlive | Client::OwnH2c => {
            let (url, protocol) = if client == Client::OwnH2c {
                (
                    target.h2c_url.clone().context("no h2c listener")?,
                    Protocol::H2c,
                )
            } else {
                (
                    target.url.trim_end_matches('/').to_string(),
                    Protocol::KeepAlive,
                )
            };
            let mut cfg = LoadConfig::new(url, rate.context("own client needs a rate")?);
            cfg.protocol = protocol;
            cfg.keep_alive = protocol == Protocol::KeepAlive;
            cfg.h2_connections = args.h2_connections;
            cfg.duration = Some(duration);
            let r = loadgen::run(cfg).await;
            s.sent = r.sent;
            s.errors = r.failed();
            s.rps = r.ok as f64 / (r.elapsed_ms.max(1) as f64 / 1000.0);
            s.p50_ms = r.latency_ms.p50;
            s.p99_ms = r.latency_ms.p99;
            if let Some(e) = r.error_samples.first() {
                eprintln!("    first error: {e}");
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let m1 = machine_jiffies();
    s.mcpu = (cpu_ticks(&pids).saturating_sub(cpu0)) as f64 / tck / wall * 1000.0;
    s.rss_kib = rss_kib(&pids);
    let total = (m1.1 - m0.1) as f64;
    s.machine_busy = if total > 0.0 {
        (m1.0 - m0.0) as f64 / total
    } else {
        0.0
    };
    Ok(s)
}
