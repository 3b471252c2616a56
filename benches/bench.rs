//! mioraft's benchmark: proposals per second, latency percentiles and the leader's CPU time per
//! committed entry, as a table (or JSON), for clusters on 127.0.0.1 over real sockets, or for the
//! consensus core alone in one thread (no network, no serialization).
//!
//! ```text
//! cargo bench --bench bench -- [--servers 3,5] [--logs mem,file] [--clients 1,16,64,256]
//!                              [--pipeline 1,64] [--seconds 3] [--payload 100] [--reads]
//!                              [--in-process] [--machines null,kv] [--json]
//! cargo bench --bench bench -- --memory 1000000 [--payload 100]
//! ```
//!
//! Each cell of the table starts a fresh cluster, warms it up, then keeps `clients` requests
//! outstanding for `seconds`: `put` commands of `payload` bytes. At pipeline depth 1 each is a
//! client thread with a blocking `Client` (one request outstanding); at depth D > 1 they are
//! spread over ceil(clients / D) threads, each with one `Pipeline` connection of depth up to D
//! (256 clients at depth 64: 4 connections of 64). Each request's latency is recorded. `file` keeps each server's log in a `FileLog` (fsync on every sync) in a
//! temporary directory. `--reads` measures linearizable reads instead. `--in-process` drives
//! `Consensus` instances directly: proposals per second of CPU time, with `clients` proposals
//! outstanding, those answered proposed again as one batch (`step_batch`, as the reactor does per
//! turn), for each state machine of `--machines null,kv` (`null` keeps nothing, as the in-process
//! benchmarks of other Raft libraries do; `kv` is the key-value map). A progress line goes to
//! stderr; `--json` prints the rows as a JSON array.
//!
//! `--memory N` measures a server's resident memory instead: a one-server cluster with a
//! `FileLog` (snapshots off, so the log keeps every entry) in this process, idle, then after
//! `N` proposals of `payload` bytes to 1,000 keys (64 client threads), and the data directory's
//! size.

use hdrhistogram::Histogram;
use mioraft::consensus::{Actions, Config, Consensus, Envelope, Event, ProposalId, Timer};
use mioraft::log::FileLog;
use mioraft::server::LocalCluster;
use mioraft::{
    Client, KvStateMachine, MemLog, NullStateMachine, PersistentLog, Pipeline, Role, ServerId,
    StateMachine,
};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Options {
    servers: Vec<u64>,
    logs: Vec<String>,
    clients: Vec<u64>,
    /// Pipeline depths: 1 is a blocking `Client` per client, more a `Pipeline` per D clients.
    pipeline: Vec<u64>,
    seconds: f64,
    payload: usize,
    reads: bool,
    in_process: bool,
    /// In process: the state machines to run (`null` keeps nothing; `kv` is the key-value map).
    machines: Vec<String>,
    json: bool,
    /// Entries to write for the memory measurement, if that is what was asked.
    memory: Option<u64>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: cargo bench --bench bench -- [--servers 3,5] [--logs mem,file] \
         [--clients 1,16,64,256] [--pipeline 1,64] [--seconds 3] [--payload 100] [--reads] \
         [--in-process] [--machines null,kv] [--json]"
    );
    std::process::exit(2);
}

