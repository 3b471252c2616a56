//! [`FileLog`]: the durable, crash-safe [`PersistentLog`] (DESIGN.md §3).
//!
//! A directory holds:
//! * `VERSION`: the format, so a future format is detected rather than misread;
//! * `LOCK`: held exclusively while the log is open, so two servers never share a directory;
//! * `state`: the current term and vote with a checksum, replaced atomically (write `state.tmp`,
//!   fsync, rename, fsync the directory);
//! * `log-<first index>.seg`: append-only segments of records
//!   `[payload length u32][crc32c of payload u32][index u64][term u64][kind u8][data]`,
//!   little-endian.
//!
//! Every write is buffered in memory until [`PersistentLog::sync`], which appends the buffered
//! records with one write per segment and one `fdatasync`, then replaces the state file if the
//! term or vote changed: one sync makes a whole reactor turn durable (group commit), and a crash
//! before it loses exactly the unsynced writes. Memory holds, per synced entry, only its term and
//! where it lies; data is read back with positioned reads.
//!
//! Recovery on open cuts a torn tail (a last record that runs past the end of the last segment,
//! or fails its checksum there) with a log line, and refuses anything else that does not check
//! out with an error naming the file and offset.

use super::{Entry, EntryKind, HardState, PersistentLog};
use crate::error::LogError;
use crate::types::{LogIndex, ServerId, Term};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What `VERSION` says for this format.
pub const FORMAT_VERSION: &str = "mioraft-filelog 1\n";
/// Bytes before a record's payload: its length and checksum.
const RECORD_HEADER_BYTES: u64 = 8;
/// Bytes of a payload before the entry's data: index, term and kind.
const PAYLOAD_PREFIX_BYTES: u64 = 17;
/// Bytes of the state file: term, vote (0 = none) and the checksum of both.
const STATE_BYTES: usize = 20;

/// Tunables of a [`FileLog`].
#[derive(Clone, Debug)]
pub struct FileLogOptions {
    /// A new segment starts once the current one holds this many bytes. Default 64 MiB.
    pub segment_bytes_max: u64,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            segment_bytes_max: 64 << 20,
        }
    }
}

