//! Owns one TCP connection's state: who is on the other end (as far as its preamble said), the
//! frames arriving (cut by [`FrameReader`], size-limited), and the bytes waiting to go out.
//!
//! Reading and writing are non-blocking. [`Connection::receive`] reads until the socket would
//! block (or a per-turn budget is spent, so one fast sender cannot starve the others) and hands
//! back whole frames; what they mean is the reactor's business. Outgoing frames wait in a bounded
//! buffer, flushed by [`Connection::flush`]; the connection asks mio for WRITABLE readiness only
//! while bytes are pending (or while an outbound connect is in progress).

use crate::error::WireError;
use crate::framing::FrameReader;
use crate::types::ServerId;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Most bytes waiting to be written to one connection (64 MiB). A peer or client that does not
/// read what it asked for is closed rather than allowed to grow the server's memory.
pub(super) const OUTPUT_BYTES_MAX: usize = 64 << 20;

/// Most output buffer capacity a connection keeps once everything is written; a larger buffer
/// is freed, so a burst of large messages (snapshot chunks, big batches) does not pin its peak
/// for the connection's lifetime.
const OUTPUT_CAPACITY_KEPT_MAX: usize = 2 << 20;

/// Most bytes read from one connection per readiness event before the reactor serves the
/// others; the rest is read on the next turn.
const READ_BYTES_PER_TURN_MAX: usize = 1 << 20;

/// Size of one `read` call: the reactor's read buffer.
pub(super) const READ_CHUNK_BYTES: usize = 64 << 10;

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Accepted; no preamble yet.
    AwaitingPreamble,
    /// Accepted from a peer (any server but this one: members change), which sends us its Raft
    /// messages on it; we answer on it while we have no connection of our own to that peer.
    InboundPeer(ServerId),
    /// Accepted from a client, which sends requests and reads responses.
    Client(u64),
    /// Dialled by us to a peer (at its configured address, or its address in the
    /// configuration); we send our Raft messages on it.
    /// `established` turns true once the TCP handshake completes.
    OutboundPeer {
        /// The peer dialled.
        peer: ServerId,
        /// Whether the connect finished.
        established: bool,
    },
}

/// Why a connection is closed: logged with the connection's description.
#[derive(Debug)]
pub(super) enum CloseReason {
    /// The other side closed its end.
    EndOfStream,
    /// A socket operation failed.
    Io(io::Error),
    /// The byte stream is not Cap'n Proto framing within our limits.
    Framing(WireError),
    /// The first frame was not a valid preamble.
    BadPreamble(WireError),
    /// The preamble claimed this server's own id.
    OwnId(ServerId),
    /// The peer left the configuration: we no longer dial it.
    NoLongerMember,
    /// A peer connection sent a frame that is not a Raft `Message`.
    NotAPeerMessage(WireError),
    /// A client connection sent a frame that is not a `ClientRequest`.
    NotAClientRequest(WireError),
    /// No preamble arrived within the preamble timeout (a half-open connection).
    PreambleTimeout(Duration),
    /// Writing `frame_bytes` more would pass the output buffer limit.
    OutputFull {
        /// Bytes already waiting.
        pending_bytes: usize,
        /// The frame that did not fit.
        frame_bytes: usize,
    },
    /// The server holds as many connections as it allows.
    TooManyConnections(usize),
}

