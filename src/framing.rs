//! Length-safe Cap'n Proto stream framing (the standard, unpacked encoding), for the reactor's
//! non-blocking sockets and the blocking client alike.
//!
//! A frame is a segment table (segment count − 1, then each segment's length in words, all
//! little-endian `u32`, padded to 8 bytes) followed by the segments. [`FrameReader`] learns a
//! frame's length from its table before any segment arrives, so an oversized or nonsensical
//! frame is refused without buffering it.

use crate::error::WireError;

/// Cap'n Proto's own bound on segments per message.
pub const SEGMENTS_MAX: u64 = 512;

/// The default limit on one message's size (16 MiB).
pub const MESSAGE_BYTES_MAX_DEFAULT: u64 = 16 << 20;

/// Accumulates bytes from a stream and cuts them into whole frames.
#[derive(Debug)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames.
    consumed: usize,
    message_bytes_max: u64,
}

impl FrameReader {
    /// A reader refusing frames larger than `message_bytes_max`.
    pub fn new(message_bytes_max: u64) -> Self {
        FrameReader {
            buffer: Vec::new(),
            consumed: 0,
            message_bytes_max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buffer.len() {
            self.buffer.clear();
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// The next whole frame, if one has arrived.
    ///
    /// # Errors
    /// [`WireError::MessageTooLarge`] or [`WireError::BadFrame`]: the stream cannot be trusted
    /// any further and the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        Ok(self.next_frame_slice()?.map(<[u8]>::to_vec))
    }

    /// The next whole frame, if one has arrived, borrowed from the reader's buffer (valid until
    /// the reader is used again): [`next_frame`](Self::next_frame) without a copy.
    ///
    /// # Errors
    /// As [`next_frame`](Self::next_frame).
    pub fn next_frame_slice(&mut self) -> Result<Option<&[u8]>, WireError> {
        let pending = &self.buffer[self.consumed..];
        let Some(length) = frame_length(pending, self.message_bytes_max)? else {
            self.compact();
            return Ok(None);
        };
        let length = usize::try_from(length).map_err(|_| WireError::MessageTooLarge {
            size_bytes: length,
            limit_bytes: self.message_bytes_max,
        })?;
        if pending.len() < length {
            self.compact();
            return Ok(None);
        }
        let start = self.consumed;
        self.consumed += length;
        Ok(Some(&self.buffer[start..self.consumed]))
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
    }
}

/// The total length in bytes of the frame at the start of `bytes`, once its segment table has
/// arrived; `None` while it is incomplete.
///
/// # Errors
/// When the table is malformed or announces more than `message_bytes_max` bytes.
pub fn frame_length(bytes: &[u8], message_bytes_max: u64) -> Result<Option<u64>, WireError> {
    let Some(first) = read_u32(bytes, 0) else {
        return Ok(None);
    };
    let segment_count = u64::from(first) + 1;
    if segment_count > SEGMENTS_MAX {
        return Err(WireError::BadFrame(format!(
            "{segment_count} segments announced, at most {SEGMENTS_MAX} allowed"
        )));
    }
    // One u32 for the count and one per segment, padded to a whole 8-byte word.
    let table_bytes = (4 * (1 + segment_count)).div_ceil(8) * 8;
    if (bytes.len() as u64) < table_bytes {
        return Ok(None);
    }
    let mut total = table_bytes;
    for segment in 0..segment_count {
        let words = read_u32(bytes, 4 + 4 * segment as usize).expect("table is complete");
        total += u64::from(words) * 8;
        if total > message_bytes_max {
            return Err(WireError::MessageTooLarge {
                size_bytes: total,
                limit_bytes: message_bytes_max,
            });
        }
    }
    if total == table_bytes {
        return Err(WireError::BadFrame("message with no content".to_owned()));
    }
    Ok(Some(total))
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let chunk = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(chunk.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(words: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(words.len() as u32 - 1).to_le_bytes());
        for w in words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        while bytes.len() % 8 != 0 {
            bytes.push(0);
        }
        for w in words {
            bytes.extend(std::iter::repeat_n(0xab, *w as usize * 8));
        }
        bytes
    }

    #[test]
    fn cuts_frames_arriving_byte_by_byte_and_together() {
        let mut stream = frame(&[2]);
        stream.extend(frame(&[1, 3]));
        let mut reader = FrameReader::new(1024);
        let mut frames = Vec::new();
        for byte in &stream {
            reader.extend(std::slice::from_ref(byte));
            while let Some(frame) = reader.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![frame(&[2]), frame(&[1, 3])]);
        let mut together = FrameReader::new(1024);
        together.extend(&stream);
        assert_eq!(together.next_frame().unwrap(), Some(frame(&[2])));
        assert_eq!(together.next_frame().unwrap(), Some(frame(&[1, 3])));
        assert_eq!(together.next_frame().unwrap(), None);
        assert_eq!(together.buffered_len(), 0);
    }

    #[test]
    fn refuses_oversized_frames_from_the_table_alone() {
        let mut reader = FrameReader::new(64);
        reader.extend(&frame(&[100])[..8]);
        let error = reader.next_frame().unwrap_err();
        assert_eq!(
            error.to_string(),
            "message of 808 bytes exceeds the limit of 64 bytes"
        );
    }

    #[test]
    fn refuses_absurd_segment_counts_and_empty_messages() {
        let mut reader = FrameReader::new(1 << 20);
        reader.extend(&u32::MAX.to_le_bytes());
        assert!(matches!(reader.next_frame(), Err(WireError::BadFrame(_))));
        let mut empty = FrameReader::new(1 << 20);
        empty.extend(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(empty.next_frame(), Err(WireError::BadFrame(_))));
    }
}
