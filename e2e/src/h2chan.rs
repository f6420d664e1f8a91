//! A small HTTP/2-cleartext (h2c, prior knowledge) client channel, shaped like a gRPC channel.
//!
//! Real HTTP/2 and gRPC clients multiplex every request over a few long-lived connections and,
//! when the server sends GOAWAY or the connection ends, dial a new one for what comes next.
//! That is the traffic a drain must handle without loss: no new connection per request to steer
//! away, only a GOAWAY to honour. [`H2Channel`] keeps a fixed number of connection slots, hands
//! requests to them round-robin, and redials a slot whose connection saw a GOAWAY (seen by
//! [`crate::h2frames`]) or ended. Requests already in flight on the old connection finish there.
//! [`ChannelStats`] counts connections opened, ended and told to go away.

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
    h2frames::{ConnWatch, Sniffed},
    loadgen::{Outcome, classify},
};

/// Connection counters of one or more channels, shared.
#[derive(Debug, Default)]
pub struct ChannelStats {
    opened: AtomicU64,
    ended: AtomicU64,
    goaways: AtomicU64,
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
}

impl ChannelStats {
    /// The counters now.
    pub fn snapshot(&self) -> ChannelCounts {
        ChannelCounts {
            opened: self.opened.load(Ordering::Relaxed),
            ended: self.ended.load(Ordering::Relaxed),
            goaways: self.goaways.load(Ordering::Relaxed),
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
    B: Body + Send + Unpin + 'static,
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

    /// Sends one request on the next connection; the response body streams afterwards.
    pub async fn request(&self, req: Request<B>) -> Result<Response<Incoming>, Outcome> {
        let mut send = self.sender().await?;
        send.ready().await.map_err(|e| classify(&e))?;
        send.send_request(req).await.map_err(|e| classify(&e))
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
