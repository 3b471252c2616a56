//! Owns the conformance suite of the [`PersistentLog`] contract (DESIGN.md §3): one public
//! function per property, each panicking with the property's name and the values it saw when a
//! log breaks the contract, and macros that turn them into `#[test]`s. Every log in the crate
//! runs it ([`MemLog`](crate::log::MemLog), `sim::SimLog`, `FileLog`); the contract itself is
//! written on the trait, in `log/mod.rs`.
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
use crate::log::{Entry, EntryKind, PersistentLog};
use crate::types::{LogIndex, ServerId, Term};

/// Data bytes of the large entry in [`large_and_empty_payloads`]: 1 MiB.
pub const LARGE_PAYLOAD_BYTES: usize = 1 << 20;

/// Entries appended by [`many_entries`].
pub const MANY_ENTRIES_COUNT: u64 = 10_000;

/// A log that can be closed as a crash would close it and opened again, for the durability
/// properties ([`empty_log_reopens_empty`], [`synced_writes_survive_reopen`],
/// [`unsynced_writes_lose_only_a_suffix`]).
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
                entries_respects_range_and_byte_budget,
                truncate_suffix_removes_tail,
                truncate_out_of_range_is_refused,
                reads_past_end_are_none,
                sync_keeps_everything,
                large_and_empty_payloads,
                many_entries,
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
