//! The networked server (DESIGN.md §1, §4): the only place with sockets and the only user of mio.
//!
//! One thread runs one mio `Poll` over one listening port shared by peers and clients, a `Slab`
//! of connections, and the reactor's deadlines. It turns frames into [`Event`]s for the
//! [`Consensus`] core and carries out the [`Actions`](crate::consensus::Actions) it gets back; it
//! keeps no Raft logic of its own. Each poll turn handles every ready event, hands the client
//! requests it read to the core as one batch (one AppendEntries per follower for all of them),
//! then syncs the log once if anything asked for it (group commit), then writes what is queued.
//!
//! The pieces: `connection.rs` (one connection's buffers and I/O), `inbound.rs` (accepting,
//! reading, preambles, peer messages and client requests), `outbound.rs` (carrying out actions:
//! sending messages, answering clients), `peers.rs` (whom to dial and where, following the
//! configuration in force), `timers.rs` (deadlines and backoff).

mod connection;
mod inbound;
mod local_cluster;
mod outbound;
mod peers;
mod timers;

pub use local_cluster::LocalCluster;

use crate::consensus::{Config, Consensus, Event};
use crate::error::{ConfigError, Error, Result};
use crate::framing::MESSAGE_BYTES_MAX_DEFAULT;
use crate::log::PersistentLog;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::state_machine::StateMachine;
use crate::types::ServerId;
use crate::wire::install_snapshot_overhead_bytes;
use connection::{CloseReason, Connection, Frames, Kind};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use outbound::Proposer;
use peers::Peer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use slab::Slab;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timers::{Deadline, Timers};

/// The listening socket's token.
const LISTENER: Token = Token(usize::MAX);
/// The token of the waker that [`ServerHandle::shutdown`] uses to interrupt `poll`.
const WAKER: Token = Token(usize::MAX - 1);
/// Most readiness events taken from one `poll` call.
const EVENTS_PER_POLL_MAX: usize = 1024;
/// Most connections (peers and clients, inbound and outbound) open at once; further
/// connections are accepted and closed at once, with a warning.
const CONNECTIONS_MAX: usize = 4096;
/// The default for [`ServerBuilder::with_preamble_timeout`].
const PREAMBLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Entry point for running a Raft server on the network.
///
/// # Examples
/// The blocking form of the original design: it serves until the process ends or the log fails.
/// ```no_run
/// use mioraft::{KvStateMachine, MemLog, Server, ServerId};
/// use std::collections::HashMap;
///
/// let peers = HashMap::from([
///     (ServerId(2), "10.0.0.2:7000".parse()?),
///     (ServerId(3), "10.0.0.3:7000".parse()?),
/// ]);
/// Server::run(ServerId(1), "10.0.0.1:7000".parse()?, peers, MemLog::new(), KvStateMachine::new())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Server {
    _private: (),
}

impl Server {
    /// Runs server `id` on `addr` with its `peers` (the other members and their addresses) until
    /// the log fails: `Server::new(id, addr, log, state_machine).with_peers(peers).run()`.
    ///
    /// # Errors
    /// See [`ServerBuilder::run`].
    pub fn run<L, M>(
        id: ServerId,
        addr: SocketAddr,
        peers: HashMap<ServerId, SocketAddr>,
        log: L,
        state_machine: M,
    ) -> Result<()>
    where
        L: PersistentLog + Send + 'static,
        M: StateMachine,
    {
        Server::new(id, addr, log, state_machine)
            .with_peers(peers)
            .run()
    }

    /// Starts configuring server `id`, which will listen on `addr` for peers and clients, keep
    /// its Raft state in `log` and apply committed commands to `state_machine`.
    // DESIGN.md §2 fixes this name for the builder's entry point.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<L, M>(
        id: ServerId,
        addr: SocketAddr,
        log: L,
        state_machine: M,
    ) -> ServerBuilder<L, M>
    where
        L: PersistentLog + Send + 'static,
        M: StateMachine,
    {
        ServerBuilder {
            id,
            addr,
            log,
            state_machine,
            peers: HashMap::new(),
            config: Config::default(),
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            preamble_timeout: PREAMBLE_TIMEOUT_DEFAULT,
            listener: None,
            rng_seed: None,
            join: false,
        }
    }
}

