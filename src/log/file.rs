//! [`FileLog`]: the durable, crash-safe [`PersistentLog`] (DESIGN.md §3), with snapshots and
//! prefix compaction (thesis §7).
//!
//! A directory holds:
//! * `VERSION`: the format, so a future format is detected rather than misread;
//! * `LOCK`: held exclusively while the log is open, so two servers never share a directory;
//! * `state`: the current term and vote with a checksum, replaced atomically (write `state.tmp`,
//!   fsync, rename, fsync the directory);
//! * `log-<first index>.seg`: append-only segments of records
//!   `[payload length u32][crc32c of payload u32][index u64][term u64][kind u8][data]`,
//!   little-endian, then zeros up to the end of the file. The segments hold a contiguous run of
//!   indexes; the first segment starts at 1, or, once a snapshot exists, anywhere from 1 to just
//!   after the snapshot's last index. A payload holds at least 17 bytes, so a record's length is
//!   never 0 and a zero header marks the end of the records. The zeros are written ahead of the
//!   records, up to 1 MiB at once (never past `segment_bytes_max`, and given back when a segment
//!   fills), so that the `fdatasync` of a common append lands in blocks the file already owns
//!   and changes no size or allocation that the filesystem would have to journal;
//! * `snapshot`: the snapshot in force, if any: a header followed by the snapshot's data. The
//!   header is, little-endian:
//!
//!   | offset   | bytes | field                                                  |
//!   |----------|-------|--------------------------------------------------------|
//!   | 0        | 8     | magic `MIORSNAP`                                       |
//!   | 8        | 4     | snapshot format, 1                                     |
//!   | 12       | 4     | header length `h` = 52 + configuration length          |
//!   | 16       | 8     | last index                                             |
//!   | 24       | 8     | last term                                              |
//!   | 32       | 8     | data length                                            |
//!   | 40       | 4     | crc32c of the data                                     |
//!   | 44       | 4     | configuration length `n`                               |
//!   | 48       | n     | the configuration (`Membership` byte encoding)         |
//!   | h - 4    | 4     | crc32c of the header's bytes before it                 |
//!
//!   and the data fills the file from offset `h`;
//! * `snapshot.tmp`: a snapshot being written, present only between
//!   [`begin_snapshot`](PersistentLog::begin_snapshot) and
//!   [`finish_snapshot`](PersistentLog::finish_snapshot). Open deletes a leftover one.
//!
//! Every write is buffered in memory until [`PersistentLog::sync`], which appends the buffered
//! records with one write per segment (after zeroing the next chunk of space, if they need it)
//! and one `fdatasync`, then replaces the state file if the
//! term or vote changed: one sync makes a whole reactor turn durable (group commit), and a crash
//! before it loses exactly the unsynced writes. Memory holds, per entry still in the log, only
//! its term and where it lies; entry data and snapshot data are read back with positioned reads.
//!
//! A snapshot is streamed into `snapshot.tmp` through a buffered writer while its checksum is
//! computed, so it is never held in memory. Finishing it checks its length and checksum, syncs
//! every earlier write, fsyncs the file, renames it over `snapshot` and fsyncs the directory.
//! Then §7's rule applies: if the log holds the snapshot's last entry (same index and term), the
//! entries after it stay; otherwise every segment is deleted, newest first, and the log continues
//! right after the snapshot. Compaction deletes whole segments, oldest first, whose entries the
//! snapshot covers; each deletion is made durable before the next, so a crash never leaves a hole.
//!
//! Recovery on open:
//! 1. deletes a leftover `snapshot.tmp` (a snapshot the crash interrupted; the old one stands);
//! 2. validates `snapshot`'s header checksum and streams its data through crc32c, refusing a
//!    damaged snapshot with an error naming the file, so a server never installs corrupt state;
//! 3. scans the segments, each up to its first zero header (or its end) after which only zeros
//!    follow. In the last segment the write a crash interrupted may have reached the disk in any
//!    order of its pages, so a torn tail is: a record that runs past the end of the file; a
//!    zero header with data after it (a page that never landed; what follows belongs to the same
//!    unacknowledged write); a record that fails its checks unless whole records follow it to
//!    the end (then acknowledged entries may follow the damage). It is cut with a log line,
//!    together with the space after it, so no part of it survives behind records written later.
//!    Anything else that does not check out, in an earlier segment anything at all, is refused
//!    with an error naming the file and offset;
//! 4. reconciles the segments with the snapshot: segments that do not hold the snapshot's last
//!    entry and start at or before it are the remains of a finish that crashed before deleting
//!    them, and are deleted now, as the finish would have; segments that start after the
//!    snapshot's next index leave a hole, which no crash causes, and are refused.
//!
//! Snapshots only move forward: a snapshot older than the one in force, or one that gives the
//! same last index another term, is refused. Truncating at or below the snapshot's last index is
//! refused too (a snapshot covers only committed entries). Both rules keep the on-disk states a
//! crash can leave unambiguous for step 4.

