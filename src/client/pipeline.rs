//! The [`Pipeline`]: a blocking client that keeps many requests outstanding on one connection to
//! the leader, for applications (and the benchmark) that need more than one request per round
//! trip. It speaks the same protocol as [`Client`](super::Client) and takes every retry decision
//! from the shared policy (`policy.rs`): routing, redirects, backoff, which answers are final.
//!
//! Exactly-once needs one session per outstanding proposal: the session table remembers only
//! each session's last reply (thesis §6.3), so a session can have one request in flight. The
//! pipeline therefore has `depth` slots, each with its own session (opened the first time the
//! slot carries a proposal) and at most one request in flight; a retry resends the slot's request
//! under the same session and sequence number.

use super::policy::{self, Call, Route, Session, Step};
use super::{io_error, TIMEOUT_DEFAULT};
use crate::consensus::ResponseMode;
use crate::error::{Error, Result};
use crate::framing::{FrameReader, MESSAGE_BYTES_MAX_DEFAULT};
use crate::wire::{self, ClientRequest, ClientResponse, Preamble, RequestBody, ResponseBody};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Requests buffered for the socket before they are written, even if the pipeline is not about
/// to wait: they normally go out together, once per batch, when the pipeline waits.
const OUTPUT_BYTES_MAX: usize = 256 << 10;
/// The most one read takes from the socket.
const READ_BYTES_MAX: usize = 64 << 10;

/// Names one request given to a [`Pipeline`], and its [`Completion`]. Tickets of one pipeline
/// are handed out in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

impl Ticket {
    /// The ticket's number: 1 for the pipeline's first request, then 2, 3, ...
    pub fn number(self) -> u64 {
        self.0
    }
}

/// The outcome of one request given to a [`Pipeline`].
#[derive(Debug)]
pub struct Completion {
    /// The request's ticket, as [`Pipeline::submit`] or [`Pipeline::submit_query`] returned it.
    pub ticket: Ticket,
    /// The state machine's reply, or why there is none: the errors of
    /// [`Client::propose`](super::Client::propose) and [`Client::query`](super::Client::query).
    pub result: Result<Vec<u8>>,
    /// From the request's submission (once it had a slot) to the moment the pipeline read its
    /// final answer.
    pub latency: Duration,
}

/// A blocking client keeping up to `depth` requests outstanding on one TCP connection to the
/// leader: proposals exactly once and linearizable reads, like [`Client`](super::Client), but
/// many per round trip.
///
/// Requests are buffered by [`submit`](Pipeline::submit) and [`submit_query`](Pipeline::submit_query)
/// and written together, one `write` per batch, when the pipeline waits (in
/// [`next_completion`](Pipeline::next_completion), or in a `submit` that finds all `depth` slots
/// taken) or on [`flush`](Pipeline::flush). Answers are read in large reads and matched to their
/// requests, in whatever order they come. Each request has its own deadline
/// ([`with_timeout`](Pipeline::with_timeout), from its submission).
///
/// The pipeline opens one session per slot (thesis §6.3), the first time the slot carries a
/// proposal, so every proposal is applied at most once however often it is resent: after a
/// redirect, a lost connection, a new leader, or an overloaded leader's refusal (after a pause).
/// A request that fails with [`Error::Timeout`] may or may not have been applied (it may still
/// be, later).
///
/// Requests in flight together are independent: the cluster may apply them in any order. A
/// request submitted after another's completion was received is ordered after it; a read sees
/// every write that completed before the read was submitted.
///
/// # Examples
/// ```
/// use mioraft::server::LocalCluster;
/// use mioraft::{KvStateMachine, MemLog, Pipeline};
///
/// let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)?;
/// let mut pipeline = Pipeline::new(cluster.addresses(), 16);
///
/// // Many proposals at once: results in the commands' order.
/// let commands: Vec<String> = (0..100).map(|n| format!("put key{n} value{n}")).collect();
/// for result in pipeline.propose_all(&commands) {
///     result?;
/// }
///
/// // Or a stream: keep the pipe full and take completions as they come.
/// let first = pipeline.submit(b"put greeting hello");
/// let completion = pipeline.next_completion().expect("one request in flight");
/// assert_eq!(completion.ticket, first);
/// completion.result?;
/// pipeline.submit_query(b"get greeting");
/// let read = pipeline.next_completion().expect("one request in flight");
/// assert_eq!(read.result?, b"hello");
/// assert_eq!(pipeline.in_flight(), 0);
/// cluster.shutdown()?;
/// # Ok::<(), mioraft::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    /// The cluster's addresses and the server to send to.
    route: Route,
    /// Each request's deadline, from its submission.
    timeout: Duration,
    client_id: u64,
    /// The retry state shared by every request: backoff and the last problem met. `None` when
    /// the pipeline was given no server address; every request then fails at once.
    call: Option<Call>,
    /// Whether an attempt was retried since the last final answer (the backoff then resets).
    retrying: bool,
    /// `depth` slots, each with its session and at most one request.
    slots: Vec<Slot>,
    /// Indexes of the slots without a request.
    free: Vec<usize>,
    /// The slot of each request written to the current connection and not answered yet, by
    /// request id. Invariant: at most `depth` entries, each a slot with a sent request.
    sent: HashMap<u64, usize>,
    next_request_id: u64,
    next_ticket: u64,
    /// The connection to the server at the route's target, if one is open.
    connection: Option<Connection>,
    /// Frames for the connection, not written yet. Invariant: empty without a connection.
    output: Vec<u8>,
    /// No connection is opened before this instant (a backoff pause, after a failed
    /// connection or a server that knew no leader).
    paused_until: Option<Instant>,
    /// Completions not taken yet, oldest first. Bounded by the requests submitted and not
    /// collected, which the caller controls.
    completions: VecDeque<Completion>,
}

