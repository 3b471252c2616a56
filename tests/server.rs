//! The networked server over real sockets on 127.0.0.1: elections, replication, redirects,
//! losing and restarting a leader (DESIGN.md §1, §4), and hostile or broken connections, each of
//! which must close that one connection and leave the server serving everyone else.
//!
//! Nothing here sleeps to synchronize: every wait polls a condition (metrics, or a status
//! request) against a deadline and fails with the last value it saw. Listeners bind port 0.

use mioraft::consensus::ResponseMode;
use mioraft::consensus::{Message, RequestVote};
use mioraft::error::LogError;
use mioraft::framing::FrameReader;
use mioraft::log::{Entry, PersistentLog, SnapshotMeta};
use mioraft::wire::{self, ClientRequest, Preamble, RequestBody, ResponseBody, SessionProposal};
use mioraft::{
    Client, Error, KvStateMachine, LogIndex, MemLog, Metrics, Role, Server, ServerBuilder,
    ServerHandle, ServerId, Term,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use support::{init_logging, wait_for, WAIT};

/// How long a test client waits for one response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

// ---- a tiny blocking client speaking the wire protocol ----

struct TestClient {
    stream: TcpStream,
    reader: FrameReader,
    next_request_id: u64,
}

impl TestClient {
    /// Connects to `address` and introduces itself as a client.
    fn connect(address: SocketAddr) -> io::Result<TestClient> {
        let mut stream = TcpStream::connect_timeout(&address, RESPONSE_TIMEOUT)?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.write_all(&wire::encode_preamble(&Preamble::Client(0xc11e47)))?;
        Ok(TestClient {
            stream,
            reader: FrameReader::new(mioraft::framing::MESSAGE_BYTES_MAX_DEFAULT),
            next_request_id: 1,
        })
    }

    /// Sends one request and reads its response.
    fn request(&mut self, body: RequestBody) -> io::Result<ResponseBody> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let frame = wire::encode_request(&ClientRequest { request_id, body });
        self.stream.write_all(&frame)?;
        let mut buffer = [0_u8; 4096];
        loop {
            if let Some(frame) = self.reader.next_frame().map_err(io::Error::other)? {
                let response = wire::decode_response(&frame).map_err(io::Error::other)?;
                if response.request_id == request_id {
                    return Ok(response.body);
                }
                continue;
            }
            let count = self.stream.read(&mut buffer)?;
            if count == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.reader.extend(&buffer[..count]);
        }
    }
}

/// The status of the server at `address`, over a fresh connection.
fn status_of(address: SocketAddr) -> io::Result<Metrics> {
    match TestClient::connect(address)?.request(RequestBody::Status)? {
        ResponseBody::Status(metrics) => Ok(metrics),
        other => Err(io::Error::other(format!("not a status: {other:?}"))),
    }
}

/// Proposes `command` to the cluster: starts anywhere, follows NotLeader hints, and retries
/// after unknown leaders and connection errors until [`WAIT`] runs out.
fn propose(cluster: &[SocketAddr], command: &str) -> Vec<u8> {
    let mut target = cluster[0];
    let mut next = 0;
    wait_for(&format!("{command:?} to be applied"), || {
        let body = RequestBody::Propose(command.as_bytes().to_vec());
        let outcome = TestClient::connect(target).and_then(|mut client| client.request(body));
        match outcome {
            Ok(ResponseBody::Applied(result)) => Ok(result),
            Ok(ResponseBody::NotLeader { leader_address, .. }) => {
                target = leader_address
                    .parse()
                    .expect("leader addresses are socket addresses");
                Err(format!("redirected to {target}"))
            }
            Ok(other) => {
                next = (next + 1) % cluster.len();
                target = cluster[next];
                Err(format!("{other:?}"))
            }
            Err(error) => {
                next = (next + 1) % cluster.len();
                target = cluster[next];
                Err(error.to_string())
            }
        }
    })
}

// ---- clusters ----

struct Cluster {
    addresses: BTreeMap<u64, SocketAddr>,
    running: BTreeMap<u64, ServerHandle>,
}

