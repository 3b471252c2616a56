//! The cluster's configuration (thesis chapter 4): which servers vote, which only learn, and the
//! address each listens on.
//!
//! A configuration lives in the log as a [`EntryKind::Configuration`](crate::log::EntryKind)
//! entry and in every snapshot's meta. Each server uses the newest configuration in its log,
//! committed or not (thesis §4.1), so a configuration takes effect as soon as it is appended and
//! is undone if its entry is truncated. Changes add or remove one server at a time, so the
//! majorities of the old and new configuration always overlap.
//!
//! The byte encoding (used in log entries and snapshots) is: a format byte (1), the member count
//! (u32 little-endian), then per member in ascending id order its id (u64 LE), a flags byte (bit 0:
//! voter), the address length (u16 LE) and the address in UTF-8.

use crate::types::ServerId;
use std::collections::BTreeMap;
use std::fmt;

/// Most members a configuration may hold; more is damage, not a cluster.
pub const MEMBERS_MAX: usize = 1024;

/// Longest member address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;

const FORMAT: u8 = 1;

/// The longest encoding of a configuration of `members` members, each address at its longest.
pub fn encoded_bytes_max(members: usize) -> u64 {
    5 + members as u64 * (8 + 1 + 2 + ADDRESS_BYTES_MAX as u64)
}
const VOTER_FLAG: u8 = 1;

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// Where it listens for peers and clients (`host:port`); empty if unknown, as for the members
    /// a [`Consensus`](crate::consensus::Consensus) is built with by id only.
    pub address: String,
    /// Whether it votes and counts toward commitment; a learner only receives the log.
    pub voter: bool,
}

/// A configuration: voters and learners by id, with their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    members: BTreeMap<ServerId, Member>,
}

impl Membership {
    /// A configuration of `voters`, addresses unknown.
    pub fn from_voters(voters: impl IntoIterator<Item = ServerId>) -> Self {
        let members = voters
            .into_iter()
            .map(|id| {
                let member = Member {
                    address: String::new(),
                    voter: true,
                };
                (id, member)
            })
            .collect();
        Membership { members }
    }

    /// Adds (or replaces) `id` as a voter at `address`.
    #[must_use]
    pub fn with_voter(mut self, id: ServerId, address: impl Into<String>) -> Self {
        self.members.insert(
            id,
            Member {
                address: address.into(),
                voter: true,
            },
        );
        self
    }

    /// Adds (or replaces) `id` as a learner at `address`.
    #[must_use]
    pub fn with_learner(mut self, id: ServerId, address: impl Into<String>) -> Self {
        self.members.insert(
            id,
            Member {
                address: address.into(),
                voter: false,
            },
        );
        self
    }

    /// Removes `id`, if present.
    #[must_use]
    pub fn without(mut self, id: ServerId) -> Self {
        self.members.remove(&id);
        self
    }

