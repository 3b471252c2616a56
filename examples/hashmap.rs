//! A replicated hash map on mioraft: string keys, string values, `get`/`put`/`cas`.
//!
//! ```text
//! cargo run --release --example hashmap -- demo
//! cargo run --release --example hashmap -- server 1  1 127.0.0.1:9001  2 127.0.0.1:9002  3 127.0.0.1:9003
//! cargo run --release --example hashmap -- put greeting hello  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! cargo run --release --example hashmap -- get greeting  127.0.0.1:9001
//! cargo run --release --example hashmap -- status  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! ```

mod common;

use clap::Parser;
use mioraft::{Client, StateMachine};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

/// The map. Commands and queries are length-prefixed binary (see `encode`), so keys and values
/// may hold any text, spaces included.
#[derive(Debug, Default)]
struct HashMapMachine {
    map: HashMap<String, String>,
}

/// Command and query tags.
const PUT: u8 = 1;
const CAS: u8 = 2;
const GET: u8 = 3;

/// Encodes a tag and fields, each as a little-endian u32 length then its bytes.
fn encode(tag: u8, fields: &[&str]) -> Vec<u8> {
    let mut out = vec![tag];
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// The inverse of `encode`; `None` for anything malformed.
fn decode(bytes: &[u8]) -> Option<(u8, Vec<String>)> {
    let (&tag, mut rest) = bytes.split_first()?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let field = rest.get(4..4usize.checked_add(length)?)?;
        fields.push(String::from_utf8(field.to_vec()).ok()?);
        rest = &rest[4 + length..];
    }
    Some((tag, fields))
}

