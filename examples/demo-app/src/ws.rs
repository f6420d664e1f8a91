//! `GET /ws`: a WebSocket (HTTP/1.1 Upgrade) that echoes every text or binary message.
//!
//! An upgraded connection is a tunnel: once switched, no HTTP request boundary remains for a
//! proxy to drain at, so the tests check that it keeps working until the drain closes it. In
//! graceful mode the app itself closes its sockets on SIGTERM with a Close frame (1001, going
//! away), the way a well-behaved server ends a tunnel; in immediate mode they are just reset.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    extract::{
        State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code},
    },
    response::Response,
};

use crate::AppState;

/// The upgrade handler.
pub async fn ws(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, state))
}

/// Counts a WebSocket as open while alive.
struct Open(Arc<AppState>);

impl Open {
    fn new(state: Arc<AppState>) -> Self {
        state.websockets.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn echo(mut socket: WebSocket, state: Arc<AppState>) {
    let open = Open::new(state);
    let mut shutdown = open.0.shutdown.clone();
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Err(_)) | None => return,
                // The library queued the answering Close; the next read sends it and ends.
                Some(Ok(_)) => {} // pings and Close are answered by the library
            },
            shutting_down = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
                if shutting_down {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: close_code::AWAY,
                            reason: "server shutting down".into(),
                        })))
                        .await;
                    // Wait for the client's Close (or the end), then drop.
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                }
                return;
            }
        }
    }
}
