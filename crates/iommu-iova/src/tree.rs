//! The ordered range tree (Linux's `iova_domain` rbtree): allocated and
//! reserved ranges of granule frames, keyed by their first frame.
//!
//! Allocation searches top-down below a limit, starting where the last
//! allocation of the same class (32-bit or not) ended, so that packing
//! downwards costs a lookup rather than a walk over every live range. A
//! failed search below 4 GiB remembers its size: later 32-bit requests of
//! that size or larger fail at once until something below 4 GiB is freed.
//!
//! The tree is not synchronised; [`IovaDomain`](crate::IovaDomain) wraps it
//! in a lock.

use crate::{IovaError, IovaRange};
use alloc::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocated,
    Reserved,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    pfn_hi: u64,
    kind: Kind,
}

/// A request that found no room. Linux remembers only the size; the limit
/// and alignment are kept too so that a request with a higher limit, or an
/// unaligned one after an aligned failure, still gets a search.
#[derive(Clone, Copy, Debug)]
struct Failure {
    size: u64,
    limit: u64,
    aligned: bool,
}

impl Failure {
    /// Whether a request must fail because this one did: no larger room
    /// under a higher limit, and no looser alignment.
    fn implies(&self, size: u64, limit: u64, aligned: bool) -> bool {
        size >= self.size && limit <= self.limit && (aligned || !self.aligned)
    }
}

/// Where the next top-down search of a class starts: below the node at this
/// first frame, or from the limit when `None` (Linux's anchor node).
type Cached = Option<u64>;

/// Allocated and reserved ranges, ordered by first frame.
#[derive(Debug)]
pub struct IovaTree {
    nodes: BTreeMap<u64, Node>,
    start_pfn: u64,
    max_pfn: u64,
    dma_32bit_pfn: u64,
    /// The last failed request, while no frame below 4 GiB has been freed
    /// since: 32-bit requests it implies must fail, fail at once.
    failed32: Option<Failure>,
    cached: Cached,
    cached32: Cached,
}

/// `ceil(log2(size))` for `size >= 1`.
pub(crate) const fn order_base_2(size: u64) -> u32 {
    if size <= 1 {
        0
    } else {
        64 - (size - 1).leading_zeros()
    }
}

impl IovaTree {
    /// An empty tree handing out frames in `[start_pfn, max_pfn]`;
    /// `dma_32bit_pfn` is the first frame at or above 4 GiB.
    pub fn new(start_pfn: u64, max_pfn: u64, dma_32bit_pfn: u64) -> Self {
        Self {
            nodes: BTreeMap::new(),
            start_pfn,
            max_pfn,
            dma_32bit_pfn,
            failed32: None,
            cached: None,
            cached32: None,
        }
    }

    /// Number of ranges (allocated and reserved).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds no range at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Allocates `size` frames ending at or below `limit_pfn` (inclusive),
    /// aligned to `size` rounded up to a power of two when `size_aligned`.
    ///
    /// # Errors
    /// [`IovaError::InvalidSize`] for zero frames; [`IovaError::NoSpace`]
    /// when no gap fits.
    pub fn alloc(
        &mut self,
        size: u64,
        limit_pfn: u64,
        size_aligned: bool,
    ) -> Result<u64, IovaError> {
        if size == 0 {
            return Err(IovaError::InvalidSize);
        }
        // Exclusive limit, clamped to the domain.
        let limit = limit_pfn.min(self.max_pfn).saturating_add(1);
        let is32 = limit <= self.dma_32bit_pfn;
        if is32
            && self
                .failed32
                .is_some_and(|f| f.implies(size, limit, size_aligned))
        {
            return Err(IovaError::NoSpace);
        }
        let align_mask = if size_aligned {
            u64::MAX.checked_shl(order_base_2(size)).unwrap_or(0)
        } else {
            u64::MAX
        };
        let cached = if is32 { self.cached32 } else { self.cached };
        let first_high = cached.map_or(limit, |lo| lo.min(limit));
        let found = self
            .search(first_high, self.start_pfn, size, align_mask)
            .or_else(|| {
                // The cached point may sit below space freed since: search
                // the part above it once.
                let retry_hi = cached.and_then(|lo| self.nodes.get(&lo).map(|n| n.pfn_hi))?;
                if retry_hi >= limit {
                    return None;
                }
                self.search(limit, retry_hi + 1, size, align_mask)
            });
        let Some(pfn_lo) = found else {
            self.failed32 = Some(Failure {
                size,
                limit,
                aligned: size_aligned,
            });
            return Err(IovaError::NoSpace);
        };
        let pfn_hi = pfn_lo + size - 1;
        self.nodes.insert(
            pfn_lo,
            Node {
                pfn_hi,
                kind: Kind::Allocated,
            },
        );
        if pfn_hi < self.dma_32bit_pfn {
            self.cached32 = Some(pfn_lo);
        } else {
            self.cached = Some(pfn_lo);
        }
        Ok(pfn_lo)
    }

