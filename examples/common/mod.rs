//! What the `register` and `hashmap` examples share: parsing the node list, running a server,
//! the `status` table, and the demo's cluster of child processes.

#![allow(dead_code)] // each example uses a different part

use mioraft::consensus::Config;
use mioraft::log::{FileLog, PersistentLog};
use mioraft::{Client, MemLog, Role, Server, ServerBuilder, ServerId, StateMachine};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Parses `<node-id> <node-address>` pairs.
pub fn parse_nodes(words: &[String]) -> Result<Vec<(ServerId, SocketAddr)>, String> {
    if !words.len().is_multiple_of(2) {
        return Err(format!(
            "nodes come in pairs <node-id> <node-address>; got {} words",
            words.len()
        ));
    }
    let mut nodes = Vec::new();
    for pair in words.chunks(2) {
        let id: u64 = pair[0]
            .parse()
            .map_err(|_| format!("node id {:?} is not a positive number", pair[0]))?;
        if id == 0 {
            return Err("node id 0 is reserved".to_owned());
        }
        let address: SocketAddr = pair[1].parse().map_err(|_| {
            format!(
                "node address {:?} is not host:port (e.g. 127.0.0.1:9001)",
                pair[1]
            )
        })?;
        if nodes.iter().any(|&(other, _)| other == ServerId(id)) {
            return Err(format!("node id {id} appears twice"));
        }
        nodes.push((ServerId(id), address));
    }
    Ok(nodes)
}

/// Parses addresses given on the command line.
pub fn parse_addresses(words: &[String]) -> Result<Vec<SocketAddr>, String> {
    if words.is_empty() {
        return Err("give at least one <node-address>".to_owned());
    }
    words
        .iter()
        .map(|word| {
            word.parse()
                .map_err(|_| format!("{word:?} is not host:port (e.g. 127.0.0.1:9001)"))
        })
        .collect()
}

/// Where a server keeps its Raft log.
pub enum Storage {
    /// A durable `FileLog` in this directory (created if missing).
    Files(PathBuf),
    /// `MemLog`: nothing survives a restart.
    Memory,
}

impl Storage {
    /// `--memory`, else `--data-dir`, else `<example>-data/n<id>` in the current directory.
    pub fn from_flags(example: &str, id: u64, data_dir: Option<PathBuf>, memory: bool) -> Storage {
        match (memory, data_dir) {
            (true, _) => Storage::Memory,
            (false, Some(dir)) => Storage::Files(dir),
            (false, None) => Storage::Files(PathBuf::from(format!("{example}-data/n{id}"))),
        }
    }
}

/// How a server starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// As a member of the cluster `nodes` lists (or of the configuration its log holds).
    Member,
    /// To join a running cluster: passive until its leader adds it (`add`, `add-learner`).
    /// `nodes` needs to list only this server.
    Join,
}

/// Runs server `id` of `nodes` (which must include it) with `config` until it stops.
pub fn run_server<M: StateMachine>(
    id: u64,
    nodes: &[(ServerId, SocketAddr)],
    state_machine: M,
    storage: Storage,
    config: Config,
    start: Start,
) -> Result<(), String> {
    let id = ServerId(id);
    let Some(&(_, address)) = nodes.iter().find(|&&(node, _)| node == id) else {
        return Err(format!(
            "server {id} is not in the node list; list every node, this one included, as \
             <node-id> <node-address>"
        ));
    };
    let peers: HashMap<ServerId, SocketAddr> = nodes
        .iter()
        .copied()
        .filter(|&(node, _)| node != id)
        .collect();
    let joining = if start == Start::Join {
        ", waiting to be added to a cluster"
    } else {
        ""
    };
    let result = match storage {
        Storage::Files(dir) => {
            let log = FileLog::open(&dir)
                .map_err(|e| format!("cannot open the data directory {}: {e}", dir.display()))?;
            eprintln!(
                "{id}: serving on {address}, log in {}{joining}",
                dir.display()
            );
            serve(
                Server::new(id, address, log, state_machine),
                peers,
                config,
                start,
            )
        }
        Storage::Memory => {
            eprintln!("{id}: serving on {address}, log in memory{joining}");
            serve(
                Server::new(id, address, MemLog::new(), state_machine),
                peers,
                config,
                start,
            )
        }
    };
    result.map_err(|e| e.to_string())
}

fn serve<L: PersistentLog + Send + 'static, M: StateMachine>(
    builder: ServerBuilder<L, M>,
    peers: HashMap<ServerId, SocketAddr>,
    config: Config,
    start: Start,
) -> mioraft::Result<()> {
    let builder = builder.with_peers(peers).with_config(config);
    match start {
        Start::Member => builder.run(),
        Start::Join => builder.join().run(),
    }
}

