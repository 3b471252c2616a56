//! Identities of the Raft paper as newtypes: servers, terms and log indexes (§5.1, §5.3).
//!
//! Each wraps a `u64` where 0 means "none/empty": server 0 is no server, term 0 precedes every
//! election, index 0 is the position before the first entry. Arithmetic is checked: an overflow
//! is a broken invariant of ours (a term or an index can only grow by one at a time), so the
//! panicking helpers say so, and the `checked_*` forms return `None` for values from outside.

use std::fmt;

/// Identifies one server of the cluster. `ServerId(0)` is reserved for "no server".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub u64);

/// A Raft term (§5.1): a logical clock that only moves forward. `Term(0)` precedes every election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// A 1-based position in the replicated log (§5.3). `LogIndex(0)` is "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

macro_rules! counter_arithmetic {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The value after this one.
            ///
            /// # Panics
            /// On overflow of `u64`, which no honest cluster reaches: callers use it only on
            /// values they produced themselves. Use [`Self::checked_add`] on remote input.
            #[must_use]
            pub fn next(self) -> Self {
                match self.0.checked_add(1) {
                    Some(value) => Self(value),
                    None => panic!(concat!($what, " overflow after {}"), self.0),
                }
            }

            /// The value before this one, or `None` at zero.
            #[must_use]
            pub fn prev(self) -> Option<Self> {
                self.0.checked_sub(1).map(Self)
            }

            /// `self + count`, or `None` on overflow.
            #[must_use]
            pub fn checked_add(self, count: u64) -> Option<Self> {
                self.0.checked_add(count).map(Self)
            }

            /// `self - count`, or `None` below zero.
            #[must_use]
            pub fn checked_sub(self, count: u64) -> Option<Self> {
                self.0.checked_sub(count).map(Self)
            }

            /// `self - count`, stopping at zero.
            #[must_use]
            pub fn saturating_sub(self, count: u64) -> Self {
                Self(self.0.saturating_sub(count))
            }

            /// Whether this is the zero ("none") value.
            #[must_use]
            pub fn is_zero(self) -> bool {
                self.0 == 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

counter_arithmetic!(Term, "term");
counter_arithmetic!(LogIndex, "log index");

impl LogIndex {
    /// How many positions lie from `earlier` up to this index (`self - earlier`).
    ///
    /// # Panics
    /// If `earlier > self`: callers compare first.
    #[must_use]
    pub fn distance_from(self, earlier: LogIndex) -> u64 {
        assert!(earlier <= self, "log index {earlier} is after {self}");
        self.0 - earlier.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_and_prev_step_by_one() {
        assert_eq!(LogIndex(4).next(), LogIndex(5));
        assert_eq!(Term(0).prev(), None);
        assert_eq!(Term(3).prev(), Some(Term(2)));
    }

    #[test]
    fn checked_forms_refuse_overflow() {
        assert_eq!(LogIndex(u64::MAX).checked_add(1), None);
        assert_eq!(LogIndex(2).checked_sub(3), None);
        assert_eq!(LogIndex(2).saturating_sub(3), LogIndex(0));
    }

    #[test]
    #[should_panic(expected = "term overflow")]
    fn next_panics_on_overflow() {
        let _ = Term(u64::MAX).next();
    }

    #[test]
    fn distance_counts_positions() {
        assert_eq!(LogIndex(9).distance_from(LogIndex(4)), 5);
    }
}
