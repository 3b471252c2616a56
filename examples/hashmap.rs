//! A replicated hash map on mioraft: string keys, string values, `get`/`put`/`cas`.
//!
//! ```text
//! cargo run --release --example hashmap -- demo
//! cargo run --release --example hashmap -- server 1  1 127.0.0.1:9001  2 127.0.0.1:9002  3 127.0.0.1:9003
//! cargo run --release --example hashmap -- server 1 --snapshot-entries 1000  1 127.0.0.1:9001  2 127.0.0.1:9002  3 127.0.0.1:9003
//! cargo run --release --example hashmap -- put greeting hello  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! cargo run --release --example hashmap -- get greeting  127.0.0.1:9001
//! cargo run --release --example hashmap -- status  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! cargo run --release --example hashmap -- server 4 --join  4 127.0.0.1:9004
//! cargo run --release --example hashmap -- add 4 127.0.0.1:9004  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! cargo run --release --example hashmap -- add-learner 5 127.0.0.1:9005  127.0.0.1:9001
//! cargo run --release --example hashmap -- remove 1  127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003 127.0.0.1:9004
//! ```

mod common;

use clap::Parser;
use mioraft::consensus::Config;
use mioraft::{Client, ServerId, StateMachine};
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

    /// The whole map, keys in ascending order so that equal maps give equal bytes whatever
    /// order the `HashMap` iterates in:
    /// `SNAPSHOT_VERSION`, the entry count as a little-endian u64, then each key and its value
    /// as in `encode` (a little-endian u32 length, then the bytes). Built in one allocation of
    /// the exact size; besides it, only references to the entries are held while sorting.
    fn snapshot(&self) -> Vec<u8> {
        let mut entries: Vec<(&String, &String)> = self.map.iter().collect();
        entries.sort_unstable();
        let size = entries.iter().fold(1 + 8, |size, (key, value)| {
            size + 8 + key.len() + value.len()
        });
        let mut out = Vec::with_capacity(size);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (key, value) in entries {
            for field in [key, value] {
                out.extend_from_slice(&(field.len() as u32).to_le_bytes());
                out.extend_from_slice(field.as_bytes());
            }
        }
        out
    }

    /// Replaces the map with the snapshot's. Bytes that are not one of our snapshots are
    /// logged as an error and leave the map empty, as a new server starts: every replica
    /// given the same bytes ends in the same state, and none keeps a stale mix.
    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        // The old map goes first, so only the snapshot's bytes are held beside the new one.
        self.map = HashMap::new();
        match restore(&snapshot) {
            Ok(map) => self.map = map,
            Err(reason) => log::error!(
                "not a hashmap snapshot ({} bytes): {reason}; the map is left empty",
                snapshot.len()
            ),
        }
    }
}

/// The first byte of a snapshot: its format.
const SNAPSHOT_VERSION: u8 = 1;

/// Decodes a snapshot made by `HashMapMachine::snapshot`, checking every length, that the text
/// is UTF-8, that keys ascend (so none repeats) and that nothing follows the last entry.
fn restore(snapshot: &[u8]) -> Result<HashMap<String, String>, String> {
    let Some((&SNAPSHOT_VERSION, rest)) = snapshot.split_first() else {
        return Err(format!(
            "the first byte is not format version {SNAPSHOT_VERSION}"
        ));
    };
    let (count, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or("the entry count is cut short")?;
    let count = u64::from_le_bytes(*count);
    // Each entry takes at least 8 bytes: a forged count cannot make us reserve more than the
    // snapshot's own size.
    let mut map = HashMap::with_capacity((count as usize).min(rest.len() / 8));
    let mut previous: Option<&str> = None;
    for number in 0..count {
        let key = take_text(&mut rest).map_err(|e| format!("key {number}: {e}"))?;
        let value = take_text(&mut rest).map_err(|e| format!("value {number}: {e}"))?;
        if previous.is_some_and(|previous| previous >= key) {
            return Err(format!(
                "key {number} ({key:?}) is not after the one before it"
            ));
        }
        previous = Some(key);
        map.insert(key.to_owned(), value.to_owned());
    }
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes follow the last of {count} entries",
            rest.len()
        ));
    }
    Ok(map)
}

