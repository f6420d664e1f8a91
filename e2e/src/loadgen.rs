//! Open-loop HTTP load generator that counts every request's outcome.
//!
//! Open loop: request `i` is launched at `start + i / rate` whether or not earlier requests
//! finished, so slow or failing backends do not slow the load down (a closed loop would hide
//! failures by sending less). Each request ends in exactly one [`Outcome`]; the [`Summary`]
//! adds them up and serializes to JSON.
//!
//! Targets are base URLs (`http://127.0.0.1:8080`) in a shared [`Targets`] set; requests go
//! round-robin to the active ones. A test can switch a target off when its backend stops being
//! ready, the way kube-proxy stops sending new connections to a pod that left the endpoints.
//! With keep-alive, pooled connections to a switched-off target stay open but receive no new
//! requests.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet};

/// A share of slow requests (`/slow?ms=N`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SlowMix {
    /// How long the app should take, milliseconds.
    pub ms: u64,
    /// Share of requests that are slow, 0.0–1.0, spread evenly.
    pub fraction: f64,
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where requests go.
    pub targets: Targets,
    /// Requests per second.
    pub rate: f64,
    /// Stop launching after this long (`None`: until the count or [`LoadHandle::stop`]).
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Reuse connections (`false`: one new connection per request, `Connection: close`).
    pub keep_alive: bool,
    /// Path of ordinary requests.
    pub path: String,
    /// Optional slow requests.
    pub slow: Option<SlowMix>,
    /// Bound of one request, connect to last body byte.
    pub timeout: Duration,
}

impl LoadConfig {
    /// `rate` req/s to one base URL, no keep-alive, path `/`, 10 s timeout, until stopped.
    pub fn new(url: impl Into<String>, rate: f64) -> Self {
        Self {
            targets: Targets::new([url.into()]),
            rate,
            duration: None,
            count: None,
            keep_alive: false,
            path: "/".to_string(),
            slow: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The set of base URLs, each active or not; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Targets(Arc<RwLock<Vec<(String, bool)>>>);

impl Targets {
    /// All given URLs, active.
    pub fn new(urls: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(RwLock::new(
            urls.into_iter().map(|u| (u, true)).collect(),
        )))
    }

    /// Adds a URL (active) if absent.
    pub fn add(&self, url: &str) {
        let mut v = self.0.write().expect("targets lock");
        if !v.iter().any(|(u, _)| u == url) {
            v.push((url.to_string(), true));
        }
    }

    /// Marks a URL active or not; new requests go only to active URLs.
    pub fn set_active(&self, url: &str, active: bool) {
        for (u, a) in self.0.write().expect("targets lock").iter_mut() {
            if u == url {
                *a = active;
            }
        }
    }

    /// The `i`-th pick, round-robin over the active URLs.
    pub fn pick(&self, i: u64) -> Option<String> {
        let v = self.0.read().expect("targets lock");
        let active: Vec<&String> = v.iter().filter(|(_, a)| *a).map(|(u, _)| u).collect();
        if active.is_empty() {
            None
        } else {
            Some(active[(i % active.len() as u64) as usize].clone())
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx with the whole body read.
    Ok,
    /// A complete answer with a non-2xx status.
    HttpStatus(u16),
    /// Connection reset or closed before the answer was complete.
    Reset,
    /// Connection refused.
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// No active target to send to.
    NoTarget,
    /// Anything else.
    Other(String),
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests launched.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers.
    pub http_status: u64,
    /// Resets / early closes.
    pub reset: u64,
    /// Refused connections.
    pub refused: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Requests that had no active target.
    pub no_target: u64,
    /// Other errors.
    pub other: u64,
    /// Slow requests launched.
    pub slow_sent: u64,
    /// Slow requests answered 2xx.
    pub slow_ok: u64,
    /// Answers by status code.
    pub status_codes: BTreeMap<u16, u64>,
    /// 2xx answers by target.
    pub ok_by_target: BTreeMap<String, u64>,
    /// 2xx answers by `x-demo-version` header (demo-app), if present.
    pub ok_by_version: BTreeMap<String, u64>,
    /// Latency of 2xx answers, milliseconds: p50, p99, max.
    pub latency_ms: Latency,
    /// Wall time from first launch to last completion, milliseconds.
    pub elapsed_ms: u64,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
    /// When each failed request was launched, milliseconds after the first launch (sorted).
    #[serde(default)]
    pub failed_at_ms: Vec<u64>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Requests that did not end in a 2xx answer.
    pub fn failed(&self) -> u64 {
        self.http_status + self.reset + self.refused + self.timeout + self.no_target + self.other
    }

    fn add(&mut self, r: &Record) {
        match &r.outcome {
            Outcome::Ok => {
                self.ok += 1;
                *self.ok_by_target.entry(r.target.clone()).or_default() += 1;
                if let Some(v) = &r.version {
                    *self.ok_by_version.entry(v.clone()).or_default() += 1;
                }
                if r.slow {
                    self.slow_ok += 1;
                }
            }
            Outcome::HttpStatus(_) => self.http_status += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::NoTarget => self.no_target += 1,
            Outcome::Other(_) => self.other += 1,
        }
        if let Some(s) = r.status {
            *self.status_codes.entry(s).or_default() += 1;
        }
        if r.outcome != Outcome::Ok {
            self.failed_at_ms.push(r.launched.as_millis() as u64);
        }
        if r.outcome != Outcome::Ok && self.error_samples.len() < 10 {
            self.error_samples
                .push(format!("{} {}: {:?}", r.target, r.path, r.outcome));
        }
    }
}

/// Classifies a request error by walking its source chain.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Outcome {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut incomplete = false;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return Outcome::Refused,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return Outcome::Reset;
                }
                TimedOut => return Outcome::Timeout,
                _ => {}
            }
            // A wrapping io::Error's source() skips the wrapped error itself.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            incomplete = true;
        }
        cur = e.source();
    }
    if incomplete {
        Outcome::Reset
    } else {
        Outcome::Other(err.to_string())
    }
}

