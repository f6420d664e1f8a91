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
//! [`loadgen`] (keep-alive HTTP/1.1 and h2c prior knowledge, exact latencies) — hey's `-h2`
//! speaks HTTP/2 only over TLS, so HTTP/2 rows come from the own client. The own client runs at
//! the low rate only unless `--own-high`: open loop, past what a path carries it piles up
//! connections and measures its backlog.
//!
//! For each proxy: its RSS (`VmRSS` of its processes from `/proc`, at the end of each run, the
//! largest over the rounds), and its CPU (utime + stime over the run, from `/proc/PID/stat`, all
//! its processes), as millicores and per 1k req/s. Progress goes to stderr, markdown to stdout.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use quiesce_e2e::hey::{self, HeyConfig, HeyReport};
use quiesce_e2e::loadgen::{self, LoadConfig, Protocol};

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

/// One way to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    Direct,
    Quiesce,
    Nginx,
    Haproxy,
}

impl PathKind {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "direct" => Self::Direct,
            "quiesce" => Self::Quiesce,
            "nginx" => Self::Nginx,
            "haproxy" => Self::Haproxy,
            _ => bail!("unknown path {s:?} (direct, quiesce, nginx, haproxy)"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Quiesce => "quiesce",
            Self::Nginx => "nginx",
            Self::Haproxy => "HAProxy",
        }
    }
}

/// Which client and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Client {
    Hey,
    OwnKeepAlive,
    OwnH2c,
}

impl Client {
    fn label(self) -> &'static str {
        match self {
            Self::Hey => "hey, HTTP/1.1 keep-alive",
            Self::OwnKeepAlive => "own, HTTP/1.1 keep-alive",
            Self::OwnH2c => "own, h2c",
        }
    }
}

