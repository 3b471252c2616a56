//! Owns [`SimLog`], the simulator's [`PersistentLog`] that models crashes (DESIGN.md §6.1): reads
//! see every write, [`sync`](PersistentLog::sync) makes them durable, and
//! [`SimLog::crash`] restarts from the durable state plus a chosen prefix of the unsynced writes,
//! exactly what the contract lets a crash keep. Choosing when to crash and how much to keep is
//! the simulator's fault schedule, not this module's.

use crate::error::LogError;
use crate::log::conformance::ReopenableLog;
use crate::log::{Entry, MemLog, PersistentLog, SnapshotMeta};
use crate::types::{LogIndex, ServerId, Term};

/// A [`PersistentLog`] for the deterministic simulator that loses unsynced writes on a crash.
///
/// It keeps two [`MemLog`]s: the current one, which every read sees, and the durable one, which a
/// crash keeps. Each successful write goes to the current log and into a journal; `sync` replays
/// the journal onto the durable log and empties it. [`SimLog::crash`] keeps the durable log plus
/// any prefix of the journal, the writes a real disk might have finished before power went.
///
/// # Examples
/// ```
/// use mioraft::log::{Entry, PersistentLog};
/// use mioraft::sim::SimLog;
/// use mioraft::types::{LogIndex, Term};
///
/// # fn main() -> Result<(), mioraft::error::LogError> {
/// let mut log = SimLog::new();
/// log.append_entries(LogIndex(1), &[Entry::noop(Term(1))])?;
/// log.sync()?;
/// log.append_entries(LogIndex(2), &[Entry::noop(Term(1))])?;
/// assert_eq!(log.pending_write_count(), 1);
///
/// let restarted = log.crash(0);
/// assert_eq!(restarted.latest_log_index(), LogIndex(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SimLog {
    /// What reads see: `durable` with every journal write applied.
    current: MemLog,
    /// What a crash keeps for sure: the state at the last sync.
    durable: MemLog,
    /// Writes since the last sync, oldest first.
    /// Invariant: replaying them in order onto `durable` gives `current`.
    journal: Vec<PendingWrite>,
    /// The lowest index whose entry was appended or removed since the last
    /// [`SimLog::take_changed_from`], `None` if none.
    changed_from: Option<LogIndex>,
    /// Entries this log discarded by compaction, by index: not log state (a real log forgets
    /// them), but kept for the simulator's checkers, which look at a server only after its step
    /// and must still see the entries it committed and compacted within that step.
    compacted: std::collections::BTreeMap<LogIndex, Entry>,
    /// How many more times [`PersistentLog::snapshot_written`] answers "not yet" after bytes
    /// were handed over by value, as a log writing them in the background would: the simulator
    /// then runs the core with a snapshot in progress across steps.
    unwritten_polls: u8,
}

/// One write made since the last sync, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingWrite {
    SetTerm(Term),
    SetVote(Option<ServerId>),
    Append { from: LogIndex, entries: Vec<Entry> },
    Truncate { from: LogIndex },
}

impl PendingWrite {
    /// Applies this write to `log`, which must be in the state the write was recorded against.
    fn apply(&self, log: &mut MemLog) -> Result<(), LogError> {
        match self {
            PendingWrite::SetTerm(term) => log.set_current_term(*term),
            PendingWrite::SetVote(candidate) => log.set_voted_for(*candidate),
            PendingWrite::Append { from, entries } => log.append_entries(*from, entries),
            PendingWrite::Truncate { from } => log.truncate_suffix(*from),
        }
    }
}

impl SimLog {
    /// An empty log at term 0 with no vote and nothing pending.
    pub fn new() -> Self {
        SimLog::default()
    }

    /// How many writes were made since the last sync: what a crash may lose.
    pub fn pending_write_count(&self) -> usize {
        self.journal.len()
    }

