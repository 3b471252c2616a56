//! The cost of one durable append to a `FileLog`: append one entry, `sync`, repeated. This is
//! the write on a leader's and a follower's critical path for one client (DESIGN.md §3), so its
//! fdatasync time bounds the cluster's latency from below.
//!
//! Run: `cargo bench --bench filelog_sync -- [--count N] [--rounds R] [--data-bytes B]`.
//! Defaults: 2,000 appends of 130-byte entries, 3 rounds, each in a fresh directory under the
//! system's temporary directory (so on the disk tests use). Prints, per round, the latency
//! percentiles of `sync` (which holds the write and the fdatasync) in microseconds.

use mioraft::log::{Entry, FileLog, PersistentLog};
use mioraft::{LogIndex, Term};
use std::time::Instant;

struct Options {
    count: u64,
    rounds: u64,
    data_bytes: usize,
}

fn options() -> Options {
    let mut options = Options {
        count: 2_000,
        rounds: 3,
        data_bytes: 130,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next()
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--count" => options.count = number("--count").max(1),
            "--rounds" => options.rounds = number("--rounds").max(1),
            "--data-bytes" => options.data_bytes = number("--data-bytes") as usize,
            // `cargo bench` passes `--bench`; other flags are not ours.
            _ => {}
        }
    }
    options
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[u64], q: f64) -> u64 {
    let position = ((values.len() as f64 * q) as usize).min(values.len() - 1);
    values[position]
}

fn main() {
    let options = options();
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "round", "appends", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    for round in 1..=options.rounds {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = FileLog::open(dir.path()).expect("open");
        let data = vec![b'v'; options.data_bytes];
        let mut sync_us = Vec::with_capacity(options.count as usize);
        for index in 1..=options.count {
            let entry = Entry::command(Term(1), data.clone());
            log.append_entries(LogIndex(index), &[entry])
                .expect("append");
            let start = Instant::now();
            log.sync().expect("sync");
            sync_us.push(start.elapsed().as_micros() as u64);
        }
        sync_us.sort_unstable();
        println!(
            "{round:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            options.count,
            quantile(&sync_us, 0.5),
            quantile(&sync_us, 0.9),
            quantile(&sync_us, 0.99),
            quantile(&sync_us, 0.999),
            sync_us.last().copied().unwrap_or(0)
        );
    }
}