fn options() -> Options {
    let mut options = Options {
        servers: vec![3],
        logs: vec!["mem".into(), "file".into()],
        clients: vec![1, 16, 64, 256],
        pipeline: vec![1, 64],
        seconds: 3.0,
        payload: 100,
        reads: false,
        in_process: false,
        machines: vec!["null".into(), "kv".into()],
        json: false,
        memory: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let list = |name: &str, text: String| -> Vec<u64> {
            text.split(',')
                .map(|item| match item.trim().parse() {
                    Ok(number) if number > 0 => number,
                    _ => usage(&format!("{name}: {item:?} is not a positive number")),
                })
                .collect()
        };
        match arg.as_str() {
            "--servers" => options.servers = list("--servers", value("--servers")),
            "--clients" => options.clients = list("--clients", value("--clients")),
            "--pipeline" => options.pipeline = list("--pipeline", value("--pipeline")),
            "--logs" => {
                options.logs = value("--logs").split(',').map(str::to_owned).collect();
                if let Some(bad) = options.logs.iter().find(|l| *l != "mem" && *l != "file") {
                    usage(&format!("--logs: {bad:?} is neither mem nor file"));
                }
            }
            "--seconds" => {
                options.seconds = value("--seconds")
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| usage("--seconds needs a positive number"));
            }
            "--payload" => {
                options.payload = value("--payload")
                    .parse()
                    .unwrap_or_else(|_| usage("--payload needs a number of bytes"));
            }
            "--reads" => options.reads = true,
            "--in-process" => options.in_process = true,
            "--machines" => {
                options.machines = value("--machines").split(',').map(str::to_owned).collect();
                if let Some(bad) = options.machines.iter().find(|m| *m != "null" && *m != "kv") {
                    usage(&format!("--machines: {bad:?} is neither null nor kv"));
                }
            }
            "--json" => options.json = true,
            "--memory" => {
                let entries = value("--memory")
                    .parse()
                    .unwrap_or_else(|_| usage("--memory needs a number of entries"));
                options.memory = Some(entries);
            }
            "--bench" => {} // cargo bench passes it
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    options
}

/// One cell of the table.
struct Row {
    mode: &'static str,
    servers: u64,
    log: String,
    clients: u64,
    /// The pipeline depth (requests outstanding per connection); none in process.
    depth: Option<u64>,
    operations: u64,
    per_second: f64,
    /// Latency percentiles in microseconds (p50, p99, p99.9); none in process.
    latency: Option<(u64, u64, u64)>,
    /// The leader's CPU time per committed operation, in microseconds.
    leader_cpu_us: f64,
}

fn main() {
    let options = options();
    if let Some(entries) = options.memory {
        memory(entries, &options);
        return;
    }
    let mut rows = Vec::new();
    // In process, the log is always a MemLog; the cells differ by state machine instead.
    let logs = if options.in_process {
        options
            .machines
            .iter()
            .map(|m| format!("mem/{m}"))
            .collect()
    } else {
        options.logs.clone()
    };
    // In process, proposals are stepped into the core directly: no connections to pipeline.
    let depths = if options.in_process {
        vec![1]
    } else {
        options.pipeline.clone()
    };
    let mut cells: Vec<(u64, String, u64, u64)> = Vec::new();
    for &servers in &options.servers {
        for log in &logs {
            for &clients in &options.clients {
                for &depth in &depths {
                    cells.push((servers, log.clone(), clients, depth));
                }
            }
        }
    }
    if !options.json {
        println!("{}", header());
    }
    for (number, (servers, log, clients, depth)) in cells.iter().enumerate() {
        eprint!(
            "\r[{}/{}] {servers} servers, {log} log, {clients} clients, depth {depth} ...   ",
            number + 1,
            cells.len()
        );
        let _ = std::io::stderr().flush();
        let row = if options.in_process {
            match log.as_str() {
                "mem/kv" => in_process(*servers, *clients, log, &options, KvStateMachine::new),
                _ => in_process(*servers, *clients, log, &options, || NullStateMachine),
            }
        } else if log == "file" {
            let root = std::env::temp_dir().join(format!("mioraft-bench-{}", std::process::id()));
            let row = over_sockets(&options, *servers, *clients, *depth, "file", |id| {
                FileLog::open(root.join(format!("n{}", id.0))).expect("open a data directory")
            });
            let _ = std::fs::remove_dir_all(&root);
            row
        } else {
            over_sockets(&options, *servers, *clients, *depth, "mem", |_| {
                MemLog::new()
            })
        };
        // Clear the progress line before the row, for a terminal showing both streams.
        eprint!("\r{}\r", " ".repeat(PROGRESS_WIDTH));
        if !options.json {
            println!("{}", format_row(&row));
        }
        rows.push(row);
    }

    if options.json {
        println!("{}", json(&rows, &options));
    }
}

/// Characters the progress line may take on stderr.
const PROGRESS_WIDTH: usize = 72;

fn header() -> String {
    format!(
        "{:<10} {:>7} {:>4} {:>7} {:>5} {:>12} {:>9} {:>9} {:>9} {:>12}",
        "mode",
        "servers",
        "log",
        "clients",
        "depth",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "leader us/op"
    )
}

fn format_row(row: &Row) -> String {
    let (p50, p99, p999) = match row.latency {
        Some((a, b, c)) => (a.to_string(), b.to_string(), c.to_string()),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let depth = row.depth.map_or("-".to_owned(), |depth| depth.to_string());
    format!(
        "{:<10} {:>7} {:>4} {:>7} {:>5} {:>12.0} {:>9} {:>9} {:>9} {:>12.2}",
        row.mode,
        row.servers,
        row.log,
        row.clients,
        depth,
        row.per_second,
        p50,
        p99,
        p999,
        row.leader_cpu_us
    )
}

fn json(rows: &[Row], options: &Options) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|row| {
            let latency = match row.latency {
                Some((p50, p99, p999)) => {
                    format!("\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999}")
                }
                None => "\"p50_us\":null,\"p99_us\":null,\"p999_us\":null".to_owned(),
            };
            let depth = row
                .depth
                .map_or("null".to_owned(), |depth| depth.to_string());
            format!(
                "{{\"mode\":\"{}\",\"servers\":{},\"log\":\"{}\",\"clients\":{},\
                 \"depth\":{depth},\"payload_bytes\":{},\"operations\":{},\
                 \"ops_per_second\":{:.1},{latency},\"leader_cpu_us_per_op\":{:.3}}}",
                row.mode,
                row.servers,
                row.log,
                row.clients,
                options.payload,
                row.operations,
                row.per_second,
                row.leader_cpu_us
            )
        })
        .collect();
    format!("[{}]", items.join(",\n "))
}

