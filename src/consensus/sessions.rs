//! Client sessions for exactly-once commands (thesis §6.3).
//!
//! A client opens a session with a [`EntryKind::RegisterSession`](crate::log::EntryKind) entry;
//! the session's id is that entry's index, so every server derives the same id. The client then
//! numbers its requests 1, 2, 3, … and retries each with the same number until it is answered.
//! For each session the table keeps the highest sequence number applied and the reply it got: a
//! retry of an applied request is answered from the table and never reaches
//! [`StateMachine::apply`](crate::StateMachine::apply) again.
//!
//! The table is part of the replicated state: it changes only when a committed entry is applied,
//! and only as a function of the log, so every server holds the same table at the same index.
//! Expiry is therefore deterministic too: the table holds at most `sessions_max` sessions, and
//! registering one more drops the session whose last applied entry is oldest (least recently
//! used, by log index, not by any clock). A command of a dropped session is refused as expired,
//! never silently executed again.

use crate::types::LogIndex;
use std::collections::{BTreeSet, HashMap};

/// What the table says about request `sequence` of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not applied yet: apply it.
    New,
    /// The last request applied: answer with its recorded reply, at its index.
    Duplicate {
        /// Where the original was applied.
        index: LogIndex,
        /// What `apply` returned for it.
        reply: Vec<u8>,
    },
    /// Older than the last request applied: the client has moved on; nobody waits for it.
    Superseded,
    /// No such session: it expired or never existed.
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    /// Highest sequence number applied (0: none yet).
    last_sequence: u64,
    /// Where it was applied.
    last_index: LogIndex,
    /// Its reply.
    last_reply: Vec<u8>,
    /// The index of the last entry that touched this session: its place in the LRU order.
    last_used: LogIndex,
}

/// The session table of one server. See the module documentation.
#[derive(Clone, Debug)]
pub struct Sessions {
    sessions: HashMap<u64, Session>,
    /// (last_used, session id) of every session, oldest first.
    by_last_use: BTreeSet<(LogIndex, u64)>,
    /// Most sessions kept. Must be the same on every server.
    sessions_max: usize,
}

