//! The open loop: launches request `i` at `start + i / rate` until stopped, then adds up
//! every request's record into the run's [`Summary`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinSet};

use crate::outcome::{Outcome, Record};
use crate::running::{Running, to_the_end};
use crate::transport::{Transport, one_request};
use crate::{Latency, LoadConfig, Summary};

/// Whether request `i` is slow: spreads `fraction` evenly without randomness.
pub fn is_slow(i: u64, fraction: f64) -> bool {
    fraction > 0.0 && ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// A running load (stop it, then wait for every launched request).
pub type LoadHandle = Running<Summary>;

/// Starts the load in the background.
pub fn spawn(cfg: LoadConfig) -> LoadHandle {
    Running::spawn(|stop| run_until(cfg, stop))
}

/// Runs until the duration or count is reached; waits for every request.
pub async fn run(cfg: LoadConfig) -> Summary {
    to_the_end(|stop| run_until(cfg, stop)).await
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
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use crate::Protocol;

    #[test]
    fn slow_mix_is_spread_evenly() {
        let n = (0..100).filter(|&i| is_slow(i, 0.1)).count();
        assert_eq!(n, 10);
        assert!(!is_slow(0, 0.1) && is_slow(9, 0.1));
        assert_eq!((0..10).filter(|&i| is_slow(i, 0.0)).count(), 0);
        assert_eq!((0..10).filter(|&i| is_slow(i, 1.0)).count(), 10);
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
}
