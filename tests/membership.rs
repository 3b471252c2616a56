//! Membership changes on real servers over 127.0.0.1 (thesis chapter 4): servers that join,
//! learners, growing and shrinking a cluster under load, refused and failed changes, and a
//! removed server that keeps running.
//!
//! Servers run in this process ([`LocalCluster`], joiners by [`LocalCluster::spawn_joining`]);
//! clients are the library's. Nothing sleeps to synchronize: waits poll a condition against a
//! deadline, and claims that something never happens are watched over a window of election
//! timeouts, failing at the first poll that sees it happen.

mod support;

use mioraft::framing::FrameReader;
use mioraft::log::{Entry, PersistentLog};
use mioraft::server::LocalCluster;
use mioraft::sim::linearizability::{self, Operation, RegisterInput, RegisterModel, Verdict};
use mioraft::wire::{self, ClientRequest, Preamble, RequestBody, ResponseBody};
use mioraft::{
    Client, Error, KvStateMachine, LogIndex, MemLog, Membership, Metrics, Role, Server,
    ServerBuilder, ServerId, Term,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};
use support::{holds_throughout, init_logging, wait_for, WAIT};

type Builder = ServerBuilder<MemLog, KvStateMachine>;

/// Election timeouts of 50–100 ms: for tests that wait out many of them.
fn fast(builder: Builder) -> Builder {
    builder
        .with_election_timeout(Duration::from_millis(50), Duration::from_millis(100))
        .with_heartbeat_interval(Duration::from_millis(10))
}

/// The paper's 150–300 ms (the default), heartbeats every 30 ms.
fn standard(builder: Builder) -> Builder {
    builder
        .with_election_timeout(Duration::from_millis(150), Duration::from_millis(300))
        .with_heartbeat_interval(Duration::from_millis(30))
}

/// Servers `1..=size` on 127.0.0.1, with in-memory logs and key-value state machines.
fn cluster(size: u64, configure: fn(Builder) -> Builder) -> LocalCluster {
    init_logging();
    LocalCluster::spawn(
        size,
        |_| MemLog::new(),
        |_| KvStateMachine::new(),
        configure,
    )
    .expect("the cluster starts")
}

/// Starts server `id` to join `cluster`; returns its address.
fn join(cluster: &mut LocalCluster, id: u64, configure: fn(Builder) -> Builder) -> SocketAddr {
    cluster
        .spawn_joining(
            ServerId(id),
            MemLog::new(),
            KvStateMachine::new(),
            configure,
        )
        .expect("the joining server starts")
}

fn metrics(cluster: &LocalCluster, id: u64) -> Metrics {
    cluster
        .server(ServerId(id))
        .unwrap_or_else(|| panic!("n{id} is running"))
        .metrics()
}

/// Waits until exactly one running server leads and every running voter follows it in its
/// term; returns the leader's id.
fn wait_for_leader(cluster: &LocalCluster) -> u64 {
    wait_for("one leader that every voter follows", || {
        agreed_leader(cluster)
    })
}

/// Waits for a leader that every voter follows, other than `old`.
fn wait_for_leader_other_than(cluster: &LocalCluster, old: u64) -> u64 {
    wait_for(
        "a new leader that every voter follows",
        || match agreed_leader(cluster)? {
            leader if leader == old => Err(format!("n{old} still leads")),
            leader => Ok(leader),
        },
    )
}

/// The one leader, if every voter of its configuration follows it in its term.
fn agreed_leader(cluster: &LocalCluster) -> Result<u64, String> {
    let all: Vec<Metrics> = cluster.servers().iter().map(|s| s.metrics()).collect();
    let leaders: Vec<&Metrics> = all.iter().filter(|m| m.role == Role::Leader).collect();
    let [leader] = leaders[..] else {
        return Err(format!("{} leaders: {all:#?}", leaders.len()));
    };
    let agreed = all
        .iter()
        .filter(|m| leader.membership.is_voter(m.id))
        .all(|m| m.current_leader == Some(leader.id) && m.current_term == leader.current_term);
    if agreed {
        Ok(leader.id.0)
    } else {
        Err(format!("{all:#?}"))
    }
}

