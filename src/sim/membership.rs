//! Configuration changes in the simulator (thesis chapter 4): an operator who asks the leader to
//! add a spare (as voter or learner), promote a learner, remove a member (the leader itself
//! included) or add back a removed server, sometimes asking the same again as after a lost
//! answer; and the end-of-run check that every "committed" answer names a committed
//! configuration in which the change holds. The cross-server invariants of configurations
//! (single-server changes, one uncommitted configuration per log) are the checker's.

use super::{SimFailure, SimLog, Simulation};
use crate::consensus::{Event, MembershipChange, ProposalId, ProposalOutcome};
use crate::log::PersistentLog;
use crate::membership::Membership;
use crate::types::{LogIndex, ServerId};
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt;

/// Chance that the operator asks for the previous change again instead of a new one.
const REPEAT_PROBABILITY: f64 = 0.2;
/// Chance that a removal targets the leader itself (thesis §4.2.2).
const REMOVE_LEADER_PROBABILITY: f64 = 0.3;
/// Chance that a server added from outside the configuration joins as a voter, not a learner.
const ADD_AS_VOTER_PROBABILITY: f64 = 0.75;

/// One answer a leader gave to a configuration change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigurationAnswer {
    /// The server that answered.
    pub from: ServerId,
    /// What was asked.
    pub change: MembershipChange,
    /// What it answered.
    pub outcome: ProposalOutcome,
}

impl fmt::Display for ConfigurationAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let change = match &self.change {
            MembershipChange::AddServer { id, .. } => format!("add {id} as voter"),
            MembershipChange::AddLearner { id, .. } => format!("add {id} as learner"),
            MembershipChange::RemoveServer { id } => format!("remove {id}"),
        };
        write!(
            f,
            "{change}, answered by {} with {:?}",
            self.from, self.outcome
        )
    }
}

/// Where the simulator says server `id` listens: configurations need an address for each member
/// (`sim:3`).
pub fn address_of(id: ServerId) -> String {
    format!("sim:{}", id.0)
}

/// The change that adds `id` at its simulated address, as a voter or a learner.
fn add(id: ServerId, voter: bool) -> MembershipChange {
    let address = address_of(id);
    if voter {
        MembershipChange::AddServer { id, address }
    } else {
        MembershipChange::AddLearner { id, address }
    }
}

/// The configuration in force in `log` as a server restarted on it finds it (thesis §4.1): its
/// newest configuration entry, else its snapshot's, else the one it is started with.
pub(super) fn in_force(log: &SimLog, start_up: &Membership) -> Membership {
    let snapshot_index = log
        .snapshot_meta()
        .map_or(LogIndex(0), |meta| meta.last_index);
    let first = log.first_log_index().max(snapshot_index.next());
    let mut index = log.latest_log_index();
    while index >= first && !index.is_zero() {
        let entry = log.entry(index).ok().flatten();
        if let Some(Ok(membership)) = entry.and_then(|entry| entry.membership()) {
            return membership;
        }
        index = index.prev().unwrap_or_default();
    }
    match log.snapshot_meta() {
        Some(meta) => meta.membership.clone(),
        None => start_up.clone(),
    }
}

/// Whether `change` holds in `membership`.
fn holds(change: &MembershipChange, membership: &Membership) -> bool {
    match change {
        MembershipChange::AddServer { id, .. } => membership.is_voter(*id),
        MembershipChange::AddLearner { id, .. } => membership.is_learner(*id),
        MembershipChange::RemoveServer { id } => !membership.contains(*id),
    }
}

impl Simulation {
    /// Asks server `id` directly (no client, no network) to change the configuration; the
    /// reply names the outcome ([`ProposalOutcome::MembershipChanged`] once committed), and
    /// [`Simulation::check_configuration_answers`] checks it against the committed log.
    pub fn change_membership(&mut self, id: ServerId, change: MembershipChange) -> ProposalId {
        let proposal = self.next_direct_proposal();
        log::debug!(
            "sim {}us: asking {id} for {change:?} (request {})",
            self.clock.now(),
            proposal.0
        );
        self.membership_requests.insert(proposal, change.clone());
        self.last_membership_change = Some(change.clone());
        self.step_node(
            id,
            Event::ChangeMembership {
                id: proposal,
                change,
            },
        );
        proposal
    }

