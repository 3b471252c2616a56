//! Owns [`MemLog`], the in-memory [`PersistentLog`]: a vector of entries with the current term and
//! vote beside it, for tests, ephemeral clusters and as the building block of the simulator's
//! crash-modelling log (`sim::SimLog`). Durability across process restarts is `FileLog`'s job.

use crate::error::LogError;
use crate::log::{check_append_at, Entry, HardState, PersistentLog, SnapshotMeta};
use crate::types::{LogIndex, ServerId, Term};
use std::sync::Arc;

/// A [`PersistentLog`] held entirely in memory.
///
/// Memory is "durable" for the life of the process: every write is visible and kept as soon as
/// the call returns, so [`sync`](PersistentLog::sync) has nothing to do. Nothing survives the
/// process. Snapshots are held in memory too (shared between clones).
///
/// # Examples
/// ```
/// use mioraft::log::{Entry, MemLog, PersistentLog};
/// use mioraft::types::{LogIndex, Term};
///
/// # fn main() -> Result<(), mioraft::error::LogError> {
/// let mut log = MemLog::new();
/// log.set_current_term(Term(1))?;
/// log.append_entries(LogIndex(1), &[Entry::noop(Term(1)), Entry::command(Term(1), b"x".to_vec())])?;
/// assert_eq!(log.latest_log_index(), LogIndex(2));
/// assert_eq!(log.term(LogIndex(2))?, Some(Term(1)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemLog {
    /// The current term and vote (§5.1); 0 and none on first boot.
    hard_state: HardState,
    /// The entries; `entries[0]` holds index `first`.
    /// Invariant: `first - 1 + entries.len()` is the latest log index.
    entries: Vec<Entry>,
    /// The first index held (1 until a prefix is compacted). 0 stands for 1 (the default).
    first: u64,
    /// The snapshot in force and its data. Invariants: `first - 1 <= snapshot.last_index`
    /// whenever `first > 1`; `latest_log_index() >= snapshot.last_index` (finish keeps or
    /// discards the log so, and truncation at or below the snapshot is refused).
    snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
    /// The snapshot being written, if any.
    pending: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemLog {
    /// An empty log at term 0 with no vote.
    pub fn new() -> Self {
        MemLog::default()
    }

    /// The position in `entries` of `index`, or `None` if the log holds no entry there (index 0
    /// or past the end).
    fn position(&self, index: LogIndex) -> Option<usize> {
        let position = usize::try_from(index.0.checked_sub(self.first_log_index().0)?).ok()?;
        (position < self.entries.len()).then_some(position)
    }

    /// The snapshot's last index and term, or (0, 0).
    fn snapshot_position(&self) -> (LogIndex, Term) {
        self.snapshot
            .as_ref()
            .map_or((LogIndex(0), Term(0)), |(meta, _)| {
                (meta.last_index, meta.last_term)
            })
    }

    fn snapshot_error(reason: impl Into<String>) -> LogError {
        LogError::Snapshot {
            location: "in memory".to_owned(),
            reason: reason.into(),
        }
    }
}

impl PersistentLog for MemLog {
    fn current_term(&self) -> Term {
        self.hard_state.current_term
    }

    fn set_current_term(&mut self, term: Term) -> Result<(), LogError> {
        self.hard_state.set_current_term(term).map(|_| ())
    }

    fn voted_for(&self) -> Option<ServerId> {
        self.hard_state.voted_for
    }

    fn set_voted_for(&mut self, candidate: Option<ServerId>) -> Result<(), LogError> {
        self.hard_state.set_voted_for(candidate);
        Ok(())
    }

    fn first_log_index(&self) -> LogIndex {
        LogIndex(self.first.max(1))
    }

    fn latest_log_index(&self) -> LogIndex {
        LogIndex(self.first_log_index().0 - 1 + self.entries.len() as u64)
    }