impl Cluster {
    /// Binds `size` listeners first, so that every server knows every address, then starts a
    /// server on each.
    fn start(size: u64) -> Cluster {
        init_logging();
        let listeners: BTreeMap<u64, TcpListener> = (1..=size)
            .map(|id| (id, TcpListener::bind("127.0.0.1:0").expect("bind port 0")))
            .collect();
        let addresses = listeners
            .iter()
            .map(|(&id, listener)| (id, listener.local_addr().expect("bound")))
            .collect();
        let mut cluster = Cluster {
            addresses,
            running: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            cluster.start_server(id, listener);
        }
        cluster
    }

    fn start_server(&mut self, id: u64, listener: TcpListener) {
        let peers: HashMap<ServerId, SocketAddr> = self
            .addresses
            .iter()
            .filter(|&(&peer, _)| peer != id)
            .map(|(&peer, &address)| (ServerId(peer), address))
            .collect();
        let handle = Server::new(
            ServerId(id),
            self.addresses[&id],
            MemLog::new(),
            KvStateMachine::new(),
        )
        .with_peers(peers)
        .with_listener(listener)
        .with_election_timeout(Duration::from_millis(150), Duration::from_millis(300))
        .with_heartbeat_interval(Duration::from_millis(30))
        .with_rng_seed(id)
        .spawn()
        .expect("server starts");
        assert_eq!(handle.local_addr(), self.addresses[&id]);
        self.running.insert(id, handle);
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.addresses.values().copied().collect()
    }

    fn metrics(&self) -> BTreeMap<u64, Metrics> {
        self.running
            .iter()
            .map(|(&id, handle)| (id, handle.metrics()))
            .collect()
    }

    /// Waits until exactly one running server leads and every running server follows it in
    /// the same term; returns its id.
    fn wait_for_leader(&self) -> u64 {
        wait_for("one leader that every running server follows", || {
            let metrics = self.metrics();
            let leaders: Vec<u64> = metrics
                .iter()
                .filter(|(_, m)| m.role == Role::Leader)
                .map(|(&id, _)| id)
                .collect();
            let [leader] = leaders[..] else {
                return Err(format!("leaders {leaders:?} in {metrics:#?}"));
            };
            let term = metrics[&leader].current_term;
            let agreed = metrics
                .values()
                .all(|m| m.current_leader == Some(ServerId(leader)) && m.current_term == term);
            if agreed {
                Ok(leader)
            } else {
                Err(format!("{metrics:#?}"))
            }
        })
    }

    /// Waits until every running server has applied at least `index`; returns their metrics.
    fn wait_for_applied_everywhere(&self, index: LogIndex) -> BTreeMap<u64, Metrics> {
        wait_for(&format!("every server to apply index {index}"), || {
            let metrics = self.metrics();
            if metrics.values().all(|m| m.last_applied >= index) {
                Ok(metrics)
            } else {
                Err(format!("{metrics:#?}"))
            }
        })
    }

    fn stop(&mut self, id: u64) {
        let handle = self.running.remove(&id).expect("running");
        handle.shutdown().expect("clean shutdown");
    }

    /// Starts server `id` again on its own address, with an empty log.
    fn restart(&mut self, id: u64) {
        let address = self.addresses[&id];
        let listener = wait_for(&format!("{address} to be free again"), || {
            TcpListener::bind(address).map_err(|error| error.to_string())
        });
        self.start_server(id, listener);
    }
}

// ---- a cluster at work ----

#[test]
fn three_servers_elect_one_leader_and_apply_proposals_everywhere() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let addresses = cluster.addresses();
    for n in 0..5 {
        let previous = propose(&addresses, &format!("put k{n} v{n}"));
        assert_eq!(previous, b"", "k{n} was empty");
    }
    let leader_applied = cluster.metrics()[&leader].last_applied;
    // The leader's no-op and the five puts.
    assert!(leader_applied >= LogIndex(6), "{leader_applied}");
    let metrics = cluster.wait_for_applied_everywhere(leader_applied);
    let leaders = metrics.values().filter(|m| m.role == Role::Leader).count();
    assert_eq!(leaders, 1, "{metrics:#?}");
    let mut client = TestClient::connect(cluster.addresses[&leader]).expect("connect");
    let value = client
        .request(RequestBody::Query(b"get k4".to_vec()))
        .expect("query");
    assert_eq!(value, ResponseBody::Applied(b"v4".to_vec()));
}

