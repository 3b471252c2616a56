//! Fault knobs: how unreliable the simulated network and disks are, and how often servers crash
//! and links are cut. One seed sets every knob, so a seed alone replays a run.

use rand::Rng;
use std::fmt;

/// How unreliable a simulated cluster is. All times are virtual microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Chance that a message is lost.
    pub drop_probability: f64,
    /// Chance that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Shortest network delay.
    pub delay_min_us: u64,
    /// Longest network delay; different delays reorder messages on a link.
    pub delay_max_us: u64,
    /// Longest time a sync takes (disk latency), drawn uniformly from 0.
    pub sync_delay_max_us: u64,
    /// Mean time between fault actions (crash, restart, partition, heal); 0 disables them.
    pub fault_interval_mean_us: u64,
    /// Relative weight of crashing a server when a fault action is due.
    pub crash_weight: u32,
    /// Relative weight of cutting the network into two sides.
    pub partition_weight: u32,
    /// Relative weight of asking the leader to hand leadership to another server (§3.10).
    pub transfer_weight: u32,
    /// Relative weight of asking the leader to change the configuration (thesis §4.1): add a
    /// server that is not a member (as voter or learner), promote a learner, or remove a member,
    /// the leader itself included.
    pub membership_weight: u32,
    /// Chance that a newly elected leader is cut off from everyone shortly after its election
    /// (leader churn: the setting of Figure 8).
    pub isolate_new_leader_probability: f64,
}

impl FaultConfig {
    /// A perfect network and disk: zero delays, no loss, no crashes.
    pub fn none() -> Self {
        FaultConfig {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            delay_min_us: 0,
            delay_max_us: 0,
            sync_delay_max_us: 0,
            fault_interval_mean_us: 0,
            crash_weight: 0,
            partition_weight: 0,
            transfer_weight: 0,
            membership_weight: 0,
            isolate_new_leader_probability: 0.0,
        }
    }

    /// A network with realistic delays and nothing else wrong.
    pub fn reliable() -> Self {
        FaultConfig {
            delay_min_us: 200,
            delay_max_us: 2_000,
            sync_delay_max_us: 1_000,
            ..Self::none()
        }
    }

    /// Every fault kind, each at a strength drawn from `rng`.
    pub fn random(rng: &mut impl Rng) -> Self {
        let delay_min_us = rng.gen_range(0..2_000);
        FaultConfig {
            drop_probability: rng.gen_range(0.0..0.2),
            duplicate_probability: rng.gen_range(0.0..0.1),
            delay_min_us,
            delay_max_us: delay_min_us + rng.gen_range(1..40_000),
            sync_delay_max_us: rng.gen_range(1..20_000),
            fault_interval_mean_us: rng.gen_range(100_000..1_000_000),
            crash_weight: rng.gen_range(1..4),
            partition_weight: rng.gen_range(1..4),
            // These two are drawn by `SimConfig::random` after everything else, so older seeds
            // keep their other knobs.
            transfer_weight: 0,
            membership_weight: 0,
            isolate_new_leader_probability: rng.gen_range(0.1..0.9),
        }
    }

    /// Whether any fault is switched on.
    pub fn any(&self) -> bool {
        self.drop_probability > 0.0
            || self.duplicate_probability > 0.0
            || self.fault_interval_mean_us > 0
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drop {:.3}, duplicate {:.3}, delay {}..{} us, sync delay <= {} us, fault every ~{} us \
             (crash weight {}, partition weight {}, transfer weight {}, membership weight {}), \
             isolate new leader {:.2}",
            self.drop_probability,
            self.duplicate_probability,
            self.delay_min_us,
            self.delay_max_us,
            self.sync_delay_max_us,
            self.fault_interval_mean_us,
            self.crash_weight,
            self.partition_weight,
            self.transfer_weight,
            self.membership_weight,
            self.isolate_new_leader_probability
        )
    }
}

