//! Sets of sequence numbers, kept per segment for what it stores and what is acknowledged.

/// A set of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RangeSet(pub(super) Vec<(u64, u64)>);

impl RangeSet {
    /// Adds `first..=last`, merging with neighbours.
    pub(super) fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let start = self
            .0
            .partition_point(|&(_, e)| e.saturating_add(1) < first);
        let (mut lo, mut hi, mut end) = (first, last, start);
        while let Some(&(s, e)) = self.0.get(end) {
            if s > hi.saturating_add(1) {
                break;
            }
            lo = lo.min(s);
            hi = hi.max(e);
            end += 1;
        }
        self.0.splice(start..end, std::iter::once((lo, hi)));
    }

    pub(super) fn contains(&self, x: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e < x);
        self.0.get(i).is_some_and(|&(s, _)| s <= x)
    }

    pub(super) fn count(&self) -> u64 {
        self.0.iter().map(|&(s, e)| e - s + 1).sum()
    }

    pub(super) fn first(&self) -> Option<u64> {
        self.0.first().map(|&(s, _)| s)
    }

    /// The parts of `first..=last` that are in the set.
    pub(super) fn intersect(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = self.0.partition_point(|&(_, e)| e < first);
        self.0[start..]
            .iter()
            .take_while(move |&&(s, _)| s <= last)
            .map(move |&(s, e)| (s.max(first), e.min(last)))
    }

    /// The smallest member not in `other`.
    pub(super) fn first_not_in(&self, other: &RangeSet) -> Option<u64> {
        for &(s, e) in &self.0 {
            let mut x = s;
            while x <= e {
                let i = other.0.partition_point(|&(_, oe)| oe < x);
                match other.0.get(i) {
                    Some(&(os, oe)) if os <= x => {
                        if oe >= e {
                            break;
                        }
                        x = oe + 1;
                    }
                    _ => return Some(x),
                }
            }
        }
        None
    }
}
