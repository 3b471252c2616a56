//! The snapshot file of a [`FileLog`](super::FileLog) (§7): its header format, writing it
//! (through a buffer, or on a background thread for bytes handed over by value), and checking
//! it on open. The layout is in the parent module's documentation.

use super::{corrupt, io_error, sync_directory};
use crate::error::LogError;
use crate::log::SnapshotMeta;
use crate::membership::Membership;
use crate::types::{LogIndex, Term};
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The snapshot in force.
pub(super) const SNAPSHOT_FILE: &str = "snapshot";
/// The snapshot being written.
pub(super) const SNAPSHOT_TEMPORARY_FILE: &str = "snapshot.tmp";
/// The first bytes of every snapshot file.
pub(super) const SNAPSHOT_MAGIC: [u8; 8] = *b"MIORSNAP";
/// The snapshot header's own format number.
pub(super) const SNAPSHOT_FORMAT: u32 = 2;
/// Bytes of the snapshot header before the configuration: magic, format, header length, last
/// index, last term, data length, data checksum, configuration length.
pub(super) const SNAPSHOT_HEADER_FIXED_BYTES: u64 = 48;
/// Bytes of the snapshot header without a configuration: the fixed part and the header checksum.
pub(super) const SNAPSHOT_HEADER_MIN_BYTES: u64 = SNAPSHOT_HEADER_FIXED_BYTES + 4;
/// Most configuration bytes a snapshot header may hold; more is damage, not a configuration.
pub(super) const SNAPSHOT_MEMBERSHIP_BYTES_MAX: u64 = 1 << 20;
/// Bytes of the buffered writer in front of `snapshot.tmp`.
pub(super) const SNAPSHOT_WRITE_BUFFER_BYTES: usize = 1 << 16;
/// Bytes read at a time when verifying a snapshot's checksum on open.
pub(super) const SNAPSHOT_VERIFY_CHUNK_BYTES: usize = 1 << 16;

/// The snapshot in force, its file kept open for positioned reads.
#[derive(Debug)]
pub(super) struct SnapshotFile {
    pub(super) meta: SnapshotMeta,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Where the data starts in the file: the header's length.
    pub(super) data_offset: u64,
}

/// Where the bytes of a snapshot being written stand.
#[derive(Debug)]
pub(super) enum SnapshotWriter {
    /// Written from this thread, through a buffer; not yet flushed or fsynced.
    Here(BufWriter<File>),
    /// Handed to a thread that writes them, fsyncs the file and gives it back with the data's
    /// checksum, so a large snapshot does not stall the caller.
    Background(std::thread::JoinHandle<io::Result<(File, u32)>>),
    /// Everything written and fsynced.
    Written(File),
    /// Only while one of the above is being replaced by another.
    Taken,
}

/// A snapshot being streamed into `snapshot.tmp`.
#[derive(Debug)]
pub(super) struct PendingSnapshot {
    /// What `begin_snapshot` announced; the header already written says the same.
    pub(super) meta: SnapshotMeta,
    pub(super) path: PathBuf,
    pub(super) writer: SnapshotWriter,
    /// The header's length.
    pub(super) data_offset: u64,
    /// Data bytes written so far. Invariant: at most `meta.size`.
    pub(super) written_bytes: u64,
    /// crc32c of the data written so far.
    pub(super) checksum: u32,
}

impl PendingSnapshot {
    /// Waits for a background write, if one is running, and takes in its checksum.
    pub(super) fn collect_background(&mut self) -> Result<(), LogError> {
        if !matches!(self.writer, SnapshotWriter::Background(_)) {
            return Ok(());
        }
        let SnapshotWriter::Background(handle) =
            std::mem::replace(&mut self.writer, SnapshotWriter::Taken)
        else {
            unreachable!("matched just above");
        };
        let (file, checksum) = handle
            .join()
            .map_err(|_| io_error(&self.path)(io::Error::other("the snapshot writer panicked")))?
            .map_err(io_error(&self.path))?;
        self.checksum = checksum;
        self.writer = SnapshotWriter::Written(file);
        Ok(())
    }

