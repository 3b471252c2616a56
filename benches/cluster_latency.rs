//! Clients proposing to (or reading from) a 3-server cluster on 127.0.0.1, over real sockets and
//! the Cap'n Proto wire: operations per second and latency percentiles.
//!
//! Run: `cargo bench --bench cluster_latency -- [--file] [--reads] [--clients N] [--proposals N]`.
//! `--file` keeps each server's log in a `FileLog` (fsync on every sync) in a temporary
//! directory; the default is `MemLog`. `--reads` measures linearizable reads (`Client::query`,
//! ReadIndex) instead of proposals. Each client has one operation outstanding at a time.

use hdrhistogram::Histogram;
use mioraft::log::FileLog;
use mioraft::server::LocalCluster;
use mioraft::{Client, KvStateMachine, MemLog, PersistentLog};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Options {
    file: bool,
    reads: bool,
    clients: u64,
    proposals: u64,
}

fn options() -> Options {
    let mut options = Options {
        file: false,
        reads: false,
        clients: 1,
        proposals: 20_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--file" => options.file = true,
            "--reads" => options.reads = true,
            "--clients" => options.clients = number("--clients").max(1),
            "--proposals" => options.proposals = number("--proposals"),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

/// Runs `per_client` proposals (or reads) on each of `clients` threads; returns (operations/s,
/// latencies).
fn drive(
    addresses: &[SocketAddr],
    clients: u64,
    per_client: u64,
    reads: bool,
) -> (f64, Histogram<u64>) {
    // Warm up: find the leader and settle connections.
    let mut warm = Client::new(addresses.to_vec());
    for n in 0..100 {
        warm.propose(format!("put warm {n}").as_bytes())
            .expect("warm-up proposal");
    }
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client_number| {
            let addresses = addresses.to_vec();
            std::thread::spawn(move || {
                let mut client = Client::new(addresses).with_timeout(Duration::from_secs(30));
                let mut latencies = Histogram::<u64>::new(3).expect("histogram");
                for n in 0..per_client {
                    let sent = Instant::now();
                    if reads {
                        client
                            .query(format!("get warm {}", n % 100).as_bytes())
                            .expect("read answered");
                    } else {
                        let command = format!("put c{client_number}k{} {n}", n % 64);
                        client
                            .propose(command.as_bytes())
                            .expect("proposal applied");
                    }
                    latencies
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("latency fits");
                }
                latencies
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for thread in threads {
        all.add(thread.join().expect("client thread"))
            .expect("merge");
    }
    let rate = (clients * per_client) as f64 / started.elapsed().as_secs_f64();
    (rate, all)
}

fn run<L: PersistentLog + Send + 'static>(
    options: &Options,
    storage: &str,
    make_log: impl Fn(mioraft::ServerId) -> L,
) {
    let cluster =
        LocalCluster::spawn(3, make_log, |_| KvStateMachine::new(), |b| b).expect("servers start");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader is elected");
    let per_client = (options.proposals / options.clients).max(1);
    let (rate, latencies) = drive(
        &cluster.addresses(),
        options.clients,
        per_client,
        options.reads,
    );
    let what = if options.reads {
        "linearizable reads"
    } else {
        "proposals"
    };
    println!(
        "mioraft: {} client(s), 3 servers on 127.0.0.1, {storage}, {} {what}",
        options.clients,
        per_client * options.clients
    );
    println!(
        "  {rate:.0} {what}/s; latency p50 {} us, p99 {} us, max {} us",
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.99),
        latencies.max()
    );
    cluster.shutdown().expect("clean shutdown");
}

fn main() {
    let options = options();
    if options.file {
        let root: PathBuf =
            std::env::temp_dir().join(format!("mioraft-bench-{}", std::process::id()));
        run(&options, "FileLog with fsync", |id| {
            FileLog::open(root.join(format!("n{}", id.0))).expect("open a data directory")
        });
        let _ = std::fs::remove_dir_all(&root);
    } else {
        run(&options, "MemLog", |_| MemLog::new());
    }
}
