//! Leader failover, as in Figure 16 of the Raft paper: on a 5-server cluster with the default
//! 150–300 ms election timeouts, how long from killing the leader (SIGKILL) until a new leader
//! has committed an entry.
//!
//! Run: `cargo bench --bench failover -- [--kills N] [--log-dir DIR]`. Defaults: 200 kills; the
//! servers' logs (stderr, at `RUST_LOG`'s level, default `warn`) go to a temporary directory, or
//! to `DIR` to keep them. Lines starting `---- failover bench:` mark each kill and restart in
//! every server's log.
//!
//! Five servers run as separate processes (this program started again with `--serve`), each
//! with a `FileLog` in a temporary directory and `Config::default()` (pre-vote and check-quorum
//! on, 50 ms heartbeats), on 127.0.0.1. Each round waits until the cluster is healthy (all five
//! answer, one leader, all applied the same index), pauses 0–100 ms at random (so the kill falls
//! at a random point between heartbeats, as in the paper), reads the leader's term and commit
//! index, kills it and polls the four survivors' status every millisecond or so. The failover
//! time runs from just before the kill until a survivor reports that it leads a higher term and
//! has committed past the old leader's commit index: its new term's no-op is committed. That is
//! the primary figure, what the paper measured. Meanwhile a client proposes one command, issued
//! right after the kill, and the time until it is applied is the second figure (it includes the
//! client's own retry backoff). The killed server then restarts from its data directory on its
//! address.
//!
//! A kill after which no new leader commits within 10 s counts as a failure and the run goes on.

use mioraft::consensus::Config;
use mioraft::log::FileLog;
use mioraft::{Client, KvStateMachine, Metrics, Role, Server, ServerId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The cluster's size, as in the paper.
const SERVERS: usize = 5;
/// A kill after which no new leader has committed within this long is a failure.
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);
/// How long the cluster may take to be healthy again after a restart before the run gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// The deadline of one status request, so a dead or stalled server does not stall polling.
const STATUS_TIMEOUT: Duration = Duration::from_millis(50);
/// The pause between two rounds of status requests while waiting for the new leader.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The pause between two rounds of status requests while waiting for the cluster to settle.
const SETTLE_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// The longest random pause before a kill.
const PAUSE_MAX_MS: u64 = 100;
/// Kills slower than this are listed one by one (about the paper's p99), as are kills whose
/// new leader was not elected in the first term after the old leader's.
const SLOW: Duration = Duration::from_millis(400);

/// The paper's figures for the 150–300 ms range (Figure 16): median, p90 (not given), p99, max.
const PAPER_MS: [Option<u64>; 4] = [Some(171), None, Some(415), Some(603)];

struct Options {
    kills: u64,
    log_dir: Option<PathBuf>,
}

