//! A replicated register on mioraft: one value, `get`/`put`/`cas`.
//!
//! ```text
//! cargo run --release --example register -- server 1  1 127.0.0.1:9101  2 127.0.0.1:9102  3 127.0.0.1:9103
//! cargo run --release --example register -- put hello  127.0.0.1:9101 127.0.0.1:9102 127.0.0.1:9103
//! cargo run --release --example register -- cas hello world  127.0.0.1:9101
//! cargo run --release --example register -- get  127.0.0.1:9101
//! ```

mod common;

use clap::Parser;
use mioraft::{Client, StateMachine};
use std::process::ExitCode;

/// The register. A command is a tag byte followed by UTF-8 text: `P<value>` sets the value,
/// `C<expected>\0<new>` compares and sets; the only query is `G`.
#[derive(Debug, Default)]
struct Register {
    value: String,
}

impl StateMachine for Register {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(command) else {
            return b"error: command is not UTF-8".to_vec();
        };
        match text.split_at_checked(1) {
            Some(("P", value)) => {
                let previous = std::mem::replace(&mut self.value, value.to_owned());
                format!("ok (was {previous:?})").into_bytes()
            }
            Some(("C", rest)) => match rest.split_once('\0') {
                Some((expected, new)) if expected == self.value => {
                    self.value = new.to_owned();
                    b"ok".to_vec()
                }
                Some(_) => format!("failed: current value is {:?}", self.value).into_bytes(),
                None => b"error: malformed cas".to_vec(),
            },
            _ => b"error: unknown command".to_vec(),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match query {
            b"G" => self.value.clone().into_bytes(),
            _ => b"error: unknown query".to_vec(),
        }
    }

    /// `SNAPSHOT_VERSION`, then the value's UTF-8 bytes.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.value.len());
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(self.value.as_bytes());
        out
    }

    /// Takes the snapshot's value. Bytes that are not one of our snapshots are logged as an
    /// error and leave the empty value a new register starts with, the same on every replica.
    fn restore_snapshot(&mut self, mut snapshot: Vec<u8>) {
        self.value = String::new();
        if snapshot.first() != Some(&SNAPSHOT_VERSION) {
            log::error!(
                "not a register snapshot ({} bytes): the first byte is not format version \
                 {SNAPSHOT_VERSION}; the value is left empty",
                snapshot.len()
            );
            return;
        }
        // The value is the snapshot's own buffer, less its first byte: no copy.
        snapshot.remove(0);
        match String::from_utf8(snapshot) {
            Ok(value) => self.value = value,
            Err(error) => log::error!(
                "not a register snapshot: the value is not UTF-8 ({}); the value is left empty",
                error.utf8_error()
            ),
        }
    }
}

/// The first byte of a snapshot: its format.
const SNAPSHOT_VERSION: u8 = 1;

#[derive(Parser)]
#[command(name = "register", about = "A replicated register on mioraft")]
enum Cli {
    /// Run server <id>; list every node of the cluster, this one included.
    Server {
        id: u64,
        /// <node-id> <node-address> pairs.
        nodes: Vec<String>,
        /// Where to keep the durable log (default: ./register-data/n<id>).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Keep the log in memory instead: nothing survives a restart.
        #[arg(long, conflicts_with = "data_dir")]
        memory: bool,
    },
    /// Read the value (from the leader).
    Get {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Set the value.
    Put {
        value: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Set the value to <new> only if it holds <expected>.
    Cas {
        expected: String,
        new: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Show each node's role, term, leader, commit and applied index.
    Status {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("register: {error}");
            ExitCode::FAILURE
        }
    }
}

fn send(nodes: &[String], command: Vec<u8>, query: bool) -> Result<(), String> {
    let mut client = Client::new(common::parse_addresses(nodes)?);
    let reply = if query {
        client.query(&command)
    } else {
        client.propose(&command)
    }
    .map_err(|e| e.to_string())?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli {
        Cli::Server {
            id,
            nodes,
            data_dir,
            memory,
        } => common::run_server(
            id,
            &common::parse_nodes(&nodes)?,
            Register::default(),
            common::Storage::from_flags("register", id, data_dir, memory),
            mioraft::consensus::Config::default(),
            common::Start::Member,
        ),
        Cli::Get { nodes } => send(&nodes, b"G".to_vec(), true),
        Cli::Put { value, nodes } => send(&nodes, format!("P{value}").into_bytes(), false),
        Cli::Cas {
            expected,
            new,
            nodes,
        } => {
            if expected.contains('\0') {
                return Err("the expected value cannot contain a NUL byte".to_owned());
            }
            send(&nodes, format!("C{expected}\0{new}").into_bytes(), false)
        }
        Cli::Status { nodes } => {
            common::print_status(&common::parse_addresses(&nodes)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(value: &str) -> Register {
        let mut register = Register::default();
        register.apply(format!("P{value}").as_bytes());
        register
    }

    #[test]
    fn snapshot_round_trips() {
        for value in ["", "hello", "with spaces, ✓ and \0 inside"] {
            let snapshot = holding(value).snapshot();
            assert_eq!(snapshot.len(), snapshot.capacity(), "sized up front");
            let mut copy = Register::default();
            copy.restore_snapshot(snapshot);
            assert_eq!(copy.value, value);
            assert_eq!(copy.query(b"G"), value.as_bytes());
        }
    }

    #[test]
    fn restore_replaces_the_previous_value() {
        let mut register = holding("old");
        register.restore_snapshot(holding("new").snapshot());
        assert_eq!(register.value, "new");
        assert_eq!(register.apply(b"Cnew\0newer"), b"ok");
    }

    #[test]
    fn malformed_snapshots_leave_an_empty_value_without_panicking() {
        let bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            // The earlier, unversioned encoding: the bare value.
            b"hello".to_vec(),
            vec![2, b'x'],
            vec![SNAPSHOT_VERSION, 0xff, 0xfe],
        ];
        for snapshot in bad {
            let mut register = holding("before");
            register.restore_snapshot(snapshot.clone());
            assert_eq!(register.value, "", "{snapshot:?}");
        }
    }
}
