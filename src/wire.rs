//! Conversion between the core's plain Rust types and the Cap'n Proto wire format of
//! `schema/messages.capnp`. The only module that names the generated code; everything that comes
//! off the wire is checked here (ids, enums, sizes) before the core sees it.

use crate::consensus::{
    AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse,
    MembershipChange, Message, RequestVote, RequestVoteResponse, ResponseMode, Role, TimeoutNow,
};
use crate::error::WireError;
use crate::log::{Entry, EntryKind, SnapshotMeta};
use crate::membership::Membership;
use crate::messages_capnp as schema;
use crate::metrics::Metrics;
use crate::types::{LogIndex, ServerId, Term};
use bytes::Bytes;
use capnp::message::{Builder, HeapAllocator, ReaderOptions, ReaderSegments};
use capnp::serialize;

/// The first message on every connection: who opened it (DESIGN.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preamble {
    /// A server dialling a peer, with its own id.
    Peer(ServerId),
    /// A client, with its random id.
    Client(u64),
}

/// A client's request, answered by exactly one [`ClientResponse`] with the same `request_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// Chosen by the client, echoed in the response.
    pub request_id: u64,
    /// What the client asks.
    pub body: RequestBody,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// Append a command to the log outside any session; answered once applied.
    Propose(Vec<u8>),
    /// A read-only question for the state machine, answered linearizably by the leader.
    Query(Vec<u8>),
    /// The server's [`Metrics`].
    Status,
    /// Open a client session (thesis §6.3).
    RegisterSession,
    /// A command inside a session, applied at most once.
    SessionPropose(SessionProposal),
    /// Hand leadership to this server (thesis §3.10).
    TransferLeadership(ServerId),
    /// Add a server (as a voter or a learner) or remove one (thesis §4.1); addresses are
    /// "ip:port".
    ChangeMembership(MembershipChange),
}

/// Request `sequence` of session `session` (see the schema's `SessionProposal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionProposal {
    /// The id the cluster gave the session.
    pub session: u64,
    /// 1, 2, 3, ... per session; a retry repeats its number.
    pub sequence: u64,
    /// The command for the state machine.
    pub command: Vec<u8>,
    /// When to answer.
    pub respond_when: ResponseMode,
}

/// A server's answer to one [`ClientRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The `request_id` of the request answered.
    pub request_id: u64,
    /// The answer.
    pub body: ResponseBody,
}

/// The answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Applied (or, for a query, answered): the state machine's reply.
    Applied(Vec<u8>),
    /// Not the leader; retry at the leader's client address.
    NotLeader {
        /// The leader.
        leader_id: ServerId,
        /// Where clients reach it ("host:port").
        leader_address: String,
    },
    /// No leader known right now: retry after a pause.
    UnknownLeader,
    /// Refused.
    Rejected {
        /// Why.
        reason: RejectionReason,
        /// In words.
        message: String,
    },
    /// The server's state.
    Status(Metrics),
    /// A session was opened with this id.
    SessionRegistered(u64),
    /// Committed at this index (for `ResponseMode::Committed`).
    Committed(LogIndex),
    /// The state machine refused the command; nothing was appended. Its error bytes.
    Refused(Vec<u8>),
    /// The session is unknown (expired or never opened); the command was not applied.
    SessionExpired(u64),
    /// Leadership went to this server, as asked.
    Transferred(ServerId),
    /// The configuration change asked for is committed, its entry at this index.
    MembershipChanged(LogIndex),
}

/// Why a request was refused (see the schema for each meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionReason {
    /// Too many uncommitted entries: retry later.
    Overloaded,
    /// Replaced by another leader's entry, never applied: retry.
    Dropped,
    /// Larger than the server accepts.
    TooLarge,
    /// The server is stopping.
    ShuttingDown,
    /// Not understood.
    BadRequest,
    /// An old duplicate: the session already applied a later request.
    Superseded,
    /// Whether it was applied cannot be told (a snapshot replaced its entry): retry in the
    /// same session.
    OutcomeUnknown,
    /// A leadership transfer could not be done.
    TransferFailed,
    /// A configuration change could not be made; the message says why.
    MembershipChangeFailed,
}

impl std::fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectionReason::Overloaded => "overloaded",
            RejectionReason::Dropped => "dropped",
            RejectionReason::TooLarge => "too large",
            RejectionReason::ShuttingDown => "shutting down",
            RejectionReason::BadRequest => "bad request",
            RejectionReason::Superseded => "superseded",
            RejectionReason::OutcomeUnknown => "outcome unknown",
            RejectionReason::TransferFailed => "transfer failed",
            RejectionReason::MembershipChangeFailed => "membership change failed",
        })
    }
}

/// Words of an InstallSnapshot message besides its configuration and data: the root pointer (1),
/// `Message` (1 data word, 1 pointer), `InstallSnapshot` (3 + 2) and `SnapshotMeta` (4 + 1).
const INSTALL_SNAPSHOT_FIXED_WORDS: u64 = 13;

/// The most bytes an InstallSnapshot frame from [`encode_message`] takes besides its chunk of
/// snapshot data and its configuration: the segment table (8), the message's structs (104), and
/// up to 7 bytes each padding the chunk and the configuration to whole words. The core counts
/// the configuration toward `snapshot_chunk_bytes`, so a peer's message limit must hold
/// `snapshot_chunk_bytes` plus this.
pub fn install_snapshot_overhead_bytes() -> u64 {
    (INSTALL_SNAPSHOT_FIXED_WORDS + 1) * 8 + 7 + 7
}

// ---- encoding ----

fn to_frame(message: &Builder<HeapAllocator>) -> Vec<u8> {
    serialize::write_message_to_words(message)
}

/// Words of a message's fixed parts (root pointer, union, a small struct and its pointers) in
/// the first-segment estimates below.
const MESSAGE_FIXED_WORDS: u64 = 16;

/// An allocator whose first segment holds a message of about `words` words. The default first
/// segment is 8 KiB, zeroed on every message: most messages here are a few dozen bytes, and a
/// batch of entries may be far more. An estimate too small only adds a segment.
fn allocator_for(words: u64) -> HeapAllocator {
    // Cap'n Proto's largest segment (2^29 words); anything bigger spills over into further
    // segments, which the allocator adds as needed.
    let words = u32::try_from(words.min(1 << 29)).unwrap_or(1 << 29);
    HeapAllocator::new().first_segment_words(words)
}

/// Words a byte field of `bytes` bytes takes (padded to a word).
fn data_words(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(8)
}

/// Encodes a preamble as one frame.
pub fn encode_preamble(preamble: &Preamble) -> Vec<u8> {
    to_frame(&preamble_message(preamble))
}

/// Builds a preamble as a Cap'n Proto message, for writers that do their own framing (such as
/// `capnp_futures::serialize::write_message`). [`encode_preamble`] is this message, framed.
pub fn preamble_message(preamble: &Preamble) -> Builder<HeapAllocator> {
    let mut message = Builder::new_default();
    let mut root = message.init_root::<schema::connection_preamble::Builder>();
    match *preamble {
        Preamble::Peer(id) => root.set_peer(id.0),
        Preamble::Client(id) => root.set_client(id),
    }
    message
}

/// Encodes a peer message as one frame.
pub fn encode_message(message: &Message) -> Vec<u8> {
    to_frame(&peer_message(message))
}