/// Where a synced entry lies.
#[derive(Clone, Copy, Debug)]
struct Location {
    term: Term,
    /// Position in `FileLog::segments`.
    segment: usize,
    /// Offset of the record's header in the segment.
    offset: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes of records in the file (and the offset of the next record).
    length: u64,
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
    /// Synced entries, index 1 first. Invariant: every location lies in `segments`.
    synced: Vec<Location>,
    segments: Vec<Segment>,
    /// Entries after the synced ones, not yet written.
    unsynced: Vec<Entry>,
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

fn sync_directory(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(dir))
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
    /// torn tail; [`LogError::Io`] naming the path.
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
        let mut log = FileLog {
            dir,
            options,
            _lock: lock,
            hard_state,
            state_unsynced: false,
            synced: Vec::new(),
            segments: Vec::new(),
            unsynced: Vec::new(),
        };
        log.recover_segments()?;
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
                names.push((LogIndex(first), item.path()));
            }
        }
        names.sort();
        let segment_count = names.len();
        for (position, (first_index, path)) in names.into_iter().enumerate() {
            let expected = LogIndex(self.synced.len() as u64 + 1);
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
            let length = self.scan_segment(position, &path, &file, file_length, last)?;
            if length < file_length {
                log::warn!(
                    "{}: cut a torn tail of {} bytes at offset {length} (a write the crash \
                     interrupted)",
                    path.display(),
                    file_length - length
                );
                file.set_len(length).map_err(io_error(&path))?;
            }
            // What recovery found is made durable before anyone acts on it.
            file.sync_data().map_err(io_error(&path))?;
            self.segments.push(Segment { path, file, length });
        }
        Ok(())
    }

    /// Reads the records of one segment into the index; returns the length of its valid prefix.
    fn scan_segment(
        &mut self,
        position: usize,
        path: &Path,
        file: &File,
        file_length: u64,
        last: bool,
    ) -> Result<u64, LogError> {
        let mut offset = 0;
        while offset < file_length {
            let index = LogIndex(self.synced.len() as u64 + 1);
            match read_record(
                file,
                path,
                offset,
                file_length,
                self.options.segment_bytes_max,
            ) {
                Ok(record) if record.index == index => {
                    self.synced.push(Location {
                        term: record.term,
                        segment: position,
                        offset,
                    });
                    offset += RECORD_HEADER_BYTES + u64::from(record.payload_bytes);
                }
                outcome => {
                    let reason = match outcome {
                        Ok(record) => {
                            format!("record holds index {}, expected {index}", record.index)
                        }
                        Err(RecordProblem::Torn) => {
                            "record runs past the end of the file".to_owned()
                        }
                        Err(RecordProblem::Bad { reason, ends_at }) => {
                            // A bad last record of the last segment is a write the crash tore.
                            if last && ends_at >= file_length {
                                return Ok(offset);
                            }
                            reason
                        }
                        Err(RecordProblem::Io(error)) => return Err(error),
                    };
                    if last && reason.starts_with("record runs past") {
                        return Ok(offset);
                    }
                    return Err(corrupt(path, offset, reason));
                }
            }
        }
        Ok(offset)
    }

    /// Writes the buffered entries and, if needed, the state file, durably.
    fn flush(&mut self) -> Result<(), LogError> {
        if !self.unsynced.is_empty() {
            let entries = std::mem::take(&mut self.unsynced);
            let mut buffer = Vec::new();
            let mut created_segment = false;
            for entry in &entries {
                let index = LogIndex(self.synced.len() as u64 + 1);
                let needs_segment = self.segments.last().is_none_or(|segment| {
                    segment.length + buffer.len() as u64 >= self.options.segment_bytes_max
                });
                if needs_segment {
                    self.write_buffer(&mut buffer)?;
                    self.start_segment(index)?;
                    created_segment = true;
                }
                let segment = self.segments.len() - 1;
                let offset = self.segments[segment].length + buffer.len() as u64;
                encode_record(&mut buffer, index, entry);
                self.synced.push(Location {
                    term: entry.term,
                    segment,
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
        segment
            .file
            .write_all_at(buffer, segment.length)
            .map_err(io_error(&segment.path))?;
        segment.file.sync_data().map_err(io_error(&segment.path))?;
        segment.length += buffer.len() as u64;
        buffer.clear();
        Ok(())
    }

    fn start_segment(&mut self, first_index: LogIndex) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path))?;
        self.segments.push(Segment {
            path,
            file,
            length: 0,
        });
        Ok(())
    }

    /// Reads a synced entry back from its segment, checking it.
    fn read_synced(&self, index: LogIndex) -> Result<Entry, LogError> {
        let location = self.synced[(index.0 - 1) as usize];
        let segment = &self.segments[location.segment];
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

    fn synced_count(&self) -> u64 {
        self.synced.len() as u64
    }
}

fn check_version(dir: &Path) -> Result<(), LogError> {
    let path = dir.join("VERSION");
    match fs::read(&path) {
        Ok(found) if found == FORMAT_VERSION.as_bytes() => Ok(()),
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

/// Appends one record for `entry` at `index` to `buffer`; returns its payload length.
fn encode_record(buffer: &mut Vec<u8>, index: LogIndex, entry: &Entry) -> u32 {
    let payload_bytes = u32::try_from(PAYLOAD_PREFIX_BYTES + entry.data.len() as u64)
        .expect("entries are far below 4 GiB");
    let start = buffer.len();
    buffer.extend_from_slice(&payload_bytes.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    buffer.extend_from_slice(&index.0.to_le_bytes());
    buffer.extend_from_slice(&entry.term.0.to_le_bytes());
    buffer.push(entry.kind.code());
    buffer.extend_from_slice(&entry.data);
    let checksum = crc32c::crc32c(&buffer[start + RECORD_HEADER_BYTES as usize..]);
    buffer[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    payload_bytes
}

struct Record {
    index: LogIndex,
    term: Term,
    payload_bytes: u32,
    entry: Entry,
}

enum RecordProblem {
    /// The record runs past the end of the file.
    Torn,
    /// The record is complete but wrong; it would end at `ends_at`.
    Bad {
        reason: String,
        ends_at: u64,
    },
    Io(LogError),
}

fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    file_length: u64,
    segment_bytes_max: u64,
) -> Result<Record, RecordProblem> {
    if offset + RECORD_HEADER_BYTES > file_length {
        return Err(RecordProblem::Torn);
    }
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, offset)
        .map_err(|source| RecordProblem::Io(io_error(path)(source)))?;
    let payload_bytes = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let checksum = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let ends_at = offset + RECORD_HEADER_BYTES + u64::from(payload_bytes);
    if u64::from(payload_bytes) < PAYLOAD_PREFIX_BYTES {
        return Err(RecordProblem::Bad {
            reason: format!("payload of {payload_bytes} bytes is shorter than its fixed fields"),
            ends_at,
        });
    }
    if ends_at > file_length {
        // Either torn, or a corrupt length: only the last segment may be torn (the caller
        // decides); a length no segment could hold is never a torn write.
        if u64::from(payload_bytes) > segment_bytes_max.max(1 << 30) * 2 {
            return Err(RecordProblem::Bad {
                reason: format!("record length {payload_bytes} is impossible"),
                ends_at: u64::MAX,
            });
        }
        return Err(RecordProblem::Torn);
    }
    let mut payload = vec![0u8; payload_bytes as usize];
    file.read_exact_at(&mut payload, offset + RECORD_HEADER_BYTES)
        .map_err(|source| RecordProblem::Io(io_error(path)(source)))?;
    if crc32c::crc32c(&payload) != checksum {
        return Err(RecordProblem::Bad {
            reason: "checksum mismatch".to_owned(),
            ends_at,
        });
    }
    let index = LogIndex(u64::from_le_bytes(
        payload[..8].try_into().expect("8 bytes"),
    ));
    let term = Term(u64::from_le_bytes(
        payload[8..16].try_into().expect("8 bytes"),
    ));
    let Some(kind) = EntryKind::from_code(payload[16]) else {
        return Err(RecordProblem::Bad {
            reason: format!("unknown entry kind {}", payload[16]),
            ends_at,
        });
    };
    let data = Bytes::from(payload).slice(PAYLOAD_PREFIX_BYTES as usize..);
    Ok(Record {
        index,
        term,
        payload_bytes,
        entry: Entry { term, kind, data },
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

    fn latest_log_index(&self) -> LogIndex {
        LogIndex(self.synced_count() + self.unsynced.len() as u64)
    }

    fn latest_log_term(&self) -> Term {
        match self.unsynced.last() {
            Some(entry) => entry.term,
            None => self.synced.last().map_or(Term(0), |location| location.term),
        }
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, LogError> {
        if index.is_zero() {
            return Ok(Some(Term(0)));
        }
        if index.0 <= self.synced_count() {
            return Ok(Some(self.synced[(index.0 - 1) as usize].term));
        }
        let position = index.0 - self.synced_count() - 1;
        Ok(usize::try_from(position)
            .ok()
            .and_then(|position| self.unsynced.get(position))
            .map(|entry| entry.term))
    }

    fn entry(&self, index: LogIndex) -> Result<Option<Entry>, LogError> {
        if index.is_zero() || index > self.latest_log_index() {
            return Ok(None);
        }
        if index.0 <= self.synced_count() {
            return self.read_synced(index).map(Some);
        }
        Ok(self
            .unsynced
            .get((index.0 - self.synced_count() - 1) as usize)
            .cloned())
    }

    fn entries(
        &self,
        from: LogIndex,
        until: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        if from.is_zero() {
            return Err(LogError::Compacted {
                index: from,
                first: LogIndex(1),
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
        let expected = self.latest_log_index().next();
        if from != expected {
            return Err(LogError::NonContiguousAppend {
                index: from,
                expected,
            });
        }
        self.unsynced.extend_from_slice(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        let latest = self.latest_log_index();
        if from.is_zero() || from > latest.next() {
            return Err(LogError::TruncateOutOfRange {
                index: from,
                first: LogIndex(1),
                latest,
            });
        }
        if from.0 > self.synced_count() {
            self.unsynced
                .truncate((from.0 - self.synced_count() - 1) as usize);
            return Ok(());
        }
        // Everything from `from` on goes, unsynced entries included; what was written before
        // this call is made durable first, so a crash keeps the writes in order.
        self.unsynced.clear();
        self.flush()?;
        let location = self.synced[(from.0 - 1) as usize];
        let mut deleted = false;
        while self.segments.len() > location.segment + 1 {
            let segment = self
                .segments
                .pop()
                .expect("more segments than the kept one");
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            deleted = true;
        }
        let segment = &mut self.segments[location.segment];
        segment
            .file
            .set_len(location.offset)
            .map_err(io_error(&segment.path))?;
        segment.file.sync_all().map_err(io_error(&segment.path))?;
        segment.length = location.offset;
        if deleted {
            sync_directory(&self.dir)?;
        }
        self.synced.truncate((from.0 - 1) as usize);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.flush()
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