impl Sessions {
    /// An empty table keeping at most `sessions_max` sessions (at least one).
    pub fn new(sessions_max: usize) -> Self {
        Sessions {
            sessions: HashMap::new(),
            by_last_use: BTreeSet::new(),
            sessions_max: sessions_max.max(1),
        }
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `session` is open.
    pub fn contains(&self, session: u64) -> bool {
        self.sessions.contains_key(&session)
    }

    /// Applies the registration entry at `index`: opens session `index`, dropping the least
    /// recently used session if the table is full. Returns the new session's id.
    pub fn register(&mut self, index: LogIndex) -> u64 {
        while self.sessions.len() >= self.sessions_max {
            let Some((_, oldest)) = self.by_last_use.pop_first() else {
                break;
            };
            self.sessions.remove(&oldest);
            log::debug!("session {oldest} expired (least recently used) at {index}");
        }
        let session = index.0;
        let previous = self.sessions.insert(
            session,
            Session {
                last_sequence: 0,
                last_index: index,
                last_reply: Vec::new(),
                last_used: index,
            },
        );
        assert!(previous.is_none(), "session ids are unique log indexes");
        self.by_last_use.insert((index, session));
        self.check();
        session
    }

    /// What to do with request `sequence` of `session`.
    pub fn lookup(&self, session: u64, sequence: u64) -> Lookup {
        let Some(state) = self.sessions.get(&session) else {
            return Lookup::Expired;
        };
        if sequence > state.last_sequence {
            Lookup::New
        } else if sequence == state.last_sequence {
            Lookup::Duplicate {
                index: state.last_index,
                reply: state.last_reply.clone(),
            }
        } else {
            Lookup::Superseded
        }
    }

    /// Records that request `sequence` of `session` was applied at `index` with `reply`.
    ///
    /// # Panics
    /// If the session is not open or the request is not new ([`Sessions::lookup`] first).
    pub fn record(&mut self, session: u64, sequence: u64, index: LogIndex, reply: Vec<u8>) {
        let state = self
            .sessions
            .get_mut(&session)
            .expect("record follows a lookup that found the session");
        assert!(
            sequence > state.last_sequence,
            "session {session}: request {sequence} applied after {}",
            state.last_sequence
        );
        assert!(index > state.last_used, "the log only moves forward");
        self.by_last_use.remove(&(state.last_used, session));
        state.last_sequence = sequence;
        state.last_index = index;
        state.last_reply = reply;
        state.last_used = index;
        self.by_last_use.insert((index, session));
        self.check();
    }

    /// Appends the table to `out` in a deterministic binary form (sessions in id order), for
    /// snapshots (§7): the table is replicated state, so a snapshot must carry it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut ids: Vec<u64> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        for id in ids {
            let state = &self.sessions[&id];
            for value in [
                id,
                state.last_sequence,
                state.last_index.0,
                state.last_used.0,
                state.last_reply.len() as u64,
            ] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.extend_from_slice(&state.last_reply);
        }
    }

    /// The table [`Sessions::encode`] wrote into `bytes`, keeping at most `sessions_max`.
    ///
    /// # Errors
    /// What is malformed: truncated data, trailing bytes, duplicate sessions, or more sessions
    /// than `sessions_max` (the servers' configurations differ).
    pub fn decode(mut bytes: &[u8], sessions_max: usize) -> Result<Sessions, String> {
        fn take_u64(bytes: &mut &[u8]) -> Result<u64, String> {
            let (head, rest) = bytes
                .split_first_chunk::<8>()
                .ok_or("session table is truncated")?;
            *bytes = rest;
            Ok(u64::from_le_bytes(*head))
        }
        let mut table = Sessions::new(sessions_max);
        let count = take_u64(&mut bytes)?;
        if count > table.sessions_max as u64 {
            return Err(format!(
                "session table holds {count} sessions but sessions_max is {}; every server                  must use the same sessions_max",
                table.sessions_max
            ));
        }
        for _ in 0..count {
            let id = take_u64(&mut bytes)?;
            let last_sequence = take_u64(&mut bytes)?;
            let last_index = LogIndex(take_u64(&mut bytes)?);
            let last_used = LogIndex(take_u64(&mut bytes)?);
            let reply_len = take_u64(&mut bytes)?;
            let reply_len = usize::try_from(reply_len)
                .ok()
                .filter(|&len| len <= bytes.len())
                .ok_or("session table is truncated inside a reply")?;
            let (reply, rest) = bytes.split_at(reply_len);
            bytes = rest;
            let session = Session {
                last_sequence,
                last_index,
                last_reply: reply.to_vec(),
                last_used,
            };
            if table.sessions.insert(id, session).is_some()
                || !table.by_last_use.insert((last_used, id))
            {
                return Err(format!("session {id} appears twice in the session table"));
            }
        }
        if !bytes.is_empty() {
            return Err(format!(
                "{} unexpected bytes after the session table",
                bytes.len()
            ));
        }
        table.check();
        Ok(table)
    }

    fn check(&self) {
        debug_assert_eq!(self.sessions.len(), self.by_last_use.len());
        debug_assert!(self.sessions.len() <= self.sessions_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_new_once_then_a_duplicate_then_superseded() {
        let mut sessions = Sessions::new(10);
        let id = sessions.register(LogIndex(5));
        assert_eq!(id, 5);
        assert_eq!(sessions.lookup(id, 1), Lookup::New);
        sessions.record(id, 1, LogIndex(7), b"first".to_vec());
        assert_eq!(
            sessions.lookup(id, 1),
            Lookup::Duplicate {
                index: LogIndex(7),
                reply: b"first".to_vec()
            }
        );
        assert_eq!(sessions.lookup(id, 2), Lookup::New);
        sessions.record(id, 2, LogIndex(9), b"second".to_vec());
        assert_eq!(sessions.lookup(id, 1), Lookup::Superseded);
        assert_eq!(sessions.lookup(99, 1), Lookup::Expired);
    }

    #[test]
    fn the_table_survives_encoding_and_malformed_tables_are_refused() {
        let mut sessions = Sessions::new(3);
        let a = sessions.register(LogIndex(1));
        let b = sessions.register(LogIndex(2));
        sessions.record(a, 1, LogIndex(3), b"reply".to_vec());
        let mut bytes = Vec::new();
        sessions.encode(&mut bytes);
        let decoded = Sessions::decode(&bytes, 3).expect("decodes");
        assert_eq!(decoded.sessions, sessions.sessions);
        assert_eq!(decoded.by_last_use, sessions.by_last_use);
        assert_eq!(
            decoded.lookup(a, 1),
            Lookup::Duplicate {
                index: LogIndex(3),
                reply: b"reply".to_vec()
            }
        );
        assert_eq!(decoded.lookup(b, 1), Lookup::New);
        for cut in 0..bytes.len() {
            assert!(Sessions::decode(&bytes[..cut], 3).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Sessions::decode(&longer, 3).is_err());
        let error = Sessions::decode(&bytes, 1).unwrap_err();
        assert!(error.contains("sessions_max"), "{error}");
    }

    #[test]
    fn the_least_recently_used_session_expires_first() {
        let mut sessions = Sessions::new(2);
        let a = sessions.register(LogIndex(1));
        let b = sessions.register(LogIndex(2));
        // `a` is used after `b` was opened, so `b` is now the least recently used.
        sessions.record(a, 1, LogIndex(3), Vec::new());
        let c = sessions.register(LogIndex(4));
        assert!(sessions.contains(a) && sessions.contains(c));
        assert_eq!(sessions.lookup(b, 1), Lookup::Expired);
        assert_eq!(sessions.len(), 2);
    }
}