/// A process tree killed (SIGTERM, then SIGKILL) on drop, its stdout kept.
struct Proc {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd`; stdout lines go to `output` (the last 200) and, until it matches once,
    /// through `find`.
    fn start<T: Send + 'static>(
        name: &'static str,
        mut cmd: Command,
        find: Option<fn(&str) -> Option<T>>,
    ) -> Result<(Self, Option<T>)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let out = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let (Some(f), Some(t)) = (find, tx.as_ref())
                        && let Some(v) = f(&line)
                    {
                        let _ = t.send(v);
                        tx = None;
                    }
                    let mut o = out.lock().unwrap();
                    if o.len() >= 200 {
                        o.remove(0);
                    }
                    o.push(line);
                }
            });
        }
        drop(tx);
        let mut p = Self {
            name,
            child,
            output,
        };
        let found = match find {
            None => None,
            Some(_) => match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(v) => Some(v),
                Err(_) => {
                    let st = p.child.try_wait()?;
                    bail!(
                        "{name} did not report its address (exit: {st:?}); output:\n{}",
                        p.output()
                    );
                }
            },
        };
        Ok((p, found))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited ({st}); output:\n{}", self.name, self.output());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A way to the app: its URLs and the processes that are the proxy (none for direct).
struct Target {
    kind: PathKind,
    /// HTTP/1.1 URL.
    url: String,
    /// h2c (prior knowledge) base URL, where the path has one.
    h2c_url: Option<String>,
    proc: Option<Proc>,
}

impl Target {
    /// The proxy's pid and its descendants' (nginx workers).
    fn pids(&self) -> Vec<u32> {
        self.proc
            .as_ref()
            .map(|p| tree(p.pid()))
            .unwrap_or_default()
    }
}

/// `pid` and its descendants, from `/proc/PID/task/TID/children`.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// utime + stime of a `/proc/PID/stat` line, in clock ticks.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `VmRSS` of a `/proc/PID/status` text, KiB.
fn status_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| stat_ticks(&s))
        .sum()
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| status_rss_kib(&s))
        .sum()
}

/// Busy and total jiffies of the whole machine (`cpu` line of `/proc/stat`).
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A free loopback port (bound, then let go: the proxies bind it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Minimal HTTP/1.1 GET with `Connection: close`: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn wait_ok(addr: SocketAddr, path: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, path).0 != 200 {
        if Instant::now() > deadline {
            bail!("{what}: GET http://{addr}{path} did not answer 200 within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_app(bin_dir: &Path) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(bin_dir.join("demo-app"));
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--exit-on-sigterm",
        "immediate",
    ]);
    let (p, addr) = Proc::start(
        "demo-app",
        cmd,
        Some(|l: &str| {
            l.strip_prefix("demo-app listening on ")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        }),
    )?;
    let addr = addr.context("demo-app address")?;
    wait_ok(addr, "/", "demo-app")?;
    Ok((p, addr))
}

/// The sidecar as it runs in a pod (default probe period, poll interval and log level), in
/// standalone mode, its proxy on a free loopback port in front of the app.
fn start_quiesce(bin_dir: &Path, app: u16) -> Result<Target> {
    let mut cmd = Command::new(bin_dir.join("quiesce-sidecar"));
    let port = app.to_string();
    let route = format!("0:{app}");
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
        "--probe-path",
        "/healthz",
    ])
    .env("RUST_LOG", "info");
    let (p, admin) = Proc::start(
        "quiesce-sidecar",
        cmd,
        Some(|l: &str| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["fields"]["message"] != "admin server listening" {
                return None;
            }
            v["fields"]["addr"].as_str()?.parse::<SocketAddr>().ok()
        }),
    )?;
    let admin = admin.context("sidecar admin address")?;
    wait_ok(admin, "/readyz", "quiesce-sidecar")?;
    let status: serde_json::Value =
        serde_json::from_str(&get(admin, "/status").1).context("sidecar /status")?;
    let proxy: SocketAddr = status["proxy"]["listeners"][0]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no proxy listener in /status: {status}"))?;
    wait_ok(proxy, "/", "quiesce proxy")?;
    Ok(Target {
        kind: PathKind::Quiesce,
        url: format!("http://{proxy}/"),
        // The same listener sniffs HTTP/2's preface.
        h2c_url: Some(format!("http://{proxy}")),
        proc: Some(p),
    })
}

/// nginx as an in-pod reverse proxy: one HTTP/1.1 listener and one h2c (prior knowledge)
/// listener, both to an upstream keep-alive pool of HTTP/1.1 connections to the app.
fn nginx_conf(dir: &Path, h1: u16, h2: u16, app: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    http2_max_requests 10000000;
    upstream app {{
        server 127.0.0.1:{app};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2} http2;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

fn start_nginx(bin: &str, dir: &Path, app: u16) -> Result<Target> {
    let (h1, h2) = (free_port()?, free_port()?);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, h1, h2, app))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf);
    let (p, _) = Proc::start::<()>("nginx", cmd, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], h1));
    wait_ok(addr, "/", "nginx").with_context(|| {
        std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    })?;
    Ok(Target {
        kind: PathKind::Nginx,
        url: format!("http://{addr}/"),
        h2c_url: Some(format!("http://127.0.0.1:{h2}")),
        proc: Some(p),
    })
}

/// HAProxy as an in-pod reverse proxy: an HTTP/1.1 frontend and an h2c one, to one server on
/// loopback over HTTP/1.1 with idle connections shared between requests (`http-reuse always`).
fn haproxy_conf(h1: u16, h2: u16, app: u16) -> String {
    format!(
        r#"global
    maxconn 8192

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    option http-keep-alive
    http-reuse always

frontend h1
    bind 127.0.0.1:{h1}
    default_backend app

frontend h2c
    bind 127.0.0.1:{h2} proto h2
    default_backend app

backend app
    server app 127.0.0.1:{app}
"#
    )
}

fn start_haproxy(bin: &str, dir: &Path, app: u16) -> Result<Target> {
    let (h1, h2) = (free_port()?, free_port()?);
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, haproxy_conf(h1, h2, app))?;
    let mut cmd = Command::new(bin);
    // -db: foreground, no daemon.
    cmd.arg("-db").arg("-f").arg(&conf);
    let (mut p, _) = Proc::start::<()>("haproxy", cmd, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], h1));
    if let Err(e) = wait_ok(addr, "/", "haproxy") {
        p.check_running()?;
        return Err(e);
    }
    Ok(Target {
        kind: PathKind::Haproxy,
        url: format!("http://{addr}/"),
        h2c_url: Some(format!("http://127.0.0.1:{h2}")),
        proc: Some(p),
    })
}

/// One measured run.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Achieved req/s (answers, ok or not, per second of the run).
    rps: f64,
    /// Requests that did not end in a 2xx.
    errors: u64,
    sent: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// The proxy's RSS at the end, KiB (0 for direct).
    rss_kib: u64,
    /// The proxy's CPU over the run, millicores.
    mcpu: f64,
    /// The whole machine's busy share over the run, 0–1.
    machine_busy: f64,
    /// The machine's busy share just before the run (other work), 0–1.
    background_busy: f64,
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
async fn measure(
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

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A cell of the result: one client, rate and path, every round.
type Key = (Client, u64, PathKind);

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.3} ms")
    }
}

fn fmt_added(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:+.3} ms")
    }
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
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

#[allow(clippy::too_many_arguments)]
fn print_tables(
    args: &Args,
    cells: &BTreeMap<Key, Vec<Sample>>,
    saturation: &BTreeMap<PathKind, Sample>,
    idle_rss: &BTreeMap<PathKind, u64>,
    rates: &[f64],
    clients: &[Client],
    kinds: &[PathKind],
    versions: (&str, &str),
) {
    println!(
        "Added latency of an in-pod reverse proxy on loopback (demo app behind it), {} rounds of {} s per cell, median per cell; \
         hey with {} keep-alive workers; own client open loop ({} h2c connections).",
        args.rounds, args.duration_secs, args.workers, args.h2_connections
    );
    println!();
    println!(
        "| client | rate | path | achieved req/s | errors / sent | p50 | p99 | added p50 | added p99 | proxy RSS | proxy CPU | CPU per 1k req/s |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut busy = Vec::new();
    let mut background = Vec::new();
    for &client in clients {
        for &rate in rates {
            let key = |k| (client, rate as u64, k);
            let Some(direct) = cells.get(&key(PathKind::Direct)) else {
                continue;
            };
            for &k in kinds {
                let Some(v) = cells.get(&key(k)) else {
                    continue;
                };
                busy.extend(v.iter().map(|s| s.machine_busy));
                background.extend(v.iter().map(|s| s.background_busy));
                let med = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
                let added = |f: fn(&Sample) -> f64| {
                    median(v.iter().zip(direct).map(|(s, d)| f(s) - f(d)).collect())
                };
                let rps = med(|s| s.rps);
                let errors: u64 = v.iter().map(|s| s.errors).sum();
                let sent: u64 = v.iter().map(|s| s.sent).sum();
                let (rss, cpu, per1k, add50, add99) = if k == PathKind::Direct {
                    ("-".into(), "-".into(), "-".into(), "-".into(), "-".into())
                } else {
                    let mcpu = med(|s| s.mcpu);
                    (
                        fmt_mib(v.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
                        format!("{mcpu:.0} mCPU"),
                        format!("{:.0} mCPU", mcpu / (rps / 1000.0)),
                        fmt_added(added(|s| s.p50_ms)),
                        fmt_added(added(|s| s.p99_ms)),
                    )
                };
                println!(
                    "| {} | {} | {} | {:.0} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
                    client.label(),
                    rate as u64,
                    k.label(),
                    rps,
                    errors,
                    sent,
                    fmt_ms(med(|s| s.p50_ms)),
                    fmt_ms(med(|s| s.p99_ms)),
                    add50,
                    add99,
                    rss,
                    cpu,
                    per1k
                );
            }
        }
    }
    println!();
    println!(
        "Saturation (hey, {} keep-alive workers, no rate limit, {} s):",
        args.workers, args.saturation_secs
    );
    println!();
    println!(
        "| path | req/s | p50 | p99 | proxy RSS (idle → loaded) | proxy CPU | CPU per 1k req/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, s) in saturation {
        let (rss, cpu, per1k) = if *k == PathKind::Direct {
            ("-".into(), "-".into(), "-".into())
        } else {
            (
                format!(
                    "{} → {}",
                    fmt_mib(idle_rss.get(k).copied().unwrap_or(0)),
                    fmt_mib(s.rss_kib)
                ),
                format!("{:.0} mCPU", s.mcpu),
                format!("{:.0} mCPU", s.mcpu / (s.rps / 1000.0)),
            )
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            k.label(),
            s.rps,
            fmt_ms(s.p50_ms),
            fmt_ms(s.p99_ms),
            rss,
            cpu,
            per1k
        );
    }
    println!();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{:.0}%–{:.0}%", lo * 100.0, hi * 100.0)
    };
    println!(
        "Machine: {} cores, {} busy during the runs (all processes, the load generator included), \
         {} busy in the second before each run (other work on the machine; median {:.0}%). {}; {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        range(&busy),
        range(&background),
        median(background.clone()) * 100.0,
        versions.0,
        versions.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_and_rss_from_proc_text() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 3 0 1000 \
                    10000000 2000 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(320));
        let status =
            "Name:\tquiesce-sidecar\nVmPeak:\t  20000 kB\nVmRSS:\t    9876 kB\nThreads:\t3\n";
        assert_eq!(status_rss_kib(status), Some(9876));
        assert_eq!(status_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id();
        assert!(rss_kib(&[me]) > 0);
        assert!(tree(me).contains(&me));
        let (busy, total) = machine_jiffies();
        assert!(total >= busy && total > 0);
    }

    #[test]
    fn median_ignores_nan_and_averages_the_middle_pair() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn configs_listen_on_loopback_only() {
        let n = nginx_conf(Path::new("/tmp/x"), 1001, 1002, 8080);
        assert!(n.contains("listen 127.0.0.1:1001;") && n.contains("listen 127.0.0.1:1002 http2;"));
        assert!(n.contains("keepalive 64;") && n.contains("proxy_set_header Connection \"\";"));
        let h = haproxy_conf(1001, 1002, 8080);
        assert!(h.contains("bind 127.0.0.1:1001\n") && h.contains("http-reuse always"));
        assert!(h.contains("server app 127.0.0.1:8080"));
    }
}