/// One slot of the pipeline: a session and the one request it may have in flight.
#[derive(Debug)]
struct Slot {
    session: Session,
    work: Option<Work>,
}

/// A request occupying a slot, until its final answer or its deadline.
#[derive(Debug)]
struct Work {
    ticket: Ticket,
    stage: Stage,
    /// What to send next; its request id is fresh for each sending.
    request: ClientRequest,
    /// Whether `request` was written to the current connection and awaits an answer there.
    sent: bool,
    /// Not to be sent before this instant (a backoff pause after an overloaded leader's answer).
    not_before: Option<Instant>,
    submitted: Instant,
    deadline: Instant,
}

#[derive(Debug)]
enum Stage {
    /// A proposal waiting for its slot's new session: `RegisterSession` is out, the command
    /// follows under sequence number 1.
    Registering(Vec<u8>),
    /// A proposal in the slot's session.
    Proposing,
    /// A linearizable read (thesis §6.4); it needs no session.
    Querying,
}

#[derive(Debug)]
struct Connection {
    address: SocketAddr,
    /// The stream, read through a buffer of [`READ_BYTES_MAX`] and written directly.
    reader: BufReader<TcpStream>,
    frames: FrameReader,
}

impl Pipeline {
    /// A pipeline to the servers at `cluster` (any of them; it finds the leader itself) with
    /// up to `depth` requests in flight.
    ///
    /// # Panics
    /// If `depth` is 0.
    pub fn new(cluster: impl IntoIterator<Item = SocketAddr>, depth: usize) -> Pipeline {
        assert!(
            depth >= 1,
            "a pipeline's depth must be at least 1, not {depth}"
        );
        let route = Route::new(cluster);
        let call = Call::start(&route, TIMEOUT_DEFAULT).ok();
        Pipeline {
            route,
            timeout: TIMEOUT_DEFAULT,
            client_id: policy::new_client_id(),
            call,
            retrying: false,
            slots: (0..depth)
                .map(|_| Slot {
                    session: Session::new(),
                    work: None,
                })
                .collect(),
            // Popped from the end: slot 0 first, so a shallow load opens few sessions.
            free: (0..depth).rev().collect(),
            sent: HashMap::new(),
            next_request_id: 1,
            next_ticket: 1,
            connection: None,
            output: Vec::new(),
            paused_until: None,
            completions: VecDeque::new(),
        }
    }

