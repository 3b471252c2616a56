//! Clients of a mioraft cluster: the blocking [`Client`], the [`Pipeline`] (many requests in
//! flight on one connection) and, with the `async-client` feature, the `AsyncClient` for
//! applications on an async runtime. All find the leader, follow redirects, retry, and give up
//! with a typed error at their deadline (DESIGN.md §4); they speak the protocol of
//! `schema/messages.capnp` and take every decision in one shared module, so they behave alike.
//!
//! Proposals go through a client session (thesis §6.3): a client opens one on its first
//! proposal and numbers its requests, so a retry after a lost reply, a broken connection or a
//! leader change is applied at most once and answered with the original reply.

#[cfg(feature = "async-client")]
mod async_client;
mod pipeline;
mod policy;

#[cfg(feature = "async-client")]
pub use async_client::{AsyncClient, AsyncRuntime};
pub use pipeline::{Completion, Pipeline, Ticket};

use crate::consensus::{MembershipChange, ResponseMode};
use crate::error::{Error, Result};
use crate::framing::{FrameReader, MESSAGE_BYTES_MAX_DEFAULT};
use crate::metrics::Metrics;
use crate::types::{LogIndex, ServerId};
use crate::wire::{self, ClientRequest, ClientResponse, Preamble, RequestBody, ResponseBody};
pub use policy::MemberStatus;
use policy::{Call, Route, Session, StatusSurvey, Step};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The default deadline for one call.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// A blocking client of a mioraft cluster.
///
/// It keeps one connection, to the server it believes leads, and moves on its own: to the leader
/// a server names (only if that address is one of the cluster's), to the next server after a
/// failure, and to the next server after a short pause when no leader is known. Give it the
/// address of every member the leader may be (members added later included): it follows no
/// redirect to an address it was not given.
///
/// Proposals are exactly-once within a call: the client retries a proposal under the same
/// session sequence number until its deadline, and the cluster applies it at most once. A call
/// that fails with [`Error::Timeout`] may or may not have been applied (it may still be, later);
/// the next call moves on to the next sequence number. Reads are linearizable (ReadIndex, thesis
/// §6.4). One call at a time: methods take `&mut self`.
///
/// # Examples
/// ```no_run
/// use mioraft::Client;
/// use std::time::Duration;
///
/// let cluster = ["127.0.0.1:9001".parse()?, "127.0.0.1:9002".parse()?];
/// let mut client = Client::new(cluster).with_timeout(Duration::from_secs(2));
/// let previous = client.propose(b"put greeting hello")?;
/// let value = client.query(b"get greeting")?;
/// assert_eq!(value, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Client {
    /// The cluster's addresses and the server to try next.
    route: Route,
    timeout: Duration,
    client_id: u64,
    next_request_id: u64,
    connection: Option<Connection>,
    /// The session proposals run in, once opened, and its next sequence number.
    session: Session,
}

#[derive(Debug)]
struct Connection {
    address: SocketAddr,
    stream: TcpStream,
    frames: FrameReader,
}

impl Client {
    /// A client of the servers at `cluster` (any of them; it finds the leader itself).
    pub fn new(cluster: impl IntoIterator<Item = SocketAddr>) -> Client {
        Client {
            route: Route::new(cluster),
            timeout: TIMEOUT_DEFAULT,
            client_id: policy::new_client_id(),
            next_request_id: 1,
            connection: None,
            session: Session::new(),
        }
    }

    /// Sets the overall deadline of each call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// This client's random id, sent in its connection preamble.
    pub fn id(&self) -> u64 {
        self.client_id
    }

    /// The session this client's proposals run in, once opened by the first proposal.
    pub fn session(&self) -> Option<u64> {
        self.session.id()
    }

    /// Appends `command` to the replicated log, exactly once, and returns what the state
    /// machine's `apply` returned once it is committed and applied.
    ///
    /// # Errors
    /// [`Error::Timeout`] if no leader answered before the deadline (saying what went wrong
    /// last; the command may still be applied); [`Error::Refused`] if the state machine's
    /// `validate` refused it; [`Error::SessionExpired`] if the cluster dropped this client's
    /// session (this attempt not applied; the next call opens a new one); [`Error::Rejected`] if the cluster
    /// refused it for good (too large, malformed).
    pub fn propose(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        policy::applied(self.propose_in_session(command, ResponseMode::Applied)?)
    }