/// Counts of faults that actually fired, so a quiet simulator cannot pass by accident.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages sent by servers.
    pub messages_sent: u64,
    /// Messages lost by the network.
    pub messages_dropped: u64,
    /// Extra copies delivered.
    pub messages_duplicated: u64,
    /// Messages delivered after one sent later on the same link.
    pub messages_reordered: u64,
    /// Messages lost because the link was cut.
    pub messages_partitioned: u64,
    /// Messages that reached a crashed server.
    pub messages_to_crashed: u64,
    /// Server crashes.
    pub crashes: u64,
    /// Server restarts.
    pub restarts: u64,
    /// Unsynced log writes lost in crashes.
    pub unsynced_writes_lost: u64,
    /// Network partitions made.
    pub partitions: u64,
    /// Newly elected leaders cut off shortly after their election.
    pub leaders_isolated: u64,
    /// Heals of partitions.
    pub heals: u64,
    /// InstallSnapshot chunks sent (§7).
    pub snapshot_chunks_sent: u64,
    /// Snapshots a follower finished receiving and installed.
    pub snapshots_installed: u64,
    /// Crashes of a server in the middle of receiving a snapshot.
    pub crashes_mid_install: u64,
    /// Leadership transfers asked for (§3.10).
    pub transfers_asked: u64,
    /// Leadership transfers a leader reported done.
    pub transfers_done: u64,
    /// Configuration changes asked of a leader (thesis §4.1).
    pub membership_changes_asked: u64,
    /// Configuration changes a leader answered as committed.
    pub membership_changes_committed: u64,
    /// Configuration changes a leader refused or gave up (another pending, the only voter, a
    /// new server that did not catch up, ...).
    pub membership_changes_failed: u64,
    /// Configuration changes whose leader stepped down before finishing them.
    pub membership_changes_abandoned: u64,
    /// Committed configurations that made a learner a voter.
    pub servers_promoted: u64,
    /// Committed configurations that removed a member.
    pub servers_removed: u64,
    /// Committed configurations that added back a server removed earlier (its log is stale).
    pub servers_readded: u64,
    /// Leaders that stepped down because a committed configuration removed them (thesis
    /// §4.2.2).
    pub leaders_removed: u64,
    /// Batches of client requests handed to a core at once (`Consensus::step_batch`).
    pub client_batches: u64,
    /// The most client requests in one batch.
    pub client_batch_requests_max: u64,
}

impl std::ops::AddAssign<&FaultCounts> for FaultCounts {
    /// Adds another run's counts, to total faults over many seeds.
    fn add_assign(&mut self, other: &FaultCounts) {
        let FaultCounts {
            messages_sent,
            messages_dropped,
            messages_duplicated,
            messages_reordered,
            messages_partitioned,
            messages_to_crashed,
            crashes,
            restarts,
            unsynced_writes_lost,
            partitions,
            leaders_isolated,
            heals,
            snapshot_chunks_sent,
            snapshots_installed,
            crashes_mid_install,
            transfers_asked,
            transfers_done,
            membership_changes_asked,
            membership_changes_committed,
            membership_changes_failed,
            membership_changes_abandoned,
            servers_promoted,
            servers_removed,
            servers_readded,
            leaders_removed,
            client_batches,
            client_batch_requests_max,
        } = other;
        self.messages_sent += messages_sent;
        self.messages_dropped += messages_dropped;
        self.messages_duplicated += messages_duplicated;
        self.messages_reordered += messages_reordered;
        self.messages_partitioned += messages_partitioned;
        self.messages_to_crashed += messages_to_crashed;
        self.crashes += crashes;
        self.restarts += restarts;
        self.unsynced_writes_lost += unsynced_writes_lost;
        self.partitions += partitions;
        self.leaders_isolated += leaders_isolated;
        self.heals += heals;
        self.snapshot_chunks_sent += snapshot_chunks_sent;
        self.snapshots_installed += snapshots_installed;
        self.crashes_mid_install += crashes_mid_install;
        self.transfers_asked += transfers_asked;
        self.transfers_done += transfers_done;
        self.membership_changes_asked += membership_changes_asked;
        self.membership_changes_committed += membership_changes_committed;
        self.membership_changes_failed += membership_changes_failed;
        self.membership_changes_abandoned += membership_changes_abandoned;
        self.servers_promoted += servers_promoted;
        self.servers_removed += servers_removed;
        self.servers_readded += servers_readded;
        self.leaders_removed += leaders_removed;
        self.client_batches += client_batches;
        self.client_batch_requests_max = self
            .client_batch_requests_max
            .max(*client_batch_requests_max);
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, dropped {}, duplicated {}, reordered {}, partitioned {}, to crashed {}, \
             crashes {}, restarts {}, unsynced writes lost {}, partitions {}, leaders isolated {}, \
             heals {}, snapshot chunks {}, snapshots installed {}, crashes mid-install {}, \
             transfers {} asked / {} done, configuration changes {} asked / {} committed / {} \
             failed / {} abandoned (promoted {}, removed {}, re-added {}, leaders removed {}), client batches {} (largest {})",
            self.messages_sent,
            self.messages_dropped,
            self.messages_duplicated,
            self.messages_reordered,
            self.messages_partitioned,
            self.messages_to_crashed,
            self.crashes,
            self.restarts,
            self.unsynced_writes_lost,
            self.partitions,
            self.leaders_isolated,
            self.heals,
            self.snapshot_chunks_sent,
            self.snapshots_installed,
            self.crashes_mid_install,
            self.transfers_asked,
            self.transfers_done,
            self.membership_changes_asked,
            self.membership_changes_committed,
            self.membership_changes_failed,
            self.membership_changes_abandoned,
            self.servers_promoted,
            self.servers_removed,
            self.servers_readded,
            self.leaders_removed,
            self.client_batches,
            self.client_batch_requests_max
        )
    }
}
