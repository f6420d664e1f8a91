//! What the proxy counts, and the guards that keep the counts right: each open connection,
//! request and tunnel is a value whose `Drop` undoes its count, so an early return, an error
//! or a cancelled future can never leave a connection counted open (which would hold a drain
//! until its bound) or a request counted in flight.
//!
//! The drain reads these counts instead of the socket table; the Prometheus metrics follow the
//! same events.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use super::close::{CloseHow, ConnView, Protocol};
use crate::metrics::Metrics;

/// The proxy's shared counters.
#[derive(Debug)]
pub struct Stats {
    metrics: Arc<Metrics>,
    /// When draining started (`None`: serving).
    draining: watch::Sender<Option<Instant>>,
    accepted: AtomicU64,
    open: AtomicUsize,
    in_flight: AtomicUsize,
    tunnels_open: AtomicUsize,
    passthrough_open: AtomicUsize,
    requests: AtomicU64,
    requests_while_draining: AtomicU64,
    connection_close_sent: AtomicU64,
    goaways_sent: AtomicU64,
    closed: [AtomicU64; CloseHow::ALL.len()],
}

/// A snapshot of the counters, for `/status` and the drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyCounters {
    /// Whether draining started.
    pub draining: bool,
    /// Connections accepted since start (monotonic).
    pub accepted: u64,
    /// Open client connections: HTTP, upgraded and passthrough.
    pub open: usize,
    /// Requests whose response is not fully sent.
    pub in_flight: usize,
    /// Open upgraded (e.g. WebSocket) tunnels.
    pub tunnels_open: usize,
    /// Open TCP passthrough connections (not HTTP).
    pub passthrough_open: usize,
    /// Requests received since start.
    pub requests: u64,
    /// Requests received after draining started.
    pub requests_while_draining: u64,
    /// Responses sent with `Connection: close` because of the drain.
    pub connection_close_sent: u64,
    /// HTTP/2 connections sent a GOAWAY because of the drain.
    pub goaways_sent: u64,
    /// Closed connections by how they ended.
    pub closed: ClosedCounts,
}

/// Closed connections by [`CloseHow`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClosedCounts {
    /// After a `Connection: close` response.
    pub connection_close: u64,
    /// After a GOAWAY.
    pub goaway: u64,
    /// Idle, by the proxy.
    pub idle: u64,
    /// By the client (or the app, or an error).
    pub client: u64,
    /// Passthrough connections.
    pub passthrough: u64,
}

