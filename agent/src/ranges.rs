//! Sets of dirty byte ranges of one file, kept sorted and merged.

/// Ranges closer than this are merged: one read and one op beat two.
const MERGE_GAP: u64 = 512;
/// Past this many separate ranges the closest ones are merged to bound memory.
const MAX_RANGES: usize = 4096;

/// Half-open byte ranges `[start, end)`, sorted, disjoint, separated by more than [`MERGE_GAP`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Total bytes covered. A range open to the end of the file ("whatever lies
    /// past this offset", usually nothing) counts for nothing.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().filter(|(_, e)| *e != u64::MAX).fold(0u64, |sum, (s, e)| sum.saturating_add(e - s))
    }

    pub fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        // First range that could touch [start, end).
        let first = self.ranges.partition_point(|&(_, e)| e.saturating_add(MERGE_GAP) < start);
        let mut last = first;
        let (mut new_start, mut new_end) = (start, end);
        while last < self.ranges.len() && self.ranges[last].0 <= end.saturating_add(MERGE_GAP) {
            new_start = new_start.min(self.ranges[last].0);
            new_end = new_end.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [(new_start, new_end)]);
        if self.ranges.len() > MAX_RANGES {
            self.merge_closest();
        }
    }

    /// Takes `[start, end)` out of the set.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e <= start || s >= end {
                kept.push((s, e));
                continue;
            }
            if s < start {
                kept.push((s, start));
            }
            if e > end {
                kept.push((end, e));
            }
        }
        self.ranges = kept;
    }

    fn merge_closest(&mut self) {
        let Some(i) = (0..self.ranges.len() - 1).min_by_key(|&i| self.ranges[i + 1].0 - self.ranges[i].1) else {
            return;
        };
        self.ranges[i].1 = self.ranges[i + 1].1;
        self.ranges.remove(i + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_close_ranges() {
        let mut set = RangeSet::default();
        set.insert(0, 4096);
        set.insert(8192, 4096);
        set.insert(4096, 100);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 4196), (8192, 12288)]);
        set.insert(4196, 3996);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 12288)]);
        set.insert(1 << 30, 1);
        assert_eq!(set.bytes(), 12289);
    }

    #[test]
    fn removes_the_middle_and_the_edges() {
        let mut set = RangeSet::default();
        set.insert(0, 10_000);
        set.insert(20_000, 1000);
        set.remove(4096, 8192);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 4096), (8192, 10_000), (20_000, 21_000)]);
        set.remove(0, 20_500);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(20_500, 21_000)]);
        set.remove(0, u64::MAX);
        assert!(set.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let mut set = RangeSet::default();
        for i in 0..(MAX_RANGES as u64 + 10) {
            set.insert(i * 10_000, 1);
        }
        assert!(set.ranges.len() <= MAX_RANGES);
    }
}
