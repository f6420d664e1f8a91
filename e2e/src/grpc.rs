//! gRPC load: open-loop unary RPCs plus a few long server streams, over h2c channels that
//! redial on GOAWAY the way a gRPC channel does.
//!
//! gRPC is the hardest common client for a drain: every RPC of a client rides a few long-lived
//! HTTP/2 connections, so the only way to move it off a pod is a GOAWAY, and a server stream
//! can outlive any drain timeout. This module speaks the wire format by hand against the demo
//! app's `quiesce.demo.Demo` service (payloads are opaque bytes, no codegen): a message is a
//! 5-byte prefix and the bytes, the status is `grpc-status` in the trailers. An RPC is ok only
//! with HTTP 200, `grpc-status: 0`, and for a stream every one of the N messages asked for.
//!
//! The pure parts ([`frame`], [`Deframer`], [`grpc_status`]) are separate from the I/O.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, body::Bytes};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    h2chan::{ChannelStats, H2Channel},
    loadgen::{Outcome, Targets, authority, classify},
};

/// Path of the unary echo method.
pub const ECHO: &str = "/quiesce.demo.Demo/Echo";
/// Path of the server-streaming method.
pub const STREAM: &str = "/quiesce.demo.Demo/Stream";

/// Pause after a failed stream before the next one.
const STREAM_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One length-prefixed, uncompressed gRPC message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f.into()
}

/// Splits a body arriving in arbitrary chunks into gRPC messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    /// Adds bytes; returns the messages completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(head) = self.buf.get(..5) {
            if head[0] != 0 {
                return Err("compressed message".into());
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if self.buf.len() < 5 + len {
                break;
            }
            out.push(self.buf[5..5 + len].to_vec());
            self.buf.drain(..5 + len);
        }
        Ok(out)
    }

    /// Whether a message is cut short (bytes left over).
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// `grpc-status` from the trailers, else from the headers (a trailers-only answer).
pub fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u32> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// How one RPC ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcOutcome {
    /// HTTP 200, `grpc-status: 0`, and (streams) every message.
    Ok,
    /// The request or connection failed (refused, reset, GOAWAY, timeout, non-200, …).
    Transport(Outcome),
    /// A non-zero `grpc-status` (14 UNAVAILABLE is what a gRPC library reports on a reset).
    GrpcStatus(u32),
    /// The answer ended without `grpc-status`.
    MissingStatus,
    /// A stream ended early: fewer messages than asked for.
    Truncated {
        /// Messages received.
        got: u64,
        /// Messages asked for.
        want: u64,
    },
}

impl RpcOutcome {
    /// Short name used as a key in [`RpcCounts::by_outcome`].
    pub fn key(&self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::Transport(Outcome::HttpStatus(s)) => format!("http_{s}"),
            Self::Transport(Outcome::Other(_)) => "other".into(),
            Self::Transport(o) => serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "other".into()),
            Self::GrpcStatus(c) => format!("grpc_status_{c}"),
            Self::MissingStatus => "missing_status".into(),
            Self::Truncated { .. } => "truncated".into(),
        }
    }
}

/// Totals of one kind of RPC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcCounts {
    /// RPCs started.
    pub sent: u64,
    /// RPCs that ended ok.
    pub ok: u64,
    /// RPCs that did not.
    pub failed: u64,
    /// RPCs by [`RpcOutcome::key`].
    pub by_outcome: BTreeMap<String, u64>,
}

impl RpcCounts {
    fn add(&mut self, o: &RpcOutcome) {
        self.sent += 1;
        if *o == RpcOutcome::Ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        *self.by_outcome.entry(o.key()).or_default() += 1;
    }
}

/// Totals of a gRPC run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcSummary {
    /// Unary `Echo` calls.
    pub unary: RpcCounts,
    /// `Stream` calls.
    pub streams: RpcCounts,
    /// Messages received on streams, all calls together.
    pub stream_messages: u64,
    /// HTTP/2 connections dialed.
    pub connections_opened: u64,
    /// HTTP/2 connections that ended during the run.
    pub connections_ended: u64,
    /// HTTP/2 connections on which the server sent a GOAWAY.
    pub connections_goaway: u64,
    /// Calls the server did not process (GOAWAY, `REFUSED_STREAM`), sent again as gRPC's
    /// transparent retry does.
    #[serde(default)]
    pub retried_unprocessed: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// When each failed RPC started, milliseconds after the start (sorted).
    pub failed_at_ms: Vec<u64>,
    /// The first few failures, for diagnosis.
    pub error_samples: Vec<String>,
}

impl GrpcSummary {
    /// RPCs of both kinds that failed.
    pub fn failed(&self) -> u64 {
        self.unary.failed + self.streams.failed
    }
}

