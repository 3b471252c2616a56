//! FileLog under crashes and corruption, by file surgery (DESIGN.md §3, thesis §7).
//!
//! A crash is simulated by leaving the directory as an interrupted write would. Examples are a
//! segment cut at every byte of the last sync's write, a truncation stopped halfway, a state
//! file replacement stopped before its rename, a snapshot install stopped between its rename and
//! the deletion of the log it replaced, and a compaction stopped between two deletions.
//! Reopening must always succeed and give back a prefix of what was written that holds
//! everything synced, never a corrupt or invented entry. Damage that no crash can cause must be
//! an error naming the file (and offset), above all in a snapshot, which a server must never
//! install corrupt.

use mioraft::log::{Entry, FileLog, FileLogOptions, PersistentLog, FORMAT_VERSION};
use mioraft::{LogError, LogIndex, ServerId, SnapshotMeta, Term};
use std::fs;
use std::path::{Path, PathBuf};

/// Segments of 64 KiB: room for a test's few dozen entries in one segment, and little zeroed
/// space to copy per simulated crash.
const SEGMENT_BYTES_SMALL: u64 = 64 << 10;

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

/// Where a segment's records end: the offset of its first zero (or missing) record header. The
/// file goes on with zeroed space after that.
fn records_end(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read");
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        if length == 0 {
            break;
        }
        offset += 8 + length as usize;
    }
    offset.min(bytes.len()) as u64
}

/// Overwrites a file with zeros from `offset` to its end, as a crash leaves preallocated space
/// that an interrupted write had not reached.
fn zero_from(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize..].fill(0);
    fs::write(path, bytes).expect("write");
}

/// Cuts a file to `length` bytes, as a crash leaves a file whose growth it interrupted.
fn cut_at(path: &Path, length: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(length)
        .expect("cut");
}

/// Writes entries 1..=synced and syncs, then entries up to `total` and syncs again; returns
/// where the last segment's records end before and after the final sync.
fn two_syncs(dir: &Path, synced: u64, total: u64, segment_bytes_max: u64) -> (u64, u64) {
    let mut log = open(dir, segment_bytes_max).expect("open");
    log.set_current_term(Term(3)).expect("term");
    let first: Vec<Entry> = (1..=synced).map(entry).collect();
    log.append_entries(LogIndex(1), &first).expect("append");
    log.sync().expect("sync");
    let last_segment = segments(dir).pop().expect("a segment");
    let before = records_end(&last_segment);
    let rest: Vec<Entry> = (synced + 1..=total).map(entry).collect();
    log.append_entries(LogIndex(synced + 1), &rest)
        .expect("append");
    log.sync().expect("sync");
    let after = records_end(&segments(dir).pop().expect("a segment"));
    assert_eq!(
        segments(dir).pop(),
        Some(last_segment),
        "the final batch stays in one segment for this test"
    );
    (before, after)
}

