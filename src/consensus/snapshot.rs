//! Snapshots and log compaction (§7): when to take one, what it holds, restoring from one, and
//! InstallSnapshot in both directions.
//!
//! **What a snapshot holds.** Its [`SnapshotMeta`] (last included index and term, the voters at
//! that index, length and crc32c) is kept by the log; its bytes are the state machine's
//! [`StateMachine::snapshot`] followed by the client session table (thesis §6.3: the table is
//! replicated state, so a server restored from a snapshot must answer retries exactly as the
//! others do), then a fixed trailer giving both lengths. The state machine's part comes first so
//! that restoring hands its bytes to [`StateMachine::restore_snapshot`] without a second copy.
//!
//! **Policy.** After applying, a server snapshots once `snapshot_entries` entries or
//! `snapshot_bytes` bytes were applied since its last snapshot, then discards the log up to
//! `snapshot_keep_entries` behind it. Snapshots are taken synchronously, so never two at once.
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
use crate::state_machine::StateMachine;
use crate::types::{LogIndex, ServerId};
use bytes::Bytes;

/// Marks the end of a snapshot's bytes, after the two lengths: "MRS" and format version 1.
const TRAILER_MAGIC: [u8; 4] = *b"MRS1";
/// Bytes of the trailer: state machine length, session table length (u64 each), magic.
const TRAILER_BYTES: usize = 8 + 8 + 4;

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

/// Splits a snapshot's bytes into the state machine's part and the session table.
///
/// # Errors
/// What is malformed, for the caller to report with the snapshot's position.
fn decode_snapshot(
    mut bytes: Vec<u8>,
    sessions_max: usize,
) -> std::result::Result<(Vec<u8>, Sessions), String> {
    let Some(body_len) = bytes.len().checked_sub(TRAILER_BYTES) else {
        return Err(format!(
            "{} bytes is too short to hold a trailer",
            bytes.len()
        ));
    };
    let trailer = &bytes[body_len..];
    if trailer[16..] != TRAILER_MAGIC {
        return Err("the trailer's magic number is wrong".to_owned());
    }
    let machine_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let sessions_len = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    if machine_len.checked_add(sessions_len) != Some(body_len as u64) {
        return Err(format!(
            "the trailer's lengths {machine_len} + {sessions_len} do not add up to {body_len}"
        ));
    }
    let machine_len = body_len - sessions_len as usize;
    let sessions = Sessions::decode(&bytes[machine_len..body_len], sessions_max)?;
    bytes.truncate(machine_len);
    Ok((bytes, sessions))
}

impl<L: PersistentLog, M: StateMachine> Consensus<L, M> {
    // ---- taking snapshots and compacting (§7) ----

    /// Takes a snapshot if the policy says so. Called after applying entries.
    pub(super) fn maybe_take_snapshot(&mut self) -> Result<()> {
        let due = self.applied_since_snapshot.entries >= self.config.snapshot_entries
            || self.applied_since_snapshot.bytes >= self.config.snapshot_bytes;
        if due && self.last_applied > self.snapshot_index() {
            self.take_snapshot()?;
        }
        Ok(())
    }

    /// Snapshots the state at `last_applied`, makes it durable, then compacts the log behind it.
    pub(super) fn take_snapshot(&mut self) -> Result<()> {
        let last_index = self.last_applied;
        let last_term = self.term_at(last_index)?;
        let machine = self.state_machine.snapshot();
        let mut tail = Vec::new();
        if self.config.testing_broken_rule == Some(super::BrokenRule::SnapshotWithoutSessions) {
            Sessions::new(self.config.sessions_max).encode(&mut tail);
        } else {
            self.sessions.encode(&mut tail);
        }
        let sessions_len = tail.len() as u64;
        tail.extend_from_slice(&(machine.len() as u64).to_le_bytes());
        tail.extend_from_slice(&sessions_len.to_le_bytes());
        tail.extend_from_slice(&TRAILER_MAGIC);
        let meta = SnapshotMeta {
            last_index,
            last_term,
            voters: self.voters.clone(),
            size: (machine.len() + tail.len()) as u64,
            checksum: crc32c::crc32c_append(crc32c::crc32c(&machine), &tail),
        };
        // A transfer in progress shares the log's one unfinished-snapshot slot; our own snapshot
        // is at least as new as anything we applied, so the transfer is abandoned (the leader
        // restarts it if it is still needed).
        self.incoming_snapshot = None;
        self.log.begin_snapshot(meta)?;
        self.log.write_snapshot(&machine)?;
        drop(machine);
        self.log.write_snapshot(&tail)?;
        self.log.finish_snapshot()?;
        self.applied_since_snapshot = AppliedSinceSnapshot::default();
        log::info!(
            "{}: took a snapshot through {last_index}@t{last_term}",
            self.who()
        );
        self.compact_log()
    }

