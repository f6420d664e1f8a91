//! The webhook's TLS server, drained on shutdown the way quiesce drains an app: a replica
//! that is stopping keeps answering admission calls until the apiserver has stopped sending
//! them, so pods created during the operator's own rollout are still injected.
//!
//! On stop: `/readyz` fails (the caller's flag), every response carries `Connection: close`
//! (the apiserver's pooled connections to this replica end after their next call instead of
//! being reused), and once no call arrived for [`QUIET`] (after at least [`MIN_DRAIN`], the
//! time the apiserver's endpoint view needs to drop this replica), idle connections are closed
//! and the server returns. [`MAX_DRAIN`] bounds it well inside the pod's grace period.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::Router;
use http::{HeaderValue, header::CONNECTION};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::certs::CertStore;

/// Shortest drain: the apiserver learns from its EndpointSlice watch that this replica is
/// terminating; until then it may open new connections to it.
pub const MIN_DRAIN: Duration = Duration::from_secs(3);
/// No admission call for this long: the apiserver has stopped sending here.
pub const QUIET: Duration = Duration::from_secs(2);
/// Longest drain (the chart's grace period is 15 s; the Lease is released meanwhile).
pub const MAX_DRAIN: Duration = Duration::from_secs(10);
/// Longest TLS handshake or request-head read: a slow client holds no connection for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once (the apiserver keeps a few per replica).
pub const MAX_CONNECTIONS: usize = 256;

/// Whether a drain that started at `started` is over at `now`, given the last admission call
/// and how many calls are in flight.
pub fn drain_over(
    now: Instant,
    started: Instant,
    last_call: Option<Instant>,
    in_flight: usize,
) -> bool {
    let elapsed = now.saturating_duration_since(started);
    if elapsed >= MAX_DRAIN {
        return true;
    }
    let quiet_since = last_call.map_or(started, |t| t.max(started));
    in_flight == 0 && elapsed >= MIN_DRAIN && now.saturating_duration_since(quiet_since) >= QUIET
}

/// What connections share with the accept loop.
#[derive(Debug, Default)]
struct Activity {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    connections: AtomicUsize,
    last_call: Mutex<Option<Instant>>,
}

/// Serves `app` over TLS on `addr` until `stop` completes, then drains (see the module docs);
/// `draining` is set when the drain starts.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    certs: Arc<CertStore>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    draining: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "webhook listening (TLS)");
    let activity = Arc::new(Activity::default());
    // Idle connections close when this turns true (the end of the drain).
    let (close_idle, closing) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let app = with_drain_headers(app, activity.clone());

    tokio::pin!(stop);
    let mut drain_started: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop, if drain_started.is_none() => {
                info!("webhook draining: serving until the apiserver stops calling");
                drain_started = Some(Instant::now());
                draining.store(true, Ordering::SeqCst);
                activity.draining.store(true, Ordering::SeqCst);
                continue;
            }
            _ = tick.tick(), if drain_started.is_some() => {
                let started = drain_started.expect("drain started");
                let last = *activity.last_call.lock().expect("activity lock");
                let in_flight = activity.in_flight.load(Ordering::SeqCst);
                if drain_over(Instant::now(), started, last, in_flight) {
                    let _ = close_idle.send(true);
                    info!(
                        drained_ms = started.elapsed().as_millis() as u64,
                        open_connections = activity.connections.load(Ordering::SeqCst),
                        "webhook drained"
                    );
                    return Ok(());
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if activity.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            debug!(%peer, "webhook connection refused: too many connections");
            continue;
        }
        activity.connections.fetch_add(1, Ordering::SeqCst);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let activity = activity.clone();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _open = Decrement(&activity.connections);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = closing.wait_for(|c| *c).await; } => {
                    // Finishes a call in flight, closes an idle connection.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = ended {
                debug!(%peer, error = %err, "webhook connection ended with an error");
            }
        });
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts calls, and while draining answers with `Connection: close`.
fn with_drain_headers(app: Router, activity: Arc<Activity>) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let activity = activity.clone();
            async move {
                *activity.last_call.lock().expect("activity lock") = Some(Instant::now());
                activity.in_flight.fetch_add(1, Ordering::SeqCst);
                let _done = Decrement(&activity.in_flight);
                let mut res = next.run(req).await;
                if activity.draining.load(Ordering::SeqCst) {
                    res.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                res
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_lasts_at_least_min_and_ends_after_quiet() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // No call at all: over at MIN_DRAIN (quiet is shorter).
        assert!(!drain_over(s(2.9), t0, None, 0));
        assert!(drain_over(s(3.0), t0, None, 0));
        // A call at 2.5 s: quiet until 4.5 s.
        assert!(!drain_over(s(4.4), t0, Some(s(2.5)), 0));
        assert!(drain_over(s(4.5), t0, Some(s(2.5)), 0));
        // A call still in flight holds it...
        assert!(!drain_over(s(9.0), t0, Some(s(2.5)), 1));
        // ...but never past MAX_DRAIN, even with calls arriving.
        assert!(drain_over(s(10.0), t0, Some(s(9.9)), 1));
        // A call before the drain started counts from the start.
        assert!(drain_over(s(3.0), t0, Some(t0 - Duration::from_secs(5)), 0));
    }
}