    /// The buffered writer, once any background write is done.
    pub(super) fn writer_here(&mut self) -> Result<&mut BufWriter<File>, LogError> {
        self.collect_background()?;
        if let SnapshotWriter::Written(_) = self.writer {
            let SnapshotWriter::Written(file) =
                std::mem::replace(&mut self.writer, SnapshotWriter::Taken)
            else {
                unreachable!("matched just above");
            };
            self.writer =
                SnapshotWriter::Here(BufWriter::with_capacity(SNAPSHOT_WRITE_BUFFER_BYTES, file));
        }
        match &mut self.writer {
            SnapshotWriter::Here(writer) => Ok(writer),
            _ => unreachable!("a pending snapshot's writer is never left taken"),
        }
    }

    /// Takes the buffered writer out, to hand to a background write.
    pub(super) fn take_writer(&mut self) -> Result<BufWriter<File>, LogError> {
        self.writer_here()?;
        match std::mem::replace(&mut self.writer, SnapshotWriter::Taken) {
            SnapshotWriter::Here(writer) => Ok(writer),
            _ => unreachable!("writer_here leaves a buffered writer"),
        }
    }

    /// The file with every byte written and fsynced, waiting for a background write.
    pub(super) fn written_file(&mut self) -> Result<File, LogError> {
        self.collect_background()?;
        match std::mem::replace(&mut self.writer, SnapshotWriter::Taken) {
            SnapshotWriter::Here(writer) => {
                let file = writer
                    .into_inner()
                    .map_err(|error| io_error(&self.path)(error.into_error()))?;
                file.sync_all().map_err(io_error(&self.path))?;
                Ok(file)
            }
            SnapshotWriter::Written(file) => Ok(file),
            SnapshotWriter::Background(_) | SnapshotWriter::Taken => {
                unreachable!("collected above, and never left taken")
            }
        }
    }
}

pub(super) fn snapshot_error(path: &Path, reason: impl Into<String>) -> LogError {
    LogError::Snapshot {
        location: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Deletes a `snapshot.tmp` left by a crash during a snapshot's writing: it never took effect.
pub(super) fn remove_snapshot_leftover(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(SNAPSHOT_TEMPORARY_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {
            log::info!(
                "{}: deleted an unfinished snapshot a crash left behind",
                path.display()
            );
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::Io { path, source }),
    }
}

/// Opens and fully verifies `dir/snapshot`, if there is one.
pub(super) fn open_snapshot(dir: &Path) -> Result<Option<SnapshotFile>, LogError> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogError::Io { path, source }),
    };
    let file_length = file.metadata().map_err(io_error(&path))?.len();
    let (meta, data_offset) = read_snapshot_header(&file, &path, file_length)?;
    verify_snapshot_data(&file, &path, data_offset, &meta)?;
    // The rename that put it in place is made durable before anyone acts on it.
    sync_directory(dir)?;
    Ok(Some(SnapshotFile {
        meta,
        path,
        file,
        data_offset,
    }))
}

/// The header of a snapshot file for `meta` (layout in the module docs).
pub(super) fn encode_snapshot_header(meta: &SnapshotMeta) -> Vec<u8> {
    let membership = meta.membership.encode();
    let header_bytes = SNAPSHOT_HEADER_MIN_BYTES + membership.len() as u64;
    let mut header = Vec::with_capacity(header_bytes as usize);
    header.extend_from_slice(&SNAPSHOT_MAGIC);
    header.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    header.extend_from_slice(
        &u32::try_from(header_bytes)
            .expect("a configuration far below 4 GiB")
            .to_le_bytes(),
    );
    header.extend_from_slice(&meta.last_index.0.to_le_bytes());
    header.extend_from_slice(&meta.last_term.0.to_le_bytes());
    header.extend_from_slice(&meta.size.to_le_bytes());
    header.extend_from_slice(&meta.checksum.to_le_bytes());
    header.extend_from_slice(
        &u32::try_from(membership.len())
            .expect("a configuration far below 4 GiB")
            .to_le_bytes(),
    );
    header.extend_from_slice(&membership);
    let checksum = crc32c::crc32c(&header);
    header.extend_from_slice(&checksum.to_le_bytes());
    debug_assert_eq!(header.len() as u64, header_bytes);
    header
}