    /// The log a restarted server sees after a crash that finished the first `keep_pending`
    /// unsynced writes (clamped to [`pending_write_count`](Self::pending_write_count)) and lost
    /// the rest.
    ///
    /// The returned log has nothing pending, its durable state equals what it reads, and its
    /// first [`take_changed_from`](Self::take_changed_from) reports its first index (1 unless a
    /// prefix was compacted, §7), so incremental checkers verify the whole log again.
    ///
    /// # Panics
    /// Only if the journal no longer replays onto the durable state, a broken invariant of
    /// `SimLog` itself.
    #[must_use]
    pub fn crash(self, keep_pending: usize) -> SimLog {
        let mut restarted = self.durable;
        for write in self.journal.iter().take(keep_pending) {
            replay(write, &mut restarted);
        }
        let first = restarted.first_log_index();
        SimLog {
            current: restarted.clone(),
            durable: restarted,
            journal: Vec::new(),
            changed_from: Some(first),
            compacted: self.compacted,
            unwritten_polls: 0,
        }
    }

    /// The lowest index whose entry was appended or removed since the previous call, or `None`
    /// if no entry changed; for checkers that verify only what changed.
    ///
    /// Appending nothing and truncating at `latest_log_index() + 1` change no entry. A log
    /// returned by [`crash`](Self::crash) reports its first index first. The index reported is
    /// never below [`first_log_index`](PersistentLog::first_log_index), so a checker can read
    /// from it.
    pub fn take_changed_from(&mut self) -> Option<LogIndex> {
        self.changed_from.take()
    }

    /// An entry this log discarded by compaction (for checkers only; see the field).
    pub fn compacted_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.compacted.get(&index)
    }

    /// The latest index a crash keeps for sure: the durable log's latest index.
    pub fn synced_index(&self) -> LogIndex {
        self.durable.latest_log_index()
    }

    /// Makes `write`, already done on `current`, pending.
    fn record(&mut self, write: PendingWrite) {
        self.journal.push(write);
    }

    /// Notes that the entry at `index` was appended or removed.
    fn mark_changed(&mut self, index: LogIndex) {
        self.changed_from = Some(self.changed_from.map_or(index, |from| from.min(index)));
    }
}

/// Applies a journal `write` to `log`.
///
/// # Panics
/// If `log` refuses the write: the journal only holds writes that `current` accepted in the same
/// order from the same state, so a refusal is a bug in `SimLog`.
fn replay(write: &PendingWrite, log: &mut MemLog) {
    if let Err(error) = write.apply(log) {
        panic!("SimLog journal write {write:?} no longer applies to its durable state: {error}");
    }
}

impl PersistentLog for SimLog {
    fn current_term(&self) -> Term {
        self.current.current_term()
    }

    fn set_current_term(&mut self, term: Term) -> Result<(), LogError> {
        self.current.set_current_term(term)?;
        self.record(PendingWrite::SetTerm(term));
        Ok(())
    }

    fn voted_for(&self) -> Option<ServerId> {
        self.current.voted_for()
    }

    fn set_voted_for(&mut self, candidate: Option<ServerId>) -> Result<(), LogError> {
        self.current.set_voted_for(candidate)?;
        self.record(PendingWrite::SetVote(candidate));
        Ok(())
    }

    fn first_log_index(&self) -> LogIndex {
        self.current.first_log_index()
    }

    fn latest_log_index(&self) -> LogIndex {
        self.current.latest_log_index()
    }

    fn latest_log_term(&self) -> Term {
        self.current.latest_log_term()
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError> {
        self.current.term(index)
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError> {
        self.current.entry(index)
    }

    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        self.current.entries(from, until, bytes_max)
    }

    fn append_entries(&mut self, from: LogIndex, entries: &[Entry]) -> Result<(), LogError> {
        self.append_owned_entries(from, entries.to_vec())
    }

    fn append_owned_entries(
        &mut self,
        from: LogIndex,
        entries: Vec<Entry>,
    ) -> Result<(), LogError> {
        self.current.append_entries(from, &entries)?;
        if !entries.is_empty() {
            self.mark_changed(from);
        }
        self.record(PendingWrite::Append { from, entries });
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        let latest_before = self.current.latest_log_index();
        self.current.truncate_suffix(from)?;
        if from <= latest_before {
            self.mark_changed(from);
        }
        self.record(PendingWrite::Truncate { from });
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        for write in &self.journal {
            replay(write, &mut self.durable);
        }
        self.journal.clear();
        Ok(())
    }

    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.current.snapshot_meta()
    }

