//! Configuration changes (thesis chapter 4): which configuration is in force, and the leader's
//! side of adding and removing servers one at a time.
//!
//! * §4.1: a server uses the newest configuration in its log, committed or not; truncating its
//!   entry reverts to the previous one. Changes add or remove a single server, so any majority
//!   of the old configuration overlaps any majority of the new, and only one change may be
//!   uncommitted at a time. A leader makes no change before an entry of its own term has
//!   committed (its no-op), or a change made by an earlier leader could still be undone.
//! * §4.2.1: a new server joins as a learner and is caught up in rounds; it is promoted to
//!   voter once a round (replicating up to the leader's last index at the round's start) takes
//!   less than an election timeout, so adding it cannot leave the cluster unavailable for long.
//! * §4.2.2: a leader removed from the configuration leads until the change commits, not
//!   counting itself, then hands leadership to the most up-to-date voter and steps down.

use super::progress::{Progress, ReplicationState};
use super::{
    ClientReply, Consensus, MembershipChange, ProposalId, ProposalOutcome, Role, Timer, TimerAction,
};
use crate::error::{LogError, Result};
use crate::log::{Entry, PersistentLog};
use crate::membership::Membership;
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId};

/// Most catch-up rounds before adding a server is given up (thesis §4.2.1 suggests about ten).
pub(super) const CATCH_UP_ROUNDS_MAX: u32 = 10;

/// Election timeouts in a row without any progress by a new server before adding it is given
/// up: it is down, unreachable, or at the wrong address.
pub(super) const CATCH_UP_IDLE_TIMEOUTS_MAX: u32 = 10;

/// Bytes of log read at a time when looking for configuration entries at start.
const SCAN_BATCH_BYTES: u64 = 4 << 20;

/// A configuration change under way at the leader.
#[derive(Clone, Debug)]
pub(super) struct PendingChange {
    /// The operator's request, answered when the change ends.
    waiter: ProposalId,
    stage: Stage,
}

#[derive(Clone, Debug)]
enum Stage {
    /// Bringing a learner up to date before promoting it (thesis §4.2.1).
    CatchingUp(CatchUp),
    /// Waiting for the configuration entry at this index to commit.
    Committing(LogIndex),
}

#[derive(Clone, Debug)]
struct CatchUp {
    learner: ServerId,
    /// Round number, from 1.
    round: u32,
    /// The leader's last index when the round started: the round ends when the learner has it.
    target: LogIndex,
    /// Whether the round has run for an election timeout already.
    slow: bool,
    /// The learner's position (match index, snapshot bytes acknowledged) at the last timeout.
    last_position: (LogIndex, u64),
    /// Timeouts in a row at which the learner had not moved.
    idle_timeouts: u32,
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    // ---- the configuration in force (every server) ----

    /// At start: the snapshot's configuration (or the initial one) and every configuration
    /// entry in the log after it.
    pub(super) fn load_configurations(&mut self) -> Result<()> {
        let base = match self.log.snapshot_meta() {
            Some(meta) => (meta.last_index, meta.membership.clone()),
            None => (LogIndex(0), self.bootstrap.clone()),
        };
        self.configurations.clear();
        self.configurations.insert(base.0, base.1);
        let mut from = base.0.next().max(self.log.first_log_index());
        let end = self.log.latest_log_index().next();
        while from < end {
            let entries = self.log.entries(from, end, SCAN_BATCH_BYTES)?;
            assert!(!entries.is_empty(), "entries {from}..{end} are in the log");
            for (offset, entry) in entries.iter().enumerate() {
                let index = LogIndex(from.0 + offset as u64);
                if let Some(decoded) = entry.membership() {
                    let membership = decoded.map_err(|reason| LogError::Snapshot {
                        location: format!("log entry {index}"),
                        reason: format!("malformed configuration: {reason}"),
                    })?;
                    self.configurations.insert(index, membership);
                }
            }
            from = LogIndex(from.0 + entries.len() as u64);
        }
        let in_force = self.membership();
        if !self.bootstrap.is_empty() && !in_force.same_roles(&self.bootstrap) {
            log::info!(
                "{}: the log's configuration ({in_force}) replaces the one given at start ({})",
                self.id,
                self.bootstrap
            );
        }
        self.on_membership_changed();
        Ok(())
    }

