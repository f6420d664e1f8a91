//! Runs `hey` (github.com/rakyll/hey), a widely used third-party HTTP load generator, and reads
//! its text summary.
//!
//! Our own [`crate::loadgen`] could share a blind spot with the sidecar it tests (both are ours),
//! so the zero-loss claims are also checked with a client nobody here wrote. hey is Go's
//! `net/http` client: keep-alive by default (`-disable-keepalive` for a connection per request),
//! `-c` workers each rate-limited to `-q` requests per second, `-z` duration. Unlike our open-loop
//! loadgen each worker waits for its answer before the next tick (closed loop per worker), so a
//! stalled backend lowers hey's rate instead of piling up requests. Also unlike ours, Go's client
//! silently retries an idempotent GET once when a reused keep-alive connection breaks before
//! the answer starts, so hey with keep-alive can report no error where a non-retrying client
//! loses a request (a real Go client would behave the same way).
//!
//! `e2e/cluster/tools.sh` installs it into `.tools/bin/hey` (version pinned in
//! `e2e/cluster/versions.env`). [`parse`] is pure and tested on captured output in
//! `e2e/testdata/`; [`run`] / [`spawn`] run the binary.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// One hey run.
#[derive(Debug, Clone)]
pub struct HeyConfig {
    /// Full URL requested (`http://127.0.0.1:8080/`).
    pub url: String,
    /// Total requests per second over all workers.
    pub rate: f64,
    /// Concurrent workers (`-c`); each sends `rate / workers` requests per second (`-q`).
    pub workers: u32,
    /// How long to send (`-z`).
    pub duration: Duration,
    /// Keep connections alive (hey's default); `false` adds `-disable-keepalive`.
    pub keep_alive: bool,
    /// Ask for HTTP/2 (`-h2`). Go's client negotiates it over TLS only (no h2c), so against an
    /// `http://` URL hey stays on HTTP/1.1 whatever this says.
    pub h2: bool,
    /// Per-request timeout in whole seconds (`-t`, 0 = none).
    pub timeout_secs: u32,
    /// Extra request headers, `"Name: value"` (`-H`).
    pub headers: Vec<String>,
    /// The hey binary.
    pub bin: PathBuf,
}

impl HeyConfig {
    /// `rate` req/s to `url` for `duration` over 10 workers, keep-alive, 10 s timeout.
    pub fn new(url: impl Into<String>, rate: f64, duration: Duration) -> Self {
        Self {
            url: url.into(),
            rate,
            workers: 10,
            duration,
            keep_alive: true,
            h2: false,
            timeout_secs: 10,
            headers: Vec::new(),
            bin: hey_bin(),
        }
    }

    /// hey's command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let workers = self.workers.max(1);
        let mut a = vec![
            "-z".to_string(),
            format!("{}ms", self.duration.as_millis().max(1)),
            "-c".to_string(),
            workers.to_string(),
            "-q".to_string(),
            format!("{}", self.rate / f64::from(workers)),
            "-t".to_string(),
            self.timeout_secs.to_string(),
        ];
        if !self.keep_alive {
            a.push("-disable-keepalive".to_string());
        }
        if self.h2 {
            a.push("-h2".to_string());
        }
        for h in &self.headers {
            a.extend(["-H".to_string(), h.clone()]);
        }
        a.push(self.url.clone());
        a
    }
}

/// Where hey is: `$HEY`, else the repository's `.tools/bin/hey`, else `hey` on `PATH`.
pub fn hey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HEY") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/hey");
    if local.exists() {
        local
    } else {
        PathBuf::from("hey")
    }
}

/// What hey's summary says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeyReport {
    /// Requests that ended, answered or not (answers plus errors).
    pub sent: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Everything else: non-2xx answers and errors.
    pub failed: u64,
    /// Answers by status code (`Status code distribution`).
    pub status_codes: BTreeMap<u16, u64>,
    /// Errors as hey prints them, with their counts (`Error distribution`).
    pub errors: Vec<(u64, String)>,
    /// `Requests/sec`.
    pub requests_per_sec: f64,
    /// `Total`, seconds.
    pub total_secs: f64,
    /// Latency percentiles in milliseconds, by percent (`Latency distribution`: 10 … 99).
    pub latency_ms: BTreeMap<u32, f64>,
}

