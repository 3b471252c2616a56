//! What clients ask of the leader: proposals (with or without a session, §6.3), session
//! registrations and reads (§6.4), with the checks made before anything enters the log.

use super::{
    ClientReply, Consensus, Event, ProposalId, ProposalOutcome, ResponseMode, Role, SessionRequest,
};
use crate::error::Result;
use crate::log::{Entry, PersistentLog};
use crate::state_machine::StateMachine;
use crate::types::LogIndex;

use super::sessions::Lookup;

/// A proposer waiting for an entry this leader appended.
#[derive(Clone, Copy, Debug)]
pub(super) struct Waiter {
    pub(super) id: ProposalId,
    pub(super) respond_when: ResponseMode,
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// §5.3: the leader appends the command to its own log and replicates it; anyone else
    /// answers with the leader it knows, appending nothing. A session request is first looked up
    /// in the session table (§6.3): a retry of an applied request is answered from it, and a
    /// retry of one still in flight waits for the same entry.
    pub(super) fn propose(
        &mut self,
        id: ProposalId,
        command: Vec<u8>,
        session: Option<SessionRequest>,
        respond_when: ResponseMode,
    ) -> Result<()> {
        // §3.10: a leader handing over leadership takes no new proposals; they go to the
        // server about to lead.
        if !self.taking_proposals() {
            self.reply(id, self.not_leader());
            return Ok(());
        }
        if let Some(request) = session {
            if !self.term_started() {
                self.waiting_for_term_start.push(Event::Propose {
                    id,
                    command,
                    session,
                    respond_when,
                });
                return Ok(());
            }
            if let Some(outcome) = self.answer_from_sessions(request, respond_when) {
                self.reply(id, outcome);
                return Ok(());
            }
            if let Some(&(sequence, index, term)) = self.sessions_in_flight.get(&request.session) {
                if sequence == request.sequence {
                    if let Some(waiters) = self.pending_proposals.get_mut(&(index, term)) {
                        waiters.push(Waiter { id, respond_when });
                        return Ok(());
                    }
                }
            }
        }
        if let Some(outcome) = self.overloaded() {
            self.reply(id, outcome);
            return Ok(());
        }
        if let Err(error) = self.state_machine.validate(&command) {
            self.reply(id, ProposalOutcome::Refused { error });
            return Ok(());
        }
        let term = self.current_term();
        let entry = match session {
            Some(request) => {
                Entry::session_command(term, request.session, request.sequence, &command)
            }
            None => Entry::command(term, command),
        };
        let index = self.append_as_leader(entry, Waiter { id, respond_when })?;
        if let Some(request) = session {
            self.sessions_in_flight
                .insert(request.session, (request.sequence, index, term));
        }
        Ok(())
    }

    /// §6.3: a new session is a log entry; its id is the entry's index.
    pub(super) fn register_session(&mut self, id: ProposalId) -> Result<()> {
        if !self.taking_proposals() {
            self.reply(id, self.not_leader());
            return Ok(());
        }
        if let Some(outcome) = self.overloaded() {
            self.reply(id, outcome);
            return Ok(());
        }
        let entry = Entry::register_session(self.current_term());
        let waiter = Waiter {
            id,
            respond_when: ResponseMode::Applied,
        };
        self.append_as_leader(entry, waiter)?;
        Ok(())
    }

    /// §6.4: a read is served by the leader once its term has started; see `read_index.rs`.
    pub(super) fn query(&mut self, id: ProposalId, query: Vec<u8>) {
        if self.role != Role::Leader {
            self.reply(id, self.not_leader());
            return;
        }
        if !self.term_started() {
            self.waiting_for_term_start.push(Event::Query { id, query });
            return;
        }
        self.read(id, query);
    }

    /// After every step and sync: requests that waited for the term's no-op go on, and reads
    /// move towards their answer.
    pub(super) fn settle(&mut self) -> Result<()> {
        if self.role == Role::Leader
            && self.term_started()
            && !self.waiting_for_term_start.is_empty()
        {
            for event in std::mem::take(&mut self.waiting_for_term_start) {
                debug_assert!(matches!(event, Event::Propose { .. } | Event::Query { .. }));
                self.dispatch(event)?;
            }
        }
        self.advance_reads()?;
        self.advance_membership_change()?;
        // A snapshot the log was writing in the background may be ready (§7).
        self.finish_local_snapshot()
    }

    /// Whether new entries may be appended: we lead, and are neither handing leadership over
    /// (thesis §3.10) nor leaving after our removal (§4.2.2).
    pub(super) fn taking_proposals(&self) -> bool {
        self.role == Role::Leader && self.transfer.is_none() && !self.leaving()
    }

    /// Whether this leader has applied its term's no-op: its state machine and session table
    /// then reflect everything any earlier leader committed (§5.4.2, §8).
    fn term_started(&self) -> bool {
        self.role == Role::Leader && self.last_applied >= self.term_start
    }

    /// The answer the session table already holds for `request`, if any.
    fn answer_from_sessions(
        &self,
        request: SessionRequest,
        respond_when: ResponseMode,
    ) -> Option<ProposalOutcome> {
        match self.sessions.lookup(request.session, request.sequence) {
            Lookup::New => None,
            Lookup::Duplicate { index, reply } => Some(match respond_when {
                ResponseMode::Applied => ProposalOutcome::Applied {
                    index,
                    result: reply,
                },
                ResponseMode::Committed => ProposalOutcome::Committed { index },
            }),
            Lookup::Superseded => Some(ProposalOutcome::Superseded {
                session: request.session,
                sequence: request.sequence,
            }),
            // Not an answer to give from here: a leader cut off from the cluster (it does not
            // know yet) lacks the sessions a newer leader opened. The entry goes into the log and
            // applying it gives the answer every server agrees on.
            Lookup::Expired => None,
        }
    }

    /// Back-pressure: a leader that cannot commit must not grow its log without bound.
    fn overloaded(&self) -> Option<ProposalOutcome> {
        let next = self.log.latest_log_index().next();
        let uncommitted = next.distance_from(self.commit_index.next());
        let uncommitted_entries_max = self.config.uncommitted_entries_max;
        (uncommitted >= uncommitted_entries_max).then_some(ProposalOutcome::Overloaded {
            uncommitted_entries_max,
        })
    }

    /// Appends `entry` to our log for `waiter` and replicates it. With one voter, the entry
    /// commits once durable, which `sync` reports.
    fn append_as_leader(&mut self, entry: Entry, waiter: Waiter) -> Result<LogIndex> {
        let index = self.log.latest_log_index().next();
        let term = entry.term;
        self.append_to_own_log(vec![entry])?;
        self.pending_proposals.insert((index, term), vec![waiter]);
        if !self.replication_deferred {
            self.replicate_to_all()?;
        }
        Ok(index)
    }

    /// A leader sends every follower what its progress allows (§5.3).
    pub(super) fn replicate_to_all(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            self.send_appends(peer)?;
        }
        Ok(())
    }

    /// "Not leader", naming the leader we know of, or the one we are handing over to.
    fn not_leader(&self) -> ProposalOutcome {
        // A leader that is leaving (§4.2.2) does not name itself: the client tries elsewhere.
        ProposalOutcome::NotLeader {
            leader: self
                .transferring_to()
                .or(self.leader_id.filter(|&leader| leader != self.id)),
        }
    }

    fn reply(&mut self, id: ProposalId, outcome: ProposalOutcome) {
        self.out.replies.push(ClientReply { id, outcome });
    }
}
