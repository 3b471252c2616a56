//! The [`Pipeline`] against real servers on 127.0.0.1: many proposals in flight on one
//! connection are each applied exactly once (thesis §6.3), through a leader crash and a
//! leadership transfer (thesis §3.10) in the middle of the stream; a follower redirects it; its
//! pipelined reads see the writes completed before them (thesis §6.4).
//!
//! The state machine counts how often each command was applied, so a command applied twice, or
//! never, shows in its answers. Nothing sleeps to synchronize: waits poll a condition against a
//! deadline.

use mioraft::server::LocalCluster;
use mioraft::{Client, MemLog, Pipeline, ServerBuilder, ServerId, StateMachine};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use support::{init_logging, wait_for};

/// Counts every command applied. Commands are any text without tabs or newlines; `apply`
/// replies how often the command has been applied now (so "1" unless it was applied before).
/// Queries: `total` (commands applied), `duplicates` (distinct commands applied more than
/// once), `get <key>` (the last value of `put <key> <value>` commands).
#[derive(Debug, Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl Tally {
    fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("put {key} ");
        // The newest put of `key` is the one with the highest number after "v".
        self.counts
            .keys()
            .filter_map(|command| command.strip_prefix(&prefix))
            .max_by_key(|value| value.trim_start_matches('v').parse::<u64>().unwrap_or(0))
    }
}

impl StateMachine for Tally {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let command = String::from_utf8_lossy(command).into_owned();
        let count = self.counts.entry(command).or_insert(0);
        *count += 1;
        self.total += 1;
        count.to_string().into_bytes()
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let query = String::from_utf8_lossy(query);
        let answer = match query.split_once(' ') {
            Some(("get", key)) => self.value(key).unwrap_or("").to_owned(),
            _ if query == "total" => self.total.to_string(),
            _ if query == "duplicates" => {
                let twice = self.counts.values().filter(|&&count| count > 1).count();
                twice.to_string()
            }
            _ => format!("unknown query {query:?}"),
        };
        answer.into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut text = format!("{}\n", self.total);
        for (command, count) in &self.counts {
            text.push_str(&format!("{count}\t{command}\n"));
        }
        text.into_bytes()
    }

    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        let text = String::from_utf8(snapshot).expect("a snapshot this test wrote");
        let mut lines = text.lines();
        self.total = lines.next().and_then(|t| t.parse().ok()).expect("total");
        self.counts = lines
            .map(|line| {
                let (count, command) = line.split_once('\t').expect("count\tcommand");
                (command.to_owned(), count.parse().expect("count"))
            })
            .collect();
    }
}

type Builder = ServerBuilder<MemLog, Tally>;

/// Election timeouts of 50–100 ms: a lost leader is replaced quickly.
fn fast(builder: Builder) -> Builder {
    builder
        .with_election_timeout(Duration::from_millis(50), Duration::from_millis(100))
        .with_heartbeat_interval(Duration::from_millis(10))
}

fn cluster() -> LocalCluster {
    init_logging();
    LocalCluster::spawn(3, |_| MemLog::new(), |_| Tally::default(), fast).expect("servers start")
}

fn leader(cluster: &LocalCluster) -> ServerId {
    cluster
        .wait_for_leader(support::WAIT)
        .expect("a leader is elected")
}

/// Every request's deadline: long enough for any election these tests cause.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Asks the cluster at `addresses` a query, through a fresh client.
fn ask(addresses: &[SocketAddr], query: &str) -> String {
    let mut client = Client::new(addresses.to_vec()).with_timeout(TIMEOUT);
    let answer = client
        .query(query.as_bytes())
        .expect("the query is answered");
    String::from_utf8(answer).expect("text")
}

/// Checks that the cluster applied commands `c0`..`c{count-1}` once each, and nothing else.
fn assert_applied_exactly_once(addresses: &[SocketAddr], count: u64) {
    assert_eq!(
        ask(addresses, "duplicates"),
        "0",
        "no command applied twice"
    );
    assert_eq!(
        ask(addresses, "total"),
        count.to_string(),
        "every command applied"
    );
}

/// A thread streaming commands `c0`, `c1`, ... through a pipeline of `depth`, keeping it full
/// until told to stop, then draining it; `completed` counts the completions received.
struct Stream {
    completed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<mioraft::Result<Vec<u8>>>>,
}

impl Stream {
    fn start(addresses: Vec<SocketAddr>, depth: usize) -> Stream {
        let completed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopped) = (Arc::clone(&completed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut pipeline = Pipeline::new(addresses, depth).with_timeout(TIMEOUT);
            let mut replies = BTreeMap::new();
            let mut next = 0;
            loop {
                while !stopped.load(Ordering::SeqCst) && pipeline.in_flight() < depth {
                    pipeline.submit(format!("c{next}").as_bytes());
                    next += 1;
                }
                let Some(completion) = pipeline.next_completion() else {
                    break;
                };
                assert!(pipeline.in_flight() <= depth);
                replies.insert(completion.ticket, completion.result);
                counter.fetch_add(1, Ordering::SeqCst);
            }
            replies.into_values().collect()
        });
        Stream {
            completed,
            stop,
            thread,
        }
    }

    /// Waits until `more` further completions arrived.
    fn wait_for_progress(&self, more: u64) {
        let goal = self.completed.load(Ordering::SeqCst) + more;
        wait_for("completions", || {
            let seen = self.completed.load(Ordering::SeqCst);
            if seen >= goal {
                Ok(())
            } else {
                Err(format!("{seen} completions, waiting for {goal}"))
            }
        });
    }

    /// Stops submitting, drains the pipeline and returns every reply, in submission order.
    fn finish(self) -> Vec<mioraft::Result<Vec<u8>>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the stream finishes")
    }
}