impl Stats {
    /// Fresh counters reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        for how in CloseHow::ALL {
            // Every label present from the start, at 0.
            let _ = metrics
                .proxy_connections_closed
                .get_or_create(&vec![("how", how.as_str())]);
        }
        Self {
            metrics,
            draining: watch::channel(None).0,
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            tunnels_open: AtomicUsize::new(0),
            passthrough_open: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            requests_while_draining: AtomicU64::new(0),
            connection_close_sent: AtomicU64::new(0),
            goaways_sent: AtomicU64::new(0),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Starts draining; idempotent. Returns whether this call started it.
    pub fn start_draining(&self) -> bool {
        self.draining.send_if_modified(|since| {
            let start = since.is_none();
            if start {
                *since = Some(Instant::now());
            }
            start
        })
    }

    /// Whether draining started.
    pub fn draining(&self) -> bool {
        self.draining.borrow().is_some()
    }

    /// Watches when draining started (`None` until it does).
    pub fn watch_draining(&self) -> watch::Receiver<Option<Instant>> {
        self.draining.subscribe()
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn accepted(self: &Arc<Self>) -> ConnGuard {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        self.metrics.proxy_connections_accepted.inc();
        self.metrics.proxy_connections_open.inc();
        ConnGuard {
            stats: self.clone(),
            how: Mutex::new(None),
        }
    }

    /// A response is being sent with `Connection: close`.
    pub fn connection_close_sent(&self) {
        self.connection_close_sent.fetch_add(1, Ordering::SeqCst);
    }

    /// A GOAWAY is being sent.
    pub fn goaway_sent(&self) {
        self.goaways_sent.fetch_add(1, Ordering::SeqCst);
    }

    /// An upgraded tunnel opened; it counts until the guard drops.
    pub fn tunnel(self: &Arc<Self>) -> TunnelGuard {
        self.tunnels_open.fetch_add(1, Ordering::SeqCst);
        self.metrics.proxy_tunnels_open.inc();
        TunnelGuard {
            stats: self.clone(),
            passthrough: false,
        }
    }

    /// A passthrough connection started; it counts until the guard drops.
    pub fn passthrough(self: &Arc<Self>) -> TunnelGuard {
        self.passthrough_open.fetch_add(1, Ordering::SeqCst);
        self.metrics.proxy_tunnels_open.inc();
        TunnelGuard {
            stats: self.clone(),
            passthrough: true,
        }
    }

    /// A snapshot.
    pub fn counters(&self) -> ProxyCounters {
        let closed = |h: CloseHow| self.closed[h as usize].load(Ordering::SeqCst);
        ProxyCounters {
            draining: self.draining(),
            accepted: self.accepted.load(Ordering::SeqCst),
            open: self.open.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            tunnels_open: self.tunnels_open.load(Ordering::SeqCst),
            passthrough_open: self.passthrough_open.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            requests_while_draining: self.requests_while_draining.load(Ordering::SeqCst),
            connection_close_sent: self.connection_close_sent.load(Ordering::SeqCst),
            goaways_sent: self.goaways_sent.load(Ordering::SeqCst),
            closed: ClosedCounts {
                connection_close: closed(CloseHow::ConnectionClose),
                goaway: closed(CloseHow::Goaway),
                idle: closed(CloseHow::Idle),
                client: closed(CloseHow::Client),
                passthrough: closed(CloseHow::Passthrough),
            },
        }
    }
}

/// One open client connection; dropping it counts the connection closed, by how it ended.
#[derive(Debug)]
pub struct ConnGuard {
    stats: Arc<Stats>,
    how: Mutex<Option<CloseHow>>,
}

impl ConnGuard {
    /// Records how the connection is ending; the first call wins.
    pub fn set_how(&self, how: CloseHow) {
        let mut h = self.how.lock().unwrap_or_else(|e| e.into_inner());
        h.get_or_insert(how);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let how = self
            .how
            .get_mut()
            .map(|h| h.unwrap_or(CloseHow::Client))
            .unwrap_or(CloseHow::Client);
        let s = &self.stats;
        s.open.fetch_sub(1, Ordering::SeqCst);
        s.closed[how as usize].fetch_add(1, Ordering::SeqCst);
        s.metrics.proxy_connections_open.dec();
        s.metrics
            .proxy_connections_closed
            .get_or_create(&vec![("how", how.as_str())])
            .inc();
    }
}

/// One open tunnel or passthrough connection.
#[derive(Debug)]
pub struct TunnelGuard {
    stats: Arc<Stats>,
    passthrough: bool,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let counter = if self.passthrough {
            &self.stats.passthrough_open
        } else {
            &self.stats.tunnels_open
        };
        counter.fetch_sub(1, Ordering::SeqCst);
        self.stats.metrics.proxy_tunnels_open.dec();
    }
}

/// What one HTTP connection's task and its requests share: the inputs of
/// [`super::close::decide`]. The connection stays counted open as long as any holder lives (an
/// upgraded tunnel keeps it).
#[derive(Debug)]
pub struct ConnTrack {
    /// Protocol.
    pub protocol: Protocol,
    /// Wakes the connection task when its requests change.
    pub changed: Notify,
    guard: ConnGuard,
    born: Instant,
    last_activity_us: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    connection_close: AtomicBool,
}

impl ConnTrack {
    /// Tracking for a connection speaking `protocol`, counted open by `guard`.
    pub fn new(protocol: Protocol, guard: ConnGuard) -> Self {
        Self {
            protocol,
            changed: Notify::new(),
            guard,
            born: Instant::now(),
            last_activity_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            connection_close: AtomicBool::new(false),
        }
    }

