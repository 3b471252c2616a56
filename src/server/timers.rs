//! Owns the reactor's deadlines: the consensus core's timers, each peer's next reconnection
//! attempt, and each new connection's preamble deadline, plus the randomized exponential backoff
//! between reconnection attempts.
//!
//! Wall-clock time lives here and nowhere in the core: the core asks for "election timer in
//! 212 ms" and the reactor turns the deadline back into [`Event::Timeout`] when it passes. The
//! earliest deadline bounds how long the reactor may sleep in `Poll::poll`.
//!
//! [`Event::Timeout`]: crate::consensus::Event::Timeout

use crate::consensus::Timer;
use crate::types::ServerId;
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Something that must happen at a point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Deadline {
    /// A consensus timer is due: step [`Event::Timeout`](crate::consensus::Event::Timeout).
    Raft(Timer),
    /// Dial this peer again.
    Reconnect(ServerId),
    /// The connection in this slab slot has not sent its preamble in time: close it.
    /// Cancelled when the connection identifies itself or closes, so a reused slot never
    /// inherits a stale deadline.
    Preamble(usize),
}

/// A set of named deadlines, each set at most once: setting a name again replaces it.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Every pending deadline, earliest first.
    /// Invariant: holds `(at, name)` exactly when `by_name[name] == at`.
    queue: BTreeSet<(Instant, Deadline)>,
    /// When each pending deadline is due.
    by_name: HashMap<Deadline, Instant>,
}

impl Timers {
    /// Arms `name` to fire at `at`, replacing any earlier setting.
    pub(super) fn set(&mut self, name: Deadline, at: Instant) {
        if let Some(previous) = self.by_name.insert(name, at) {
            self.queue.remove(&(previous, name));
        }
        self.queue.insert((at, name));
    }

    /// Disarms `name`; does nothing if it is not armed.
    pub(super) fn cancel(&mut self, name: Deadline) {
        if let Some(previous) = self.by_name.remove(&name) {
            self.queue.remove(&(previous, name));
        }
    }

    /// How long from `now` until the earliest deadline (zero if one has passed), or `None`
    /// when nothing is armed: the reactor's poll timeout.
    pub(super) fn time_until_next(&self, now: Instant) -> Option<Duration> {
        self.queue
            .first()
            .map(|&(at, _)| at.saturating_duration_since(now))
    }

    /// Removes and returns one deadline due at or before `now`, earliest first.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Deadline> {
        let &(at, name) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.remove(&(at, name));
        self.by_name.remove(&name);
        Some(name)
    }
}

/// Randomized exponential backoff between attempts to reach one peer: the delay doubles from
/// `DELAY_MIN` to `DELAY_MAX` with ±50% jitter, so that servers restarting together do not dial
/// each other in lockstep.
#[derive(Debug)]
pub(super) struct Backoff {
    /// The base of the next delay, before jitter. Invariant: within `DELAY_MIN..=DELAY_MAX`.
    next: Duration,
}

impl Backoff {
    /// The first delay after a failure.
    pub(super) const DELAY_MIN: Duration = Duration::from_millis(20);
    /// The longest base delay between attempts.
    pub(super) const DELAY_MAX: Duration = Duration::from_secs(2);

    /// A backoff at its shortest delay.
    pub(super) fn new() -> Self {
        Backoff {
            next: Self::DELAY_MIN,
        }
    }

    /// Back to the shortest delay, after a connection proved healthy.
    pub(super) fn reset(&mut self) {
        self.next = Self::DELAY_MIN;
    }

    /// The delay before the next attempt, doubling the base for the one after.
    pub(super) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(Self::DELAY_MAX);
        // Whole microseconds in [base / 2, base * 3 / 2]: ±50% jitter around the base.
        let base_us = u64::try_from(base.as_micros()).unwrap_or(u64::MAX);
        let low_us = base_us / 2;
        let high_us = base_us.saturating_add(base_us / 2);
        Duration::from_micros(rng.gen_range(low_us..=high_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn deadlines_pop_in_order_and_setting_again_replaces() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.set(
            Deadline::Raft(Timer::Election),
            start + Duration::from_millis(30),
        );
        timers.set(
            Deadline::Reconnect(ServerId(2)),
            start + Duration::from_millis(10),
        );
        timers.set(
            Deadline::Raft(Timer::Election),
            start + Duration::from_millis(5),
        );
        timers.set(Deadline::Preamble(7), start + Duration::from_millis(20));
        timers.cancel(Deadline::Preamble(7));
        assert_eq!(
            timers.time_until_next(start),
            Some(Duration::from_millis(5))
        );
        assert_eq!(timers.pop_due(start), None, "nothing due yet");
        let later = start + Duration::from_millis(40);
        assert_eq!(timers.pop_due(later), Some(Deadline::Raft(Timer::Election)));
        assert_eq!(
            timers.pop_due(later),
            Some(Deadline::Reconnect(ServerId(2)))
        );
        assert_eq!(
            timers.pop_due(later),
            None,
            "replaced and cancelled ones are gone"
        );
        assert_eq!(timers.time_until_next(later), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum_and_resets() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut backoff = Backoff::new();
        let mut base = Backoff::DELAY_MIN;
        for _ in 0..12 {
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "{delay:?} around {base:?}"
            );
            base = (base * 2).min(Backoff::DELAY_MAX);
        }
        assert_eq!(base, Backoff::DELAY_MAX);
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Backoff::DELAY_MIN * 3 / 2);
    }
}
