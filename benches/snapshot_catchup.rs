//! Catch-up by snapshot (§7): how long a follower whose data directory was wiped takes to hold
//! the cluster's state again, and the peak memory of the leader and that follower meanwhile.
//!
//! Run: `cargo bench --bench snapshot_catchup -- [--keys N] [--value-bytes B] [--clients C]
//! [--chunk-bytes K]`. Defaults: 100,000 keys of 1,000-byte values (~100 MB of state), 16
//! clients, 1 MiB chunks.
//!
//! Three servers run as separate processes (this program started again with `--serve`), each
//! with a `FileLog` in a temporary directory, on 127.0.0.1. The program loads the state through
//! clients, waits until the servers have snapshotted it, kills one follower, wipes its
//! directory, restarts it and times until it has applied the leader's commit index. Peak memory
//! is each process's `VmHWM` from `/proc/<pid>/status`; the leader's is reset (`clear_refs`)
//! just before the restart, so it covers the transfer only.

use mioraft::consensus::Config;
use mioraft::log::FileLog;
use mioraft::{Client, KvStateMachine, Role, Server, ServerId};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Options {
    keys: u64,
    value_bytes: usize,
    clients: u64,
    chunk_bytes: u64,
}

fn options(args: &[String]) -> Options {
    let mut options = Options {
        keys: 100_000,
        value_bytes: 1_000,
        clients: 16,
        chunk_bytes: 1 << 20,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--keys" => options.keys = number("--keys").max(1),
            "--value-bytes" => options.value_bytes = number("--value-bytes") as usize,
            "--clients" => options.clients = number("--clients").max(1),
            "--chunk-bytes" => options.chunk_bytes = number("--chunk-bytes").max(1),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        serve(&args[1..]);
        return;
    }
    let options = options(&args);
    let root = tempfile::tempdir().expect("a temporary directory");
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|_| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address")
        })
        .collect();
    // Snapshot once the whole load is applied (keys + a few entries of bookkeeping), and not
    // before, so the snapshot holds the whole state.
    let snapshot_entries = options.keys + options.clients + 16;
    let mut servers: Vec<Option<Child>> = (0..3)
        .map(|index| {
            Some(start_server(
                index,
                &addresses,
                root.path(),
                snapshot_entries,
                options.chunk_bytes,
            ))
        })
        .collect();

    let state_bytes = options.keys * (options.value_bytes as u64 + 8);
    println!(
        "loading {} keys of {} bytes (~{:.0} MB of state) with {} clients",
        options.keys,
        options.value_bytes,
        state_bytes as f64 / 1e6,
        options.clients
    );
    let started = Instant::now();
    load(&addresses, &options);
    println!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    // Pad with small writes until every server has taken its snapshot.
    let mut client = Client::new(addresses.clone()).with_timeout(Duration::from_secs(30));
    let mut pad = 0;
    while (0..3).any(|index| {
        status(&mut client, addresses[index])
            .snapshot_index
            .is_zero()
    }) {
        client
            .propose(format!("put pad {pad}").as_bytes())
            .expect("pad write");
        pad += 1;
    }
    let leader = wait_for_leader(&mut client, &addresses);
    let follower = (0..3).find(|&index| index != leader).expect("a follower");
    let leader_metrics = status(&mut client, addresses[leader]);
    let snapshot_file_bytes = largest_file(&root.path().join(format!("n{}", leader + 1)));
    println!(
        "leader n{} in term {}: snapshot through {}, commit {}; largest file in its directory \
         {:.1} MB",
        leader + 1,
        leader_metrics.current_term,
        leader_metrics.snapshot_index,
        leader_metrics.commit_index,
        snapshot_file_bytes as f64 / 1e6
    );

    // Wipe the follower and bring it back.
    let mut child = servers[follower].take().expect("running");
    let _ = child.kill();
    let _ = child.wait();
    let follower_dir = root.path().join(format!("n{}", follower + 1));
    std::fs::remove_dir_all(&follower_dir).expect("wipe the follower");
    let leader_pid = servers[leader].as_ref().expect("running").id();
    let leader_rss_before = memory_kib(leader_pid, "VmRSS");
    std::fs::write(format!("/proc/{leader_pid}/clear_refs"), "5").expect("reset VmHWM");
    let target = status(&mut client, addresses[leader]).commit_index;
    let started = Instant::now();
    servers[follower] = Some(start_server(
        follower,
        &addresses,
        root.path(),
        snapshot_entries,
        options.chunk_bytes,
    ));
    let follower_pid = servers[follower].as_ref().expect("running").id();
    let mut follower_peak = 0;
    let mut leader_peak = 0;
    loop {
        follower_peak = follower_peak.max(memory_kib(follower_pid, "VmHWM"));
        leader_peak = leader_peak.max(memory_kib(leader_pid, "VmHWM"));
        if let Ok(metrics) = Client::new([addresses[follower]])
            .with_timeout(Duration::from_millis(200))
            .status(addresses[follower])
        {
            if metrics.last_applied >= target {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the follower did not catch up in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    follower_peak = follower_peak.max(memory_kib(follower_pid, "VmHWM"));
    leader_peak = leader_peak.max(memory_kib(leader_pid, "VmHWM"));
    let follower_metrics = status(&mut client, addresses[follower]);
    println!(
        "wiped follower n{} caught up to index {target} in {:.2} s (snapshot through {})",
        follower + 1,
        elapsed.as_secs_f64(),
        follower_metrics.snapshot_index
    );
    println!(
        "peak memory during the transfer: leader {:.0} MB (resident before {:.0} MB), follower \
         {:.0} MB; snapshot file {:.0} MB",
        leader_peak as f64 / 1024.0,
        leader_rss_before as f64 / 1024.0,
        follower_peak as f64 / 1024.0,
        snapshot_file_bytes as f64 / 1e6
    );
    for mut child in servers.into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Writes every key once, spread over the clients.
fn load(addresses: &[SocketAddr], options: &Options) {
    let value = "v".repeat(options.value_bytes);
    std::thread::scope(|scope| {
        for client_index in 0..options.clients {
            let value = &value;
            scope.spawn(move || {
                let mut client =
                    Client::new(addresses.to_vec()).with_timeout(Duration::from_secs(30));
                let mut key = client_index;
                while key < options.keys {
                    client
                        .propose(format!("put k{key:08} {value}").as_bytes())
                        .expect("load write");
                    key += options.clients;
                }
            });
        }
    });
}

fn status(client: &mut Client, address: SocketAddr) -> mioraft::Metrics {
    client.status(address).expect("status")
}

fn wait_for_leader(client: &mut Client, addresses: &[SocketAddr]) -> usize {
    loop {
        for (index, &address) in addresses.iter().enumerate() {
            if client.status(address).is_ok_and(|m| m.role == Role::Leader) {
                return index;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `/proc/<pid>/status` field in KiB (0 if unreadable).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .map(|metadata| metadata.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn start_server(
    index: usize,
    addresses: &[SocketAddr],
    root: &Path,
    snapshot_entries: u64,
    chunk_bytes: u64,
) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("this program"));
    command
        .arg("--serve")
        .arg((index + 1).to_string())
        .arg(root.join(format!("n{}", index + 1)))
        .arg(snapshot_entries.to_string())
        .arg(chunk_bytes.to_string());
    for address in addresses {
        command.arg(address.to_string());
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start a server process")
}

/// `--serve <id> <dir> <snapshot-entries> <chunk-bytes> <address>...`: one server, until killed.
fn serve(args: &[String]) {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
    let id: u64 = args[0].parse().expect("id");
    let dir = PathBuf::from(&args[1]);
    let snapshot_entries: u64 = args[2].parse().expect("snapshot entries");
    let chunk_bytes: u64 = args[3].parse().expect("chunk bytes");
    let addresses: Vec<SocketAddr> = args[4..]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    let peers: HashMap<ServerId, SocketAddr> = addresses
        .iter()
        .zip(1..)
        .map(|(&address, peer)| (ServerId(peer), address))
        .collect();
    std::fs::create_dir_all(&dir).expect("data directory");
    let log = FileLog::open(&dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let config = Config {
        snapshot_entries,
        snapshot_bytes: u64::MAX,
        snapshot_chunk_bytes: chunk_bytes,
        ..Config::default()
    };
    let result = Server::new(
        ServerId(id),
        peers[&ServerId(id)],
        log,
        KvStateMachine::new(),
    )
    .with_peers(peers)
    .with_config(config)
    .with_message_bytes_max((chunk_bytes * 2).max(4 << 20))
    .run();
    if let Err(error) = result {
        eprintln!("server {id}: {error}");
        std::process::exit(1);
    }
}