use super::{check_append_at, Entry, HardState, PersistentLog, SnapshotMeta};
use crate::error::LogError;
use crate::types::{LogIndex, ServerId, Term};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod segment;
mod snapshot_file;

use segment::{encode_record, read_record, Location, RecordProblem, ScanEnd, Segment};

use snapshot_file::{
    encode_snapshot_header, open_snapshot, remove_snapshot_leftover, snapshot_error,
    PendingSnapshot, SnapshotFile, SnapshotWriter, SNAPSHOT_FILE, SNAPSHOT_TEMPORARY_FILE,
    SNAPSHOT_WRITE_BUFFER_BYTES,
};

/// What `VERSION` says for this format: 2 since segments hold zeroed space after their records.
pub const FORMAT_VERSION: &str = "mioraft-filelog 2\n";
/// The format before segments held zeroed space after their records. This version reads it
/// (its segments are zero-free) and upgrades `VERSION` on open; that version would refuse a
/// zeroed tail as damage, so it must find the newer version named instead.
const FORMAT_VERSION_UNPREALLOCATED: &str = "mioraft-filelog 1\n";
/// Bytes of the state file: term, vote (0 = none) and the checksum of both.
const STATE_BYTES: usize = 20;

/// Tunables of a [`FileLog`].
#[derive(Clone, Debug)]
pub struct FileLogOptions {
    /// A new segment starts once the current one holds this many bytes. Compaction deletes
    /// whole segments only (§7), so this is also how much compacted log may linger. Default
    /// 16 MiB.
    pub segment_bytes_max: u64,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            segment_bytes_max: 16 << 20,
        }
    }
}

/// A durable [`PersistentLog`] in a directory. See the module documentation for the format.
///
/// # Examples
/// ```
/// use mioraft::log::{Entry, FileLog, PersistentLog};
/// use mioraft::{LogIndex, Term};
///
/// let dir = tempfile::tempdir()?;
/// let mut log = FileLog::open(dir.path())?;
/// log.set_current_term(Term(1))?;
/// log.append_entries(LogIndex(1), &[Entry::command(Term(1), b"put k v".to_vec())])?;
/// log.sync()?; // durable from here on
/// drop(log);
/// let log = FileLog::open(dir.path())?;
/// assert_eq!(log.latest_log_index(), LogIndex(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    options: FileLogOptions,
    /// Held for the log's lifetime; the OS releases it when the file closes.
    _lock: File,
    /// The current term and vote, as the last writes left them.
    hard_state: HardState,
    /// Term or vote changed since the last sync.
    state_unsynced: bool,
    /// The index of `synced[0]` (of `unsynced[0]` when nothing is synced): 1 until a prefix is
    /// compacted or discarded (§7). Invariants: equals `segments[0].first_index` when a segment
    /// exists; at most the snapshot's last index + 1.
    first_index: LogIndex,
    /// Synced entries from `first_index` on. Invariant: every location lies in `segments`.
    synced: Vec<Location>,
    /// The segment files, oldest first; their first indexes rise strictly. The last one takes
    /// appends and is never compacted away.
    segments: Vec<Segment>,
    /// Entries after the synced ones, not yet written.
    unsynced: Vec<Entry>,
    /// The snapshot in force, if any.
    snapshot: Option<SnapshotFile>,
    /// The snapshot being written, if any.
    pending_snapshot: Option<PendingSnapshot>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Creates `path` empty (truncating what was there), open for reading and writing.
fn create_empty(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))
}

fn sync_directory(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(dir))
}

/// Deletes a file of `dir` and makes the deletion durable before returning, so deletions done
/// one after another reach the disk in that order.
fn remove_durably(dir: &Path, path: &Path) -> Result<(), LogError> {
    fs::remove_file(path).map_err(io_error(path))?;
    sync_directory(dir)
}

