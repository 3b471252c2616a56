//! Elections (§5.2) and the vote restriction that keeps committed entries in every new leader's
//! log (§5.4.1): timeouts, campaigns, granting and counting votes.

use super::quorum::{self, VoteResult};
use super::{Consensus, Message, RequestVote, RequestVoteResponse, Role};
use crate::error::Result;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::ServerId;
use rand::Rng;
use std::time::Duration;

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// §5.2: a follower or candidate that hears from no leader in time starts an election of the
    /// next term. A leader has no election timer; a late firing is ignored.
    pub(super) fn on_election_timeout(&mut self) -> Result<()> {
        if self.role == Role::Leader {
            return Ok(());
        }
        self.become_candidate()?;
        log::info!("{}: election timeout, campaigning", self.who());
        self.tally_votes()?;
        if self.role == Role::Candidate {
            let request = self.vote_request();
            for position in 0..self.peers.len() {
                let peer = self.peers[position];
                self.send(peer, request.clone());
            }
        }
        Ok(())
    }

    /// The vote request of the current term, carrying our last log position (§5.4.1).
    pub(super) fn vote_request(&self) -> Message {
        Message::RequestVote(RequestVote {
            term: self.current_term(),
            candidate_id: self.id,
            last_log_index: self.log.latest_log_index(),
            last_log_term: self.log.latest_log_term(),
        })
    }

    /// §5.2, §5.4.1: grant at most one vote per term, first come first served, and only to a
    /// candidate whose log is at least as up-to-date as ours. The terms already match.
    pub(super) fn handle_request_vote(
        &mut self,
        from: ServerId,
        request: RequestVote,
    ) -> Result<()> {
        if request.candidate_id != from {
            log::warn!(
                "{}: ignored RequestVote from {from} naming candidate {}",
                self.who(),
                request.candidate_id
            );
            return Ok(());
        }
        let our_last_term = self.log.latest_log_term();
        let our_last_index = self.log.latest_log_index();
        // §5.4.1: compare the last entries' terms; with equal terms, the longer log wins.
        let up_to_date = request.last_log_term > our_last_term
            || (request.last_log_term == our_last_term && request.last_log_index >= our_last_index);
        let free_to_vote = match self.log.voted_for() {
            None => true,
            Some(candidate) => candidate == from,
        };
        let vote_granted = up_to_date && free_to_vote && self.role == Role::Follower;
        if vote_granted {
            if self.log.voted_for() != Some(from) {
                self.log.set_voted_for(Some(from))?;
                self.hard_state_unsynced = true;
            }
            // Granting a vote restarts the timer, so we do not compete with the candidate we
            // just helped.
            self.reset_election_timer();
        } else {
            log::debug!(
                "{}: refused vote to {from} (candidate last {}@{}, ours {}@{}, voted for {:?})",
                self.who(),
                request.last_log_term,
                request.last_log_index,
                our_last_term,
                our_last_index,
                self.log.voted_for()
            );
        }
        let term = self.current_term();
        self.send(
            from,
            Message::RequestVoteResponse(RequestVoteResponse { term, vote_granted }),
        );
        Ok(())
    }

    /// §5.2: a candidate counts answers of its own term; a majority of grants wins, a majority of
    /// refusals sends it back to following until its timer fires again.
    pub(super) fn handle_request_vote_response(
        &mut self,
        from: ServerId,
        response: RequestVoteResponse,
    ) -> Result<()> {
        if self.role != Role::Candidate {
            return Ok(());
        }
        if response.vote_granted {
            self.votes_granted.insert(from);
        } else {
            self.votes_rejected.insert(from);
        }
        self.tally_votes()
    }

    fn tally_votes(&mut self) -> Result<()> {
        let result = quorum::vote_result(
            self.voters.len(),
            self.votes_granted.len(),
            self.votes_rejected.len(),
        );
        match result {
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                log::info!("{}: lost the election", self.who());
                let term = self.current_term();
                self.become_follower(term, None)
            }
            VoteResult::Pending => Ok(()),
        }
    }

    /// §5.2: a timeout drawn uniformly from the configured range, in whole milliseconds (whole
    /// microseconds when the range is narrower than 2 ms), so servers rarely fire together.
    pub(super) fn random_election_timeout(&mut self) -> Duration {
        let min = self.config.election_timeout_min;
        let max = self.config.election_timeout_max;
        let span = max - min;
        if span >= Duration::from_millis(2) {
            let steps = span.as_millis() as u64;
            min + Duration::from_millis(self.rng.gen_range(0..=steps))
        } else {
            let steps = span.as_micros() as u64;
            min + Duration::from_micros(self.rng.gen_range(0..=steps))
        }
    }
}