    /// Sets each request's deadline, counted from its submission (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Pipeline {
        self.timeout = timeout;
        self.call = Call::start(&self.route, timeout).ok();
        self
    }

    /// The most requests this pipeline has in flight at once.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Requests submitted whose completion has not been received yet (at most
    /// [`depth`](Pipeline::depth)).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Submits `command` for the replicated log, to be applied exactly once; its
    /// [`Completion`] carries what the state machine's `apply` returned. Waits for a free slot
    /// if `depth` requests are in flight, keeping the completions received meanwhile for
    /// [`next_completion`](Pipeline::next_completion).
    pub fn submit(&mut self, command: &[u8]) -> Ticket {
        let slot = self.free_slot();
        let (stage, body) = match self.slots[slot].session.id() {
            Some(session) => (
                Stage::Proposing,
                self.slots[slot]
                    .session
                    .proposal(session, command, ResponseMode::Applied),
            ),
            None => (
                Stage::Registering(command.to_vec()),
                RequestBody::RegisterSession,
            ),
        };
        self.start(slot, stage, body)
    }

    /// Submits a read-only `query`, answered linearizably (ReadIndex, thesis §6.4): its
    /// [`Completion`] reflects every write completed before this call. Waits for a free slot as
    /// [`submit`](Pipeline::submit) does.
    pub fn submit_query(&mut self, query: &[u8]) -> Ticket {
        let slot = self.free_slot();
        self.start(slot, Stage::Querying, RequestBody::Query(query.to_vec()))
    }

    /// The oldest completion not taken yet, waiting for one if none has arrived; `None` when
    /// nothing is in flight and every completion was taken. Sends the requests submitted so far
    /// before it waits.
    pub fn next_completion(&mut self) -> Option<Completion> {
        if self.completions.is_empty() {
            self.wait_for_completion();
        }
        self.completions.pop_front()
    }

    /// Proposes every command, keeping up to `depth` in flight, and returns their results in
    /// the commands' order (each as [`Client::propose`](super::Client::propose)'s). They may be
    /// applied in any order. Completions of requests submitted earlier stay for
    /// [`next_completion`](Pipeline::next_completion).
    pub fn propose_all<C: AsRef<[u8]>>(
        &mut self,
        commands: impl IntoIterator<Item = C>,
    ) -> Vec<Result<Vec<u8>>> {
        let mut positions = HashMap::new();
        let mut results: Vec<Option<Result<Vec<u8>>>> = Vec::new();
        for command in commands {
            let ticket = self.submit(command.as_ref());
            positions.insert(ticket, results.len());
            results.push(None);
        }
        let mut others = Vec::new();
        while !positions.is_empty() {
            let completion = self
                .next_completion()
                .expect("proposals without a completion are in flight");
            match positions.remove(&completion.ticket) {
                Some(position) => results[position] = Some(completion.result),
                None => others.push(completion),
            }
        }
        for completion in others.into_iter().rev() {
            self.completions.push_front(completion);
        }
        results
            .into_iter()
            .map(|result| result.expect("every proposal completed"))
            .collect()
    }

    /// Writes the requests submitted so far (opening a connection if needed) without waiting
    /// for answers. Failures are not reported here: they are retried, and show in the
    /// completions of requests that run out of time.
    pub fn flush(&mut self) {
        let now = Instant::now();
        if self.paused_until.is_none_or(|until| until <= now) {
            self.send_pending(now);
        }
    }

    /// Puts a new request in `slot` and returns its ticket.
    fn start(&mut self, slot: usize, stage: Stage, body: RequestBody) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let submitted = Instant::now();
        assert!(self.slots[slot].work.is_none(), "slot {slot} is free");
        self.slots[slot].work = Some(Work {
            ticket,
            stage,
            request: ClientRequest {
                request_id: 0,
                body,
            },
            sent: false,
            not_before: None,
            submitted,
            deadline: submitted + self.timeout,
        });
        if let Err(error) = Call::start(&self.route, self.timeout) {
            self.complete(slot, Err(error), submitted);
        }
        ticket
    }

    /// A slot without a request, waiting for a completion if every slot has one.
    fn free_slot(&mut self) -> usize {
        loop {
            if let Some(slot) = self.free.pop() {
                return slot;
            }
            self.wait_for_completion();
        }
    }

    /// Works until one more completion is queued, or nothing is in flight.
    fn wait_for_completion(&mut self) {
        let before = self.completions.len();
        while self.completions.len() == before && self.in_flight() > 0 {
            self.turn();
        }
    }

    /// One step of waiting: expire requests past their deadline, else sleep out a pause, else
    /// send what is ready and read what the server answered (or wait until the next deadline).
    fn turn(&mut self) {
        let now = Instant::now();
        if self.expire(now) {
            return;
        }
        let wake = self.next_wake();
        if let Some(until) = self.paused_until {
            if until > now {
                // A backoff pause (policy.rs), cut short by the first deadline.
                std::thread::sleep(until.min(wake).saturating_duration_since(now));
                return;
            }
            self.paused_until = None;
        }
        if !self.send_pending(now) {
            return;
        }
        if self.sent.is_empty() {
            // Everything in flight waits out a pause of its own.
            std::thread::sleep(wake.saturating_duration_since(now));
            return;
        }
        self.read(wake);
    }

    /// Completes every request whose deadline has passed with [`Error::Timeout`]; returns
    /// whether there was one.
    fn expire(&mut self, now: Instant) -> bool {
        let mut expired = false;
        for slot in 0..self.slots.len() {
            let late = self.slots[slot]
                .work
                .as_ref()
                .is_some_and(|work| work.deadline <= now);
            if late {
                let call = self
                    .call
                    .as_ref()
                    .expect("requests wait only with a cluster");
                let error = call.timed_out();
                self.complete(slot, Err(error), now);
                expired = true;
            }
        }
        expired
    }

    /// The first instant something is due: a request's deadline, or the end of a request's
    /// pause.
    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + self.timeout;
        for work in self.slots.iter().filter_map(|slot| slot.work.as_ref()) {
            wake = wake.min(work.deadline);
            if let (Some(not_before), false) = (work.not_before, work.sent) {
                wake = wake.min(not_before);
            }
        }
        wake
    }

    /// Opens a connection if there is none, encodes every request ready to go and writes them
    /// out; returns whether the connection is still open. A failure drops the connection and
    /// is handled by the policy.
    fn send_pending(&mut self, now: Instant) -> bool {
        if self.in_flight() == 0 && self.output.is_empty() {
            return self.connection.is_some();
        }
        if self.connection.is_none() {
            if let Err(error) = self.connect(now) {
                self.connection_failed(&error, now);
                return false;
            }
        }
        for slot in 0..self.slots.len() {
            let Some(work) = self.slots[slot].work.as_mut() else {
                continue;
            };
            if work.sent || work.not_before.is_some_and(|not_before| not_before > now) {
                continue;
            }
            work.request.request_id = self.next_request_id;
            self.next_request_id += 1;
            work.sent = true;
            work.not_before = None;
            self.output
                .extend_from_slice(&wire::encode_request(&work.request));
            self.sent.insert(work.request.request_id, slot);
            if self.output.len() >= OUTPUT_BYTES_MAX && !self.write_output(now) {
                return false;
            }
        }
        assert!(
            self.sent.len() <= self.slots.len(),
            "{} requests outstanding on a pipeline of depth {}",
            self.sent.len(),
            self.slots.len()
        );
        self.write_output(now)
    }

    /// Writes the buffered frames; returns whether the connection is still open.
    fn write_output(&mut self, now: Instant) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let connection = self
            .connection
            .as_mut()
            .expect("frames are buffered only for an open connection");
        let address = connection.address;
        let mut stream = connection.reader.get_ref();
        match stream.write_all(&self.output) {
            Ok(()) => {
                self.output.clear();
                true
            }
            Err(source) => {
                let error = io_error(address, source);
                self.connection_failed(&error, now);
                false
            }
        }
    }

    /// Connects to the route's target and queues the preamble.
    fn connect(&mut self, now: Instant) -> Result<()> {
        assert!(
            self.output.is_empty(),
            "no frames wait without a connection"
        );
        let address = self.route.target();
        let io = |source| io_error(address, source);
        let remaining = self.next_wake().saturating_duration_since(now);
        let stream =
            TcpStream::connect_timeout(&address, policy::connect_timeout(remaining)).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        // A server that stops reading must not hold the pipeline past its deadlines.
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        self.output
            .extend_from_slice(&wire::encode_preamble(&Preamble::Client(self.client_id)));
        self.connection = Some(Connection {
            address,
            reader: BufReader::with_capacity(READ_BYTES_MAX, stream),
            frames: FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT),
        });
        Ok(())
    }

    /// Reads once from the connection, waiting until `wake` at most, and handles every whole
    /// answer that arrived.
    fn read(&mut self, wake: Instant) {
        let now = Instant::now();
        let connection = self
            .connection
            .as_mut()
            .expect("requests are outstanding on an open connection");
        let address = connection.address;
        let io = |source| io_error(address, source);
        // A zero timeout would mean "block forever".
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        let read = match connection.reader.get_ref().set_read_timeout(Some(wait)) {
            Ok(()) => connection.reader.fill_buf().map(|bytes| {
                connection.frames.extend(bytes);
                bytes.len()
            }),
            Err(error) => Err(error),
        };
        match read {
            Ok(0) => {
                let error = io(std::io::ErrorKind::UnexpectedEof.into());
                self.connection_failed(&error, now);
            }
            Ok(count) => {
                connection.reader.consume(count);
                self.handle_answers(address);
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(error) => self.connection_failed(&io(error), now),
        }
    }

    /// Handles every whole answer buffered from the server at `address`, until the buffer is
    /// empty or an answer makes the pipeline drop the connection.
    fn handle_answers(&mut self, address: SocketAddr) {
        let now = Instant::now();
        while let Some(connection) = self.connection.as_mut() {
            let response = match connection.frames.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => wire::decode_response(&frame),
                Err(error) => Err(error),
            };
            let ClientResponse { request_id, body } = match response {
                Ok(response) => response,
                Err(error) => {
                    // Bytes that are no answer: the stream cannot be trusted any further.
                    let error = io_error(
                        address,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, error),
                    );
                    self.connection_failed(&error, now);
                    return;
                }
            };
            // An answer to a request that ran out of time: nobody waits for it.
            let Some(slot) = self.sent.remove(&request_id) else {
                continue;
            };
            self.answered(slot, address, body, now);
        }
    }

    /// Server `from` answered the request in `slot` with `body`: the policy decides.
    fn answered(&mut self, slot: usize, from: SocketAddr, body: ResponseBody, now: Instant) {
        let work = self.slots[slot]
            .work
            .as_mut()
            .expect("a sent request occupies its slot");
        work.sent = false;
        let remaining = work.deadline.saturating_duration_since(now);
        let call = self
            .call
            .as_mut()
            .expect("requests wait only with a cluster");
        match call.answered(&mut self.route, from, body, remaining) {
            Step::Answer(body) => {
                if std::mem::take(&mut self.retrying) {
                    call.reset_backoff();
                }
                self.advance(slot, from, body, now);
            }
            Step::Fail(error) => self.complete(slot, Err(error), now),
            Step::Retry { close, pause } => {
                self.retrying = true;
                // A move to another server takes every request along; a pause on the same
                // server (an overloaded leader) holds back this request only.
                if close || self.route.target() != from {
                    self.drop_connection();
                    self.paused_until = pause.map(|pause| now + pause);
                } else {
                    work.not_before = pause.map(|pause| now + pause);
                }
            }
        }
    }

    /// A final answer to the request in `slot`: a registered session moves it on to its
    /// proposal, anything else completes it.
    fn advance(&mut self, slot: usize, from: SocketAddr, body: ResponseBody, now: Instant) {
        let Slot { session, work } = &mut self.slots[slot];
        let work = work
            .as_mut()
            .expect("an answered request occupies its slot");
        let result = match &mut work.stage {
            Stage::Registering(command) => {
                let registered = match body {
                    ResponseBody::SessionRegistered(_) => session.registered(body),
                    other => Err(unexpected(from, other)),
                };
                match registered {
                    Ok(id) => {
                        // Sequence number 1 of the new session; sent on the next turn.
                        work.request.body = session.proposal(id, command, ResponseMode::Applied);
                        work.stage = Stage::Proposing;
                        return;
                    }
                    Err(error) => Err(error),
                }
            }
            Stage::Proposing => session.settle(body).and_then(|body| applied(from, body)),
            Stage::Querying => applied(from, body),
        };
        self.complete(slot, result, now);
    }

    /// Frees `slot` and queues its request's completion.
    fn complete(&mut self, slot: usize, result: Result<Vec<u8>>, now: Instant) {
        let work = self.slots[slot]
            .work
            .take()
            .expect("a request completes once");
        if work.sent {
            self.sent.remove(&work.request.request_id);
        }
        self.free.push(slot);
        self.completions.push_back(Completion {
            ticket: work.ticket,
            result,
            latency: now.saturating_duration_since(work.submitted),
        });
    }

    /// The connection failed or could not be opened: the policy moves on to the next server
    /// after a pause, and every request in flight is resent there under its own session and
    /// sequence number.
    fn connection_failed(&mut self, error: &Error, now: Instant) {
        log::debug!("pipeline {:x}: {error}", self.client_id);
        let remaining = self.next_wake().saturating_duration_since(now);
        if let Some(call) = self.call.as_mut() {
            if let Step::Retry {
                pause: Some(pause), ..
            } = call.failed(&mut self.route, error, remaining)
            {
                self.paused_until = Some(now + pause);
            }
        }
        self.retrying = true;
        self.drop_connection();
    }

    /// Closes the connection; every request sent on it is to be sent again.
    fn drop_connection(&mut self) {
        self.connection = None;
        self.output.clear();
        self.sent.clear();
        for work in self.slots.iter_mut().filter_map(|slot| slot.work.as_mut()) {
            work.sent = false;
        }
    }
}

