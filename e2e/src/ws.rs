//! A WebSocket client that keeps one tunnel busy and tells how it ended.
//!
//! An upgraded connection (WebSocket, or any HTTP/1.1 `Upgrade`) carries no more HTTP requests
//! a proxy could stop at, so the only correct drain of one is to keep it working until the
//! server (or the proxy in front of it) closes it, ideally with a Close frame. This client opens
//! a WebSocket to the demo app's `/ws` echo through a base URL, sends a numbered text message
//! every `interval`, counts the echoes (in order), and reports how the tunnel ended: closed by
//! the server with a code, closed by us when told to stop, or reset without a closing handshake.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::{
    connect_async_with_config,
    tungstenite::{
        self, Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

/// How long to wait for the peer's half of a closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One WebSocket session.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Base URL, `http://host:port` (or `ws://…`).
    pub url: String,
    /// Path of the WebSocket endpoint.
    pub path: String,
    /// Gap between messages.
    pub interval: Duration,
    /// Close (from our side) after this long; `None`: until [`WsHandle::stop`] or the server.
    pub duration: Option<Duration>,
    /// Bound of the connect and upgrade.
    pub connect_timeout: Duration,
}

impl WsConfig {
    /// `/ws` of `url`, a message every `interval`, until stopped.
    pub fn new(url: impl Into<String>, interval: Duration) -> Self {
        Self {
            url: url.into(),
            path: "/ws".into(),
            interval,
            duration: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WsEnd {
    /// The server sent a Close frame (1001 "going away" from a draining server).
    ServerClosed {
        /// Close code (1005 when the frame had none).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// We closed it (duration reached or stopped) and the server answered the handshake.
    ClientClosed,
    /// The connection broke without a closing handshake.
    Reset {
        /// What the library said.
        error: String,
    },
    /// Connecting or upgrading failed.
    ConnectFailed {
        /// What the library said.
        error: String,
    },
}

/// What one session did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsReport {
    /// Messages sent.
    pub sent: u64,
    /// Echoes received in order.
    pub echoed: u64,
    /// Messages received that were not the next expected echo.
    pub unexpected: u64,
    /// How it ended.
    pub end: WsEnd,
    /// From the upgrade to the end, milliseconds.
    pub lasted_ms: u64,
}

impl WsReport {
    /// Messages sent but never echoed.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.echoed)
    }

    /// Ended by a closing handshake (either side), with every message echoed.
    pub fn clean(&self) -> bool {
        matches!(self.end, WsEnd::ServerClosed { .. } | WsEnd::ClientClosed)
            && self.lost() == 0
            && self.unexpected == 0
    }
}

/// `ws://host:port/path` of a base URL `http://host:port`.
pub fn ws_url(base: &str, path: &str) -> String {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("ws://"))
        .unwrap_or(base)
        .trim_end_matches('/');
    format!("ws://{rest}{path}")
}

/// The end a library error means: a closed connection after a handshake is not a reset.
pub fn end_of_error(e: &tungstenite::Error) -> WsEnd {
    WsEnd::Reset {
        error: e.to_string(),
    }
}

/// A running session.
#[derive(Debug)]
pub struct WsHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<WsReport>,
}

impl WsHandle {
    /// Closes from our side (a closing handshake).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the end (without stopping: the server or the duration ends it).
    pub async fn wait(self) -> WsReport {
        self.task.await.expect("ws session task")
    }

    /// Stops, then waits for the end.
    pub async fn finish(self) -> WsReport {
        self.stop();
        self.wait().await
    }
}

/// Starts a session in the background.
pub fn spawn(cfg: WsConfig) -> WsHandle {
    let (stop, rx) = watch::channel(false);
    WsHandle {
        stop,
        task: tokio::spawn(session(cfg, rx)),
    }
}

/// Runs a session to its end (duration, or the server).
pub async fn run(cfg: WsConfig) -> WsReport {
    let (_stop, rx) = watch::channel(false);
    session(cfg, rx).await
}