/// A crash during the final sync's write leaves any prefix of its bytes, either in a file cut
/// short (the zeroed space not yet durable) or followed by the zeroed space. Every cut reopens
/// as the synced entries plus the complete records of the interrupted batch, and appends after
/// it never bring back a torn record.
#[test]
fn a_write_cut_at_any_byte_reopens_as_a_prefix_holding_everything_synced() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let (before, after) = two_syncs(&original, 20, 26, SEGMENT_BYTES_SMALL);
    let expected: Vec<Entry> = (1..=26).map(entry).collect();
    for cut in before..=after {
        for (how, leave) in [
            ("cut short", cut_at as fn(&Path, u64)),
            ("zeroed", zero_from),
        ] {
            let copy = work.path().join(format!("cut-{cut}"));
            copy_dir(&original, &copy);
            leave(&segments(&copy).pop().expect("segment"), cut);
            let mut log =
                open(&copy, SEGMENT_BYTES_SMALL).unwrap_or_else(|e| panic!("{how} at {cut}: {e}"));
            let entries = all_entries(&log);
            assert!(entries.len() >= 20, "{how} at {cut} lost synced entries");
            assert_eq!(
                entries,
                expected[..entries.len()],
                "{how} at {cut}: not a prefix"
            );
            if cut == after {
                assert_eq!(entries.len(), 26, "a complete write keeps every entry");
            }
            assert_eq!(log.current_term(), Term(3));
            // A shorter entry after the recovered ones, then a reopen: what lay after the cut
            // is gone for good.
            let next = log.latest_log_index().next();
            let short = Entry::command(Term(3), "s");
            log.append_entries(next, std::slice::from_ref(&short))
                .expect("append");
            log.sync().expect("sync");
            drop(log);
            let log =
                open(&copy, SEGMENT_BYTES_SMALL).unwrap_or_else(|e| panic!("{how} at {cut}: {e}"));
            let mut wanted = entries.clone();
            wanted.push(short);
            assert_eq!(all_entries(&log), wanted, "{how} at {cut}: after an append");
            drop(log);
            fs::remove_dir_all(&copy).expect("clean up");
        }
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
    let length = records_end(&segment);
    let last_record = 8 + 17 + entry(3).data.len() as u64;
    cut_at(&segment, length - last_record / 2);
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

/// Truncation cuts the file, zeroed space included: entries truncated and then overwritten by
/// fewer, shorter ones must not reappear from behind them on reopen, whether the crash comes
/// right after the truncation or after the new entries are synced.
#[test]
fn truncated_entries_never_come_back_from_the_zeroed_space() {
    let work = tempfile::tempdir().expect("temporary directory");
    let dir = work.path().join("log");
    let mut log = open(&dir, 1 << 20).expect("open");
    let entries: Vec<Entry> = (1..=30).map(entry).collect();
    log.append_entries(LogIndex(1), &entries).expect("append");
    log.sync().expect("sync");
    log.truncate_suffix(LogIndex(11)).expect("truncate");
    let after_truncation = work.path().join("after-truncation");
    copy_dir(&dir, &after_truncation);
    let newer: Vec<Entry> = (0..3)
        .map(|n| Entry::command(Term(7), format!("new-{n}")))
        .collect();
    log.append_entries(LogIndex(11), &newer).expect("append");
    log.sync().expect("sync");
    let after_append = work.path().join("after-append");
    copy_dir(&dir, &after_append);
    drop(log);

    let log = open(&after_truncation, 1 << 20).expect("reopen after the truncation");
    assert_eq!(all_entries(&log), entries[..10]);
    drop(log);
    let mut expected = entries[..10].to_vec();
    expected.extend(newer.iter().cloned());
    for copy in [&after_append, &dir] {
        let log = open(copy, 1 << 20).expect("reopen after the append");
        assert_eq!(all_entries(&log), expected, "{}", copy.display());
        assert_eq!(log.latest_log_index(), LogIndex(13));
    }
}

/// A crash leaves the last segment as the syncs left it: records, then zeroed space. Copying
/// the files of an open log is such a crash; the copy reopens with every synced entry, takes
/// appends at the end of the records and reopens with them.
#[test]
fn a_crash_in_the_middle_of_the_zeroed_space_reopens_with_everything_synced() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let mut log = open(&original, 1 << 20).expect("open");
    let entries: Vec<Entry> = (1..=50).map(entry).collect();
    for (position, item) in entries.iter().enumerate() {
        log.append_entries(LogIndex(position as u64 + 1), std::slice::from_ref(item))
            .expect("append");
        log.sync().expect("sync");
    }
    let crashed = work.path().join("crashed");
    copy_dir(&original, &crashed);
    drop(log);
    let segment = segments(&crashed).pop().expect("a segment");
    let file_bytes = fs::metadata(&segment).expect("metadata").len();
    assert!(
        file_bytes > records_end(&segment),
        "the segment holds zeroed space after its records ({file_bytes} bytes)"
    );
    let mut log = open(&crashed, 1 << 20).expect("reopen");
    assert_eq!(all_entries(&log), entries);
    log.append_entries(LogIndex(51), &[entry(51)])
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let log = open(&crashed, 1 << 20).expect("reopen");
    assert_eq!(all_entries(&log), (1..=51).map(entry).collect::<Vec<_>>());
}

/// The last segment is zeroed a chunk (1 MiB, or the whole segment if smaller) ahead of its
/// records, as written blocks; a full segment gives its zeroed space back, so earlier segments
/// end with their records.
#[test]
fn segments_hold_zeroed_space_ahead_and_full_ones_give_it_back() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = FileLog::open(dir.path()).expect("open");
    log.append_entries(LogIndex(1), &[entry(1)])
        .expect("append");
    log.sync().expect("sync");
    let segment = segments(dir.path()).pop().expect("a segment");
    let metadata = fs::metadata(&segment).expect("metadata");
    assert_eq!(
        metadata.len(),
        1 << 20,
        "one chunk, not a whole 16 MiB segment"
    );
    assert!(
        metadata.blocks() * 512 >= 1 << 20,
        "the chunk is allocated ({} blocks)",
        metadata.blocks()
    );
    drop(log);

    let dir = tempfile::tempdir().expect("temporary directory");
    written_log(dir.path(), 200, 1024);
    let paths = segments(dir.path());
    assert!(paths.len() >= 3, "{} segments", paths.len());
    for path in &paths[..paths.len() - 1] {
        let length = fs::metadata(path).expect("metadata").len();
        assert_eq!(length, records_end(path), "{}", path.display());
    }
    let last = paths.last().expect("the last segment");
    assert!(fs::metadata(last).expect("metadata").len() <= 1024);
}