impl CloseReason {
    /// Whether this is an ordinary end of a conversation rather than a fault worth a warning.
    pub(super) fn is_orderly(&self) -> bool {
        matches!(self, CloseReason::EndOfStream | CloseReason::NoLongerMember)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::EndOfStream => write!(f, "closed by the other side"),
            CloseReason::Io(error) => write!(f, "i/o error: {error}"),
            CloseReason::Framing(error) => write!(f, "unreadable stream: {error}"),
            CloseReason::BadPreamble(error) => {
                write!(f, "first message is not a valid preamble: {error}")
            }
            CloseReason::OwnId(id) => {
                write!(f, "preamble claims to be peer {id}, which is this server")
            }
            CloseReason::NoLongerMember => write!(f, "the peer left the configuration"),
            CloseReason::NotAPeerMessage(error) => {
                write!(f, "peer sent something other than a Raft message: {error}")
            }
            CloseReason::NotAClientRequest(error) => {
                write!(
                    f,
                    "client sent something other than a client request: {error}"
                )
            }
            CloseReason::PreambleTimeout(timeout) => {
                write!(f, "no preamble within {timeout:?} (half-open connection)")
            }
            CloseReason::OutputFull {
                pending_bytes,
                frame_bytes,
            } => write!(
                f,
                "not reading: {pending_bytes} bytes already wait to be written and {frame_bytes} \
                 more would pass the limit of {OUTPUT_BYTES_MAX} bytes"
            ),
            CloseReason::TooManyConnections(count) => {
                write!(f, "already serving {count} connections, the most allowed")
            }
        }
    }
}

/// How a call to [`Connection::receive`] ended.
#[derive(Debug)]
pub(super) enum ReadEnd {
    /// The socket has nothing more for now.
    WouldBlock,
    /// The per-turn budget was spent; more may be waiting.
    BudgetSpent,
    /// The connection must be closed (after handling the frames that came before).
    Close(CloseReason),
}

/// Whole frames cut from a connection's input, in arrival order, back to back in one buffer:
/// the reactor keeps one and reuses it for every read, so frames cost no allocation each.
#[derive(Debug, Default)]
pub(super) struct Frames {
    bytes: Vec<u8>,
    /// Where each frame ends in `bytes`.
    ends: Vec<usize>,
}

impl Frames {
    fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ends.push(self.bytes.len());
    }

    /// Forgets every frame, keeping the buffers unless a burst of large frames (snapshot
    /// chunks) grew them past what is worth keeping.
    pub(super) fn clear(&mut self) {
        if self.bytes.capacity() > OUTPUT_CAPACITY_KEPT_MAX {
            self.bytes = Vec::new();
        }
        self.bytes.clear();
        self.ends.clear();
    }

    /// The frames, in arrival order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start..end])
    }
}

/// One TCP connection and its buffers.
#[derive(Debug)]
pub(super) struct Connection {
    stream: TcpStream,
    /// The remote address (for logs; for outbound peers, the address dialled).
    address: SocketAddr,
    /// Who is on the other end. Changes once, when the preamble arrives (or the connect ends).
    kind: Kind,
    /// Unique per connection for the life of the server: slab slots are reused, and a reply
    /// must never reach a later connection that happens to take a closed one's slot.
    serial: u64,
    /// Incoming bytes cut into frames, refusing frames above the message limit.
    reader: FrameReader,
    /// Bytes waiting to be written; `output[written..]` is still pending.
    /// Invariant: `output.len() - written <= OUTPUT_BYTES_MAX`.
    output: Vec<u8>,
    written: usize,
    /// Whether mio currently reports WRITABLE readiness for this connection to us.
    writable_interest: bool,
    /// Whether the reactor has this connection on its list to flush at the end of the turn.
    queued_for_flush: bool,
}

impl Connection {
    /// Wraps a freshly accepted or dialled stream.
    pub(super) fn new(
        stream: TcpStream,
        address: SocketAddr,
        kind: Kind,
        serial: u64,
        message_bytes_max: u64,
    ) -> Self {
        // Raft messages are small and latency-bound: do not let Nagle's algorithm hold them.
        // Failing to set it only costs latency, so it is not a reason to refuse the connection.
        if let Err(error) = stream.set_nodelay(true) {
            log::debug!("could not set TCP_NODELAY on {address}: {error}");
        }
        Connection {
            stream,
            address,
            kind,
            serial,
            reader: FrameReader::new(message_bytes_max),
            output: Vec::new(),
            written: 0,
            writable_interest: false,
            queued_for_flush: false,
        }
    }

