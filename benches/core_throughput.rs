//! Throughput of the consensus core alone: a 3-server cluster of `Consensus<MemLog,
//! KvStateMachine>` in one thread, no network, no serialization, no faults. Messages are
//! delivered in order; each server syncs once whenever the message queue drains (group commit,
//! as the reactor does once per turn). Proposers keep one proposal each outstanding and propose
//! again as soon as theirs is applied.
//!
//! Prints commits (applied proposals) per second of process CPU time for 1 and for 256
//! concurrent proposers. Run: `cargo bench --bench core_throughput` (optionally followed by
//! `-- <proposals per run>`).

use mioraft::consensus::{Actions, Config, Consensus, Event, ProposalId, ProposalOutcome, Timer};
use mioraft::{KvStateMachine, MemLog, NullStateMachine, Role, ServerId, StateMachine};
use std::collections::VecDeque;
use std::time::Duration;

struct Cluster<M: StateMachine> {
    nodes: Vec<Consensus<MemLog, M>>,
    queue: VecDeque<(ServerId, mioraft::consensus::Envelope)>,
    needs_sync: Vec<bool>,
    replies: Vec<(ProposalId, ProposalOutcome)>,
}

impl<M: StateMachine> Cluster<M> {
    fn new(size: u64, make_state_machine: impl Fn() -> M) -> Self {
        let voters: Vec<ServerId> = (1..=size).map(ServerId).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                Consensus::new(
                    id,
                    voters.clone(),
                    MemLog::new(),
                    make_state_machine(),
                    Config::default(),
                    id.0,
                )
                .expect("valid configuration")
            })
            .collect();
        Cluster {
            nodes,
            queue: VecDeque::new(),
            needs_sync: vec![false; size as usize],
            replies: Vec::new(),
        }
    }

    fn absorb(&mut self, from: usize, actions: Actions) {
        let sender = self.nodes[from].id();
        for envelope in actions.messages {
            self.queue.push_back((sender, envelope));
        }
        for reply in actions.replies {
            self.replies.push((reply.id, reply.outcome));
        }
        self.needs_sync[from] |= actions.sync_required;
    }

    fn step(&mut self, index: usize, event: Event) {
        let actions = self.nodes[index].step(event).expect("MemLog never fails");
        self.absorb(index, actions);
    }

    /// Delivers messages until the queue drains, then syncs every server with unsynced writes;
    /// repeats until nothing is left to do.
    fn run_until_quiet(&mut self) {
        loop {
            while let Some((from, envelope)) = self.queue.pop_front() {
                let to = (envelope.to.0 - 1) as usize;
                self.step(
                    to,
                    Event::Message {
                        from,
                        message: envelope.message,
                    },
                );
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

fn cpu_time() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// Commits `total` proposals with `proposers` outstanding at a time; returns commits per CPU
/// second.
fn run<M: StateMachine>(proposers: u64, total: u64, make_state_machine: impl Fn() -> M) -> f64 {
    let mut cluster = Cluster::new(3, make_state_machine);
    for index in 0..cluster.nodes.len() {
        let actions = cluster.nodes[index].start();
        cluster.absorb(index, actions);
    }
    cluster.step(0, Event::Timeout(Timer::Election));
    cluster.run_until_quiet();
    assert_eq!(cluster.nodes[0].role(), Role::Leader, "server 1 leads");

    let started = cpu_time();
    let mut next_id = 0u64;
    let mut applied = 0u64;
    let command = |id: u64| format!("put key{} value{id}", id % 1024).into_bytes();
    for _ in 0..proposers.min(total) {
        next_id += 1;
        cluster.step(
            0,
            Event::ClientProposal {
                id: ProposalId(next_id),
                command: command(next_id),
            },
        );
    }
    while applied < total {
        cluster.run_until_quiet();
        let replies = std::mem::take(&mut cluster.replies);
        assert!(
            !replies.is_empty(),
            "the cluster stalled at {applied} commits"
        );
        for (_, outcome) in replies {
            assert!(
                matches!(outcome, ProposalOutcome::Applied { .. }),
                "proposal failed: {outcome:?}"
            );
            applied += 1;
            if next_id < total {
                next_id += 1;
                cluster.step(
                    0,
                    Event::ClientProposal {
                        id: ProposalId(next_id),
                        command: command(next_id),
                    },
                );
            }
        }
    }
    let elapsed = cpu_time() - started;
    for node in &cluster.nodes {
        assert!(
            node.last_applied() >= node.commit_index(),
            "every server applied what it committed"
        );
    }
    applied as f64 / elapsed.as_secs_f64()
}

fn main() {
    let total: u64 = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    println!("mioraft consensus core, 3 servers, MemLog, no network, {total} proposals per run");
    let only: Option<u64> = std::env::var("MIORAFT_BENCH_PROPOSERS")
        .ok()
        .and_then(|value| value.parse().ok());
    for proposers in [1, 256]
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == *p))
    {
        report("NullStateMachine", proposers, || {
            run(proposers, total, || NullStateMachine)
        });
        report("KvStateMachine", proposers, || {
            run(proposers, total, KvStateMachine::new)
        });
    }
}

fn report(state_machine: &str, proposers: u64, mut run: impl FnMut() -> f64) {
    let rates: Vec<f64> = (0..3).map(|_| run()).collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let all: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    println!(
        "{proposers:>4} proposers, {state_machine:<16}: {best:>9.0} commits/s of CPU \
         (best of 3: {})",
        all.join(", ")
    );
}
