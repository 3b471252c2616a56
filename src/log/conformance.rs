//! Owns the conformance suite of the [`PersistentLog`] contract (DESIGN.md §3): one public
//! function per property, each panicking with the property's name and the values it saw when a
//! log breaks the contract, and macros that turn them into `#[test]`s. Every log in the crate
//! runs it ([`MemLog`](crate::log::MemLog), `sim::SimLog`, `FileLog`); the contract itself is
//! written on the trait, in `log/mod.rs`. It covers term and vote (§5.1), entries (§5.3),
//! snapshots and prefix compaction (thesis §7), and, for logs that survive restarts, durability.
//!
//! # Running the suite on your own log
//! Invoke [`persistent_log_conformance!`](crate::persistent_log_conformance) with a module name
//! and an expression that makes a fresh, empty log, in your crate or in a file under `tests/`.
//! It generates `#[cfg(test)] mod <name>` holding one `#[test]` per property, so `cargo test`
//! runs them:
//!
//! ```
//! use mioraft::log::MemLog;
//!
//! // In your code: `MyLog::new()`, or for a file log a fresh temporary directory per test.
//! mioraft::persistent_log_conformance!(mem_log_conformance, MemLog::new());
//! ```
//!
//! If your log survives restarts, implement [`ReopenableLog`] for it as well (reopening closes
//! the log as a crash would and opens its storage again) and also invoke
//! [`persistent_log_durability_conformance!`](crate::persistent_log_durability_conformance).
//!
//! The functions can also be called directly, each with a fresh, empty log:
//!
//! ```
//! use mioraft::log::{conformance, MemLog};
//!
//! conformance::append_then_read_back(&mut MemLog::new());
//! conformance::truncate_suffix_removes_tail(&mut MemLog::new());
//! ```

use crate::error::LogError;
use crate::log::{Entry, EntryKind, PersistentLog, SnapshotMeta};
use crate::types::{LogIndex, ServerId, Term};

/// Data bytes of the large entry in [`large_and_empty_payloads`]: 1 MiB.
pub const LARGE_PAYLOAD_BYTES: usize = 1 << 20;

/// Entries appended by [`many_entries`].
pub const MANY_ENTRIES_COUNT: u64 = 10_000;

/// Entries appended by [`compact_prefix_respects_snapshot_bounds`] and
/// [`compaction_survives_reopen`], which put a snapshot at index 300 of them: enough for a log
/// that compacts in segments of a few KiB to drop some.
pub const COMPACTION_ENTRIES_COUNT: u64 = 400;

/// A log that can be closed as a crash would close it and opened again, for the durability
/// properties ([`empty_log_reopens_empty`], [`synced_writes_survive_reopen`],
/// [`unsynced_writes_lose_only_a_suffix`], [`snapshot_and_following_entries_survive_reopen`],
/// [`finish_snapshot_makes_earlier_writes_durable`], [`unfinished_snapshot_is_gone_after_reopen`],
/// [`compaction_survives_reopen`]).
pub trait ReopenableLog: PersistentLog + Sized {
    /// Closes this log as a crash would (no further flush, no sync) and opens its storage again,
    /// returning the log a restarted server would see.
    ///
    /// Test support: an implementation that cannot reopen its storage should panic, naming why.
    #[must_use]
    fn reopen(self) -> Self;
}

/// A new log is empty: term 0, no vote, first index 1, latest index and term 0, and no entries.
///
/// # Panics
/// If the log breaks the property.
pub fn new_log_is_empty<L: PersistentLog>(log: &mut L) {
    check_empty(log, "new_log_is_empty");
}

/// A set term and vote read back, and a vote can be changed or withdrawn within its term.
///
/// # Panics
/// If the log breaks the property.
pub fn term_and_vote_round_trip<L: PersistentLog>(log: &mut L) {
    let property = "term_and_vote_round_trip";
    ok(
        log.set_current_term(Term(5)),
        property,
        "set_current_term(5)",
    );
    assert_eq!(
        log.current_term(),
        Term(5),
        "{property}: term after setting 5"
    );
    assert_eq!(log.voted_for(), None, "{property}: vote in a fresh term");
    for candidate in [Some(ServerId(3)), None, Some(ServerId(2))] {
        ok(log.set_voted_for(candidate), property, "set_voted_for");
        assert_eq!(
            log.voted_for(),
            candidate,
            "{property}: vote after setting {candidate:?}"
        );
        assert_eq!(
            log.current_term(),
            Term(5),
            "{property}: a vote changed the term"
        );
    }
}

/// Moving to a strictly higher term clears the vote, since a vote belongs to one term (§5.1).
///
/// # Panics
/// If the log breaks the property.
pub fn higher_term_clears_vote<L: PersistentLog>(log: &mut L) {
    let property = "higher_term_clears_vote";
    for (term, candidate) in [(1, 1), (2, 2), (100, 3)] {
        ok(
            log.set_current_term(Term(term)),
            property,
            "set_current_term",
        );
        assert_eq!(
            log.voted_for(),
            None,
            "{property}: vote kept after moving up to term {term}"
        );
        ok(
            log.set_voted_for(Some(ServerId(candidate))),
            property,
            "set_voted_for",
        );
        assert_eq!(
            log.voted_for(),
            Some(ServerId(candidate)),
            "{property}: vote"
        );
    }
}

/// Setting the current term again keeps the vote: clearing it would let a server vote twice in
/// one term (§5.1).
///
/// # Panics
/// If the log breaks the property.
pub fn same_term_keeps_vote<L: PersistentLog>(log: &mut L) {
    let property = "same_term_keeps_vote";
    ok(
        log.set_current_term(Term(3)),
        property,
        "set_current_term(3)",
    );
    ok(
        log.set_voted_for(Some(ServerId(2))),
        property,
        "set_voted_for",
    );
    ok(
        log.set_current_term(Term(3)),
        property,
        "set_current_term(3) again",
    );
    assert_eq!(log.current_term(), Term(3), "{property}: term");
    assert_eq!(
        log.voted_for(),
        Some(ServerId(2)),
        "{property}: setting the same term again must keep its vote"
    );
}

/// A lower term is refused with [`LogError::TermWentBack`] and changes neither term nor vote.
///
/// # Panics
/// If the log breaks the property.
pub fn term_never_goes_back<L: PersistentLog>(log: &mut L) {
    let property = "term_never_goes_back";
    ok(
        log.set_current_term(Term(5)),
        property,
        "set_current_term(5)",
    );
    ok(
        log.set_voted_for(Some(ServerId(1))),
        property,
        "set_voted_for",
    );
    for lower in [Term(4), Term(0)] {
        let result = log.set_current_term(lower);
        assert!(
            matches!(
                result,
                Err(LogError::TermWentBack { current, requested })
                    if current == Term(5) && requested == lower
            ),
            "{property}: set_current_term({lower}) at term 5 must fail with TermWentBack \
             {{ current: 5, requested: {lower} }}, got {result:?}"
        );
        assert_eq!(
            log.current_term(),
            Term(5),
            "{property}: term after refusal"
        );
        assert_eq!(
            log.voted_for(),
            Some(ServerId(1)),
            "{property}: vote after refusal"
        );
    }
}

/// Appended entries read back through every read: `term`, `entry`, `entries`,
/// `latest_log_index` and `latest_log_term`, after each batch (including an empty one).
///
/// # Panics
/// If the log breaks the property.
pub fn append_then_read_back<L: PersistentLog>(log: &mut L) {
    let property = "append_then_read_back";
    let mut model = Vec::new();
    for (term, count) in [(1, 1), (1, 3), (2, 0), (2, 1), (3, 5)] {
        let batch = numbered_entries(model.len() as u64 + 1, count, Term(term));
        append(log, &batch, property);
        model.extend(batch);
        check_reads(log, &model, property);
    }
}

/// Entries handed over with [`PersistentLog::append_owned_entries`] read back as if appended
/// with [`PersistentLog::append_entries`], mixed in any order, under the same contiguity rule.
///
/// # Panics
/// If the log breaks the property.
pub fn owned_append_matches_append<L: PersistentLog>(log: &mut L) {
    let property = "owned_append_matches_append";
    let mut model = Vec::new();
    for (round, (term, count)) in [(1, 2), (1, 1), (2, 0), (3, 4)].into_iter().enumerate() {
        let batch = numbered_entries(model.len() as u64 + 1, count, Term(term));
        let from = log.latest_log_index().next();
        if round % 2 == 0 {
            ok(
                log.append_owned_entries(from, batch.clone()),
                property,
                "append_owned_entries",
            );
        } else {
            append(log, &batch, property);
        }
        model.extend(batch);
        check_reads(log, &model, property);
    }
    let next = model.len() as u64 + 1;
    for from in [0, 1, next + 1, u64::MAX] {
        let one = vec![Entry::command(Term(3), b"one".to_vec())];
        expect_non_contiguous(
            log.append_owned_entries(LogIndex(from), one),
            from,
            next,
            property,
        );
        check_reads(log, &model, property);
    }
    ok(log.sync(), property, "sync");
    check_reads(log, &model, property);
}

