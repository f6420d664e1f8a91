//! `proxybench`: what the sidecar's proxy mode costs a request, next to nginx and HAProxy doing
//! the same job. The "Proxy overhead" section of docs/benchmarks.md, made by `make bench-proxy`.
//!
//! Everything runs on loopback on this machine: the demo app once, and in front of it the
//! quiesce sidecar (`--drain-mode proxy`, standalone mode), nginx (`proxy_pass` to an upstream
//! with a `keepalive` pool, HTTP/1.1) and HAProxy (`mode http`, `http-reuse always`), each
//! forwarding to the app on 127.0.0.1 like an in-pod reverse proxy. nginx and HAProxy are the
//! Debian packages' binaries run in the foreground with config files written to a temporary
//! folder (`e2e/bench/proxy-deps.sh` installs them); no system service is involved.
//!
//! 1. Saturation: hey without a rate limit through each path, the highest req/s it carries.
//! 2. The high rate: 80% of the lowest saturation throughput, rounded down to 500 req/s, so that
//!    every path really carries it (at saturation a closed-loop client measures its own queue),
//!    unless `--high-rate` sets it.
//! 3. Rounds: for each round, each rate, each client, the paths in the same order (direct,
//!    quiesce, nginx, haproxy), so that drift (other work on the machine) hits all of them. Each
//!    cell is the median over the rounds; the added latency is the median over rounds of
//!    (path − direct in the same round). Before each run the bench waits (bounded) for a second
//!    in which the machine, other work included, is nearly idle: on a shared 2-core machine a
//!    compile next door moves the percentiles more than a proxy does.
//!
//! Clients: `hey` (third-party, Go's HTTP/1.1 keep-alive client, `-c` workers each limited to
//! `-q` req/s; it prints latencies in 0.1 ms steps), and the project's own open-loop
//! [`loadgen`](quiesce_e2e::loadgen) (keep-alive HTTP/1.1 and h2c prior knowledge, exact
//! latencies) — hey's `-h2` speaks HTTP/2 only over TLS, so HTTP/2 rows come from the own
//! client. The own client runs at the low rate only unless `--own-high`: open loop, past what a
//! path carries it piles up connections and measures its backlog.
//!
//! For each proxy: its RSS (`VmRSS` of its processes from `/proc`, at the end of each run, the
//! largest over the rounds), and its CPU (utime + stime over the run, from `/proc/PID/stat`, all
//! its processes), as millicores and per 1k req/s. Progress goes to stderr, markdown to stdout.
//!
//! This file holds the flags and the order of the runs; `paths.rs` starts the app and the
//! proxies (`process.rs` their processes), `measure.rs` runs one load through one of them,
//! `procfs.rs` reads its cost from `/proc` and `report.rs` prints the tables.

mod measure;
mod paths;
mod process;
mod procfs;
mod report;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;

use measure::{Client, Sample, measure};
use paths::{PathKind, Target, start_app, start_haproxy, start_nginx, start_quiesce};
use procfs::{clk_tck, rss_kib};
use report::{Key, fmt_mib, print_tables};

