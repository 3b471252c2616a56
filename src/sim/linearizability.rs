//! A linearizability checker for recorded client histories (Wing & Gong's search, with Lowe's
//! memoization of visited (linearized set, model state) pairs and the linked-list "just in time"
//! linearization of Porcupine).
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
//! A completed operation whose output was not recorded (`output: None`, `returned_at: Some`)
//! took effect before it returned, with whatever output the model gives.
//!
//! # Notes
//! The search is exponential in the worst case: each indeterminate operation may or may not be
//! included, so a refutation explores every subset of them. Check histories per key (P-
//! compositionality), bound how many operations a run leaves indeterminate, and drop the
//! indeterminate writes nobody observed first ([`prune_unobserved_writes`]).
//!
//! The search is iterative (no recursion, so long histories cannot overflow the stack) and keeps
//! its linearized set as a bitset.

use std::collections::{BTreeSet, HashSet};
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
    /// What came back, or `None` if the outcome is unknown (timeout, lost connection) or was
    /// not reported.
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
        /// The longest attempt itself: positions in the history, in the order it placed them
        /// (indeterminate operations included). What follows it is where every order fails.
        deepest: Vec<usize>,
    },
}

/// Checks `history` against `model` starting from `initial`.
///
/// # Panics
/// If an operation returned before it was invoked.
pub fn check<M: Model>(initial: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    let mut events = Events::new(history);
    let completed = history.iter().filter(|op| op.returned_at.is_some()).count();
    let words = history.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut visited: HashSet<(Vec<u64>, M)> = HashSet::new();
    // The operations placed so far, each with the state before it.
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = initial.clone();
    let mut done_completed = 0;
    let mut longest_prefix = 0;
    let mut deepest: Vec<usize> = Vec::new();
    let mut cursor = events.first();
    loop {
        if done_completed == completed {
            return Verdict::Linearizable;
        }
        let Some(node) = cursor else {
            // Only calls of indeterminate operations are left: every completed one is placed.
            return Verdict::Linearizable;
        };
        match events.nodes[node].kind {
            Kind::Call(position) => {
                let op = &history[position];
                let (next, output) = state.step(&op.input);
                let matches = op
                    .output
                    .as_ref()
                    .is_none_or(|recorded| *recorded == output);
                if matches {
                    set_bit(&mut linearized, position, true);
                    if visited.insert((linearized.clone(), next.clone())) {
                        stack.push((position, std::mem::replace(&mut state, next)));
                        done_completed += usize::from(op.returned_at.is_some());
                        events.lift(position);
                        cursor = events.first();
                        continue;
                    }
                    set_bit(&mut linearized, position, false);
                }
                cursor = events.nodes[node].next;
            }
            Kind::Return => {
                // A pending completed operation returned here: whatever comes next in this
                // attempt would follow it in real time. Dead end: undo the last placement.
                if done_completed > longest_prefix || deepest.is_empty() {
                    longest_prefix = longest_prefix.max(done_completed);
                    deepest = stack.iter().map(|(position, _)| *position).collect();
                }
                let Some((position, previous)) = stack.pop() else {
                    return Verdict::NotLinearizable {
                        longest_prefix,
                        deepest,
                    };
                };
                set_bit(&mut linearized, position, false);
                state = previous;
                done_completed -= usize::from(history[position].returned_at.is_some());
                events.unlift(position);
                cursor = events.nodes[events.call[position]].next;
            }
        }
    }
}

