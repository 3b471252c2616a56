//! A linearizability checker for recorded client histories (Wing & Gong's search, with Lowe's
//! memoization of visited (linearized set, model state) pairs).
//!
//! A history is a list of operations, each with the virtual or real time it was invoked and,
//! if it completed, the time it returned and what it returned. An operation that timed out is
//! *indeterminate*. It may have taken effect at any point after its invocation, or never.
//!
//! The history is linearizable if the operations can be put in one order that:
//! * respects real time: an operation that returned before another was invoked comes first;
//! * includes every completed operation and any subset of the indeterminate ones;
//! * makes the model produce exactly the recorded outputs.
//!
//! # Notes
//! The search is exponential in the worst case: each indeterminate operation may or may not be
//! included, so a refutation explores every subset of them. Check histories per key (P-
//! compositionality) and bound how many operations a run leaves indeterminate.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: what the replicated object does, one operation at a time.
pub trait Model: Clone + Eq + Hash {
    /// An operation's input.
    type Input;
    /// An operation's output.
    type Output: PartialEq;
    /// Applies `input`, returning the next state and the output.
    fn step(&self, input: &Self::Input) -> (Self, Self::Output);
}

/// One client operation as recorded.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// What was asked.
    pub input: I,
    /// What came back, or `None` if the outcome is unknown (timeout, lost connection).
    pub output: Option<O>,
    /// When it was invoked.
    pub invoked_at: u64,
    /// When it returned; `None` for an indeterminate operation.
    pub returned_at: Option<u64>,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every output.
    Linearizable,
    /// No order does. Shows the most operations any attempted order could place.
    NotLinearizable {
        /// How many completed operations the longest attempt linearized.
        longest_prefix: usize,
    },
}

/// Checks `history` against `model` starting from `initial`.
pub fn check<M: Model>(initial: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    let completed = history.iter().filter(|op| op.returned_at.is_some()).count();
    let mut search = Search {
        history,
        visited: HashSet::new(),
        longest: 0,
        completed,
    };
    let mut linearized = vec![false; history.len()];
    if search.explore(initial.clone(), &mut linearized, 0) {
        Verdict::Linearizable
    } else {
        Verdict::NotLinearizable {
            longest_prefix: search.longest,
        }
    }
}

struct Search<'h, M: Model> {
    history: &'h [Operation<M::Input, M::Output>],
    /// (linearized set, state) pairs already shown to lead nowhere.
    visited: HashSet<(Vec<bool>, M)>,
    longest: usize,
    completed: usize,
}

impl<M: Model> Search<'_, M> {
    fn explore(&mut self, state: M, linearized: &mut Vec<bool>, done_completed: usize) -> bool {
        if done_completed == self.completed {
            return true;
        }
        self.longest = self.longest.max(done_completed);
        if !self.visited.insert((linearized.clone(), state.clone())) {
            return false;
        }
        // An operation may go next only if no pending completed operation returned before it
        // was invoked (real-time order).
        let horizon = self
            .history
            .iter()
            .zip(linearized.iter())
            .filter(|(_, &done)| !done)
            .filter_map(|(op, _)| op.returned_at)
            .min()
            .unwrap_or(u64::MAX);
        for position in 0..self.history.len() {
            let op = &self.history[position];
            if linearized[position] || op.invoked_at > horizon {
                continue;
            }
            let (next, output) = state.step(&op.input);
            let matches = match &op.output {
                Some(recorded) => *recorded == output,
                None => true,
            };
            if !matches {
                continue;
            }
            linearized[position] = true;
            let done = done_completed + usize::from(op.returned_at.is_some());
            if self.explore(next, linearized, done) {
                return true;
            }
            linearized[position] = false;
        }
        false
    }
}

/// A register model for one key: `put` returns the previous value, `get` the current one,
/// `cas` whether it swapped. A missing value is the empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegisterModel(pub String);

/// An operation on a [`RegisterModel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    /// Set the value; returns the previous one.
    Put(String),
    /// Read the value.
    Get,
    /// Set to `new` if the value is `expected`; returns "ok" or the current value.
    Cas {
        /// The value required.
        expected: String,
        /// The value to set.
        new: String,
    },
}