struct Record {
    target: String,
    path: String,
    slow: bool,
    outcome: Outcome,
    status: Option<u16>,
    version: Option<String>,
    latency: Duration,
    /// Launch time after the run's start.
    launched: Duration,
}

type Pool = Client<HttpConnector, Empty<Bytes>>;

async fn one_request(
    pool: Option<Pool>,
    target: String,
    path: String,
    slow: bool,
    timeout: Duration,
    launched: Duration,
) -> Record {
    let started = Instant::now();
    let uri = format!("{target}{path}");
    let fut = async {
        let req = hyper::Request::get(&uri).header(hyper::header::USER_AGENT, "quiesce-loadgen");
        let res = match &pool {
            Some(pool) => {
                let req = req
                    .body(Empty::new())
                    .map_err(|e| Outcome::Other(e.to_string()))?;
                pool.request(req).await.map_err(|e| classify(&e))?
            }
            None => {
                let authority = target.trim_start_matches("http://").to_string();
                let stream = tokio::net::TcpStream::connect(&authority)
                    .await
                    .map_err(|e| classify(&e))?;
                let _ = stream.set_nodelay(true);
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| classify(&e))?;
                tokio::spawn(conn);
                let req = req
                    .header(hyper::header::HOST, authority)
                    .header(hyper::header::CONNECTION, "close")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| Outcome::Other(e.to_string()))?;
                send.send_request(req).await.map_err(|e| classify(&e))?
            }
        };
        let status = res.status().as_u16();
        let version = res
            .headers()
            .get("x-demo-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The whole body must arrive: a reset mid-body is a failure.
        res.into_body().collect().await.map_err(|e| classify(&e))?;
        Ok::<_, Outcome>((status, version))
    };
    let (outcome, status, version) = match tokio::time::timeout(timeout, fut).await {
        Err(_) => (Outcome::Timeout, None, None),
        Ok(Err(o)) => (o, None, None),
        Ok(Ok((s, v))) if (200..300).contains(&s) => (Outcome::Ok, Some(s), v),
        Ok(Ok((s, _))) => (Outcome::HttpStatus(s), Some(s), None),
    };
    Record {
        target,
        path,
        slow,
        outcome,
        status,
        version,
        latency: started.elapsed(),
        launched,
    }
}

/// Whether request `i` is slow: spreads `fraction` evenly without randomness.
pub fn is_slow(i: u64, fraction: f64) -> bool {
    fraction > 0.0 && ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// A running load.
#[derive(Debug)]
pub struct LoadHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Summary>,
}

impl LoadHandle {
    /// Stops launching new requests; in-flight ones still complete.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and waits for every launched request.
    pub async fn finish(self) -> Summary {
        self.stop();
        self.task.await.unwrap_or_default()
    }
}

/// Starts the load in the background.
pub fn spawn(cfg: LoadConfig) -> LoadHandle {
    let (stop, rx) = watch::channel(false);
    LoadHandle {
        stop,
        task: tokio::spawn(run_until(cfg, rx)),
    }
}

