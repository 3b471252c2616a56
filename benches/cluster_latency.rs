//! One client against a 3-server cluster on 127.0.0.1 with MemLog: proposals per second and
//! latency percentiles, over real sockets and the Cap'n Proto wire.
//!
//! Run: `cargo bench --bench cluster_latency` (optionally `-- <proposals>`).

use hdrhistogram::Histogram;
use mioraft::server::LocalCluster;
use mioraft::{Client, KvStateMachine, MemLog};
use std::time::{Duration, Instant};

fn main() {
    let proposals: u64 = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(20_000);
    let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)
        .expect("servers start");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader is elected");
    let mut client = Client::new(cluster.addresses());
    // Warm up: find the leader and settle connections.
    for n in 0..100 {
        client
            .propose(format!("put warm {n}").as_bytes())
            .expect("warm-up proposal");
    }
    let mut latencies = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for n in 0..proposals {
        let sent = Instant::now();
        client
            .propose(format!("put key{} {n}", n % 1024).as_bytes())
            .expect("proposal applied");
        latencies
            .record(sent.elapsed().as_micros() as u64)
            .expect("latency fits");
    }
    let elapsed = started.elapsed();
    println!("mioraft: 1 client, 3 servers on 127.0.0.1, MemLog, {proposals} proposals");
    println!(
        "  {:.0} proposals/s; latency p50 {} us, p99 {} us, max {} us",
        proposals as f64 / elapsed.as_secs_f64(),
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.99),
        latencies.max()
    );
    cluster.shutdown().expect("clean shutdown");
}