/// A segment zeroed ahead under large segments becomes an earlier one when the log reopens with
/// smaller segments: it gives its space back when the next segment starts, and if a crash lost
/// that, its zero tail still reads as the end of its records.
#[test]
fn an_earlier_segment_with_zeroed_space_reopens() {
    let work = tempfile::tempdir().expect("temporary directory");
    let dir = work.path().join("log");
    let first = written_log(&dir, 10, 1 << 20);
    let mut log = open(&dir, 256).expect("reopen with smaller segments");
    let more: Vec<Entry> = (11..=30).map(entry).collect();
    log.append_entries(LogIndex(11), &more).expect("append");
    log.sync().expect("sync");
    drop(log);
    let paths = segments(&dir);
    assert!(paths.len() >= 2, "{} segments", paths.len());
    let earliest = &paths[0];
    let records = records_end(earliest);
    assert_eq!(fs::metadata(earliest).expect("metadata").len(), records);
    let mut expected = first;
    expected.extend(more);
    // As if the crash lost the release: the earliest segment's zeroed space is back.
    cut_at(earliest, 1 << 20);
    for segment_bytes_max in [256, 1 << 20] {
        let log = open(&dir, segment_bytes_max).expect("reopen");
        assert_eq!(
            all_entries(&log),
            expected,
            "segments of {segment_bytes_max}"
        );
    }
}

/// Zeros where a record should start, with data after them. In an earlier segment no crash
/// does that (it was synced whole before the next began): open refuses, naming the file and
/// the offset. In the last segment it is the write a crash interrupted, whose pages reached the
/// disk in another order (one that never landed reads as zeros): it is cut there, with
/// everything after, and the entries before it are kept.
#[test]
fn zeros_where_a_record_starts_are_damage_in_earlier_segments_and_torn_in_the_last() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let entries = written_log(&original, 40, 512);
    let paths = segments(&original);
    assert!(paths.len() >= 3);
    for (which, path) in [("earlier", &paths[0]), ("last", &paths[paths.len() - 1])] {
        let copy = work.path().join(which);
        copy_dir(&original, &copy);
        let damaged = copy.join(path.file_name().expect("name"));
        let record_one = 8 + 17 + first_record_data_len(&damaged);
        let mut bytes = fs::read(&damaged).expect("read");
        let record_two_bytes = record_bytes_at(&bytes, record_one as usize);
        bytes[record_one as usize..record_one as usize + record_two_bytes].fill(0);
        assert!(
            bytes[record_one as usize + record_two_bytes..]
                .iter()
                .any(|&byte| byte != 0),
            "{which}: records follow the zeros"
        );
        fs::write(&damaged, bytes).expect("write");
        if which == "earlier" {
            let error = open(&copy, 512).expect_err("data after zeros must be refused");
            let text = error.to_string();
            assert!(matches!(error, LogError::Corrupt { .. }), "{which}: {text}");
            assert!(
                text.contains(&damaged.display().to_string())
                    && text.contains(&format!("offset {record_one}")),
                "{which}: {text}"
            );
            continue;
        }
        let kept = segment_first_index(&damaged) as usize;
        let log = open(&copy, 512).expect("a torn last write is recovered");
        assert_eq!(
            all_entries(&log),
            entries[..kept],
            "the entries before the hole"
        );
        drop(log);
        assert_eq!(
            fs::metadata(&damaged).expect("metadata").len(),
            record_one,
            "cut at the hole, with everything after it"
        );
    }
}

/// A damaged record in the last segment followed by bytes that are not whole records (the
/// rest of a write whose pages landed out of order) is a torn write too: cut there.
#[test]
fn a_damaged_record_followed_by_no_whole_records_in_the_last_segment_is_cut() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let entries = written_log(dir.path(), 40, 512);
    let last = segments(dir.path()).pop().expect("a segment");
    let record_one = 8 + 17 + first_record_data_len(&last);
    let end = records_end(&last);
    let mut bytes = fs::read(&last).expect("read");
    // Record 2's data damaged, and everything after it garbage up to the old end.
    bytes[record_one as usize + 8 + 20] ^= 0x5a;
    let record_two_end = record_one as usize + record_bytes_at(&bytes, record_one as usize);
    assert!(record_two_end < end as usize, "records follow record 2");
    bytes[record_two_end..end as usize].fill(0xa5);
    fs::write(&last, bytes).expect("write");
    let log = open(dir.path(), 512).expect("a torn last write is recovered");
    let kept = segment_first_index(&last) as usize;
    assert_eq!(all_entries(&log), entries[..kept]);
}

