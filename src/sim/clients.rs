//! Simulated clients of the session protocol, behaving like the blocking
//! [`Client`](crate::Client): each opens a session (thesis §6.3), then issues one operation at a
//! time on a few shared keys: `put` of a unique value, `cas` from a value it saw, and `get` by
//! ReadIndex (§6.4). A proposal is re-sent under the same (session, sequence) after a timeout,
//! "not leader", "dropped" or "overloaded", until it gets a final answer or the client gives up
//! on it (it is then indeterminate, and the client moves on to the next sequence number). Reads
//! are re-sent freely. Every operation's invocation, and answer if any, is recorded in virtual
//! time for the end-of-run checks (`history.rs`).
//!
//! Requests and replies cross the simulated network: they are delayed (so reordered), and until
//! the run heals they may be lost or duplicated. Partitions cut only links between servers; a
//! client can reach every server, a stale leader included.

use super::{micros, Micros, SimEvent, Simulation};
use crate::consensus::{Event, ProposalId, ProposalOutcome, ResponseMode, SessionRequest};
use crate::sim::linearizability::RegisterInput;
use crate::types::{LogIndex, ServerId};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::fmt;

/// Proposal ids at or above this belong to simulated clients; below, to direct requests.
pub(super) const CLIENT_ID_BASE: u64 = 1 << 40;
/// Bits of a client proposal id that number the client's attempts.
const ATTEMPT_BITS: u32 = 32;

/// One operation a simulated client performed, as its history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOp {
    /// Which client (0-based).
    pub client: usize,
    /// The key, `k0`, `k1`, ...
    pub key: String,
    /// What was asked.
    pub input: RegisterInput,
    /// The answer: the state machine's reply, or the read's result. `None` if the client gave
    /// up (indeterminate) or the proposal was answered at commit, without a reply.
    pub output: Option<String>,
    /// When the client first sent it (virtual µs).
    pub invoked_at: Micros,
    /// When the final answer arrived; `None` if the client gave up.
    pub returned_at: Option<Micros>,
    /// For a proposal: its session and sequence number.
    pub request: Option<SessionRequest>,
    /// For an answered proposal: the log index the answer named.
    pub index: Option<LogIndex>,
    /// How many times it was sent.
    pub attempts: u32,
    /// The server whose answer ended it.
    pub answered_by: Option<ServerId>,
}

impl fmt::Display for ClientOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: Micros| format!("{}.{:03}", us / 1000, us % 1000);
        write!(f, "c{} ", self.client)?;
        match &self.input {
            RegisterInput::Put(value) => write!(f, "put {value}")?,
            RegisterInput::Get => write!(f, "get")?,
            RegisterInput::Cas { expected, new } => write!(f, "cas {expected:?}->{new}")?,
        }
        match &self.output {
            Some(output) => write!(f, " = {output:?}")?,
            None if self.returned_at.is_some() && self.index.is_some() => {
                write!(f, " = (committed)")?;
            }
            None if self.returned_at.is_some() => write!(f, " = (session expired)")?,
            None => write!(f, " = ?")?,
        }
        match self.returned_at {
            Some(returned_at) => write!(f, " [{}, {}] ms", ms(self.invoked_at), ms(returned_at))?,
            None => write!(f, " [{}, gave up] ms", ms(self.invoked_at))?,
        }
        if let Some(request) = self.request {
            write!(f, " s{}#{}", request.session, request.sequence)?;
        }
        if let Some(index) = self.index {
            write!(f, " @{index}")?;
        }
        if let Some(server) = self.answered_by {
            write!(f, " by {server}")?;
        }
        Ok(())
    }
}

/// What the simulated clients did over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Operations that got a final answer (proposals and reads).
    pub completed: u64,
    /// Reads among them.
    pub reads: u64,
    /// Proposals given up on: indeterminate, perhaps applied.
    pub indeterminate: u64,
    /// Reads given up on (dropped from the history: a read without an answer shows nothing).
    pub reads_given_up: u64,
    /// Requests re-sent (same session and sequence for proposals).
    pub retries: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Proposals refused because their session had expired (then a new session is opened).
    pub sessions_expired: u64,
    /// Requests lost by the network or sent to a crashed server.
    pub requests_lost: u64,
    /// Replies lost by the network (or by [`Simulation::lose_next_applied_reply`]).
    pub replies_lost: u64,
    /// Replies to an attempt the client had already stopped waiting for.
    pub stale_replies: u64,
}