/// Builds a peer message as a Cap'n Proto message, for writers that frame it into a buffer of
/// their own (`capnp::serialize::write_message`). [`encode_message`] is this message, framed.
pub fn peer_message(message: &Message) -> Builder<HeapAllocator> {
    // Every message is built in one segment sized for it up front: no growing through ever
    // larger segments, and a single-segment frame for the reader.
    let words = match message {
        Message::InstallSnapshot(m) => INSTALL_SNAPSHOT_FIXED_WORDS
            .saturating_add(data_words(m.meta.membership.encode().len()))
            .saturating_add(data_words(m.data.len())),
        // Each entry: a struct of two data words and a pointer, then its data.
        Message::AppendEntries(m) => m.entries.iter().fold(MESSAGE_FIXED_WORDS, |words, entry| {
            words.saturating_add(3 + data_words(entry.data.len()))
        }),
        _ => MESSAGE_FIXED_WORDS,
    };
    let mut builder = Builder::new(allocator_for(words));
    let root = builder.init_root::<schema::message::Builder>();
    match message {
        Message::RequestVote(m) => {
            let mut out = root.init_request_vote();
            out.set_term(m.term.0);
            out.set_candidate_id(m.candidate_id.0);
            out.set_last_log_index(m.last_log_index.0);
            out.set_last_log_term(m.last_log_term.0);
            out.set_pre_vote(m.pre_vote);
            out.set_leadership_transfer(m.leadership_transfer);
        }
        Message::RequestVoteResponse(m) => {
            let mut out = root.init_request_vote_response();
            out.set_term(m.term.0);
            out.set_vote_granted(m.vote_granted);
            out.set_pre_vote(m.pre_vote);
        }
        Message::AppendEntries(m) => {
            let mut out = root.init_append_entries();
            out.set_term(m.term.0);
            out.set_leader_id(m.leader_id.0);
            out.set_prev_log_index(m.prev_log_index.0);
            out.set_prev_log_term(m.prev_log_term.0);
            out.set_leader_commit(m.leader_commit.0);
            out.set_read_round(m.read_round);
            let count = u32::try_from(m.entries.len()).expect("batches are far below 2^32 entries");
            let mut entries = out.init_entries(count);
            for (position, entry) in m.entries.iter().enumerate() {
                let mut slot = entries.reborrow().get(position as u32);
                slot.set_term(entry.term.0);
                slot.set_kind(match entry.kind {
                    EntryKind::Noop => schema::EntryKind::Noop,
                    EntryKind::Command => schema::EntryKind::Command,
                    EntryKind::RegisterSession => schema::EntryKind::RegisterSession,
                    EntryKind::SessionCommand => schema::EntryKind::SessionCommand,
                    EntryKind::Configuration => schema::EntryKind::Configuration,
                });
                slot.set_data(&entry.data);
            }
        }
        Message::InstallSnapshot(m) => {
            let mut out = root.init_install_snapshot();
            out.set_term(m.term.0);
            out.set_leader_id(m.leader_id.0);
            out.set_offset(m.offset);
            encode_snapshot_meta(&m.meta, out.reborrow().init_meta());
            out.set_data(&m.data);
        }
        Message::TimeoutNow(m) => {
            let mut out = root.init_timeout_now();
            out.set_term(m.term.0);
            out.set_leader_id(m.leader_id.0);
        }
        Message::InstallSnapshotResponse(m) => {
            let mut out = root.init_install_snapshot_response();
            out.set_term(m.term.0);
            out.set_last_index(m.last_index.0);
            out.set_received(m.received);
            out.set_done(m.done);
            out.set_match_index(m.match_index.0);
        }
        Message::AppendEntriesResponse(m) => {
            let mut out = root.init_append_entries_response();
            out.set_term(m.term.0);
            out.set_success(m.success);
            out.set_match_index(m.match_index.0);
            out.set_conflict_term(m.conflict_term.0);
            out.set_conflict_index(m.conflict_index.0);
            out.set_last_log_index(m.last_log_index.0);
            out.set_read_round(m.read_round);
        }
    }
    builder
}

fn encode_snapshot_meta(meta: &SnapshotMeta, mut out: schema::snapshot_meta::Builder<'_>) {
    out.set_last_index(meta.last_index.0);
    out.set_last_term(meta.last_term.0);
    out.set_size(meta.size);
    out.set_checksum(meta.checksum);
    out.set_configuration(&meta.membership.encode());
}

/// Encodes a client request as one frame.
pub fn encode_request(request: &ClientRequest) -> Vec<u8> {
    to_frame(&request_message(request))
}

/// Builds a client request as a Cap'n Proto message, for writers that do their own framing
/// (such as `capnp_futures::serialize::write_message`). [`encode_request`] is this message,
/// framed.
pub fn request_message(request: &ClientRequest) -> Builder<HeapAllocator> {
    let payload_bytes = match &request.body {
        RequestBody::Propose(command) => command.len(),
        RequestBody::Query(query) => query.len(),
        RequestBody::SessionPropose(proposal) => proposal.command.len(),
        RequestBody::ChangeMembership(
            MembershipChange::AddServer { address, .. }
            | MembershipChange::AddLearner { address, .. },
        ) => address.len(),
        _ => 0,
    };
    let mut builder = Builder::new(allocator_for(
        MESSAGE_FIXED_WORDS + data_words(payload_bytes),
    ));
    let mut root = builder.init_root::<schema::client_request::Builder>();
    root.set_request_id(request.request_id);
    match &request.body {
        RequestBody::Propose(command) => root.set_propose(command),
        RequestBody::Query(query) => root.set_query(query),
        RequestBody::Status => root.set_status(()),
        RequestBody::RegisterSession => root.set_register_session(()),
        RequestBody::TransferLeadership(to) => root.set_transfer_leadership(to.0),
        RequestBody::ChangeMembership(MembershipChange::AddServer { id, address }) => {
            let mut out = root.init_add_server();
            out.set_id(id.0);
            out.set_address(address.as_str());
        }
        RequestBody::ChangeMembership(MembershipChange::AddLearner { id, address }) => {
            let mut out = root.init_add_learner();
            out.set_id(id.0);
            out.set_address(address.as_str());
        }
        RequestBody::ChangeMembership(MembershipChange::RemoveServer { id }) => {
            root.set_remove_server(id.0);
        }
        RequestBody::SessionPropose(proposal) => {
            let mut out = root.init_session_propose();
            out.set_session(proposal.session);
            out.set_sequence(proposal.sequence);
            out.set_command(&proposal.command);
            out.set_respond_when(match proposal.respond_when {
                ResponseMode::Applied => schema::ResponseMode::Applied,
                ResponseMode::Committed => schema::ResponseMode::Committed,
            });
        }
    }
    builder
}

/// Encodes a client response as one frame.
pub fn encode_response(response: &ClientResponse) -> Vec<u8> {
    to_frame(&response_message(response))
}