    /// Bytes were read or written now.
    pub fn touch(&self) {
        let us = self.born.elapsed().as_micros() as u64;
        self.last_activity_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The close decision's view of this connection.
    pub fn view(&self) -> ConnView {
        ConnView {
            protocol: self.protocol,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            last_activity: self.born
                + Duration::from_micros(self.last_activity_us.load(Ordering::Relaxed)),
        }
    }

    /// A response on this connection carries `Connection: close`.
    pub fn connection_close_sent(&self, stats: &Stats) {
        if !self.connection_close.swap(true, Ordering::SeqCst) {
            stats.connection_close_sent();
        }
        self.guard.set_how(CloseHow::ConnectionClose);
    }

    /// The proxy started this connection's graceful shutdown.
    pub fn shutdown_started(&self, how: CloseHow, stats: &Stats) {
        if how == CloseHow::Goaway {
            stats.goaway_sent();
        }
        self.guard.set_how(how);
    }
}

/// One request, from its arrival until its response is fully sent (or abandoned).
#[derive(Debug)]
pub struct RequestGuard {
    stats: Arc<Stats>,
    conn: Arc<ConnTrack>,
    started: Instant,
    class: &'static str,
}

impl RequestGuard {
    /// A request arrived on `conn`.
    pub fn start(stats: Arc<Stats>, conn: Arc<ConnTrack>) -> Self {
        stats.requests.fetch_add(1, Ordering::SeqCst);
        if stats.draining() {
            stats.requests_while_draining.fetch_add(1, Ordering::SeqCst);
        }
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        stats.metrics.proxy_requests_in_flight.inc();
        conn.requests.fetch_add(1, Ordering::SeqCst);
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.changed.notify_one();
        Self {
            stats,
            conn,
            started: Instant::now(),
            class: "error",
        }
    }

    /// Records the answer's status (default: `error`, no answer).
    pub fn set_status(&mut self, status: u16) {
        self.class = match status {
            100..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
    }

    /// Records that the app gave no answer (the proxy answered 502).
    pub fn set_error(&mut self) {
        self.class = "error";
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.stats;
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        s.metrics.proxy_requests_in_flight.dec();
        s.metrics
            .proxy_requests
            .get_or_create(&vec![("class", self.class)])
            .inc();
        s.metrics
            .proxy_request_duration
            .observe(self.started.elapsed().as_secs_f64());
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.conn.touch();
        self.conn.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_keep_the_counts_right() {
        let metrics = Arc::new(Metrics::default());
        let stats = Arc::new(Stats::new(metrics.clone()));
        let g = stats.accepted();
        let conn = Arc::new(ConnTrack::new(Protocol::Http1, g));
        let p = stats.passthrough();
        let mut r = RequestGuard::start(stats.clone(), conn.clone());
        r.set_status(204);
        let c = stats.counters();
        assert_eq!((c.accepted, c.open, c.in_flight, c.requests), (1, 1, 1, 1));
        assert_eq!((c.passthrough_open, c.tunnels_open), (1, 0));
        assert_eq!(conn.view().in_flight, 1);
        assert!(stats.start_draining());
        assert!(!stats.start_draining(), "idempotent");
        conn.connection_close_sent(&stats);
        drop(r);
        drop(p);
        assert_eq!(conn.view().in_flight, 0);
        assert_eq!(stats.counters().in_flight, 0);
        drop(conn);
        let c = stats.counters();
        assert_eq!((c.open, c.connection_close_sent), (0, 1));
        assert_eq!(c.closed.connection_close, 1);
        assert_eq!(c.passthrough_open, 0);
        let m = metrics.encode();
        assert!(
            m.contains("quiesce_sidecar_proxy_requests_total{class=\"2xx\"} 1"),
            "{m}"
        );
        assert!(
            m.contains(
                "quiesce_sidecar_proxy_connections_closed_total{how=\"connection_close\"} 1"
            ),
            "{m}"
        );
        assert!(
            m.contains("quiesce_sidecar_proxy_connections_open 0"),
            "{m}"
        );
    }

    #[test]
    fn a_request_while_draining_is_counted_and_first_how_wins() {
        let stats = Arc::new(Stats::new(Arc::new(Metrics::default())));
        stats.start_draining();
        let conn = Arc::new(ConnTrack::new(Protocol::Http2, stats.accepted()));
        drop(RequestGuard::start(stats.clone(), conn.clone()));
        conn.shutdown_started(CloseHow::Goaway, &stats);
        conn.shutdown_started(CloseHow::Idle, &stats);
        drop(conn);
        let c = stats.counters();
        assert_eq!(c.requests_while_draining, 1);
        assert_eq!((c.goaways_sent, c.closed.goaway, c.closed.idle), (1, 1, 0));
        // A connection nobody closed on purpose was closed by its client.
        drop(stats.accepted());
        assert_eq!(stats.counters().closed.client, 1);
    }
}
