//! Linearizable reads by ReadIndex (thesis §6.4), without writing to the log.
//!
//! 1. The leader has applied the no-op of its term (§8), so its commit index is current.
//! 2. A read arriving now gets `read_index = commit_index`.
//! 3. Leadership is confirmed with a round of heartbeats: every AppendEntries carries the
//!    leader's latest *read round* and every answer echoes it. A read arriving while round `r` is
//!    the latest waits for round `r + 1`, which starts at once if no round is outstanding (so one
//!    round serves every read that arrived meanwhile) or at the next heartbeat otherwise. Once a
//!    majority, the leader included, has answered round `r + 1` in the leader's term, no other
//!    leader can have been elected before those answers, so the read index was current when the
//!    read arrived.
//! 4. The read waits until `last_applied >= read_index`, then runs `StateMachine::query`.
//!
//! A leader that steps down answers every read still waiting with "not leader": a deposed leader
//! never answers. Replicating entries confirms rounds too, so under write load reads need no
//! extra messages.

use super::{quorum, BrokenRule};
use super::{ClientReply, Consensus, Message, ProposalId, ProposalOutcome, Role};
use crate::error::Result;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId};
use std::collections::{BTreeSet, VecDeque};

/// One read waiting for its round or for the state machine to catch up.
#[derive(Debug)]
struct Read {
    id: ProposalId,
    query: Vec<u8>,
    read_index: LogIndex,
}

/// The leader's reads in flight. Rounds are numbered from 1 and never reused, even across terms.
#[derive(Debug, Default)]
pub(super) struct ReadState {
    /// The latest round started.
    round: u64,
    /// The highest round a majority has answered in the current term.
    confirmed: u64,
    /// Reads waiting for confirmation, with the round that confirms each, in arrival order (so
    /// rounds and read indexes never decrease along it).
    unconfirmed: VecDeque<(u64, Read)>,
    /// Confirmed reads waiting for `last_applied >= read_index`, in arrival order.
    confirmed_reads: VecDeque<Read>,
}

impl ReadState {
    /// The round every AppendEntries carries.
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// How many reads are waiting.
    pub(super) fn waiting(&self) -> usize {
        self.unconfirmed.len() + self.confirmed_reads.len()
    }

    /// Whether reads are waiting for a round that has not started.
    fn round_wanted(&self) -> bool {
        self.unconfirmed
            .back()
            .is_some_and(|(round, _)| *round > self.round)
    }

    /// Whether a round should start now: reads wait for one and none is outstanding.
    fn round_due(&self) -> bool {
        self.round_wanted() && self.confirmed >= self.round
    }

    fn take_all(&mut self) -> Vec<ProposalId> {
        let mut ids: Vec<ProposalId> = self.unconfirmed.drain(..).map(|(_, r)| r.id).collect();
        ids.extend(self.confirmed_reads.drain(..).map(|r| r.id));
        ids
    }
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// A client's read. Called only on a leader whose term's no-op is applied.
    pub(super) fn read(&mut self, id: ProposalId, query: Vec<u8>) {
        debug_assert_eq!(self.role, Role::Leader);
        if self.config.testing_broken_rule == Some(BrokenRule::LocalReads) {
            let result = self.state_machine.query(&query);
            self.out.replies.push(ClientReply {
                id,
                outcome: ProposalOutcome::Read { result },
            });
            return;
        }
        let read = Read {
            id,
            query,
            read_index: self.commit_index,
        };
        let round = self.reads.round + 1;
        self.reads.unconfirmed.push_back((round, read));
    }

    /// Starts a read round if reads wait for one and none is outstanding (at a heartbeat, one
    /// starts anyway: `start_read_round_with_heartbeats`), then moves confirmed reads on and
    /// answers those applied.
    pub(super) fn advance_reads(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        if self.reads.round_due() {
            self.start_read_round()?;
        }
        self.confirm_reads()?;
        self.answer_applied_reads();
        Ok(())
    }

    /// At a heartbeat: if reads wait for a round, the heartbeats about to go out start it.
    pub(super) fn start_read_round_with_heartbeats(&mut self) {
        if self.reads.round_wanted() {
            self.reads.round += 1;
        }
    }

    /// Sends every caught-up follower a heartbeat carrying the new round. Probing followers learn
    /// it from their next probe: a heartbeat would move them to streaming from their match index
    /// before the probe has found it.
    fn start_read_round(&mut self) -> Result<()> {
        self.reads.round += 1;
        self.send_round_heartbeats(&BTreeSet::new())
    }

