//! One randomized run per seed, and what it reports: faults, then healing, then demanded
//! progress, with every invariant checked after every event.

use super::{ClientStats, FaultCounts, HistoryReport, Micros, SimConfig, Simulation};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

/// A failed run: what broke, when, and how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed that replays the run.
    pub seed: u64,
    /// Virtual time of the failure.
    pub time_us: Micros,
    /// What went wrong.
    pub reason: String,
    /// The knobs the seed chose.
    pub config: String,
    /// Voters in the initial configuration (`MIORAFT_SIM_SERVERS` for the replay).
    pub node_count: usize,
    /// The faults that fired before the failure.
    pub counts: Box<FaultCounts>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} failed at {} us: {}\n  config: {}\n  faults: {}\n  replay: \
             MIORAFT_SEED={} MIORAFT_SIM_SERVERS={} cargo test --release --test simulation \
             replay_seed -- --nocapture",
            self.seed,
            self.time_us,
            self.reason,
            self.config,
            self.counts,
            self.seed,
            self.node_count
        )
    }
}

impl std::error::Error for SimFailure {}

/// What a successful randomized run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Faults that fired.
    pub counts: FaultCounts,
    /// Entries committed cluster-wide.
    pub committed: u64,
    /// Client proposals acknowledged as applied (or committed).
    pub acknowledged: u64,
    /// What the simulated clients did.
    pub clients: ClientStats,
    /// What the end-of-run history checks covered.
    pub history: HistoryReport,
    /// Virtual time simulated.
    pub time_us: Micros,
}

/// How long the faulty phase of [`run_random`] lasts (virtual).
pub const FAULT_PHASE: Duration = Duration::from_secs(10);

/// One randomized run: a cluster of `node_count` voters and a spare or two, with every fault kind
/// and configuration changes at strengths chosen by `seed` and session clients reading and
/// writing throughout; then every fault heals, the clients finish the operations under way
/// (answered or given up), and the cluster must elect a leader, commit a new entry and apply it on
/// every member of its configuration. Invariants are checked after every event, on every server;
/// at the end the clients' histories must be linearizable per key and every request applied at
/// most once, with each answer naming where and how it was applied (see
/// [`Simulation::check_client_histories`]), and every configuration change answered as committed
/// must be in the committed log ([`Simulation::check_configuration_answers`]). A panic inside the
/// core is reported as a failure of the seed.
///
/// # Errors
/// The seed, its knobs and what broke.
pub fn run_random(seed: u64, node_count: usize) -> Result<SimReport, SimFailure> {
    run_random_with(seed, node_count, |_| {})
}

/// [`run_random`], letting `adjust` change the drawn configuration first (e.g. to break a rule).
///
/// # Errors
/// The seed, its knobs and what broke.
pub fn run_random_with(
    seed: u64,
    node_count: usize,
    adjust: impl FnOnce(&mut SimConfig),
) -> Result<SimReport, SimFailure> {
    let mut knobs_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_fa17);
    let mut config = SimConfig::random(node_count, &mut knobs_rng);
    adjust(&mut config);
    let description = config.to_string();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut simulation = Simulation::new(config, seed);
        simulation.start_clients();
        simulation.start_faults();
        simulation.run_for(FAULT_PHASE)?;
        simulation.heal_all();
        simulation.run_until_clients_idle()?;
        let leader = simulation.run_until_leader()?;
        let index = simulation.propose_and_wait(leader, b"put healed yes")?;
        simulation.run_until_applied_everywhere(index)?;
        let history = simulation.check_client_histories()?;
        simulation.check_configuration_answers()?;
        Ok(SimReport {
            seed,
            counts: simulation.counts().clone(),
            committed: simulation.committed_count(),
            acknowledged: simulation.acknowledged_count(),
            clients: simulation.client_stats(),
            history,
            time_us: simulation.now_us(),
        })
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(SimFailure {
                seed,
                time_us: 0,
                reason: format!("panic: {message}"),
                config: description,
                node_count,
                counts: Box::default(),
            })
        }
    }
}
