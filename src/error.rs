//! The crate's error type: one `Error` with nested area enums, each variant naming the value,
//! limit, index or file a user needs to act on.

use crate::types::{LogIndex, Term};
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in mioraft.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The persistent log refused or failed an operation.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A configuration was rejected at construction.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bytes from the network were not a valid message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A socket operation failed.
    #[error("i/o error on {address}: {source}")]
    Io {
        /// The address involved (listening, dialling or connected to).
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A client call gave up at its deadline.
    #[error("no answer from the cluster within {timeout:?}; last problem: {last_problem}")]
    Timeout {
        /// The configured deadline.
        timeout: Duration,
        /// The last error or refusal seen before giving up.
        last_problem: String,
    },
    /// The state machine's `validate` refused the command before it entered the log; nothing
    /// was appended. `error` is the application's own error.
    #[error(
        "the state machine refused the command: {}",
        String::from_utf8_lossy(error)
    )]
    Refused {
        /// What `StateMachine::validate` returned.
        error: Vec<u8>,
    },
    /// The client's session is no longer in the cluster's session table (it keeps the
    /// `sessions_max` most recently used); the command was not applied.
    #[error(
        "client session {session} expired (the cluster keeps a bounded number of sessions and \
         dropped this least recently used one); this attempt was not applied (an earlier attempt \
         of the same call may have been), and the next call opens a new session"
    )]
    SessionExpired {
        /// The expired session's id.
        session: u64,
    },
    /// The cluster refused a request.
    #[error("the cluster refused the request ({reason}): {message}")]
    Rejected {
        /// Why, as a short word (`overloaded`, `too large`, ...).
        reason: String,
        /// The server's explanation.
        message: String,
    },
    /// The server thread stopped with an error or panicked.
    #[error("server stopped: {0}")]
    ServerStopped(String),
}

/// Bytes off the network that are not a valid mioraft message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame announced more bytes than the configured limit.
    #[error("message of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    MessageTooLarge {
        /// The announced size.
        size_bytes: u64,
        /// The configured maximum.
        limit_bytes: u64,
    },
    /// The segment table was malformed.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// Cap'n Proto could not read the message.
    #[error("malformed Cap'n Proto message: {0}")]
    Malformed(#[from] capnp::Error),
    /// A union or enum value this version does not know.
    #[error("unknown value in field {field}: {value}")]
    NotInSchema {
        /// Which field.
        field: &'static str,
        /// The unknown discriminant.
        value: u16,
    },
    /// A field held a value that is never valid (e.g. server id 0).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Errors of a [`PersistentLog`](crate::log::PersistentLog).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An append did not start right after the last entry.
    #[error("append must start at index {expected} (after the last entry), not at {index}")]
    NonContiguousAppend {
        /// Where the caller tried to append.
        index: LogIndex,
        /// `latest_log_index + 1`.
        expected: LogIndex,
    },
    /// A truncation point lies outside the entries the log holds.
    #[error("cannot truncate at index {index}: the log holds indexes {first} to {latest}")]
    TruncateOutOfRange {
        /// Requested first index to remove.
        index: LogIndex,
        /// First index held.
        first: LogIndex,
        /// Last index held.
        latest: LogIndex,
    },
    /// A read asked for an entry that compaction has discarded.
    #[error("entry {index} was compacted; the log starts at index {first}")]
    Compacted {
        /// Requested index.
        index: LogIndex,
        /// First index still held.
        first: LogIndex,
    },
    /// A term was set lower than the current one: terms never fall (§5.1).
    #[error("term cannot move back from {current} to {requested}")]
    TermWentBack {
        /// The term the log holds.
        current: Term,
        /// The smaller term asked for.
        requested: Term,
    },
    /// The storage medium failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or FileLog) holds the log directory.
    #[error("log directory {path} is in use by another process (its LOCK file is held)")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The directory holds a log of a format this version does not read.
    #[error("log directory format in {path} is {found:?}; this version reads {expected:?}")]
    UnsupportedFormat {
        /// The VERSION file.
        path: PathBuf,
        /// What it says.
        found: String,
        /// What this version writes.
        expected: &'static str,
    },
    /// A snapshot operation was out of order, or a snapshot's data does not match its length or
    /// checksum.
    #[error("snapshot {location}: {reason}")]
    Snapshot {
        /// The snapshot file, or a description of the snapshot when it has no file.
        location: String,
        /// What was wrong.
        reason: String,
    },
    /// Stored data failed validation.
    #[error("corrupt log file {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// A [`Config`](crate::consensus::Config) that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The election timeout range is empty or inverted.
    #[error("election timeout minimum {min:?} must be below its maximum {max:?}")]
    ElectionTimeoutRange {
        /// Configured minimum.
        min: Duration,
        /// Configured maximum.
        max: Duration,
    },
    /// Heartbeats would not arrive before followers time out.
    #[error(
        "heartbeat interval {heartbeat:?} must be below the election timeout minimum {election_min:?}"
    )]
    HeartbeatTooSlow {
        /// Configured heartbeat interval.
        heartbeat: Duration,
        /// Configured election timeout minimum.
        election_min: Duration,
    },
    /// A limit that must be at least one was zero.
    #[error("{name} must be at least 1")]
    ZeroLimit {
        /// The config field.
        name: &'static str,
    },
    /// A server's message limit cannot carry the core's largest AppendEntries batch.
    #[error(
        "message_bytes_max {message_bytes_max} must be at least twice append_bytes_max \
         {append_bytes_max}, or replication batches would not fit in a message"
    )]
    MessageLimitTooSmall {
        /// The server's message limit.
        message_bytes_max: u64,
        /// The core's batch limit.
        append_bytes_max: u64,
    },
    /// A server's message limit cannot carry one full InstallSnapshot chunk (§7).
    #[error(
        "message_bytes_max {message_bytes_max} must be at least snapshot_chunk_bytes \
         {snapshot_chunk_bytes} plus {overhead_bytes} bytes of message header, or snapshot \
         chunks would not fit in a message"
    )]
    MessageLimitBelowSnapshotChunk {
        /// The server's message limit.
        message_bytes_max: u64,
        /// The core's chunk size.
        snapshot_chunk_bytes: u64,
        /// Room each chunk's message needs besides the chunk.
        overhead_bytes: u64,
    },
    /// The snapshot chunks a leader may have in flight to one follower would not fit in the
    /// part of that connection's output buffer they may take; overflowing it closes the
    /// connection, and the transfer would start over and overflow again.
    #[error(
        "snapshot_chunks_in_flight {snapshot_chunks_in_flight} chunks of snapshot_chunk_bytes \
         {snapshot_chunk_bytes} (plus headers) must fit in {budget_bytes} bytes, half of a \
         connection's output buffer"
    )]
    SnapshotWindowTooLarge {
        /// The core's chunk size.
        snapshot_chunk_bytes: u64,
        /// The core's window of unacknowledged chunks per follower.
        snapshot_chunks_in_flight: u64,
        /// What the window may take of a connection's output buffer.
        budget_bytes: u64,
    },
    /// The voter set does not contain this server, or contains the reserved id 0.
    #[error("voting members {voters:?} must contain this server {id} and never the reserved id 0")]
    Membership {
        /// This server.
        id: u64,
        /// The configured voters.
        voters: Vec<u64>,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
