//! The generic walker: map, unmap, translate, walk and dirty tracking for any
//! [`Format`], shared between threads.
//!
//! Invariants:
//! - a refused `map_pages` writes nothing: every check (alignment, range,
//!   entries in the way, table memory) happens before the first leaf is
//!   written, and the tables a walk needs are allocated before any is
//!   installed;
//! - new tables are installed with compare-and-exchange, so threads mapping
//!   disjoint ranges may share the path to them;
//! - a leaf is never split: unmapping part of one removes all of it;
//! - while the table is shared (`&self`) no table page goes back to the
//!   allocator. Pages an unmap detaches are parked under their gather's token
//!   and become reusable only when [`IoPageTable::release_gathered`] is called
//!   after that gather's IOTLB sync. `trim` (exclusive) and drop return pages.
//!   A reader racing with an unmap of its own range may see stale entries,
//!   never freed memory.
//!
//! The only `unsafe` here is calling [`TableMemory`]'s descriptor accessors,
//! whose contract ("the table is live, the index in bounds") the walker keeps
//! by only following table descriptors it wrote itself and indexing below
//! `Geometry::entries`.

use crate::{Format, Geometry, PgtableError, Pte, PteKind, TableMemory};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};

/// One mapped leaf, as [`IoPageTable::walk`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA of the leaf.
    pub iova: Iova,
    /// Bytes the leaf spans.
    pub size: u64,
    /// Output address of the first byte.
    pub pa: PhysAddr,
    /// Permissions as decoded from the descriptor.
    pub prot: Prot,
    /// Level of the leaf (0 = root).
    pub level: usize,
}

/// Deepest table any supported format has.
const MAX_LEVELS: usize = 6;

/// Gather tokens are unique across every table in the process, so a gather
/// that strays to another table can never release that table's pages.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A table allocated for a walk, and where it came from.
#[derive(Clone, Copy, Debug)]
struct Spare {
    table: PhysAddr,
    pooled: bool,
}

impl Spare {
    const NONE: Spare = Spare {
        table: PhysAddr::ZERO,
        pooled: false,
    };
}

/// Table pages detached while the table is shared.
#[derive(Debug, Default)]
struct Parked {
    /// `(gather token, table)`; token 0 waits for `trim` or drop.
    pending: Vec<(u64, PhysAddr)>,
    /// Zeroed pages ready for reuse.
    pool: Vec<PhysAddr>,
}

/// A dirty bitmap over an IOVA range, one bit per page of `pgsize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    base: u64,
    pgshift: u32,
    pages: u64,
    bits: Vec<u64>,
}

