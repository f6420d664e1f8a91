//! A keep-alive pool that knows whether a request went out on a reused connection.
//!
//! Closing an idle kept-alive HTTP/1.1 connection races the client's next request on it: the
//! request leaves just as the close arrives, and no server can prevent that (RFC 9112 §9.3.1:
//! "implementations ought to anticipate the need to recover from asynchronous close events").
//! Clients recover by sending an idempotent request again when a *reused* connection ends
//! before any byte of its response (Go's `Transport.shouldRetryRequest`, OkHttp, nginx's
//! `proxy_next_upstream error`). A request on a fresh connection is never retried that way: its
//! failure is the server's. To tell the two apart, each connection carries a count of the
//! responses it began ([`Uses`]), read back through hyper-util's `capture_connection`.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use hyper::{
    Uri,
    rt::{Read, ReadBufCursor, Write},
};
use hyper_util::{
    client::legacy::connect::{CaptureConnection, Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use tower::Service;

/// Responses a connection began, shared by the connection and the requests sent on it.
#[derive(Debug, Clone, Default)]
pub struct Uses(Arc<AtomicU64>);

impl Uses {
    /// The connection began another response (call when response headers arrived: before the
    /// connection can go back to the pool, so the next request on it sees the count).
    pub fn answered(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a response began on this connection before.
    pub fn reused(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// The counter of the connection a request went out on, if it got one.
    pub fn of(captured: &CaptureConnection) -> Option<Uses> {
        let meta = captured.connection_metadata();
        let mut ext = hyper::http::Extensions::new();
        meta.as_ref()?.get_extras(&mut ext);
        ext.get::<Uses>().cloned()
    }
}

/// A TCP connection tagged with its [`Uses`].
#[derive(Debug)]
pub struct Tagged {
    io: TokioIo<tokio::net::TcpStream>,
    uses: Uses,
}

impl Connection for Tagged {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.uses.clone())
    }
}

impl Read for Tagged {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Tagged {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// [`HttpConnector`] whose connections carry a fresh [`Uses`].
#[derive(Debug, Clone)]
pub struct TaggingConnector(pub HttpConnector);

impl Service<Uri> for TaggingConnector {
    type Response = Tagged;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Tagged, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            Ok(Tagged {
                io: connecting.await?,
                uses: Uses::default(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::{Client, connect::capture_connection};
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers the first request of each connection and closes it on the second
    /// without a byte: the idle-close race, made certain.
    async fn answers_once() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_second_request_on_a_connection_is_seen_as_reused() {
        let addr = answers_once().await;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .retry_canceled_requests(false)
            .build(TaggingConnector(HttpConnector::new()));
        let send = || {
            let mut req = hyper::Request::get(format!("http://{addr}/"))
                .body(Empty::new())
                .unwrap();
            let captured = capture_connection(&mut req);
            (client.request(req), captured)
        };

        let (first, captured) = send();
        let res = first.await.expect("first request answered");
        let uses = Uses::of(&captured).expect("the connection is captured");
        assert!(!uses.reused(), "a fresh connection");
        uses.answered();
        res.into_body().collect().await.unwrap();

        let (second, captured) = send();
        assert!(second.await.is_err(), "the server closed without answering");
        assert!(
            Uses::of(&captured).expect("captured").reused(),
            "the failed request went out on the connection that answered the first"
        );
    }

    /// The load generator on that server: without the retry every request on a reused
    /// connection is lost; with it each is sent again once, on a new connection, and answered.
    #[tokio::test]
    async fn the_load_generator_sends_again_only_what_a_reused_connection_dropped() {
        use crate::{LoadConfig, Protocol, run};
        let addr = answers_once().await;
        let cfg = |retry_reused| LoadConfig {
            protocol: Protocol::KeepAlive,
            count: Some(6),
            retry_reused,
            ..LoadConfig::new(format!("http://{addr}"), 20.0)
        };

        let strict = run(cfg(false)).await;
        assert_eq!(
            (strict.ok, strict.reset, strict.retried_reused),
            (3, 3, 0),
            "{strict:?}"
        );

        let retrying = run(cfg(true)).await;
        assert_eq!(
            (retrying.ok, retrying.failed(), retrying.retried_reused),
            (6, 0, 5),
            "{retrying:?}"
        );
    }
}
