//! A hand-rolled gRPC service on the same port as HTTP (gRPC is HTTP/2 + framing + trailers).
//!
//! gRPC clients hold a few long-lived HTTP/2 connections and must learn of a drain from a
//! GOAWAY, so the demo app serves gRPC for the zero-loss tests. No protoc or tonic: payloads
//! are opaque bytes, and only the wire format is implemented: each message is a 5-byte prefix
//! (compressed flag, big-endian length) and the bytes; the status comes in the trailers
//! (`grpc-status: 0`).
//!
//! - `/quiesce.demo.Demo/Echo` (unary): answers the request message as is, after sleeping
//!   `x-delay-ms` milliseconds (metadata) if given;
//! - `/quiesce.demo.Demo/Stream` (server streaming): `x-count` messages (default 10), one every
//!   `x-interval-ms` (default 100), each `<i> version=<VERSION> pod=<POD_NAME>`;
//! - `/grpc.health.v1.Health/Check`: `SERVING`, or `NOT_SERVING` with `--fail-health`.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use http_body::Frame;

use crate::{
    AppState, MAX_SLOW_MS,
    body::{self, FrameBody},
};

/// Most messages one `Stream` call sends.
const MAX_COUNT: u64 = 100_000;

/// One length-prefixed, uncompressed gRPC message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f.into()
}

/// The messages of a complete body; `Err` if a frame is cut short or compressed.
pub fn messages(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let head = body.get(..5).ok_or("truncated message prefix")?;
        if head[0] != 0 {
            return Err("compressed messages are not supported".into());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let msg = body.get(5..5 + len).ok_or("truncated message")?;
        out.push(msg);
        body = &body[5 + len..];
    }
    Ok(out)
}

/// A numeric metadata value, or `default`.
pub fn header_u64(headers: &HeaderMap, name: &str, default: u64) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn status_trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message)
        && !message.is_empty()
    {
        t.insert("grpc-message", v);
    }
    t
}

/// A `200 application/grpc` response of `body`.
fn grpc_response(state: &AppState, body: FrameBody) -> Response {
    let mut res = Response::new(Body::new(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = HeaderValue::from_str(&state.version) {
        h.insert("x-demo-version", v);
    }
    *res.status_mut() = StatusCode::OK;
    res
}

/// A unary answer: one message (or none) and the status in the trailers, queued at once.
fn unary(state: &AppState, msg: Option<Bytes>, code: u32, message: &str) -> Response {
    let (tx, body) = body::channel(2);
    if let Some(m) = msg {
        let _ = tx.try_send(Frame::data(frame(&m)));
    }
    let _ = tx.try_send(Frame::trailers(status_trailers(code, message)));
    grpc_response(state, body)
}

/// `/quiesce.demo.Demo/Echo`.
pub async fn echo(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let msg = match messages(&body) {
        Ok(m) if m.len() == 1 => Bytes::copy_from_slice(m[0]),
        Ok(m) => return unary(&state, None, 3, &format!("want 1 message, got {}", m.len())),
        Err(e) => return unary(&state, None, 3, &e),
    };
    let delay = header_u64(&headers, "x-delay-ms", 0).min(MAX_SLOW_MS);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    unary(&state, Some(msg), 0, "")
}

/// `/quiesce.demo.Demo/Stream`.
pub async fn stream(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let count = header_u64(&headers, "x-count", 10).min(MAX_COUNT);
    let interval = Duration::from_millis(header_u64(&headers, "x-interval-ms", 100));
    let (tx, body) = body::channel(4);
    let res = grpc_response(&state, body);
    tokio::spawn(async move {
        for i in 0..count {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let msg = format!("{i} version={} pod={}", state.version, state.pod_name);
            if tx.send(Frame::data(frame(msg.as_bytes()))).await.is_err() {
                return; // the client went away
            }
        }
        let _ = tx.send(Frame::trailers(status_trailers(0, ""))).await;
    });
    res
}

/// `/grpc.health.v1.Health/Check`: `HealthCheckResponse { status }` (1 SERVING, 2 NOT_SERVING).
pub async fn health_check(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.healthy() { 1 } else { 2 };
    unary(&state, Some(Bytes::from(vec![0x08, status])), 0, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut body = frame(b"hello").to_vec();
        assert_eq!(&body[..5], &[0, 0, 0, 0, 5]);
        body.extend_from_slice(&frame(b""));
        body.extend_from_slice(&frame(&[7; 300]));
        let m = messages(&body).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0], m[1], m[2].len()), (&b"hello"[..], &b""[..], 300));
        assert!(messages(&body[..body.len() - 1]).is_err());
        assert!(messages(&[1, 0, 0, 0, 0]).is_err());
        assert!(messages(&[]).unwrap().is_empty());
    }

    #[test]
    fn numeric_metadata() {
        let mut h = HeaderMap::new();
        h.insert("x-count", HeaderValue::from_static(" 3"));
        h.insert("x-bad", HeaderValue::from_static("x"));
        assert_eq!(header_u64(&h, "x-count", 10), 3);
        assert_eq!(header_u64(&h, "x-bad", 10), 10);
        assert_eq!(header_u64(&h, "x-none", 10), 10);
    }

    #[test]
    fn unary_answers_keep_their_trailers_when_polled_from_another_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let _rt = rt.enter();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let state = AppState {
            version: "v1".into(),
            pod_name: "p".into(),
            fail_health: false,
            healthy_from: None,
            shutdown,
            websockets: Default::default(),
        };
        let lost = (0..20_000)
            .filter(|_| {
                let res = unary(&state, Some(Bytes::from_static(b"x")), 0, "");
                let frames = crate::body::spin_frames(res.into_body());
                !frames.last().is_some_and(Frame::is_trailers)
            })
            .count();
        assert_eq!(lost, 0, "answers that ended without grpc-status");
    }
}
