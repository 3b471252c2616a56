//! The consensus core: every Raft rule, and no I/O, clock or thread (DESIGN.md §1).
//!
//! [`Consensus`] takes [`Event`]s (a peer's message, a client proposal, a timer firing, a peer
//! reconnecting) and returns [`Actions`]: messages to send, timers to arm or cancel, replies for
//! proposers, and whether the log must be synced. It reads and writes the [`PersistentLog`] it
//! owns and applies committed commands to the [`StateMachine`] it owns, but never syncs on its
//! own: the caller syncs when it likes (once for many events: group commit) by calling
//! [`Consensus::sync`]. Messages whose safety depends on unsynced writes (a vote, a new term, an
//! acknowledgement of entries) are withheld until then, so a caller cannot send them too early.
//!
//! The rules are split by concern: `election.rs` (§5.2, §5.4.1), `replication.rs` (§5.3,
//! §5.4.2), `progress.rs` (per-follower state), `quorum.rs` (majorities), `invariants.rs`
//! (checks after every step).

mod client_requests;
mod election;
mod invariants;
mod membership_change;
pub mod message;
pub mod progress;
pub mod quorum;
mod read_index;
mod replication;
pub mod sessions;
mod snapshot;
mod transfer;

pub use message::{
    AppendEntries, AppendEntriesResponse, Envelope, InstallSnapshot, InstallSnapshotResponse,
    Message, RequestVote, RequestVoteResponse, TimeoutNow,
};

use crate::error::{ConfigError, LogError, Result};
use crate::log::PersistentLog;
use crate::membership::Membership;
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId, Term};
use client_requests::Waiter;
use invariants::Observed;
use progress::Progress;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sessions::Sessions;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Tunables of one server's consensus core. Validated by [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Shortest election timeout (§5.2). Default 150 ms.
    pub election_timeout_min: Duration,
    /// Longest election timeout; each timeout is drawn uniformly from the range. Default 300 ms.
    pub election_timeout_max: Duration,
    /// How often a leader heartbeats each follower. Must be below `election_timeout_min`.
    /// Default 50 ms.
    pub heartbeat_interval: Duration,
    /// Most entries one AppendEntries carries (batching). Default 1024.
    pub append_entries_max: u64,
    /// Most entry bytes ([`Entry::size_bytes`](crate::log::Entry::size_bytes)) one AppendEntries
    /// carries; a single larger entry still goes alone. Default 1 MiB.
    pub append_bytes_max: u64,
    /// Most unacknowledged AppendEntries per caught-up follower (pipelining). Default 8.
    pub in_flight_appends_max: usize,
    /// Most entries a leader holds beyond its commit index. Past it, proposals are refused with
    /// [`ProposalOutcome::Overloaded`] instead of growing the log without bound while a majority
    /// is unreachable. Default 65,536.
    pub uncommitted_entries_max: u64,
    /// Most client sessions the replicated session table keeps (thesis §6.3); opening one more
    /// expires the least recently used. Part of the replicated state machine's definition, so it
    /// must be equal on every server. Default 10,000.
    pub sessions_max: usize,
    /// Snapshot policy (§7): take a snapshot once this many entries were applied since the last
    /// one. `u64::MAX` disables the count trigger. Default 100,000.
    pub snapshot_entries: u64,
    /// Snapshot policy: take a snapshot once the applied entries since the last one hold this
    /// many bytes ([`Entry::size_bytes`](crate::log::Entry::size_bytes)). Default 64 MiB.
    pub snapshot_bytes: u64,
    /// Entries kept in the log behind a new snapshot, so a follower slightly behind still catches
    /// up by appends rather than a whole snapshot. Default 1,000.
    pub snapshot_keep_entries: u64,
    /// Most bytes of snapshot data and configuration (which travels in every chunk) one
    /// InstallSnapshot message carries; at least one byte of data goes. Default 1 MiB.
    pub snapshot_chunk_bytes: u64,
    /// Most unacknowledged InstallSnapshot chunks per follower (flow control). Default 4.
    pub snapshot_chunks_in_flight: u64,
    /// Pre-vote (thesis §9.6): before raising its term to campaign, a server asks whether a
    /// majority would vote for it, so one that cannot win (partitioned, or behind) never disrupts
    /// the cluster by raising its term. Default on.
    pub pre_vote: bool,
    /// Check-quorum (thesis §6.2, §9.6): a leader that has not heard from a majority for an
    /// election timeout (the maximum) steps down, and a server that heard from a leader within
    /// the minimum election timeout ignores requests to vote for a higher term (its leader
    /// lease), so a partitioned or removed server cannot depose a healthy leader. Default on.
    pub check_quorum: bool,
    /// Test only: deliberately break one Raft rule, to prove the simulator catches it.
    #[doc(hidden)]
    pub testing_broken_rule: Option<BrokenRule>,
}

/// Rules that a test can switch off to show the checkers notice (never for production).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokenRule {
    /// Commit an earlier term's entry by counting replicas, ignoring §5.4.2 (Figure 8).
    CommitPreviousTermByCount,
    /// Answer reads from the leader's state machine at once, without ReadIndex (§6.4).
    LocalReads,
    /// Leave the client session table out of snapshots (§7 with thesis §6.3).
    SnapshotWithoutSessions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            append_entries_max: 1024,
            append_bytes_max: 1 << 20,
            in_flight_appends_max: 8,
            uncommitted_entries_max: 65_536,
            sessions_max: 10_000,
            snapshot_entries: 100_000,
            snapshot_bytes: 64 << 20,
            snapshot_keep_entries: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_in_flight: 4,
            pre_vote: true,
            check_quorum: true,
            testing_broken_rule: None,
        }
    }
}

