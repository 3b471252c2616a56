//! The asynchronous [`AsyncClient`] (cargo feature `async-client`): the blocking
//! [`Client`](super::Client)'s protocol, sessions and retries, for applications on an async
//! runtime. It depends on no runtime: the application lends it one through [`AsyncRuntime`].

use super::policy::{self, Call, MemberStatus, Route, Session, StatusSurvey, Step};
use super::{io_error, remaining, TIMEOUT_DEFAULT};
use crate::consensus::{MembershipChange, ResponseMode};
use crate::error::Result;
use crate::framing::MESSAGE_BYTES_MAX_DEFAULT;
use crate::metrics::Metrics;
use crate::types::{LogIndex, ServerId};
use crate::wire::{self, ClientRequest, Preamble, RequestBody, ResponseBody};
use capnp_futures::serialize::{read_message, write_message};
use futures_util::future::{self, Either};
use futures_util::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

/// What an [`AsyncClient`] needs from the application's async runtime: a way to open a TCP
/// connection and a timer. mioraft depends on no runtime; implement this for yours (a unit
/// struct is enough) and hand it to [`AsyncClient::new`].
///
/// The streams are `futures::io` streams ([`AsyncRead`] + [`AsyncWrite`]); runtimes with their
/// own I/O traits usually ship an adapter (for tokio, `tokio_util::compat`).
///
/// # Examples
/// For tokio (with `tokio`'s `net` and `time` features and `tokio-util`'s `compat` feature):
/// ```ignore
/// use mioraft::AsyncRuntime;
/// use std::{io, net::SocketAddr, time::Duration};
/// use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
///
/// struct Tokio;
///
/// impl AsyncRuntime for Tokio {
///     type Stream = Compat<tokio::net::TcpStream>;
///
///     async fn connect(&self, address: SocketAddr) -> io::Result<Self::Stream> {
///         let stream = tokio::net::TcpStream::connect(address).await?;
///         stream.set_nodelay(true)?;
///         Ok(stream.compat())
///     }
///
///     async fn sleep(&self, duration: Duration) {
///         tokio::time::sleep(duration).await;
///     }
/// }
/// ```
/// For smol or async-std, through `async-io` (whose `Async<TcpStream>` is a `futures::io`
/// stream already):
/// ```no_run
/// use async_io::{Async, Timer};
/// use mioraft::AsyncRuntime;
/// use std::{io, net::SocketAddr, net::TcpStream, time::Duration};
///
/// struct AsyncIo;
///
/// impl AsyncRuntime for AsyncIo {
///     type Stream = Async<TcpStream>;
///
///     async fn connect(&self, address: SocketAddr) -> io::Result<Self::Stream> {
///         let stream = Async::<TcpStream>::connect(address).await?;
///         stream.get_ref().set_nodelay(true)?;
///         Ok(stream)
///     }
///
///     async fn sleep(&self, duration: Duration) {
///         Timer::after(duration).await;
///     }
/// }
/// ```
pub trait AsyncRuntime {
    /// A connected stream to a server's port.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;

