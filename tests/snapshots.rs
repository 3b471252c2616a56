//! Snapshots and log compaction (§7) end to end: servers on 127.0.0.1 with durable `FileLog`s in
//! temporary directories, driven by the blocking `Client`.
//!
//! * A follower whose data directory was wiped, or that was down while the others compacted,
//!   catches up by snapshot and then holds the same state as the others.
//! * Restarting after a snapshot replays only the log after it.
//! * A corrupt snapshot file is refused with its path.
//! * A million small writes leave a data directory bounded by the state, not the write count.
//!
//! Every wait polls a condition against a deadline.

mod support;

use mioraft::consensus::{Config, Consensus, Event, ProposalId, Timer};
use mioraft::log::{FileLog, FileLogOptions};
use mioraft::{
    Client, KvStateMachine, LogIndex, Metrics, PersistentLog, Role, Server, ServerHandle, ServerId,
    StateMachine,
};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::init_logging;

/// The longest any condition may take to come true.
const WAIT: Duration = Duration::from_secs(30);
/// Polls `probe` until it returns `Ok`, failing after [`WAIT`] (snapshots of a busy cluster take
/// longer than the shared default).
fn wait_for<T>(what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    support::wait_for_within(WAIT, what, probe)
}

/// What a server's state machine looks like from outside: its digest of every command applied
/// (equal digests, equal histories) and how many commands it applied since it started or last
/// restored a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    digest: u64,
    applied_since_restore: u64,
    restores: u64,
}

/// A `KvStateMachine` that publishes what it holds after every change.
struct Watched {
    inner: KvStateMachine,
    seen: Arc<Mutex<Seen>>,
}

impl Watched {
    fn publish(&self, restored: bool) {
        let mut seen = self.seen.lock().expect("not poisoned");
        seen.digest = self.inner.digest();
        seen.applied_since_restore = self.inner.applied_count();
        seen.restores += u64::from(restored);
    }
}

impl StateMachine for Watched {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let reply = self.inner.apply(command);
        self.publish(false);
        reply
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.inner.query(query)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }
    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        self.inner.restore_snapshot(snapshot);
        self.publish(true);
    }
    fn validate(&self, command: &[u8]) -> Result<(), Vec<u8>> {
        self.inner.validate(command)
    }
}

/// Snapshot every 50 entries, keeping 10 behind, in 4 KiB chunks: small enough that the tests
/// compact many times and a transfer spans many chunks.
fn snapshot_config() -> Config {
    Config {
        snapshot_entries: 50,
        snapshot_keep_entries: 10,
        snapshot_chunk_bytes: 4096,
        ..Config::default()
    }
}

/// 4 KiB segments, so compaction (which deletes whole segments) happens within a test's few
/// hundred writes.
fn small_segments() -> FileLogOptions {
    FileLogOptions {
        segment_bytes_max: 4 << 10,
    }
}

struct Node {
    address: SocketAddr,
    dir: PathBuf,
    handle: Option<ServerHandle>,
    seen: Arc<Mutex<Seen>>,
}

struct Cluster {
    _root: tempfile::TempDir,
    nodes: Vec<Node>,
    config: Config,
}