/// A server being configured; finish with [`run`](ServerBuilder::run) or
/// [`spawn`](ServerBuilder::spawn).
///
/// # Examples
/// A one-server cluster on a free port, on its own thread:
/// ```
/// use mioraft::{KvStateMachine, MemLog, Server, ServerId};
/// use std::time::Duration;
///
/// let handle = Server::new(ServerId(1), "127.0.0.1:0".parse()?, MemLog::new(), KvStateMachine::new())
///     .with_election_timeout(Duration::from_millis(100), Duration::from_millis(200))
///     .with_heartbeat_interval(Duration::from_millis(20))
///     .spawn()?;
/// assert_ne!(handle.local_addr().port(), 0);
/// println!("n1 is {:?}", handle.metrics().role);
/// handle.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ServerBuilder<L, M> {
    id: ServerId,
    addr: SocketAddr,
    log: L,
    state_machine: M,
    peers: HashMap<ServerId, SocketAddr>,
    config: Config,
    message_bytes_max: u64,
    preamble_timeout: Duration,
    listener: Option<std::net::TcpListener>,
    rng_seed: Option<u64>,
    /// Start with an empty configuration and wait to be added (see [`ServerBuilder::join`]).
    join: bool,
}

impl<L, M> ServerBuilder<L, M>
where
    L: PersistentLog + Send + 'static,
    M: StateMachine,
{
    /// The other members of the cluster and the addresses this server dials them at (and tells
    /// clients to go to). An entry for this server's own id is ignored.
    ///
    /// A new cluster's first configuration (thesis §4.1) is these peers and this server, all
    /// voters, with their addresses (this server's: the address its listener is bound to).
    /// Once the log holds a configuration, that one is in force instead, and this server dials
    /// every member of it. A peer listed here is always dialled at the address given here
    /// (DESIGN.md §4), whatever the configuration says; a member not listed here (added
    /// later) is dialled at its address in the configuration.
    #[must_use]
    pub fn with_peers(mut self, peers: HashMap<ServerId, SocketAddr>) -> Self {
        self.peers = peers;
        self
    }

    /// Starts this server to join a running cluster: with an empty configuration, it stays
    /// passive (it never campaigns and reports [`Role::Learner`](crate::Role::Learner)) until
    /// the cluster's leader adds it ([`Client::add_server`](crate::Client::add_server) or
    /// [`Client::add_learner`](crate::Client::add_learner)) and the configuration that does so
    /// reaches it. Peers given with [`with_peers`](Self::with_peers) are not needed; if given,
    /// they are the addresses those servers are dialled at once they are members.
    ///
    /// A server whose log already holds a configuration (restarted after it was added) uses
    /// that one, as any server does.
    ///
    /// # Examples
    /// ```
    /// use mioraft::{KvStateMachine, MemLog, Role, Server, ServerId};
    ///
    /// let joining = Server::new(ServerId(4), "127.0.0.1:0".parse()?, MemLog::new(), KvStateMachine::new())
    ///     .join()
    ///     .spawn()?;
    /// assert_eq!(joining.metrics().role, Role::Learner);
    /// assert!(joining.metrics().membership.is_empty());
    /// joining.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn join(mut self) -> Self {
        self.join = true;
        self
    }

    /// The range election timeouts are drawn from (§5.2). Default 150–300 ms.
    #[must_use]
    pub fn with_election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.config.election_timeout_min = min;
        self.config.election_timeout_max = max;
        self
    }

    /// How often a leader heartbeats its followers. Default 50 ms.
    #[must_use]
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// Replaces every consensus setting at once, including those of earlier
    /// `with_election_timeout`, `with_heartbeat_interval` and `with_snapshot_policy` calls
    /// (later calls adjust it).
    #[must_use]
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The largest message accepted from a peer or client, in bytes; a connection sending a
    /// larger one is closed. Default [`MESSAGE_BYTES_MAX_DEFAULT`] (16 MiB). Every member must
    /// accept the largest AppendEntries and InstallSnapshot chunk the others send: keep it well
    /// above [`Config::append_bytes_max`], [`Config::snapshot_chunk_bytes`] and the largest
    /// command. [`run`](Self::run) and [`spawn`](Self::spawn) refuse a limit below twice
    /// `append_bytes_max`, or below `snapshot_chunk_bytes` plus the chunk's message header
    /// ([`install_snapshot_overhead_bytes`], 126 bytes).
    #[must_use]
    pub fn with_message_bytes_max(mut self, message_bytes_max: u64) -> Self {
        self.message_bytes_max = message_bytes_max;
        self
    }

    /// When to take a snapshot and compact the log (§7): once `entries` entries, or entries
    /// totalling `bytes` bytes ([`Entry::size_bytes`](crate::log::Entry::size_bytes)), were
    /// applied since the last snapshot, whichever comes first. Sets
    /// [`Config::snapshot_entries`] and [`Config::snapshot_bytes`]; defaults 100,000 entries and
    /// 64 MiB. `u64::MAX` turns a trigger off (both: never snapshot on this server; a leader's
    /// snapshot may still be installed). Zero is refused when the server starts.
    ///
    /// Small values keep the log and restarts short at the cost of serializing the state
    /// machine more often ([`StateMachine::snapshot`]).
    #[must_use]
    pub fn with_snapshot_policy(mut self, entries: u64, bytes: u64) -> Self {
        self.config.snapshot_entries = entries;
        self.config.snapshot_bytes = bytes;
        self
    }

    /// How long a new connection may take to send its preamble before it is closed as
    /// half-open. Default 5 s.
    #[must_use]
    pub fn with_preamble_timeout(mut self, timeout: Duration) -> Self {
        self.preamble_timeout = timeout;
        self
    }

    /// Serves on an already bound listener instead of binding the builder's address, e.g. one
    /// bound to port 0 so that a whole test cluster's addresses are known before any server
    /// starts.
    #[must_use]
    pub fn with_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Seeds the randomness of election timeouts and reconnection jitter. Default: from the
    /// time and the server id.
    #[must_use]
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Serves on this thread until the log fails.
    ///
    /// # Errors
    /// [`Error::Config`] for settings that cannot work, [`Error::Io`] naming the address when
    /// binding or polling fails, and the [`Error::Log`] that stopped the server.
    pub fn run(self) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let (reactor, _waker) = self.build(stop)?;
        reactor.run()
    }

    /// Starts serving on a new thread (named `mioraft-n<id>`) and returns its handle. The
    /// listener is bound before this returns, so [`ServerHandle::local_addr`] is ready.
    ///
    /// # Errors
    /// [`Error::Config`] for settings that cannot work, [`Error::Io`] naming the address when
    /// binding fails or the thread cannot start.
    pub fn spawn(self) -> Result<ServerHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let (reactor, waker) = self.build(Arc::clone(&stop))?;
        let local_addr = reactor.local_addr;
        let metrics = Arc::clone(&reactor.metrics);
        let thread = std::thread::Builder::new()
            .name(format!("mioraft-{}", reactor.id))
            .spawn(move || reactor.run())
            .map_err(|source| Error::Io {
                address: local_addr.to_string(),
                source,
            })?;
        Ok(ServerHandle {
            local_addr,
            metrics,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Validates the settings, binds the listener and prepares the reactor.
    fn build(self, stop: Arc<AtomicBool>) -> Result<(Reactor<L, M>, Arc<Waker>)> {
        if self.message_bytes_max == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "message_bytes_max",
            }
            .into());
        }
        // An AppendEntries batch may encode to about twice its counted bytes (small entries
        // carry 24 bytes of framing each); it must fit every peer's message limit.
        let append_bytes_max = self.config.append_bytes_max;
        if self.message_bytes_max < append_bytes_max.saturating_mul(2) {
            return Err(ConfigError::MessageLimitTooSmall {
                message_bytes_max: self.message_bytes_max,
                append_bytes_max,
            }
            .into());
        }
        // A full InstallSnapshot chunk (§7) must fit every peer's message limit too, or a
        // follower that needs a snapshot would close the connection on every chunk.
        let snapshot_chunk_bytes = self.config.snapshot_chunk_bytes;
        let overhead_bytes = install_snapshot_overhead_bytes();
        let chunk_message_bytes = snapshot_chunk_bytes.saturating_add(overhead_bytes);
        if self.message_bytes_max < chunk_message_bytes {
            return Err(ConfigError::MessageLimitBelowSnapshotChunk {
                message_bytes_max: self.message_bytes_max,
                snapshot_chunk_bytes,
                overhead_bytes,
            }
            .into());
        }
        // The chunks the core may have unacknowledged to one follower all wait in that
        // connection's output buffer when the follower reads slowly; they may take half of it,
        // leaving the rest to appends and heartbeats, so a slow follower is not disconnected.
        let snapshot_chunks_in_flight = self.config.snapshot_chunks_in_flight;
        let window_budget_bytes = connection::OUTPUT_BYTES_MAX as u64 / 2;
        let window_bytes = snapshot_chunks_in_flight.saturating_mul(chunk_message_bytes);
        if window_bytes > window_budget_bytes {
            return Err(ConfigError::SnapshotWindowTooLarge {
                snapshot_chunk_bytes,
                snapshot_chunks_in_flight,
                budget_bytes: window_budget_bytes,
            }
            .into());
        }
        if self.preamble_timeout.is_zero() {
            return Err(ConfigError::ZeroLimit {
                name: "preamble_timeout",
            }
            .into());
        }
        let id = self.id;
        let configured_peers: BTreeMap<ServerId, SocketAddr> = self
            .peers
            .into_iter()
            .filter(|&(peer, _)| peer != id)
            .collect();
        let io_error = |address: SocketAddr| {
            move |source| Error::Io {
                address: address.to_string(),
                source,
            }
        };
        let std_listener = match self.listener {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(self.addr).map_err(io_error(self.addr))?,
        };
        let local_addr = std_listener.local_addr().map_err(io_error(self.addr))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io_error(local_addr))?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new().map_err(io_error(local_addr))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_error(local_addr))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_error(local_addr))?);
        // Thesis §4.1: a new cluster starts from the configuration its servers are given; a
        // joining server from none at all.
        let membership = if self.join {
            Membership::default()
        } else {
            configured_peers.iter().fold(
                Membership::default().with_voter(id, local_addr.to_string()),
                |membership, (&peer, address)| membership.with_voter(peer, address.to_string()),
            )
        };
        let rng_seed = self.rng_seed.unwrap_or_else(|| default_seed(id));
        let consensus = Consensus::with_membership(
            id,
            membership,
            self.log,
            self.state_machine,
            self.config,
            rng_seed,
        )?;
        let metrics = Arc::new(Mutex::new(consensus.metrics()));
        let reactor = Reactor {
            id,
            local_addr,
            poll,
            listener,
            connections: Slab::new(),
            serials_issued: 0,
            consensus,
            timers: Timers::default(),
            configured_peers,
            peers: BTreeMap::new(),
            inbound_peers: BTreeMap::new(),
            membership_seen: None,
            proposals: BTreeMap::new(),
            proposals_issued: 0,
            client_requests: Vec::new(),
            message_bytes_max: self.message_bytes_max,
            preamble_timeout: self.preamble_timeout,
            sync_required: false,
            to_flush: Vec::new(),
            to_read: Vec::new(),
            stop,
            metrics,
            rng: ChaCha8Rng::seed_from_u64(rng_seed.rotate_left(32) ^ 0x6d69_6f72_6166_7421),
            read_buffer: vec![0; connection::READ_CHUNK_BYTES],
            frames: Frames::default(),
        };
        Ok((reactor, waker))
    }
}

