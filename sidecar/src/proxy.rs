//! Proxy drain mode: the sidecar is an HTTP reverse proxy in front of the app on loopback, so
//! a drain knows every request in flight and can end kept-alive connections the safe way
//! instead of waiting for them.
//!
//! Kubernetes never moves a kept-alive connection off a terminating pod (ingress upstream
//! pools, HTTP client pools, every gRPC channel), and an app that exits at once on SIGTERM
//! drops them with whatever is on the wire. After [`ProxyHandle::start_draining`] (the pod left
//! the endpoints), the proxy closes each connection at a moment the client can tell — see
//! [`close`] — and the drain ends once no connection is open.
//!
//! Modules, one concern each: [`sniff`] (HTTP or not, from the first bytes), [`conn`] (one
//! connection's life), [`forward`] (one request to the app and back), [`h2_upstream`] (a client
//! connection's own HTTP/2 connection to the app), [`headers`] (hop-by-hop rules), [`close`]
//! (the pure close decision), [`stats`] (counters and their guards).

pub mod close;
pub mod conn;
pub mod forward;
pub mod h2_upstream;
pub mod headers;
pub mod sniff;
pub mod stats;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

use crate::{config::ProxyConfig, metrics::Metrics};
pub use stats::ProxyCounters;
use stats::Stats;

/// A proxy that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not bind.
    #[error("proxy: binding {addr} (for app port {upstream}): {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The app port it forwards to.
        upstream: u16,
        /// Why.
        source: std::io::Error,
    },
}

/// The proxy's part of a drain report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyReport {
    /// Requests received after draining started.
    pub requests_while_draining: u64,
    /// Responses sent with `Connection: close` (HTTP/1.1 connections closed after them).
    pub connection_close: u64,
    /// GOAWAYs sent (HTTP/2 connections).
    pub goaways: u64,
    /// Idle connections closed by the proxy.
    pub idle_closed: u64,
    /// Connections still open when the drain ended (non-zero only when forced).
    pub left_open: usize,
}

impl ProxyReport {
    /// The report from counters read when the drain ended (`forced`: by a bound).
    pub fn from_counters(c: &ProxyCounters, forced: bool) -> Self {
        Self {
            requests_while_draining: c.requests_while_draining,
            connection_close: c.connection_close_sent,
            goaways: c.goaways_sent,
            idle_closed: c.closed.idle,
            left_open: if forced { c.open } else { 0 },
        }
    }
}

/// Handle on a running proxy: its counters, and the drain's controls.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    listeners: Arc<Vec<(SocketAddr, u16)>>,
}

impl ProxyHandle {
    /// From now on every HTTP connection is closed at its next safe moment: HTTP/1.1 after
    /// the next response (`Connection: close`) or once idle for the idle-close time, HTTP/2
    /// with a GOAWAY. Connections accepted later are served and closed the same way. Tunnels
    /// and passthrough connections are left to close themselves. Idempotent.
    pub fn start_draining(&self) {
        if self.stats.start_draining() {
            tracing::info!(open = self.stats.counters().open, "proxy draining");
        }
    }

    /// Stops accepting connections (process exit); open ones are not touched.
    pub fn stop_accepting(&self) {
        self.stop.send_replace(true);
    }

    /// The counters now.
    pub fn counters(&self) -> ProxyCounters {
        self.stats.counters()
    }

    /// Bound listen addresses with the app port each forwards to.
    pub fn listeners(&self) -> &[(SocketAddr, u16)] {
        &self.listeners
    }
}

/// Binds every listener of `cfg` and serves them in the background.
pub async fn start(cfg: &ProxyConfig, metrics: Arc<Metrics>) -> Result<ProxyHandle, ProxyError> {
    let stats = Arc::new(Stats::new(metrics));
    let (stop, _) = watch::channel(false);
    let server = Arc::new(conn::server());
    let mut bound = Vec::new();
    let mut listeners = Vec::new();
    for &(listen, upstream) in &cfg.routes {
        let addr = SocketAddr::new(cfg.bind, listen);
        let l = crate::listen::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                addr,
                upstream,
                source,
            })?;
        let local = l.local_addr().unwrap_or(addr);
        bound.push((local, upstream));
        listeners.push((l, upstream));
    }
    for (l, upstream) in listeners {
        let shared = conn::Shared {
            upstream: forward::Upstream::new(upstream),
            stats: stats.clone(),
            server: server.clone(),
            idle_close: cfg.idle_close,
        };
        tracing::info!(
            addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            upstream = %shared.upstream.addr(),
            "proxy listening"
        );
        tokio::spawn(accept_loop(l, shared, stop.subscribe()));
    }
    Ok(ProxyHandle {
        stats,
        stop,
        listeners: Arc::new(bound),
    })
}

async fn accept_loop(l: TcpListener, shared: conn::Shared, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = stop.wait_for(|s| *s) => {
                tracing::info!("proxy stopped accepting");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = shared.stats.accepted();
                tokio::spawn(conn::serve(stream, peer, guard, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