async fn session(cfg: WsConfig, mut stop: watch::Receiver<bool>) -> WsReport {
    let mut r = WsReport {
        sent: 0,
        echoed: 0,
        unexpected: 0,
        end: WsEnd::ClientClosed,
        lasted_ms: 0,
    };
    let url = ws_url(&cfg.url, &cfg.path);
    let mut ws = match tokio::time::timeout(
        cfg.connect_timeout,
        connect_async_with_config(url, None, true),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            r.end = WsEnd::ConnectFailed {
                error: e.to_string(),
            };
            return r;
        }
        Err(_) => {
            r.end = WsEnd::ConnectFailed {
                error: "timed out".into(),
            };
            return r;
        }
    };
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once a Close was sent or received: then only the rest of the handshake is read.
    let mut closing: Option<(WsEnd, Instant)> = None;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let close_wait = async {
            match &closing {
                Some((_, since)) => tokio::time::sleep_until((*since + CLOSE_WAIT).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick(), if closing.is_none() => {
                if let Err(e) = ws.send(Message::text(r.sent.to_string())).await {
                    r.end = end_of_error(&e);
                    break;
                }
                r.sent += 1;
            }
            () = until_deadline, if closing.is_none() => {
                closing = Some((WsEnd::ClientClosed, Instant::now()));
                let _ = ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                }))).await;
            }
            _ = async { stop.wait_for(|s| *s).await.is_ok() }, if closing.is_none() => {
                closing = Some((WsEnd::ClientClosed, Instant::now()));
                let _ = ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "stopped".into(),
                }))).await;
            }
            () = close_wait => {
                // The peer never finished the handshake: count what we know.
                r.end = closing.take().map_or(WsEnd::ClientClosed, |(e, _)| e);
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == r.echoed.to_string() {
                        r.echoed += 1;
                    } else {
                        r.unexpected += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if closing.is_none() {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        // The library answers the Close; keep reading until the end.
                        closing = Some((WsEnd::ServerClosed { code, reason }, Instant::now()));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) | None => {
                    r.end = match closing.take() {
                        Some((e, _)) => e,
                        None => WsEnd::Reset { error: "closed without a Close frame".into() },
                    };
                    break;
                }
                Some(Err(e)) => {
                    r.end = match closing.take() {
                        // The handshake was done; the TCP end that followed is not a reset.
                        Some((end, _)) if matches!(e, tungstenite::Error::AlreadyClosed) => end,
                        _ => end_of_error(&e),
                    };
                    break;
                }
            }
        }
    }
    r.lasted_ms = started.elapsed().as_millis() as u64;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_verdicts() {
        assert_eq!(
            ws_url("http://127.0.0.1:80/", "/ws"),
            "ws://127.0.0.1:80/ws"
        );
        assert_eq!(ws_url("ws://a:1", "/x"), "ws://a:1/x");
        let mut r = WsReport {
            sent: 3,
            echoed: 3,
            unexpected: 0,
            end: WsEnd::ServerClosed {
                code: 1001,
                reason: "bye".into(),
            },
            lasted_ms: 1,
        };
        assert!(r.clean());
        r.echoed = 2;
        assert_eq!((r.lost(), r.clean()), (1, false));
        r.echoed = 3;
        r.end = end_of_error(&tungstenite::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!r.clean());
        let json = serde_json::to_string(&r.end).unwrap();
        assert!(json.starts_with(r#"{"kind":"reset""#), "{json}");
    }

    #[tokio::test]
    async fn refused_connect_is_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = run(WsConfig::new(
            format!("http://127.0.0.1:{port}"),
            Duration::from_millis(10),
        ))
        .await;
        assert!(matches!(r.end, WsEnd::ConnectFailed { .. }), "{r:?}");
        assert_eq!(r.sent, 0);
    }

    /// An in-process echo server that closes with 1001 after `n` echoes.
    async fn closing_echo_server(n: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut echoed = 0;
            while let Some(Ok(m)) = ws.next().await {
                // After our Close nothing more is echoed (RFC 6455 §5.5.1).
                if m.is_text() && echoed < n {
                    ws.send(m).await.unwrap();
                    echoed += 1;
                    if echoed == n {
                        let _ = ws
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Away,
                                reason: "draining".into(),
                            })))
                            .await;
                    }
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn a_server_close_ends_the_session_cleanly() {
        let url = closing_echo_server(5).await;
        // Messages far enough apart that none crosses the server's Close.
        let r = run(WsConfig::new(url, Duration::from_millis(40))).await;
        assert_eq!((r.sent, r.echoed, r.unexpected), (5, 5, 0), "{r:?}");
        let want = WsEnd::ServerClosed {
            code: 1001,
            reason: "draining".into(),
        };
        assert_eq!(r.end, want);
        assert!(r.clean());
    }

    #[tokio::test]
    async fn stopping_closes_from_our_side() {
        let url = closing_echo_server(usize::MAX).await;
        let h = spawn(WsConfig::new(url, Duration::from_millis(5)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = h.finish().await;
        assert_eq!(r.end, WsEnd::ClientClosed, "{r:?}");
        assert!(r.sent >= 5 && r.clean(), "{r:?}");
    }
}
