//! One client against a 3-server cluster on 127.0.0.1 with MemLog: proposals per second and
//! latency percentiles, over real sockets and the Cap'n Proto wire.
//!
//! Run: `cargo bench --bench cluster_latency` (optionally `-- <proposals>`).

use hdrhistogram::Histogram;
use mioraft::{Client, KvStateMachine, MemLog, Role, Server, ServerHandle, ServerId};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

fn start_cluster() -> Vec<ServerHandle> {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a local port"))
        .collect();
    let addresses: Vec<SocketAddr> = listeners
        .iter()
        .map(|listener| listener.local_addr().expect("bound address"))
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(position, listener)| {
            let id = ServerId(position as u64 + 1);
            let peers: HashMap<ServerId, SocketAddr> = addresses
                .iter()
                .enumerate()
                .filter(|&(other, _)| other != position)
                .map(|(other, &address)| (ServerId(other as u64 + 1), address))
                .collect();
            Server::new(
                id,
                addresses[position],
                MemLog::new(),
                KvStateMachine::new(),
            )
            .with_listener(listener)
            .with_peers(peers)
            .spawn()
            .expect("server starts")
        })
        .collect()
}

fn main() {
    let proposals: u64 = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(20_000);
    let servers = start_cluster();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers.iter().any(|s| s.metrics().role == Role::Leader) {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let addresses: Vec<SocketAddr> = servers.iter().map(ServerHandle::local_addr).collect();
    let mut client = Client::new(addresses);
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
    for server in servers {
        server.shutdown().expect("clean shutdown");
    }
}
