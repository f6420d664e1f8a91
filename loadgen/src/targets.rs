//! The shared set of base URLs requests go to, each switched on or off by a test.

use std::sync::{Arc, RwLock};

/// The set of base URLs, each active or not; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Targets(Arc<RwLock<Vec<(String, bool)>>>);

impl Targets {
    /// All given URLs, active.
    pub fn new(urls: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(RwLock::new(
            urls.into_iter().map(|u| (u, true)).collect(),
        )))
    }

    /// Adds a URL (active) if absent.
    pub fn add(&self, url: &str) {
        let mut v = self.0.write().expect("targets lock");
        if !v.iter().any(|(u, _)| u == url) {
            v.push((url.to_string(), true));
        }
    }

    /// Marks a URL active or not; new requests go only to active URLs.
    pub fn set_active(&self, url: &str, active: bool) {
        for (u, a) in self.0.write().expect("targets lock").iter_mut() {
            if u == url {
                *a = active;
            }
        }
    }

    /// The `i`-th pick, round-robin over the active URLs.
    pub fn pick(&self, i: u64) -> Option<String> {
        let v = self.0.read().expect("targets lock");
        let active: Vec<&String> = v.iter().filter(|(_, a)| *a).map(|(u, _)| u).collect();
        if active.is_empty() {
            None
        } else {
            Some(active[(i % active.len() as u64) as usize].clone())
        }
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Outcome, Summary, outcome::Record};

    #[test]
    fn targets_round_robin_over_active_ones() {
        let t = Targets::new(["a".to_string(), "b".to_string()]);
        assert_eq!((t.pick(0), t.pick(1)), (Some("a".into()), Some("b".into())));
        t.set_active("a", false);
        assert_eq!((t.pick(0), t.pick(1)), (Some("b".into()), Some("b".into())));
        t.set_active("b", false);
        assert_eq!(t.pick(0), None);
        let mut s = Summary::default();
        s.add(&Record {
            target: String::new(),
            path: "/".into(),
            slow: false,
            outcome: Outcome::NoTarget,
            status: None,
            version: None,
            latency: Duration::ZERO,
            launched: Duration::from_millis(7),
            retried: false,
        });
        assert_eq!(s.failed(), 1);
        assert_eq!(s.failed_at_ms, vec![7]);
    }
}
