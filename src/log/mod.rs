//! Durable Raft state: the [`PersistentLog`] trait and its contract (DESIGN.md §3), the in-memory
//! [`MemLog`], and a [`conformance`] suite every implementation must pass.
//!
//! The log holds what Raft requires to survive a crash (Figure 2, "persistent state on all
//! servers"): the current term, the vote cast in it, and the entries. Writes may be buffered;
//! [`PersistentLog::sync`] is the durability point, so many writes can share one fsync (group
//! commit). The consensus core decides when a sync must precede a message; the log only promises
//! that after `sync` returns, every earlier write survives a crash, and that a crash before it
//! loses at most a suffix of the writes made since the previous sync, in the order they were made.

pub mod conformance;
mod file;
mod mem;

pub use file::{FileLog, FileLogOptions, FORMAT_VERSION};
pub use mem::MemLog;

use crate::error::LogError;
use crate::membership::Membership;
use crate::types::{LogIndex, ServerId, Term};
use bytes::Bytes;

/// What an entry carries. The core gives meaning to the kinds; applications see only commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// The empty entry a new leader appends at the start of its term (§8): committing it commits
    /// every earlier entry and tells the leader its commit index is current.
    Noop,
    /// An application command, handed to [`StateMachine::apply`](crate::StateMachine::apply)
    /// once committed.
    Command,
    /// Opens a client session (thesis §6.3); the session's id is this entry's index. No data.
    RegisterSession,
    /// An application command inside a client session: the data is the session id and the
    /// request's sequence number (each a little-endian u64) followed by the command. Applied at
    /// most once per (session, sequence number); see [`Entry::session_command`].
    SessionCommand,
    /// A cluster configuration (thesis §4.1): the data is a [`Membership`] in its byte encoding.
    /// It takes effect on every server as soon as it is in the log; see
    /// [`Entry::configuration`].
    Configuration,
}

impl EntryKind {
    /// A stable one-byte code for storage and the wire.
    pub fn code(self) -> u8 {
        match self {
            EntryKind::Noop => 0,
            EntryKind::Command => 1,
            EntryKind::RegisterSession => 2,
            EntryKind::SessionCommand => 3,
            EntryKind::Configuration => 4,
        }
    }

    /// The kind for a code from [`EntryKind::code`], or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(EntryKind::Noop),
            1 => Some(EntryKind::Command),
            2 => Some(EntryKind::RegisterSession),
            3 => Some(EntryKind::SessionCommand),
            4 => Some(EntryKind::Configuration),
            _ => None,
        }
    }
}

/// Bytes in front of the command of a [`EntryKind::SessionCommand`] entry.
pub const SESSION_HEADER_BYTES: usize = 16;

/// One log entry: the term of the leader that created it, its kind and its bytes (§5.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Term in which a leader appended this entry.
    pub term: Term,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The command bytes (empty for a no-op). Reference-counted, so the copies a leader sends
    /// to each follower share one buffer.
    pub data: Bytes,
}

impl Entry {
    /// Fixed per-entry overhead counted by byte budgets, on top of the data.
    pub const OVERHEAD_BYTES: u64 = 16;

    /// An application command of `term`.
    pub fn command(term: Term, data: impl Into<Vec<u8>>) -> Self {
        Entry {
            term,
            kind: EntryKind::Command,
            data: Bytes::from(data.into()),
        }
    }

    /// The no-op a leader of `term` appends on election (§8).
    pub fn noop(term: Term) -> Self {
        Entry {
            term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        }
    }

    /// The entry that opens a client session in `term` (thesis §6.3).
    pub fn register_session(term: Term) -> Self {
        Entry {
            term,
            kind: EntryKind::RegisterSession,
            data: Bytes::new(),
        }
    }

    /// Request `sequence` of client session `session`, carrying `command`, in `term`.
    pub fn session_command(term: Term, session: u64, sequence: u64, command: &[u8]) -> Self {
        let mut data = Vec::with_capacity(SESSION_HEADER_BYTES + command.len());
        data.extend_from_slice(&session.to_le_bytes());
        data.extend_from_slice(&sequence.to_le_bytes());
        data.extend_from_slice(command);
        Entry {
            term,
            kind: EntryKind::SessionCommand,
            data: Bytes::from(data),
        }
    }

