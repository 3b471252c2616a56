//! The simulated network: delays (and so reordering), loss, duplication and partitions, decided
//! per message from the simulation's one RNG.

use super::clock::Micros;
use super::faults::{FaultConfig, FaultCounts};
use crate::types::ServerId;
use rand::Rng;
use std::collections::BTreeMap;

/// What the network does with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// Deliver after each of these delays (two for a duplicate).
    Deliver(Vec<Micros>),
    /// Lost.
    Dropped,
}

/// Links, partitions and per-link delivery order.
#[derive(Debug, Default)]
pub struct Network {
    /// The side of the partition each server is on; servers talk only within a side.
    sides: BTreeMap<ServerId, u32>,
    /// Per link: sequence number of the next message sent.
    sent: BTreeMap<(ServerId, ServerId), u64>,
    /// Per link: highest sequence number delivered so far.
    delivered: BTreeMap<(ServerId, ServerId), u64>,
}

impl Network {
    /// Decides the fate of a message from `from` to `to` and numbers it on its link.
    pub fn send(
        &mut self,
        from: ServerId,
        to: ServerId,
        faults: &FaultConfig,
        rng: &mut impl Rng,
        counts: &mut FaultCounts,
    ) -> (Fate, u64) {
        counts.messages_sent += 1;
        let sequence = self.sent.entry((from, to)).or_insert(0);
        *sequence += 1;
        let sequence = *sequence;
        if !self.connected(from, to) {
            counts.messages_partitioned += 1;
            return (Fate::Dropped, sequence);
        }
        if faults.drop_probability > 0.0 && rng.gen_bool(faults.drop_probability) {
            counts.messages_dropped += 1;
            return (Fate::Dropped, sequence);
        }
        let mut delays = vec![Self::draw_delay(faults, rng)];
        if faults.duplicate_probability > 0.0 && rng.gen_bool(faults.duplicate_probability) {
            counts.messages_duplicated += 1;
            delays.push(Self::draw_delay(faults, rng));
        }
        (Fate::Deliver(delays), sequence)
    }

    /// Records a delivery, counting it as reordered if a later message on the link came first.
    pub fn on_delivered(
        &mut self,
        from: ServerId,
        to: ServerId,
        sequence: u64,
        counts: &mut FaultCounts,
    ) {
        let highest = self.delivered.entry((from, to)).or_insert(0);
        if sequence < *highest {
            counts.messages_reordered += 1;
        } else {
            *highest = sequence;
        }
    }

    /// Whether `from` can currently reach `to`.
    pub fn connected(&self, from: ServerId, to: ServerId) -> bool {
        self.sides.get(&from).copied().unwrap_or(0) == self.sides.get(&to).copied().unwrap_or(0)
    }

    /// Cuts the network: servers in `isolated` can reach each other but no one else.
    pub fn partition(&mut self, isolated: &[ServerId]) {
        self.sides.clear();
        for &id in isolated {
            self.sides.insert(id, 1);
        }
    }

    /// Splits the network into the given groups (servers not listed join the first).
    pub fn partition_groups(&mut self, groups: &[&[ServerId]]) {
        self.sides.clear();
        for (side, group) in groups.iter().enumerate() {
            for &id in *group {
                self.sides.insert(id, side as u32);
            }
        }
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        self.sides.values().any(|&side| side != 0)
    }

    /// Reconnects everyone.
    pub fn heal(&mut self) {
        self.sides.clear();
    }

    /// One message's delay, drawn uniformly from the configured range.
    pub(crate) fn draw_delay(faults: &FaultConfig, rng: &mut impl Rng) -> Micros {
        if faults.delay_max_us > faults.delay_min_us {
            rng.gen_range(faults.delay_min_us..=faults.delay_max_us)
        } else {
            faults.delay_min_us
        }
    }
}