/// The value at `key`, read linearizably through `cluster` with the library's client.
fn read(cluster: &Cluster, key: &str) -> Vec<u8> {
    let mut client = Client::new(cluster.addresses()).with_timeout(WAIT);
    client
        .query(format!("get {key}").as_bytes())
        .expect("linearizable read")
}

/// Sends request `sequence` of `session` to the server at `address` and reads the answer.
fn session_propose(
    address: SocketAddr,
    session: u64,
    sequence: u64,
    command: &str,
) -> io::Result<ResponseBody> {
    TestClient::connect(address)?.request(session_request(session, sequence, command))
}

fn session_request(session: u64, sequence: u64, command: &str) -> RequestBody {
    RequestBody::SessionPropose(SessionProposal {
        session,
        sequence,
        command: command.as_bytes().to_vec(),
        respond_when: ResponseMode::Applied,
    })
}

/// Thesis §6.3, over real sockets: the reply to a proposal is lost (the client hangs up before
/// reading it); the retry, on a new connection and again at a new leader after the old one
/// stops, gets the original reply, and the command is applied only once.
#[test]
fn a_retried_proposal_is_applied_once_and_gets_the_original_reply() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let leader_address = cluster.addresses[&leader];
    let mut client = TestClient::connect(leader_address).expect("connect");
    let ResponseBody::SessionRegistered(session) = client
        .request(RequestBody::RegisterSession)
        .expect("register")
    else {
        panic!("no session");
    };
    // Send request 1 and hang up without reading the answer: the reply is lost.
    let frame = wire::encode_request(&ClientRequest {
        request_id: 99,
        body: session_request(session, 1, "put k a"),
    });
    client.stream.write_all(&frame).expect("send");
    drop(client);
    wait_for("the lost request to be applied", || {
        let value = read(&cluster, "k");
        (value == b"a").then_some(()).ok_or(format!("{value:?}"))
    });
    // Someone else writes; re-applying the lost request would now change the value back.
    assert_eq!(propose(&cluster.addresses(), "put k b"), b"a");

    let retry = session_propose(leader_address, session, 1, "put k a").expect("retry");
    assert_eq!(
        retry,
        ResponseBody::Applied(Vec::new()),
        "the original reply"
    );
    assert_eq!(read(&cluster, "k"), b"b", "applied once");

    cluster.stop(leader);
    let new_leader = cluster.wait_for_leader();
    let retry = session_propose(cluster.addresses[&new_leader], session, 1, "put k a")
        .expect("retry at the new leader");
    assert_eq!(
        retry,
        ResponseBody::Applied(Vec::new()),
        "the original reply"
    );
    assert_eq!(read(&cluster, "k"), b"b", "applied once");
}

/// Client sessions from the library's client: exactly-once proposals, linearizable reads, a
/// refusal by the state machine's `validate`, and a proposal answered at commit.
#[test]
fn client_sessions_reads_refusals_and_commit_answers() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let mut client = Client::new(cluster.addresses()).with_timeout(WAIT);
    assert_eq!(client.propose(b"put k 1").expect("applied"), b"");
    assert!(client.session().is_some());
    assert_eq!(client.query(b"get k").expect("read"), b"1");
    let error = client.propose(b"frobnicate k").unwrap_err();
    assert!(matches!(error, Error::Refused { .. }), "{error}");
    assert!(error.to_string().contains("unknown command"), "{error}");
    let index = client.propose_committed(b"put k 2").expect("committed");
    assert!(index > LogIndex(2), "{index}");
    assert_eq!(client.query(b"get k").expect("read"), b"2");
}

#[test]
fn follower_redirects_clients_to_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = *cluster
        .addresses
        .keys()
        .find(|&&id| id != leader)
        .expect("three servers");
    let mut client = TestClient::connect(cluster.addresses[&follower]).expect("connect");
    let expected = ResponseBody::NotLeader {
        leader_id: ServerId(leader),
        leader_address: cluster.addresses[&leader].to_string(),
    };
    let answer = client
        .request(RequestBody::Propose(b"put a 1".to_vec()))
        .expect("propose");
    assert_eq!(answer, expected, "proposal to follower n{follower}");
    let answer = client
        .request(RequestBody::Query(b"get a".to_vec()))
        .expect("query");
    assert_eq!(answer, expected, "query to follower n{follower}");
    let ResponseBody::NotLeader { leader_address, .. } = expected else {
        unreachable!()
    };
    let mut client =
        TestClient::connect(leader_address.parse().expect("address")).expect("connect");
    let answer = client
        .request(RequestBody::Propose(b"put a 1".to_vec()))
        .expect("propose");
    assert_eq!(answer, ResponseBody::Applied(Vec::new()));
}

