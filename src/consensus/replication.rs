//! Log replication (§5.3) and commitment (§5.4.2): proposals, AppendEntries out and in, the
//! consistency check with its conflict hint, the commit index, and applying committed entries.

use super::progress::ReplicationState;
use super::quorum;
use super::sessions::Lookup;
use super::{
    AppendEntries, AppendEntriesResponse, BrokenRule, ClientReply, Consensus, Message,
    ProposalOutcome, ResponseMode, Role, Timer, TimerAction,
};
use crate::error::Result;
use crate::log::{Entry, EntryKind, PersistentLog};
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId, Term};

/// How many committed entries are read from the log at a time while applying.
const APPLY_BATCH_BYTES_MAX: u64 = 4 << 20;

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// Sends `peer` as many appends as its progress allows: one while probing, up to the
    /// in-flight window while replicating (pipelining), each batching up to the entry and byte
    /// limits.
    pub(super) fn send_appends(&mut self, peer: ServerId) -> Result<()> {
        loop {
            let last_log_index = self.log.latest_log_index();
            let Some(progress) = self.progress.get(&peer) else {
                return Ok(());
            };
            if let ReplicationState::Snapshot { .. } = progress.state {
                return self.send_snapshot_chunks(peer);
            }
            if !progress.can_send(last_log_index, self.config.in_flight_appends_max) {
                return Ok(());
            }
            let next_index = progress.next_index;
            let probing = matches!(progress.state, ReplicationState::Probe { .. });
            let prev_log_index = next_index
                .prev()
                .expect("progress invariant: next_index >= 1");
            if next_index < self.log.first_log_index() || !self.term_available(prev_log_index) {
                // §7: the entries it needs were compacted: send the snapshot instead.
                let Some(meta) = self.log.snapshot_meta() else {
                    log::error!(
                        "{}: {peer} needs {next_index}, compacted, but there is no snapshot",
                        self.who()
                    );
                    return Ok(());
                };
                let (snapshot_index, size) = (meta.last_index, meta.size);
                log::info!(
                    "{}: {peer} needs {next_index}, compacted; sending snapshot through \
                     {snapshot_index}",
                    self.who()
                );
                if let Some(progress) = self.progress.get_mut(&peer) {
                    progress.become_snapshot(snapshot_index, size);
                }
                continue;
            }
            let prev_log_term = self.term_at(prev_log_index)?;
            let until = next_index
                .checked_add(self.config.append_entries_max)
                .unwrap_or(LogIndex(u64::MAX))
                .min(last_log_index.next());
            let entries = self
                .log
                .entries(next_index, until, self.config.append_bytes_max)?;
            let last_sent = prev_log_index
                .checked_add(entries.len() as u64)
                .expect("entries come from our own log");
            let message = Message::AppendEntries(AppendEntries {
                term: self.current_term(),
                leader_id: self.id,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: self.commit_index,
                read_round: self.read_round(),
            });
            self.send(peer, message);
            if let Some(progress) = self.progress.get_mut(&peer) {
                progress.on_sent(last_sent);
            }
            if probing {
                return Ok(());
            }
        }
    }

    /// §5.2: the leader heartbeats every follower each interval. A heartbeat carries no entries,
    /// checks the log only at the follower's known match index (so it cannot fail spuriously) and
    /// a commit index no larger than what that follower holds. Probing followers get a fresh
    /// probe instead, which doubles as the heartbeat.
    pub(super) fn on_heartbeat_timeout(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        self.out.timers.push(TimerAction::Set {
            timer: Timer::Heartbeat,
            after: self.config.heartbeat_interval,
        });
        // Reads waiting for a round ride on these heartbeats (§6.4).
        self.start_read_round_with_heartbeats();
        self.transfer_tick();
        let window = self.config.in_flight_appends_max;
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            let Some(progress) = self.progress.get_mut(&peer) else {
                continue;
            };
            let stalled = progress.on_heartbeat(window);
            let state = progress.state;
            let match_index = progress.match_index;
            if stalled {
                log::debug!("{}: appends to {peer} stalled; probing again", self.who());
            }
            if let ReplicationState::Probe { .. } = state {
                self.send_appends(peer)?;
                continue;
            }
            let message = self.heartbeat(match_index)?;
            self.send(peer, message);
            self.send_appends(peer)?;
        }
        Ok(())
    }

    /// A heartbeat for a follower known to hold `match_index`: no entries, the consistency check
    /// at that index (so it cannot fail spuriously), the commit index capped there, and the
    /// current read round (§6.4).
    pub(super) fn heartbeat(&self, match_index: LogIndex) -> Result<Message> {
        // A follower behind our compaction point (being sent a snapshot) gets the check at
        // index 0, which always passes and changes nothing.
        let match_index = if self.term_available(match_index) {
            match_index
        } else {
            LogIndex(0)
        };
        Ok(Message::AppendEntries(AppendEntries {
            term: self.current_term(),
            leader_id: self.id,
            prev_log_index: match_index,
            prev_log_term: self.term_at(match_index)?,
            entries: Vec::new(),
            leader_commit: self.commit_index.min(match_index),
            read_round: self.read_round(),
        }))
    }

    /// Checks a message from the leader of our term (AppendEntries or InstallSnapshot) and
    /// follows that leader: a candidate steps down (§5.2), a follower restarts its election
    /// timer. Returns false (the message is to be ignored) if it cannot come from our leader.
    pub(super) fn accept_leader_message(
        &mut self,
        from: ServerId,
        leader_id: ServerId,
        name: &str,
    ) -> Result<bool> {
        if leader_id != from {
            log::warn!(
                "{}: ignored {name} from {from} naming leader {leader_id}",
                self.who()
            );
            return Ok(false);
        }
        if self.role == Role::Leader {
            // Two leaders in one term would break election safety (§5.2); only a faulty peer
            // can cause this, so drop its message rather than crash.
            log::error!(
                "{}: ignored {name} from {from} claiming to lead our own term",
                self.who()
            );
            return Ok(false);
        }
        if self.role == Role::Candidate || self.leader_id.is_none() {
            // §5.2: a candidate that hears from a leader of its term accepts it.
            let term = self.current_term();
            self.become_follower(term, Some(from))?;
        } else {
            self.reset_election_timer();
        }
        // A leader of our term is alive: it holds our vote for a while (§9.6), and a pre-vote we
        // were asking for is moot.
        self.prevoting = false;
        self.renew_leader_lease();
        Ok(true)
    }

    /// §5.3: the receiver's side of AppendEntries, the terms already equal.
    pub(super) fn handle_append_entries(
        &mut self,
        from: ServerId,
        mut request: AppendEntries,
    ) -> Result<()> {
        if !self.accept_leader_message(from, request.leader_id, "AppendEntries")? {
            return Ok(());
        }
        let read_round = request.read_round;
        let Some(last_new_index) = request
            .prev_log_index
            .checked_add(request.entries.len() as u64)
        else {
            log::warn!(
                "{}: ignored AppendEntries from {from}: index overflow",
                self.who()
            );
            return Ok(());
        };
        let our_last_index = self.log.latest_log_index();
        // §5.3 consistency check on the entry before the new ones.
        if request.prev_log_index > our_last_index {
            self.reply_append(
                from,
                false,
                (LogIndex(0), Term(0), our_last_index.next()),
                read_round,
            );
            return Ok(());
        }
        if request.prev_log_index.next() < self.log.first_log_index()
            || !self.term_available(request.prev_log_index)
        {
            // The check point, or entries after it, lie in the prefix our snapshot replaced (a
            // late or duplicated message can start there too). Compaction never passes what we
            // applied, so that prefix is committed, and committed entries are the same on every
            // server (§5.4): check from our commit index instead, skipping what it covers.
            assert!(
                request.prev_log_index < self.commit_index,
                "{}: compacted index {} is not below the commit index {}",
                self.who(),
                request.prev_log_index,
                self.commit_index
            );
            let skip = self.commit_index.distance_from(request.prev_log_index);
            let skip = usize::try_from(skip).unwrap_or(usize::MAX);
            if skip >= request.entries.len() {
                let commit_index = self.commit_index;
                self.reply_append(from, true, (commit_index, Term(0), LogIndex(0)), read_round);
                return Ok(());
            }
            request.entries.drain(..skip);
            request.prev_log_index = self.commit_index;
            request.prev_log_term = self.term_at(self.commit_index)?;
        }
        let our_prev_term = self.term_at(request.prev_log_index)?;
        if our_prev_term != request.prev_log_term {
            if request.prev_log_index <= self.commit_index {
                log::error!(
                    "{}: AppendEntries from {from} disagrees at committed index {}",
                    self.who(),
                    request.prev_log_index
                );
                return Ok(());
            }
            // The hint: the first index we hold of the conflicting term, so the leader can skip
            // the whole term in one round trip.
            let conflict_index = self.first_index_of_term(request.prev_log_index, our_prev_term)?;
            log::debug!(
                "{}: rejected AppendEntries from {from}: prev_log_term {} != {} at {}",
                self.who(),
                request.prev_log_term,
                our_prev_term,
                request.prev_log_index
            );
            self.reply_append(
                from,
                false,
                (LogIndex(0), our_prev_term, conflict_index),
                read_round,
            );
            return Ok(());
        }
        // §5.3: skip entries we already hold; truncate only at a real conflict, so a delayed
        // shorter append can never delete entries a longer one added.
        let mut new_entries = request.entries.as_slice();
        let mut index = request.prev_log_index.next();
        while let Some((entry, rest)) = new_entries.split_first() {
            match self.log.term(index)? {
                Some(term) if term == entry.term => {
                    new_entries = rest;
                    index = index.next();
                }
                Some(_) => {
                    if index <= self.commit_index {
                        log::error!(
                            "{}: AppendEntries from {from} conflicts at committed index {index}",
                            self.who()
                        );
                        return Ok(());
                    }
                    log::debug!("{}: truncating conflicting suffix from {index}", self.who());
                    self.log.truncate_suffix(index)?;
                    self.forget_configurations_from(index);
                    self.entries_unsynced = true;
                    self.durable_index = self.durable_index.min(index.prev().unwrap_or_default());
                    break;
                }
                None => break,
            }
        }
        if let Err(reason) = Self::check_configuration_entries(new_entries) {
            log::error!(
                "{}: ignored AppendEntries from {from}: malformed configuration entry: {reason}",
                self.who()
            );
            return Ok(());
        }
        // The entries not held yet move from the request into the log.
        let held = request.entries.len() - new_entries.len();
        request.entries.drain(..held);
        self.append_to_own_log(std::mem::take(&mut request.entries))?;
        // §5.3: commit what the leader committed, but only as far as this request verified our
        // log; entries past it may still be an old leader's.
        let commit_to = request.leader_commit.min(last_new_index);
        if commit_to > self.commit_index {
            self.commit_index = commit_to;
            self.apply_committed()?;
        }
        self.reply_append(
            from,
            true,
            (last_new_index, Term(0), LogIndex(0)),
            read_round,
        );
        Ok(())
    }

    /// Answers an AppendEntries; `position` is (match index, conflict term, conflict index).
    fn reply_append(
        &mut self,
        to: ServerId,
        success: bool,
        position: (LogIndex, Term, LogIndex),
        read_round: u64,
    ) {
        let (match_index, conflict_term, conflict_index) = position;
        let message = Message::AppendEntriesResponse(AppendEntriesResponse {
            term: self.current_term(),
            success,
            match_index,
            conflict_term,
            conflict_index,
            last_log_index: self.log.latest_log_index(),
            read_round,
        });
        self.send(to, message);
    }

    /// §5.3: the leader's side of an answer of its own term.
    pub(super) fn handle_append_entries_response(
        &mut self,
        from: ServerId,
        response: AppendEntriesResponse,
    ) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        // Any answer of our term, success or not, shows the follower still follows us (§6.4),
        // and counts for check-quorum.
        self.on_read_round_answer(from, response.read_round);
        if let Some(progress) = self.progress.get_mut(&from) {
            progress.record_activity();
        }
        let last_log_index = self.log.latest_log_index();
        if response.success {
            if response.match_index > last_log_index {
                log::warn!(
                    "{}: ignored ack from {from} for index {} past our last {last_log_index}",
                    self.who(),
                    response.match_index
                );
                return Ok(());
            }
            let advanced = match self.progress.get_mut(&from) {
                Some(progress) => progress.on_success(response.match_index),
                None => return Ok(()),
            };
            if advanced {
                self.advance_commit_index()?;
            }
            self.continue_transfer(from);
        } else {
            let next_index = self.next_index_after_conflict(&response)?;
            let current_term = self.current_term();
            let Some(progress) = self.progress.get_mut(&from) else {
                return Ok(());
            };
            if let ReplicationState::Snapshot { .. } = progress.state {
                // Rejections of heartbeats sent while the snapshot is under way teach nothing.
                return Ok(());
            }
            if response.last_log_index < progress.match_index {
                // It no longer holds entries it acknowledged: its storage lost synced writes (a
                // wiped data directory, or a MemLog restarted under the same id), or this is a
                // rejection overtaken by a later acknowledgement. Either way, forgetting what it
                // acknowledged is safe: the commit index never moves back, and a follower that
                // does hold the entries acknowledges them again at once. A wiped follower then
                // catches up from our log or by snapshot (§7). What it had acknowledged may
                // now be held by fewer servers than were counted: only another majority's
                // copies keep those entries.
                log::warn!(
                    "n{} t{} leader: {from} reports last index {} below the {} it acknowledged; \
                     if its storage was lost, it is brought up to date again",
                    self.id.0,
                    current_term,
                    response.last_log_index,
                    progress.match_index
                );
                progress.forget_match(response.last_log_index);
            }
            let stale = response.conflict_index.is_zero()
                || (progress.state == ReplicationState::Replicate
                    && response.conflict_index <= progress.match_index);
            if stale {
                // A reordered rejection: the follower has since acknowledged more than it talks
                // about. (A rejection that is stale for a probing follower only costs a resend.)
                return Ok(());
            }
            progress.become_probe(next_index);
            log::debug!(
                "{}: {from} rejected; probing from {next_index} (hint {}@{})",
                self.who(),
                response.conflict_term,
                response.conflict_index
            );
        }
        self.send_appends(from)
    }

    /// Fast back-tracking (§5.3): if we hold entries of the follower's conflicting term, resume
    /// after our last one of that term; otherwise resume at the follower's first index of it.
    /// One round trip per term instead of per index.
    fn next_index_after_conflict(&self, response: &AppendEntriesResponse) -> Result<LogIndex> {
        let last_log_index = self.log.latest_log_index();
        let hint = response.conflict_index.min(last_log_index.next());
        if response.conflict_term.is_zero() {
            return Ok(hint.max(LogIndex(1)));
        }
        match self.last_index_of_term(response.conflict_term)? {
            Some(index) => Ok(index.next()),
            None => Ok(hint.max(LogIndex(1))),
        }
    }

    /// The last index of our log holding an entry of `term`, if any. Terms never decrease along
    /// a log, so this is a binary search.
    fn last_index_of_term(&self, term: Term) -> Result<Option<LogIndex>> {
        let mut low = self.log.first_log_index();
        let mut high = self.log.latest_log_index();
        let mut found = None;
        while low <= high {
            let middle = LogIndex(low.0 + (high.0 - low.0) / 2);
            let middle_term = self.term_at(middle)?;
            if middle_term <= term {
                if middle_term == term {
                    found = Some(middle);
                }
                low = middle.next();
            } else {
                match middle.prev() {
                    Some(below) => high = below,
                    None => break,
                }
            }
        }
        Ok(found)
    }

    /// The first index, at or before `index`, of the run of `term` entries that contains `index`.
    fn first_index_of_term(&self, index: LogIndex, term: Term) -> Result<LogIndex> {
        let mut first = index;
        while first > self.log.first_log_index() {
            let before = first.prev().expect("above the first index");
            if self.term_at(before)? != term {
                break;
            }
            first = before;
        }
        Ok(first)
    }

    /// §5.3, §5.4.2: the leader commits the highest index a majority holds (its own log counted
    /// only once durable), but only if that entry is of the current term; earlier entries then
    /// commit with it. Counting replicas of an earlier term's entry is unsafe (Figure 8).
    pub(super) fn advance_commit_index(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        // Only voters count (thesis §4.1, §4.2.1); a leader being removed does not count itself
        // (§4.2.2).
        let mut match_indexes: Vec<LogIndex> = self
            .progress
            .iter()
            .filter(|(peer, _)| self.voters.contains(peer))
            .map(|(_, progress)| progress.match_index)
            .collect();
        if self.voters.contains(&self.id) {
            match_indexes.push(self.durable_index);
        }
        let majority_index = quorum::committed_index(&mut match_indexes);
        if majority_index <= self.commit_index {
            return Ok(());
        }
        let current_term_rule =
            self.config.testing_broken_rule != Some(BrokenRule::CommitPreviousTermByCount);
        if current_term_rule && self.term_at(majority_index)? != self.current_term() {
            return Ok(());
        }
        self.commit_index = majority_index;
        self.apply_committed()?;
        // Followers learn the new commit index with the next append or heartbeat; appends waiting
        // for window room go now.
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            self.send_appends(peer)?;
        }
        Ok(())
    }

    /// Applies every committed entry not yet applied, in order, answering the proposals this
    /// server made for them.
    pub(super) fn apply_committed(&mut self) -> Result<()> {
        while self.last_applied < self.commit_index {
            let from = self.last_applied.next();
            let entries =
                self.log
                    .entries(from, self.commit_index.next(), APPLY_BATCH_BYTES_MAX)?;
            assert!(
                !entries.is_empty(),
                "{}: committed entry {from} missing from the log",
                self.who()
            );
            for entry in entries {
                let index = self.last_applied.next();
                let outcome = match entry.kind {
                    EntryKind::Noop | EntryKind::Configuration => None,
                    EntryKind::Command => Some(ProposalOutcome::Applied {
                        index,
                        result: self.state_machine.apply(&entry.data),
                    }),
                    EntryKind::RegisterSession => Some(ProposalOutcome::SessionRegistered {
                        session: self.sessions.register(index),
                    }),
                    EntryKind::SessionCommand => Some(self.apply_session_command(index, &entry)),
                };
                self.last_applied = index;
                self.applied_since_snapshot.entries += 1;
                self.applied_since_snapshot.bytes += entry.size_bytes();
                self.resolve_proposals(index, entry.term, outcome);
            }
        }
        self.maybe_take_snapshot()
    }

    /// §6.3: a session command is applied only if it is the session's next request; a retry of
    /// the last one gets the recorded reply; anything else is refused without applying.
    fn apply_session_command(&mut self, index: LogIndex, entry: &Entry) -> ProposalOutcome {
        let Some((session, sequence, command)) = entry.session_parts() else {
            log::error!("{}: malformed session entry at {index}", self.who());
            return ProposalOutcome::SessionExpired { session: 0 };
        };
        if self
            .sessions_in_flight
            .get(&session)
            .is_some_and(|&(in_flight, _, _)| in_flight <= sequence)
        {
            self.sessions_in_flight.remove(&session);
        }
        match self.sessions.lookup(session, sequence) {
            Lookup::New => {
                let result = self.state_machine.apply(&command);
                self.sessions
                    .record(session, sequence, index, result.clone());
                ProposalOutcome::Applied { index, result }
            }
            Lookup::Duplicate {
                index: original,
                reply,
            } => ProposalOutcome::Applied {
                index: original,
                result: reply,
            },
            Lookup::Superseded => ProposalOutcome::Superseded { session, sequence },
            Lookup::Expired => ProposalOutcome::SessionExpired { session },
        }
    }

    /// Answers proposals at or below `index`: those whose term matches wanted the entry just
    /// applied and get `outcome`; any other there was replaced by a different leader's entry.
    fn resolve_proposals(&mut self, index: LogIndex, term: Term, outcome: Option<ProposalOutcome>) {
        while let Some((&(pending_index, pending_term), _)) =
            self.pending_proposals.first_key_value()
        {
            if pending_index > index {
                break;
            }
            let Some(((_, _), waiters)) = self.pending_proposals.pop_first() else {
                break;
            };
            let same_entry = pending_index == index && pending_term == term;
            for waiter in waiters {
                let outcome = match (&outcome, waiter.respond_when) {
                    // Only an entry that took effect is "committed" to its proposer; an expired
                    // session's or a superseded request's answer says so instead.
                    (Some(ProposalOutcome::Applied { .. }), ResponseMode::Committed)
                        if same_entry =>
                    {
                        ProposalOutcome::Committed { index }
                    }
                    (Some(outcome), _) if same_entry => outcome.clone(),
                    _ => ProposalOutcome::Dropped {
                        index: pending_index,
                    },
                };
                self.out.replies.push(ClientReply {
                    id: waiter.id,
                    outcome,
                });
            }
        }
    }

    /// The term of our entry at `index` (0 at index 0).
    ///
    /// # Panics
    /// If the log lacks the entry: callers check the index against our own log first.
    pub(super) fn term_at(&self, index: LogIndex) -> Result<Term> {
        match self.log.term(index)? {
            Some(term) => Ok(term),
            None => panic!(
                "{}: no entry at {index} (last {})",
                self.who(),
                self.log.latest_log_index()
            ),
        }
    }
}
