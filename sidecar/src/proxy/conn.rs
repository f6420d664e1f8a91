//! One accepted connection, from its first bytes to its close: sniffed, then served as HTTP
//! (hyper's auto server: HTTP/1.1 or h2c, with upgrades) or passed through byte for byte.
//!
//! The task serving an HTTP connection is where the drain reaches it: whenever the draining
//! flag, the connection's requests or its idle time change, it asks
//! [`super::close::decide`] and starts the connection's graceful shutdown when told to.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    close::{Action, CloseHow, Protocol, decide, idle_deadline},
    forward::{Upstream, dial},
    h2_upstream::H2Upstream,
    sniff::{Sniff, sniff},
    stats::{ConnGuard, ConnTrack, Stats},
};

/// Once a connection's first bytes arrived, how long the rest of its first line may take before
/// the connection is classified on what arrived.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection of one listener shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The app.
    pub upstream: Upstream,
    /// Counters and the draining flag.
    pub stats: Arc<Stats>,
    /// HTTP server settings.
    pub server: Arc<auto::Builder<TokioExecutor>>,
    /// During a drain, idle time after which a connection is closed.
    pub idle_close: Duration,
}

/// The HTTP server settings: HTTP/1.1 keep-alive and h2c. No header-read timeout: it would
/// also close idle kept-alive connections, racing the client's next request.
pub fn server() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().keep_alive(true).header_read_timeout(None);
    b
}

/// Serves one accepted connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, guard: ConnGuard, shared: Shared) {
    let _ = stream.set_nodelay(true);
    // A connection that has not spoken yet (a pooled spare) is idle from its accept on: during
    // a drain it is closed once silent for `idle_close`, like any idle connection.
    let accepted = Instant::now();
    let mut draining = shared.stats.watch_draining();
    let first = loop {
        let since = *draining.borrow_and_update();
        let idle_until = since.map(|since| idle_deadline(accepted, since, shared.idle_close));
        tokio::select! {
            s = sniff(&stream, SNIFF_TIMEOUT) => break s,
            _ = draining.changed(), if since.is_none() => {}
            () = sleep_until_or_never(idle_until) => {
                guard.set_how(CloseHow::Idle);
                return;
            }
        }
    };
    match first {
        None => {}
        Some(Sniff::Http1 | Sniff::NeedMore) => {
            serve_http(stream, peer, Protocol::Http1, guard, shared).await;
        }
        Some(Sniff::Http2) => serve_http(stream, peer, Protocol::Http2, guard, shared).await,
        Some(Sniff::Other) => passthrough(stream, guard, shared).await,
    }
}

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    guard: ConnGuard,
    shared: Shared,
) {
    let track = Arc::new(ConnTrack::new(protocol, guard));
    // This connection's own HTTP/2 connection to the app (see `h2_upstream` for why not shared).
    let h2 = Arc::new(H2Upstream::new(shared.upstream.addr()));
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        track: track.clone(),
    });
    let svc = {
        let (track, stats, upstream) = (track.clone(), shared.stats.clone(), shared.upstream);
        service_fn(move |req| {
            let (track, stats, upstream) = (track.clone(), stats.clone(), upstream.clone());
            let h2 = h2.clone();
            async move { upstream.forward(req, track, &h2, stats, peer.ip()).await }
        })
    };
    let conn = shared.server.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let stats = &shared.stats;
    let mut draining = stats.watch_draining();
    let mut shutting_down = false;
    let result = loop {
        let since = *draining.borrow_and_update();
        let recheck = if shutting_down {
            None
        } else {
            match decide(&track.view(), since, Instant::now(), shared.idle_close) {
                Action::Shutdown(how) => {
                    conn.as_mut().graceful_shutdown();
                    track.shutdown_started(how, stats);
                    shutting_down = true;
                    continue;
                }
                Action::Wait { recheck } => recheck,
            }
        };
        tokio::select! {
            res = conn.as_mut() => break res,
            _ = draining.changed(), if since.is_none() => {}
            () = track.changed.notified(), if !shutting_down => {}
            () = sleep_until_or_never(recheck) => {}
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "proxy connection ended with an error");
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn passthrough(mut client: TcpStream, guard: ConnGuard, shared: Shared) {
    guard.set_how(CloseHow::Passthrough);
    let _open = shared.stats.passthrough();
    let addr = shared.upstream.addr();
    let mut upstream = match dial(addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, %addr, "passthrough: cannot connect to the app");
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A socket that records when bytes last moved, for the idle-close rule.
struct ActivityIo {
    inner: TcpStream,
    track: Arc<ConnTrack>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.track.touch();
        }
        res
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.track.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.track.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
