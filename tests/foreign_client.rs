//! The schema is the whole protocol (DESIGN.md §4): a client written in Python from
//! `schema/messages.capnp` alone (`clients/python/mioraft_client.py`, pycapnp) proposes and
//! queries against a real 3-server cluster.
//!
//! Needs `python3` with `pycapnp` (`pip install pycapnp`); CI installs it. Elsewhere the test
//! says how to install it and passes without running, unless `CI` is set.

use mioraft::{KvStateMachine, MemLog, Role, Server, ServerHandle, ServerId};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/clients/python/mioraft_client.py"
);

fn python_with_pycapnp() -> bool {
    Command::new("python3")
        .args(["-c", "import capnp"])
        .output()
        .is_ok_and(|output| output.status.success())
}

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
            let peers: HashMap<ServerId, SocketAddr> = addresses
                .iter()
                .enumerate()
                .filter(|&(other, _)| other != position)
                .map(|(other, &address)| (ServerId(other as u64 + 1), address))
                .collect();
            let id = ServerId(position as u64 + 1);
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

fn python_client(args: &[&str], addresses: &[String]) -> String {
    let output = Command::new("python3")
        .arg(CLIENT)
        .args(args)
        .args(addresses)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python client {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn python_client_written_from_the_schema_alone_proposes_and_queries() {
    if !python_with_pycapnp() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide python3 with pycapnp"
        );
        eprintln!("skipped: python3 with pycapnp not found (pip install pycapnp)");
        return;
    }
    let servers = start_cluster();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers.iter().any(|s| s.metrics().role == Role::Leader) {
        let roles: Vec<Role> = servers.iter().map(|s| s.metrics().role).collect();
        assert!(
            Instant::now() < deadline,
            "no leader within 10 s: {roles:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let addresses: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    let previous = python_client(&["propose", "put language python"], &addresses);
    assert_eq!(previous, "", "a new key has no previous value");
    assert_eq!(
        python_client(&["query", "get language"], &addresses),
        "python"
    );
    for server in servers {
        server.shutdown().expect("clean shutdown");
    }
}
