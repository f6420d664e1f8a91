//! A small HTTP/2-cleartext (h2c, prior knowledge) client channel, shaped like a gRPC channel.
//!
//! Real HTTP/2 and gRPC clients multiplex every request over a few long-lived connections and,
//! when the server sends GOAWAY or the connection ends, dial a new one for what comes next.
//! That is the traffic a drain must handle without loss: no new connection per request to steer
//! away, only a GOAWAY to honour. [`H2Channel`] keeps a fixed number of connection slots, hands
//! requests to them round-robin, and redials a slot whose connection saw a GOAWAY (seen by
//! [`crate::h2frames`]) or ended. Requests already in flight on the old connection finish there.
//! [`ChannelStats`] counts connections opened, ended and told to go away.
//!
//! Like gRPC's transparent retry (gRPC proposal A6) and Go's HTTP/2 transport, a request the
//! server provably did not process — hyper never sent it (its connection shut down after a
//! GOAWAY first), its stream was past a GOAWAY's last stream id, or it was reset with
//! `REFUSED_STREAM` — is sent again on another connection (at most [`MAX_ATTEMPTS`] in all) and
//! counted in [`ChannelCounts::retried_unprocessed`]. A graceful GOAWAY races the requests the
//! client starts in the round trip it takes to arrive; those are exactly the ones HTTP/2 lets a
//! client replay. Nothing else is retried: a reset or a closed connection after the request was
//! sent counts as a failure.

use std::{
    error::Error as StdError,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    client::conn::http2::{self, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpStream, sync::Mutex};

use crate::{
    Outcome, classify,
    h2frames::{ConnWatch, Sniffed},
};

/// Connection counters of one or more channels, shared.
#[derive(Debug, Default)]
pub struct ChannelStats {
    opened: AtomicU64,
    ended: AtomicU64,
    goaways: AtomicU64,
    retried_unprocessed: AtomicU64,
}

/// A copy of [`ChannelStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCounts {
    /// Connections dialed successfully (handshake done).
    pub opened: u64,
    /// Connections whose driver returned: closed by the server, reset, or dropped after a GOAWAY.
    pub ended: u64,
    /// Connections on which the server sent at least one GOAWAY.
    pub goaways: u64,
    /// Requests the server did not process (not sent, GOAWAY, `REFUSED_STREAM`), sent again.
    pub retried_unprocessed: u64,
}

impl ChannelStats {
    /// The counters now.
    pub fn snapshot(&self) -> ChannelCounts {
        ChannelCounts {
            opened: self.opened.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
            goaways: self.goaways.load(Ordering::Relaxed),
            retried_unprocessed: self.retried_unprocessed.load(Ordering::Relaxed),
        }
    }
}

struct Conn<B> {
    send: SendRequest<B>,
    watch: Arc<ConnWatch>,
}

impl<B> Conn<B> {
    fn usable(&self) -> bool {
        !self.watch.goaway() && !self.watch.ended() && !self.send.is_closed()
    }
}

/// A fixed number of multiplexed h2c connections to one `host:port`, redialed when they end.
pub struct H2Channel<B> {
    authority: String,
    slots: Vec<Mutex<Option<Conn<B>>>>,
    next: AtomicUsize,
    stats: Arc<ChannelStats>,
}

impl<B> std::fmt::Debug for H2Channel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Channel")
            .field("authority", &self.authority)
            .field("connections", &self.slots.len())
            .finish()
    }
}

impl<B> H2Channel<B>
where
    B: Body + Clone + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// A channel of `connections` (at least 1) to `authority` (`host:port`); dials lazily.
    pub fn new(authority: impl Into<String>, connections: usize, stats: Arc<ChannelStats>) -> Self {
        Self {
            authority: authority.into(),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            stats,
        }
    }

    /// The counters this channel adds to.
    pub fn stats(&self) -> &Arc<ChannelStats> {
        &self.stats
    }

    /// A sender on the next slot's connection, dialing it first if it went away or ended.
    pub async fn sender(&self) -> Result<SendRequest<B>, Outcome> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.usable()) {
            return Ok(c.send.clone());
        }
        // Dropping the old sender lets its connection close once its streams are done.
        *slot = None;
        let conn = self.dial().await?;
        let send = conn.send.clone();
        *slot = Some(conn);
        Ok(send)
    }

    /// Sends one request on the next connection; the response body streams afterwards. A
    /// request the server did not process is sent again, at most [`MAX_ATTEMPTS`] times in all
    /// (see the module doc).
    pub async fn request(&self, req: Request<B>) -> Result<Response<Incoming>, Outcome> {
        let mut attempt = 1;
        let mut next = req;
        loop {
            let replay = copy_request(&next);
            match self.send_once(next).await {
                Err(Failure {
                    not_processed: true,
                    ..
                }) if attempt < MAX_ATTEMPTS => {
                    self.stats
                        .retried_unprocessed
                        .fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    next = replay;
                }
                res => return res.map_err(|f| f.outcome),
            }
        }
    }

    async fn send_once(&self, req: Request<B>) -> Result<Response<Incoming>, Failure> {
        let mut send = self.sender().await.map_err(Failure::dial)?;
        send.ready().await.map_err(|e| Failure::from_hyper(&e))?;
        send.send_request(req)
            .await
            .map_err(|e| Failure::from_hyper(&e))
    }

    async fn dial(&self) -> Result<Conn<B>, Outcome> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| classify(&e))?;
        let _ = tcp.set_nodelay(true);
        let watch = Arc::new(ConnWatch::default());
        let stats = self.stats.clone();
        let io = Sniffed::new(tcp, watch.clone(), move || {
            stats.goaways.fetch_add(1, Ordering::Relaxed);
        });
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| classify(&e))?;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        let (w, stats) = (watch.clone(), self.stats.clone());
        tokio::spawn(async move {
            let _ = conn.await;
            w.set_ended();
            stats.ended.fetch_add(1, Ordering::Relaxed);
        });
        Ok(Conn { send, watch })
    }
}

