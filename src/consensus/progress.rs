//! Owns what the leader knows of each follower (§5.3): its match and next index and how
//! replication to it proceeds. Choosing what to send is `replication.rs`'s job.
//!
//! A follower is in one of three states. **Probe**: the leader does not know where the follower's
//! log ends; it sends one append at a time and waits for the answer (or the next heartbeat) before
//! sending another. **Replicate**: the follower's log is known to match up to `match_index`; the
//! leader streams appends optimistically, advancing `next_index` as it sends, with at most
//! `in_flight_appends_max` unacknowledged at once (pipelining). **Snapshot**: the follower needs
//! entries the leader has compacted (§7); the leader streams its snapshot in chunks, with a
//! window of unacknowledged bytes, and resumes from the follower's acknowledged offset after a
//! loss or reconnection.

use crate::types::LogIndex;
use std::collections::VecDeque;

/// How the leader currently replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// One append at a time until a success reveals where the logs match.
    Probe {
        /// An append is outstanding: wait for its answer or the next heartbeat.
        paused: bool,
    },
    /// Appends stream ahead of acknowledgements, bounded by the in-flight window.
    Replicate,
    /// The snapshot through `last_index` is being sent.
    /// Invariant: `acked <= sent` (both within the snapshot's size).
    Snapshot {
        /// Which snapshot (the last index it covers).
        last_index: LogIndex,
        /// Its length in bytes.
        size: u64,
        /// Bytes sent: the next chunk starts here.
        sent: u64,
        /// Bytes the follower said it holds.
        acked: u64,
    },
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be stored on the follower (from its acknowledgements only).
    /// 0 = nothing known. Monotonic within a term, unless the follower reports a shorter log
    /// ([`Progress::forget_match`]). Invariant: `match_index < next_index`.
    pub match_index: LogIndex,
    /// Index of the next entry to send. Invariant: `match_index < next_index`.
    pub next_index: LogIndex,
    /// Probe or Replicate.
    pub state: ReplicationState,
    /// Last index of each append sent and not yet acknowledged, oldest first (Replicate only).
    in_flight: VecDeque<LogIndex>,
    /// Whether an acknowledgement advanced `match_index` since the last heartbeat, used to detect
    /// lost appends when the window stays full.
    acked_since_heartbeat: bool,
    /// The highest ReadIndex round this follower answered in the leader's term (thesis §6.4).
    acked_read_round: u64,
    /// Whether the follower answered since the last quorum check (check-quorum).
    recent_activity: bool,
}

