//! Real server processes with durable `FileLog`s, killed with SIGKILL while a client writes.
//!
//! The writer sends each command at most once. A command is *acknowledged* when its `Applied`
//! reply arrives, and abandoned as indeterminate when the connection breaks after sending. It is
//! never re-sent, so a duplicate in a log can only come from a bug.
//!
//! The nemesis kills the leader, a follower, two servers at once, and the leader again,
//! restarting each from its data directory. Afterwards every server's log must hold every
//! acknowledged command exactly once, in acknowledgement order.
//!
//! Each server is this test binary run again with `MIORAFT_DURABILITY_CHILD` set, which makes
//! the `child_server` test run a server instead of returning at once.

use mioraft::framing::{FrameReader, MESSAGE_BYTES_MAX_DEFAULT};
use mioraft::log::{EntryKind, FileLog, PersistentLog};
use mioraft::wire::{self, ClientRequest, Preamble, RequestBody, ResponseBody};
use mioraft::{LogIndex, Metrics, Role, Server, ServerId, StateMachine};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "MIORAFT_DURABILITY_CHILD";

/// An application that only records what it applied.
struct Recorder(u64);

impl StateMachine for Recorder {
    fn apply(&mut self, _command: &[u8]) -> Vec<u8> {
        self.0 += 1;
        b"ok".to_vec()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        self.0 = snapshot
            .try_into()
            .map(u64::from_le_bytes)
            .unwrap_or_default();
    }
}

/// Runs one server when spawned as a child: `id;data-dir;id=addr,id=addr,...`.
#[test]
fn child_server() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(';').collect();
    let id = ServerId(parts[0].parse().expect("id"));
    let dir = PathBuf::from(parts[1]);
    let nodes: HashMap<ServerId, SocketAddr> = parts[2]
        .split(',')
        .map(|pair| {
            let (node, address) = pair.split_once('=').expect("id=address");
            (
                ServerId(node.parse().expect("node id")),
                address.parse().expect("address"),
            )
        })
        .collect();
    let address = nodes[&id];
    let peers = nodes.into_iter().filter(|&(node, _)| node != id).collect();
    let log = FileLog::open(&dir).expect("open the data directory");
    let result = Server::new(id, address, log, Recorder(0))
        .with_peers(peers)
        .with_election_timeout(Duration::from_millis(150), Duration::from_millis(300))
        .with_heartbeat_interval(Duration::from_millis(30))
        .run();
    panic!("server {id} stopped: {result:?}");
}

struct Cluster {
    nodes: Vec<(ServerId, SocketAddr, PathBuf)>,
    children: HashMap<ServerId, Child>,
    root: PathBuf,
}

impl Cluster {
    fn new(size: u64) -> Cluster {
        let root = std::env::temp_dir().join(format!("mioraft-durability-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the test directory");
        let nodes = (1..=size)
            .map(|id| {
                // Bound, read and released: restarted servers must come back on the same port.
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("address");
                (ServerId(id), address, root.join(format!("n{id}")))
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            children: HashMap::new(),
            root,
        };
        for id in 1..=size {
            cluster.start(ServerId(id));
        }
        cluster
    }

    fn start(&mut self, id: ServerId) {
        let all: Vec<String> = self
            .nodes
            .iter()
            .map(|(node, address, _)| format!("{}={address}", node.0))
            .collect();
        let (_, _, dir) = self.node(id);
        let spec = format!("{};{};{}", id.0, dir.display(), all.join(","));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("n{}.stderr", id.0)))
            .expect("open the server's stderr file");
        let child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start a server process");
        self.children.insert(id, child);
    }

    fn kill(&mut self, id: ServerId) {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    fn node(&self, id: ServerId) -> (ServerId, SocketAddr, PathBuf) {
        self.nodes
            .iter()
            .find(|(node, _, _)| *node == id)
            .cloned()
            .expect("known server")
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|&(_, address, _)| address).collect()
    }

    fn status(&self, id: ServerId) -> Option<Metrics> {
        let (_, address, _) = self.node(id);
        match single_request(address, RequestBody::Status, Duration::from_millis(500)) {
            Outcome::Answered(ResponseBody::Status(metrics)) => Some(metrics),
            _ => None,
        }
    }

    fn wait_for_leader(&self, among: &[ServerId]) -> ServerId {
        wait_until(
            "a leader among the running servers",
            Duration::from_secs(20),
            || {
                among.iter().copied().find(|&id| {
                    self.status(id)
                        .is_some_and(|metrics| metrics.role == Role::Leader)
                })
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.children.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
    }
}

enum Outcome {
    /// The server answered.
    Answered(ResponseBody),
    /// Nothing was sent: safe to send again elsewhere.
    NotSent,
    /// Sent, but no answer: the command may or may not be applied.
    Indeterminate,
}

/// One request on a fresh connection, never re-sent.
fn single_request(address: SocketAddr, body: RequestBody, timeout: Duration) -> Outcome {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, timeout) else {
        return Outcome::NotSent;
    };
    let _ = stream.set_nodelay(true);
    if stream
        .write_all(&wire::encode_preamble(&Preamble::Client(1)))
        .is_err()
    {
        return Outcome::NotSent;
    }
    let request = wire::encode_request(&ClientRequest {
        request_id: 1,
        body,
    });
    if stream.write_all(&request).is_err() {
        return Outcome::Indeterminate;
    }
    let _ = stream.set_read_timeout(Some(timeout));
    let mut frames = FrameReader::new(MESSAGE_BYTES_MAX_DEFAULT);
    let mut buffer = [0u8; 4096];
    loop {
        match frames.next_frame() {
            Ok(Some(frame)) => {
                return match wire::decode_response(&frame) {
                    Ok(response) => Outcome::Answered(response.body),
                    Err(_) => Outcome::Indeterminate,
                }
            }
            Ok(None) => {}
            Err(_) => return Outcome::Indeterminate,
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return Outcome::Indeterminate,
            Ok(read) => frames.extend(&buffer[..read]),
        }
    }
}

/// Writes `w<n>` commands until told to stop; returns the acknowledged ones in order.
fn writer(addresses: Vec<SocketAddr>, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<u64>>>) {
    let mut target = 0usize;
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let address = addresses[target % addresses.len()];
        let command = format!("w{next}").into_bytes();
        match single_request(
            address,
            RequestBody::Propose(command),
            Duration::from_secs(2),
        ) {
            Outcome::Answered(ResponseBody::Applied(_)) => {
                acked.lock().expect("lock").push(next);
                next += 1;
            }
            Outcome::Answered(ResponseBody::NotLeader { leader_address, .. }) => {
                // Nothing was appended: the same command may go to the leader.
                match addresses
                    .iter()
                    .position(|a| a.to_string() == leader_address)
                {
                    Some(position) => target = position,
                    None => target += 1,
                }
            }
            Outcome::Answered(_) | Outcome::NotSent => {
                target += 1;
                thread::sleep(Duration::from_millis(20));
            }
            Outcome::Indeterminate => {
                // Perhaps applied: never send it again.
                next += 1;
                target += 1;
            }
        }
    }
}

fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_more_acks(acked: &Mutex<Vec<u64>>, more: usize, what: &str) {
    let start = acked.lock().expect("lock").len();
    wait_until(what, Duration::from_secs(30), || {
        (acked.lock().expect("lock").len() >= start + more).then_some(())
    });
}

/// The commands in a server's log up to `commit`, as write numbers.
fn logged_writes(dir: &Path, commit: LogIndex) -> Vec<u64> {
    let log = FileLog::open(dir).expect("reopen a data directory");
    let entries = log
        .entries(LogIndex(1), commit.next(), u64::MAX)
        .expect("read the log");
    assert_eq!(
        entries.len() as u64,
        commit.0,
        "{} holds its committed entries",
        dir.display()
    );
    entries
        .into_iter()
        .filter(|entry| entry.kind == EntryKind::Command)
        .map(|entry| {
            let text = String::from_utf8_lossy(&entry.data).into_owned();
            text.strip_prefix('w')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected command {text:?} in {}", dir.display()))
        })
        .collect()
}

#[test]
fn acknowledged_writes_survive_sigkill_of_leaders_followers_and_two_nodes_at_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let mut cluster = Cluster::new(3);
    let all: Vec<ServerId> = (1..=3).map(ServerId).collect();
    cluster.wait_for_leader(&all);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer_thread = {
        let (addresses, stop, acked) = (cluster.addresses(), stop.clone(), acked.clone());
        thread::spawn(move || writer(addresses, stop, acked))
    };
    wait_for_more_acks(&acked, 50, "writes to start");

    // The leader, killed and brought back.
    let leader = cluster.wait_for_leader(&all);
    cluster.kill(leader);
    wait_for_more_acks(&acked, 50, "writes after killing the leader");
    cluster.start(leader);

    // A follower.
    let leader = cluster.wait_for_leader(&all);
    let follower = all
        .iter()
        .copied()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill(follower);
    wait_for_more_acks(&acked, 50, "writes without a follower");
    cluster.start(follower);

    // Two at once: no majority until they return.
    let leader = cluster.wait_for_leader(&all);
    let others: Vec<ServerId> = all.iter().copied().filter(|&id| id != leader).collect();
    cluster.kill(leader);
    cluster.kill(others[0]);
    thread::sleep(Duration::from_millis(300)); // let the writer hit the outage (not a sync point)
    cluster.start(leader);
    cluster.start(others[0]);
    wait_for_more_acks(&acked, 50, "writes after two servers came back");

    // The leader once more.
    let leader = cluster.wait_for_leader(&all);
    cluster.kill(leader);
    cluster.start(leader);
    wait_for_more_acks(&acked, 50, "writes after the last restart");

    stop.store(true, Ordering::Relaxed);
    writer_thread.join().expect("the writer finishes");
    let acked = acked.lock().expect("lock").clone();

    // Every server catches up to the same commit index.
    let commit = wait_until(
        "every server to apply the same prefix",
        Duration::from_secs(30),
        || {
            let metrics: Vec<Metrics> = all.iter().filter_map(|&id| cluster.status(id)).collect();
            let commit = metrics.first()?.commit_index;
            (metrics.len() == all.len()
                && metrics
                    .iter()
                    .all(|m| m.commit_index == commit && m.last_applied == commit))
            .then_some(commit)
        },
    );
    for id in all.clone() {
        cluster.kill(id);
    }
    for id in all {
        let (_, _, dir) = cluster.node(id);
        let logged = logged_writes(&dir, commit);
        let mut seen = HashSet::new();
        for write in &logged {
            assert!(seen.insert(*write), "{id} holds w{write} twice");
        }
        let positions: HashMap<u64, usize> =
            logged.iter().enumerate().map(|(p, &w)| (w, p)).collect();
        let mut previous = None;
        for write in &acked {
            let position = positions
                .get(write)
                .unwrap_or_else(|| panic!("{id} lost acknowledged write w{write}"));
            assert!(
                previous.is_none_or(|p| p < *position),
                "{id} holds w{write} out of acknowledgement order"
            );
            previous = Some(*position);
        }
        eprintln!(
            "{id}: {} commands logged, all {} acknowledged present once, in order",
            logged.len(),
            acked.len()
        );
    }
    let _ = std::fs::remove_dir_all(&cluster.root);
}
