//! One measured [`Rollout`] and the figures the reports take from it: the timeline, the
//! drains, endpoint propagation and the physical floor.

use std::time::{Duration, Instant};

use super::{DrainReport, PodTrack};
use crate::hey::HeyReport;
use crate::loadgen::Summary;

/// One rollout, measured.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Outcome of every request sent while it ran.
    pub summary: Summary,
    /// From the template change until the last old pod was gone.
    pub wall: Duration,
    /// Old pods (deleted during the rollout), in deletion order.
    pub old: Vec<(String, PodTrack)>,
    /// New pods (created during the rollout), in creation order.
    pub new: Vec<(String, PodTrack)>,
    /// kube-proxy's mean network programming latency during the rollout, when readable.
    pub kube_proxy_programming: Option<Duration>,
    /// When the load started (the origin of `summary.failed_at_ms`).
    pub load_started: Instant,
    /// When the template was changed.
    pub started: Instant,
    /// hey's outcome, when it ran beside our load.
    pub hey: Option<HeyReport>,
    /// Share of the machine's CPU time busy while the load ran (all processes, the load
    /// generators included), when `/proc/stat` is readable.
    pub cpu_busy: Option<f64>,
}

impl Rollout {
    /// What happened when, in seconds after the template change: each old and new pod's
    /// milestones and the failed requests grouped into bursts. For diagnosis (`--timeline`).
    pub fn timeline(&self) -> String {
        let at = |i: Option<Instant>| {
            i.map(|i| {
                let s = if i >= self.started {
                    i.duration_since(self.started).as_secs_f64()
                } else {
                    -self.started.duration_since(i).as_secs_f64()
                };
                format!("{s:+.2}s")
            })
            .unwrap_or_else(|| "-".into())
        };
        let mut out = String::new();
        for (name, t) in &self.new {
            out += &format!(
                "  new {name}: created {} sidecar running {} app running {} containers ready {} \
                 ready {} ready endpoint {}\n",
                at(t.first_seen),
                at(t.sidecar_started),
                at(t.app_started),
                at(t.containers_ready),
                at(t.ready),
                at(t.endpoint_ready)
            );
        }
        for (name, t) in &self.old {
            out += &format!(
                "  old {name}: deleting {} endpoint removed {} gone {}{}\n",
                at(t.deleting),
                at(t.endpoint_removed),
                at(t.gone),
                t.drain
                    .as_ref()
                    .map(|d| format!("; {}", d.summary()))
                    .unwrap_or_default()
            );
        }
        let offset = self.started.saturating_duration_since(self.load_started);
        let mut bursts: Vec<(f64, f64, usize)> = Vec::new();
        for ms in &self.summary.failed_at_ms {
            let t = Duration::from_millis(*ms).as_secs_f64() - offset.as_secs_f64();
            match bursts.last_mut() {
                Some((_, end, n)) if t - *end < 0.5 => {
                    *end = t;
                    *n += 1;
                }
                _ => bursts.push((t, t, 1)),
            }
        }
        for (a, b, n) in bursts {
            out += &format!("  {n} failed requests launched {a:+.2}s..{b:+.2}s\n");
        }
        out
    }

    /// Drain reports of the old pods that have one.
    pub fn drains(&self) -> Vec<&DrainReport> {
        self.old
            .iter()
            .filter_map(|(_, t)| t.drain.as_ref())
            .collect()
    }

    /// Endpoint propagation of each old pod: deletion seen → removal from the EndpointSlices
    /// seen, on the local clock; or kube-proxy's own measurement (pod change → rules
    /// programmed), which includes the dataplane, when available.
    pub fn endpoint_propagation(&self) -> Vec<Duration> {
        self.old
            .iter()
            .map(
                |(_, t)| match (self.kube_proxy_programming, t.deleting, t.endpoint_removed) {
                    (Some(kp), _, _) => kp,
                    (None, Some(d), Some(r)) => r.saturating_duration_since(d),
                    _ => Duration::ZERO,
                },
            )
            .collect()
    }

    /// The physical floor: per batch (one new pod in, one old pod out), the new pod's start
    /// (created → containers ready) + minimum healthy time + the old pod's endpoint propagation
    /// + the longest request; summed over the batches.
    pub fn floor(&self, min_healthy: Duration, longest_request: Duration) -> Duration {
        let prop = self.endpoint_propagation();
        self.new
            .iter()
            .zip(prop.iter().chain(std::iter::repeat(&Duration::ZERO)))
            .map(|((_, t), p)| {
                let start = match (t.first_seen, t.containers_ready) {
                    (Some(a), Some(b)) => b.saturating_duration_since(a),
                    _ => Duration::ZERO,
                };
                start + min_healthy + *p + longest_request
            })
            .sum()
    }
}