    /// Opens a TCP connection to `address`. The client sends small requests and waits for each
    /// answer, so set `TCP_NODELAY` on the socket. It need not time out by itself: the client
    /// gives up on an attempt after its own limit.
    fn connect(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// Completes once `duration` has passed. The client races every attempt against it to keep
    /// its deadline, and sleeps with it between attempts.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// An asynchronous client of a mioraft cluster: the blocking [`Client`](super::Client)'s
/// guarantees, on the application's async runtime.
///
/// It keeps one connection, to the server it believes leads, and moves on its own: to the leader
/// a server names (only if that address is one of the cluster's), to the next server after a
/// failure, and to the next server after a short pause (10 ms, doubling up to 50 ms) when no
/// leader is known. Every
/// call has a deadline ([`AsyncClient::with_timeout`], default 5 s), kept with
/// [`AsyncRuntime::sleep`].
///
/// Proposals are exactly-once within a call: the client retries a proposal under the same
/// session sequence number until its deadline, and the cluster applies it at most once. A call
/// that fails with [`Error::Timeout`] may or may not have been applied (it may still be, later);
/// the next call moves on to the next sequence number. Reads are linearizable (ReadIndex, thesis
/// §6.4). One call at a time: methods take `&mut self`.
///
/// Dropping a call's future before it completes (cancelling it, say with the runtime's own
/// timeout) is safe and counts as a call that timed out: the connection it was using is closed,
/// and a proposal it sent may or may not be applied.
///
/// The futures of its methods are `Send` when the runtime is `Send + Sync`, so they can be
/// spawned on a multi-threaded executor.
///
/// # Examples
/// With the `AsyncIo` runtime of [`AsyncRuntime`]'s example, run by `async_io::block_on` (any
/// executor does):
/// ```no_run
/// # use async_io::{Async, Timer};
/// # use std::{io, net::SocketAddr, net::TcpStream};
/// # struct AsyncIo;
/// # impl mioraft::AsyncRuntime for AsyncIo {
/// #     type Stream = Async<TcpStream>;
/// #     async fn connect(&self, address: SocketAddr) -> io::Result<Self::Stream> {
/// #         Async::<TcpStream>::connect(address).await
/// #     }
/// #     async fn sleep(&self, duration: std::time::Duration) {
/// #         Timer::after(duration).await;
/// #     }
/// # }
/// use mioraft::AsyncClient;
/// use std::time::Duration;
///
/// async_io::block_on(async {
///     let cluster = ["127.0.0.1:9001".parse()?, "127.0.0.1:9002".parse()?];
///     let mut client = AsyncClient::new(AsyncIo, cluster).with_timeout(Duration::from_secs(2));
///     let previous = client.propose(b"put greeting hello").await?;
///     let value = client.query(b"get greeting").await?;
///     assert_eq!(value, b"hello");
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncClient<R: AsyncRuntime> {
    runtime: R,
    /// The cluster's addresses and the server to try next.
    route: Route,
    timeout: Duration,
    client_id: u64,
    next_request_id: u64,
    /// Taken out while a request is in flight on it, so that a cancelled call leaves none
    /// behind with half a message in it.
    connection: Option<Connection<R::Stream>>,
    /// The session proposals run in, once opened, and its next sequence number.
    session: Session,
}

impl<R: AsyncRuntime> std::fmt::Debug for AsyncClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("route", &self.route)
            .field("timeout", &self.timeout)
            .field("client_id", &self.client_id)
            .field("next_request_id", &self.next_request_id)
            .field(
                "connected_to",
                &self
                    .connection
                    .as_ref()
                    .map(|connection| connection.address),
            )
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A connection to one server, buffered both ways: a request's segment table and segments go
/// out in one write, and a response is read in few.
struct Connection<S> {
    address: SocketAddr,
    stream: BufReader<BufWriter<S>>,
}

impl<R: AsyncRuntime> AsyncClient<R> {
    /// A client of the servers at `cluster` (any of them; it finds the leader itself), doing its
    /// I/O through `runtime`.
    pub fn new(runtime: R, cluster: impl IntoIterator<Item = SocketAddr>) -> AsyncClient<R> {
        AsyncClient {
            runtime,
            route: Route::new(cluster),
            timeout: TIMEOUT_DEFAULT,
            client_id: policy::new_client_id(),
            next_request_id: 1,
            connection: None,
            session: Session::new(),
        }
    }

    /// Sets the overall deadline of each call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> AsyncClient<R> {
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

    /// The runtime this client does its I/O through.
    pub fn runtime(&self) -> &R {
        &self.runtime
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
    pub async fn propose(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        policy::applied(
            self.propose_in_session(command, ResponseMode::Applied)
                .await?,
        )
    }

    /// Like [`AsyncClient::propose`], but answered as soon as the command is committed (durable
    /// on a majority), with its log index instead of the state machine's reply.
    ///
    /// # Errors
    /// As for [`AsyncClient::propose`].
    pub async fn propose_committed(&mut self, command: &[u8]) -> Result<LogIndex> {
        policy::committed(
            self.propose_in_session(command, ResponseMode::Committed)
                .await?,
        )
    }

    /// Asks the state machine a read-only `query`, linearizably: the answer reflects every
    /// write acknowledged before the call (ReadIndex, thesis §6.4).
    ///
    /// # Errors
    /// As for [`AsyncClient::propose`].
    pub async fn query(&mut self, query: &[u8]) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        policy::applied(
            self.call(RequestBody::Query(query.to_vec()), deadline)
                .await?,
        )
    }

    /// Asks the leader to hand leadership to server `to` (thesis §3.10); see
    /// [`Client::transfer_leadership`](crate::Client::transfer_leadership).
    ///
    /// # Errors
    /// As for [`Client::transfer_leadership`](crate::Client::transfer_leadership).
    pub async fn transfer_leadership(&mut self, to: ServerId) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        policy::transferred(
            self.call(RequestBody::TransferLeadership(to), deadline)
                .await?,
        )
        .map(|_| ())
    }

    /// Asks the leader to add server `id`, listening at `address`, as a voter (thesis
    /// §4.2.1); see [`Client::add_server`](crate::Client::add_server).
    ///
    /// # Errors
    /// As for [`Client::add_server`](crate::Client::add_server).
    pub async fn add_server(&mut self, id: ServerId, address: SocketAddr) -> Result<()> {
        let address = address.to_string();
        self.change_membership(MembershipChange::AddServer { id, address })
            .await
    }

    /// Asks the leader to add server `id`, listening at `address`, as a learner; see
    /// [`Client::add_learner`](crate::Client::add_learner).
    ///
    /// # Errors
    /// As for [`Client::add_learner`](crate::Client::add_learner).
    pub async fn add_learner(&mut self, id: ServerId, address: SocketAddr) -> Result<()> {
        let address = address.to_string();
        self.change_membership(MembershipChange::AddLearner { id, address })
            .await
    }

    /// Asks the leader to remove server `id` (thesis §4.2.2); see
    /// [`Client::remove_server`](crate::Client::remove_server).
    ///
    /// # Errors
    /// As for [`Client::remove_server`](crate::Client::remove_server).
    pub async fn remove_server(&mut self, id: ServerId) -> Result<()> {
        self.change_membership(MembershipChange::RemoveServer { id })
            .await
    }

    /// Sends a configuration change until the leader answers it.
    async fn change_membership(&mut self, change: MembershipChange) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let body = RequestBody::ChangeMembership(change);
        policy::membership_changed(self.call(body, deadline).await?).map(|_| ())
    }

