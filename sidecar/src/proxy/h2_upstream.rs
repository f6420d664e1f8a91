//! The app-side HTTP/2 connection of one client connection.
//!
//! Every client HTTP/2 connection gets its own connection to the app, as it would without the
//! proxy. The app's protections act per connection: an `h2` server (hyper's, tonic's) closes a
//! connection with GOAWAY(ENHANCE_YOUR_CALM) once more than 20 of its streams were reset before
//! it accepted them, which one gRPC client's deadlines can do under load. On a connection shared
//! by all clients that would fail every client's requests; on its own, only that client's.
//!
//! Dialed on the first HTTP/2 request, redialed once it ended (GOAWAY, error), closed once the
//! client connection is gone and its last response is done.

use std::net::SocketAddr;

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::http2::{self, SendRequest},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

use super::forward::{BoxError, CONNECT_TIMEOUT, dial};

/// One client connection's HTTP/2 connection to the app, once dialed.
#[derive(Debug)]
pub struct H2Upstream {
    addr: SocketAddr,
    /// Locked across a dial, so concurrent first requests share one connection.
    sender: Mutex<Option<SendRequest<Incoming>>>,
}

impl H2Upstream {
    /// Not dialed yet: the app at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: Mutex::new(None),
        }
    }

    /// Sends `req` to the app. A request the connection handed back unsent (it ended in the
    /// meantime) goes once more, on a fresh connection.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
        let mut sender = self.sender().await?;
        match sender.try_send_request(req).await {
            Ok(res) => Ok(res),
            Err(mut e) => match e.take_message() {
                Some(req) => Ok(self.sender().await?.send_request(req).await?),
                None => Err(e.into_error().into()),
            },
        }
    }

    /// The open connection, dialed if there is none or it ended.
    async fn sender(&self) -> Result<SendRequest<Incoming>, BoxError> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref()
            && s.is_ready()
        {
            return Ok(s.clone());
        }
        *slot = None;
        let addr = self.addr;
        let handshake = async {
            let stream = dial(addr).await?;
            Ok::<_, BoxError>(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?)
        };
        let (sender, conn) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = ?e, upstream = %addr, "app HTTP/2 connection failed");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}
