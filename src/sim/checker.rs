//! Cross-server Raft invariants, checked after every simulated step (§5.2–§5.4, Figure 3):
//! election safety, log matching, leader completeness and state-machine safety, over every
//! server, member of the configuration or not. Configuration changes (thesis §4.1) add two:
//! consecutive committed configurations differ in one server at most, and no log holds two
//! uncommitted configuration entries. Single-server invariants (terms and commit never fall,
//! ...) are asserted inside the core itself.
//!
//! The checks are incremental, so they can run after every event: each (index, term) ever held by
//! any server is remembered with its data and the term before it (log matching by induction), and
//! the committed prefix is remembered once for the whole cluster.

use super::sim_log::SimLog;
use crate::consensus::{Consensus, Role};
use crate::log::{Entry, EntryKind, PersistentLog};
use crate::membership::Membership;
use crate::state_machine::KvStateMachine;
use crate::types::{LogIndex, ServerId, Term};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// The configuration the servers start with (thesis §4.1), if known: what the first
    /// committed configuration is compared with.
    initial_membership: Option<Membership>,
    /// Every committed configuration by index (the initial one, if known, at 0).
    committed_configurations: BTreeMap<LogIndex, Membership>,
    /// Servers a committed configuration removed and none has added back since.
    removed: BTreeSet<ServerId>,
    /// What the committed configurations did, in counts.
    configuration_counts: ConfigurationCounts,
    /// Per server: the configuration entries its log holds, (index → term), from the lowest
    /// index it still holds.
    configuration_entries: BTreeMap<ServerId, BTreeMap<LogIndex, Term>>,
}