/// Reads and checks a snapshot file's header; returns the meta and where the data starts.
pub(super) fn read_snapshot_header(
    file: &File,
    path: &Path,
    file_length: u64,
) -> Result<(SnapshotMeta, u64), LogError> {
    let u32_at = |bytes: &[u8], at: usize| {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    };
    let u64_at = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    };
    if file_length < SNAPSHOT_HEADER_MIN_BYTES {
        return Err(corrupt(
            path,
            0,
            format!("snapshot file of {file_length} bytes is shorter than a snapshot header"),
        ));
    }
    let mut start = [0u8; 16];
    file.read_exact_at(&mut start, 0).map_err(io_error(path))?;
    if start[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(path, 0, "not a snapshot file: bad magic"));
    }
    let format = u32_at(&start, 8);
    if format != SNAPSHOT_FORMAT {
        return Err(corrupt(
            path,
            8,
            format!("snapshot format {format}, this version reads {SNAPSHOT_FORMAT}"),
        ));
    }
    let header_bytes = u64::from(u32_at(&start, 12));
    let membership_bytes = header_bytes.checked_sub(SNAPSHOT_HEADER_MIN_BYTES);
    let plausible = membership_bytes.is_some_and(|bytes| bytes <= SNAPSHOT_MEMBERSHIP_BYTES_MAX)
        && header_bytes <= file_length;
    if !plausible {
        return Err(corrupt(
            path,
            12,
            format!("impossible header length {header_bytes} in a file of {file_length} bytes"),
        ));
    }
    let mut header = vec![0u8; header_bytes as usize];
    file.read_exact_at(&mut header, 0).map_err(io_error(path))?;
    let checksum_at = header.len() - 4;
    let stored = u32_at(&header, checksum_at);
    let computed = crc32c::crc32c(&header[..checksum_at]);
    if stored != computed {
        return Err(corrupt(
            path,
            checksum_at as u64,
            format!(
                "header checksum {stored:#010x} does not match its contents ({computed:#010x})"
            ),
        ));
    }
    let membership_length = u64::from(u32_at(&header, 44));
    if SNAPSHOT_HEADER_MIN_BYTES + membership_length != header_bytes {
        return Err(corrupt(
            path,
            44,
            format!(
                "a configuration of {membership_length} bytes does not fill a header of \
                 {header_bytes} bytes"
            ),
        ));
    }
    let membership = Membership::decode(&header[48..checksum_at])
        .map_err(|reason| corrupt(path, 48, format!("snapshot configuration: {reason}")))?;
    let meta = SnapshotMeta {
        last_index: LogIndex(u64_at(&header, 16)),
        last_term: Term(u64_at(&header, 24)),
        membership,
        size: u64_at(&header, 32),
        checksum: u32_at(&header, 40),
    };
    let data_bytes = file_length - header_bytes;
    if data_bytes != meta.size {
        return Err(corrupt(
            path,
            header_bytes,
            format!(
                "holds {data_bytes} bytes of data, its header says {}",
                meta.size
            ),
        ));
    }
    Ok((meta, header_bytes))
}

/// Streams a snapshot's data through crc32c, a chunk at a time, and compares with its meta.
pub(super) fn verify_snapshot_data(
    file: &File,
    path: &Path,
    data_offset: u64,
    meta: &SnapshotMeta,
) -> Result<(), LogError> {
    let mut chunk = vec![0u8; SNAPSHOT_VERIFY_CHUNK_BYTES];
    let mut checksum = 0;
    let mut done: u64 = 0;
    while done < meta.size {
        let length = (meta.size - done).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..length], data_offset + done)
            .map_err(io_error(path))?;
        checksum = crc32c::crc32c_append(checksum, &chunk[..length]);
        done += length as u64;
    }
    if checksum != meta.checksum {
        return Err(corrupt(
            path,
            data_offset,
            format!(
                "snapshot data checksum {checksum:#010x} does not match its header's {:#010x}",
                meta.checksum
            ),
        ));
    }
    Ok(())
}