// ---- real sockets ----

fn over_sockets<L: PersistentLog + Send + 'static>(
    options: &Options,
    servers: u64,
    clients: u64,
    depth: u64,
    log: &str,
    make_log: impl Fn(ServerId) -> L,
) -> Row {
    let cluster = LocalCluster::spawn(servers, make_log, |_| KvStateMachine::new(), |b| b)
        .expect("servers start");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("a leader is elected");
    let addresses = cluster.addresses();
    let value = "v".repeat(options.payload);
    let mut warm = Client::new(addresses.clone());
    for n in 0..200 {
        warm.propose(format!("put warm{} {value}", n % 16).as_bytes())
            .expect("warm-up proposal");
    }
    let leader_cpu_before = thread_cpu(&format!("mioraft-{leader}"));
    let (operations, elapsed, latencies) = drive(&addresses, clients, depth, options, &value);
    let leader_cpu = thread_cpu(&format!("mioraft-{leader}")) - leader_cpu_before;
    cluster.shutdown().expect("clean shutdown");
    Row {
        mode: if options.reads { "reads" } else { "proposals" },
        servers,
        log: log.to_owned(),
        clients,
        depth: Some(depth),
        operations,
        per_second: operations as f64 / elapsed.as_secs_f64(),
        latency: Some((
            latencies.value_at_quantile(0.50),
            latencies.value_at_quantile(0.99),
            latencies.value_at_quantile(0.999),
        )),
        leader_cpu_us: leader_cpu.as_secs_f64() * 1e6 / operations.max(1) as f64,
    }
}

