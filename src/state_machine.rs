//! The application's replicated state: the [`StateMachine`] trait (DESIGN.md §2) and two small
//! implementations used by tests, the simulator and benchmarks.

use std::collections::BTreeMap;

/// The user's deterministic state machine, fed committed commands in log order (§5.3).
///
/// Every server applies the same commands in the same order, so `apply` must be deterministic:
/// the same state and command give the same state and result on every server.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command and returns the reply for its proposer.
    fn apply(&mut self, command: &[u8]) -> Vec<u8>;
    /// Answers a read-only query against the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;
    /// Serializes the whole state (for log compaction, §7).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with one produced by [`StateMachine::snapshot`].
    fn restore_snapshot(&mut self, snapshot: Vec<u8>);
    /// Called on the leader before `command` enters the log: `Err(error)` refuses it, and the
    /// client receives `error` with nothing appended. The default accepts everything.
    ///
    /// The check sees the leader's current state, which may lag the log by the commands in
    /// flight, so it is advisory: `apply` must still handle (deterministically) any command it
    /// is given.
    fn validate(&self, command: &[u8]) -> std::result::Result<(), Vec<u8>> {
        let _ = command;
        Ok(())
    }
}

/// A state machine that keeps nothing and answers every command with an empty reply.
#[derive(Debug, Default, Clone)]
pub struct NullStateMachine;

impl StateMachine for NullStateMachine {
    fn apply(&mut self, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore_snapshot(&mut self, _snapshot: Vec<u8>) {}
}

/// A key-value map driven by a tiny text protocol, for tests and the simulator.
///
/// Commands: `put <key> <value>` replies with the previous value (empty if none);
/// `cas <key> <expected> <new>` replies `ok` or the current value. Anything else is refused by
/// [`StateMachine::validate`] before it reaches the log (and replies `error: ...` if applied
/// anyway, e.g. when proposed through a leader without the check). Queries: `get <key>` replies with the value (empty if none). Keys contain no
/// spaces; values are the rest of the command. It also keeps the number of commands applied and
/// a running digest of them, so tests can compare two replicas cheaply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    entries: BTreeMap<String, String>,
    applied_count: u64,
    digest: u64,
}

impl KvStateMachine {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored at `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// How many commands have been applied since creation or the last restore.
    pub fn applied_count(&self) -> u64 {
        self.applied_count
    }

    /// A digest of every command applied, in order (FNV-1a over the commands).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    fn fold_digest(&mut self, command: &[u8]) {
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = if self.digest == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.digest
        };
        for byte in command.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        self.digest = hash;
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        self.applied_count += 1;
        self.fold_digest(command);
        let Ok(text) = std::str::from_utf8(command) else {
            return b"error: command is not utf-8".to_vec();
        };
        let mut words = text.splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("put"), Some(rest)) => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                self.entries
                    .insert(key.to_owned(), value.to_owned())
                    .unwrap_or_default()
                    .into_bytes()
            }
            (Some("cas"), Some(rest)) => {
                let mut parts = rest.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(key), Some(expected), Some(new)) => {
                        let current = self.entries.get(key).map(String::as_str).unwrap_or("");
                        if current == expected {
                            self.entries.insert(key.to_owned(), new.to_owned());
                            b"ok".to_vec()
                        } else {
                            current.as_bytes().to_vec()
                        }
                    }
                    _ => b"error: usage: cas <key> <expected> <new>".to_vec(),
                }
            }
            _ => b"error: unknown command".to_vec(),
        }
    }

    fn validate(&self, command: &[u8]) -> Result<(), Vec<u8>> {
        let Ok(text) = std::str::from_utf8(command) else {
            return Err(b"command is not utf-8".to_vec());
        };
        match text.split_once(' ') {
            Some(("put", rest)) if !rest.is_empty() => Ok(()),
            Some(("cas", rest)) if rest.splitn(3, ' ').count() == 3 => Ok(()),
            _ => Err(format!(
                "unknown command {text:?}: expected `put <key> <value>` or \
                 `cas <key> <expected> <new>`"
            )
            .into_bytes()),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match std::str::from_utf8(query)
            .ok()
            .and_then(|q| q.strip_prefix("get "))
        {
            Some(key) => self.get(key).unwrap_or("").as_bytes().to_vec(),
            None => b"error: usage: get <key>".to_vec(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = format!("{} {}\n", self.applied_count, self.digest);
        for (key, value) in &self.entries {
            out.push_str(key);
            out.push(' ');
            out.push_str(value);
            out.push('\n');
        }
        out.into_bytes()
    }

    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        *self = Self::default();
        let text = String::from_utf8_lossy(&snapshot);
        let mut lines = text.lines();
        if let Some((count, digest)) = lines.next().and_then(|l| l.split_once(' ')) {
            self.applied_count = count.parse().unwrap_or(0);
            self.digest = digest.parse().unwrap_or(0);
        }
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            self.entries.insert(key.to_owned(), value.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_put_get_cas() {
        let mut kv = KvStateMachine::new();
        assert_eq!(kv.apply(b"put a 1"), b"");
        assert_eq!(kv.apply(b"put a 2"), b"1");
        assert_eq!(kv.query(b"get a"), b"2");
        assert_eq!(kv.apply(b"cas a 1 3"), b"2");
        assert_eq!(kv.apply(b"cas a 2 3"), b"ok");
        assert_eq!(kv.query(b"get a"), b"3");
        assert_eq!(kv.applied_count(), 4);
    }

    #[test]
    fn kv_validates_commands_before_the_log() {
        let kv = KvStateMachine::new();
        assert_eq!(kv.validate(b"put a 1"), Ok(()));
        assert_eq!(kv.validate(b"cas a 1 2"), Ok(()));
        for bad in [&b"frob a"[..], b"cas a 1", b"put", b"\xff"] {
            assert!(kv.validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kv_snapshot_round_trips() {
        let mut kv = KvStateMachine::new();
        kv.apply(b"put k hello world");
        kv.apply(b"put j x");
        let mut copy = KvStateMachine::new();
        copy.restore_snapshot(kv.snapshot());
        assert_eq!(copy, kv);
    }

    #[test]
    fn digest_depends_on_order() {
        let mut a = KvStateMachine::new();
        let mut b = KvStateMachine::new();
        a.apply(b"put x 1");
        a.apply(b"put y 2");
        b.apply(b"put y 2");
        b.apply(b"put x 1");
        assert_ne!(a.digest(), b.digest());
    }
}
