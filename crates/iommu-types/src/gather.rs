//! The IOTLB gather: what an unmap has torn down and must still invalidate.
//!
//! Unmapping clears descriptors; the IOTLB may still hold the old
//! translations until the driver's `iotlb_sync` runs with the gather. The type
//! is `#[must_use]` so that dropping one on the floor is a warning.

use crate::Iova;

/// A range of IOVA space (and the page size it was unmapped at) waiting for
/// invalidation. Linux's `struct iommu_iotlb_gather`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "an IOTLB gather must be passed to iotlb_sync, or stale translations remain"]
pub struct IotlbGather {
    start: u64,
    /// Inclusive end; zero together with `start == u64::MAX` means empty.
    end: u64,
    pgsize: u64,
    /// Set by a lazy (flush-queue) unmap: invalidation is deferred on purpose.
    queued: bool,
    /// Names the table pages this gather's unmaps detached, so the page
    /// table can reuse exactly those once this gather has been synced (0 = none).
    token: u64,
    /// How many table pages wait on this gather.
    freed_tables: u32,
}

impl Default for IotlbGather {
    fn default() -> Self {
        Self::new()
    }
}

impl IotlbGather {
    /// An empty gather (Linux's `iommu_iotlb_gather_init`).
    #[inline]
    pub const fn new() -> Self {
        Self {
            start: u64::MAX,
            end: 0,
            pgsize: 0,
            queued: false,
            token: 0,
            freed_tables: 0,
        }
    }

    /// Whether nothing has been gathered.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.start > self.end
    }

    /// The gathered range as `(first IOVA, inclusive last IOVA)`.
    #[inline]
    pub fn range(&self) -> Option<(Iova, Iova)> {
        (!self.is_empty()).then(|| (Iova::new(self.start), Iova::new(self.end)))
    }

    /// Bytes covered by the gathered range.
    #[inline]
    pub const fn size(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.end - self.start + 1
        }
    }

    /// The page size of the gathered pages (0 when mixed sizes were merged by range).
    #[inline]
    pub const fn pgsize(&self) -> u64 {
        self.pgsize
    }

    /// Whether invalidation was deferred to a flush queue.
    #[inline]
    pub const fn is_queued(&self) -> bool {
        self.queued
    }

    /// Marks the gather as deferred to a flush queue.
    #[inline]
    pub fn set_queued(&mut self, queued: bool) {
        self.queued = queued;
    }

    /// Whether `[iova, iova + size)` neither overlaps nor touches the gathered range.
    #[inline]
    pub fn is_disjoint(&self, iova: Iova, size: u64) -> bool {
        if self.is_empty() || size == 0 {
            return false;
        }
        let start = iova.raw();
        let end = start.saturating_add(size - 1);
        end.saturating_add(1) < self.start || start > self.end.saturating_add(1)
    }

    /// Whether adding a page of `size` at `iova` needs the current contents
    /// synced first: the page size changes, or the page is not adjacent.
    #[inline]
    pub fn needs_sync_before_page(&self, iova: Iova, size: u64) -> bool {
        (self.pgsize != 0 && self.pgsize != size) || self.is_disjoint(iova, size)
    }

    /// Widens the range to cover `[iova, iova + size)`. A range of another
    /// size than the recorded page size drops the page-size hint (0 = mixed).
    #[inline]
    pub fn add_range(&mut self, iova: Iova, size: u64) {
        if size == 0 {
            return;
        }
        if self.pgsize != size {
            self.pgsize = 0;
        }
        let end = iova.raw().saturating_add(size - 1);
        self.start = self.start.min(iova.raw());
        self.end = self.end.max(end);
    }

    /// Records one unmapped page. The caller syncs first when
    /// [`needs_sync_before_page`](Self::needs_sync_before_page) says so.
    #[inline]
    pub fn add_page(&mut self, iova: Iova, size: u64) {
        self.pgsize = size;
        self.add_range(iova, size);
    }

    /// The token under which a page table parked the table pages this
    /// gather's unmaps detached (0 if none were).
    #[inline]
    pub const fn token(&self) -> u64 {
        self.token
    }

    /// Table pages waiting for this gather's sync before they can be reused.
    #[inline]
    pub const fn freed_tables(&self) -> u32 {
        self.freed_tables
    }

    /// Records that a page table parked one more table page under `token`.
    #[inline]
    pub fn note_freed_table(&mut self, token: u64) {
        self.token = token;
        self.freed_tables = self.freed_tables.saturating_add(1);
    }

    /// Empties the gather, returning what it held (for an `iotlb_sync`).
    #[inline]
    pub fn take(&mut self) -> IotlbGather {
        core::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_merges_adjacent_ranges() {
        let mut g = IotlbGather::new();
        assert!(g.is_empty());
        g.add_page(Iova::new(0x1000), 0x1000);
        assert!(!g.needs_sync_before_page(Iova::new(0x2000), 0x1000));
        g.add_page(Iova::new(0x2000), 0x1000);
        assert_eq!(g.range(), Some((Iova::new(0x1000), Iova::new(0x2fff))));
        assert_eq!(g.size(), 0x2000);
    }

    #[test]
    fn gather_asks_for_sync_on_disjoint_or_resized_page() {
        let mut g = IotlbGather::new();
        g.add_page(Iova::new(0x1000), 0x1000);
        assert!(g.needs_sync_before_page(Iova::new(0x10_0000), 0x1000));
        assert!(g.needs_sync_before_page(Iova::new(0x2000), 0x20_0000));
        let taken = g.take();
        assert!(g.is_empty());
        assert_eq!(taken.pgsize(), 0x1000);
    }
}