/// Keeps `clients` requests outstanding for the configured time: at `depth` 1 on one thread
/// each (a blocking `Client`), deeper on ceil(clients / depth) threads each with one `Pipeline`
/// connection, the clients spread evenly over them (at most `depth` on each). Returns
/// (operations, elapsed, each request's latency in microseconds).
fn drive(
    addresses: &[SocketAddr],
    clients: u64,
    depth: u64,
    options: &Options,
    value: &str,
) -> (u64, Duration, Histogram<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // The clients spread evenly over the fewest threads of at most `depth` requests each
    // (depth 1: a thread per client).
    let threads = clients.div_ceil(depth.max(1));
    let per_thread: Vec<u64> = (0..threads)
        .map(|thread| clients / threads + u64::from(thread < clients % threads))
        .collect();
    assert_eq!(per_thread.iter().sum::<u64>(), clients);
    let threads: Vec<_> = (0..threads)
        .zip(per_thread)
        .map(|(thread_number, outstanding)| {
            let (addresses, stop, value) =
                (addresses.to_vec(), Arc::clone(&stop), value.to_owned());
            let reads = options.reads;
            std::thread::spawn(move || {
                let load = Load {
                    thread_number,
                    reads,
                    value,
                };
                if depth <= 1 {
                    load.one_at_a_time(addresses, &stop)
                } else {
                    load.pipelined(addresses, outstanding as usize, &stop)
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(options.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for thread in threads {
        all.add(thread.join().expect("client thread"))
            .expect("merge");
    }
    (all.len(), started.elapsed(), all)
}

/// What one load thread sends: `put`s of `value` to 64 keys of its own, or reads of the
/// warm-up keys.
struct Load {
    thread_number: u64,
    reads: bool,
    value: String,
}

impl Load {
    fn command(&self, n: u64) -> String {
        if self.reads {
            format!("get warm{}", n % 16)
        } else {
            format!("put c{}k{} {}", self.thread_number, n % 64, self.value)
        }
    }

    /// One blocking `Client`, one request at a time, until `stop`.
    fn one_at_a_time(&self, addresses: Vec<SocketAddr>, stop: &AtomicBool) -> Histogram<u64> {
        let mut client = Client::new(addresses).with_timeout(Duration::from_secs(30));
        let mut latencies = Histogram::<u64>::new(3).expect("histogram");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let command = self.command(n);
            let sent = Instant::now();
            if self.reads {
                client.query(command.as_bytes()).expect("read answered");
            } else {
                client
                    .propose(command.as_bytes())
                    .expect("proposal applied");
            }
            latencies
                .record(sent.elapsed().as_micros() as u64)
                .expect("latency fits");
            n += 1;
        }
        latencies
    }

    /// One `Pipeline` kept `depth` requests full until `stop`, then drained.
    fn pipelined(
        &self,
        addresses: Vec<SocketAddr>,
        depth: usize,
        stop: &AtomicBool,
    ) -> Histogram<u64> {
        let mut pipeline = Pipeline::new(addresses, depth).with_timeout(Duration::from_secs(30));
        let mut latencies = Histogram::<u64>::new(3).expect("histogram");
        let mut n = 0u64;
        loop {
            while !stop.load(Ordering::Relaxed) && pipeline.in_flight() < depth {
                let command = self.command(n);
                if self.reads {
                    pipeline.submit_query(command.as_bytes());
                } else {
                    pipeline.submit(command.as_bytes());
                }
                n += 1;
            }
            let Some(completion) = pipeline.next_completion() else {
                return latencies;
            };
            completion.result.expect("request answered");
            latencies
                .record(completion.latency.as_micros() as u64)
                .expect("latency fits");
        }
    }
}

/// CPU time used so far by this process's thread named `name` (from /proc; zero if not found).
fn thread_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            // schedstat: time on CPU in nanoseconds, then wait time, then timeslices.
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let nanos = stat
                .split_whitespace()
                .next()
                .and_then(|field| field.parse().ok())
                .unwrap_or(0);
            return Duration::from_nanos(nanos);
        }
    }
    Duration::ZERO
}

// ---- the consensus core alone ----

/// `servers` `Consensus` instances in one thread: messages delivered in order; each server
/// syncs once whenever the queue drains (group commit, as the reactor does once per turn).
struct CoreCluster<M: StateMachine> {
    nodes: Vec<Consensus<MemLog, M>>,
    queue: VecDeque<(ServerId, Envelope)>,
    needs_sync: Vec<bool>,
    applied: u64,
}

impl<M: StateMachine> CoreCluster<M> {
    fn new(size: u64, machine: impl Fn() -> M) -> Self {
        let voters: Vec<ServerId> = (1..=size).map(ServerId).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let config = Config::default();
                Consensus::new(id, voters.clone(), MemLog::new(), machine(), config, id.0)
                    .expect("valid configuration")
            })
            .collect();
        CoreCluster {
            nodes,
            queue: VecDeque::new(),
            needs_sync: vec![false; size as usize],
            applied: 0,
        }
    }

    fn absorb(&mut self, from: usize, actions: Actions) {
        let sender = self.nodes[from].id();
        self.queue.extend(
            actions
                .messages
                .into_iter()
                .map(|envelope| (sender, envelope)),
        );
        self.applied += actions.replies.len() as u64;
        self.needs_sync[from] |= actions.sync_required;
    }

    fn step(&mut self, index: usize, event: Event) {
        let actions = self.nodes[index].step(event).expect("MemLog never fails");
        self.absorb(index, actions);
    }

    fn run_until_quiet(&mut self) {
        loop {
            while let Some((from, envelope)) = self.queue.pop_front() {
                let to = (envelope.to.0 - 1) as usize;
                let message = envelope.message;
                self.step(to, Event::Message { from, message });
            }
            let mut synced = false;
            for index in 0..self.nodes.len() {
                if std::mem::take(&mut self.needs_sync[index]) {
                    let actions = self.nodes[index].sync().expect("MemLog never fails");
                    self.absorb(index, actions);
                    synced = true;
                }
            }
            if !synced && self.queue.is_empty() {
                return;
            }
        }
    }
}