    /// Records the configuration entries among `entries`, just appended from `from` on.
    pub(super) fn record_configurations(&mut self, from: LogIndex, entries: &[Entry]) {
        let mut changed = false;
        for (offset, entry) in entries.iter().enumerate() {
            if let Some(decoded) = entry.membership() {
                let membership = decoded.unwrap_or_else(|reason| {
                    panic!("configuration entries are checked before appending: {reason}")
                });
                self.configurations
                    .insert(LogIndex(from.0 + offset as u64), membership);
                changed = true;
            }
        }
        if changed {
            self.on_membership_changed();
        }
    }

    /// Checks the configuration entries a leader sent before they enter our log: a malformed
    /// one would leave this server unable to say who the members are.
    pub(super) fn check_configuration_entries(
        entries: &[Entry],
    ) -> std::result::Result<(), String> {
        for entry in entries {
            if let Some(Err(reason)) = entry.membership() {
                return Err(reason);
            }
        }
        Ok(())
    }

    /// After removing the log from `from` on (§5.3): configurations that were there are undone.
    pub(super) fn forget_configurations_from(&mut self, from: LogIndex) {
        let removed = self.configurations.split_off(&from);
        assert!(
            !self.configurations.is_empty(),
            "{}: truncating at {from} removed the committed configuration",
            self.who()
        );
        if !removed.is_empty() {
            self.on_membership_changed();
        }
    }

    /// After our own snapshot through `snapshot_index` is in force: configurations older than
    /// the one in force at its index are no longer needed.
    pub(super) fn prune_configurations(&mut self, snapshot_index: LogIndex) {
        if let Some((&base, _)) = self.configurations.range(..=snapshot_index).next_back() {
            self.configurations = self.configurations.split_off(&base);
        }
    }

    /// After installing a leader's snapshot (§7): its configuration is in force at its last
    /// index; the configuration entries of a log suffix the install kept stay (they are the
    /// same entries), and every other one is gone with the entries it came from.
    pub(super) fn adopt_snapshot_configuration(&mut self) {
        let meta = self
            .log
            .snapshot_meta()
            .expect("a snapshot was just installed");
        let (last_index, membership) = (meta.last_index, meta.membership.clone());
        let latest = self.log.latest_log_index();
        let mut kept = self.configurations.split_off(&last_index.next());
        kept.retain(|&index, _| index <= latest);
        kept.insert(last_index, membership);
        self.configurations = kept;
        self.on_membership_changed();
    }

    /// The configuration in force at `index` (for a snapshot through it).
    pub(super) fn membership_at(&self, index: LogIndex) -> Membership {
        self.configurations
            .range(..=index)
            .next_back()
            .map(|(_, membership)| membership.clone())
            .expect("the oldest configuration kept is at or below every index asked for")
    }

