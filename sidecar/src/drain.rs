//! The drain sequence as a pure state machine: time comes in as an argument, observations
//! come in as plain values, decisions come out. The I/O shell is [`crate::drainer`].
//!
//! Phases, each bounded:
//! 1. [`Phase::Endpoints`]: wait until the pod's IP is no longer ready in any EndpointSlice
//!    (skipped in standalone mode), bounded by the endpoint timeout;
//! 2. [`Phase::Quiet`]: wait until no new inbound connection arrived for the quiet period;
//! 3. [`Phase::InFlight`]: wait until no connection on the app ports carries in-flight work.
//!
//! Phases 2 and 3 share the drain timeout, counted from the start of phase 2. A phase ended by
//! its bound instead of its condition makes the drain `forced`.

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use serde::Serialize;

/// Where a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for EndpointSlices to drop the pod.
    Endpoints,
    /// Waiting for a quiet period without new connections.
    Quiet,
    /// Waiting for in-flight work.
    InFlight,
    /// Finished.
    Done,
}

impl Phase {
    /// Name used in logs, metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Endpoints => "endpoints",
            Phase::Quiet => "quiet",
            Phase::InFlight => "in_flight",
            Phase::Done => "done",
        }
    }
}

/// Bounds of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Wait for EndpointSlices (`None`: skip the phase, standalone mode).
    pub endpoint_timeout: Option<Duration>,
    /// Required time without new connections.
    pub quiet_period: Duration,
    /// Bound of phases 2 and 3 together.
    pub drain_timeout: Duration,
    /// Whether phase 3 runs. `false` for an app that shuts down gracefully: it finishes its
    /// in-flight work and closes its kept-alive connections itself once it gets SIGTERM, so
    /// the drain ends with the quiet period and hands the open connections over to the app.
    pub wait_in_flight: bool,
}

/// What the shell saw since the previous observation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Whether the pod's IP is still ready in some EndpointSlice (`None`: not known yet).
    pub endpoints_ready: Option<bool>,
    /// Whether a new inbound connection arrived since the previous observation.
    pub new_connections: bool,
    /// Established connections on app ports.
    pub established: usize,
    /// Of those, connections with in-flight work.
    pub busy: usize,
}

/// The outcome of a drain, as the drain endpoint's answer and `/status` show it; the pod
/// condition carries it as [`quiesce_api::DrainReport`] ([`DrainReport::to_api`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Total duration, milliseconds.
    pub duration_ms: u64,
    /// Time spent per phase, milliseconds.
    pub endpoints_ms: u64,
    /// Quiet phase duration.
    pub quiet_ms: u64,
    /// In-flight phase duration.
    pub in_flight_ms: u64,
    /// Established connections on app ports when the drain started.
    pub connections_at_start: usize,
    /// Of those, busy ones.
    pub busy_at_start: usize,
    /// Busy connections left when the drain ended (non-zero only when forced).
    pub busy_at_end: usize,
    /// Whether some phase ended by its bound.
    pub forced: bool,
    /// The phases that ended by their bound.
    pub forced_phases: Vec<Phase>,
    /// Graceful app: established connections left for the app's own shutdown when the drain
    /// released SIGTERM (`None`: the drain waited for in-flight work itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to_app: Option<usize>,
    /// Proxy mode: what the proxy did during the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::ProxyReport>,
}

impl DrainReport {
    /// The report as the API carries it in the drained condition (the one conversion).
    pub fn to_api(&self) -> quiesce_api::DrainReport {
        let n = |v: usize| v as u64;
        quiesce_api::DrainReport {
            duration_ms: self.duration_ms,
            endpoints_ms: self.endpoints_ms,
            quiet_ms: self.quiet_ms,
            in_flight_ms: self.in_flight_ms,
            connections_at_start: n(self.connections_at_start),
            busy_at_start: n(self.busy_at_start),
            busy_at_end: n(self.busy_at_end),
            forced: self.forced,
            forced_phases: self
                .forced_phases
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            handed_to_app: self.handed_to_app.map(n),
            proxy: self.proxy.map(|p| quiesce_api::ProxyDrainReport {
                requests_while_draining: p.requests_while_draining,
                connection_close: p.connection_close,
                goaways: p.goaways,
                idle_closed: p.idle_closed,
                left_open: n(p.left_open),
            }),
            app_shutdown_ms: None,
        }
    }

