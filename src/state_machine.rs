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
/// anyway, e.g. when proposed through a leader without the check). Queries: `get <key>` replies
/// with the value (empty if none). Keys contain no spaces; values are the rest of the command.
/// It also keeps the number of commands applied and a running digest of them, so tests can
/// compare two replicas cheaply.
///
/// Snapshots (§7) hold the map and the digest, so a replica restored from one has the digest
/// of every command the snapshot covers; [`applied_count`](Self::applied_count) counts only
/// what this instance applied itself and starts again at 0 on restore. The derived equality
/// compares all three, the count included.
///
/// The snapshot encoding, deterministic for a given state (keys in ascending order):
/// ```text
/// version: 1 byte (1) | digest: u64 LE | entry count: varint
/// then per entry, keys strictly ascending: key length: varint | key | value length: varint | value
/// ```
/// where a varint is unsigned LEB128 (7 bits a byte, low first, high bit set on all but the
/// last) and keys and values are UTF-8.
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

    /// How many commands have been applied since creation or the last restore (a restore sets
    /// it to 0: a snapshot does not carry it).
    pub fn applied_count(&self) -> u64 {
        self.applied_count
    }

    /// A digest of every command applied, in order (a multiply-rotate mix of each command eight
    /// bytes at a time, then its length), including those a restored snapshot covers.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    fn fold_digest(&mut self, command: &[u8]) {
        // A word at a time: a byte at a time made the digest a fifth of `apply`'s cost.
        const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
        let mix = |hash: u64, word: u64| (hash ^ word).wrapping_mul(MULTIPLIER).rotate_left(29);
        let mut words = command.chunks_exact(8);
        let mut hash = (&mut words).fold(self.digest, |hash, word| {
            mix(
                hash,
                u64::from_le_bytes(word.try_into().expect("eight bytes")),
            )
        });
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        hash = mix(hash, u64::from_le_bytes(tail));
        // The length ends each command: "ab" then "c" differs from "a" then "bc".
        self.digest = mix(hash, command.len() as u64);
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
                // Overwriting keeps the key's allocation.
                match self.entries.get_mut(key) {
                    Some(current) => std::mem::replace(current, value.to_owned()).into_bytes(),
                    None => {
                        self.entries.insert(key.to_owned(), value.to_owned());
                        Vec::new()
                    }
                }
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

    /// The map and the digest in the encoding of the type's documentation, built in one
    /// allocation of the exact size.
    fn snapshot(&self) -> Vec<u8> {
        let count = self.entries.len() as u64;
        let size = self
            .entries
            .iter()
            .fold(1 + 8 + varint_len(count), |size, (key, value)| {
                size + varint_len(key.len() as u64)
                    + key.len()
                    + varint_len(value.len() as u64)
                    + value.len()
            });
        let mut out = Vec::with_capacity(size);
        out.push(KV_SNAPSHOT_VERSION);
        out.extend_from_slice(&self.digest.to_le_bytes());
        put_varint(&mut out, count);
        for (key, value) in &self.entries {
            put_varint(&mut out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
            put_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value.as_bytes());
        }
        debug_assert_eq!(out.len(), size, "the size computed up front is exact");
        out
    }

    /// Replaces the map and digest with the snapshot's, and sets the applied count to 0.
    ///
    /// Bytes that are not a snapshot of this type (unknown version, truncated, trailing bytes,
    /// keys out of order or repeated, text that is not UTF-8) are logged as an error and leave
    /// the machine empty, as [`KvStateMachine::new`] makes it: the same on every replica given
    /// the same bytes, and plainly not the state any command sequence produced (digest 0).
    fn restore_snapshot(&mut self, snapshot: Vec<u8>) {
        // The old state goes first: the new map is built while only the snapshot's bytes are
        // held besides it.
        *self = Self::default();
        if let Err(reason) = self.restore_from(&snapshot) {
            log::error!(
                "KvStateMachine: not a snapshot of ours ({} bytes): {reason}; the map is left \
                 empty",
                snapshot.len()
            );
            *self = Self::default();
        }
    }
}