#[derive(Debug, Parser)]
#[command(about = "Added latency, RSS and CPU of the sidecar's proxy mode vs nginx and HAProxy")]
struct Args {
    /// The low rate, req/s.
    #[arg(long, default_value_t = 1000.0)]
    low_rate: f64,
    /// The high rate, req/s (default: measured, see the module docs).
    #[arg(long)]
    high_rate: Option<f64>,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of each saturation run.
    #[arg(long, default_value_t = 5)]
    saturation_secs: u64,
    /// Rounds (each cell is the median over them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// hey's concurrent workers (`-c`), each kept-alive connection one of them.
    #[arg(long, default_value_t = 20)]
    workers: u32,
    /// HTTP/2 connections of the own client's h2c runs.
    #[arg(long, default_value_t = 2)]
    h2_connections: usize,
    /// Skip the own client's runs (keep-alive and h2c), hey only.
    #[arg(long)]
    hey_only: bool,
    /// Also run the own client at the high rate (open loop: past what a path carries it piles
    /// up connections and measures its own backlog, so by default it runs at the low rate only).
    #[arg(long)]
    own_high: bool,
    /// Before each run, wait until the machine (without this bench's load) is busier than this
    /// share of its CPUs for less than a second's sample, at most `--quiet-wait-secs`.
    #[arg(long, default_value_t = 0.15)]
    quiet_below: f64,
    /// Longest wait for a quiet machine before each run (then it runs anyway).
    #[arg(long, default_value_t = 30)]
    quiet_wait_secs: u64,
    /// Paths, comma-separated: direct, quiesce, nginx, haproxy.
    #[arg(long, value_delimiter = ',', default_values_t = ["direct".to_string(),
        "quiesce".to_string(), "nginx".to_string(), "haproxy".to_string()])]
    paths: Vec<String>,
    /// Folder of the `quiesce-sidecar` and `demo-app` binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("proxybench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let say = |m: &str| eprintln!("[proxybench {:>6.1}s] {m}", started.elapsed().as_secs_f64());
    let kinds = args
        .paths
        .iter()
        .map(|p| PathKind::parse(p))
        .collect::<Result<Vec<_>>>()?;
    if !kinds.contains(&PathKind::Direct) {
        bail!("--paths must include direct (the baseline)");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary folder")?
            .to_path_buf(),
    };
    let tck = clk_tck();
    let tmp = std::env::temp_dir().join(format!("quiesce-proxybench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let _cleanup = RemoveDir(tmp.clone());

    say("starting demo-app");
    let (mut app, app_addr) = start_app(&bin_dir)?;
    let app_port = app_addr.port();
    let mut targets = Vec::new();
    for k in &kinds {
        say(&format!("starting {}", k.label()));
        targets.push(match k {
            PathKind::Direct => Target {
                kind: PathKind::Direct,
                url: format!("http://{app_addr}/"),
                h2c_url: Some(format!("http://{app_addr}")),
                proc: None,
            },
            PathKind::Quiesce => start_quiesce(&bin_dir, app_port)?,
            PathKind::Nginx => start_nginx(&args.nginx, &tmp, app_port)?,
            PathKind::Haproxy => start_haproxy(&args.haproxy, &tmp, app_port)?,
        });
    }
    let nginx_version = version_line(&args.nginx, "-v");
    let haproxy_version = version_line(&args.haproxy, "-v");
    let idle_rss: BTreeMap<PathKind, u64> = targets
        .iter()
        .filter(|t| t.proc.is_some())
        .map(|t| (t.kind, rss_kib(&t.pids())))
        .collect();

    // Warm-up: connections, pools, page cache.
    for t in &targets {
        measure(
            t,
            Client::Hey,
            Some(args.low_rate),
            Duration::from_secs(2),
            &args,
            tck,
        )
        .await?;
    }

    // Saturation.
    let mut saturation = BTreeMap::new();
    for t in &targets {
        let s = measure(
            t,
            Client::Hey,
            None,
            Duration::from_secs(args.saturation_secs),
            &args,
            tck,
        )
        .await?;
        say(&format!(
            "saturation {}: {:.0} req/s, p50 {:.3} ms, proxy {:.0} mCPU, machine {:.0}% busy",
            t.kind.label(),
            s.rps,
            s.p50_ms,
            s.mcpu,
            s.machine_busy * 100.0
        ));
        saturation.insert(t.kind, s);
    }
    let lowest = saturation
        .values()
        .map(|s| s.rps)
        .fold(f64::INFINITY, f64::min);
    let high = match args.high_rate {
        Some(r) => r,
        None => ((lowest * 0.8) / 500.0).floor().max(1.0) * 500.0,
    };
    let rates = [args.low_rate, high];
    say(&format!(
        "rates: {} and {} req/s, {} rounds of {} s",
        args.low_rate, high, args.rounds, args.duration_secs
    ));

    let mut clients = vec![Client::Hey];
    if !args.hey_only {
        clients.extend([Client::OwnKeepAlive, Client::OwnH2c]);
    }
    let duration = Duration::from_secs(args.duration_secs);
    let mut cells: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    for round in 0..args.rounds {
        for &rate in &rates {
            for &client in &clients {
                if client != Client::Hey && rate != args.low_rate && !args.own_high {
                    continue;
                }
                for t in &targets {
                    app.check_running()?;
                    let s = measure(t, client, Some(rate), duration, &args, tck).await?;
                    say(&format!(
                        "round {}/{}, {rate} req/s, {}, {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, proxy {} {:.0} mCPU, machine {:.0}% busy ({:.0}% before)",
                        round + 1,
                        args.rounds,
                        client.label(),
                        t.kind.label(),
                        s.rps,
                        s.p50_ms,
                        s.p99_ms,
                        s.errors,
                        fmt_mib(s.rss_kib),
                        s.mcpu,
                        s.machine_busy * 100.0,
                        s.background_busy * 100.0
                    ));
                    cells
                        .entry((client, rate as u64, t.kind))
                        .or_default()
                        .push(s);
                }
            }
        }
    }
    for t in &mut targets {
        if let Some(p) = &mut t.proc {
            p.check_running()?;
        }
    }

    print_tables(
        &args,
        &cells,
        &saturation,
        &idle_rss,
        &rates,
        &clients,
        &kinds,
        (&nginx_version, &haproxy_version),
    );
    say("done");
    drop(targets);
    drop(app);
    Ok(())
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn version_line(bin: &str, flag: &str) -> String {
    Command::new(bin)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}
