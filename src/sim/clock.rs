//! Virtual time: a queue of future events ordered by (time, insertion order), so equal times
//! replay in the same order on every run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Virtual microseconds since the simulation started.
pub type Micros = u64;

/// Converts a duration to virtual microseconds, saturating at the far future.
pub fn micros(duration: Duration) -> Micros {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

struct Scheduled<E> {
    time: Micros,
    sequence: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.sequence) == (other.time, other.sequence)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops the greatest, we want the earliest.
        (other.time, other.sequence).cmp(&(self.time, self.sequence))
    }
}

/// The simulation's clock and its pending events.
pub struct Clock<E> {
    now: Micros,
    sequence: u64,
    queue: BinaryHeap<Scheduled<E>>,
}

impl<E> Default for Clock<E> {
    fn default() -> Self {
        Clock {
            now: 0,
            sequence: 0,
            queue: BinaryHeap::new(),
        }
    }
}

impl<E> Clock<E> {
    /// The current virtual time.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Schedules `event` `after` microseconds from now.
    pub fn schedule(&mut self, after: Micros, event: E) {
        let time = self.now.saturating_add(after);
        self.sequence += 1;
        self.queue.push(Scheduled {
            time,
            sequence: self.sequence,
            event,
        });
    }

    /// Removes the earliest event and moves the clock to its time.
    pub fn pop(&mut self) -> Option<E> {
        let next = self.queue.pop()?;
        debug_assert!(next.time >= self.now, "virtual time never runs backwards");
        self.now = next.time;
        Some(next.event)
    }

    /// Moves the clock forward to `time` (never backwards, never past a pending event).
    ///
    /// # Panics
    /// If an event is pending before `time`: it must be popped first.
    pub fn advance_to(&mut self, time: Micros) {
        assert!(
            self.peek_time().is_none_or(|next| next >= time),
            "advance_to({time}) would skip a pending event"
        );
        self.now = self.now.max(time);
    }

    /// The time of the earliest pending event.
    pub fn peek_time(&self) -> Option<Micros> {
        self.queue.peek().map(|scheduled| scheduled.time)
    }

    /// How many events are pending.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut clock = Clock::default();
        clock.schedule(5, "late");
        clock.schedule(1, "first");
        clock.schedule(1, "second");
        assert_eq!(clock.pop(), Some("first"));
        assert_eq!(clock.pop(), Some("second"));
        assert_eq!(clock.now(), 1);
        assert_eq!(clock.pop(), Some("late"));
        assert_eq!(clock.now(), 5);
        assert_eq!(clock.pop(), None);
    }

    #[test]
    fn advance_moves_time_without_events() {
        let mut clock: Clock<()> = Clock::default();
        clock.advance_to(40);
        assert_eq!(clock.now(), 40);
        clock.advance_to(10);
        assert_eq!(clock.now(), 40, "never backwards");
        clock.schedule(5, ());
        assert_eq!(clock.pop(), Some(()));
        assert_eq!(clock.now(), 45);
    }
}