    /// The unfinished snapshot lives only in `current`: a crash loses it, as a crash mid-install
    /// loses a real server's temporary file.
    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.unwritten_polls = 0;
        self.current.begin_snapshot(meta)
    }

    /// Written at once, but reported written only after two polls (see `unwritten_polls`).
    fn write_snapshot_owned(&mut self, data: Vec<u8>) -> Result<(), LogError> {
        self.current.write_snapshot(&data)?;
        self.unwritten_polls = 2;
        Ok(())
    }

    fn snapshot_written(&mut self) -> Result<bool, LogError> {
        if self.unwritten_polls > 0 {
            self.unwritten_polls -= 1;
            return Ok(false);
        }
        Ok(true)
    }

    fn write_snapshot(&mut self, data: &[u8]) -> Result<(), LogError> {
        self.current.write_snapshot(data)
    }

    /// Durable at once, with every earlier write, as the contract says.
    fn finish_snapshot(&mut self) -> Result<(), LogError> {
        let first_before = self.current.first_log_index();
        self.current.finish_snapshot()?;
        self.journal.clear();
        self.durable = self.current.clone();
        if self.current.first_log_index() != first_before {
            // §7: the log was discarded and continues after the snapshot, from where the next
            // entry will be new (the indexes the snapshot covers cannot be read back).
            self.mark_changed(self.current.first_log_index());
        }
        Ok(())
    }

    fn read_snapshot(&self, offset: u64, bytes_max: u64) -> Result<Vec<u8>, LogError> {
        self.current.read_snapshot(offset, bytes_max)
    }

    /// Compaction forgets only entries the snapshot covers. Those are in the durable copy too
    /// (finishing a snapshot syncs everything, and entries a snapshot covers are never
    /// truncated), so it applies to both copies at once, durable at once as `FileLog`'s segment
    /// deletions are, and the journal still replays (it only touches entries after the
    /// snapshot). It does not sync the other pending writes: a crash after it may still lose
    /// them, so the simulator keeps catching a missing sync.
    fn compact_prefix(&mut self, through: LogIndex) -> Result<(), LogError> {
        let first = self.current.first_log_index();
        let covered = self
            .current
            .snapshot_meta()
            .is_some_and(|meta| through <= meta.last_index);
        let discarded = if covered && through >= first {
            self.current.entries(first, through.next(), u64::MAX)?
        } else {
            Vec::new()
        };
        self.current.compact_prefix(through)?;
        for (entry, index) in discarded.into_iter().zip(first.0..) {
            self.compacted.insert(LogIndex(index), entry);
        }
        self.durable.compact_prefix(through)
    }
}

impl ReopenableLog for SimLog {
    /// A crash that keeps none of the unsynced writes.
    fn reopen(self) -> Self {
        self.crash(0)
    }
}