/// A damaged last record with only zeroed space after it is a write the crash tore, as when it
/// ended the file: cut, the earlier entries kept.
#[test]
fn a_damaged_last_record_before_the_zeroed_space_is_cut() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let entries = written_log(dir.path(), 5, 1 << 20);
    let segment = segments(dir.path()).pop().expect("a segment");
    let end = records_end(&segment);
    assert!(fs::metadata(&segment).expect("metadata").len() > end);
    flip_byte(&segment, end - 2);
    let log = open(dir.path(), 1 << 20).expect("a torn tail is recovered");
    assert_eq!(all_entries(&log), entries[..4]);
    drop(log);
    assert_eq!(
        fs::metadata(&segment).expect("metadata").len(),
        records_end(&segment),
        "the torn write is cut with the space after it"
    );
}

/// A directory of format 1 (segments without zeroed space) reads as it is, and its `VERSION`
/// is upgraded, so an older build refuses it by name instead of reading zeroed space as damage.
#[test]
fn a_format_1_directory_is_read_and_upgraded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let entries = written_log(dir.path(), 30, 512);
    for path in segments(dir.path()) {
        let end = records_end(&path);
        cut_at(&path, end);
    }
    fs::write(dir.path().join("VERSION"), "mioraft-filelog 1\n").expect("write");
    let mut log = open(dir.path(), 512).expect("open format 1");
    assert_eq!(all_entries(&log), entries);
    assert_eq!(
        fs::read_to_string(dir.path().join("VERSION")).expect("read"),
        FORMAT_VERSION
    );
    log.append_entries(LogIndex(31), &[entry(31)])
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let log = open(dir.path(), 512).expect("reopen");
    assert_eq!(all_entries(&log).len(), 31);
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

/// The bytes of the record at `offset` of a segment's contents: its header and its payload.
fn record_bytes_at(bytes: &[u8], offset: usize) -> usize {
    let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
    8 + length as usize
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
    fs::write(dir.path().join("VERSION"), "mioraft-filelog 99\n").expect("write");
    let error = open(dir.path(), 1 << 20).expect_err("refused");
    let text = error.to_string();
    assert!(
        matches!(error, LogError::UnsupportedFormat { .. }),
        "{text}"
    );
    assert!(
        text.contains("VERSION") && text.contains("mioraft-filelog 99"),
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

// Snapshots and prefix compaction (thesis §7).

/// Snapshot data of `size_bytes` bytes that depends on `seed`.
fn snapshot_bytes(size_bytes: usize, seed: u8) -> Vec<u8> {
    (0..size_bytes)
        .map(|position| (position as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn snapshot_meta(last_index: u64, last_term: Term, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(last_index),
        last_term,
        membership: mioraft::Membership::from_voters([ServerId(1), ServerId(2), ServerId(3)]),
        size: data.len() as u64,
        checksum: crc32c::crc32c(data),
    }
}

/// Begins, writes in chunks and finishes a snapshot.
fn install(log: &mut FileLog, meta: &SnapshotMeta, data: &[u8]) {
    log.begin_snapshot(meta.clone()).expect("begin snapshot");
    for chunk in data.chunks(1000) {
        log.write_snapshot(chunk).expect("write snapshot");
    }
    log.finish_snapshot().expect("finish snapshot");
}

fn whole_snapshot(log: &FileLog) -> Vec<u8> {
    log.read_snapshot(0, u64::MAX).expect("read snapshot")
}

/// Entries from the first index on, compacted or not.
fn held_entries(log: &FileLog) -> Vec<Entry> {
    log.entries(
        log.first_log_index(),
        log.latest_log_index().next(),
        u64::MAX,
    )
    .expect("read back")
}

/// The disk space the directory's files take: their allocated blocks (zeroed space ahead of
/// the records included), not their lengths, since what must stay bounded is the disk used.
fn directory_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .expect("list")
        .map(|item| item.expect("item").metadata().expect("metadata").blocks() * 512)
        .sum()
}

/// The first index in a segment's name, `log-<first index>.seg`.
fn segment_first_index(path: &Path) -> u64 {
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    name.trim_start_matches("log-")
        .trim_end_matches(".seg")
        .parse()
        .expect("a segment name")
}

/// Entries 1..=count in segments of `segment_bytes_max` bytes, synced at term 3.
fn written_log(dir: &Path, count: u64, segment_bytes_max: u64) -> Vec<Entry> {
    let mut log = open(dir, segment_bytes_max).expect("open");
    log.set_current_term(Term(3)).expect("term");
    let entries: Vec<Entry> = (1..=count).map(entry).collect();
    log.append_entries(LogIndex(1), &entries).expect("append");
    log.sync().expect("sync");
    entries
}

/// A log of 20 entries with a snapshot of 5,000 bytes up to index 10, closed.
fn log_with_snapshot(dir: &Path) -> (SnapshotMeta, Vec<u8>) {
    written_log(dir, 20, 1024);
    let mut log = open(dir, 1024).expect("open");
    let data = snapshot_bytes(5_000, 1);
    let meta = snapshot_meta(10, entry(10).term, &data);
    install(&mut log, &meta, &data);
    (meta, data)
}

/// The error names the snapshot file of `dir` and says it is damaged.
fn assert_names_snapshot(error: &LogError, dir: &Path, what: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, LogError::Corrupt { .. } | LogError::Snapshot { .. }),
        "{what}: {text}"
    );
    assert!(
        text.contains(&dir.join("snapshot").display().to_string()),
        "{what}: the error must name the snapshot file: {text}"
    );
}

/// A flipped bit anywhere in the data, or a file cut short, is damage no crash causes (the file
/// was fsynced before its rename): open refuses rather than let a server install it.
#[test]
fn a_damaged_snapshot_data_is_refused_on_open_naming_the_file() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let (meta, data) = log_with_snapshot(&original);
    let file_length = fs::metadata(original.join("snapshot"))
        .expect("metadata")
        .len();
    let header_bytes = file_length - data.len() as u64;
    let log = open(&original, 1024).expect("the undamaged snapshot opens");
    assert_eq!(log.snapshot_meta(), Some(&meta));
    assert_eq!(whole_snapshot(&log), data);
    drop(log);

    for offset in [header_bytes, header_bytes + 2_500, file_length - 1] {
        let copy = work.path().join(format!("flipped-{offset}"));
        copy_dir(&original, &copy);
        flip_byte(&copy.join("snapshot"), offset);
        let error = open(&copy, 1024).expect_err("a damaged snapshot must be refused");
        assert_names_snapshot(&error, &copy, &format!("data byte {offset} flipped"));
    }
    for length in [file_length - 1, header_bytes, 10, 0] {
        let copy = work.path().join(format!("cut-{length}"));
        copy_dir(&original, &copy);
        fs::OpenOptions::new()
            .write(true)
            .open(copy.join("snapshot"))
            .expect("open")
            .set_len(length)
            .expect("cut");
        let error = open(&copy, 1024).expect_err("a cut snapshot must be refused");
        assert_names_snapshot(&error, &copy, &format!("cut to {length} bytes"));
    }
}