impl Config {
    /// Checks that the settings can work together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(ConfigError::ElectionTimeoutRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        if self.heartbeat_interval >= self.election_timeout_min {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                election_min: self.election_timeout_min,
            });
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroLimit {
                name: "heartbeat_interval",
            });
        }
        for (name, value) in [
            ("append_entries_max", self.append_entries_max),
            ("append_bytes_max", self.append_bytes_max),
            ("in_flight_appends_max", self.in_flight_appends_max as u64),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("sessions_max", self.sessions_max as u64),
            ("snapshot_entries", self.snapshot_entries),
            ("snapshot_bytes", self.snapshot_bytes),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("snapshot_chunks_in_flight", self.snapshot_chunks_in_flight),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }
}

/// A server's role (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Campaigning for leadership of the current term.
    Candidate,
    /// Handles proposals and replicates the log.
    Leader,
    /// Receives the log but neither votes nor campaigns (thesis §4.2.1): a learner, or a server
    /// outside the configuration (waiting to be added, or removed).
    Learner,
}

/// The timers a server keeps. Arming one replaces its previous deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Followers and candidates: no leader heard from in time, start an election (§5.2).
    Election,
    /// Leaders: time to heartbeat the followers.
    Heartbeat,
    /// With check-quorum: on a follower, its leader lease ran out (no word from the leader for
    /// the minimum election timeout); on a leader, time to check that a majority answered in the
    /// last election timeout.
    Quorum,
    /// Leaders adding a server: the current catch-up round has run for an election timeout
    /// (thesis §4.2.1).
    CatchUp,
}

/// What to do with a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Fire [`Event::Timeout`] for this timer after the delay, replacing any earlier deadline.
    Set {
        /// Which timer.
        timer: Timer,
        /// Delay from now.
        after: Duration,
    },
    /// Do not fire this timer until it is set again.
    Cancel(Timer),
}

/// The caller's tag for a proposal, echoed in its [`ClientReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// When a proposer wants its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseMode {
    /// Once applied, with the state machine's reply (the default).
    #[default]
    Applied,
    /// Once committed (durable on a majority): sooner, with the index and no reply.
    Committed,
}

/// Which session request a proposal is (thesis §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionRequest {
    /// The session's id, as given by [`ProposalOutcome::SessionRegistered`].
    pub session: u64,
    /// The request's number in the session: 1, 2, 3, …; a retry repeats it.
    pub sequence: u64,
}

/// What became of a proposal, a session registration or a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Committed and applied at `index`; `result` is what `StateMachine::apply` returned.
    Applied {
        /// Where the command sits in the log.
        index: LogIndex,
        /// The state machine's reply.
        result: Vec<u8>,
    },
    /// This server is not the leader; `leader` is the one it knows of, if any. Nothing was
    /// appended, so retrying there is safe.
    NotLeader {
        /// The current leader as far as this server knows.
        leader: Option<ServerId>,
    },
    /// The entry was replaced by another leader's entry at `index` and will never be applied.
    Dropped {
        /// Where the proposal had been appended.
        index: LogIndex,
    },
    /// The leader already holds `uncommitted_entries_max` uncommitted entries (a majority is
    /// slow or unreachable). Nothing was appended; retry later.
    Overloaded {
        /// The configured limit that was reached.
        uncommitted_entries_max: u64,
    },
    /// Committed at `index` ([`ResponseMode::Committed`]); it will be applied in order.
    Committed {
        /// Where the command sits in the log.
        index: LogIndex,
    },
    /// [`StateMachine::validate`] refused the command; nothing was appended.
    Refused {
        /// The state machine's error.
        error: Vec<u8>,
    },
    /// A session was opened.
    SessionRegistered {
        /// Its id: the index of its registration entry.
        session: u64,
    },
    /// The session is not in the session table (expired, or never opened) when this request was
    /// applied: this request did not take effect now and never will under this session. An
    /// earlier attempt of the same request may have taken effect before the session expired
    /// (thesis §6.3), so for a retried request the outcome is unknown.
    SessionExpired {
        /// The session named.
        session: u64,
    },
    /// The session already applied a later request than this one: an old duplicate.
    Superseded {
        /// The session named.
        session: u64,
        /// The old request's number.
        sequence: u64,
    },
    /// The entry at `index` may or may not have been applied: this server, a deposed leader,
    /// installed a snapshot that covers it and cannot tell whether its entry is the one that
    /// was committed there. A session request can be retried safely; the session table answers.
    Unknown {
        /// Where the proposal had been appended.
        index: LogIndex,
    },
    /// Leadership went to `to` (thesis §3.10): this server stepped down for its election.
    LeadershipTransferred {
        /// The server asked to lead.
        to: ServerId,
    },
    /// A leadership transfer could not be done; nothing changed.
    TransferFailed {
        /// Why, in words for an operator.
        reason: String,
    },
    /// The configuration change is committed at `index` (thesis §4.1); for an added server,
    /// it now votes.
    MembershipChanged {
        /// Where the configuration entry sits in the log.
        index: LogIndex,
    },
    /// A configuration change could not be made (another is in progress, the server did not
    /// catch up, …); the words say what holds now.
    MembershipChangeFailed {
        /// Why, in words for an operator.
        reason: String,
    },
    /// A linearizable read's answer (§6.4): what `StateMachine::query` returned.
    Read {
        /// The state machine's answer.
        result: Vec<u8>,
    },
}

/// The answer for one proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    /// The caller's tag from [`Event::ClientProposal`].
    pub id: ProposalId,
    /// What happened.
    pub outcome: ProposalOutcome,
}

