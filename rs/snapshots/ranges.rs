//! `ByteRanges`: the set of byte ranges an upload has written, as disjoint, merged intervals in
//! a `BTreeMap` (ordered, so identical on every replica).

use std::collections::BTreeMap;

/// Disjoint half-open intervals `[start, end)`, merged when they touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteRanges {
    /// start → end
    intervals: BTreeMap<u64, u64>,
}

impl ByteRanges {
    /// Adds `[start, end)`. O(log n + merged intervals).
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with an interval that starts before and reaches `start`.
        if let Some((&s, &e)) = self.intervals.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.intervals.remove(&s);
        }
        // Swallow every interval that starts inside `[start, end]`.
        let inside: Vec<(u64, u64)> = self
            .intervals
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in inside {
            end = end.max(e);
            self.intervals.remove(&s);
        }
        self.intervals.insert(start, end);
    }

    /// The first range inside `[0, len)` not covered, if any.
    pub fn first_gap(&self, len: u64) -> Option<(u64, u64)> {
        let mut covered_to = 0;
        for (&s, &e) in &self.intervals {
            if s > covered_to {
                return Some((covered_to, s.min(len)));
            }
            covered_to = covered_to.max(e);
            if covered_to >= len {
                return None;
            }
        }
        (covered_to < len).then_some((covered_to, len))
    }

    /// Bytes covered.
    pub fn covered(&self) -> u64 {
        self.intervals
            .iter()
            .map(|(s, e)| e.saturating_sub(*s))
            .sum()
    }

    /// The intervals in order, for hashing and display.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.intervals.iter().map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_and_gaps_are_found() {
        let mut r = ByteRanges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.first_gap(50), Some((0, 10)));
        r.insert(0, 10);
        assert_eq!(r.first_gap(50), Some((20, 30)));
        r.insert(15, 35);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 40)]);
        assert_eq!(r.first_gap(40), None);
        assert_eq!(r.first_gap(41), Some((40, 41)));
        r.insert(5, 5);
        assert_eq!(r.covered(), 40);
    }
}
