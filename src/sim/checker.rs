//! Cross-server Raft invariants, checked after every simulated step (§5.2–§5.4, Figure 3):
//! election safety, log matching, leader completeness and state-machine safety. Single-server
//! invariants (terms and commit never fall, ...) are asserted inside the core itself.
//!
//! The checks are incremental, so they can run after every event: each (index, term) ever held by
//! any server is remembered with its data and the term before it (log matching by induction), and
//! the committed prefix is remembered once for the whole cluster.

use super::sim_log::SimLog;
use crate::consensus::{Consensus, Role};
use crate::log::{Entry, PersistentLog};
use crate::state_machine::KvStateMachine;
use crate::types::{LogIndex, ServerId, Term};
use std::collections::{BTreeMap, HashMap};

/// The cluster-wide record the checks compare every server against.
#[derive(Debug, Default)]
pub struct Checker {
    /// §5.2 election safety: the one leader of each term.
    leaders: BTreeMap<Term, ServerId>,
    /// Every (index, term) seen in any log, with a digest of its contents and the term before it.
    entries: HashMap<(LogIndex, Term), (u64, Term)>,
    /// The committed prefix: the term and digest of each committed index, 1-based.
    committed: Vec<(Term, u64)>,
    /// The committed entries themselves, 1-based: the cluster's history even after every server
    /// has compacted a prefix away (§7), for replay checks.
    committed_entries: Vec<Entry>,
    /// State-machine digest at each applied index seen, to compare replicas.
    digests: HashMap<LogIndex, u64>,
    /// Per server: what the previous check saw.
    views: BTreeMap<ServerId, View>,
}

#[derive(Debug, Default, Clone, Copy)]
struct View {
    commit_index: LogIndex,
    leader_term: Option<Term>,
    last_applied: LogIndex,
}