impl Model for RegisterModel {
    type Input = RegisterInput;
    type Output = String;

    fn step(&self, input: &RegisterInput) -> (Self, String) {
        match input {
            RegisterInput::Put(value) => (RegisterModel(value.clone()), self.0.clone()),
            RegisterInput::Get => (self.clone(), self.0.clone()),
            RegisterInput::Cas { expected, new } if *expected == self.0 => {
                (RegisterModel(new.clone()), "ok".to_owned())
            }
            RegisterInput::Cas { .. } => (self.clone(), self.0.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        input: RegisterInput,
        output: Option<&str>,
        invoked_at: u64,
        returned_at: Option<u64>,
    ) -> Operation<RegisterInput, String> {
        Operation {
            input,
            output: output.map(str::to_owned),
            invoked_at,
            returned_at,
        }
    }

    fn put(value: &str) -> RegisterInput {
        RegisterInput::Put(value.to_owned())
    }

    fn verdict(history: &[Operation<RegisterInput, String>]) -> Verdict {
        check(&RegisterModel::default(), history)
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let history = [
            op(put("a"), Some(""), 0, Some(1)),
            op(RegisterInput::Get, Some("a"), 2, Some(3)),
            op(put("b"), Some("a"), 4, Some(5)),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the write and may see either value.
        for seen in ["", "a"] {
            let history = [
                op(put("a"), Some(""), 0, Some(10)),
                op(RegisterInput::Get, Some(seen), 5, Some(6)),
            ];
            assert_eq!(verdict(&history), Verdict::Linearizable, "read {seen:?}");
        }
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let history = [
            op(put("a"), Some(""), 0, Some(1)),
            op(RegisterInput::Get, Some(""), 2, Some(3)),
        ];
        assert!(matches!(verdict(&history), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Two sequential reads around a concurrent write: new then old is impossible.
        let history = [
            op(put("a"), Some(""), 0, Some(100)),
            op(RegisterInput::Get, Some("a"), 10, Some(20)),
            op(RegisterInput::Get, Some(""), 30, Some(40)),
        ];
        assert!(matches!(verdict(&history), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_have_happened() {
        let took_effect = [
            op(put("a"), None, 0, None),
            op(RegisterInput::Get, Some("a"), 10, Some(11)),
        ];
        assert_eq!(verdict(&took_effect), Verdict::Linearizable);
        let never_did = [
            op(put("a"), None, 0, None),
            op(RegisterInput::Get, Some(""), 10, Some(11)),
        ];
        assert_eq!(verdict(&never_did), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let too_early = [
            op(RegisterInput::Get, Some("a"), 0, Some(1)),
            op(put("a"), None, 5, None),
        ];
        assert!(matches!(
            verdict(&too_early),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_write_applied_twice_is_caught_by_cas() {
        // Both compare-and-swaps from "" succeeded: impossible once, whatever the order.
        let history = [
            op(
                RegisterInput::Cas {
                    expected: String::new(),
                    new: "x".to_owned(),
                },
                Some("ok"),
                0,
                Some(10),
            ),
            op(
                RegisterInput::Cas {
                    expected: String::new(),
                    new: "y".to_owned(),
                },
                Some("ok"),
                0,
                Some(10),
            ),
        ];
        assert!(matches!(verdict(&history), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_dozen_concurrent_writers_are_checked_both_ways() {
        // Twelve overlapping puts of distinct values, then a read of one of them: linearizable
        // (that put went last); a read of a value nobody wrote is not. Memoization of
        // (linearized set, state) keeps this well below the 12! orders.
        let mut history: Vec<_> = (0..12)
            .map(|n| op(put(&format!("v{n}")), None, 0, None))
            .collect();
        history.push(op(RegisterInput::Get, Some("v7"), 1, Some(2)));
        assert_eq!(verdict(&history), Verdict::Linearizable);
        let last = history.len() - 1;
        history[last].output = Some("nobody".to_owned());
        assert!(matches!(verdict(&history), Verdict::NotLinearizable { .. }));
    }
}