    /// Whether there are no members at all (a server waiting to be added).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: ServerId) -> bool {
        self.members.contains_key(&id)
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: ServerId) -> bool {
        self.members.get(&id).is_some_and(|member| member.voter)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: ServerId) -> bool {
        self.members.get(&id).is_some_and(|member| !member.voter)
    }

    /// `id`'s entry, if it is a member.
    pub fn member(&self, id: ServerId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// `id`'s address, if it is a member whose address is known.
    pub fn address(&self, id: ServerId) -> Option<&str> {
        self.members
            .get(&id)
            .map(|member| member.address.as_str())
            .filter(|address| !address.is_empty())
    }

    /// Every member in ascending id order.
    pub fn members(&self) -> impl Iterator<Item = (ServerId, &Member)> + '_ {
        self.members.iter().map(|(&id, member)| (id, member))
    }

    /// Every member's id, ascending.
    pub fn ids(&self) -> Vec<ServerId> {
        self.members.keys().copied().collect()
    }

    /// The voters, ascending.
    pub fn voters(&self) -> Vec<ServerId> {
        self.members()
            .filter(|(_, member)| member.voter)
            .map(|(id, _)| id)
            .collect()
    }

    /// The learners, ascending.
    pub fn learners(&self) -> Vec<ServerId> {
        self.members()
            .filter(|(_, member)| !member.voter)
            .map(|(id, _)| id)
            .collect()
    }

    /// How many voters there are.
    pub fn voter_count(&self) -> usize {
        self.members.values().filter(|member| member.voter).count()
    }

    /// Whether `self` and `other` have the same members in the same roles (addresses aside).
    pub fn same_roles(&self, other: &Membership) -> bool {
        self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|((a, ma), (b, mb))| a == b && ma.voter == mb.voter)
    }

    /// Checks the limits a configuration must keep: ids are not 0, at most [`MEMBERS_MAX`]
    /// members, addresses at most [`ADDRESS_BYTES_MAX`] bytes.
    ///
    /// # Errors
    /// Words naming the offending member or limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.members.len() > MEMBERS_MAX {
            return Err(format!(
                "{} members, more than the limit of {MEMBERS_MAX}",
                self.members.len()
            ));
        }
        for (id, member) in &self.members {
            if id.0 == 0 {
                return Err("server id 0 is reserved for \"no server\"".to_string());
            }
            if member.address.len() > ADDRESS_BYTES_MAX {
                return Err(format!(
                    "address of {id} is {} bytes, more than the limit of {ADDRESS_BYTES_MAX}",
                    member.address.len()
                ));
            }
        }
        Ok(())
    }

    /// The byte encoding described in the module documentation.
    ///
    /// # Panics
    /// If the configuration breaks [`Membership::validate`]'s limits; the core validates every
    /// configuration before it encodes one.
    pub fn encode(&self) -> Vec<u8> {
        if let Err(error) = self.validate() {
            panic!("encoding an invalid configuration: {error}");
        }
        let mut out = Vec::with_capacity(5 + self.members.len() * 24);
        out.push(FORMAT);
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for (id, member) in &self.members {
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(if member.voter { VOTER_FLAG } else { 0 });
            out.extend_from_slice(&(member.address.len() as u16).to_le_bytes());
            out.extend_from_slice(member.address.as_bytes());
        }
        out
    }

    /// Reads [`Membership::encode`]'s bytes, checking everything: the format, the limits, ids in
    /// ascending order, flags, UTF-8 addresses, and no bytes left over.
    ///
    /// # Errors
    /// Words saying what is wrong and where.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, offset: 0 };
        let format = reader.take(1, "format byte")?[0];
        if format != FORMAT {
            return Err(format!("unknown configuration format {format}"));
        }
        let count = u32::from_le_bytes(reader.array("member count")?) as usize;
        if count > MEMBERS_MAX {
            return Err(format!(
                "{count} members, more than the limit of {MEMBERS_MAX}"
            ));
        }
        let mut members = BTreeMap::new();
        let mut previous = ServerId(0);
        for position in 0..count {
            let id = ServerId(u64::from_le_bytes(reader.array("member id")?));
            if id <= previous {
                return Err(format!(
                    "member {position} has id {id}, not above the previous {previous}"
                ));
            }
            previous = id;
            let flags = reader.take(1, "member flags")?[0];
            if flags & !VOTER_FLAG != 0 {
                return Err(format!("member {id} has unknown flags {flags:#04x}"));
            }
            let length = u16::from_le_bytes(reader.array("address length")?) as usize;
            if length > ADDRESS_BYTES_MAX {
                return Err(format!(
                    "address of {id} is {length} bytes, more than the limit of \
                     {ADDRESS_BYTES_MAX}"
                ));
            }
            let address = std::str::from_utf8(reader.take(length, "address")?)
                .map_err(|_| format!("address of {id} is not UTF-8"))?
                .to_string();
            members.insert(
                id,
                Member {
                    address,
                    voter: flags & VOTER_FLAG != 0,
                },
            );
        }
        if reader.offset != bytes.len() {
            return Err(format!(
                "{} bytes left over after {count} members",
                bytes.len() - reader.offset
            ));
        }
        Ok(Membership { members })
    }
}