    /// Allocates `count` adjacent ranges of `size` frames as one block
    /// aligned to its whole size, ending at or below `limit_pfn`; returns the
    /// first frame of the block. Each range is its own node, freed on its own.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc) for the whole block.
    pub fn alloc_block(&mut self, size: u64, count: u64, limit_pfn: u64) -> Result<u64, IovaError> {
        let total = size.checked_mul(count).ok_or(IovaError::InvalidSize)?;
        let first = self.alloc(total, limit_pfn, true)?;
        if count > 1 {
            self.nodes.insert(
                first,
                Node {
                    pfn_hi: first + size - 1,
                    kind: Kind::Allocated,
                },
            );
            for i in 1..count {
                let lo = first + i * size;
                self.nodes.insert(
                    lo,
                    Node {
                        pfn_hi: lo + size - 1,
                        kind: Kind::Allocated,
                    },
                );
            }
        }
        Ok(first)
    }

    /// The highest aligned start of `size` free frames in `[low, high)`.
    fn search(&self, mut high: u64, low: u64, size: u64, align_mask: u64) -> Option<u64> {
        for (&lo, node) in self.nodes.range(..high).rev() {
            let cand = high.checked_sub(size)? & align_mask;
            if cand < low {
                return None;
            }
            if cand > node.pfn_hi {
                return Some(cand);
            }
            high = high.min(lo);
        }
        let cand = high.checked_sub(size)? & align_mask;
        (cand >= low).then_some(cand)
    }

