//! [`Metrics`]: a cheap snapshot of one server's Raft state for operators, tests and examples
//! (DESIGN.md §5).

use crate::consensus::Role;
use crate::membership::Membership;
use crate::types::{LogIndex, ServerId, Term};
use std::collections::BTreeMap;

/// One server's view of itself at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// The server.
    pub id: ServerId,
    /// Follower, Candidate, Leader or Learner.
    pub role: Role,
    /// Its current term.
    pub current_term: Term,
    /// The leader it knows of, if any.
    pub current_leader: Option<ServerId>,
    /// Index of its last log entry.
    pub last_log_index: LogIndex,
    /// Highest index it knows committed.
    pub commit_index: LogIndex,
    /// Highest index applied to its state machine.
    pub last_applied: LogIndex,
    /// On the leader: each follower's match index. Empty on other servers.
    pub match_indexes: BTreeMap<ServerId, LogIndex>,
    /// The last index covered by its newest snapshot (0: none) (§7).
    pub snapshot_index: LogIndex,
    /// The first index its log still holds (1 until compacted).
    pub first_log_index: LogIndex,
    /// The configuration in force on this server (thesis §4.1): voters, learners, addresses.
    pub membership: Membership,
}