    /// One line for people (logs, the drain answer): [`quiesce_api::DrainReport::summary`].
    pub fn message(&self) -> String {
        self.to_api().summary()
    }
}

/// One drain.
#[derive(Debug)]
pub struct DrainMachine {
    t: Timings,
    started: Instant,
    phase: Phase,
    phase_started: Instant,
    /// Start of phase 2, origin of the drain timeout.
    window_started: Option<Instant>,
    last_arrival: Instant,
    at_start: Observation,
    forced: Vec<Phase>,
    durations: [Duration; 3],
    report: Option<DrainReport>,
}

impl DrainMachine {
    /// Starts a drain at `now`; `at_start` gives the connection counts at that moment.
    pub fn new(t: Timings, now: Instant, at_start: Observation) -> Self {
        let mut m = Self {
            t,
            started: now,
            phase: Phase::Endpoints,
            phase_started: now,
            window_started: None,
            last_arrival: now,
            at_start,
            forced: Vec::new(),
            durations: [Duration::ZERO; 3],
            report: None,
        };
        if t.endpoint_timeout.is_none() {
            m.enter(Phase::Quiet, now);
        }
        m
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The report, once done.
    pub fn report(&self) -> Option<&DrainReport> {
        self.report.as_ref()
    }

    /// Feeds one observation made at `now`; returns the report when the drain is done.
    /// Several phases may end in one call.
    pub fn observe(&mut self, now: Instant, obs: Observation) -> Option<&DrainReport> {
        if obs.new_connections {
            self.last_arrival = now;
        }
        loop {
            let elapsed = now.saturating_duration_since(self.phase_started);
            let next = match self.phase {
                Phase::Endpoints => {
                    let bound = self.t.endpoint_timeout.unwrap_or(Duration::ZERO);
                    if obs.endpoints_ready == Some(false) {
                        Some(Phase::Quiet)
                    } else if elapsed >= bound {
                        self.forced.push(Phase::Endpoints);
                        Some(Phase::Quiet)
                    } else {
                        None
                    }
                }
                Phase::Quiet => {
                    if now.saturating_duration_since(self.last_arrival) >= self.t.quiet_period {
                        Some(if self.t.wait_in_flight {
                            Phase::InFlight
                        } else {
                            Phase::Done
                        })
                    } else if self.window_expired(now) {
                        self.forced.push(Phase::Quiet);
                        Some(Phase::Done)
                    } else {
                        None
                    }
                }
                Phase::InFlight => {
                    if obs.busy == 0 {
                        Some(Phase::Done)
                    } else if self.window_expired(now) {
                        self.forced.push(Phase::InFlight);
                        Some(Phase::Done)
                    } else {
                        None
                    }
                }
                Phase::Done => return self.report.as_ref(),
            };
            match next {
                Some(p) => {
                    self.enter(p, now);
                    if p == Phase::Done {
                        self.finish(now, obs);
                    }
                }
                None => return None,
            }
        }
    }

    fn window_expired(&self, now: Instant) -> bool {
        self.window_started
            .is_some_and(|w| now.saturating_duration_since(w) >= self.t.drain_timeout)
    }

    fn enter(&mut self, p: Phase, now: Instant) {
        let spent = now.saturating_duration_since(self.phase_started);
        match self.phase {
            Phase::Endpoints => self.durations[0] += spent,
            Phase::Quiet => self.durations[1] += spent,
            Phase::InFlight => self.durations[2] += spent,
            Phase::Done => {}
        }
        if p == Phase::Quiet {
            self.window_started = Some(now);
            // A full quiet period is required after the endpoints are gone.
            self.last_arrival = now;
        }
        self.phase = p;
        self.phase_started = now;
    }

    fn finish(&mut self, now: Instant, last: Observation) {
        let ms = |d: Duration| d.as_millis() as u64;
        let forced = !self.forced.is_empty();
        self.report = Some(DrainReport {
            duration_ms: ms(now.saturating_duration_since(self.started)),
            endpoints_ms: ms(self.durations[0]),
            quiet_ms: ms(self.durations[1]),
            in_flight_ms: ms(self.durations[2]),
            connections_at_start: self.at_start.established,
            busy_at_start: self.at_start.busy,
            busy_at_end: if forced { last.busy } else { 0 },
            forced,
            forced_phases: self.forced.clone(),
            handed_to_app: (!self.t.wait_in_flight).then_some(last.established),
            proxy: None,
        });
    }
}
