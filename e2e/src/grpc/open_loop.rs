//! The load: unary calls launched open loop at `rate`, a few server streams each started again
//! when it ends, over one set of h2c channels per target; every call's outcome added up.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::{sync::watch, task::JoinSet};

use super::{GrpcSummary, RpcOutcome, echo, stream};
use crate::{
    h2chan::{ChannelStats, H2Channel},
    loadgen::{Outcome, Running, Targets, authority, to_the_end},
};

/// Pause after a failed stream before the next one.
const STREAM_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// gRPC load settings.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Base URLs (`http://host:port`), round-robin over the active ones.
    pub targets: Targets,
    /// Unary calls per second (open loop); 0 for streams only.
    pub rate: f64,
    /// Stop starting calls after this long (`None`: until the count or [`Running::stop`](crate::loadgen::Running::stop)).
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

struct Done {
    unary: bool,
    outcome: RpcOutcome,
    messages: u64,
    started: Duration,
    target: String,
}

/// A running gRPC load (stop it: no new calls; calls in flight, streams too, complete).
pub type GrpcHandle = Running<GrpcSummary>;

/// Starts the load in the background.
pub fn spawn(cfg: GrpcConfig) -> GrpcHandle {
    Running::spawn(|stop| run_until(cfg, stop))
}

/// Runs until the duration or count is reached; waits for every call.
pub async fn run(cfg: GrpcConfig) -> GrpcSummary {
    to_the_end(|stop| run_until(cfg, stop)).await
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