impl Cluster {
    fn start(size: u64, config: Config) -> Cluster {
        init_logging();
        let root = tempfile::tempdir().expect("a temporary directory");
        let nodes = (1..=size)
            .map(|id| {
                // Bound, read and released: a restarted server comes back on the same port.
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                Node {
                    address: listener.local_addr().expect("address"),
                    dir: root.path().join(format!("n{id}")),
                    handle: None,
                    seen: Arc::default(),
                }
            })
            .collect();
        let mut cluster = Cluster {
            _root: root,
            nodes,
            config,
        };
        for id in 1..=size {
            cluster.boot(id);
        }
        cluster
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.address).collect()
    }

    /// Starts server `id` from its data directory (creating it if missing).
    fn boot(&mut self, id: u64) {
        let peers: HashMap<ServerId, SocketAddr> = self
            .nodes
            .iter()
            .zip(1..)
            .map(|(node, peer)| (ServerId(peer), node.address))
            .collect();
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.handle.is_none(), "n{id} is running");
        *node.seen.lock().expect("not poisoned") = Seen::default();
        let log = FileLog::open_with(&node.dir, small_segments())
            .unwrap_or_else(|error| panic!("open {}: {error}", node.dir.display()));
        let machine = Watched {
            inner: KvStateMachine::new(),
            seen: Arc::clone(&node.seen),
        };
        let handle = Server::new(ServerId(id), node.address, log, machine)
            .with_peers(peers)
            .with_config(self.config.clone())
            .spawn()
            .unwrap_or_else(|error| panic!("start n{id}: {error}"));
        node.handle = Some(handle);
    }

    fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(handle) = node.handle.take() {
            handle.shutdown().expect("clean shutdown");
        }
    }

    fn metrics(&self, id: u64) -> Metrics {
        self.nodes[(id - 1) as usize]
            .handle
            .as_ref()
            .expect("running")
            .metrics()
    }

    fn seen(&self, id: u64) -> Seen {
        *self.nodes[(id - 1) as usize]
            .seen
            .lock()
            .expect("not poisoned")
    }

    fn leader(&self) -> u64 {
        wait_for("a leader", || {
            (1..=self.nodes.len() as u64)
                .filter(|&id| self.nodes[(id - 1) as usize].handle.is_some())
                .find(|&id| self.metrics(id).role == Role::Leader)
                .ok_or_else(|| "no leader".to_owned())
        })
    }

    /// Waits until every running server has applied what the leader has committed, and checks
    /// that they all hold the same state.
    fn wait_converged(&self) {
        let leader = self.leader();
        let target = self.metrics(leader).commit_index;
        let running: Vec<u64> = (1..=self.nodes.len() as u64)
            .filter(|&id| self.nodes[(id - 1) as usize].handle.is_some())
            .collect();
        wait_for("every server to apply the leader's commit index", || {
            let behind: Vec<(u64, LogIndex)> = running
                .iter()
                .map(|&id| (id, self.metrics(id).last_applied))
                .filter(|&(_, applied)| applied < target)
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("target {target}, behind: {behind:?}"))
            }
        });
        wait_for("equal state machines", || {
            let digests: Vec<(u64, LogIndex, u64)> = running
                .iter()
                .map(|&id| (id, self.metrics(id).last_applied, self.seen(id).digest))
                .collect();
            let first = digests[0];
            if digests
                .iter()
                .all(|&(_, applied, digest)| applied == first.1 && digest == first.2)
            {
                Ok(())
            } else {
                Err(format!("(server, applied, digest): {digests:?}"))
            }
        });
    }

    fn write(&self, client: &mut Client, range: std::ops::Range<u64>) {
        for n in range {
            client
                .propose(format!("put k{} value-{n:0100}", n % 37).as_bytes())
                .unwrap_or_else(|error| panic!("write {n}: {error}"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(handle) = node.handle.take() {
                let _ = handle.shutdown();
            }
        }
    }
}

/// §7: the servers that stayed up compacted their logs past everything a follower holds; that
/// follower, restarted from its directory, catches up by snapshot.
#[test]
fn a_follower_down_while_the_cluster_compacted_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, snapshot_config());
    let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(20));
    cluster.write(&mut client, 0..20);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.wait_converged();
    cluster.stop(follower);
    cluster.write(&mut client, 20..300);
    let leader_metrics = cluster.metrics(leader);
    assert!(
        leader_metrics.first_log_index > cluster_first_needed(&cluster, follower),
        "the leader compacted past the follower's log: {leader_metrics:?}"
    );
    cluster.boot(follower);
    cluster.wait_converged();
    let caught_up = cluster.metrics(follower);
    assert!(
        caught_up.snapshot_index > LogIndex(20),
        "caught up by snapshot: {caught_up:?}"
    );
    // It stopped before the first snapshot (every 50 entries), so what it restored came from
    // the leader. (On a loaded machine the leader may compact past it once more before it has
    // caught up by appends, and send a newer snapshot: more than one restore is fine.)
    assert!(
        cluster.seen(follower).restores >= 1,
        "restored the leader's snapshot"
    );
}

/// The index after the last one `follower` held when it stopped (what it would need next).
fn cluster_first_needed(cluster: &Cluster, follower: u64) -> LogIndex {
    let log = FileLog::open_with(
        &cluster.nodes[(follower - 1) as usize].dir,
        small_segments(),
    )
    .expect("open");
    log.latest_log_index().next()
}

/// §7: a follower whose data directory is wiped comes back empty and is brought up to date by
/// a snapshot; its state machine then equals the others'.
#[test]
fn a_wiped_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, snapshot_config());
    let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(20));
    cluster.write(&mut client, 0..200);
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.wait_converged();
    cluster.stop(follower);
    let dir = cluster.nodes[(follower - 1) as usize].dir.clone();
    std::fs::remove_dir_all(&dir).expect("wipe the data directory");
    cluster.write(&mut client, 200..260);
    cluster.boot(follower);
    cluster.wait_converged();
    let caught_up = cluster.metrics(follower);
    assert_eq!(
        cluster.seen(follower).restores,
        1,
        "an empty server restored a snapshot: the leader's: {caught_up:?}"
    );
    assert!(
        caught_up.first_log_index > LogIndex(1),
        "holds no replayed history: {caught_up:?}"
    );
    // And it keeps up with new writes by appends.
    cluster.write(&mut client, 260..280);
    cluster.wait_converged();
}