    /// Who is on the other end.
    pub(super) fn kind(&self) -> Kind {
        self.kind
    }

    /// Records who is on the other end (after a preamble, or a completed connect).
    pub(super) fn set_kind(&mut self, kind: Kind) {
        self.kind = kind;
    }

    /// This connection's unique serial number.
    pub(super) fn serial(&self) -> u64 {
        self.serial
    }

    /// Registers with the poller under `token`, with the interest the state calls for.
    pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.writable_interest = self.wants_writable();
        let interest = self.interest();
        registry.register(&mut self.stream, token, interest)
    }

    /// Removes the connection from the poller before it is dropped.
    pub(super) fn deregister(&mut self, registry: &Registry) {
        // The socket is closed right after; a failure here changes nothing.
        let _ = registry.deregister(&mut self.stream);
    }

    /// For an outbound connect in progress: `Ok(true)` once connected, `Ok(false)` if the
    /// readiness was spurious and the connect is still under way, `Err` if it failed.
    pub(super) fn finish_connect(&mut self) -> Result<bool, CloseReason> {
        if let Some(error) = self.stream.take_error().map_err(CloseReason::Io)? {
            return Err(CloseReason::Io(error));
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            // Readiness without a finished handshake (mio documents such spurious wakeups).
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(error) => Err(CloseReason::Io(error)),
        }
    }

    /// Reads what the socket holds (up to the per-turn budget) through `chunk`, the reactor's
    /// shared read buffer, and cuts it into frames, added to `frames`; returns why it stopped.
    ///
    /// A read that fills less than `chunk` drained the socket: readiness is edge-triggered, and
    /// data arriving after it raises a new edge (epoll(7)), so no second read is spent only to be
    /// told it would block. Unless the other side closed (`read_closed`, from the readiness
    /// event): then reading goes on to the end of the stream, which raises no further edge.
    pub(super) fn receive(
        &mut self,
        chunk: &mut [u8],
        read_closed: bool,
        frames: &mut Frames,
    ) -> ReadEnd {
        let mut read_bytes: usize = 0;
        let end = loop {
            if read_bytes >= READ_BYTES_PER_TURN_MAX {
                break ReadEnd::BudgetSpent;
            }
            match self.stream.read(chunk) {
                Ok(0) => break ReadEnd::Close(CloseReason::EndOfStream),
                Ok(count) => {
                    read_bytes = read_bytes.saturating_add(count);
                    self.reader.extend(chunk.get(..count).unwrap_or_default());
                    // Cut frames after every read, so at most one partial frame plus one chunk
                    // is ever buffered, however fast the other side sends.
                    loop {
                        match self.reader.next_frame_slice() {
                            Ok(Some(frame)) => frames.push(frame),
                            Ok(None) => break,
                            Err(error) => return ReadEnd::Close(CloseReason::Framing(error)),
                        }
                    }
                    if count < chunk.len() && !read_closed {
                        break ReadEnd::WouldBlock;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    break ReadEnd::WouldBlock
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => break ReadEnd::Close(CloseReason::Io(error)),
            }
        };
        end
    }

    /// Adds `frame` to the output buffer. Returns whether the connection needs to be put on the
    /// reactor's flush list (it was not on it yet).
    ///
    /// # Errors
    /// [`CloseReason::OutputFull`] when the other side is not reading fast enough: the caller
    /// closes the connection.
    pub(super) fn queue(&mut self, frame: &[u8]) -> Result<bool, CloseReason> {
        self.make_room(frame.len())?;
        self.output.extend_from_slice(frame);
        Ok(self.mark_queued())
    }

    /// Frames `message` straight into the output buffer (no frame of its own to allocate and
    /// copy), as [`queue`](Self::queue) does with a frame.
    ///
    /// # Errors
    /// As [`queue`](Self::queue).
    pub(super) fn queue_message<A: capnp::message::Allocator>(
        &mut self,
        message: &capnp::message::Builder<A>,
    ) -> Result<bool, CloseReason> {
        let frame_bytes =
            capnp::serialize::compute_serialized_size_in_words(message).saturating_mul(8);
        self.make_room(frame_bytes)?;
        let before = self.output.len();
        capnp::serialize::write_message(&mut self.output, message)
            .expect("writing into a Vec cannot fail");
        debug_assert_eq!(self.output.len() - before, frame_bytes);
        Ok(self.mark_queued())
    }

    /// Whether a frame of `frame_bytes` fits under the output limit.
    fn make_room(&self, frame_bytes: usize) -> Result<(), CloseReason> {
        let pending_bytes = self.pending_bytes();
        if pending_bytes.saturating_add(frame_bytes) > OUTPUT_BYTES_MAX {
            return Err(CloseReason::OutputFull {
                pending_bytes,
                frame_bytes,
            });
        }
        Ok(())
    }

    /// Notes that output is queued; true if the connection was not on the flush list yet.
    fn mark_queued(&mut self) -> bool {
        let newly_queued = !self.queued_for_flush;
        self.queued_for_flush = true;
        newly_queued
    }

    /// Writes as much pending output as the socket takes, then asks for WRITABLE readiness
    /// exactly when output is still pending. Called from the flush list and on WRITABLE.
    ///
    /// # Errors
    /// The socket failed: the caller closes the connection.
    pub(super) fn flush(&mut self, registry: &Registry, token: Token) -> Result<(), CloseReason> {
        self.queued_for_flush = false;
        // A connect in progress cannot be written to yet; the preamble waits in the buffer.
        if !matches!(
            self.kind,
            Kind::OutboundPeer {
                established: false,
                ..
            }
        ) {
            self.write_pending()?;
        }
        let wants_writable = self.wants_writable();
        if wants_writable != self.writable_interest {
            self.writable_interest = wants_writable;
            let interest = self.interest();
            registry
                .reregister(&mut self.stream, token, interest)
                .map_err(CloseReason::Io)?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), CloseReason> {
        while let Some(pending) = self.output.get(self.written..).filter(|p| !p.is_empty()) {
            match self.stream.write(pending) {
                Ok(0) => return Err(CloseReason::Io(io::ErrorKind::WriteZero.into())),
                Ok(count) => self.written = self.written.saturating_add(count),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(CloseReason::Io(error)),
            }
        }
        if self.written >= self.output.len() {
            self.output.clear();
            self.written = 0;
            if self.output.capacity() > OUTPUT_CAPACITY_KEPT_MAX {
                self.output = Vec::new();
            }
        } else if self.written > self.output.len() / 2 {
            // Keep the buffer from creeping: drop the written half once it dominates.
            self.output.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    fn pending_bytes(&self) -> usize {
        self.output.len().saturating_sub(self.written)
    }

    fn wants_writable(&self) -> bool {
        let connecting = matches!(
            self.kind,
            Kind::OutboundPeer {
                established: false,
                ..
            }
        );
        connecting || self.pending_bytes() > 0
    }

    fn interest(&self) -> Interest {
        if self.writable_interest {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

impl fmt::Display for Connection {
    /// "client 42 from 127.0.0.1:5555", "peer n2 from ...", "connection to peer n2 at ...".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::AwaitingPreamble => write!(f, "unidentified connection from {}", self.address),
            Kind::InboundPeer(id) => write!(f, "peer {id} from {}", self.address),
            Kind::Client(id) => write!(f, "client {id:#x} from {}", self.address),
            Kind::OutboundPeer { peer, .. } => {
                write!(f, "connection to peer {peer} at {}", self.address)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{Config, InstallSnapshot, Message};
    use crate::log::SnapshotMeta;
    use crate::types::{LogIndex, Term};
    use crate::wire;
    use mio::{Events, Poll};
    use std::time::Instant;

    /// A chunk message of the default chunk size, at chunk position `number + 1`.
    fn full_chunk(number: u64) -> Vec<u8> {
        // A chunk after the first: a full chunk of data, no configuration (the core sends it in
        // the first chunk only, counted toward that chunk's size).
        let membership = crate::membership::Membership::default();
        let chunk_bytes = Config::default().snapshot_chunk_bytes;
        let data: Vec<u8> = (0..chunk_bytes).map(|n| (n ^ number) as u8).collect();
        wire::encode_message(&Message::InstallSnapshot(InstallSnapshot {
            term: Term(3),
            leader_id: ServerId(1),
            meta: SnapshotMeta {
                last_index: LogIndex(500),
                last_term: Term(2),
                membership,
                size: 100 * chunk_bytes,
                checksum: 7,
            },
            offset: (number + 1) * chunk_bytes,
            data: data.into(),
        }))
    }

    /// A server-side connection on a real loopback socket, registered with `poll`, and the
    /// other end as a blocking std stream.
    fn connected(poll: &Poll, message_bytes_max: u64) -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other_end =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (ours, address) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        let mut connection = Connection::new(
            TcpStream::from_std(ours),
            address,
            Kind::InboundPeer(ServerId(2)),
            1,
            message_bytes_max,
        );
        connection
            .register(poll.registry(), Token(0))
            .expect("register");
        (connection, other_end)
    }

    fn offset_of(frame: &[u8]) -> u64 {
        match wire::decode_message(frame).expect("a chunk") {
            Message::InstallSnapshot(chunk) => chunk.offset,
            other => panic!("decoded {other:?}"),
        }
    }

    /// The core's whole window of full-size chunks, queued at once, leaves whole and in order
    /// through a socket that takes far less than that at a time.
    #[test]
    fn a_window_of_full_snapshot_chunks_leaves_whole_and_in_order() {
        let window = Config::default().snapshot_chunks_in_flight;
        let mut poll = Poll::new().expect("poll");
        let (mut connection, mut other_end) = connected(&poll, 1);
        for number in 0..window {
            connection.queue(&full_chunk(number)).expect("fits");
        }
        let reader = std::thread::spawn(move || {
            let mut frames = FrameReader::new(crate::framing::MESSAGE_BYTES_MAX_DEFAULT);
            let mut offsets = Vec::new();
            let mut buffer = vec![0; READ_CHUNK_BYTES];
            while offsets.len() < window as usize {
                let count = other_end.read(&mut buffer).expect("read");
                assert_ne!(count, 0, "closed early");
                frames.extend(&buffer[..count]);
                while let Some(frame) = frames.next_frame().expect("valid framing") {
                    offsets.push(offset_of(&frame));
                }
            }
            offsets
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = Events::with_capacity(8);
        connection.flush(poll.registry(), Token(0)).expect("flush");
        while connection.pending_bytes() > 0 {
            assert!(Instant::now() < deadline, "output never drained");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            connection.flush(poll.registry(), Token(0)).expect("flush");
        }
        let chunk_bytes = Config::default().snapshot_chunk_bytes;
        let expected: Vec<u64> = (1..=window).map(|number| number * chunk_bytes).collect();
        assert_eq!(reader.join().expect("reader"), expected);
        assert!(
            connection.output.capacity() <= OUTPUT_CAPACITY_KEPT_MAX,
            "the drained buffer was released"
        );
    }

    /// A peer that reads nothing cannot grow the output past its bound: the frame that would
    /// pass it is refused (the reactor then closes the connection), whole frames before it stay.
    #[test]
    fn output_for_a_peer_that_does_not_read_stops_at_the_bound() {
        let poll = Poll::new().expect("poll");
        let (mut connection, _other_end) = connected(&poll, 1);
        let chunk = full_chunk(0);
        let fitting = OUTPUT_BYTES_MAX / chunk.len();
        for _ in 0..fitting {
            connection.queue(&chunk).expect("within the bound");
        }
        match connection.queue(&chunk) {
            Err(CloseReason::OutputFull {
                pending_bytes,
                frame_bytes,
            }) => {
                assert_eq!(pending_bytes, fitting * chunk.len());
                assert_eq!(frame_bytes, chunk.len());
            }
            other => panic!("queued past the bound: {other:?}"),
        }
        assert_eq!(connection.pending_bytes(), fitting * chunk.len());
        // A message framed in place meets the same bound, and queues nothing when refused.
        let message = wire::peer_message(&wire::decode_message(&chunk).expect("a chunk"));
        match connection.queue_message(&message) {
            Err(CloseReason::OutputFull { frame_bytes, .. }) => {
                assert_eq!(frame_bytes, chunk.len());
            }
            other => panic!("queued past the bound: {other:?}"),
        }
        assert_eq!(connection.pending_bytes(), fitting * chunk.len());
    }

    /// Frames come back whole, in order, and the buffer forgets them (and a large capacity)
    /// when cleared.
    #[test]
    fn frames_iterate_in_order_and_clear() {
        let mut frames = Frames::default();
        assert_eq!(frames.iter().count(), 0);
        let big = vec![7u8; OUTPUT_CAPACITY_KEPT_MAX + 1];
        for frame in [&b"first"[..], b"", b"third", &big] {
            frames.push(frame);
        }
        let seen: Vec<&[u8]> = frames.iter().collect();
        assert_eq!(seen, [&b"first"[..], b"", b"third", &big]);
        frames.clear();
        assert_eq!(frames.iter().count(), 0);
        assert!(frames.bytes.capacity() <= OUTPUT_CAPACITY_KEPT_MAX);
    }

    /// A message framed in place is byte for byte the frame `encode_message` makes.
    #[test]
    fn a_message_framed_in_place_is_its_encoded_frame() {
        let poll = Poll::new().expect("poll");
        let (mut connection, _other_end) = connected(&poll, 1);
        let chunk = full_chunk(3);
        let message = wire::decode_message(&chunk).expect("a chunk");
        let first = connection.queue_message(&wire::peer_message(&message));
        assert!(
            matches!(first, Ok(true)),
            "put on the flush list: {first:?}"
        );
        let second = connection.queue_message(&wire::peer_message(&message));
        assert!(matches!(second, Ok(false)), "already on it: {second:?}");
        assert_eq!(connection.output, [chunk.clone(), chunk].concat());
    }

    /// Two full chunks from a peer, more than one turn's read budget together, come out as
    /// two whole frames however the reads cut them (the budget, the socket's buffer).
    #[test]
    fn full_snapshot_chunks_arrive_whole_across_reads() {
        let chunk_bytes = Config::default().snapshot_chunk_bytes;
        let limit = chunk_bytes + wire::install_snapshot_overhead_bytes();
        let poll = Poll::new().expect("poll");
        let (mut connection, mut other_end) = connected(&poll, limit);
        let frames = [full_chunk(0), full_chunk(1)];
        let sent = frames.concat();
        assert!(sent.len() > READ_BYTES_PER_TURN_MAX);
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            other_end.write_all(&sent).expect("write");
            other_end
        });
        let mut chunk = vec![0; READ_CHUNK_BYTES];
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.len() < frames.len() {
            assert!(Instant::now() < deadline, "frames never arrived");
            let mut arrived = Frames::default();
            let end = connection.receive(&mut chunk, false, &mut arrived);
            received.extend(arrived.iter().map(<[u8]>::to_vec));
            match end {
                ReadEnd::BudgetSpent => {}
                ReadEnd::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                ReadEnd::Close(reason) => panic!("closed: {reason}"),
            }
        }
        let _other_end = writer.join().expect("writer");
        assert_eq!(received, frames);
    }
}