/// The state machine's reply in `from`'s final answer to a proposal or a read.
fn applied(from: SocketAddr, body: ResponseBody) -> Result<Vec<u8>> {
    match body {
        ResponseBody::Applied(reply) => Ok(reply),
        other => Err(unexpected(from, other)),
    }
}

/// An answer that makes no sense for the request it answers.
fn unexpected(from: SocketAddr, body: ResponseBody) -> Error {
    Error::Rejected {
        reason: "unexpected answer".to_owned(),
        message: format!("{from} answered {body:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogIndex;
    use crate::wire::RejectionReason;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// What a scripted server does with one request.
    enum Reply {
        Answer(ResponseBody),
        /// Closes the connection without answering it or anything pending after it.
        HangUp,
        /// Writes bytes that are no Cap'n Proto frame.
        Garbage,
    }

    /// What a scripted server saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// Every request body, in arrival order.
        requests: Vec<RequestBody>,
        /// The most requests it held unanswered at once on one connection.
        pending_max: usize,
        connections: usize,
    }

    impl Seen {
        /// (session, sequence) of every proposal seen, in order.
        fn proposals(&self) -> Vec<(u64, u64)> {
            self.requests
                .iter()
                .filter_map(|body| match body {
                    RequestBody::SessionPropose(proposal) => {
                        Some((proposal.session, proposal.sequence))
                    }
                    _ => None,
                })
                .collect()
        }

        fn registrations(&self) -> usize {
            let registering = |body: &&RequestBody| matches!(body, RequestBody::RegisterSession);
            self.requests.iter().filter(registering).count()
        }
    }

    /// How long a scripted server holding requests back waits for more before it answers.
    const IDLE: Duration = Duration::from_millis(200);

    /// A scripted server, one connection at a time: it holds requests unanswered until `hold`
    /// of them are pending (or none arrived for [`IDLE`]), then replies to each with `reply`.
    fn scripted_server(
        hold: usize,
        mut reply: impl FnMut(&ClientRequest) -> Reply + Send + 'static,
    ) -> (SocketAddr, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                record.lock().expect("lock").connections += 1;
                stream.set_read_timeout(Some(IDLE)).expect("timeout");
                let mut frames = FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT);
                let mut buffer = [0u8; 4096];
                let mut preamble_seen = false;
                let mut pending: Vec<ClientRequest> = Vec::new();
                'connection: loop {
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => {
                            frames.extend(&buffer[..read]);
                            while let Ok(Some(frame)) = frames.next_frame() {
                                if !preamble_seen {
                                    preamble_seen = wire::decode_preamble(&frame).is_ok();
                                    continue;
                                }
                                let Ok(request) = wire::decode_request(&frame) else {
                                    break 'connection;
                                };
                                let mut seen = record.lock().expect("lock");
                                seen.requests.push(request.body.clone());
                                pending.push(request);
                                seen.pending_max = seen.pending_max.max(pending.len());
                            }
                            if pending.len() < hold {
                                continue;
                            }
                        }
                        Err(error)
                            if matches!(
                                error.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                    for request in pending.drain(..) {
                        let bytes = match reply(&request) {
                            Reply::Answer(body) => wire::encode_response(&ClientResponse {
                                request_id: request.request_id,
                                body,
                            }),
                            Reply::Garbage => vec![0xff; 16],
                            Reply::HangUp => break 'connection,
                        };
                        if stream.write_all(&bytes).is_err() {
                            break 'connection;
                        }
                    }
                }
            }
        });
        (address, seen)
    }

    /// A leader that opens sessions 1, 2, 3, ... and answers every proposal and query with its
    /// own bytes.
    fn echo(request: &ClientRequest, sessions: &mut u64) -> Reply {
        Reply::Answer(match &request.body {
            RequestBody::RegisterSession => {
                *sessions += 1;
                ResponseBody::SessionRegistered(*sessions)
            }
            RequestBody::SessionPropose(proposal) => {
                ResponseBody::Applied(proposal.command.clone())
            }
            RequestBody::Query(query) => ResponseBody::Applied(query.clone()),
            _ => ResponseBody::UnknownLeader,
        })
    }

    fn echo_server(hold: usize) -> (SocketAddr, Arc<Mutex<Seen>>) {
        let mut sessions = 0;
        scripted_server(hold, move |request| echo(request, &mut sessions))
    }

    fn commands(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|n| format!("command {n}").into_bytes())
            .collect()
    }

    fn replies(results: Vec<Result<Vec<u8>>>) -> Vec<Vec<u8>> {
        results
            .into_iter()
            .map(|result| result.expect("applied"))
            .collect()
    }

    /// The pipe fills to `depth` requests and never past it; one session per slot.
    #[test]
    fn never_more_than_depth_requests_are_outstanding() {
        let (server, seen) = echo_server(8);
        let mut pipeline = Pipeline::new([server], 8);
        let commands = commands(200);
        assert_eq!(replies(pipeline.propose_all(&commands)), commands);
        assert_eq!(pipeline.in_flight(), 0);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.pending_max, 8, "the pipe fills, and no further");
        assert_eq!(seen.registrations(), 8, "one session per slot");
        assert_eq!(seen.connections, 1);
        // Each session numbers its own proposals 1, 2, 3, ...
        let mut next: HashMap<u64, u64> = HashMap::new();
        for (session, sequence) in seen.proposals() {
            let expected = next.entry(session).or_insert(1);
            assert_eq!(sequence, *expected, "session {session}");
            *expected += 1;
        }
    }

    /// §6.3: every request lost with a connection is resent under its own session and
    /// sequence number, and nothing else is.
    #[test]
    fn a_lost_connection_resends_each_request_under_its_session_and_sequence() {
        let mut sessions = 0;
        let mut proposals_seen = 0;
        let (server, seen) = scripted_server(4, move |request| {
            if matches!(request.body, RequestBody::SessionPropose(_)) {
                proposals_seen += 1;
                if proposals_seen == 3 {
                    return Reply::HangUp;
                }
            }
            echo(request, &mut sessions)
        });
        let mut pipeline = Pipeline::new([server], 4);
        let commands = commands(12);
        assert_eq!(replies(pipeline.propose_all(&commands)), commands);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.connections, 2);
        let proposals = seen.proposals();
        // The first batch of four: two answered, then the connection was lost; the two
        // unanswered ones are in the first batch on the new connection, as they were.
        assert_eq!(proposals.len(), 12 + 2, "{proposals:?}");
        for lost in &proposals[2..4] {
            assert!(proposals[4..8].contains(lost), "{lost:?} in {proposals:?}");
        }
        let mut distinct = proposals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 12);
    }

    #[test]
    fn follows_a_follower_to_the_leader_for_proposals_and_reads() {
        let (leader, _) = echo_server(1);
        let (follower, _) = scripted_server(1, move |_| {
            Reply::Answer(ResponseBody::NotLeader {
                leader_id: crate::ServerId(2),
                leader_address: leader.to_string(),
            })
        });
        let mut pipeline = Pipeline::new([follower, leader], 4);
        let commands = commands(10);
        assert_eq!(replies(pipeline.propose_all(&commands)), commands);
        let tickets: Vec<Ticket> = (0..6)
            .map(|n| pipeline.submit_query(format!("get {n}").as_bytes()))
            .collect();
        let mut answered = HashMap::new();
        while let Some(completion) = pipeline.next_completion() {
            answered.insert(completion.ticket, completion.result.expect("read"));
        }
        for (n, ticket) in tickets.iter().enumerate() {
            assert_eq!(answered[ticket], format!("get {n}").into_bytes());
        }
    }

    #[test]
    fn overloaded_answers_are_retried_after_a_pause() {
        let mut sessions = 0;
        let mut refused = 0;
        let (server, seen) = scripted_server(1, move |request| {
            if matches!(request.body, RequestBody::SessionPropose(_)) && refused < 5 {
                refused += 1;
                return Reply::Answer(ResponseBody::Rejected {
                    reason: RejectionReason::Overloaded,
                    message: "too many uncommitted entries".to_owned(),
                });
            }
            echo(request, &mut sessions)
        });
        let mut pipeline = Pipeline::new([server], 4);
        let commands = commands(8);
        assert_eq!(replies(pipeline.propose_all(&commands)), commands);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.proposals().len(), 8 + 5);
        assert_eq!(
            seen.connections, 1,
            "an overloaded leader is still the leader"
        );
    }

    #[test]
    fn garbage_from_a_server_is_an_error_naming_it() {
        let (server, _) = scripted_server(1, |_| Reply::Garbage);
        let mut pipeline = Pipeline::new([server], 2).with_timeout(Duration::from_millis(300));
        for result in pipeline.propose_all([b"a", b"b"]) {
            let text = result.unwrap_err().to_string();
            assert!(text.contains("within 300ms"), "{text}");
            assert!(text.contains(&server.to_string()), "{text}");
            assert!(text.contains("segments announced"), "{text}");
        }
    }

    #[test]
    fn an_answer_of_the_wrong_kind_is_an_error_naming_the_server() {
        let mut sessions = 0;
        let (server, _) = scripted_server(1, move |request| match request.body {
            RequestBody::SessionPropose(_) => Reply::Answer(ResponseBody::Committed(LogIndex(3))),
            _ => echo(request, &mut sessions),
        });
        let mut pipeline = Pipeline::new([server], 2);
        let error = pipeline.propose_all([b"a"]).remove(0).unwrap_err();
        assert!(matches!(error, Error::Rejected { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains(&server.to_string()), "{text}");
        assert!(text.contains("Committed"), "{text}");
    }

    /// A request that runs out of time frees its slot; the slot's next proposal takes the
    /// session's next sequence number.
    #[test]
    fn a_request_out_of_time_frees_its_slot_for_the_next_sequence_number() {
        let mut sessions = 0;
        let (server, seen) = scripted_server(1, move |request| match &request.body {
            RequestBody::SessionPropose(proposal) if proposal.command == b"late" => {
                Reply::Answer(ResponseBody::Rejected {
                    reason: RejectionReason::OutcomeUnknown,
                    message: "lost with the old leader".to_owned(),
                })
            }
            _ => echo(request, &mut sessions),
        });
        let mut pipeline = Pipeline::new([server], 1);
        assert_eq!(
            replies(pipeline.propose_all([b"first"])),
            [b"first".to_vec()]
        );
        let mut pipeline = pipeline.with_timeout(Duration::from_millis(100));
        let error = pipeline.propose_all([b"late"]).remove(0).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Timeout { .. }), "{text}");
        assert!(text.contains("lost with the old leader"), "{text}");
        let mut pipeline = pipeline.with_timeout(Duration::from_secs(5));
        assert_eq!(replies(pipeline.propose_all([b"next"])), [b"next".to_vec()]);
        let proposals = seen.lock().expect("lock").proposals();
        assert!(proposals.len() > 3, "retried: {proposals:?}");
        assert_eq!(proposals.first(), Some(&(1, 1)));
        assert_eq!(
            proposals[1..proposals.len() - 1],
            vec![(1, 2); proposals.len() - 2]
        );
        assert_eq!(proposals.last(), Some(&(1, 3)));
    }

    #[test]
    fn an_unreachable_cluster_times_out_naming_the_server() {
        let nobody = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("address");
        let mut pipeline = Pipeline::new([nobody], 4).with_timeout(Duration::from_millis(200));
        pipeline.submit_query(b"get k");
        let text = pipeline
            .next_completion()
            .expect("completes")
            .result
            .unwrap_err()
            .to_string();
        assert!(text.contains("within 200ms"), "{text}");
        assert!(text.contains(&nobody.to_string()), "{text}");
    }

    #[test]
    fn an_empty_cluster_fails_every_request_at_once() {
        let mut pipeline = Pipeline::new([], 4);
        let results = pipeline.propose_all([b"x", b"y"]);
        for result in results {
            let text = result.unwrap_err().to_string();
            assert!(text.contains("no server addresses"), "{text}");
        }
    }

    #[test]
    #[should_panic(expected = "depth must be at least 1")]
    fn a_pipeline_has_at_least_one_slot() {
        let _ = Pipeline::new([], 0);
    }
}