    /// The configuration entry naming `membership`, in `term` (thesis §4.1).
    ///
    /// # Panics
    /// If `membership` breaks [`Membership::validate`]'s limits.
    pub fn configuration(term: Term, membership: &Membership) -> Self {
        Entry {
            term,
            kind: EntryKind::Configuration,
            data: Bytes::from(membership.encode()),
        }
    }

    /// For a [`EntryKind::Configuration`]: the configuration it names, or why its bytes are not
    /// one. `None` for other kinds.
    pub fn membership(&self) -> Option<Result<Membership, String>> {
        (self.kind == EntryKind::Configuration).then(|| Membership::decode(&self.data))
    }

    /// For a [`EntryKind::SessionCommand`]: its session id, sequence number and command.
    /// `None` for other kinds, or if the data is too short to hold the header (only a faulty
    /// peer or disk produces that).
    pub fn session_parts(&self) -> Option<(u64, u64, Bytes)> {
        if self.kind != EntryKind::SessionCommand || self.data.len() < SESSION_HEADER_BYTES {
            return None;
        }
        let session = u64::from_le_bytes(self.data[..8].try_into().ok()?);
        let sequence = u64::from_le_bytes(self.data[8..16].try_into().ok()?);
        Some((session, sequence, self.data.slice(SESSION_HEADER_BYTES..)))
    }

    /// What this entry counts against a byte budget: its data plus [`Entry::OVERHEAD_BYTES`].
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + Self::OVERHEAD_BYTES
    }
}

/// What a snapshot replaces and how to check its data (§7): the last log index and term it
/// covers, the membership at that index, and the length and crc32c checksum of its bytes. The
/// bytes themselves are opaque to the log; the consensus core defines them (the state machine's
/// snapshot followed by the client session table).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot replaces.
    pub last_index: LogIndex,
    /// The term of that entry.
    pub last_term: Term,
    /// The configuration in force at `last_index` (thesis §4.1): voters, learners, addresses.
    pub membership: Membership,
    /// Length of the snapshot's data in bytes.
    pub size: u64,
    /// crc32c of the snapshot's data.
    pub checksum: u32,
}

impl SnapshotMeta {
    /// Whether `self` and `other` describe the same snapshot (same position and same bytes).
    pub fn same_snapshot(&self, other: &SnapshotMeta) -> bool {
        self.last_index == other.last_index
            && self.last_term == other.last_term
            && self.size == other.size
            && self.checksum == other.checksum
    }
}

/// The current term and the vote cast in it, with the rules every log applies to them (§5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HardState {
    /// The latest term seen; only grows.
    pub(crate) current_term: Term,
    /// The vote cast in `current_term`; cleared whenever the term grows.
    pub(crate) voted_for: Option<ServerId>,
}

impl HardState {
    /// Moves to `term`: a higher term clears the vote; the same term keeps it, or a server could
    /// vote twice in one term. Returns whether anything changed.
    pub(crate) fn set_current_term(&mut self, term: Term) -> Result<bool, LogError> {
        if term < self.current_term {
            return Err(LogError::TermWentBack {
                current: self.current_term,
                requested: term,
            });
        }
        if term == self.current_term {
            return Ok(false);
        }
        self.current_term = term;
        self.voted_for = None;
        Ok(true)
    }

    /// Records the vote of the current term. Returns whether it changed.
    pub(crate) fn set_voted_for(&mut self, candidate: Option<ServerId>) -> bool {
        let changed = self.voted_for != candidate;
        self.voted_for = candidate;
        changed
    }
}