/// What the committed configurations did over a run (thesis §4.1), as the checker saw them
/// commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigurationCounts {
    /// Configurations committed (not counting the initial one).
    pub committed: u64,
    /// Learners that became voters.
    pub promoted: u64,
    /// Members removed.
    pub removed: u64,
    /// Servers added back after a committed configuration had removed them.
    pub readded: u64,
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

    /// An empty record for servers that start with the configuration `initial` (thesis §4.1):
    /// the first committed configuration must then differ from it in one server at most.
    pub fn with_initial_membership(initial: Membership) -> Self {
        let mut checker = Self::new();
        checker
            .committed_configurations
            .insert(LogIndex(0), initial.clone());
        checker.initial_membership = Some(initial);
        checker
    }

    /// The newest committed configuration (the initial one if none is committed yet and it is
    /// known).
    pub fn committed_membership(&self) -> Option<&Membership> {
        self.committed_configurations
            .last_key_value()
            .map(|(_, membership)| membership)
    }

    /// The committed configuration in force at `index`: the newest committed one at or before
    /// it. `None` if `index` is not committed, or if no configuration is known there.
    pub fn committed_membership_at(&self, index: LogIndex) -> Option<(LogIndex, &Membership)> {
        if index.0 > self.committed.len() as u64 {
            return None;
        }
        self.committed_configurations
            .range(..=index)
            .next_back()
            .map(|(&at, membership)| (at, membership))
    }

    /// What the committed configurations did so far.
    pub fn configuration_counts(&self) -> ConfigurationCounts {
        self.configuration_counts
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
    /// own among the voters it would count. Thesis §4.1: a server counts votes by the
    /// configuration in force in its own log, its own vote only if that makes it a voter. A
    /// server outside its voters is checked too: it may still have to campaign while the entry
    /// that removed it is uncommitted (thesis §4.2.2, Figure 4.6). Only a server with an empty
    /// configuration, which waits to be added, never campaigns. `logs` holds each server's log
    /// and the configuration in force there (a crashed server's as its restart will find them).
    ///
    /// # Errors
    /// The server that could be elected without a committed entry.
    pub fn check_committed_entry_is_safe<'a>(
        &self,
        logs: impl Iterator<Item = (ServerId, &'a SimLog, &'a Membership)> + Clone,
    ) -> Result<(), String> {
        let Some((index, term)) = self.last_committed() else {
            return Ok(());
        };
        let position = |log: &SimLog| (log.latest_log_term(), log.latest_log_index());
        for (id, log, membership) in logs.clone() {
            if membership.voter_count() == 0 {
                continue;
            }
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
            let voter_count = membership.voter_count();
            let granting = logs
                .clone()
                .filter(|&(voter, voter_log, _)| {
                    membership.is_voter(voter) && ours >= position(voter_log)
                })
                .count();
            if granting >= crate::consensus::quorum::majority(voter_count) {
                return Err(format!(
                    "committed entry {index}@t{term} is not safe: {id} lacks it yet its log (last \
                     {}@t{}) is as up-to-date as {granting} of the {voter_count} voters of its \
                     configuration ({membership}), enough to be elected",
                    ours.1, ours.0
                ));
            }
        }
        Ok(())
    }

    /// Forgets a crashed server's volatile state (its commit index restarts at 0); its log is
    /// read again from the start at its next check.
    pub fn on_restart(&mut self, id: ServerId) {
        self.views.remove(&id);
        self.configuration_entries.remove(&id);
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
        self.check_one_uncommitted_configuration(node)?;
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
        // Entries from `from` on changed; those before the first one held are in a snapshot,
        // so committed.
        let first = log.first_log_index();
        let configurations = self.configuration_entries.entry(node.id()).or_default();
        configurations.retain(|&at, _| at >= first && at < index);
        // The entry before the first one held may be compacted, its term unknown (None).
        let mut prev_term = log.term(index.prev().unwrap_or_default()).ok().flatten();
        while index <= log.latest_log_index() {
            let entry = log
                .entry(index)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{}: log has no entry at {index}", node.id()))?;
            if entry.kind == EntryKind::Configuration {
                configurations.insert(index, entry.term);
            }
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
                    if let Some(decoded) = entry.membership() {
                        let membership = decoded.map_err(|reason| {
                            format!(
                                "{}: committed configuration at {index} is malformed: {reason}",
                                node.id()
                            )
                        })?;
                        self.on_configuration_committed(index, membership)?;
                    }
                    self.committed_entries.push(entry);
                }
            }
            index = index.next();
        }
        Ok(())
    }

    /// Thesis §4.1: configurations change one server at a time, so every majority of the old
    /// configuration overlaps every majority of the new. Each committed configuration must differ
    /// from the one committed before it (or the initial one) in one server's role at most: added
    /// as learner, promoted, or removed.
    fn on_configuration_committed(
        &mut self,
        index: LogIndex,
        membership: Membership,
    ) -> Result<(), String> {
        if let Some(previous) = self.committed_membership().cloned() {
            let role = |m: &Membership, id: ServerId| (m.contains(id), m.is_voter(id));
            let ids: BTreeSet<ServerId> =
                previous.ids().into_iter().chain(membership.ids()).collect();
            let changed: Vec<ServerId> = ids
                .into_iter()
                .filter(|&id| role(&previous, id) != role(&membership, id))
                .collect();
            if changed.len() > 1 {
                return Err(format!(
                    "single-server changes: the configuration committed at {index} \
                     ({membership}) changes {} servers ({changed:?}) from the one committed \
                     before ({previous})",
                    changed.len()
                ));
            }
            for id in changed {
                let counts = &mut self.configuration_counts;
                if previous.is_learner(id) && membership.is_voter(id) {
                    counts.promoted += 1;
                }
                if !previous.contains(id) && self.removed.remove(&id) {
                    counts.readded += 1;
                }
                if previous.contains(id) && !membership.contains(id) {
                    counts.removed += 1;
                    self.removed.insert(id);
                }
            }
        }
        self.configuration_counts.committed += 1;
        self.committed_configurations.insert(index, membership);
        Ok(())
    }

    /// Thesis §4.1: a leader appends a configuration only once the one before it is committed,
    /// so no log (a leader's least of all) ever holds two uncommitted configuration entries.
    /// Committed means committed cluster-wide with the same term: a stale log's entry at a
    /// committed index may be another one.
    fn check_one_uncommitted_configuration(
        &self,
        node: &Consensus<SimLog, KvStateMachine>,
    ) -> Result<(), String> {
        let Some(configurations) = self.configuration_entries.get(&node.id()) else {
            return Ok(());
        };
        let uncommitted: Vec<String> = configurations
            .iter()
            .filter(|&(&index, &term)| {
                let position = (index.0 - 1) as usize;
                self.committed
                    .get(position)
                    .map(|&(committed, _)| committed)
                    != Some(term)
            })
            .map(|(index, term)| format!("{index}@t{term}"))
            .collect();
        if uncommitted.len() > 1 {
            return Err(format!(
                "one configuration change at a time: {} ({:?}, term {}) holds uncommitted \
                 configuration entries at {} (cluster committed up to {})",
                node.id(),
                node.role(),
                node.current_term(),
                uncommitted.join(", "),
                self.committed.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{Config, Event, Timer};

    fn voters(ids: &[u64]) -> Membership {
        Membership::from_voters(ids.iter().copied().map(ServerId))
    }

    /// Server 1 started with `start_up`, its log holding `entries` (term 1, unsynced writes
    /// synced).
    fn server(start_up: Membership, entries: &[Entry]) -> Consensus<SimLog, KvStateMachine> {
        let mut log = SimLog::new();
        log.set_current_term(Term(1)).expect("term");
        log.append_entries(LogIndex(1), entries).expect("append");
        log.sync().expect("sync");
        let mut node = Consensus::with_membership(
            ServerId(1),
            start_up,
            log,
            KvStateMachine::new(),
            Config::default(),
            1,
        )
        .expect("valid");
        let _ = node.start();
        node
    }

    /// Makes the only voter leader and lets it commit its log.
    fn lead_and_commit(node: &mut Consensus<SimLog, KvStateMachine>) {
        let _ = node.step(Event::Timeout(Timer::Election)).expect("step");
        let _ = node.sync().expect("sync");
        assert_eq!(node.role(), Role::Leader);
        assert_eq!(node.commit_index(), node.last_log_index());
    }

    #[test]
    fn one_server_changed_per_committed_configuration_passes() {
        let next = voters(&[1]).with_learner(ServerId(2), "sim:2");
        let mut node = server(voters(&[1]), &[Entry::configuration(Term(1), &next)]);
        let mut checker = Checker::with_initial_membership(voters(&[1]));
        checker.check(&mut node).expect("nothing committed yet");
        lead_and_commit(&mut node);
        checker.check(&mut node).expect("one server changed");
        assert_eq!(checker.committed_membership(), Some(&next));
        assert_eq!(checker.configuration_counts().committed, 1);
    }

    #[test]
    fn two_servers_changed_in_one_committed_configuration_are_caught() {
        let mut node = server(
            voters(&[1]),
            &[Entry::configuration(Term(1), &voters(&[1]))],
        );
        let mut checker = Checker::with_initial_membership(voters(&[1, 2, 3]));
        checker.check(&mut node).expect("nothing committed yet");
        lead_and_commit(&mut node);
        let error = checker
            .check(&mut node)
            .expect_err("two voters removed at once");
        assert!(error.contains("single-server changes"), "{error}");
    }

    #[test]
    fn two_uncommitted_configurations_in_one_log_are_caught() {
        let first = voters(&[1, 2, 3]).with_learner(ServerId(4), "sim:4");
        let second = voters(&[1, 2, 3, 4]);
        let entries = [
            Entry::configuration(Term(1), &first),
            Entry::configuration(Term(1), &second),
        ];
        let mut node = server(voters(&[1, 2, 3]), &entries);
        let mut checker = Checker::with_initial_membership(voters(&[1, 2, 3]));
        let error = checker.check(&mut node).expect_err("two uncommitted");
        assert!(
            error.contains("one configuration change at a time"),
            "{error}"
        );
    }

    /// Thesis §4.1: a server counts votes by its own configuration: spares with empty logs and
    /// configurations do not make up a majority for a voter that lacks a committed entry.
    #[test]
    fn committed_entry_safety_counts_only_the_candidates_voters() {
        let configuration = voters(&[1, 2, 3]);
        let node = server(
            configuration.clone(),
            &[Entry::configuration(Term(1), &configuration)],
        );
        let mut checker = Checker::with_initial_membership(configuration.clone());
        // The checker takes entry 1 as committed (by 1 and 3).
        checker.committed.push((Term(1), 0));
        let empty = SimLog::new();
        let none = Membership::default();
        let with_entry = node.log();
        // Voter 2 lacks the entry; voters 1 and 3 hold it; spares 4 and 5 are empty.
        let logs = [
            (ServerId(1), with_entry, &configuration),
            (ServerId(2), &empty, &configuration),
            (ServerId(3), with_entry, &configuration),
            (ServerId(4), &empty, &none),
            (ServerId(5), &empty, &none),
        ];
        checker
            .check_committed_entry_is_safe(logs.iter().copied())
            .expect("2 cannot win: 1 and 3 refuse it");
        // Were 3 to lose the entry too, 2 and 3 would make a majority of its voters.
        let logs = [
            (ServerId(1), with_entry, &configuration),
            (ServerId(2), &empty, &configuration),
            (ServerId(3), &empty, &configuration),
        ];
        let error = checker
            .check_committed_entry_is_safe(logs.iter().copied())
            .expect_err("2 could win");
        assert!(error.contains("not safe"), "{error}");
    }
}
