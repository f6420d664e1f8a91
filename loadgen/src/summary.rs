//! The totals of a run: every request's [`Record`] added into one [`Summary`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Protocol,
    outcome::{Outcome, Record},
};

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests launched.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers.
    pub http_status: u64,
    /// Resets / early closes.
    pub reset: u64,
    /// Refused connections.
    pub refused: u64,
    /// HTTP/2 streams left out by a GOAWAY.
    #[serde(default)]
    pub goaway: u64,
    /// HTTP/2 streams refused (`REFUSED_STREAM`).
    #[serde(default)]
    pub stream_refused: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Requests that had no active target.
    pub no_target: u64,
    /// Other errors.
    pub other: u64,
    /// Slow requests launched.
    pub slow_sent: u64,
    /// Slow requests answered 2xx.
    pub slow_ok: u64,
    /// Answers by status code.
    pub status_codes: BTreeMap<u16, u64>,
    /// 2xx answers by target.
    pub ok_by_target: BTreeMap<String, u64>,
    /// 2xx answers by `x-demo-version` header (demo-app), if present.
    pub ok_by_version: BTreeMap<String, u64>,
    /// Latency of 2xx answers, milliseconds: p50, p99, max.
    pub latency_ms: Latency,
    /// Wall time from first launch to last completion, milliseconds.
    pub elapsed_ms: u64,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
    /// When each failed request was launched, milliseconds after the first launch (sorted).
    #[serde(default)]
    pub failed_at_ms: Vec<u64>,
    /// The protocol the run used.
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP/2 only: connections dialed (0 for HTTP/1).
    #[serde(default)]
    pub connections_opened: u64,
    /// HTTP/2 only: connections that ended during the run (server close, reset, or let go
    /// after a GOAWAY).
    #[serde(default)]
    pub connections_ended: u64,
    /// HTTP/2 only: connections on which the server sent a GOAWAY.
    #[serde(default)]
    pub connections_goaway: u64,
    /// HTTP/2 only: requests the server did not process (GOAWAY, `REFUSED_STREAM`) and that
    /// were sent again, as gRPC and Go's HTTP/2 clients do ([`crate::h2chan`]).
    #[serde(default)]
    pub retried_unprocessed: u64,
    /// HTTP/1.1 keep-alive with [`LoadConfig::retry_reused`](crate::LoadConfig::retry_reused):
    /// requests sent again because a reused connection ended before their response began (each
    /// counted once in `sent`).
    #[serde(default)]
    pub retried_reused: u64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Requests that did not end in a 2xx answer.
    pub fn failed(&self) -> u64 {
        self.http_status
            + self.reset
            + self.refused
            + self.goaway
            + self.stream_refused
            + self.timeout
            + self.no_target
            + self.other
    }

    pub(crate) fn add(&mut self, r: &Record) {
        match &r.outcome {
            Outcome::Ok => {
                self.ok += 1;
                *self.ok_by_target.entry(r.target.clone()).or_default() += 1;
                if let Some(v) = &r.version {
                    *self.ok_by_version.entry(v.clone()).or_default() += 1;
                }
                if r.slow {
                    self.slow_ok += 1;
                }
            }
            Outcome::HttpStatus(_) => self.http_status += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::GoAway => self.goaway += 1,
            Outcome::StreamRefused => self.stream_refused += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::NoTarget => self.no_target += 1,
            Outcome::Other(_) => self.other += 1,
        }
        if let Some(s) = r.status {
            *self.status_codes.entry(s).or_default() += 1;
        }
        if r.retried {
            self.retried_reused += 1;
        }
        if r.outcome != Outcome::Ok {
            self.failed_at_ms.push(r.launched.as_millis() as u64);
        }
        if r.outcome != Outcome::Ok && self.error_samples.len() < 10 {
            self.error_samples
                .push(format!("{} {}: {:?}", r.target, r.path, r.outcome));
        }
    }
}
