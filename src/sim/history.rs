//! End-of-run checks of what the simulated clients saw (DESIGN.md §6.3, §4):
//!
//! * **Exactly once.** Each running server's committed log is replayed through an independent
//!   model of session semantics (a request is applied only if its sequence number is above the
//!   session's last applied one; thesis §6.3) into a fresh `KvStateMachine`; the server's own
//!   state machine must come out identical (same commands applied, in the same order: same
//!   count and digest), and so must its session table. A request applied twice, or a retry
//!   executed again, makes them differ. Every answer a client got for a proposal must also name
//!   the index where the log applied it and, for `Applied`, the reply it got there: a retry gets
//!   the original reply.
//! * **Linearizability.** Each key's history (P-compositionality) is checked against
//!   [`RegisterModel`] after dropping the indeterminate writes nobody observed
//!   ([`prune_unobserved_writes`]).

use super::linearizability::{
    check, prune_unobserved_writes, Model, Operation, RegisterInput, RegisterModel, Verdict,
};
use super::{Checker, ClientOp, SimFailure, SimNode, Simulation};
use crate::log::{EntryKind, PersistentLog};
use crate::state_machine::{KvStateMachine, StateMachine};
use crate::types::LogIndex;
use std::collections::BTreeMap;
use std::fmt;

/// What the end-of-run history checks covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryReport {
    /// Client operations recorded (reads and proposals, answered or indeterminate).
    pub operations: usize,
    /// Proposals left indeterminate (given up on).
    pub indeterminate: usize,
    /// Indeterminate writes dropped before the search because nobody observed their value.
    pub pruned: usize,
    /// Operations the linearizability search checked.
    pub checked: usize,
    /// The most indeterminate operations the search had to consider for one key.
    pub indeterminate_per_key_max: usize,
    /// Keys checked.
    pub keys: usize,
    /// Commands the committed log applied (by the session model), on the server replayed.
    pub applied: u64,
    /// Committed session requests the model did not apply (retries already applied, or
    /// superseded).
    pub not_reapplied: u64,
    /// Servers whose state machine and session table were compared with the replay.
    pub servers_replayed: usize,
}

impl std::ops::AddAssign<&HistoryReport> for HistoryReport {
    /// Adds another run's figures (the per-key maximum stays a maximum).
    fn add_assign(&mut self, other: &HistoryReport) {
        self.operations += other.operations;
        self.indeterminate += other.indeterminate;
        self.pruned += other.pruned;
        self.checked += other.checked;
        self.indeterminate_per_key_max = self
            .indeterminate_per_key_max
            .max(other.indeterminate_per_key_max);
        self.keys += other.keys;
        self.applied += other.applied;
        self.not_reapplied += other.not_reapplied;
        self.servers_replayed += other.servers_replayed;
    }
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} client operations ({} indeterminate, {} of them unobserved and pruned), {} \
             checked over {} keys (at most {} indeterminate on one key); {} commands applied, {} \
             committed duplicates not re-applied; {} servers replayed",
            self.operations,
            self.indeterminate,
            self.pruned,
            self.checked,
            self.keys,
            self.indeterminate_per_key_max,
            self.applied,
            self.not_reapplied,
            self.servers_replayed
        )
    }
}

/// One session in the replay's model.
#[derive(Clone, Debug)]
struct ModelSession {
    last_sequence: u64,
    last_index: LogIndex,
    last_reply: Vec<u8>,
    last_used: LogIndex,
}

/// A server's committed log replayed with each (session, sequence) applied at most once.
struct Replay {
    state_machine: KvStateMachine,
    sessions: BTreeMap<u64, ModelSession>,
    /// Where and with what reply each session request was applied.
    applied: BTreeMap<(u64, u64), (LogIndex, Vec<u8>)>,
    /// Committed copies of session requests that were not applied (with their indexes).
    not_applied: Vec<(u64, u64, LogIndex)>,
}