    /// The allocated range containing `pfn`.
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        let (&lo, node) = self.nodes.range(..=pfn).next_back()?;
        (node.kind == Kind::Allocated && pfn <= node.pfn_hi).then_some(IovaRange {
            pfn_lo: lo,
            pfn_hi: node.pfn_hi,
        })
    }

    /// Frees the allocated range containing `pfn` and returns it.
    ///
    /// # Errors
    /// [`IovaError::NotAllocated`] when no allocated range contains `pfn`
    /// (reserved ranges are never freed this way).
    pub fn free(&mut self, pfn: u64) -> Result<IovaRange, IovaError> {
        let range = self.find(pfn).ok_or(IovaError::NotAllocated)?;
        self.remove(range);
        Ok(range)
    }

    /// Frees the allocated range that starts exactly at `pfn`; used for
    /// ranges coming back from the caches, which always name their start.
    pub(crate) fn free_exact(&mut self, pfn: u64) -> bool {
        match self.nodes.get(&pfn) {
            Some(n) if n.kind == Kind::Allocated => {
                let r = IovaRange {
                    pfn_lo: pfn,
                    pfn_hi: n.pfn_hi,
                };
                self.remove(r);
                true
            }
            _ => false,
        }
    }

    /// Removes `r`, a range [`find`](Self::find) returned.
    pub(crate) fn remove(&mut self, r: IovaRange) {
        // Keep the cached search points valid (they must name live nodes):
        // a freed range at or above a cached point moves it to the next node up.
        let next_up = self.nodes.range(r.pfn_lo + 1..).next().map(|(&lo, _)| lo);
        if let Some(c32) = self.cached32 {
            if c32 == r.pfn_lo || (r.pfn_hi < self.dma_32bit_pfn && r.pfn_lo >= c32) {
                self.cached32 = next_up;
            }
        }
        if r.pfn_lo < self.dma_32bit_pfn {
            self.failed32 = None;
        }
        if let Some(c) = self.cached {
            if r.pfn_lo >= c {
                self.cached = next_up;
            }
        }
        self.nodes.remove(&r.pfn_lo);
    }

    /// Reserves `[pfn_lo, pfn_hi]` so it is never handed out. Overlapping or
    /// adjacent reserved ranges merge into one.
    ///
    /// # Errors
    /// [`IovaError::InvalidRange`] when `pfn_lo > pfn_hi`;
    /// [`IovaError::Overlap`] when a live allocation overlaps the range (the
    /// tree is then unchanged).
    pub fn reserve(&mut self, pfn_lo: u64, pfn_hi: u64) -> Result<IovaRange, IovaError> {
        if pfn_lo > pfn_hi {
            return Err(IovaError::InvalidRange);
        }
        // Every node touching [lo - 1, hi + 1].
        let from = self
            .nodes
            .range(..pfn_lo)
            .next_back()
            .filter(|(_, n)| n.pfn_hi.saturating_add(1) >= pfn_lo)
            .map_or(pfn_lo, |(&lo, _)| lo);
        let touching: alloc::vec::Vec<(u64, Node)> = self
            .nodes
            .range(from..=pfn_hi.saturating_add(1))
            .map(|(&lo, &n)| (lo, n))
            .collect();
        let mut merged = IovaRange { pfn_lo, pfn_hi };
        for &(lo, n) in &touching {
            let overlaps = lo <= pfn_hi && n.pfn_hi >= pfn_lo;
            if n.kind == Kind::Allocated {
                if overlaps {
                    return Err(IovaError::Overlap);
                }
                continue;
            }
            merged.pfn_lo = merged.pfn_lo.min(lo);
            merged.pfn_hi = merged.pfn_hi.max(n.pfn_hi);
        }
        for &(lo, n) in &touching {
            if n.kind == Kind::Reserved {
                self.remove(IovaRange {
                    pfn_lo: lo,
                    pfn_hi: n.pfn_hi,
                });
            }
        }
        self.nodes.insert(
            merged.pfn_lo,
            Node {
                pfn_hi: merged.pfn_hi,
                kind: Kind::Reserved,
            },
        );
        Ok(merged)
    }

    /// Whether a live allocation overlaps `[pfn_lo, pfn_hi]`.
    pub fn overlaps_allocation(&self, pfn_lo: u64, pfn_hi: u64) -> bool {
        self.nodes
            .range(..=pfn_hi)
            .rev()
            .take_while(|(_, n)| n.pfn_hi >= pfn_lo)
            .any(|(_, n)| n.kind == Kind::Allocated)
    }

    /// Every range in address order, with whether it is reserved.
    pub fn ranges(&self) -> impl Iterator<Item = (IovaRange, bool)> + '_ {
        self.nodes.iter().map(|(&lo, n)| {
            (
                IovaRange {
                    pfn_lo: lo,
                    pfn_hi: n.pfn_hi,
                },
                n.kind == Kind::Reserved,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DMA32: u64 = 1 << 20; // 4 GiB of 4 KiB frames

    fn tree() -> IovaTree {
        IovaTree::new(1, (1 << 36) - 1, DMA32)
    }

    #[test]
    fn allocation_is_top_down_below_the_limit() {
        let mut t = tree();
        assert_eq!(t.alloc(1, DMA32 - 1, false), Ok(DMA32 - 1));
        assert_eq!(t.alloc(1, DMA32 - 1, false), Ok(DMA32 - 2));
        assert_eq!(t.alloc(4, DMA32 - 1, false), Ok(DMA32 - 6));
    }

    #[test]
    fn size_aligned_allocations_are_aligned_to_the_rounded_size() {
        let mut t = tree();
        t.alloc(1, 99, false).unwrap(); // 99
        let p = t.alloc(3, 99, true).unwrap();
        // 96..=98: the highest start aligned to 4 below frame 99.
        assert_eq!(p, 96);
        let q = t.alloc(16, 99, true).unwrap();
        assert_eq!(q, 80);
    }

    #[test]
    fn zero_frames_is_an_invalid_size() {
        assert_eq!(tree().alloc(0, 100, false), Err(IovaError::InvalidSize));
    }

    #[test]
    fn frames_below_the_start_are_never_handed_out() {
        let mut t = IovaTree::new(10, 1000, DMA32);
        assert_eq!(t.alloc(5, 14, false), Ok(10));
        assert_eq!(t.alloc(1, 14, false), Err(IovaError::NoSpace));
    }

    #[test]
    fn a_failed_32bit_size_fails_fast_until_a_32bit_range_is_freed() {
        let mut t = IovaTree::new(1, (1 << 36) - 1, 16);
        let a = t.alloc(8, 15, false).unwrap(); // 8..=15
        let _b = t.alloc(4, 15, false).unwrap(); // 4..=7
        assert_eq!(t.alloc(4, 15, false), Err(IovaError::NoSpace));
        assert!(t.failed32.is_some());
        // Smaller still searches; equal or larger fails without a search.
        assert_eq!(t.alloc(2, 15, false), Ok(2));
        assert!(t.failed32.is_some_and(|f| f.implies(5, 16, false)));
        assert_eq!(t.alloc(5, 15, false), Err(IovaError::NoSpace));
        // Above 4 GiB is not affected.
        assert!(t.alloc(4, 1 << 30, false).is_ok());
        t.free(a).unwrap();
        assert!(t.failed32.is_none());
        assert_eq!(t.alloc(4, 15, false), Ok(12));
    }

    #[test]
    fn a_failure_under_a_low_limit_does_not_fail_a_higher_limit() {
        let mut t = IovaTree::new(1, (1 << 36) - 1, DMA32);
        t.reserve(1, 63).unwrap();
        assert_eq!(t.alloc(32, 63, true), Err(IovaError::NoSpace));
        assert_eq!(t.alloc(32, 127, true), Ok(96));
        // An aligned failure does not imply an unaligned one.
        t.reserve(64, 94).unwrap();
        assert_eq!(t.alloc(2, 95, true), Err(IovaError::NoSpace));
        assert_eq!(t.alloc(1, 95, false), Ok(95));
    }

    #[test]
    fn free_finds_the_range_by_any_frame_in_it() {
        let mut t = tree();
        let p = t.alloc(8, 1000, false).unwrap();
        assert_eq!(
            t.find(p + 3),
            Some(IovaRange {
                pfn_lo: p,
                pfn_hi: p + 7
            })
        );
        assert_eq!(t.free(p + 7).unwrap().pfn_lo, p);
        assert_eq!(t.free(p), Err(IovaError::NotAllocated));
        assert!(t.is_empty());
    }

    #[test]
    fn freeing_above_the_cached_point_makes_the_hole_the_next_choice() {
        let mut t = tree();
        let a = t.alloc(1, 1000, false).unwrap();
        let b = t.alloc(1, 1000, false).unwrap();
        let c = t.alloc(1, 1000, false).unwrap();
        assert_eq!((a, b, c), (1000, 999, 998));
        // Freeing below the cached point leaves it: packing continues down.
        t.free(c).unwrap();
        assert_eq!(t.alloc(1, 1000, false), Ok(998));
        // Freeing at or above it moves it up past the hole.
        t.free(a).unwrap();
        assert_eq!(t.alloc(1, 1000, false), Ok(1000));
        assert_eq!(t.alloc(1, 1000, false), Ok(997));
    }

    #[test]
    fn space_above_the_cached_point_is_searched_when_below_is_full() {
        let mut t = IovaTree::new(500, 1 << 30, DMA32);
        assert_eq!(t.alloc(1, 1000, false), Ok(1000));
        // A lower limit puts the cached point at the bottom of the space...
        assert_eq!(t.alloc(1, 500, false), Ok(500));
        // ...so the next search below it fails and the retry looks above it.
        assert_eq!(t.alloc(1, 1000, false), Ok(999));
    }

    #[test]
    fn reserved_ranges_are_skipped_merged_and_never_freed() {
        let mut t = tree();
        t.reserve(90, 99).unwrap();
        t.reserve(85, 91).unwrap();
        t.reserve(100, 100).unwrap(); // adjacent: merges
        assert_eq!(
            t.ranges().collect::<alloc::vec::Vec<_>>(),
            [(
                IovaRange {
                    pfn_lo: 85,
                    pfn_hi: 100
                },
                true
            )]
        );
        assert_eq!(t.alloc(2, 100, false), Ok(83));
        assert_eq!(t.free(90), Err(IovaError::NotAllocated));
        assert_eq!(t.reserve(80, 84), Err(IovaError::Overlap));
        assert_eq!(t.reserve(5, 4), Err(IovaError::InvalidRange));
        assert_eq!(t.len(), 2);
    }
}