/// Prints every member of the cluster's configuration (found through the leader, so members
/// added since `addresses` was written down are included), then any other server that answered:
/// its place in the configuration, role, term, leader, match, commit and applied index.
pub fn print_status(addresses: &[SocketAddr]) {
    println!(
        "{:<22} {:>4} {:<8} {:<10} {:>6} {:>7} {:>8} {:>8} {:>8}",
        "address", "id", "member", "role", "term", "leader", "match", "commit", "applied"
    );
    let mut client = Client::new(addresses.to_vec()).with_timeout(Duration::from_secs(1));
    for member in client.cluster_status() {
        let address = member.address;
        let id = member.id.map_or("?".to_owned(), |id| id.0.to_string());
        let place = match member.voter {
            Some(true) => "voter",
            Some(false) => "learner",
            None => "-",
        };
        match member.metrics {
            Ok(m) => println!(
                "{:<22} {:>4} {:<8} {:<10} {:>6} {:>7} {:>8} {:>8} {:>8}",
                address,
                id,
                place,
                format!("{:?}", m.role).to_lowercase(),
                m.current_term.0,
                m.current_leader.map_or("-".to_owned(), |l| l.0.to_string()),
                member
                    .match_index
                    .map_or("-".to_owned(), |i| i.0.to_string()),
                m.commit_index.0,
                m.last_applied.0
            ),
            Err(error) => println!("{address:<22} {id:>4} {place:<8} unreachable: {error}"),
        }
    }
}

/// A local cluster of server processes with data directories under a temporary directory;
/// the processes are killed and the directory removed when dropped.
pub struct DemoCluster {
    pub nodes: Vec<(ServerId, SocketAddr)>,
    children: HashMap<ServerId, Child>,
    data_root: PathBuf,
}

impl DemoCluster {
    /// Starts `size` servers as child processes of this executable
    /// (`<exe> server <id> --data-dir <dir> <nodes>`).
    pub fn start(size: u64) -> Result<DemoCluster, String> {
        let mut nodes = Vec::new();
        for id in 1..=size {
            nodes.push((ServerId(id), free_local_address()?));
        }
        let data_root = std::env::temp_dir().join(format!("mioraft-demo-{}", std::process::id()));
        let mut cluster = DemoCluster {
            nodes,
            children: HashMap::new(),
            data_root,
        };
        for id in 1..=size {
            cluster.launch(ServerId(id))?;
        }
        Ok(cluster)
    }

    /// Starts (or restarts, from its data directory) server `id`.
    pub fn launch(&mut self, id: ServerId) -> Result<(), String> {
        let node_words: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|(id, address)| [id.0.to_string(), address.to_string()])
            .collect();
        self.spawn_child(id, &node_words, &[])
    }

    /// Starts a new server `id` on a free port to join the cluster (`server <id> --join`); it
    /// waits, passive, until the leader adds it. Returns its address.
    pub fn launch_joining(&mut self, id: ServerId) -> Result<SocketAddr, String> {
        let address = free_local_address()?;
        self.nodes.push((id, address));
        let node_words = [id.0.to_string(), address.to_string()];
        self.spawn_child(id, &node_words, &["--join"])?;
        Ok(address)
    }

    fn spawn_child(
        &mut self,
        id: ServerId,
        node_words: &[String],
        flags: &[&str],
    ) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let child = Command::new(&exe)
            .arg("server")
            .arg(id.0.to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(flags)
            .args(node_words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start server {id}: {e}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Server `id`'s data directory.
    pub fn data_dir(&self, id: ServerId) -> PathBuf {
        self.data_root.join(format!("n{}", id.0))
    }

    /// Where the data directories live.
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|&(_, address)| address).collect()
    }

    pub fn address_of(&self, id: ServerId) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|&&(node, _)| node == id)
            .map(|&(_, a)| a)
    }

    /// Waits until a running server reports itself leader; returns it.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<ServerId, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            for &(id, address) in &self.nodes {
                if !self.children.contains_key(&id) {
                    continue;
                }
                let mut client = Client::new([address]).with_timeout(Duration::from_millis(300));
                match client.status(address) {
                    Ok(metrics) if metrics.role == Role::Leader => return Ok(id),
                    Ok(metrics) => {
                        last = format!(
                            "{id} is {:?} in term {}",
                            metrics.role, metrics.current_term
                        )
                    }
                    Err(error) => last = error.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no leader within {timeout:?}; last: {last}"))
    }

    /// Kills one server (SIGKILL) and reaps it.
    pub fn kill(&mut self, id: ServerId) -> Result<(), String> {
        let mut child = self
            .children
            .remove(&id)
            .ok_or_else(|| format!("server {id} is not running"))?;
        child
            .kill()
            .map_err(|e| format!("cannot kill server {id}: {e}"))?;
        child
            .wait()
            .map_err(|e| format!("cannot reap server {id}: {e}"))?;
        Ok(())
    }

    /// Stops every server and removes the data directories.
    pub fn shutdown(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
    }

    /// Waits until server `id` has applied everything the others have.
    pub fn wait_caught_up(&self, id: ServerId, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            let applied: Vec<(ServerId, u64)> = self
                .nodes
                .iter()
                .filter(|(node, _)| self.children.contains_key(node))
                .filter_map(|&(node, address)| {
                    let mut client =
                        Client::new([address]).with_timeout(Duration::from_millis(300));
                    client
                        .status(address)
                        .ok()
                        .map(|m| (node, m.last_applied.0))
                })
                .collect();
            let ours = applied
                .iter()
                .find(|(node, _)| *node == id)
                .map(|&(_, a)| a);
            let most = applied.iter().map(|&(_, a)| a).max();
            match (ours, most) {
                (Some(ours), Some(most))
                    if ours == most && applied.len() == self.children.len() =>
                {
                    return Ok(ours)
                }
                _ => last = format!("applied indexes {applied:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "server {id} did not catch up within {timeout:?}; last: {last}"
        ))
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An unused local port: bound, read, released. (A demo may race another program for it; tests
/// use pre-bound listeners instead.)
fn free_local_address() -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("cannot read the free port: {e}"))
}
