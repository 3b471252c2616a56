//! How a simulated cluster is built: its size, the core's configuration, its faults and clients.

use super::faults::FaultConfig;
use crate::consensus::Config;
use rand::Rng;
use std::fmt;
use std::time::Duration;

/// How a simulated cluster is built and how unreliable it is.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of servers, ids 1..=node_count.
    pub node_count: usize,
    /// The core configuration every server uses.
    pub core: Config,
    /// Network, disk and crash faults.
    pub faults: FaultConfig,
    /// Simulated clients proposing commands continuously once started.
    pub client_count: usize,
    /// How long a client waits for a reply before retrying elsewhere (virtual).
    pub client_timeout: Duration,
    /// Run the [`Checker`](super::Checker) after every event (switch off only to measure the core's speed).
    pub check_invariants: bool,
}

impl SimConfig {
    /// `node_count` servers on a reliable network with small delays, no clients.
    pub fn quiet(node_count: usize) -> Self {
        SimConfig {
            node_count,
            core: Config::default(),
            faults: FaultConfig::reliable(),
            client_count: 0,
            client_timeout: Duration::from_secs(1),
            check_invariants: true,
        }
    }

    /// Every fault kind at strengths drawn from `rng`, with batching and pipelining limits drawn
    /// too, and a few clients.
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
        SimConfig {
            node_count,
            core,
            faults: FaultConfig::random(rng),
            client_count: rng.gen_range(1..=6),
            client_timeout: Duration::from_millis(rng.gen_range(300..=1500)),
            check_invariants: true,
        }
    }
}

impl fmt::Display for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} servers, {} clients (timeout {:?}), append {} entries/{} bytes max, {} in flight; {}",
            self.node_count,
            self.client_count,
            self.client_timeout,
            self.core.append_entries_max,
            self.core.append_bytes_max,
            self.core.in_flight_appends_max,
            self.faults
        )
    }
}