#[test]
fn new_leader_takes_over_and_a_restarted_server_catches_up() {
    let mut cluster = Cluster::start(3);
    let addresses = cluster.addresses();
    let old_leader = cluster.wait_for_leader();
    let old_term = cluster.metrics()[&old_leader].current_term;
    propose(&addresses, "put before stop");
    cluster.stop(old_leader);

    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    let new_term = cluster.metrics()[&new_leader].current_term;
    assert!(new_term > old_term, "term {new_term} after {old_term}");
    assert_eq!(propose(&addresses, "put after stop"), b"");
    assert_eq!(propose(&addresses, "put before stop again"), b"stop");

    cluster.restart(old_leader);
    let target = wait_for("the survivors' applied index", || {
        let metrics = cluster.metrics();
        let survivors = metrics.iter().filter(|(&id, _)| id != old_leader);
        survivors
            .map(|(_, m)| m.last_applied)
            .max()
            .ok_or_else(|| format!("{metrics:#?}"))
    });
    wait_for("the restarted server to catch up", || {
        let metrics = cluster.metrics();
        if metrics[&old_leader].last_applied >= target {
            Ok(())
        } else {
            Err(format!("target {target}: {metrics:#?}"))
        }
    });
    // And it takes part in what follows.
    propose(&addresses, "put after restart yes");
    let leader = cluster.wait_for_leader();
    let index = cluster.metrics()[&leader].last_applied;
    cluster.wait_for_applied_everywhere(index);
}

// ---- the listening port and the handle ----

fn single_server(
    configure: impl FnOnce(
        ServerBuilder<MemLog, KvStateMachine>,
    ) -> ServerBuilder<MemLog, KvStateMachine>,
) -> ServerHandle {
    init_logging();
    let builder = Server::new(
        ServerId(1),
        "127.0.0.1:0".parse().expect("address"),
        MemLog::new(),
        KvStateMachine::new(),
    )
    .with_election_timeout(Duration::from_millis(100), Duration::from_millis(200))
    .with_heartbeat_interval(Duration::from_millis(20));
    configure(builder).spawn().expect("server starts")
}

#[test]
fn local_addr_reports_the_bound_port_and_shutdown_closes_it() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    assert_ne!(address.port(), 0);
    let metrics = wait_for("the single server to lead", || {
        let metrics = status_of(address).map_err(|error| error.to_string())?;
        if metrics.role == Role::Leader {
            Ok(metrics)
        } else {
            Err(format!("{metrics:?}"))
        }
    });
    assert_eq!(metrics.id, ServerId(1));
    assert_eq!(handle.metrics().role, Role::Leader);
    handle.shutdown().expect("clean shutdown");
    let refused = TcpStream::connect_timeout(&address, RESPONSE_TIMEOUT);
    assert!(refused.is_err(), "{address} still accepts: {refused:?}");
}

#[test]
fn bind_error_names_the_address() {
    init_logging();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("bound");
    let error = Server::run(
        ServerId(1),
        address,
        HashMap::new(),
        MemLog::new(),
        KvStateMachine::new(),
    )
    .expect_err("address in use");
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(error.to_string().contains(&address.to_string()), "{error}");
}

