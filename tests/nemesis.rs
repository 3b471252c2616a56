//! Fault injection against real server processes, with the clients' history checked for
//! linearizability (DESIGN.md §6, items 3 and 4).
//!
//! A cluster of server processes runs on 127.0.0.1. Each is this test binary run again with
//! `MIORAFT_NEMESIS_CHILD` set (as in tests/durability.rs), serving a test-local state machine
//! with a `FileLog` in a temporary directory that outlives the process. Servers reach each other
//! only through a relay in this process, one link per ordered pair, so links can be cut; clients
//! dial the servers directly.
//!
//! While client threads put, get, compare-and-swap and append, a nemesis driven by one seeded
//! RNG kills (SIGKILL) and restarts, pauses (SIGSTOP) and resumes, isolates servers and cuts
//! links, never impairing more than a minority at once. Then everything heals, the cluster must
//! converge, and the test demands:
//! * each register key's history is linearizable (checked key by key);
//! * the appended list holds every acknowledged value exactly once, no value twice, nothing no
//!   client sent, in an order that respects real time;
//! * every server holds the same committed log.
//!
//! Knobs, all optional:
//! * `MIORAFT_NEMESIS_SEED`: the seed of every choice (random otherwise, always printed);
//! * `MIORAFT_NEMESIS_SECS`: how long the clients and the nemesis run (default 15);
//! * `MIORAFT_NEMESIS_SERVERS`: cluster size (default 3);
//! * `MIORAFT_NEMESIS_CLIENTS`: client threads (default 5);
//! * `MIORAFT_NEMESIS_FAULTS`: `all` (default), `none` (or `0`), or a comma list of
//!   `kill,pause,isolate,cut`.
//!
//! A seed replays the nemesis's choices, not the run: real timing is not seeded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use mioraft::{LogIndex, Metrics, Role};

/// Runs one server when this binary is spawned as a child (see `cluster::Cluster::start`).
#[test]
fn child_server() {
    let Ok(spec) = std::env::var(cluster::CHILD_ENV) else {
        return;
    };
    cluster::run_child(&spec);
}

mod knobs {
    //! The run's settings, read from the environment.

    use std::str::FromStr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// What the nemesis can do to a server.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum FaultKind {
        /// SIGKILL, then a restart from the data directory.
        Kill,
        /// SIGSTOP, then SIGCONT.
        Pause,
        /// Every link to and from the server cut.
        Isolate,
        /// The links between the server and one other cut, one way or both.
        Cut,
    }

    impl FaultKind {
        pub const ALL: [FaultKind; 4] = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Isolate,
            FaultKind::Cut,
        ];

        pub fn name(self) -> &'static str {
            match self {
                FaultKind::Kill => "kill",
                FaultKind::Pause => "pause",
                FaultKind::Isolate => "isolate",
                FaultKind::Cut => "cut",
            }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Knobs {
        pub seed: u64,
        pub duration: Duration,
        pub servers: usize,
        pub clients: usize,
        pub faults: Vec<FaultKind>,
    }

    impl Knobs {
        pub fn from_env() -> Knobs {
            let seed = parse("MIORAFT_NEMESIS_SEED").unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos() as u64);
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            });
            let servers = parse("MIORAFT_NEMESIS_SERVERS").unwrap_or(3);
            assert!(
                (3..=9).contains(&servers),
                "MIORAFT_NEMESIS_SERVERS={servers}: use 3 to 9 servers"
            );
            let clients = parse("MIORAFT_NEMESIS_CLIENTS").unwrap_or(5);
            assert!(clients >= 1, "MIORAFT_NEMESIS_CLIENTS must be at least 1");
            let faults = match std::env::var("MIORAFT_NEMESIS_FAULTS") {
                Err(_) => FaultKind::ALL.to_vec(),
                Ok(text) => parse_faults(&text),
            };
            Knobs {
                seed,
                duration: Duration::from_secs(parse("MIORAFT_NEMESIS_SECS").unwrap_or(15)),
                servers,
                clients,
                faults,
            }
        }

        /// The command that runs these knobs again.
        pub fn replay_command(&self) -> String {
            let faults: Vec<&str> = self.faults.iter().map(|kind| kind.name()).collect();
            let faults = if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(",")
            };
            format!(
                "MIORAFT_NEMESIS_SEED={} MIORAFT_NEMESIS_SECS={} MIORAFT_NEMESIS_SERVERS={} \
                 MIORAFT_NEMESIS_CLIENTS={} MIORAFT_NEMESIS_FAULTS={faults} \
                 cargo test --release --test nemesis -- --nocapture",
                self.seed,
                self.duration.as_secs(),
                self.servers,
                self.clients
            )
        }
    }

    fn parse<T: FromStr>(name: &str) -> Option<T> {
        let text = std::env::var(name).ok()?;
        let value = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value"));
        Some(value)
    }

    fn parse_faults(text: &str) -> Vec<FaultKind> {
        match text.trim() {
            "all" | "" => return FaultKind::ALL.to_vec(),
            "none" | "0" => return Vec::new(),
            _ => {}
        }
        let mut kinds: Vec<FaultKind> = text
            .split(',')
            .map(|word| {
                FaultKind::ALL
                    .into_iter()
                    .find(|kind| kind.name() == word.trim())
                    .unwrap_or_else(|| {
                        panic!("MIORAFT_NEMESIS_FAULTS: unknown fault {word:?} (kill, pause, isolate, cut)")
                    })
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

mod machine {
    //! The replicated application under test: registers and append-only lists behind a text
    //! protocol of space-separated tokens.
    //!
    //! Commands: `put <key> <value>` replies with the previous value (empty if none);
    //! `cas <key> <expected> <new>` replies `ok` or the current value (an empty `expected`, as in
    //! `cas k  v`, means "missing"); `append <key> <value>` adds to the list `key` (a namespace
    //! apart from the registers) and replies with nothing. Queries: `get <key>` and `list <key>`
    //! (the values joined by commas). Tokens are printable ASCII without commas; anything else
    //! replies `error: ...`.

    use mioraft::StateMachine;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Machine {
        registers: BTreeMap<String, String>,
        lists: BTreeMap<String, Vec<String>>,
    }

    fn is_token(text: &str) -> bool {
        text.bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b',')
    }

    /// The words of a command or query, if they are all tokens.
    fn words(bytes: &[u8]) -> Option<Vec<&str>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let words: Vec<&str> = text.split(' ').collect();
        words.iter().all(|word| is_token(word)).then_some(words)
    }

    fn error(what: &[u8]) -> Vec<u8> {
        format!("error: not understood: {:?}", String::from_utf8_lossy(what)).into_bytes()
    }

    impl StateMachine for Machine {
        fn apply(&mut self, command: &[u8]) -> Vec<u8> {
            match words(command).as_deref() {
                Some(["put", key, value]) if !key.is_empty() => self
                    .registers
                    .insert((*key).to_owned(), (*value).to_owned())
                    .unwrap_or_default()
                    .into_bytes(),
                Some(["cas", key, expected, new]) if !key.is_empty() => {
                    let current = self.registers.get(*key).map_or("", String::as_str);
                    if current == *expected {
                        self.registers.insert((*key).to_owned(), (*new).to_owned());
                        b"ok".to_vec()
                    } else {
                        current.as_bytes().to_vec()
                    }
                }
                Some(["append", key, value]) if !key.is_empty() && !value.is_empty() => {
                    self.lists
                        .entry((*key).to_owned())
                        .or_default()
                        .push((*value).to_owned());
                    Vec::new()
                }
                _ => error(command),
            }
        }

        fn query(&self, query: &[u8]) -> Vec<u8> {
            match words(query).as_deref() {
                Some(["get", key]) => self
                    .registers
                    .get(*key)
                    .map(|value| value.as_bytes().to_vec())
                    .unwrap_or_default(),
                Some(["list", key]) => self
                    .lists
                    .get(*key)
                    .map(|values| values.join(",").into_bytes())
                    .unwrap_or_default(),
                _ => error(query),
            }
        }

        /// One line per register (`r <key> <value>`) and per list (`l <key> <v1,v2,...>`).
        fn snapshot(&self) -> Vec<u8> {
            let mut text = String::new();
            for (key, value) in &self.registers {
                text.push_str(&format!("r {key} {value}\n"));
            }
            for (key, values) in &self.lists {
                text.push_str(&format!("l {key} {}\n", values.join(",")));
            }
            text.into_bytes()
        }

        fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
            let text = String::from_utf8(snapshot).expect("a snapshot of ours is utf-8");
            *self = Machine::default();
            for line in text.lines() {
                match line.split(' ').collect::<Vec<_>>().as_slice() {
                    ["r", key, value] => {
                        self.registers
                            .insert((*key).to_owned(), (*value).to_owned());
                    }
                    ["l", key, values] => {
                        let values = values.split(',').map(str::to_owned).collect();
                        self.lists.insert((*key).to_owned(), values);
                    }
                    _ => panic!("not a line of our snapshot: {line:?}"),
                }
            }
        }
    }
}