/// Durable storage for a Raft server's term, vote and log (DESIGN.md §3).
///
/// # Contract
/// * Indexes are 1-based and contiguous from [`first_log_index`](Self::first_log_index) to
///   [`latest_log_index`](Self::latest_log_index); an empty log has
///   `latest_log_index() == first_log_index() - 1`.
/// * Reads see every write made so far, synced or not.
/// * After [`sync`](Self::sync) returns `Ok`, every earlier write survives a crash. A crash before
///   that may lose a suffix of the unsynced writes (in the order they were made), never an earlier
///   one, and never invents or corrupts data.
/// * An `Err` from any method means the storage can no longer be trusted: the server stops.
///   The exceptions are the refusals documented as [`LogError::Snapshot`] (a snapshot that fails
///   its checksum, calls out of order): they change nothing and leave the log usable.
/// * Snapshots (§7): the log keeps the newest complete snapshot, written through
///   [`begin_snapshot`](Self::begin_snapshot), [`write_snapshot`](Self::write_snapshot) and
///   [`finish_snapshot`](Self::finish_snapshot). Once a snapshot covers index `s`, the log
///   behaves as if entries `1..=s` were held: [`term`](Self::term) answers at `s`,
///   [`latest_log_index`](Self::latest_log_index) and [`latest_log_term`](Self::latest_log_term)
///   are at least `s` and its term, and [`compact_prefix`](Self::compact_prefix) may discard the
///   entries up to `s`.
///
/// Implementations run [`conformance`]'s suite, as `MemLog` does:
/// `mioraft::persistent_log_conformance!(my_log_tests, MyLog::new());`.
pub trait PersistentLog {
    /// The latest term this server has seen (0 on first boot).
    fn current_term(&self) -> Term;

    /// Moves to a new term and clears the vote, since a vote belongs to one term (§5.1).
    ///
    /// # Errors
    /// [`LogError::TermWentBack`] if `term` is lower than the current term; storage errors.
    fn set_current_term(&mut self, term: Term) -> Result<(), LogError>;

    /// The candidate this server voted for in the current term, if any.
    fn voted_for(&self) -> Option<ServerId>;

    /// Records the vote of the current term.
    ///
    /// # Errors
    /// Storage errors.
    fn set_voted_for(&mut self, candidate: Option<ServerId>) -> Result<(), LogError>;

    /// The first index the log still holds: 1 unless a prefix was compacted away (§7).
    fn first_log_index(&self) -> LogIndex {
        LogIndex(1)
    }

    /// The index of the last entry, or `first_log_index() - 1` when empty (0 for a new log).
    fn latest_log_index(&self) -> LogIndex;

    /// The term of the last entry, or 0 when the log is empty.
    fn latest_log_term(&self) -> Term;

    /// The term of the entry at `index`: `Some(Term(0))` at index 0, `None` past the end.
    ///
    /// # Errors
    /// [`LogError::Compacted`] below the first index; storage errors.
    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError>;

    /// The entry at `index`, or `None` past the end (or at index 0).
    ///
    /// # Errors
    /// [`LogError::Compacted`] below the first index; storage errors.
    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError>;

    /// The entries from `from` up to but not including `until`, stopping early at the end of the
    /// log or before their total [`Entry::size_bytes`] would pass `bytes_max`. The first entry is
    /// returned even when it alone passes the budget, so a caller always makes progress.
    ///
    /// # Errors
    /// [`LogError::Compacted`] if `from` is below the first index; storage errors.
    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError>;

    /// Appends `entries` so that the first lands at `from`, which must be
    /// `latest_log_index() + 1`. The original trait's name, now strict: remove a conflicting
    /// suffix first with [`truncate_suffix`](Self::truncate_suffix).
    ///
    /// # Errors
    /// [`LogError::NonContiguousAppend`]; storage errors.
    fn append_entries(&mut self, from: LogIndex, entries: &[Entry]) -> Result<(), LogError>;

    /// [`append_entries`](Self::append_entries) with entries the caller gives up: a log that
    /// keeps entries in memory can keep these rather than copies (the consensus core appends
    /// this way: a proposal's entry, a follower's received batch). Same contract; the default
    /// appends copies.
    ///
    /// # Errors
    /// As [`append_entries`](Self::append_entries).
    fn append_owned_entries(
        &mut self,
        from: LogIndex,
        entries: Vec<Entry>,
    ) -> Result<(), LogError> {
        self.append_entries(from, &entries)
    }

    /// Removes every entry at `from` and after (§5.3: a follower drops a conflicting suffix).
    /// `from` may be `latest_log_index() + 1` (nothing to remove).
    ///
    /// # Errors
    /// [`LogError::TruncateOutOfRange`] if `from` is below the first index or past the end + 1;
    /// [`LogError::Snapshot`] if `from` is at or below the snapshot's last index (a snapshot
    /// holds only committed entries, which are never removed); storage errors.
    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError>;

