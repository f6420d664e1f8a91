//! The operator's one retry policy, for background work that failed against the apiserver (the
//! webhook certificate, the sidecar RoleBindings): 1 s, doubling to 60 s, with jitter so that
//! the replicas do not all come back at once to an apiserver that just restarted. Requests
//! inside a reconcile are not retried here: the Controller requeues the policy instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First wait after a failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries.
pub const LONGEST: Duration = Duration::from_secs(60);

/// The policy, retrying forever (background work has nothing to give up to).
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(LONGEST)
        .with_jitter()
        .without_max_times()
}

/// The waits after consecutive failures of one piece of work: take the next after each failure,
/// start again with [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff(ExponentialBackoff);

impl Default for Backoff {
    fn default() -> Self {
        Self(policy().build())
    }
}

impl Backoff {
    /// The wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        self.0.next().unwrap_or(LONGEST)
    }

    /// After a success: the next failure waits [`FIRST`] again.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_a_minute_and_start_again_after_a_success() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        // Jitter adds up to one more delay: each wait lies between the delay and twice it.
        assert!(waits[0] >= FIRST && waits[0] <= FIRST * 2, "{waits:?}");
        assert!(waits[1] >= FIRST * 2, "doubles: {waits:?}");
        assert!(waits.iter().all(|w| *w <= LONGEST * 2), "{waits:?}");
        assert!(waits[11] >= LONGEST, "reaches the cap: {waits:?}");
        b.reset();
        assert!(b.next_wait() <= FIRST * 2);
    }
}
