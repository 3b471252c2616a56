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

    fn snapshot(&self) -> Vec<u8> {
        self.value.clone().into_bytes()
    }

    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        self.value = String::from_utf8_lossy(&snapshot).into_owned();
    }
}

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
