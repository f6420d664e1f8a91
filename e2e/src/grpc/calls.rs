//! One call on an h2c channel to the demo app's `quiesce.demo.Demo` service (unary `Echo`,
//! server `Stream`) or to the gRPC health service, ending in an [`RpcOutcome`].

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::{Deframer, RpcOutcome, frame, grpc_status};
use crate::{
    h2chan::H2Channel,
    loadgen::{Outcome, classify},
};

/// Path of the unary echo method.
pub const ECHO: &str = "/quiesce.demo.Demo/Echo";
/// Path of the server-streaming method.
pub const STREAM: &str = "/quiesce.demo.Demo/Stream";

fn request(target: &str, path: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("{target}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, "quiesce-loadgen-grpc")
        .body(Full::new(body))
        .expect("valid gRPC request")
}

/// One unary `Echo` call of `payload`.
pub async fn echo(
    ch: &H2Channel<Full<Bytes>>,
    target: &str,
    payload: &[u8],
    delay_ms: u64,
) -> RpcOutcome {
    let mut req = request(target, ECHO, frame(payload));
    req.headers_mut()
        .insert("x-delay-ms", delay_ms.to_string().parse().expect("number"));
    let res = match ch.request(req).await {
        Ok(r) => r,
        Err(o) => return RpcOutcome::Transport(o),
    };
    if res.status() != hyper::StatusCode::OK {
        return RpcOutcome::Transport(Outcome::HttpStatus(res.status().as_u16()));
    }
    let (parts, body) = res.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return RpcOutcome::Transport(classify(&e)),
    };
    let trailers = collected.trailers().cloned();
    match grpc_status(&parts.headers, trailers.as_ref()) {
        None => return RpcOutcome::MissingStatus,
        Some(0) => {}
        Some(c) => return RpcOutcome::GrpcStatus(c),
    }
    let mut d = Deframer::default();
    match d.push(&collected.to_bytes()) {
        Ok(m) if m.len() == 1 && m[0] == payload && !d.partial() => RpcOutcome::Ok,
        Ok(m) => RpcOutcome::Transport(Outcome::Other(format!(
            "echo answered {} message(s), not the one sent",
            m.len()
        ))),
        Err(e) => RpcOutcome::Transport(Outcome::Other(e)),
    }
}

/// One `Stream` call of `count` messages `interval_ms` apart; also returns messages received.
pub async fn stream(
    ch: &H2Channel<Full<Bytes>>,
    target: &str,
    count: u64,
    interval_ms: u64,
) -> (RpcOutcome, u64) {
    let mut req = request(target, STREAM, frame(b""));
    let h = req.headers_mut();
    h.insert("x-count", count.to_string().parse().expect("number"));
    h.insert(
        "x-interval-ms",
        interval_ms.to_string().parse().expect("number"),
    );
    let res = match ch.request(req).await {
        Ok(r) => r,
        Err(o) => return (RpcOutcome::Transport(o), 0),
    };
    if res.status() != hyper::StatusCode::OK {
        let o = Outcome::HttpStatus(res.status().as_u16());
        return (RpcOutcome::Transport(o), 0);
    }
    let (parts, mut body) = res.into_parts();
    let mut d = Deframer::default();
    let mut got = 0u64;
    let mut trailers = None;
    while let Some(next) = body.frame().await {
        let f = match next {
            Ok(f) => f,
            // A cut stream is a transport failure whatever arrived before it.
            Err(e) => return (RpcOutcome::Transport(classify(&e)), got),
        };
        match f.into_data() {
            Ok(data) => match d.push(&data) {
                Ok(m) => got += m.len() as u64,
                Err(e) => return (RpcOutcome::Transport(Outcome::Other(e)), got),
            },
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let outcome = match grpc_status(&parts.headers, trailers.as_ref()) {
        None => RpcOutcome::MissingStatus,
        Some(0) if got == count && !d.partial() => RpcOutcome::Ok,
        Some(0) => RpcOutcome::Truncated { got, want: count },
        Some(c) => RpcOutcome::GrpcStatus(c),
    };
    (outcome, got)
}

/// `grpc.health.v1.Health/Check` of the whole server: the `status` (1 SERVING, 2 NOT_SERVING).
pub async fn health_check(ch: &H2Channel<Full<Bytes>>, target: &str) -> Result<u64, RpcOutcome> {
    let req = request(target, "/grpc.health.v1.Health/Check", frame(b""));
    let res = ch.request(req).await.map_err(RpcOutcome::Transport)?;
    if res.status() != hyper::StatusCode::OK {
        let o = Outcome::HttpStatus(res.status().as_u16());
        return Err(RpcOutcome::Transport(o));
    }
    let (parts, body) = res.into_parts();
    let c = body
        .collect()
        .await
        .map_err(|e| RpcOutcome::Transport(classify(&e)))?;
    match grpc_status(&parts.headers, c.trailers()) {
        Some(0) => {}
        Some(code) => return Err(RpcOutcome::GrpcStatus(code)),
        None => return Err(RpcOutcome::MissingStatus),
    }
    let msgs = Deframer::default()
        .push(&c.to_bytes())
        .map_err(|e| RpcOutcome::Transport(Outcome::Other(e)))?;
    // HealthCheckResponse { status = 1 (varint) }: tag 0x08, then the value; absent = 0.
    Ok(match msgs.first().map(Vec::as_slice) {
        Some([0x08, v, ..]) => u64::from(*v),
        _ => 0,
    })
}
