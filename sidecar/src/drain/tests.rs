use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn timings(endpoints: Option<u64>) -> Timings {
    Timings {
        endpoint_timeout: endpoints.map(Duration::from_secs),
        quiet_period: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(30),
        wait_in_flight: true,
    }
}

fn obs(ready: Option<bool>, new: bool, busy: usize) -> Observation {
    Observation {
        endpoints_ready: ready,
        new_connections: new,
        established: busy + 1,
        busy,
    }
}

/// A clock the test moves by hand.
struct Clock(Instant);
impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + MS * ms as u32
    }
}

#[test]
fn happy_path_walks_every_phase() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(Some(10)), c.at(0), obs(Some(true), false, 2));
    assert_eq!(m.phase(), Phase::Endpoints);
    assert!(m.observe(c.at(100), obs(Some(true), true, 2)).is_none());
    assert!(m.observe(c.at(500), obs(Some(false), true, 2)).is_none());
    assert_eq!(m.phase(), Phase::Quiet);
    // Traffic still arrives 400 ms into the quiet phase: the quiet period restarts.
    assert!(m.observe(c.at(900), obs(Some(false), true, 2)).is_none());
    assert!(m.observe(c.at(1800), obs(Some(false), false, 2)).is_none());
    assert_eq!(m.phase(), Phase::Quiet);
    assert!(m.observe(c.at(1900), obs(Some(false), false, 1)).is_none());
    assert_eq!(m.phase(), Phase::InFlight);
    let r = m
        .observe(c.at(3000), obs(Some(false), false, 0))
        .cloned()
        .unwrap();
    assert_eq!(m.phase(), Phase::Done);
    assert_eq!(r.duration_ms, 3000);
    assert_eq!(
        (r.endpoints_ms, r.quiet_ms, r.in_flight_ms),
        (500, 1400, 1100)
    );
    assert_eq!((r.connections_at_start, r.busy_at_start), (3, 2));
    assert!(!r.forced);
    assert_eq!(
        r.message(),
        "drained in 3.00s (endpoints 0.50s, quiet 1.40s, in-flight 1.10s); 3 connections at start (2 busy); not forced"
    );
}

#[test]
fn standalone_skips_endpoints_and_idle_pod_finishes_after_one_quiet_period() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(None), c.at(0), obs(None, false, 0));
    assert_eq!(m.phase(), Phase::Quiet);
    assert!(m.observe(c.at(999), obs(None, false, 0)).is_none());
    let r = m.observe(c.at(1000), obs(None, false, 0)).unwrap();
    assert_eq!(
        (r.duration_ms, r.quiet_ms, r.in_flight_ms, r.forced),
        (1000, 1000, 0, false)
    );
}

#[test]
fn endpoint_timeout_forces_but_the_drain_goes_on() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(Some(10)), c.at(0), obs(None, false, 0));
    assert!(m.observe(c.at(9_999), obs(None, false, 0)).is_none());
    assert!(m.observe(c.at(10_000), obs(Some(true), false, 0)).is_none());
    assert_eq!(m.phase(), Phase::Quiet);
    let r = m.observe(c.at(11_000), obs(Some(true), false, 0)).unwrap();
    assert!(r.forced);
    assert_eq!(r.forced_phases, vec![Phase::Endpoints]);
    assert!(
        r.message()
            .contains("forced (endpoints timeout, 0 busy left)"),
        "{}",
        r.message()
    );
}

#[test]
fn endless_new_connections_are_bounded_by_the_drain_timeout() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(None), c.at(0), obs(None, false, 1));
    for t in (100..30_000).step_by(100) {
        assert!(m.observe(c.at(t), obs(None, true, 1)).is_none(), "at {t}");
    }
    let r = m.observe(c.at(30_000), obs(None, true, 1)).unwrap();
    assert_eq!(r.forced_phases, vec![Phase::Quiet]);
    assert_eq!(r.busy_at_end, 1);
    assert_eq!(r.in_flight_ms, 0);
}

#[test]
fn stuck_in_flight_work_is_bounded_and_reported_as_forced() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(None), c.at(0), obs(None, false, 3));
    assert!(m.observe(c.at(1_000), obs(None, false, 3)).is_none());
    assert_eq!(m.phase(), Phase::InFlight);
    assert!(m.observe(c.at(29_999), obs(None, false, 2)).is_none());
    let r = m
        .observe(c.at(30_000), obs(None, false, 2))
        .unwrap()
        .clone();
    assert!(r.forced);
    assert_eq!(r.forced_phases, vec![Phase::InFlight]);
    assert_eq!((r.busy_at_start, r.busy_at_end), (3, 2));
    assert_eq!(r.duration_ms, 30_000);
}

#[test]
fn several_phases_can_end_in_one_observation() {
    let c = Clock(Instant::now());
    let t = Timings {
        quiet_period: Duration::ZERO,
        ..timings(Some(10))
    };
    let mut m = DrainMachine::new(t, c.at(0), obs(Some(true), false, 0));
    let r = m.observe(c.at(50), obs(Some(false), false, 0)).unwrap();
    assert_eq!((r.duration_ms, r.endpoints_ms, r.forced), (50, 50, false));
}

#[test]
fn observing_after_done_returns_the_same_report() {
    let c = Clock(Instant::now());
    let mut m = DrainMachine::new(timings(None), c.at(0), obs(None, false, 0));
    let first = m.observe(c.at(1000), obs(None, false, 0)).cloned().unwrap();
    let again = m.observe(c.at(5000), obs(None, true, 7)).cloned().unwrap();
    assert_eq!(first, again);
}

#[test]
fn a_graceful_app_gets_sigterm_after_the_quiet_period_with_its_connections() {
    let c = Clock(Instant::now());
    let t = Timings {
        wait_in_flight: false,
        ..timings(Some(10))
    };
    let mut m = DrainMachine::new(t, c.at(0), obs(Some(true), false, 3));
    assert!(m.observe(c.at(200), obs(Some(false), false, 3)).is_none());
    assert_eq!(m.phase(), Phase::Quiet);
    // A new connection restarts the quiet period; busy kept-alive connections do not hold it.
    assert!(m.observe(c.at(700), obs(Some(false), true, 3)).is_none());
    assert!(m.observe(c.at(1600), obs(Some(false), false, 3)).is_none());
    let r = m
        .observe(c.at(1700), obs(Some(false), false, 3))
        .cloned()
        .unwrap();
    assert_eq!(m.phase(), Phase::Done);
    assert!(!r.forced);
    assert_eq!((r.quiet_ms, r.in_flight_ms), (1500, 0));
    assert_eq!(
        r.handed_to_app,
        Some(4),
        "established connections left to the app"
    );
    assert!(
        r.message()
            .ends_with("not forced; 4 connections left to the app's graceful shutdown"),
        "{}",
        r.message()
    );
}