    /// Like [`Client::propose`], but answered as soon as the command is committed (durable on a
    /// majority), with its log index instead of the state machine's reply.
    ///
    /// # Errors
    /// As for [`Client::propose`].
    pub fn propose_committed(&mut self, command: &[u8]) -> Result<LogIndex> {
        policy::committed(self.propose_in_session(command, ResponseMode::Committed)?)
    }

    /// Asks the state machine a read-only `query`, linearizably: the answer reflects every
    /// write acknowledged before the call (ReadIndex, thesis §6.4).
    ///
    /// # Errors
    /// As for [`Client::propose`].
    pub fn query(&mut self, query: &[u8]) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        policy::applied(self.call(RequestBody::Query(query.to_vec()), deadline)?)
    }

    /// Opens a session if there is none, then sends the next request in it until a final
    /// answer or the deadline.
    fn propose_in_session(
        &mut self,
        command: &[u8],
        respond_when: ResponseMode,
    ) -> Result<ResponseBody> {
        let deadline = Instant::now() + self.timeout;
        let session = match self.session.id() {
            Some(session) => session,
            None => {
                let answer = self.call(RequestBody::RegisterSession, deadline)?;
                self.session.registered(answer)?
            }
        };
        let proposal = self.session.proposal(session, command, respond_when);
        let answer = self.call(proposal, deadline)?;
        self.session.settle(answer)
    }

    /// Asks the leader to hand leadership to server `to` (thesis §3.10): the leader stops
    /// taking proposals, brings `to` up to date and tells it to campaign at once. Returns once
    /// the leader has stepped down for `to`'s election (`to` then leads, unless it failed in the
    /// meantime).
    ///
    /// # Errors
    /// [`Error::Rejected`] if `to` is not a voter, another transfer is under way, or `to` did
    /// not take over within an election timeout (the old leader then leads on);
    /// [`Error::Timeout`] if no leader answered in time.
    pub fn transfer_leadership(&mut self, to: ServerId) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        policy::transferred(self.call(RequestBody::TransferLeadership(to), deadline)?).map(|_| ())
    }

    /// Asks the leader to add server `id`, listening at `address`, as a voter (thesis §4.1):
    /// it joins as a learner, is caught up in rounds until one takes less than an election
    /// timeout (thesis §4.2.1), then is promoted. Returns once the promotion is committed: `id`
    /// votes and holds the log. Start the new server first, with
    /// [`ServerBuilder::join`](crate::ServerBuilder::join).
    ///
    /// Adding a server that is already a voter succeeds at once, so a call that timed out can be
    /// repeated. Catching up a server with a large log takes a while: give the client a timeout
    /// to match ([`Client::with_timeout`]).
    ///
    /// # Errors
    /// [`Error::Rejected`] with the leader's reason if the change cannot be made: another
    /// change is in progress (one at a time), `id` made no progress for about ten election
    /// timeouts (down, unreachable, or at another address; it stays a learner), `id` is already
    /// a member at another address; [`Error::Timeout`] if no leader answered in time.
    ///
    /// # Examples
    /// ```no_run
    /// use mioraft::{Client, ServerId};
    ///
    /// let mut client = Client::new(["127.0.0.1:9001".parse()?]);
    /// client.add_server(ServerId(4), "127.0.0.1:9004".parse()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_server(&mut self, id: ServerId, address: SocketAddr) -> Result<()> {
        let address = address.to_string();
        self.change_membership(MembershipChange::AddServer { id, address })
    }

    /// Asks the leader to add server `id`, listening at `address`, as a learner: it receives
    /// the log but neither votes nor counts toward commitment. Returns once the change is
    /// committed (the learner may still be catching up). A later
    /// [`add_server`](Client::add_server) promotes it.
    ///
    /// # Errors
    /// As for [`Client::add_server`]; also if `id` is a voter already.
    pub fn add_learner(&mut self, id: ServerId, address: SocketAddr) -> Result<()> {
        let address = address.to_string();
        self.change_membership(MembershipChange::AddLearner { id, address })
    }

    /// Asks the leader to remove server `id`, voter or learner. Removing the leader itself is
    /// allowed: it leads until the change commits, then hands leadership to an up-to-date voter
    /// and steps down (thesis §4.2.2). Returns once the change is committed; removing a server
    /// that is not a member succeeds at once. The removed server may go on running without
    /// disturbing the cluster (pre-vote and the leader lease, thesis §4.2.3); stop it.
    ///
    /// # Errors
    /// [`Error::Rejected`] with the leader's reason if the change cannot be made (another is in
    /// progress, `id` is the only voter); [`Error::Timeout`] if no leader answered in time.
    pub fn remove_server(&mut self, id: ServerId) -> Result<()> {
        self.change_membership(MembershipChange::RemoveServer { id })
    }

    /// Sends a configuration change until the leader answers it.
    fn change_membership(&mut self, change: MembershipChange) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let body = RequestBody::ChangeMembership(change);
        policy::membership_changed(self.call(body, deadline)?).map(|_| ())
    }

    /// Reports every member of the cluster's configuration: asks each server the client was
    /// given for its [`Metrics`], learns the configuration from the leader's answer, asks every
    /// member that did not answer yet at its address in the configuration (members added since
    /// the client was made included), and puts beside each the leader's match index for it.
    /// Each member's id, address, role (voter or learner), term, match and applied index in one
    /// call; servers outside the configuration that answered (a server waiting to be added, a
    /// removed one) come after the members. A server that does not answer within a second (or
    /// the client's timeout, if shorter) is reported with the error.
    pub fn cluster_status(&mut self) -> Vec<MemberStatus> {
        let per_server = self.timeout.min(Duration::from_secs(1));
        let mut survey = StatusSurvey::default();
        for address in self.route.cluster().to_vec() {
            let deadline = Instant::now() + per_server;
            survey.record(address, self.status_until(address, deadline));
        }
        for address in survey.members_to_ask() {
            let deadline = Instant::now() + per_server;
            survey.record(address, self.status_until(address, deadline));
        }
        survey.finish()
    }

    /// Asks one server, leader or not, for its [`Metrics`].
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Wire`] naming the server if it cannot be reached or answers
    /// nonsense; [`Error::Timeout`] if it does not answer in time.
    pub fn status(&mut self, server: SocketAddr) -> Result<Metrics> {
        let deadline = Instant::now() + self.timeout;
        self.status_until(server, deadline)
    }

    fn status_until(&mut self, server: SocketAddr, deadline: Instant) -> Result<Metrics> {
        policy::status(self.attempt(server, &RequestBody::Status, deadline)?)
    }

    /// Sends `body` until a server gives a final answer or the deadline passes.
    fn call(&mut self, body: RequestBody, deadline: Instant) -> Result<ResponseBody> {
        let mut call = Call::start(&self.route, self.timeout)?;
        loop {
            call.check_deadline(remaining(deadline))?;
            let address = self.route.target();
            let step = match self.attempt(address, &body, deadline) {
                Ok(answer) => call.answered(&mut self.route, address, answer, remaining(deadline)),
                Err(error) => call.failed(&mut self.route, &error, remaining(deadline)),
            };
            match step {
                Step::Answer(answer) => return Ok(answer),
                Step::Fail(error) => return Err(error),
                Step::Retry { close, pause } => {
                    if close {
                        self.connection = None;
                    }
                    if let Some(pause) = pause {
                        std::thread::sleep(pause);
                    }
                }
            }
        }
    }

    /// Sends `body` to `address`, over the current connection if it leads there or a new one,
    /// and waits for the answer. The connection is dropped if anything fails.
    fn attempt(
        &mut self,
        address: SocketAddr,
        body: &RequestBody,
        deadline: Instant,
    ) -> Result<ResponseBody> {
        if self
            .connection
            .as_ref()
            .is_none_or(|connection| connection.address != address)
        {
            self.connection = None;
            self.connection = Some(self.connect(address, deadline)?);
        }
        let answer = self.exchange(body, deadline);
        if answer.is_err() {
            self.connection = None;
        }
        answer
    }

    fn connect(&self, address: SocketAddr, deadline: Instant) -> Result<Connection> {
        let io = |source| io_error(address, source);
        let attempt = policy::connect_timeout(remaining(deadline));
        let mut stream = TcpStream::connect_timeout(&address, attempt).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream
            .write_all(&wire::encode_preamble(&Preamble::Client(self.client_id)))
            .map_err(io)?;
        Ok(Connection {
            address,
            stream,
            frames: FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT),
        })
    }

    /// Sends one request on the current connection and waits for its response.
    fn exchange(&mut self, body: &RequestBody, deadline: Instant) -> Result<ResponseBody> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let connection = self
            .connection
            .as_mut()
            .expect("exchange is called with a connection");
        let address = connection.address;
        let io = |source| io_error(address, source);
        let frame = wire::encode_request(&ClientRequest {
            request_id,
            body: body.clone(),
        });
        connection.stream.write_all(&frame).map_err(io)?;
        let mut buffer = [0u8; 64 * 1024];
        loop {
            while let Some(frame) = connection.frames.next_frame()? {
                let ClientResponse {
                    request_id: answered,
                    body,
                } = wire::decode_response(&frame)?;
                // An answer to an earlier, abandoned request on this connection: skip it.
                if answered == request_id {
                    return Ok(body);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(io(std::io::ErrorKind::TimedOut.into()));
            }
            connection
                .stream
                .set_read_timeout(Some(remaining))
                .map_err(io)?;
            let read = connection.stream.read(&mut buffer).map_err(io)?;
            if read == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            connection.frames.extend(&buffer[..read]);
        }
    }
}

/// Time left until `deadline`.
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// An I/O failure talking to the server at `address`, naming it.
fn io_error(address: SocketAddr, source: std::io::Error) -> Error {
    Error::Io {
        address: address.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RejectionReason, SessionProposal};
    use std::net::TcpListener;
    use std::thread;

    /// A scripted server: answers every request on every connection with `answer(request)`, or
    /// hangs up on that connection when it returns `None`.
    fn scripted_server(
        answer: impl Fn(&ClientRequest) -> Option<ResponseBody> + Send + 'static,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut frames = FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT);
                let mut buffer = [0u8; 4096];
                let mut preamble_seen = false;
                'connection: while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    frames.extend(&buffer[..read]);
                    while let Ok(Some(frame)) = frames.next_frame() {
                        if !preamble_seen {
                            preamble_seen = wire::decode_preamble(&frame).is_ok();
                            continue;
                        }
                        let Ok(request) = wire::decode_request(&frame) else {
                            break 'connection;
                        };
                        let Some(body) = answer(&request) else {
                            break 'connection;
                        };
                        let response = ClientResponse {
                            request_id: request.request_id,
                            body,
                        };
                        if stream.write_all(&wire::encode_response(&response)).is_err() {
                            break 'connection;
                        }
                    }
                }
            }
        });
        address
    }

    /// A scripted server that always answers.
    fn fake_server(answer: impl Fn(&ClientRequest) -> ResponseBody + Send + 'static) -> SocketAddr {
        scripted_server(move |request| Some(answer(request)))
    }

    fn unused_address() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    }

    #[test]
    fn follows_a_hint_to_a_cluster_address() {
        let leader = fake_server(|request| match &request.body {
            RequestBody::RegisterSession => ResponseBody::SessionRegistered(7),
            RequestBody::SessionPropose(proposal) => {
                ResponseBody::Applied(proposal.command.clone())
            }
            _ => ResponseBody::UnknownLeader,
        });
        let follower = fake_server(move |_| ResponseBody::NotLeader {
            leader_id: crate::ServerId(2),
            leader_address: leader.to_string(),
        });
        let mut client = Client::new([follower, leader]);
        assert_eq!(client.propose(b"echo").expect("applied"), b"echo");
    }

    #[test]
    fn never_follows_a_hint_outside_the_cluster() {
        let stranger = fake_server(|_| ResponseBody::Applied(b"wrong".to_vec()));
        let follower = fake_server(move |_| ResponseBody::NotLeader {
            leader_id: crate::ServerId(9),
            leader_address: stranger.to_string(),
        });
        let mut client = Client::new([follower]).with_timeout(Duration::from_millis(300));
        let error = client.propose(b"x").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Timeout { .. }), "{text}");
        assert!(
            text.contains("not one of the cluster's addresses"),
            "{text}"
        );
    }

    #[test]
    fn times_out_naming_the_unreachable_server() {
        let nobody = unused_address();
        let mut client = Client::new([nobody]).with_timeout(Duration::from_millis(200));
        let text = client.query(b"get k").unwrap_err().to_string();
        assert!(text.contains("within 200ms"), "{text}");
        assert!(text.contains(&nobody.to_string()), "{text}");
    }

    #[test]
    fn refusals_for_good_are_errors_at_once() {
        let server = fake_server(|_| ResponseBody::Rejected {
            reason: RejectionReason::TooLarge,
            message: "command of 9 bytes exceeds 8".to_owned(),
        });
        let mut client = Client::new([server]);
        let error = client.propose(b"123456789").unwrap_err();
        assert!(matches!(error, Error::Rejected { .. }), "{error}");
        assert!(error.to_string().contains("exceeds 8"), "{error}");
    }

    /// Every (session, sequence) a recording server saw, in order.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>;

    /// A server that registers session 7 and records every session request it sees; it closes
    /// the connection instead of answering the first `drop_first` of them.
    fn recording_server(
        drop_first: usize,
        answer: impl Fn(&SessionProposal) -> ResponseBody + Send + 'static,
    ) -> (SocketAddr, Seen) {
        let seen = Seen::default();
        let record = std::sync::Arc::clone(&seen);
        let address = scripted_server(move |request| match &request.body {
            RequestBody::RegisterSession => Some(ResponseBody::SessionRegistered(7)),
            RequestBody::SessionPropose(proposal) => {
                let mut seen = record.lock().expect("lock");
                seen.push((proposal.session, proposal.sequence));
                (seen.len() > drop_first).then(|| answer(proposal))
            }
            _ => Some(ResponseBody::UnknownLeader),
        });
        (address, seen)
    }

    /// §6.3: a proposal whose reply was lost is retried under the same sequence number, and the
    /// next proposal gets the next one.
    #[test]
    fn a_retry_repeats_the_sequence_number() {
        let (server, seen) = recording_server(1, |proposal| {
            ResponseBody::Applied(proposal.command.clone())
        });
        let mut client = Client::new([server]);
        assert_eq!(client.propose(b"a").expect("applied"), b"a");
        assert_eq!(client.propose(b"b").expect("applied"), b"b");
        assert_eq!(client.session(), Some(7));
        assert_eq!(*seen.lock().expect("lock"), [(7, 1), (7, 1), (7, 2)]);
    }

    #[test]
    fn an_expired_session_is_an_error_and_the_next_call_opens_a_new_one() {
        let answered = std::sync::atomic::AtomicUsize::new(0);
        let (server, seen) = recording_server(0, move |proposal| {
            match answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => ResponseBody::SessionExpired(proposal.session),
                _ => ResponseBody::Applied(Vec::new()),
            }
        });
        let mut client = Client::new([server]);
        let error = client.propose(b"a").unwrap_err();
        assert!(
            matches!(error, Error::SessionExpired { session: 7 }),
            "{error}"
        );
        assert!(error.to_string().contains("not applied"), "{error}");
        assert_eq!(client.session(), None);
        client.propose(b"b").expect("applied in a new session");
        // The new session starts again at 1.
        assert_eq!(*seen.lock().expect("lock"), [(7, 1), (7, 1)]);
    }

    #[test]
    fn a_refusal_by_the_state_machine_carries_its_error() {
        let (server, _) = recording_server(0, |_| ResponseBody::Refused(b"no funds".to_vec()));
        let error = Client::new([server]).propose(b"pay 10").unwrap_err();
        assert!(matches!(&error, Error::Refused { error } if error == b"no funds"));
        assert!(error.to_string().contains("no funds"), "{error}");
    }

    #[test]
    fn empty_cluster_is_a_clear_error() {
        let error = Client::new([]).propose(b"x").unwrap_err();
        assert!(error.to_string().contains("no server addresses"), "{error}");
    }
}