/// Every byte of the header is covered: magic, format, lengths, meta and the header's own
/// checksum.
#[test]
fn a_damaged_snapshot_header_is_refused_on_open_naming_the_file() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let (_, data) = log_with_snapshot(&original);
    let file_length = fs::metadata(original.join("snapshot"))
        .expect("metadata")
        .len();
    let header_bytes = file_length - data.len() as u64;
    // Three voters without addresses: 5 + 3 × 11 configuration bytes.
    assert_eq!(header_bytes, 52 + 38, "the documented header layout");
    for offset in 0..header_bytes {
        let copy = work.path().join(format!("flipped-{offset}"));
        copy_dir(&original, &copy);
        flip_byte(&copy.join("snapshot"), offset);
        let error = open(&copy, 1024).expect_err("a damaged header must be refused");
        assert_names_snapshot(&error, &copy, &format!("header byte {offset} flipped"));
        fs::remove_dir_all(&copy).expect("clean up");
    }
}

/// A finish that finds the wrong checksum refuses naming the file it wrote, deletes it, and
/// leaves no snapshot behind.
#[test]
fn a_refused_snapshot_names_its_file_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temporary directory");
    written_log(dir.path(), 5, 1024);
    let mut log = open(dir.path(), 1024).expect("open");
    let data = snapshot_bytes(3_000, 2);
    let mut meta = snapshot_meta(3, entry(3).term, &data);
    meta.checksum ^= 1;
    log.begin_snapshot(meta).expect("begin");
    log.write_snapshot(&data).expect("write");
    let temporary = dir.path().join("snapshot.tmp");
    assert!(
        temporary.exists(),
        "the snapshot is written to snapshot.tmp"
    );
    let error = log.finish_snapshot().expect_err("a wrong checksum");
    let text = error.to_string();
    assert!(matches!(error, LogError::Snapshot { .. }), "{text}");
    assert!(
        text.contains(&temporary.display().to_string()),
        "the error names the file: {text}"
    );
    assert!(
        !temporary.exists(),
        "the refused snapshot's file is deleted"
    );
    assert!(!dir.path().join("snapshot").exists());
    assert_eq!(log.snapshot_meta(), None);
    assert_eq!(all_entries(&log), (1..=5).map(entry).collect::<Vec<_>>());
}

