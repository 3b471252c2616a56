//! `AsyncClient` (feature `async-client`) against real in-process clusters and scripted servers.
//! The runtime is async-io (the reactor under smol and async-std), driven by its own
//! `block_on`: the client itself knows no runtime.

use async_io::{Async, Timer};
use mioraft::framing::{FrameReader, MESSAGE_BYTES_MAX_DEFAULT};
use mioraft::server::LocalCluster;
use mioraft::wire::{self, ClientRequest, ClientResponse, RequestBody, ResponseBody};
use mioraft::{
    AsyncClient, AsyncRuntime, Error, KvStateMachine, MemLog, Role, Server, ServerHandle, ServerId,
};
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

/// The runtime of these tests: async-io's sockets and timers.
struct AsyncIo;

impl AsyncRuntime for AsyncIo {
    type Stream = Async<TcpStream>;

    async fn connect(&self, address: SocketAddr) -> io::Result<Self::Stream> {
        let stream = Async::<TcpStream>::connect(address).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(stream)
    }

    async fn sleep(&self, duration: Duration) {
        Timer::after(duration).await;
    }
}

fn client(cluster: impl IntoIterator<Item = SocketAddr>) -> AsyncClient<AsyncIo> {
    AsyncClient::new(AsyncIo, cluster).with_timeout(Duration::from_secs(10))
}