/// Attempts per request when the server provably did not process it.
pub const MAX_ATTEMPTS: u32 = 3;

/// A failed attempt: how it failed, and whether the request provably never reached the
/// server's application, so HTTP/2 allows sending it again (RFC 9113 §8.7): its stream was
/// past a GOAWAY's last stream id or refused (`REFUSED_STREAM`), or hyper never sent it (the
/// connection shut down after a GOAWAY before the request was dispatched: "canceled").
#[derive(Debug)]
struct Failure {
    outcome: Outcome,
    not_processed: bool,
}

impl Failure {
    /// Dialing failed: the channel redials on the next request, not here.
    fn dial(outcome: Outcome) -> Self {
        Self {
            outcome,
            not_processed: false,
        }
    }

    fn from_hyper(e: &hyper::Error) -> Self {
        let outcome = classify(e);
        Self {
            not_processed: e.is_canceled() || not_processed(&outcome),
            outcome,
        }
    }
}

/// Whether an outcome says the server did not process the request (GOAWAY, `REFUSED_STREAM`).
pub fn not_processed(o: &Outcome) -> bool {
    matches!(o, Outcome::GoAway | Outcome::StreamRefused)
}

/// A copy of `req` to send again (method, URI, version, headers and body).
fn copy_request<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use std::sync::atomic::AtomicUsize;

    /// An h2c server on loopback that resets the first `refuse` streams it sees with `reason`
    /// and answers 200 to the others; counts connections.
    async fn resetting_server(refuse: usize, reason: h2::Reason) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let (counted, refused) = (conns.clone(), Arc::new(AtomicUsize::new(0)));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::Relaxed);
                let refused = refused.clone();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        if refused.fetch_add(1, Ordering::Relaxed) < refuse {
                            respond.send_reset(reason);
                        } else {
                            let res = hyper::Response::new(());
                            let _ = respond.send_response(res, true);
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn get(authority: &str) -> Request<Empty<Bytes>> {
        Request::get(format!("http://{authority}/"))
            .body(Empty::new())
            .unwrap()
    }

    #[tokio::test]
    async fn a_refused_stream_is_sent_once_more() {
        let (addr, _) = resetting_server(1, h2::Reason::REFUSED_STREAM).await;
        let ch = H2Channel::new(addr.clone(), 1, Arc::default());
        let res = ch.request(get(&addr)).await.expect("answered on the retry");
        assert_eq!(res.status(), 200);
        assert_eq!(ch.stats().snapshot().retried_unprocessed, 1);
    }

    #[tokio::test]
    async fn at_most_max_attempts_and_never_after_another_reset() {
        // Refused every time: given up after MAX_ATTEMPTS.
        let (addr, _) = resetting_server(usize::MAX, h2::Reason::REFUSED_STREAM).await;
        let ch = H2Channel::new(addr.clone(), 1, Arc::default());
        assert_eq!(
            ch.request(get(&addr)).await.err(),
            Some(Outcome::StreamRefused)
        );
        assert_eq!(
            ch.stats().snapshot().retried_unprocessed,
            u64::from(MAX_ATTEMPTS - 1)
        );
        // A stream the server may have processed (any other reset) is never sent again.
        let (addr, _) = resetting_server(1, h2::Reason::INTERNAL_ERROR).await;
        let ch = H2Channel::new(addr.clone(), 1, Arc::default());
        assert_eq!(ch.request(get(&addr)).await.err(), Some(Outcome::Reset));
        assert_eq!(ch.stats().snapshot().retried_unprocessed, 0);
    }

    #[test]
    fn what_counts_as_not_processed() {
        assert!(not_processed(&Outcome::GoAway));
        assert!(not_processed(&Outcome::StreamRefused));
        for o in [Outcome::Reset, Outcome::Refused, Outcome::Timeout] {
            assert!(!not_processed(&o), "{o:?}");
        }
    }
}
