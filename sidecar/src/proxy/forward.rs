//! Forwarding one request to the app on loopback and its response back, bodies streamed both
//! ways with trailers (gRPC's `grpc-status` travels in them).
//!
//! HTTP/1.x requests go over a keep-alive HTTP/1.1 pool shared by the listener, HTTP/2
//! requests over HTTP/2 prior knowledge (h2c) on their client connection's own app connection
//! ([`super::h2_upstream`]): gRPC needs HTTP/2 end to end, and HTTP/1 clients keep HTTP/1
//! semantics.
//! An HTTP/1.1 `Upgrade` (WebSocket) answered `101` becomes a byte tunnel between the two
//! upgraded connections. If the app cannot be reached the client gets a `502` at once: the
//! proxy never leaves a client hanging.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, CONTENT_TYPE, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;

use super::{
    close::{Protocol, close_after_response},
    h2_upstream::H2Upstream,
    headers::{append_forwarded_for, is_upgrade, strip_hop_by_hop},
    stats::{ConnTrack, RequestGuard, Stats},
};

/// Error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound of a connect to the app (on loopback it is refused or done at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The app behind one proxy listener.
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: SocketAddr,
    h1: Client<FixedConnector, Incoming>,
}

impl Upstream {
    /// The app at 127.0.0.1:`port`.
    pub fn new(port: u16) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let connector = FixedConnector { addr };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { addr, h1 }
    }

    /// The app's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards `req`, received on `conn` from `client`, and answers it. HTTP/2 requests go on
    /// `h2`, the app connection of `conn`.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: Arc<ConnTrack>,
        h2: &H2Upstream,
        stats: Arc<Stats>,
        client: IpAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let mut guard = RequestGuard::start(stats.clone(), conn.clone());
        let upgrade = conn.protocol == Protocol::Http1 && is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        append_forwarded_for(&mut parts.headers, client);
        parts.uri = upstream_uri(&parts, self.addr);
        let sent = if parts.version == Version::HTTP_2 {
            h2.send(Request::from_parts(parts, body)).await
        } else {
            parts.version = Version::HTTP_11;
            let req = Request::from_parts(parts, body);
            self.h1.request(req).await.map_err(BoxError::from)
        };
        let mut res = match sent {
            Ok(res) => res,
            Err(e) => {
                tracing::debug!(error = ?e, upstream = %self.addr, "upstream request failed");
                guard.set_error();
                let draining = stats.draining();
                let mut res = bad_gateway(self.addr, guard);
                if close_after_response(conn.protocol, draining, false) {
                    res.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    conn.connection_close_sent(&stats);
                }
                return Ok(res);
            }
        };
        let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            let tunnel = stats.tunnel();
            let conn = conn.clone();
            tokio::spawn(async move {
                let _open = (tunnel, conn);
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers, switching);
        if close_after_response(conn.protocol, stats.draining(), switching) {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
            conn.connection_close_sent(&stats);
        }
        guard.set_status(parts.status.as_u16());
        let body = ProxyBody {
            inner: body.map_err(BoxError::from).boxed(),
            _guard: guard,
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// The URI the pool needs (absolute form). The authority is the client's (`:authority`, or
/// `Host`), so the app sees the host it was asked for; the connector ignores it and always
/// dials the app.
fn upstream_uri(parts: &http::request::Parts, app: SocketAddr) -> Uri {
    let authority = parts
        .uri
        .authority()
        .cloned()
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        })
        .unwrap_or_else(|| {
            Authority::try_from(app.to_string().as_str()).expect("a socket address is an authority")
        });
    let mut b = Uri::builder()
        .scheme(parts.uri.scheme().cloned().unwrap_or(Scheme::HTTP))
        .authority(authority);
    b = match parts.uri.path_and_query() {
        Some(pq) => b.path_and_query(pq.clone()),
        None => b.path_and_query(PathAndQuery::from_static("/")),
    };
    b.build().unwrap_or_else(|_| parts.uri.clone())
}

fn bad_gateway(app: SocketAddr, guard: RequestGuard) -> Response<ProxyBody> {
    let body = format!("quiesce proxy: the app at {app} did not answer\n");
    let mut res = Response::new(ProxyBody {
        inner: Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
        _guard: guard,
    });
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A response body that keeps its request counted in flight until it is fully sent or
/// dropped.
#[derive(Debug)]
pub struct ProxyBody {
    inner: BoxBody<Bytes, BoxError>,
    _guard: RequestGuard,
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Dials the app whatever the URI says.
#[derive(Debug, Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move { Ok(TokioIo::new(dial(addr).await?)) })
    }
}

/// A connection to the app at `addr`, within [`CONNECT_TIMEOUT`].
pub async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn upstream_uri_keeps_the_host_asked_for() {
        let app: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        // HTTP/1.1 origin form: the Host header gives the authority.
        let u = upstream_uri(&parts("/a?b=1", Some("shop.example:80")), app);
        assert_eq!(u.to_string(), "http://shop.example:80/a?b=1");
        // HTTP/2: the URI carries scheme and authority already.
        let u = upstream_uri(&parts("http://grpc.svc/pkg.Svc/Call", None), app);
        assert_eq!(u.to_string(), "http://grpc.svc/pkg.Svc/Call");
        // Neither (HTTP/1.0 without Host): the app's address.
        let u = upstream_uri(&parts("/", None), app);
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/");
        // A Host header that is no authority.
        let u = upstream_uri(&parts("/x", Some("bad host")), app);
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/x");
    }
}