    fn latest_log_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot_position().1, |entry| entry.term)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError> {
        if index.is_zero() {
            return Ok(Some(Term(0)));
        }
        let (snapshot_index, snapshot_term) = self.snapshot_position();
        if index == snapshot_index {
            return Ok(Some(snapshot_term));
        }
        let first = self.first_log_index();
        if index < first {
            return Err(LogError::Compacted { index, first });
        }
        Ok(self
            .position(index)
            .and_then(|position| self.entries.get(position))
            .map(|entry| entry.term))
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError> {
        let first = self.first_log_index();
        if !index.is_zero() && index < first {
            return Err(LogError::Compacted { index, first });
        }
        Ok(self
            .position(index)
            .and_then(|position| self.entries.get(position))
            .cloned())
    }

    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        let first = self.first_log_index();
        if from < first {
            return Err(LogError::Compacted { index: from, first });
        }
        let Some(start) = self.position(from) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        let mut total_bytes: u64 = 0;
        for (entry, index) in self.entries.iter().skip(start).zip(from.0..) {
            if index >= until.0 {
                break;
            }
            total_bytes = total_bytes.saturating_add(entry.size_bytes());
            // The first entry goes out even over budget, so a caller always makes progress.
            if !found.is_empty() && total_bytes > bytes_max {
                break;
            }
            found.push(entry.clone());
        }
        Ok(found)
    }

    fn append_entries(&mut self, from: LogIndex, entries: &[Entry]) -> Result<(), LogError> {
        self.append_owned_entries(from, entries.to_vec())
    }

    fn append_owned_entries(
        &mut self,
        from: LogIndex,
        entries: Vec<Entry>,
    ) -> Result<(), LogError> {
        check_append_at(from, self.latest_log_index())?;
        self.entries.extend(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        let first = self.first_log_index();
        let latest = self.latest_log_index();
        if from < first || from > latest.next() {
            return Err(LogError::TruncateOutOfRange {
                index: from,
                first,
                latest,
            });
        }
        let (snapshot_index, _) = self.snapshot_position();
        if from <= snapshot_index {
            // §7: a snapshot covers only committed entries, which are never removed.
            return Err(Self::snapshot_error(format!(
                "cannot truncate at index {from}: the snapshot covers entries up to \
                 {snapshot_index}, and those are committed"
            )));
        }
        // `from - first` entries stay; it is at most `entries.len()`, so it fits a usize.
        let keep_count = usize::try_from(from.distance_from(first)).unwrap_or(self.entries.len());
        self.entries.truncate(keep_count);
        Ok(())
    }

    /// Does nothing: memory is "durable" for the life of the process.
    fn sync(&mut self) -> Result<(), LogError> {
        Ok(())
    }

    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|(meta, _)| meta)
    }

    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        let capacity = usize::try_from(meta.size).unwrap_or(0).min(1 << 20);
        self.pending = Some((meta, Vec::with_capacity(capacity)));
        Ok(())
    }

    fn write_snapshot(&mut self, data: &[u8]) -> Result<(), LogError> {
        let Some((meta, buffer)) = self.pending.as_mut() else {
            return Err(Self::snapshot_error("write without begin_snapshot"));
        };
        if buffer.len() as u64 + data.len() as u64 > meta.size {
            return Err(Self::snapshot_error(format!(
                "data passes the announced size of {} bytes",
                meta.size
            )));
        }
        buffer.extend_from_slice(data);
        Ok(())
    }

    fn finish_snapshot(&mut self) -> Result<(), LogError> {
        let Some((meta, data)) = self.pending.take() else {
            return Err(Self::snapshot_error("finish without begin_snapshot"));
        };
        if data.len() as u64 != meta.size {
            return Err(Self::snapshot_error(format!(
                "holds {} of its {} bytes",
                data.len(),
                meta.size
            )));
        }
        let checksum = crc32c::crc32c(&data);
        if checksum != meta.checksum {
            return Err(Self::snapshot_error(format!(
                "checksum {checksum:#010x} does not match the expected {:#010x}",
                meta.checksum
            )));
        }
        // Snapshots only move forward, and one index has one term (§5.3 log matching).
        let (index, term) = self.snapshot_position();
        if meta.last_index < index {
            return Err(Self::snapshot_error(format!(
                "covers entries up to {}, older than the snapshot in force, which covers up to \
                 {index}",
                meta.last_index
            )));
        }
        if meta.last_index == index && meta.last_term != term {
            return Err(Self::snapshot_error(format!(
                "gives index {index} term {}, but the snapshot in force gives it term {term}",
                meta.last_term
            )));
        }
        // §7: keep the entries after the snapshot if the log agrees with it at its last index.
        let agrees = matches!(self.term(meta.last_index), Ok(Some(term)) if term == meta.last_term)
            && meta.last_index <= self.latest_log_index();
        if !agrees {
            self.entries.clear();
            self.first = meta.last_index.0 + 1;
        }
        self.snapshot = Some((meta, Arc::new(data)));
        Ok(())
    }

    fn read_snapshot(&self, offset: u64, bytes_max: u64) -> Result<Vec<u8>, LogError> {
        let Some((meta, data)) = self.snapshot.as_ref() else {
            return Err(Self::snapshot_error("no snapshot to read"));
        };
        if offset > meta.size {
            return Err(Self::snapshot_error(format!(
                "read at offset {offset} past the end ({} bytes)",
                meta.size
            )));
        }
        let start = offset as usize;
        let end = start.saturating_add(usize::try_from(bytes_max.max(1)).unwrap_or(usize::MAX));
        Ok(data[start..end.min(data.len())].to_vec())
    }

    fn compact_prefix(&mut self, through: LogIndex) -> Result<(), LogError> {
        let (snapshot_index, _) = self.snapshot_position();
        if through > snapshot_index {
            return Err(Self::snapshot_error(format!(
                "cannot compact through {through}: the snapshot covers only up to {snapshot_index}"
            )));
        }
        let first = self.first_log_index();
        if through < first {
            return Ok(());
        }
        let drop_count = usize::try_from(through.next().distance_from(first))
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        self.entries.drain(..drop_count);
        self.first = through.0 + 1;
        Ok(())
    }
}