/// An append must start right after the last entry; any other start is refused with
/// [`LogError::NonContiguousAppend`] and leaves the log unchanged. An empty append at the right
/// place is accepted and changes nothing.
///
/// # Panics
/// If the log breaks the property.
pub fn append_must_be_contiguous<L: PersistentLog>(log: &mut L) {
    let property = "append_must_be_contiguous";
    let one = [Entry::command(Term(1), b"one".to_vec())];
    for from in [0, 2, u64::MAX] {
        expect_non_contiguous(log.append_entries(LogIndex(from), &one), from, 1, property);
    }
    expect_non_contiguous(log.append_entries(LogIndex(2), &[]), 2, 1, property);
    ok(
        log.append_entries(LogIndex(1), &[]),
        property,
        "empty append at 1",
    );
    check_reads(log, &[], property);

    let model = numbered_entries(1, 3, Term(1));
    append(log, &model, property);
    for from in [0, 1, 3, 5, u64::MAX] {
        expect_non_contiguous(log.append_entries(LogIndex(from), &one), from, 4, property);
        check_reads(log, &model, property);
    }
    ok(
        log.append_entries(LogIndex(4), &[]),
        property,
        "empty append at 4",
    );
    check_reads(log, &model, property);
}

/// `entries(from, until, bytes_max)` returns exactly the entries of `[from, until)` that the log
/// holds, stopping before the running total of [`Entry::size_bytes`] would pass `bytes_max` but
/// always returning the first entry of a non-empty range; it is empty when `from` is past the
/// end or `from >= until`.
///
/// # Panics
/// If the log breaks the property.
pub fn entries_respects_range_and_byte_budget<L: PersistentLog>(log: &mut L) {
    let property = "entries_respects_range_and_byte_budget";
    // Entries of different sizes, so a budget that is off by one entry shows.
    let model: Vec<Entry> = (1..=10u64)
        .map(|index| {
            if index % 4 == 0 {
                Entry::noop(Term(index / 3 + 1))
            } else {
                Entry::command(
                    Term(index / 3 + 1),
                    vec![index as u8; (index * 7 % 23) as usize],
                )
            }
        })
        .collect();
    append(log, &model, property);
    let latest = model.len() as u64;

    let mut budgets = vec![0, 1, Entry::OVERHEAD_BYTES, 40, 60, 100, 250, u64::MAX];
    // Budgets at, just under and just over each running total from each start.
    for start in 0..model.len() {
        let mut total = 0;
        for entry in &model[start..] {
            total += entry.size_bytes();
            budgets.extend([total - 1, total, total + 1]);
        }
    }
    budgets.sort_unstable();
    budgets.dedup();

    for from in 1..=latest + 2 {
        let untils = [
            0,
            from - 1,
            from,
            from + 1,
            from + 3,
            latest,
            latest + 1,
            latest + 2,
            u64::MAX,
        ];
        for until in untils {
            for &bytes_max in &budgets {
                let expected = expected_entries(&model, from, until, bytes_max);
                let found = ok(
                    log.entries(LogIndex(from), LogIndex(until), bytes_max),
                    property,
                    "entries",
                );
                assert!(
                    found == expected,
                    "{property}: entries({from}, {until}, {bytes_max}) returned {} entries, \
                     expected {} (the log holds 1 to {latest})",
                    found.len(),
                    expected.len()
                );
            }
        }
    }

    // The rules again, one by one, so a failure above has a plain example here.
    let first_only = ok(
        log.entries(LogIndex(3), LogIndex(11), 0),
        property,
        "entries",
    );
    assert_eq!(
        first_only,
        model[2..3],
        "{property}: a budget of 0 must still return the first entry"
    );
    let clamped = ok(
        log.entries(LogIndex(9), LogIndex(u64::MAX), u64::MAX),
        property,
        "entries",
    );
    assert_eq!(
        clamped,
        model[8..],
        "{property}: a range past the end must stop at the last entry"
    );
    for (from, until) in [(11, 20), (u64::MAX, u64::MAX), (5, 5), (6, 5)] {
        let found = ok(
            log.entries(LogIndex(from), LogIndex(until), u64::MAX),
            property,
            "entries",
        );
        assert!(
            found.is_empty(),
            "{property}: entries({from}, {until}, max) must be empty, got {} entries",
            found.len()
        );
    }
}

/// `truncate_suffix(from)` removes `from` and everything after; appending continues at `from`,
/// the latest term falls back to the previous entry's, and truncating at the first index leaves
/// an empty log with latest term 0. Truncating at `latest + 1` changes nothing.
///
/// # Panics
/// If the log breaks the property.
pub fn truncate_suffix_removes_tail<L: PersistentLog>(log: &mut L) {
    let property = "truncate_suffix_removes_tail";
    let mut model: Vec<Entry> = [1, 1, 2, 3, 3]
        .iter()
        .zip(1u64..)
        .map(|(&term, index)| numbered_entry(index, Term(term)))
        .collect();
    append(log, &model, property);

    truncate(log, LogIndex(4), property);
    model.truncate(3);
    check_reads(log, &model, property);
    assert_eq!(
        log.latest_log_term(),
        Term(2),
        "{property}: latest term must revert to the term of the entry before the cut"
    );

    let replacement = [numbered_entry(4, Term(4))];
    append(log, &replacement, property);
    model.extend(replacement);
    check_reads(log, &model, property);

    truncate(log, LogIndex(5), property);
    check_reads(log, &model, property);

    truncate(log, log.first_log_index(), property);
    check_reads(log, &[], property);
    assert_eq!(
        log.latest_log_index(),
        LogIndex(0),
        "{property}: latest index"
    );
    assert_eq!(log.latest_log_term(), Term(0), "{property}: latest term");

    let fresh = numbered_entries(1, 2, Term(5));
    append(log, &fresh, property);
    check_reads(log, &fresh, property);
}

/// A truncation below the first index or past `latest + 1` is refused with
/// [`LogError::TruncateOutOfRange`] and leaves the log unchanged.
///
/// # Panics
/// If the log breaks the property.
pub fn truncate_out_of_range_is_refused<L: PersistentLog>(log: &mut L) {
    let property = "truncate_out_of_range_is_refused";
    for from in [0, 2, u64::MAX] {
        expect_truncate_out_of_range(log.truncate_suffix(LogIndex(from)), from, 0, property);
        check_reads(log, &[], property);
    }
    truncate(log, LogIndex(1), property);
    check_reads(log, &[], property);

    let model = numbered_entries(1, 3, Term(1));
    append(log, &model, property);
    for from in [0, 5, 6, u64::MAX] {
        expect_truncate_out_of_range(log.truncate_suffix(LogIndex(from)), from, 3, property);
        check_reads(log, &model, property);
    }
}

/// Reads past the last entry find nothing: `term` and `entry` give `None` and `entries` is
/// empty, even at `u64::MAX`. Index 0 has term 0 and no entry.
///
/// # Panics
/// If the log breaks the property.
pub fn reads_past_end_are_none<L: PersistentLog>(log: &mut L) {
    let property = "reads_past_end_are_none";
    check_reads(log, &[], property);
    check_absent(log, LogIndex(u64::MAX), property);
    let model = numbered_entries(1, 3, Term(2));
    append(log, &model, property);
    check_reads(log, &model, property);
    for index in [4, 5, 1_000, u64::MAX] {
        check_absent(log, LogIndex(index), property);
    }
}

/// `sync` changes nothing a read can see, whether or not writes are pending.
///
/// # Panics
/// If the log breaks the property.
pub fn sync_keeps_everything<L: PersistentLog>(log: &mut L) {
    let property = "sync_keeps_everything";
    sync(log, property);
    check_empty(log, property);

    ok(
        log.set_current_term(Term(4)),
        property,
        "set_current_term(4)",
    );
    ok(
        log.set_voted_for(Some(ServerId(7))),
        property,
        "set_voted_for",
    );
    let mut model = numbered_entries(1, 6, Term(4));
    append(log, &model, property);
    truncate(log, LogIndex(5), property);
    model.truncate(4);
    let tail = numbered_entries(5, 2, Term(4));
    append(log, &tail, property);
    model.extend(tail);

    let before = observe(log, property);
    sync(log, property);
    assert_eq!(
        observe(log, property),
        before,
        "{property}: sync changed the log"
    );
    check_reads(log, &model, property);
    sync(log, property);
    assert_eq!(
        observe(log, property),
        before,
        "{property}: a sync with nothing pending changed the log"
    );
}

