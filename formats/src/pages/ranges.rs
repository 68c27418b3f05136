//! [`PageRanges`]: a set of address ranges, for the page store's "a later
//! run wins" rule. The dumper keeps one per process for the pages it copied
//! before the freeze (which of them a later run must supersede), restore one
//! for the pages it wrote (which a later `Zero` run must clear), `cr inspect`
//! one to count superseded pages.
//!
//! Ranges are half-open byte ranges `[start, end)`, kept sorted, disjoint
//! and merged (no two touch), so the set stays as small as the memory is
//! fragmented, not as large as it is big.

use std::collections::BTreeMap;

/// A set of address ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRanges {
    /// start -> end, disjoint, not touching.
    map: BTreeMap<u64, u64>,
}

impl PageRanges {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes covered.
    pub fn bytes(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(s, e)| (*s, *e))
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // A range that starts before and reaches `start` merges.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.map.remove(&s);
            }
        }
        // Ranges that start inside (or right at the end) merge.
        let inside: Vec<(u64, u64)> = self.map.range(start..=end).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in inside {
            end = end.max(e);
            self.map.remove(&s);
        }
        self.map.insert(start, end);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        for (s, e) in self.overlaps(start, end) {
            // `overlaps` clipped them; find the stored range holding each.
            let Some((&rs, &re)) = self.map.range(..=s).next_back() else {
                continue;
            };
            debug_assert!(rs <= s && e <= re);
            self.map.remove(&rs);
            if rs < s {
                self.map.insert(rs, s);
            }
            if e < re {
                self.map.insert(e, re);
            }
        }
    }

    /// The parts of `[start, end)` inside the set, ascending.
    pub fn overlaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        if let Some((_, &e)) = self.map.range(..start).next_back() {
            if e > start {
                out.push((start, e.min(end)));
            }
        }
        for (&s, &e) in self.map.range(start..end) {
            out.push((s, e.min(end)));
        }
        out
    }

    /// The parts of `[start, end)` outside the set, ascending.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        for (s, e) in self.overlaps(start, end) {
            if s > at {
                out.push((at, s));
            }
            at = e;
        }
        if at < end {
            out.push((at, end));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &[(u64, u64)]) -> PageRanges {
        let mut s = PageRanges::new();
        for &(a, b) in r {
            s.insert(a, b);
        }
        s
    }

    #[test]
    fn inserts_merge_and_removes_split() {
        let mut s = set(&[(10, 20), (30, 40), (20, 25), (50, 60)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(10, 25), (30, 40), (50, 60)]);
        s.insert(24, 52);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(10, 60)]);
        s.remove(15, 20);
        s.remove(58, 70);
        s.remove(0, 11);
        assert_eq!(s.iter().collect::<Vec<_>>(), [(11, 15), (20, 58)]);
        assert_eq!(s.bytes(), 4 + 38);
        s.remove(0, 100);
        assert!(s.is_empty());
    }

    #[test]
    fn overlaps_and_gaps_cover_the_query() {
        let s = set(&[(10, 20), (30, 40)]);
        assert_eq!(s.overlaps(15, 35), [(15, 20), (30, 35)]);
        assert_eq!(s.gaps(15, 35), [(20, 30)]);
        assert_eq!(s.gaps(0, 50), [(0, 10), (20, 30), (40, 50)]);
        assert_eq!(s.overlaps(20, 30), []);
        assert_eq!(s.gaps(12, 18), []);
        assert_eq!(s.overlaps(5, 5), []);
    }
}