fn set_bit(bits: &mut [u64], position: usize, value: bool) {
    let (word, bit) = (position / 64, position % 64);
    if value {
        bits[word] |= 1 << bit;
    } else {
        bits[word] &= !(1 << bit);
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Call(usize),
    Return,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    kind: Kind,
    prev: usize,
    next: Option<usize>,
}

/// The history's calls and returns in time order, as a doubly linked list from which placed
/// operations are lifted (and put back, in reverse order, when the search backtracks).
struct Events {
    /// `nodes[0]` is the head sentinel.
    nodes: Vec<Node>,
    call: Vec<usize>,
    ret: Vec<Option<usize>>,
}

impl Events {
    fn new<I, O>(history: &[Operation<I, O>]) -> Self {
        // (time, returns after calls at equal times, position): an operation invoked when
        // another returns counts as concurrent with it.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(history.len() * 2);
        for (position, op) in history.iter().enumerate() {
            order.push((op.invoked_at, 0, position));
            if let Some(returned_at) = op.returned_at {
                assert!(
                    returned_at >= op.invoked_at,
                    "operation {position} returned at {returned_at} before its call at {}",
                    op.invoked_at
                );
                order.push((returned_at, 1, position));
            }
        }
        order.sort_unstable();
        let mut events = Events {
            nodes: Vec::with_capacity(order.len() + 1),
            call: vec![0; history.len()],
            ret: vec![None; history.len()],
        };
        events.nodes.push(Node {
            kind: Kind::Call(usize::MAX),
            prev: 0,
            next: None,
        });
        for (index, &(_, is_return, position)) in order.iter().enumerate() {
            let id = index + 1;
            let kind = if is_return == 1 {
                events.ret[position] = Some(id);
                Kind::Return
            } else {
                events.call[position] = id;
                Kind::Call(position)
            };
            events.nodes[id - 1].next = Some(id);
            events.nodes.push(Node {
                kind,
                prev: id - 1,
                next: None,
            });
        }
        events
    }

    fn first(&self) -> Option<usize> {
        self.nodes[0].next
    }

    fn unlink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = next;
        if let Some(next) = next {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, id: usize) {
        let Node { prev, next, .. } = self.nodes[id];
        self.nodes[prev].next = Some(id);
        if let Some(next) = next {
            self.nodes[next].prev = id;
        }
    }

    fn lift(&mut self, position: usize) {
        self.unlink(self.call[position]);
        if let Some(ret) = self.ret[position] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, position: usize) {
        if let Some(ret) = self.ret[position] {
            self.relink(ret);
        }
        self.relink(self.call[position]);
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

/// The positions of `history` worth checking: every operation except the indeterminate writes
/// (`returned_at: None`) whose value nobody observed, i.e. that appears in no recorded output and
/// as no compare-and-swap's expected value. Requires every written value to be unique and
/// non-empty (simulated clients write `c<client>-<n>`).
///
/// Dropping them does not change the verdict. If such a write took effect in some valid order,
/// every operation after it up to the next change of value has no recorded output (a recorded
/// one would show the value), and that next change cannot be a compare-and-swap expecting it; so
/// removing the write, and the failed compare-and-swaps without output in between, leaves a valid
/// order. Conversely an indeterminate operation may always be left out. Most writes that time out
/// never happened, so this removes most of the subsets the search would otherwise try.
pub fn prune_unobserved_writes(history: &[Operation<RegisterInput, String>]) -> Vec<usize> {
    let mut observed: BTreeSet<&str> = BTreeSet::new();
    for op in history {
        if let Some(output) = &op.output {
            observed.insert(output);
        }
        if let RegisterInput::Cas { expected, .. } = &op.input {
            observed.insert(expected);
        }
    }
    (0..history.len())
        .filter(|&position| {
            let op = &history[position];
            let written = match &op.input {
                RegisterInput::Put(value) => value,
                RegisterInput::Cas { new, .. } => new,
                RegisterInput::Get => return true,
            };
            op.returned_at.is_some() || observed.contains(written.as_str())
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

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

    /// Every order of every subset, for tiny histories: the definition itself.
    fn brute_force(history: &[Operation<RegisterInput, String>]) -> bool {
        fn extend(
            history: &[Operation<RegisterInput, String>],
            placed: &mut Vec<usize>,
            state: &RegisterModel,
        ) -> bool {
            let all_completed_placed = history
                .iter()
                .enumerate()
                .all(|(i, op)| op.returned_at.is_none() || placed.contains(&i));
            if all_completed_placed {
                return true;
            }
            for (i, op) in history.iter().enumerate() {
                if placed.contains(&i) {
                    continue;
                }
                // Real time: nothing unplaced may have returned before this one was invoked.
                let blocked = history.iter().enumerate().any(|(j, other)| {
                    !placed.contains(&j) && other.returned_at.is_some_and(|r| r < op.invoked_at)
                });
                if blocked {
                    continue;
                }
                let (next, output) = state.step(&op.input);
                if op.output.as_ref().is_some_and(|o| *o != output) {
                    continue;
                }
                placed.push(i);
                if extend(history, placed, &next) {
                    return true;
                }
                placed.pop();
            }
            false
        }
        extend(history, &mut Vec::new(), &RegisterModel::default())
    }

    fn random_history(
        rng: &mut impl rand::Rng,
        size: usize,
    ) -> Vec<Operation<RegisterInput, String>> {
        let values = ["", "a", "b", "c", "d", "e", "f", "g", "h"];
        let mut written = 0;
        (0..size)
            .map(|_| {
                let invoked_at = rng.gen_range(0..20);
                let returned_at = rng.gen_bool(0.75).then(|| invoked_at + rng.gen_range(0..8));
                let seen = values[rng.gen_range(0..=written.min(values.len() - 1))];
                let input = match rng.gen_range(0..3) {
                    0 => RegisterInput::Get,
                    kind => {
                        written += 1;
                        let value = values[written.min(values.len() - 1)].to_owned();
                        if kind == 1 {
                            RegisterInput::Put(value)
                        } else {
                            RegisterInput::Cas {
                                expected: seen.to_owned(),
                                new: value,
                            }
                        }
                    }
                };
                let output = match (returned_at, rng.gen_range(0..10)) {
                    (None, _) => None,
                    (Some(_), 0) => None,
                    (Some(_), 1) => Some("ok".to_owned()),
                    (Some(_), _) => {
                        Some(values[rng.gen_range(0..=written.min(values.len() - 1))].to_owned())
                    }
                };
                op_owned(input, output, invoked_at, returned_at)
            })
            .collect()
    }

    fn op_owned(
        input: RegisterInput,
        output: Option<String>,
        invoked_at: u64,
        returned_at: Option<u64>,
    ) -> Operation<RegisterInput, String> {
        Operation {
            input,
            output,
            invoked_at,
            returned_at,
        }
    }

    /// The search agrees with the definition, and pruning unobserved indeterminate writes never
    /// changes the verdict, on thousands of small random histories of both kinds.
    #[test]
    fn agrees_with_brute_force_with_and_without_pruning() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut verdicts = [0usize; 2];
        let mut pruned_any = 0;
        for _ in 0..4000 {
            let size = rng.gen_range(1..=6);
            let history = random_history(&mut rng, size);
            let expected = brute_force(&history);
            verdicts[usize::from(expected)] += 1;
            let got = verdict(&history) == Verdict::Linearizable;
            assert_eq!(got, expected, "{history:#?}");
            let kept = prune_unobserved_writes(&history);
            pruned_any += usize::from(kept.len() < history.len());
            let pruned: Vec<_> = kept.iter().map(|&i| history[i].clone()).collect();
            assert_eq!(
                verdict(&pruned) == Verdict::Linearizable,
                expected,
                "pruning changed the verdict: {history:#?}"
            );
        }
        assert!(verdicts[0] > 200 && verdicts[1] > 200, "{verdicts:?}");
        assert!(pruned_any > 100, "{pruned_any}");
    }

    #[test]
    fn the_deepest_attempt_is_reported() {
        let history = [
            op(put("a"), Some(""), 0, Some(1)),
            op(put("b"), Some("a"), 2, Some(3)),
            op(RegisterInput::Get, Some("a"), 4, Some(5)),
        ];
        assert_eq!(
            verdict(&history),
            Verdict::NotLinearizable {
                longest_prefix: 2,
                deepest: vec![0, 1]
            }
        );
    }

    /// Long histories are checked without recursion.
    #[test]
    fn a_long_sequential_history_is_fine() {
        let mut history = Vec::new();
        let mut previous = String::new();
        for n in 0..20_000u64 {
            let value = format!("v{n}");
            history.push(op_owned(
                RegisterInput::Put(value.clone()),
                Some(std::mem::replace(&mut previous, value)),
                2 * n,
                Some(2 * n + 1),
            ));
        }
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }
}