/// A digest of an entry's kind and bytes (FNV-1a).
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(entry.kind.code()).chain(entry.data.iter().copied()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Checker {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed prefix as far as any server has committed.
    pub fn committed_count(&self) -> u64 {
        self.committed.len() as u64
    }

    /// The committed entry at `index`, as first seen committed.
    pub fn committed_entry(&self, index: LogIndex) -> Option<&Entry> {
        let position = usize::try_from(index.0.checked_sub(1)?).ok()?;
        self.committed_entries.get(position)
    }

    /// The highest committed entry cluster-wide: its index and term.
    pub fn last_committed(&self) -> Option<(LogIndex, Term)> {
        let term = self.committed.last()?.0;
        Some((LogIndex(self.committed.len() as u64), term))
    }

    /// §5.4.3: a committed entry is safe only if no server lacking it could win an election.
    /// The servers that acknowledged it (a majority) hold it with an entry of the committing
    /// term, so they refuse, on the log comparison alone, any candidate that lacks it; a server
    /// without it must therefore never find a majority whose logs are no more up-to-date than its
    /// own. `logs` holds each server's log (a crashed server's as its restart will find it).
    ///
    /// # Errors
    /// The server that could be elected without a committed entry.
    pub fn check_committed_entry_is_safe<'a>(
        &self,
        logs: impl Iterator<Item = (ServerId, &'a SimLog)> + Clone,
    ) -> Result<(), String> {
        let Some((index, term)) = self.last_committed() else {
            return Ok(());
        };
        let server_count = logs.clone().count();
        let position = |log: &SimLog| (log.latest_log_term(), log.latest_log_index());
        for (id, log) in logs.clone() {
            if log.term(index).ok().flatten() == Some(term) {
                continue;
            }
            // A snapshot only ever covers applied, hence committed, entries (§7).
            if log
                .snapshot_meta()
                .is_some_and(|meta| meta.last_index >= index)
            {
                continue;
            }
            let ours = position(log);
            // §5.4.1: a voter grants on the log check when the candidate's last entry is at least
            // as up-to-date as its own (lexicographic on (term, index)).
            let voters = logs
                .clone()
                .filter(|(_, voter)| ours >= position(voter))
                .count();
            if voters >= crate::consensus::quorum::majority(server_count) {
                return Err(format!(
                    "committed entry {index}@t{term} is not safe: {id} lacks it yet its log (last \
                     {}@t{}) is as up-to-date as {voters} of {server_count} servers, enough to be \
                     elected",
                    ours.1, ours.0
                ));
            }
        }
        Ok(())
    }

    /// Forgets a crashed server's volatile state (its commit index restarts at 0).
    pub fn on_restart(&mut self, id: ServerId) {
        self.views.remove(&id);
    }

    /// Checks one server after it handled an event.
    ///
    /// # Errors
    /// A description of the violated invariant.
    pub fn check(&mut self, node: &mut Consensus<SimLog, KvStateMachine>) -> Result<(), String> {
        let id = node.id();
        let term = node.current_term();
        let view = self.views.get(&id).copied().unwrap_or_default();
        if let Some(from) = node.log_mut().take_changed_from() {
            self.check_log_matching(node, from)?;
        }
        if node.role() == Role::Leader && view.leader_term != Some(term) {
            self.check_new_leader(node)?;
        }
        if node.commit_index() > view.commit_index {
            self.check_commit(node, view.commit_index)?;
        }
        if node.last_applied() != view.last_applied && !node.last_applied().is_zero() {
            let digest = node.state_machine().digest();
            let seen = *self.digests.entry(node.last_applied()).or_insert(digest);
            if seen != digest {
                return Err(format!(
                    "state-machine safety: {id} at applied index {} has digest {digest:x}, \
                     another server had {seen:x}",
                    node.last_applied()
                ));
            }
        }
        self.views.insert(
            id,
            View {
                commit_index: node.commit_index(),
                leader_term: (node.role() == Role::Leader).then_some(term),
                last_applied: node.last_applied(),
            },
        );
        Ok(())
    }

    /// §5.3 log matching: if two logs hold an entry with the same index and term, the entries
    /// are identical and so is everything before them. Checked by induction: every (index, term)
    /// must always carry the same contents and follow the same term.
    fn check_log_matching(
        &mut self,
        node: &Consensus<SimLog, KvStateMachine>,
        from: LogIndex,
    ) -> Result<(), String> {
        let log = node.log();
        let mut index = from.max(LogIndex(1)).max(log.first_log_index());
        // The entry before the first one held may be compacted, its term unknown (None).
        let mut prev_term = log.term(index.prev().unwrap_or_default()).ok().flatten();
        while index <= log.latest_log_index() {
            let entry = log
                .entry(index)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{}: log has no entry at {index}", node.id()))?;
            let digest = entry_digest(&entry);
            let recorded = self.entries.get(&(index, entry.term)).copied();
            match (recorded, prev_term) {
                (None, Some(prev_term)) => {
                    self.entries
                        .insert((index, entry.term), (digest, prev_term));
                }
                (None, None) => {}
                (Some(recorded), prev_term) => {
                    if recorded.0 != digest || prev_term.is_some_and(|term| term != recorded.1) {
                        return Err(format!(
                            "log matching: {} holds entry {index}@t{} with digest {digest:x} \
                             after term {prev_term:?}, but another log held {:x} after term {}",
                            node.id(),
                            entry.term,
                            recorded.0,
                            recorded.1
                        ));
                    }
                }
            }
            if let Some(prev_term) = prev_term.filter(|&term| entry.term < term) {
                return Err(format!(
                    "log order: {} has term {} at {index} after term {prev_term}",
                    node.id(),
                    entry.term
                ));
            }
            prev_term = Some(entry.term);
            index = index.next();
        }
        Ok(())
    }

    /// §5.2 election safety and §5.4.1 leader completeness: one leader per term, and a new
    /// leader's log holds every entry committed so far.
    fn check_new_leader(&mut self, node: &Consensus<SimLog, KvStateMachine>) -> Result<(), String> {
        let id = node.id();
        let term = node.current_term();
        if let Some(other) = self.leaders.insert(term, id) {
            if other != id {
                return Err(format!(
                    "election safety: {other} and {id} both lead term {term}"
                ));
            }
        }
        let log = node.log();
        let snapshot_index = log
            .snapshot_meta()
            .map_or(LogIndex(0), |meta| meta.last_index);
        for (position, &(committed_term, _)) in self.committed.iter().enumerate() {
            let index = LogIndex(position as u64 + 1);
            if index < snapshot_index {
                // Held in the snapshot, whose state the digest check compares.
                continue;
            }
            let held = log.term(index).map_err(|e| e.to_string())?;
            if held != Some(committed_term) {
                return Err(format!(
                    "leader completeness: {id}, leader of term {term}, holds {held:?} at {index} \
                     where term {committed_term} was committed"
                ));
            }
        }
        Ok(())
    }

    /// §5.4.3 state-machine safety: no two servers commit different entries at one index.
    fn check_commit(
        &mut self,
        node: &Consensus<SimLog, KvStateMachine>,
        previous: LogIndex,
    ) -> Result<(), String> {
        let log = node.log();
        let mut index = previous.next();
        while index <= node.commit_index() {
            let compacted = index < log.first_log_index();
            if compacted && log.compacted_entry(index).is_none() {
                // Committed here by installing a snapshot (§7): it covers only entries some
                // server committed before.
                if index.0 > self.committed.len() as u64 {
                    return Err(format!(
                        "state-machine safety: {} committed {index} through a snapshot, but no \
                         server had committed it",
                        node.id()
                    ));
                }
                index = index.next();
                continue;
            }
            let entry = if compacted {
                log.compacted_entry(index).cloned()
            } else {
                log.entry(index).map_err(|e| e.to_string())?
            }
            .ok_or_else(|| format!("{}: committed entry {index} missing", node.id()))?;
            let digest = entry_digest(&entry);
            let position = (index.0 - 1) as usize;
            match self.committed.get(position) {
                Some(&(term, recorded)) if (term, recorded) != (entry.term, digest) => {
                    return Err(format!(
                        "state-machine safety: {} committed {index}@t{} but t{term} was \
                         committed there before",
                        node.id(),
                        entry.term
                    ));
                }
                Some(_) => {}
                None => {
                    assert_eq!(position, self.committed.len(), "commits form a prefix");
                    self.committed.push((entry.term, digest));
                    self.committed_entries.push(entry);
                }
            }
            index = index.next();
        }
        Ok(())
    }
}