/// Something that happened to this server.
#[derive(Clone, Debug)]
pub enum Event {
    /// A message arrived from a peer.
    Message {
        /// The sender, as authenticated by the connection.
        from: ServerId,
        /// What it sent.
        message: Message,
    },
    /// A client asks to append `command` to the log, outside any session, answered when
    /// applied. Shorthand for [`Event::Propose`] without a session.
    ClientProposal {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
        /// The command for `StateMachine::apply`.
        command: Vec<u8>,
    },
    /// A client asks to append `command` to the log.
    Propose {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
        /// The command for `StateMachine::apply`.
        command: Vec<u8>,
        /// The session request it is, for exactly-once application; `None`: no session.
        session: Option<SessionRequest>,
        /// When to answer.
        respond_when: ResponseMode,
    },
    /// A client asks for a new session (thesis §6.3).
    RegisterSession {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
    },
    /// A client's linearizable read (thesis §6.4).
    Query {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
        /// The question for `StateMachine::query`.
        query: Vec<u8>,
    },
    /// An operator asks the leader to hand leadership to `to` (thesis §3.10), answered with
    /// [`ProposalOutcome::LeadershipTransferred`] or [`ProposalOutcome::TransferFailed`].
    TransferLeadership {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
        /// The voter to lead next.
        to: ServerId,
    },
    /// An operator asks the leader to change the configuration, one server at a time (thesis
    /// §4.1), answered with [`ProposalOutcome::MembershipChanged`] once the change is committed
    /// or [`ProposalOutcome::MembershipChangeFailed`].
    ChangeMembership {
        /// The caller's tag, echoed in the reply.
        id: ProposalId,
        /// What to change.
        change: MembershipChange,
    },
    /// A timer armed by a [`TimerAction::Set`] fired.
    Timeout(Timer),
    /// The connection to a peer was (re)established: messages sent before may have been lost.
    PeerConnected(ServerId),
}

/// One configuration change (thesis §4.1). Each is idempotent: asking again for a change already
/// made succeeds at once, so a client may retry after a timeout or a leader change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add `id` at `address` as a voter: first as a learner, caught up in rounds until a round
    /// takes less than an election timeout (thesis §4.2.1), then promoted.
    AddServer {
        /// The new server.
        id: ServerId,
        /// Where it listens.
        address: String,
    },
    /// Add `id` at `address` as a learner: it receives the log but does not vote.
    AddLearner {
        /// The new server.
        id: ServerId,
        /// Where it listens.
        address: String,
    },
    /// Remove `id`, voter or learner. Removing the leader itself is allowed: it leads until the
    /// change commits, then hands over and steps down (thesis §4.2.2).
    RemoveServer {
        /// The server to remove.
        id: ServerId,
    },
}

/// What the caller must do after a step. Every message here may be sent at once; messages that
/// need a sync first are withheld until [`Consensus::sync`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Actions {
    /// Messages to send, in order per destination.
    pub messages: Vec<Envelope>,
    /// Timers to set or cancel, in order.
    pub timers: Vec<TimerAction>,
    /// Replies for proposers.
    pub replies: Vec<ClientReply>,
    /// The log has unsynced writes: call [`Consensus::sync`] (now or after more events) to make
    /// them durable and release the messages that wait on them.
    pub sync_required: bool,
}

impl Actions {
    /// Appends `other` to `self`, keeping the order of everything.
    pub fn merge(&mut self, mut other: Actions) {
        self.messages.append(&mut other.messages);
        self.timers.append(&mut other.timers);
        self.replies.append(&mut other.replies);
        self.sync_required |= other.sync_required;
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.timers.is_empty()
            && self.replies.is_empty()
            && !self.sync_required
    }
}

