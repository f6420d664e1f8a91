//! What a run is asked to do: the [`Protocol`], the slow-request mix and the [`LoadConfig`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Targets;

/// How requests travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, one new connection per request (`Connection: close`).
    #[default]
    Http1,
    /// HTTP/1.1 over a keep-alive connection pool.
    #[serde(rename = "keepalive")]
    KeepAlive,
    /// HTTP/2 cleartext with prior knowledge over a few multiplexed connections per target,
    /// redialed when the server sends GOAWAY or closes them.
    H2c,
}

impl Protocol {
    /// The name used on command lines and in summaries: `http1`, `keepalive`, `h2c`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::KeepAlive => "keepalive",
            Self::H2c => "h2c",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http1" => Ok(Self::Http1),
            "keepalive" | "keep-alive" => Ok(Self::KeepAlive),
            "h2c" | "h2" => Ok(Self::H2c),
            _ => Err(format!("unknown protocol {s:?} (http1, keepalive, h2c)")),
        }
    }
}

/// A share of slow requests (`/slow?ms=N`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SlowMix {
    /// How long the app should take, milliseconds.
    pub ms: u64,
    /// Share of requests that are slow, 0.0–1.0, spread evenly.
    pub fraction: f64,
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where requests go.
    pub targets: Targets,
    /// Requests per second.
    pub rate: f64,
    /// Stop launching after this long (`None`: until the count or
    /// [`Running::stop`](crate::Running::stop)).
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Reuse connections (`false`: one new connection per request, `Connection: close`).
    /// The older switch, kept for existing callers: with `protocol: Http1`, `true` means
    /// [`Protocol::KeepAlive`]. See [`LoadConfig::effective_protocol`].
    pub keep_alive: bool,
    /// How requests travel.
    pub protocol: Protocol,
    /// HTTP/2 connections per target with [`Protocol::H2c`] (at least 1).
    pub h2_connections: usize,
    /// Path of ordinary requests.
    pub path: String,
    /// Optional slow requests.
    pub slow: Option<SlowMix>,
    /// Bound of one request, connect to last body byte.
    pub timeout: Duration,
    /// Keep-alive pool: send a request again, once, when a connection that had already
    /// answered a request closed or reset before any byte of this one's response, as RFC 9112
    /// §9.3.1 allows for idempotent requests and Go's Transport, OkHttp and nginx upstreams do.
    /// That is the race no server can avoid when it closes an idle kept-alive connection (the
    /// client sent just as the close left). Counted in
    /// [`Summary::retried_reused`](crate::Summary::retried_reused); `false` counts such a
    /// request as lost, like a client that never retries.
    pub retry_reused: bool,
}

impl LoadConfig {
    /// `rate` req/s to one base URL, no keep-alive, path `/`, 10 s timeout, until stopped.
    pub fn new(url: impl Into<String>, rate: f64) -> Self {
        Self {
            targets: Targets::new([url.into()]),
            rate,
            duration: None,
            count: None,
            keep_alive: false,
            protocol: Protocol::Http1,
            h2_connections: 2,
            path: "/".to_string(),
            slow: None,
            timeout: Duration::from_secs(10),
            retry_reused: false,
        }
    }

    /// The protocol in force: `protocol`, upgraded to keep-alive by the older `keep_alive`.
    pub fn effective_protocol(&self) -> Protocol {
        match self.protocol {
            Protocol::Http1 if self.keep_alive => Protocol::KeepAlive,
            p => p,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::Summary;

    #[test]
    fn protocol_names_and_the_older_keep_alive_switch() {
        for p in [Protocol::Http1, Protocol::KeepAlive, Protocol::H2c] {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert!("h3".parse::<Protocol>().is_err());
        let mut cfg = LoadConfig::new("http://127.0.0.1:1", 1.0);
        assert_eq!(cfg.effective_protocol(), Protocol::Http1);
        cfg.keep_alive = true;
        assert_eq!(cfg.effective_protocol(), Protocol::KeepAlive);
        cfg.protocol = Protocol::H2c;
        assert_eq!(cfg.effective_protocol(), Protocol::H2c);
        // A summary written before the protocol fields existed still reads.
        let old = r#"{"sent":1,"ok":1,"http_status":0,"reset":0,"refused":0,"timeout":0,
            "no_target":0,"other":0,"slow_sent":0,"slow_ok":0,"status_codes":{"200":1},
            "ok_by_target":{},"ok_by_version":{},"latency_ms":{"p50":1.0,"p99":1.0,"max":1.0},
            "elapsed_ms":5,"error_samples":[]}"#;
        let s: Summary = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.protocol, s.goaway, s.connections_goaway),
            (Protocol::Http1, 0, 0)
        );
    }
}
