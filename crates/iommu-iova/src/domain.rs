//! [`IovaDomain`]: the tree behind a lock, with the per-CPU caches in front.

use crate::cpu::CpuId;
use crate::rcache::{Rcaches, CACHE_CLASSES};
use crate::tree::{order_base_2, IovaTree};
use crate::{IovaError, IovaRange};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// Bytes of I/O page-table entries that share a cache line: a cache miss
/// takes a whole line's worth of small ranges for its CPU, so CPUs mapping
/// at once never write the same line of the leaf table (8-byte entries).
const REFILL_FRAMES: u64 = 8;

/// Sizes below this many granules are rounded up to a power of two by the
/// fast path, so that what comes back to a cache always has its class's size.
const ROUND_UP_BELOW: u64 = 1 << (CACHE_CLASSES - 1);

/// The size the fast path hands out for a request of `size` frames.
fn fast_size(size: u64) -> u64 {
    if size < ROUND_UP_BELOW {
        size.next_power_of_two()
    } else {
        size
    }
}

/// The cache class of a range of `size` frames, if ranges of that size are
/// cached.
fn cache_class(size: u64) -> Option<usize> {
    let class = order_base_2(size) as usize;
    (size.is_power_of_two() && class < CACHE_CLASSES).then_some(class)
}

/// Counts describing an allocator's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaStats {
    /// Ranges in the tree: live allocations, cached ranges and reserved ranges.
    pub tree_ranges: usize,
    /// Of those, how many wait in a per-CPU cache or the depot.
    pub cached: usize,
}

/// An IOVA space of one domain (Linux's `struct iova_domain` with its rcaches).
///
/// Addresses are counted in granules ("frames"; `pfn` below). The slow path
/// ([`alloc`](Self::alloc), [`free`](Self::free)) works on the tree; the fast
/// path ([`alloc_fast`](Self::alloc_fast), [`free_fast`](Self::free_fast))
/// serves ranges of up to 32 granules from per-CPU caches.
///
/// Every method takes `&self` and is linearizable: no range is handed out
/// twice, and a freed range can be allocated again.
///
/// ```
/// use iommu_iova::{IovaDomain, SingleCpu};
///
/// let iovad = IovaDomain::new(4096, 1, SingleCpu).unwrap();
/// let limit = iovad.dma_32bit_pfn() - 1;
/// let pfn = iovad.alloc_fast(1, limit, true).unwrap();
/// assert_eq!(pfn, limit); // top-down
/// iovad.free_fast(pfn, 1);
/// // The cache hands the same range straight back.
/// assert_eq!(iovad.alloc_fast(1, limit, true), Ok(pfn));
/// ```
pub struct IovaDomain<C: CpuId> {
    shift: u32,
    start_pfn: u64,
    dma_32bit_pfn: u64,
    tree: Mutex<IovaTree>,
    rcaches: Rcaches,
    cpu: C,
    /// Check every `free_fast` exactly (see [`IovaDomain::with_checked_frees`]).
    checked_frees: bool,
    /// Some range has gone into a cache. Until then a tree `free` need not
    /// look through every CPU's caches (a domain used only through
    /// `alloc` and `free` never does).
    cached_ever: AtomicBool,
}