/// Every reply is "1": no command was applied before the one this proposal asked for.
fn assert_all_first_applications(replies: Vec<mioraft::Result<Vec<u8>>>) {
    for (n, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.expect("applied"), b"1", "command c{n}");
    }
}

#[test]
fn many_commands_at_depth_64_are_each_applied_exactly_once() {
    let cluster = cluster();
    leader(&cluster);
    let addresses = cluster.addresses();
    let mut pipeline = Pipeline::new(addresses.clone(), 64).with_timeout(TIMEOUT);
    let commands: Vec<String> = (0..3000).map(|n| format!("c{n}")).collect();
    let replies = pipeline.propose_all(&commands);
    assert_eq!(replies.len(), commands.len());
    assert_all_first_applications(replies);
    assert_eq!(pipeline.in_flight(), 0);
    assert!(pipeline.next_completion().is_none(), "nothing left");
    assert_applied_exactly_once(&addresses, 3000);
    cluster.shutdown().expect("clean shutdown");
}

/// §6.3 across a crash: proposals in flight at a leader that dies are resent to the new one
/// under their sessions and sequence numbers; those the old leader committed are answered from
/// the session table, not applied again.
#[test]
fn a_leader_crash_mid_stream_applies_every_command_exactly_once() {
    let mut cluster = cluster();
    let old = leader(&cluster);
    let addresses = cluster.addresses();
    let stream = Stream::start(addresses.clone(), 32);
    stream.wait_for_progress(500);
    cluster.stop(old).expect("the leader stops");
    stream.wait_for_progress(500);
    let new = leader(&cluster);
    assert_ne!(new, old);
    let replies = stream.finish();
    let count = replies.len() as u64;
    assert_all_first_applications(replies);
    assert_applied_exactly_once(&cluster.addresses(), count);
    cluster.shutdown().expect("clean shutdown");
}

/// Thesis §3.10 in the middle of a stream: the old leader redirects the pipeline, which resends
/// what was in flight to the new leader; nothing is applied twice.
#[test]
fn a_leadership_transfer_mid_stream_applies_every_command_exactly_once() {
    let cluster = cluster();
    let old = leader(&cluster);
    let addresses = cluster.addresses();
    let stream = Stream::start(addresses.clone(), 32);
    stream.wait_for_progress(500);
    let target = cluster
        .ids()
        .iter()
        .copied()
        .find(|&id| id != old)
        .expect("another server");
    let mut admin = Client::new(addresses.clone()).with_timeout(TIMEOUT);
    admin
        .transfer_leadership(target)
        .expect("the transfer succeeds");
    stream.wait_for_progress(500);
    let replies = stream.finish();
    let count = replies.len() as u64;
    assert_all_first_applications(replies);
    assert_applied_exactly_once(&addresses, count);
    cluster.shutdown().expect("clean shutdown");
}

#[test]
fn a_follower_redirects_the_pipeline_to_the_leader() {
    let cluster = cluster();
    let leader = leader(&cluster);
    let addresses = cluster.addresses();
    // Only the follower first: the pipeline must learn the leader from its answer.
    let mut ordered: Vec<SocketAddr> = addresses.clone();
    ordered.rotate_left(leader.0 as usize % addresses.len());
    assert_ne!(ordered[0], addresses[(leader.0 - 1) as usize]);
    let mut pipeline = Pipeline::new(ordered, 16).with_timeout(TIMEOUT);
    let commands: Vec<String> = (0..200).map(|n| format!("c{n}")).collect();
    assert_all_first_applications(pipeline.propose_all(&commands));
    assert_applied_exactly_once(&addresses, 200);
    cluster.shutdown().expect("clean shutdown");
}

/// Thesis §6.4: a read submitted after a write completed sees it, with many reads in flight.
#[test]
fn pipelined_reads_see_the_writes_completed_before_them() {
    let cluster = cluster();
    leader(&cluster);
    let addresses = cluster.addresses();
    let mut pipeline = Pipeline::new(addresses.clone(), 32).with_timeout(TIMEOUT);
    for round in 1..=3 {
        let writes: Vec<String> = (0..100).map(|key| format!("put k{key} v{round}")).collect();
        assert_all_first_applications(pipeline.propose_all(&writes));
        let reads: Vec<_> = (0..100)
            .map(|key| (key, pipeline.submit_query(format!("get k{key}").as_bytes())))
            .collect();
        let mut answers = BTreeMap::new();
        while let Some(completion) = pipeline.next_completion() {
            answers.insert(completion.ticket, completion.result.expect("read"));
        }
        for (key, ticket) in reads {
            let value = String::from_utf8(answers.remove(&ticket).expect("answered")).unwrap();
            assert_eq!(value, format!("v{round}"), "k{key} in round {round}");
        }
    }
    // A write by another client, completed before the read is submitted, is seen too.
    let mut client = Client::new(addresses).with_timeout(TIMEOUT);
    client.propose(b"put other v7").expect("applied");
    pipeline.submit_query(b"get other");
    let completion = pipeline.next_completion().expect("in flight");
    assert_eq!(completion.result.expect("read"), b"v7");
    cluster.shutdown().expect("clean shutdown");
}
