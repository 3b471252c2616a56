//! Leadership transfer (thesis §3.10): the leader stops taking proposals, brings the chosen
//! follower's log up to date, and tells it to campaign at once (TimeoutNow). The follower's
//! vote requests say why, so voters answer even while their leader lease holds (§9.6). The
//! leader gives up after an election timeout and takes proposals again.

use super::{ClientReply, Consensus, Message, ProposalId, ProposalOutcome, Role, TimeoutNow};
use crate::error::Result;
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::ServerId;

/// A transfer under way at the leader.
#[derive(Clone, Debug)]
pub(super) struct LeaderTransfer {
    /// The voter to lead next.
    to: ServerId,
    /// The operator's request, answered when the transfer ends.
    waiter: ProposalId,
    /// Heartbeat intervals left before the transfer is abandoned (an election timeout's worth).
    heartbeats_left: u64,
    /// Whether TimeoutNow went out.
    timeout_now_sent: bool,
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    /// §3.10: starts handing leadership to `to`.
    pub(super) fn transfer_leadership(&mut self, id: ProposalId, to: ServerId) -> Result<()> {
        let outcome = if self.role != Role::Leader {
            Some(ProposalOutcome::NotLeader {
                leader: self.leader_id,
            })
        } else if to == self.id {
            Some(ProposalOutcome::LeadershipTransferred { to })
        } else if !self.voters.contains(&to) {
            Some(ProposalOutcome::TransferFailed {
                reason: format!(
                    "{to} is not a voting member of the cluster (voters {:?})",
                    self.voters
                ),
            })
        } else {
            self.transfer
                .as_ref()
                .map(|transfer| ProposalOutcome::TransferFailed {
                    reason: format!("a transfer to {} is already under way", transfer.to),
                })
        };
        if let Some(outcome) = outcome {
            self.out.replies.push(ClientReply { id, outcome });
            return Ok(());
        }
        let interval = self.config.heartbeat_interval.as_micros().max(1);
        let heartbeats = self
            .config
            .election_timeout_max
            .as_micros()
            .div_ceil(interval);
        self.transfer = Some(LeaderTransfer {
            to,
            waiter: id,
            heartbeats_left: u64::try_from(heartbeats).unwrap_or(u64::MAX).max(1),
            timeout_now_sent: false,
        });
        log::info!("{}: handing leadership to {to}", self.who());
        self.send_appends(to)?;
        self.continue_transfer(to);
        Ok(())
    }

    /// The server leadership is being handed to, if a transfer is under way.
    pub(super) fn transferring_to(&self) -> Option<ServerId> {
        self.transfer.as_ref().map(|transfer| transfer.to)
    }

    /// Sends TimeoutNow once the target holds our whole log (§3.10: it must be able to win).
    pub(super) fn continue_transfer(&mut self, peer: ServerId) {
        let last_log_index = self.log.latest_log_index();
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if transfer.to != peer || transfer.timeout_now_sent {
            return;
        }
        let caught_up = self
            .progress
            .get(&peer)
            .is_some_and(|progress| progress.match_index == last_log_index);
        if !caught_up {
            return;
        }
        transfer.timeout_now_sent = true;
        log::info!(
            "{}: {peer} holds our log through {last_log_index}; telling it to campaign",
            self.who()
        );
        self.send_timeout_now(peer);
    }

    /// §3.10: tells `peer`, which holds our whole log, to campaign at once.
    pub(super) fn send_timeout_now(&mut self, peer: ServerId) {
        let message = Message::TimeoutNow(TimeoutNow {
            term: self.current_term(),
            leader_id: self.id,
        });
        self.send(peer, message);
    }

    /// Every heartbeat interval of a transfer: retries TimeoutNow if it may have been lost, and
    /// abandons the transfer after an election timeout.
    pub(super) fn transfer_tick(&mut self) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.heartbeats_left = transfer.heartbeats_left.saturating_sub(1);
        if transfer.heartbeats_left == 0 {
            let LeaderTransfer { to, waiter, .. } = *transfer;
            self.transfer = None;
            log::warn!(
                "{}: {to} did not take over within {:?}; leading on",
                self.who(),
                self.config.election_timeout_max
            );
            self.out.replies.push(ClientReply {
                id: waiter,
                outcome: ProposalOutcome::TransferFailed {
                    reason: format!(
                        "{to} did not take over within an election timeout ({:?}); the leader \
                         leads on",
                        self.config.election_timeout_max
                    ),
                },
            });
            return;
        }
        let to = transfer.to;
        transfer.timeout_now_sent = false;
        self.continue_transfer(to);
    }

    /// Answers the operator when this leader steps down: for a higher term, the transfer
    /// worked (the target's election raised it); otherwise it failed.
    pub(super) fn end_transfer_on_step_down(&mut self, higher_term: bool) {
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        let outcome = if higher_term {
            ProposalOutcome::LeadershipTransferred { to: transfer.to }
        } else {
            ProposalOutcome::TransferFailed {
                reason: "the leader stepped down before the transfer finished".to_owned(),
            }
        };
        self.out.replies.push(ClientReply {
            id: transfer.waiter,
            outcome,
        });
    }

    /// §3.10: our leader hands leadership to us: campaign now, skipping pre-vote (the leader
    /// vouches that we can win) and telling voters to set their lease aside.
    pub(super) fn handle_timeout_now(&mut self, from: ServerId, request: TimeoutNow) -> Result<()> {
        if request.leader_id != from || self.role != Role::Follower || self.leader_id != Some(from)
        {
            log::warn!(
                "{}: ignored TimeoutNow from {from}, which is not our leader",
                self.who()
            );
            return Ok(());
        }
        log::info!("{}: {from} hands us leadership; campaigning", self.who());
        self.campaign(true)
    }
}