fn options(args: &[String]) -> Options {
    let mut options = Options {
        kills: 200,
        log_dir: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kills" => {
                options.kills = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("--kills needs a number"))
            }
            "--log-dir" => {
                let dir = args
                    .next()
                    .unwrap_or_else(|| panic!("--log-dir needs a path"));
                options.log_dir = Some(PathBuf::from(dir));
            }
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        serve(&args[1..]);
        return;
    }
    let options = options(&args);
    let run_started = Instant::now();
    let mut cluster = Cluster::start(options.log_dir.as_deref());
    println!(
        "{SERVERS} servers on 127.0.0.1 (FileLog, Config::default(): election timeouts 150-300 \
         ms, heartbeats 50 ms, pre-vote and check-quorum on); {} kills; server logs in {}",
        options.kills,
        cluster.logs.display()
    );
    let mut writer = Client::new(cluster.addresses.clone()).with_timeout(FAILOVER_LIMIT);
    // Opens the writer's session and finds the leader before the first kill.
    writer.propose(b"put failover 0").expect("a first proposal");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let mut results = Results::default();
    for kill in 1..=options.kills {
        let (leader, before) = loop {
            let (leader, _) = cluster.wait_healthy();
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..=PAUSE_MAX_MS)));
            // Read the leader's state afresh: it is the reference for "a new leader committed".
            match cluster.status(leader) {
                Some(metrics) if metrics.role == Role::Leader => break (leader, metrics),
                _ => continue, // leadership moved during the pause: settle again
            }
        };
        cluster.mark(&format!(
            "kill #{kill} of n{} (leader of term {}, commit index {})",
            leader + 1,
            before.current_term,
            before.commit_index
        ));
        let started = Instant::now();
        cluster.kill(leader);
        let (failover, proposal) = std::thread::scope(|scope| {
            let writer = &mut writer;
            let proposal = scope.spawn(move || {
                let command = format!("put failover {kill}");
                writer
                    .propose(command.as_bytes())
                    .map(|_| started.elapsed())
                    .map_err(|error| error.to_string())
            });
            let failover = cluster.watch_failover(leader, &before, started);
            (failover, proposal.join().expect("the proposing thread"))
        });
        results.record(kill, leader, &before, failover, proposal);
        cluster.mark(&format!("restart of n{} after kill #{kill}", leader + 1));
        cluster.start_server(leader);
        let restarted = Instant::now();
        cluster.wait_healthy();
        results.settles.push(restarted.elapsed());
        if kill % 10 == 0 || kill == options.kills {
            results.progress(kill, options.kills, run_started.elapsed());
        }
    }
    drop(cluster);
    results.report(run_started.elapsed());
}

/// The five server processes, their addresses and directories, and one status client per
/// server. Dropping it kills every server still running, also when the benchmark panics.
struct Cluster {
    addresses: Vec<SocketAddr>,
    /// The parent of each server's data directory `n<id>`.
    data: PathBuf,
    /// Where each server's stderr goes, `n<id>.log`, appended to across restarts.
    logs: PathBuf,
    servers: Vec<Option<Child>>,
    /// One client per server, so a dead server's requests never delay another's.
    probes: Vec<Client>,
    /// Servers that exited on their own and were started again (e.g. their port was taken).
    unexpected_exits: u64,
    /// Holds the data (and by default the logs); removed after the servers are killed.
    _root: tempfile::TempDir,
}