impl Progress {
    /// A follower a new leader knows nothing about: probe from `next_index`.
    pub fn new(next_index: LogIndex) -> Self {
        assert!(!next_index.is_zero(), "next_index starts at 1 or later");
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ReplicationState::Probe { paused: false },
            in_flight: VecDeque::new(),
            acked_since_heartbeat: false,
            acked_read_round: 0,
            recent_activity: false,
        }
    }

    /// Records that the follower answered (check-quorum).
    pub fn record_activity(&mut self) {
        self.recent_activity = true;
    }

    /// Whether the follower answered since the previous call.
    pub fn take_recent_activity(&mut self) -> bool {
        std::mem::take(&mut self.recent_activity)
    }

    /// Whether the leader is still looking for where the follower's log matches.
    pub fn is_probing(&self) -> bool {
        matches!(self.state, ReplicationState::Probe { .. })
    }

    /// Records an answer of the leader's term to read round `round`.
    pub fn on_read_round(&mut self, round: u64) {
        self.acked_read_round = self.acked_read_round.max(round);
    }

    /// The highest read round answered.
    pub fn acked_read_round(&self) -> u64 {
        self.acked_read_round
    }

    /// Whether the leader may send this follower an append now.
    pub fn can_send(&self, last_log_index: LogIndex, in_flight_appends_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe { paused } => !paused,
            ReplicationState::Replicate => {
                self.next_index <= last_log_index && self.in_flight.len() < in_flight_appends_max
            }
            ReplicationState::Snapshot { .. } => false,
        }
    }

    /// Records that an append ending at `last_index` was sent.
    pub fn on_sent(&mut self, last_index: LogIndex) {
        match self.state {
            ReplicationState::Probe { .. } => {
                self.state = ReplicationState::Probe { paused: true };
            }
            ReplicationState::Replicate => {
                self.next_index = last_index.next();
                self.in_flight.push_back(last_index);
            }
            ReplicationState::Snapshot { .. } => {
                unreachable!("appends are not sent while a snapshot is")
            }
        }
        self.check();
    }

    /// Starts sending the snapshot through `last_index`, `size` bytes long, from its first
    /// byte.
    pub fn become_snapshot(&mut self, last_index: LogIndex, size: u64) {
        self.state = ReplicationState::Snapshot {
            last_index,
            size,
            sent: 0,
            acked: 0,
        };
        self.in_flight.clear();
        self.check();
    }

    /// Records that a chunk of `length` bytes was sent.
    pub fn on_snapshot_sent(&mut self, length: u64) {
        if let ReplicationState::Snapshot { sent, .. } = &mut self.state {
            *sent += length;
        }
        self.check();
    }

    /// Applies the follower's answer that it holds the first `received` bytes of the snapshot
    /// through `last_index`. An answer about another snapshot is stale and ignored. Fewer bytes
    /// than acknowledged before means it lost them (restarted, or dropped an out-of-order chunk)
    /// or the answer was reordered: sending resumes from `received` either way.
    pub fn on_snapshot_ack(&mut self, last_index: LogIndex, received: u64) {
        let ReplicationState::Snapshot {
            last_index: sending,
            sent,
            acked,
            ..
        } = &mut self.state
        else {
            return;
        };
        if *sending != last_index {
            return;
        }
        if received > *acked {
            self.acked_since_heartbeat = true;
        }
        if received < *acked || received > *sent {
            *sent = received;
        }
        *acked = received;
        self.check();
    }

    /// The follower holds everything through `match_index` (it installed the snapshot, or
    /// already had it): replicate from there. Returns whether the match index advanced.
    pub fn on_snapshot_done(&mut self, match_index: LogIndex) -> bool {
        if !matches!(self.state, ReplicationState::Snapshot { .. }) {
            // A late answer after the transfer ended: an acknowledgement like any other.
            return self.on_success(match_index);
        }
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
            self.acked_since_heartbeat = true;
        }
        self.become_probe(self.match_index.next());
        advanced
    }

    /// After a reconnection: chunks in flight may be lost, so resend from the acknowledged
    /// offset (resuming the transfer rather than restarting it).
    pub fn resume_snapshot(&mut self) {
        if let ReplicationState::Snapshot { sent, acked, .. } = &mut self.state {
            *sent = *acked;
        }
    }

    /// Applies a successful acknowledgement up to `match_index`. Returns whether it taught the
    /// leader anything new (a stale or duplicate acknowledgement returns false).
    pub fn on_success(&mut self, match_index: LogIndex) -> bool {
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
            self.acked_since_heartbeat = true;
        }
        if self.next_index <= self.match_index {
            self.next_index = self.match_index.next();
        }
        while self
            .in_flight
            .front()
            .is_some_and(|&end| end <= match_index)
        {
            self.in_flight.pop_front();
        }
        if let ReplicationState::Probe { .. } = self.state {
            // The logs match up to match_index: stream from here on.
            self.state = ReplicationState::Replicate;
            self.next_index = self.match_index.next();
            self.in_flight.clear();
        }
        self.check();
        advanced
    }

    /// The follower says its log ends at `last_log_index`, below what it acknowledged: believe
    /// it, and probe from there.
    pub fn forget_match(&mut self, last_log_index: LogIndex) {
        if last_log_index < self.match_index {
            self.match_index = last_log_index;
            self.become_probe(last_log_index.next());
        }
    }

    /// Falls back to probing from `next_index` (clamped above the match index) after a rejection,
    /// a reconnection or a stall.
    pub fn become_probe(&mut self, next_index: LogIndex) {
        self.next_index = next_index.max(self.match_index.next());
        self.state = ReplicationState::Probe { paused: false };
        self.in_flight.clear();
        self.check();
    }

    /// Called every heartbeat interval. Unpauses a probe; in Replicate, a full window with no
    /// acknowledgement for a whole interval means appends were lost, so probe again from the
    /// match index. Returns whether the follower was sent back to probing.
    pub fn on_heartbeat(&mut self, in_flight_appends_max: usize) -> bool {
        let stalled = self.state == ReplicationState::Replicate
            && !self.in_flight.is_empty()
            && (!self.acked_since_heartbeat || self.in_flight.len() >= in_flight_appends_max);
        let acked_before = self.acked_since_heartbeat;
        self.acked_since_heartbeat = false;
        match self.state {
            ReplicationState::Probe { .. } => {
                self.state = ReplicationState::Probe { paused: false };
                false
            }
            ReplicationState::Replicate if stalled => {
                self.become_probe(self.match_index.next());
                true
            }
            ReplicationState::Replicate => false,
            ReplicationState::Snapshot { sent, acked, .. } => {
                // Chunks outstanding and nothing acknowledged for a whole interval: lost.
                let stalled = sent > acked && !acked_before;
                if stalled {
                    self.resume_snapshot();
                }
                stalled
            }
        }
    }

    /// Number of appends awaiting acknowledgement.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    fn check(&self) {
        if let ReplicationState::Snapshot { sent, acked, .. } = self.state {
            assert!(
                acked <= sent,
                "progress invariant: acked {acked} <= sent {sent}"
            );
        }
        assert!(
            self.match_index < self.next_index,
            "progress invariant: match_index {} < next_index {}",
            self.match_index,
            self.next_index
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_pauses() {
        let mut progress = Progress::new(LogIndex(5));
        assert!(progress.can_send(LogIndex(5), 4));
        progress.on_sent(LogIndex(5));
        assert!(!progress.can_send(LogIndex(5), 4));
        progress.on_heartbeat(4);
        assert!(progress.can_send(LogIndex(5), 4));
    }

    #[test]
    fn success_switches_to_replicate_and_window_bounds_sends() {
        let mut progress = Progress::new(LogIndex(1));
        progress.on_sent(LogIndex(1));
        assert!(progress.on_success(LogIndex(1)));
        assert_eq!(progress.state, ReplicationState::Replicate);
        for end in 2..=3 {
            assert!(progress.can_send(LogIndex(10), 2));
            progress.on_sent(LogIndex(end));
        }
        assert!(!progress.can_send(LogIndex(10), 2), "window of 2 is full");
        assert_eq!(progress.next_index, LogIndex(4));
        assert!(progress.on_success(LogIndex(2)));
        assert_eq!(progress.in_flight_count(), 1);
        assert!(
            !progress.on_success(LogIndex(2)),
            "duplicate ack teaches nothing"
        );
    }

    #[test]
    fn stalled_window_falls_back_to_probe() {
        let mut progress = Progress::new(LogIndex(1));
        progress.on_sent(LogIndex(1));
        progress.on_success(LogIndex(1));
        progress.on_sent(LogIndex(3));
        assert!(!progress.on_heartbeat(4), "acked during this interval");
        assert!(progress.on_heartbeat(4), "no ack for a whole interval");
        assert_eq!(progress.next_index, LogIndex(2));
        assert_eq!(progress.state, ReplicationState::Probe { paused: false });
    }

    #[test]
    fn snapshot_transfer_resumes_from_the_acknowledged_offset() {
        let mut progress = Progress::new(LogIndex(1));
        progress.become_snapshot(LogIndex(50), 100);
        assert!(!progress.can_send(LogIndex(60), 4), "no appends meanwhile");
        progress.on_snapshot_sent(10);
        progress.on_snapshot_sent(10);
        progress.on_snapshot_ack(LogIndex(50), 10);
        let sending = |progress: &Progress| match progress.state {
            ReplicationState::Snapshot { sent, acked, .. } => (sent, acked),
            other => panic!("not sending a snapshot: {other:?}"),
        };
        assert_eq!(sending(&progress), (20, 10));
        progress.on_snapshot_ack(LogIndex(40), 0);
        assert_eq!(
            sending(&progress),
            (20, 10),
            "an older snapshot's answer is stale"
        );
        progress.resume_snapshot();
        assert_eq!(sending(&progress), (10, 10), "resend what may be lost");
        progress.on_snapshot_sent(10);
        progress.on_snapshot_ack(LogIndex(50), 0);
        assert_eq!(sending(&progress), (0, 0), "the follower started over");
        assert!(!progress.on_heartbeat(4), "nothing outstanding");
        progress.on_snapshot_sent(10);
        assert!(
            progress.on_heartbeat(4),
            "unacknowledged for a whole interval"
        );
        assert_eq!(sending(&progress), (0, 0));
        assert!(progress.on_snapshot_done(LogIndex(50)));
        assert_eq!(progress.next_index, LogIndex(51));
        assert!(progress.is_probing());
    }

    #[test]
    fn probe_never_goes_below_match() {
        let mut progress = Progress::new(LogIndex(1));
        progress.on_sent(LogIndex(1));
        progress.on_success(LogIndex(6));
        progress.become_probe(LogIndex(2));
        assert_eq!(progress.next_index, LogIndex(7));
    }
}
