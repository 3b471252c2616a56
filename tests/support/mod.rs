//! Helpers shared by the real-socket test binaries (`tests/server.rs`, `tests/membership.rs`,
//! `tests/snapshots.rs`): logging, and waiting for a condition against a deadline instead of
//! sleeping.

// Each test binary uses a different part.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The longest any condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a waiting test looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Polls `probe` until it returns `Ok`, failing after [`WAIT`] with the last problem it reported.
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_for_within(WAIT, what, probe)
}

/// Polls `probe` until it returns `Ok`, failing after `limit` with the last problem it reported.
pub fn wait_for_within<T>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last_seen) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last_seen}")
            }
            // Polling interval of a deadline-bounded wait, not a synchronization sleep.
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Checks `invariant` at every poll for `window`, failing at once with what it reported when it
/// does not hold: for claims that something never happens (a term that must not change, a
/// server that must not campaign), watched over a span of election timeouts.
pub fn holds_throughout(
    window: Duration,
    what: &str,
    mut invariant: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + window;
    loop {
        if let Err(seen) = invariant() {
            panic!("{what} stopped holding: {seen}");
        }
        if Instant::now() >= end {
            return;
        }
        // Polling interval of a watch over a fixed window, not a synchronization sleep.
        std::thread::sleep(POLL_INTERVAL);
    }
}