/// The first byte of a [`KvStateMachine`] snapshot.
const KV_SNAPSHOT_VERSION: u8 = 1;

impl KvStateMachine {
    /// Decodes `snapshot` into `self`, which is empty.
    fn restore_from(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut input = SnapshotReader(snapshot);
        let version = input.bytes(1, "version")?[0];
        if version != KV_SNAPSHOT_VERSION {
            return Err(format!(
                "format version {version}, this version reads {KV_SNAPSHOT_VERSION}"
            ));
        }
        let digest = input.bytes(8, "digest")?;
        self.digest = u64::from_le_bytes(digest.try_into().expect("8 bytes"));
        let count = input.varint("entry count")?;
        for number in 0..count {
            let key = input.text("key")?;
            let value = input.text("value")?;
            if self
                .entries
                .last_key_value()
                .is_some_and(|(last, _)| last.as_str() >= key)
            {
                return Err(format!(
                    "key {number} ({key:?}) is not after the one before it"
                ));
            }
            self.entries.insert(key.to_owned(), value.to_owned());
        }
        if !input.0.is_empty() {
            return Err(format!(
                "{} bytes after the last of {count} entries",
                input.0.len()
            ));
        }
        Ok(())
    }
}

/// Reads a snapshot's fields front to back; every read checks the bytes are there.
struct SnapshotReader<'a>(&'a [u8]);

impl<'a> SnapshotReader<'a> {
    fn bytes(&mut self, count: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < count {
            return Err(format!(
                "{what} needs {count} bytes, {} are left",
                self.0.len()
            ));
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.bytes(1, what)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("{what} does not fit 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what} does not fit 64 bits"))
    }

    /// A length-prefixed UTF-8 string.
    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let length = self.varint(what)?;
        let length = usize::try_from(length).map_err(|_| format!("{what} of {length} bytes"))?;
        let bytes = self.bytes(length, what)?;
        std::str::from_utf8(bytes).map_err(|error| format!("{what} is not UTF-8: {error}"))
    }
}