    /// Heartbeats carrying the latest round to every caught-up follower not in `reached`.
    fn send_round_heartbeats(&mut self, reached: &BTreeSet<ServerId>) -> Result<()> {
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            let Some(progress) = self.progress.get(&peer) else {
                continue;
            };
            if progress.is_probing() || reached.contains(&peer) {
                continue;
            }
            let message = self.heartbeat(progress.match_index)?;
            self.send(peer, message);
        }
        log::trace!("{}: read round {} started", self.who(), self.reads.round);
        Ok(())
    }

    /// The end of a batch (`Consensus::step_batch`): sends every follower what its progress
    /// allows, and if the batch's reads want a round and none is outstanding, starts it first,
    /// so the batch's appends carry it: a follower that gets an append needs no heartbeat too.
    pub(super) fn replicate_with_read_round(&mut self) -> Result<()> {
        if self.role != Role::Leader || !self.reads.round_due() {
            return self.replicate_to_all();
        }
        self.reads.round += 1;
        let first_sent = self.out.messages.len();
        self.replicate_to_all()?;
        let reached: BTreeSet<ServerId> = self.out.messages[first_sent..]
            .iter()
            .filter(|envelope| matches!(envelope.message, Message::AppendEntries(_)))
            .map(|envelope| envelope.to)
            .collect();
        self.send_round_heartbeats(&reached)
    }

    /// Records that `peer` answered `round` in our term.
    pub(super) fn on_read_round_answer(&mut self, peer: ServerId, round: u64) {
        if round > self.reads.round {
            log::warn!(
                "{}: {peer} answered read round {round}, which has not started",
                self.who()
            );
            return;
        }
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.on_read_round(round);
        }
    }

    /// The highest round a majority answered (the leader answers every round it starts).
    fn confirm_reads(&mut self) -> Result<()> {
        // Only voters confirm leadership; a leader being removed does not count itself.
        let mut rounds: Vec<u64> = self
            .progress
            .iter()
            .filter(|(peer, _)| self.voters.contains(peer))
            .map(|(_, progress)| progress.acked_read_round())
            .collect();
        if self.voters.contains(&self.id) {
            rounds.push(self.reads.round);
        }
        let confirmed = quorum::agreed_value(&mut rounds);
        if confirmed > self.reads.confirmed {
            self.reads.confirmed = confirmed;
        }
        while let Some((round, _)) = self.reads.unconfirmed.front() {
            if *round > self.reads.confirmed {
                break;
            }
            let (_, read) = self.reads.unconfirmed.pop_front().expect("front exists");
            self.reads.confirmed_reads.push_back(read);
        }
        if self.reads.round_wanted() && self.reads.confirmed == self.reads.round {
            // The outstanding round is done and more reads arrived meanwhile: go again.
            self.start_read_round()?;
            self.confirm_reads()?;
        }
        Ok(())
    }

    fn answer_applied_reads(&mut self) {
        while let Some(read) = self.reads.confirmed_reads.front() {
            if read.read_index > self.last_applied {
                break;
            }
            let read = self
                .reads
                .confirmed_reads
                .pop_front()
                .expect("front exists");
            let result = self.state_machine.query(&read.query);
            self.out.replies.push(ClientReply {
                id: read.id,
                outcome: ProposalOutcome::Read { result },
            });
        }
    }

    /// On stepping down: every waiting read is refused, naming the new leader if known.
    pub(super) fn abandon_reads(&mut self, leader: Option<ServerId>) {
        for id in self.reads.take_all() {
            self.out.replies.push(ClientReply {
                id,
                outcome: ProposalOutcome::NotLeader { leader },
            });
        }
        self.reads.confirmed = self.reads.round;
    }

    /// Reads still waiting (for tests and metrics).
    pub fn reads_waiting(&self) -> usize {
        self.reads.waiting()
    }

    /// The read round every AppendEntries carries (0 before the first).
    pub(super) fn read_round(&self) -> u64 {
        self.reads.round()
    }
}

/// Leadership confirmation needs a majority of the cluster; a lone leader is its own majority.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{Config, Event, Timer};
    use crate::log::MemLog;
    use crate::state_machine::KvStateMachine;

    #[test]
    fn a_single_server_answers_reads_after_its_noop() {
        let mut node = Consensus::new(
            ServerId(1),
            vec![ServerId(1)],
            MemLog::new(),
            KvStateMachine::new(),
            Config::default(),
            1,
        )
        .expect("valid");
        let _ = node.start();
        let _ = node
            .step(Event::Timeout(Timer::Election))
            .expect("campaign");
        // Not yet durable, so the no-op is not applied: the read waits.
        let actions = node
            .step(Event::Query {
                id: ProposalId(1),
                query: b"get k".to_vec(),
            })
            .expect("query");
        assert!(actions.replies.is_empty());
        let actions = node.sync().expect("sync");
        assert_eq!(
            actions.replies,
            vec![ClientReply {
                id: ProposalId(1),
                outcome: ProposalOutcome::Read { result: Vec::new() },
            }]
        );
    }
}
