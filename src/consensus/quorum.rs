//! Majority arithmetic as pure functions (§5.2 elections, §5.3 commitment).

use crate::types::LogIndex;

/// The outcome of a vote count so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority refused: winning is no longer possible.
    Lost,
    /// Neither yet.
    Pending,
}

/// How many voters form a majority of `voter_count`. The empty configuration needs 1, which it
/// can never reach: it can elect no one and commit nothing.
pub fn majority(voter_count: usize) -> usize {
    voter_count / 2 + 1
}

/// Tallies `granted` and `rejected` votes among `voter_count` voters.
pub fn vote_result(voter_count: usize, granted: usize, rejected: usize) -> VoteResult {
    let needed = majority(voter_count);
    if granted >= needed {
        VoteResult::Won
    } else if voter_count.saturating_sub(rejected) < needed {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// The highest index that a majority of voters hold, given each voter's match index (the leader's
/// own counted only once durable). Reorders `match_indexes`. Returns 0 for no voters.
pub fn committed_index(match_indexes: &mut [LogIndex]) -> LogIndex {
    agreed_value(match_indexes)
}

/// The highest value that at least a majority of voters have reached, given each voter's value
/// (a match index, a read round answered). Reorders `values`. The default for no voters.
pub fn agreed_value<T: Ord + Copy + Default>(values: &mut [T]) -> T {
    if values.is_empty() {
        return T::default();
    }
    values.sort_unstable_by(|a, b| b.cmp(a));
    // Sorted high to low, the value at position majority-1 is reached by at least a majority.
    values[majority(values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(values: &[u64]) -> Vec<LogIndex> {
        values.iter().copied().map(LogIndex).collect()
    }

    #[test]
    fn committed_index_table() {
        let table: &[(&[u64], u64)] = &[
            (&[], 0),
            (&[5], 5),
            (&[5, 0], 0),
            (&[5, 4], 4),
            (&[5, 0, 0], 0),
            (&[5, 3, 0], 3),
            (&[5, 3, 4], 4),
            (&[5, 5, 0, 0], 0),
            (&[5, 5, 5, 0], 5),
            (&[9, 1, 0, 0, 0], 0),
            (&[9, 7, 0, 0, 0], 0),
            (&[9, 7, 2, 0, 0], 2),
            (&[1, 2, 3, 4, 5], 3),
            (&[7, 7, 7, 1, 1, 1, 1], 1),
            (&[7, 7, 7, 7, 1, 1, 1], 7),
        ];
        for (acks, want) in table {
            let mut acks = indexes(acks);
            assert_eq!(committed_index(&mut acks), LogIndex(*want), "acks {acks:?}");
        }
    }

    #[test]
    fn vote_result_table() {
        use VoteResult::*;
        let table = [
            (0, 0, 0, Lost),
            (1, 1, 0, Won),
            (1, 0, 0, Pending),
            (3, 1, 0, Pending),
            (3, 2, 0, Won),
            (3, 1, 1, Pending),
            (3, 1, 2, Lost),
            (4, 2, 1, Pending),
            (4, 2, 2, Lost),
            (4, 3, 0, Won),
            (5, 2, 2, Pending),
            (5, 3, 2, Won),
            (5, 1, 3, Lost),
            (7, 4, 0, Won),
            (7, 3, 3, Pending),
            (7, 3, 4, Lost),
        ];
        for (voters, granted, rejected, want) in table {
            assert_eq!(
                vote_result(voters, granted, rejected),
                want,
                "voters {voters} granted {granted} rejected {rejected}"
            );
        }
    }

    /// The sort-based answer agrees with a naive count over every small case.
    #[test]
    fn committed_index_matches_naive_count() {
        for voter_count in 0..=5usize {
            let combos = 5u64.pow(voter_count as u32);
            for mut code in 0..combos {
                let mut acks = Vec::new();
                for _ in 0..voter_count {
                    acks.push(LogIndex(code % 5));
                    code /= 5;
                }
                let naive = (0..5u64)
                    .rev()
                    .find(|&i| acks.iter().filter(|a| a.0 >= i).count() >= majority(voter_count))
                    .unwrap_or(0);
                let naive = if voter_count == 0 { 0 } else { naive };
                let got = committed_index(&mut acks.clone());
                assert_eq!(got, LogIndex(naive), "acks {acks:?}");
            }
        }
    }
}
