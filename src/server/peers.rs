//! Owns the peer table: which servers this one dials, at which address, and the connections it
//! dials them on (reconnecting with backoff). The table follows the configuration in force
//! (thesis §4.1): after every step that changed the configuration (a new configuration entry,
//! a truncated one, an installed snapshot), every member other than this server is dialled and
//! every server no longer a member is dropped, its connection closed.
//!
//! Addresses (DESIGN.md §4): a server given in [`with_peers`](super::ServerBuilder::with_peers)
//! is always dialled at the address it was given there, whatever the configuration says, so
//! deployments behind proxies and tests that route links through a relay keep working; only a
//! member that was not configured is dialled at the address in the configuration. An address
//! that is not `ip:port` is logged, naming the member, and skipped.
//!
//! Raft messages for a peer go on the connection we dialled to it. A server that has none (a
//! server waiting to be added knows no addresses; a removed server is no longer dialled) answers
//! on the peer's own connection to us instead, the latest one it opened: either direction works
//! for Raft, which tolerates the loss and reordering a switch between the two may cause.

use super::connection::{CloseReason, Connection, Kind};
use super::timers::{Backoff, Deadline};
use super::{deadline_after, Reactor};
use crate::consensus::Event;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::ServerId;
use crate::wire::{self, Preamble};
use mio::net::TcpStream;
use mio::Token;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an outbound connection must have been up for its loss to reset the backoff. A peer
/// that accepts and then drops us at once keeps backing off instead of being dialled every
/// 20 ms.
const CONNECTION_STABLE_AFTER: Duration = Duration::from_secs(1);

/// One server this server dials, as the reactor sees it.
#[derive(Debug)]
pub(super) struct Peer {
    /// Where it is dialled: its configured address, or for a member that was not configured,
    /// the address in the configuration.
    address: SocketAddr,
    /// Our connection to it, while one is open or being opened.
    outbound: Option<Token>,
    /// When the current outbound connection was established, if it was.
    established_at: Option<Instant>,
    /// Delays between attempts to reach it.
    backoff: Backoff,
}

impl Peer {
    /// A peer at `address`, not dialled yet.
    pub(super) fn new(address: SocketAddr) -> Self {
        Peer {
            address,
            outbound: None,
            established_at: None,
            backoff: Backoff::new(),
        }
    }
}