mod cluster {
    //! Server processes: started, SIGKILLed and restarted from their data directories,
    //! SIGSTOPped and SIGCONTed. Dropping the `Cluster` SIGKILLs and reaps every child, so a
    //! panicking test leaves no server behind.
    //!
    //! Each server's listening socket is bound once, here, and handed to every incarnation of
    //! that server as an inherited file descriptor: a restart never races anything for the
    //! port. While a server is down, a thread here accepts and closes whatever arrives on its
    //! socket, so callers see a closed connection at once (as they would a refused one) instead
    //! of waiting on a backlog nobody reads.

    use crate::machine::Machine;
    use mioraft::consensus::Config;
    use mioraft::log::{FileLog, FileLogOptions};
    use mioraft::{Server, ServerId};
    use std::collections::BTreeMap;
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    /// Set in a child's environment: `id;fd;address;data-dir;parent-pid;id=addr,id=addr,...`.
    pub const CHILD_ENV: &str = "MIORAFT_NEMESIS_CHILD";

    /// How often the thread standing in for a down server empties its socket's backlog.
    const REFUSER_PERIOD: Duration = Duration::from_millis(10);

    /// What a child needs to run its server.
    struct Spec {
        id: ServerId,
        fd: RawFd,
        address: SocketAddr,
        dir: PathBuf,
        parent: u32,
        peers: BTreeMap<ServerId, SocketAddr>,
    }

    impl Spec {
        fn encode(&self) -> String {
            let peers: Vec<String> = self
                .peers
                .iter()
                .map(|(peer, address)| format!("{}={address}", peer.0))
                .collect();
            format!(
                "{};{};{};{};{};{}",
                self.id.0,
                self.fd,
                self.address,
                self.dir.display(),
                self.parent,
                peers.join(",")
            )
        }

        fn decode(text: &str) -> Spec {
            let parts: Vec<&str> = text.split(';').collect();
            assert_eq!(parts.len(), 6, "{CHILD_ENV}={text:?}");
            let peers = parts[5]
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (peer, address) = pair.split_once('=').expect("id=address");
                    (
                        ServerId(peer.parse().expect("peer id")),
                        address.parse().expect("peer address"),
                    )
                })
                .collect();
            Spec {
                id: ServerId(parts[0].parse().expect("id")),
                fd: parts[1].parse().expect("listener descriptor"),
                address: parts[2].parse().expect("address"),
                dir: PathBuf::from(parts[3]),
                parent: parts[4].parse().expect("parent pid"),
                peers,
            }
        }
    }

    /// §7 under the nemesis: snapshots every 2,000 entries, keeping 200 behind, in 16 KiB
    /// chunks, so servers killed, paused or cut off fall behind the compaction point and catch up
    /// by snapshot, and kills land in the middle of transfers.
    fn snapshot_often() -> Config {
        Config {
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(30),
            snapshot_entries: 2_000,
            snapshot_keep_entries: 200,
            snapshot_chunk_bytes: 16 << 10,
            ..Config::default()
        }
    }

    /// 256 KiB segments, so compaction (which deletes whole segments) keeps up with the
    /// snapshots and lagging servers need snapshots to catch up.
    pub fn small_segments() -> FileLogOptions {
        FileLogOptions {
            segment_bytes_max: 256 << 10,
        }
    }

    /// The child's side: serve until killed; exit if the test process goes away.
    pub fn run_child(spec: &str) {
        let spec = Spec::decode(spec);
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
            .try_init();
        let parent = spec.parent;
        thread::spawn(move || loop {
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } as u32 != parent {
                std::process::exit(0);
            }
            thread::sleep(Duration::from_millis(200));
        });
        // SAFETY: the parent left this descriptor, its bound listening socket for this server,
        // open across exec for this process alone; nothing else here owns it.
        let listener = unsafe { TcpListener::from_raw_fd(spec.fd) };
        assert_eq!(
            listener.local_addr().ok(),
            Some(spec.address),
            "{}: the inherited descriptor {} is not the listener",
            spec.id,
            spec.fd
        );
        let log = FileLog::open_with(&spec.dir, small_segments()).expect("open the data directory");
        let result = Server::new(spec.id, spec.address, log, Machine::default())
            .with_peers(spec.peers.into_iter().collect())
            .with_listener(listener)
            .with_config(snapshot_often())
            .run();
        panic!("server {} stopped: {result:?}", spec.id);
    }

    struct Node {
        id: ServerId,
        address: SocketAddr,
        /// Bound once; each incarnation of the server inherits it.
        listener: TcpListener,
        dir: PathBuf,
        /// The addresses this server dials its peers at (the relay's).
        peers: BTreeMap<ServerId, SocketAddr>,
        /// The running process, if any.
        child: Option<Child>,
        paused: bool,
        /// Tells the refuser thread to empty the backlog: no process serves the socket.
        down: Arc<AtomicBool>,
    }

    pub struct Cluster {
        nodes: Vec<Node>,
        root: PathBuf,
        stop: Arc<AtomicBool>,
        refusers: Vec<JoinHandle<()>>,
        /// Set by `close`: nothing starts again.
        closed: bool,
    }

    impl Cluster {
        /// Binds `size` listening sockets under `root`; no process runs yet.
        pub fn bind(size: usize, root: &Path) -> Cluster {
            let stop = Arc::new(AtomicBool::new(false));
            let mut nodes = Vec::new();
            let mut refusers = Vec::new();
            for index in 0..size {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind a server port");
                listener
                    .set_nonblocking(true)
                    .expect("a nonblocking listener");
                let address = listener.local_addr().expect("its address");
                let down = Arc::new(AtomicBool::new(true));
                let refuser = {
                    let (listener, down, stop) = (
                        listener.try_clone().expect("a second handle"),
                        Arc::clone(&down),
                        Arc::clone(&stop),
                    );
                    thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if down.load(Ordering::Relaxed) {
                                while let Ok((stream, _)) = listener.accept() {
                                    drop(stream);
                                }
                            }
                            thread::sleep(REFUSER_PERIOD);
                        }
                    })
                };
                refusers.push(refuser);
                nodes.push(Node {
                    id: ServerId(index as u64 + 1),
                    address,
                    listener,
                    dir: root.join(format!("n{}", index + 1)),
                    peers: BTreeMap::new(),
                    child: None,
                    paused: false,
                    down,
                });
            }
            Cluster {
                nodes,
                root: root.to_owned(),
                stop,
                refusers,
                closed: false,
            }
        }

        pub fn len(&self) -> usize {
            self.nodes.len()
        }

        pub fn id(&self, index: usize) -> ServerId {
            self.nodes[index].id
        }

        /// The servers' own addresses, for clients.
        pub fn addresses(&self) -> Vec<SocketAddr> {
            self.nodes.iter().map(|node| node.address).collect()
        }

        pub fn dirs(&self) -> Vec<(ServerId, PathBuf)> {
            self.nodes
                .iter()
                .map(|node| (node.id, node.dir.clone()))
                .collect()
        }

        /// Where server `index` dials each peer; takes effect at its next start.
        pub fn set_peers(&mut self, index: usize, peers: BTreeMap<ServerId, SocketAddr>) {
            self.nodes[index].peers = peers;
        }

        /// Starts server `index` (its first start or a restart from its data directory).
        pub fn start(&mut self, index: usize) {
            if self.closed {
                return;
            }
            let parent = std::process::id();
            let node = &mut self.nodes[index];
            assert!(node.child.is_none(), "{} is already running", node.id);
            let fd = node.listener.as_raw_fd();
            let spec = Spec {
                id: node.id,
                fd,
                address: node.address,
                dir: node.dir.clone(),
                parent,
                peers: node.peers.clone(),
            };
            let stderr = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join(format!("n{}.stderr", node.id.0)))
                .expect("open the server's stderr file");
            let mut command = Command::new(std::env::current_exe().expect("this test binary"));
            command
                .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, spec.encode())
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            // SAFETY: between fork and exec the closure only calls fcntl, which is
            // async-signal-safe, on a descriptor this process keeps open. Clearing close-on-exec
            // in the forked child lets the server inherit its listener; other children are not
            // affected.
            unsafe {
                command.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            node.down.store(false, Ordering::Relaxed);
            node.child = Some(command.spawn().expect("start a server process"));
            node.paused = false;
        }

        /// SIGKILL, and wait until the process is gone.
        pub fn kill(&mut self, index: usize) {
            let node = &mut self.nodes[index];
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.paused = false;
            node.down.store(true, Ordering::Relaxed);
        }

        pub fn pause(&mut self, index: usize) {
            self.signal(index, libc::SIGSTOP);
            self.nodes[index].paused = true;
        }

        pub fn resume(&mut self, index: usize) {
            self.signal(index, libc::SIGCONT);
            self.nodes[index].paused = false;
        }

        fn signal(&self, index: usize, signal: libc::c_int) {
            let node = &self.nodes[index];
            let Some(child) = node.child.as_ref() else {
                return;
            };
            let pid = libc::pid_t::try_from(child.id()).expect("a pid");
            // SAFETY: kill has no memory preconditions; the child is not reaped yet, so the
            // pid is still ours.
            let result = unsafe { libc::kill(pid, signal) };
            assert_eq!(result, 0, "signal {signal} to {}", node.id);
        }

        /// Restarts whatever is down and resumes whatever is paused.
        pub fn revive_all(&mut self) {
            for index in 0..self.nodes.len() {
                if self.nodes[index].child.is_none() {
                    self.start(index);
                } else if self.nodes[index].paused {
                    self.resume(index);
                }
            }
        }

        /// Kills every server for good: later starts do nothing.
        pub fn close(&mut self) {
            self.closed = true;
            for index in 0..self.nodes.len() {
                self.kill(index);
            }
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            self.close();
            self.stop.store(true, Ordering::Relaxed);
            for refuser in self.refusers.drain(..) {
                let _ = refuser.join();
            }
        }
    }
}

