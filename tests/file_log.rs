//! FileLog under crashes and corruption, by file surgery (DESIGN.md §3).
//!
//! A crash is simulated by leaving the directory as an interrupted write would. Examples are a
//! segment cut at every byte of the last sync's write, a truncation stopped halfway, and a state
//! file replacement stopped before its rename. Reopening must always succeed and give back a
//! prefix of what was written that holds everything synced, never a corrupt or invented entry.
//! Damage that no crash can cause must be an error naming the file and offset.

use mioraft::log::{Entry, FileLog, FileLogOptions, PersistentLog};
use mioraft::{LogError, LogIndex, ServerId, Term};
use std::fs;
use std::path::{Path, PathBuf};

fn options(segment_bytes_max: u64) -> FileLogOptions {
    FileLogOptions { segment_bytes_max }
}

fn entry(n: u64) -> Entry {
    // Lengths vary so records straddle segment boundaries differently.
    Entry::command(
        Term(1 + n / 10),
        format!("command-{n}-{}", "x".repeat((n % 7) as usize)),
    )
}

fn open(dir: &Path, segment_bytes_max: u64) -> Result<FileLog, LogError> {
    FileLog::open_with(dir, options(segment_bytes_max))
}

fn all_entries(log: &FileLog) -> Vec<Entry> {
    log.entries(LogIndex(1), log.latest_log_index().next(), u64::MAX)
        .expect("read back")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|item| item.expect("item").path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create");
    for item in fs::read_dir(from).expect("list") {
        let item = item.expect("item");
        if item.file_name() != "LOCK" {
            fs::copy(item.path(), to.join(item.file_name())).expect("copy");
        }
    }
}

/// Writes entries 1..=synced and syncs, then entries up to `total` and syncs again; returns the
/// last segment's length before and after the final sync.
fn two_syncs(dir: &Path, synced: u64, total: u64, segment_bytes_max: u64) -> (u64, u64) {
    let mut log = open(dir, segment_bytes_max).expect("open");
    log.set_current_term(Term(3)).expect("term");
    let first: Vec<Entry> = (1..=synced).map(entry).collect();
    log.append_entries(LogIndex(1), &first).expect("append");
    log.sync().expect("sync");
    let last_segment = segments(dir).pop().expect("a segment");
    let before = fs::metadata(&last_segment).expect("metadata").len();
    let rest: Vec<Entry> = (synced + 1..=total).map(entry).collect();
    log.append_entries(LogIndex(synced + 1), &rest)
        .expect("append");
    log.sync().expect("sync");
    let after = fs::metadata(segments(dir).pop().expect("a segment"))
        .expect("metadata")
        .len();
    assert_eq!(
        segments(dir).pop(),
        Some(last_segment),
        "the final batch stays in one segment for this test"
    );
    (before, after)
}

/// A crash during the final sync's write leaves any prefix of its bytes: every cut reopens as
/// the synced entries plus the complete records of the interrupted batch.
#[test]
fn a_write_cut_at_any_byte_reopens_as_a_prefix_holding_everything_synced() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let (before, after) = two_syncs(&original, 20, 26, 1 << 20);
    let expected: Vec<Entry> = (1..=26).map(entry).collect();
    for cut in before..=after {
        let copy = work.path().join(format!("cut-{cut}"));
        copy_dir(&original, &copy);
        let segment = segments(&copy).pop().expect("segment");
        fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open")
            .set_len(cut)
            .expect("cut");
        let log = open(&copy, 1 << 20).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let entries = all_entries(&log);
        assert!(entries.len() >= 20, "cut at {cut} lost synced entries");
        assert_eq!(
            entries,
            expected[..entries.len()],
            "cut at {cut}: not a prefix"
        );
        if cut == after {
            assert_eq!(entries.len(), 26, "a complete write keeps every entry");
        }
        assert_eq!(log.current_term(), Term(3));
        drop(log);
        fs::remove_dir_all(&copy).expect("clean up");
    }
}

/// Truncation across segments deletes later segments last-first, then shortens the one that
/// keeps the truncation point. A crash at any step leaves a contiguous prefix.
#[test]
fn a_truncation_interrupted_at_any_step_reopens_as_a_prefix() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let mut log = open(&original, 256).expect("open");
    let entries: Vec<Entry> = (1..=60).map(entry).collect();
    log.append_entries(LogIndex(1), &entries).expect("append");
    log.sync().expect("sync");
    drop(log);
    let segment_paths = segments(&original);
    assert!(
        segment_paths.len() >= 4,
        "tiny segments: {}",
        segment_paths.len()
    );
    // A crash after deleting the last k segments, before the rest of the truncation.
    for deleted in 0..segment_paths.len() {
        let copy = work.path().join(format!("deleted-{deleted}"));
        copy_dir(&original, &copy);
        for path in segments(&copy).iter().rev().take(deleted) {
            fs::remove_file(path).expect("delete");
        }
        let log = open(&copy, 256).unwrap_or_else(|e| panic!("{deleted} deleted: {e}"));
        let kept = all_entries(&log);
        assert_eq!(
            kept,
            entries[..kept.len()],
            "{deleted} deleted: not a prefix"
        );
        drop(log);
    }
    // The real truncation, then a reopen.
    let mut log = open(&original, 256).expect("open");
    log.truncate_suffix(LogIndex(13)).expect("truncate");
    drop(log);
    let log = open(&original, 256).expect("reopen");
    assert_eq!(all_entries(&log), entries[..12]);
}