    /// Discards the log up to `snapshot_keep_entries` behind the snapshot.
    fn compact_log(&mut self) -> Result<()> {
        let snapshot_index = self.snapshot_index();
        let through = LogIndex(
            snapshot_index
                .0
                .saturating_sub(self.config.snapshot_keep_entries),
        );
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
        let bytes = self.log.read_snapshot(0, meta.size)?;
        if bytes.len() as u64 != meta.size {
            return Err(LogError::Snapshot {
                location: format!("{}@t{}", meta.last_index, meta.last_term),
                reason: format!("read {} of its {} bytes", bytes.len(), meta.size),
            }
            .into());
        }
        let (machine, sessions) =
            decode_snapshot(bytes, self.config.sessions_max).map_err(|reason| {
                LogError::Snapshot {
                    location: format!("{}@t{}", meta.last_index, meta.last_term),
                    reason: format!("malformed: {reason}"),
                }
            })?;
        if meta.voters != self.voters {
            log::warn!(
                "{}: snapshot {} names voters {:?}, configured {:?}",
                self.who(),
                meta.last_index,
                meta.voters,
                self.voters
            );
        }
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
                sent,
                acked,
            } = progress.state
            else {
                return Ok(());
            };
            if last_index != meta.last_index {
                // We took a newer snapshot since the transfer began: send that one instead.
                progress.become_snapshot(meta.last_index);
                continue;
            }
            if sent >= meta.size || sent - acked >= window {
                return Ok(());
            }
            let data = self
                .log
                .read_snapshot(sent, self.config.snapshot_chunk_bytes)?;
            if data.is_empty() {
                return Ok(());
            }
            progress.on_snapshot_sent(data.len() as u64);
            let message = Message::InstallSnapshot(InstallSnapshot {
                term: self.current_term(),
                leader_id: self.id,
                meta: meta.clone(),
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
            let advanced = progress.on_snapshot_done(response.match_index);
            log::info!(
                "{}: {from} holds everything through {}; replicating from there",
                self.who(),
                response.match_index
            );
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
            log::info!(
                "{}: receiving snapshot through {}@t{} ({} bytes) from {from}",
                self.who(),
                meta.last_index,
                meta.last_term,
                meta.size
            );
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

    fn encoded(machine: &[u8], sessions: &Sessions) -> Vec<u8> {
        let mut table = Vec::new();
        sessions.encode(&mut table);
        let mut bytes = machine.to_vec();
        bytes.extend_from_slice(&table);
        bytes.extend_from_slice(&(machine.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(table.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&TRAILER_MAGIC);
        bytes
    }

    #[test]
    fn snapshot_bytes_split_into_machine_and_sessions() {
        let mut sessions = Sessions::new(4);
        sessions.register(LogIndex(3));
        let bytes = encoded(b"machine state", &sessions);
        let (machine, decoded) = decode_snapshot(bytes, 4).expect("decodes");
        assert_eq!(machine, b"machine state");
        assert!(decoded.contains(3));
    }

    #[test]
    fn malformed_snapshot_bytes_are_refused() {
        let sessions = Sessions::new(4);
        let good = encoded(b"state", &sessions);
        for cut in 0..good.len() {
            assert!(
                decode_snapshot(good[..cut].to_vec(), 4).is_err(),
                "cut {cut}"
            );
        }
        let mut bad_magic = good.clone();
        *bad_magic.last_mut().expect("non-empty") ^= 1;
        assert!(decode_snapshot(bad_magic, 4).is_err());
        let mut bad_length = good;
        let at = bad_length.len() - TRAILER_BYTES;
        bad_length[at] ^= 1;
        assert!(decode_snapshot(bad_length, 4).is_err());
    }
}
