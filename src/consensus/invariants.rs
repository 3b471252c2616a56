//! Single-server invariants checked after every step (in release builds too): bounds between the
//! indexes, what a leader must be, and values that must never move backwards. Cross-server
//! properties (election safety, log matching, ...) are the simulator's checker's job.

use super::progress::Progress;
use super::Role;
use crate::types::{LogIndex, ServerId, Term};
use std::collections::BTreeMap;

/// The values the checks read.
pub(super) struct State {
    pub role: Role,
    pub current_term: Term,
    pub voted_for: Option<ServerId>,
    pub leader_id: Option<ServerId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub durable_index: LogIndex,
    pub last_log_index: LogIndex,
}

/// What the previous check saw, for the "never backwards" checks.
#[derive(Debug)]
pub(super) struct Observed {
    current_term: Term,
    commit_index: LogIndex,
    last_applied: LogIndex,
}

impl Observed {
    pub(super) fn new(current_term: Term) -> Self {
        Observed {
            current_term,
            commit_index: LogIndex(0),
            last_applied: LogIndex(0),
        }
    }
}

pub(super) fn check(
    id: ServerId,
    state: &State,
    progress: &BTreeMap<ServerId, Progress>,
    observed: &mut Observed,
) {
    assert!(
        state.commit_index <= state.last_log_index,
        "{id}: commit_index {} beyond last_log_index {}",
        state.commit_index,
        state.last_log_index
    );
    assert!(
        state.last_applied <= state.commit_index,
        "{id}: last_applied {} beyond commit_index {}",
        state.last_applied,
        state.commit_index
    );
    assert!(
        state.durable_index <= state.last_log_index,
        "{id}: durable_index {} beyond last_log_index {}",
        state.durable_index,
        state.last_log_index
    );
    // §5.1: terms only grow; §5.3: committed entries stay committed and applied.
    assert!(
        state.current_term >= observed.current_term,
        "{id}: term fell from {} to {}",
        observed.current_term,
        state.current_term
    );
    assert!(
        state.commit_index >= observed.commit_index,
        "{id}: commit_index fell from {} to {}",
        observed.commit_index,
        state.commit_index
    );
    assert!(
        state.last_applied >= observed.last_applied,
        "{id}: last_applied fell from {} to {}",
        observed.last_applied,
        state.last_applied
    );
    if state.role == Role::Leader {
        assert_eq!(state.leader_id, Some(id), "{id}: a leader leads");
        assert_eq!(state.voted_for, Some(id), "{id}: a leader voted for itself");
        for (peer, progress) in progress {
            assert!(
                progress.match_index <= state.last_log_index,
                "{id}: match_index {} of {peer} beyond our last_log_index {}",
                progress.match_index,
                state.last_log_index
            );
        }
    } else {
        assert!(progress.is_empty(), "{id}: only a leader tracks progress");
    }
    if state.role == Role::Candidate {
        assert_eq!(
            state.voted_for,
            Some(id),
            "{id}: a candidate voted for itself"
        );
    }
    observed.current_term = state.current_term;
    observed.commit_index = state.commit_index;
    observed.last_applied = state.last_applied;
}
