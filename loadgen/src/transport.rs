//! How one request travels: a fresh HTTP/1.1 connection, the keep-alive pool (with the
//! optional resend after a reused connection ended) or an h2c channel; each ends in a [`Record`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, capture_connection},
    },
    rt::{TokioExecutor, TokioIo},
};

use crate::h2chan::{ChannelStats, H2Channel};
use crate::outcome::{Outcome, Record, classify};
use crate::reuse::{TaggingConnector, Uses};
use crate::{LoadConfig, Protocol};

type Pool = Client<TaggingConnector, Empty<Bytes>>;

/// Connections shared by the requests of one run.
pub(crate) enum Transport {
    /// A new connection per request.
    Fresh,
    /// hyper's keep-alive pool; whether requests a reused connection dropped are sent again.
    Pool { pool: Box<Pool>, retry_reused: bool },
    /// One h2c channel per target.
    H2 {
        channels: Mutex<HashMap<String, Arc<H2Channel<Empty<Bytes>>>>>,
        connections: usize,
        stats: Arc<ChannelStats>,
    },
}

impl Transport {
    pub(crate) fn new(cfg: &LoadConfig) -> Self {
        match cfg.effective_protocol() {
            Protocol::Http1 => Self::Fresh,
            Protocol::KeepAlive => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Self::Pool {
                    // hyper-util's own retry covers only requests not yet written; ours
                    // ([`pooled_request`]) is the whole RFC 9112 rule, and optional.
                    pool: Box::new(
                        Client::builder(TokioExecutor::new())
                            .retry_canceled_requests(false)
                            .pool_idle_timeout(Duration::from_secs(30))
                            .build(TaggingConnector(connector)),
                    ),
                    retry_reused: cfg.retry_reused,
                }
            }
            Protocol::H2c => Self::H2 {
                channels: Mutex::default(),
                connections: cfg.h2_connections,
                stats: Arc::default(),
            },
        }
    }

    fn channel(&self, target: &str) -> Option<Arc<H2Channel<Empty<Bytes>>>> {
        let Self::H2 {
            channels,
            connections,
            stats,
        } = self
        else {
            return None;
        };
        let mut map = channels.lock().expect("channels lock");
        let ch = map.entry(target.to_string()).or_insert_with(|| {
            Arc::new(H2Channel::new(
                authority(target),
                *connections,
                stats.clone(),
            ))
        });
        Some(ch.clone())
    }
}

/// `host:port` of a base URL `http://host:port[/]`.
pub fn authority(base_url: &str) -> String {
    base_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

pub(crate) async fn one_request(
    transport: Arc<Transport>,
    target: String,
    path: String,
    slow: bool,
    timeout: Duration,
    launched: Duration,
) -> Record {
    let started = Instant::now();
    let uri = format!("{target}{path}");
    let mut retried = false;
    let fut = async {
        let req = hyper::Request::get(&uri).header(hyper::header::USER_AGENT, "quiesce-loadgen");
        let res = match &*transport {
            Transport::Pool { pool, retry_reused } => {
                let first = pooled_request(pool, &uri).await;
                match first {
                    Err((Outcome::Reset, true)) if *retry_reused => {
                        retried = true;
                        pooled_request(pool, &uri).await.map_err(|(o, _)| o)?
                    }
                    r => r.map_err(|(o, _)| o)?,
                }
            }
            Transport::H2 { .. } => {
                let req = req
                    .body(Empty::new())
                    .map_err(|e| Outcome::Other(e.to_string()))?;
                let ch = transport.channel(&target).expect("h2 transport");
                ch.request(req).await?
            }
            Transport::Fresh => {
                let authority = authority(&target);
                let stream = tokio::net::TcpStream::connect(&authority)
                    .await
                    .map_err(|e| classify(&e))?;
                let _ = stream.set_nodelay(true);
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| classify(&e))?;
                tokio::spawn(conn);
                let req = req
                    .header(hyper::header::HOST, authority)
                    .header(hyper::header::CONNECTION, "close")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| Outcome::Other(e.to_string()))?;
                send.send_request(req).await.map_err(|e| classify(&e))?
            }
        };
        let status = res.status().as_u16();
        let version = res
            .headers()
            .get("x-demo-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The whole body must arrive: a reset mid-body is a failure.
        res.into_body().collect().await.map_err(|e| classify(&e))?;
        Ok::<_, Outcome>((status, version))
    };
    let (outcome, status, version) = match tokio::time::timeout(timeout, fut).await {
        Err(_) => (Outcome::Timeout, None, None),
        Ok(Err(o)) => (o, None, None),
        Ok(Ok((s, v))) if (200..300).contains(&s) => (Outcome::Ok, Some(s), v),
        Ok(Ok((s, _))) => (Outcome::HttpStatus(s), Some(s), None),
    };
    Record {
        target,
        path,
        slow,
        outcome,
        status,
        version,
        latency: started.elapsed(),
        launched,
        retried,
    }
}

/// One GET through the keep-alive pool. Fails with the outcome and whether the request went
/// out on a connection that had answered before (the one case a client may send it again).
async fn pooled_request(
    pool: &Pool,
    uri: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, (Outcome, bool)> {
    let mut req = hyper::Request::get(uri)
        .header(hyper::header::USER_AGENT, "quiesce-loadgen")
        .body(Empty::new())
        .map_err(|e| (Outcome::Other(e.to_string()), false))?;
    let captured = capture_connection(&mut req);
    let res = pool.request(req).await;
    let uses = Uses::of(&captured);
    match res {
        Ok(res) => {
            if let Some(u) = uses {
                u.answered();
            }
            Ok(res)
        }
        Err(e) => Err((classify(&e), uses.is_some_and(|u| u.reused()))),
    }
}