/// `work`'s output, or `None` if `limit` passes first (which drops, so cancels, `work`).
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    let mut work = pin!(work);
    let mut timer = Timer::after(limit);
    std::future::poll_fn(|context| {
        if let Poll::Ready(output) = work.as_mut().poll(context) {
            return Poll::Ready(Some(output));
        }
        if Future::poll(std::pin::Pin::new(&mut timer), context).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

// ---- real clusters ----

#[test]
fn proposes_queries_and_asks_status_on_a_three_server_cluster() {
    let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)
        .expect("cluster starts");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader");
    let addresses = cluster.addresses();
    async_io::block_on(async {
        let mut client = client(addresses.clone());
        assert_eq!(client.session(), None);
        assert_eq!(client.propose(b"put k v1").await.expect("applied"), b"");
        assert!(
            client.session().is_some(),
            "the first proposal opens a session"
        );
        assert_eq!(client.propose(b"put k v2").await.expect("applied"), b"v1");
        assert_eq!(client.query(b"get k").await.expect("read"), b"v2");
        let index = client
            .propose_committed(b"put other x")
            .await
            .expect("committed");
        assert!(index.0 >= 3, "after two proposals and a session: {index}");
        assert_eq!(client.query(b"get other").await.expect("read"), b"x");
        for &address in &addresses {
            let metrics = client.status(address).await.expect("status");
            assert!(metrics.current_leader.is_some(), "{metrics:?}");
        }
        // Back to the leader after the status calls moved the connection.
        assert_eq!(client.propose(b"put k v3").await.expect("applied"), b"v2");
    });
    cluster.shutdown().expect("clean shutdown");
}

/// Three servers whose handles the test holds, so that it can stop one (the leader).
struct Cluster {
    addresses: Vec<SocketAddr>,
    running: HashMap<SocketAddr, ServerHandle>,
}

impl Cluster {
    fn start(size: u64) -> Cluster {
        let listeners: Vec<TcpListener> = (0..size)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
            .collect();
        let addresses: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("bound"))
            .collect();
        let id = |position: usize| ServerId(position as u64 + 1);
        let mut running = HashMap::new();
        for (position, listener) in listeners.into_iter().enumerate() {
            let peers = (0..addresses.len())
                .filter(|&peer| peer != position)
                .map(|peer| (id(peer), addresses[peer]))
                .collect();
            let handle = Server::new(
                id(position),
                addresses[position],
                MemLog::new(),
                KvStateMachine::new(),
            )
            .with_peers(peers)
            .with_listener(listener)
            .spawn()
            .expect("server starts");
            running.insert(addresses[position], handle);
        }
        Cluster { addresses, running }
    }

    fn leader(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self
                .running
                .iter()
                .find(|(_, handle)| handle.metrics().role == Role::Leader);
            if let Some((&address, _)) = leader {
                return address;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(&mut self, address: SocketAddr) {
        let handle = self.running.remove(&address).expect("running");
        handle.shutdown().expect("clean shutdown");
    }
}

#[test]
fn follows_the_new_leader_after_the_leader_stops() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.leader();
    // The old leader first, so the client's connection is to it when it stops.
    let mut order = cluster.addresses.clone();
    order.sort_by_key(|&address| address != old_leader);
    let mut client = client(order);
    async_io::block_on(async {
        assert_eq!(client.propose(b"put k before").await.expect("applied"), b"");
    });
    cluster.stop(old_leader);
    async_io::block_on(async {
        // Answered by the new leader, with the value the old one applied.
        assert_eq!(
            client.propose(b"put k after").await.expect("applied"),
            b"before"
        );
        assert_eq!(client.query(b"get k").await.expect("read"), b"after");
    });
    assert_ne!(cluster.leader(), old_leader);
}

#[test]
fn an_expired_session_is_an_error_and_the_next_call_opens_a_new_one() {
    // One session at a time: a second client's session expires the first's (thesis §6.3).
    let config = mioraft::consensus::Config {
        sessions_max: 1,
        ..mioraft::consensus::Config::default()
    };
    let cluster = LocalCluster::spawn(
        3,
        |_| MemLog::new(),
        |_| KvStateMachine::new(),
        |b| b.with_config(config.clone()),
    )
    .expect("cluster starts");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader");
    async_io::block_on(async {
        let mut first = client(cluster.addresses());
        let mut second = client(cluster.addresses());
        first.propose(b"put k 1").await.expect("applied");
        let expiring = first.session().expect("open");
        second.propose(b"put k 2").await.expect("applied");
        let error = first.propose(b"put k 3").await.unwrap_err();
        assert!(
            matches!(error, Error::SessionExpired { session } if session == expiring),
            "{error}"
        );
        assert_eq!(first.session(), None, "the expired session is forgotten");
        assert_eq!(
            second.query(b"get k").await.expect("read"),
            b"2",
            "not applied"
        );
        assert_eq!(first.propose(b"put k 4").await.expect("applied"), b"2");
        assert_ne!(first.session(), Some(expiring));
    });
    cluster.shutdown().expect("clean shutdown");
}

// ---- scripted servers ----

/// What a scripted server does with one request.
enum Reply {
    Answer(ResponseBody),
    /// Close the connection without answering (the reply is lost).
    Close,
    /// Never answer on this connection.
    Hang,
}

/// A server answering every request on every connection by `script`, which sees each request
/// and how many the server has seen before it.
fn scripted_server(script: impl Fn(&ClientRequest, usize) -> Reply + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    thread::spawn(move || {
        let mut seen = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut frames = FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT);
            let mut buffer = [0u8; 4096];
            let mut preamble_seen = false;
            let mut hanging = false;
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
                    seen += 1;
                    if hanging {
                        continue;
                    }
                    let body = match script(&request, seen - 1) {
                        Reply::Answer(body) => body,
                        Reply::Close => break 'connection,
                        Reply::Hang => {
                            hanging = true;
                            continue;
                        }
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

/// Every (session, sequence) a session server saw, in order.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

/// A server that registers session 7 and records every session proposal; `script` decides each
/// proposal's fate, given how many came before it.
fn session_server(
    script: impl Fn(&wire::SessionProposal, usize) -> Reply + Send + 'static,
) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    let address = scripted_server(move |request, _| match &request.body {
        RequestBody::RegisterSession => Reply::Answer(ResponseBody::SessionRegistered(7)),
        RequestBody::SessionPropose(proposal) => {
            let mut seen = record.lock().expect("lock");
            seen.push((proposal.session, proposal.sequence));
            script(proposal, seen.len() - 1)
        }
        _ => Reply::Answer(ResponseBody::UnknownLeader),
    });
    (address, seen)
}

fn echo(proposal: &wire::SessionProposal) -> Reply {
    Reply::Answer(ResponseBody::Applied(proposal.command.clone()))
}

/// §6.3: a proposal whose reply was lost with its connection is retried under the same
/// sequence number, and the next proposal gets the next one.
#[test]
fn a_retry_after_a_lost_reply_repeats_the_sequence_number() {
    let (server, seen) = session_server(|proposal, before| match before {
        0 => Reply::Close,
        _ => echo(proposal),
    });
    async_io::block_on(async {
        let mut client = client([server]);
        assert_eq!(client.propose(b"a").await.expect("applied"), b"a");
        assert_eq!(client.propose(b"b").await.expect("applied"), b"b");
        assert_eq!(client.session(), Some(7));
    });
    assert_eq!(*seen.lock().expect("lock"), [(7, 1), (7, 1), (7, 2)]);
}

#[test]
fn unknown_leader_and_dropped_are_retried_under_the_same_number() {
    let (server, seen) = session_server(|proposal, before| match before {
        0 => Reply::Answer(ResponseBody::UnknownLeader),
        1 => Reply::Answer(ResponseBody::Rejected {
            reason: wire::RejectionReason::Dropped,
            message: "replaced by another leader's entry".to_owned(),
        }),
        _ => echo(proposal),
    });
    async_io::block_on(async {
        assert_eq!(client([server]).propose(b"a").await.expect("applied"), b"a");
    });
    assert_eq!(*seen.lock().expect("lock"), [(7, 1), (7, 1), (7, 1)]);
}

#[test]
fn follows_a_hint_to_a_cluster_address_and_never_elsewhere() {
    let (leader, _) = session_server(|proposal, _| echo(proposal));
    let hint_to = |target: SocketAddr| {
        scripted_server(move |_, _| {
            Reply::Answer(ResponseBody::NotLeader {
                leader_id: ServerId(2),
                leader_address: target.to_string(),
            })
        })
    };
    async_io::block_on(async {
        let mut following = client([hint_to(leader), leader]);
        assert_eq!(following.propose(b"x").await.expect("applied"), b"x");

        let stranger = hint_to(leader);
        let mut client =
            AsyncClient::new(AsyncIo, [hint_to(stranger)]).with_timeout(Duration::from_millis(300));
        let error = client.propose(b"x").await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Timeout { .. }), "{text}");
        assert!(
            text.contains("not one of the cluster's addresses"),
            "{text}"
        );
    });
}

#[test]
fn a_timeout_names_the_unreachable_server() {
    let nobody = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    async_io::block_on(async {
        let mut client =
            AsyncClient::new(AsyncIo, [nobody]).with_timeout(Duration::from_millis(200));
        let text = client.query(b"get k").await.unwrap_err().to_string();
        assert!(text.contains("within 200ms"), "{text}");
        assert!(text.contains(&nobody.to_string()), "{text}");
    });
}

/// A server that takes requests and never answers: the deadline is kept by racing the
/// runtime's timer, and the error names the server.
#[test]
fn a_timeout_names_the_silent_server_and_keeps_the_deadline() {
    let silent = scripted_server(|_, _| Reply::Hang);
    async_io::block_on(async {
        let mut client =
            AsyncClient::new(AsyncIo, [silent]).with_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let error = client.query(b"get k").await.unwrap_err();
        let elapsed = started.elapsed();
        let text = error.to_string();
        assert!(matches!(error, Error::Timeout { .. }), "{text}");
        assert!(text.contains(&format!("i/o error on {silent}")), "{text}");
        assert!(
            elapsed < Duration::from_secs(3),
            "gave up after {elapsed:?}"
        );
    });
}

#[test]
fn refusals_are_errors_at_once() {
    let (refusing, _) =
        session_server(|_, _| Reply::Answer(ResponseBody::Refused(b"no funds".to_vec())));
    let too_large = scripted_server(|_, _| {
        Reply::Answer(ResponseBody::Rejected {
            reason: wire::RejectionReason::TooLarge,
            message: "command of 9 bytes exceeds 8".to_owned(),
        })
    });
    async_io::block_on(async {
        let error = client([refusing]).propose(b"pay 10").await.unwrap_err();
        assert!(matches!(&error, Error::Refused { error } if error == b"no funds"));
        let error = client([too_large]).query(b"123456789").await.unwrap_err();
        assert!(matches!(error, Error::Rejected { .. }), "{error}");
        assert!(error.to_string().contains("exceeds 8"), "{error}");
    });
}

/// A call cancelled by dropping its future (here, the application's own timeout) leaves the
/// client usable: the next proposal gets the next sequence number and its own answer.
#[test]
fn a_cancelled_call_counts_as_timed_out() {
    let (server, seen) = session_server(|proposal, before| match before {
        0 => Reply::Hang,
        _ => echo(proposal),
    });
    async_io::block_on(async {
        let mut client = client([server]);
        let cancelled = within(Duration::from_millis(200), client.propose(b"a")).await;
        assert!(cancelled.is_none(), "the server never answers the first");
        assert_eq!(client.propose(b"b").await.expect("applied"), b"b");
    });
    assert_eq!(*seen.lock().expect("lock"), [(7, 1), (7, 2)]);
}

#[test]
fn an_empty_cluster_is_a_clear_error() {
    async_io::block_on(async {
        let error = client([]).propose(b"x").await.unwrap_err();
        assert!(error.to_string().contains("no server addresses"), "{error}");
    });
}

/// The client's futures can be spawned on multi-threaded executors.
#[test]
fn calls_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let mut client = client([]);
    assert_send(&client.propose(b"x"));
    assert_send(&client.propose_committed(b"x"));
    assert_send(&client.query(b"x"));
    let nowhere: SocketAddr = "127.0.0.1:1".parse().expect("address");
    assert_send(&client.status(nowhere));
    assert_send(&client.add_server(ServerId(4), nowhere));
    assert_send(&client.add_learner(ServerId(4), nowhere));
    assert_send(&client.remove_server(ServerId(4)));
    assert_send(&client.cluster_status());
    assert_send(&client);
}