/// A crash while replacing the state file leaves `state.tmp` beside the old `state`: the old
/// term and vote stand, and the leftover is removed.
#[test]
fn an_interrupted_state_replacement_keeps_the_old_term_and_vote() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = open(dir.path(), 1 << 20).expect("open");
    log.set_current_term(Term(5)).expect("term");
    log.set_voted_for(Some(ServerId(2))).expect("vote");
    log.sync().expect("sync");
    drop(log);
    for leftover in [&b""[..], b"half", &[0xff; 20]] {
        fs::write(dir.path().join("state.tmp"), leftover).expect("write leftover");
        let log = open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(log.current_term(), Term(5));
        assert_eq!(log.voted_for(), Some(ServerId(2)));
        assert!(
            !dir.path().join("state.tmp").exists(),
            "the leftover is removed"
        );
    }
    // After a completed replacement, the new state is read.
    let mut log = open(dir.path(), 1 << 20).expect("open");
    log.set_current_term(Term(6)).expect("term");
    log.sync().expect("sync");
    drop(log);
    let log = open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!((log.current_term(), log.voted_for()), (Term(6), None));
}

/// Unsynced writes are simply gone after a crash; synced ones stay.
#[test]
fn unsynced_writes_vanish_and_synced_ones_stay() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = open(dir.path(), 1 << 20).expect("open");
    log.append_entries(LogIndex(1), &[entry(1), entry(2)])
        .expect("append");
    log.sync().expect("sync");
    log.set_current_term(Term(9)).expect("term");
    log.append_entries(LogIndex(3), &[entry(3)])
        .expect("append");
    drop(log);
    let log = open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(all_entries(&log), vec![entry(1), entry(2)]);
    assert_eq!(log.current_term(), Term(0));
}

/// Cutting the last record in half is a torn write: recovered silently, earlier entries intact.
#[test]
fn a_half_written_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = open(dir.path(), 1 << 20).expect("open");
    log.append_entries(LogIndex(1), &[entry(1), entry(2), entry(3)])
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let segment = segments(dir.path()).pop().expect("segment");
    let length = fs::metadata(&segment).expect("metadata").len();
    let last_record = 8 + 17 + entry(3).data.len() as u64;
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(length - last_record / 2)
        .expect("cut");
    let mut log = open(dir.path(), 1 << 20).expect("a torn tail is recovered");
    assert_eq!(all_entries(&log), vec![entry(1), entry(2)]);
    // Appending after recovery continues cleanly.
    log.append_entries(LogIndex(3), &[entry(4)])
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let log = open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(all_entries(&log), vec![entry(1), entry(2), entry(4)]);
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

/// One flipped byte in the middle of a segment that valid records follow is corruption no crash
/// causes: `open` refuses, naming the file and the record's offset.
#[test]
fn corruption_in_the_middle_is_refused_naming_file_and_offset() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let mut log = open(&original, 512).expect("open");
    let entries: Vec<Entry> = (1..=40).map(entry).collect();
    log.append_entries(LogIndex(1), &entries).expect("append");
    log.sync().expect("sync");
    drop(log);
    let paths = segments(&original);
    assert!(paths.len() >= 3);
    // In an earlier segment, and in the last segment with records after the damage.
    for (which, path) in [("earlier", &paths[0]), ("last", &paths[paths.len() - 1])] {
        let copy = work.path().join(which);
        copy_dir(&original, &copy);
        let damaged = copy.join(path.file_name().expect("name"));
        // The second record's data: offset of record 2 plus its header and fixed fields.
        let record_one = 8 + 17 + first_record_data_len(&damaged);
        flip_byte(&damaged, record_one + 8 + 20);
        let error = open(&copy, 512).expect_err("damage must be refused");
        let text = error.to_string();
        assert!(matches!(error, LogError::Corrupt { .. }), "{which}: {text}");
        assert!(
            text.contains(&damaged.display().to_string()),
            "{which}: {text}"
        );
        assert!(
            text.contains(&format!("offset {record_one}")),
            "{which}: {text}"
        );
    }
}

/// The data length of the first record in a segment (from its header).
fn first_record_data_len(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read");
    u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))) - 17
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = open(dir.path(), 1 << 20).expect("open");
    let error = open(dir.path(), 1 << 20).expect_err("locked");
    assert!(matches!(error, LogError::Locked { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
    drop(log);
    open(dir.path(), 1 << 20).expect("free again once closed");
}

#[test]
fn another_format_is_detected_not_misread() {
    let dir = tempfile::tempdir().expect("temporary directory");
    drop(open(dir.path(), 1 << 20).expect("open"));
    fs::write(dir.path().join("VERSION"), "mioraft-filelog 2\n").expect("write");
    let error = open(dir.path(), 1 << 20).expect_err("refused");
    let text = error.to_string();
    assert!(
        matches!(error, LogError::UnsupportedFormat { .. }),
        "{text}"
    );
    assert!(
        text.contains("VERSION") && text.contains("mioraft-filelog 2"),
        "{text}"
    );
}

#[test]
fn large_entries_and_many_segments_read_back_identically_after_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = open(dir.path(), 1024).expect("open");
    let mut written = vec![Entry::noop(Term(1))];
    written.push(Entry::command(Term(1), vec![7u8; 5000])); // larger than a segment
    written.extend((3..=500).map(entry));
    for (position, batch) in written.chunks(37).enumerate() {
        let from = LogIndex(position as u64 * 37 + 1);
        log.append_entries(from, batch).expect("append");
        log.sync().expect("sync");
    }
    drop(log);
    assert!(segments(dir.path()).len() > 10, "many segments");
    let log = open(dir.path(), 1024).expect("reopen");
    assert_eq!(all_entries(&log), written);
}