/// Builds a client response as a Cap'n Proto message, for writers that frame it into a buffer
/// of their own. [`encode_response`] is this message, framed.
pub fn response_message(response: &ClientResponse) -> Builder<HeapAllocator> {
    let words = match &response.body {
        ResponseBody::Applied(bytes) | ResponseBody::Refused(bytes) => {
            MESSAGE_FIXED_WORDS + data_words(bytes.len())
        }
        ResponseBody::Rejected { message, .. } => MESSAGE_FIXED_WORDS + data_words(message.len()),
        ResponseBody::NotLeader { leader_address, .. } => {
            MESSAGE_FIXED_WORDS + data_words(leader_address.len())
        }
        // Metrics with the whole configuration: let the allocator grow as it needs.
        ResponseBody::Status(_) => 1024,
        _ => MESSAGE_FIXED_WORDS,
    };
    let mut builder = Builder::new(allocator_for(words));
    let mut root = builder.init_root::<schema::client_response::Builder>();
    root.set_request_id(response.request_id);
    match &response.body {
        ResponseBody::Applied(result) => root.set_applied(result),
        ResponseBody::NotLeader {
            leader_id,
            leader_address,
        } => {
            let mut hint = root.init_not_leader();
            hint.set_leader_id(leader_id.0);
            hint.set_leader_address(leader_address.as_str());
        }
        ResponseBody::UnknownLeader => root.set_unknown_leader(()),
        ResponseBody::Rejected { reason, message } => {
            let mut rejection = root.init_rejected();
            rejection.set_reason(match reason {
                RejectionReason::Overloaded => schema::RejectionReason::Overloaded,
                RejectionReason::Dropped => schema::RejectionReason::Dropped,
                RejectionReason::TooLarge => schema::RejectionReason::TooLarge,
                RejectionReason::ShuttingDown => schema::RejectionReason::ShuttingDown,
                RejectionReason::BadRequest => schema::RejectionReason::BadRequest,
                RejectionReason::Superseded => schema::RejectionReason::Superseded,
                RejectionReason::OutcomeUnknown => schema::RejectionReason::OutcomeUnknown,
                RejectionReason::TransferFailed => schema::RejectionReason::TransferFailed,
                RejectionReason::MembershipChangeFailed => {
                    schema::RejectionReason::MembershipChangeFailed
                }
            });
            rejection.set_message(message.as_str());
        }
        ResponseBody::Status(metrics) => {
            let mut status = root.init_status();
            status.set_server_id(metrics.id.0);
            status.set_role(match metrics.role {
                Role::Follower => schema::Role::Follower,
                Role::Candidate => schema::Role::Candidate,
                Role::Leader => schema::Role::Leader,
                Role::Learner => schema::Role::Learner,
            });
            status.set_configuration(&metrics.membership.encode());
            status.set_current_term(metrics.current_term.0);
            status.set_leader_id(metrics.current_leader.map_or(0, |id| id.0));
            status.set_last_log_index(metrics.last_log_index.0);
            status.set_commit_index(metrics.commit_index.0);
            status.set_last_applied(metrics.last_applied.0);
            status.set_snapshot_index(metrics.snapshot_index.0);
            status.set_first_log_index(metrics.first_log_index.0);
            let count = u32::try_from(metrics.match_indexes.len()).expect("few peers");
            let mut peers = status.init_peers(count);
            for (position, (peer, match_index)) in metrics.match_indexes.iter().enumerate() {
                let mut slot = peers.reborrow().get(position as u32);
                slot.set_server_id(peer.0);
                slot.set_match_index(match_index.0);
            }
        }
        ResponseBody::SessionRegistered(session) => root.set_session_registered(*session),
        ResponseBody::Committed(index) => root.set_committed(index.0),
        ResponseBody::Refused(error) => root.set_refused(error),
        ResponseBody::SessionExpired(session) => root.set_session_expired(*session),
        ResponseBody::Transferred(to) => root.set_transferred(to.0),
        ResponseBody::MembershipChanged(index) => root.set_membership_changed(index.0),
    }
    builder
}

// ---- decoding: every value is checked ----

fn reader_options(frame: &[u8]) -> ReaderOptions {
    reader_options_for_bytes(frame.len())
}

fn reader_options_for_bytes(bytes: usize) -> ReaderOptions {
    let mut options = ReaderOptions::new();
    // Bound the work a message can cause to a small multiple of its size (no amplification).
    options.traversal_limit_in_words(Some(bytes / 8 * 4 + 1024));
    options.nesting_limit(16);
    options
}

/// Options for reading messages straight off a stream with a reader that does its own framing
/// (such as `capnp_futures::serialize::read_message`): a message announcing more than
/// `message_bytes_max` bytes is refused from its segment table, before anything is allocated
/// for it. Decode what it reads with [`decode_response_message`], which checks the content as
/// [`decode_response`] does.
pub fn stream_reader_options(message_bytes_max: u64) -> ReaderOptions {
    let words = usize::try_from(message_bytes_max / 8).unwrap_or(usize::MAX);
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(Some(words));
    options.nesting_limit(16);
    options
}

fn read(frame: &[u8]) -> Result<capnp::message::Reader<serialize::OwnedSegments>, WireError> {
    let mut input = frame;
    Ok(serialize::read_message(&mut input, reader_options(frame))?)
}

fn server_id(field: &'static str, value: u64) -> Result<ServerId, WireError> {
    if value == 0 {
        return Err(WireError::Invalid {
            field,
            reason: "server id 0 is reserved for \"none\"".to_owned(),
        });
    }
    Ok(ServerId(value))
}

/// A configuration in its byte encoding, checked.
fn membership(field: &'static str, bytes: &[u8]) -> Result<Membership, WireError> {
    Membership::decode(bytes).map_err(|reason| WireError::Invalid { field, reason })
}

fn not_in_schema(field: &'static str) -> impl Fn(capnp::NotInSchema) -> WireError {
    move |capnp::NotInSchema(value)| WireError::NotInSchema { field, value }
}

/// Decodes a preamble frame.
///
/// # Errors
/// A [`WireError`] naming what was wrong.
pub fn decode_preamble(frame: &[u8]) -> Result<Preamble, WireError> {
    let message = read(frame)?;
    let root = message.get_root::<schema::connection_preamble::Reader>()?;
    match root.which().map_err(not_in_schema("ConnectionPreamble"))? {
        schema::connection_preamble::Which::Peer(id) => Ok(Preamble::Peer(server_id("peer", id)?)),
        schema::connection_preamble::Which::Client(id) => Ok(Preamble::Client(id)),
    }
}

/// Decodes a peer message frame.
///
/// # Errors
/// A [`WireError`] naming what was wrong.
pub fn decode_message(frame: &[u8]) -> Result<Message, WireError> {
    let decoded = decode_message_fields(frame)?;
    // A term with no successor would make the next election overflow (§5.1: terms only grow by
    // one). No honest cluster gets there, so such a message is malformed.
    if decoded.term() == Term(u64::MAX) {
        return Err(WireError::Invalid {
            field: "term",
            reason: format!("{} leaves no next term", u64::MAX),
        });
    }
    Ok(decoded)
}

/// The smallest an `Entry` can be on the wire: a struct of two data words and one pointer.
const ENTRY_WIRE_BYTES_MIN: usize = 24;