impl<L, M> Reactor<L, M>
where
    L: PersistentLog + Send + 'static,
    M: StateMachine,
{
    /// After a step: if the configuration in force is not the one the peer table was last
    /// brought in line with, brings it in line. Returns whether it did.
    pub(super) fn follow_membership(&mut self) -> bool {
        // Compared whole, not by log index: a new leader may replace an uncommitted
        // configuration entry with another at the same index in one step.
        if self.membership_seen.as_ref() == Some(self.consensus.membership()) {
            return false;
        }
        let index = self.consensus.membership_index();
        let membership = self.consensus.membership().clone();
        self.membership_seen = Some(membership.clone());
        log::info!("{}: configuration at {index}: {membership}", self.id);
        let members: Vec<(ServerId, String)> = membership
            .members()
            .filter(|&(member, _)| member != self.id)
            .map(|(member, entry)| (member, entry.address.clone()))
            .collect();
        let removed: Vec<ServerId> = self
            .peers
            .keys()
            .copied()
            .filter(|&peer| !membership.contains(peer))
            .collect();
        for peer in removed {
            log::info!(
                "{}: no longer dialling {peer}: not in the configuration",
                self.id
            );
            self.forget_peer(peer);
        }
        for (member, configuration_address) in members {
            let Some(address) = self.member_address(member, &configuration_address) else {
                continue;
            };
            match self.peers.get(&member) {
                Some(peer) if peer.address == address => continue,
                Some(peer) => {
                    log::info!(
                        "{}: {member} moved from {} to {address} in the configuration",
                        self.id,
                        peer.address
                    );
                    self.forget_peer(member);
                }
                None => log::info!("{}: dialling member {member} at {address}", self.id),
            }
            self.peers.insert(member, Peer::new(address));
            self.dial(member);
        }
        true
    }

    /// Where to dial `member`: its configured address if it has one, else the address the
    /// configuration gives; `None` (logged) if that is not an `ip:port`.
    fn member_address(&self, member: ServerId, configuration_address: &str) -> Option<SocketAddr> {
        if let Some(&address) = self.configured_peers.get(&member) {
            return Some(address);
        }
        match configuration_address.parse() {
            Ok(address) => Some(address),
            Err(_) if configuration_address.is_empty() => {
                log::warn!(
                    "{}: member {member} has no address in the configuration and none was \
                     configured (with_peers); it is not dialled",
                    self.id
                );
                None
            }
            Err(error) => {
                log::warn!(
                    "{}: member {member}'s address {configuration_address:?} in the \
                     configuration is not ip:port ({error}); it is not dialled",
                    self.id
                );
                None
            }
        }
    }

    /// Stops dialling `peer` and closes our connection to it.
    fn forget_peer(&mut self, peer: ServerId) {
        self.timers.cancel(Deadline::Reconnect(peer));
        if let Some(token) = self.peers.remove(&peer).and_then(|state| state.outbound) {
            // With the peer gone from the table, closing does not schedule a reconnection.
            self.close(token, CloseReason::NoLongerMember);
        }
    }

    /// The connection a message for `peer` goes on: ours to it once established, else its own
    /// to us (see the module documentation), else none.
    pub(super) fn connection_to(&self, peer: ServerId) -> Option<Token> {
        let outbound = self
            .peers
            .get(&peer)
            .and_then(|state| state.outbound)
            .filter(|token| {
                self.connections.get(token.0).is_some_and(|connection| {
                    matches!(
                        connection.kind(),
                        Kind::OutboundPeer {
                            established: true,
                            ..
                        }
                    )
                })
            });
        outbound.or_else(|| self.inbound_peers.get(&peer).copied())
    }

    /// Opens a connection to `peer` at its address, with our preamble queued first. On
    /// failure, tries again after a backoff.
    pub(super) fn dial(&mut self, peer: ServerId) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        if state.outbound.is_some() {
            return;
        }
        let address = state.address;
        let stream = match TcpStream::connect(address) {
            Ok(stream) => stream,
            Err(error) => {
                log::debug!("{}: dialling peer {peer} at {address}: {error}", self.id);
                self.schedule_reconnect(peer);
                return;
            }
        };
        let serial = self.next_serial();
        let mut connection = Connection::new(
            stream,
            address,
            Kind::OutboundPeer {
                peer,
                established: false,
            },
            serial,
            self.message_bytes_max,
        );
        let entry = self.connections.vacant_entry();
        let token = Token(entry.key());
        if let Err(error) = connection.register(self.poll.registry(), token) {
            log::warn!("{}: cannot poll {connection}: {error}", self.id);
            self.schedule_reconnect(peer);
            return;
        }
        entry.insert(connection);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.outbound = Some(token);
            state.established_at = None;
        }
        self.queue_frame(token, &wire::encode_preamble(&Preamble::Peer(self.id)));
    }

    /// Our connection to `peer` finished connecting: note when, and tell the core, which resends
    /// what may have been lost while it was down.
    pub(super) fn on_outbound_established(&mut self, peer: ServerId) -> crate::error::Result<()> {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.established_at = Some(Instant::now());
        }
        self.step(Event::PeerConnected(peer))
    }

    /// `peer` dialled us (its connection is `token`), so it is up (it may just have restarted):
    /// remember the connection, to answer on while we have none of our own, and if we dial
    /// `peer` but are not connected, dial it back now instead of when our backoff says.
    pub(super) fn on_peer_dialled_us(&mut self, peer: ServerId, token: Token) {
        self.inbound_peers.insert(peer, token);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.outbound.is_some() {
            return;
        }
        state.backoff.reset();
        self.timers.cancel(Deadline::Reconnect(peer));
        log::debug!("{}: {peer} called us; dialling it back now", self.id);
        self.dial(peer);
    }

    /// `peer`'s connection to us (`token`) closed.
    pub(super) fn on_inbound_closed(&mut self, peer: ServerId, token: Token) {
        if self.inbound_peers.get(&peer) == Some(&token) {
            self.inbound_peers.remove(&peer);
        }
    }

    /// Our connection to `peer` closed: forget it and dial again after a backoff, which starts
    /// over only if the connection had been healthy for a while.
    pub(super) fn on_outbound_closed(&mut self, peer: ServerId, token: Token) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.outbound != Some(token) {
            return;
        }
        state.outbound = None;
        if state
            .established_at
            .take()
            .is_some_and(|at| at.elapsed() >= CONNECTION_STABLE_AFTER)
        {
            state.backoff.reset();
        }
        self.schedule_reconnect(peer);
    }

    fn schedule_reconnect(&mut self, peer: ServerId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let delay = state.backoff.next_delay(&mut self.rng);
        log::trace!("{}: dialling {peer} again in {delay:?}", self.id);
        if let Some(at) = deadline_after(Instant::now(), delay) {
            self.timers.set(Deadline::Reconnect(peer), at);
        }
    }
}
