//! The sidecar's drain report as data: written once by the sidecar as the message of the pod
//! condition [`DRAINED_CONDITION`](crate::constants::DRAINED_CONDITION) (compact JSON, see
//! [`DrainReport::to_condition_message`]) and read back by the operator and the e2e suite with
//! [`DrainReport::from_condition_message`]. [`DrainReport::summary`] is the one-line prose for
//! people (logs, the drain answer, demos).
//!
//! The app container shares the pod's service account token and could write the condition
//! too: readers must treat every value as untrusted (the operator bounds the durations it
//! takes from a report).

use serde::{Deserialize, Serialize};

/// The outcome of one drain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    /// Total duration, milliseconds.
    pub duration_ms: u64,
    /// Time spent waiting for the EndpointSlices to drop the pod, milliseconds.
    pub endpoints_ms: u64,
    /// Time spent in the quiet period, milliseconds.
    pub quiet_ms: u64,
    /// Time spent waiting for in-flight work, milliseconds.
    pub in_flight_ms: u64,
    /// Established connections on app ports when the drain started.
    pub connections_at_start: u64,
    /// Of those, busy ones.
    pub busy_at_start: u64,
    /// Busy connections left when the drain ended (non-zero only when forced).
    pub busy_at_end: u64,
    /// Whether some phase ended by its bound instead of its condition.
    pub forced: bool,
    /// The phases that ended by their bound: `endpoints`, `quiet`, `in_flight`.
    #[serde(default)]
    pub forced_phases: Vec<String>,
    /// Graceful app: established connections left to the app's own shutdown when the drain
    /// released SIGTERM (absent: the drain waited for in-flight work itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to_app: Option<u64>,
    /// Proxy mode: what the proxy did during the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyDrainReport>,
    /// Graceful app: how long the app took, after SIGTERM was released, to close its
    /// connections and ports (added by a second report once it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_shutdown_ms: Option<u64>,
}

/// What the sidecar's proxy did during a drain (proxy mode).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxyDrainReport {
    /// Requests received after draining started.
    pub requests_while_draining: u64,
    /// Responses sent with `Connection: close` (HTTP/1.1 connections closed after them).
    pub connection_close: u64,
    /// GOAWAYs sent (HTTP/2 connections).
    pub goaways: u64,
    /// Idle connections closed by the proxy.
    pub idle_closed: u64,
    /// Connections still open when the drain ended (non-zero only when forced).
    pub left_open: u64,
}

impl DrainReport {
    /// One line for people: `drained in 2.41s (endpoints 0.00s, quiet 0.85s, in-flight
    /// 1.56s); 3 connections at start (3 busy); not forced`, plus what the app and the proxy
    /// did.
    pub fn summary(&self) -> String {
        let s = |ms: u64| format!("{:.2}s", ms as f64 / 1000.0);
        let forced = if self.forced {
            format!(
                "forced ({} timeout, {} busy left)",
                self.forced_phases.join("+"),
                self.busy_at_end
            )
        } else {
            "not forced".to_string()
        };
        let forced = match self.handed_to_app {
            Some(n) => format!("{forced}; {n} connections left to the app's graceful shutdown"),
            None => forced,
        };
        let proxy = self.proxy.map_or(String::new(), |p| {
            format!(
                "; proxy: {} requests while draining, {} Connection: close, {} GOAWAY, {} idle closed, {} left open",
                p.requests_while_draining, p.connection_close, p.goaways, p.idle_closed, p.left_open
            )
        });
        let app = self.app_shutdown_ms.map_or(String::new(), |ms| {
            format!("; app shut down in {} after release", s(ms))
        });
        format!(
            "drained in {} (endpoints {}, quiet {}, in-flight {}); {} connections at start ({} busy); {}{}{}",
            s(self.duration_ms),
            s(self.endpoints_ms),
            s(self.quiet_ms),
            s(self.in_flight_ms),
            self.connections_at_start,
            self.busy_at_start,
            forced,
            proxy,
            app
        )
    }

    /// The report as the drained condition's message: compact JSON.
    pub fn to_condition_message(&self) -> String {
        serde_json::to_string(self).expect("a drain report serializes")
    }

    /// The report in a drained condition's message; `None` when the message is not one (prose
    /// of an older sidecar, or garbage).
    pub fn from_condition_message(message: &str) -> Option<Self> {
        serde_json::from_str(message).ok()
    }

    /// Whether every number is plausible for a drain that could last at most `max_ms`
    /// milliseconds: each duration at most `max_ms`, each count at most `MAX_COUNT`. The
    /// app container can write the condition too, so a reader checks this before taking any
    /// number from a report.
    pub fn is_plausible(&self, max_ms: u64) -> bool {
        let durations_ok = [
            self.duration_ms,
            self.endpoints_ms,
            self.quiet_ms,
            self.in_flight_ms,
        ]
        .into_iter()
        .chain(self.app_shutdown_ms)
        .all(|ms| ms <= max_ms);
        let proxy = self.proxy.unwrap_or_default();
        let counts_ok = [
            self.connections_at_start,
            self.busy_at_start,
            self.busy_at_end,
            proxy.requests_while_draining,
            proxy.connection_close,
            proxy.goaways,
            proxy.idle_closed,
            proxy.left_open,
        ]
        .into_iter()
        .chain(self.handed_to_app)
        .all(|n| n <= MAX_COUNT);
        durations_ok && counts_ok
    }
}

