//! Snapshots and log compaction (§7): when to take one, what it holds, restoring from one, and
//! InstallSnapshot in both directions.
//!
//! **What a snapshot holds.** Its [`SnapshotMeta`] (last included index and term, the voters at
//! that index, length and crc32c) is kept by the log; its bytes are a small header (a magic
//! number and two lengths), the client session table (thesis §6.3: the table is replicated
//! state, so a server restored from a snapshot must answer retries exactly as the others do),
//! then the state machine's [`StateMachine::snapshot`]. The state machine's part comes last and
//! whole, so taking a snapshot hands it to the log by value and restoring reads it back into one
//! buffer for [`StateMachine::restore_snapshot`]: never a second copy in memory.
//!
//! **Policy.** After applying, a server snapshots once `snapshot_entries` entries or
//! `snapshot_bytes` bytes were applied since its last snapshot, then discards the log up to
//! `snapshot_keep_entries` behind it. Only the state machine's serialization runs in the
//! server's thread; the log may write and fsync the bytes in the background
//! ([`PersistentLog::write_snapshot_owned`]), and the snapshot is put in force once
//! [`PersistentLog::snapshot_written`] says so. One snapshot at a time.
//!
//! **Transfer.** A leader that needs an entry it has compacted sends the snapshot instead, in
//! chunks of `snapshot_chunk_bytes`, at most `snapshot_chunks_in_flight` unacknowledged. The
//! follower writes each chunk at the offset it expects to the log's unfinished snapshot and
//! answers with how much it holds; the leader resumes from there after a loss or reconnection.
//! When the last chunk arrives and the checksum matches, the follower installs it: the log keeps
//! the entries after it if they agree, the state machine and session table are replaced.

use super::progress::ReplicationState;
use super::sessions::Sessions;
use super::{
    ClientReply, Consensus, InstallSnapshot, InstallSnapshotResponse, Message, ProposalOutcome,
    Role,
};
use crate::error::{LogError, Result};
use crate::log::{PersistentLog, SnapshotMeta};
use crate::membership::Membership;
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId};
use bytes::Bytes;

/// Opens a snapshot's bytes: "MRS" and format version 1.
const HEADER_MAGIC: [u8; 4] = *b"MRS1";
/// Bytes of the header: magic, session table length, state machine length (u64 each).
const HEADER_BYTES: usize = 4 + 8 + 8;

/// A snapshot being received from a leader (follower side).
#[derive(Clone, Debug)]
pub(super) struct IncomingSnapshot {
    /// Which snapshot; its bytes go to the log's unfinished snapshot.
    meta: SnapshotMeta,
    /// Leading bytes written so far.
    received: u64,
    /// crc32c of those bytes.
    checksum: u32,
}

/// Counts toward the snapshot policy since the last snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AppliedSinceSnapshot {
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

/// The header and session table that precede the state machine's bytes.
fn encode_head(sessions: &Sessions, machine_len: usize) -> Vec<u8> {
    let mut table = Vec::new();
    sessions.encode(&mut table);
    let mut head = Vec::with_capacity(HEADER_BYTES + table.len());
    head.extend_from_slice(&HEADER_MAGIC);
    head.extend_from_slice(&(table.len() as u64).to_le_bytes());
    head.extend_from_slice(&(machine_len as u64).to_le_bytes());
    head.extend_from_slice(&table);
    head
}

