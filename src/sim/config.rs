//! How a simulated cluster is built: its size, the core's configuration, its faults and clients.

use super::faults::FaultConfig;
use crate::consensus::Config;
use rand::Rng;
use std::fmt;
use std::time::Duration;

/// How a simulated cluster is built and how unreliable it is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of servers in the initial configuration, all voters: ids 1..=node_count.
    pub node_count: usize,
    /// Number of spare servers, ids after the voters', started with an empty configuration to
    /// join (thesis §4.2.1): passive until a leader adds one. Restarts keep that start-up
    /// configuration; what the log holds decides.
    pub spare_count: usize,
    /// The core configuration every server uses.
    pub core: Config,
    /// Network, disk and crash faults.
    pub faults: FaultConfig,
    /// Simulated clients proposing commands continuously once started.
    pub client_count: usize,
    /// How long a client waits for a reply before retrying elsewhere (virtual).
    pub client_timeout: Duration,
    /// How long a client keeps retrying one operation before giving up on it (virtual). A
    /// proposal given up on is indeterminate: it may still be applied later.
    pub client_give_up_after: Duration,
    /// How many keys the clients share (`k0`, `k1`, ...); each key's history is checked for
    /// linearizability on its own.
    pub keys: usize,
    /// Percent of client operations that are reads (`get`, by ReadIndex).
    pub read_percent: u32,
    /// Percent of client operations that are compare-and-swaps; the rest are puts.
    pub cas_percent: u32,
    /// Percent of proposals answered once committed ([`ResponseMode::Committed`]) rather than
    /// applied: their outputs are unknown, but they must take effect before they return.
    ///
    /// [`ResponseMode::Committed`]: crate::consensus::ResponseMode::Committed
    pub committed_percent: u32,
    /// Whether clients take a `SessionExpired` answer at its word, as
    /// [`ProposalOutcome::SessionExpired`] documents it: the proposal was not applied and never
    /// will be (the end-of-run check then holds the log to that). When false, such a proposal is
    /// recorded as indeterminate instead. Taking it at its word is sound only while no session
    /// really expires (the default `sessions_max`): once a session is dropped from the table, a
    /// retry of a request applied before is answered the same way, and the outcome is unknown
    /// (thesis §6.3).
    ///
    /// [`ProposalOutcome::SessionExpired`]: crate::consensus::ProposalOutcome::SessionExpired
    pub session_expired_is_final: bool,
    /// Run the [`Checker`](super::Checker) after every event (switch off only to measure the core's speed).
    pub check_invariants: bool,
    /// How long a server collects client requests before handing them to its core as one batch
    /// (`Consensus::step_batch`, as the reactor does once per turn), drawn per batch from
    /// `0..=client_batch_window_max_us`; 0 hands each over at once.
    pub client_batch_window_max_us: u64,
}

impl SimConfig {
    /// `node_count` servers on a reliable network with small delays, no spares, no clients.
    pub fn quiet(node_count: usize) -> Self {
        SimConfig {
            node_count,
            spare_count: 0,
            core: Config::default(),
            faults: FaultConfig::reliable(),
            client_count: 0,
            client_timeout: Duration::from_secs(1),
            client_give_up_after: Duration::from_secs(10),
            keys: 3,
            read_percent: 30,
            cas_percent: 30,
            committed_percent: 0,
            session_expired_is_final: true,
            check_invariants: true,
            client_batch_window_max_us: 0,
        }
    }

    /// Every fault kind at strengths drawn from `rng`, with batching and pipelining limits drawn
    /// too, a few clients with a workload drawn too, and one or two spares for configuration
    /// changes (themselves a fault action in most runs).
    pub fn random(node_count: usize, rng: &mut impl Rng) -> Self {
        let core = Config {
            // One-entry appends in a third of the runs, so a follower can hold an earlier term's
            // entry without the new leader's no-op (the setting of Figure 8).
            append_entries_max: if rng.gen_bool(0.35) {
                1
            } else {
                rng.gen_range(2..=16)
            },
            in_flight_appends_max: rng.gen_range(1..=8),
            append_bytes_max: rng.gen_range(64..=4096),
            ..Config::default()
        };
        let faults = FaultConfig::random(rng);
        let client_count = rng.gen_range(2..=8);
        let client_timeout = Duration::from_millis(rng.gen_range(300..=1500));
        // Drawn after the knobs above, so those stay what they were for every seed.
        let mut config = SimConfig {
            node_count,
            spare_count: 0,
            core,
            faults,
            client_count,
            client_timeout,
            client_give_up_after: client_timeout * rng.gen_range(2..=6),
            keys: rng.gen_range(1..=3),
            read_percent: rng.gen_range(10..=50),
            cas_percent: rng.gen_range(10..=40),
            committed_percent: if rng.gen_bool(0.5) { 0 } else { 10 },
            session_expired_is_final: true,
            check_invariants: true,
            client_batch_window_max_us: 0,
        };
        // §7: in most runs, snapshots every few entries, keeping few or none behind, sent in
        // tiny chunks, so followers fall behind the compaction point and transfers span many
        // messages (and crashes).
        if rng.gen_bool(0.75) {
            config.core.snapshot_entries = rng.gen_range(2..=40);
            config.core.snapshot_keep_entries = rng.gen_range(0..=4);
            config.core.snapshot_chunk_bytes = rng.gen_range(8..=256);
            config.core.snapshot_chunks_in_flight = rng.gen_range(1..=4);
        }
        // §9.6: pre-vote and check-quorum are on by default; some runs go without them, so the
        // paper's plain rules keep being exercised too.
        config.core.pre_vote = rng.gen_bool(0.75);
        config.core.check_quorum = rng.gen_bool(0.75);
        config.faults.transfer_weight = rng.gen_range(0..3);
        // Thesis §4.1: spares to add, and configuration changes among the faults in most runs.
        config.spare_count = rng.gen_range(1..=2);
        config.faults.membership_weight = rng.gen_range(0..=3);
        // Client requests batched as a reactor turn would (up to 2 ms), in most runs.
        if rng.gen_bool(0.75) {
            config.client_batch_window_max_us = rng.gen_range(1..=2000);
        }
        config
    }
}

impl fmt::Display for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} servers + {} spares, {} clients (timeout {:?}, give up after {:?}; {} keys, {}% reads, {}% cas, \
             {}% answered at commit, batched within {} us), append {} entries/{} bytes max, {} in flight; snapshot every \
             {} entries keeping {}, chunks of {} bytes, {} in flight; pre-vote {}, check-quorum {}; \
             {}",
            self.node_count,
            self.spare_count,
            self.client_count,
            self.client_timeout,
            self.client_give_up_after,
            self.keys,
            self.read_percent,
            self.cas_percent,
            self.committed_percent,
            self.client_batch_window_max_us,
            self.core.append_entries_max,
            self.core.append_bytes_max,
            self.core.in_flight_appends_max,
            self.core.snapshot_entries,
            self.core.snapshot_keep_entries,
            self.core.snapshot_chunk_bytes,
            self.core.snapshot_chunks_in_flight,
            self.core.pre_vote,
            self.core.check_quorum,
            self.faults
        )
    }
}