fn segment_name(first_index: LogIndex) -> String {
    format!("log-{:020}.seg", first_index.0)
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir` with default options, recovering from any
    /// crash.
    ///
    /// # Errors
    /// [`LogError::Locked`] if another process holds it; [`LogError::UnsupportedFormat`] for
    /// another format; [`LogError::Corrupt`] naming the file and offset of damage that is not a
    /// torn tail, including any damage to the snapshot file; [`LogError::Io`] naming the path.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileLog, LogError> {
        Self::open_with(dir, FileLogOptions::default())
    }

    /// [`FileLog::open`] with explicit options.
    ///
    /// # Errors
    /// As for [`FileLog::open`].
    pub fn open_with(dir: impl AsRef<Path>, options: FileLogOptions) -> Result<FileLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LogError::Locked { path: dir }),
            Err(fs::TryLockError::Error(source)) => {
                return Err(LogError::Io {
                    path: lock_path,
                    source,
                })
            }
        }
        check_version(&dir)?;
        let hard_state = read_state(&dir)?;
        remove_snapshot_leftover(&dir)?;
        let snapshot = open_snapshot(&dir)?;
        let mut log = FileLog {
            dir,
            options,
            _lock: lock,
            hard_state,
            state_unsynced: false,
            first_index: LogIndex(1),
            synced: Vec::new(),
            segments: Vec::new(),
            unsynced: Vec::new(),
            snapshot,
            pending_snapshot: None,
        };
        log.recover_segments()?;
        log.reconcile_with_snapshot()?;
        Ok(log)
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Scans every segment, building the index and cutting a torn tail.
    fn recover_segments(&mut self) -> Result<(), LogError> {
        let mut names = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let item = item.map_err(io_error(&self.dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(number) = name
                .strip_prefix("log-")
                .and_then(|rest| rest.strip_suffix(".seg"))
            {
                let first: u64 = number
                    .parse()
                    .map_err(|_| corrupt(&item.path(), 0, "segment name is not log-<index>.seg"))?;
                if first == 0 {
                    return Err(corrupt(&item.path(), 0, "segment starts at index 0"));
                }
                names.push((LogIndex(first), item.path()));
            }
        }
        names.sort();
        if let Some((first_index, _)) = names.first() {
            self.first_index = *first_index;
        }
        let segment_count = names.len();
        for (position, (first_index, path)) in names.into_iter().enumerate() {
            let expected = self.next_synced_index();
            if first_index != expected {
                return Err(corrupt(
                    &path,
                    0,
                    format!("segment starts at index {first_index}, expected {expected}"),
                ));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            let file_length = file.metadata().map_err(io_error(&path))?.len();
            let last = position + 1 == segment_count;
            let (length, end) = segment::scan(
                &path,
                &file,
                file_length,
                first_index,
                last,
                self.options.segment_bytes_max,
                &mut self.synced,
            )?;
            let mut segment = Segment {
                path,
                file,
                first_index,
                length,
                allocated: file_length,
            };
            if end == ScanEnd::Torn {
                log::warn!(
                    "{}: cut a torn tail at offset {length}, {} bytes with the space after it \
                     (a write the crash interrupted)",
                    segment.path.display(),
                    file_length - length
                );
                // Cut durably, so no part of the torn write lies after records written later.
                segment.cut(length)?;
            } else {
                // What recovery found is made durable before anyone acts on it (a cut syncs).
                segment.file.sync_data().map_err(io_error(&segment.path))?;
            }
            self.segments.push(segment);
        }
        Ok(())
    }

    /// Brings the recovered segments in line with the snapshot (module docs, recovery step 4).
    fn reconcile_with_snapshot(&mut self) -> Result<(), LogError> {
        let (snapshot_index, snapshot_term) = self.snapshot_position();
        let after_snapshot = snapshot_index.next();
        let Some(first_segment) = self.segments.first() else {
            self.first_index = after_snapshot;
            return Ok(());
        };
        if self.first_index == after_snapshot {
            return Ok(());
        }
        if self.first_index > after_snapshot {
            let covered = match &self.snapshot {
                Some(snapshot) => format!(
                    "the snapshot {} covers entries only up to {snapshot_index}",
                    snapshot.path.display()
                ),
                None => "there is no snapshot".to_owned(),
            };
            return Err(corrupt(
                &first_segment.path,
                0,
                format!(
                    "the log starts at index {} but {covered}: entries {after_snapshot} to {} \
                     are missing",
                    self.first_index,
                    self.first_index.0 - 1
                ),
            ));
        }
        // The segments start at or before the snapshot's last index (so a snapshot exists). §7:
        // if they hold its last entry they stay; otherwise a finish discarded them and crashed
        // before deleting them all.
        if self.synced_term(snapshot_index) == Some(snapshot_term) {
            return Ok(());
        }
        log::warn!(
            "{}: the log does not hold entry {snapshot_index} of term {snapshot_term}, the \
             snapshot's last; deleting its segments as the interrupted snapshot install would have",
            self.dir.display()
        );
        self.discard_entries()
    }

    /// Deletes every entry and segment, newest segment first, so the log continues right after
    /// the snapshot (§7). A crash part way leaves a prefix of the segments, which open discards
    /// again.
    fn discard_entries(&mut self) -> Result<(), LogError> {
        self.unsynced.clear();
        while let Some(segment) = self.segments.pop() {
            remove_durably(&self.dir, &segment.path)?;
        }
        self.synced = Vec::new();
        self.first_index = self.snapshot_position().0.next();
        Ok(())
    }

    /// The snapshot's last index and term, or (0, 0) without a snapshot.
    fn snapshot_position(&self) -> (LogIndex, Term) {
        self.snapshot
            .as_ref()
            .map_or((LogIndex(0), Term(0)), |snapshot| {
                (snapshot.meta.last_index, snapshot.meta.last_term)
            })
    }

    /// The snapshot file, for errors about snapshots.
    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The index the next synced entry takes.
    fn next_synced_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.synced.len() as u64)
    }

    /// The position of `index` in `synced`, if it is a synced entry.
    fn synced_position(&self, index: LogIndex) -> Option<usize> {
        let position = usize::try_from(index.0.checked_sub(self.first_index.0)?).ok()?;
        (position < self.synced.len()).then_some(position)
    }

    /// The term of a synced entry, `None` if `index` is not one.
    fn synced_term(&self, index: LogIndex) -> Option<Term> {
        self.synced_position(index)
            .map(|position| self.synced[position].term)
    }

    /// The position in `segments` of the segment holding the synced entry at `index`.
    fn segment_position(&self, index: LogIndex) -> usize {
        self.segments
            .partition_point(|segment| segment.first_index <= index)
            .checked_sub(1)
            .expect("a synced entry lies in a segment")
    }

    /// Writes the buffered entries and, if needed, the state file, durably.
    fn flush(&mut self) -> Result<(), LogError> {
        if !self.unsynced.is_empty() {
            let entries = std::mem::take(&mut self.unsynced);
            let mut buffer = Vec::new();
            let mut created_segment = false;
            for entry in &entries {
                let index = self.next_synced_index();
                // An empty segment takes the record whatever its size: a new segment would
                // start at the same index, under the same name.
                let needs_segment = self.segments.last().is_none_or(|segment| {
                    let length = segment.length + buffer.len() as u64;
                    length > 0 && length >= self.options.segment_bytes_max
                });
                if needs_segment {
                    self.write_buffer(&mut buffer)?;
                    self.start_segment(index)?;
                    created_segment = true;
                }
                let segment = self.segments.last().expect("a segment was just ensured");
                let offset = segment.length + buffer.len() as u64;
                encode_record(&mut buffer, index, entry);
                self.synced.push(Location {
                    term: entry.term,
                    offset,
                });
            }
            self.write_buffer(&mut buffer)?;
            if created_segment {
                sync_directory(&self.dir)?;
            }
        }
        if self.state_unsynced {
            write_state(&self.dir, self.hard_state)?;
            self.state_unsynced = false;
        }
        Ok(())
    }

    /// Appends `buffer` to the last segment and makes it durable.
    fn write_buffer(&mut self, buffer: &mut Vec<u8>) -> Result<(), LogError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let segment = self
            .segments
            .last_mut()
            .expect("a segment exists once records are encoded");
        segment.append(buffer, self.options.segment_bytes_max)?;
        buffer.clear();
        Ok(())
    }

    fn start_segment(&mut self, first_index: LogIndex) -> Result<(), LogError> {
        // The full segment takes no more records: its zeroed space is not needed.
        if let Some(full) = self.segments.last_mut() {
            full.release_space()?;
        }
        let path = self.dir.join(segment_name(first_index));
        let file = create_empty(&path)?;
        self.segments.push(Segment {
            path,
            file,
            first_index,
            length: 0,
            allocated: 0,
        });
        Ok(())
    }

    /// Reads a synced entry back from its segment, checking it.
    fn read_synced(&self, index: LogIndex, position: usize) -> Result<Entry, LogError> {
        let location = self.synced[position];
        let segment = &self.segments[self.segment_position(index)];
        let record = read_record(
            &segment.file,
            &segment.path,
            location.offset,
            segment.length,
            self.options.segment_bytes_max,
        )
        .map_err(|problem| match problem {
            RecordProblem::Io(error) => error,
            RecordProblem::Torn => corrupt(&segment.path, location.offset, "record cut short"),
            RecordProblem::End => corrupt(&segment.path, location.offset, "record is zeros"),
            RecordProblem::Bad { reason, .. } => corrupt(&segment.path, location.offset, reason),
        })?;
        if record.index != index {
            return Err(corrupt(
                &segment.path,
                location.offset,
                format!("record holds index {}, expected {index}", record.index),
            ));
        }
        Ok(record.entry)
    }

    /// Why a finished snapshot `meta` may not replace the one in force, if it may not: snapshots
    /// only move forward, and one index has one term (§5.3 log matching).
    fn snapshot_order_problem(&self, meta: &SnapshotMeta) -> Option<String> {
        let (index, term) = self.snapshot_position();
        if meta.last_index < index {
            return Some(format!(
                "covers entries up to {}, older than the snapshot in force, which covers up to \
                 {index}",
                meta.last_index
            ));
        }
        if meta.last_index == index && meta.last_term != term {
            return Some(format!(
                "gives index {index} term {}, but the snapshot in force gives it term {term}",
                meta.last_term
            ));
        }
        None
    }

    /// Deletes `snapshot.tmp` after a refused finish; a failure is only logged, since open
    /// deletes a leftover anyway.
    /// The unfinished snapshot, and its length once `length` more bytes are written.
    ///
    /// # Errors
    /// [`LogError::Snapshot`] if none was begun or they would pass its announced size.
    fn room_for_snapshot_bytes(
        &mut self,
        length: usize,
    ) -> Result<(&mut PendingSnapshot, u64), LogError> {
        let Some(pending) = self.pending_snapshot.as_mut() else {
            return Err(snapshot_error(
                &self.dir.join(SNAPSHOT_TEMPORARY_FILE),
                "write without begin_snapshot",
            ));
        };
        let written_bytes = pending
            .written_bytes
            .checked_add(length as u64)
            .filter(|&total| total <= pending.meta.size);
        let Some(written_bytes) = written_bytes else {
            return Err(snapshot_error(
                &pending.path,
                format!(
                    "{length} more bytes would pass the announced size of {} bytes ({} written)",
                    pending.meta.size, pending.written_bytes
                ),
            ));
        };
        Ok((pending, written_bytes))
    }

    fn drop_pending_file(path: &Path) {
        if let Err(error) = fs::remove_file(path) {
            log::warn!("{}: could not delete: {error}", path.display());
        }
    }
}

fn check_version(dir: &Path) -> Result<(), LogError> {
    let path = dir.join("VERSION");
    match fs::read(&path) {
        Ok(found) if found == FORMAT_VERSION.as_bytes() => Ok(()),
        Ok(found) if found == FORMAT_VERSION_UNPREALLOCATED.as_bytes() => {
            log::info!(
                "{}: upgrading {:?} to {:?}",
                path.display(),
                FORMAT_VERSION_UNPREALLOCATED.trim_end(),
                FORMAT_VERSION.trim_end()
            );
            replace_file(dir, "VERSION", FORMAT_VERSION.as_bytes())
        }
        Ok(found) => Err(LogError::UnsupportedFormat {
            path,
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: FORMAT_VERSION,
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let has_data = fs::read_dir(dir)
                .map_err(io_error(dir))?
                .filter_map(Result::ok)
                .any(|item| {
                    let name = item.file_name();
                    name != "LOCK" && name != "VERSION.tmp"
                });
            if has_data {
                return Err(LogError::UnsupportedFormat {
                    path,
                    found: "no VERSION file next to existing data".to_owned(),
                    expected: FORMAT_VERSION,
                });
            }
            replace_file(dir, "VERSION", FORMAT_VERSION.as_bytes())
        }
        Err(source) => Err(LogError::Io { path, source }),
    }
}

/// Replaces `dir/name` atomically: write a temporary file, fsync, rename, fsync the directory.
fn replace_file(dir: &Path, name: &str, contents: &[u8]) -> Result<(), LogError> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(contents).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    let path = dir.join(name);
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    sync_directory(dir)
}

fn write_state(dir: &Path, state: HardState) -> Result<(), LogError> {
    let mut contents = Vec::with_capacity(STATE_BYTES);
    contents.extend_from_slice(&state.current_term.0.to_le_bytes());
    contents.extend_from_slice(&state.voted_for.map_or(0, |id| id.0).to_le_bytes());
    let checksum = crc32c::crc32c(&contents);
    contents.extend_from_slice(&checksum.to_le_bytes());
    replace_file(dir, "state", &contents)
}

fn read_state(dir: &Path) -> Result<HardState, LogError> {
    // A leftover temporary file is a replacement the crash interrupted before its rename: the
    // old state stands.
    let temporary = dir.join("state.tmp");
    if temporary.exists() {
        fs::remove_file(&temporary).map_err(io_error(&temporary))?;
    }
    let path = dir.join("state");
    let contents = match fs::read(&path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(HardState::default()),
        Err(source) => return Err(LogError::Io { path, source }),
    };
    if contents.len() != STATE_BYTES {
        return Err(corrupt(
            &path,
            0,
            format!("{} bytes, expected {STATE_BYTES}", contents.len()),
        ));
    }
    let word = |at: usize| u64::from_le_bytes(contents[at..at + 8].try_into().expect("8 bytes"));
    let checksum = u32::from_le_bytes(contents[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&contents[..16]) != checksum {
        return Err(corrupt(&path, 0, "checksum mismatch"));
    }
    let voted_for = match word(8) {
        0 => None,
        id => Some(ServerId(id)),
    };
    Ok(HardState {
        current_term: Term(word(0)),
        voted_for,
    })
}

impl PersistentLog for FileLog {
    fn current_term(&self) -> Term {
        self.hard_state.current_term
    }

    fn set_current_term(&mut self, term: Term) -> Result<(), LogError> {
        if self.hard_state.set_current_term(term)? {
            self.state_unsynced = true;
        }
        Ok(())
    }

    fn voted_for(&self) -> Option<ServerId> {
        self.hard_state.voted_for
    }

    fn set_voted_for(&mut self, candidate: Option<ServerId>) -> Result<(), LogError> {
        if self.hard_state.set_voted_for(candidate) {
            self.state_unsynced = true;
        }
        Ok(())
    }

    fn first_log_index(&self) -> LogIndex {
        self.first_index
    }

    fn latest_log_index(&self) -> LogIndex {
        LogIndex(self.next_synced_index().0 - 1 + self.unsynced.len() as u64)
    }

    fn latest_log_term(&self) -> Term {
        if let Some(entry) = self.unsynced.last() {
            return entry.term;
        }
        match self.synced.last() {
            Some(location) => location.term,
            // An empty log continues right after its snapshot, if any (§7).
            None => self.snapshot_position().1,
        }
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError> {
        if index.is_zero() {
            return Ok(Some(Term(0)));
        }
        let (snapshot_index, snapshot_term) = self.snapshot_position();
        if index == snapshot_index {
            return Ok(Some(snapshot_term));
        }
        if index < self.first_index {
            return Err(LogError::Compacted {
                index,
                first: self.first_index,
            });
        }
        if let Some(term) = self.synced_term(index) {
            return Ok(Some(term));
        }
        let position = index.0 - self.next_synced_index().0;
        Ok(usize::try_from(position)
            .ok()
            .and_then(|position| self.unsynced.get(position))
            .map(|entry| entry.term))
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError> {
        if index.is_zero() {
            return Ok(None);
        }
        if index < self.first_index {
            return Err(LogError::Compacted {
                index,
                first: self.first_index,
            });
        }
        if let Some(position) = self.synced_position(index) {
            return self.read_synced(index, position).map(Some);
        }
        let position = index.0 - self.next_synced_index().0;
        Ok(usize::try_from(position)
            .ok()
            .and_then(|position| self.unsynced.get(position))
            .cloned())
    }

    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        if from < self.first_index {
            return Err(LogError::Compacted {
                index: from,
                first: self.first_index,
            });
        }
        let until = until.min(self.latest_log_index().next());
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut index = from;
        while index < until {
            let entry = self.entry(index)?.expect("index within the log");
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry);
            index = index.next();
        }
        Ok(out)
    }

    fn append_entries(&mut self, from: LogIndex, entries: &[Entry]) -> Result<(), LogError> {
        self.append_owned_entries(from, entries.to_vec())
    }

    fn append_owned_entries(
        &mut self,
        from: LogIndex,
        entries: Vec<Entry>,
    ) -> Result<(), LogError> {
        check_append_at(from, self.latest_log_index())?;
        self.unsynced.extend(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        let latest = self.latest_log_index();
        if from < self.first_index || from > latest.next() {
            return Err(LogError::TruncateOutOfRange {
                index: from,
                first: self.first_index,
                latest,
            });
        }
        let (snapshot_index, _) = self.snapshot_position();
        if from <= snapshot_index {
            // §7: a snapshot covers only committed entries, which are never removed.
            return Err(snapshot_error(
                &self.snapshot_path(),
                format!(
                    "cannot truncate at index {from}: the snapshot covers entries up to \
                     {snapshot_index}, and those are committed"
                ),
            ));
        }
        let Some(position) = self.synced_position(from) else {
            let keep_count = from.distance_from(self.next_synced_index());
            self.unsynced.truncate(keep_count as usize);
            return Ok(());
        };
        // Everything from `from` on goes, unsynced entries included; what was written before
        // this call is made durable first, so a crash keeps the writes in order.
        self.unsynced.clear();
        self.flush()?;
        let offset = self.synced[position].offset;
        let keep_segments = self.segment_position(from) + 1;
        // Later segments go newest first, each deletion durable before the next, so a crash
        // part way leaves a contiguous prefix.
        while self.segments.len() > keep_segments {
            let segment = self
                .segments
                .pop()
                .expect("more segments than the kept one");
            remove_durably(&self.dir, &segment.path)?;
        }
        // Cutting the file drops the zeroed space too, and the next append zeroes it afresh:
        // truncated records left in that space would be found again by a scan.
        let segment = self.segments.last_mut().expect("the kept segment");
        segment.cut(offset)?;
        self.synced.truncate(position);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.flush()
    }

    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|snapshot| &snapshot.meta)
    }

    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), LogError> {
        let path = self.dir.join(SNAPSHOT_TEMPORARY_FILE);
        // An unfinished snapshot is dropped and its file removed before a new one is created: a
        // background write still running goes on into the removed file, never the new one.
        if self.pending_snapshot.take().is_some() {
            Self::drop_pending_file(&path);
        }
        let file = create_empty(&path)?;
        let header = encode_snapshot_header(&meta);
        let mut writer = BufWriter::with_capacity(SNAPSHOT_WRITE_BUFFER_BYTES, file);
        writer.write_all(&header).map_err(io_error(&path))?;
        self.pending_snapshot = Some(PendingSnapshot {
            meta,
            path,
            writer: SnapshotWriter::Here(writer),
            data_offset: header.len() as u64,
            written_bytes: 0,
            checksum: 0,
        });
        Ok(())
    }

    fn write_snapshot(&mut self, data: &[u8]) -> Result<(), LogError> {
        let (pending, written_bytes) = self.room_for_snapshot_bytes(data.len())?;
        pending
            .writer_here()?
            .write_all(data)
            .map_err(io_error(&pending.path))?;
        pending.checksum = crc32c::crc32c_append(pending.checksum, data);
        pending.written_bytes = written_bytes;
        Ok(())
    }

    /// Writes and fsyncs `data` on a thread of its own; see the trait.
    fn write_snapshot_owned(&mut self, data: Vec<u8>) -> Result<(), LogError> {
        let (pending, written_bytes) = self.room_for_snapshot_bytes(data.len())?;
        let mut writer = pending.take_writer()?;
        let checksum = pending.checksum;
        let handle = std::thread::Builder::new()
            .name("mioraft-snapshot".to_owned())
            .spawn(move || {
                let checksum = crc32c::crc32c_append(checksum, &data);
                writer.write_all(&data)?;
                drop(data);
                let file = writer.into_inner().map_err(|error| error.into_error())?;
                file.sync_all()?;
                Ok((file, checksum))
            })
            .map_err(io_error(&pending.path))?;
        pending.writer = SnapshotWriter::Background(handle);
        pending.written_bytes = written_bytes;
        Ok(())
    }

    fn snapshot_written(&mut self) -> Result<bool, LogError> {
        let Some(pending) = self.pending_snapshot.as_mut() else {
            return Ok(true);
        };
        match &pending.writer {
            SnapshotWriter::Background(handle) if !handle.is_finished() => Ok(false),
            SnapshotWriter::Background(_) => {
                pending.collect_background()?;
                Ok(true)
            }
            SnapshotWriter::Here(_) | SnapshotWriter::Written(_) | SnapshotWriter::Taken => {
                Ok(true)
            }
        }
    }

    fn finish_snapshot(&mut self) -> Result<(), LogError> {
        let Some(pending) = self.pending_snapshot.take() else {
            return Err(snapshot_error(
                &self.dir.join(SNAPSHOT_TEMPORARY_FILE),
                "finish without begin_snapshot",
            ));
        };
        let mut pending = pending;
        // The checksum of bytes written in the background is known once that write is done.
        pending.collect_background()?;
        let (written_bytes, checksum) = (pending.written_bytes, pending.checksum);
        let meta = pending.meta.clone();
        let path = pending.path.clone();
        let data_offset = pending.data_offset;
        let refusal = if written_bytes != meta.size {
            Some(format!("holds {written_bytes} of its {} bytes", meta.size))
        } else if checksum != meta.checksum {
            Some(format!(
                "checksum {checksum:#010x} does not match the expected {:#010x}",
                meta.checksum
            ))
        } else {
            self.snapshot_order_problem(&meta)
        };
        if let Some(reason) = refusal {
            drop(pending);
            Self::drop_pending_file(&path);
            return Err(snapshot_error(&path, reason));
        }
        let file = pending.written_file()?;
        // The snapshot is durable together with every earlier write: a crash after the rename
        // must not lose writes made before the finish.
        self.flush()?;
        // §7: decided against the log as it stands, before the new snapshot answers for its
        // last index.
        let keeps_entries = matches!(
            self.term(meta.last_index),
            Ok(Some(term)) if term == meta.last_term
        );
        let snapshot_path = self.snapshot_path();
        fs::rename(&path, &snapshot_path).map_err(io_error(&snapshot_path))?;
        sync_directory(&self.dir)?;
        // From here the new snapshot is in force on disk; open finishes what follows if a crash
        // interrupts it.
        self.snapshot = Some(SnapshotFile {
            meta,
            path: snapshot_path,
            file,
            data_offset,
        });
        if !keeps_entries {
            self.discard_entries()?;
        }
        Ok(())
    }

    fn read_snapshot(&self, offset: u64, bytes_max: u64) -> Result<Vec<u8>, LogError> {
        let Some(snapshot) = self.snapshot.as_ref() else {
            return Err(snapshot_error(&self.snapshot_path(), "no snapshot to read"));
        };
        let size = snapshot.meta.size;
        if offset > size {
            return Err(snapshot_error(
                &snapshot.path,
                format!("read at offset {offset} past the end ({size} bytes)"),
            ));
        }
        // At least one byte unless at the end, so a caller always makes progress.
        let length = (size - offset).min(bytes_max.max(1));
        let mut data = vec![0u8; usize::try_from(length).expect("a read that fits memory")];
        snapshot
            .file
            .read_exact_at(&mut data, snapshot.data_offset + offset)
            .map_err(io_error(&snapshot.path))?;
        Ok(data)
    }

    fn compact_prefix(&mut self, through: LogIndex) -> Result<(), LogError> {
        let (snapshot_index, _) = self.snapshot_position();
        if through > snapshot_index {
            return Err(snapshot_error(
                &self.snapshot_path(),
                format!(
                    "cannot compact through {through}: the snapshot covers only up to \
                     {snapshot_index}"
                ),
            ));
        }
        // Whole segments whose entries all lie at or below `through`, oldest first, each
        // deletion durable before the next so a crash never leaves a hole. The last segment
        // takes appends and stays.
        while self.segments.len() > 1 && self.segments[1].first_index <= through.next() {
            let next_first = self.segments[1].first_index;
            remove_durably(&self.dir, &self.segments[0].path)?;
            self.segments.remove(0);
            let dropped = next_first.distance_from(self.first_index);
            self.synced
                .drain(..usize::try_from(dropped).expect("the index fits memory"));
            self.first_index = next_first;
        }
        // Memory proportional to the entries held.
        if self.synced.capacity() > 2 * self.synced.len() + 1024 {
            self.synced.shrink_to_fit();
        }
        Ok(())
    }
}

impl super::conformance::ReopenableLog for FileLog {
    fn reopen(self) -> Self {
        let dir = self.dir.clone();
        let options = self.options.clone();
        drop(self);
        FileLog::open_with(&dir, options).expect("reopen the log directory")
    }
}

#[cfg(test)]
mod conformance_tests {
    use super::*;

    /// A FileLog in a fresh temporary directory that lives as long as the process (the suite's
    /// macros build logs from an expression, so the directory cannot be returned with it).
    fn temporary_log() -> FileLog {
        let dir = tempfile::tempdir().expect("temporary directory").keep();
        FileLog::open_with(
            dir,
            FileLogOptions {
                segment_bytes_max: 4096,
            },
        )
        .expect("open")
    }

    crate::persistent_log_conformance!(suite, temporary_log());
    crate::persistent_log_durability_conformance!(durability_suite, temporary_log());
}