/// One server's Raft state machine (Figure 2), driven by events, free of I/O.
///
/// # Examples
/// A one-server cluster elects itself and commits a proposal:
/// ```
/// use mioraft::consensus::{Config, Consensus, Event, ProposalId, ProposalOutcome, Timer};
/// use mioraft::{KvStateMachine, MemLog, ServerId};
///
/// let mut node = Consensus::new(
///     ServerId(1), vec![ServerId(1)], MemLog::new(), KvStateMachine::new(),
///     Config::default(), 7,
/// )?;
/// let _ = node.start();
/// let _ = node.step(Event::Timeout(Timer::Election))?;
/// let _ = node.step(Event::ClientProposal { id: ProposalId(1), command: b"put k v".to_vec() })?;
/// let actions = node.sync()?; // durable on the only voter: committed and applied
/// assert!(matches!(actions.replies[0].outcome, ProposalOutcome::Applied { .. }));
/// assert_eq!(node.state_machine().get("k"), Some("v"));
/// # Ok::<(), mioraft::Error>(())
/// ```
pub struct Consensus<L: PersistentLog, M: StateMachine> {
    /// This server. Never 0. Constant.
    id: ServerId,
    /// The configuration given at construction: in force until the log holds one (thesis §4.1).
    /// Empty for a server that waits to be added.
    bootstrap: Membership,
    /// The configuration at the snapshot's last index (or `bootstrap` at index 0) and every
    /// configuration entry in the log after it, by index. The last one is in force, committed or
    /// not (thesis §4.1). Never empty.
    configurations: BTreeMap<LogIndex, Membership>,
    /// The voters of the configuration in force, sorted.
    voters: Vec<ServerId>,
    /// Every member of the configuration in force other than this server (voters and learners),
    /// sorted: whom a leader replicates to.
    peers: Vec<ServerId>,
    /// Leader only: the configuration change under way, if any.
    membership_change: Option<membership_change::PendingChange>,
    /// Durable term, vote and entries. Written only here; synced only by [`Consensus::sync`].
    log: L,
    /// The application, fed committed commands in order.
    state_machine: M,
    config: Config,
    /// Follower, Candidate or Leader. Changes only through `become_*`.
    role: Role,
    /// The leader of the current term if known; `Some(id)` when Leader. Reset on a new term.
    leader_id: Option<ServerId>,
    /// Highest index known committed (§5.3). Volatile: 0 after a restart. Never decreases.
    /// Invariant: `commit_index <= log.latest_log_index()`.
    commit_index: LogIndex,
    /// Highest index applied to the state machine. Invariant: `last_applied <= commit_index`.
    last_applied: LogIndex,
    /// Highest index known durable in this server's own log: what the leader counts for itself
    /// (thesis §10.2.1). Invariant: `durable_index <= log.latest_log_index()`.
    durable_index: LogIndex,
    /// Term or vote changed since the last sync: every outgoing message waits.
    hard_state_unsynced: bool,
    /// Entries changed since the last sync: acknowledgements wait; a leader's appends do not.
    entries_unsynced: bool,
    /// Messages waiting for the next sync, in order.
    withheld: Vec<Envelope>,
    /// Candidate, or follower asking for pre-votes: who granted and who refused (including
    /// ourselves).
    votes_granted: BTreeSet<ServerId>,
    votes_rejected: BTreeSet<ServerId>,
    /// Leader only: each peer's replication progress.
    progress: BTreeMap<ServerId, Progress>,
    /// Follower only: asking for pre-votes for the next term (thesis §9.6).
    prevoting: bool,
    /// Follower only: heard from the current leader within the minimum election timeout (the
    /// leader lease of check-quorum); requests to vote for a higher term are ignored meanwhile.
    leader_lease: bool,
    /// Leader only: a leadership transfer under way (thesis §3.10).
    transfer: Option<transfer::LeaderTransfer>,
    /// Candidate only: campaigning because the leader handed over leadership.
    campaigning_for_transfer: bool,
    /// Proposals this server appended as leader, by (index, term), awaiting commit or apply.
    pending_proposals: BTreeMap<(LogIndex, Term), Vec<Waiter>>,
    /// The replicated session table (thesis §6.3), changed only by applying entries.
    sessions: Sessions,
    /// Leader only: the session request appended in this term and not yet applied, per session,
    /// so a retry waits for the same entry instead of appending a second copy.
    sessions_in_flight: HashMap<u64, (u64, LogIndex, Term)>,
    /// Leader only: the index of this term's no-op. Until it is applied, the leader's state
    /// machine and session table may lag what earlier leaders committed, so session requests and
    /// reads wait in `waiting_for_term_start`.
    term_start: LogIndex,
    /// Session proposals and reads that arrived before the term's no-op was applied.
    waiting_for_term_start: Vec<Event>,
    /// Leader only: reads in flight (ReadIndex, §6.4).
    reads: read_index::ReadState,
    /// Inside [`Consensus::step_batch`]: entries appended for clients are not sent yet; the
    /// batch sends them together once every event in it is handled.
    replication_deferred: bool,
    /// A leader's snapshot being received (§7), if any.
    incoming_snapshot: Option<snapshot::IncomingSnapshot>,
    /// The last index of our own snapshot while the log writes it, if one is being taken.
    local_snapshot: Option<LogIndex>,
    /// Entries and bytes applied since the last snapshot, for the snapshot policy.
    applied_since_snapshot: snapshot::AppliedSinceSnapshot,
    /// Randomness for election timeouts, from the seed given at construction.
    rng: ChaCha8Rng,
    /// Actions gathered during the current step.
    out: Actions,
    /// Values seen at the previous step, to assert that they never move backwards.
    observed: Observed,
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// Creates a server from its durable `log` (new or recovered) and a state machine, as a
    /// follower. Call [`Consensus::start`] once to arm its first election timer.
    ///
    /// `voters` lists every voting member, this server included (addresses unknown; see
    /// [`Consensus::with_membership`]); `rng_seed` feeds the election timeout randomness, so equal
    /// seeds give equal runs.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration or membership is invalid.
    pub fn new(
        id: ServerId,
        voters: Vec<ServerId>,
        log: L,
        state_machine: M,
        config: Config,
        rng_seed: u64,
    ) -> Result<Self> {
        let voters: Vec<ServerId> = voters
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if id.0 == 0 || !voters.contains(&id) || voters.contains(&ServerId(0)) {
            return Err(ConfigError::Membership {
                id: id.0,
                voters: voters.iter().map(|v| v.0).collect(),
            }
            .into());
        }
        let membership = Membership::from_voters(voters);
        Self::with_membership(id, membership, log, state_machine, config, rng_seed)
    }

    /// Creates a server as [`Consensus::new`] does, from a whole initial configuration with
    /// addresses. The initial configuration is in force until the log holds one; the first
    /// leader of a new cluster writes it as the cluster's first entry (thesis §4.1), and a
    /// server whose log (or snapshot) already holds a configuration uses that instead.
    ///
    /// An empty `membership` starts a server that joins an existing cluster: it never campaigns
    /// and waits for a leader to add it ([`MembershipChange::AddServer`]).
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration is invalid or, when not empty, does not make this
    /// server a voter; a [`LogError`] if a configuration in the log cannot be read.
    pub fn with_membership(
        id: ServerId,
        membership: Membership,
        log: L,
        state_machine: M,
        config: Config,
        rng_seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let valid = id.0 != 0
            && membership.validate().is_ok()
            && (membership.is_empty() || membership.is_voter(id));
        if !valid {
            return Err(ConfigError::Membership {
                id: id.0,
                voters: membership.voters().iter().map(|v| v.0).collect(),
            }
            .into());
        }
        let durable_index = log.latest_log_index();
        let observed = Observed::new(log.current_term());
        let config_sessions_max = config.sessions_max;
        let mut consensus = Consensus {
            id,
            configurations: BTreeMap::from([(LogIndex(0), membership.clone())]),
            bootstrap: membership,
            voters: Vec::new(),
            peers: Vec::new(),
            membership_change: None,
            log,
            state_machine,
            config,
            role: Role::Follower,
            leader_id: None,
            commit_index: LogIndex(0),
            last_applied: LogIndex(0),
            durable_index,
            hard_state_unsynced: false,
            entries_unsynced: false,
            withheld: Vec::new(),
            votes_granted: BTreeSet::new(),
            votes_rejected: BTreeSet::new(),
            progress: BTreeMap::new(),
            prevoting: false,
            leader_lease: false,
            transfer: None,
            campaigning_for_transfer: false,
            pending_proposals: BTreeMap::new(),
            sessions: Sessions::new(config_sessions_max),
            sessions_in_flight: HashMap::new(),
            replication_deferred: false,
            term_start: LogIndex(0),
            waiting_for_term_start: Vec::new(),
            reads: read_index::ReadState::default(),
            incoming_snapshot: None,
            local_snapshot: None,
            applied_since_snapshot: snapshot::AppliedSinceSnapshot::default(),
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            out: Actions::default(),
            observed,
        };
        // §7: start from the newest snapshot and replay only the log after it.
        consensus.restore_from_snapshot()?;
        consensus.load_configurations()?;
        Ok(consensus)
    }