impl HeyReport {
    /// Errors whose text contains `needle` (e.g. `"connection refused"`, `"reset by peer"`).
    pub fn errors_matching(&self, needle: &str) -> u64 {
        self.errors
            .iter()
            .filter(|(_, e)| e.contains(needle))
            .map(|(n, _)| n)
            .sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Other,
    Summary,
    Latency,
    Status,
    Errors,
}

/// Parses hey's text summary.
pub fn parse(text: &str) -> Result<HeyReport> {
    let mut r = HeyReport::default();
    let mut section = Section::Other;
    let mut seen_summary = false;
    for raw in text.lines() {
        let line = raw.trim();
        if !raw.starts_with(' ') && !raw.starts_with('\t') && line.ends_with(':') {
            section = match line {
                "Summary:" => {
                    seen_summary = true;
                    Section::Summary
                }
                "Latency distribution:" => Section::Latency,
                "Status code distribution:" => Section::Status,
                "Error distribution:" => Section::Errors,
                _ => Section::Other,
            };
            continue;
        }
        if line.is_empty() {
            continue;
        }
        match section {
            Section::Summary => {
                if let Some(v) = field(line, "Total:") {
                    r.total_secs = secs(v)?;
                } else if let Some(v) = field(line, "Requests/sec:") {
                    r.requests_per_sec = v.parse().context("Requests/sec")?;
                }
            }
            Section::Latency => {
                // "50%% in 0.0009 secs" (hey prints the `%%` of its format string as is)
                let (pct, rest) = line.split_once("% in ").context("latency line")?;
                let pct = pct.trim_end_matches('%').parse().context("percent")?;
                r.latency_ms.insert(pct, secs(rest)? * 1000.0);
            }
            Section::Status => {
                // "[200]\t1000 responses"
                let (code, count) = bracketed(line)?;
                let count: u64 = count
                    .trim_end_matches("responses")
                    .trim()
                    .parse()
                    .context("status count")?;
                *r.status_codes
                    .entry(code.parse().context("status code")?)
                    .or_default() += count;
            }
            Section::Errors => {
                // "[12]\tGet \"http://…\": dial tcp …: connect: connection refused"
                let (count, msg) = bracketed(line)?;
                r.errors.push((
                    count.parse().context("error count")?,
                    msg.trim().to_string(),
                ));
            }
            Section::Other => {}
        }
    }
    if !seen_summary {
        bail!("no `Summary:` in hey's output:\n{text}");
    }
    r.ok = r
        .status_codes
        .iter()
        .filter(|(c, _)| (200..300).contains(*c))
        .map(|(_, n)| n)
        .sum();
    let answered: u64 = r.status_codes.values().sum();
    let errors: u64 = r.errors.iter().map(|(n, _)| n).sum();
    r.sent = answered + errors;
    r.failed = r.sent - r.ok;
    Ok(r)
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.strip_prefix(name).map(str::trim)
}

fn secs(v: &str) -> Result<f64> {
    v.trim()
        .trim_end_matches("secs")
        .trim()
        .parse()
        .with_context(|| format!("seconds in {v:?}"))
}

/// `"[x]\trest"` → `("x", "rest")`.
fn bracketed(line: &str) -> Result<(&str, &str)> {
    let rest = line.strip_prefix('[').context("no `[`")?;
    rest.split_once(']')
        .with_context(|| format!("no `]` in {line:?}"))
}

/// A running hey.
#[derive(Debug)]
pub struct HeyRun {
    child: Child,
}

/// Starts hey in the background.
pub fn spawn(cfg: &HeyConfig) -> Result<HeyRun> {
    let child = Command::new(&cfg.bin)
        .args(cfg.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install it with e2e/cluster/tools.sh)",
                cfg.bin.display()
            )
        })?;
    Ok(HeyRun { child })
}

impl HeyRun {
    /// Asks hey to stop early (SIGINT, after which it still prints its summary).
    pub async fn interrupt(&self) -> Result<()> {
        let pid = self.child.id().context("hey already exited")?;
        let status = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -INT {pid} failed");
        }
        Ok(())
    }

    /// Waits for hey to end and parses its summary.
    pub async fn finish(self) -> Result<HeyReport> {
        let out = self.child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse(&stdout).with_context(|| {
            format!(
                "hey exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// Runs hey to the end.
pub async fn run(cfg: &HeyConfig) -> Result<HeyReport> {
    spawn(cfg)?.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = include_str!("../testdata/hey-ok.txt");
    const ERRORS: &str = include_str!("../testdata/hey-errors.txt");

    #[test]
    fn args_split_the_rate_over_workers() {
        let mut c = HeyConfig::new("http://127.0.0.1:1/", 200.0, Duration::from_secs(3));
        c.workers = 4;
        c.keep_alive = false;
        c.headers.push("X-A: b".into());
        assert_eq!(
            c.args().join(" "),
            "-z 3000ms -c 4 -q 50 -t 10 -disable-keepalive -H X-A: b http://127.0.0.1:1/"
        );
    }

    #[test]
    fn parses_a_clean_run() {
        let r = parse(OK).unwrap();
        assert_eq!((r.sent, r.ok, r.failed), (1500, 1500, 0), "{r:?}");
        assert_eq!(r.status_codes.get(&200), Some(&r.ok));
        assert!(r.errors.is_empty());
        assert!(r.requests_per_sec > 0.0 && r.total_secs > 0.0);
        assert_eq!(
            r.latency_ms.keys().copied().collect::<Vec<_>>(),
            vec![10, 25, 50, 75, 90, 95, 99]
        );
        assert!(r.latency_ms[&50] <= r.latency_ms[&99]);
    }

    #[test]
    fn parses_a_run_with_errors() {
        let r = parse(ERRORS).unwrap();
        assert!(r.ok > 0 && r.failed > 0, "{r:?}");
        assert_eq!(r.sent, r.ok + r.failed);
        let errors: u64 = r.errors.iter().map(|(n, _)| n).sum();
        assert_eq!(r.failed, errors);
        assert_eq!(r.errors_matching("connection refused"), 320, "{r:?}");
        assert_eq!(r.errors_matching(": EOF"), 10, "{r:?}");
        assert_eq!((r.ok, r.failed), (40, 330));
    }

    #[test]
    fn rejects_output_without_a_summary() {
        assert!(parse("flag provided but not defined: -x\n").is_err());
    }

    /// Runs the real hey (when installed) against an in-process HTTP/1.1 server on loopback.
    #[tokio::test]
    async fn runs_hey_on_loopback_when_installed() {
        let bin = hey_bin();
        if std::process::Command::new(&bin).arg("-h").output().is_err() {
            eprintln!("hey not installed ({}), skipped", bin.display());
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    hyper_util::rt::TokioIo::new(tcp),
                    hyper::service::service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")),
                        ))
                    }),
                ));
            }
        });
        let mut cfg = HeyConfig::new(url, 200.0, Duration::from_secs(1));
        cfg.workers = 4;
        let r = run(&cfg).await.unwrap();
        assert!(r.ok > 100 && r.failed == 0, "{r:?}");
    }
}