impl std::ops::AddAssign<&ClientStats> for ClientStats {
    /// Adds another run's figures.
    fn add_assign(&mut self, other: &ClientStats) {
        let ClientStats {
            completed,
            reads,
            indeterminate,
            reads_given_up,
            retries,
            timeouts,
            sessions_opened,
            sessions_expired,
            requests_lost,
            replies_lost,
            stale_replies,
        } = other;
        self.completed += completed;
        self.reads += reads;
        self.indeterminate += indeterminate;
        self.reads_given_up += reads_given_up;
        self.retries += retries;
        self.timeouts += timeouts;
        self.sessions_opened += sessions_opened;
        self.sessions_expired += sessions_expired;
        self.requests_lost += requests_lost;
        self.replies_lost += replies_lost;
        self.stale_replies += stale_replies;
    }
}

impl fmt::Display for ClientStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations answered ({} reads), {} proposals indeterminate, {} reads given up, \
             {} retries, {} timeouts, {} sessions opened, {} expired, {} requests and {} replies \
             lost, {} stale replies",
            self.completed,
            self.reads,
            self.indeterminate,
            self.reads_given_up,
            self.retries,
            self.timeouts,
            self.sessions_opened,
            self.sessions_expired,
            self.requests_lost,
            self.replies_lost,
            self.stale_replies
        )
    }
}

/// A reply a test asked to lose ([`Simulation::lose_next_applied_reply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostReply {
    /// The client it was for.
    pub client: usize,
    /// The attempt it answered.
    pub proposal: ProposalId,
    /// The request it answered.
    pub request: Option<SessionRequest>,
    /// What it said.
    pub outcome: ProposalOutcome,
}

#[derive(Clone, Debug)]
enum Request {
    Register,
    Propose {
        key: usize,
        input: RegisterInput,
        request: SessionRequest,
        respond_when: ResponseMode,
    },
    Read {
        key: usize,
    },
}

#[derive(Clone, Debug)]
struct Pending {
    request: Request,
    invoked_at: Micros,
    give_up_at: Micros,
    attempts: u32,
}

/// One simulated client's state.
#[derive(Clone, Debug)]
pub(super) struct SimClient {
    leader_guess: ServerId,
    session: Option<u64>,
    next_sequence: u64,
    /// Operations started, numbering the values this client writes.
    started: u64,
    current: Option<Pending>,
    /// Attempts sent so far, numbering proposal ids.
    attempt: u64,
    outstanding: Option<ProposalId>,
    /// Per key: the value this client saw last (read, written, or reported by a reply).
    last_seen: BTreeMap<usize, String>,
    pub(super) history: Vec<ClientOp>,
    /// Proposals answered "session expired": not applied, and never to be.
    pub(super) expired: Vec<ClientOp>,
    pub(super) stats: ClientStats,
}

impl SimClient {
    pub(super) fn new(leader_guess: ServerId) -> Self {
        SimClient {
            leader_guess,
            session: None,
            next_sequence: 1,
            started: 0,
            current: None,
            attempt: 0,
            outstanding: None,
            last_seen: BTreeMap::new(),
            history: Vec::new(),
            expired: Vec::new(),
            stats: ClientStats::default(),
        }
    }

    /// Whether the client waits for nothing.
    pub(super) fn is_idle(&self) -> bool {
        self.current.is_none()
    }
}

fn proposal_id(client: usize, attempt: u64) -> ProposalId {
    ProposalId(CLIENT_ID_BASE + ((client as u64) << ATTEMPT_BITS) + attempt)
}

