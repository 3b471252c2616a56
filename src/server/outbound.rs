//! Owns what leaves: carrying out the core's [`Actions`] (timers, messages to peers, replies to
//! proposers), the group-commit sync, and writing queued output. Which peers are dialled, where
//! and on which connection their messages go is `peers.rs`'s.
//!
//! A message for a peer whose outbound connection is down is dropped: Raft retries on its own
//! (heartbeats, probes, new elections), and [`Event::PeerConnected`](crate::consensus::Event::PeerConnected) tells the core to resend
//! once the connection is back.
//!
//! Messages for one peer all go, in the order the core produced them, on one connection to it
//! (ours, or while we have none, its own to us), so they arrive in that order or not at all;
//! nothing here reorders or coalesces them. Only a change of connection can mix old and new: frames the old connection delivered may still be
//! unread at the peer when the new connection's first frames arrive, and the peer may read
//! either first. Each connection's unsent output is bounded (`OUTPUT_BYTES_MAX`, 64 MiB); a
//! message that would pass it closes the connection instead (logged with both sizes), losing
//! everything queued on it, and the peer is dialled again after a backoff, where
//! [`Event::PeerConnected`](crate::consensus::Event::PeerConnected) tells the core to resend from what the peer acknowledged. The core's
//! flow control (`in_flight_appends_max`, `snapshot_chunks_in_flight`) keeps a follower's queue
//! far below that limit: the server refuses at start a snapshot window larger than half of it.

use super::connection::{CloseReason, Connection, Kind};
use super::timers::Deadline;
use super::{deadline_after, Reactor};
use crate::consensus::{Actions, ClientReply, Envelope, Message, ProposalOutcome, TimerAction};
use crate::error::Result;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::ServerId;
use crate::wire::{self, ClientResponse, RejectionReason, ResponseBody};
use capnp::message::HeapAllocator;
use mio::Token;
use std::time::Instant;

/// Who is waiting for a proposal's outcome.
#[derive(Clone, Copy, Debug)]
pub(super) struct Proposer {
    /// The client's connection.
    pub(super) token: Token,
    /// That connection's serial number, so that a reply never reaches a later connection
    /// reusing the slot.
    pub(super) serial: u64,
    /// The client's tag for the request.
    pub(super) request_id: u64,
}

