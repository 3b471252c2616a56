//! The segment files of a [`FileLog`](super::FileLog): the record format, appending with
//! preallocated space, and scanning on open (DESIGN.md §3). The layout is in the parent module's
//! documentation.
//!
//! A segment's file is longer than its records: the space after them is written with zeros
//! ahead of time, up to a chunk at once, so the `fdatasync` of a common append writes data into
//! blocks the file already owns and need not journal a new size or allocation. Invariant: every
//! byte from a segment's `length` to its `allocated` end is zero, on disk as in memory, so the
//! zero header where the next record will start marks the end of the records. A record's length
//! field is never 0 (a payload holds at least its index, term and kind), so a zero header is
//! never the start of a record.

use super::{corrupt, io_error};
use crate::error::LogError;
use crate::log::{Entry, EntryKind};
use crate::types::{LogIndex, Term};
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before a record's payload: its length and checksum.
pub(super) const RECORD_HEADER_BYTES: u64 = 8;
/// Bytes of a payload before the entry's data: index, term and kind.
pub(super) const PAYLOAD_PREFIX_BYTES: u64 = 17;
/// Most bytes zeroed ahead of the records at once; less if a segment is smaller. One such
/// write (about 2.5 ms for 1 MiB on the development machine) happens once per chunk of
/// records, so a tiny log holds at most this much zeroed space per segment.
pub(super) const PREALLOCATE_BYTES_MAX: u64 = 1 << 20;
/// Bytes read at once when checking that a tail is all zeros.
const ZERO_CHECK_BYTES: usize = 64 << 10;

/// Where a synced entry lies. Its segment is the last one whose first index is at most the
/// entry's index.
#[derive(Clone, Copy, Debug)]
pub(super) struct Location {
    pub(super) term: Term,
    /// Offset of the record's header in its segment.
    pub(super) offset: u64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// The index of the segment's first record (the one in its name), also when it is empty.
    pub(super) first_index: LogIndex,
    /// Bytes of records in the file (and the offset of the next record).
    pub(super) length: u64,
    /// The file's length: records, then zeros. Invariant: `length <= allocated`.
    pub(super) allocated: u64,
}

impl Segment {
    /// Writes `records` after the segment's records and makes them durable with one
    /// `fdatasync`, first zeroing more space after them if they would pass the allocated end.
    /// `segment_bytes_max` caps the zeroed space: a segment takes no records once that full.
    pub(super) fn append(
        &mut self,
        records: &[u8],
        segment_bytes_max: u64,
    ) -> Result<(), LogError> {
        assert!(self.length <= self.allocated, "records lie inside the file");
        let end = self.length + records.len() as u64;
        if end > self.allocated {
            let chunk = PREALLOCATE_BYTES_MAX.min(segment_bytes_max).max(1);
            let target = end
                .div_ceil(chunk)
                .saturating_mul(chunk)
                .min(end.max(segment_bytes_max));
            assert!(target >= end, "the zeroed space holds the records");
            self.write_zeros(self.allocated, target)?;
            self.allocated = target;
        }
        self.file
            .write_all_at(records, self.length)
            .map_err(io_error(&self.path))?;
        // One sync covers the zeros and the records: a crash before it leaves zeros or parts
        // of the records in the new space, and recovery cuts either as a torn tail.
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.length = end;
        Ok(())
    }

    /// Cuts the file to `length` bytes, dropping records and zeros after it, durably: records
    /// cut here must never be found again by a later scan.
    pub(super) fn cut(&mut self, length: u64) -> Result<(), LogError> {
        assert!(length <= self.length, "cut only removes records");
        self.file.set_len(length).map_err(io_error(&self.path))?;
        self.file.sync_all().map_err(io_error(&self.path))?;
        self.length = length;
        self.allocated = length;
        Ok(())
    }

    /// Gives back the zeroed space after the records of a segment that takes no more. Not
    /// synced: a crash that loses this leaves a zero tail, which a scan reads as the end.
    pub(super) fn release_space(&mut self) -> Result<(), LogError> {
        if self.allocated > self.length {
            self.file
                .set_len(self.length)
                .map_err(io_error(&self.path))?;
            self.allocated = self.length;
        }
        Ok(())
    }

    fn write_zeros(&self, from: u64, until: u64) -> Result<(), LogError> {
        let zeros = vec![0u8; ZERO_CHECK_BYTES];
        let mut offset = from;
        while offset < until {
            let count =
                usize::try_from(until - offset).map_or(zeros.len(), |left| left.min(zeros.len()));
            self.file
                .write_all_at(&zeros[..count], offset)
                .map_err(io_error(&self.path))?;
            offset += count as u64;
        }
        Ok(())
    }
}

/// What a scan found at the end of a segment's records.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// The records end at the end of the file, or where only zeros follow.
    Clean,
    /// A write the crash interrupted follows the records (only in the last segment); the
    /// caller cuts it.
    Torn,
}