impl Replay {
    /// Replays `node`'s applied prefix: from its log, and from the cluster's record of committed
    /// entries (`checker`) for the prefix its log no longer holds (§7).
    fn of(node: &SimNode, checker: &Checker) -> Result<Replay, String> {
        let sessions_max = node.config().sessions_max.max(1);
        let mut replay = Replay {
            state_machine: KvStateMachine::new(),
            sessions: BTreeMap::new(),
            applied: BTreeMap::new(),
            not_applied: Vec::new(),
        };
        let mut index = LogIndex(1);
        while index <= node.last_applied() {
            let entry = if index >= node.log().first_log_index() {
                node.log().entry(index).map_err(|error| error.to_string())?
            } else {
                checker.committed_entry(index).cloned()
            }
            .ok_or_else(|| format!("{}: applied entry {index} missing", node.id()))?;
            match entry.kind {
                EntryKind::Noop | EntryKind::Configuration => {}
                EntryKind::Command => {
                    replay.state_machine.apply(&entry.data);
                }
                EntryKind::RegisterSession => {
                    // The table keeps at most `sessions_max`; the least recently used goes.
                    while replay.sessions.len() >= sessions_max {
                        let oldest = replay
                            .sessions
                            .iter()
                            .min_by_key(|(_, session)| session.last_used)
                            .map(|(&id, _)| id)
                            .expect("not empty");
                        replay.sessions.remove(&oldest);
                    }
                    replay.sessions.insert(
                        index.0,
                        ModelSession {
                            last_sequence: 0,
                            last_index: index,
                            last_reply: Vec::new(),
                            last_used: index,
                        },
                    );
                }
                EntryKind::SessionCommand => {
                    let (session, sequence, command) = entry
                        .session_parts()
                        .ok_or_else(|| format!("{}: malformed entry {index}", node.id()))?;
                    match replay.sessions.get_mut(&session) {
                        Some(state) if sequence > state.last_sequence => {
                            let reply = replay.state_machine.apply(&command);
                            state.last_sequence = sequence;
                            state.last_index = index;
                            state.last_reply = reply.clone();
                            state.last_used = index;
                            replay.applied.insert((session, sequence), (index, reply));
                        }
                        _ => replay.not_applied.push((session, sequence, index)),
                    }
                }
            }
            index = index.next();
        }
        Ok(replay)
    }
}

impl Simulation {
    /// Checks the clients' histories: exactly-once application against every running server's
    /// committed log (members of the configuration or not), then linearizability per key. Call
    /// it once the clients are idle and every running member of the configuration has applied
    /// everything committed (as [`run_random`](super::run_random) does).
    ///
    /// # Errors
    /// What was applied twice, or answered wrongly, or which key's history no order explains,
    /// with the operations involved.
    pub fn check_client_histories(&self) -> Result<HistoryReport, SimFailure> {
        let mut report = self.check_exactly_once()?;
        self.check_linearizable(&mut report)?;
        Ok(report)
    }