impl fmt::Display for Membership {
    /// `voters [1, 2, 3] learners [4]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: Vec<ServerId>| {
            ids.iter()
                .map(|id| id.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(f, "voters [{}]", list(self.voters()))?;
        let learners = self.learners();
        if !learners.is_empty() {
            write!(f, " learners [{}]", list(learners))?;
        }
        Ok(())
    }
}

/// Reads fields off a byte slice, naming what was missing.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .offset
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "configuration ends at byte {} before its {what}",
                    self.bytes.len()
                )
            })?;
        let field = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(field)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let field = self.take(N, what)?;
        Ok(field.try_into().expect("take returned N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Membership {
        Membership::default()
            .with_voter(ServerId(1), "127.0.0.1:7001")
            .with_voter(ServerId(3), "127.0.0.1:7003")
            .with_learner(ServerId(9), "db9.example:7000")
    }

    #[test]
    fn encoding_round_trips() {
        for membership in [
            Membership::default(),
            Membership::from_voters([ServerId(2)]),
            sample(),
        ] {
            assert_eq!(Membership::decode(&membership.encode()), Ok(membership));
        }
    }

    #[test]
    fn roles_and_display() {
        let membership = sample();
        assert_eq!(membership.voters(), vec![ServerId(1), ServerId(3)]);
        assert_eq!(membership.learners(), vec![ServerId(9)]);
        assert!(membership.is_voter(ServerId(1)) && !membership.is_voter(ServerId(9)));
        assert!(membership.is_learner(ServerId(9)) && !membership.is_learner(ServerId(2)));
        assert_eq!(membership.voter_count(), 2);
        assert_eq!(membership.to_string(), "voters [1, 3] learners [9]");
        let promoted = membership
            .clone()
            .with_voter(ServerId(9), "db9.example:7000");
        assert!(!promoted.same_roles(&membership));
        assert!(membership.same_roles(&membership.clone().with_learner(ServerId(9), "x:1")));
        assert_eq!(promoted.without(ServerId(1)).to_string(), "voters [3, 9]");
        assert_eq!(
            Membership::from_voters([ServerId(4)]).address(ServerId(4)),
            None
        );
    }

    /// Every truncation and several corruptions of a valid encoding are refused with words, never
    /// a panic.
    #[test]
    fn damaged_encodings_are_refused() {
        let bytes = sample().encode();
        for length in 0..bytes.len() {
            let error = Membership::decode(&bytes[..length]).unwrap_err();
            assert!(error.contains("configuration ends"), "{error}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Membership::decode(&extra)
            .unwrap_err()
            .contains("left over"));
        let mut format = bytes.clone();
        format[0] = 7;
        assert!(Membership::decode(&format)
            .unwrap_err()
            .contains("format 7"));
        let mut flags = bytes.clone();
        flags[13] = 0x80; // member 1's flags
        assert!(Membership::decode(&flags).unwrap_err().contains("flags"));
        let mut order = bytes.clone();
        order[5..13].copy_from_slice(&5u64.to_le_bytes()); // member 1 becomes 5, above 3
        assert!(Membership::decode(&order)
            .unwrap_err()
            .contains("not above"));
        let mut count = bytes;
        count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Membership::decode(&count).unwrap_err().contains("limit"));
    }

    #[test]
    fn validation_names_the_limit() {
        let zero = Membership::from_voters([ServerId(0)]);
        assert!(zero.validate().unwrap_err().contains("reserved"));
        let long = Membership::default().with_voter(ServerId(1), "x".repeat(300));
        assert!(long.validate().unwrap_err().contains("limit of 255"));
    }
}