impl<C: CpuId> core::fmt::Debug for IovaDomain<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IovaDomain")
            .field("granule", &self.granule())
            .field("start_pfn", &self.start_pfn)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<C: CpuId> IovaDomain<C> {
    /// A domain of `granule`-byte frames handing out frames from `start_pfn`
    /// up (Linux's `init_iova_domain` plus `iova_domain_init_rcaches`).
    /// DMA layers start at 1 so that address 0 is never valid.
    ///
    /// # Errors
    /// [`IovaError::InvalidGranule`] unless `granule` is a power of two from
    /// 512 bytes to 4 GiB (a larger granule has no frame boundary at 4 GiB,
    /// so "below 4 GiB" would mean nothing).
    pub fn new(granule: u64, start_pfn: u64, cpu: C) -> Result<Self, IovaError> {
        if !granule.is_power_of_two() || !(512..=1 << 32).contains(&granule) {
            return Err(IovaError::InvalidGranule);
        }
        let shift = granule.trailing_zeros();
        let dma_32bit_pfn = 1u64 << (32 - shift);
        let max_pfn = u64::MAX >> shift;
        Ok(Self {
            shift,
            start_pfn,
            dma_32bit_pfn,
            tree: Mutex::new(IovaTree::new(start_pfn, max_pfn, dma_32bit_pfn)),
            rcaches: Rcaches::new(cpu.nr_cpus()),
            cpu,
            checked_frees: false,
            cached_ever: AtomicBool::new(false),
        })
    }

    /// Makes [`free_fast`](Self::free_fast) check every free exactly, in
    /// release builds too: the range must be one the tree holds with that
    /// size and no cache holds already, so a stray or repeated free is
    /// refused instead of letting a range come out twice. For callers that
    /// cannot vouch for their frees; it costs a tree lookup and a scan of
    /// the size class's caches on every free, which is why the fast path
    /// leaves it to callers that keep their own records (the DMA layer
    /// checks every unmap against its handles).
    #[must_use]
    pub fn with_checked_frees(mut self, on: bool) -> Self {
        self.checked_frees = on;
        self
    }

    /// Bytes per frame.
    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// `log2(granule)`.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// The lowest frame handed out.
    pub fn start_pfn(&self) -> u64 {
        self.start_pfn
    }

    /// The first frame at or above 4 GiB; limits below it are "32-bit".
    pub fn dma_32bit_pfn(&self) -> u64 {
        self.dma_32bit_pfn
    }

    /// The CPU id source.
    pub fn cpu_id(&self) -> &C {
        &self.cpu
    }

    /// Allocates `size` frames ending at or below `limit_pfn` from the tree,
    /// top-down (Linux's `alloc_iova`).
    ///
    /// # Errors
    /// [`IovaError::InvalidSize`] for zero; [`IovaError::NoSpace`] when
    /// nothing fits (and, for a 32-bit limit, at once for any size not
    /// smaller than one that failed since the last 32-bit free).
    pub fn alloc(&self, size: u64, limit_pfn: u64, size_aligned: bool) -> Result<u64, IovaError> {
        self.tree.lock().alloc(size, limit_pfn, size_aligned)
    }

    /// The allocated range containing `pfn` (cached ranges count as allocated).
    pub fn find(&self, pfn: u64) -> Option<IovaRange> {
        self.tree.lock().find(pfn)
    }

    /// Frees the tree range containing `pfn` (Linux's `free_iova`).
    ///
    /// A range waiting in a per-CPU cache counts as free, not allocated:
    /// freeing it here would let it come out twice (from the tree and from
    /// the cache), so it is refused.
    ///
    /// # Errors
    /// [`IovaError::NotAllocated`] when no allocated range contains it, or
    /// the range is in a cache.
    pub fn free(&self, pfn: u64) -> Result<IovaRange, IovaError> {
        let mut tree = self.tree.lock();
        let (node, range) = tree.find_ref(pfn).ok_or(IovaError::NotAllocated)?;
        if let Some(class) = cache_class(range.size()) {
            // A cache insertion this free must see happened before it in
            // the caller's order, which makes the flag's store visible.
            if self.cached_ever.load(Ordering::Relaxed)
                && self.rcaches.contains(class, range.pfn_lo)
            {
                return Err(IovaError::NotAllocated);
            }
        }
        tree.remove(node);
        Ok(range)
    }

    /// Reserves `[pfn_lo, pfn_hi]` so it is never handed out (Linux's
    /// `reserve_iova`), merging with reserved ranges it overlaps or touches.
    ///
    /// # Errors
    /// [`IovaError::InvalidRange`] for `pfn_lo > pfn_hi` or frames beyond the
    /// address space; [`IovaError::Overlap`] when it overlaps a live or
    /// cached allocation (nothing is then reserved).
    pub fn reserve(&self, pfn_lo: u64, pfn_hi: u64) -> Result<IovaRange, IovaError> {
        if (pfn_lo | pfn_hi) > u64::MAX >> self.shift {
            return Err(IovaError::InvalidRange);
        }
        self.tree.lock().reserve(pfn_lo, pfn_hi)
    }

    /// Reserves every `(pfn_lo, pfn_hi)` of `ranges`, or none of them.
    ///
    /// # Errors
    /// As [`reserve`](Self::reserve), for the first range that fails.
    pub fn reserve_all(&self, ranges: &[(u64, u64)]) -> Result<(), IovaError> {
        let mut tree = self.tree.lock();
        for &(lo, hi) in ranges {
            if lo > hi || (lo | hi) > u64::MAX >> self.shift {
                return Err(IovaError::InvalidRange);
            }
            if tree.overlaps_allocation(lo, hi) {
                return Err(IovaError::Overlap);
            }
        }
        // Room for every node first, so that none of them can fail half-way.
        tree.reserve_nodes(ranges.len())?;
        for &(lo, hi) in ranges {
            tree.reserve(lo, hi)?;
        }
        Ok(())
    }

    /// Allocates `size` frames ending at or below `limit_pfn`, from this
    /// CPU's cache when the size is cacheable, else from the tree (Linux's
    /// `alloc_iova_fast`). Sizes under 32 frames are rounded up to a power of
    /// two and every range is size-aligned. When the tree has no room and
    /// `flush_caches` is set, every cache is emptied into the tree once and
    /// the allocation retried.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub fn alloc_fast(
        &self,
        size: u64,
        limit_pfn: u64,
        flush_caches: bool,
    ) -> Result<u64, IovaError> {
        // The common case inline: this CPU's hot range of the class.
        let rounded = fast_size(size);
        if let (true, Some(class)) = (size != 0, cache_class(rounded)) {
            if let (Some(cpu), Some(max_start)) = (
                self.cpu.current_exclusive(),
                limit_pfn.checked_sub(rounded - 1),
            ) {
                if let Some(pfn) = self.rcaches.take_hot(cpu, class, max_start) {
                    return Ok(pfn);
                }
            }
        }
        self.alloc_fast_cached(size, limit_pfn, flush_caches)
    }

    /// [`alloc_fast`](Self::alloc_fast) past the hot range: the CPU's
    /// magazines, the depot, the tree.
    #[inline(never)]
    fn alloc_fast_cached(
        &self,
        size: u64,
        limit_pfn: u64,
        flush_caches: bool,
    ) -> Result<u64, IovaError> {
        if size == 0 {
            return Err(IovaError::InvalidSize);
        }
        let size = fast_size(size);
        let class = order_base_2(size) as usize;
        // `limit_pfn` is inclusive and may be `u64::MAX` ("no limit").
        let cached = (class < CACHE_CLASSES)
            .then(|| limit_pfn.checked_sub(size - 1))
            .flatten();
        // This CPU; read only for sizes the caches serve.
        let this_cpu = || {
            self.cpu
                .current_exclusive()
                .unwrap_or_else(|| self.cpu.current())
        };
        if let Some(max_start) = cached {
            let exclusive = self.cpu.current_exclusive();
            if let Some(cpu) = exclusive {
                if let Some(pfn) = self.rcaches.take_hot(cpu, class, max_start) {
                    return Ok(pfn);
                }
            }
            let cpu = exclusive.unwrap_or_else(|| self.cpu.current());
            if let Some(pfn) = self.rcaches.get(cpu, class, max_start, false) {
                return Ok(pfn);
            }
        }
        let from_tree = || {
            if class < CACHE_CLASSES && size < REFILL_FRAMES {
                if let Ok(pfn) = self.refill(size, class, limit_pfn) {
                    return Ok(pfn);
                }
            }
            self.alloc(size, limit_pfn, true)
        };
        match from_tree() {
            Err(IovaError::NoSpace) => {
                // Another CPU's magazines before emptying every cache.
                if let Some(pfn) = cached.and_then(|m| self.rcaches.get(this_cpu(), class, m, true))
                {
                    return Ok(pfn);
                }
                if !flush_caches {
                    return Err(IovaError::NoSpace);
                }
                self.flush_caches();
                from_tree()
            }
            r => r,
        }
    }

    /// On a cache miss for a small size: takes a cache line's worth of
    /// ranges from the tree, hands out the highest and caches the rest on
    /// this CPU.
    fn refill(&self, size: u64, class: usize, limit_pfn: u64) -> Result<u64, IovaError> {
        let count = REFILL_FRAMES / size;
        let first = self.tree.lock().alloc_block(size, count, limit_pfn)?;
        self.note_cached();
        let cpu = self.cpu.current();
        for i in 0..count - 1 {
            if let Some(mag) = self.rcaches.insert(cpu, class, first + i * size) {
                let mut tree = self.tree.lock();
                for &p in mag.pfns() {
                    tree.free_exact(p);
                }
            }
        }
        Ok(first + (count - 1) * size)
    }

    /// Returns a range [`alloc_fast`](Self::alloc_fast) gave out, to this
    /// CPU's cache when its size is cacheable, else to the tree (Linux's
    /// `free_iova_fast`).
    ///
    /// `pfn` and `size` must be what `alloc_fast` returned and was asked for.
    /// Ranges too large to cache are checked exactly against the tree.
    /// Cacheable ones are not looked up there (that is the point of the
    /// cache): they are checked to be a range `alloc_fast` could have handed
    /// out (inside the domain, aligned to their rounded size), and exactly
    /// in debug builds or with [`with_checked_frees`](Self::with_checked_frees).
    /// A layer that records its handles, as the DMA layer does, catches a
    /// repeated free before it gets here.
    ///
    /// # Errors
    /// [`IovaError::InvalidSize`] for zero frames; [`IovaError::NotAllocated`]
    /// for a range that cannot be one `alloc_fast` gave out. Nothing changes
    /// then.
    #[inline(always)]
    pub fn free_fast(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        // The common case inline: into this CPU's empty hot slot of the class.
        if let Some(cpu) = self.cpu.current_exclusive() {
            let rounded = fast_size(size);
            if let (true, Some(class)) = (size != 0, cache_class(rounded)) {
                // A free the checks refuse goes on below, which says why.
                if self.plausible(pfn, rounded) && self.free_checked(class, pfn, rounded) {
                    self.note_cached();
                    if !self.rcaches.put_hot(cpu, class, pfn) {
                        self.free_to_magazine(cpu, class, pfn);
                    }
                    return Ok(());
                }
            }
        }
        self.free_fast_cached(pfn, size)
    }

    /// [`free_fast`](Self::free_fast) for a caller not running exclusively
    /// as its CPU, and for a free the checks refuse (it says why).
    #[inline(never)]
    fn free_fast_cached(&self, pfn: u64, size: u64) -> Result<(), IovaError> {
        match self.cpu.current_exclusive() {
            Some(cpu) => self.free_fast_to(cpu, true, pfn, size),
            None => self.free_fast_to(self.cpu.current(), false, pfn, size),
        }
    }

    /// Records that a range is about to go into a cache (see `cached_ever`).
    #[inline(always)]
    fn note_cached(&self) {
        if !self.cached_ever.load(Ordering::Relaxed) {
            self.cached_ever.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a cacheable range of `rounded` frames at `pfn` is one
    /// `alloc_fast` could have handed out: inside the domain and aligned
    /// to its size.
    #[inline(always)]
    fn plausible(&self, pfn: u64, rounded: u64) -> bool {
        pfn >= self.start_pfn
            && pfn & (rounded - 1) == 0
            && pfn
                .checked_add(rounded - 1)
                .is_some_and(|hi| hi <= self.max_pfn())
    }

    /// [`free_fast`](Self::free_fast) into the cache of CPU `cpu` (reduced
    /// modulo the CPU count): for deferred frees run by a helper thread on
    /// behalf of the CPU that unmapped, so the range goes back where it
    /// was used.
    ///
    /// # Errors
    /// As [`free_fast`](Self::free_fast).
    pub fn free_fast_on(&self, cpu: usize, pfn: u64, size: u64) -> Result<(), IovaError> {
        self.free_fast_to(cpu, false, pfn, size)
    }

    /// Frees into CPU `cpu`'s caches; its hot slot too when `exclusive`
    /// (the caller runs exclusively as `cpu`).
    #[inline]
    fn free_fast_to(
        &self,
        cpu: usize,
        exclusive: bool,
        pfn: u64,
        size: u64,
    ) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::InvalidSize);
        }
        let rounded = fast_size(size);
        match cache_class(rounded) {
            Some(class) => {
                if !self.plausible(pfn, rounded) {
                    return Err(IovaError::NotAllocated);
                }
                if !self.free_checked(class, pfn, rounded) {
                    debug_assert!(
                        self.checked_frees,
                        "free_fast of a range alloc_fast did not hand out (or a second free)"
                    );
                    return Err(IovaError::NotAllocated);
                }
                self.note_cached();
                if exclusive && self.rcaches.put_hot(cpu, class, pfn) {
                    return Ok(());
                }
                self.free_to_magazine(cpu, class, pfn);
                Ok(())
            }
            None => self.free_to_tree(pfn, rounded),
        }
    }

    /// Whether a cacheable free passes the exact check, where it is made
    /// (debug builds, [`with_checked_frees`](Self::with_checked_frees)).
    #[inline(always)]
    fn free_checked(&self, class: usize, pfn: u64, size: u64) -> bool {
        !(self.checked_frees || cfg!(debug_assertions)) || self.handed_out(class, pfn, size)
    }

    /// Whether `[pfn, pfn + size)` is live in the tree and in no cache:
    /// the exact check of a cacheable free.
    #[inline(never)]
    fn handed_out(&self, class: usize, pfn: u64, size: u64) -> bool {
        self.find(pfn)
            .is_some_and(|r| r.pfn_lo == pfn && r.size() == size)
            && !self.rcaches.contains(class, pfn)
    }

    /// Puts a cacheable range in CPU `cpu`'s magazines; a full magazine
    /// the depot no longer wants goes back to the tree.
    #[inline(never)]
    fn free_to_magazine(&self, cpu: usize, class: usize, pfn: u64) {
        if let Some(mag) = self.rcaches.insert(cpu, class, pfn) {
            let mut tree = self.tree.lock();
            for &p in mag.pfns() {
                tree.free_exact(p);
            }
        }
    }

    /// Frees a range too large to cache: it must be exactly a live range
    /// of the tree.
    #[inline(never)]
    fn free_to_tree(&self, pfn: u64, rounded: u64) -> Result<(), IovaError> {
        let mut tree = self.tree.lock();
        match tree.find_ref(pfn) {
            Some((node, r)) if r.pfn_lo == pfn && r.size() == rounded => {
                tree.remove(node);
                Ok(())
            }
            _ => Err(IovaError::NotAllocated),
        }
    }

    /// The highest frame the domain hands out.
    #[inline(always)]
    fn max_pfn(&self) -> u64 {
        u64::MAX >> self.shift
    }

    /// Returns every cached range to the tree (Linux's
    /// `free_cpu_cached_iovas` on every CPU plus `free_global_cached_iovas`).
    ///
    /// A CPU's hot ranges (one per size class, see
    /// [`CpuId::current_exclusive`]) come back when the caller is that CPU
    /// or the CPU is gone ([`CpuId::with_exclusive`]); a CPU running
    /// elsewhere keeps its own, and hands them out next.
    pub fn flush_caches(&self) {
        let mut tree = self.tree.lock();
        self.rcaches.drain(
            |cpu, f| self.cpu.with_exclusive(cpu, f),
            |p| {
                tree.free_exact(p);
            },
        );
    }

    /// How many ranges the tree and the caches hold.
    pub fn stats(&self) -> IovaStats {
        IovaStats {
            tree_ranges: self.tree.lock().len(),
            cached: self.rcaches.cached(),
        }
    }

    /// Checks the tree's structure (see `IovaTree::check_invariants`).
    #[cfg(feature = "test-utils")]
    pub fn check_invariants(&self) {
        self.tree.lock().check_invariants();
    }

    /// Every tree range in address order, with whether it is reserved.
    pub fn ranges(&self) -> alloc::vec::Vec<(IovaRange, bool)> {
        self.tree.lock().ranges().collect()
    }
}