mod relay {
    //! The network between servers: one forwarding link per ordered pair (i, j), listening on
    //! its own port; server i's peer map names that port as j's address. A link can be cut and
    //! healed. A cut closes the link's forwarded connections both ways and then either refuses
    //! new ones (accepts and closes at once) or blackholes them (accepts, never forwards, closes
    //! them at heal), as a dead route would. Cuts nest: a link carries traffic once every cut
    //! on it is healed.

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
    use std::thread;
    use std::time::Duration;

    /// How long a link waits to reach its target before giving up on a connection.
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CutMode {
        Refuse,
        Blackhole,
    }

    #[derive(Default)]
    struct LinkState {
        /// Active cuts; the link forwards only at zero.
        cuts: u32,
        mode: Option<CutMode>,
        /// Forwarded connections by number: both sockets, to shut down on a cut.
        forwarded: BTreeMap<u64, (TcpStream, TcpStream)>,
        /// Connections accepted while blackholed.
        held: Vec<TcpStream>,
    }

    struct Link {
        address: SocketAddr,
        target: SocketAddr,
        state: Mutex<LinkState>,
        next_number: AtomicU64,
    }

    impl Link {
        fn state(&self) -> MutexGuard<'_, LinkState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: Arc<AtomicBool>) {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    Arc::clone(&self).take(stream);
                }
            }
        }

        /// Forwards one accepted connection, or refuses or holds it while cut.
        fn take(self: Arc<Self>, inbound: TcpStream) {
            if self.refused(&inbound) {
                return;
            }
            let Ok(outbound) = TcpStream::connect_timeout(&self.target, CONNECT_TIMEOUT) else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let number = self.next_number.fetch_add(1, Ordering::Relaxed);
            let (Ok(inbound_copy), Ok(outbound_copy)) = (inbound.try_clone(), outbound.try_clone())
            else {
                return;
            };
            {
                // Checked again under the lock a cut takes, so no connection slips past a cut.
                let mut state = self.state();
                if state.cuts > 0 {
                    return;
                }
                state
                    .forwarded
                    .insert(number, (inbound_copy, outbound_copy));
            }
            let (Ok(inbound_reader), Ok(outbound_reader)) =
                (inbound.try_clone(), outbound.try_clone())
            else {
                self.close(number);
                return;
            };
            let link = Arc::clone(&self);
            thread::spawn(move || link.pump(number, inbound_reader, outbound));
            thread::spawn(move || self.pump(number, outbound_reader, inbound));
        }

        /// While cut: closes `inbound` (refuse) or keeps it unread (blackhole). Returns whether
        /// the link is cut.
        fn refused(&self, inbound: &TcpStream) -> bool {
            let mut state = self.state();
            if state.cuts == 0 {
                return false;
            }
            if state.mode == Some(CutMode::Blackhole) {
                if let Ok(copy) = inbound.try_clone() {
                    state.held.push(copy);
                }
            } else {
                let _ = inbound.shutdown(Shutdown::Both);
            }
            true
        }

        /// Copies bytes one way until either side closes, then closes both.
        fn pump(&self, number: u64, mut from: TcpStream, mut to: TcpStream) {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        if to.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            self.close(number);
        }

        fn close(&self, number: u64) {
            if let Some((a, b)) = self.state().forwarded.remove(&number) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }

        fn cut(&self, mode: CutMode) {
            let mut state = self.state();
            state.cuts += 1;
            state.mode = Some(mode);
            for (_, (a, b)) in std::mem::take(&mut state.forwarded) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }

        fn heal(&self) {
            let mut state = self.state();
            assert!(state.cuts > 0, "healing a link that is not cut");
            state.cuts -= 1;
            if state.cuts == 0 {
                state.mode = None;
                for stream in state.held.drain(..) {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }

        fn shut_down(&self) {
            let mut state = self.state();
            for (_, (a, b)) in std::mem::take(&mut state.forwarded) {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            for stream in state.held.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    pub struct Relay {
        /// By (from, to): the link server `from` dials to reach server `to`.
        links: BTreeMap<(usize, usize), Arc<Link>>,
        stop: Arc<AtomicBool>,
    }

    impl Relay {
        /// A link for every ordered pair of distinct `targets`.
        pub fn new(targets: &[SocketAddr]) -> Relay {
            let stop = Arc::new(AtomicBool::new(false));
            let mut links = BTreeMap::new();
            for from in 0..targets.len() {
                for (to, &target) in targets.iter().enumerate() {
                    if from == to {
                        continue;
                    }
                    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay port");
                    let link = Arc::new(Link {
                        address: listener.local_addr().expect("its address"),
                        target,
                        state: Mutex::new(LinkState::default()),
                        next_number: AtomicU64::new(0),
                    });
                    let (accepting, stop) = (Arc::clone(&link), Arc::clone(&stop));
                    thread::spawn(move || accepting.accept_loop(listener, stop));
                    links.insert((from, to), link);
                }
            }
            Relay { links, stop }
        }

        /// Where server `from` must dial to reach server `to`.
        pub fn address(&self, from: usize, to: usize) -> SocketAddr {
            self.links[&(from, to)].address
        }

        pub fn cut(&self, from: usize, to: usize, mode: CutMode) {
            self.links[&(from, to)].cut(mode);
        }

        pub fn heal(&self, from: usize, to: usize) {
            self.links[&(from, to)].heal();
        }

        /// How many connections the link holds blackholed.
        pub fn held_count(&self, from: usize, to: usize) -> usize {
            self.links[&(from, to)].state().held.len()
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for link in self.links.values() {
                link.shut_down();
                // Wakes the accept loop, which sees the stop flag.
                let _ = TcpStream::connect_timeout(&link.address, CONNECT_TIMEOUT);
            }
        }
    }
}

mod nemesis {
    //! The fault schedule: one seeded RNG picks what to break, where and for how long; every
    //! action is printed with its time offset and kept for the failure report.
    //!
    //! Each fault is charged to one server (the killed, paused or isolated one, or the first
    //! end of a cut pair). At most a minority of servers carry faults at once, so the others
    //! form a running, fully connected majority. A fault may pick the current leader.

    use crate::cluster::Cluster;
    use crate::knobs::FaultKind;
    use crate::relay::{CutMode, Relay};
    use crate::{lock, status};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    const TICK: Duration = Duration::from_millis(20);
    const FAULT_MS_MIN: u64 = 300;
    const FAULT_MS_MAX: u64 = 3000;
    const GAP_MS_MIN: u64 = 200;
    const GAP_MS_MAX: u64 = 1200;

    /// The printed record of what happened when.
    pub struct Schedule {
        start: Instant,
        lines: Mutex<Vec<String>>,
    }

    impl Schedule {
        pub fn new(start: Instant) -> Schedule {
            Schedule {
                start,
                lines: Mutex::new(Vec::new()),
            }
        }

        pub fn note(&self, what: &str) {
            let line = format!("[{:>8.3}s] {what}", self.start.elapsed().as_secs_f64());
            println!("{line}");
            lock(&self.lines).push(line);
        }

        pub fn lines(&self) -> Vec<String> {
            lock(&self.lines).clone()
        }
    }

    struct Active {
        kind: FaultKind,
        /// The server it is charged to.
        node: usize,
        /// Cut links, for isolate and cut.
        links: Vec<(usize, usize)>,
        ends_at: Instant,
    }

    pub struct Nemesis {
        rng: ChaCha8Rng,
        kinds: Vec<FaultKind>,
        cluster: Arc<Mutex<Cluster>>,
        relay: Arc<Relay>,
        schedule: Arc<Schedule>,
        addresses: Vec<SocketAddr>,
        active: Vec<Active>,
        counts: BTreeMap<FaultKind, u64>,
        impaired_max: usize,
    }

    impl Nemesis {
        pub fn new(
            seed: u64,
            kinds: Vec<FaultKind>,
            cluster: Arc<Mutex<Cluster>>,
            relay: Arc<Relay>,
            schedule: Arc<Schedule>,
        ) -> Nemesis {
            let (addresses, size) = {
                let cluster = lock(&cluster);
                (cluster.addresses(), cluster.len())
            };
            Nemesis {
                rng: ChaCha8Rng::seed_from_u64(seed),
                kinds,
                cluster,
                relay,
                schedule,
                addresses,
                active: Vec::new(),
                counts: BTreeMap::new(),
                impaired_max: (size - 1) / 2,
            }
        }

        /// Injects faults until `until` or `stop`, then heals everything. Returns how many
        /// faults of each kind it injected.
        pub fn run(mut self, until: Instant, stop: &AtomicBool) -> BTreeMap<FaultKind, u64> {
            let mut next_at = Instant::now() + self.gap();
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                self.end_expired();
                if Instant::now() >= next_at {
                    self.inject();
                    next_at = Instant::now() + self.gap();
                }
                thread::sleep(TICK);
            }
            for fault in std::mem::take(&mut self.active) {
                self.end(fault);
            }
            // Whatever the bookkeeping says, leave every server running and resumed.
            lock(&self.cluster).revive_all();
            self.schedule.note("nemesis: everything healed");
            self.counts
        }

        fn gap(&mut self) -> Duration {
            Duration::from_millis(self.rng.gen_range(GAP_MS_MIN..=GAP_MS_MAX))
        }

        fn end_expired(&mut self) {
            let now = Instant::now();
            let (expired, active) = std::mem::take(&mut self.active)
                .into_iter()
                .partition(|fault| fault.ends_at <= now);
            self.active = active;
            for fault in expired {
                self.end(fault);
            }
        }

        fn inject(&mut self) {
            let impaired: BTreeSet<usize> = self.active.iter().map(|fault| fault.node).collect();
            if self.kinds.is_empty() || impaired.len() >= self.impaired_max {
                return;
            }
            // Every draw is made whatever the outcome, so one seed gives one sequence of
            // choices; only what the cluster looks like (who leads) comes from the run.
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            let prefer_leader = self.rng.gen_bool(0.5);
            let pick: usize = self.rng.gen();
            let other_pick: usize = self.rng.gen();
            let both_ways = self.rng.gen_bool(0.6);
            let outward = self.rng.gen_bool(0.5);
            let mode = if self.rng.gen_bool(0.5) {
                CutMode::Refuse
            } else {
                CutMode::Blackhole
            };
            let duration = Duration::from_millis(self.rng.gen_range(FAULT_MS_MIN..=FAULT_MS_MAX));

            let size = self.addresses.len();
            let candidates: Vec<usize> = (0..size).filter(|i| !impaired.contains(i)).collect();
            let leader = if prefer_leader { self.leader() } else { None };
            let node = leader
                .filter(|leader| candidates.contains(leader))
                .unwrap_or(candidates[pick % candidates.len()]);
            let mut cluster = lock(&self.cluster);
            let name = cluster.id(node);
            let role = if leader == Some(node) {
                " (leader)"
            } else {
                ""
            };
            let mut links = Vec::new();
            let what = match kind {
                FaultKind::Kill => {
                    cluster.kill(node);
                    format!("kill {name}{role}")
                }
                FaultKind::Pause => {
                    cluster.pause(node);
                    format!("pause {name}{role}")
                }
                FaultKind::Isolate => {
                    for other in (0..size).filter(|&other| other != node) {
                        links.push((node, other));
                        links.push((other, node));
                    }
                    format!("isolate {name}{role} ({mode:?})")
                }
                FaultKind::Cut => {
                    let others: Vec<usize> = (0..size).filter(|&other| other != node).collect();
                    let other = others[other_pick % others.len()];
                    let other_name = cluster.id(other);
                    if both_ways {
                        links.push((node, other));
                        links.push((other, node));
                        format!("cut {name}{role} <-> {other_name} ({mode:?})")
                    } else if outward {
                        links.push((node, other));
                        format!("cut {name}{role} -> {other_name} ({mode:?})")
                    } else {
                        links.push((other, node));
                        format!("cut {other_name} -> {name}{role} ({mode:?})")
                    }
                }
            };
            drop(cluster);
            for &(from, to) in &links {
                self.relay.cut(from, to, mode);
            }
            self.schedule.note(&format!(
                "nemesis: {what} for {:.3}s",
                duration.as_secs_f64()
            ));
            *self.counts.entry(kind).or_default() += 1;
            self.active.push(Active {
                kind,
                node,
                links,
                ends_at: Instant::now() + duration,
            });
        }

        fn end(&mut self, fault: Active) {
            let mut cluster = lock(&self.cluster);
            let name = cluster.id(fault.node);
            let what = match fault.kind {
                FaultKind::Kill => {
                    cluster.start(fault.node);
                    format!("restart {name}")
                }
                FaultKind::Pause => {
                    cluster.resume(fault.node);
                    format!("resume {name}")
                }
                FaultKind::Isolate | FaultKind::Cut => {
                    for &(from, to) in &fault.links {
                        self.relay.heal(from, to);
                    }
                    let links: Vec<String> = fault
                        .links
                        .iter()
                        .map(|&(from, to)| format!("{}->{}", cluster.id(from), cluster.id(to)))
                        .collect();
                    format!("heal {}", links.join(" "))
                }
            };
            drop(cluster);
            self.schedule.note(&format!("nemesis: {what}"));
        }

        /// The server that says it leads, asking only those that can answer quickly.
        fn leader(&self) -> Option<usize> {
            (0..self.addresses.len()).find(|&index| {
                status(self.addresses[index], Duration::from_millis(300))
                    .is_some_and(|metrics| metrics.role == mioraft::Role::Leader)
            })
        }
    }
}

mod workload {
    //! The clients: each thread drives its own `mioraft::Client` with random operations and
    //! records every call with its invocation and return times (microseconds since the start).
    //! A call that fails is indeterminate: it may or may not have taken effect, and the thread
    //! goes on with a fresh client. The exception is an error the library documents as "not
    //! applied" (see `NOT_APPLIED_ERRORS`): such a call is recorded as one that never took
    //! effect, so the checks hold the library to its word.
    //!
    //! Register keys are used a few hundred operations at a time (a "generation"), then left
    //! alone, so each key's history stays short enough for the checker. Every written value is
    //! unique (`c<client>-<n>`), which makes histories easy to read and to check.

    use crate::lock;
    use mioraft::sim::linearizability::{Operation, RegisterInput};
    use mioraft::Client;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// The list every client appends to.
    pub const LIST_KEY: &str = "appended";
    /// Register keys in use at any one time.
    const REGISTER_SLOTS: u64 = 4;
    /// Register operations (over all keys) before every client moves to fresh keys.
    const REGISTER_OPERATIONS_PER_GENERATION: u64 = 480;
    const CLIENT_TIMEOUT_MS_MIN: u64 = 1000;
    const CLIENT_TIMEOUT_MS_MAX: u64 = 3000;
    /// `mioraft::Error` variants documented to mean the command was not applied and never will
    /// be: `Refused` (by `StateMachine::validate`, before the log) and `SessionExpired`. Named
    /// rather than matched so that this file builds against the library before and after
    /// client sessions.
    const NOT_APPLIED_ERRORS: [&str; 2] = ["Refused", "SessionExpired"];

    /// One register operation as recorded.
    #[derive(Clone, Debug)]
    pub struct RegisterCall {
        pub client: usize,
        pub op: Operation<RegisterInput, String>,
        /// The cluster answered that the command was not applied: it must never take effect.
        pub not_applied: bool,
    }

    /// What became of one call.
    enum Outcome {
        Completed(String),
        Indeterminate,
        NotApplied,
    }

    /// One append as recorded.
    #[derive(Clone, Debug)]
    pub struct AppendCall {
        pub value: String,
        pub invoked_at: u64,
        /// `None` if the call failed (indeterminate).
        pub returned_at: Option<u64>,
        /// The cluster answered that the append was not applied: the value must not appear.
        pub not_applied: bool,
    }

    #[derive(Default)]
    pub struct History {
        pub registers: BTreeMap<String, Vec<RegisterCall>>,
        pub appends: Vec<AppendCall>,
        /// Replies the state machine gives only to malformed commands: a harness bug.
        pub malformed_replies: Vec<String>,
        /// Failed calls by kind of error.
        pub errors: BTreeMap<String, u64>,
        /// The first errors other than timeouts, with when and who.
        pub unusual_errors: Vec<String>,
    }

    pub struct Recorder {
        start: Instant,
        history: Mutex<History>,
    }

    impl Recorder {
        pub fn new(start: Instant) -> Recorder {
            Recorder {
                start,
                history: Mutex::new(History::default()),
            }
        }

        fn now_us(&self) -> u64 {
            self.start.elapsed().as_micros() as u64
        }

        /// The register keys used so far.
        pub fn keys(&self) -> Vec<String> {
            lock(&self.history).registers.keys().cloned().collect()
        }

        pub fn into_history(self) -> History {
            self.history
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Runs one register operation and records it; returns its output if it completed.
        pub fn register(
            &self,
            client: &mut Client,
            who: usize,
            key: &str,
            input: RegisterInput,
        ) -> Option<String> {
            let invoked_at = self.now_us();
            let result = match &input {
                RegisterInput::Put(value) => {
                    client.propose(format!("put {key} {value}").as_bytes())
                }
                RegisterInput::Get => client.query(format!("get {key}").as_bytes()),
                RegisterInput::Cas { expected, new } => {
                    client.propose(format!("cas {key} {expected} {new}").as_bytes())
                }
            };
            let returned_at = self.now_us();
            let outcome = self.outcome(who, result);
            let not_applied = matches!(outcome, Outcome::NotApplied);
            let output = match outcome {
                Outcome::Completed(output) => Some(output),
                Outcome::Indeterminate | Outcome::NotApplied => None,
            };
            let mut history = lock(&self.history);
            history
                .registers
                .entry(key.to_owned())
                .or_default()
                .push(RegisterCall {
                    client: who,
                    op: Operation {
                        input,
                        output: output.clone(),
                        invoked_at,
                        returned_at: output.as_ref().map(|_| returned_at),
                    },
                    not_applied,
                });
            output
        }

        /// Appends `value` to the list and records it; returns whether it was acknowledged.
        pub fn append(&self, client: &mut Client, who: usize, value: &str) -> bool {
            let invoked_at = self.now_us();
            let result = client.propose(format!("append {LIST_KEY} {value}").as_bytes());
            let returned_at = self.now_us();
            let outcome = self.outcome(who, result);
            let acknowledged = matches!(outcome, Outcome::Completed(_));
            lock(&self.history).appends.push(AppendCall {
                value: value.to_owned(),
                invoked_at,
                returned_at: acknowledged.then_some(returned_at),
                not_applied: matches!(outcome, Outcome::NotApplied),
            });
            acknowledged
        }

        /// What a call's result means for the history; errors are counted by kind.
        fn outcome(&self, who: usize, result: mioraft::Result<Vec<u8>>) -> Outcome {
            match result {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    if text.starts_with("error:") {
                        lock(&self.history).malformed_replies.push(text.clone());
                    }
                    Outcome::Completed(text)
                }
                Err(error) => {
                    const UNUSUAL_ERRORS_KEPT_MAX: usize = 20;
                    // The variant's name, e.g. "Timeout".
                    let kind: String = format!("{error:?}")
                        .chars()
                        .take_while(char::is_ascii_alphanumeric)
                        .collect();
                    let at = self.now_us() as f64 / 1e6;
                    let mut history = lock(&self.history);
                    if !matches!(error, mioraft::Error::Timeout { .. })
                        && history.unusual_errors.len() < UNUSUAL_ERRORS_KEPT_MAX
                    {
                        history
                            .unusual_errors
                            .push(format!("[{at:>8.3}s] c{who}: {error}"));
                    }
                    let not_applied = NOT_APPLIED_ERRORS.contains(&kind.as_str());
                    *history.errors.entry(kind).or_default() += 1;
                    if not_applied {
                        Outcome::NotApplied
                    } else {
                        Outcome::Indeterminate
                    }
                }
            }
        }
    }

    /// A client of the whole cluster, trying servers in its own random order.
    fn fresh_client(addresses: &[SocketAddr], rng: &mut ChaCha8Rng, timeout: Duration) -> Client {
        let mut order = addresses.to_vec();
        order.shuffle(rng);
        Client::new(order).with_timeout(timeout)
    }

    /// One client thread's loop: random operations until `stop`.
    pub fn run_client(
        who: usize,
        seed: u64,
        addresses: &[SocketAddr],
        recorder: &Recorder,
        register_operations: &AtomicU64,
        stop: &AtomicBool,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let timeout =
            Duration::from_millis(rng.gen_range(CLIENT_TIMEOUT_MS_MIN..=CLIENT_TIMEOUT_MS_MAX));
        let mut client = fresh_client(addresses, &mut rng, timeout);
        // The last value this client saw under each key: what its compare-and-swaps expect.
        let mut last_seen: BTreeMap<String, String> = BTreeMap::new();
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let value = format!("c{who}-{sequence}");
            sequence += 1;
            let roll = rng.gen_range(0..100);
            let slot = rng.gen_range(0..REGISTER_SLOTS);
            let completed = if roll < 20 {
                recorder.append(&mut client, who, &value)
            } else {
                let generation = register_operations.fetch_add(1, Ordering::Relaxed)
                    / REGISTER_OPERATIONS_PER_GENERATION;
                let key = format!("r{slot}g{generation}");
                let input = match roll {
                    20..=54 => RegisterInput::Put(value.clone()),
                    55..=79 => RegisterInput::Get,
                    _ => RegisterInput::Cas {
                        expected: last_seen.get(&key).cloned().unwrap_or_default(),
                        new: value.clone(),
                    },
                };
                match recorder.register(&mut client, who, &key, input.clone()) {
                    Some(output) => {
                        let now = match input {
                            RegisterInput::Put(written) => written,
                            RegisterInput::Cas { new, .. } if output == "ok" => new,
                            RegisterInput::Get | RegisterInput::Cas { .. } => output,
                        };
                        last_seen.insert(key, now);
                        true
                    }
                    None => false,
                }
            };
            if !completed {
                client = fresh_client(addresses, &mut rng, timeout);
            }
        }
    }
}

mod checks {
    //! What the history and the servers' logs must satisfy.
    //!
    //! Registers are checked key by key (P-compositionality) with
    //! `mioraft::sim::linearizability::check`. Before that, each key's history loses
    //! operations that cannot change the verdict, since the search is exponential in
    //! indeterminate operations:
    //! * indeterminate reads: they change nothing and constrain nothing;
    //! * indeterminate writes of a value nobody observed, by the simulator's own
    //!   `linearizability::prune_unobserved_writes` (its documentation has the argument; it
    //!   needs unique written values, which the clients here write too).
    //!
    //! Calls the cluster answered as "not applied" are left out altogether: if one took effect
    //! after all, whatever observed its value has no explanation and the check fails.

    use crate::workload::{AppendCall, RegisterCall};
    use mioraft::log::{FileLog, PersistentLog};
    use mioraft::sim::linearizability::{self, Operation, RegisterInput, RegisterModel, Verdict};
    use mioraft::{LogIndex, ServerId};
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// A key's history after dropping what cannot change the verdict.
    pub struct Reduced {
        pub operations: Vec<Operation<RegisterInput, String>>,
        pub reads_dropped: usize,
        pub writes_dropped: usize,
    }

    pub fn reduce(calls: &[RegisterCall]) -> Reduced {
        // A call the cluster said was not applied is left out: it must not have taken effect.
        let applicable = calls.iter().filter(|call| !call.not_applied);
        let (indeterminate_reads, operations): (Vec<_>, Vec<_>) = applicable
            .map(|call| call.op.clone())
            .partition(|op| op.output.is_none() && op.input == RegisterInput::Get);
        let kept = linearizability::prune_unobserved_writes(&operations);
        let writes_dropped = operations.len() - kept.len();
        Reduced {
            operations: kept
                .into_iter()
                .map(|position| operations[position].clone())
                .collect(),
            reads_dropped: indeterminate_reads.len(),
            writes_dropped,
        }
    }

    #[derive(Default)]
    pub struct RegisterReport {
        pub keys: usize,
        pub operations_checked: usize,
        pub indeterminate_kept: usize,
        pub reads_dropped: usize,
        pub writes_dropped: usize,
        pub elapsed: Duration,
        /// Keys whose history is not linearizable, with the checker's longest prefix.
        pub failures: Vec<(String, usize)>,
    }

    pub fn check_registers(registers: &BTreeMap<String, Vec<RegisterCall>>) -> RegisterReport {
        let started = Instant::now();
        let mut report = RegisterReport::default();
        for (key, calls) in registers {
            let reduced = reduce(calls);
            report.keys += 1;
            report.operations_checked += reduced.operations.len();
            report.indeterminate_kept += reduced
                .operations
                .iter()
                .filter(|op| op.output.is_none())
                .count();
            report.reads_dropped += reduced.reads_dropped;
            report.writes_dropped += reduced.writes_dropped;
            if let Verdict::NotLinearizable { longest_prefix, .. } =
                linearizability::check(&RegisterModel::default(), &reduced.operations)
            {
                report.failures.push((key.clone(), longest_prefix));
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// Problems with the final list: lost, duplicated or invented values, or an order that
    /// contradicts real time (an append acknowledged before another was invoked comes first).
    pub fn check_list(list: &str, appends: &[AppendCall]) -> Vec<String> {
        let mut problems = Vec::new();
        let values: Vec<&str> = list.split(',').filter(|value| !value.is_empty()).collect();
        let attempted: HashMap<&str, &AppendCall> = appends
            .iter()
            .map(|call| (call.value.as_str(), call))
            .collect();
        let mut positions: HashMap<&str, usize> = HashMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (position, value) in values.iter().enumerate() {
            positions.entry(value).or_insert(position);
            *counts.entry(value).or_default() += 1;
        }
        for (value, count) in &counts {
            if *count > 1 {
                let acknowledged = attempted
                    .get(value)
                    .is_some_and(|call| call.returned_at.is_some());
                problems.push(format!(
                    "list: {value} appears {count} times (its append was {})",
                    if acknowledged {
                        "acknowledged"
                    } else {
                        "indeterminate"
                    }
                ));
            }
            match attempted.get(value) {
                None => problems.push(format!("list: {value} was never appended by any client")),
                Some(call) if call.not_applied => problems.push(format!(
                    "list: {value} is present, but its append was answered \"not applied\""
                )),
                Some(_) => {}
            }
        }
        for call in appends {
            if call.returned_at.is_some() && !positions.contains_key(call.value.as_str()) {
                problems.push(format!(
                    "list: acknowledged append of {} is missing",
                    call.value
                ));
            }
        }
        // Real time: walking the list backwards, keep the earliest return among acknowledged
        // appends placed later; a value invoked after that return is out of order.
        let mut earliest_later_return: Option<(u64, &str)> = None;
        for position in (0..values.len()).rev() {
            let value = values[position];
            if positions.get(value) != Some(&position) {
                continue;
            }
            let Some(call) = attempted.get(value) else {
                continue;
            };
            if let Some((returned_at, later)) = earliest_later_return {
                if returned_at < call.invoked_at {
                    problems.push(format!(
                        "list: {later} (acknowledged at {returned_at} us) comes after {value} \
                         (invoked at {} us)",
                        call.invoked_at
                    ));
                }
            }
            if let Some(returned_at) = call.returned_at {
                if earliest_later_return.is_none_or(|(earliest, _)| returned_at < earliest) {
                    earliest_later_return = Some((returned_at, value));
                }
            }
        }
        problems
    }

    /// Every server's log holds the same entries up to `commit`; returns how many, and where
    /// each server's snapshot and log begin.
    pub fn compare_logs(
        dirs: &[(ServerId, PathBuf)],
        commit: LogIndex,
    ) -> Result<(u64, String), String> {
        let mut logs = Vec::new();
        let mut snapshots = Vec::new();
        for (id, dir) in dirs {
            let log = FileLog::open_with(dir, super::cluster::small_segments())
                .map_err(|error| format!("{id}: {error}"))?;
            let first = log.first_log_index();
            let snapshot = log
                .snapshot_meta()
                .map_or(LogIndex(0), |meta| meta.last_index);
            snapshots.push(format!(
                "{id} snapshot through {snapshot}, log from {first}"
            ));
            let entries = log
                .entries(first, commit.next(), u64::MAX)
                .map_err(|error| format!("{id}: {error}"))?;
            if first.0 + entries.len() as u64 != commit.0 + 1 {
                return Err(format!(
                    "{id} holds {} entries from {first} but the commit index is {commit}",
                    entries.len()
                ));
            }
            logs.push((*id, first, entries));
        }
        let start = logs.iter().map(|(_, first, _)| first.0).max().unwrap_or(1);
        let (reference_id, reference_first, reference) = &logs[0];
        for (id, first, entries) in &logs[1..] {
            for index in start..=commit.0 {
                let ours = &reference[(index - reference_first.0) as usize];
                let theirs = &entries[(index - first.0) as usize];
                if ours != theirs {
                    return Err(format!(
                        "committed entry {index} differs: {reference_id} has {ours:?}, {id} has \
                         {theirs:?}"
                    ));
                }
            }
        }
        Ok((commit.0 + 1 - start, snapshots.join("; ")))
    }

    fn linearizable(calls: &[RegisterCall]) -> bool {
        let reduced = reduce(calls);
        linearizability::check(&RegisterModel::default(), &reduced.operations)
            == Verdict::Linearizable
    }

    /// The history as it stood at time `at`: calls completed by then as recorded, calls still
    /// running then as indeterminate, later calls left out.
    fn cut_at(calls: &[RegisterCall], at: u64) -> Vec<RegisterCall> {
        calls
            .iter()
            .filter(|call| call.op.invoked_at <= at)
            .map(|call| {
                let mut call = call.clone();
                if call
                    .op
                    .returned_at
                    .is_none_or(|returned_at| returned_at > at)
                {
                    call.op.output = None;
                    call.op.returned_at = None;
                }
                call
            })
            .collect()
    }

    /// The return time of the call that first makes the history non-linearizable. A history
    /// cut at any time is linearizable if the whole is, so a binary search over return times
    /// finds the earliest cut that is not.
    fn first_violation(calls: &[RegisterCall]) -> Option<u64> {
        let mut returns: Vec<u64> = calls
            .iter()
            .filter_map(|call| call.op.returned_at)
            .collect();
        returns.sort_unstable();
        let (mut low, mut high) = (0, returns.len());
        while low < high {
            let middle = (low + high) / 2;
            if linearizable(&cut_at(calls, returns[middle])) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        returns.get(low).copied()
    }

    /// A non-linearizable key's history up to its first violation, one call per line in
    /// invocation order, the violating call marked `>>`.
    pub fn describe(key: &str, calls: &[RegisterCall]) -> String {
        let violation = first_violation(calls);
        let mut sorted: Vec<&RegisterCall> = calls
            .iter()
            .filter(|call| violation.is_none_or(|at| call.op.invoked_at <= at))
            .collect();
        sorted.sort_by_key(|call| call.op.invoked_at);
        let mut text = format!(
            "history of {key} up to its first violation ({} of {} calls; `>>` marks the call \
             no order can explain, given those before it):\n",
            sorted.len(),
            calls.len()
        );
        for call in sorted {
            let input = match &call.op.input {
                RegisterInput::Put(value) => format!("put {value}"),
                RegisterInput::Get => "get".to_owned(),
                RegisterInput::Cas { expected, new } => format!("cas {expected:?} -> {new}"),
            };
            let returned = call.op.returned_at.map_or("         ?".to_owned(), |at| {
                format!("{:>10.6}", at as f64 / 1e6)
            });
            let output = match &call.op.output {
                Some(output) => format!("{output:?}"),
                None if call.not_applied => "(answered: not applied)".to_owned(),
                None => "(indeterminate)".to_owned(),
            };
            let mark = if call.op.returned_at.is_some() && call.op.returned_at == violation {
                ">>"
            } else {
                "  "
            };
            text.push_str(&format!(
                "{mark} c{:<3} [{:>10.6} .. {returned}] {input:<26} => {output}\n",
                call.client,
                call.op.invoked_at as f64 / 1e6
            ));
        }
        text
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One server's metrics, or `None` if it does not answer within `timeout`.
fn status(address: SocketAddr, timeout: Duration) -> Option<Metrics> {
    mioraft::Client::new([address])
        .with_timeout(timeout)
        .status(address)
        .ok()
}

/// Polls `check` until it gives a value or `timeout` passes; then `Err` with the last problem.
fn wait_for<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(problem) if Instant::now() >= deadline => return Err(problem),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every server answers, exactly one leads, all share its term, and all have applied the same
/// (non-zero) commit index. Returns that index.
fn converged(addresses: &[SocketAddr]) -> Result<LogIndex, String> {
    let metrics: Vec<Option<Metrics>> = addresses
        .iter()
        .map(|&address| status(address, Duration::from_millis(500)))
        .collect();
    let summary = || {
        let lines: Vec<String> = metrics
            .iter()
            .zip(addresses)
            .map(|(metrics, address)| match metrics {
                Some(m) => format!(
                    "{} {:?} term {} commit {} applied {}",
                    m.id, m.role, m.current_term, m.commit_index, m.last_applied
                ),
                None => format!("{address} does not answer"),
            })
            .collect();
        lines.join("; ")
    };
    let all: Vec<&Metrics> = metrics.iter().flatten().collect();
    let leaders = all.iter().filter(|m| m.role == Role::Leader).count();
    let first = all.first().ok_or_else(summary)?;
    let agreed = all.len() == addresses.len()
        && leaders == 1
        && first.commit_index.0 > 0
        && all.iter().all(|m| {
            m.current_term == first.current_term
                && m.commit_index == first.commit_index
                && m.last_applied == first.commit_index
        });
    if agreed {
        Ok(first.commit_index)
    } else {
        Err(summary())
    }
}

/// Reads with a patient client until one read succeeds (`None` if none does in time).
fn read_until_answered(
    recorder: &workload::Recorder,
    client: &mut mioraft::Client,
    who: usize,
    key: &str,
) -> Option<String> {
    wait_for(Duration::from_secs(30), || {
        recorder
            .register(
                client,
                who,
                key,
                mioraft::sim::linearizability::RegisterInput::Get,
            )
            .ok_or_else(|| format!("no answer to get {key}"))
    })
    .ok()
}

/// Thesis §9.6 with real processes: a server cut off from the others for many election
/// timeouts (3 s against 150–300 ms) keeps timing out, but with pre-vote it never raises its
/// term, so when the links heal the leader carries on: no election, the majority's term
/// unchanged, and the returning server catches up with what was written meanwhile.
#[test]
fn a_server_partitioned_for_many_election_timeouts_rejoins_without_an_election() {
    if std::env::var(cluster::CHILD_ENV).is_ok() {
        return;
    }
    const SERVERS: usize = 3;
    let root = tempfile::Builder::new()
        .prefix("mioraft-partition-")
        .tempdir()
        .expect("a temporary directory");
    let mut cluster = cluster::Cluster::bind(SERVERS, root.path());
    let addresses = cluster.addresses();
    let relay = relay::Relay::new(&addresses);
    for index in 0..SERVERS {
        let peers = (0..SERVERS)
            .filter(|&peer| peer != index)
            .map(|peer| (cluster.id(peer), relay.address(index, peer)))
            .collect();
        cluster.set_peers(index, peers);
        cluster.start(index);
    }
    struct CloseOnDrop(cluster::Cluster);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _guard = CloseOnDrop(cluster);
    let leader = wait_for(Duration::from_secs(20), || {
        addresses
            .iter()
            .find_map(|&address| {
                status(address, Duration::from_millis(500)).filter(|m| m.role == Role::Leader)
            })
            .ok_or_else(|| "no leader yet".to_owned())
    })
    .expect("a leader");
    let leader_index = (leader.id.0 - 1) as usize;
    let cut_off = (leader_index + 1) % SERVERS;
    for other in (0..SERVERS).filter(|&other| other != cut_off) {
        relay.cut(cut_off, other, relay::CutMode::Blackhole);
        relay.cut(other, cut_off, relay::CutMode::Blackhole);
    }
    let mut client = mioraft::Client::new(addresses.clone()).with_timeout(Duration::from_secs(10));
    client
        .propose(b"put during partition")
        .expect("the majority writes");
    // The fault's length, not a wait for a condition: many election timeouts pass.
    thread::sleep(Duration::from_secs(3));
    let isolated = status(addresses[cut_off], Duration::from_millis(500)).expect("it answers");
    for other in (0..SERVERS).filter(|&other| other != cut_off) {
        relay.heal(cut_off, other);
        relay.heal(other, cut_off);
    }
    let rejoined = wait_for(Duration::from_secs(20), || {
        let metrics = status(addresses[cut_off], Duration::from_millis(500))
            .ok_or_else(|| "no answer".to_owned())?;
        let leader_now = status(addresses[leader_index], Duration::from_millis(500))
            .ok_or_else(|| "the leader does not answer".to_owned())?;
        if metrics.current_leader == Some(leader.id)
            && metrics.last_applied >= leader_now.commit_index
        {
            Ok(metrics)
        } else {
            Err(format!("rejoining {metrics:?}; leader {leader_now:?}"))
        }
    })
    .expect("the cut-off server follows the leader again");
    let after: Vec<Metrics> = addresses
        .iter()
        .map(|&address| status(address, Duration::from_millis(500)).expect("answers"))
        .collect();
    println!(
        "cut off {} for 3 s: its term stayed {} while cut off; leader {} kept term {}",
        isolated.id, isolated.current_term, leader.id, leader.current_term
    );
    assert_eq!(
        isolated.current_term, leader.current_term,
        "pre-vote: the cut-off server never raised its term"
    );
    for metrics in &after {
        assert_eq!(
            metrics.current_term, leader.current_term,
            "no election happened: {after:?}"
        );
    }
    assert_eq!(after[leader_index].role, Role::Leader);
    assert_eq!(rejoined.current_term, leader.current_term);
}

#[test]
fn clients_see_a_linearizable_history_while_servers_crash_pause_and_partition() {
    if std::env::var_os(cluster::CHILD_ENV).is_some() {
        return;
    }
    let _ = env_logger::builder().is_test(true).try_init();
    let knobs = knobs::Knobs::from_env();
    let faults: Vec<&str> = knobs.faults.iter().map(|kind| kind.name()).collect();
    println!(
        "nemesis: seed {}, {} servers, {} clients, {:?}, faults [{}]",
        knobs.seed,
        knobs.servers,
        knobs.clients,
        knobs.duration,
        faults.join(", ")
    );
    println!("replay the choices with: {}", knobs.replay_command());

    let root = tempfile::Builder::new()
        .prefix("mioraft-nemesis-")
        .tempdir()
        .expect("a temporary directory");
    let cluster = Arc::new(Mutex::new(cluster::Cluster::bind(
        knobs.servers,
        root.path(),
    )));
    let addresses = lock(&cluster).addresses();
    let relay = Arc::new(relay::Relay::new(&addresses));
    {
        let mut cluster = lock(&cluster);
        for index in 0..knobs.servers {
            let peers = (0..knobs.servers)
                .filter(|&peer| peer != index)
                .map(|peer| (cluster.id(peer), relay.address(index, peer)))
                .collect();
            cluster.set_peers(index, peers);
            cluster.start(index);
        }
    }
    // Whatever happens below, the servers die with the test: this guard closes the cluster
    // without waiting for the nemesis thread to let go of it.
    struct CloseOnDrop(Arc<Mutex<cluster::Cluster>>);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            lock(&self.0).close();
        }
    }
    let guard = CloseOnDrop(Arc::clone(&cluster));
    wait_for(Duration::from_secs(20), || {
        addresses
            .iter()
            .find_map(|&address| {
                status(address, Duration::from_millis(500)).filter(|m| m.role == Role::Leader)
            })
            .ok_or_else(|| "no leader yet".to_owned())
    })
    .expect("a first leader");

    // The run: clients and the nemesis until the deadline.
    let start = Instant::now();
    let schedule = Arc::new(nemesis::Schedule::new(start));
    let recorder = Arc::new(workload::Recorder::new(start));
    let stop = Arc::new(AtomicBool::new(false));
    let register_operations = Arc::new(AtomicU64::new(0));
    schedule.note("clients start");
    let clients: Vec<_> = (0..knobs.clients)
        .map(|who| {
            let seed = knobs.seed ^ (who as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (addresses, recorder, operations, stop) = (
                addresses.clone(),
                Arc::clone(&recorder),
                Arc::clone(&register_operations),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                workload::run_client(who, seed, &addresses, &recorder, &operations, &stop);
            })
        })
        .collect();
    let until = start + knobs.duration;
    let nemesis_thread = {
        let nemesis = nemesis::Nemesis::new(
            knobs.seed,
            knobs.faults.clone(),
            Arc::clone(&cluster),
            Arc::clone(&relay),
            Arc::clone(&schedule),
        );
        let stop = Arc::clone(&stop);
        thread::spawn(move || nemesis.run(until, &stop))
    };
    // The workload's length, not a wait for the system to settle.
    thread::sleep(until.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread");
    }
    schedule.note("clients stopped");
    let fault_counts = nemesis_thread.join().expect("the nemesis thread");

    // Recovery: the healed cluster must converge, then answer a final read of every key.
    let mut problems: Vec<String> = Vec::new();
    if let Err(last) = wait_for(Duration::from_secs(60), || converged(&addresses)) {
        problems.push(format!(
            "the healed cluster did not converge within 60 s; last seen: {last}"
        ));
    }
    let mut final_client =
        mioraft::Client::new(addresses.clone()).with_timeout(Duration::from_secs(5));
    let final_reader = knobs.clients;
    for key in recorder.keys() {
        if read_until_answered(&recorder, &mut final_client, final_reader, &key).is_none() {
            problems.push(format!("no final read of {key} succeeded within 30 s"));
        }
    }
    let list = wait_for(Duration::from_secs(30), || {
        final_client
            .query(format!("list {}", workload::LIST_KEY).as_bytes())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|error| error.to_string())
    });
    let commit = wait_for(Duration::from_secs(60), || converged(&addresses));
    schedule.note("final reads done");
    drop(guard);

    let history = Arc::try_unwrap(recorder)
        .unwrap_or_else(|_| panic!("every client thread has finished"))
        .into_history();
    let logs = match &commit {
        Ok(commit) => checks::compare_logs(&lock(&cluster).dirs(), *commit),
        Err(last) => Err(format!("no final convergence; last seen: {last}")),
    };
    match &logs {
        Ok(_) => {}
        Err(problem) => problems.push(format!("logs: {problem}")),
    }
    match &list {
        Ok(list) => problems.extend(checks::check_list(list, &history.appends)),
        Err(error) => problems.push(format!("the final list read failed: {error}")),
    }
    for reply in history.malformed_replies.iter().take(5) {
        problems.push(format!("harness bug: the state machine replied {reply:?}"));
    }
    let registers = checks::check_registers(&history.registers);
    for (key, longest_prefix) in &registers.failures {
        problems.push(format!(
            "{key}: not linearizable (at most {longest_prefix} completed operations fit an order)"
        ));
    }

    // The summary.
    let register_calls: Vec<&workload::RegisterCall> =
        history.registers.values().flatten().collect();
    let appends_acknowledged = history
        .appends
        .iter()
        .filter(|call| call.returned_at.is_some())
        .count();
    let appends_not_applied = history
        .appends
        .iter()
        .filter(|call| call.not_applied)
        .count();
    let attempted = register_calls.len() + history.appends.len();
    let acknowledged = register_calls
        .iter()
        .filter(|call| call.op.returned_at.is_some())
        .count()
        + appends_acknowledged;
    let not_applied = register_calls
        .iter()
        .filter(|call| call.not_applied)
        .count()
        + appends_not_applied;
    let nemesis_actions: Vec<String> = knobs::FaultKind::ALL
        .iter()
        .map(|kind| {
            format!(
                "{} {}",
                kind.name(),
                fault_counts.get(kind).copied().unwrap_or(0)
            )
        })
        .collect();
    println!("nemesis summary (seed {}):", knobs.seed);
    println!(
        "  operations: {attempted} attempted, {acknowledged} acknowledged, {} indeterminate, \
         {not_applied} answered \"not applied\" (errors by kind: {:?})",
        attempted - acknowledged - not_applied,
        history.errors
    );
    for error in &history.unusual_errors {
        println!("    {error}");
    }
    println!("  nemesis actions: {}", nemesis_actions.join(", "));
    println!(
        "  registers: {} keys, {} operations checked ({} indeterminate kept; dropped {} \
         indeterminate reads and {} unobserved indeterminate writes) in {:.3} s, {} not \
         linearizable",
        registers.keys,
        registers.operations_checked,
        registers.indeterminate_kept,
        registers.reads_dropped,
        registers.writes_dropped,
        registers.elapsed.as_secs_f64(),
        registers.failures.len()
    );
    if let Ok(list) = &list {
        println!(
            "  list: {} values; appends: {appends_acknowledged} acknowledged, {} indeterminate, \
             {appends_not_applied} answered \"not applied\"",
            list.split(',').filter(|value| !value.is_empty()).count(),
            history.appends.len() - appends_acknowledged - appends_not_applied,
        );
    }
    if let (Ok((entries, snapshots)), Ok(commit)) = (&logs, &commit) {
        println!(
            "  logs: all {} servers hold the same {entries} committed entries (commit index {commit})",
            knobs.servers
        );
        println!("  snapshots: {snapshots}");
    }

    if problems.is_empty() {
        return;
    }
    let kept = root.keep();
    println!("\nNEMESIS FAILURE (seed {})", knobs.seed);
    println!("replay the choices with: {}", knobs.replay_command());
    println!("server logs and data kept in {}", kept.display());
    println!("schedule:");
    for line in schedule.lines() {
        println!("  {line}");
    }
    const FAILED_KEYS_SHOWN_MAX: usize = 3;
    for (key, _) in registers.failures.iter().take(FAILED_KEYS_SHOWN_MAX) {
        println!("{}", checks::describe(key, &history.registers[key]));
    }
    println!("problems ({}):", problems.len());
    for problem in &problems {
        println!("  {problem}");
    }
    panic!(
        "nemesis run with seed {} found {} problem(s); first: {}",
        knobs.seed,
        problems.len(),
        problems[0]
    );
}

mod harness_tests {
    //! The harness checked on its own, so that a failing nemesis run points at the library.

    use crate::checks::{self, reduce};
    use crate::machine::Machine;
    use crate::relay::{CutMode, Relay};
    use crate::workload::{AppendCall, RegisterCall};
    use mioraft::sim::linearizability::{Model, Operation, RegisterInput, RegisterModel};
    use mioraft::StateMachine;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn the_machine_follows_the_register_model_and_its_snapshot_round_trips() {
        let mut machine = Machine::default();
        let mut model = RegisterModel::default();
        let steps = [
            ("put k a", RegisterInput::Put("a".to_owned())),
            (
                "cas k  b",
                RegisterInput::Cas {
                    expected: String::new(),
                    new: "b".to_owned(),
                },
            ),
            (
                "cas k a b",
                RegisterInput::Cas {
                    expected: "a".to_owned(),
                    new: "b".to_owned(),
                },
            ),
            ("put k c", RegisterInput::Put("c".to_owned())),
        ];
        for (command, input) in steps {
            let (next, expected) = model.step(&input);
            model = next;
            let reply = String::from_utf8(machine.apply(command.as_bytes())).expect("utf-8");
            assert_eq!(reply, expected, "{command}");
            let read = String::from_utf8(machine.query(b"get k")).expect("utf-8");
            assert_eq!(read, model.0, "get after {command}");
        }
        assert_eq!(machine.query(b"get other"), b"");
        assert_eq!(machine.apply(b"append k x"), b"");
        assert_eq!(machine.apply(b"append k y"), b"");
        assert_eq!(machine.query(b"list k"), b"x,y");
        assert_eq!(machine.query(b"get k"), b"c", "lists are a namespace apart");
        assert!(machine.apply(b"append k x,y").starts_with(b"error:"));
        assert!(machine.apply(b"put k").starts_with(b"error:"));
        assert!(machine.query(b"count k").starts_with(b"error:"));

        let mut restored = Machine::default();
        restored.apply(b"put stale value");
        restored.restore_snapshot(machine.snapshot());
        assert_eq!(restored, machine);
    }

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    /// Whether a round trip through `stream` echoes.
    fn echoes(stream: &mut TcpStream) -> bool {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = [0u8; 4];
        stream.write_all(b"ping").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"ping"
    }

    /// Whether the peer closed `stream` (as opposed to answering or staying silent).
    fn closed(stream: &mut TcpStream) -> bool {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buffer = [0u8; 4];
        match stream.read(&mut buffer) {
            Ok(read) => read == 0,
            Err(error) => !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    #[test]
    fn the_relay_forwards_refuses_blackholes_and_heals() {
        let echo = echo_server();
        let relay = Relay::new(&[echo, echo]);
        let connect = || TcpStream::connect(relay.address(0, 1)).expect("the relay accepts");
        let mut before = connect();
        assert!(echoes(&mut before));

        relay.cut(0, 1, CutMode::Refuse);
        assert!(closed(&mut before), "a cut closes forwarded connections");
        assert!(
            closed(&mut connect()),
            "a refusing cut closes new connections"
        );
        let mut other_way = TcpStream::connect(relay.address(1, 0)).expect("the relay accepts");
        assert!(echoes(&mut other_way), "a cut is one way");
        relay.heal(0, 1);
        assert!(echoes(&mut connect()));

        relay.cut(0, 1, CutMode::Blackhole);
        relay.cut(0, 1, CutMode::Blackhole);
        let held_count = |count| {
            crate::wait_for(Duration::from_secs(5), || {
                (relay.held_count(0, 1) == count)
                    .then_some(())
                    .ok_or_else(|| format!("{} held", relay.held_count(0, 1)))
            })
            .expect("the relay takes the connection");
        };
        let mut held = connect();
        held.write_all(b"ping").expect("a blackhole takes bytes");
        held_count(1);
        held.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a timeout");
        let mut buffer = [0u8; 4];
        let silent = held.read(&mut buffer);
        assert!(
            matches!(&silent, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "a blackhole answers nothing: {silent:?}"
        );
        relay.heal(0, 1);
        let mut still_held = connect();
        held_count(2);
        relay.heal(0, 1);
        assert!(closed(&mut held), "the last heal closes held connections");
        assert!(closed(&mut still_held), "cuts nest");
        assert!(echoes(&mut connect()));
    }

    fn call(
        client: usize,
        input: RegisterInput,
        output: Option<&str>,
        invoked_at: u64,
        returned_at: Option<u64>,
    ) -> RegisterCall {
        RegisterCall {
            client,
            op: Operation {
                input,
                output: output.map(str::to_owned),
                invoked_at,
                returned_at,
            },
            not_applied: false,
        }
    }

    fn put(value: &str) -> RegisterInput {
        RegisterInput::Put(value.to_owned())
    }

    #[test]
    fn the_reduction_drops_only_what_cannot_matter_and_a_stale_read_is_pinned() {
        let history = vec![
            call(0, put("a"), Some(""), 0, Some(10)),
            // Indeterminate and never observed: dropped.
            call(1, put("lost"), None, 5, None),
            call(2, RegisterInput::Get, None, 6, None),
            // Indeterminate but observed by the read below: kept.
            call(1, put("b"), None, 20, None),
            call(2, RegisterInput::Get, Some("b"), 30, Some(40)),
            call(0, put("c"), Some("b"), 50, Some(60)),
        ];
        let reduced = reduce(&history);
        assert_eq!(reduced.reads_dropped, 1);
        assert_eq!(reduced.writes_dropped, 1);
        assert_eq!(reduced.operations.len(), 4);
        let report = checks::check_registers(&[("k".to_owned(), history.clone())].into());
        assert!(report.failures.is_empty());

        // A read of "a" after "c" was acknowledged: stale, and pinned as the first violation.
        let mut stale = history;
        stale.push(call(3, RegisterInput::Get, Some("a"), 70, Some(80)));
        stale.push(call(0, put("d"), Some("c"), 90, Some(100)));
        let report = checks::check_registers(&[("k".to_owned(), stale.clone())].into());
        assert_eq!(report.failures.len(), 1);
        let text = checks::describe("k", &stale);
        let marked: Vec<&str> = text.lines().filter(|line| line.starts_with(">>")).collect();
        assert_eq!(marked.len(), 1, "{text}");
        assert!(marked[0].contains("c3"), "{text}");
        assert!(
            !text.contains("put d"),
            "calls after the violation are left out: {text}"
        );

        // A put the cluster called "not applied", whose value a read then returns.
        let mut denied = vec![
            call(0, put("a"), None, 0, None),
            call(1, RegisterInput::Get, Some("a"), 10, Some(20)),
        ];
        let report = checks::check_registers(&[("k".to_owned(), denied.clone())].into());
        assert!(
            report.failures.is_empty(),
            "indeterminate, it explains the read"
        );
        denied[0].not_applied = true;
        let report = checks::check_registers(&[("k".to_owned(), denied)].into());
        assert_eq!(report.failures.len(), 1, "answered not applied, it cannot");
    }

    fn append(value: &str, invoked_at: u64, returned_at: Option<u64>) -> AppendCall {
        AppendCall {
            value: value.to_owned(),
            invoked_at,
            returned_at,
            not_applied: false,
        }
    }

    #[test]
    fn the_list_check_names_duplicates_losses_inventions_and_reordering() {
        let appends = [
            append("a", 0, Some(10)),
            append("b", 20, Some(30)),
            append("c", 25, None),
        ];
        assert!(checks::check_list("a,b", &appends).is_empty());
        assert!(checks::check_list("a,c,b", &appends).is_empty());
        let problems = checks::check_list("b,a,a,x", &appends);
        let text = problems.join("\n");
        assert!(text.contains("a appears 2 times"), "{text}");
        assert!(text.contains("x was never appended"), "{text}");
        assert!(
            text.contains("a (acknowledged at 10 us) comes after b"),
            "{text}"
        );
        let problems = checks::check_list("a", &appends);
        assert_eq!(problems, ["list: acknowledged append of b is missing"]);
        let mut denied = appends.to_vec();
        denied[2].not_applied = true;
        assert!(checks::check_list("a,b", &denied).is_empty());
        let problems = checks::check_list("a,b,c", &denied);
        assert_eq!(
            problems,
            ["list: c is present, but its append was answered \"not applied\""]
        );
    }
}