fn decode_message_fields(frame: &[u8]) -> Result<Message, WireError> {
    use schema::message::Which;
    let message = read(frame)?;
    let root = message.get_root::<schema::message::Reader>()?;
    Ok(match root.which().map_err(not_in_schema("Message"))? {
        Which::RequestVote(m) => {
            let m = m?;
            Message::RequestVote(RequestVote {
                term: Term(m.get_term()),
                candidate_id: server_id("candidateId", m.get_candidate_id())?,
                last_log_index: LogIndex(m.get_last_log_index()),
                last_log_term: Term(m.get_last_log_term()),
                pre_vote: m.get_pre_vote(),
                leadership_transfer: m.get_leadership_transfer(),
            })
        }
        Which::RequestVoteResponse(m) => {
            let m = m?;
            Message::RequestVoteResponse(RequestVoteResponse {
                term: Term(m.get_term()),
                vote_granted: m.get_vote_granted(),
                pre_vote: m.get_pre_vote(),
            })
        }
        Which::AppendEntries(m) => {
            let m = m?;
            let list = m.get_entries()?;
            // Cap'n Proto lets a list of zero-sized structs claim many elements in few bytes;
            // honest entries take at least ENTRY_WIRE_BYTES_MIN each, so a longer list is forged
            // and must not make us allocate for it.
            let count = list.len() as usize;
            if count > frame.len() / ENTRY_WIRE_BYTES_MIN {
                return Err(WireError::Invalid {
                    field: "entries",
                    reason: format!(
                        "{count} entries cannot fit in a {} byte message",
                        frame.len()
                    ),
                });
            }
            let mut entries = Vec::with_capacity(count);
            for entry in list.iter() {
                let kind = match entry.get_kind().map_err(not_in_schema("Entry.kind"))? {
                    schema::EntryKind::Noop => EntryKind::Noop,
                    schema::EntryKind::Command => EntryKind::Command,
                    schema::EntryKind::RegisterSession => EntryKind::RegisterSession,
                    schema::EntryKind::SessionCommand => EntryKind::SessionCommand,
                    schema::EntryKind::Configuration => EntryKind::Configuration,
                };
                entries.push(Entry {
                    term: Term(entry.get_term()),
                    kind,
                    data: Bytes::copy_from_slice(entry.get_data()?),
                });
            }
            Message::AppendEntries(AppendEntries {
                term: Term(m.get_term()),
                leader_id: server_id("leaderId", m.get_leader_id())?,
                prev_log_index: LogIndex(m.get_prev_log_index()),
                prev_log_term: Term(m.get_prev_log_term()),
                entries,
                leader_commit: LogIndex(m.get_leader_commit()),
                read_round: m.get_read_round(),
            })
        }
        Which::AppendEntriesResponse(m) => {
            let m = m?;
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(m.get_term()),
                success: m.get_success(),
                match_index: LogIndex(m.get_match_index()),
                conflict_term: Term(m.get_conflict_term()),
                conflict_index: LogIndex(m.get_conflict_index()),
                last_log_index: LogIndex(m.get_last_log_index()),
                read_round: m.get_read_round(),
            })
        }
        Which::InstallSnapshot(m) => {
            let m = m?;
            let term = Term(m.get_term());
            let offset = m.get_offset();
            let meta = decode_snapshot_meta(m.get_meta()?, term, offset == 0)?;
            let data = m.get_data()?;
            // §7: chunks lie within the snapshot; one reaching past its announced size is
            // not part of it.
            let end = offset.checked_add(data.len() as u64);
            if end.is_none_or(|end| end > meta.size) {
                return Err(WireError::Invalid {
                    field: "InstallSnapshot.data",
                    reason: format!(
                        "{} bytes at offset {offset} reach past the snapshot's size of {} bytes",
                        data.len(),
                        meta.size
                    ),
                });
            }
            Message::InstallSnapshot(InstallSnapshot {
                term,
                leader_id: server_id("leaderId", m.get_leader_id())?,
                meta,
                offset,
                data: Bytes::copy_from_slice(data),
            })
        }
        Which::InstallSnapshotResponse(m) => {
            let m = m?;
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(m.get_term()),
                last_index: LogIndex(m.get_last_index()),
                received: m.get_received(),
                done: m.get_done(),
                match_index: LogIndex(m.get_match_index()),
            })
        }
        Which::TimeoutNow(m) => {
            let m = m?;
            Message::TimeoutNow(TimeoutNow {
                term: Term(m.get_term()),
                leader_id: server_id("TimeoutNow.leaderId", m.get_leader_id())?,
            })
        }
    })
}

/// Checks a snapshot's description from a leader of `term`: a snapshot covers at least one
/// entry, of a term no later than the leader's (a leader's log holds no later term), and its
/// configuration is well formed with at least one voter. Only the `first_chunk` carries the
/// configuration; later chunks' is empty.
fn decode_snapshot_meta(
    meta: schema::snapshot_meta::Reader<'_>,
    term: Term,
    first_chunk: bool,
) -> Result<SnapshotMeta, WireError> {
    let last_index = LogIndex(meta.get_last_index());
    let last_term = Term(meta.get_last_term());
    if last_index.0 == 0 || last_term.0 == 0 {
        return Err(WireError::Invalid {
            field: "SnapshotMeta",
            reason: format!(
                "a snapshot covers at least index 1 of a term from 1 on, not index {} of term {}",
                last_index.0, last_term.0
            ),
        });
    }
    if last_term > term {
        return Err(WireError::Invalid {
            field: "SnapshotMeta.lastTerm",
            reason: format!(
                "term {} is later than the sending leader's term {}",
                last_term.0, term.0
            ),
        });
    }
    let configuration = meta.get_configuration()?;
    let membership = if first_chunk || !configuration.is_empty() {
        membership("SnapshotMeta.configuration", configuration)?
    } else {
        Membership::default()
    };
    if first_chunk && membership.voter_count() == 0 {
        return Err(WireError::Invalid {
            field: "SnapshotMeta.configuration",
            reason: "a snapshot's configuration has at least one voter".to_owned(),
        });
    }
    Ok(SnapshotMeta {
        last_index,
        last_term,
        membership,
        size: meta.get_size(),
        checksum: meta.get_checksum(),
    })
}

/// Decodes a client request frame.
///
/// # Errors
/// A [`WireError`] naming what was wrong.
pub fn decode_request(frame: &[u8]) -> Result<ClientRequest, WireError> {
    use schema::client_request::Which;
    let message = read(frame)?;
    let root = message.get_root::<schema::client_request::Reader>()?;
    let body = match root.which().map_err(not_in_schema("ClientRequest"))? {
        Which::Propose(command) => RequestBody::Propose(command?.to_vec()),
        Which::Query(query) => RequestBody::Query(query?.to_vec()),
        Which::Status(()) => RequestBody::Status,
        Which::RegisterSession(()) => RequestBody::RegisterSession,
        Which::TransferLeadership(to) => {
            RequestBody::TransferLeadership(server_id("transferLeadership", to)?)
        }
        Which::AddServer(member) => {
            let (id, address) = new_member(member?, "addServer.id", "addServer.address")?;
            RequestBody::ChangeMembership(MembershipChange::AddServer { id, address })
        }
        Which::AddLearner(member) => {
            let (id, address) = new_member(member?, "addLearner.id", "addLearner.address")?;
            RequestBody::ChangeMembership(MembershipChange::AddLearner { id, address })
        }
        Which::RemoveServer(id) => RequestBody::ChangeMembership(MembershipChange::RemoveServer {
            id: server_id("removeServer", id)?,
        }),
        Which::SessionPropose(proposal) => {
            let proposal = proposal?;
            let sequence = proposal.get_sequence();
            if sequence == 0 {
                return Err(WireError::Invalid {
                    field: "SessionProposal.sequence",
                    reason: "sequence numbers start at 1".to_owned(),
                });
            }
            RequestBody::SessionPropose(SessionProposal {
                session: proposal.get_session(),
                sequence,
                command: proposal.get_command()?.to_vec(),
                respond_when: match proposal
                    .get_respond_when()
                    .map_err(not_in_schema("SessionProposal.respondWhen"))?
                {
                    schema::ResponseMode::Applied => ResponseMode::Applied,
                    schema::ResponseMode::Committed => ResponseMode::Committed,
                },
            })
        }
    };
    Ok(ClientRequest {
        request_id: root.get_request_id(),
        body,
    })
}