    fn check_exactly_once(&self) -> Result<HistoryReport, SimFailure> {
        let mut report = HistoryReport::default();
        // Answers are compared with the server that applied the most: a server outside the
        // configuration (removed, or a spare never added) stops applying where it left off.
        let mut reference: Option<(LogIndex, Replay)> = None;
        for &id in &self.servers {
            let Some(node) = self.node(id) else {
                continue;
            };
            let replay = Replay::of(node, &self.checker).map_err(|reason| self.failure(reason))?;
            let machine = node.state_machine();
            // Compared by snapshot: a machine restored from one has its count of commands
            // applied since the restore, not since the start.
            if replay.state_machine.snapshot() != machine.snapshot() {
                let mut copies: BTreeMap<(u64, u64), Vec<LogIndex>> = BTreeMap::new();
                for (session, sequence, index) in &replay.not_applied {
                    copies
                        .entry((*session, *sequence))
                        .or_default()
                        .push(*index);
                }
                let repeated: Vec<String> = copies
                    .iter()
                    .take(5)
                    .map(|((session, sequence), indexes)| {
                        let first = replay
                            .applied
                            .get(&(*session, *sequence))
                            .map_or("never".to_owned(), |(index, _)| index.to_string());
                        let again: Vec<String> = indexes.iter().map(ToString::to_string).collect();
                        format!(
                            "s{session}#{sequence} applied at {first}, again at {}",
                            again.join(", ")
                        )
                    })
                    .collect();
                return Err(self.failure(format!(
                    "exactly-once: {id} applied {} commands (digest {:x}) up to index {}, but its \
                     committed log with each (session, sequence) applied once gives {} (digest \
                     {:x}); committed copies that must not be applied again: {}",
                    machine.applied_count(),
                    machine.digest(),
                    node.last_applied(),
                    replay.state_machine.applied_count(),
                    replay.state_machine.digest(),
                    if repeated.is_empty() {
                        "none".to_owned()
                    } else {
                        repeated.join("; ")
                    }
                )));
            }
            let table = node.sessions();
            if table.len() != replay.sessions.len() {
                return Err(self.failure(format!(
                    "exactly-once: {id}'s session table holds {} sessions, its log opens {} \
                     still live",
                    table.len(),
                    replay.sessions.len()
                )));
            }
            for (&session, state) in &replay.sessions {
                if state.last_sequence == 0 {
                    continue;
                }
                let expected = crate::consensus::sessions::Lookup::Duplicate {
                    index: state.last_index,
                    reply: state.last_reply.clone(),
                };
                let found = table.lookup(session, state.last_sequence);
                if found != expected {
                    return Err(self.failure(format!(
                        "exactly-once: {id}'s session table answers {found:?} for s{session}#{}, \
                         its log applied it at {} with {:?}",
                        state.last_sequence,
                        state.last_index,
                        String::from_utf8_lossy(&state.last_reply)
                    )));
                }
            }
            report.servers_replayed += 1;
            if reference
                .as_ref()
                .is_none_or(|(applied, _)| node.last_applied() > *applied)
            {
                reference = Some((node.last_applied(), replay));
            }
        }
        let Some((_, replay)) = reference else {
            return Err(self.failure("exactly-once: no server running to replay".to_owned()));
        };
        report.applied = replay.state_machine.applied_count();
        report.not_reapplied = replay.not_applied.len() as u64;
        // Every answer a client got names where and how the log applied its request.
        for client in &self.clients {
            for op in &client.history {
                let (Some(request), Some(index)) = (op.request, op.index) else {
                    continue;
                };
                let applied = replay.applied.get(&(request.session, request.sequence));
                let agrees = applied.is_some_and(|(applied_at, reply)| {
                    *applied_at == index
                        && op
                            .output
                            .as_ref()
                            .is_none_or(|output| output.as_bytes() == reply.as_slice())
                });
                if !agrees {
                    let log_says = match applied {
                        Some((applied_at, reply)) => format!(
                            "the log applied it at {applied_at} with {:?}",
                            String::from_utf8_lossy(reply)
                        ),
                        None => "the log never applied it".to_owned(),
                    };
                    return Err(self.failure(format!(
                        "exactly-once: client was answered for {op} but {log_says}"
                    )));
                }
            }
        }
        // A "session expired" answer promises the request was not applied and never will be.
        for client in &self.clients {
            for op in &client.expired {
                let Some(request) = op.request else {
                    continue;
                };
                if let Some((index, _)) = replay.applied.get(&(request.session, request.sequence)) {
                    return Err(self.failure(format!(
                        "exactly-once: client was told its session had expired, so that {op} \
                         was not applied and never would be, but the log applied it at {index}"
                    )));
                }
            }
        }
        Ok(report)
    }

