//! Owns what arrives: accepting connections, reading their frames, and giving each frame its
//! meaning by who sent it: the preamble first (DESIGN.md §4), then Raft messages from peers
//! (stepped into the core) or requests from clients (proposals to the core, queries and status
//! answered here).
//!
//! Anything malformed or out of turn closes that one connection with a logged reason; nothing a
//! remote party sends can stop the server.

use super::connection::{CloseReason, Connection, Frames, Kind, ReadEnd};
use super::outbound::Proposer;
use super::timers::Deadline;
use super::{deadline_after, Reactor, CONNECTIONS_MAX};
use crate::consensus::{Event, MembershipChange, ProposalId, SessionRequest};
use crate::error::Result;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::wire::{self, ClientRequest, Preamble, RejectionReason, RequestBody, ResponseBody};
use mio::Token;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

impl<L, M> Reactor<L, M>
where
    L: PersistentLog + Send + 'static,
    M: StateMachine,
{
    /// Accepts every pending connection; each must send its preamble within the timeout.
    pub(super) fn accept_connections(&mut self) {
        loop {
            let (stream, address) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // E.g. out of file descriptors: the connection stays queued in the kernel.
                    log::warn!("{}: accepting on {}: {error}", self.id, self.local_addr);
                    return;
                }
            };
            let serial = self.next_serial();
            let mut connection = Connection::new(
                stream,
                address,
                Kind::AwaitingPreamble,
                serial,
                self.message_bytes_max,
            );
            if self.connections.len() >= CONNECTIONS_MAX {
                let reason = CloseReason::TooManyConnections(self.connections.len());
                log::warn!("{}: closing {connection}: {reason}", self.id);
                continue;
            }
            let entry = self.connections.vacant_entry();
            let token = Token(entry.key());
            if let Err(error) = connection.register(self.poll.registry(), token) {
                log::warn!("{}: closing {connection}: cannot poll it: {error}", self.id);
                continue;
            }
            log::debug!("{}: accepted {connection}", self.id);
            entry.insert(connection);
            if let Some(at) = deadline_after(Instant::now(), self.preamble_timeout) {
                self.timers.set(Deadline::Preamble(token.0), at);
            }
        }
    }

    /// Handles readiness of one connection: finishing a connect and writing on WRITABLE,
    /// reading on READABLE (including the end of the stream and errors, which a read reports).
    pub(super) fn connection_ready(
        &mut self,
        token: Token,
        event: &mio::event::Event,
    ) -> Result<()> {
        if event.is_writable() || event.is_error() {
            self.on_writable(token)?;
        }
        let read_closed = event.is_read_closed() || event.is_error();
        if event.is_readable() || read_closed {
            self.on_readable(token, read_closed)?;
        }
        Ok(())
    }

    /// Goes on reading connections that spent their read budget last turn.
    pub(super) fn read_leftovers(&mut self) -> Result<()> {
        // Whether the other side closed is not known here: read to the end.
        for token in std::mem::take(&mut self.to_read) {
            self.on_readable(token, true)?;
        }
        Ok(())
    }

    /// Reads what `token`'s socket holds and handles every whole frame in it; `read_closed`:
    /// the readiness said the other side closed (see `Connection::receive`).
    fn on_readable(&mut self, token: Token, read_closed: bool) -> Result<()> {
        let Some(connection) = self.connections.get_mut(token.0) else {
            return Ok(());
        };
        let serial = connection.serial();
        // The reactor's frame buffer, lent out while its frames are handled.
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        let end = connection.receive(&mut self.read_buffer, read_closed, &mut frames);
        let handled = self.handle_frames(token, serial, &frames);
        self.frames = frames;
        if !handled? {
            return Ok(());
        }
        match end {
            ReadEnd::WouldBlock => {}
            ReadEnd::BudgetSpent => self.to_read.push(token),
            ReadEnd::Close(reason) => self.close(token, reason),
        }
        Ok(())
    }

    /// Handles `frames` from the connection at `token` in order; returns whether it is still
    /// open (a frame may close it, and then the rest are dropped).
    fn handle_frames(&mut self, token: Token, serial: u64, frames: &Frames) -> Result<bool> {
        for frame in frames.iter() {
            self.handle_frame(token, frame)?;
            if !self.is_open(token, serial) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives one frame its meaning according to who sent it.
    fn handle_frame(&mut self, token: Token, frame: &[u8]) -> Result<()> {
        let Some(connection) = self.connections.get(token.0) else {
            return Ok(());
        };
        match connection.kind() {
            Kind::AwaitingPreamble => {
                self.handle_preamble(token, frame);
                Ok(())
            }
            // Peers send their messages on the connections they dialled; a message on ours is
            // just as good (DESIGN.md §4: either direction works for Raft).
            Kind::InboundPeer(from) | Kind::OutboundPeer { peer: from, .. } => {
                match wire::decode_message(frame) {
                    Ok(message) => self.step(Event::Message { from, message }),
                    Err(error) => {
                        self.close(token, CloseReason::NotAPeerMessage(error));
                        Ok(())
                    }
                }
            }
            Kind::Client(_) => match wire::decode_request(frame) {
                Ok(request) => self.handle_client_request(token, request),
                Err(error) => {
                    self.close(token, CloseReason::NotAClientRequest(error));
                    Ok(())
                }
            },
        }
    }

    /// The largest command accepted: half the message limit, leaving room for the
    /// AppendEntries around it on the way to every peer.
    fn command_bytes_max(&self) -> u64 {
        self.message_bytes_max / 2
    }

    /// The first frame says who is calling: a peer, or a client. Any server id but ours is
    /// accepted as a peer: members come and go (thesis ch. 4), a server waiting to be added
    /// knows no peers, and a new leader may not be in the configuration we know yet. What a
    /// non-member can do is bounded by the core's rules (terms, pre-vote, the leader lease).
    fn handle_preamble(&mut self, token: Token, frame: &[u8]) {
        let kind = match wire::decode_preamble(frame) {
            Ok(Preamble::Peer(peer)) if peer == self.id => {
                self.close(token, CloseReason::OwnId(peer));
                return;
            }
            Ok(Preamble::Peer(peer)) => Kind::InboundPeer(peer),
            Ok(Preamble::Client(client)) => Kind::Client(client),
            Err(error) => {
                self.close(token, CloseReason::BadPreamble(error));
                return;
            }
        };
        self.timers.cancel(Deadline::Preamble(token.0));
        let calling_peer = match kind {
            Kind::InboundPeer(peer) => Some(peer),
            _ => None,
        };
        if let Some(connection) = self.connections.get_mut(token.0) {
            connection.set_kind(kind);
            log::debug!("{}: identified {connection}", self.id);
        }
        if let Some(peer) = calling_peer {
            self.on_peer_dialled_us(peer, token);
        }
    }

    /// Proposals, session registrations and reads go through the core and are answered when it
    /// replies; status requests are answered at once.
    fn handle_client_request(&mut self, token: Token, request: ClientRequest) -> Result<()> {
        let ClientRequest { request_id, body } = request;
        let command_len = match &body {
            RequestBody::Propose(command) => Some(command.len()),
            RequestBody::SessionPropose(proposal) => Some(proposal.command.len()),
            _ => None,
        };
        if let Some(len) = command_len.filter(|&len| len as u64 > self.command_bytes_max()) {
            // The AppendEntries carrying it must still fit every peer's message limit, or
            // replication would stall on it forever.
            let body = ResponseBody::Rejected {
                reason: RejectionReason::TooLarge,
                message: format!(
                    "command of {len} bytes exceeds the limit of {} bytes (half the message limit)",
                    self.command_bytes_max()
                ),
            };
            self.respond(token, request_id, body);
            return Ok(());
        }
        match body {
            RequestBody::Propose(command) => self.submit(token, request_id, |id| {
                Event::ClientProposal { id, command }
            }),
            RequestBody::SessionPropose(proposal) => {
                self.submit(token, request_id, |id| Event::Propose {
                    id,
                    command: proposal.command,
                    session: Some(SessionRequest {
                        session: proposal.session,
                        sequence: proposal.sequence,
                    }),
                    respond_when: proposal.respond_when,
                })
            }
            RequestBody::RegisterSession => {
                self.submit(token, request_id, |id| Event::RegisterSession { id })
            }
            RequestBody::Query(query) => {
                self.submit(token, request_id, |id| Event::Query { id, query })
            }
            RequestBody::TransferLeadership(to) => {
                self.submit(token, request_id, |id| Event::TransferLeadership { id, to })
            }
            RequestBody::ChangeMembership(change) => {
                self.change_membership(token, request_id, change)
            }
            RequestBody::Status => {
                let body = ResponseBody::Status(self.consensus.metrics());
                self.respond(token, request_id, body);
                Ok(())
            }
        }
    }

    /// Adds `server` at `address` as a voter or a learner. The address must be an `ip:port`:
    /// the only kind of address servers dial (see `peers.rs`), so a member added at another
    /// could never be reached.
    fn change_membership(
        &mut self,
        token: Token,
        request_id: u64,
        change: MembershipChange,
    ) -> Result<()> {
        if let MembershipChange::AddServer {
            id: server,
            address,
        }
        | MembershipChange::AddLearner {
            id: server,
            address,
        } = &change
        {
            if let Err(error) = address.parse::<SocketAddr>() {
                let body = ResponseBody::Rejected {
                    reason: RejectionReason::BadRequest,
                    message: format!(
                        "{server}'s address {address:?} is not ip:port ({error}), the only kind \
                         of address servers dial"
                    ),
                };
                self.respond(token, request_id, body);
                return Ok(());
            }
        }
        self.submit(token, request_id, |id| Event::ChangeMembership {
            id,
            change,
        })
    }

    /// Queues a client's request for the core under a fresh id, remembering who to answer. The
    /// turn hands every request it read to the core as one batch (`step_client_requests`).
    fn submit(
        &mut self,
        token: Token,
        request_id: u64,
        event: impl FnOnce(ProposalId) -> Event,
    ) -> Result<()> {
        let Some(serial) = self.connections.get(token.0).map(Connection::serial) else {
            return Ok(());
        };
        self.proposals_issued = self.proposals_issued.wrapping_add(1);
        let id = ProposalId(self.proposals_issued);
        self.proposals.insert(
            id,
            Proposer {
                token,
                serial,
                request_id,
            },
        );
        self.client_requests.push(event(id));
        Ok(())
    }

    /// Steps every client request read this turn into the core as one batch: the proposals
    /// among them reach each follower together (`Consensus::step_batch`).
    pub(super) fn step_client_requests(&mut self) -> Result<()> {
        if self.client_requests.is_empty() {
            return Ok(());
        }
        let requests = std::mem::take(&mut self.client_requests);
        let actions = self.consensus.step_batch(requests)?;
        self.carry_out(actions);
        Ok(())
    }
}