impl StateMachine for HashMapMachine {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        match decode(command) {
            Some((PUT, fields)) if fields.len() == 2 => {
                let previous = self.map.insert(fields[0].clone(), fields[1].clone());
                match previous {
                    Some(previous) => format!("ok (was {previous:?})").into_bytes(),
                    None => b"ok (new key)".to_vec(),
                }
            }
            Some((CAS, fields)) if fields.len() == 3 => {
                let current = self.map.get(&fields[0]).cloned().unwrap_or_default();
                if current == fields[1] {
                    self.map.insert(fields[0].clone(), fields[2].clone());
                    b"ok".to_vec()
                } else {
                    format!("failed: current value is {current:?}").into_bytes()
                }
            }
            _ => b"error: malformed command".to_vec(),
        }
    }

    /// Refused before the log, so they never take a log slot: malformed commands and empty keys.
    fn validate(&self, command: &[u8]) -> Result<(), Vec<u8>> {
        match decode(command) {
            Some((PUT | CAS, fields)) if fields.first().is_some_and(String::is_empty) => {
                Err(b"the key must not be empty".to_vec())
            }
            Some((PUT, fields)) if fields.len() == 2 => Ok(()),
            Some((CAS, fields)) if fields.len() == 3 => Ok(()),
            _ => Err(b"malformed command".to_vec()),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match decode(query) {
            Some((GET, fields)) if fields.len() == 1 => self
                .map
                .get(&fields[0])
                .cloned()
                .unwrap_or_default()
                .into_bytes(),
            _ => b"error: malformed query".to_vec(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort();
        let mut fields = Vec::new();
        for key in keys {
            fields.push(key.as_str());
            fields.push(self.map[key].as_str());
        }
        encode(0, &fields)
    }

    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        self.map.clear();
        if let Some((_, fields)) = decode(&snapshot) {
            for pair in fields.chunks(2) {
                if let [key, value] = pair {
                    self.map.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

#[derive(Parser)]
#[command(name = "hashmap", about = "A replicated hash map on mioraft")]
enum Cli {
    /// Run server <id>; list every node of the cluster, this one included.
    Server {
        id: u64,
        /// <node-id> <node-address> pairs.
        nodes: Vec<String>,
        /// Where to keep the durable log (default: ./hashmap-data/n<id>).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Keep the log in memory instead: nothing survives a restart.
        #[arg(long, conflicts_with = "data_dir")]
        memory: bool,
    },
    /// Read a key (from the leader).
    Get {
        key: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Set a key.
    Put {
        key: String,
        value: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Set a key to <new> only if it holds <expected> (a missing key holds "").
    Cas {
        key: String,
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
    /// Start a local 3-node cluster, write, kill the leader, check that nothing acknowledged was
    /// lost, and stop.
    Demo,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hashmap: {error}");
            ExitCode::FAILURE
        }
    }
}

fn client(nodes: &[String]) -> Result<Client, String> {
    Ok(Client::new(common::parse_addresses(nodes)?))
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
            HashMapMachine::default(),
            common::Storage::from_flags("hashmap", id, data_dir, memory),
        ),
        Cli::Get { key, nodes } => {
            let value = client(&nodes)?
                .query(&encode(GET, &[&key]))
                .map_err(|e| e.to_string())?;
            println!("{}", String::from_utf8_lossy(&value));
            Ok(())
        }
        Cli::Put { key, value, nodes } => {
            let reply = client(&nodes)?
                .propose(&encode(PUT, &[&key, &value]))
                .map_err(|e| e.to_string())?;
            println!("{}", String::from_utf8_lossy(&reply));
            Ok(())
        }
        Cli::Cas {
            key,
            expected,
            new,
            nodes,
        } => {
            let reply = client(&nodes)?
                .propose(&encode(CAS, &[&key, &expected, &new]))
                .map_err(|e| e.to_string())?;
            println!("{}", String::from_utf8_lossy(&reply));
            Ok(())
        }
        Cli::Status { nodes } => {
            common::print_status(&common::parse_addresses(&nodes)?);
            Ok(())
        }
        Cli::Demo => demo(),
    }
}

fn demo() -> Result<(), String> {
    let mut cluster = common::DemoCluster::start(3)?;
    for (id, address) in &cluster.nodes {
        println!(
            "started server {id} on {address}, log in {}",
            cluster.data_dir(*id).display()
        );
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    println!("\nleader elected: {leader}");

    let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(10));
    let mut acknowledged = Vec::new();
    for n in 1..=20 {
        let (key, value) = (format!("key{n}"), format!("value{n}"));
        client
            .propose(&encode(PUT, &[&key, &value]))
            .map_err(|e| format!("put {key}: {e}"))?;
        acknowledged.push((key, value));
    }
    println!(
        "wrote {} keys (key1..key20), each acknowledged",
        acknowledged.len()
    );
    let value = client
        .query(&encode(GET, &["key7"]))
        .map_err(|e| e.to_string())?;
    println!(
        "get key7 -> {:?} (a linearizable read)",
        String::from_utf8_lossy(&value)
    );
    match client.propose(&encode(PUT, &["", "nothing"])) {
        Err(mioraft::Error::Refused { error }) => println!(
            "put with an empty key -> refused by the state machine before the log: {}",
            String::from_utf8_lossy(&error)
        ),
        other => return Err(format!("an empty key should be refused, got {other:?}")),
    }
    println!();
    common::print_status(&cluster.addresses());

    cluster.kill(leader)?;
    println!("\nkilled the leader, {leader}, with SIGKILL");
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    println!("new leader elected: {new_leader}");

    let mut missing = Vec::new();
    for (key, value) in &acknowledged {
        let read = client
            .query(&encode(GET, &[key]))
            .map_err(|e| format!("get {key}: {e}"))?;
        if read != value.as_bytes() {
            missing.push(format!(
                "{key} = {:?} (expected {value:?})",
                String::from_utf8_lossy(&read)
            ));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "acknowledged writes lost after failover: {missing:?}"
        ));
    }
    println!(
        "all {} acknowledged writes are still there",
        acknowledged.len()
    );
    for n in 21..=25 {
        let (key, value) = (format!("key{n}"), format!("value{n}"));
        client
            .propose(&encode(PUT, &[&key, &value]))
            .map_err(|e| format!("put {key}: {e}"))?;
    }
    println!("wrote 5 more keys through the new leader");

    cluster.launch(leader)?;
    let applied = cluster.wait_caught_up(leader, Duration::from_secs(15))?;
    println!(
        "restarted {leader} from its data directory: it rejoined as a follower and caught up to \
         applied index {applied}\n"
    );
    common::print_status(&cluster.addresses());
    cluster.shutdown();
    println!("\nstopped the cluster; demo complete");
    Ok(())
}