/// Largest plausible count in a report (connections, requests during one drain): more than a
/// pod's sockets could ever carry; anything above is a forged or garbled report.
pub const MAX_COUNT: u64 = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrainReport {
        DrainReport {
            duration_ms: 2410,
            endpoints_ms: 0,
            quiet_ms: 850,
            in_flight_ms: 1560,
            connections_at_start: 3,
            busy_at_start: 3,
            ..Default::default()
        }
    }

    #[test]
    fn summary_is_the_one_line_report() {
        assert_eq!(
            report().summary(),
            "drained in 2.41s (endpoints 0.00s, quiet 0.85s, in-flight 1.56s); 3 connections at start (3 busy); not forced"
        );
        let forced = DrainReport {
            forced: true,
            forced_phases: vec!["endpoints".into(), "in_flight".into()],
            busy_at_end: 1,
            proxy: Some(ProxyDrainReport {
                requests_while_draining: 7,
                connection_close: 2,
                goaways: 1,
                idle_closed: 3,
                left_open: 1,
            }),
            ..report()
        };
        assert!(
            forced.summary().ends_with(
                "; forced (endpoints+in_flight timeout, 1 busy left); proxy: 7 requests while \
                 draining, 2 Connection: close, 1 GOAWAY, 3 idle closed, 1 left open"
            ),
            "{}",
            forced.summary()
        );
        let graceful = DrainReport {
            handed_to_app: Some(4),
            app_shutdown_ms: Some(1234),
            ..report()
        };
        assert!(
            graceful.summary().ends_with(
                "not forced; 4 connections left to the app's graceful shutdown; app shut down in 1.23s after release"
            ),
            "{}",
            graceful.summary()
        );
    }

    #[test]
    fn the_condition_message_reads_back_as_written() {
        let full = DrainReport {
            forced: true,
            forced_phases: vec!["quiet".into()],
            busy_at_end: 2,
            handed_to_app: Some(4),
            proxy: Some(ProxyDrainReport {
                goaways: 1,
                ..Default::default()
            }),
            app_shutdown_ms: Some(300),
            ..report()
        };
        for r in [report(), full] {
            let message = r.to_condition_message();
            assert!(!message.contains('\n'), "{message}");
            assert_eq!(DrainReport::from_condition_message(&message), Some(r));
        }
        let message = report().to_condition_message();
        assert!(
            message.starts_with(r#"{"durationMs":2410,"endpointsMs":0,"quietMs":850,"#),
            "{message}"
        );
        assert!(!message.contains("handedToApp"), "{message}");
    }

    #[test]
    fn garbage_is_not_a_report() {
        for garbage in [
            "drained in inf s",
            "drained in 2.41s (endpoints 0.00s, quiet 0.85s, in-flight 1.56s); not forced",
            "",
            "{}",
            r#"{"durationMs":-3,"endpointsMs":0,"quietMs":0,"inFlightMs":0,"connectionsAtStart":0,"busyAtStart":0,"busyAtEnd":0,"forced":false}"#,
            r#"{"durationMs":1e300,"endpointsMs":0,"quietMs":0,"inFlightMs":0,"connectionsAtStart":0,"busyAtStart":0,"busyAtEnd":0,"forced":false}"#,
            r#"{"durationMs":"NaN","endpointsMs":0,"quietMs":0,"inFlightMs":0,"connectionsAtStart":0,"busyAtStart":0,"busyAtEnd":0,"forced":false}"#,
        ] {
            assert_eq!(
                DrainReport::from_condition_message(garbage),
                None,
                "{garbage}"
            );
        }
        // Huge but well-formed numbers parse; readers check them with `is_plausible`.
        let huge = DrainReport {
            duration_ms: u64::MAX,
            ..report()
        };
        assert_eq!(
            DrainReport::from_condition_message(&huge.to_condition_message()),
            Some(huge)
        );
    }

    #[test]
    fn only_reports_with_numbers_in_bounds_are_plausible() {
        assert!(report().is_plausible(2410));
        assert!(!report().is_plausible(2409), "the total above the bound");
        let phase = DrainReport {
            quiet_ms: 5000,
            ..report()
        };
        assert!(!phase.is_plausible(2410), "a phase above the bound");
        let app = DrainReport {
            app_shutdown_ms: Some(u64::MAX),
            ..report()
        };
        assert!(!app.is_plausible(60_000));
        let count = DrainReport {
            connections_at_start: MAX_COUNT + 1,
            ..report()
        };
        assert!(!count.is_plausible(60_000));
        let proxy = DrainReport {
            proxy: Some(ProxyDrainReport {
                goaways: u64::MAX,
                ..Default::default()
            }),
            ..report()
        };
        assert!(!proxy.is_plausible(60_000));
        let handed = DrainReport {
            handed_to_app: Some(MAX_COUNT),
            ..report()
        };
        assert!(handed.is_plausible(60_000));
    }
}
