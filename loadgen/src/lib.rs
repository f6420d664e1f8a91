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
//!
//! Three [`Protocol`]s cover what real clients do: a new HTTP/1.1 connection per request, an
//! HTTP/1.1 keep-alive pool (most HTTP libraries), and HTTP/2 cleartext over a few multiplexed
//! connections per target (gRPC-style channels, [`crate::h2chan`]), which are redialed after a
//! GOAWAY. For HTTP/2 the summary also counts connections opened, ended and sent a GOAWAY, so a
//! test can tell "no loss because the drain was graceful" from "no loss because nothing happened".

pub mod h2chan;
pub mod h2frames;
mod reuse;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, capture_connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet};

use crate::h2chan::{ChannelStats, H2Channel};
use crate::reuse::{TaggingConnector, Uses};

/// How requests travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, one new connection per request (`Connection: close`).
    #[default]
    Http1,
    /// HTTP/1.1 over a keep-alive connection pool.
    #[serde(rename = "keepalive")]
    KeepAlive,
    /// HTTP/2 cleartext with prior knowledge over a few multiplexed connections per target,
    /// redialed when the server sends GOAWAY or closes them.
    H2c,
}

impl Protocol {
    /// The name used on command lines and in summaries: `http1`, `keepalive`, `h2c`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::KeepAlive => "keepalive",
            Self::H2c => "h2c",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http1" => Ok(Self::Http1),
            "keepalive" | "keep-alive" => Ok(Self::KeepAlive),
            "h2c" | "h2" => Ok(Self::H2c),
            _ => Err(format!("unknown protocol {s:?} (http1, keepalive, h2c)")),
        }
    }
}

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
    /// The older switch, kept for existing callers: with `protocol: Http1`, `true` means
    /// [`Protocol::KeepAlive`]. See [`LoadConfig::effective_protocol`].
    pub keep_alive: bool,
    /// How requests travel.
    pub protocol: Protocol,
    /// HTTP/2 connections per target with [`Protocol::H2c`] (at least 1).
    pub h2_connections: usize,
    /// Path of ordinary requests.
    pub path: String,
    /// Optional slow requests.
    pub slow: Option<SlowMix>,
    /// Bound of one request, connect to last body byte.
    pub timeout: Duration,
    /// Keep-alive pool: send a request again, once, when a connection that had already
    /// answered a request closed or reset before any byte of this one's response, as RFC 9112
    /// §9.3.1 allows for idempotent requests and Go's Transport, OkHttp and nginx upstreams do.
    /// That is the race no server can avoid when it closes an idle kept-alive connection (the
    /// client sent just as the close left). Counted in [`Summary::retried_reused`]; `false`
    /// counts such a request as lost, like a client that never retries.
    pub retry_reused: bool,
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
            protocol: Protocol::Http1,
            h2_connections: 2,
            path: "/".to_string(),
            slow: None,
            timeout: Duration::from_secs(10),
            retry_reused: false,
        }
    }

    /// The protocol in force: `protocol`, upgraded to keep-alive by the older `keep_alive`.
    pub fn effective_protocol(&self) -> Protocol {
        match self.protocol {
            Protocol::Http1 if self.keep_alive => Protocol::KeepAlive,
            p => p,
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
    /// HTTP/2: the server's GOAWAY left this stream out (it was not processed); a gRPC client
    /// would retry such a request transparently, so a graceful drain should never cause one.
    #[serde(rename = "goaway")]
    GoAway,
    /// HTTP/2: the server reset the stream with `REFUSED_STREAM` (not processed).
    StreamRefused,
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
    /// HTTP/2 streams left out by a GOAWAY.
    #[serde(default)]
    pub goaway: u64,
    /// HTTP/2 streams refused (`REFUSED_STREAM`).
    #[serde(default)]
    pub stream_refused: u64,
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
    /// The protocol the run used.
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP/2 only: connections dialed (0 for HTTP/1).
    #[serde(default)]
    pub connections_opened: u64,
    /// HTTP/2 only: connections that ended during the run (server close, reset, or let go
    /// after a GOAWAY).
    #[serde(default)]
    pub connections_ended: u64,
    /// HTTP/2 only: connections on which the server sent a GOAWAY.
    #[serde(default)]
    pub connections_goaway: u64,
    /// HTTP/2 only: requests the server did not process (GOAWAY, `REFUSED_STREAM`) and that
    /// were sent again, as gRPC and Go's HTTP/2 clients do ([`crate::h2chan`]).
    #[serde(default)]
    pub retried_unprocessed: u64,
    /// HTTP/1.1 keep-alive with [`LoadConfig::retry_reused`]: requests sent again because a
    /// reused connection ended before their response began (each counted once in `sent`).
    #[serde(default)]
    pub retried_reused: u64,
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
        self.http_status
            + self.reset
            + self.refused
            + self.goaway
            + self.stream_refused
            + self.timeout
            + self.no_target
            + self.other
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
            Outcome::GoAway => self.goaway += 1,
            Outcome::StreamRefused => self.stream_refused += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::NoTarget => self.no_target += 1,
            Outcome::Other(_) => self.other += 1,
        }
        if let Some(s) = r.status {
            *self.status_codes.entry(s).or_default() += 1;
        }
        if r.retried {
            self.retried_reused += 1;
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

/// Classifies a request error by walking its source chain. With `QUIESCE_LOADGEN_DEBUG` set,
/// each error's whole chain goes to stderr with the time (how the GOAWAY races were found).
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Outcome {
    if std::env::var_os("QUIESCE_LOADGEN_DEBUG").is_some() {
        let mut chain = err.to_string();
        let mut cur = err.source();
        while let Some(e) = cur {
            chain.push_str(&format!(": {e} [{e:?}]"));
            cur = e.source();
        }
        eprintln!(
            "loadgen error at {:?}: {chain}",
            std::time::SystemTime::now()
        );
    }
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
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            if h.is_go_away() {
                return Outcome::GoAway;
            }
            if h.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::StreamRefused;
            }
            if h.is_reset() {
                return Outcome::Reset;
            }
            if let Some(io) = h.get_io() {
                cur = Some(io);
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
    /// Sent again after a reused connection ended before its response ([`crate::reuse`]).
    retried: bool,
}

type Pool = Client<TaggingConnector, Empty<Bytes>>;

/// Connections shared by the requests of one run.
enum Transport {
    /// A new connection per request.
    Fresh,
    /// hyper's keep-alive pool; whether requests a reused connection dropped are sent again.
    Pool { pool: Box<Pool>, retry_reused: bool },
    /// One h2c channel per target.
    H2 {
        channels: Mutex<HashMap<String, Arc<H2Channel<Empty<Bytes>>>>>,
        connections: usize,
        stats: Arc<ChannelStats>,
    },
}

impl Transport {
    fn new(cfg: &LoadConfig) -> Self {
        match cfg.effective_protocol() {
            Protocol::Http1 => Self::Fresh,
            Protocol::KeepAlive => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Self::Pool {
                    // hyper-util's own retry covers only requests not yet written; ours
                    // ([`pooled_request`]) is the whole RFC 9112 rule, and optional.
                    pool: Box::new(
                        Client::builder(TokioExecutor::new())
                            .retry_canceled_requests(false)
                            .pool_idle_timeout(Duration::from_secs(30))
                            .build(TaggingConnector(connector)),
                    ),
                    retry_reused: cfg.retry_reused,
                }
            }
            Protocol::H2c => Self::H2 {
                channels: Mutex::default(),
                connections: cfg.h2_connections,
                stats: Arc::default(),
            },
        }
    }

    fn channel(&self, target: &str) -> Option<Arc<H2Channel<Empty<Bytes>>>> {
        let Self::H2 {
            channels,
            connections,
            stats,
        } = self
        else {
            return None;
        };
        let mut map = channels.lock().expect("channels lock");
        let ch = map.entry(target.to_string()).or_insert_with(|| {
            Arc::new(H2Channel::new(
                authority(target),
                *connections,
                stats.clone(),
            ))
        });
        Some(ch.clone())
    }
}

/// `host:port` of a base URL `http://host:port[/]`.
pub fn authority(base_url: &str) -> String {
    base_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

async fn one_request(
    transport: Arc<Transport>,
    target: String,
    path: String,
    slow: bool,
    timeout: Duration,
    launched: Duration,
) -> Record {
    let started = Instant::now();
    let uri = format!("{target}{path}");
    let mut retried = false;
    let fut = async {
        let req = hyper::Request::get(&uri).header(hyper::header::USER_AGENT, "quiesce-loadgen");
        let res = match &*transport {
            Transport::Pool { pool, retry_reused } => {
                let first = pooled_request(pool, &uri).await;
                match first {
                    Err((Outcome::Reset, true)) if *retry_reused => {
                        retried = true;
                        pooled_request(pool, &uri).await.map_err(|(o, _)| o)?
                    }
                    r => r.map_err(|(o, _)| o)?,
                }
            }
            Transport::H2 { .. } => {
                let req = req
                    .body(Empty::new())
                    .map_err(|e| Outcome::Other(e.to_string()))?;
                let ch = transport.channel(&target).expect("h2 transport");
                ch.request(req).await?
            }
            Transport::Fresh => {
                let authority = authority(&target);
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
        retried,
    }
}

/// One GET through the keep-alive pool. Fails with the outcome and whether the request went
/// out on a connection that had answered before (the one case a client may send it again).
async fn pooled_request(
    pool: &Pool,
    uri: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, (Outcome, bool)> {
    let mut req = hyper::Request::get(uri)
        .header(hyper::header::USER_AGENT, "quiesce-loadgen")
        .body(Empty::new())
        .map_err(|e| (Outcome::Other(e.to_string()), false))?;
    let captured = capture_connection(&mut req);
    let res = pool.request(req).await;
    let uses = Uses::of(&captured);
    match res {
        Ok(res) => {
            if let Some(u) = uses {
                u.answered();
            }
            Ok(res)
        }
        Err(e) => Err((classify(&e), uses.is_some_and(|u| u.reused()))),
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
    let protocol = cfg.effective_protocol();
    let transport = Arc::new(Transport::new(&cfg));
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
                    transport.clone(),
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
                retried: false,
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
        protocol,
        ..Default::default()
    };
    if let Transport::H2 { stats, .. } = &*transport {
        let c = stats.snapshot();
        summary.connections_opened = c.opened;
        summary.connections_ended = c.ended;
        summary.connections_goaway = c.goaways;
        summary.retried_unprocessed = c.retried_unprocessed;
    }
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
        // HTTP/2 stream errors, as hyper wraps them.
        let refused = Error::other(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(classify(&refused), Outcome::StreamRefused);
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
            retried: false,
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

    /// An in-process h2c server that answers 200 and sends each connection a graceful GOAWAY
    /// after `per_conn` requests (the way a draining server does), counting connections.
    async fn goaway_server(per_conn: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                    let s = served.clone();
                    let svc = hyper::service::service_fn(move |_req| {
                        if s.fetch_add(1, Ordering::Relaxed) + 1 == per_conn {
                            let _ = tx.send(());
                        }
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = rx.recv() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        (url, conns)
    }

    #[tokio::test]
    async fn h2c_redials_after_goaway_and_loses_nothing() {
        let (url, conns) = goaway_server(25).await;
        let mut cfg = LoadConfig::new(url, 500.0);
        cfg.protocol = Protocol::H2c;
        cfg.h2_connections = 2;
        cfg.count = Some(400);
        let s = run(cfg).await;
        assert_eq!((s.sent, s.ok, s.failed()), (400, 400, 0), "{s:?}");
        assert_eq!(s.protocol, Protocol::H2c);
        // 400 requests at 25 per connection: about 16 connections, each sent a GOAWAY (the last
        // one's may arrive before or after the run ends, so opened >= goaway, not >).
        assert!(s.connections_goaway >= 10, "{s:?}");
        assert!(s.connections_opened >= s.connections_goaway, "{s:?}");
        assert!(s.connections_ended >= s.connections_goaway - 2, "{s:?}");
        let accepted = conns.load(std::sync::atomic::Ordering::Relaxed) as u64;
        assert_eq!(accepted, s.connections_opened, "{s:?}");
    }

    #[test]
    fn protocol_names_and_the_older_keep_alive_switch() {
        for p in [Protocol::Http1, Protocol::KeepAlive, Protocol::H2c] {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert!("h3".parse::<Protocol>().is_err());
        let mut cfg = LoadConfig::new("http://127.0.0.1:1", 1.0);
        assert_eq!(cfg.effective_protocol(), Protocol::Http1);
        cfg.keep_alive = true;
        assert_eq!(cfg.effective_protocol(), Protocol::KeepAlive);
        cfg.protocol = Protocol::H2c;
        assert_eq!(cfg.effective_protocol(), Protocol::H2c);
        // A summary written before the protocol fields existed still reads.
        let old = r#"{"sent":1,"ok":1,"http_status":0,"reset":0,"refused":0,"timeout":0,
            "no_target":0,"other":0,"slow_sent":0,"slow_ok":0,"status_codes":{"200":1},
            "ok_by_target":{},"ok_by_version":{},"latency_ms":{"p50":1.0,"p99":1.0,"max":1.0},
            "elapsed_ms":5,"error_samples":[]}"#;
        let s: Summary = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.protocol, s.goaway, s.connections_goaway),
            (Protocol::Http1, 0, 0)
        );
    }
}