/// §3.10 through the async client: leadership goes to the chosen server.
#[test]
fn hands_leadership_to_a_chosen_server() {
    let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)
        .expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader");
    let target = ServerId(if leader == ServerId(1) { 2 } else { 1 });
    let addresses = cluster.addresses();
    async_io::block_on(async {
        let mut client = client(addresses.clone());
        client.propose(b"put k v").await.expect("applied");
        client
            .transfer_leadership(target)
            .await
            .expect("handed over");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = client
                .status(addresses[(target.0 - 1) as usize])
                .await
                .expect("the target answers");
            if status.role == Role::Leader {
                break;
            }
            assert!(Instant::now() < deadline, "{target} never led: {status:?}");
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
        assert_eq!(client.query(b"get k").await.expect("read"), b"v");
    });
    cluster.shutdown().expect("clean shutdown");
}

/// Thesis ch. 4 through the async client: a joining server is added as a learner, promoted to
/// voter, reported by `cluster_status` (found through the configuration, not the client's
/// list), and removed again; a refused change carries the leader's reason.
#[test]
fn changes_the_membership_and_reports_every_member() {
    let mut cluster = LocalCluster::spawn(2, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)
        .expect("cluster starts");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader");
    let voters = cluster.addresses();
    let joiner = cluster
        .spawn_joining(ServerId(3), MemLog::new(), KvStateMachine::new(), |b| b)
        .expect("n3 starts");
    async_io::block_on(async {
        let mut client = client(voters.clone());
        client.propose(b"put k v").await.expect("applied");
        client
            .add_learner(ServerId(3), joiner)
            .await
            .expect("n3 joins as a learner");
        let reported = |statuses: &[mioraft::MemberStatus]| {
            statuses
                .iter()
                .find(|status| status.id == Some(ServerId(3)))
                .map(|status| (status.address, status.voter))
        };
        let statuses = client.cluster_status().await;
        assert_eq!(
            reported(&statuses),
            Some((joiner, Some(false))),
            "{statuses:?}"
        );
        client
            .add_server(ServerId(3), joiner)
            .await
            .expect("n3 is promoted");
        let statuses = client.cluster_status().await;
        assert_eq!(
            reported(&statuses),
            Some((joiner, Some(true))),
            "{statuses:?}"
        );
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        let error = client
            .add_learner(ServerId(3), joiner)
            .await
            .expect_err("a voter is not made a learner");
        assert!(matches!(error, Error::Rejected { .. }), "{error}");
        assert!(error.to_string().contains("n3 is a voter"), "{error}");
        client
            .remove_server(ServerId(3))
            .await
            .expect("n3 is removed");
        let statuses = client.cluster_status().await;
        assert_eq!(reported(&statuses), None, "{statuses:?}");
        assert_eq!(client.query(b"get k").await.expect("read"), b"v");
    });
    cluster.shutdown().expect("clean shutdown");
}
