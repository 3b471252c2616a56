//! The paper's RPCs (Figure 2) and their responses as plain Rust types. Each request has a paired
//! response; the wire format lives elsewhere, so the core never depends on Cap'n Proto.

use crate::log::{Entry, SnapshotMeta};
use crate::types::{LogIndex, ServerId, Term};
use bytes::Bytes;

/// RequestVote (§5.2): a candidate asks for a vote, carrying its last log position (§5.4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// The candidate's term.
    pub term: Term,
    /// The candidate asking for the vote.
    pub candidate_id: ServerId,
    /// Index of the candidate's last log entry.
    pub last_log_index: LogIndex,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
    /// A pre-vote (thesis §9.6): would the receiver vote for this candidate in `term`? Asked
    /// before campaigning, so a server that cannot win never raises the cluster's term. Neither
    /// side's term or vote changes.
    pub pre_vote: bool,
    /// The candidate campaigns because the leader handed over leadership (thesis §3.10):
    /// voters answer even while their leader lease holds.
    pub leadership_transfer: bool,
}

/// The answer to [`RequestVote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    /// The voter's current term, so a stale candidate learns it is stale.
    pub term: Term,
    /// Whether the voter granted its vote for `term`.
    pub vote_granted: bool,
    /// The answer to a pre-vote. A granted pre-vote carries the term asked about, which the
    /// candidate does not hold yet.
    pub pre_vote: bool,
}

/// AppendEntries (§5.3): replicates entries and serves as the heartbeat when `entries` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// The sender, so followers can redirect clients.
    pub leader_id: ServerId,
    /// Index of the entry just before `entries`.
    pub prev_log_index: LogIndex,
    /// Term of the entry at `prev_log_index` (the consistency check).
    pub prev_log_term: Term,
    /// Entries to store, starting at `prev_log_index + 1` (empty for a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's commit index, capped by what the leader knows this follower holds.
    pub leader_commit: LogIndex,
    /// The leader's latest ReadIndex round (thesis §6.4), echoed in the response.
    pub read_round: u64,
}

/// The answer to [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    /// The follower's current term, so a stale leader learns it is stale.
    pub term: Term,
    /// Whether the consistency check passed and the entries are stored (durably).
    pub success: bool,
    /// On success: the last index this request verified, `prev_log_index + entries.len()`. The
    /// leader sets the follower's match index from it, never from its own guess.
    pub match_index: LogIndex,
    /// On rejection, the term of the follower's conflicting entry at `prev_log_index`, or 0 when
    /// the follower's log is too short. Lets the leader skip a whole term per round trip (§5.3).
    pub conflict_term: Term,
    /// On rejection: the first index the follower holds of `conflict_term`, or, when the log is
    /// too short, `latest_log_index + 1`.
    pub conflict_index: LogIndex,
    /// The follower's last log index (informational).
    pub last_log_index: LogIndex,
    /// The `read_round` of the request answered: an answer of the leader's term to round r
    /// confirms the leader still led after every read of round r arrived.
    pub read_round: u64,
}

/// InstallSnapshot (§7): one chunk of the leader's snapshot, for a follower that needs entries the
/// leader has compacted away. Chunks are sent in order; the follower acknowledges how much it
/// holds, so a transfer can resume after a lost chunk or a reconnection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// The sender.
    pub leader_id: ServerId,
    /// Which snapshot, with its length and checksum.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot's bytes.
    pub offset: u64,
    /// The chunk; the last one ends at `meta.size`.
    pub data: Bytes,
}

/// The answer to [`InstallSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    /// The follower's current term.
    pub term: Term,
    /// The last index of the snapshot answered about.
    pub last_index: LogIndex,
    /// How many leading bytes of that snapshot the follower holds: the next chunk it wants
    /// starts here (0: start over).
    pub received: u64,
    /// Whether the follower now holds everything up to `match_index` (the snapshot is installed,
    /// or its log already covered it).
    pub done: bool,
    /// When `done`: the index the follower's log is known to match the leader's up to.
    pub match_index: LogIndex,
}

/// TimeoutNow (thesis §3.10): the leader, handing over leadership, tells a caught-up follower to
/// campaign at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    /// The leader's term.
    pub term: Term,
    /// The sender.
    pub leader_id: ServerId,
}

/// Every message one server sends another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A candidate's vote request.
    RequestVote(RequestVote),
    /// A vote answer.
    RequestVoteResponse(RequestVoteResponse),
    /// Entries or a heartbeat from the leader.
    AppendEntries(AppendEntries),
    /// A follower's answer to the leader.
    AppendEntriesResponse(AppendEntriesResponse),
    /// A chunk of the leader's snapshot.
    InstallSnapshot(InstallSnapshot),
    /// A follower's answer to a chunk.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// The leader hands leadership to the receiver.
    TimeoutNow(TimeoutNow),
}

impl Message {
    /// The sender's term, compared on receipt before anything else (§5.1).
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::RequestVote(_) => "RequestVote",
            Message::RequestVoteResponse(_) => "RequestVoteResponse",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendEntriesResponse(_) => "AppendEntriesResponse",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
            Message::TimeoutNow(_) => "TimeoutNow",
        }
    }
}

/// A message and the server it is for; the sender is the server that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The destination.
    pub to: ServerId,
    /// What to send.
    pub message: Message,
}