/// A crash while a snapshot is written, even after its last byte but before its finish,
/// leaves `snapshot.tmp`: open deletes it and the snapshot in force stands.
#[test]
fn a_snapshot_interrupted_before_its_rename_is_deleted_on_open_and_the_old_one_stands() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (meta, data) = log_with_snapshot(dir.path());
    let temporary = dir.path().join("snapshot.tmp");
    let newer_data = snapshot_bytes(6_000, 3);
    let newer = snapshot_meta(15, entry(15).term, &newer_data);
    for written in [0, 2_000, 6_000] {
        let mut log = open(dir.path(), 1024).expect("open");
        log.begin_snapshot(newer.clone()).expect("begin");
        log.write_snapshot(&newer_data[..written]).expect("write");
        drop(log);
        assert!(temporary.exists(), "{written} bytes: snapshot.tmp is left");
        let log = open(dir.path(), 1024).expect("reopen");
        assert!(
            !temporary.exists(),
            "{written} bytes: open deletes snapshot.tmp"
        );
        assert_eq!(log.snapshot_meta(), Some(&meta), "{written} bytes");
        assert_eq!(whole_snapshot(&log), data, "{written} bytes");
        assert_eq!(all_entries(&log), (1..=20).map(entry).collect::<Vec<_>>());
    }
    fs::write(&temporary, b"garbage").expect("write garbage");
    let log = open(dir.path(), 1024).expect("reopen");
    assert!(!temporary.exists(), "open deletes a garbage snapshot.tmp");
    assert_eq!(log.snapshot_meta(), Some(&meta));
}

/// With small segments, snapshots and compaction after every batch keep the directory to a
/// few segments and one snapshot however much is written: compaction deletes whole segments.
#[test]
fn repeated_snapshots_and_compaction_keep_the_directory_bounded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log = open(dir.path(), 1024).expect("open");
    let mut next = 1;
    let mut record_bytes: u64 = 0;
    let mut largest_bytes = 0;
    let mut largest_segment_count = 0;
    for round in 0..100u64 {
        let batch: Vec<Entry> = (next..next + 50).map(entry).collect();
        record_bytes += batch
            .iter()
            .map(|entry| 8 + 17 + entry.data.len() as u64)
            .sum::<u64>();
        log.append_entries(LogIndex(next), &batch).expect("append");
        log.sync().expect("sync");
        next += 50;
        // A snapshot that leaves the last 10 entries behind it, then compaction up to it.
        let through = next - 11;
        let term = entry(through).term;
        let data = snapshot_bytes(2048, round as u8);
        install(&mut log, &snapshot_meta(through, term, &data), &data);
        let first_before = log.first_log_index();
        log.compact_prefix(LogIndex(through)).expect("compact");
        assert!(
            log.first_log_index() > first_before,
            "round {round}: compaction through {through} deleted nothing (first index {})",
            log.first_log_index()
        );
        assert!(log.first_log_index() <= LogIndex(through + 1));
        largest_bytes = largest_bytes.max(directory_bytes(dir.path()));
        largest_segment_count = largest_segment_count.max(segments(dir.path()).len());
    }
    assert!(
        record_bytes > 200_000,
        "wrote {record_bytes} bytes of records"
    );
    // At most 3 segments, the snapshot, VERSION and state, each within a 4 KiB block or two.
    assert!(
        largest_bytes <= 32 * 1024,
        "the directory grew to {largest_bytes} bytes while {record_bytes} bytes of records were \
         written"
    );
    assert!(
        largest_segment_count <= 3,
        "up to {largest_segment_count} segments"
    );

    let first = log.first_log_index();
    drop(log);
    let log = open(dir.path(), 1024).expect("reopen");
    assert_eq!(log.first_log_index(), first);
    assert_eq!(log.latest_log_index(), LogIndex(next - 1));
    let expected: Vec<Entry> = (first.0..next).map(entry).collect();
    assert_eq!(held_entries(&log), expected);
}