/// Runs until the duration or count is reached; waits for every request.
pub async fn run(cfg: LoadConfig) -> Summary {
    let (_stop, rx) = watch::channel(false);
    run_until(cfg, rx).await
}

async fn run_until(cfg: LoadConfig, stop: watch::Receiver<bool>) -> Summary {
    let pool: Option<Pool> = cfg.keep_alive.then(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .retry_canceled_requests(false)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector)
    });
    let interval = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut set = JoinSet::new();
    let mut records = Vec::new();
    let mut i = 0u64;
    loop {
        if *stop.borrow() || cfg.count.is_some_and(|c| i >= c) {
            break;
        }
        let due = start + interval.mul_f64(i as f64);
        if deadline.is_some_and(|d| due >= d) {
            break;
        }
        let mut stop_rx = stop.clone();
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            _ = stop_rx.changed() => continue,
        }
        let slow = cfg.slow.is_some_and(|s| is_slow(i, s.fraction));
        let path = match cfg.slow {
            Some(s) if slow => format!("/slow?ms={}", s.ms),
            _ => cfg.path.clone(),
        };
        match cfg.targets.pick(i) {
            Some(target) => {
                set.spawn(one_request(
                    pool.clone(),
                    target,
                    path,
                    slow,
                    cfg.timeout,
                    start.elapsed(),
                ));
            }
            None => records.push(Record {
                target: String::new(),
                path,
                slow,
                outcome: Outcome::NoTarget,
                status: None,
                version: None,
                latency: Duration::ZERO,
                launched: start.elapsed(),
            }),
        }
        i += 1;
        while let Some(done) = set.try_join_next() {
            if let Ok(r) = done {
                records.push(r);
            }
        }
    }
    while let Some(done) = set.join_next().await {
        if let Ok(r) = done {
            records.push(r);
        }
    }
    let mut summary = Summary {
        sent: i,
        elapsed_ms: start.elapsed().as_millis() as u64,
        ..Default::default()
    };
    let mut lat: Vec<f64> = Vec::new();
    for r in &records {
        summary.add(r);
        if r.slow {
            summary.slow_sent += 1;
        }
        if r.outcome == Outcome::Ok {
            lat.push(r.latency.as_secs_f64() * 1000.0);
        }
    }
    summary.failed_at_ms.sort_unstable();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    summary.latency_ms = Latency {
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or(0.0),
    };
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_mix_is_spread_evenly() {
        let n = (0..100).filter(|&i| is_slow(i, 0.1)).count();
        assert_eq!(n, 10);
        assert!(!is_slow(0, 0.1) && is_slow(9, 0.1));
        assert_eq!((0..10).filter(|&i| is_slow(i, 0.0)).count(), 0);
        assert_eq!((0..10).filter(|&i| is_slow(i, 1.0)).count(), 10);
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            classify(&Error::from(ErrorKind::ConnectionRefused)),
            Outcome::Refused
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::ConnectionReset)),
            Outcome::Reset
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::UnexpectedEof)),
            Outcome::Reset
        );
        // Wrapped errors are found through the source chain.
        let wrapped = Error::other(Error::from(ErrorKind::BrokenPipe));
        assert_eq!(classify(&wrapped), Outcome::Reset);
        assert!(matches!(
            classify(&Error::other("weird")),
            Outcome::Other(_)
        ));
    }

    #[test]
    fn targets_round_robin_over_active_ones() {
        let t = Targets::new(["a".to_string(), "b".to_string()]);
        assert_eq!((t.pick(0), t.pick(1)), (Some("a".into()), Some("b".into())));
        t.set_active("a", false);
        assert_eq!((t.pick(0), t.pick(1)), (Some("b".into()), Some("b".into())));
        t.set_active("b", false);
        assert_eq!(t.pick(0), None);
        let mut s = Summary::default();
        s.add(&Record {
            target: String::new(),
            path: "/".into(),
            slow: false,
            outcome: Outcome::NoTarget,
            status: None,
            version: None,
            latency: Duration::ZERO,
            launched: Duration::from_millis(7),
        });
        assert_eq!(s.failed(), 1);
        assert_eq!(s.failed_at_ms, vec![7]);
    }

    #[tokio::test]
    async fn counts_refused_connections_open_loop() {
        // A port nothing listens on (loopback only).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = LoadConfig::new(format!("http://127.0.0.1:{port}"), 200.0);
        cfg.count = Some(20);
        let s = run(cfg).await;
        assert_eq!((s.sent, s.refused, s.failed()), (20, 20, 20), "{s:?}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }
}