/// Takes one length-prefixed UTF-8 field off the front of `bytes`.
fn take_text<'a>(bytes: &mut &'a [u8]) -> Result<&'a str, String> {
    let (length, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("its length is cut short")?;
    let length = u32::from_le_bytes(*length) as usize;
    let field = rest
        .get(..length)
        .ok_or_else(|| format!("{length} bytes announced, {} left", rest.len()))?;
    *bytes = &rest[length..];
    std::str::from_utf8(field).map_err(|error| format!("not UTF-8: {error}"))
}

#[derive(Parser)]
#[command(name = "hashmap", about = "A replicated hash map on mioraft")]
enum Cli {
    /// Run server <id>; list every node of the cluster, this one included (with --join, this
    /// one is enough).
    Server {
        id: u64,
        /// <node-id> <node-address> pairs.
        nodes: Vec<String>,
        /// Join a running cluster: wait, passive, until its leader adds this server (`add` or
        /// `add-learner`). A server whose log already holds a configuration uses that one.
        #[arg(long)]
        join: bool,
        /// Where to keep the durable log (default: ./hashmap-data/n<id>).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Keep the log in memory instead: nothing survives a restart.
        #[arg(long, conflicts_with = "data_dir")]
        memory: bool,
        /// Snapshot the map and compact the log every N applied entries (default 100000; the
        /// log is also compacted once 64 MiB of entries were applied).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_entries: Option<u64>,
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
    /// Ask the leader to hand leadership to server <to> (Raft thesis §3.10).
    Transfer {
        to: u64,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Add server <id>, listening at <address>, as a voter: it is caught up as a learner, then
    /// promoted (Raft thesis §4.2.1). Start it first with `server <id> --join`.
    Add {
        id: u64,
        address: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Add server <id>, listening at <address>, as a learner: it receives the log but does not
    /// vote.
    AddLearner {
        id: u64,
        address: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove server <id>, voter or learner (the leader too: it hands over first).
    Remove {
        id: u64,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Show every member's place (voter or learner), role, term, leader, match, commit and
    /// applied index.
    Status {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Start a local 3-node cluster, write, kill the leader, check that nothing acknowledged was
    /// lost, add a fourth server and remove it again, and stop.
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

/// A client for configuration changes: adding a server waits while it catches up.
fn admin(nodes: &[String]) -> Result<Client, String> {
    Ok(client(nodes)?.with_timeout(Duration::from_secs(30)))
}

fn server_id(id: u64) -> Result<ServerId, String> {
    match id {
        0 => Err("server id 0 is reserved".to_owned()),
        id => Ok(ServerId(id)),
    }
}

fn server_address(address: &str) -> Result<std::net::SocketAddr, String> {
    address
        .parse()
        .map_err(|_| format!("{address:?} is not host:port (e.g. 127.0.0.1:9004)"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli {
        Cli::Server {
            id,
            nodes,
            data_dir,
            memory,
            snapshot_entries,
            join,
        } => common::run_server(
            id,
            &common::parse_nodes(&nodes)?,
            HashMapMachine::default(),
            common::Storage::from_flags("hashmap", id, data_dir, memory),
            Config {
                snapshot_entries: snapshot_entries.unwrap_or(Config::default().snapshot_entries),
                ..Config::default()
            },
            if join {
                common::Start::Join
            } else {
                common::Start::Member
            },
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
        Cli::Transfer { to, nodes } => {
            client(&nodes)?
                .transfer_leadership(mioraft::ServerId(to))
                .map_err(|e| e.to_string())?;
            println!("server {to} leads now");
            Ok(())
        }
        Cli::Add { id, address, nodes } => {
            admin(&nodes)?
                .add_server(server_id(id)?, server_address(&address)?)
                .map_err(|e| e.to_string())?;
            println!("server {id} at {address} is a voter now");
            Ok(())
        }
        Cli::AddLearner { id, address, nodes } => {
            admin(&nodes)?
                .add_learner(server_id(id)?, server_address(&address)?)
                .map_err(|e| e.to_string())?;
            println!("server {id} at {address} is a learner now");
            Ok(())
        }
        Cli::Remove { id, nodes } => {
            admin(&nodes)?
                .remove_server(server_id(id)?)
                .map_err(|e| e.to_string())?;
            println!("server {id} is no longer a member; stop it");
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

    let original = cluster.addresses();
    let joining = ServerId(4);
    let address = cluster.launch_joining(joining)?;
    println!("\nstarted server {joining} on {address} with --join: it waits to be added");
    let mut admin = Client::new(original.clone()).with_timeout(Duration::from_secs(30));
    admin
        .add_server(joining, address)
        .map_err(|e| format!("add {joining}: {e}"))?;
    let joined = Client::new([address])
        .with_timeout(Duration::from_secs(10))
        .status(address)
        .map_err(|e| format!("status of {joining}: {e}"))?;
    println!(
        "added {joining}: caught up as a learner, then promoted; it has applied up to index {} \
         and its configuration is {}",
        joined.last_applied, joined.membership
    );
    // Asked at the first three servers only, the status finds the fourth in the configuration.
    println!();
    common::print_status(&original);
    admin
        .remove_server(joining)
        .map_err(|e| format!("remove {joining}: {e}"))?;
    cluster.kill(joining)?;
    println!("\nremoved {joining} again and stopped it\n");
    common::print_status(&original);
    cluster.shutdown();
    println!("\nstopped the cluster; demo complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(machine: &mut HashMapMachine, key: &str, value: &str) {
        machine.apply(&encode(PUT, &[key, value]));
    }

    /// A map with keys and values of awkward lengths and characters.
    fn sample() -> HashMapMachine {
        let mut machine = HashMapMachine::default();
        put(&mut machine, "greeting", "hello world");
        put(&mut machine, "with spaces and ✓", "");
        put(&mut machine, "long", &"v".repeat(300));
        for n in 0..50 {
            put(&mut machine, &format!("key{n}"), &format!("value{n}"));
        }
        machine
    }

    #[test]
    fn snapshot_round_trips_and_is_deterministic() {
        let machine = sample();
        let snapshot = machine.snapshot();
        assert_eq!(snapshot.len(), snapshot.capacity(), "sized up front");
        let mut copy = HashMapMachine::default();
        copy.restore_snapshot(snapshot.clone());
        assert_eq!(copy.map, machine.map);
        assert_eq!(copy.snapshot(), snapshot, "equal maps, equal bytes");
        assert_eq!(copy.query(&encode(GET, &["greeting"])), b"hello world");
        // Built in another order, the same map gives the same bytes.
        let mut reversed = HashMapMachine::default();
        let mut keys: Vec<_> = machine.map.iter().collect();
        keys.sort();
        for (key, value) in keys.into_iter().rev() {
            put(&mut reversed, key, value);
        }
        assert_eq!(reversed.snapshot(), snapshot);
        // The empty map too.
        let mut empty = sample();
        empty.restore_snapshot(HashMapMachine::default().snapshot());
        assert!(empty.map.is_empty());
    }

    #[test]
    fn restore_replaces_the_previous_map() {
        let mut source = HashMapMachine::default();
        put(&mut source, "only", "this");
        let mut machine = sample();
        machine.restore_snapshot(source.snapshot());
        assert_eq!(machine.map, source.map);
    }

    #[test]
    fn malformed_snapshots_leave_an_empty_map_without_panicking() {
        let good = sample().snapshot();
        let mut one = HashMapMachine::default();
        put(&mut one, "a", "1");
        let one = one.snapshot();
        let entry = &one[9..];
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![2],
            // The earlier, unversioned encoding.
            encode(0, &["a", "1"]),
            [&good[..], b"x"].concat(),
            // A count far beyond the bytes.
            [&[SNAPSHOT_VERSION][..], &u64::MAX.to_le_bytes()].concat(),
            // The same key twice.
            [&[SNAPSHOT_VERSION][..], &2u64.to_le_bytes(), entry, entry].concat(),
        ];
        bad.extend((0..good.len()).map(|length| good[..length].to_vec()));
        let mut not_utf8 = one.clone();
        not_utf8[13] = 0xff;
        bad.push(not_utf8);
        for snapshot in bad {
            let mut machine = sample();
            machine.restore_snapshot(snapshot.clone());
            assert!(machine.map.is_empty(), "{snapshot:?}");
        }
        for position in 0..good.len() {
            let mut corrupted = good.clone();
            corrupted[position] ^= 0x5a;
            HashMapMachine::default().restore_snapshot(corrupted);
        }
    }
}