    /// Brings everything that depends on the configuration in line with the one in force.
    pub(super) fn on_membership_changed(&mut self) {
        let membership = self.membership().clone();
        self.voters = membership.voters();
        self.peers = membership
            .ids()
            .into_iter()
            .filter(|&member| member != self.id)
            .collect();
        log::debug!("{}: configuration now {membership}", self.who());
        if self.role != Role::Leader {
            self.release_proposals_if_outside();
            return;
        }
        // The leader replicates to every member, learners included, and to no one else.
        let next = self.log.latest_log_index().next();
        self.progress.retain(|peer, _| membership.contains(*peer));
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            self.progress
                .entry(peer)
                .or_insert_with(|| Progress::new(next));
        }
        if let Some(to) = self.transferring_to() {
            if !membership.is_voter(to) {
                self.end_transfer_on_step_down(false);
            }
        }
    }

    // ---- the leader's side of a change ----

    /// Starts `change`, or answers at once if it is already made or cannot be made now.
    pub(super) fn change_membership(
        &mut self,
        id: ProposalId,
        change: MembershipChange,
    ) -> Result<()> {
        if !self.taking_proposals() {
            let outcome = ProposalOutcome::NotLeader {
                leader: self.leader_id.filter(|&leader| leader != self.id),
            };
            self.out.replies.push(ClientReply { id, outcome });
            return Ok(());
        }
        match self.start_change(id, change)? {
            Ok(Some(outcome)) => self.out.replies.push(ClientReply { id, outcome }),
            Ok(None) => {}
            Err(reason) => {
                log::info!("{}: configuration change refused: {reason}", self.who());
                let outcome = ProposalOutcome::MembershipChangeFailed { reason };
                self.out.replies.push(ClientReply { id, outcome });
            }
        }
        self.advance_membership_change()
    }

    /// `Ok(Ok(Some(outcome)))`: answered at once; `Ok(Ok(None))`: under way; `Ok(Err(reason))`:
    /// refused.
    #[allow(clippy::type_complexity)]
    fn start_change(
        &mut self,
        waiter: ProposalId,
        change: MembershipChange,
    ) -> Result<std::result::Result<Option<ProposalOutcome>, String>> {
        let current = self.membership().clone();
        let current_index = self.membership_index();
        // Idempotent requests are answered first, so a retry after a lost answer succeeds even
        // while the cluster is busy.
        let (target, address) = match &change {
            MembershipChange::AddServer { id, address }
            | MembershipChange::AddLearner { id, address } => (*id, Some(address.clone())),
            MembershipChange::RemoveServer { id } => (*id, None),
        };
        if let Some(address) = &address {
            if target.0 == 0 {
                return Ok(Err("server id 0 is reserved for \"no server\"".to_string()));
            }
            let candidate = current.clone().with_learner(target, address.clone());
            if let Err(reason) = candidate.validate() {
                return Ok(Err(reason));
            }
            if address.is_empty() {
                return Ok(Err(format!("{target} needs an address to be reached at")));
            }
            if let Some(member) = current.member(target) {
                if member.address != *address && !member.address.is_empty() {
                    return Ok(Err(format!(
                        "{target} is already a member at {}; remove it first to move it to \
                         {address}",
                        member.address
                    )));
                }
            }
        }
        let wants_voter = matches!(change, MembershipChange::AddServer { .. });
        let already_made = match &change {
            MembershipChange::AddServer { .. } => current.is_voter(target),
            MembershipChange::AddLearner { .. } => current.is_learner(target),
            MembershipChange::RemoveServer { .. } => !current.contains(target),
        };
        if already_made {
            if current_index <= self.commit_index {
                let index = current_index;
                return Ok(Ok(Some(ProposalOutcome::MembershipChanged { index })));
            }
            // The change is in the log but not committed: it may yet be undone (a new leader
            // may overwrite it), so "made" is said only once it commits.
            if let Some(reason) = self.change_blocked_by_pending() {
                return Ok(Err(reason));
            }
            self.membership_change = Some(PendingChange {
                waiter,
                stage: Stage::Committing(current_index),
            });
            return Ok(Ok(None));
        }
        if matches!(change, MembershipChange::AddLearner { .. }) && current.is_voter(target) {
            return Ok(Err(format!(
                "{target} is a voter; remove it first to make it a learner"
            )));
        }
        if let Some(reason) = self.change_blocked() {
            return Ok(Err(reason));
        }
        let next = match change {
            MembershipChange::AddServer { .. } if current.is_learner(target) => {
                // Already a learner (an earlier attempt, or added as one): catch it up again.
                self.start_catch_up(waiter, target);
                return Ok(Ok(None));
            }
            MembershipChange::AddServer { address, .. }
            | MembershipChange::AddLearner { address, .. } => {
                current.clone().with_learner(target, address)
            }
            MembershipChange::RemoveServer { .. } => {
                let next = current.clone().without(target);
                if current.is_voter(target) && next.voter_count() == 0 {
                    return Ok(Err(format!(
                        "{target} is the only voter; add another server before removing it"
                    )));
                }
                next
            }
        };
        let index = self.append_configuration(&next)?;
        if wants_voter {
            // Promotion waits for this entry to commit as well as for the learner.
            self.start_catch_up(waiter, target);
        } else {
            self.membership_change = Some(PendingChange {
                waiter,
                stage: Stage::Committing(index),
            });
        }
        Ok(Ok(None))
    }

    /// Why no change can start now, if one cannot (thesis §4.1: one at a time, and only once
    /// this leader has committed an entry of its term).
    fn change_blocked(&self) -> Option<String> {
        if let Some(reason) = self.change_blocked_by_pending() {
            return Some(reason);
        }
        if self.commit_index < self.term_start {
            return Some(
                "this leader has not committed an entry of its term yet; retry shortly".to_string(),
            );
        }
        if self.membership_index() > self.commit_index {
            return Some(format!(
                "the configuration at {} is not committed yet; retry when it is",
                self.membership_index()
            ));
        }
        None
    }

    /// Why no change can start now because this leader is making one, if it is.
    fn change_blocked_by_pending(&self) -> Option<String> {
        if let Some(pending) = &self.membership_change {
            return Some(match &pending.stage {
                Stage::CatchingUp(catch_up) => format!(
                    "a configuration change is in progress (adding {}); retry when it completes",
                    catch_up.learner
                ),
                Stage::Committing(index) => format!(
                    "a configuration change is in progress (the entry at {index} is not \
                     committed yet); retry when it completes"
                ),
            });
        }
        None
    }

    /// Appends `membership` as a configuration entry of our term and starts replicating it.
    fn append_configuration(&mut self, membership: &Membership) -> Result<LogIndex> {
        let index = self.log.latest_log_index().next();
        let entry = Entry::configuration(self.current_term(), membership);
        self.append_to_own_log(vec![entry])?;
        log::info!(
            "{}: configuration {membership} appended at {index}",
            self.who()
        );
        for position in 0..self.peers.len() {
            let peer = self.peers[position];
            self.send_appends(peer)?;
        }
        self.advance_commit_index()?;
        Ok(index)
    }

    fn start_catch_up(&mut self, waiter: ProposalId, learner: ServerId) {
        let target = self.log.latest_log_index();
        let last_position = self.catch_up_position(learner);
        let stage = Stage::CatchingUp(CatchUp {
            learner,
            round: 1,
            target,
            slow: false,
            last_position,
            idle_timeouts: 0,
        });
        log::info!("{}: catching up {learner}: round 1 to {target}", self.who());
        self.membership_change = Some(PendingChange { waiter, stage });
        self.arm_catch_up_timer();
    }

    fn arm_catch_up_timer(&mut self) {
        self.out.timers.push(TimerAction::Set {
            timer: Timer::CatchUp,
            after: self.config.election_timeout_min,
        });
    }

    /// How far `learner` has got: its match index and the snapshot bytes it acknowledged.
    fn catch_up_position(&self, learner: ServerId) -> (LogIndex, u64) {
        self.progress
            .get(&learner)
            .map_or((LogIndex(0), 0), |progress| {
                let acked = match progress.state {
                    ReplicationState::Snapshot { acked, .. } => acked,
                    _ => 0,
                };
                (progress.match_index, acked)
            })
    }

    /// The catch-up round ran for an election timeout: it is slow (another round will follow),
    /// and if the learner has not moved at all for too long, adding it is given up.
    pub(super) fn on_catch_up_timeout(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let (waiter, mut catch_up) = match self.membership_change.take() {
            Some(PendingChange {
                waiter,
                stage: Stage::CatchingUp(catch_up),
            }) => (waiter, catch_up),
            other => {
                self.membership_change = other;
                return Ok(());
            }
        };
        let learner = catch_up.learner;
        let position = self.catch_up_position(learner);
        catch_up.slow = true;
        if position == catch_up.last_position {
            catch_up.idle_timeouts += 1;
        } else {
            catch_up.idle_timeouts = 0;
            catch_up.last_position = position;
        }
        if catch_up.idle_timeouts >= CATCH_UP_IDLE_TIMEOUTS_MAX {
            let reason = format!(
                "{learner} made no progress for {} election timeouts ({:?} each); is it running \
                 and reachable? It stays a learner: add it again to retry, or remove it",
                CATCH_UP_IDLE_TIMEOUTS_MAX, self.config.election_timeout_min
            );
            self.fail_change(waiter, reason);
            return Ok(());
        }
        self.membership_change = Some(PendingChange {
            waiter,
            stage: Stage::CatchingUp(catch_up),
        });
        self.arm_catch_up_timer();
        Ok(())
    }

    fn fail_change(&mut self, waiter: ProposalId, reason: String) {
        log::warn!("{}: configuration change failed: {reason}", self.who());
        self.membership_change = None;
        self.out.timers.push(TimerAction::Cancel(Timer::CatchUp));
        self.out.replies.push(ClientReply {
            id: waiter,
            outcome: ProposalOutcome::MembershipChangeFailed { reason },
        });
    }

    /// After every step: moves a change along (a round finished, an entry committed) and makes
    /// a leader that removed itself step down once that is committed.
    pub(super) fn advance_membership_change(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        if let Some(pending) = self.membership_change.clone() {
            match pending.stage {
                Stage::CatchingUp(catch_up) => self.advance_catch_up(pending.waiter, catch_up)?,
                Stage::Committing(index) if index <= self.commit_index => {
                    self.membership_change = None;
                    self.out.replies.push(ClientReply {
                        id: pending.waiter,
                        outcome: ProposalOutcome::MembershipChanged { index },
                    });
                }
                Stage::Committing(_) => {}
            }
        }
        // §4.2.2: once its removal is committed, the leader takes nothing new and leaves as
        // soon as everything it appended is committed, so no proposer is left waiting on a
        // server that will never hear of the outcome.
        if self.leaving() && self.commit_index == self.log.latest_log_index() {
            self.step_down_after_removal()?;
        }
        Ok(())
    }

    /// Whether this leader's removal from the configuration is committed (thesis §4.2.2).
    pub(super) fn leaving(&self) -> bool {
        self.role == Role::Leader
            && !self.membership().is_voter(self.id)
            && self.membership_index() <= self.commit_index
    }

    /// A server outside the configuration in force may never hear of another entry: its
    /// proposals still waiting are answered "unknown" (a session request can be retried safely)
    /// rather than left to their deadline.
    pub(super) fn release_proposals_if_outside(&mut self) {
        if self.role == Role::Leader || self.membership().contains(self.id) {
            return;
        }
        for ((index, _), waiters) in std::mem::take(&mut self.pending_proposals) {
            for waiter in waiters {
                self.out.replies.push(ClientReply {
                    id: waiter.id,
                    outcome: ProposalOutcome::Unknown { index },
                });
            }
        }
    }

    fn advance_catch_up(&mut self, waiter: ProposalId, catch_up: CatchUp) -> Result<()> {
        let learner = catch_up.learner;
        // Only this leader changes the configuration while the change is pending.
        assert!(
            self.membership().is_learner(learner),
            "{}: {learner} stopped being a learner mid-change",
            self.who()
        );
        let (match_index, _) = self.catch_up_position(learner);
        if match_index < catch_up.target {
            return Ok(());
        }
        if catch_up.slow {
            if catch_up.round >= CATCH_UP_ROUNDS_MAX {
                let reason = format!(
                    "{learner} did not catch up: each of {CATCH_UP_ROUNDS_MAX} rounds took \
                     longer than an election timeout ({:?}); it stays a learner: add it again \
                     to retry, or remove it",
                    self.config.election_timeout_min
                );
                self.fail_change(waiter, reason);
                return Ok(());
            }
            let target = self.log.latest_log_index();
            log::info!(
                "{}: catching up {learner}: round {} to {target}",
                self.who(),
                catch_up.round + 1
            );
            let position = self.catch_up_position(learner);
            self.membership_change = Some(PendingChange {
                waiter,
                stage: Stage::CatchingUp(CatchUp {
                    learner,
                    round: catch_up.round + 1,
                    target,
                    slow: false,
                    last_position: position,
                    idle_timeouts: 0,
                }),
            });
            self.arm_catch_up_timer();
            return Ok(());
        }
        // A fast round: the learner keeps up. Promote it once the configuration that made it a
        // learner is committed (one change at a time).
        if self.membership_index() > self.commit_index {
            return Ok(());
        }
        self.out.timers.push(TimerAction::Cancel(Timer::CatchUp));
        let address = self
            .membership()
            .member(learner)
            .map(|member| member.address.clone())
            .unwrap_or_default();
        let next = self.membership().clone().with_voter(learner, address);
        log::info!(
            "{}: {learner} caught up in round {}; promoting it",
            self.who(),
            catch_up.round
        );
        let index = self.append_configuration(&next)?;
        self.membership_change = Some(PendingChange {
            waiter,
            stage: Stage::Committing(index),
        });
        // A one-voter cluster commits at once.
        if index <= self.commit_index {
            return self.advance_membership_change();
        }
        Ok(())
    }

    /// Thesis §4.2.2: the configuration that removed this leader is committed. It hands
    /// leadership to the voter with the most of its log (at once, if that one holds all of it)
    /// and steps down.
    fn step_down_after_removal(&mut self) -> Result<()> {
        let last = self.log.latest_log_index();
        let successor = self
            .voters
            .iter()
            .filter_map(|&voter| Some((self.progress.get(&voter)?.match_index, voter)))
            .max();
        if let Some((match_index, successor)) = successor {
            if match_index == last {
                log::info!(
                    "{}: removed from the configuration; handing leadership to {successor}",
                    self.who()
                );
                self.send_timeout_now(successor);
            }
        }
        log::info!(
            "{}: removed from the configuration; stepping down",
            self.who()
        );
        let term = self.current_term();
        self.become_follower(term, None)?;
        self.release_proposals_if_outside();
        Ok(())
    }

    /// On stepping down: the change's requester learns who leads now. The change itself may
    /// still complete under the next leader; asking again is safe (changes are idempotent).
    pub(super) fn abandon_membership_change(&mut self, leader: Option<ServerId>) {
        if let Some(pending) = self.membership_change.take() {
            self.out.timers.push(TimerAction::Cancel(Timer::CatchUp));
            self.out.replies.push(ClientReply {
                id: pending.waiter,
                outcome: ProposalOutcome::NotLeader { leader },
            });
        }
    }
}