/// A running server on its own thread, from [`ServerBuilder::spawn`]. Dropping it stops the
/// server too, as [`ServerHandle::shutdown`] does, but without reporting how it ended.
pub struct ServerHandle {
    local_addr: SocketAddr,
    metrics: Arc<Mutex<Metrics>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// `None` once joined.
    thread: Option<JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's state as of its latest poll turn. Cheap: a copy of a small struct.
    pub fn metrics(&self) -> Metrics {
        self.metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the server, closes its connections and its port, and waits for its thread.
    ///
    /// # Errors
    /// The error the server had already stopped with (e.g. an [`Error::Log`]), or
    /// [`Error::ServerStopped`] if its thread panicked.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        if let Err(error) = self.waker.wake() {
            // Only possible if the thread is gone already; joining tells how it ended.
            log::debug!("waking the server on {}: {error}", self.local_addr);
        }
        match thread.join() {
            Ok(outcome) => outcome,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(Error::ServerStopped(format!(
                    "server thread on {} panicked: {what}",
                    self.local_addr
                )))
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            log::error!("server on {} had stopped: {error}", self.local_addr);
        }
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

/// The event loop's state: everything one server thread owns.
struct Reactor<L: PersistentLog, M: StateMachine> {
    /// This server.
    id: ServerId,
    /// Where the listener is bound.
    local_addr: SocketAddr,
    poll: Poll,
    listener: TcpListener,
    /// Every open connection; the slab key is the connection's mio token.
    /// Invariant: holds at most `CONNECTIONS_MAX` entries accepted by us (plus our own dials).
    connections: Slab<Connection>,
    /// Serial numbers handed out so far (see [`Connection::serial`]).
    serials_issued: u64,
    /// The Raft rules, fed by this loop.
    consensus: Consensus<L, M>,
    /// Consensus timers, reconnections and preamble deadlines.
    timers: Timers,
    /// The peers given at start (with_peers) and their addresses: always dialled there
    /// (DESIGN.md §4). Constant.
    configured_peers: BTreeMap<ServerId, SocketAddr>,
    /// The servers dialled: every member of the configuration in force but this server (whose
    /// address can be told): address, outbound connection, backoff. Kept in line with the
    /// configuration by `peers.rs`.
    peers: BTreeMap<ServerId, Peer>,
    /// Each peer's latest connection to us, answered on while we have none to it.
    /// Invariant: each token is an open `Kind::InboundPeer` connection of that peer.
    inbound_peers: BTreeMap<ServerId, Token>,
    /// The configuration the peer table was last brought in line with; `None` before the
    /// first time.
    membership_seen: Option<Membership>,
    /// Proposals handed to the core and not answered yet, by the tag we gave them.
    /// Bounded by the core: a leader refuses past `uncommitted_entries_max`, others answer now.
    proposals: BTreeMap<crate::consensus::ProposalId, Proposer>,
    /// Proposal tags handed out so far.
    proposals_issued: u64,
    /// Client requests read this turn, in arrival order, for the core's next batch.
    client_requests: Vec<Event>,
    message_bytes_max: u64,
    preamble_timeout: Duration,
    /// Some step this turn left unsynced writes: sync before the turn ends.
    sync_required: bool,
    /// Connections with output queued this turn, flushed at its end (once each).
    to_flush: Vec<Token>,
    /// Connections whose read budget ran out while data was still waiting.
    to_read: Vec<Token>,
    /// Set by the handle to stop the loop.
    stop: Arc<AtomicBool>,
    /// What [`ServerHandle::metrics`] reads; refreshed every turn.
    metrics: Arc<Mutex<Metrics>>,
    /// Jitter for reconnection backoff.
    rng: ChaCha8Rng,
    /// Where every connection's reads land before framing; one buffer for all.
    read_buffer: Vec<u8>,
    /// The frames of the read being handled; one buffer for all, reused.
    frames: Frames,
}

impl<L, M> Reactor<L, M>
where
    L: PersistentLog + Send + 'static,
    M: StateMachine,
{
    /// Serves until stopped or until the log fails.
    fn run(mut self) -> Result<()> {
        let peers: Vec<String> = self
            .configured_peers
            .iter()
            .map(|(peer, address)| format!("{peer} at {address}"))
            .collect();
        log::info!(
            "{}: serving on {}; configured peers: [{}]",
            self.id,
            self.local_addr,
            peers.join(", ")
        );
        if self.consensus.membership().is_empty() {
            log::info!(
                "{}: waiting to be added to a cluster (no configuration yet)",
                self.id
            );
        }
        // Carrying out the first actions dials every member of the configuration in force.
        let actions = self.consensus.start();
        self.carry_out(actions);
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        let mut outcome = Ok(());
        while !self.stop.load(Ordering::Acquire) {
            if let Err(error) = self.turn(&mut events) {
                log::error!("{}: stopping: {error}", self.id);
                outcome = Err(error);
                break;
            }
        }
        self.answer_pending_proposals_on_stop();
        log::info!("{}: stopped serving on {}", self.id, self.local_addr);
        outcome
    }

    /// One poll turn: wait for readiness or the next deadline, handle every ready event, fire
    /// due timers, sync once if needed (group commit), publish metrics, then write what was
    /// queued.
    fn turn(&mut self, events: &mut Events) -> Result<()> {
        let timeout = if self.to_read.is_empty() {
            self.timers.time_until_next(Instant::now())
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    address: self.local_addr.to_string(),
                    source,
                })
            }
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_connections(),
                // The stop flag is checked before the next turn.
                WAKER => {}
                token => self.connection_ready(token, event)?,
            }
        }
        self.read_leftovers()?;
        self.step_client_requests()?;
        self.fire_due_timers()?;
        // What may go before the sync goes now: the leader's appends reach followers while its
        // own write is in flight (thesis §10.2.1), so the two fsyncs overlap instead of adding
        // up. Messages that wait on durability are withheld by the core until the sync.
        // Metrics first: whatever a client learns from a response, metrics() already shows.
        self.publish_metrics();
        self.flush_queued();
        self.sync_while_required()?;
        self.publish_metrics();
        self.flush_queued();
        Ok(())
    }

    /// Steps the core with `event` and carries out what it asks.
    ///
    /// # Errors
    /// The core's error (a failing log): the server must stop.
    fn step(&mut self, event: Event) -> Result<()> {
        let actions = self.consensus.step(event)?;
        self.carry_out(actions);
        Ok(())
    }

    /// Fires every deadline that has passed.
    fn fire_due_timers(&mut self) -> Result<()> {
        let now = Instant::now();
        while let Some(deadline) = self.timers.pop_due(now) {
            match deadline {
                Deadline::Raft(timer) => self.step(Event::Timeout(timer))?,
                Deadline::Reconnect(peer) => self.dial(peer),
                Deadline::Preamble(slot) => {
                    let waiting = self
                        .connections
                        .get(slot)
                        .is_some_and(|c| c.kind() == Kind::AwaitingPreamble);
                    if waiting {
                        let reason = CloseReason::PreambleTimeout(self.preamble_timeout);
                        self.close(Token(slot), reason);
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes the connection at `token` (if still open) and logs why; a lost outbound peer
    /// connection is dialled again after a backoff (if the peer is still a member).
    fn close(&mut self, token: Token, reason: CloseReason) {
        let Some(mut connection) = self.connections.try_remove(token.0) else {
            return;
        };
        connection.deregister(self.poll.registry());
        self.timers.cancel(Deadline::Preamble(token.0));
        if let Kind::InboundPeer(peer) = connection.kind() {
            self.on_inbound_closed(peer, token);
        }
        match connection.kind() {
            Kind::OutboundPeer { peer, established } => {
                if established {
                    log::info!("{}: lost {connection}: {reason}", self.id);
                } else {
                    log::debug!("{}: could not reach {connection}: {reason}", self.id);
                }
                self.on_outbound_closed(peer, token);
            }
            _ if reason.is_orderly() => log::debug!("{}: {connection}: {reason}", self.id),
            _ => log::warn!("{}: closing {connection}: {reason}", self.id),
        }
    }

    /// Whether `token` still holds the connection numbered `serial`.
    fn is_open(&self, token: Token, serial: u64) -> bool {
        self.connections
            .get(token.0)
            .is_some_and(|c| c.serial() == serial)
    }

    /// A fresh connection serial number.
    fn next_serial(&mut self) -> u64 {
        self.serials_issued = self.serials_issued.wrapping_add(1);
        self.serials_issued
    }

    fn publish_metrics(&self) {
        let mut published = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        self.consensus.refresh_metrics(&mut published);
    }
}

/// `now + after`, or `None` if that is past what `Instant` can represent (never, in practice).
fn deadline_after(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after)
}

/// A seed that differs between servers and runs.
fn default_seed(id: ServerId) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemLog;
    use crate::state_machine::KvStateMachine;

    fn builder() -> ServerBuilder<MemLog, KvStateMachine> {
        let peers = HashMap::from([
            (ServerId(2), "127.0.0.1:1".parse().expect("address")),
            (ServerId(3), "127.0.0.1:2".parse().expect("address")),
        ]);
        Server::new(
            ServerId(1),
            "127.0.0.1:0".parse().expect("address"),
            MemLog::new(),
            KvStateMachine::new(),
        )
        .with_peers(peers)
    }

    fn config_error(builder: ServerBuilder<MemLog, KvStateMachine>) -> ConfigError {
        match builder.spawn() {
            Err(Error::Config(error)) => error,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_policy_sets_both_triggers() {
        let builder = builder().with_snapshot_policy(500, 1 << 20);
        assert_eq!(builder.config.snapshot_entries, 500);
        assert_eq!(builder.config.snapshot_bytes, 1 << 20);
        let zero = config_error(builder.with_snapshot_policy(0, 1));
        assert_eq!(
            zero,
            ConfigError::ZeroLimit {
                name: "snapshot_entries"
            }
        );
    }

    /// A message limit that cannot carry a full snapshot chunk and its header is refused,
    /// naming both values; one that just can is accepted.
    #[test]
    fn the_message_limit_must_carry_a_full_snapshot_chunk() {
        let config = Config {
            append_bytes_max: 1024,
            snapshot_chunk_bytes: 64 << 10,
            ..Config::default()
        };
        let overhead_bytes = crate::wire::install_snapshot_overhead_bytes();
        let too_small = config_error(
            builder()
                .with_config(config.clone())
                .with_message_bytes_max(64 << 10),
        );
        assert_eq!(
            too_small,
            ConfigError::MessageLimitBelowSnapshotChunk {
                message_bytes_max: 64 << 10,
                snapshot_chunk_bytes: 64 << 10,
                overhead_bytes,
            }
        );
        let text = too_small.to_string();
        assert!(
            text.contains("message_bytes_max 65536") && text.contains("snapshot_chunk_bytes 65536"),
            "{text}"
        );
        let handle = builder()
            .with_config(config)
            .with_message_bytes_max((64 << 10) + overhead_bytes)
            .spawn()
            .expect("a limit that holds a chunk and its header");
        handle.shutdown().expect("clean shutdown");
    }

    #[test]
    fn the_snapshot_window_must_fit_half_an_output_buffer() {
        let config = Config {
            snapshot_chunk_bytes: 8 << 20,
            snapshot_chunks_in_flight: 4,
            ..Config::default()
        };
        let error = config_error(
            builder()
                .with_config(config)
                .with_message_bytes_max(16 << 20),
        );
        assert_eq!(
            error,
            ConfigError::SnapshotWindowTooLarge {
                snapshot_chunk_bytes: 8 << 20,
                snapshot_chunks_in_flight: 4,
                budget_bytes: connection::OUTPUT_BYTES_MAX as u64 / 2,
            }
        );
    }
}