impl<L, M> Reactor<L, M>
where
    L: PersistentLog + Send + 'static,
    M: StateMachine,
{
    /// Does what the core asked: arms timers, queues messages, answers proposers, and notes
    /// whether a sync is due before the turn ends.
    pub(super) fn carry_out(&mut self, actions: Actions) {
        let now = Instant::now();
        for timer_action in actions.timers {
            match timer_action {
                TimerAction::Set { timer, after } => match deadline_after(now, after) {
                    Some(at) => self.timers.set(Deadline::Raft(timer), at),
                    None => self.timers.cancel(Deadline::Raft(timer)),
                },
                TimerAction::Cancel(timer) => self.timers.cancel(Deadline::Raft(timer)),
            }
        }
        for envelope in actions.messages {
            self.send_to_peer(envelope);
        }
        for reply in actions.replies {
            self.reply_to_proposer(reply);
        }
        self.sync_required |= actions.sync_required;
        self.follow_membership();
    }

    /// Group commit: one sync covers every write of the turn. Its actions (released messages,
    /// commits, replies) may write more, so repeat until the log is clean.
    ///
    /// # Errors
    /// A failed sync: the server must stop rather than retry (STYLE.md §4).
    pub(super) fn sync_while_required(&mut self) -> Result<()> {
        while self.sync_required {
            self.sync_required = false;
            let actions = self.consensus.sync()?;
            self.carry_out(actions);
        }
        Ok(())
    }

    /// Queues a Raft message on a connection to its destination, or drops it if there is none.
    fn send_to_peer(&mut self, envelope: Envelope) {
        let Envelope { to, message } = envelope;
        match self.connection_to(to) {
            Some(token) => self.queue_message(token, &wire::peer_message(&message)),
            None => {
                // Snapshot chunks are few and large, and their loss stalls a transfer until the
                // core resends: worth a line at a level operators keep.
                let level = if matches!(message, Message::InstallSnapshot(_)) {
                    log::Level::Debug
                } else {
                    log::Level::Trace
                };
                log::log!(
                    level,
                    "{}: dropped {} for {to}: not connected",
                    self.id,
                    message.name()
                );
            }
        }
    }

    /// Answers the client that made a proposal, if it is still connected.
    fn reply_to_proposer(&mut self, reply: ClientReply) {
        let Some(proposer) = self.proposals.remove(&reply.id) else {
            log::debug!("{}: reply for unknown proposal {:?}", self.id, reply.id);
            return;
        };
        if !self.is_open(proposer.token, proposer.serial) {
            log::debug!(
                "{}: dropped reply to request {}: the client has gone",
                self.id,
                proposer.request_id
            );
            return;
        }
        let body = match reply.outcome {
            ProposalOutcome::Applied { result, .. } => ResponseBody::Applied(result),
            ProposalOutcome::NotLeader { leader } => self.not_leader_response(leader),
            ProposalOutcome::Dropped { index } => ResponseBody::Rejected {
                reason: RejectionReason::Dropped,
                message: format!(
                    "the entry at index {index} was replaced by another leader's entry and will \
                     never be applied; retrying is safe"
                ),
            },
            ProposalOutcome::Overloaded {
                uncommitted_entries_max,
            } => ResponseBody::Rejected {
                reason: RejectionReason::Overloaded,
                message: format!(
                    "the leader already holds {uncommitted_entries_max} uncommitted entries \
                     (uncommitted_entries_max); retry later"
                ),
            },
            ProposalOutcome::Committed { index } => ResponseBody::Committed(index),
            ProposalOutcome::Refused { error } => ResponseBody::Refused(error),
            ProposalOutcome::SessionRegistered { session } => {
                ResponseBody::SessionRegistered(session)
            }
            ProposalOutcome::SessionExpired { session } => ResponseBody::SessionExpired(session),
            ProposalOutcome::Superseded { session, sequence } => ResponseBody::Rejected {
                reason: RejectionReason::Superseded,
                message: format!(
                    "session {session} already applied a request after {sequence}; this one \
                     is an old duplicate"
                ),
            },
            ProposalOutcome::Read { result } => ResponseBody::Applied(result),
            ProposalOutcome::LeadershipTransferred { to } => ResponseBody::Transferred(to),
            ProposalOutcome::TransferFailed { reason } => ResponseBody::Rejected {
                reason: RejectionReason::TransferFailed,
                message: reason,
            },
            ProposalOutcome::MembershipChanged { index } => ResponseBody::MembershipChanged(index),
            ProposalOutcome::MembershipChangeFailed { reason } => ResponseBody::Rejected {
                reason: RejectionReason::MembershipChangeFailed,
                message: reason,
            },
            ProposalOutcome::Unknown { index } => ResponseBody::Rejected {
                reason: RejectionReason::OutcomeUnknown,
                message: format!(
                    "this server installed a snapshot covering index {index}, where the \
                     command was appended, and cannot tell whether it was applied; retry in the \
                     same session"
                ),
            },
        };
        self.respond(proposer.token, proposer.request_id, body);
    }

    /// Where to send a client that asked the wrong server: the leader's configured address
    /// (with_peers) if it has one, else its address in the configuration in force; "unknown
    /// leader" if this server knows no leader or no address for it.
    pub(super) fn not_leader_response(&self, leader: Option<ServerId>) -> ResponseBody {
        let Some(leader_id) = leader else {
            return ResponseBody::UnknownLeader;
        };
        let leader_address = match self.configured_peers.get(&leader_id) {
            Some(address) => address.to_string(),
            None => match self.consensus.membership().address(leader_id) {
                Some(address) => address.to_owned(),
                None => return ResponseBody::UnknownLeader,
            },
        };
        ResponseBody::NotLeader {
            leader_id,
            leader_address,
        }
    }

    /// Queues the response to a client's request.
    pub(super) fn respond(&mut self, token: Token, request_id: u64, body: ResponseBody) {
        let message = wire::response_message(&ClientResponse { request_id, body });
        self.queue_message(token, &message);
    }

    /// Queues `message`, framed, on a connection for the end-of-turn flush; a connection whose
    /// output buffer is full is closed.
    fn queue_message(&mut self, token: Token, message: &capnp::message::Builder<HeapAllocator>) {
        self.queue_with(token, |connection| connection.queue_message(message));
    }

    /// Queues `frame` on a connection for the end-of-turn flush; a connection whose output
    /// buffer is full is closed.
    pub(super) fn queue_frame(&mut self, token: Token, frame: &[u8]) {
        self.queue_with(token, |connection| connection.queue(frame));
    }

    /// Queues output on the connection at `token` (if still open) with `queue`, putting it on
    /// the flush list, or closing it if its output buffer is full.
    fn queue_with(
        &mut self,
        token: Token,
        queue: impl FnOnce(&mut Connection) -> std::result::Result<bool, CloseReason>,
    ) {
        let Some(connection) = self.connections.get_mut(token.0) else {
            return;
        };
        match queue(connection) {
            Ok(true) => self.to_flush.push(token),
            Ok(false) => {}
            Err(reason) => self.close(token, reason),
        }
    }

    /// Writes what this turn queued, as far as each socket takes it.
    pub(super) fn flush_queued(&mut self) {
        for token in std::mem::take(&mut self.to_flush) {
            let Some(connection) = self.connections.get_mut(token.0) else {
                continue;
            };
            if let Err(reason) = connection.flush(self.poll.registry(), token) {
                self.close(token, reason);
            }
        }
    }

    /// WRITABLE readiness: an outbound connect finished (or failed), or the socket has room for
    /// pending output.
    pub(super) fn on_writable(&mut self, token: Token) -> Result<()> {
        let Some(connection) = self.connections.get_mut(token.0) else {
            return Ok(());
        };
        if let Kind::OutboundPeer {
            peer,
            established: false,
        } = connection.kind()
        {
            match connection.finish_connect() {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    connection.set_kind(Kind::OutboundPeer {
                        peer,
                        established: true,
                    });
                    log::info!("{}: connected: {connection}", self.id);
                    // The preamble waiting in the buffer goes first, then whatever the core
                    // resends now that the link is back.
                    self.to_flush.push(token);
                    return self.on_outbound_established(peer);
                }
                Err(reason) => {
                    self.close(token, reason);
                    return Ok(());
                }
            }
        }
        if let Err(reason) = connection.flush(self.poll.registry(), token) {
            self.close(token, reason);
        }
        Ok(())
    }

    /// On the way out: tell clients still waiting for a proposal that the server is stopping
    /// (the proposal may or may not be applied by the rest of the cluster), best effort.
    pub(super) fn answer_pending_proposals_on_stop(&mut self) {
        for (_, proposer) in std::mem::take(&mut self.proposals) {
            if self.is_open(proposer.token, proposer.serial) {
                let message = format!(
                    "server {} is shutting down; the proposal may or may not be applied",
                    self.id
                );
                let body = ResponseBody::Rejected {
                    reason: RejectionReason::ShuttingDown,
                    message,
                };
                self.respond(proposer.token, proposer.request_id, body);
            }
        }
        self.flush_queued();
    }
}