/// The client a proposal id belongs to, if it is a client's.
pub(super) fn client_of(proposal: ProposalId) -> Option<usize> {
    let offset = proposal.0.checked_sub(CLIENT_ID_BASE)?;
    usize::try_from(offset >> ATTEMPT_BITS).ok()
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

impl Simulation {
    /// Starts or re-sends the client's current operation.
    pub(super) fn client_send(&mut self, client: usize) {
        let state = &self.clients[client];
        if state.outstanding.is_some() {
            return;
        }
        if state.current.is_none() {
            if self.clients_stopped {
                return;
            }
            self.start_operation(client);
        }
        let now = self.clock.now();
        let state = &mut self.clients[client];
        state.attempt += 1;
        assert!(state.attempt < 1 << ATTEMPT_BITS, "attempt ids run out");
        let proposal = proposal_id(client, state.attempt);
        state.outstanding = Some(proposal);
        let pending = state.current.as_mut().expect("an operation is under way");
        if pending.attempts > 0 {
            state.stats.retries += 1;
        }
        pending.attempts += 1;
        let event = match &pending.request {
            Request::Register => Event::RegisterSession { id: proposal },
            Request::Propose {
                key,
                input,
                request,
                respond_when,
            } => Event::Propose {
                id: proposal,
                command: command_text(*key, input).into_bytes(),
                session: Some(*request),
                respond_when: *respond_when,
            },
            Request::Read { key } => Event::Query {
                id: proposal,
                query: format!("get {}", key_name(*key)).into_bytes(),
            },
        };
        let target = state.leader_guess;
        let attempt = state.attempt;
        log::trace!("sim {now}us: client {client} sends {event:?} to {target}");
        let timeout = micros(self.config.client_timeout);
        self.clock
            .schedule(timeout, SimEvent::ClientTimeout { client, attempt });
        let delays = self.client_link_delays();
        if delays.is_empty() {
            self.clients[client].stats.requests_lost += 1;
        }
        for delay in delays {
            self.clock.schedule(
                delay,
                SimEvent::ClientRequest {
                    client,
                    node: target,
                    event: event.clone(),
                },
            );
        }
    }

    /// Draws a fresh operation (or a session registration) for `client`.
    fn start_operation(&mut self, client: usize) {
        let now = self.clock.now();
        let give_up_at = now.saturating_add(micros(self.config.client_give_up_after));
        let Some(session) = self.clients[client].session else {
            self.clients[client].current = Some(Pending {
                request: Request::Register,
                invoked_at: now,
                give_up_at: Micros::MAX,
                attempts: 0,
            });
            return;
        };
        let key = self.rng.gen_range(0..self.config.keys.max(1));
        let kind = self.rng.gen_range(0..100);
        let committed = self.rng.gen_range(0..100) < self.config.committed_percent;
        let fresh_expected = self.rng.gen_bool(0.2);
        let state = &mut self.clients[client];
        state.started += 1;
        let request = if kind < self.config.read_percent {
            Request::Read { key }
        } else {
            let value = format!("c{client}-{}", state.started);
            let input = if kind < self.config.read_percent + self.config.cas_percent {
                let expected = match state.last_seen.get(&key) {
                    Some(seen) if !fresh_expected => seen.clone(),
                    _ => String::new(),
                };
                RegisterInput::Cas {
                    expected,
                    new: value,
                }
            } else {
                RegisterInput::Put(value)
            };
            let sequence = state.next_sequence;
            // Whatever becomes of this request, the next one gets a new number: it may still be
            // applied after the client gives up on it.
            state.next_sequence += 1;
            Request::Propose {
                key,
                input,
                request: SessionRequest { session, sequence },
                respond_when: if committed {
                    ResponseMode::Committed
                } else {
                    ResponseMode::Applied
                },
            }
        };
        state.current = Some(Pending {
            request,
            invoked_at: now,
            give_up_at,
            attempts: 0,
        });
    }

    /// The attempt `attempt` of `client` got no answer in time: try another server.
    pub(super) fn client_timeout(&mut self, client: usize, attempt: u64) {
        let state = &mut self.clients[client];
        if state.outstanding != Some(proposal_id(client, attempt)) {
            return;
        }
        state.outstanding = None;
        state.stats.timeouts += 1;
        state.leader_guess = *self.servers.choose(&mut self.rng).expect("servers");
        self.client_retry(client, 0);
    }

    /// Re-sends the current operation after `after`, unless the client gives up on it.
    fn client_retry(&mut self, client: usize, after: Micros) {
        let now = self.clock.now();
        let stopped = self.clients_stopped;
        let state = &mut self.clients[client];
        let Some(pending) = &state.current else {
            return;
        };
        match &pending.request {
            Request::Register if stopped => state.current = None,
            Request::Register => {}
            Request::Read { .. } if now >= pending.give_up_at => {
                state.stats.reads_given_up += 1;
                state.current = None;
            }
            Request::Propose {
                key,
                input,
                request,
                ..
            } if now >= pending.give_up_at => {
                state.stats.indeterminate += 1;
                let op = ClientOp {
                    client,
                    key: key_name(*key),
                    input: input.clone(),
                    output: None,
                    invoked_at: pending.invoked_at,
                    returned_at: None,
                    request: Some(*request),
                    index: None,
                    attempts: pending.attempts,
                    answered_by: None,
                };
                state.history.push(op);
                state.current = None;
            }
            Request::Read { .. } | Request::Propose { .. } => {}
        }
        let after = if state.current.is_none() {
            self.rng.gen_range(0..1_000)
        } else {
            after
        };
        self.clock.schedule(after, SimEvent::ClientSend { client });
    }

    /// A server answered one of `client`'s attempts, possibly a stale one.
    pub(super) fn client_reply(
        &mut self,
        client: usize,
        from: ServerId,
        proposal: ProposalId,
        outcome: ProposalOutcome,
    ) {
        let now = self.clock.now();
        let state = &mut self.clients[client];
        if state.outstanding != Some(proposal) {
            state.stats.stale_replies += 1;
            return;
        }
        state.outstanding = None;
        let pending = state.current.clone().expect("an attempt is outstanding");
        match (&pending.request, outcome) {
            (_, ProposalOutcome::NotLeader { leader }) => {
                let (guess, after) = match leader {
                    // A redirect costs at least a little time, so a loop of stale hints cannot
                    // spin without the clock moving.
                    Some(leader) => (leader, 100),
                    None => (
                        *self.servers.choose(&mut self.rng).expect("servers"),
                        self.rng.gen_range(1_000..20_000),
                    ),
                };
                self.clients[client].leader_guess = guess;
                self.client_retry(client, after);
            }
            // Unknown: the server cannot tell (it installed a snapshot over its entry); a retry
            // under the same sequence number is answered exactly once by the session table.
            (
                _,
                ProposalOutcome::Dropped { .. }
                | ProposalOutcome::Overloaded { .. }
                | ProposalOutcome::Unknown { .. },
            ) => {
                let after = self.rng.gen_range(1_000..10_000);
                self.client_retry(client, after);
            }
            (Request::Register, ProposalOutcome::SessionRegistered { session }) => {
                state.session = Some(session);
                state.next_sequence = 1;
                state.stats.sessions_opened += 1;
                self.client_done(client);
            }
            (
                Request::Propose {
                    key,
                    input,
                    request,
                    respond_when,
                },
                outcome @ (ProposalOutcome::Applied { .. } | ProposalOutcome::Committed { .. }),
            ) => {
                let (output, index) = match (respond_when, outcome) {
                    (ResponseMode::Applied, ProposalOutcome::Applied { index, result }) => {
                        (Some(String::from_utf8_lossy(&result).into_owned()), index)
                    }
                    (ResponseMode::Committed, ProposalOutcome::Committed { index }) => {
                        (None, index)
                    }
                    (_, outcome) => {
                        self.client_protocol_violation(client, &pending, &outcome);
                        return;
                    }
                };
                let state = &mut self.clients[client];
                let seen = match (input, output.as_deref()) {
                    (RegisterInput::Put(value), _) => Some(value.clone()),
                    (RegisterInput::Cas { new, .. }, Some("ok")) => Some(new.clone()),
                    (RegisterInput::Cas { .. }, Some(current)) => Some(current.to_owned()),
                    _ => None,
                };
                if let Some(seen) = seen {
                    state.last_seen.insert(*key, seen);
                }
                state.stats.completed += 1;
                state.history.push(ClientOp {
                    client,
                    key: key_name(*key),
                    input: input.clone(),
                    output,
                    invoked_at: pending.invoked_at,
                    returned_at: Some(now),
                    request: Some(*request),
                    index: Some(index),
                    attempts: pending.attempts,
                    answered_by: Some(from),
                });
                self.client_done(client);
            }
            (
                Request::Propose {
                    key,
                    input,
                    request,
                    ..
                },
                ProposalOutcome::SessionExpired { session },
            ) => {
                // "Not applied, and never will be under that session": the client opens a new
                // session for its next operation.
                log::debug!(
                    "sim {now}us: {from} told client {client} that session {session} expired"
                );
                state.stats.sessions_expired += 1;
                state.session = None;
                let mut op = ClientOp {
                    client,
                    key: key_name(*key),
                    input: input.clone(),
                    output: None,
                    invoked_at: pending.invoked_at,
                    returned_at: Some(now),
                    request: Some(*request),
                    index: None,
                    attempts: pending.attempts,
                    answered_by: Some(from),
                };
                if self.config.session_expired_is_final {
                    // Taken at its word; the end-of-run check holds the log to it.
                    state.expired.push(op);
                } else {
                    op.returned_at = None;
                    state.stats.indeterminate += 1;
                    state.history.push(op);
                }
                self.client_done(client);
            }
            (Request::Read { key }, ProposalOutcome::Read { result }) => {
                let result = String::from_utf8_lossy(&result).into_owned();
                state.last_seen.insert(*key, result.clone());
                state.stats.completed += 1;
                state.stats.reads += 1;
                state.history.push(ClientOp {
                    client,
                    key: key_name(*key),
                    input: RegisterInput::Get,
                    output: Some(result),
                    invoked_at: pending.invoked_at,
                    returned_at: Some(now),
                    request: None,
                    index: None,
                    attempts: pending.attempts,
                    answered_by: Some(from),
                });
                self.client_done(client);
            }
            (_, outcome) => self.client_protocol_violation(client, &pending, &outcome),
        }
    }

    /// The current operation is over: think a little, then start the next.
    fn client_done(&mut self, client: usize) {
        self.clients[client].current = None;
        let after = self.rng.gen_range(0..1_000);
        self.clock.schedule(after, SimEvent::ClientSend { client });
    }

    fn client_protocol_violation(
        &mut self,
        client: usize,
        pending: &Pending,
        outcome: &ProposalOutcome,
    ) {
        let asked = match &pending.request {
            Request::Register => "a session registration".to_owned(),
            Request::Propose {
                key,
                input,
                request,
                respond_when,
            } => format!(
                "`{}` (session {}, sequence {}, answer when {respond_when:?})",
                command_text(*key, input),
                request.session,
                request.sequence
            ),
            Request::Read { key } => format!("a read of {}", key_name(*key)),
        };
        self.failure.get_or_insert(format!(
            "client protocol: client {client} asked {asked} and was answered {outcome:?}"
        ));
        self.clients[client].current = None;
    }

    /// How a client message fares on its link: no delay when lost, two for a duplicate.
    fn client_link_delays(&mut self) -> Vec<Micros> {
        let faults = &self.config.faults;
        if faults.drop_probability > 0.0 && self.rng.gen_bool(faults.drop_probability) {
            return Vec::new();
        }
        let mut delays = vec![super::Network::draw_delay(faults, &mut self.rng)];
        if faults.duplicate_probability > 0.0 && self.rng.gen_bool(faults.duplicate_probability) {
            delays.push(super::Network::draw_delay(faults, &mut self.rng));
        }
        delays
    }

    /// A server's reply to a client travels back over the client's link.
    pub(super) fn route_client_reply(
        &mut self,
        client: usize,
        from: ServerId,
        proposal: ProposalId,
        outcome: ProposalOutcome,
    ) {
        let Some(state) = self.clients.get_mut(client) else {
            return;
        };
        if state.outstanding == Some(proposal)
            && matches!(outcome, ProposalOutcome::Applied { .. })
            && self.lose_applied_reply.remove(&client)
        {
            let request = match state.current.as_ref().map(|pending| &pending.request) {
                Some(Request::Propose { request, .. }) => Some(*request),
                _ => None,
            };
            state.stats.replies_lost += 1;
            self.lost_replies.push(LostReply {
                client,
                proposal,
                request,
                outcome,
            });
            return;
        }
        let delays = self.client_link_delays();
        if delays.is_empty() {
            self.clients[client].stats.replies_lost += 1;
        }
        for delay in delays {
            self.clock.schedule(
                delay,
                SimEvent::ClientReply {
                    client,
                    from,
                    proposal,
                    outcome: outcome.clone(),
                },
            );
        }
    }
}

/// The KvStateMachine command for `input` on `key`.
fn command_text(key: usize, input: &RegisterInput) -> String {
    let key = key_name(key);
    match input {
        RegisterInput::Put(value) => format!("put {key} {value}"),
        RegisterInput::Cas { expected, new } => format!("cas {key} {expected} {new}"),
        RegisterInput::Get => format!("get {key}"),
    }
}