/// Decodes a client response frame.
///
/// # Errors
/// A [`WireError`] naming what was wrong.
pub fn decode_response(frame: &[u8]) -> Result<ClientResponse, WireError> {
    decode_response_fields(&read(frame)?)
}

/// Decodes a client response already read off a stream as a Cap'n Proto message (for example by
/// `capnp_futures::serialize::read_message` with [`stream_reader_options`]). The same checks as
/// [`decode_response`], under the same traversal limit for the message's size.
///
/// # Errors
/// A [`WireError`] naming what was wrong.
pub fn decode_response_message<S: ReaderSegments>(
    message: capnp::message::Reader<S>,
) -> Result<ClientResponse, WireError> {
    let bytes = message.size_in_words().saturating_mul(8);
    let message =
        capnp::message::Reader::new(message.into_segments(), reader_options_for_bytes(bytes));
    decode_response_fields(&message)
}

fn decode_response_fields<S: ReaderSegments>(
    message: &capnp::message::Reader<S>,
) -> Result<ClientResponse, WireError> {
    use schema::client_response::Which;
    let root = message.get_root::<schema::client_response::Reader>()?;
    let body = match root.which().map_err(not_in_schema("ClientResponse"))? {
        Which::Applied(result) => ResponseBody::Applied(result?.to_vec()),
        Which::NotLeader(hint) => {
            let hint = hint?;
            ResponseBody::NotLeader {
                leader_id: server_id("leaderId", hint.get_leader_id())?,
                leader_address: text(hint.get_leader_address()?, "leaderAddress")?,
            }
        }
        Which::UnknownLeader(()) => ResponseBody::UnknownLeader,
        Which::Rejected(rejection) => {
            let rejection = rejection?;
            let reason = match rejection
                .get_reason()
                .map_err(not_in_schema("Rejection.reason"))?
            {
                schema::RejectionReason::Overloaded => RejectionReason::Overloaded,
                schema::RejectionReason::Dropped => RejectionReason::Dropped,
                schema::RejectionReason::TooLarge => RejectionReason::TooLarge,
                schema::RejectionReason::ShuttingDown => RejectionReason::ShuttingDown,
                schema::RejectionReason::BadRequest => RejectionReason::BadRequest,
                schema::RejectionReason::Superseded => RejectionReason::Superseded,
                schema::RejectionReason::OutcomeUnknown => RejectionReason::OutcomeUnknown,
                schema::RejectionReason::TransferFailed => RejectionReason::TransferFailed,
                schema::RejectionReason::MembershipChangeFailed => {
                    RejectionReason::MembershipChangeFailed
                }
            };
            ResponseBody::Rejected {
                reason,
                message: text(rejection.get_message()?, "Rejection.message")?,
            }
        }
        Which::Status(status) => {
            let status = status?;
            let role = match status.get_role().map_err(not_in_schema("Status.role"))? {
                schema::Role::Follower => Role::Follower,
                schema::Role::Candidate => Role::Candidate,
                schema::Role::Leader => Role::Leader,
                schema::Role::Learner => Role::Learner,
            };
            let mut match_indexes = std::collections::BTreeMap::new();
            for peer in status.get_peers()?.iter() {
                match_indexes.insert(
                    server_id("PeerStatus.serverId", peer.get_server_id())?,
                    LogIndex(peer.get_match_index()),
                );
            }
            ResponseBody::Status(Metrics {
                id: server_id("Status.serverId", status.get_server_id())?,
                role,
                current_term: Term(status.get_current_term()),
                current_leader: match status.get_leader_id() {
                    0 => None,
                    id => Some(ServerId(id)),
                },
                last_log_index: LogIndex(status.get_last_log_index()),
                commit_index: LogIndex(status.get_commit_index()),
                last_applied: LogIndex(status.get_last_applied()),
                match_indexes,
                snapshot_index: LogIndex(status.get_snapshot_index()),
                first_log_index: LogIndex(status.get_first_log_index()),
                membership: membership("Status.configuration", status.get_configuration()?)?,
            })
        }
        Which::SessionRegistered(session) => ResponseBody::SessionRegistered(session),
        Which::Committed(index) => ResponseBody::Committed(LogIndex(index)),
        Which::Refused(error) => ResponseBody::Refused(error?.to_vec()),
        Which::SessionExpired(session) => ResponseBody::SessionExpired(session),
        Which::Transferred(to) => ResponseBody::Transferred(server_id("transferred", to)?),
        Which::MembershipChanged(index) => ResponseBody::MembershipChanged(LogIndex(index)),
    };
    Ok(ClientResponse {
        request_id: root.get_request_id(),
        body,
    })
}

/// A server to add: a real id and an address a configuration can hold (not empty, at most
/// [`ADDRESS_BYTES_MAX`](crate::membership::ADDRESS_BYTES_MAX) bytes of UTF-8). Whether the
/// address is one a server can dial is the server's to judge.
fn new_member(
    member: schema::new_member::Reader<'_>,
    id_field: &'static str,
    address_field: &'static str,
) -> Result<(ServerId, String), WireError> {
    let id = server_id(id_field, member.get_id())?;
    let address = member.get_address()?;
    // Checked before the text is copied, so an oversized address costs nothing.
    let length = address.len();
    if length > crate::membership::ADDRESS_BYTES_MAX {
        return Err(WireError::Invalid {
            field: address_field,
            reason: format!(
                "address of {length} bytes is longer than the limit of {} bytes",
                crate::membership::ADDRESS_BYTES_MAX
            ),
        });
    }
    let address = text(address, address_field)?;
    if address.is_empty() {
        return Err(WireError::Invalid {
            field: address_field,
            reason: format!("{id} needs an address to be reached at"),
        });
    }
    Ok((id, address))
}