    /// Makes every earlier write durable (the durability point; one call may cover many writes).
    ///
    /// # Errors
    /// Storage errors: the server must stop rather than retry and carry on.
    fn sync(&mut self) -> Result<(), LogError>;

    /// The newest complete snapshot, `None` if there is none.
    fn snapshot_meta(&self) -> Option<&SnapshotMeta>;

    /// Starts a new snapshot described by `meta`, whose `size` bytes follow through
    /// [`write_snapshot`](Self::write_snapshot). Discards any unfinished one. The current snapshot
    /// stays in force (and readable) until [`finish_snapshot`](Self::finish_snapshot).
    ///
    /// # Errors
    /// Storage errors.
    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError>;

    /// Appends `data` to the unfinished snapshot.
    ///
    /// # Errors
    /// [`LogError::Snapshot`] if no snapshot was begun or `data` would pass the announced size;
    /// storage errors.
    fn write_snapshot(&mut self, data: &[u8]) -> Result<(), LogError>;

    /// Appends `data`, taken by value, to the unfinished snapshot. A log may write it in the
    /// background (`FileLog` writes and fsyncs it on a thread of its own, so that a large
    /// snapshot does not stall the server); [`snapshot_written`](Self::snapshot_written) tells
    /// when that is done. The default writes it at once.
    ///
    /// # Errors
    /// As [`write_snapshot`](Self::write_snapshot).
    fn write_snapshot_owned(&mut self, data: Vec<u8>) -> Result<(), LogError> {
        self.write_snapshot(&data)
    }

    /// Whether every byte of the unfinished snapshot has been written (and made durable), so
    /// [`finish_snapshot`](Self::finish_snapshot) will not wait. The default: always.
    ///
    /// # Errors
    /// Storage errors from a background write.
    fn snapshot_written(&mut self) -> Result<bool, LogError> {
        Ok(true)
    }

    /// Completes the unfinished snapshot: checks its length and checksum against its meta, makes
    /// it durable together with every earlier write (crash-safely: a crash leaves either the old
    /// snapshot or the new one, whole), and puts it in force, discarding the previous one.
    ///
    /// §7: if the log holds the entry at `meta.last_index` with `meta.last_term`, the entries
    /// after it are kept; otherwise the whole log is discarded and continues at
    /// `meta.last_index + 1`.
    ///
    /// Snapshots only move forward: one older than the snapshot in force, or one naming a
    /// different term for the same last index, is refused.
    ///
    /// # Errors
    /// [`LogError::Snapshot`] if none was begun, it is short, its checksum does not match, or it
    /// would move back (then nothing changes and the unfinished snapshot is dropped); storage
    /// errors.
    fn finish_snapshot(&mut self) -> Result<(), LogError>;

    /// At most `max(bytes_max, 1)` bytes of the current snapshot's data from `offset`, and at
    /// least one unless `offset` is the end.
    ///
    /// # Errors
    /// [`LogError::Snapshot`] if there is no snapshot or `offset` is past its end; storage
    /// errors.
    fn read_snapshot(&self, offset: u64, bytes_max: u64) -> Result<Vec<u8>, LogError>;

    /// Discards entries up to and including `through`, which must not pass the current snapshot's
    /// last index. An implementation may keep some of them (`FileLog` deletes whole segments
    /// only); [`first_log_index`](Self::first_log_index) says what is left. Compaction need not
    /// wait for a [`sync`](Self::sync) to be durable (losing it would only keep more), and it
    /// leaves other unsynced writes unsynced.
    ///
    /// # Errors
    /// [`LogError::Snapshot`] if `through` is past the snapshot (or there is none); storage
    /// errors.
    fn compact_prefix(&mut self, through: LogIndex) -> Result<(), LogError>;
}

/// The rule every append follows: it starts right after the last entry, `latest`.
///
/// # Errors
/// [`LogError::NonContiguousAppend`] naming both indexes.
pub(crate) fn check_append_at(from: LogIndex, latest: LogIndex) -> Result<(), LogError> {
    let expected = latest.next();
    if from != expected {
        return Err(LogError::NonContiguousAppend {
            index: from,
            expected,
        });
    }
    Ok(())
}
