//! How one call ended ([`RpcOutcome`]) and the totals of a run: per kind of call, and for the
//! HTTP/2 connections under them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::loadgen::Outcome;

/// How one RPC ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcOutcome {
    /// HTTP 200, `grpc-status: 0`, and (streams) every message.
    Ok,
    /// The request or connection failed (refused, reset, GOAWAY, timeout, non-200, …).
    Transport(Outcome),
    /// A non-zero `grpc-status` (14 UNAVAILABLE is what a gRPC library reports on a reset).
    GrpcStatus(u32),
    /// The answer ended without `grpc-status`.
    MissingStatus,
    /// A stream ended early: fewer messages than asked for.
    Truncated {
        /// Messages received.
        got: u64,
        /// Messages asked for.
        want: u64,
    },
}

impl RpcOutcome {
    /// Short name used as a key in [`RpcCounts::by_outcome`].
    pub fn key(&self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::Transport(Outcome::HttpStatus(s)) => format!("http_{s}"),
            Self::Transport(Outcome::Other(_)) => "other".into(),
            Self::Transport(o) => serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "other".into()),
            Self::GrpcStatus(c) => format!("grpc_status_{c}"),
            Self::MissingStatus => "missing_status".into(),
            Self::Truncated { .. } => "truncated".into(),
        }
    }
}

/// Totals of one kind of RPC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RpcCounts {
    /// RPCs started.
    pub sent: u64,
    /// RPCs that ended ok.
    pub ok: u64,
    /// RPCs that did not.
    pub failed: u64,
    /// RPCs by [`RpcOutcome::key`].
    pub by_outcome: BTreeMap<String, u64>,
}

impl RpcCounts {
    pub(crate) fn add(&mut self, o: &RpcOutcome) {
        self.sent += 1;
        if *o == RpcOutcome::Ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        *self.by_outcome.entry(o.key()).or_default() += 1;
    }
}

/// Totals of a gRPC run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcSummary {
    /// Unary `Echo` calls.
    pub unary: RpcCounts,
    /// `Stream` calls.
    pub streams: RpcCounts,
    /// Messages received on streams, all calls together.
    pub stream_messages: u64,
    /// HTTP/2 connections dialed.
    pub connections_opened: u64,
    /// HTTP/2 connections that ended during the run.
    pub connections_ended: u64,
    /// HTTP/2 connections on which the server sent a GOAWAY.
    pub connections_goaway: u64,
    /// Calls the server did not process (GOAWAY, `REFUSED_STREAM`), sent again as gRPC's
    /// transparent retry does.
    #[serde(default)]
    pub retried_unprocessed: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// When each failed RPC started, milliseconds after the start (sorted).
    pub failed_at_ms: Vec<u64>,
    /// The first few failures, for diagnosis.
    pub error_samples: Vec<String>,
}

impl GrpcSummary {
    /// RPCs of both kinds that failed.
    pub fn failed(&self) -> u64 {
        self.unary.failed + self.streams.failed
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_keys_and_counts() {
        let mut c = RpcCounts::default();
        for o in [
            RpcOutcome::Ok,
            RpcOutcome::Transport(Outcome::GoAway),
            RpcOutcome::Transport(Outcome::Refused),
            RpcOutcome::Transport(Outcome::HttpStatus(503)),
            RpcOutcome::Transport(Outcome::Other("x".into())),
            RpcOutcome::GrpcStatus(14),
            RpcOutcome::Truncated { got: 1, want: 2 },
        ] {
            c.add(&o);
        }
        assert_eq!((c.sent, c.ok, c.failed), (7, 1, 6));
        let keys: Vec<&str> = c.by_outcome.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "goaway",
                "grpc_status_14",
                "http_503",
                "ok",
                "other",
                "refused",
                "truncated"
            ]
        );
    }
}