#[test]
fn impossible_settings_are_refused_before_serving() {
    init_logging();
    let inverted = Server::new(
        ServerId(1),
        "127.0.0.1:0".parse().expect("address"),
        MemLog::new(),
        KvStateMachine::new(),
    )
    .with_election_timeout(Duration::from_millis(300), Duration::from_millis(150))
    .spawn();
    assert!(matches!(inverted, Err(Error::Config(_))), "{inverted:?}");
    let zero_limit = Server::new(
        ServerId(1),
        "127.0.0.1:0".parse().expect("address"),
        MemLog::new(),
        KvStateMachine::new(),
    )
    .with_message_bytes_max(0)
    .spawn();
    assert!(
        matches!(zero_limit, Err(Error::Config(_))),
        "{zero_limit:?}"
    );
    // The core's default batches are 1 MiB: a 1 MiB message limit could not carry them.
    let too_small = Server::new(
        ServerId(1),
        "127.0.0.1:0".parse().expect("address"),
        MemLog::new(),
        KvStateMachine::new(),
    )
    .with_message_bytes_max(1 << 20)
    .spawn();
    let error = too_small.map(|_| ()).unwrap_err().to_string();
    assert!(error.contains("at least twice append_bytes_max"), "{error}");
}

/// A log that fails its next sync once told to, like a disk that died.
struct FailingLog {
    inner: MemLog,
    fail: Arc<AtomicBool>,
}

impl PersistentLog for FailingLog {
    fn current_term(&self) -> Term {
        self.inner.current_term()
    }
    fn set_current_term(&mut self, term: Term) -> Result<(), LogError> {
        self.inner.set_current_term(term)
    }
    fn voted_for(&self) -> Option<ServerId> {
        self.inner.voted_for()
    }
    fn set_voted_for(&mut self, candidate: Option<ServerId>) -> Result<(), LogError> {
        self.inner.set_voted_for(candidate)
    }
    fn latest_log_index(&self) -> LogIndex {
        self.inner.latest_log_index()
    }
    fn latest_log_term(&self) -> Term {
        self.inner.latest_log_term()
    }
    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError> {
        self.inner.term(index)
    }
    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError> {
        self.inner.entry(index)
    }
    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        self.inner.entries(from, until, bytes_max)
    }
    fn append_entries(&mut self, from: LogIndex, entries: &[Entry]) -> Result<(), LogError> {
        self.inner.append_entries(from, entries)
    }
    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        self.inner.truncate_suffix(from)
    }
    fn sync(&mut self) -> Result<(), LogError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LogError::Io {
                path: "/var/lib/mioraft/failing-segment".into(),
                source: io::Error::other("disk on fire"),
            });
        }
        self.inner.sync()
    }
    fn first_log_index(&self) -> LogIndex {
        self.inner.first_log_index()
    }
    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.inner.snapshot_meta()
    }
    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        self.inner.begin_snapshot(meta)
    }
    fn write_snapshot(&mut self, data: &[u8]) -> Result<(), LogError> {
        self.inner.write_snapshot(data)
    }
    fn finish_snapshot(&mut self) -> Result<(), LogError> {
        self.inner.finish_snapshot()
    }
    fn read_snapshot(&self, offset: u64, bytes_max: u64) -> Result<Vec<u8>, LogError> {
        self.inner.read_snapshot(offset, bytes_max)
    }
    fn compact_prefix(&mut self, through: LogIndex) -> Result<(), LogError> {
        self.inner.compact_prefix(through)
    }
}

#[test]
fn log_failure_stops_the_server_and_shutdown_reports_it() {
    init_logging();
    let fail = Arc::new(AtomicBool::new(false));
    let log = FailingLog {
        inner: MemLog::new(),
        fail: Arc::clone(&fail),
    };
    let handle = Server::new(
        ServerId(1),
        "127.0.0.1:0".parse().expect("address"),
        log,
        KvStateMachine::new(),
    )
    .spawn()
    .expect("server starts");
    let address = handle.local_addr();
    wait_for("the single server to lead", || {
        let metrics = handle.metrics();
        if metrics.role == Role::Leader {
            Ok(())
        } else {
            Err(format!("{metrics:?}"))
        }
    });
    fail.store(true, Ordering::SeqCst);
    let mut client = TestClient::connect(address).expect("connect");
    // The proposal's sync fails: the server stops, answering "shutting down" or just closing.
    match client.request(RequestBody::Propose(b"put k v".to_vec())) {
        Ok(ResponseBody::Rejected { reason, .. }) => {
            assert_eq!(reason, wire::RejectionReason::ShuttingDown)
        }
        Ok(other) => panic!("a proposal on a failed log got {other:?}"),
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}"),
    }
    let error = handle.shutdown().expect_err("the log failed");
    assert!(matches!(error, Error::Log(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("failing-segment") && text.contains("disk on fire"),
        "{text}"
    );
}

// ---- hostile and broken connections: each closes that connection only ----

/// Fails unless the server closes `stream` (end of stream or reset) within [`WAIT`].
fn assert_closed_by_server(mut stream: TcpStream, what: &str) {
    let deadline = Instant::now() + WAIT;
    let mut buffer = [0_u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: connection still open after {WAIT:?}"
        );
        stream.set_read_timeout(Some(left)).expect("set timeout");
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(error) => panic!("{what}: unexpected error {error}"),
        }
    }
}

