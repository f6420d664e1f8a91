//! A fake apiserver on loopback for the client's unit tests: plain HTTP, one handler deciding
//! every reply from the request and the requests before it.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

/// A request as the handler sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    /// The body as JSON (`null` when empty).
    pub body: serde_json::Value,
    earlier: Arc<Mutex<Vec<Seen>>>,
}

impl Seen {
    /// How many earlier requests match `pred`.
    pub fn seen_before(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.earlier
            .lock()
            .unwrap()
            .iter()
            .filter(|r| pred(r))
            .count()
    }
}

/// A reply.
pub struct Reply {
    status: u16,
    body: BoxBody<Bytes, Infallible>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::chunks_with_status(status, vec![body.to_string()])
    }

    /// A 200 whose body comes in these chunks, 10 ms apart, then ends.
    pub fn chunks(chunks: Vec<String>) -> Self {
        Self::chunks_with_status(200, chunks)
    }

    fn chunks_with_status(status: u16, chunks: Vec<String>) -> Self {
        let stream = futures::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(c)))
        });
        Self {
            status,
            body: BodyExt::boxed(StreamBody::new(stream)),
        }
    }

    /// A 200 whose body never ends (a watch with nothing to say).
    pub fn open() -> Self {
        let stream = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        Self {
            status: 200,
            body: BodyExt::boxed(StreamBody::new(stream)),
        }
    }
}

/// A running fake; it stops with the test's runtime.
#[derive(Debug)]
pub struct FakeApiserver {
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl FakeApiserver {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handler = Arc::new(handler);
        let earlier: Arc<Mutex<Vec<Seen>>> = Arc::default();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, earlier) = (handler.clone(), earlier.clone());
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (handler, earlier) = (handler.clone(), earlier.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                path_and_query: parts.uri.path_and_query().unwrap().to_string(),
                                headers: parts.headers,
                                body: serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null),
                                earlier: earlier.clone(),
                            };
                            let reply = handler(&seen);
                            earlier.lock().unwrap().push(seen);
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(reply.status)
                                    .header("content-type", "application/json")
                                    .body(reply.body)
                                    .unwrap(),
                            )
                        }
                    });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { base }
    }
}