impl DirtyBitmap {
    /// A clear bitmap for `[base, base + size)` at `pgsize` granularity (a power of two).
    pub fn new(base: Iova, size: u64, pgsize: u64) -> Self {
        let pgshift = pgsize.trailing_zeros();
        let pages = size.div_ceil(pgsize.max(1));
        Self {
            base: base.raw(),
            pgshift,
            pages,
            bits: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// Marks the pages overlapping `[iova, iova + len)` (clipped to the bitmap).
    pub fn set_range(&mut self, iova: u64, len: u64) {
        let start = iova.max(self.base);
        let end = iova
            .saturating_add(len)
            .min(self.base + (self.pages << self.pgshift));
        if start >= end {
            return;
        }
        for p in (start - self.base) >> self.pgshift..=(end - 1 - self.base) >> self.pgshift {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Whether the page holding `iova` is marked.
    pub fn is_set(&self, iova: Iova) -> bool {
        let Some(off) = iova.raw().checked_sub(self.base) else {
            return false;
        };
        let p = off >> self.pgshift;
        p < self.pages && self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    /// Pages marked.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// A page table of format `F` whose tables live in `M`; `Send + Sync`.
#[derive(Debug)]
pub struct IoPageTable<F: Format, M: TableMemory> {
    fmt: F,
    geo: Geometry,
    mem: M,
    root: PhysAddr,
    reclaim: bool,
    dirty_tracking: AtomicBool,
    parked: spin::Mutex<Parked>,
}

impl<F: Format, M: TableMemory> IoPageTable<F, M> {
    /// Creates an empty table (allocates the root). Emptied tables are kept.
    ///
    /// # Errors
    /// [`PgtableError::NoMemory`] when the root cannot be allocated;
    /// [`PgtableError::InvalidArgument`] for a geometry deeper than supported.
    pub fn new(fmt: F, mem: M) -> Result<Self, PgtableError> {
        let geo = *fmt.geometry();
        if geo.levels == 0 || geo.levels > MAX_LEVELS {
            return Err(PgtableError::InvalidArgument);
        }
        let root = mem
            .alloc_table(geo.table_bytes(0))
            .ok_or(PgtableError::NoMemory)?;
        Ok(Self {
            fmt,
            geo,
            mem,
            root,
            reclaim: false,
            dirty_tracking: AtomicBool::new(false),
            parked: spin::Mutex::new(Parked::default()),
        })
    }

    /// Reclaims a last-level table when one unmap call empties all of it
    /// (the "reclaim" policy); by default emptied tables are kept for reuse
    /// by later maps, as Linux's io-pgtable does.
    #[must_use]
    pub fn reclaim_empty_tables(mut self, reclaim: bool) -> Self {
        self.reclaim = reclaim;
        self
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The geometry in use.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Physical address of the root table (what a context descriptor points at).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Supported leaf sizes.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.geo.pgsize_bitmap()
    }

    /// The table memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Table pages allocated from memory: in the tree, parked or pooled.
    pub fn table_pages(&self) -> usize {
        self.mem.table_pages()
    }

    /// Reads the descriptor at `index` of `table` as hardware would.
    ///
    /// Returns `None` unless `table` is the root or a table reachable from it
    /// at `level` and `index` is in range, so it is safe to call with any input.
    pub fn read_descriptor(&self, level: usize, table: PhysAddr, index: usize) -> Option<u64> {
        if level >= self.geo.levels
            || index >= self.geo.entries(level)
            || !self.is_reachable(table, level)
        {
            return None;
        }
        Some(self.load(table, index))
    }

    fn is_reachable(&self, target: PhysAddr, level: usize) -> bool {
        if level == 0 {
            return target == self.root;
        }
        let mut found = false;
        self.for_each_table(self.root, 0, &mut |t, l| found |= l == level && t == target);
        found
    }

    fn for_each_table(&self, table: PhysAddr, level: usize, f: &mut impl FnMut(PhysAddr, usize)) {
        f(table, level);
        if level + 1 < self.geo.levels {
            for i in 0..self.geo.entries(level) {
                if let Pte::Table(t) = self.fmt.decode(self.load(table, i), level) {
                    self.for_each_table(t, level + 1, f);
                }
            }
        }
    }

    // ---- descriptor access (the only unsafe calls) -------------------------

    #[inline]
    fn load(&self, table: PhysAddr, index: usize) -> u64 {
        // SAFETY: `table` is the root or was read from a table descriptor this
        // walker wrote, so it is a live allocation of this memory (pages are
        // never returned while `&self` exists); callers index below
        // `geo.entries(level)` for the table's level.
        unsafe { self.mem.load(table, index) }
    }

    #[inline]
    fn store(&self, table: PhysAddr, index: usize, value: u64) {
        // SAFETY: as in `load`.
        unsafe { self.mem.store(table, index, value) }
    }

    #[inline]
    fn cas(&self, table: PhysAddr, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        // SAFETY: as in `load`.
        unsafe { self.mem.compare_exchange(table, index, current, new) }
    }

    // ---- table pages ------------------------------------------------------

    /// A zeroed non-root table: from the reuse pool, else fresh from memory.
    fn alloc_table(&self) -> Option<Spare> {
        if let Some(t) = self.parked.lock().pool.pop() {
            return Some(Spare {
                table: t,
                pooled: true,
            });
        }
        let t = self.mem.alloc_table(self.geo.table_bytes(1))?;
        Some(Spare {
            table: t,
            pooled: false,
        })
    }

    /// Gives back a table this walk allocated but never installed.
    fn free_unpublished(&self, spare: Spare) {
        if spare.pooled {
            // A reader racing with an old unmap may still look at a pooled
            // page, so it stays allocated.
            self.parked.lock().pool.push(spare.table);
        } else {
            // SAFETY: fresh from memory and never written into the tree:
            // nothing else can refer to it.
            unsafe { self.mem.free_table(spare.table, self.geo.table_bytes(1)) };
        }
    }

    /// Parks every table of the subtree rooted at `table` (at `level`) under
    /// `token`; returns how many.
    fn park_subtree(&self, table: PhysAddr, level: usize, token: u64) -> u32 {
        let mut tables = Vec::new();
        self.for_each_table(table, level, &mut |t, _| tables.push(t));
        let n = tables.len() as u32;
        self.parked
            .lock()
            .pending
            .extend(tables.into_iter().map(|t| (token, t)));
        n
    }

    /// Parks a subtree until `gather` has been synced.
    fn park_for_gather(&self, table: PhysAddr, level: usize, gather: &mut IotlbGather) {
        let token = match gather.token() {
            0 => NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            t => t,
        };
        for _ in 0..self.park_subtree(table, level, token) {
            gather.note_freed_table(token);
        }
    }

    /// Makes the table pages parked under `gather` reusable. Call it after the
    /// IOTLB (and walk caches) have been synced for `gather`.
    pub fn release_gathered(&self, gather: &IotlbGather) {
        if gather.token() == 0 {
            return;
        }
        let mut freed = Vec::new();
        {
            let mut parked = self.parked.lock();
            parked.pending.retain(|&(tok, t)| {
                if tok == gather.token() {
                    freed.push(t);
                    false
                } else {
                    true
                }
            });
        }
        for &t in &freed {
            for i in 0..self.geo.entries(1) {
                self.store(t, i, 0);
            }
        }
        self.parked.lock().pool.extend(freed);
    }

    /// Returns every parked and pooled page to memory. Exclusive access
    /// proves no walk is in flight; the caller promises the hardware no
    /// longer caches any of them.
    pub fn trim(&mut self) {
        let parked = core::mem::take(&mut *self.parked.lock());
        let bytes = self.geo.table_bytes(1);
        for t in parked
            .pending
            .into_iter()
            .map(|(_, t)| t)
            .chain(parked.pool)
        {
            // SAFETY: parked and pooled pages are detached from the tree and
            // `&mut self` guarantees no walk still holds one.
            unsafe { self.mem.free_table(t, bytes) };
        }
    }

    // ---- map ---------------------------------------------------------------

    /// Maps `pgcount` pages of `pgsize` bytes from `iova` to `pa`.
    ///
    /// Maps as many pages as fit in the last-level table reached and returns
    /// the bytes mapped; the caller continues from there (Linux's
    /// `map_pages` contract).
    ///
    /// # Errors
    /// `InvalidPageSize` for a size the format lacks or a misaligned address,
    /// `NoAccess` without read or write, `InvalidArgument` for `pgcount == 0`,
    /// `OutOfRange` beyond IAS/OAS, `Exists` when a mapping is in the way,
    /// `NoMemory` when tables cannot be allocated. Nothing is written then.
    pub fn map_pages(
        &self,
        iova: Iova,
        pa: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, PgtableError> {
        let level = self
            .geo
            .leaf_level_for(pgsize)
            .ok_or(PgtableError::InvalidPageSize)?;
        if !prot.is_accessible() {
            return Err(PgtableError::NoAccess);
        }
        if pgcount == 0 {
            return Err(PgtableError::InvalidArgument);
        }
        if !iova.is_aligned(pgsize) || !pa.is_aligned(pgsize) {
            return Err(PgtableError::InvalidPageSize);
        }
        // The whole request must fit, not just the part this call maps.
        let total = pgsize
            .checked_mul(pgcount as u64)
            .ok_or(PgtableError::OutOfRange)?;
        if !self.geo.input_fits(iova.raw(), total) || !self.geo.output_fits(pa.raw(), total) {
            return Err(PgtableError::OutOfRange);
        }
        let first = self.geo.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);
        let size = pgsize * n as u64;

        let table = self.walk_alloc(iova.raw(), level)?;
        // Check every target slot before writing any of them; remember
        // whether an empty table sits in any (rare: a block replacing one).
        let mut tables_in_the_way = false;
        for i in first..first + n {
            let pte = self.load(table, i);
            if pte == 0 {
                continue;
            }
            match self.fmt.kind(pte, level) {
                PteKind::Invalid => {}
                PteKind::Leaf => return Err(PgtableError::Exists),
                PteKind::Table => {
                    let Pte::Table(t) = self.fmt.decode(pte, level) else {
                        return Err(PgtableError::Exists);
                    };
                    if !self.subtree_is_empty(t, level + 1) {
                        return Err(PgtableError::Exists);
                    }
                    tables_in_the_way = true;
                }
            }
        }
        let clean = self.dirty_tracking.load(Ordering::Relaxed) && prot.contains(Prot::WRITE);
        let encode = |k: usize| {
            let leaf =
                self.fmt
                    .encode_leaf(PhysAddr::new(pa.raw() + k as u64 * pgsize), level, prot);
            if clean {
                self.fmt.make_clean(leaf)
            } else {
                leaf
            }
        };
        match self.fmt.leaf_step(pa, pgsize, n) {
            Some(step) if !tables_in_the_way => {
                // The common case: one encoding, then add the step.
                let mut leaf = encode(0);
                for i in first..first + n {
                    self.store(table, i, leaf);
                    leaf = leaf.wrapping_add(step);
                }
            }
            _ => {
                for (k, i) in (first..first + n).enumerate() {
                    let leaf = encode(k);
                    let old = self.load(table, i);
                    match self.fmt.decode(old, level) {
                        Pte::Table(t) => {
                            if self.cas(table, i, old, leaf).is_err() {
                                self.undo_leaves(table, first, k);
                                return Err(PgtableError::Exists);
                            }
                            // An empty table a block replaced. No caller's sync covers
                            // it and hardware may still cache the path through it, so
                            // it waits for `trim` or drop.
                            self.park_subtree(t, level + 1, 0);
                        }
                        _ => self.store(table, i, leaf),
                    }
                }
            }
        }
        Ok(size)
    }

    fn undo_leaves(&self, table: PhysAddr, first: usize, count: usize) {
        for i in first..first + count {
            self.store(table, i, 0);
        }
    }

    /// Walks to the table at `level` covering `iova`. Missing tables are all
    /// allocated before any is installed, so running out of memory leaves
    /// nothing behind; a table another thread installed first is used as is.
    fn walk_alloc(&self, iova: u64, level: usize) -> Result<PhysAddr, PgtableError> {
        let mut table = self.root;
        let mut spare = [Spare::NONE; MAX_LEVELS];
        let mut spares = 0usize;
        let mut lvl = 0;
        let result = loop {
            if lvl == level {
                break Ok(table);
            }
            let idx = self.geo.index(iova, lvl);
            let pte = self.load(table, idx);
            match self.fmt.decode(pte, lvl) {
                Pte::Table(next) => {
                    table = next;
                    lvl += 1;
                }
                Pte::Leaf { .. } => break Err(PgtableError::Exists),
                Pte::Invalid => {
                    if spares == 0 {
                        for _ in lvl + 1..=level {
                            match self.alloc_table() {
                                Some(t) => {
                                    spare[spares] = t;
                                    spares += 1;
                                }
                                None => {
                                    for &t in &spare[..spares] {
                                        self.free_unpublished(t);
                                    }
                                    return Err(PgtableError::NoMemory);
                                }
                            }
                        }
                    }
                    let new = spare[spares - 1].table;
                    if self
                        .cas(table, idx, pte, self.fmt.encode_table(new, lvl))
                        .is_ok()
                    {
                        spares -= 1;
                        table = new;
                        lvl += 1;
                    }
                    // Else another thread installed a table first: look again.
                }
            }
        };
        for &t in &spare[..spares] {
            self.free_unpublished(t);
        }
        result
    }

    fn subtree_is_empty(&self, table: PhysAddr, level: usize) -> bool {
        (0..self.geo.entries(level)).all(|i| match self.fmt.decode(self.load(table, i), level) {
            Pte::Invalid => true,
            Pte::Leaf { .. } => false,
            Pte::Table(t) => level + 1 < self.geo.levels && self.subtree_is_empty(t, level + 1),
        })
    }

    // ---- unmap -------------------------------------------------------------

    /// Unmaps up to `pgcount` pages of `pgsize` from `iova` (within one
    /// last-level table) and returns the bytes unmapped, recording them in
    /// `gather`.
    ///
    /// A hole ends the call (returns what was unmapped before it, possibly 0);
    /// a larger leaf covering `iova` is removed whole and its full size
    /// returned; a table where a `pgsize` leaf was expected is torn down
    /// whole. Detached tables wait on `gather` (see
    /// [`release_gathered`](Self::release_gathered)). Invalid arguments unmap
    /// nothing and return 0, as in Linux.
    pub fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> u64 {
        let Some(level) = self.geo.leaf_level_for(pgsize) else {
            return 0;
        };
        if pgcount == 0 || !iova.is_aligned(pgsize) || !self.geo.input_fits(iova.raw(), pgsize) {
            return 0;
        }
        let mut table = self.root;
        let mut parent: Option<(PhysAddr, usize)> = None;
        for lvl in 0..level {
            let idx = self.geo.index(iova.raw(), lvl);
            let pte = self.load(table, idx);
            match self.fmt.decode(pte, lvl) {
                Pte::Table(next) => {
                    parent = Some((table, idx));
                    table = next;
                }
                Pte::Invalid => return 0,
                Pte::Leaf { .. } => {
                    if self.cas(table, idx, pte, 0).is_err() {
                        return 0; // someone else unmapped it first
                    }
                    let size = self.geo.entry_size(lvl);
                    gather.add_range(Iova::new(iova.raw() & !(size - 1)), size);
                    return size;
                }
            }
        }
        let first = self.geo.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);
        let mut done = 0usize;
        for i in first..first + n {
            let pte = self.load(table, i);
            match self.fmt.kind(pte, level) {
                PteKind::Invalid => break,
                PteKind::Leaf => self.store(table, i, 0),
                PteKind::Table => {
                    if let Pte::Table(t) = self.fmt.decode(pte, level) {
                        if self.cas(table, i, pte, 0).is_ok() {
                            self.park_for_gather(t, level + 1, gather);
                        }
                    }
                }
            }
            done += 1;
        }
        let bytes = done as u64 * pgsize;
        gather.add_range(iova, bytes);
        // This call emptied a whole table: no other disjoint user can be in it.
        if self.reclaim && done == self.geo.entries(level) {
            if let Some((ptable, pidx)) = parent {
                let pte = self.load(ptable, pidx);
                let still_ours = self.fmt.decode(pte, level - 1) == Pte::Table(table);
                if still_ours && self.cas(ptable, pidx, pte, 0).is_ok() {
                    self.park_for_gather(table, level, gather);
                }
            }
        }
        bytes
    }

    // ---- lookup and walk ---------------------------------------------------

    /// Translates `iova`, or `None` when nothing maps it.
    // Its own walk rather than `lookup_raw`: this is the hottest lookup, and
    // building a `Mapping` out of line costs it about 25% (measured).
    #[inline]
    pub fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        if !self.geo.input_fits(iova.raw(), 1) {
            return None;
        }
        let mut table = self.root;
        for lvl in 0..self.geo.levels {
            let idx = self.geo.index(iova.raw(), lvl);
            match self.fmt.decode(self.load(table, idx), lvl) {
                Pte::Invalid => return None,
                Pte::Table(next) => table = next,
                Pte::Leaf { pa, .. } => {
                    let mask = self.geo.entry_size(lvl) - 1;
                    return Some(PhysAddr::new(pa.raw() + (iova.raw() & mask)));
                }
            }
        }
        None
    }

    /// The leaf mapping `iova`, if any.
    pub fn lookup(&self, iova: Iova) -> Option<Mapping> {
        self.lookup_raw(iova).map(|(m, _, _, _)| m)
    }

    /// The leaf with its table, index and raw descriptor.
    fn lookup_raw(&self, iova: Iova) -> Option<(Mapping, PhysAddr, usize, u64)> {
        if !self.geo.input_fits(iova.raw(), 1) {
            return None;
        }
        let mut table = self.root;
        for lvl in 0..self.geo.levels {
            let idx = self.geo.index(iova.raw(), lvl);
            let pte = self.load(table, idx);
            match self.fmt.decode(pte, lvl) {
                Pte::Invalid => return None,
                Pte::Table(next) => table = next,
                Pte::Leaf { pa, prot } => {
                    let size = self.geo.entry_size(lvl);
                    let m = Mapping {
                        iova: Iova::new(iova.raw() & !(size - 1)),
                        size,
                        pa,
                        prot,
                        level: lvl,
                    };
                    return Some((m, table, idx, pte));
                }
            }
        }
        None
    }

    /// Every leaf overlapping `[start, start + size)`, in IOVA order.
    pub fn walk(&self, start: Iova, size: u64) -> Vec<Mapping> {
        let mut out = Vec::new();
        self.for_each_leaf(
            start.raw(),
            start.raw().saturating_add(size),
            &mut |m, _, _, _| out.push(m),
        );
        out
    }

    fn for_each_leaf(
        &self,
        start: u64,
        end: u64,
        f: &mut impl FnMut(Mapping, PhysAddr, usize, u64),
    ) {
        self.leaf_walk(self.root, 0, 0, start, end, f);
    }

    fn leaf_walk(
        &self,
        table: PhysAddr,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        f: &mut impl FnMut(Mapping, PhysAddr, usize, u64),
    ) {
        let span = self.geo.entry_size(level);
        let lo_idx = if start > base {
            ((start - base) / span) as usize
        } else {
            0
        };
        for i in lo_idx..self.geo.entries(level) {
            let lo = base + i as u64 * span;
            if lo >= end {
                break;
            }
            let pte = self.load(table, i);
            match self.fmt.decode(pte, level) {
                Pte::Invalid => {}
                Pte::Table(t) => self.leaf_walk(t, level + 1, lo, start, end, f),
                Pte::Leaf { pa, prot } => f(
                    Mapping {
                        iova: Iova::new(lo),
                        size: span,
                        pa,
                        prot,
                        level,
                    },
                    table,
                    i,
                    pte,
                ),
            }
        }
    }

    // ---- dirty tracking ----------------------------------------------------

    /// Turns dirty tracking on or off. On makes every writable leaf
    /// writable-clean, and new writable leaves start clean; hardware marks
    /// them when the device writes.
    ///
    /// # Errors
    /// [`PgtableError::NotSupported`] for formats without a dirty bit.
    pub fn set_dirty_tracking(&self, enable: bool) -> Result<(), PgtableError> {
        if !self.fmt.supports_dirty() {
            return Err(PgtableError::NotSupported);
        }
        self.dirty_tracking.store(enable, Ordering::Relaxed);
        if enable {
            let mut bitmap = DirtyBitmap::new(Iova::ZERO, 0, 1 << self.geo.granule_shift);
            self.read_and_clear_dirty(Iova::ZERO, u64::MAX, &mut bitmap, true);
        }
        Ok(())
    }

    /// Whether dirty tracking is on.
    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking.load(Ordering::Relaxed)
    }

    /// Records every dirty leaf overlapping `[iova, iova + size)` in `bitmap`
    /// and, with `clear`, makes it writable-clean again. Returns the leaves
    /// found dirty. A leaf the device dirties while this runs is either
    /// reported now or stays dirty for the next call.
    pub fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        bitmap: &mut DirtyBitmap,
        clear: bool,
    ) -> usize {
        let mut found = 0;
        self.for_each_leaf(
            iova.raw(),
            iova.raw().saturating_add(size),
            &mut |m, table, idx, mut pte| loop {
                if self.fmt.dirty_state(pte, m.level) != Some(true) {
                    break;
                }
                if !clear {
                    bitmap.set_range(m.iova.raw(), m.size);
                    found += 1;
                    break;
                }
                match self.cas(table, idx, pte, self.fmt.make_clean(pte)) {
                    Ok(_) => {
                        bitmap.set_range(m.iova.raw(), m.size);
                        found += 1;
                        break;
                    }
                    Err(now) => pte = now,
                }
            },
        );
        found
    }

    /// What hardware does for a device write to `iova`: translate, check the
    /// write permission, and, while dirty tracking is on, mark a
    /// writable-clean leaf dirty. `None` is a fault.
    pub fn hw_write(&self, iova: Iova) -> Option<PhysAddr> {
        let (m, table, idx, mut pte) = self.lookup_raw(iova)?;
        if !m.prot.contains(Prot::WRITE) {
            return None;
        }
        while self.dirty_tracking() && self.fmt.dirty_state(pte, m.level) == Some(false) {
            match self.cas(table, idx, pte, self.fmt.make_dirty(pte)) {
                Ok(_) => break,
                Err(now) => pte = now,
            }
        }
        Some(PhysAddr::new(m.pa.raw() + (iova.raw() - m.iova.raw())))
    }
}

impl<F: Format, M: TableMemory> Drop for IoPageTable<F, M> {
    fn drop(&mut self) {
        self.trim();
        let mut tables = Vec::new();
        self.for_each_table(self.root, 0, &mut |t, l| tables.push((t, l)));
        for (t, l) in tables.into_iter().rev() {
            // SAFETY: `&mut self` in drop: no walk is in flight and every page
            // of the tree is freed exactly once, children before parents.
            unsafe { self.mem.free_table(t, self.geo.table_bytes(l)) };
        }
    }
}