fn text(reader: capnp::text::Reader<'_>, field: &'static str) -> Result<String, WireError> {
    reader.to_string().map_err(|error| WireError::Invalid {
        field,
        reason: format!("not UTF-8: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments in a frame: its first word holds their count minus one.
    fn segments(frame: &[u8]) -> u32 {
        u32::from_le_bytes(frame[..4].try_into().expect("a frame header")) + 1
    }

    /// Messages are built in one segment sized for them: a batch of entries, a small response
    /// and a request each come out as one segment, none padded to the 8 KiB default.
    #[test]
    fn messages_are_built_in_one_segment_of_their_size() {
        let entries: Vec<Entry> = (0..100)
            .map(|n| Entry::command(Term(3), vec![b'x'; 90 + n % 20]))
            .collect();
        let data_bytes: usize = entries.iter().map(|entry| entry.data.len()).sum();
        let batch = encode_message(&Message::AppendEntries(AppendEntries {
            term: Term(3),
            leader_id: ServerId(1),
            prev_log_index: LogIndex(9),
            prev_log_term: Term(2),
            entries,
            leader_commit: LogIndex(9),
            read_round: 4,
        }));
        assert_eq!(segments(&batch), 1);
        assert!(
            batch.len() < data_bytes + 100 * 40 + 256,
            "{} bytes",
            batch.len()
        );
        let response = encode_response(&ClientResponse {
            request_id: 7,
            body: ResponseBody::Applied(vec![b'r'; 300]),
        });
        assert_eq!(segments(&response), 1);
        assert!(response.len() < 300 + 128, "{} bytes", response.len());
        let request = encode_request(&ClientRequest {
            request_id: 7,
            body: RequestBody::Propose(vec![b'c'; 500]),
        });
        assert_eq!(segments(&request), 1);
        assert!(request.len() < 500 + 128, "{} bytes", request.len());
    }

    #[test]
    fn every_message_round_trips() {
        let messages = vec![
            Message::RequestVote(RequestVote {
                term: Term(7),
                candidate_id: ServerId(2),
                last_log_index: LogIndex(40),
                last_log_term: Term(6),
                pre_vote: true,
                leadership_transfer: false,
            }),
            Message::RequestVoteResponse(RequestVoteResponse {
                term: Term(7),
                vote_granted: true,
                pre_vote: true,
            }),
            Message::AppendEntries(AppendEntries {
                term: Term(7),
                leader_id: ServerId(1),
                prev_log_index: LogIndex(3),
                prev_log_term: Term(5),
                entries: vec![
                    Entry::noop(Term(7)),
                    Entry::command(Term(7), b"put a b"),
                    Entry::register_session(Term(7)),
                    Entry::session_command(Term(7), 4, 1, b"put c d"),
                ],
                leader_commit: LogIndex(2),
                read_round: 11,
            }),
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(7),
                success: false,
                match_index: LogIndex(0),
                conflict_term: Term(5),
                conflict_index: LogIndex(3),
                last_log_index: LogIndex(9),
                read_round: 11,
            }),
            Message::InstallSnapshot(snapshot_chunk(b"the first chunk".to_vec(), 0)),
            Message::InstallSnapshot(InstallSnapshot {
                // The last chunk: it ends at the snapshot's size.
                offset: 85,
                ..snapshot_chunk(vec![9; 15], 0)
            }),
            Message::InstallSnapshot(InstallSnapshot {
                // An empty snapshot travels as one empty chunk.
                meta: SnapshotMeta {
                    size: 0,
                    checksum: 0,
                    ..snapshot_meta(3)
                },
                ..snapshot_chunk(Vec::new(), 0)
            }),
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(7),
                last_index: LogIndex(120),
                received: 4096,
                done: false,
                match_index: LogIndex(0),
            }),
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(7),
                last_index: LogIndex(120),
                received: 100,
                done: true,
                match_index: LogIndex(120),
            }),
        ];
        for message in messages {
            let frame = encode_message(&message);
            assert_eq!(decode_message(&frame).expect("decodes"), message);
        }
    }

    /// The description of a 100-byte snapshot through index 120 of term 6, with `voters`
    /// members.
    fn snapshot_meta(voters: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_index: LogIndex(120),
            last_term: Term(6),
            membership: Membership::from_voters((1..=voters).map(ServerId)),
            size: 100,
            checksum: 0x1234_5678,
        }
    }

    /// A chunk of [`snapshot_meta`]'s snapshot (three voters) from leader 1 in term 7 at
    /// `offset`, sized to hold `data`.
    fn snapshot_chunk(data: Vec<u8>, offset: u64) -> InstallSnapshot {
        InstallSnapshot {
            term: Term(7),
            leader_id: ServerId(1),
            meta: SnapshotMeta {
                size: (offset + data.len() as u64).max(100),
                ..snapshot_meta(3)
            },
            offset,
            data: Bytes::from(data),
        }
    }

    /// New messages take new ordinals: a peer of an older version must still read every
    /// message it knows by the same discriminant (the Message union's, in the word after the
    /// root pointer of a single-segment frame).
    #[test]
    fn peer_message_ordinals_never_move() {
        let response = AppendEntriesResponse {
            term: Term(1),
            success: true,
            match_index: LogIndex(1),
            conflict_term: Term(0),
            conflict_index: LogIndex(0),
            last_log_index: LogIndex(1),
            read_round: 0,
        };
        let ordinals = [
            (
                Message::RequestVote(RequestVote {
                    term: Term(1),
                    candidate_id: ServerId(1),
                    last_log_index: LogIndex(0),
                    last_log_term: Term(0),
                    pre_vote: false,
                    leadership_transfer: false,
                }),
                0,
            ),
            (
                Message::RequestVoteResponse(RequestVoteResponse {
                    term: Term(1),
                    vote_granted: true,
                    pre_vote: false,
                }),
                1,
            ),
            (
                Message::AppendEntries(AppendEntries {
                    term: Term(1),
                    leader_id: ServerId(1),
                    prev_log_index: LogIndex(0),
                    prev_log_term: Term(0),
                    entries: Vec::new(),
                    leader_commit: LogIndex(0),
                    read_round: 0,
                }),
                2,
            ),
            (Message::AppendEntriesResponse(response), 3),
            (Message::InstallSnapshot(snapshot_chunk(vec![1; 8], 0)), 4),
            (
                Message::InstallSnapshotResponse(InstallSnapshotResponse {
                    term: Term(1),
                    last_index: LogIndex(1),
                    received: 0,
                    done: false,
                    match_index: LogIndex(0),
                }),
                5,
            ),
        ];
        for (message, ordinal) in ordinals {
            let frame = encode_message(&message);
            assert_eq!(frame[..4], [0; 4], "{} is one segment", message.name());
            let discriminant = u16::from_le_bytes([frame[16], frame[17]]);
            assert_eq!(discriminant, ordinal, "{}", message.name());
        }
        // A union member from a later version is refused by name, not misread.
        let mut future = encode_message(&Message::RequestVoteResponse(RequestVoteResponse {
            term: Term(1),
            vote_granted: true,
            pre_vote: false,
        }));
        future[16] = 7;
        let error = decode_message(&future).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown value in field Message: 7"),
            "{error}"
        );
    }

    /// A full chunk of the default size, with a large membership, is one segment (no growth
    /// through doubling segments), fits in `snapshot_chunk_bytes` plus the documented overhead,
    /// passes a frame reader of exactly that limit, and round-trips byte for byte.
    #[test]
    fn a_full_size_snapshot_chunk_round_trips_within_the_overhead() {
        // The overhead is exact up to the paddings of the chunk and the configuration, for
        // every length mod 8 of each.
        for (length, voters) in [(0, 1), (1, 1), (7, 3), (8, 5), (9, 7), (1000, 2)] {
            for address_length in [0, 1, 7, 100, crate::membership::ADDRESS_BYTES_MAX] {
                let membership = (1..=voters).fold(Membership::default(), |members, id| {
                    members.with_voter(ServerId(id), "a".repeat(address_length))
                });
                let membership_bytes = membership.encode().len() as u64;
                let chunk = InstallSnapshot {
                    meta: SnapshotMeta {
                        membership,
                        ..snapshot_meta(voters)
                    },
                    ..snapshot_chunk(vec![1; length], 0)
                };
                let frame = encode_message(&Message::InstallSnapshot(chunk));
                assert_eq!(frame[..4], [0; 4], "one segment");
                let bound = length as u64 + membership_bytes + install_snapshot_overhead_bytes();
                assert!(frame.len() as u64 <= bound, "{length}: {}", frame.len());
                assert!(frame.len() as u64 + 16 > bound, "{length}: {}", frame.len());
            }
        }
        // A chunk as the core cuts it: the configuration's bytes count toward the chunk size.
        let membership = Membership::from_voters((1..=1_000).map(ServerId));
        let chunk_bytes = crate::consensus::Config::default().snapshot_chunk_bytes;
        let data: Vec<u8> = (0..chunk_bytes - membership.encode().len() as u64)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let message = Message::InstallSnapshot(InstallSnapshot {
            term: Term(9),
            leader_id: ServerId(4),
            meta: SnapshotMeta {
                last_index: LogIndex(1_000_000),
                last_term: Term(9),
                membership,
                size: 5 * chunk_bytes + 3,
                checksum: u32::MAX,
            },
            offset: 4 * chunk_bytes,
            data: Bytes::from(data),
        });
        let frame = encode_message(&message);
        assert_eq!(frame[..4], [0; 4], "one segment");
        let limit = chunk_bytes + install_snapshot_overhead_bytes();
        assert!(
            frame.len() as u64 <= limit,
            "{} bytes, limit {limit}",
            frame.len()
        );
        let mut reader = crate::framing::FrameReader::new(limit);
        reader.extend(&frame);
        let framed = reader
            .next_frame()
            .expect("within the limit")
            .expect("whole");
        assert_eq!(decode_message(&framed).expect("decodes"), message);
        // The last byte of the snapshot is reachable, and not one more.
        let mut last = snapshot_chunk(vec![7], 99);
        assert!(decode_message(&encode_message(&Message::InstallSnapshot(last.clone()))).is_ok());
        last.offset = 100;
        assert!(decode_message(&encode_message(&Message::InstallSnapshot(last))).is_err());
    }

    #[test]
    fn malformed_snapshot_chunks_are_refused_with_reasons() {
        let chunk = snapshot_chunk(vec![5; 10], 0);
        let meta = chunk.meta.clone();
        let cases: Vec<(InstallSnapshot, &str)> = vec![
            (
                InstallSnapshot {
                    offset: 95,
                    ..chunk.clone()
                },
                "10 bytes at offset 95 reach past the snapshot's size of 100 bytes",
            ),
            (
                InstallSnapshot {
                    offset: u64::MAX - 3,
                    ..chunk.clone()
                },
                "reach past the snapshot's size",
            ),
            (
                InstallSnapshot {
                    leader_id: ServerId(0),
                    ..chunk.clone()
                },
                "invalid leaderId: server id 0",
            ),
            (
                InstallSnapshot {
                    meta: SnapshotMeta {
                        last_index: LogIndex(0),
                        ..meta.clone()
                    },
                    ..chunk.clone()
                },
                "at least index 1",
            ),
            (
                InstallSnapshot {
                    meta: SnapshotMeta {
                        last_term: Term(0),
                        ..meta.clone()
                    },
                    ..chunk.clone()
                },
                "of a term from 1 on",
            ),
            (
                InstallSnapshot {
                    meta: SnapshotMeta {
                        last_term: Term(8),
                        ..meta.clone()
                    },
                    ..chunk.clone()
                },
                "term 8 is later than the sending leader's term 7",
            ),
            (
                InstallSnapshot {
                    meta: SnapshotMeta {
                        membership: Membership::default().with_learner(ServerId(2), "b:1"),
                        ..meta.clone()
                    },
                    ..chunk.clone()
                },
                "at least one voter",
            ),
            (
                InstallSnapshot {
                    term: Term(u64::MAX),
                    ..chunk.clone()
                },
                "leaves no next term",
            ),
        ];
        for (bad, expected) in cases {
            let frame = encode_message(&Message::InstallSnapshot(bad.clone()));
            let Err(error) = decode_message(&frame) else {
                panic!("{bad:?} decoded");
            };
            assert!(error.to_string().contains(expected), "{error}");
        }
        // A chunk with no meta at all reads as the all-zero default, and is refused too.
        let mut builder = Builder::new_default();
        let mut out = builder
            .init_root::<schema::message::Builder>()
            .init_install_snapshot();
        out.set_term(3);
        out.set_leader_id(1);
        let error = decode_message(&to_frame(&builder)).unwrap_err();
        assert!(error.to_string().contains("at least index 1"), "{error}");
    }

    /// Every single-byte corruption and every truncation of snapshot messages decodes or fails,
    /// never panics.
    #[test]
    fn corrupted_snapshot_messages_are_errors_not_panics() {
        let frames = [
            encode_message(&Message::InstallSnapshot(snapshot_chunk(vec![3; 24], 40))),
            encode_message(&Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(2),
                last_index: LogIndex(9),
                received: 64,
                done: true,
                match_index: LogIndex(9),
            })),
        ];
        for frame in frames {
            for length in 0..frame.len() {
                assert!(decode_message(&frame[..length]).is_err(), "cut at {length}");
            }
            let mut corrupted = frame.clone();
            for position in 0..corrupted.len() {
                for mask in [0x01, 0x80, 0xff] {
                    corrupted[position] ^= mask;
                    let _ = decode_message(&corrupted);
                    corrupted[position] ^= mask;
                }
            }
        }
    }

    #[test]
    fn requests_responses_and_preambles_round_trip() {
        for preamble in [Preamble::Peer(ServerId(3)), Preamble::Client(u64::MAX)] {
            assert_eq!(
                decode_preamble(&encode_preamble(&preamble)).unwrap(),
                preamble
            );
        }
        for body in [
            RequestBody::Propose(b"put k v".to_vec()),
            RequestBody::Query(b"get k".to_vec()),
            RequestBody::Status,
            RequestBody::RegisterSession,
            RequestBody::TransferLeadership(ServerId(3)),
            RequestBody::ChangeMembership(MembershipChange::AddServer {
                id: ServerId(4),
                address: "127.0.0.1:9004".to_owned(),
            }),
            RequestBody::ChangeMembership(MembershipChange::AddLearner {
                id: ServerId(5),
                address: "[::1]:9005".to_owned(),
            }),
            RequestBody::ChangeMembership(MembershipChange::RemoveServer { id: ServerId(2) }),
            RequestBody::SessionPropose(SessionProposal {
                session: 12,
                sequence: 3,
                command: b"put k v".to_vec(),
                respond_when: ResponseMode::Committed,
            }),
        ] {
            let request = ClientRequest {
                request_id: 9,
                body,
            };
            assert_eq!(decode_request(&encode_request(&request)).unwrap(), request);
        }
        let metrics = Metrics {
            id: ServerId(1),
            role: Role::Leader,
            current_term: Term(4),
            current_leader: Some(ServerId(1)),
            last_log_index: LogIndex(10),
            commit_index: LogIndex(9),
            last_applied: LogIndex(9),
            match_indexes: [(ServerId(2), LogIndex(9)), (ServerId(3), LogIndex(7))].into(),
            snapshot_index: LogIndex(6),
            first_log_index: LogIndex(4),
            membership: Membership::from_voters([ServerId(1), ServerId(3)])
                .with_learner(ServerId(2), "127.0.0.1:4000"),
        };
        for body in [
            ResponseBody::Applied(b"ok".to_vec()),
            ResponseBody::NotLeader {
                leader_id: ServerId(2),
                leader_address: "127.0.0.1:4000".to_owned(),
            },
            ResponseBody::UnknownLeader,
            ResponseBody::Rejected {
                reason: RejectionReason::Overloaded,
                message: "too many uncommitted entries".to_owned(),
            },
            ResponseBody::Status(metrics),
            ResponseBody::SessionRegistered(12),
            ResponseBody::Committed(LogIndex(44)),
            ResponseBody::Refused(b"no such account".to_vec()),
            ResponseBody::SessionExpired(12),
            ResponseBody::Transferred(ServerId(3)),
            ResponseBody::Rejected {
                reason: RejectionReason::TransferFailed,
                message: "n3 did not take over".to_owned(),
            },
            ResponseBody::Rejected {
                reason: RejectionReason::Superseded,
                message: "old".to_owned(),
            },
            ResponseBody::MembershipChanged(LogIndex(17)),
            ResponseBody::Rejected {
                reason: RejectionReason::MembershipChangeFailed,
                message: "a configuration change is in progress (adding n4)".to_owned(),
            },
        ] {
            let response = ClientResponse {
                request_id: 5,
                body,
            };
            assert_eq!(
                decode_response(&encode_response(&response)).unwrap(),
                response
            );
        }
    }

    /// Messages read off a stream by a reader that frames them itself (as the async client's
    /// capnp-futures does) decode as frames do, and oversized ones are refused from their
    /// segment table.
    #[test]
    fn stream_read_responses_decode_and_oversized_ones_are_refused() {
        let response = ClientResponse {
            request_id: 5,
            body: ResponseBody::Applied(vec![7; 100]),
        };
        let frame = encode_response(&response);
        let mut input = &frame[..];
        let options = stream_reader_options(crate::framing::MESSAGE_BYTES_MAX_DEFAULT);
        let message = serialize::read_message(&mut input, options).unwrap();
        assert_eq!(decode_response_message(message).unwrap(), response);
        let mut input = &frame[..];
        let too_small = stream_reader_options(frame.len() as u64 / 2);
        let Err(error) = serialize::read_message(&mut input, too_small) else {
            panic!("a message larger than the limit was read");
        };
        assert!(error.to_string().contains("too large"), "{error}");
        let request = ClientRequest {
            request_id: 9,
            body: RequestBody::RegisterSession,
        };
        let frame = serialize::write_message_to_words(&request_message(&request));
        assert_eq!(decode_request(&frame).unwrap(), request);
        let preamble = Preamble::Client(3);
        let frame = serialize::write_message_to_words(&preamble_message(&preamble));
        assert_eq!(decode_preamble(&frame).unwrap(), preamble);
    }

    /// Membership requests naming server 0, or an address that is empty, longer than a
    /// configuration holds, or not UTF-8, are wire errors naming the field, never panics.
    #[test]
    fn membership_requests_with_bad_ids_or_addresses_are_refused() {
        let add = |id: u64, address: &str| {
            RequestBody::ChangeMembership(MembershipChange::AddServer {
                id: ServerId(id),
                address: address.to_owned(),
            })
        };
        let learner = |id: u64, address: &str| {
            RequestBody::ChangeMembership(MembershipChange::AddLearner {
                id: ServerId(id),
                address: address.to_owned(),
            })
        };
        let too_long = "1".repeat(crate::membership::ADDRESS_BYTES_MAX + 1);
        let longest = "1".repeat(crate::membership::ADDRESS_BYTES_MAX);
        let cases = [
            (
                add(0, "127.0.0.1:9004"),
                "invalid addServer.id: server id 0",
            ),
            (
                learner(0, "127.0.0.1:9004"),
                "invalid addLearner.id: server id 0",
            ),
            (
                RequestBody::ChangeMembership(MembershipChange::RemoveServer { id: ServerId(0) }),
                "invalid removeServer: server id 0",
            ),
            (add(4, ""), "invalid addServer.address: n4 needs an address"),
            (
                add(4, &too_long),
                "invalid addServer.address: address of 256 bytes is longer than the limit of 255",
            ),
            (
                learner(4, &too_long),
                "invalid addLearner.address: address of 256 bytes",
            ),
        ];
        for (body, expected) in cases {
            let frame = encode_request(&ClientRequest {
                request_id: 1,
                body: body.clone(),
            });
            let error = decode_request(&frame).expect_err("refused");
            assert!(error.to_string().contains(expected), "{body:?}: {error}");
        }
        // The longest address a configuration holds is fine.
        let request = ClientRequest {
            request_id: 1,
            body: add(4, &longest),
        };
        assert_eq!(decode_request(&encode_request(&request)).unwrap(), request);
        // An address that is not UTF-8.
        let mut frame = encode_request(&ClientRequest {
            request_id: 1,
            body: add(4, "127.0.0.1:9004"),
        });
        let at = frame
            .windows(9)
            .position(|window| window == b"127.0.0.1")
            .expect("the address is in the frame");
        frame[at] = 0xff;
        let error = decode_request(&frame).expect_err("refused");
        assert!(
            error.to_string().contains("addServer.address: not UTF-8"),
            "{error}"
        );
    }

    #[test]
    fn a_term_with_no_successor_is_refused() {
        let frame = encode_message(&Message::RequestVoteResponse(RequestVoteResponse {
            term: Term(u64::MAX),
            vote_granted: false,
            pre_vote: false,
        }));
        let error = decode_message(&frame).unwrap_err();
        assert!(error.to_string().contains("leaves no next term"), "{error}");
    }

    /// A hand-made AppendEntries whose entry list claims `count` zero-sized elements, padded to
    /// `padding_words` so Cap'n Proto's own traversal limit lets it through.
    fn forged_append_entries(count: u64, padding_words: usize) -> Vec<u8> {
        let mut words: Vec<u64> = vec![
            // Root: struct pointer to Message, offset 0, 1 data word, 1 pointer.
            (1 << 32) | (1 << 48),
            // Message data: union discriminant 2 = appendEntries.
            2,
            // Message pointer 0: AppendEntries, offset 0, 5 data words, 1 pointer.
            (5 << 32) | (1 << 48),
            1, // term
            2, // leaderId
            0, // prevLogIndex
            0, // prevLogTerm
            0, // leaderCommit
            // entries: list pointer, offset 0, composite (7), 0 words of content.
            1 | (7 << 32),
            // The composite list's tag: `count` elements of 0 data words and 0 pointers.
            count << 2,
        ];
        words.resize(words.len() + padding_words, 0);
        let mut frame = Vec::new();
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&(words.len() as u32).to_le_bytes());
        for word in words {
            frame.extend_from_slice(&word.to_le_bytes());
        }
        frame
    }

    #[test]
    fn forged_entry_lists_cannot_force_large_allocations() {
        // Within Cap'n Proto's traversal budget, far beyond what the bytes could honestly hold.
        let frame = forged_append_entries(30_000, 10_000);
        let error = decode_message(&frame).unwrap_err();
        assert!(error.to_string().contains("entries cannot fit"), "{error}");
        // The same shape with a plausible count decodes (as empty entries).
        let honest = forged_append_entries(3, 0);
        match decode_message(&honest).expect("decodes") {
            Message::AppendEntries(append) => assert_eq!(append.entries.len(), 3),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn garbage_and_reserved_ids_are_errors_not_panics() {
        assert!(decode_message(b"definitely not capnp").is_err());
        assert!(decode_message(&[]).is_err());
        let zero_peer = encode_preamble(&Preamble::Peer(ServerId(1)));
        let mut corrupted = zero_peer.clone();
        // Flip bytes across the whole frame: each must decode or fail, never panic.
        for position in 0..corrupted.len() {
            corrupted[position] ^= 0xff;
            let _ = decode_preamble(&corrupted);
            let _ = decode_message(&corrupted);
            let _ = decode_request(&corrupted);
            let _ = decode_response(&corrupted);
            corrupted[position] ^= 0xff;
        }
        let mut builder = Builder::new_default();
        builder
            .init_root::<schema::connection_preamble::Builder>()
            .set_peer(0);
        let error = decode_preamble(&to_frame(&builder)).unwrap_err();
        assert!(error.to_string().contains("server id 0"), "{error}");
    }
}