/// §7: a server restarted after a snapshot restores it and replays only the entries after it.
#[test]
fn a_restart_replays_only_the_log_after_the_snapshot() {
    let mut cluster = Cluster::start(1, snapshot_config());
    let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(20));
    cluster.write(&mut client, 0..130);
    cluster.wait_converged();
    let before = cluster.metrics(1);
    let digest = cluster.seen(1).digest;
    assert!(
        before.snapshot_index > LogIndex(0) && before.snapshot_index < before.last_applied,
        "a snapshot, and entries after it: {before:?}"
    );
    cluster.stop(1);

    cluster.boot(1);
    // Until its new term's no-op is applied, everything before it is too.
    wait_for("the restarted server to apply its new term's no-op", || {
        let metrics = cluster.metrics(1);
        if metrics.last_applied > before.last_applied {
            Ok(())
        } else {
            Err(format!("{metrics:?}"))
        }
    });
    let after = cluster.metrics(1);
    let seen = cluster.seen(1);
    assert_eq!(seen.restores, 1);
    // Every entry after the snapshot (up to the old last index) is a command of this test.
    assert_eq!(
        seen.applied_since_restore,
        before.last_applied.0 - before.snapshot_index.0,
        "replayed only the suffix: {after:?}"
    );
    assert_eq!(seen.digest, digest, "the same state as before the restart");
}

/// §7: a snapshot file whose bytes no longer match its checksum is refused with its path, so
/// the server does not start from it.
#[test]
fn a_corrupt_snapshot_file_is_refused_with_its_path() {
    let mut cluster = Cluster::start(1, snapshot_config());
    let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(20));
    cluster.write(&mut client, 0..60);
    cluster.wait_converged();
    assert!(cluster.metrics(1).snapshot_index > LogIndex(0));
    cluster.stop(1);
    let dir = cluster.nodes[0].dir.clone();
    let snapshot = snapshot_file(&dir);
    let mut bytes = std::fs::read(&snapshot).expect("read the snapshot");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&snapshot, bytes).expect("corrupt the snapshot");
    let error = FileLog::open_with(&dir, small_segments())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&snapshot.display().to_string()),
        "the error names {}: {error}",
        snapshot.display()
    );
}

/// The snapshot file in a FileLog directory (the one whose name starts with "snapshot" and is
/// not a temporary file).
fn snapshot_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("snapshot") && !name.contains("tmp")
        })
        .unwrap_or_else(|| panic!("no snapshot file in {}", dir.display()))
}

fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// §7: with continuous writes the data directory stays bounded by a small multiple of the
/// state, not by the number of writes: a million small writes to 50,000 keys through one
/// server's consensus core and a `FileLog` (2 MiB segments), snapshotting every 20,000 entries.
#[test]
fn a_million_writes_leave_a_bounded_data_directory() {
    const WRITES: u64 = 1_000_000;
    const KEYS: u64 = 50_000;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = FileLog::open_with(
        dir.path(),
        FileLogOptions {
            segment_bytes_max: 2 << 20,
        },
    )
    .expect("open");
    let config = Config {
        snapshot_entries: 20_000,
        ..Config::default()
    };
    let mut node = Consensus::new(
        ServerId(1),
        vec![ServerId(1)],
        log,
        KvStateMachine::new(),
        config,
        1,
    )
    .expect("a valid server");
    let _ = node.start();
    let _ = node
        .step(Event::Timeout(Timer::Election))
        .expect("campaign");
    let _ = node.sync().expect("sync");
    let mut largest = 0;
    let mut written = 0;
    for n in 0..WRITES {
        let command = format!("put key{:05} {n:030}", n % KEYS).into_bytes();
        written += command.len() as u64;
        let _ = node
            .step(Event::ClientProposal {
                id: ProposalId(n),
                command,
            })
            .expect("propose");
        if n % 1_000 == 999 {
            let _ = node.sync().expect("sync");
            largest = largest.max(directory_bytes(dir.path()));
        }
    }
    let _ = node.sync().expect("sync");
    assert_eq!(node.last_applied(), LogIndex(WRITES + 1));
    let state = node.state_machine().snapshot().len() as u64;
    eprintln!(
        "{WRITES} writes ({written} bytes of commands): state {state} bytes, data directory at \
         most {largest} bytes ({:.1}x the state)",
        largest as f64 / state as f64
    );
    assert!(
        largest <= 6 * state,
        "directory grew to {largest} bytes for {state} bytes of state"
    );
}