    /// Every answer to a configuration change so far, in order.
    pub fn configuration_answers(&self) -> &[ConfigurationAnswer] {
        &self.membership_answers
    }

    /// An operator asks the leader, if there is one, for a random configuration change: add a
    /// server outside the configuration (a spare, or a removed server whose log is stale) as
    /// voter or learner, promote a learner, or remove a member, sometimes the leader itself and
    /// sometimes the only voter (which the core refuses). Now and then it asks for the previous
    /// change again, as after a lost answer: changes are idempotent.
    pub(super) fn ask_for_membership_change(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let membership = self
            .node(leader)
            .expect("the leader runs")
            .membership()
            .clone();
        let repeat = match &self.last_membership_change {
            Some(change) if self.rng.gen_bool(REPEAT_PROBABILITY) => Some(change.clone()),
            _ => None,
        };
        let change = match repeat {
            Some(change) => change,
            None => self.draw_membership_change(leader, &membership),
        };
        self.counts.membership_changes_asked += 1;
        self.change_membership(leader, change);
    }

    fn draw_membership_change(
        &mut self,
        leader: ServerId,
        membership: &Membership,
    ) -> MembershipChange {
        let outsiders: Vec<ServerId> = self
            .servers
            .iter()
            .copied()
            .filter(|&id| !membership.contains(id))
            .collect();
        let learners = membership.learners();
        let mut kinds = vec!["remove"];
        if !outsiders.is_empty() {
            kinds.push("add");
        }
        if !learners.is_empty() {
            kinds.push("promote");
        }
        match *kinds
            .choose(&mut self.rng)
            .expect("removal is always possible")
        {
            "add" => {
                let id = *outsiders.choose(&mut self.rng).expect("not empty");
                let voter = self.rng.gen_bool(ADD_AS_VOTER_PROBABILITY);
                add(id, voter)
            }
            "promote" => {
                let id = *learners.choose(&mut self.rng).expect("not empty");
                add(id, true)
            }
            _ => {
                let id = if self.rng.gen_bool(REMOVE_LEADER_PROBABILITY) {
                    leader
                } else {
                    *membership
                        .ids()
                        .choose(&mut self.rng)
                        .expect("the leader's configuration has the leader")
                };
                MembershipChange::RemoveServer { id }
            }
        }
    }

    /// Counts and keeps a leader's answer to a configuration change.
    pub(super) fn record_membership_answer(
        &mut self,
        from: ServerId,
        change: MembershipChange,
        outcome: &ProposalOutcome,
    ) {
        log::debug!(
            "sim {}us: {from} answered {change:?} with {outcome:?}",
            self.clock.now()
        );
        match outcome {
            ProposalOutcome::MembershipChanged { .. } => {
                self.counts.membership_changes_committed += 1;
            }
            ProposalOutcome::MembershipChangeFailed { .. } => {
                self.counts.membership_changes_failed += 1;
            }
            _ => self.counts.membership_changes_abandoned += 1,
        }
        self.membership_answers.push(ConfigurationAnswer {
            from,
            change,
            outcome: outcome.clone(),
        });
    }

    /// Checks every answer that called a configuration change committed at an index (thesis
    /// §4.1): that index must be committed, and the configuration in force there must hold the
    /// change (the server is a voter, a learner, or gone). Call it at the end of a run, once the
    /// cluster has healed and committed a new entry: an answered change was committed before it.
    ///
    /// # Errors
    /// The answer that the committed log contradicts.
    pub fn check_configuration_answers(&self) -> Result<(), SimFailure> {
        for answer in &self.membership_answers {
            let ProposalOutcome::MembershipChanged { index } = answer.outcome else {
                continue;
            };
            let Some((at, membership)) = self.checker.committed_membership_at(index) else {
                return Err(self.failure(format!(
                    "configuration answer: {answer}, but the cluster committed only up to {}",
                    self.checker.committed_count()
                )));
            };
            if !holds(&answer.change, membership) {
                return Err(self.failure(format!(
                    "configuration answer: {answer}, but the configuration committed in force at \
                     {index} (from {at}) is {membership}"
                )));
            }
        }
        Ok(())
    }
}