crate::persistent_log_conformance!(conformance_tests, SimLog::new());
crate::persistent_log_conformance!(crashed_conformance_tests, SimLog::new().crash(0));
crate::persistent_log_durability_conformance!(durability_conformance_tests, SimLog::new());

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of_terms(first: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .zip(first..)
            .map(|(&term, index)| Entry::command(Term(term), index.to_le_bytes().to_vec()))
            .collect()
    }

    /// Everything a read sees, to compare logs.
    fn reads(log: &SimLog) -> (Term, Option<ServerId>, Vec<Entry>) {
        let entries = log
            .entries(
                log.first_log_index(),
                log.latest_log_index().next(),
                u64::MAX,
            )
            .expect("SimLog reads never fail");
        (log.current_term(), log.voted_for(), entries)
    }

    #[test]
    fn crash_zero_loses_unsynced_writes() {
        let mut log = SimLog::new();
        log.set_current_term(Term(1)).expect("term");
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1]))
            .expect("append");
        log.sync().expect("sync");
        let synced = reads(&log);

        log.set_current_term(Term(2)).expect("term");
        log.set_voted_for(Some(ServerId(3))).expect("vote");
        log.truncate_suffix(LogIndex(2)).expect("truncate");
        log.append_entries(LogIndex(2), &entries_of_terms(2, &[2, 2]))
            .expect("append");
        assert_eq!(log.pending_write_count(), 4);

        let restarted = log.crash(0);
        assert_eq!(reads(&restarted), synced);
        assert_eq!(restarted.pending_write_count(), 0);
        assert_eq!(restarted.synced_index(), LogIndex(2));
    }

    #[test]
    fn crash_keeps_exactly_a_prefix_of_pending_writes() {
        let mut log = SimLog::new();
        let mut after_each = vec![reads(&log)];
        log.set_current_term(Term(1)).expect("term");
        after_each.push(reads(&log));
        log.set_voted_for(Some(ServerId(1))).expect("vote");
        after_each.push(reads(&log));
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 1]))
            .expect("append");
        after_each.push(reads(&log));
        log.truncate_suffix(LogIndex(2)).expect("truncate");
        after_each.push(reads(&log));
        log.set_current_term(Term(2)).expect("term");
        after_each.push(reads(&log));
        log.append_entries(LogIndex(2), &entries_of_terms(2, &[2]))
            .expect("append");
        after_each.push(reads(&log));

        for (keep, expected) in after_each.iter().enumerate() {
            let restarted = log.clone().crash(keep);
            assert_eq!(&reads(&restarted), expected, "crash({keep})");
            assert_eq!(restarted.durable, restarted.current, "crash({keep})");
            assert!(restarted.journal.is_empty(), "crash({keep})");
        }
        // More than pending is clamped: everything is kept.
        let restarted = log.clone().crash(usize::MAX);
        assert_eq!(&reads(&restarted), after_each.last().expect("states"));
    }

    #[test]
    fn synced_writes_survive_any_crash() {
        let mut log = SimLog::new();
        log.set_current_term(Term(3)).expect("term");
        log.set_voted_for(Some(ServerId(2))).expect("vote");
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 2, 3]))
            .expect("append");
        log.truncate_suffix(LogIndex(3)).expect("truncate");
        log.sync().expect("sync");
        assert_eq!(log.pending_write_count(), 0);
        assert_eq!(log.synced_index(), LogIndex(2));
        let synced = reads(&log);

        for keep in [0, 1, 5] {
            let restarted = log.clone().crash(keep);
            assert_eq!(reads(&restarted), synced, "crash({keep})");
        }
        let restarted = log.crash(0).crash(0);
        assert_eq!(reads(&restarted), synced);
    }

    #[test]
    fn synced_index_follows_sync_not_writes() {
        let mut log = SimLog::new();
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1]))
            .expect("append");
        assert_eq!(log.synced_index(), LogIndex(0));
        log.sync().expect("sync");
        assert_eq!(log.synced_index(), LogIndex(2));
        log.truncate_suffix(LogIndex(1)).expect("truncate");
        assert_eq!(log.synced_index(), LogIndex(2));
        log.sync().expect("sync");
        assert_eq!(log.synced_index(), LogIndex(0));
    }

    #[test]
    fn refused_writes_are_not_pending() {
        let mut log = SimLog::new();
        log.set_current_term(Term(2)).expect("term");
        assert!(log.set_current_term(Term(1)).is_err());
        assert!(log
            .append_entries(LogIndex(3), &entries_of_terms(3, &[2]))
            .is_err());
        assert!(log.truncate_suffix(LogIndex(5)).is_err());
        assert_eq!(log.pending_write_count(), 1);
        assert_eq!(log.take_changed_from(), None);
        log.sync().expect("sync");
    }

    #[test]
    fn take_changed_from_reports_lowest_changed_index() {
        let mut log = SimLog::new();
        assert_eq!(log.take_changed_from(), None);

        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 1, 1]))
            .expect("append");
        assert_eq!(log.take_changed_from(), Some(LogIndex(1)));
        assert_eq!(log.take_changed_from(), None);

        log.append_entries(LogIndex(5), &entries_of_terms(5, &[1]))
            .expect("append");
        log.truncate_suffix(LogIndex(3)).expect("truncate");
        log.append_entries(LogIndex(3), &entries_of_terms(3, &[2]))
            .expect("append");
        assert_eq!(log.take_changed_from(), Some(LogIndex(3)));

        // Neither an empty append nor a truncation past the end changes an entry.
        log.append_entries(LogIndex(4), &[]).expect("empty append");
        log.truncate_suffix(LogIndex(4))
            .expect("truncate at the end");
        log.set_current_term(Term(2)).expect("term");
        log.sync().expect("sync");
        assert_eq!(log.take_changed_from(), None);

        log.truncate_suffix(LogIndex(2)).expect("truncate");
        assert_eq!(log.take_changed_from(), Some(LogIndex(2)));
    }

    /// A snapshot of `data` up to `last_index` of `last_term`, begun, written and finished.
    fn install_snapshot(log: &mut SimLog, last_index: u64, last_term: u64, data: &[u8]) {
        let meta = SnapshotMeta {
            last_index: LogIndex(last_index),
            last_term: Term(last_term),
            membership: crate::membership::Membership::from_voters([ServerId(1)]),
            size: data.len() as u64,
            checksum: crc32c::crc32c(data),
        };
        log.begin_snapshot(meta).expect("begin");
        log.write_snapshot(data).expect("write");
        log.finish_snapshot().expect("finish");
    }

    #[test]
    fn finishing_a_snapshot_makes_pending_writes_durable() {
        let mut log = SimLog::new();
        log.set_current_term(Term(2)).expect("term");
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 2, 2]))
            .expect("append");
        install_snapshot(&mut log, 3, 2, b"state");
        assert_eq!(log.pending_write_count(), 0);
        let restarted = log.clone().crash(0);
        assert_eq!(reads(&restarted), reads(&log));
        assert_eq!(restarted.snapshot_meta(), log.snapshot_meta());
    }

    /// Compaction is durable at once but leaves other writes pending, so a crash after it still
    /// loses them, as the simulator needs to catch a missing sync.
    #[test]
    fn compaction_leaves_other_writes_pending() {
        let mut log = SimLog::new();
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 1, 2, 2]))
            .expect("append");
        install_snapshot(&mut log, 3, 1, b"state");
        log.set_current_term(Term(4)).expect("term");
        log.append_entries(LogIndex(6), &entries_of_terms(6, &[3]))
            .expect("append");
        assert_eq!(log.pending_write_count(), 2);

        log.compact_prefix(LogIndex(3)).expect("compact");
        assert_eq!(
            log.pending_write_count(),
            2,
            "compaction synced other writes"
        );
        assert_eq!(log.first_log_index(), LogIndex(4));

        let lost = log.clone().crash(0);
        assert_eq!(lost.first_log_index(), LogIndex(4), "compaction is durable");
        assert_eq!(lost.latest_log_index(), LogIndex(5));
        assert_eq!(lost.current_term(), Term(0));
        let kept = log.clone().crash(2);
        assert_eq!(reads(&kept), reads(&log));
        assert_eq!(kept.first_log_index(), LogIndex(4));
    }

    #[test]
    fn refused_compaction_changes_nothing_pending() {
        let mut log = SimLog::new();
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 1]))
            .expect("append");
        install_snapshot(&mut log, 2, 1, b"state");
        log.set_current_term(Term(2)).expect("term");
        assert!(log.compact_prefix(LogIndex(3)).is_err());
        assert_eq!(log.pending_write_count(), 1);
        assert_eq!(log.first_log_index(), LogIndex(1));
        assert_eq!(log.crash(0).current_term(), Term(0));
    }

    /// What `take_changed_from` reports can be read from: after a snapshot replaced a short
    /// log, and after a crash of a compacted log.
    #[test]
    fn changed_from_never_points_below_the_first_index() {
        let mut log = SimLog::new();
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1, 1, 1]))
            .expect("append");
        log.take_changed_from();
        install_snapshot(&mut log, 10, 2, b"state");
        assert_eq!(log.take_changed_from(), Some(LogIndex(11)));
        log.append_entries(LogIndex(11), &entries_of_terms(11, &[2, 2, 2, 2, 2]))
            .expect("append");
        install_snapshot(&mut log, 14, 2, b"later state");
        log.compact_prefix(LogIndex(13)).expect("compact");
        let mut restarted = log.crash(0);
        let from = restarted
            .take_changed_from()
            .expect("a crash reports a change");
        assert_eq!(from, LogIndex(14));
        assert_eq!(from, restarted.first_log_index());
        assert!(restarted.entry(from).is_ok());
    }

    #[test]
    fn crashed_log_reports_everything_changed_once() {
        let mut log = SimLog::new();
        log.append_entries(LogIndex(1), &entries_of_terms(1, &[1]))
            .expect("append");
        let mut restarted = log.crash(1);
        assert_eq!(restarted.take_changed_from(), Some(LogIndex(1)));
        assert_eq!(restarted.take_changed_from(), None);
        assert_eq!(restarted.synced_index(), LogIndex(1));
    }
}