/// gRPC load settings.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Base URLs (`http://host:port`), round-robin over the active ones.
    pub targets: Targets,
    /// Unary calls per second (open loop); 0 for streams only.
    pub rate: f64,
    /// Stop starting calls after this long (`None`: until the count or [`GrpcHandle::stop`]).
    pub duration: Option<Duration>,
    /// Stop after this many unary calls.
    pub count: Option<u64>,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// `x-delay-ms` of each unary call (server-side sleep).
    pub delay_ms: u64,
    /// Server streams kept open at once; each starts again when it ends, until the unary calls
    /// are done (with `rate` 0: until the duration or the stop).
    pub streams: usize,
    /// Messages per stream (`x-count`).
    pub stream_messages: u64,
    /// Gap between stream messages, milliseconds (`x-interval-ms`).
    pub stream_interval_ms: u64,
    /// Bound of one unary call; a stream gets this plus its expected length.
    pub timeout: Duration,
}

impl GrpcConfig {
    /// `rate` unary calls/s to one base URL over 2 connections, no streams, until stopped.
    pub fn new(url: impl Into<String>, rate: f64) -> Self {
        Self {
            targets: Targets::new([url.into()]),
            rate,
            duration: None,
            count: None,
            connections: 2,
            delay_ms: 0,
            streams: 0,
            stream_messages: 10,
            stream_interval_ms: 100,
            timeout: Duration::from_secs(10),
        }
    }
}

type Channel = H2Channel<Full<Bytes>>;

struct Channels {
    map: Mutex<BTreeMap<String, Arc<Channel>>>,
    connections: usize,
    stats: Arc<ChannelStats>,
}

impl Channels {
    fn get(&self, target: &str) -> Arc<Channel> {
        let mut map = self.map.lock().expect("channels lock");
        map.entry(target.to_string())
            .or_insert_with(|| {
                Arc::new(H2Channel::new(
                    authority(target),
                    self.connections,
                    self.stats.clone(),
                ))
            })
            .clone()
    }
}

fn request(target: &str, path: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("{target}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, "quiesce-loadgen-grpc")
        .body(Full::new(body))
        .expect("valid gRPC request")
}

/// One unary `Echo` call of `payload`.
pub async fn echo(
    ch: &H2Channel<Full<Bytes>>,
    target: &str,
    payload: &[u8],
    delay_ms: u64,
) -> RpcOutcome {
    let mut req = request(target, ECHO, frame(payload));
    req.headers_mut()
        .insert("x-delay-ms", delay_ms.to_string().parse().expect("number"));
    let res = match ch.request(req).await {
        Ok(r) => r,
        Err(o) => return RpcOutcome::Transport(o),
    };
    if res.status() != hyper::StatusCode::OK {
        return RpcOutcome::Transport(Outcome::HttpStatus(res.status().as_u16()));
    }
    let (parts, body) = res.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return RpcOutcome::Transport(classify(&e)),
    };
    let trailers = collected.trailers().cloned();
    match grpc_status(&parts.headers, trailers.as_ref()) {
        None => return RpcOutcome::MissingStatus,
        Some(0) => {}
        Some(c) => return RpcOutcome::GrpcStatus(c),
    }
    let mut d = Deframer::default();
    match d.push(&collected.to_bytes()) {
        Ok(m) if m.len() == 1 && m[0] == payload && !d.partial() => RpcOutcome::Ok,
        Ok(m) => RpcOutcome::Transport(Outcome::Other(format!(
            "echo answered {} message(s), not the one sent",
            m.len()
        ))),
        Err(e) => RpcOutcome::Transport(Outcome::Other(e)),
    }
}