fn process_cpu() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// Keeps `clients` proposals outstanding at server 1 for the configured CPU time; `log` names
/// the cell ("mem/null" or "mem/kv").
fn in_process<M: StateMachine>(
    servers: u64,
    clients: u64,
    log: &str,
    options: &Options,
    machine: impl Fn() -> M,
) -> Row {
    let mut cluster = CoreCluster::new(servers, machine);
    for index in 0..cluster.nodes.len() {
        let actions = cluster.nodes[index].start();
        cluster.absorb(index, actions);
    }
    cluster.step(0, Event::Timeout(Timer::Election));
    cluster.run_until_quiet();
    assert_eq!(cluster.nodes[0].role(), Role::Leader, "server 1 leads");
    let value = "v".repeat(options.payload);
    let mut next = 0u64;
    // The commands are made once: what the clients pay to build them is not the core's cost.
    let commands: Vec<Vec<u8>> = (0..1024)
        .map(|key| format!("put key{key} {value}").into_bytes())
        .collect();
    // The proposals answered since the last round are made again, all at once, as one batch:
    // what the reactor does with the requests of one turn.
    let mut propose = |cluster: &mut CoreCluster<M>, count: u64| {
        let batch: Vec<Event> = (0..count)
            .map(|_| {
                next += 1;
                Event::ClientProposal {
                    id: ProposalId(next),
                    command: commands[(next % 1024) as usize].clone(),
                }
            })
            .collect();
        let actions = cluster.nodes[0]
            .step_batch(batch)
            .expect("MemLog never fails");
        cluster.absorb(0, actions);
    };
    cluster.applied = 0;
    let budget = Duration::from_secs_f64(options.seconds);
    let started = process_cpu();
    propose(&mut cluster, clients);
    let mut answered = 0;
    while process_cpu() - started < budget {
        cluster.run_until_quiet();
        assert!(cluster.applied > answered, "the cluster stalled");
        let newly_answered = cluster.applied - answered;
        propose(&mut cluster, newly_answered);
        answered = cluster.applied;
    }
    let elapsed = process_cpu() - started;
    let per_second = answered as f64 / elapsed.as_secs_f64();
    Row {
        mode: "in-process",
        servers,
        log: log.to_owned(),
        clients,
        depth: None,
        operations: answered,
        per_second,
        latency: None,
        // Every server runs on this one thread: the leader's share is not separated.
        leader_cpu_us: elapsed.as_secs_f64() * 1e6 / answered.max(1) as f64,
    }
}

// ---- memory ----

/// This process's resident memory, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn directory_bytes(directory: &std::path::Path) -> u64 {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A one-server FileLog cluster's resident memory idle and holding `entries` entries.
fn memory(entries: u64, options: &Options) {
    let root = std::env::temp_dir().join(format!("mioraft-memory-{}", std::process::id()));
    let data = root.join("n1");
    let cluster = LocalCluster::spawn(
        1,
        |_| FileLog::open(&data).expect("open a data directory"),
        |_| KvStateMachine::new(),
        |builder| builder.with_snapshot_policy(u64::MAX, u64::MAX),
    )
    .expect("a server starts");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .expect("it leads");
    std::thread::sleep(Duration::from_secs(1));
    let idle = resident_bytes();
    let addresses = cluster.addresses();
    let value = "v".repeat(options.payload);
    let clients = 64;
    let threads: Vec<_> = (0..clients)
        .map(|client_number| {
            let (addresses, value) = (addresses.clone(), value.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(addresses).with_timeout(Duration::from_secs(30));
                let mut n = client_number;
                while n < entries {
                    let command = format!("put k{} {value}", n % 1000);
                    client
                        .propose(command.as_bytes())
                        .expect("proposal applied");
                    n += clients;
                    if client_number == 0 && n % 10_000 < clients {
                        eprint!("\r{n} of {entries} entries written   ");
                        let _ = std::io::stderr().flush();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    eprint!("\r{}\r", " ".repeat(PROGRESS_WIDTH));
    std::thread::sleep(Duration::from_secs(1));
    let loaded = resident_bytes();
    let metrics = cluster.servers()[0].metrics();
    let on_disk = directory_bytes(&data);
    cluster.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&root);
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "one server, FileLog, snapshots off: idle {:.1} MiB resident; with {} log entries of {} \
         byte commands (first {}, last {}) {:.1} MiB resident ({:.0} bytes per entry more); \
         data directory {:.1} MiB",
        mib(idle),
        entries,
        options.payload,
        metrics.first_log_index.0,
        metrics.last_log_index.0,
        mib(loaded),
        loaded.saturating_sub(idle) as f64 / entries.max(1) as f64,
        mib(on_disk)
    );
}