    /// Returns the actions a freshly created server needs: arming its election timer.
    pub fn start(&mut self) -> Actions {
        self.reset_election_timer();
        self.take_actions()
    }

    /// Feeds one event through the Raft rules and returns what to do.
    ///
    /// # Errors
    /// A [`LogError`] from the persistent log. The server must then stop: its state can no
    /// longer be trusted.
    pub fn step(&mut self, event: Event) -> Result<Actions> {
        self.dispatch(event)?;
        self.settle()?;
        self.check_invariants();
        Ok(self.take_actions())
    }

    /// Feeds `events` through the Raft rules in order, as one batch, and returns what to do for
    /// all of them. The rules are those of [`step`](Self::step), event by event; what differs is
    /// when the leader sends: entries appended for the batch's proposals go to each follower
    /// together, in as few AppendEntries as the size limits allow, once every event is handled,
    /// instead of one AppendEntries per proposal (§5.3 lets a leader send any part of its log
    /// at any time). Reads in the batch share one ReadIndex round (§6.4). A server feeds it
    /// every client request that arrived in one turn of its event loop.
    ///
    /// # Errors
    /// As [`step`](Self::step): the server must stop.
    pub fn step_batch(&mut self, events: impl IntoIterator<Item = Event>) -> Result<Actions> {
        self.replication_deferred = true;
        let handled = events
            .into_iter()
            .try_for_each(|event| self.dispatch(event));
        self.replication_deferred = false;
        handled?;
        self.replicate_with_read_round()?;
        self.settle()?;
        self.check_invariants();
        Ok(self.take_actions())
    }