impl Cluster {
    fn start(log_dir: Option<&Path>) -> Cluster {
        let root = tempfile::tempdir().expect("a temporary directory");
        let data = root.path().join("data");
        let logs = log_dir.map_or_else(|| root.path().join("logs"), Path::to_path_buf);
        std::fs::create_dir_all(&logs).expect("the log directory");
        let addresses: Vec<SocketAddr> = (0..SERVERS)
            .map(|_| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
                listener.local_addr().expect("its address")
            })
            .collect();
        let probes = addresses
            .iter()
            .map(|&address| Client::new([address]).with_timeout(STATUS_TIMEOUT))
            .collect();
        let mut cluster = Cluster {
            addresses,
            data,
            logs,
            servers: (0..SERVERS).map(|_| None).collect(),
            probes,
            unexpected_exits: 0,
            _root: root,
        };
        for index in 0..SERVERS {
            cluster.start_server(index);
        }
        cluster
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.logs.join(format!("n{}.log", index + 1))
    }

    /// Starts server `index` (again), from its data directory, on its address.
    fn start_server(&mut self, index: usize) {
        assert!(self.servers[index].is_none(), "n{} runs", index + 1);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("a server log file");
        let mut command = Command::new(std::env::current_exe().expect("this program"));
        command
            .arg("--serve")
            .arg(std::process::id().to_string())
            .arg((index + 1).to_string())
            .arg(self.data.join(format!("n{}", index + 1)));
        for address in &self.addresses {
            command.arg(address.to_string());
        }
        // Children are only ever started from the main thread, which lives as long as the
        // benchmark: a server dies with the thread that started it (`serve`).
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a server process");
        self.servers[index] = Some(child);
    }

    /// SIGKILLs server `index` and reaps it.
    fn kill(&mut self, index: usize) {
        let mut child = self.servers[index].take().expect("a running server");
        child.kill().expect("SIGKILL a server");
        let _ = child.wait();
    }

    /// Appends a marker line to every server's log.
    fn mark(&self, text: &str) {
        for index in 0..SERVERS {
            if let Ok(mut log) = OpenOptions::new().append(true).open(self.log_path(index)) {
                let _ = writeln!(log, "---- failover bench: {text}");
            }
        }
    }

    /// Server `index`'s metrics, or `None` if it does not answer within [`STATUS_TIMEOUT`].
    fn status(&mut self, index: usize) -> Option<Metrics> {
        self.probes[index].status(self.addresses[index]).ok()
    }

    /// Starts again any server that exited on its own (it should not: only killed ones stop).
    fn restart_exited(&mut self) {
        for index in 0..SERVERS {
            let exited = match &mut self.servers[index] {
                Some(child) => child.try_wait().expect("a server's state"),
                None => None,
            };
            if let Some(status) = exited {
                eprintln!(
                    "n{} exited on its own ({status}); starting it again (see {})",
                    index + 1,
                    self.log_path(index).display()
                );
                self.unexpected_exits += 1;
                self.servers[index] = None;
                self.start_server(index);
            }
        }
    }

    /// Waits until all servers answer, exactly one leads, and all agree on the term, the last
    /// log index and the commit index and have applied it. Returns the leader and its metrics.
    ///
    /// # Panics
    /// If that takes longer than [`SETTLE_LIMIT`].
    fn wait_healthy(&mut self) -> (usize, Metrics) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            self.restart_exited();
            let all: Vec<Option<Metrics>> = (0..SERVERS).map(|index| self.status(index)).collect();
            if let Some(healthy) = healthy(&all) {
                return healthy;
            }
            if Instant::now() >= deadline {
                let states: Vec<String> = all.iter().zip(1..).map(describe).collect();
                panic!(
                    "the cluster was not healthy within {SETTLE_LIMIT:?}: {}",
                    states.join("; ")
                );
            }
            std::thread::sleep(SETTLE_POLL_INTERVAL);
        }
    }

    /// Polls the servers other than `killed` until one leads a term above `before`'s and has
    /// committed past `before`'s commit index, or [`FAILOVER_LIMIT`] has passed since
    /// `started`.
    fn watch_failover(
        &mut self,
        killed: usize,
        before: &Metrics,
        started: Instant,
    ) -> Result<Failover, String> {
        let mut campaign = None;
        let mut elected = None;
        let mut last_seen: Vec<Option<Metrics>> = vec![None; SERVERS];
        loop {
            for index in (0..SERVERS).filter(|&index| index != killed) {
                let Some(metrics) = self.status(index) else {
                    continue;
                };
                let seen = started.elapsed();
                if metrics.current_term > before.current_term {
                    campaign.get_or_insert(seen);
                    if metrics.role == Role::Leader {
                        elected.get_or_insert(seen);
                        if metrics.commit_index > before.commit_index {
                            return Ok(Failover {
                                committed: seen,
                                campaign: campaign.unwrap_or(seen),
                                elected: elected.unwrap_or(seen),
                                new_leader: index,
                                new_term: metrics.current_term.0,
                            });
                        }
                    }
                }
                last_seen[index] = Some(metrics);
            }
            if started.elapsed() >= FAILOVER_LIMIT {
                let states: Vec<String> = last_seen.iter().zip(1..).map(describe).collect();
                return Err(format!(
                    "no new leader committed within {FAILOVER_LIMIT:?}; last seen: {}",
                    states.join("; ")
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for mut child in self.servers.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The leader and its metrics if every server answered, exactly one leads, and all agree on the
/// term, last log index and commit index and have applied it.
fn healthy(all: &[Option<Metrics>]) -> Option<(usize, Metrics)> {
    let all: Vec<&Metrics> = all.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let mut leaders = (0..all.len()).filter(|&index| all[index].role == Role::Leader);
    let (Some(leader), None) = (leaders.next(), leaders.next()) else {
        return None;
    };
    let reference = all[leader];
    all.iter()
        .all(|metrics| {
            metrics.current_term == reference.current_term
                && metrics.last_log_index == reference.last_log_index
                && metrics.commit_index == reference.commit_index
                && metrics.last_applied == reference.commit_index
        })
        .then(|| (leader, reference.clone()))
}

/// One server's state for an error message.
fn describe((metrics, id): (&Option<Metrics>, usize)) -> String {
    match metrics {
        Some(m) => format!(
            "n{id} {:?} term {} last {} commit {} applied {}",
            m.role, m.current_term, m.last_log_index, m.commit_index, m.last_applied
        ),
        None => format!("n{id} not answering"),
    }
}

/// What one kill's polling saw, each time from just before the kill.
struct Failover {
    /// When a survivor was first seen in a higher term (a campaign had started).
    campaign: Duration,
    /// When a survivor was first seen leading a higher term.
    elected: Duration,
    /// When the new leader was first seen to have committed past the old commit index.
    committed: Duration,
    new_leader: usize,
    new_term: u64,
}

#[derive(Default)]
struct Results {
    committed: Vec<Duration>,
    campaign: Vec<Duration>,
    elected: Vec<Duration>,
    proposals: Vec<Duration>,
    /// How many kills' new leaders were elected this many terms above the old leader's.
    term_steps: BTreeMap<u64, u64>,
    failures: u64,
    proposal_failures: u64,
    /// From each restart of a killed server until the cluster was healthy again.
    settles: Vec<Duration>,
    /// Every kill's failover time (`None`: a failure), for the progress lines.
    recent: Vec<Option<Duration>>,
}

impl Results {
    fn record(
        &mut self,
        kill: u64,
        killed: usize,
        before: &Metrics,
        failover: Result<Failover, String>,
        proposal: Result<Duration, String>,
    ) {
        match failover {
            Ok(failover) => {
                let steps = failover.new_term - before.current_term.0;
                *self.term_steps.entry(steps).or_default() += 1;
                if failover.committed > SLOW || steps > 1 {
                    let what = if failover.committed > SLOW {
                        "slow kill"
                    } else {
                        "kill"
                    };
                    println!(
                        "  {what} #{kill}: n{} (term {}) -> n{} (term {}) committed at {:.0} ms; \
                         first higher term seen at {:.0} ms, new leader at {:.0} ms",
                        killed + 1,
                        before.current_term,
                        failover.new_leader + 1,
                        failover.new_term,
                        ms(failover.committed),
                        ms(failover.campaign),
                        ms(failover.elected)
                    );
                }
                self.committed.push(failover.committed);
                self.campaign.push(failover.campaign);
                self.elected.push(failover.elected);
                self.recent.push(Some(failover.committed));
            }
            Err(error) => {
                println!("  FAILED kill #{kill} of n{}: {error}", killed + 1);
                self.failures += 1;
                self.recent.push(None);
            }
        }
        match proposal {
            Ok(elapsed) => self.proposals.push(elapsed),
            Err(error) => {
                println!("  proposal after kill #{kill} failed: {error}");
                self.proposal_failures += 1;
            }
        }
    }

    fn progress(&self, done: u64, kills: u64, elapsed: Duration) {
        let start = self.recent.len().saturating_sub(10);
        let mut last: Vec<Duration> = self.recent[start..].iter().flatten().copied().collect();
        last.sort();
        let summary = if last.is_empty() {
            "no failover".to_owned()
        } else {
            format!(
                "median {:.0} ms, max {:.0} ms",
                ms(percentile(&last, 0.5)),
                ms(percentile(&last, 1.0))
            )
        };
        println!(
            "{done:>4}/{kills} kills: last {} {summary}; {} failures so far; {:.0} s",
            self.recent.len() - start,
            self.failures,
            elapsed.as_secs_f64()
        );
    }

    fn report(mut self, elapsed: Duration) {
        for times in [
            &mut self.committed,
            &mut self.campaign,
            &mut self.elected,
            &mut self.proposals,
            &mut self.settles,
        ] {
            times.sort();
        }
        let kills = self.committed.len() as u64 + self.failures;
        println!();
        println!(
            "{kills} kills in {:.0} s; {} failures (no new leader committed within {:?})",
            elapsed.as_secs_f64(),
            self.failures,
            FAILOVER_LIMIT
        );
        if self.committed.is_empty() {
            return;
        }
        println!("time from SIGKILL of the leader until a new leader committed (its no-op):");
        println!("           mioraft     paper (Fig. 16, 150-300 ms)");
        for ((name, quantile), paper) in
            [("median", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
                .into_iter()
                .zip(PAPER_MS)
        {
            let paper = paper.map_or_else(|| "-".to_owned(), |paper| format!("~{paper} ms"));
            println!(
                "  {name:<6} {:>7.1} ms  {paper:>8}",
                ms(percentile(&self.committed, quantile))
            );
        }
        println!("where the time went (first seen by polling, from the kill):");
        for (name, times) in [
            ("a survivor in a higher term", &self.campaign),
            ("a survivor leading it", &self.elected),
            ("its no-op committed", &self.committed),
        ] {
            println!(
                "  {name:<28} median {:>6.1} ms, p99 {:>6.1} ms",
                ms(percentile(times, 0.5)),
                ms(percentile(times, 0.99))
            );
        }
        let steps: Vec<String> = self
            .term_steps
            .iter()
            .map(|(steps, count)| format!("+{steps}: {count}"))
            .collect();
        println!(
            "new leader's term above the old leader's (+1: elected in the first election): {}",
            steps.join(", ")
        );
        if !self.proposals.is_empty() {
            println!(
                "a client proposal issued right after the kill, until applied (with the client's \
                 retry backoff): median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} \
                 failed",
                ms(percentile(&self.proposals, 0.5)),
                ms(percentile(&self.proposals, 0.9)),
                ms(percentile(&self.proposals, 0.99)),
                ms(percentile(&self.proposals, 1.0)),
                self.proposal_failures
            );
        }
        if !self.settles.is_empty() {
            println!(
                "restart of the killed server until all five agreed again: median {:.0} ms, p99 \
                 {:.0} ms, max {:.0} ms",
                ms(percentile(&self.settles, 0.5)),
                ms(percentile(&self.settles, 0.99)),
                ms(percentile(&self.settles, 1.0))
            );
        }
    }
}

/// The nearest-rank `quantile` of non-empty, sorted `times`.
fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `--serve <parent-pid> <id> <dir> <address>...`: one server, until killed.
fn serve(args: &[String]) {
    let parent: u32 = args[0].parse().expect("parent pid");
    die_with_parent(parent);
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
    let id: u64 = args[1].parse().expect("id");
    let dir = PathBuf::from(&args[2]);
    let addresses: Vec<SocketAddr> = args[3..]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    let peers: HashMap<ServerId, SocketAddr> = addresses
        .iter()
        .zip(1..)
        .map(|(&address, peer)| (ServerId(peer), address))
        .collect();
    std::fs::create_dir_all(&dir).expect("data directory");
    let log = FileLog::open(&dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let result = Server::new(
        ServerId(id),
        peers[&ServerId(id)],
        log,
        KvStateMachine::new(),
    )
    .with_peers(peers)
    .with_config(Config::default())
    .run();
    if let Err(error) = result {
        eprintln!("server {id}: {error}");
        std::process::exit(1);
    }
}

/// Has the kernel SIGKILL this process when the thread that started it ends, so no server
/// outlives the benchmark, even one killed by a signal; exits at once if it already has.
fn die_with_parent(parent: u32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling process.
        let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        assert_eq!(set, 0, "prctl(PR_SET_PDEATHSIG)");
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        std::process::exit(1);
    }
}