/// Fails unless the server answers a status request on a fresh connection.
fn assert_still_serving(address: SocketAddr) {
    let metrics = status_of(address).expect("status on a fresh connection");
    assert_eq!(metrics.id, ServerId(1));
}

fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&address, RESPONSE_TIMEOUT).expect("connect")
}

#[test]
fn garbage_bytes_close_the_connection() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let mut stream = connect(address);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: mioraft\r\n\r\n")
        .expect("write");
    assert_closed_by_server(stream, "garbage");
    assert_still_serving(address);
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn oversized_frame_closes_the_connection() {
    let handle = single_server(|builder| {
        builder
            .with_config(small_batches())
            .with_message_bytes_max(1024)
    });
    let address = handle.local_addr();
    let mut stream = connect(address);
    stream
        .write_all(&wire::encode_preamble(&Preamble::Client(1)))
        .expect("write");
    // A segment table announcing one segment of a million words: refused from the table alone.
    let mut table = Vec::new();
    table.extend_from_slice(&0_u32.to_le_bytes());
    table.extend_from_slice(&1_000_000_u32.to_le_bytes());
    stream.write_all(&table).expect("write");
    assert_closed_by_server(stream, "oversized frame");
    assert_still_serving(address);
    handle.shutdown().expect("clean shutdown");
}

/// A core configuration whose batches fit a small message limit.
fn small_batches() -> mioraft::consensus::Config {
    mioraft::consensus::Config {
        append_bytes_max: 256,
        snapshot_chunk_bytes: 256,
        election_timeout_min: Duration::from_millis(100),
        election_timeout_max: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(20),
        ..mioraft::consensus::Config::default()
    }
}