    /// Hands `event` to the rule that handles it.
    fn dispatch(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Message { from, message } => self.handle_message(from, message)?,
            Event::ClientProposal { id, command } => {
                self.propose(id, command, None, ResponseMode::Applied)?;
            }
            Event::Propose {
                id,
                command,
                session,
                respond_when,
            } => self.propose(id, command, session, respond_when)?,
            Event::RegisterSession { id } => self.register_session(id)?,
            Event::Query { id, query } => self.query(id, query),
            Event::TransferLeadership { id, to } => self.transfer_leadership(id, to)?,
            Event::ChangeMembership { id, change } => self.change_membership(id, change)?,
            Event::Timeout(Timer::Election) => self.on_election_timeout()?,
            Event::Timeout(Timer::Heartbeat) => self.on_heartbeat_timeout()?,
            Event::Timeout(Timer::Quorum) => self.on_quorum_timeout()?,
            Event::Timeout(Timer::CatchUp) => self.on_catch_up_timeout()?,
            Event::PeerConnected(peer) => self.on_peer_connected(peer)?,
        }
        Ok(())
    }

    /// Makes every write so far durable, then releases the messages that waited for it and lets a
    /// leader count its own log toward commitment (thesis §10.2.1).
    ///
    /// # Errors
    /// A [`LogError`] from [`PersistentLog::sync`]: the server must stop.
    pub fn sync(&mut self) -> Result<Actions> {
        self.log.sync()?;
        self.hard_state_unsynced = false;
        self.entries_unsynced = false;
        self.durable_index = self.log.latest_log_index();
        self.out.messages.append(&mut self.withheld);
        if self.role == Role::Leader {
            self.advance_commit_index()?;
        }
        self.settle()?;
        self.check_invariants();
        Ok(self.take_actions())
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// Every voting member of the configuration in force, sorted.
    pub fn voters(&self) -> &[ServerId] {
        &self.voters
    }

    /// The configuration in force: the newest in the log, committed or not (thesis §4.1).
    pub fn membership(&self) -> &Membership {
        self.configurations
            .last_key_value()
            .map(|(_, membership)| membership)
            .expect("configurations is never empty")
    }

    /// The log index of the configuration in force (0: the initial one, not yet in the log).
    pub fn membership_index(&self) -> LogIndex {
        self.configurations
            .last_key_value()
            .map(|(&index, _)| index)
            .expect("configurations is never empty")
    }

    /// The current role; a follower outside the voters is a [`Role::Learner`].
    pub fn role(&self) -> Role {
        if self.role == Role::Follower && !self.membership().is_voter(self.id) {
            Role::Learner
        } else {
            self.role
        }
    }

    /// The current term.
    pub fn current_term(&self) -> Term {
        self.log.current_term()
    }

    /// The leader of the current term, if known.
    pub fn leader_id(&self) -> Option<ServerId> {
        self.leader_id
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// The highest index applied to the state machine.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// The index of the last log entry.
    pub fn last_log_index(&self) -> LogIndex {
        self.log.latest_log_index()
    }

    /// The highest index known durable in this server's own log.
    pub fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    /// Leader only: the match index of `peer`, `None` otherwise.
    pub fn match_index(&self, peer: ServerId) -> Option<LogIndex> {
        self.progress.get(&peer).map(|p| p.match_index)
    }

    /// Leader only: the replication progress of `peer`.
    pub fn progress(&self, peer: ServerId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    /// A snapshot of this server's state for operators and tests.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        self.metrics_with(self.membership().clone())
    }

    /// Brings `metrics` up to date, as [`Consensus::metrics`] would make them, copying the
    /// configuration only if it changed: for a caller that publishes metrics every turn.
    pub fn refresh_metrics(&self, metrics: &mut crate::metrics::Metrics) {
        let mut membership = std::mem::take(&mut metrics.membership);
        if membership != *self.membership() {
            membership = self.membership().clone();
        }
        *metrics = self.metrics_with(membership);
    }

    fn metrics_with(&self, membership: Membership) -> crate::metrics::Metrics {
        crate::metrics::Metrics {
            id: self.id,
            role: self.role(),
            current_term: self.current_term(),
            current_leader: self.leader_id,
            last_log_index: self.log.latest_log_index(),
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            match_indexes: self
                .progress
                .iter()
                .map(|(&peer, progress)| (peer, progress.match_index))
                .collect(),
            snapshot_index: self
                .log
                .snapshot_meta()
                .map_or(LogIndex(0), |meta| meta.last_index),
            first_log_index: self.log.first_log_index(),
            membership,
        }
    }

    /// The replicated client session table.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The persistent log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The persistent log, for the simulator's checkers (never to write behind the core's back).
    pub(crate) fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// The state machine.
    pub fn state_machine(&self) -> &M {
        &self.state_machine
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a leader's snapshot is part way through arriving (§7).
    pub fn receiving_snapshot(&self) -> bool {
        self.incoming_snapshot.is_some()
    }

    /// Whether messages are withheld waiting for a sync.
    pub fn has_withheld_messages(&self) -> bool {
        !self.withheld.is_empty()
    }

    /// Takes the log and state machine back, e.g. to restart the server from the same log.
    pub fn into_parts(self) -> (L, M) {
        (self.log, self.state_machine)
    }

    // ---- message dispatch (§5.1: compare terms first, then act by role) ----

    fn handle_message(&mut self, from: ServerId, message: Message) -> Result<()> {
        // Any server may write to us: a leader whose configuration we have not seen yet adds us,
        // and a removed server may not know it was removed. What it can do is bounded by the
        // rules below (terms, pre-vote and the leader lease, thesis §4.2.3).
        if from == self.id || from.0 == 0 {
            log::warn!(
                "{}: ignored {} claiming to come from {from}",
                self.who(),
                message.name()
            );
            return Ok(());
        }
        let term = message.term();
        if term == Term(u64::MAX) {
            // Adopting it would leave no next term for an election (§5.1); only a faulty or
            // hostile peer sends it.
            log::warn!(
                "{}: ignored {} from {from} with term {term}",
                self.who(),
                message.name()
            );
            return Ok(());
        }
        // §9.6: pre-votes change no term; they are answered by their own rules.
        match message {
            Message::RequestVote(request) if request.pre_vote => {
                return self.handle_pre_vote(from, request);
            }
            Message::RequestVoteResponse(response) if response.pre_vote => {
                return self.handle_pre_vote_response(from, response);
            }
            _ => {}
        }
        let current_term = self.current_term();
        if term > current_term && self.in_leader_lease() {
            if let Message::RequestVote(RequestVote {
                leadership_transfer: false,
                ..
            }) = message
            {
                // §9.6, check-quorum: we heard from a live leader within the minimum election
                // timeout, so this candidate cannot be needed; its higher term is not adopted.
                log::debug!(
                    "{}: ignored RequestVote from {from} for term {term}: our leader is alive",
                    self.who()
                );
                return Ok(());
            }
        }
        if term > current_term {
            // §5.1: a higher term makes any server a follower of that term. An AppendEntries
            // names the leader; anything else leaves it unknown.
            let leader = match &message {
                Message::AppendEntries(_) => Some(from),
                _ => None,
            };
            log::debug!(
                "{}: {} from {from} carries term {term}: stepping down",
                self.who(),
                message.name()
            );
            self.become_follower(term, leader)?;
        } else if term < current_term {
            // §5.1: a stale message is never acted on; requests get our term so that the stale
            // sender steps down.
            log::debug!(
                "{}: ignored stale {} from {from} of term {term}",
                self.who(),
                message.name()
            );
            match message {
                Message::RequestVote(_) => self.send(
                    from,
                    Message::RequestVoteResponse(RequestVoteResponse {
                        term: current_term,
                        vote_granted: false,
                        pre_vote: false,
                    }),
                ),
                Message::AppendEntries(_) => self.send(
                    from,
                    Message::AppendEntriesResponse(AppendEntriesResponse {
                        term: current_term,
                        success: false,
                        match_index: LogIndex(0),
                        conflict_term: Term(0),
                        conflict_index: LogIndex(0),
                        last_log_index: self.log.latest_log_index(),
                        read_round: 0,
                    }),
                ),
                _ => {}
            }
            return Ok(());
        }
        match message {
            Message::RequestVote(request) => self.handle_request_vote(from, request),
            Message::RequestVoteResponse(response) => {
                self.handle_request_vote_response(from, response)
            }
            Message::AppendEntries(request) => self.handle_append_entries(from, request),
            Message::AppendEntriesResponse(response) => {
                self.handle_append_entries_response(from, response)
            }
            Message::InstallSnapshot(request) => self.handle_install_snapshot(from, request),
            Message::InstallSnapshotResponse(response) => {
                self.handle_install_snapshot_response(from, response)
            }
            Message::TimeoutNow(request) => self.handle_timeout_now(from, request),
        }
    }

    fn on_peer_connected(&mut self, peer: ServerId) -> Result<()> {
        if !self.peers.contains(&peer) {
            return Ok(());
        }
        match self.role {
            Role::Leader => {
                // Whatever was in flight may be gone with the old connection: probe again, or
                // resume a snapshot transfer from what the follower acknowledged.
                if let Some(progress) = self.progress.get_mut(&peer) {
                    if let progress::ReplicationState::Snapshot { .. } = progress.state {
                        progress.resume_snapshot();
                    } else {
                        progress.become_probe(progress.match_index.next());
                    }
                }
                self.send_appends(peer)
            }
            Role::Candidate => {
                if !self.votes_granted.contains(&peer) && !self.votes_rejected.contains(&peer) {
                    let request = self.vote_request();
                    self.send(peer, request);
                }
                Ok(())
            }
            Role::Follower | Role::Learner => {
                if self.prevoting
                    && !self.votes_granted.contains(&peer)
                    && !self.votes_rejected.contains(&peer)
                {
                    let request = self.pre_vote_request();
                    self.send(peer, request);
                }
                Ok(())
            }
        }
    }

    // ---- role transitions: the only places `role` changes ----

    /// Becomes a follower of `term` (which must not be lower than the current one), knowing
    /// `leader` if given.
    fn become_follower(&mut self, term: Term, leader: Option<ServerId>) -> Result<()> {
        let current_term = self.current_term();
        assert!(
            term >= current_term,
            "{}: become_follower to older term {term}",
            self.who()
        );
        if term > current_term {
            self.set_current_term(term)?;
        }
        if self.role == Role::Leader {
            self.out.timers.push(TimerAction::Cancel(Timer::Heartbeat));
            self.end_transfer_on_step_down(term > current_term);
            // A deposed leader answers no read and appends no waiting proposal.
            self.abandon_reads(leader);
            for event in std::mem::take(&mut self.waiting_for_term_start) {
                let id = match event {
                    Event::Propose { id, .. } | Event::Query { id, .. } => id,
                    _ => continue,
                };
                self.out.replies.push(ClientReply {
                    id,
                    outcome: ProposalOutcome::NotLeader { leader },
                });
            }
            self.sessions_in_flight.clear();
            self.abandon_membership_change(leader);
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.votes_granted.clear();
        self.votes_rejected.clear();
        self.progress.clear();
        self.prevoting = false;
        self.leader_lease = false;
        self.campaigning_for_transfer = false;
        self.reset_election_timer();
        Ok(())
    }

    fn become_candidate(&mut self) -> Result<()> {
        assert!(
            self.role != Role::Leader,
            "{}: a leader does not campaign",
            self.who()
        );
        let term = self.current_term().next();
        self.set_current_term(term)?;
        // §5.2: vote for ourselves, durably before any vote request goes out.
        self.log.set_voted_for(Some(self.id))?;
        self.hard_state_unsynced = true;
        self.role = Role::Candidate;
        self.leader_id = None;
        self.prevoting = false;
        self.leader_lease = false;
        self.votes_granted.clear();
        self.votes_rejected.clear();
        self.votes_granted.insert(self.id);
        self.reset_election_timer();
        Ok(())
    }

    fn become_leader(&mut self) -> Result<()> {
        assert_eq!(
            self.role,
            Role::Candidate,
            "{}: only candidates win",
            self.who()
        );
        assert_eq!(
            self.log.voted_for(),
            Some(self.id),
            "{}: a leader voted for itself",
            self.who()
        );
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.votes_granted.clear();
        self.votes_rejected.clear();
        self.out.timers.push(TimerAction::Cancel(Timer::Election));
        self.out.timers.push(TimerAction::Set {
            timer: Timer::Heartbeat,
            after: self.config.heartbeat_interval,
        });
        if self.config.check_quorum {
            self.out.timers.push(TimerAction::Set {
                timer: Timer::Quorum,
                after: self.config.election_timeout_max,
            });
        }
        // §8: a no-op of the new term; once it commits, everything before it is committed too
        // (§5.4.2) and the leader knows its commit index is current. The first leader of a new
        // cluster writes the initial configuration instead, which does the same and puts the
        // configuration in the log (thesis §4.1).
        let noop_index = self.log.latest_log_index().next();
        let term = self.current_term();
        let entry = if self.membership_index().is_zero() {
            crate::log::Entry::configuration(term, &self.bootstrap)
        } else {
            crate::log::Entry::noop(term)
        };
        self.append_to_own_log(vec![entry])?;
        self.term_start = noop_index;
        self.sessions_in_flight.clear();
        log::info!("{}: became leader; no-op at {noop_index}", self.who());
        self.progress = self
            .peers
            .iter()
            .map(|&peer| (peer, Progress::new(noop_index)))
            .collect();
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            self.send_appends(peer)?;
        }
        // A single-server cluster commits as soon as its own write is durable.
        self.advance_commit_index()
    }

    // ---- helpers ----

    fn set_current_term(&mut self, term: Term) -> Result<()> {
        self.log.set_current_term(term)?;
        self.hard_state_unsynced = true;
        // A proposal pending from an older term can no longer be appended by us; it is kept until
        // its index is applied, when we learn whether it survived.
        Ok(())
    }

    /// Appends entries at the end of our own log (as leader, or after a follower's checks).
    fn append_to_own_log(&mut self, entries: Vec<crate::log::Entry>) -> Result<(), LogError> {
        let from = self.log.latest_log_index().next();
        if entries.is_empty() {
            return Ok(());
        }
        // Thesis §4.1: a configuration takes effect as soon as it is in the log. The entries
        // move into the log; the rare batch holding a configuration is kept to record it.
        let configurations = entries
            .iter()
            .any(|entry| entry.kind == crate::log::EntryKind::Configuration)
            .then(|| entries.clone());
        self.log.append_owned_entries(from, entries)?;
        self.entries_unsynced = true;
        if let Some(entries) = configurations {
            self.record_configurations(from, &entries);
        }
        Ok(())
    }

    /// Queues `message` for `to`, withholding it until the next sync if it depends on unsynced
    /// state: every message after a term or vote change (§5.2: the vote is durable before the
    /// reply), and every acknowledgement after an entry change (§5.3: entries are durable before
    /// the leader counts them). A leader's own appends may go at once (thesis §10.2.1).
    fn send(&mut self, to: ServerId, message: Message) {
        let leader_append =
            self.role == Role::Leader && matches!(message, Message::AppendEntries(_));
        let must_wait = self.hard_state_unsynced || (self.entries_unsynced && !leader_append);
        let envelope = Envelope { to, message };
        if must_wait {
            self.withheld.push(envelope);
        } else {
            self.out.messages.push(envelope);
        }
    }

    fn reset_election_timer(&mut self) {
        let after = self.random_election_timeout();
        self.out.timers.push(TimerAction::Set {
            timer: Timer::Election,
            after,
        });
    }

    fn take_actions(&mut self) -> Actions {
        let mut actions = std::mem::take(&mut self.out);
        actions.sync_required = self.hard_state_unsynced || self.entries_unsynced;
        actions
    }

    fn check_invariants(&mut self) {
        let snapshot = invariants::State {
            role: self.role,
            current_term: self.current_term(),
            voted_for: self.log.voted_for(),
            leader_id: self.leader_id,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            durable_index: self.durable_index,
            last_log_index: self.log.latest_log_index(),
        };
        invariants::check(self.id, &snapshot, &self.progress, &mut self.observed);
    }

    /// "n2 t7 follower", the prefix of every log line.
    fn who(&self) -> String {
        let role = match self.role() {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        };
        format!("{} t{} {role}", self.id, self.current_term())
    }
}

impl<L: PersistentLog + std::fmt::Debug, M: StateMachine> std::fmt::Debug for Consensus<L, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("current_term", &self.current_term())
            .field("commit_index", &self.commit_index)
            .field("last_applied", &self.last_applied)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemLog;
    use crate::state_machine::NullStateMachine;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn config_validation_names_the_offending_values() {
        let inverted = Config {
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(150),
            ..Config::default()
        };
        let error = inverted.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "election timeout minimum 300ms must be below its maximum 150ms"
        );
        let slow_heartbeat = Config {
            heartbeat_interval: Duration::from_millis(150),
            ..Config::default()
        };
        assert!(matches!(
            slow_heartbeat.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        for config in [
            Config {
                heartbeat_interval: Duration::ZERO,
                ..Config::default()
            },
            Config {
                append_entries_max: 0,
                ..Config::default()
            },
            Config {
                append_bytes_max: 0,
                ..Config::default()
            },
            Config {
                in_flight_appends_max: 0,
                ..Config::default()
            },
        ] {
            assert!(matches!(
                config.validate(),
                Err(ConfigError::ZeroLimit { .. })
            ));
        }
    }

    #[test]
    fn membership_must_contain_this_server_and_not_zero() {
        let build = |id: u64, voters: &[u64]| {
            Consensus::new(
                ServerId(id),
                voters.iter().copied().map(ServerId).collect(),
                MemLog::new(),
                NullStateMachine,
                Config::default(),
                1,
            )
        };
        assert!(build(1, &[1, 2, 3]).is_ok());
        for (id, voters) in [(4, &[1, 2, 3][..]), (0, &[0, 1]), (1, &[0, 1, 2])] {
            let error = build(id, voters).map(|_| ()).unwrap_err();
            assert!(
                error.to_string().contains("must contain this server"),
                "{error}"
            );
        }
    }

    /// A leader that cannot reach a majority stops accepting proposals at the limit instead of
    /// growing its log without bound; nothing is appended for a refused proposal.
    #[test]
    fn leader_refuses_proposals_past_uncommitted_entries_max() {
        let config = Config {
            uncommitted_entries_max: 3,
            pre_vote: false,
            ..Config::default()
        };
        let voters = vec![ServerId(1), ServerId(2), ServerId(3)];
        let mut node = Consensus::new(
            ServerId(1),
            voters,
            MemLog::new(),
            NullStateMachine,
            config,
            1,
        )
        .expect("valid");
        let _ = node.start();
        let _ = node
            .step(Event::Timeout(Timer::Election))
            .expect("campaign");
        let _ = node.sync().expect("sync");
        for peer in [2, 3] {
            let _ = node
                .step(Event::Message {
                    from: ServerId(peer),
                    message: Message::RequestVoteResponse(RequestVoteResponse {
                        term: Term(1),
                        vote_granted: true,
                        pre_vote: false,
                    }),
                })
                .expect("vote");
        }
        assert_eq!(node.role(), Role::Leader);
        // The no-op is the first uncommitted entry; two proposals fill the limit of 3.
        for id in 1..=2 {
            let actions = node
                .step(Event::ClientProposal {
                    id: ProposalId(id),
                    command: b"x".to_vec(),
                })
                .expect("propose");
            assert!(actions.replies.is_empty(), "accepted and pending");
        }
        let actions = node
            .step(Event::ClientProposal {
                id: ProposalId(3),
                command: b"x".to_vec(),
            })
            .expect("propose");
        assert_eq!(
            actions.replies,
            vec![ClientReply {
                id: ProposalId(3),
                outcome: ProposalOutcome::Overloaded {
                    uncommitted_entries_max: 3
                },
            }]
        );
        assert_eq!(node.last_log_index(), LogIndex(3), "nothing appended");
    }

    /// A message with the last possible term is ignored: adopting it would make the next
    /// election overflow the term.
    #[test]
    fn a_term_with_no_successor_is_ignored() {
        let voters = vec![ServerId(1), ServerId(2), ServerId(3)];
        let config = Config {
            pre_vote: false,
            ..Config::default()
        };
        let mut node = Consensus::new(
            ServerId(1),
            voters,
            MemLog::new(),
            NullStateMachine,
            config,
            1,
        )
        .expect("valid");
        let _ = node.start();
        let _ = node
            .step(Event::Message {
                from: ServerId(2),
                message: Message::RequestVote(RequestVote {
                    term: Term(u64::MAX),
                    candidate_id: ServerId(2),
                    last_log_index: LogIndex(0),
                    last_log_term: Term(0),
                    pre_vote: false,
                    leadership_transfer: false,
                }),
            })
            .expect("step");
        assert_eq!(node.current_term(), Term(0));
        let _ = node
            .step(Event::Timeout(Timer::Election))
            .expect("campaign");
        assert_eq!(node.current_term(), Term(1));
    }

    #[test]
    fn duplicate_voters_count_once() {
        let node = Consensus::new(
            ServerId(1),
            vec![ServerId(2), ServerId(1), ServerId(2)],
            MemLog::new(),
            NullStateMachine,
            Config::default(),
            1,
        )
        .expect("valid");
        assert_eq!(node.voters(), &[ServerId(1), ServerId(2)]);
    }
}