/// Appends `value` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes [`put_varint`] writes for `value`.
fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
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

    /// The digest depends on every command, its order and where one ends and the next begins.
    #[test]
    fn kv_digest_tells_commands_order_and_boundaries_apart() {
        let digest = |commands: &[&[u8]]| {
            let mut kv = KvStateMachine::new();
            for command in commands {
                kv.apply(command);
            }
            kv.digest()
        };
        let base = digest(&[b"put a 12345678", b"put b 9"]);
        assert_eq!(
            base,
            digest(&[b"put a 12345678", b"put b 9"]),
            "deterministic"
        );
        assert_ne!(base, digest(&[b"put b 9", b"put a 12345678"]), "order");
        assert_ne!(
            base,
            digest(&[b"put a 12345679", b"put b 9"]),
            "a byte in a full word"
        );
        assert_ne!(
            base,
            digest(&[b"put a 12345678", b"put b 8"]),
            "a byte in the tail"
        );
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]), "boundaries");
        assert_ne!(digest(&[b"x"]), digest(&[b"x\0"]), "a zero byte of padding");
        assert_ne!(digest(&[b"put a 1"]), 0);
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

    /// A map with keys and values of awkward lengths and characters.
    fn sample() -> KvStateMachine {
        let mut kv = KvStateMachine::new();
        kv.apply(b"put k hello world");
        kv.apply(b"put j x");
        kv.apply(b"put empty");
        kv.apply("put ünïcödé ✓ and spaces".as_bytes());
        kv.apply(format!("put long {}", "v".repeat(300)).as_bytes());
        kv.apply(b"cas j x y");
        kv
    }

    #[test]
    fn kv_snapshot_round_trips_with_its_digest() {
        let kv = sample();
        let snapshot = kv.snapshot();
        assert_eq!(snapshot.len(), snapshot.capacity(), "sized up front");
        let mut copy = KvStateMachine::new();
        copy.restore_snapshot(snapshot.clone());
        assert_eq!(copy.entries, kv.entries);
        assert_eq!(copy.digest(), kv.digest());
        assert_eq!(copy.applied_count(), 0, "counts from the restore");
        assert_eq!(copy.query(b"get j"), b"y");
        assert_eq!(
            copy.query("get ünïcödé".as_bytes()),
            "✓ and spaces".as_bytes()
        );
        assert_eq!(copy.snapshot(), snapshot, "deterministic");
        // Both go on alike: the digest continues from the snapshot's.
        let mut original = kv;
        original.apply(b"put z 1");
        copy.apply(b"put z 1");
        assert_eq!(copy.digest(), original.digest());
        assert_eq!(copy.applied_count(), 1);
        // An empty machine round-trips too.
        let mut empty = sample();
        empty.restore_snapshot(KvStateMachine::new().snapshot());
        assert_eq!(empty, KvStateMachine::new());
    }

    #[test]
    fn kv_snapshots_do_not_depend_on_insertion_order() {
        let mut a = KvStateMachine::new();
        let mut b = KvStateMachine::new();
        a.apply(b"put x 1");
        a.apply(b"put y 2");
        b.apply(b"put y 2");
        b.apply(b"put x 1");
        // Same map, different histories: only the digest differs.
        assert_ne!(a.digest(), b.digest());
        let (sa, sb) = (a.snapshot(), b.snapshot());
        assert_eq!(sa[9..], sb[9..]);
        assert_ne!(sa[1..9], sb[1..9]);
    }

    #[test]
    fn kv_restore_replaces_the_previous_state() {
        let mut source = KvStateMachine::new();
        source.apply(b"put only this");
        let mut kv = sample();
        kv.restore_snapshot(source.snapshot());
        assert_eq!(kv.entries.len(), 1);
        assert_eq!(kv.get("k"), None);
        assert_eq!(kv.get("only"), Some("this"));
        assert_eq!(kv.digest(), source.digest());
    }

    #[test]
    fn kv_malformed_snapshots_leave_an_empty_map_without_panicking() {
        let good = sample().snapshot();
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![2],
            b"1 2\nk v\n".to_vec(),
            [&good[..], b"x"].concat(),
            // A count far beyond the bytes.
            [&good[..9], &[0xff, 0xff, 0xff, 0xff, 0x0f][..]].concat(),
            // A varint longer than 64 bits.
            [&good[..9], &[0xff; 11][..]].concat(),
        ];
        // Every truncation.
        bad.extend((0..good.len()).map(|length| good[..length].to_vec()));
        // Keys out of order: the same entry twice.
        let mut twice = KvStateMachine::new();
        twice.apply(b"put a 1");
        let one = twice.snapshot();
        let entry = &one[10..];
        let mut repeated = one[..9].to_vec();
        repeated.push(2);
        repeated.extend_from_slice(entry);
        repeated.extend_from_slice(entry);
        bad.push(repeated);
        // A key that is not UTF-8.
        let mut not_utf8 = one.clone();
        not_utf8[11] = 0xff;
        bad.push(not_utf8);
        for snapshot in bad {
            let mut kv = sample();
            kv.restore_snapshot(snapshot.clone());
            assert_eq!(kv, KvStateMachine::new(), "{snapshot:?}");
        }
        // Every single-byte corruption: restores something or nothing, never panics.
        for position in 0..good.len() {
            let mut corrupted = good.clone();
            corrupted[position] ^= 0x5a;
            KvStateMachine::new().restore_snapshot(corrupted);
        }
    }

    #[test]
    fn varints_round_trip_and_have_the_computed_length() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut reader = SnapshotReader(&out);
            assert_eq!(reader.varint("value"), Ok(value));
            assert!(reader.0.is_empty());
        }
    }
}