/// A command too large to replicate within the message limit is refused before it enters the
/// log, with the limit in the error; one within it is applied.
#[test]
fn command_too_large_to_replicate_is_refused() {
    let handle = single_server(|builder| {
        builder
            .with_config(small_batches())
            .with_message_bytes_max(4096)
    });
    let address = handle.local_addr();
    let mut client = mioraft::Client::new([address]).with_timeout(Duration::from_secs(5));
    let fits = format!("put k {}", "x".repeat(1500));
    client
        .propose(fits.as_bytes())
        .expect("a command within the limit is applied");
    let too_large = format!("put k {}", "x".repeat(3000));
    let error = client.propose(too_large.as_bytes()).unwrap_err();
    assert!(matches!(error, Error::Rejected { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("exceeds the limit of 2048 bytes"),
        "{error}"
    );
    let applied = handle.metrics().last_applied;
    assert_eq!(
        client.query(b"get k").expect("query").len(),
        1500,
        "the refused command changed nothing (applied index {applied})"
    );
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn first_frame_that_is_not_a_valid_preamble_closes_the_connection() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let status_request = wire::encode_request(&ClientRequest {
        request_id: 5,
        body: RequestBody::Status,
    });
    let reserved_peer_id = wire::encode_preamble(&Preamble::Peer(ServerId(0)));
    for (what, frame) in [
        ("a request before any preamble", status_request),
        ("a preamble naming server 0", reserved_peer_id),
    ] {
        let mut stream = connect(address);
        stream.write_all(&frame).expect("write");
        assert_closed_by_server(stream, what);
        assert_still_serving(address);
    }
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn peer_preamble_claiming_this_servers_id_is_refused() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let mut stream = connect(address);
    stream
        .write_all(&wire::encode_preamble(&Preamble::Peer(ServerId(1))))
        .expect("write");
    assert_closed_by_server(stream, "a peer claiming to be n1");
    assert_still_serving(address);
    handle.shutdown().expect("clean shutdown");
}

/// Members change (thesis ch. 4), so a peer preamble from a server outside the configuration is
/// accepted, and a server with no connection of its own to that peer answers it on the peer's
/// connection: here a stale RequestVote from n7 gets the leader's term back.
#[test]
fn a_peer_outside_the_configuration_is_accepted_and_answered_on_its_connection() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let term = wait_for("n1 to lead", || {
        let metrics = handle.metrics();
        if metrics.role == Role::Leader {
            Ok(metrics.current_term)
        } else {
            Err(format!("{metrics:?}"))
        }
    });
    let mut stream = connect(address);
    stream
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .expect("set timeout");
    stream
        .write_all(&wire::encode_preamble(&Preamble::Peer(ServerId(7))))
        .expect("write");
    let stale_vote = Message::RequestVote(RequestVote {
        term: Term(0),
        candidate_id: ServerId(7),
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        pre_vote: false,
        leadership_transfer: false,
    });
    stream
        .write_all(&wire::encode_message(&stale_vote))
        .expect("write");
    let mut reader = FrameReader::new(mioraft::framing::MESSAGE_BYTES_MAX_DEFAULT);
    let mut buffer = [0_u8; 4096];
    let answer = loop {
        if let Some(frame) = reader.next_frame().expect("framing") {
            break wire::decode_message(&frame).expect("a Raft message");
        }
        let count = stream.read(&mut buffer).expect("an answer from n1");
        assert_ne!(count, 0, "n1 closed the connection of n7");
        reader.extend(&buffer[..count]);
    };
    match answer {
        Message::RequestVoteResponse(response) => {
            assert!(!response.vote_granted);
            assert!(response.term >= term, "{response:?}");
        }
        other => panic!("expected a RequestVoteResponse, got {other:?}"),
    }
    assert_eq!(handle.metrics().role, Role::Leader, "n7 changed nothing");
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn client_sending_a_peer_message_is_closed() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let mut stream = connect(address);
    stream
        .write_all(&wire::encode_preamble(&Preamble::Client(9)))
        .expect("write");
    let vote = Message::RequestVote(RequestVote {
        term: Term(99),
        candidate_id: ServerId(2),
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        pre_vote: false,
        leadership_transfer: false,
    });
    stream
        .write_all(&wire::encode_message(&vote))
        .expect("write");
    assert_closed_by_server(stream, "client sending RequestVote");
    assert_still_serving(address);
    assert!(
        handle.metrics().current_term < Term(99),
        "the vote was not stepped"
    );
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn half_open_connection_is_closed_after_the_preamble_timeout() {
    let handle = single_server(|builder| builder.with_preamble_timeout(Duration::from_millis(200)));
    let address = handle.local_addr();
    let silent = connect(address);
    assert_closed_by_server(silent, "silent connection");
    assert_still_serving(address);
    handle.shutdown().expect("clean shutdown");
}

#[test]
fn client_that_never_reads_its_responses_is_closed() {
    let handle = single_server(|builder| builder);
    let address = handle.local_addr();
    let value = "x".repeat(1 << 20);
    propose(&[address], &format!("put big {value}"));
    // A hundred pipelined queries of a 1 MiB value, none of the answers read: more than the
    // 64 MiB a connection may have waiting, so the server closes it instead of buffering more.
    let mut stream = connect(address);
    stream
        .write_all(&wire::encode_preamble(&Preamble::Client(3)))
        .expect("write");
    let mut requests = Vec::new();
    for request_id in 0..100 {
        requests.extend(wire::encode_request(&ClientRequest {
            request_id,
            body: RequestBody::Query(b"get big".to_vec()),
        }));
    }
    stream.write_all(&requests).expect("write");
    assert_closed_by_server(stream, "client not reading");
    assert_still_serving(address);
    handle.shutdown().expect("clean shutdown");
}

/// §3.10 over real sockets: while a client writes, the operator hands leadership to a chosen
/// follower; it becomes leader, the writes go on, and none is lost. Prints how long the handover
/// took (a figure, not a limit).
#[test]
fn leadership_transfer_under_load_goes_to_the_chosen_server() {
    init_logging();
    let cluster = mioraft::server::LocalCluster::spawn(
        3,
        |_| MemLog::new(),
        |_| KvStateMachine::new(),
        |builder| builder,
    )
    .expect("start a cluster");
    let leader = cluster.wait_for_leader(WAIT).expect("a leader");
    let addresses = cluster.addresses();
    let target = ServerId(if leader == ServerId(3) { 2 } else { 3 });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let addresses = addresses.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut client = Client::new(addresses).with_timeout(Duration::from_secs(10));
            let mut written = 0u64;
            while !stop.load(Ordering::SeqCst) {
                client
                    .propose(format!("put k{written} v").as_bytes())
                    .expect("writes go on through the transfer");
                written += 1;
            }
            written
        })
    };
    wait_for("some writes", || {
        let applied = status_of(addresses[0])
            .map_err(|e| e.to_string())?
            .last_applied;
        if applied > LogIndex(50) {
            Ok(())
        } else {
            Err(format!("applied {applied}"))
        }
    });
    let mut admin = Client::new(addresses.clone()).with_timeout(Duration::from_secs(10));
    let started = Instant::now();
    admin
        .transfer_leadership(target)
        .expect("the transfer succeeds");
    let handed_over = started.elapsed();
    let target_address = addresses[(target.0 - 1) as usize];
    wait_for("the target to lead", || {
        let metrics = status_of(target_address).map_err(|e| e.to_string())?;
        if metrics.role == Role::Leader {
            Ok(())
        } else {
            Err(format!("{metrics:?}"))
        }
    });
    eprintln!(
        "leadership went from {leader} to {target} in {:.1} ms under load",
        handed_over.as_secs_f64() * 1e3
    );
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("the writer finished");
    let mut reader = Client::new(addresses).with_timeout(Duration::from_secs(10));
    for n in [0, written / 2, written - 1] {
        assert_eq!(
            reader.query(format!("get k{n}").as_bytes()).expect("read"),
            b"v",
            "write {n} of {written} is there"
        );
    }
    let error = admin
        .transfer_leadership(ServerId(9))
        .expect_err("not a member");
    assert!(error.to_string().contains("not a voting member"), "{error}");
    cluster.shutdown().expect("clean shutdown");
}