/// Waits until each of `members` runs with exactly `voters` as voters and `learners` as
/// learners in the configuration in force.
fn wait_for_configuration(
    cluster: &LocalCluster,
    members: &[u64],
    voters: &[u64],
    learners: &[u64],
) {
    let ids = |list: &[u64]| list.iter().copied().map(ServerId).collect::<Vec<_>>();
    let (voters, learners) = (ids(voters), ids(learners));
    wait_for(&format!("voters {voters:?}, learners {learners:?}"), || {
        let seen: Vec<(u64, Membership)> = members
            .iter()
            .map(|&id| (id, metrics(cluster, id).membership))
            .collect();
        let agreed = seen.iter().all(|(_, membership)| {
            membership.voters() == voters && membership.learners() == learners
        });
        if agreed {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
}

/// Makes a configuration change, asking again while the leader refuses it for now (another
/// change still committing, a new leader that has not committed an entry of its term: the
/// reason ends "; retry ...") or no leader answers in time: what an operator does. Changes are
/// idempotent, so asking again is safe. Any other error fails the test.
fn change(what: &str, mut attempt: impl FnMut() -> mioraft::Result<()>) {
    wait_for(what, || match attempt() {
        Ok(()) => Ok(()),
        Err(error @ Error::Rejected { .. }) if error.to_string().contains("; retry") => {
            Err(error.to_string())
        }
        Err(error @ Error::Timeout { .. }) => Err(error.to_string()),
        Err(error) => panic!("{what}: {error}"),
    })
}

/// Sends one request to the server at `address` over a fresh connection and returns its answer,
/// as it comes (no redirect followed).
fn ask(address: SocketAddr, body: RequestBody) -> ResponseBody {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("set timeout");
    stream
        .write_all(&wire::encode_preamble(&Preamble::Client(7)))
        .expect("write");
    let request = ClientRequest {
        request_id: 1,
        body,
    };
    stream
        .write_all(&wire::encode_request(&request))
        .expect("write");
    let mut frames = FrameReader::new(mioraft::framing::MESSAGE_BYTES_MAX_DEFAULT);
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(frame) = frames.next_frame().expect("framing") {
            return wire::decode_response(&frame).expect("a response").body;
        }
        let count = stream.read(&mut buffer).expect("an answer");
        assert_ne!(count, 0, "{address} hung up");
        frames.extend(&buffer[..count]);
    }
}

/// An address nothing listens on: a port bound and released.
fn unreachable_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

// ---- joining and learners ----

/// A server started to join never campaigns: over many election timeouts it stays a learner of
/// term 0 with no configuration, and the cluster's term and leader do not move. Once added it
/// votes, and it holds every write made before: it leads and answers them.
#[test]
fn a_joining_server_stays_passive_until_added_then_votes_with_all_the_data() {
    let mut cluster = cluster(3, fast);
    let leader = wait_for_leader(&cluster);
    let mut client = Client::new(cluster.addresses()).with_timeout(WAIT);
    for n in 0..20 {
        client
            .propose(format!("put k{n} v{n}").as_bytes())
            .expect("write");
    }
    let term = metrics(&cluster, leader).current_term;
    let address = join(&mut cluster, 4, fast);
    // Twenty of the joiner's longest election timeouts.
    holds_throughout(Duration::from_secs(2), "n4 staying passive", || {
        let joiner = metrics(&cluster, 4);
        let passive = joiner.role == Role::Learner
            && joiner.current_term == Term(0)
            && joiner.current_leader.is_none()
            && joiner.membership.is_empty()
            && joiner.last_log_index == LogIndex(0);
        let undisturbed = metrics(&cluster, leader).role == Role::Leader
            && metrics(&cluster, leader).current_term == term;
        if passive && undisturbed {
            Ok(())
        } else {
            Err(format!(
                "n4 {joiner:?}; leader {:?}",
                metrics(&cluster, leader)
            ))
        }
    });

    let mut admin = Client::new(cluster.addresses()).with_timeout(WAIT);
    admin.add_server(ServerId(4), address).expect("n4 is added");
    wait_for_configuration(&cluster, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]);
    let joined = metrics(&cluster, 4);
    assert_eq!(joined.role, Role::Follower, "{joined:?}");
    assert!(joined.current_term >= term, "{joined:?}");
    // Adding it again is a no-op that succeeds.
    admin
        .add_server(ServerId(4), address)
        .expect("adding a voter again succeeds");

    // It holds everything: as the leader, it answers every key.
    change("leadership to go to n4", || {
        admin.transfer_leadership(ServerId(4))
    });
    assert_eq!(wait_for_leader(&cluster), 4);
    // n1 was configured with n2 and n3 only: it sends clients to n4 at n4's address in the
    // configuration.
    let first = cluster.addresses()[0];
    let redirect = ask(first, RequestBody::Query(b"get k0".to_vec()));
    assert_eq!(
        redirect,
        ResponseBody::NotLeader {
            leader_id: ServerId(4),
            leader_address: address.to_string(),
        }
    );
    let mut at_n4 = Client::new([address]).with_timeout(WAIT);
    for n in 0..20 {
        assert_eq!(
            at_n4.query(format!("get k{n}").as_bytes()).expect("read"),
            format!("v{n}").as_bytes(),
            "k{n} on n4"
        );
    }
    cluster.shutdown().expect("clean shutdown");
}

/// A learner receives the log but does not count toward commitment: with two voters and a
/// learner, stopping one voter stops all commits, although the learner holds the new entries.
/// `cluster_status`, asked at the voters only, finds the learner through the configuration.
#[test]
fn a_learner_receives_writes_but_does_not_count_toward_commit() {
    fn slow(builder: Builder) -> Builder {
        // A long lease, so the leader still leads when the proposal below arrives right after
        // a voter stops (check-quorum would make it step down after an election timeout).
        builder
            .with_election_timeout(Duration::from_millis(1000), Duration::from_millis(2000))
            .with_heartbeat_interval(Duration::from_millis(20))
    }
    let mut cluster = cluster(2, slow);
    let leader = wait_for_leader(&cluster);
    let voters = cluster.addresses();
    let address = join(&mut cluster, 3, slow);
    let mut admin = Client::new(voters.clone()).with_timeout(WAIT);
    admin
        .add_learner(ServerId(3), address)
        .expect("n3 is added as a learner");
    wait_for_configuration(&cluster, &[1, 2, 3], &[1, 2], &[3]);
    admin.propose(b"put k v").expect("write");
    let committed = metrics(&cluster, leader).commit_index;
    wait_for("the learner to apply the write", || {
        let learner = metrics(&cluster, 3);
        if learner.last_applied >= committed && learner.role == Role::Learner {
            Ok(())
        } else {
            Err(format!("{learner:?}"))
        }
    });
    // Asked at the voters' addresses only, the status reports the learner too.
    let statuses = admin.cluster_status();
    let learner = statuses
        .iter()
        .find(|status| status.id == Some(ServerId(3)))
        .unwrap_or_else(|| panic!("n3 reported: {statuses:?}"));
    assert_eq!(learner.address, address);
    assert_eq!(learner.voter, Some(false));
    let reported = learner.metrics.as_ref().expect("n3 answered");
    assert_eq!(reported.role, Role::Learner);
    assert_eq!(learner.match_index, Some(reported.last_log_index));

    let follower = 3 - leader;
    cluster
        .stop(ServerId(follower))
        .expect("stop the other voter");
    let settled = metrics(&cluster, leader);
    assert_eq!(settled.commit_index, settled.last_log_index, "{settled:?}");
    let before = settled.commit_index;
    let mut writer = Client::new(voters).with_timeout(Duration::from_millis(1500));
    let error = writer
        .propose(b"put k w")
        .expect_err("one voter of two cannot commit, learner or not");
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    let learner = metrics(&cluster, 3);
    assert!(
        learner.last_log_index > before,
        "the learner received the new entries: {learner:?}"
    );
    for id in [leader, 3] {
        let seen = metrics(&cluster, id);
        assert_eq!(seen.commit_index, before, "n{id} committed: {seen:?}");
    }
    cluster.shutdown().expect("clean shutdown");
}

// ---- refused and failed changes ----

/// One change at a time (thesis §4.1): while adding a server is under way, other changes are
/// refused with words saying so.
#[test]
fn a_second_change_while_one_is_pending_is_refused() {
    let mut cluster = cluster(3, fast);
    let leader = wait_for_leader(&cluster);
    let joiner_address = join(&mut cluster, 4, fast);
    let addresses = cluster.addresses();
    // Adding a server nobody runs stays pending for about ten election timeouts.
    let nowhere = unreachable_address();
    let pending = {
        let addresses = addresses.clone();
        thread::spawn(move || {
            Client::new(addresses)
                .with_timeout(WAIT)
                .add_server(ServerId(9), nowhere)
        })
    };
    wait_for("n9 to be a learner", || {
        let seen = metrics(&cluster, leader).membership;
        if seen.is_learner(ServerId(9)) {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    });
    let mut admin = Client::new(addresses).with_timeout(WAIT);
    for (what, outcome) in [
        ("adding n4", admin.add_server(ServerId(4), joiner_address)),
        ("removing n3", admin.remove_server(ServerId(3))),
    ] {
        let error = outcome.expect_err("refused while another change is pending");
        assert!(matches!(error, Error::Rejected { .. }), "{what}: {error}");
        let text = error.to_string();
        assert!(
            text.contains("membership change failed")
                && text.contains("a configuration change is in progress (adding n9)"),
            "{what}: {text}"
        );
    }
    let first = pending.join().expect("the first change's thread");
    assert!(first.is_err(), "n9 was never reachable: {first:?}");
    let seen = metrics(&cluster, leader).membership;
    assert_eq!(seen.voters(), [1, 2, 3].map(ServerId), "{seen}");
    cluster.shutdown().expect("clean shutdown");
}

/// Adding a server that does not answer gives up after about ten election timeouts with an
/// error naming it and saying what to check; it stays a learner, which can then be removed, and
/// the cluster commits throughout.
#[test]
fn adding_an_unreachable_server_fails_with_a_clear_error() {
    let cluster = cluster(3, fast);
    let leader = wait_for_leader(&cluster);
    let mut admin = Client::new(cluster.addresses()).with_timeout(WAIT);
    let nowhere = unreachable_address();
    let error = admin
        .add_server(ServerId(7), nowhere)
        .expect_err("n7 is unreachable");
    assert!(matches!(error, Error::Rejected { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("n7 made no progress for 10 election timeouts")
            && text.contains("is it running and reachable?")
            && text.contains("It stays a learner"),
        "{text}"
    );
    let seen = metrics(&cluster, leader).membership;
    assert!(seen.is_learner(ServerId(7)), "{seen}");
    admin
        .propose(b"put k v")
        .expect("the cluster commits with n7 a learner");
    change("n7 to be removed", || admin.remove_server(ServerId(7)));
    wait_for_configuration(&cluster, &[1, 2, 3], &[1, 2, 3], &[]);
    // Removing a server that is not a member succeeds at once.
    admin
        .remove_server(ServerId(7))
        .expect("removing a non-member is a no-op");
    cluster.shutdown().expect("clean shutdown");
}

// ---- a removed server ----

/// Acceptance: a removed server that keeps running cannot disrupt the remaining members
/// (pre-vote and the leader lease, thesis §4.2.3, §9.6). It never learns it was removed, so it
/// times out and asks for votes over and over; for many election timeouts the others' term does
/// not move and the leader stays, and they go on committing.
#[test]
fn a_removed_server_that_keeps_running_cannot_disrupt_the_cluster() {
    let cluster = cluster(3, fast);
    let leader = wait_for_leader(&cluster);
    let removed = (1..=3).find(|&id| id != leader).expect("a follower");
    let remaining: Vec<u64> = (1..=3).filter(|&id| id != removed).collect();
    let mut admin = Client::new(cluster.addresses()).with_timeout(WAIT);
    admin.propose(b"put before removal").expect("write");
    change("removing a follower", || {
        admin.remove_server(ServerId(removed))
    });
    let voters: Vec<u64> = remaining.clone();
    wait_for_configuration(&cluster, &remaining, &voters, &[]);
    let term = metrics(&cluster, leader).current_term;
    // Forty of the removed server's longest election timeouts.
    holds_throughout(
        Duration::from_secs(4),
        "the remaining members' term and leader",
        || {
            for &id in &remaining {
                let seen = metrics(&cluster, id);
                let steady =
                    seen.current_term == term && seen.current_leader == Some(ServerId(leader));
                if !steady {
                    return Err(format!("n{id}: {seen:?}"));
                }
            }
            Ok(())
        },
    );
    let outsider = metrics(&cluster, removed);
    println!(
        "removed n{removed} after 4 s: {:?} in term {} (the others stayed in term {term})",
        outsider.role, outsider.current_term
    );
    admin
        .propose(b"put after removal")
        .expect("the remaining members commit");
    cluster.shutdown().expect("clean shutdown");
}

// ---- addresses ----

/// A configuration member whose address is not `ip:port` (here from a log written by some other
/// tool) is logged and not dialled; the server keeps serving.
#[test]
fn a_member_whose_address_cannot_be_dialled_is_skipped() {
    init_logging();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let membership = Membership::default()
        .with_voter(ServerId(1), address.to_string())
        .with_voter(ServerId(2), "db2.example:7000")
        .with_voter(ServerId(3), "")
        .with_learner(ServerId(4), "not an address at all");
    let mut log = MemLog::new();
    log.set_current_term(Term(1)).expect("term");
    log.append_entries(LogIndex(1), &[Entry::configuration(Term(1), &membership)])
        .expect("append");
    let handle = fast(Server::new(
        ServerId(1),
        address,
        log,
        KvStateMachine::new(),
    ))
    .with_listener(listener)
    .spawn()
    .expect("the server starts");
    let mut client = Client::new([address]).with_timeout(WAIT);
    // Several election timeouts of a server that cannot win an election.
    holds_throughout(Duration::from_millis(500), "n1 serving", || {
        let seen = client.status(address).map_err(|error| error.to_string())?;
        if seen.membership == membership {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    handle.shutdown().expect("clean shutdown");
}

// ---- acceptance: grow and shrink under writes ----

/// What a writer thread saw.
#[derive(Debug, Default)]
struct WriterReport {
    /// Keys and values whose put was acknowledged.
    acknowledged: Vec<(String, String)>,
    /// The longest time between two acknowledgements (or from the start to the first).
    longest_pause: Duration,
    /// When (since the start of the run) the longest pause ended.
    longest_pause_ended_at: Duration,
    /// The longest an acknowledged put took.
    slowest_acknowledged: Duration,
    /// Calls that failed, with why.
    failures: Vec<String>,
}

/// Puts `<prefix><n> v<n>` for n = 0, 1, ... with a client of the default timeout (5 s) until
/// `stop`, counting acknowledgements in `acks`.
fn write_continuously(
    addresses: Vec<SocketAddr>,
    prefix: &str,
    started: Instant,
    acks: &AtomicU64,
    stop: &AtomicBool,
) -> WriterReport {
    let mut client = Client::new(addresses);
    let mut report = WriterReport::default();
    let mut last_ack = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (format!("{prefix}{n}"), format!("v{n}"));
        n += 1;
        let invoked = Instant::now();
        match client.propose(format!("put {key} {value}").as_bytes()) {
            Ok(_) => {
                let now = Instant::now();
                report.slowest_acknowledged = report.slowest_acknowledged.max(now - invoked);
                let pause = now - last_ack;
                if pause > report.longest_pause {
                    report.longest_pause = pause;
                    report.longest_pause_ended_at = now - started;
                }
                last_ack = now;
                report.acknowledged.push((key, value));
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => report.failures.push(format!(
                "[{:.3}s] put {key}: {error}",
                started.elapsed().as_secs_f64()
            )),
        }
    }
    report
}

/// Waits until `acks` has grown by `count`.
fn wait_for_acks(acks: &AtomicU64, count: u64) {
    let target = acks.load(Ordering::Relaxed) + count;
    wait_for(&format!("{count} more acknowledged writes"), || {
        let now = acks.load(Ordering::Relaxed);
        if now >= target {
            Ok(())
        } else {
            Err(format!("{now} of {target}"))
        }
    });
}

/// One key's register history, as the checker takes it.
type History = BTreeMap<String, Vec<Operation<RegisterInput, String>>>;

/// Puts (unique values) and gets on three register keys until `stop`, recording each call:
/// completed calls with their output, failed ones as indeterminate.
fn exercise_registers(addresses: Vec<SocketAddr>, started: Instant, stop: &AtomicBool) -> History {
    let mut client = Client::new(addresses).with_timeout(Duration::from_secs(10));
    let mut history = History::new();
    let micros = || started.elapsed().as_micros() as u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("r{}", n % 3);
        let input = if n.is_multiple_of(2) {
            RegisterInput::Put(format!("c-{n}"))
        } else {
            RegisterInput::Get
        };
        n += 1;
        let invoked_at = micros();
        let result = match &input {
            RegisterInput::Put(value) => client.propose(format!("put {key} {value}").as_bytes()),
            _ => client.query(format!("get {key}").as_bytes()),
        };
        let returned_at = micros();
        let (output, returned_at) = match result {
            Ok(bytes) => (
                Some(String::from_utf8(bytes).expect("values are text")),
                Some(returned_at),
            ),
            Err(_) => (None, None),
        };
        history.entry(key).or_default().push(Operation {
            input,
            output,
            invoked_at,
            returned_at,
        });
    }
    history
}

/// Acceptance: grow from 1 to 3 to 5 voters and shrink back to 3, removing the leader once,
/// while one client writes continuously and another puts and reads registers. Afterwards every
/// acknowledged write is read back, the register history is linearizable (checked key by key
/// with `mioraft::sim::linearizability`), and the writer's longest pause is printed.
#[test]
fn grow_from_one_to_five_and_shrink_to_three_under_writes_loses_nothing() {
    let mut cluster = cluster(1, standard);
    assert_eq!(wait_for_leader(&cluster), 1);
    let mut addresses = BTreeMap::from([(1, cluster.addresses()[0])]);
    for id in 2..=5 {
        addresses.insert(id, join(&mut cluster, id, standard));
    }
    let everyone: Vec<SocketAddr> = addresses.values().copied().collect();

    let started = Instant::now();
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (everyone, acks, stop) = (everyone.clone(), Arc::clone(&acks), Arc::clone(&stop));
        thread::spawn(move || write_continuously(everyone, "w", started, &acks, &stop))
    };
    let registers = {
        let (everyone, stop) = (everyone.clone(), Arc::clone(&stop));
        thread::spawn(move || exercise_registers(everyone, started, &stop))
    };
    // Lets the writer get on between changes.
    let writes_go_on = |count: u64| wait_for_acks(&acks, count);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let note = |what: String| {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("[{:.3}s] {what}", started.elapsed().as_secs_f64()));
    };

    let mut admin = Client::new(everyone.clone()).with_timeout(WAIT);
    writes_go_on(100);
    for id in 2..=5 {
        change(&format!("adding n{id}"), || {
            admin.add_server(ServerId(id), addresses[&id])
        });
        note(format!("n{id} added"));
        let members: Vec<u64> = (1..=id).collect();
        wait_for_configuration(&cluster, &members, &members, &[]);
        writes_go_on(100);
    }
    let leader = wait_for_leader(&cluster);
    change(&format!("removing the leader, n{leader}"), || {
        admin.remove_server(ServerId(leader))
    });
    note(format!("n{leader} (the leader) removed"));
    let mut remaining: Vec<u64> = (1..=5).filter(|&id| id != leader).collect();
    wait_for_configuration(&cluster, &remaining, &remaining, &[]);
    let new_leader = wait_for_leader_other_than(&cluster, leader);
    note(format!("n{new_leader} leads"));
    writes_go_on(100);
    let follower = *remaining
        .iter()
        .rev()
        .find(|&&id| id != new_leader)
        .expect("a follower");
    change(&format!("removing n{follower}"), || {
        admin.remove_server(ServerId(follower))
    });
    note(format!("n{follower} removed"));
    remaining.retain(|&id| id != follower);
    wait_for_configuration(&cluster, &remaining, &remaining, &[]);
    writes_go_on(100);

    stop.store(true, Ordering::Relaxed);
    let report = writer.join().expect("the writer");
    let history = registers.join().expect("the register client");

    // Every acknowledged write is there, read through the remaining members only.
    let remaining_addresses: Vec<SocketAddr> = remaining.iter().map(|id| addresses[id]).collect();
    let mut reader = Client::new(remaining_addresses).with_timeout(WAIT);
    for (key, value) in &report.acknowledged {
        let read = reader.query(format!("get {key}").as_bytes()).expect("read");
        assert_eq!(read, value.as_bytes(), "acknowledged {key} = {value}");
    }
    // The register history is linearizable, key by key.
    let mut operations_checked = 0;
    for (key, operations) in &history {
        let kept: Vec<Operation<RegisterInput, String>> =
            linearizability::prune_unobserved_writes(operations)
                .into_iter()
                .map(|position| operations[position].clone())
                .collect();
        operations_checked += kept.len();
        let verdict = linearizability::check(&RegisterModel::default(), &kept);
        assert_eq!(verdict, Verdict::Linearizable, "{key}: {operations:#?}");
    }
    let changes = log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .join("; ");
    println!(
        "grew 1 -> 3 -> 5 and shrank to 3 in {:.2} s ({changes}); {} writes acknowledged, {} \
         failed; {operations_checked} register operations linearizable; longest writer pause \
         {:.1} ms (ending at {:.3} s); slowest acknowledged write {:.1} ms",
        started.elapsed().as_secs_f64(),
        report.acknowledged.len(),
        report.failures.len(),
        report.longest_pause.as_secs_f64() * 1e3,
        report.longest_pause_ended_at.as_secs_f64(),
        report.slowest_acknowledged.as_secs_f64() * 1e3,
    );
    for failure in &report.failures {
        println!("  writer: {failure}");
    }
    let final_members = remaining
        .iter()
        .map(|&id| metrics(&cluster, id).membership)
        .collect::<Vec<_>>();
    assert!(
        final_members
            .iter()
            .all(|membership| membership.voters().len() == 3),
        "{final_members:?}"
    );
    cluster.shutdown().expect("clean shutdown");
}

/// A leader that removes itself leads until the change commits (thesis §4.2.2) and takes
/// proposals meanwhile; each must be answered, so its client moves on to the next leader. Four
/// writers keep the leader busy while it is removed; every put must succeed within the clients'
/// deadline (5 s, some twenty election timeouts).
#[test]
fn proposals_pending_at_a_leader_that_removes_itself_are_answered() {
    let cluster = cluster(3, standard);
    let leader = wait_for_leader(&cluster);
    let addresses = cluster.addresses();
    let started = Instant::now();
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (addresses, acks, stop) = (addresses.clone(), Arc::clone(&acks), Arc::clone(&stop));
            thread::spawn(move || {
                write_continuously(addresses, &format!("w{writer}-"), started, &acks, &stop)
            })
        })
        .collect();
    wait_for_acks(&acks, 50);
    let mut admin = Client::new(addresses).with_timeout(WAIT);
    change("removing the leader", || {
        admin.remove_server(ServerId(leader))
    });
    let remaining: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    wait_for_configuration(&cluster, &remaining, &remaining, &[]);
    wait_for_acks(&acks, 50);
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = writers
        .into_iter()
        .flat_map(|writer| writer.join().expect("a writer").failures)
        .collect();
    assert!(
        failures.is_empty(),
        "puts left unanswered after n{leader} removed itself: {failures:#?}"
    );
    cluster.shutdown().expect("clean shutdown");
}