crate::persistent_log_conformance!(conformance_tests, MemLog::new());

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of_terms(terms: &[u64]) -> MemLog {
        let mut log = MemLog::new();
        let entries: Vec<Entry> = terms
            .iter()
            .map(|&term| Entry::command(Term(term), vec![term as u8]))
            .collect();
        log.append_entries(LogIndex(1), &entries)
            .expect("append to an empty MemLog at index 1");
        log
    }

    #[test]
    fn new_is_default_and_empty() {
        let log = MemLog::new();
        assert_eq!(log, MemLog::default());
        assert_eq!(log.latest_log_index(), LogIndex(0));
        assert_eq!(log.first_log_index(), LogIndex(1));
    }

    #[test]
    fn entries_from_index_zero_is_compacted() {
        let log = log_of_terms(&[1, 1]);
        let result = log.entries(LogIndex(0), LogIndex(3), u64::MAX);
        assert!(
            matches!(
                result,
                Err(LogError::Compacted {
                    index: LogIndex(0),
                    first: LogIndex(1)
                })
            ),
            "got {result:?}"
        );
    }

    #[test]
    fn entries_budget_counts_overhead() {
        let log = log_of_terms(&[1, 2, 3]);
        // Each entry is 1 data byte plus the overhead.
        let one_bytes = 1 + Entry::OVERHEAD_BYTES;
        let found = log
            .entries(LogIndex(1), LogIndex(4), 2 * one_bytes)
            .expect("read");
        assert_eq!(found.len(), 2);
        let found = log
            .entries(LogIndex(1), LogIndex(4), 2 * one_bytes - 1)
            .expect("read");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn same_term_keeps_vote_but_higher_clears_it() {
        let mut log = MemLog::new();
        log.set_current_term(Term(2)).expect("term");
        log.set_voted_for(Some(ServerId(4))).expect("vote");
        log.set_current_term(Term(2)).expect("same term");
        assert_eq!(log.voted_for(), Some(ServerId(4)));
        log.set_current_term(Term(3)).expect("higher term");
        assert_eq!(log.voted_for(), None);
    }

    #[test]
    fn failed_truncate_reports_bounds() {
        let mut log = log_of_terms(&[1, 1, 2]);
        let result = log.truncate_suffix(LogIndex(5));
        assert!(
            matches!(
                result,
                Err(LogError::TruncateOutOfRange {
                    index: LogIndex(5),
                    first: LogIndex(1),
                    latest: LogIndex(3)
                })
            ),
            "got {result:?}"
        );
        assert_eq!(log, log_of_terms(&[1, 1, 2]));
    }

    #[test]
    fn clones_are_independent() {
        let original = log_of_terms(&[1, 2]);
        let mut copy = original.clone();
        copy.truncate_suffix(LogIndex(1)).expect("truncate");
        assert_eq!(original.latest_log_index(), LogIndex(2));
        assert_eq!(copy.latest_log_index(), LogIndex(0));
    }
}