/// `Client::cluster_status` reports every member: its role, term and applied index from its own
/// answer, its match index from the leader's, and an error for a member that is down.
#[test]
fn cluster_status_reports_every_member() {
    init_logging();
    let cluster = mioraft::server::LocalCluster::spawn(
        3,
        |_| MemLog::new(),
        |_| KvStateMachine::new(),
        |builder| builder,
    )
    .expect("start a cluster");
    let leader = cluster.wait_for_leader(WAIT).expect("a leader");
    let addresses = cluster.addresses();
    let mut client = Client::new(addresses.clone()).with_timeout(Duration::from_secs(5));
    client.propose(b"put k v").expect("write");
    let statuses = wait_for("every member to have applied the write", || {
        let statuses = client.cluster_status();
        let settled = statuses.iter().all(|member| {
            member.metrics.as_ref().is_ok_and(|m| {
                m.last_applied >= LogIndex(3) && member.match_index == Some(m.last_log_index)
            })
        });
        if settled {
            Ok(statuses)
        } else {
            Err(format!("{statuses:?}"))
        }
    });
    assert_eq!(statuses.len(), 3);
    let roles: Vec<(ServerId, Role)> = statuses
        .iter()
        .map(|member| {
            let metrics = member.metrics.as_ref().expect("answered");
            (metrics.id, metrics.role)
        })
        .collect();
    assert_eq!(
        roles
            .iter()
            .filter(|(_, role)| *role == Role::Leader)
            .count(),
        1
    );
    assert!(roles.contains(&(leader, Role::Leader)), "{roles:?}");
    assert_eq!(
        statuses
            .iter()
            .map(|member| member.address)
            .collect::<Vec<_>>(),
        addresses
    );
    let mut servers = cluster.into_servers();
    let down = servers.remove(2);
    let down_address = down.local_addr();
    down.shutdown().expect("stop one server");
    let statuses = client.cluster_status();
    let gone = statuses
        .iter()
        .find(|member| member.address == down_address)
        .expect("still listed");
    assert!(gone.metrics.is_err(), "{gone:?}");
    for server in servers {
        server.shutdown().expect("clean shutdown");
    }
}