    fn check_linearizable(&self, report: &mut HistoryReport) -> Result<(), SimFailure> {
        let mut by_key: BTreeMap<&str, Vec<&ClientOp>> = BTreeMap::new();
        for client in &self.clients {
            for op in &client.history {
                report.operations += 1;
                report.indeterminate += usize::from(op.returned_at.is_none());
                by_key.entry(op.key.as_str()).or_default().push(op);
            }
        }
        for (key, mut ops) in by_key {
            ops.sort_by_key(|op| (op.invoked_at, op.client));
            let history: Vec<Operation<RegisterInput, String>> = ops
                .iter()
                .map(|op| Operation {
                    input: op.input.clone(),
                    output: op.output.clone(),
                    invoked_at: op.invoked_at,
                    returned_at: op.returned_at,
                })
                .collect();
            let kept = prune_unobserved_writes(&history);
            report.pruned += history.len() - kept.len();
            report.checked += kept.len();
            report.keys += 1;
            let ops: Vec<&ClientOp> = kept.iter().map(|&position| ops[position]).collect();
            let history: Vec<_> = kept.into_iter().map(|i| history[i].clone()).collect();
            report.indeterminate_per_key_max = report
                .indeterminate_per_key_max
                .max(history.iter().filter(|op| op.returned_at.is_none()).count());
            if let Verdict::NotLinearizable {
                longest_prefix,
                deepest,
            } = check(&RegisterModel::default(), &history)
            {
                return Err(self.failure(describe_violation(
                    key,
                    &ops,
                    &history,
                    longest_prefix,
                    &deepest,
                )));
            }
        }
        Ok(())
    }
}

/// Shows where every order of `key`'s history fails: the end of the longest order found, the
/// value there, and the operations none of which can come next.
fn describe_violation(
    key: &str,
    ops: &[&ClientOp],
    history: &[Operation<RegisterInput, String>],
    longest_prefix: usize,
    deepest: &[usize],
) -> String {
    const SHOWN: usize = 6;
    let completed = history.iter().filter(|op| op.returned_at.is_some()).count();
    let indeterminate = history.len() - completed;
    let mut state = RegisterModel::default();
    for &position in deepest {
        state = state.step(&history[position].input).0;
    }
    let mut placed = vec![false; history.len()];
    for &position in deepest {
        placed[position] = true;
    }
    // The first completed operation not placed, by return time, bounds what may come next.
    let horizon = (0..history.len())
        .filter(|&position| !placed[position])
        .filter_map(|position| history[position].returned_at)
        .min()
        .unwrap_or(u64::MAX);
    let candidates: Vec<usize> = (0..history.len())
        .filter(|&position| !placed[position] && history[position].invoked_at <= horizon)
        .collect();
    let mut text = format!(
        "not linearizable: the history of key {key} ({} operations, {indeterminate} \
         indeterminate) has no valid order; the longest order found places {longest_prefix} of \
         {completed} answered operations",
        history.len()
    );
    let tail_from = deepest.len().saturating_sub(SHOWN);
    if deepest.is_empty() {
        text.push_str(", none at all (value \"\")");
    } else {
        text.push_str(&format!(", ending ({} more before):", tail_from));
        for &position in &deepest[tail_from..] {
            text.push_str(&format!("\n      {}", ops[position]));
        }
        text.push_str(&format!("\n    value then {:?}", state.0));
    }
    text.push_str(&format!(
        "; from there no order goes on, whichever of these {} comes next:",
        candidates.len()
    ));
    for &position in candidates.iter().take(2 * SHOWN) {
        let output = state.step(&history[position].input).1;
        text.push_str(&format!(
            "\n      {} (would give {output:?})",
            ops[position]
        ));
    }
    if candidates.len() > 2 * SHOWN {
        text.push_str(&format!(
            "\n      ... {} more",
            candidates.len() - 2 * SHOWN
        ));
    }
    text
}