    /// Reports every member of the cluster's configuration with the leader's match index for
    /// it; see [`Client::cluster_status`](crate::Client::cluster_status).
    pub async fn cluster_status(&mut self) -> Vec<MemberStatus> {
        let per_server = self.timeout.min(Duration::from_secs(1));
        let mut survey = StatusSurvey::default();
        for address in self.route.cluster().to_vec() {
            let deadline = Instant::now() + per_server;
            survey.record(address, self.status_until(address, deadline).await);
        }
        for address in survey.members_to_ask() {
            let deadline = Instant::now() + per_server;
            survey.record(address, self.status_until(address, deadline).await);
        }
        survey.finish()
    }

    /// Asks one server, leader or not, for its [`Metrics`].
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Wire`] naming the server if it cannot be reached, answers
    /// nonsense or does not answer in time.
    pub async fn status(&mut self, server: SocketAddr) -> Result<Metrics> {
        let deadline = Instant::now() + self.timeout;
        self.status_until(server, deadline).await
    }

    async fn status_until(&mut self, server: SocketAddr, deadline: Instant) -> Result<Metrics> {
        policy::status(self.attempt(server, &RequestBody::Status, deadline).await?)
    }

    /// Opens a session if there is none, then sends the next request in it until a final
    /// answer or the deadline.
    async fn propose_in_session(
        &mut self,
        command: &[u8],
        respond_when: ResponseMode,
    ) -> Result<ResponseBody> {
        let deadline = Instant::now() + self.timeout;
        let session = match self.session.id() {
            Some(session) => session,
            None => {
                let answer = self.call(RequestBody::RegisterSession, deadline).await?;
                self.session.registered(answer)?
            }
        };
        let proposal = self.session.proposal(session, command, respond_when);
        let answer = self.call(proposal, deadline).await?;
        self.session.settle(answer)
    }

    /// Sends `body` until a server gives a final answer or the deadline passes.
    async fn call(&mut self, body: RequestBody, deadline: Instant) -> Result<ResponseBody> {
        let mut call = Call::start(&self.route, self.timeout)?;
        loop {
            call.check_deadline(remaining(deadline))?;
            let address = self.route.target();
            let step = match self.attempt(address, &body, deadline).await {
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
                        self.runtime.sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Sends `body` to `address`, over the current connection if it leads there or a new one,
    /// and waits for the answer until the deadline. The connection is kept only if the
    /// exchange completes.
    async fn attempt(
        &mut self,
        address: SocketAddr,
        body: &RequestBody,
        deadline: Instant,
    ) -> Result<ResponseBody> {
        let mut connection = match self.connection.take() {
            Some(connection) if connection.address == address => connection,
            _ => self.connect(address, deadline).await?,
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = ClientRequest {
            request_id,
            body: body.clone(),
        };
        let answer = within(
            &self.runtime,
            remaining(deadline),
            connection.exchange(&request),
        )
        .await
        .unwrap_or_else(|| Err(io_error(address, std::io::ErrorKind::TimedOut.into())));
        if answer.is_ok() {
            self.connection = Some(connection);
        }
        answer
    }

    /// Opens a connection to `address` and sends the preamble, within the connection attempt's
    /// time limit.
    async fn connect(
        &self,
        address: SocketAddr,
        deadline: Instant,
    ) -> Result<Connection<R::Stream>> {
        let preamble = wire::preamble_message(&Preamble::Client(self.client_id));
        let opening = async {
            let stream = self.runtime.connect(address).await?;
            let mut stream = BufReader::new(BufWriter::new(stream));
            write_message(&mut stream, &preamble)
                .await
                .map_err(stream_error)?;
            stream.flush().await?;
            Ok(stream)
        };
        let limit = policy::connect_timeout(remaining(deadline));
        match within(&self.runtime, limit, opening).await {
            Some(Ok(stream)) => Ok(Connection { address, stream }),
            Some(Err(source)) => Err(io_error(address, source)),
            None => Err(io_error(address, std::io::ErrorKind::TimedOut.into())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends `request` and reads until its response, skipping answers to earlier requests that
    /// were abandoned on this connection.
    async fn exchange(&mut self, request: &ClientRequest) -> Result<ResponseBody> {
        let address = self.address;
        let failed = |error| io_error(address, stream_error(error));
        write_message(&mut self.stream, wire::request_message(request))
            .await
            .map_err(failed)?;
        self.stream
            .flush()
            .await
            .map_err(|source| io_error(address, source))?;
        let options = wire::stream_reader_options(MESSAGE_BYTES_MAX_DEFAULT);
        loop {
            let message = read_message(&mut self.stream, options)
                .await
                .map_err(failed)?;
            let response = wire::decode_response_message(message)?;
            if response.request_id == request.request_id {
                return Ok(response.body);
            }
        }
    }
}

/// Runs `work` until it completes or `limit` passes, whichever is first.
async fn within<R: AsyncRuntime, T>(
    runtime: &R,
    limit: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    match future::select(pin!(work), pin!(runtime.sleep(limit))).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}

/// A stream failure as capnp-futures reports it (it wraps I/O errors, and its refusals of a
/// frame, such as one too large, in its own type), back in `std::io` terms.
fn stream_error(error: capnp::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = match error.kind {
        capnp::ErrorKind::PrematureEndOfFile => ErrorKind::UnexpectedEof,
        capnp::ErrorKind::Disconnected => ErrorKind::ConnectionReset,
        capnp::ErrorKind::Overloaded => ErrorKind::TimedOut,
        _ => ErrorKind::Other,
    };
    std::io::Error::new(kind, error)
}
