//! The blocking [`Client`]: finds the leader, follows redirects, retries, and gives up with a
//! typed error at its deadline (DESIGN.md §4). It speaks the protocol of `schema/messages.capnp`
//! over plain `std::net` sockets.
//!
//! Proposals go through a client session (thesis §6.3): the client opens one on its first
//! proposal and numbers its requests, so a retry after a lost reply, a broken connection or a
//! leader change is applied at most once and answered with the original reply.

use crate::consensus::ResponseMode;
use crate::error::{Error, Result};
use crate::framing::{FrameReader, MESSAGE_BYTES_MAX_DEFAULT};
use crate::metrics::Metrics;
use crate::types::LogIndex;
use crate::wire::{
    self, ClientRequest, ClientResponse, Preamble, RejectionReason, RequestBody, ResponseBody,
    SessionProposal,
};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The default deadline for one call.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The first pause after "unknown leader" or a failed connection; it doubles up to
/// [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between attempts.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The longest one connection attempt may take.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// A blocking client of a mioraft cluster.
///
/// It keeps one connection, to the server it believes leads, and moves on its own: to the leader
/// a server names (only if that address is one of the cluster's), to the next server after a
/// failure, and after a short pause when no leader is known.
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
    cluster: Vec<SocketAddr>,
    timeout: Duration,
    client_id: u64,
    next_request_id: u64,
    /// Index in `cluster` of the server to try next.
    target: usize,
    connection: Option<Connection>,
    /// The session proposals run in, once opened.
    session: Option<u64>,
    /// The sequence number of the next proposal in `session`.
    next_sequence: u64,
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
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos()),
        );
        Client {
            cluster: cluster.into_iter().collect(),
            timeout: TIMEOUT_DEFAULT,
            client_id: hasher.finish(),
            next_request_id: 1,
            target: 0,
            connection: None,
            session: None,
            next_sequence: 1,
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
        self.session
    }

    /// Appends `command` to the replicated log, exactly once, and returns what the state
    /// machine's `apply` returned once it is committed and applied.
    ///
    /// # Errors
    /// [`Error::Timeout`] if no leader answered before the deadline (saying what went wrong
    /// last; the command may still be applied); [`Error::Refused`] if the state machine's
    /// `validate` refused it; [`Error::SessionExpired`] if the cluster dropped this client's
    /// session (not applied; the next call opens a new one); [`Error::Rejected`] if the cluster
    /// refused it for good (too large, malformed).
    pub fn propose(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        match self.propose_in_session(command, ResponseMode::Applied)? {
            ResponseBody::Applied(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Like [`Client::propose`], but answered as soon as the command is committed (durable on a
    /// majority), with its log index instead of the state machine's reply.
    ///
    /// # Errors
    /// As for [`Client::propose`].
    pub fn propose_committed(&mut self, command: &[u8]) -> Result<LogIndex> {
        match self.propose_in_session(command, ResponseMode::Committed)? {
            ResponseBody::Committed(index) => Ok(index),
            // A retry of a request applied since is answered from the session table.
            ResponseBody::Applied(_) => Err(unexpected(ResponseBody::Applied(Vec::new()))),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the state machine a read-only `query`, linearizably: the answer reflects every
    /// write acknowledged before the call (ReadIndex, thesis §6.4).
    ///
    /// # Errors
    /// As for [`Client::propose`].
    pub fn query(&mut self, query: &[u8]) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        match self.call(RequestBody::Query(query.to_vec()), deadline)? {
            ResponseBody::Applied(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Opens a session if there is none, then sends the next request in it until a final
    /// answer or the deadline.
    fn propose_in_session(
        &mut self,
        command: &[u8],
        respond_when: ResponseMode,
    ) -> Result<ResponseBody> {
        let deadline = Instant::now() + self.timeout;
        let session = match self.session {
            Some(session) => session,
            None => match self.call(RequestBody::RegisterSession, deadline)? {
                ResponseBody::SessionRegistered(session) => {
                    self.session = Some(session);
                    self.next_sequence = 1;
                    session
                }
                other => return Err(unexpected(other)),
            },
        };
        let sequence = self.next_sequence;
        // Whatever happens to this request, the next one gets a new number: a request that timed
        // out may still be applied, and must not be mistaken for the next one.
        self.next_sequence += 1;
        let body = RequestBody::SessionPropose(SessionProposal {
            session,
            sequence,
            command: command.to_vec(),
            respond_when,
        });
        match self.call(body, deadline)? {
            ResponseBody::Refused(error) => Err(Error::Refused { error }),
            ResponseBody::SessionExpired(session) => {
                self.session = None;
                Err(Error::SessionExpired { session })
            }
            answer => Ok(answer),
        }
    }

    /// Asks one server, leader or not, for its [`Metrics`].
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Wire`] naming the server if it cannot be reached or answers
    /// nonsense; [`Error::Timeout`] if it does not answer in time.
    pub fn status(&mut self, server: SocketAddr) -> Result<Metrics> {
        let deadline = Instant::now() + self.timeout;
        if self
            .connection
            .as_ref()
            .is_none_or(|connection| connection.address != server)
        {
            self.connection = None;
            self.connection = Some(self.connect(server, deadline)?);
        }
        match self.exchange(&RequestBody::Status, deadline) {
            Ok(ResponseBody::Status(metrics)) => Ok(metrics),
            Ok(other) => Err(unexpected(other)),
            Err(error) => {
                self.connection = None;
                Err(error)
            }
        }
    }

    /// Sends `body` until a server gives a final answer or the deadline passes.
    fn call(&mut self, body: RequestBody, deadline: Instant) -> Result<ResponseBody> {
        if self.cluster.is_empty() {
            return Err(Error::Timeout {
                timeout: Duration::ZERO,
                last_problem: "the client was given no server addresses".to_owned(),
            });
        }
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::from("no attempt finished");
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    timeout: self.timeout,
                    last_problem,
                });
            }
            let address = self.cluster[self.target % self.cluster.len()];
            if self
                .connection
                .as_ref()
                .is_none_or(|connection| connection.address != address)
            {
                self.connection = None;
                match self.connect(address, deadline) {
                    Ok(connection) => self.connection = Some(connection),
                    Err(error) => {
                        last_problem = error.to_string();
                        self.next_server();
                        pause(&mut backoff, deadline);
                        continue;
                    }
                }
            }
            let response = match self.exchange(&body, deadline) {
                Ok(response) => response,
                Err(error) => {
                    last_problem = error.to_string();
                    self.connection = None;
                    self.next_server();
                    pause(&mut backoff, deadline);
                    continue;
                }
            };
            match response {
                ResponseBody::NotLeader {
                    leader_id,
                    leader_address,
                } => {
                    // Follow hints only to addresses of the cluster we were given.
                    let hinted = leader_address
                        .parse::<SocketAddr>()
                        .ok()
                        .and_then(|hint| self.cluster.iter().position(|&a| a == hint));
                    match hinted {
                        Some(position) if position != self.target % self.cluster.len() => {
                            self.target = position;
                        }
                        _ => {
                            last_problem = format!(
                                "{address} names leader {leader_id} at {leader_address}, \
                                 which is not one of the cluster's addresses"
                            );
                            self.next_server();
                            pause(&mut backoff, deadline);
                        }
                    }
                }
                ResponseBody::UnknownLeader => {
                    last_problem = format!("{address} knows no leader (election under way)");
                    pause(&mut backoff, deadline);
                }
                ResponseBody::Rejected { reason, message } => match reason {
                    RejectionReason::Dropped | RejectionReason::Overloaded => {
                        last_problem = format!("{address}: {reason}: {message}");
                        pause(&mut backoff, deadline);
                    }
                    RejectionReason::ShuttingDown => {
                        last_problem = format!("{address}: {reason}: {message}");
                        self.connection = None;
                        self.next_server();
                    }
                    RejectionReason::TooLarge
                    | RejectionReason::BadRequest
                    | RejectionReason::Superseded => {
                        return Err(Error::Rejected {
                            reason: reason.to_string(),
                            message,
                        });
                    }
                },
                answer => return Ok(answer),
            }
        }
    }

    fn next_server(&mut self) {
        self.target = (self.target + 1) % self.cluster.len().max(1);
    }

    fn connect(&self, address: SocketAddr, deadline: Instant) -> Result<Connection> {
        let io = |source| Error::Io {
            address: address.to_string(),
            source,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining
            .min(CONNECT_TIMEOUT_MAX)
            .max(Duration::from_millis(1));
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
        let io = |source| Error::Io {
            address: address.to_string(),
            source,
        };
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

/// Sleeps for the current backoff (never past the deadline) and doubles it.
fn pause(backoff: &mut Duration, deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep((*backoff).min(remaining));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

fn unexpected(body: ResponseBody) -> Error {
    Error::Rejected {
        reason: "unexpected answer".to_owned(),
        message: format!("{body:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A scripted server: answers every request on every connection with `answer(request)`.
    fn fake_server(answer: impl Fn(&ClientRequest) -> ResponseBody + Send + 'static) -> SocketAddr {
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
                        let response = ClientResponse {
                            request_id: request.request_id,
                            body: answer(&request),
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

    /// A server that registers session 7 and records every session request it sees; it closes
    /// the connection instead of answering the first `drop_first` of them.
    /// Every (session, sequence) a recording server saw, in order.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>;

    fn recording_server(
        drop_first: usize,
        answer: impl Fn(&SessionProposal) -> ResponseBody + Send + 'static,
    ) -> (SocketAddr, Seen) {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
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
                            preamble_seen = true;
                            continue;
                        }
                        let Ok(request) = wire::decode_request(&frame) else {
                            break 'connection;
                        };
                        let body = match &request.body {
                            RequestBody::RegisterSession => ResponseBody::SessionRegistered(7),
                            RequestBody::SessionPropose(proposal) => {
                                let mut seen = record.lock().expect("lock");
                                seen.push((proposal.session, proposal.sequence));
                                if seen.len() <= drop_first {
                                    break 'connection;
                                }
                                answer(proposal)
                            }
                            _ => ResponseBody::UnknownLeader,
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