/// One `Stream` call of `count` messages `interval_ms` apart; also returns messages received.
pub async fn stream(
    ch: &H2Channel<Full<Bytes>>,
    target: &str,
    count: u64,
    interval_ms: u64,
) -> (RpcOutcome, u64) {
    let mut req = request(target, STREAM, frame(b""));
    let h = req.headers_mut();
    h.insert("x-count", count.to_string().parse().expect("number"));
    h.insert(
        "x-interval-ms",
        interval_ms.to_string().parse().expect("number"),
    );
    let res = match ch.request(req).await {
        Ok(r) => r,
        Err(o) => return (RpcOutcome::Transport(o), 0),
    };
    if res.status() != hyper::StatusCode::OK {
        let o = Outcome::HttpStatus(res.status().as_u16());
        return (RpcOutcome::Transport(o), 0);
    }
    let (parts, mut body) = res.into_parts();
    let mut d = Deframer::default();
    let mut got = 0u64;
    let mut trailers = None;
    while let Some(next) = body.frame().await {
        let f = match next {
            Ok(f) => f,
            // A cut stream is a transport failure whatever arrived before it.
            Err(e) => return (RpcOutcome::Transport(classify(&e)), got),
        };
        match f.into_data() {
            Ok(data) => match d.push(&data) {
                Ok(m) => got += m.len() as u64,
                Err(e) => return (RpcOutcome::Transport(Outcome::Other(e)), got),
            },
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let outcome = match grpc_status(&parts.headers, trailers.as_ref()) {
        None => RpcOutcome::MissingStatus,
        Some(0) if got == count && !d.partial() => RpcOutcome::Ok,
        Some(0) => RpcOutcome::Truncated { got, want: count },
        Some(c) => RpcOutcome::GrpcStatus(c),
    };
    (outcome, got)
}

/// `grpc.health.v1.Health/Check` of the whole server: the `status` (1 SERVING, 2 NOT_SERVING).
pub async fn health_check(ch: &H2Channel<Full<Bytes>>, target: &str) -> Result<u64, RpcOutcome> {
    let req = request(target, "/grpc.health.v1.Health/Check", frame(b""));
    let res = ch.request(req).await.map_err(RpcOutcome::Transport)?;
    if res.status() != hyper::StatusCode::OK {
        let o = Outcome::HttpStatus(res.status().as_u16());
        return Err(RpcOutcome::Transport(o));
    }
    let (parts, body) = res.into_parts();
    let c = body
        .collect()
        .await
        .map_err(|e| RpcOutcome::Transport(classify(&e)))?;
    match grpc_status(&parts.headers, c.trailers()) {
        Some(0) => {}
        Some(code) => return Err(RpcOutcome::GrpcStatus(code)),
        None => return Err(RpcOutcome::MissingStatus),
    }
    let msgs = Deframer::default()
        .push(&c.to_bytes())
        .map_err(|e| RpcOutcome::Transport(Outcome::Other(e)))?;
    // HealthCheckResponse { status = 1 (varint) }: tag 0x08, then the value; absent = 0.
    Ok(match msgs.first().map(Vec::as_slice) {
        Some([0x08, v, ..]) => u64::from(*v),
        _ => 0,
    })
}

struct Done {
    unary: bool,
    outcome: RpcOutcome,
    messages: u64,
    started: Duration,
    target: String,
}

/// A running gRPC load.
#[derive(Debug)]
pub struct GrpcHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<GrpcSummary>,
}

impl GrpcHandle {
    /// Stops starting calls; calls in flight (streams too) still complete.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and waits for every call.
    pub async fn finish(self) -> GrpcSummary {
        self.stop();
        self.task.await.unwrap_or_default()
    }
}

/// Starts the load in the background.
pub fn spawn(cfg: GrpcConfig) -> GrpcHandle {
    let (stop, rx) = watch::channel(false);
    GrpcHandle {
        stop,
        task: tokio::spawn(run_until(cfg, rx)),
    }
}

/// Runs until the duration or count is reached; waits for every call.
pub async fn run(cfg: GrpcConfig) -> GrpcSummary {
    let (_stop, rx) = watch::channel(false);
    run_until(cfg, rx).await
}

async fn run_until(cfg: GrpcConfig, stop: watch::Receiver<bool>) -> GrpcSummary {
    let channels = Arc::new(Channels {
        map: Mutex::default(),
        connections: cfg.connections,
        stats: Arc::default(),
    });
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut set: JoinSet<Vec<Done>> = JoinSet::new();
    // Stream loops end with the unary calls (or, without those, at the deadline or stop).
    let (done_tx, done_rx) = watch::channel(false);
    // Stream loops: one call after another until stopped or past the deadline.
    for k in 0..cfg.streams {
        let (channels, targets, mut stop) =
            (channels.clone(), cfg.targets.clone(), done_rx.clone());
        let (count, interval) = (cfg.stream_messages, cfg.stream_interval_ms);
        let bound = cfg.timeout + Duration::from_millis(count * interval);
        set.spawn(async move {
            let mut done = Vec::new();
            let mut i = k as u64;
            while !*stop.borrow() && deadline.is_none_or(|d| Instant::now() < d) {
                let started = start.elapsed();
                let Some(target) = targets.pick(i) else {
                    done.push(Done {
                        unary: false,
                        outcome: RpcOutcome::Transport(Outcome::NoTarget),
                        messages: 0,
                        started,
                        target: String::new(),
                    });
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                };
                let ch = channels.get(&target);
                let (outcome, messages) =
                    tokio::time::timeout(bound, stream(&ch, &target, count, interval))
                        .await
                        .unwrap_or((RpcOutcome::Transport(Outcome::Timeout), 0));
                let failed = outcome != RpcOutcome::Ok;
                done.push(Done {
                    unary: false,
                    outcome,
                    messages,
                    started,
                    target,
                });
                i += cfg.streams as u64;
                if failed {
                    // Like a gRPC client's reconnect backoff: no busy loop against a dead target.
                    tokio::select! {
                        () = tokio::time::sleep(STREAM_RETRY_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            done
        });
    }
    let interval = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut i = 0u64;
    loop {
        if cfg.rate <= 0.0 || *stop.borrow() || cfg.count.is_some_and(|c| i >= c) {
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
        let started = start.elapsed();
        let target = cfg.targets.pick(i);
        let (channels, delay, timeout) = (channels.clone(), cfg.delay_ms, cfg.timeout);
        set.spawn(async move {
            let Some(target) = target else {
                let o = RpcOutcome::Transport(Outcome::NoTarget);
                return vec![Done {
                    unary: true,
                    outcome: o,
                    messages: 0,
                    started,
                    target: String::new(),
                }];
            };
            let ch = channels.get(&target);
            let payload = format!("rpc {i}");
            let outcome =
                tokio::time::timeout(timeout, echo(&ch, &target, payload.as_bytes(), delay))
                    .await
                    .unwrap_or(RpcOutcome::Transport(Outcome::Timeout));
            vec![Done {
                unary: true,
                outcome,
                messages: 0,
                started,
                target,
            }]
        });
        i += 1;
    }
    // Without unary calls, streams run until the deadline or the stop.
    if cfg.streams > 0 && cfg.rate <= 0.0 {
        let mut stop_rx = stop.clone();
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = until_deadline => {}
            _ = stop_rx.wait_for(|s| *s) => {}
        }
    }
    let _ = done_tx.send(true);
    let mut summary = GrpcSummary::default();
    while let Some(res) = set.join_next().await {
        for d in res.unwrap_or_default() {
            if d.unary {
                summary.unary.add(&d.outcome);
            } else {
                summary.streams.add(&d.outcome);
                summary.stream_messages += d.messages;
            }
            if d.outcome != RpcOutcome::Ok {
                summary.failed_at_ms.push(d.started.as_millis() as u64);
                if summary.error_samples.len() < 10 {
                    let kind = if d.unary { "unary" } else { "stream" };
                    summary
                        .error_samples
                        .push(format!("{} {kind}: {:?}", d.target, d.outcome));
                }
            }
        }
    }
    summary.failed_at_ms.sort_unstable();
    summary.elapsed_ms = start.elapsed().as_millis() as u64;
    let c = channels.stats.snapshot();
    summary.connections_opened = c.opened;
    summary.connections_ended = c.ended;
    summary.connections_goaway = c.goaways;
    summary.retried_unprocessed = c.retried_unprocessed;
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deframes_messages_split_anywhere() {
        let mut wire = frame(b"one").to_vec();
        wire.extend_from_slice(&frame(b""));
        wire.extend_from_slice(&frame(&[9; 70_000]));
        for piece in [1, 3, 5, 6, 4096, wire.len()] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for c in wire.chunks(piece) {
                got.extend(d.push(c).unwrap());
            }
            assert_eq!(got.len(), 3, "piece {piece}");
            assert_eq!(
                (&got[0][..], got[1].len(), got[2].len()),
                (&b"one"[..], 0, 70_000)
            );
            assert!(!d.partial());
        }
        let mut d = Deframer::default();
        assert!(d.push(&wire[..7]).unwrap().is_empty() && d.partial());
        assert!(Deframer::default().push(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn status_comes_from_trailers_or_headers() {
        let mut h = HeaderMap::new();
        let mut t = HeaderMap::new();
        assert_eq!(grpc_status(&h, Some(&t)), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h, None), Some(14));
        t.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&h, Some(&t)), Some(0));
    }

    #[test]
    fn outcome_keys_and_counts() {
        let mut c = RpcCounts::default();
        for o in [
            RpcOutcome::Ok,
            RpcOutcome::Transport(Outcome::GoAway),
            RpcOutcome::Transport(Outcome::Refused),
            RpcOutcome::Transport(Outcome::HttpStatus(503)),
            RpcOutcome::Transport(Outcome::Other("x".into())),
            RpcOutcome::GrpcStatus(14),
            RpcOutcome::Truncated { got: 1, want: 2 },
        ] {
            c.add(&o);
        }
        assert_eq!((c.sent, c.ok, c.failed), (7, 1, 6));
        let keys: Vec<&str> = c.by_outcome.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "goaway",
                "grpc_status_14",
                "http_503",
                "ok",
                "other",
                "refused",
                "truncated"
            ]
        );
    }

    #[tokio::test]
    async fn refused_channel_counts_every_call() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = GrpcConfig::new(format!("http://127.0.0.1:{port}"), 200.0);
        cfg.count = Some(10);
        let s = run(cfg).await;
        assert_eq!((s.unary.sent, s.unary.failed), (10, 10), "{s:?}");
        assert_eq!(s.unary.by_outcome.get("refused"), Some(&10));
        assert_eq!(s.connections_opened, 0);
    }
}