/// §7: a finish whose snapshot disagrees with the log renames the snapshot into place, then
/// deletes the log's segments newest first. A crash after the rename, with any number of the
/// segments deleted, reopens exactly as the finished install: the snapshot, no segment, and the
/// log continuing right after the snapshot.
#[test]
fn a_crash_between_snapshot_rename_and_segment_deletion_reopens_as_if_finished() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let entries = written_log(&original, 60, 256);
    let segment_count = segments(&original).len();
    assert!(segment_count >= 4, "{segment_count} segments");
    // The log holds term 4 at index 30, and ends at 60.
    for (what, last_index, last_term) in
        [("conflicting", 30, Term(9)), ("past the end", 80, Term(9))]
    {
        let data = snapshot_bytes(3_000, last_index as u8);
        let meta = snapshot_meta(last_index, last_term, &data);
        let finished = work.path().join(format!("finished {what}"));
        copy_dir(&original, &finished);
        let mut log = open(&finished, 256).expect("open");
        install(&mut log, &meta, &data);
        drop(log);
        assert!(segments(&finished).is_empty(), "{what}: the log is gone");

        for deleted in 0..=segment_count {
            let crashed = work.path().join(format!("crashed {what} {deleted}"));
            copy_dir(&original, &crashed);
            for path in segments(&crashed).iter().rev().take(deleted) {
                fs::remove_file(path).expect("delete");
            }
            fs::copy(finished.join("snapshot"), crashed.join("snapshot")).expect("copy");
            let mut log = open(&crashed, 256)
                .unwrap_or_else(|error| panic!("{what}, {deleted} deleted: {error}"));
            let context = format!("{what}, {deleted} of {segment_count} segments deleted");
            assert_eq!(log.snapshot_meta(), Some(&meta), "{context}");
            assert_eq!(whole_snapshot(&log), data, "{context}");
            assert_eq!(log.first_log_index(), LogIndex(last_index + 1), "{context}");
            assert_eq!(log.latest_log_index(), LogIndex(last_index), "{context}");
            assert_eq!(log.latest_log_term(), last_term, "{context}");
            assert_eq!(
                log.term(LogIndex(last_index)).expect("term"),
                Some(last_term),
                "{context}"
            );
            assert!(
                segments(&crashed).is_empty(),
                "{context}: the discarded segments are deleted"
            );
            assert_eq!(log.current_term(), Term(3), "{context}");

            let next = Entry::command(Term(10), b"after the snapshot".to_vec());
            log.append_entries(LogIndex(last_index + 1), std::slice::from_ref(&next))
                .expect("append after the snapshot");
            log.sync().expect("sync");
            drop(log);
            let log = open(&crashed, 256).expect("reopen");
            assert_eq!(held_entries(&log), vec![next], "{context}");
            drop(log);
            fs::remove_dir_all(&crashed).expect("clean up");
        }
    }

    // A finish that keeps the log deletes nothing: after its rename the log is whole.
    let data = snapshot_bytes(3_000, 7);
    let meta = snapshot_meta(30, entries[29].term, &data);
    let finished = work.path().join("finished keeping");
    copy_dir(&original, &finished);
    let mut log = open(&finished, 256).expect("open");
    install(&mut log, &meta, &data);
    drop(log);
    let crashed = work.path().join("crashed keeping");
    copy_dir(&original, &crashed);
    fs::copy(finished.join("snapshot"), crashed.join("snapshot")).expect("copy");
    let log = open(&crashed, 256).expect("open");
    assert_eq!(log.snapshot_meta(), Some(&meta));
    assert_eq!(log.first_log_index(), LogIndex(1));
    assert_eq!(all_entries(&log), entries);
}

/// Compaction deletes the segments whose entries the snapshot covers, and only those; the
/// first index is the first remaining segment's, before and after a reopen, and reads below it
/// are refused as compacted.
#[test]
fn compaction_deletes_covered_segments_and_reopens_with_the_right_first_index() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let entries = written_log(dir.path(), 100, 256);
    let data = snapshot_bytes(4_000, 4);
    let meta = snapshot_meta(70, entries[69].term, &data);
    let mut log = open(dir.path(), 256).expect("open");
    install(&mut log, &meta, &data);
    drop(log);

    // Without compaction, every entry is still there after a reopen.
    let mut log = open(dir.path(), 256).expect("reopen");
    assert_eq!(log.first_log_index(), LogIndex(1));
    assert_eq!(all_entries(&log), entries);
    assert_eq!(log.snapshot_meta(), Some(&meta));

    let before = segments(dir.path());
    log.compact_prefix(LogIndex(70)).expect("compact");
    let after = segments(dir.path());
    assert!(after.len() < before.len(), "compaction deleted no segment");
    assert_eq!(
        after[..],
        before[before.len() - after.len()..],
        "only the oldest segments go"
    );
    let first = segment_first_index(&after[0]);
    assert!(
        (2..=71).contains(&first),
        "first remaining segment at {first}"
    );
    if let Some(second) = after.get(1) {
        assert!(
            segment_first_index(second) > 71,
            "a segment holding only entries up to 70 was kept"
        );
    }
    assert_eq!(log.first_log_index(), LogIndex(first));
    assert_eq!(held_entries(&log), entries[(first - 1) as usize..]);
    let below = log.entry(LogIndex(first - 1));
    assert!(
        matches!(below, Err(LogError::Compacted { .. })),
        "{below:?}"
    );
    log.sync().expect("sync");
    drop(log);

    let mut log = open(dir.path(), 256).expect("reopen");
    assert_eq!(log.first_log_index(), LogIndex(first));
    assert_eq!(log.latest_log_index(), LogIndex(100));
    assert_eq!(held_entries(&log), entries[(first - 1) as usize..]);
    assert_eq!(
        log.term(LogIndex(70)).expect("term"),
        Some(entries[69].term)
    );
    assert_eq!(whole_snapshot(&log), data);
    let below = log.term(LogIndex(first - 1));
    assert!(
        first - 1 == 70 || matches!(below, Err(LogError::Compacted { .. })),
        "{below:?}"
    );
    log.append_entries(LogIndex(101), &[entry(101)])
        .expect("append");
    log.sync().expect("sync");
    drop(log);
    let log = open(dir.path(), 256).expect("reopen");
    assert_eq!(log.latest_log_index(), LogIndex(101));
    assert_eq!(log.first_log_index(), LogIndex(first));
}

