//! Elections (§5.2) and the vote restriction that keeps committed entries in every new leader's
//! log (§5.4.1): timeouts, campaigns, granting and counting votes; pre-votes, and the leader
//! lease and quorum check that keep a partitioned or removed server from disrupting a healthy
//! cluster (thesis §9.6, §6.2).

use super::quorum::{self, VoteResult};
use super::{Consensus, Message, RequestVote, RequestVoteResponse, Role, Timer, TimerAction};
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
        if !self.may_campaign() {
            // Learners, servers waiting to be added and removed servers never campaign (thesis
            // §4.2.1, §4.2.3); the timer keeps running in case a configuration makes us a voter.
            self.reset_election_timer();
            return Ok(());
        }
        if self.config.pre_vote {
            return self.start_pre_vote();
        }
        self.campaign(false)
    }

    /// Becomes a candidate of the next term and asks every peer for its vote; `for_transfer`
    /// when the leader handed over leadership (thesis §3.10), so voters set aside their lease.
    pub(super) fn campaign(&mut self, for_transfer: bool) -> Result<()> {
        if !self.may_campaign() {
            log::warn!("{}: not a voter; not campaigning", self.who());
            return Ok(());
        }
        self.become_candidate()?;
        self.campaigning_for_transfer = for_transfer;
        log::info!("{}: election timeout, campaigning", self.who());
        self.tally_votes()?;
        if self.role == Role::Candidate {
            let request = self.vote_request();
            self.send_to_other_voters(&request);
        }
        Ok(())
    }

    /// Whether this server may stand for election: it votes in the configuration in force, or
    /// that configuration removed it but is not known committed (thesis §4.2.2). In the latter
    /// case the server may be the only one holding its removal (a leader that lost leadership
    /// right after appending it), and the remaining voters may need it to lead long enough to
    /// commit that configuration; its own vote does not count toward winning.
    fn may_campaign(&self) -> bool {
        let membership = self.membership();
        if membership.is_voter(self.id) {
            return true;
        }
        self.membership_index() > self.commit_index
            && !membership.contains(self.id)
            && self
                .configurations
                .values()
                .nth_back(1)
                .is_some_and(|previous| previous.is_voter(self.id))
    }

    /// Sends `message` to every voter but us (§5.2: only voters are asked for votes).
    fn send_to_other_voters(&mut self, message: &Message) {
        for position in 0..self.voters.len() {
            let voter = self.voters[position];
            if voter != self.id {
                self.send(voter, message.clone());
            }
        }
    }

    /// The vote request of the current term, carrying our last log position (§5.4.1).
    pub(super) fn vote_request(&self) -> Message {
        Message::RequestVote(RequestVote {
            term: self.current_term(),
            candidate_id: self.id,
            last_log_index: self.log.latest_log_index(),
            last_log_term: self.log.latest_log_term(),
            pre_vote: false,
            leadership_transfer: self.campaigning_for_transfer,
        })
    }

    /// The pre-vote request for the next term (thesis §9.6).
    pub(super) fn pre_vote_request(&self) -> Message {
        Message::RequestVote(RequestVote {
            term: self.current_term().next(),
            candidate_id: self.id,
            last_log_index: self.log.latest_log_index(),
            last_log_term: self.log.latest_log_term(),
            pre_vote: true,
            leadership_transfer: false,
        })
    }

    /// §9.6: instead of raising its term at once, a server whose election timer fired asks the
    /// others whether they would vote for it in the next term. It stays a follower of its term
    /// meanwhile, and campaigns only with a majority of yeses.
    fn start_pre_vote(&mut self) -> Result<()> {
        let term = self.current_term();
        // A candidate whose election failed goes back to following before asking again.
        self.become_follower(term, None)?;
        self.prevoting = true;
        self.votes_granted.insert(self.id);
        log::info!("{}: election timeout, asking for pre-votes", self.who());
        self.tally_pre_votes()?;
        if self.prevoting {
            let request = self.pre_vote_request();
            self.send_to_other_voters(&request);
        }
        Ok(())
    }

    /// §9.6: would we vote for this candidate in the term it names? Only if that term is above
    /// ours, its log is at least as up-to-date as ours (§5.4.1), and no live leader holds our
    /// lease. Our term and vote do not change.
    pub(super) fn handle_pre_vote(&mut self, from: ServerId, request: RequestVote) -> Result<()> {
        if request.candidate_id != from {
            log::warn!(
                "{}: ignored pre-vote from {from} naming candidate {}",
                self.who(),
                request.candidate_id
            );
            return Ok(());
        }
        let current_term = self.current_term();
        let granted = request.term > current_term
            && self.candidate_log_is_up_to_date(&request)
            && !self.in_leader_lease();
        log::debug!(
            "{}: {} pre-vote to {from} for term {}",
            self.who(),
            if granted { "granted" } else { "refused" },
            request.term
        );
        let term = if granted { request.term } else { current_term };
        self.send(
            from,
            Message::RequestVoteResponse(RequestVoteResponse {
                term,
                vote_granted: granted,
                pre_vote: true,
            }),
        );
        Ok(())
    }

    /// §9.6: counts pre-votes for the next term; a majority starts the real campaign. A refusal
    /// from a higher term makes us a follower of it, as any message of a higher term does.
    pub(super) fn handle_pre_vote_response(
        &mut self,
        from: ServerId,
        response: RequestVoteResponse,
    ) -> Result<()> {
        let current_term = self.current_term();
        if !response.vote_granted && response.term > current_term {
            return self.become_follower(response.term, None);
        }
        if !self.prevoting || self.role != Role::Follower {
            return Ok(());
        }
        if response.vote_granted {
            if response.term != current_term.next() {
                return Ok(()); // an answer to an earlier round
            }
            self.votes_granted.insert(from);
        } else {
            self.votes_rejected.insert(from);
        }
        self.tally_pre_votes()
    }

    fn tally_pre_votes(&mut self) -> Result<()> {
        let result = self.count_votes();
        match result {
            VoteResult::Won => {
                log::info!("{}: won the pre-vote; campaigning", self.who());
                self.campaign(false)
            }
            VoteResult::Lost => {
                log::info!("{}: lost the pre-vote", self.who());
                self.prevoting = false;
                self.votes_granted.clear();
                self.votes_rejected.clear();
                Ok(())
            }
            VoteResult::Pending => Ok(()),
        }
    }

    /// §5.4.1: the candidate's last entry is at least as up-to-date as ours: a later term, or the
    /// same term and at least as long a log.
    fn candidate_log_is_up_to_date(&self, request: &RequestVote) -> bool {
        let our_last_term = self.log.latest_log_term();
        request.last_log_term > our_last_term
            || (request.last_log_term == our_last_term
                && request.last_log_index >= self.log.latest_log_index())
    }

    /// Whether, with check-quorum, a live leader holds our vote: we lead, or we heard from our
    /// leader within the minimum election timeout (thesis §9.6).
    pub(super) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && match self.role {
                Role::Leader => true,
                Role::Follower => self.leader_lease,
                Role::Candidate | Role::Learner => false,
            }
    }

    /// Called when the current leader is heard from: with check-quorum, its lease on our vote
    /// runs for the minimum election timeout from now.
    pub(super) fn renew_leader_lease(&mut self) {
        if self.config.check_quorum {
            self.leader_lease = true;
            self.out.timers.push(TimerAction::Set {
                timer: Timer::Quorum,
                after: self.config.election_timeout_min,
            });
        }
    }

    /// The quorum timer: a follower's leader lease runs out; a leader checks that a majority
    /// answered it during the last election timeout, and steps down otherwise (check-quorum), so
    /// a leader cut off from the majority stops taking requests it could never commit.
    pub(super) fn on_quorum_timeout(&mut self) -> Result<()> {
        match self.role {
            Role::Follower | Role::Learner => {
                self.leader_lease = false;
                Ok(())
            }
            Role::Candidate => Ok(()),
            Role::Leader => {
                if !self.config.check_quorum {
                    return Ok(());
                }
                // Only voters count; a leader being removed does not count itself (§4.2.2).
                let mut heard = usize::from(self.voters.contains(&self.id));
                for (peer, progress) in self.progress.iter_mut() {
                    if progress.take_recent_activity() && self.voters.contains(peer) {
                        heard += 1;
                    }
                }
                if heard < quorum::majority(self.voters.len()) {
                    log::warn!(
                        "{}: heard from only {heard} of {} servers in {:?}; stepping down",
                        self.who(),
                        self.voters.len(),
                        self.config.election_timeout_max
                    );
                    let term = self.current_term();
                    return self.become_follower(term, None);
                }
                self.out.timers.push(TimerAction::Set {
                    timer: Timer::Quorum,
                    after: self.config.election_timeout_max,
                });
                Ok(())
            }
        }
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
        let up_to_date = self.candidate_log_is_up_to_date(&request);
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
            Message::RequestVoteResponse(RequestVoteResponse {
                term,
                vote_granted,
                pre_vote: false,
            }),
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

    /// Where the grants and refusals gathered so far leave this (pre-)vote.
    fn count_votes(&self) -> VoteResult {
        // Answers from servers outside the voters (a stale learner, a removed server) count for
        // nothing.
        let among_voters = |set: &std::collections::BTreeSet<ServerId>| {
            set.iter().filter(|id| self.voters.contains(id)).count()
        };
        quorum::vote_result(
            self.voters.len(),
            among_voters(&self.votes_granted),
            among_voters(&self.votes_rejected),
        )
    }

    fn tally_votes(&mut self) -> Result<()> {
        let result = self.count_votes();
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