/// Reads the records of a segment of `file_length` bytes whose first record holds
/// `first_index`, pushing their locations; returns where they end and what follows.
///
/// Rules (module docs): a zero header (or fewer than a header's bytes, all zero) followed by
/// zeros only is the clean end. In the last segment, the write a crash interrupted may have
/// reached the disk in any order of its pages (the file's size no longer changes with it), so
/// these are a torn write, cut with everything after: a record that runs past the file; a zero
/// header with data after it (no bit flip zeroes a header; a page of the last write that never
/// landed does, and everything after it belongs to that write, which was never acknowledged);
/// a record that fails its checks unless well-formed records follow it to the clean end (then
/// acknowledged entries may follow a damaged one: refused). Anything else is damage no crash
/// causes, refused naming the file and offset.
pub(super) fn scan(
    path: &Path,
    file: &File,
    file_length: u64,
    first_index: LogIndex,
    last: bool,
    segment_bytes_max: u64,
    locations: &mut Vec<Location>,
) -> Result<(u64, ScanEnd), LogError> {
    let mut offset = 0;
    let mut index = first_index;
    while offset < file_length {
        let reason = match read_record(file, path, offset, file_length, segment_bytes_max) {
            Ok(record) if record.index == index => {
                locations.push(Location {
                    term: record.term,
                    offset,
                });
                offset += RECORD_HEADER_BYTES + u64::from(record.payload_bytes);
                index = index.next();
                continue;
            }
            Ok(record) => format!("record holds index {}, expected {index}", record.index),
            Err(RecordProblem::Io(error)) => return Err(error),
            Err(RecordProblem::End) => match first_nonzero(file, path, offset, file_length)? {
                None => return Ok((offset, ScanEnd::Clean)),
                Some(_) if last => return Ok((offset, ScanEnd::Torn)),
                Some(data_at) => format!(
                    "a zero record header ends the records, but data follows at offset {data_at}"
                ),
            },
            Err(RecordProblem::Torn) if last => return Ok((offset, ScanEnd::Torn)),
            Err(RecordProblem::Torn) => "record runs past the end of the file".to_owned(),
            Err(RecordProblem::Bad { reason, ends_at }) => {
                // A bad record of the last segment is a write the crash tore (its missing
                // bytes read as zeros) unless whole records follow it to the clean end.
                let followed = || {
                    records_follow_to_the_end(file, path, ends_at, file_length, segment_bytes_max)
                };
                if last && !followed()? {
                    return Ok((offset, ScanEnd::Torn));
                }
                reason
            }
        };
        return Err(corrupt(path, offset, reason));
    }
    Ok((offset, ScanEnd::Clean))
}

/// Whether well-formed records start at `from` and follow one another to the clean end (zeros
/// or the end of the file), with at least one of them: entries that may have been
/// acknowledged. Their indexes are not checked: the damaged record before them hides where
/// they should start.
fn records_follow_to_the_end(
    file: &File,
    path: &Path,
    from: u64,
    file_length: u64,
    segment_bytes_max: u64,
) -> Result<bool, LogError> {
    let mut offset = from;
    let mut previous: Option<LogIndex> = None;
    while offset < file_length {
        match read_record(file, path, offset, file_length, segment_bytes_max) {
            Ok(record) if previous.is_none_or(|index| record.index == index.next()) => {
                previous = Some(record.index);
                offset += RECORD_HEADER_BYTES + u64::from(record.payload_bytes);
            }
            Err(RecordProblem::Io(error)) => return Err(error),
            Err(RecordProblem::End) => {
                let clean = first_nonzero(file, path, offset, file_length)?.is_none();
                return Ok(clean && previous.is_some());
            }
            _ => return Ok(false),
        }
    }
    Ok(previous.is_some())
}

/// The offset of the first non-zero byte of `file` in `from..until`, if any.
fn first_nonzero(file: &File, path: &Path, from: u64, until: u64) -> Result<Option<u64>, LogError> {
    let mut buffer = vec![0u8; ZERO_CHECK_BYTES];
    let mut offset = from;
    while offset < until {
        let count =
            usize::try_from(until - offset).map_or(buffer.len(), |left| left.min(buffer.len()));
        file.read_exact_at(&mut buffer[..count], offset)
            .map_err(io_error(path))?;
        if let Some(position) = buffer[..count].iter().position(|&byte| byte != 0) {
            return Ok(Some(offset + position as u64));
        }
        offset += count as u64;
    }
    Ok(None)
}

/// Appends one record for `entry` at `index` to `buffer`; returns its payload length.
pub(super) fn encode_record(buffer: &mut Vec<u8>, index: LogIndex, entry: &Entry) -> u32 {
    let payload_bytes = u32::try_from(PAYLOAD_PREFIX_BYTES + entry.data.len() as u64)
        .expect("entries are far below 4 GiB");
    // A zero length would read as the end of the records.
    assert!(u64::from(payload_bytes) >= PAYLOAD_PREFIX_BYTES);
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

pub(super) struct Record {
    pub(super) index: LogIndex,
    pub(super) term: Term,
    pub(super) payload_bytes: u32,
    pub(super) entry: Entry,
}

pub(super) enum RecordProblem {
    /// Zeros where a record header would start (fewer than a header's bytes if the file ends
    /// sooner): no record starts here.
    End,
    /// The record runs past the end of the file.
    Torn,
    /// The record is complete but wrong; it would end at `ends_at`.
    Bad {
        reason: String,
        ends_at: u64,
    },
    Io(LogError),
}

/// Reads and checks the record at `offset` of a file whose first `file_length` bytes count.
pub(super) fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    file_length: u64,
    segment_bytes_max: u64,
) -> Result<Record, RecordProblem> {
    let available = file_length.saturating_sub(offset).min(RECORD_HEADER_BYTES);
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    file.read_exact_at(&mut header[..available as usize], offset)
        .map_err(|source| RecordProblem::Io(io_error(path)(source)))?;
    if header.iter().all(|&byte| byte == 0) {
        return Err(RecordProblem::End);
    }
    if available < RECORD_HEADER_BYTES {
        return Err(RecordProblem::Torn);
    }
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