/// From a snapshot of `size` bytes whose first bytes are `header`: the session table's length
/// and the state machine's.
///
/// # Errors
/// What is malformed, for the caller to report with the snapshot's position.
fn decode_header(header: &[u8], size: u64) -> std::result::Result<(u64, u64), String> {
    if header.len() < HEADER_BYTES {
        return Err(format!("{size} bytes is too short to hold a header"));
    }
    if header[..4] != HEADER_MAGIC {
        return Err("the header's magic number is wrong".to_owned());
    }
    let sessions_len = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
    let machine_len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let total = sessions_len
        .checked_add(machine_len)
        .and_then(|body| body.checked_add(HEADER_BYTES as u64));
    if total != Some(size) {
        return Err(format!(
            "the header's lengths {sessions_len} + {machine_len} do not add up to {size} bytes"
        ));
    }
    Ok((sessions_len, machine_len))
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    // ---- taking snapshots and compacting (§7) ----

    /// Takes a snapshot if the policy says so. Called after applying entries.
    pub(super) fn maybe_take_snapshot(&mut self) -> Result<()> {
        let due = self.applied_since_snapshot.entries >= self.config.snapshot_entries
            || self.applied_since_snapshot.bytes >= self.config.snapshot_bytes;
        if due && self.local_snapshot.is_none() && self.last_applied > self.snapshot_index() {
            self.take_snapshot()?;
        }
        Ok(())
    }

    /// Snapshots the state at `last_applied` and hands it to the log, which may write it in the
    /// background; [`Self::finish_local_snapshot`] puts it in force once written.
    pub(super) fn take_snapshot(&mut self) -> Result<()> {
        let last_index = self.last_applied;
        let last_term = self.term_at(last_index)?;
        let machine = self.state_machine.snapshot();
        let head = if self.config.testing_broken_rule
            == Some(super::BrokenRule::SnapshotWithoutSessions)
        {
            encode_head(&Sessions::new(self.config.sessions_max), machine.len())
        } else {
            encode_head(&self.sessions, machine.len())
        };
        let meta = SnapshotMeta {
            last_index,
            last_term,
            membership: self.membership_at(last_index),
            size: (head.len() + machine.len()) as u64,
            checksum: crc32c::crc32c_append(crc32c::crc32c(&head), &machine),
        };
        // A transfer in progress shares the log's one unfinished-snapshot slot; our own snapshot
        // is at least as new as anything we applied, so the transfer is abandoned (the leader
        // restarts it if it is still needed).
        self.incoming_snapshot = None;
        self.log.begin_snapshot(meta)?;
        self.log.write_snapshot(&head)?;
        self.log.write_snapshot_owned(machine)?;
        self.local_snapshot = Some(last_index);
        self.applied_since_snapshot = AppliedSinceSnapshot::default();
        log::debug!(
            "{}: snapshotting through {last_index}@t{last_term}",
            self.who()
        );
        self.finish_local_snapshot()
    }

    /// Puts our own snapshot in force once the log has written it, then compacts the log.
    pub(super) fn finish_local_snapshot(&mut self) -> Result<()> {
        let Some(last_index) = self.local_snapshot else {
            return Ok(());
        };
        if !self.log.snapshot_written()? {
            return Ok(());
        }
        self.local_snapshot = None;
        self.log.finish_snapshot()?;
        log::info!("{}: took a snapshot through {last_index}", self.who());
        self.prune_configurations(last_index);
        self.compact_log()
    }

    /// Discards the log up to `snapshot_keep_entries` behind the snapshot, but, on a leader,
    /// never past a snapshot it is still sending: that follower continues with the entries
    /// after it, and must not need a newer snapshot the moment it installs the one it gets.
    fn compact_log(&mut self) -> Result<()> {
        let snapshot_index = self.snapshot_index();
        let mut through = LogIndex(
            snapshot_index
                .0
                .saturating_sub(self.config.snapshot_keep_entries),
        );
        for progress in self.progress.values() {
            if let ReplicationState::Snapshot { last_index, .. } = progress.state {
                // Keep its last entry too: the first append after it checks that entry's term.
                through = through.min(last_index.prev().unwrap_or_default());
            }
        }
        if through >= self.log.first_log_index() {
            self.log.compact_prefix(through)?;
        }
        Ok(())
    }

    /// The last index the log's snapshot covers, 0 without one.
    pub(super) fn snapshot_index(&self) -> LogIndex {
        self.log
            .snapshot_meta()
            .map_or(LogIndex(0), |meta| meta.last_index)
    }

    /// Whether our log can say the term at `index` (index 0, a held entry, or the snapshot's
    /// last index).
    pub(super) fn term_available(&self, index: LogIndex) -> bool {
        index.is_zero() || index >= self.log.first_log_index() || index == self.snapshot_index()
    }

    /// Replaces the state machine and session table with the log's snapshot and moves the apply
    /// and commit indexes to it: at start, and after installing a leader's snapshot.
    pub(super) fn restore_from_snapshot(&mut self) -> Result<()> {
        let Some(meta) = self.log.snapshot_meta().cloned() else {
            return Ok(());
        };
        let malformed = |reason: String| LogError::Snapshot {
            location: format!("{}@t{}", meta.last_index, meta.last_term),
            reason: format!("malformed: {reason}"),
        };
        let header = self.log.read_snapshot(0, HEADER_BYTES as u64)?;
        let (sessions_len, machine_len) = decode_header(&header, meta.size).map_err(malformed)?;
        let table = self.read_exactly(HEADER_BYTES as u64, sessions_len)?;
        let sessions = Sessions::decode(&table, self.config.sessions_max).map_err(malformed)?;
        let machine = self.read_exactly(HEADER_BYTES as u64 + sessions_len, machine_len)?;
        self.state_machine.restore_snapshot(machine);
        self.sessions = sessions;
        self.last_applied = meta.last_index;
        self.commit_index = self.commit_index.max(meta.last_index);
        self.applied_since_snapshot = AppliedSinceSnapshot::default();
        // A proposal this server made as an earlier leader, at an index the snapshot covers, may
        // or may not be in it: say so rather than guess (a session request can be retried).
        while let Some((&(index, _), _)) = self.pending_proposals.first_key_value() {
            if index > meta.last_index {
                break;
            }
            let Some((_, waiters)) = self.pending_proposals.pop_first() else {
                break;
            };
            for waiter in waiters {
                self.out.replies.push(ClientReply {
                    id: waiter.id,
                    outcome: ProposalOutcome::Unknown { index },
                });
            }
        }
        log::info!(
            "{}: restored the snapshot through {}@t{} ({} bytes)",
            self.who(),
            meta.last_index,
            meta.last_term,
            meta.size
        );
        Ok(())
    }

    /// `length` bytes of the log's snapshot from `offset`, in one buffer.
    fn read_exactly(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut bytes = if length == 0 {
            Vec::new()
        } else {
            self.log.read_snapshot(offset, length)?
        };
        while (bytes.len() as u64) < length {
            let more = self
                .log
                .read_snapshot(offset + bytes.len() as u64, length - bytes.len() as u64)?;
            if more.is_empty() {
                return Err(LogError::Snapshot {
                    location: format!("at offset {offset}"),
                    reason: format!("ends after {} of {length} bytes", bytes.len()),
                }
                .into());
            }
            bytes.extend_from_slice(&more);
        }
        Ok(bytes)
    }

    // ---- leader side ----

    /// Sends `peer` the next chunks of our snapshot, as the flow-control window allows.
    pub(super) fn send_snapshot_chunks(&mut self, peer: ServerId) -> Result<()> {
        let Some(meta) = self.log.snapshot_meta().cloned() else {
            log::error!("{}: {peer} needs a snapshot but there is none", self.who());
            return Ok(());
        };
        let window = self
            .config
            .snapshot_chunk_bytes
            .saturating_mul(self.config.snapshot_chunks_in_flight);
        loop {
            let Some(progress) = self.progress.get_mut(&peer) else {
                return Ok(());
            };
            let ReplicationState::Snapshot {
                last_index,
                size,
                sent,
                acked,
            } = progress.state
            else {
                return Ok(());
            };
            if last_index != meta.last_index {
                if sent >= size {
                    // Every chunk of the older snapshot is out: wait for the follower's answer
                    // (the log after it is kept, see `compact_log`). Only if chunks were lost
                    // does the transfer start over with the newer one.
                    return Ok(());
                }
                progress.become_snapshot(meta.last_index, meta.size);
                continue;
            }
            if sent >= meta.size || sent - acked >= window {
                return Ok(());
            }
            // The configuration travels in the first chunk only (the follower takes the meta
            // from there) and counts toward that chunk's size, so every chunk fits the
            // receiver's message limit however large the cluster grew.
            let (chunk_meta, data_max) = if sent == 0 {
                let configuration_bytes = meta.membership.encode().len() as u64;
                let data_max = self
                    .config
                    .snapshot_chunk_bytes
                    .saturating_sub(configuration_bytes);
                (meta.clone(), data_max)
            } else {
                let meta = SnapshotMeta {
                    membership: Membership::default(),
                    ..meta.clone()
                };
                (meta, self.config.snapshot_chunk_bytes)
            };
            // Never more than the window ahead of what the follower acknowledged.
            let data_max = data_max.min(acked + window - sent);
            let data = self.log.read_snapshot(sent, data_max)?;
            if data.is_empty() {
                return Ok(());
            }
            progress.on_snapshot_sent(data.len() as u64);
            let message = Message::InstallSnapshot(InstallSnapshot {
                term: self.current_term(),
                leader_id: self.id,
                meta: chunk_meta,
                offset: sent,
                data: Bytes::from(data),
            });
            self.send(peer, message);
        }
    }

    /// The leader's side of a follower's answer to a chunk.
    pub(super) fn handle_install_snapshot_response(
        &mut self,
        from: ServerId,
        response: InstallSnapshotResponse,
    ) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let last_log_index = self.log.latest_log_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        progress.record_activity();
        if response.done {
            if response.match_index > last_log_index {
                log::warn!(
                    "{}: ignored snapshot ack from {from} for index {} past our last \
                     {last_log_index}",
                    self.who(),
                    response.match_index
                );
                return Ok(());
            }
            let was_sending = matches!(progress.state, ReplicationState::Snapshot { .. });
            let advanced = progress.on_snapshot_done(response.match_index);
            if was_sending {
                log::info!(
                    "{}: {from} holds everything through {}; replicating from there",
                    self.who(),
                    response.match_index
                );
            }
            if advanced {
                self.advance_commit_index()?;
            }
        } else {
            progress.on_snapshot_ack(response.last_index, response.received);
        }
        self.send_appends(from)
    }

    // ---- follower side ----

    /// §7: the receiver's side of InstallSnapshot, the terms already equal.
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: ServerId,
        request: InstallSnapshot,
    ) -> Result<()> {
        if !self.accept_leader_message(from, request.leader_id, "InstallSnapshot")? {
            return Ok(());
        }
        let meta = request.meta;
        let length = request.data.len() as u64;
        if meta.last_index.is_zero()
            || request
                .offset
                .checked_add(length)
                .is_none_or(|end| end > meta.size)
        {
            log::warn!(
                "{}: ignored InstallSnapshot from {from}: chunk at {} of {} bytes does not fit \
                 a snapshot of {} bytes through {}",
                self.who(),
                request.offset,
                length,
                meta.size,
                meta.last_index
            );
            return Ok(());
        }
        if meta.last_index <= self.commit_index {
            // Everything it covers is committed here already, and committed entries are the
            // same on every server (§5.4): nothing to install.
            if self
                .incoming_snapshot
                .as_ref()
                .is_some_and(|incoming| incoming.meta.same_snapshot(&meta))
            {
                self.incoming_snapshot = None;
            }
            self.reply_snapshot(from, &meta, meta.size, Some(self.commit_index));
            return Ok(());
        }
        let same = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|incoming| incoming.meta.same_snapshot(&meta));
        if !same {
            if request.offset != 0 {
                // A transfer we know nothing of (we restarted, or took our own snapshot): ask
                // for it from the start.
                self.reply_snapshot(from, &meta, 0, None);
                return Ok(());
            }
            if meta.membership.voter_count() == 0 {
                // The first chunk names the snapshot's configuration; one without voters would
                // leave us unable to say who the members are.
                log::warn!(
                    "{}: ignored InstallSnapshot from {from}: its configuration has no voters",
                    self.who()
                );
                return Ok(());
            }
            log::info!(
                "{}: receiving snapshot through {}@t{} ({} bytes) from {from}",
                self.who(),
                meta.last_index,
                meta.last_term,
                meta.size
            );
            if let Some(local) = self.local_snapshot.take() {
                log::info!(
                    "{}: abandoned our snapshot through {local} for the leader's",
                    self.who()
                );
            }
            self.log.begin_snapshot(meta.clone())?;
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: meta.clone(),
                received: 0,
                checksum: 0,
            });
        }
        let incoming = self
            .incoming_snapshot
            .as_mut()
            .expect("set just above or matched");
        if request.offset == incoming.received && length > 0 {
            self.log.write_snapshot(&request.data)?;
            incoming.received += length;
            incoming.checksum = crc32c::crc32c_append(incoming.checksum, &request.data);
        }
        // A chunk at another offset (a duplicate, or one after a lost chunk) is dropped; the
        // answer tells the leader where to resume.
        let received = incoming.received;
        if received < meta.size {
            self.reply_snapshot(from, &meta, received, None);
            return Ok(());
        }
        let checksum = incoming.checksum;
        self.incoming_snapshot = None;
        if checksum != meta.checksum {
            log::error!(
                "{}: snapshot through {} from {from} has checksum {checksum:#010x}, expected \
                 {:#010x}: discarded, not installed; asking for it again",
                self.who(),
                meta.last_index,
                meta.checksum
            );
            self.reply_snapshot(from, &meta, 0, None);
            return Ok(());
        }
        self.install_received_snapshot(&meta)?;
        self.reply_snapshot(from, &meta, meta.size, Some(meta.last_index));
        Ok(())
    }

    /// Puts a fully received, verified snapshot in force.
    fn install_received_snapshot(&mut self, meta: &SnapshotMeta) -> Result<()> {
        // §7: the log keeps its entries after the snapshot if they agree with it, otherwise it is
        // discarded; either way everything written so far is durable afterwards.
        self.log.finish_snapshot()?;
        self.durable_index = self.log.latest_log_index();
        self.restore_from_snapshot()?;
        self.adopt_snapshot_configuration();
        self.compact_log()?;
        log::info!(
            "{}: installed snapshot through {}@t{}; log now {}..={}",
            self.who(),
            meta.last_index,
            meta.last_term,
            self.log.first_log_index(),
            self.log.latest_log_index()
        );
        Ok(())
    }

    /// Answers a chunk: how much of the snapshot we hold, and whether we now match the leader up
    /// to `done`'s index.
    fn reply_snapshot(
        &mut self,
        to: ServerId,
        meta: &SnapshotMeta,
        received: u64,
        done: Option<LogIndex>,
    ) {
        let message = Message::InstallSnapshotResponse(InstallSnapshotResponse {
            term: self.current_term(),
            last_index: meta.last_index,
            received,
            done: done.is_some(),
            match_index: done.unwrap_or_default(),
        });
        self.send(to, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gives_both_lengths() {
        let mut sessions = Sessions::new(4);
        sessions.register(LogIndex(3));
        let head = encode_head(&sessions, 13);
        let size = head.len() as u64 + 13;
        let (sessions_len, machine_len) = decode_header(&head, size).expect("decodes");
        assert_eq!(machine_len, 13);
        assert_eq!(sessions_len as usize, head.len() - HEADER_BYTES);
        let table = &head[HEADER_BYTES..];
        assert!(Sessions::decode(table, 4).expect("decodes").contains(3));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let head = encode_head(&Sessions::new(4), 5);
        let size = head.len() as u64 + 5;
        for cut in 0..HEADER_BYTES {
            assert!(decode_header(&head[..cut], size).is_err(), "cut {cut}");
        }
        let mut bad_magic = head.clone();
        bad_magic[0] ^= 1;
        assert!(decode_header(&bad_magic, size).is_err());
        assert!(
            decode_header(&head, size + 1).is_err(),
            "lengths must add up"
        );
        let mut huge = head;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_header(&huge, size).is_err(), "no overflow");
    }
}