/// Entries with 0 data bytes and with [`LARGE_PAYLOAD_BYTES`], of both [`EntryKind`]s, read
/// back intact, before and after `sync`, and the large one counts fully against byte budgets.
///
/// # Panics
/// If the log breaks the property.
pub fn large_and_empty_payloads<L: PersistentLog>(log: &mut L) {
    let property = "large_and_empty_payloads";
    let large: Vec<u8> = (0..LARGE_PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let model = vec![
        Entry::command(Term(1), Vec::new()),
        Entry::noop(Term(1)),
        Entry::command(Term(2), large),
        Entry::command(Term(2), vec![0xff]),
    ];
    assert!(
        model.iter().any(|entry| entry.kind == EntryKind::Noop)
            && model.iter().any(|entry| entry.kind == EntryKind::Command),
        "{property}: the suite must cover both kinds"
    );
    append(log, &model, property);
    check_reads(log, &model, property);
    sync(log, property);
    check_reads(log, &model, property);

    let small_pair = ok(
        log.entries(LogIndex(1), LogIndex(5), 2 * Entry::OVERHEAD_BYTES),
        property,
        "entries",
    );
    assert!(
        small_pair == model[..2],
        "{property}: entries(1, 5, {}) returned {} entries; two empty entries fit a budget of \
         twice the overhead, the large one does not",
        2 * Entry::OVERHEAD_BYTES,
        small_pair.len()
    );
    let large_alone = ok(
        log.entries(LogIndex(3), LogIndex(5), model[2].size_bytes()),
        property,
        "entries",
    );
    assert!(
        large_alone == model[2..3],
        "{property}: a budget of exactly the large entry's size must return only it, got {} \
         entries",
        large_alone.len()
    );
    let over_budget = ok(
        log.entries(LogIndex(3), LogIndex(5), 1),
        property,
        "entries",
    );
    assert!(
        over_budget == model[2..3],
        "{property}: the first entry must be returned even when it alone passes the budget, got \
         {} entries",
        over_budget.len()
    );
}

/// [`MANY_ENTRIES_COUNT`] entries appended in batches of varying size read back in place, in
/// full and in part, and a late truncation leaves the right prefix.
///
/// # Panics
/// If the log breaks the property.
pub fn many_entries<L: PersistentLog>(log: &mut L) {
    let property = "many_entries";
    // Terms rise every 1,000 entries: 1 to 1,000 have term 1, 9,001 to 10,000 term 10.
    let term_at = |index: u64| Term((index - 1) / 1_000 + 1);
    let mut next = 1;
    let mut batch_number: u64 = 0;
    while next <= MANY_ENTRIES_COUNT {
        let count = (batch_number % 64 + 1).min(MANY_ENTRIES_COUNT - next + 1);
        let batch: Vec<Entry> = (next..next + count)
            .map(|index| Entry::command(term_at(index), index.to_le_bytes().to_vec()))
            .collect();
        append(log, &batch, property);
        next += count;
        batch_number += 1;
    }
    assert_eq!(
        log.latest_log_index(),
        LogIndex(MANY_ENTRIES_COUNT),
        "{property}: latest index"
    );
    assert_eq!(log.latest_log_term(), Term(10), "{property}: latest term");
    let spots = (1..=MANY_ENTRIES_COUNT).step_by(997).chain([
        1_000,
        1_001,
        MANY_ENTRIES_COUNT - 1,
        MANY_ENTRIES_COUNT,
    ]);
    for index in spots {
        let expected = Entry::command(term_at(index), index.to_le_bytes().to_vec());
        assert_eq!(
            ok(log.term(LogIndex(index)), property, "term"),
            Some(expected.term),
            "{property}: term at {index}"
        );
        assert_eq!(
            ok(log.entry(LogIndex(index)), property, "entry"),
            Some(expected),
            "{property}: entry at {index}"
        );
    }

    let all = ok(
        log.entries(LogIndex(1), LogIndex(MANY_ENTRIES_COUNT + 1), u64::MAX),
        property,
        "entries",
    );
    assert_eq!(
        all.len() as u64,
        MANY_ENTRIES_COUNT,
        "{property}: entries over the whole log"
    );
    for (entry, index) in all.iter().zip(1u64..) {
        assert_eq!(
            entry.data.as_ref(),
            index.to_le_bytes().as_slice(),
            "{property}: entries() out of place at {index}"
        );
    }
    let entry_bytes = 8 + Entry::OVERHEAD_BYTES;
    let hundred = ok(
        log.entries(LogIndex(5_000), LogIndex(u64::MAX), 100 * entry_bytes),
        property,
        "entries",
    );
    assert!(
        hundred == all[4_999..5_099],
        "{property}: a budget of 100 entries from 5,000 returned {} entries",
        hundred.len()
    );

    truncate(log, LogIndex(9_001), property);
    assert_eq!(
        log.latest_log_index(),
        LogIndex(9_000),
        "{property}: latest index after truncating at 9,001"
    );
    assert_eq!(
        log.latest_log_term(),
        Term(9),
        "{property}: latest term after truncating at 9,001"
    );
    check_absent(log, LogIndex(9_001), property);
}

/// Bytes handed over by value ([`PersistentLog::write_snapshot_owned`], which a log may write in
/// the background) land in order with bytes written by reference before and after them, and
/// [`PersistentLog::snapshot_written`] eventually says so; the snapshot then reads back whole.
///
/// # Panics
/// If the log breaks the property.
pub fn snapshot_written_in_the_background_reads_back<L: PersistentLog>(log: &mut L) {
    let property = "snapshot_written_in_the_background_reads_back";
    append(log, &history_of_terms(&[1, 1, 2]), property);
    let data = snapshot_data(300_000, 7);
    let meta = snapshot_meta(3, 2, &data);
    ok(log.begin_snapshot(meta.clone()), property, "begin_snapshot");
    ok(log.write_snapshot(&data[..10]), property, "write_snapshot");
    ok(
        log.write_snapshot_owned(data[10..250_000].to_vec()),
        property,
        "write_snapshot_owned",
    );
    ok(
        log.write_snapshot(&data[250_000..250_010]),
        property,
        "write_snapshot",
    );
    ok(
        log.write_snapshot_owned(data[250_010..].to_vec()),
        property,
        "write_snapshot_owned",
    );
    // A background write finishes on its own; a bounded wait keeps a broken log from hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ok(log.snapshot_written(), property, "snapshot_written") {
        assert!(
            std::time::Instant::now() < deadline,
            "{property}: snapshot_written never said yes"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    ok(log.finish_snapshot(), property, "finish_snapshot");
    check_snapshot(log, &meta, &data, property);
    assert!(
        read_whole_snapshot(log, 65_536, property) == data,
        "{property}: the snapshot reads back different bytes"
    );
}

/// A finished snapshot reads back: its meta, and its data in reads of any size, each at most
/// `bytes_max` bytes (at least 1 before the end), empty at the end and refused past it, also
/// for an empty snapshot. Before any snapshot, `snapshot_meta` is `None` and reads are refused
/// with [`LogError::Snapshot`].
///
/// # Panics
/// If the log breaks the property.
pub fn snapshot_round_trip<L: PersistentLog>(log: &mut L) {
    let property = "snapshot_round_trip";
    assert_eq!(
        log.snapshot_meta(),
        None,
        "{property}: a new log has no snapshot"
    );
    expect_snapshot_error(
        log.read_snapshot(0, 10),
        property,
        "read_snapshot without a snapshot",
    );
    let history = history_of_terms(&[1, 1, 2, 2, 2, 3, 3, 3, 3, 3]);
    append(log, &history, property);
    let data = snapshot_data(10_000, 1);
    let meta = snapshot_meta(8, 3, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    for bytes_max in [0, 1, 7, 4096, 10_000, 10_001, u64::MAX] {
        let found = read_whole_snapshot(log, bytes_max, property);
        assert!(
            found == data,
            "{property}: the snapshot read in chunks of {bytes_max} bytes differs from the data \
             written"
        );
    }
    let middle = ok(log.read_snapshot(5_000, 100), property, "read_snapshot");
    assert!(
        middle == data[5_000..5_100],
        "{property}: read_snapshot(5000, 100) returned {} bytes that differ from the data",
        middle.len()
    );
    let last = ok(log.read_snapshot(9_999, 100), property, "read_snapshot");
    assert!(
        last == data[9_999..],
        "{property}: read_snapshot(9999, 100) must return the last byte alone, got {} bytes",
        last.len()
    );
    for offset in [10_001, u64::MAX] {
        expect_snapshot_error(
            log.read_snapshot(offset, 1),
            property,
            &format!("read_snapshot({offset}, 1) past the end of 10000 bytes"),
        );
    }
    check_tail(log, 9, &history[8..], Term(3), property);
    check_kept_prefix(log, &history, 9, property);

    let empty = snapshot_meta(10, 3, &[]);
    install_snapshot(log, &empty, &[], property);
    check_snapshot(log, &empty, &[], property);
    expect_snapshot_error(
        log.read_snapshot(1, 10),
        property,
        "read_snapshot(1, 10) of an empty snapshot",
    );
    check_tail(log, 11, &[], Term(3), property);
}

/// §7: finishing a snapshot whose last entry the log holds (same index and term) keeps the
/// entries after it, and appends continue after them.
///
/// # Panics
/// If the log breaks the property.
pub fn finish_keeps_matching_suffix<L: PersistentLog>(log: &mut L) {
    let property = "finish_keeps_matching_suffix";
    let mut history = history_of_terms(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    append(log, &history, property);
    let data = snapshot_data(2_000, 2);
    let meta = snapshot_meta(6, 2, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    check_tail(log, 7, &history[6..], Term(2), property);
    check_kept_prefix(log, &history, 7, property);

    let more = [numbered_entry(11, Term(4))];
    append(log, &more, property);
    history.extend(more);
    check_tail(log, 7, &history[6..], Term(2), property);
}

/// §7: finishing a snapshot whose last index the log holds with another term discards the whole
/// log, which continues right after the snapshot: appends elsewhere are refused.
///
/// # Panics
/// If the log breaks the property.
pub fn finish_discards_conflicting_log<L: PersistentLog>(log: &mut L) {
    let property = "finish_discards_conflicting_log";
    let history = history_of_terms(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    append(log, &history, property);
    // The log has term 2 at index 6; the snapshot says 3.
    let data = snapshot_data(2_000, 3);
    let meta = snapshot_meta(6, 3, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    assert_eq!(
        log.first_log_index(),
        LogIndex(7),
        "{property}: the log must continue right after the snapshot"
    );
    check_tail(log, 7, &[], Term(3), property);
    let one = [numbered_entry(7, Term(4))];
    for from in [1, 6, 8, 11] {
        expect_non_contiguous(log.append_entries(LogIndex(from), &one), from, 7, property);
    }
    let fresh = numbered_entries(7, 3, Term(4));
    append(log, &fresh, property);
    check_tail(log, 7, &fresh, Term(3), property);
}

/// §7: finishing a snapshot past the end of the log discards the log, which continues right
/// after the snapshot; a later snapshot past the end again does the same.
///
/// # Panics
/// If the log breaks the property.
pub fn finish_discards_too_short_log<L: PersistentLog>(log: &mut L) {
    let property = "finish_discards_too_short_log";
    append(log, &numbered_entries(1, 3, Term(1)), property);
    let data = snapshot_data(500, 4);
    let meta = snapshot_meta(10, 4, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    assert_eq!(
        log.first_log_index(),
        LogIndex(11),
        "{property}: the log must continue right after the snapshot"
    );
    check_tail(log, 11, &[], Term(4), property);
    let fresh = numbered_entries(11, 2, Term(4));
    append(log, &fresh, property);
    check_tail(log, 11, &fresh, Term(4), property);

    let data = snapshot_data(700, 5);
    let meta = snapshot_meta(20, 5, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    assert_eq!(
        log.first_log_index(),
        LogIndex(21),
        "{property}: first index after the second snapshot"
    );
    check_tail(log, 21, &[], Term(5), property);
}

/// Once a snapshot covering `s` has replaced the whole log, the log answers as if it ended at
/// `s`: `term(s)` is the snapshot's term, and `latest_log_index` and `latest_log_term` are `s`
/// and that term whenever no later entry is held, also after later entries are truncated away.
///
/// # Panics
/// If the log breaks the property.
pub fn snapshot_stands_in_for_discarded_log<L: PersistentLog>(log: &mut L) {
    let property = "snapshot_stands_in_for_discarded_log";
    let data = snapshot_data(300, 6);
    let meta = snapshot_meta(5, 2, &data);
    install_snapshot(log, &meta, &data, property);
    assert_eq!(
        log.latest_log_index(),
        LogIndex(5),
        "{property}: latest index of a log that is only a snapshot"
    );
    assert_eq!(
        log.latest_log_term(),
        Term(2),
        "{property}: latest term of a log that is only a snapshot"
    );
    assert_eq!(
        ok(log.term(LogIndex(5)), property, "term(5)"),
        Some(Term(2)),
        "{property}: term at the snapshot's index"
    );
    check_tail(log, 6, &[], Term(2), property);

    let mut tail = numbered_entries(6, 3, Term(3));
    append(log, &tail, property);
    check_tail(log, 6, &tail, Term(2), property);
    truncate(log, LogIndex(6), property);
    check_tail(log, 6, &[], Term(2), property);
    assert_eq!(
        log.latest_log_term(),
        Term(2),
        "{property}: latest term after truncating every entry after the snapshot"
    );
    tail = numbered_entries(6, 1, Term(4));
    append(log, &tail, property);
    check_tail(log, 6, &tail, Term(2), property);
}

/// A finished snapshot whose data is short or fails its checksum is refused with
/// [`LogError::Snapshot`]; nothing changes (the snapshot in force, its data, the log), and the
/// refused snapshot is dropped, so a second finish or a write is refused too. The log still
/// takes a good snapshot afterwards.
///
/// # Panics
/// If the log breaks the property.
pub fn bad_snapshot_is_refused_and_changes_nothing<L: PersistentLog>(log: &mut L) {
    let property = "bad_snapshot_is_refused_and_changes_nothing";
    let history = history_of_terms(&[1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
    append(log, &history, property);
    let data_in_force = snapshot_data(3_000, 7);
    let meta_in_force = snapshot_meta(4, 2, &data_in_force);
    install_snapshot(log, &meta_in_force, &data_in_force, property);
    let before = observe(log, property);

    let data = snapshot_data(5_000, 8);
    let meta = snapshot_meta(8, 3, &data);
    let mut wrong_checksum = meta.clone();
    wrong_checksum.checksum ^= 1;
    let other_bytes = snapshot_data(5_000, 9);
    let attempts: [(&str, &SnapshotMeta, &[u8]); 4] = [
        ("a wrong checksum", &wrong_checksum, &data),
        ("one byte short", &meta, &data[..4_999]),
        ("no data at all", &meta, &[]),
        ("other bytes of the right length", &meta, &other_bytes),
    ];
    for (what, attempt, bytes) in attempts {
        ok(
            log.begin_snapshot(attempt.clone()),
            property,
            "begin_snapshot",
        );
        write_snapshot_data(log, bytes, property);
        expect_snapshot_error(
            log.finish_snapshot(),
            property,
            &format!("finish_snapshot of a snapshot with {what}"),
        );
        assert_eq!(
            observe(log, property),
            before,
            "{property}: a refused snapshot with {what} changed the log"
        );
        check_snapshot(log, &meta_in_force, &data_in_force, property);
        expect_snapshot_error(
            log.finish_snapshot(),
            property,
            &format!("a second finish_snapshot after refusing one with {what}"),
        );
        expect_snapshot_error(
            log.write_snapshot(b"x"),
            property,
            &format!("write_snapshot after refusing a snapshot with {what}"),
        );
    }

    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
    check_tail(log, 9, &history[8..], Term(3), property);
}

/// A write that would take the snapshot past the size `begin_snapshot` announced is refused
/// with [`LogError::Snapshot`] and not counted: the snapshot can still be completed.
///
/// # Panics
/// If the log breaks the property.
pub fn snapshot_write_past_announced_size_is_refused<L: PersistentLog>(log: &mut L) {
    let property = "snapshot_write_past_announced_size_is_refused";
    append(log, &numbered_entries(1, 5, Term(1)), property);
    let data = snapshot_data(100, 10);
    let meta = snapshot_meta(3, 1, &data);
    ok(log.begin_snapshot(meta.clone()), property, "begin_snapshot");
    ok(log.write_snapshot(&data[..60]), property, "write_snapshot");
    let mut one_over = data[60..].to_vec();
    one_over.push(0);
    expect_snapshot_error(
        log.write_snapshot(&one_over),
        property,
        "a write ending 1 byte past the announced 100 bytes",
    );
    expect_snapshot_error(
        log.write_snapshot(&[0; 1_000]),
        property,
        "a write of 1000 bytes into a snapshot of 100",
    );
    assert_eq!(
        log.snapshot_meta(),
        None,
        "{property}: an unfinished snapshot is not in force"
    );
    ok(log.write_snapshot(&data[60..]), property, "write_snapshot");
    expect_snapshot_error(
        log.write_snapshot(&[0]),
        property,
        "a write of 1 byte into a full snapshot",
    );
    ok(log.finish_snapshot(), property, "finish_snapshot");
    check_snapshot(log, &meta, &data, property);
}

/// `write_snapshot` and `finish_snapshot` without a `begin_snapshot` are refused with
/// [`LogError::Snapshot`] and change nothing; so are they after a finish, which ends the
/// snapshot.
///
/// # Panics
/// If the log breaks the property.
pub fn snapshot_calls_without_begin_are_refused<L: PersistentLog>(log: &mut L) {
    let property = "snapshot_calls_without_begin_are_refused";
    expect_snapshot_error(
        log.write_snapshot(b"data"),
        property,
        "write_snapshot without begin_snapshot",
    );
    expect_snapshot_error(
        log.finish_snapshot(),
        property,
        "finish_snapshot without begin_snapshot",
    );
    check_empty(log, property);
    assert_eq!(log.snapshot_meta(), None, "{property}: snapshot meta");

    append(log, &numbered_entries(1, 3, Term(1)), property);
    let data = snapshot_data(50, 11);
    let meta = snapshot_meta(2, 1, &data);
    install_snapshot(log, &meta, &data, property);
    let before = observe(log, property);
    expect_snapshot_error(
        log.write_snapshot(b"data"),
        property,
        "write_snapshot after finish_snapshot",
    );
    expect_snapshot_error(log.finish_snapshot(), property, "a second finish_snapshot");
    assert_eq!(
        observe(log, property),
        before,
        "{property}: a refused call changed the log"
    );
    check_snapshot(log, &meta, &data, property);
}

/// `begin_snapshot` drops an unfinished snapshot: only the second one's bytes count.
///
/// # Panics
/// If the log breaks the property.
pub fn begin_snapshot_drops_unfinished_one<L: PersistentLog>(log: &mut L) {
    let property = "begin_snapshot_drops_unfinished_one";
    append(log, &numbered_entries(1, 5, Term(1)), property);
    let dropped = snapshot_data(1_000, 12);
    ok(
        log.begin_snapshot(snapshot_meta(2, 1, &dropped)),
        property,
        "begin_snapshot",
    );
    ok(
        log.write_snapshot(&dropped[..500]),
        property,
        "write_snapshot",
    );
    let data = snapshot_data(800, 13);
    let meta = snapshot_meta(3, 1, &data);
    install_snapshot(log, &meta, &data, property);
    check_snapshot(log, &meta, &data, property);
}

/// `compact_prefix` refuses to pass the snapshot (or to run without one) with
/// [`LogError::Snapshot`], changing nothing; otherwise it discards at most the entries asked
/// for: reads below the new first index fail with [`LogError::Compacted`], the snapshot still
/// answers `term` at its index, and every entry from the first index on is untouched.
/// Compacting again, or below the first index, changes nothing.
///
/// # Panics
/// If the log breaks the property.
pub fn compact_prefix_respects_snapshot_bounds<L: PersistentLog>(log: &mut L) {
    let property = "compact_prefix_respects_snapshot_bounds";
    let mut history = rising_history(COMPACTION_ENTRIES_COUNT);
    append(log, &history, property);
    let before = observe(log, property);
    expect_snapshot_error(
        log.compact_prefix(LogIndex(1)),
        property,
        "compact_prefix(1) without a snapshot",
    );
    assert_eq!(
        observe(log, property),
        before,
        "{property}: a refused compaction changed the log"
    );

    let data = snapshot_data(1_000, 14);
    let meta = snapshot_meta(300, 3, &data);
    install_snapshot(log, &meta, &data, property);
    let before = observe(log, property);
    for through in [301, 400, 401, u64::MAX] {
        expect_snapshot_error(
            log.compact_prefix(LogIndex(through)),
            property,
            &format!("compact_prefix({through}) past the snapshot at 300"),
        );
        assert_eq!(
            observe(log, property),
            before,
            "{property}: a refused compaction through {through} changed the log"
        );
    }

    ok(
        log.compact_prefix(LogIndex(150)),
        property,
        "compact_prefix(150)",
    );
    check_tail(log, 151, &history[150..], Term(2), property);
    check_kept_prefix(log, &history, 151, property);
    check_snapshot(log, &meta, &data, property);
    let first = log.first_log_index();
    if let Some(below) = first.prev().filter(|index| !index.is_zero()) {
        assert!(
            log.truncate_suffix(below).is_err(),
            "{property}: truncate_suffix({below}) below the first index {first} must be refused"
        );
    }

    ok(
        log.compact_prefix(LogIndex(300)),
        property,
        "compact_prefix(300)",
    );
    check_tail(log, 301, &history[300..], Term(3), property);
    check_kept_prefix(log, &history, 301, property);
    check_snapshot(log, &meta, &data, property);
    let compacted = observe(log, property);
    for through in [300, 100, 0] {
        ok(
            log.compact_prefix(LogIndex(through)),
            property,
            &format!("compact_prefix({through}) again"),
        );
        assert_eq!(
            observe(log, property),
            compacted,
            "{property}: compacting through {through} again changed the log"
        );
    }

    let more = [numbered_entry(401, Term(5))];
    append(log, &more, property);
    history.extend(more);
    check_tail(log, 301, &history[300..], Term(3), property);
    truncate(log, LogIndex(401), property);
    history.truncate(400);
    check_tail(log, 301, &history[300..], Term(3), property);
}

/// A newer snapshot replaces the older one, which stays in force and readable until the newer
/// one's finish; compaction may then go up to the newer one.
///
/// # Panics
/// If the log breaks the property.
pub fn newer_snapshot_replaces_older<L: PersistentLog>(log: &mut L) {
    let property = "newer_snapshot_replaces_older";
    let history: Vec<Entry> = (1..=20u64)
        .map(|index| numbered_entry(index, Term((index - 1) / 5 + 1)))
        .collect();
    append(log, &history, property);
    let older_data = snapshot_data(2_000, 15);
    let older = snapshot_meta(5, 1, &older_data);
    install_snapshot(log, &older, &older_data, property);
    ok(
        log.compact_prefix(LogIndex(5)),
        property,
        "compact_prefix(5)",
    );

    let data = snapshot_data(3_000, 16);
    let meta = snapshot_meta(15, 3, &data);
    ok(log.begin_snapshot(meta.clone()), property, "begin_snapshot");
    ok(
        log.write_snapshot(&data[..1_500]),
        property,
        "write_snapshot",
    );
    check_snapshot(log, &older, &older_data, property);
    ok(
        log.write_snapshot(&data[1_500..]),
        property,
        "write_snapshot",
    );
    check_snapshot(log, &older, &older_data, property);
    ok(log.finish_snapshot(), property, "finish_snapshot");
    check_snapshot(log, &meta, &data, property);
    check_tail(log, 6, &history[5..], Term(1), property);

    ok(
        log.compact_prefix(LogIndex(15)),
        property,
        "compact_prefix(15)",
    );
    check_tail(log, 16, &history[15..], Term(3), property);
    check_kept_prefix(log, &history, 16, property);
}

/// A snapshot older than the one in force, or one giving its last index another term, is
/// refused with [`LogError::Snapshot`] and changes nothing: snapshots only move forward, and one
/// index has one term (§5.3 log matching). New data at the same position is accepted.
///
/// # Panics
/// If the log breaks the property.
pub fn older_or_contradicting_snapshot_is_refused<L: PersistentLog>(log: &mut L) {
    let property = "older_or_contradicting_snapshot_is_refused";
    let history: Vec<Entry> = (1..=20u64)
        .map(|index| numbered_entry(index, Term((index - 1) / 5 + 1)))
        .collect();
    append(log, &history, property);
    let data = snapshot_data(1_000, 17);
    let meta = snapshot_meta(10, 2, &data);
    install_snapshot(log, &meta, &data, property);
    ok(
        log.compact_prefix(LogIndex(10)),
        property,
        "compact_prefix(10)",
    );
    let before = observe(log, property);

    let refused = snapshot_data(600, 18);
    for (what, attempt) in [
        ("an older snapshot", snapshot_meta(5, 1, &refused)),
        (
            "a snapshot giving index 10 another term",
            snapshot_meta(10, 3, &refused),
        ),
    ] {
        ok(log.begin_snapshot(attempt), property, "begin_snapshot");
        write_snapshot_data(log, &refused, property);
        expect_snapshot_error(
            log.finish_snapshot(),
            property,
            &format!("finish_snapshot of {what}"),
        );
        assert_eq!(
            observe(log, property),
            before,
            "{property}: refusing {what} changed the log"
        );
        check_snapshot(log, &meta, &data, property);
    }

    let same_position_data = snapshot_data(900, 19);
    let same_position = snapshot_meta(10, 2, &same_position_data);
    install_snapshot(log, &same_position, &same_position_data, property);
    check_snapshot(log, &same_position, &same_position_data, property);
    check_tail(log, 11, &history[10..], Term(2), property);
}

/// Truncating at or below the snapshot's last index is refused and changes nothing: a snapshot
/// covers only committed entries, which are never removed (§5.4.2, §7). Truncating after it
/// works, and the latest term falls back to the snapshot's.
///
/// # Panics
/// If the log breaks the property.
pub fn truncate_at_or_below_snapshot_is_refused<L: PersistentLog>(log: &mut L) {
    let property = "truncate_at_or_below_snapshot_is_refused";
    let history = history_of_terms(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    append(log, &history, property);
    let data = snapshot_data(400, 20);
    let meta = snapshot_meta(6, 2, &data);
    install_snapshot(log, &meta, &data, property);
    let before = observe(log, property);
    for from in [6, 3, 1] {
        let result = log.truncate_suffix(LogIndex(from));
        assert!(
            result.is_err(),
            "{property}: truncate_suffix({from}) at or below the snapshot at 6 must be refused"
        );
        assert_eq!(
            observe(log, property),
            before,
            "{property}: a refused truncate_suffix({from}) changed the log"
        );
    }
    truncate(log, LogIndex(7), property);
    check_tail(log, 7, &[], Term(2), property);
    check_snapshot(log, &meta, &data, property);
}

/// A reopened new log is empty, whether or not it was synced.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn empty_log_reopens_empty<L: ReopenableLog>(log: L) {
    let property = "empty_log_reopens_empty";
    let mut log = log.reopen();
    check_empty(&log, property);
    sync(&mut log, property);
    let log = log.reopen();
    check_empty(&log, property);
}

/// Synced term, vote, entries and truncations all read back identically after a reopen, and the
/// reopened log carries on from where it stopped.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn synced_writes_survive_reopen<L: ReopenableLog>(log: L) {
    let property = "synced_writes_survive_reopen";
    let mut log = log;
    ok(
        log.set_current_term(Term(7)),
        property,
        "set_current_term(7)",
    );
    ok(
        log.set_voted_for(Some(ServerId(2))),
        property,
        "set_voted_for",
    );
    let mut model = numbered_entries(1, 6, Term(7));
    append(&mut log, &model, property);
    truncate(&mut log, LogIndex(5), property);
    model.truncate(4);
    let replacement = [numbered_entry(5, Term(7))];
    append(&mut log, &replacement, property);
    model.extend(replacement);
    sync(&mut log, property);

    let before = observe(&log, property);
    let mut log = log.reopen();
    assert_eq!(
        observe(&log, property),
        before,
        "{property}: synced writes changed across a reopen"
    );
    check_reads(&log, &model, property);

    // A new term clears the vote, a truncation removes a synced tail: both must last too.
    ok(
        log.set_current_term(Term(8)),
        property,
        "set_current_term(8)",
    );
    truncate(&mut log, LogIndex(3), property);
    model.truncate(2);
    sync(&mut log, property);
    let mut log = log.reopen();
    assert_eq!(log.current_term(), Term(8), "{property}: term after reopen");
    assert_eq!(
        log.voted_for(),
        None,
        "{property}: cleared vote after reopen"
    );
    check_reads(&log, &model, property);

    let tail = numbered_entries(3, 2, Term(8));
    append(&mut log, &tail, property);
    model.extend(tail);
    sync(&mut log, property);
    let log = log.reopen();
    check_reads(&log, &model, property);
}

/// A reopen without sync keeps the synced state plus a prefix of the later writes, in the order
/// they were made: it may lose a suffix of them, never an earlier one, and never invents data.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn unsynced_writes_lose_only_a_suffix<L: ReopenableLog>(log: L) {
    let property = "unsynced_writes_lose_only_a_suffix";
    let mut log = log;
    ok(
        log.set_current_term(Term(2)),
        property,
        "set_current_term(2)",
    );
    ok(
        log.set_voted_for(Some(ServerId(1))),
        property,
        "set_voted_for",
    );
    append(&mut log, &numbered_entries(1, 3, Term(2)), property);
    sync(&mut log, property);

    // What a read sees after each unsynced write: the reopened log must match one of them.
    let mut allowed = vec![observe(&log, property)];
    append(&mut log, &numbered_entries(4, 2, Term(2)), property);
    allowed.push(observe(&log, property));
    ok(
        log.set_current_term(Term(3)),
        property,
        "set_current_term(3)",
    );
    allowed.push(observe(&log, property));
    ok(
        log.set_voted_for(Some(ServerId(3))),
        property,
        "set_voted_for",
    );
    allowed.push(observe(&log, property));
    truncate(&mut log, LogIndex(4), property);
    allowed.push(observe(&log, property));
    append(&mut log, &[numbered_entry(4, Term(3))], property);
    allowed.push(observe(&log, property));

    let mut log = log.reopen();
    let after = observe(&log, property);
    assert!(
        allowed.contains(&after),
        "{property}: after a reopen the log must be the synced state plus a prefix of the later \
         writes; got {after:?}, allowed states: {allowed:?}"
    );
    let next = log.latest_log_index().next();
    append(&mut log, &[numbered_entry(next.0, Term(3))], property);
    sync(&mut log, property);
}

/// A finished snapshot, the entries it kept and the entries appended after it survive a
/// reopen, as does a snapshot that replaced the whole log; the reopened log carries on.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn snapshot_and_following_entries_survive_reopen<L: ReopenableLog>(log: L) {
    let property = "snapshot_and_following_entries_survive_reopen";
    let mut log = log;
    ok(
        log.set_current_term(Term(3)),
        property,
        "set_current_term(3)",
    );
    ok(
        log.set_voted_for(Some(ServerId(2))),
        property,
        "set_voted_for",
    );
    let mut history = history_of_terms(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    append(&mut log, &history, property);
    let data = snapshot_data(5_000, 21);
    let meta = snapshot_meta(6, 2, &data);
    install_snapshot(&mut log, &meta, &data, property);
    let more = numbered_entries(11, 2, Term(3));
    append(&mut log, &more, property);
    history.extend(more);
    sync(&mut log, property);
    let before = observe(&log, property);
    let mut log = log.reopen();
    assert_eq!(
        observe(&log, property),
        before,
        "{property}: a log that kept its entries behind a snapshot changed across a reopen"
    );
    check_snapshot(&log, &meta, &data, property);
    check_tail(&log, 7, &history[6..], Term(2), property);

    // A snapshot past the end replaces the whole log.
    let data = snapshot_data(7_000, 22);
    let meta = snapshot_meta(20, 4, &data);
    install_snapshot(&mut log, &meta, &data, property);
    let mut tail = numbered_entries(21, 2, Term(4));
    append(&mut log, &tail, property);
    sync(&mut log, property);
    let before = observe(&log, property);
    let mut log = log.reopen();
    assert_eq!(
        observe(&log, property),
        before,
        "{property}: a log that a snapshot replaced changed across a reopen"
    );
    check_snapshot(&log, &meta, &data, property);
    check_tail(&log, 21, &tail, Term(4), property);
    assert_eq!(log.current_term(), Term(3), "{property}: term after reopen");
    assert_eq!(
        log.voted_for(),
        Some(ServerId(2)),
        "{property}: vote after reopen"
    );

    let next = [numbered_entry(23, Term(4))];
    append(&mut log, &next, property);
    tail.extend(next);
    sync(&mut log, property);
    let log = log.reopen();
    check_tail(&log, 21, &tail, Term(4), property);
}

/// Finishing a snapshot makes every earlier write durable with it: after a reopen without a
/// sync, the term, vote and entries written before the finish are all there, with the snapshot.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn finish_snapshot_makes_earlier_writes_durable<L: ReopenableLog>(log: L) {
    let property = "finish_snapshot_makes_earlier_writes_durable";
    let mut log = log;
    ok(
        log.set_current_term(Term(4)),
        property,
        "set_current_term(4)",
    );
    ok(
        log.set_voted_for(Some(ServerId(1))),
        property,
        "set_voted_for",
    );
    let history = history_of_terms(&[1, 1, 2, 2, 2, 3, 3, 3, 4, 4]);
    append(&mut log, &history, property);
    let data = snapshot_data(1_000, 23);
    let meta = snapshot_meta(6, 3, &data);
    install_snapshot(&mut log, &meta, &data, property);
    let mut allowed = vec![observe(&log, property)];
    append(&mut log, &[numbered_entry(11, Term(4))], property);
    allowed.push(observe(&log, property));

    let log = log.reopen();
    let after = observe(&log, property);
    assert!(
        allowed.contains(&after),
        "{property}: after a reopen the log must hold everything written before the finish \
         (and maybe the later append); got {after:?}, allowed states: {allowed:?}"
    );
    check_snapshot(&log, &meta, &data, property);
}

/// A snapshot begun but not finished is gone after a reopen: the snapshot in force before it
/// (or none) stands, and nothing is pending, so a write or finish is refused.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn unfinished_snapshot_is_gone_after_reopen<L: ReopenableLog>(log: L) {
    let property = "unfinished_snapshot_is_gone_after_reopen";
    let mut log = log;
    let history = history_of_terms(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
    append(&mut log, &history, property);
    sync(&mut log, property);
    let data = snapshot_data(3_000, 24);
    let meta = snapshot_meta(6, 2, &data);
    ok(log.begin_snapshot(meta.clone()), property, "begin_snapshot");
    write_snapshot_data(&mut log, &data, property);
    sync(&mut log, property);
    let mut log = log.reopen();
    assert_eq!(
        log.snapshot_meta(),
        None,
        "{property}: a snapshot never finished is in force after a reopen"
    );
    expect_snapshot_error(
        log.read_snapshot(0, 10),
        property,
        "read_snapshot after a reopen that lost the only snapshot",
    );
    expect_snapshot_error(
        log.finish_snapshot(),
        property,
        "finish_snapshot of a snapshot begun before the reopen",
    );
    check_reads(&log, &history, property);

    install_snapshot(&mut log, &meta, &data, property);
    let newer_data = snapshot_data(4_000, 25);
    let newer = snapshot_meta(9, 3, &newer_data);
    ok(log.begin_snapshot(newer), property, "begin_snapshot");
    ok(
        log.write_snapshot(&newer_data[..2_000]),
        property,
        "write_snapshot",
    );
    let mut log = log.reopen();
    check_snapshot(&log, &meta, &data, property);
    expect_snapshot_error(
        log.write_snapshot(&newer_data[2_000..]),
        property,
        "write_snapshot into a snapshot begun before the reopen",
    );
    check_tail(&log, 7, &history[6..], Term(2), property);
}

/// Compaction survives a reopen after a sync: the same first index, entries and snapshot, reads
/// below the first index still refused as compacted; the reopened log carries on.
///
/// # Panics
/// If the log breaks the property, or if `reopen` panics.
pub fn compaction_survives_reopen<L: ReopenableLog>(log: L) {
    let property = "compaction_survives_reopen";
    let mut log = log;
    let mut history = rising_history(COMPACTION_ENTRIES_COUNT);
    append(&mut log, &history, property);
    let data = snapshot_data(2_000, 26);
    let meta = snapshot_meta(300, 3, &data);
    install_snapshot(&mut log, &meta, &data, property);
    ok(
        log.compact_prefix(LogIndex(300)),
        property,
        "compact_prefix(300)",
    );
    sync(&mut log, property);
    let before = observe(&log, property);
    let mut log = log.reopen();
    assert_eq!(
        observe(&log, property),
        before,
        "{property}: a compacted log changed across a reopen"
    );
    check_snapshot(&log, &meta, &data, property);
    check_tail(&log, 301, &history[300..], Term(3), property);

    let more = [numbered_entry(401, Term(5))];
    append(&mut log, &more, property);
    history.extend(more);
    sync(&mut log, property);
    let log = log.reopen();
    check_tail(&log, 301, &history[300..], Term(3), property);
}

/// Expands to `#[cfg(test)] mod $module_name` with one `#[test]` per
/// [`PersistentLog`](crate::log::PersistentLog) property
/// of [`log::conformance`](crate::log::conformance), each running on a fresh log made by `$make`.
///
/// `$make` is evaluated once per test inside the generated module, which glob-imports the module
/// invoking the macro, so names in scope there can be used.
///
/// # Examples
/// ```
/// mioraft::persistent_log_conformance!(mem_log_conformance, mioraft::log::MemLog::new());
/// ```
#[macro_export]
macro_rules! persistent_log_conformance {
    ($module_name:ident, $make:expr $(,)?) => {
        #[cfg(test)]
        mod $module_name {
            #[allow(unused_imports)]
            use super::*;

            $crate::__persistent_log_tests!(
                by_reference,
                $make;
                new_log_is_empty,
                term_and_vote_round_trip,
                higher_term_clears_vote,
                same_term_keeps_vote,
                term_never_goes_back,
                append_then_read_back,
                append_must_be_contiguous,
                owned_append_matches_append,
                entries_respects_range_and_byte_budget,
                truncate_suffix_removes_tail,
                truncate_out_of_range_is_refused,
                reads_past_end_are_none,
                sync_keeps_everything,
                large_and_empty_payloads,
                many_entries,
                snapshot_round_trip,
                snapshot_written_in_the_background_reads_back,
                finish_keeps_matching_suffix,
                finish_discards_conflicting_log,
                finish_discards_too_short_log,
                snapshot_stands_in_for_discarded_log,
                bad_snapshot_is_refused_and_changes_nothing,
                snapshot_write_past_announced_size_is_refused,
                snapshot_calls_without_begin_are_refused,
                begin_snapshot_drops_unfinished_one,
                compact_prefix_respects_snapshot_bounds,
                newer_snapshot_replaces_older,
                older_or_contradicting_snapshot_is_refused,
                truncate_at_or_below_snapshot_is_refused,
            );
        }
    };
}

/// Expands to `#[cfg(test)] mod $module_name` with one `#[test]` per durability property of
/// [`log::conformance`](crate::log::conformance), each running on a fresh
/// [`ReopenableLog`](crate::log::conformance::ReopenableLog) made by `$make`.
///
/// `$make` is evaluated once per test inside the generated module, which glob-imports the module
/// invoking the macro. Run [`persistent_log_conformance!`](crate::persistent_log_conformance)
/// on the same log as well.
///
/// # Examples
/// ```
/// // `SimLog` implements `mioraft::log::conformance::ReopenableLog`.
/// mioraft::persistent_log_durability_conformance!(sim_log_durability, mioraft::sim::SimLog::new());
/// ```
#[macro_export]
macro_rules! persistent_log_durability_conformance {
    ($module_name:ident, $make:expr $(,)?) => {
        #[cfg(test)]
        mod $module_name {
            #[allow(unused_imports)]
            use super::*;

            $crate::__persistent_log_tests!(
                by_value,
                $make;
                empty_log_reopens_empty,
                synced_writes_survive_reopen,
                unsynced_writes_lose_only_a_suffix,
                snapshot_and_following_entries_survive_reopen,
                finish_snapshot_makes_earlier_writes_durable,
                unfinished_snapshot_is_gone_after_reopen,
                compaction_survives_reopen,
            );
        }
    };
}

/// One `#[test]` per listed conformance function; the implementation of the public macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __persistent_log_tests {
    (by_reference, $make:expr; $($property:ident),+ $(,)?) => {
        $(
            #[test]
            fn $property() {
                let mut log = $make;
                $crate::log::conformance::$property(&mut log);
            }
        )+
    };
    (by_value, $make:expr; $($property:ident),+ $(,)?) => {
        $(
            #[test]
            fn $property() {
                $crate::log::conformance::$property($make);
            }
        )+
    };
}

/// Everything a read can see, for comparing a log before and after an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    current_term: Term,
    voted_for: Option<ServerId>,
    first_log_index: LogIndex,
    latest_log_index: LogIndex,
    latest_log_term: Term,
    entries: Vec<Entry>,
    snapshot: Option<SnapshotMeta>,
}

fn observe<L: PersistentLog>(log: &L, property: &str) -> Observed {
    let first_log_index = log.first_log_index();
    let latest_log_index = log.latest_log_index();
    let entries = ok(
        log.entries(first_log_index, latest_log_index.next(), u64::MAX),
        property,
        "entries over the whole log",
    );
    Observed {
        current_term: log.current_term(),
        voted_for: log.voted_for(),
        first_log_index,
        latest_log_index,
        latest_log_term: log.latest_log_term(),
        entries,
        snapshot: log.snapshot_meta().cloned(),
    }
}

/// Unwraps a log call's result, or fails the property naming the call and the error.
#[track_caller]
fn ok<T>(result: Result<T, LogError>, property: &str, call: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{property}: {call} failed: {error} ({error:?})"),
    }
}

#[track_caller]
fn append<L: PersistentLog>(log: &mut L, entries: &[Entry], property: &str) {
    let from = log.latest_log_index().next();
    ok(
        log.append_entries(from, entries),
        property,
        &format!("append of {} entries at {from}", entries.len()),
    );
}

#[track_caller]
fn truncate<L: PersistentLog>(log: &mut L, from: LogIndex, property: &str) {
    ok(
        log.truncate_suffix(from),
        property,
        &format!("truncate_suffix({from})"),
    );
}

#[track_caller]
fn sync<L: PersistentLog>(log: &mut L, property: &str) {
    ok(log.sync(), property, "sync");
}

/// An entry whose data names its index and term, so a misplaced entry shows.
fn numbered_entry(index: u64, term: Term) -> Entry {
    Entry::command(term, format!("entry {index} of term {term}").into_bytes())
}

/// `count` numbered entries of `term` for the indexes from `first`.
fn numbered_entries(first: u64, count: u64, term: Term) -> Vec<Entry> {
    (first..first + count)
        .map(|index| numbered_entry(index, term))
        .collect()
}

/// Checks every read against `model`, the entries the log must hold from index 1.
#[track_caller]
fn check_reads<L: PersistentLog>(log: &L, model: &[Entry], property: &str) {
    let latest = model.len() as u64;
    assert_eq!(
        log.first_log_index(),
        LogIndex(1),
        "{property}: first index"
    );
    assert_eq!(
        log.latest_log_index(),
        LogIndex(latest),
        "{property}: latest index"
    );
    let latest_term = model.last().map_or(Term(0), |entry| entry.term);
    assert_eq!(
        log.latest_log_term(),
        latest_term,
        "{property}: latest term (log of {latest} entries)"
    );
    assert_eq!(
        ok(log.term(LogIndex(0)), property, "term(0)"),
        Some(Term(0)),
        "{property}: term at index 0"
    );
    assert_eq!(
        ok(log.entry(LogIndex(0)), property, "entry(0)"),
        None,
        "{property}: entry at index 0"
    );
    for (expected, index) in model.iter().zip(1u64..) {
        assert_eq!(
            ok(log.term(LogIndex(index)), property, "term"),
            Some(expected.term),
            "{property}: term at {index}"
        );
        let found = ok(log.entry(LogIndex(index)), property, "entry");
        assert!(
            found.as_ref() == Some(expected),
            "{property}: entry at {index} differs from the one appended (term {:?}, kind {:?}, \
             {:?} data bytes found; term {}, kind {:?}, {} data bytes appended)",
            found.as_ref().map(|entry| entry.term),
            found.as_ref().map(|entry| entry.kind),
            found.as_ref().map(|entry| entry.data.len()),
            expected.term,
            expected.kind,
            expected.data.len()
        );
    }
    let all = ok(
        log.entries(LogIndex(1), LogIndex(latest + 1), u64::MAX),
        property,
        "entries",
    );
    assert!(
        all == model,
        "{property}: entries(1, {}, max) returned {} entries that differ from the {latest} \
         appended",
        latest + 1,
        all.len()
    );
    check_absent(log, LogIndex(latest + 1), property);
}

/// Checks that the log holds nothing at `index` (past its end).
#[track_caller]
fn check_absent<L: PersistentLog>(log: &L, index: LogIndex, property: &str) {
    assert_eq!(
        ok(log.term(index), property, "term"),
        None,
        "{property}: term at {index}, past the end"
    );
    assert_eq!(
        ok(log.entry(index), property, "entry"),
        None,
        "{property}: entry at {index}, past the end"
    );
    let found = ok(
        log.entries(index, LogIndex(u64::MAX), u64::MAX),
        property,
        "entries",
    );
    assert!(
        found.is_empty(),
        "{property}: entries from {index}, past the end, returned {} entries",
        found.len()
    );
}

#[track_caller]
fn check_empty<L: PersistentLog>(log: &L, property: &str) {
    assert_eq!(log.current_term(), Term(0), "{property}: term of a new log");
    assert_eq!(log.voted_for(), None, "{property}: vote of a new log");
    check_reads(log, &[], property);
}

#[track_caller]
fn expect_non_contiguous(result: Result<(), LogError>, from: u64, expected: u64, property: &str) {
    assert!(
        matches!(
            result,
            Err(LogError::NonContiguousAppend { index, expected: found_expected })
                if index == LogIndex(from) && found_expected == LogIndex(expected)
        ),
        "{property}: append at {from} must fail with NonContiguousAppend {{ index: {from}, \
         expected: {expected} }}, got {result:?}"
    );
}

#[track_caller]
fn expect_truncate_out_of_range(
    result: Result<(), LogError>,
    from: u64,
    latest: u64,
    property: &str,
) {
    assert!(
        matches!(
            result,
            Err(LogError::TruncateOutOfRange { index, first, latest: found_latest })
                if index == LogIndex(from) && first == LogIndex(1)
                    && found_latest == LogIndex(latest)
        ),
        "{property}: truncate_suffix({from}) must fail with TruncateOutOfRange {{ index: {from}, \
         first: 1, latest: {latest} }}, got {result:?}"
    );
}

/// The reference answer for `entries(from, until, bytes_max)` on a log holding `model` from 1.
fn expected_entries(model: &[Entry], from: u64, until: u64, bytes_max: u64) -> Vec<Entry> {
    let mut found = Vec::new();
    let mut total_bytes: u64 = 0;
    for (entry, index) in model.iter().zip(1u64..) {
        if index < from || index >= until {
            continue;
        }
        total_bytes = total_bytes.saturating_add(entry.size_bytes());
        if !found.is_empty() && total_bytes > bytes_max {
            break;
        }
        found.push(entry.clone());
    }
    found
}

/// Entries numbered from 1 with the given terms.
fn history_of_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .zip(1u64..)
        .map(|(&term, index)| numbered_entry(index, Term(term)))
        .collect()
}

/// `count` entries numbered from 1 whose term rises every 100 entries (1 to 100 have term 1).
fn rising_history(count: u64) -> Vec<Entry> {
    (1..=count)
        .map(|index| numbered_entry(index, Term((index - 1) / 100 + 1)))
        .collect()
}

/// Snapshot data of `size_bytes` bytes that depends on `seed`, so two snapshots differ.
fn snapshot_data(size_bytes: usize, seed: u8) -> Vec<u8> {
    (0..size_bytes)
        .map(|position| {
            (position as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((position >> 8) as u8)
        })
        .collect()
}

/// The meta of a snapshot of `data` that covers up to `last_index`, of `last_term`.
fn snapshot_meta(last_index: u64, last_term: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(last_index),
        last_term: Term(last_term),
        membership: crate::membership::Membership::default()
            .with_voter(ServerId(1), "127.0.0.1:7001")
            .with_voter(ServerId(2), "127.0.0.1:7002")
            .with_learner(ServerId(4), "127.0.0.1:7004"),
        size: data.len() as u64,
        checksum: crc32c::crc32c(data),
    }
}

/// Writes `data` into the unfinished snapshot in chunks of uneven sizes, after an empty write,
/// as a transfer might deliver them.
#[track_caller]
fn write_snapshot_data<L: PersistentLog>(log: &mut L, data: &[u8], property: &str) {
    ok(
        log.write_snapshot(&[]),
        property,
        "write_snapshot of nothing",
    );
    let mut offset = 0;
    let mut chunk_bytes = 1;
    while offset < data.len() {
        let end = (offset + chunk_bytes).min(data.len());
        ok(
            log.write_snapshot(&data[offset..end]),
            property,
            &format!("write_snapshot of bytes {offset} to {end}"),
        );
        offset = end;
        chunk_bytes = chunk_bytes * 3 + 1;
    }
}

/// Begins, writes and finishes a snapshot.
#[track_caller]
fn install_snapshot<L: PersistentLog>(
    log: &mut L,
    meta: &SnapshotMeta,
    data: &[u8],
    property: &str,
) {
    ok(log.begin_snapshot(meta.clone()), property, "begin_snapshot");
    write_snapshot_data(log, data, property);
    ok(
        log.finish_snapshot(),
        property,
        &format!(
            "finish_snapshot of the snapshot up to {} of term {}",
            meta.last_index, meta.last_term
        ),
    );
}

/// The snapshot in force, read from the start in reads of `bytes_max` bytes, each checked to
/// return at least 1 and at most `bytes_max` (or 1) bytes, and an empty read at the end.
#[track_caller]
fn read_whole_snapshot<L: PersistentLog>(log: &L, bytes_max: u64, property: &str) -> Vec<u8> {
    let Some(size) = log.snapshot_meta().map(|meta| meta.size) else {
        panic!("{property}: there is no snapshot to read");
    };
    let mut data = Vec::new();
    while (data.len() as u64) < size {
        let offset = data.len() as u64;
        let chunk = ok(
            log.read_snapshot(offset, bytes_max),
            property,
            &format!("read_snapshot({offset}, {bytes_max})"),
        );
        assert!(
            !chunk.is_empty(),
            "{property}: read_snapshot({offset}, {bytes_max}) returned nothing before the end \
             of {size} bytes"
        );
        assert!(
            chunk.len() as u64 <= bytes_max.max(1),
            "{property}: read_snapshot({offset}, {bytes_max}) returned {} bytes",
            chunk.len()
        );
        data.extend_from_slice(&chunk);
    }
    assert_eq!(
        data.len() as u64,
        size,
        "{property}: reads of {bytes_max} bytes ran past the snapshot's size"
    );
    let end = ok(
        log.read_snapshot(size, bytes_max),
        property,
        &format!("read_snapshot({size}, {bytes_max}) at the end"),
    );
    assert!(
        end.is_empty(),
        "{property}: read_snapshot at the end returned {} bytes",
        end.len()
    );
    data
}

/// Checks that the snapshot in force is `meta` with `data`, and that it answers `term` at its
/// last index.
#[track_caller]
fn check_snapshot<L: PersistentLog>(log: &L, meta: &SnapshotMeta, data: &[u8], property: &str) {
    assert_eq!(
        log.snapshot_meta(),
        Some(meta),
        "{property}: the snapshot in force"
    );
    let found = read_whole_snapshot(log, 4096, property);
    assert!(
        found == data,
        "{property}: the snapshot's data differs from the {} bytes written",
        data.len()
    );
    assert_eq!(
        ok(log.term(meta.last_index), property, "term"),
        Some(meta.last_term),
        "{property}: term at the snapshot's last index {}",
        meta.last_index
    );
}

/// Checks a log that must hold `tail` from index `from` to its end, whatever it kept before:
/// a first index between 1 and `from`, reads below it refused as compacted, the latest index
/// and term, every read of the tail, and nothing past it. `term_before` is the term at
/// `from - 1`, checked where the log still answers for it.
#[track_caller]
fn check_tail<L: PersistentLog>(
    log: &L,
    from: u64,
    tail: &[Entry],
    term_before: Term,
    property: &str,
) {
    let first = log.first_log_index();
    assert!(
        first >= LogIndex(1) && first <= LogIndex(from),
        "{property}: first index {first} must lie between 1 and {from}"
    );
    let latest = from - 1 + tail.len() as u64;
    assert_eq!(
        log.latest_log_index(),
        LogIndex(latest),
        "{property}: latest index"
    );
    assert_eq!(
        log.latest_log_term(),
        tail.last().map_or(term_before, |entry| entry.term),
        "{property}: latest term (latest index {latest})"
    );
    let before = LogIndex(from - 1);
    let snapshot_index = log.snapshot_meta().map(|meta| meta.last_index);
    if before >= first || before.is_zero() || Some(before) == snapshot_index {
        assert_eq!(
            ok(log.term(before), property, "term"),
            Some(term_before),
            "{property}: term at {before}"
        );
    }
    for (expected, index) in tail.iter().zip(from..) {
        assert_eq!(
            ok(log.term(LogIndex(index)), property, "term"),
            Some(expected.term),
            "{property}: term at {index}"
        );
        let found = ok(log.entry(LogIndex(index)), property, "entry");
        assert!(
            found.as_ref() == Some(expected),
            "{property}: entry at {index} differs from the one appended"
        );
    }
    let all = ok(
        log.entries(LogIndex(from), LogIndex(latest + 1), u64::MAX),
        property,
        "entries",
    );
    assert!(
        all == tail,
        "{property}: entries({from}, {}, max) returned {} entries that differ from the {} \
         expected",
        latest + 1,
        all.len(),
        tail.len()
    );
    check_absent(log, LogIndex(latest + 1), property);
    for index in 1..first.0 {
        check_compacted(log, LogIndex(index), property);
    }
}

/// Checks that the entries the log still holds below `until` are those of `history` (which
/// starts at index 1).
#[track_caller]
fn check_kept_prefix<L: PersistentLog>(log: &L, history: &[Entry], until: u64, property: &str) {
    let first = log.first_log_index().0;
    for index in first..until {
        let found = ok(log.entry(LogIndex(index)), property, "entry");
        assert!(
            found.as_ref() == history.get((index - 1) as usize),
            "{property}: entry at {index}, kept below {until}, differs from the one appended"
        );
    }
    if first < until {
        let kept = ok(
            log.entries(LogIndex(first), LogIndex(until), u64::MAX),
            property,
            "entries",
        );
        assert!(
            kept == history[(first - 1) as usize..(until - 1) as usize],
            "{property}: entries({first}, {until}, max) differ from the ones appended"
        );
    }
}

/// Checks that reads at `index`, below the first index, fail with [`LogError::Compacted`]
/// naming it and the first index; `term` still answers at the snapshot's last index.
#[track_caller]
fn check_compacted<L: PersistentLog>(log: &L, index: LogIndex, property: &str) {
    let first = log.first_log_index();
    let is_compacted = |error: &LogError| {
        matches!(error, LogError::Compacted { index: found, first: found_first }
            if *found == index && *found_first == first)
    };
    match log.snapshot_meta() {
        Some(meta) if meta.last_index == index => assert_eq!(
            ok(log.term(index), property, "term"),
            Some(meta.last_term),
            "{property}: term at the snapshot's last index {index}"
        ),
        _ => {
            let result = log.term(index);
            assert!(
                result.as_ref().is_err_and(is_compacted),
                "{property}: term({index}) below the first index {first} must fail with \
                 Compacted {{ index: {index}, first: {first} }}, got {result:?}"
            );
        }
    }
    let result = log.entry(index);
    assert!(
        result.as_ref().is_err_and(is_compacted),
        "{property}: entry({index}) below the first index {first} must fail with Compacted \
         {{ index: {index}, first: {first} }}, got {result:?}"
    );
    let result = log.entries(index, LogIndex(u64::MAX), u64::MAX);
    assert!(
        result.as_ref().is_err_and(is_compacted),
        "{property}: entries({index}, ..) below the first index {first} must fail with \
         Compacted {{ index: {index}, first: {first} }}, got {} ",
        match &result {
            Ok(found) => format!("{} entries", found.len()),
            Err(error) => format!("{error:?}"),
        }
    );
}

#[track_caller]
fn expect_snapshot_error<T: std::fmt::Debug>(
    result: Result<T, LogError>,
    property: &str,
    call: &str,
) {
    assert!(
        matches!(result, Err(LogError::Snapshot { .. })),
        "{property}: {call} must fail with LogError::Snapshot, got {result:?}"
    );
}
