//! The schema is the whole protocol (DESIGN.md §4): a client written in Python from
//! `schema/messages.capnp` alone (`clients/python/mioraft_client.py`, pycapnp) proposes and
//! queries against a real 3-server cluster.
//!
//! Needs `python3` with `pycapnp` (`pip install pycapnp`); CI installs it. Elsewhere the test
//! says how to install it and passes without running, unless `CI` is set.

use mioraft::server::LocalCluster;
use mioraft::{KvStateMachine, MemLog};
use std::process::Command;
use std::time::Duration;

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
    let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)
        .expect("servers start");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader is elected");
    let addresses: Vec<String> = cluster
        .addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    let previous = python_client(&["propose", "put language python"], &addresses);
    assert_eq!(previous, "", "a new key has no previous value");
    assert_eq!(
        python_client(&["query", "get language"], &addresses),
        "python"
    );
    cluster.shutdown().expect("clean shutdown");
}