/// Compaction deletes segments oldest first, each deletion durable before the next: a crash
/// after any number of them reopens with the remaining segments and the right first index.
#[test]
fn a_compaction_interrupted_between_deletions_reopens_with_what_is_left() {
    let work = tempfile::tempdir().expect("temporary directory");
    let original = work.path().join("original");
    let entries = written_log(&original, 100, 256);
    let data = snapshot_bytes(1_000, 5);
    let mut log = open(&original, 256).expect("open");
    install(&mut log, &snapshot_meta(70, entries[69].term, &data), &data);
    drop(log);
    let all = segments(&original);
    // The segments compaction through 70 deletes: those followed by one starting at most at 71.
    let deletable = all
        .windows(2)
        .take_while(|pair| segment_first_index(&pair[1]) <= 71)
        .count();
    assert!(deletable >= 2, "{deletable} deletable segments");
    for (deleted, first_left) in all.iter().take(deletable + 1).enumerate() {
        let copy = work.path().join(format!("deleted-{deleted}"));
        copy_dir(&original, &copy);
        for path in segments(&copy).iter().take(deleted) {
            fs::remove_file(path).expect("delete");
        }
        let log = open(&copy, 256).unwrap_or_else(|e| panic!("{deleted} deleted: {e}"));
        let first = segment_first_index(first_left);
        assert_eq!(log.first_log_index(), LogIndex(first), "{deleted} deleted");
        assert_eq!(log.latest_log_index(), LogIndex(100), "{deleted} deleted");
        assert_eq!(
            held_entries(&log),
            entries[(first - 1) as usize..],
            "{deleted} deleted"
        );
        drop(log);
    }
}

/// A log whose first segment starts after the index right behind its snapshot (or after 1
/// without a snapshot) is missing entries: no crash deletes them, so open refuses, naming the
/// segment.
#[test]
fn a_log_that_leaves_a_hole_after_its_snapshot_is_refused() {
    let work = tempfile::tempdir().expect("temporary directory");

    let plain = work.path().join("no snapshot");
    written_log(&plain, 60, 256);
    let first_segment = segments(&plain).remove(0);
    fs::remove_file(&first_segment).expect("delete");
    let error = open(&plain, 256).expect_err("a log must start at 1 without a snapshot");
    let now_first = segments(&plain).remove(0);
    assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
    assert!(
        error.to_string().contains(&now_first.display().to_string()),
        "{error}"
    );

    let snapshotted = work.path().join("snapshot");
    let mut log = open(&snapshotted, 256).expect("open");
    let data = snapshot_bytes(500, 6);
    install(&mut log, &snapshot_meta(10, Term(1), &data), &data);
    assert_eq!(log.first_log_index(), LogIndex(11));
    let entries: Vec<Entry> = (11..=60).map(entry).collect();
    log.append_entries(LogIndex(11), &entries).expect("append");
    log.sync().expect("sync");
    drop(log);
    let log = open(&snapshotted, 256).expect("reopen");
    assert_eq!(log.first_log_index(), LogIndex(11));
    assert_eq!(held_entries(&log), entries);
    drop(log);
    let first_segment = segments(&snapshotted).remove(0);
    assert_eq!(segment_first_index(&first_segment), 11);
    fs::remove_file(&first_segment).expect("delete");
    let error = open(&snapshotted, 256).expect_err("entries after the snapshot are missing");
    let now_first = segments(&snapshotted).remove(0);
    assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
    assert!(
        error.to_string().contains(&now_first.display().to_string()),
        "{error}"
    );
}
