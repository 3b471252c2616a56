//! The deterministic cluster simulator (DESIGN.md §6.1): many [`Consensus`] servers in one
//! thread, a virtual clock, a network that drops, duplicates, delays, reorders and partitions,
//! disks whose unsynced writes a crash may lose, and simulated clients of the session protocol
//! (`clients.rs`). Besides the initial voters, spare servers start empty and wait to be added;
//! an operator may change the configuration at the leader (thesis §4.1, `membership.rs`). After
//! every event the [`Checker`] verifies the Raft invariants; at the end of a run the clients'
//! histories are checked for linearizability and exactly-once application (`history.rs`), and
//! the operator's answers against the committed configurations. Everything random comes from one
//! seed, so a seed replays a run exactly.
//!
//! # Examples
//! ```
//! use mioraft::sim::{SimConfig, Simulation};
//!
//! let mut simulation = Simulation::new(SimConfig::quiet(3), 1);
//! let leader = simulation.run_until_leader()?;
//! let index = simulation.propose_and_wait(leader, b"put x 1")?;
//! simulation.run_until_applied_everywhere(index)?;
//! # Ok::<(), mioraft::sim::SimFailure>(())
//! ```

mod checker;
mod clients;
mod clock;
mod config;
mod faults;
mod history;
pub mod linearizability;
mod membership;
mod network;
mod random_run;
pub mod sim_log;

pub use checker::{entry_digest, Checker, ConfigurationCounts};
pub use clients::{ClientOp, ClientStats, LostReply};
pub use clock::{micros, Clock, Micros};
pub use config::SimConfig;
pub use faults::{FaultConfig, FaultCounts};
pub use history::HistoryReport;
pub use membership::{address_of, ConfigurationAnswer};
pub use network::{Fate, Network};
pub use random_run::{run_random, run_random_with, SimFailure, SimReport, FAULT_PHASE};
pub use sim_log::SimLog;

use crate::consensus::{
    Actions, Consensus, Event, MembershipChange, Message, ProposalId, ProposalOutcome,
    ResponseMode, Role, SessionRequest, Timer, TimerAction,
};
use crate::membership::Membership;
use crate::state_machine::KvStateMachine;
use crate::types::{LogIndex, ServerId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// A simulated server: the core with its crash-aware log and the KV test state machine.
pub type SimNode = Consensus<SimLog, KvStateMachine>;

#[derive(Debug)]
enum SimEvent {
    Deliver {
        from: ServerId,
        to: ServerId,
        message: Message,
        sequence: u64,
    },
    Timer {
        node: ServerId,
        timer: Timer,
        generation: u64,
    },
    Sync {
        node: ServerId,
        incarnation: u64,
    },
    ClientSend {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        attempt: u64,
    },
    ClientRequest {
        client: usize,
        node: ServerId,
        event: Event,
    },
    ClientReply {
        client: usize,
        from: ServerId,
        proposal: ProposalId,
        outcome: ProposalOutcome,
    },
    /// The end of a server's event-loop turn: the client requests it received since the last
    /// one go to the core as one batch (`Consensus::step_batch`), as the reactor does.
    ClientBatch {
        node: ServerId,
        incarnation: u64,
    },
    Fault,
    IsolateLeader {
        node: ServerId,
        term: crate::types::Term,
    },
    Restart {
        node: ServerId,
    },
}

/// One server's slot: running, or crashed with the log a restart will find.
struct Slot {
    node: Option<SimNode>,
    crashed_log: Option<SimLog>,
    /// While crashed: the configuration a restart will find in force (thesis §4.1), for the
    /// checks that look at every server's log.
    crashed_membership: Membership,
    incarnation: u64,
    timer_generations: [u64; 4],
    sync_scheduled: bool,
    /// Client requests received and not yet handed to the core, in arrival order, with the
    /// client that sent each; handed over at the next `ClientBatch`.
    client_batch: Vec<(usize, Event)>,
    /// The term this server was last seen leading, to notice new leaders.
    led_term: Option<crate::types::Term>,
}

/// Most events one simulation may process: far above any honest run (a 10 s faulty run takes
/// well under a million), so only a livelock reaches it.
pub const EVENTS_MAX: u64 = 50_000_000;
/// How long to wait for a reply before giving up in the `run_until_*` helpers (virtual).
const WAIT_BUDGET: Duration = Duration::from_secs(60);

/// A simulated cluster. See the module documentation.
pub struct Simulation {
    seed: u64,
    config: SimConfig,
    /// The configuration as built, for failure reports (healing changes `config` later).
    description: String,
    rng: ChaCha8Rng,
    clock: Clock<SimEvent>,
    slots: Vec<Slot>,
    /// Every server, initial voters then spares: ids `1..=node_count + spare_count`.
    servers: Vec<ServerId>,
    /// The configuration the initial voters start with; spares start with an empty one.
    initial_membership: Membership,
    network: Network,
    checker: Checker,
    counts: FaultCounts,
    clients: Vec<clients::SimClient>,
    /// Clients start no new operation (those under way go on until answered or given up).
    clients_stopped: bool,
    /// Clients whose next `Applied` reply a test asked to lose.
    lose_applied_reply: BTreeSet<usize>,
    lost_replies: Vec<LostReply>,
    direct_replies: HashMap<ProposalId, ProposalOutcome>,
    next_direct_id: u64,
    faults_active: bool,
    failure: Option<String>,
    /// Events processed so far, bounded by [`EVENTS_MAX`] so a livelock fails instead of hanging.
    events_processed: u64,
    /// Configuration changes asked for and not answered yet, by request.
    membership_requests: BTreeMap<ProposalId, MembershipChange>,
    /// Every answer to a configuration change, in order, for the end-of-run check.
    membership_answers: Vec<ConfigurationAnswer>,
    /// The last configuration change asked for, which the operator sometimes asks again (as
    /// after a lost answer: changes are idempotent).
    last_membership_change: Option<MembershipChange>,
}

impl Simulation {
    /// Builds and starts a cluster of `config.node_count` voters and `config.spare_count` spares
    /// waiting to be added; `seed` drives everything random.
    ///
    /// # Panics
    /// If `config.core` is invalid.
    pub fn new(config: SimConfig, seed: u64) -> Self {
        let server_count = (config.node_count + config.spare_count) as u64;
        let servers: Vec<ServerId> = (1..=server_count).map(ServerId).collect();
        let initial_membership = servers[..config.node_count]
            .iter()
            .fold(Membership::default(), |membership, &id| {
                membership.with_voter(id, address_of(id))
            });
        let mut simulation = Simulation {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock: Clock::default(),
            slots: Vec::new(),
            servers: servers.clone(),
            network: Network::default(),
            checker: Checker::with_initial_membership(initial_membership.clone()),
            initial_membership,
            counts: FaultCounts::default(),
            clients: Vec::new(),
            clients_stopped: false,
            lose_applied_reply: BTreeSet::new(),
            lost_replies: Vec::new(),
            direct_replies: HashMap::new(),
            next_direct_id: 1,
            faults_active: false,
            failure: None,
            events_processed: 0,
            membership_requests: BTreeMap::new(),
            membership_answers: Vec::new(),
            last_membership_change: None,
            description: config.to_string(),
            config,
        };
        for &id in &servers {
            simulation.slots.push(Slot {
                node: None,
                crashed_log: Some(SimLog::new()),
                crashed_membership: Membership::default(),
                incarnation: 0,
                timer_generations: [0; 4],
                sync_scheduled: false,
                client_batch: Vec::new(),
                led_term: None,
            });
            simulation.boot(id);
        }
        simulation
    }

    /// The seed this simulation was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current virtual time.
    pub fn now_us(&self) -> Micros {
        self.clock.now()
    }

    /// Faults that fired so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }

    /// Entries committed cluster-wide so far.
    pub fn committed_count(&self) -> u64 {
        self.checker.committed_count()
    }

    /// Client proposals answered as applied (or committed) so far.
    pub fn acknowledged_count(&self) -> u64 {
        self.clients
            .iter()
            .map(|client| client.stats.completed - client.stats.reads)
            .sum()
    }

    /// What the simulated clients did so far, summed over clients.
    pub fn client_stats(&self) -> ClientStats {
        let mut total = ClientStats::default();
        for client in &self.clients {
            total += &client.stats;
        }
        total
    }

    /// The history `client` recorded so far: its finished operations, in the order they
    /// finished (or were given up on).
    pub fn client_history(&self, client: usize) -> &[ClientOp] {
        &self.clients[client].history
    }

    /// How many simulated clients there are.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Every server id: the initial voters, then the spares.
    pub fn ids(&self) -> &[ServerId] {
        &self.servers
    }

    /// The spare servers' ids: started with an empty configuration, waiting to be added.
    pub fn spares(&self) -> &[ServerId] {
        &self.servers[self.config.node_count..]
    }

    /// The configuration the initial voters start with.
    pub fn initial_membership(&self) -> &Membership {
        &self.initial_membership
    }

    /// The cluster's configuration as far as the simulation can tell: the one in force at the
    /// leader (committed or not, thesis §4.1), or without a leader the newest committed one.
    pub fn members(&self) -> Membership {
        match self.leader().and_then(|leader| self.node(leader)) {
            Some(node) => node.membership().clone(),
            None => self
                .checker
                .committed_membership()
                .cloned()
                .unwrap_or_else(|| self.initial_membership.clone()),
        }
    }

    /// The cluster-wide record of committed entries and configurations.
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// A running server, or `None` if it is crashed.
    pub fn node(&self, id: ServerId) -> Option<&SimNode> {
        self.slot_index(id)
            .and_then(|index| self.slots[index].node.as_ref())
    }

    /// The leader with the highest term among running servers.
    pub fn leader(&self) -> Option<ServerId> {
        self.slots
            .iter()
            .filter_map(|slot| slot.node.as_ref())
            .filter(|node| node.role() == Role::Leader)
            .max_by_key(|node| node.current_term())
            .map(|node| node.id())
    }

    /// Starts the simulated clients: each opens a session, then performs one operation after
    /// another (see `clients.rs`).
    pub fn start_clients(&mut self) {
        for client in 0..self.config.client_count {
            let leader_guess = *self.servers.choose(&mut self.rng).expect("servers");
            self.clients.push(clients::SimClient::new(leader_guess));
            let after = self.rng.gen_range(0..1_000);
            self.clock.schedule(after, SimEvent::ClientSend { client });
        }
    }

    /// Clients start no new operation; those under way go on until answered or given up.
    pub fn stop_clients(&mut self) {
        self.clients_stopped = true;
    }

    /// Whether every client is stopped and waits for nothing.
    pub fn clients_idle(&self) -> bool {
        self.clients_stopped && self.clients.iter().all(clients::SimClient::is_idle)
    }

    /// Stops the clients and runs until each has its last operation answered or given up.
    ///
    /// # Errors
    /// An invariant violation, or clients still busy after a minute of virtual time.
    pub fn run_until_clients_idle(&mut self) -> Result<(), SimFailure> {
        self.stop_clients();
        self.run_until("the clients finish their operations", WAIT_BUDGET, |sim| {
            sim.clients_idle()
        })
    }

    /// Test hook: the next `Applied` reply to `client`'s current attempt is lost on its way, as
    /// if the connection broke just then. The client times out and retries the same request.
    pub fn lose_next_applied_reply(&mut self, client: usize) {
        self.lose_applied_reply.insert(client);
    }

    /// The replies lost through [`Simulation::lose_next_applied_reply`], in order.
    pub fn lost_replies(&self) -> &[LostReply] {
        &self.lost_replies
    }

    /// Starts injecting crashes, restarts, partitions and heals at the configured rate.
    pub fn start_faults(&mut self) {
        if self.config.faults.fault_interval_mean_us > 0 && !self.faults_active {
            self.faults_active = true;
            let after = self.fault_interval();
            self.clock.schedule(after, SimEvent::Fault);
        }
    }

    /// Stops every fault: no more loss, duplication, crashes or partitions; crashed servers
    /// restart. Delays (and so reordering) remain.
    pub fn heal_all(&mut self) {
        self.faults_active = false;
        self.config.faults.drop_probability = 0.0;
        self.config.faults.duplicate_probability = 0.0;
        if self.network.is_partitioned() {
            self.network.heal();
            self.counts.heals += 1;
        }
        for id in self.servers.clone() {
            if self.node(id).is_none() {
                self.restart(id);
            }
        }
    }

    /// Cuts `isolated` off from the others.
    pub fn partition(&mut self, isolated: &[ServerId]) {
        self.network.partition(isolated);
        self.counts.partitions += 1;
    }

    /// Reconnects every link.
    pub fn heal_network(&mut self) {
        self.network.heal();
        self.counts.heals += 1;
    }

    /// Crashes a server: its volatile state and a random part of its unsynced writes are lost.
    pub fn crash(&mut self, id: ServerId) {
        let Some(index) = self.slot_index(id) else {
            return;
        };
        let Some(node) = self.slots[index].node.take() else {
            return;
        };
        if node.receiving_snapshot() {
            self.counts.crashes_mid_install += 1;
        }
        let (log, _state_machine) = node.into_parts();
        let pending = log.pending_write_count();
        let keep = self.rng.gen_range(0..=pending);
        self.counts.crashes += 1;
        self.counts.unsynced_writes_lost += (pending - keep) as u64;
        let log = log.crash(keep);
        let membership = membership::in_force(&log, &self.start_up_membership(id));
        let slot = &mut self.slots[index];
        slot.crashed_log = Some(log);
        slot.crashed_membership = membership;
        slot.incarnation += 1;
        slot.timer_generations = slot.timer_generations.map(|generation| generation + 1);
        slot.sync_scheduled = false;
        let unread = std::mem::take(&mut slot.client_batch);
        slot.led_term = None;
        for (client, _) in unread {
            self.clients[client].stats.requests_lost += 1;
        }
        log::debug!("sim {}us: crashed {id}", self.clock.now());
    }

    /// Restarts a crashed server from what its log kept.
    pub fn restart(&mut self, id: ServerId) {
        if self.node(id).is_some() {
            return;
        }
        self.counts.restarts += 1;
        self.checker.on_restart(id);
        self.boot(id);
    }

    /// Proposes `command` at server `id` directly (no client), returning the id to look for.
    pub fn propose(&mut self, id: ServerId, command: &[u8]) -> ProposalId {
        let proposal = self.next_direct_proposal();
        self.step_node(
            id,
            Event::ClientProposal {
                id: proposal,
                command: command.to_vec(),
            },
        );
        proposal
    }

    /// Asks server `id` directly (no client, no network) to open a session; the reply names it.
    pub fn register_session(&mut self, id: ServerId) -> ProposalId {
        let proposal = self.next_direct_proposal();
        self.step_node(id, Event::RegisterSession { id: proposal });
        proposal
    }

    /// Proposes `command` at server `id` directly as request `request` of a session, to be
    /// answered as `respond_when` says.
    pub fn propose_in_session(
        &mut self,
        id: ServerId,
        request: SessionRequest,
        command: &[u8],
        respond_when: ResponseMode,
    ) -> ProposalId {
        let proposal = self.next_direct_proposal();
        self.step_node(
            id,
            Event::Propose {
                id: proposal,
                command: command.to_vec(),
                session: Some(request),
                respond_when,
            },
        );
        proposal
    }

    /// Sends a linearizable read to server `id` directly.
    pub fn query(&mut self, id: ServerId, query: &[u8]) -> ProposalId {
        let proposal = self.next_direct_proposal();
        self.step_node(
            id,
            Event::Query {
                id: proposal,
                query: query.to_vec(),
            },
        );
        proposal
    }

    /// Takes the answer to a direct request, if it came.
    pub fn take_reply(&mut self, proposal: ProposalId) -> Option<ProposalOutcome> {
        self.direct_replies.remove(&proposal)
    }

    /// Runs until the direct request `proposal` is answered and returns the answer.
    ///
    /// # Errors
    /// An invariant violation, or no answer within a minute of virtual time (e.g. the server
    /// crashed).
    pub fn run_until_reply(&mut self, proposal: ProposalId) -> Result<ProposalOutcome, SimFailure> {
        self.run_until(
            &format!("an answer to direct request {}", proposal.0),
            WAIT_BUDGET,
            |sim| sim.direct_replies.contains_key(&proposal),
        )?;
        Ok(self.take_reply(proposal).expect("just checked"))
    }

    fn next_direct_proposal(&mut self) -> ProposalId {
        let proposal = ProposalId(self.next_direct_id);
        self.next_direct_id += 1;
        assert!(proposal.0 < clients::CLIENT_ID_BASE, "direct ids run out");
        proposal
    }

    /// Processes the next event. Returns `Ok(false)` when nothing is left to do.
    ///
    /// # Errors
    /// The first invariant violation.
    pub fn step(&mut self) -> Result<bool, SimFailure> {
        let Some(event) = self.clock.pop() else {
            return Ok(false);
        };
        self.events_processed += 1;
        if self.events_processed > EVENTS_MAX {
            return Err(self.failure(format!(
                "livelock: more than {EVENTS_MAX} events without finishing"
            )));
        }
        self.handle(event);
        match self.failure.take() {
            Some(reason) => Err(self.failure(reason)),
            None => Ok(true),
        }
    }

    /// Runs for `duration` of virtual time.
    ///
    /// # Errors
    /// The first invariant violation.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimFailure> {
        let until = self.clock.now().saturating_add(micros(duration));
        while self.clock.peek_time().is_some_and(|time| time <= until) {
            self.step()?;
        }
        // Time passes even when nothing happens.
        self.clock.advance_to(until);
        Ok(())
    }

    /// Runs until `condition` holds, for at most `budget` of virtual time.
    ///
    /// # Errors
    /// An invariant violation, or `what` if the budget ran out first.
    pub fn run_until(
        &mut self,
        what: &str,
        budget: Duration,
        mut condition: impl FnMut(&Simulation) -> bool,
    ) -> Result<(), SimFailure> {
        let deadline = self.clock.now().saturating_add(micros(budget));
        while !condition(self) {
            if self.clock.now() > deadline || !self.step()? {
                return Err(self.failure(format!(
                    "no progress: {what} within {budget:?}; servers: {}",
                    self.describe_servers()
                )));
            }
        }
        Ok(())
    }

    /// Runs until some running server is leader and returns it.
    ///
    /// # Errors
    /// An invariant violation, or no leader within a minute of virtual time.
    pub fn run_until_leader(&mut self) -> Result<ServerId, SimFailure> {
        self.run_until("a leader is elected", WAIT_BUDGET, |sim| {
            sim.leader().is_some()
        })?;
        Ok(self.leader().expect("just checked"))
    }

    /// Proposes `command`, starting at server `id` and following leader changes, until it is
    /// applied; returns its index.
    ///
    /// # Errors
    /// An invariant violation, or no commit within a minute of virtual time.
    pub fn propose_and_wait(
        &mut self,
        id: ServerId,
        command: &[u8],
    ) -> Result<LogIndex, SimFailure> {
        let deadline = self.clock.now().saturating_add(micros(WAIT_BUDGET));
        let mut target = id;
        while self.clock.now() <= deadline {
            let proposal = self.propose(target, command);
            let attempt_deadline = self
                .clock
                .now()
                .saturating_add(micros(Duration::from_secs(2)));
            while !self.direct_replies.contains_key(&proposal)
                && self.clock.now() <= attempt_deadline
            {
                if !self.step()? {
                    break;
                }
            }
            match self.direct_replies.remove(&proposal) {
                Some(ProposalOutcome::Applied { index, .. }) => return Ok(index),
                Some(ProposalOutcome::NotLeader {
                    leader: Some(leader),
                }) => {
                    // A client's redirect costs it at least a round trip.
                    self.run_for(Duration::from_millis(1))?;
                    target = leader;
                }
                _ => {
                    self.run_for(Duration::from_millis(50))?;
                    target = self.leader().unwrap_or(target);
                }
            }
        }
        Err(self.failure(format!(
            "no progress: proposal {:?} not applied within {WAIT_BUDGET:?}",
            String::from_utf8_lossy(command)
        )))
    }

    /// Runs until every running member of the configuration ([`Simulation::members`]) has
    /// applied `index`. A server outside it (a spare never added, a removed server) legitimately
    /// stops receiving entries.
    ///
    /// # Errors
    /// An invariant violation, or not applied everywhere within a minute of virtual time.
    pub fn run_until_applied_everywhere(&mut self, index: LogIndex) -> Result<(), SimFailure> {
        self.run_until(
            &format!("every running member applies index {index}"),
            WAIT_BUDGET,
            |sim| {
                let members = sim.members();
                sim.slots
                    .iter()
                    .filter_map(|slot| slot.node.as_ref())
                    .filter(|node| members.contains(node.id()))
                    .all(|node| node.last_applied() >= index)
            },
        )
    }

    /// Each server's role, term, configuration and indexes, for failure reports.
    pub fn describe_servers(&self) -> String {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|&id| match self.node(id) {
                Some(node) => format!(
                    "{id} {:?} t{} [{}]@{} last {} commit {} applied {}",
                    node.role(),
                    node.current_term(),
                    node.membership(),
                    node.membership_index(),
                    node.last_log_index(),
                    node.commit_index(),
                    node.last_applied()
                ),
                None => format!("{id} crashed"),
            })
            .collect();
        servers.join("; ")
    }

    // ---- event handling ----

    fn handle(&mut self, event: SimEvent) {
        match event {
            SimEvent::Deliver {
                from,
                to,
                message,
                sequence,
            } => {
                self.network
                    .on_delivered(from, to, sequence, &mut self.counts);
                if !self.network.connected(from, to) {
                    // A link cut while the message was in flight loses it too.
                    self.counts.messages_partitioned += 1;
                    return;
                }
                if self.node(to).is_none() {
                    self.counts.messages_to_crashed += 1;
                    return;
                }
                self.step_node(to, Event::Message { from, message });
            }
            SimEvent::Timer {
                node,
                timer,
                generation,
            } => {
                let Some(index) = self.slot_index(node) else {
                    return;
                };
                if self.slots[index].timer_generations[timer_slot(timer)] == generation {
                    self.step_node(node, Event::Timeout(timer));
                }
            }
            SimEvent::Sync { node, incarnation } => {
                let Some(index) = self.slot_index(node) else {
                    return;
                };
                let slot = &mut self.slots[index];
                if slot.incarnation != incarnation {
                    return;
                }
                slot.sync_scheduled = false;
                let Some(consensus) = slot.node.as_mut() else {
                    return;
                };
                let result = consensus.sync();
                self.after_node_event(node, result);
            }
            SimEvent::ClientSend { client } => self.client_send(client),
            SimEvent::ClientTimeout { client, attempt } => self.client_timeout(client, attempt),
            SimEvent::ClientRequest {
                client,
                node,
                event,
            } => {
                if self.node(node).is_none() {
                    self.clients[client].stats.requests_lost += 1;
                    return;
                }
                self.queue_client_request(client, node, event);
            }
            SimEvent::ClientBatch { node, incarnation } => {
                self.step_client_batch(node, incarnation)
            }
            SimEvent::ClientReply {
                client,
                from,
                proposal,
                outcome,
            } => self.client_reply(client, from, proposal, outcome),
            SimEvent::Fault => self.inject_fault(),
            SimEvent::IsolateLeader { node, term } => {
                let still_leading = self
                    .node(node)
                    .is_some_and(|n| n.role() == Role::Leader && n.current_term() == term);
                if self.faults_active && still_leading {
                    self.counts.leaders_isolated += 1;
                    self.partition(&[node]);
                }
            }
            SimEvent::Restart { node } => {
                if self.faults_active {
                    self.restart(node);
                }
            }
        }
    }

    /// A delay drawn from `0..=max_us`; 0 without drawing when `max_us` is 0, so runs that
    /// configure no delay consume no randomness for it.
    fn delay_up_to(&mut self, max_us: u64) -> u64 {
        match max_us {
            0 => 0,
            max => self.rng.gen_range(0..=max),
        }
    }

    /// Holds a client request for the server's next batch, which comes within
    /// `client_batch_window_max_us` (at once when that is 0).
    fn queue_client_request(&mut self, client: usize, node: ServerId, event: Event) {
        let Some(index) = self.slot_index(node) else {
            return;
        };
        let slot = &mut self.slots[index];
        let first = slot.client_batch.is_empty();
        slot.client_batch.push((client, event));
        if first {
            let incarnation = slot.incarnation;
            let delay = self.delay_up_to(self.config.client_batch_window_max_us);
            self.clock
                .schedule(delay, SimEvent::ClientBatch { node, incarnation });
        }
    }

    /// Hands the client requests a server received since its last batch to its core at once.
    fn step_client_batch(&mut self, id: ServerId, incarnation: u64) {
        let Some(index) = self.slot_index(id) else {
            return;
        };
        let slot = &mut self.slots[index];
        if slot.incarnation != incarnation {
            return;
        }
        let events: Vec<Event> = std::mem::take(&mut slot.client_batch)
            .into_iter()
            .map(|(_, event)| event)
            .collect();
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        self.counts.client_batches += 1;
        self.counts.client_batch_requests_max = self
            .counts
            .client_batch_requests_max
            .max(events.len() as u64);
        let result = node.step_batch(events);
        self.after_node_event(id, result);
    }

    fn step_node(&mut self, id: ServerId, event: Event) {
        let Some(index) = self.slot_index(id) else {
            return;
        };
        let Some(node) = self.slots[index].node.as_mut() else {
            return;
        };
        let result = node.step(event);
        self.after_node_event(id, result);
    }

    fn after_node_event(&mut self, id: ServerId, result: crate::Result<Actions>) {
        let actions = match result {
            Ok(actions) => actions,
            Err(error) => {
                self.failure
                    .get_or_insert(format!("{id} failed on its log: {error}"));
                return;
            }
        };
        if self.config.check_invariants {
            let index = self.slot_index(id).expect("known server");
            if let Some(node) = self.slots[index].node.as_mut() {
                if let Err(reason) = self.checker.check(node) {
                    self.failure.get_or_insert(reason);
                }
            }
            let logs = self
                .slots
                .iter()
                .zip(&self.servers)
                .filter_map(|(slot, &id)| match &slot.node {
                    Some(node) => Some((id, node.log(), node.membership())),
                    None => slot
                        .crashed_log
                        .as_ref()
                        .map(|log| (id, log, &slot.crashed_membership)),
                });
            if let Err(reason) = self.checker.check_committed_entry_is_safe(logs) {
                self.failure.get_or_insert(reason);
            }
            let committed = self.checker.configuration_counts();
            self.counts.servers_promoted = committed.promoted;
            self.counts.servers_removed = committed.removed;
            self.counts.servers_readded = committed.readded;
        }
        self.notice_new_leader(id);
        self.carry_out(id, actions);
    }

    /// Leader churn: with the configured chance, cut a new leader off shortly after it won, often
    /// before its first entries reach anyone. Also counts leaders that step down because a
    /// committed configuration removed them (thesis §4.2.2).
    fn notice_new_leader(&mut self, id: ServerId) {
        let index = self.slot_index(id).expect("known server");
        let Some(node) = self.slots[index].node.as_ref() else {
            return;
        };
        let leading = (node.role() == Role::Leader).then(|| node.current_term());
        let stepped_down = leading.is_none() && self.slots[index].led_term.is_some();
        if stepped_down
            && !node.membership().is_voter(id)
            && node.membership_index() <= node.commit_index()
        {
            self.counts.leaders_removed += 1;
        }
        let is_new = leading.is_some() && leading != self.slots[index].led_term;
        self.slots[index].led_term = leading;
        let probability = self.config.faults.isolate_new_leader_probability;
        if let (true, Some(term)) = (is_new && self.faults_active && probability > 0.0, leading) {
            if self.rng.gen_bool(probability) {
                let delay_max = self.config.faults.delay_max_us.max(1) * 2;
                let after = self.rng.gen_range(0..=delay_max);
                self.clock
                    .schedule(after, SimEvent::IsolateLeader { node: id, term });
            }
        }
    }

    fn carry_out(&mut self, id: ServerId, actions: Actions) {
        let index = self.slot_index(id).expect("known server");
        for envelope in actions.messages {
            match &envelope.message {
                Message::InstallSnapshot(_) => self.counts.snapshot_chunks_sent += 1,
                Message::InstallSnapshotResponse(response)
                    if response.done && response.match_index == response.last_index =>
                {
                    self.counts.snapshots_installed += 1;
                }
                _ => {}
            }
            let (fate, sequence) = self.network.send(
                id,
                envelope.to,
                &self.config.faults,
                &mut self.rng,
                &mut self.counts,
            );
            if let Fate::Deliver(delays) = fate {
                for delay in delays {
                    self.clock.schedule(
                        delay,
                        SimEvent::Deliver {
                            from: id,
                            to: envelope.to,
                            message: envelope.message.clone(),
                            sequence,
                        },
                    );
                }
            }
        }
        for timer_action in actions.timers {
            let (timer, after) = match timer_action {
                TimerAction::Set { timer, after } => (timer, Some(after)),
                TimerAction::Cancel(timer) => (timer, None),
            };
            let slot = &mut self.slots[index];
            slot.timer_generations[timer_slot(timer)] += 1;
            let generation = slot.timer_generations[timer_slot(timer)];
            if let Some(after) = after {
                self.clock.schedule(
                    micros(after),
                    SimEvent::Timer {
                        node: id,
                        timer,
                        generation,
                    },
                );
            }
        }
        for reply in actions.replies {
            if let ProposalOutcome::LeadershipTransferred { to } = reply.outcome {
                if to != id {
                    self.counts.transfers_done += 1;
                }
            }
            self.route_reply(id, reply.id, reply.outcome);
        }
        if actions.sync_required && !self.slots[index].sync_scheduled {
            self.slots[index].sync_scheduled = true;
            let delay = self.delay_up_to(self.config.faults.sync_delay_max_us);
            let incarnation = self.slots[index].incarnation;
            self.clock.schedule(
                delay,
                SimEvent::Sync {
                    node: id,
                    incarnation,
                },
            );
        }
    }

    fn route_reply(&mut self, from: ServerId, proposal: ProposalId, outcome: ProposalOutcome) {
        if let Some(change) = self.membership_requests.remove(&proposal) {
            self.record_membership_answer(from, change, &outcome);
        }
        match clients::client_of(proposal) {
            Some(client) => self.route_client_reply(client, from, proposal, outcome),
            None => {
                self.direct_replies.insert(proposal, outcome);
            }
        }
    }

    fn inject_fault(&mut self) {
        if !self.faults_active {
            return;
        }
        let faults = &self.config.faults;
        let heal_weight = if self.network.is_partitioned() {
            faults.partition_weight
        } else {
            0
        };
        let total = faults.crash_weight
            + faults.partition_weight
            + heal_weight
            + faults.transfer_weight
            + faults.membership_weight;
        if total > 0 {
            let mut pick = self.rng.gen_range(0..total);
            if pick < faults.membership_weight {
                self.ask_for_membership_change();
            } else if pick - faults.membership_weight < faults.crash_weight {
                // Half the crashes hit the leader: leader churn is where the subtle rules
                // (§5.4.1, §5.4.2, Figure 8) matter.
                let random = *self.servers.choose(&mut self.rng).expect("servers");
                let id = match self.leader() {
                    Some(leader) if self.rng.gen_bool(0.5) => leader,
                    _ => random,
                };
                self.crash(id);
                let down_for = self.rng.gen_range(10_000..2_000_000);
                self.clock
                    .schedule(down_for, SimEvent::Restart { node: id });
            } else {
                pick -= faults.membership_weight + faults.crash_weight;
                if pick < faults.partition_weight {
                    let mut shuffled = self.servers.clone();
                    shuffled.shuffle(&mut self.rng);
                    let cut = self.rng.gen_range(1..shuffled.len().max(2));
                    self.partition(&shuffled[..cut.min(shuffled.len())]);
                } else if pick < faults.partition_weight + faults.transfer_weight {
                    self.ask_for_transfer();
                } else {
                    self.heal_network();
                }
            }
        }
        let after = self.fault_interval();
        self.clock.schedule(after, SimEvent::Fault);
    }

    /// An operator asks the leader, if there is one, to hand leadership to another voter of its
    /// configuration (§3.10), which may be down or cut off.
    fn ask_for_transfer(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let others: Vec<ServerId> = self
            .node(leader)
            .expect("the leader runs")
            .voters()
            .iter()
            .copied()
            .filter(|&voter| voter != leader)
            .collect();
        let Some(&to) = others.choose(&mut self.rng) else {
            return;
        };
        self.counts.transfers_asked += 1;
        let id = self.next_direct_proposal();
        self.step_node(leader, Event::TransferLeadership { id, to });
    }

    fn fault_interval(&mut self) -> Micros {
        let mean = self.config.faults.fault_interval_mean_us.max(1);
        self.rng.gen_range(1..=2 * mean)
    }

    fn boot(&mut self, id: ServerId) {
        let index = self.slot_index(id).expect("known server");
        let log = self.slots[index]
            .crashed_log
            .take()
            .expect("a crashed server keeps its log");
        let rng_seed = self.rng.gen();
        let mut node = Consensus::with_membership(
            id,
            self.start_up_membership(id),
            log,
            KvStateMachine::new(),
            self.config.core.clone(),
            rng_seed,
        )
        .expect("the simulation's configuration is valid");
        let actions = node.start();
        self.slots[index].node = Some(node);
        self.after_node_event(id, Ok(actions));
    }

    /// The configuration `id` is started (and restarted) with: the initial one for the initial
    /// voters, an empty one for spares, which join (thesis §4.2.1). The log's, if any, wins.
    fn start_up_membership(&self, id: ServerId) -> Membership {
        if self.initial_membership.contains(id) {
            self.initial_membership.clone()
        } else {
            Membership::default()
        }
    }

    fn slot_index(&self, id: ServerId) -> Option<usize> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        (index < self.slots.len()).then_some(index)
    }

    /// A failure report for `reason` at the current time.
    fn failure(&self, reason: String) -> SimFailure {
        SimFailure {
            seed: self.seed,
            time_us: self.clock.now(),
            reason,
            config: self.description.clone(),
            node_count: self.config.node_count,
            counts: Box::new(self.counts.clone()),
        }
    }
}

fn timer_slot(timer: Timer) -> usize {
    match timer {
        Timer::Election => 0,
        Timer::Heartbeat => 1,
        Timer::Quorum => 2,
        Timer::CatchUp => 3,
    }
}
