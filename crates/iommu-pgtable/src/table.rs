//! The generic walker: map, unmap, translate, walk and dirty tracking for any
//! [`Format`], shared between threads.
//!
//! Invariants:
//! - a refused `map_pages` writes nothing: every check (alignment, range,
//!   entries in the way, table memory) happens before the first leaf is
//!   written, and the tables a walk needs are allocated before any is
//!   installed (a table that grows, see [`Format::initial_root_level`],
//!   may keep a new, empty root level, as Linux's AMD v1 tables do);
//! - new tables are installed with compare-and-exchange, so threads mapping
//!   disjoint ranges may share the path to them;
//! - a leaf is never split: unmapping part of one removes all of it;
//! - while the table is shared (`&self`) no table page goes back to the
//!   allocator. Pages an unmap detaches are parked under their gather's token
//!   and become reusable only when [`IoPageTable::release_gathered`] is called
//!   after that gather's IOTLB sync. Empty tables a block replaces in
//!   `map_pages` (which has no gather) are taken up by the next unmap that
//!   removes something: its gather's range grows to cover them, so the sync
//!   its caller does anyway releases them too. No page waits for a
//!   maintenance call, so table memory stays bounded by what the tree needs.
//!   `trim` (exclusive) and drop return pages to memory. A reader racing
//!   with an unmap of its own range may see stale entries, never freed
//!   memory.
//!
//! - no path that can run out of memory aborts: table pages come from
//!   [`TableMemory`] (which may refuse), and the bookkeeping of detached
//!   pages never allocates on the unmap path, because its capacity is
//!   reserved, fallibly, when the map path allocates the page.
//!
//! The only `unsafe` here is calling [`TableMemory`]'s descriptor accessors,
//! whose contract ("the table is live, the index in bounds") the walker keeps
//! by only following table descriptors it wrote itself (which the unsafe
//! [`Format`] contract guarantees) and indexing below `Geometry::entries`.

use crate::format::MAX_LEVELS;
use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind, TableBits, TableMemory};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, Unmapped};

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
///
/// Both lists have room for every non-root page the table owns (`owned`),
/// reserved when the page is allocated, so moving a page between the tree
/// and the lists never allocates (and so never aborts on a full heap).
#[derive(Debug, Default)]
struct Parked {
    /// `(gather token, table)`; token 0 waits for the next unmap's gather.
    pending: Vec<(u64, PhysAddr)>,
    /// The IOVA span (first and last byte) of the token-0 pages.
    orphans: Option<(u64, u64)>,
    /// Zeroed pages ready for reuse.
    pool: Vec<PhysAddr>,
    /// Non-root pages this table holds from memory (in the tree, parked or
    /// pooled), plus fresh ones a walk is allocating right now.
    owned: usize,
    /// Tokens of gathers whose sync failed: their pages wait for a full
    /// invalidation ([`IoPageTable::release_held_after`]).
    held: Vec<u64>,
}

/// Pushes without growing: the capacity was reserved when the page was
/// allocated. Should it ever be missing, the page is leaked (never freed,
/// never reused), which costs memory but not safety.
fn push_reserved<T>(v: &mut Vec<T>, item: T) {
    if v.len() < v.capacity() {
        v.push(item);
    }
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
    /// A clear bitmap for `[base, base + size)` at `pgsize` granularity.
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] unless `pgsize` is a power of two,
    /// `base` is aligned to it and the range ends at or below the top of the
    /// 64-bit space; [`PgtableError::NoMemory`] when the bits cannot be
    /// allocated (nothing aborts on a huge size).
    pub fn new(base: Iova, size: u64, pgsize: u64) -> Result<Self, PgtableError> {
        if !pgsize.is_power_of_two() || !base.is_aligned(pgsize) {
            return Err(PgtableError::InvalidArgument);
        }
        // The range may end exactly at 2^64, so compute in 128 bits.
        if u128::from(base.raw()) + u128::from(size) > 1u128 << 64 {
            return Err(PgtableError::InvalidArgument);
        }
        let pgshift = pgsize.trailing_zeros();
        let pages = size.div_ceil(pgsize);
        let words = usize::try_from(pages.div_ceil(64)).map_err(|_| PgtableError::NoMemory)?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(words)
            .map_err(|_| PgtableError::NoMemory)?;
        bits.resize(words, 0);
        Ok(Self {
            base: base.raw(),
            pgshift,
            pages,
            bits,
        })
    }

    /// The last address the bitmap covers, or `None` for an empty one.
    fn last(&self) -> Option<u64> {
        let len = u128::from(self.pages) << self.pgshift;
        (len != 0).then(|| (u128::from(self.base) + len - 1).min(u128::from(u64::MAX)) as u64)
    }

    /// Marks the pages overlapping `[iova, iova + len)` (clipped to the bitmap).
    pub fn set_range(&mut self, iova: u64, len: u64) {
        let Some(bm_last) = self.last() else { return };
        if len == 0 {
            return;
        }
        let start = iova.max(self.base);
        let last = iova.saturating_add(len - 1).min(bm_last);
        if start > last {
            return;
        }
        for p in (start - self.base) >> self.pgshift..=(last - self.base) >> self.pgshift {
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

/// No leaf level for a page size.
const NO_LEVEL: u8 = u8::MAX;

/// The bits of the packed root that hold its level.
const ROOT_LEVEL_MASK: u64 = 63;

/// The geometry's per-level numbers, worked out once, so that the hot paths
/// neither multiply nor divide (Linux's io-pgtable recomputes them from its
/// configuration on every use), and the format's table descriptors, so that
/// a walk down existing tables decodes nothing.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// log2 of the bytes one entry spans, per level.
    shift: [u32; MAX_LEVELS],
    /// Entries minus one, per level.
    index_mask: [u64; MAX_LEVELS],
    /// log2 of the span of a root at each level (64: the whole space).
    top_shift: [u32; MAX_LEVELS],
    /// The leaf level of each log2 page size, or [`NO_LEVEL`].
    leaf_level: [u8; 64],
    /// Table descriptors of every level above the last, when the format
    /// gives them for all of those levels.
    tables: Option<[TableBits; MAX_LEVELS]>,
    /// Leaves the format tells by their bits, per level
    /// ([`LeafBits::NONE`] where it does not).
    leaves: [LeafBits; MAX_LEVELS],
}

impl Walk {
    fn new(fmt: &impl Format, geo: &Geometry) -> Self {
        let mut w = Walk {
            shift: [0; MAX_LEVELS],
            index_mask: [0; MAX_LEVELS],
            top_shift: [64; MAX_LEVELS],
            leaf_level: [NO_LEVEL; 64],
            tables: None,
            leaves: [LeafBits::NONE; MAX_LEVELS],
        };
        for l in 0..geo.levels {
            w.shift[l] = geo.entry_shift(l);
            w.index_mask[l] = geo.entries(l) as u64 - 1;
            if l > 0 {
                w.top_shift[l] = geo.entry_shift(l) + geo.bits_per_level;
            }
            if geo.is_leaf_level(l) {
                w.leaf_level[w.shift[l] as usize] = l as u8;
                w.leaves[l] = fmt.leaf_bits(l).unwrap_or(LeafBits::NONE);
            }
        }
        // Matches nothing: the slot of the last level, never asked about.
        let mut tables = [TableBits {
            type_mask: 0,
            type_bits: 1,
            tag: 0,
        }; MAX_LEVELS];
        let all = (0..geo.levels - 1).all(|l| fmt.table_bits(l).map(|b| tables[l] = b).is_some());
        if all {
            w.tables = Some(tables);
        }
        w
    }

    /// Index of `iova` in the table at `level`.
    #[inline(always)]
    fn index(&self, iova: u64, level: usize) -> usize {
        // A valid geometry keeps every shift below 64, so the wrapping
        // shift is exact (and has no overflow check in debug builds).
        (iova.wrapping_shr(self.shift[level]) & self.index_mask[level]) as usize
    }

    /// Whether a root at `level` covers every address up to `last`.
    #[inline(always)]
    fn covers(&self, level: usize, last: u64) -> bool {
        let shift = self.top_shift[level];
        shift >= 64 || last >> shift == 0
    }

    /// Bytes one entry at `level` spans, minus one.
    #[inline(always)]
    fn offset_mask(&self, level: usize) -> u64 {
        (1u64 << self.shift[level]) - 1
    }

    /// The level whose leaves are `pgsize` bytes.
    #[inline(always)]
    fn leaf_level_for(&self, pgsize: u64) -> Option<usize> {
        if !pgsize.is_power_of_two() {
            return None;
        }
        match self.leaf_level[pgsize.trailing_zeros() as usize] {
            NO_LEVEL => None,
            l => Some(l as usize),
        }
    }
}

/// A page table of format `F` whose tables live in `M`; `Send + Sync`.
#[derive(Debug)]
pub struct IoPageTable<F: Format, M: TableMemory> {
    fmt: F,
    geo: Geometry,
    walk: Walk,
    mem: M,
    /// The root table and the level it sits at, packed (tables are at
    /// least 64-byte aligned). It changes only when the table grows (see
    /// [`Format::initial_root_level`]); the old root stays in the tree, so a
    /// walk that read the old value is still a walk of this table.
    root: AtomicU64,
    /// Whether the root can change; when not, it is `root0` at level 0 and
    /// the hot paths walk from there without reading `root`.
    grows: bool,
    root0: PhysAddr,
    reclaim: bool,
    dirty_tracking: AtomicBool,
    parked: spin::Mutex<Parked>,
    /// Whether token-0 pages wait (read without the lock by every unmap).
    orphaned: AtomicBool,
}

impl<F: Format, M: TableMemory> IoPageTable<F, M> {
    /// Creates an empty table (allocates the root). Emptied tables are kept.
    ///
    /// # Errors
    /// [`PgtableError::NoMemory`] when the root cannot be allocated;
    /// [`PgtableError::InvalidArgument`] for a geometry the walker cannot
    /// use (see [`Geometry::is_valid`]).
    pub fn new(fmt: F, mem: M) -> Result<Self, PgtableError> {
        let geo = *fmt.geometry();
        if !geo.is_valid() {
            return Err(PgtableError::InvalidArgument);
        }
        let start = fmt.initial_root_level();
        if start >= geo.levels {
            return Err(PgtableError::InvalidArgument);
        }
        let root = mem
            .alloc_table(geo.table_bytes(start))
            .ok_or(PgtableError::NoMemory)?;
        if root.raw() & ROOT_LEVEL_MASK != 0 {
            // SAFETY: fresh from memory and never written into the tree.
            unsafe { mem.free_table(root, geo.table_bytes(start)) };
            return Err(PgtableError::NoMemory);
        }
        Ok(Self {
            walk: Walk::new(&fmt, &geo),
            fmt,
            geo,
            mem,
            root: AtomicU64::new(root.raw() | start as u64),
            grows: start > 0,
            root0: root,
            reclaim: false,
            dirty_tracking: AtomicBool::new(false),
            parked: spin::Mutex::new(Parked::default()),
            orphaned: AtomicBool::new(false),
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

    /// Physical address of the root table (what a context descriptor points
    /// at). For a format that grows ([`Format::initial_root_level`]) it
    /// changes when the table grows; read it with
    /// [`root_level`](Self::root_level) through [`top`](Self::top).
    pub fn root(&self) -> PhysAddr {
        self.top().0
    }

    /// The level the root sits at: 0 but for a table that starts short and
    /// grows (AMD v1: the device table entry's mode is
    /// `AmdV1::amd_level(root_level)`).
    pub fn root_level(&self) -> usize {
        self.top().1
    }

    /// The root and its level, read together.
    #[inline(always)]
    pub fn top(&self) -> (PhysAddr, usize) {
        if !self.grows {
            return (self.root0, 0);
        }
        let v = self.root.load(Ordering::Acquire);
        (
            PhysAddr::new(v & !ROOT_LEVEL_MASK),
            (v & ROOT_LEVEL_MASK) as usize,
        )
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
        let (root, start) = self.top();
        if level <= start {
            return level == start && target == root;
        }
        let mut found = false;
        self.for_each_table(root, start, &mut |t, l| found |= l == level && t == target);
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

    /// The table the descriptor `pte` at `level` (above the last) points
    /// to, or what else it is. Through the format's [`TableBits`] when it
    /// gives them, so a walk down existing tables decodes nothing.
    #[inline(always)]
    fn table_below(&self, pte: u64, level: usize) -> Result<PhysAddr, Pte> {
        if let Some(bits) = &self.walk.tables {
            if let Some(t) = bits[level].table(pte) {
                return Ok(PhysAddr::new(t));
            }
            return Err(self.fmt.decode(pte, level));
        }
        match self.fmt.decode(pte, level) {
            Pte::Table(t) => Ok(t),
            other => Err(other),
        }
    }

    /// The descriptor pointing at `table` from a table at `level`, if the
    /// format can express that address: it must decode to `table` again (and
    /// be `table + tag` where the walk uses [`TableBits`]). A table memory
    /// handing out addresses a descriptor cannot hold counts as out of
    /// memory rather than becoming a wild pointer.
    fn table_descriptor(&self, table: PhysAddr, level: usize) -> Option<u64> {
        let desc = self.fmt.encode_table(table, level);
        let fast_ok = self
            .walk
            .tables
            .is_none_or(|bits| bits[level].table(desc) == Some(table.raw()));
        (fast_ok && self.fmt.decode(desc, level) == Pte::Table(table)).then_some(desc)
    }

    // ---- table pages ------------------------------------------------------

    /// Fills `out` with zeroed non-root tables: from the reuse pool first,
    /// else fresh from memory. All or nothing.
    fn alloc_tables(&self, out: &mut [Spare]) -> Result<(), PgtableError> {
        let fresh = {
            let mut parked = self.parked.lock();
            let mut taken = 0;
            while taken < out.len() {
                let Some(t) = parked.pool.pop() else { break };
                out[taken] = Spare {
                    table: t,
                    pooled: true,
                };
                taken += 1;
            }
            let fresh = out.len() - taken;
            if fresh > 0 {
                // Room in both lists for every page once these exist, so
                // that detaching them later never has to allocate.
                let need = parked.owned + fresh;
                let Parked { pending, pool, .. } = &mut *parked;
                let reserved = pending
                    .try_reserve(need.saturating_sub(pending.len()))
                    .and_then(|()| pool.try_reserve(need.saturating_sub(pool.len())));
                if reserved.is_err() {
                    for s in &out[..taken] {
                        parked.pool.push(s.table);
                    }
                    return Err(PgtableError::NoMemory);
                }
                parked.owned = need;
            }
            fresh
        };
        let bytes = self.geo.table_bytes(1);
        let first_fresh = out.len() - fresh;
        for i in first_fresh..out.len() {
            match self.mem.alloc_table(bytes) {
                Some(t) => {
                    out[i] = Spare {
                        table: t,
                        pooled: false,
                    }
                }
                None => {
                    for s in &out[first_fresh..i] {
                        // SAFETY: fresh from memory and never written into the tree.
                        unsafe { self.mem.free_table(s.table, bytes) };
                    }
                    let mut parked = self.parked.lock();
                    parked.owned -= fresh;
                    for s in &out[..first_fresh] {
                        push_reserved(&mut parked.pool, s.table);
                    }
                    return Err(PgtableError::NoMemory);
                }
            }
        }
        Ok(())
    }

    /// Gives back a table this walk allocated but never installed.
    fn free_unpublished(&self, spare: Spare) {
        if spare.pooled {
            // A reader racing with an old unmap may still look at a pooled
            // page, so it stays allocated.
            push_reserved(&mut self.parked.lock().pool, spare.table);
        } else {
            // SAFETY: fresh from memory and never written into the tree:
            // nothing else can refer to it.
            unsafe { self.mem.free_table(spare.table, self.geo.table_bytes(1)) };
            self.parked.lock().owned -= 1;
        }
    }

    /// Parks every table of the subtree rooted at `table` (at `level`) under
    /// `token`; returns how many.
    fn park_subtree(&self, table: PhysAddr, level: usize, token: u64) -> u32 {
        let mut parked = self.parked.lock();
        let mut n = 0u32;
        self.for_each_table(table, level, &mut |t, _| {
            push_reserved(&mut parked.pending, (token, t));
            n += 1;
        });
        n
    }

    /// Parks the empty subtree at `table` (at `level`), which a block at
    /// `[iova, iova + size)` replaced, until an unmap's gather takes it up.
    fn park_orphan(&self, table: PhysAddr, level: usize, iova: u64, size: u64) {
        let mut parked = self.parked.lock();
        let mut n = 0u32;
        self.for_each_table(table, level, &mut |t, _| {
            push_reserved(&mut parked.pending, (0, t));
            n += 1;
        });
        let last = iova.saturating_add(size - 1);
        parked.orphans = Some(match parked.orphans {
            Some((lo, hi)) => (lo.min(iova), hi.max(last)),
            None => (iova, last),
        });
        self.orphaned.store(true, Ordering::Relaxed);
    }

    /// Hands the pages waiting for a gather to `gather`, whose range grows
    /// to cover where they were: the caller's sync of it then covers them.
    #[cold]
    #[inline(never)]
    fn adopt_orphans(&self, gather: &mut IotlbGather) {
        let mut parked = self.parked.lock();
        let Some((lo, last)) = parked.orphans.take() else {
            return;
        };
        self.orphaned.store(false, Ordering::Relaxed);
        let token = match gather.token() {
            0 => NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            t => t,
        };
        let mut n = 0u32;
        for (tok, _) in parked.pending.iter_mut().filter(|(tok, _)| *tok == 0) {
            *tok = token;
            n += 1;
        }
        drop(parked);
        for _ in 0..n {
            gather.note_freed_table(token);
        }
        // `last - lo + 1` overflows only for the whole 64-bit space, which
        // `add_range` clamps anyway.
        gather.add_range(Iova::new(lo), (last - lo).saturating_add(1));
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
        self.release_token(gather.token());
    }

    fn release_token(&self, token: u64) {
        if token == 0 {
            return;
        }
        let entries = self.geo.entries(1);
        let mut parked = self.parked.lock();
        let Parked { pending, pool, .. } = &mut *parked;
        pending.retain(|&(tok, t)| {
            if tok != token {
                return true;
            }
            for i in 0..entries {
                self.store(t, i, 0);
            }
            push_reserved(pool, t);
            false
        });
    }

    /// The sync of `gather` did not complete: the table pages its unmaps
    /// detached may still be walked from the IOMMU's caches. They stay
    /// parked until a full invalidation that starts later completes (see
    /// [`release_held_after`](Self::release_held_after)).
    pub fn hold_gathered(&self, gather: &IotlbGather) {
        if gather.token() != 0 {
            self.parked.lock().held.push(gather.token());
        }
    }

    /// Runs `flush`, a full invalidation of this table's translations, and
    /// if it succeeds makes reusable the pages every earlier
    /// [`hold_gathered`](Self::hold_gathered) kept back: they were detached
    /// before the flush started. On failure they stay held.
    ///
    /// # Errors
    /// `flush`'s.
    pub fn release_held_after<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let held = core::mem::take(&mut self.parked.lock().held);
        let r = flush();
        match r {
            Ok(()) => held.into_iter().for_each(|t| self.release_token(t)),
            Err(_) => self.parked.lock().held.extend(held),
        }
        r
    }

    /// Returns every parked and pooled page to memory. Exclusive access
    /// proves no walk is in flight; the caller promises the hardware no
    /// longer caches any of them.
    pub fn trim(&mut self) {
        let bytes = self.geo.table_bytes(1);
        let parked = self.parked.get_mut();
        parked.orphans = None;
        *self.orphaned.get_mut() = false;
        let freed = parked.pending.len() + parked.pool.len();
        for t in parked
            .pending
            .drain(..)
            .map(|(_, t)| t)
            .chain(parked.pool.drain(..))
        {
            // SAFETY: parked and pooled pages are detached from the tree and
            // `&mut self` guarantees no walk still holds one.
            unsafe { self.mem.free_table(t, bytes) };
        }
        parked.owned -= freed;
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
    #[inline]
    pub fn map_pages(
        &self,
        iova: Iova,
        pa: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, PgtableError> {
        let level = self
            .walk
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
        let first = self.walk.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);

        // Only what this call maps (one last-level table): a root covering
        // its first page covers the rest, so a root grows only for an
        // address nothing can be mapped at yet.
        if self.grows {
            let (_, start) = self.top();
            let last = iova.raw() + (pgsize * n as u64 - 1);
            if start > level || !self.walk.covers(start, last) {
                self.grow(last, level)?;
            }
        }
        let table = self.walk_alloc(iova.raw(), level)?;
        // The common case: every target slot is empty. A plain loop: the
        // iterator form stayed an out-of-line call for some table memories.
        for i in first..first + n {
            if self.load(table, i) != 0 {
                return self.map_over(table, first, n, iova, pa, pgsize, level, prot);
            }
        }
        let clean = self.dirty_tracking.load(Ordering::Relaxed) && prot.contains(Prot::WRITE);
        let mut leaf = self.leaf_for(pa, level, prot, clean);
        match self.fmt.leaf_step(pa, pgsize, n) {
            Some(step) => {
                // One encoding, then add the step.
                for i in first..first + n {
                    self.store(table, i, leaf);
                    leaf = leaf.wrapping_add(step);
                }
            }
            None => {
                for (k, i) in (first..first + n).enumerate() {
                    let pa = PhysAddr::new(pa.raw() + k as u64 * pgsize);
                    self.store(table, i, self.leaf_for(pa, level, prot, clean));
                }
            }
        }
        Ok(pgsize * n as u64)
    }

    /// [`map_pages`](Self::map_pages) into slots of `table` that are not all
    /// empty: refused when a leaf, or a table that still maps something, is
    /// in the way; empty tables in the way are replaced by the new leaves.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn map_over(
        &self,
        table: PhysAddr,
        first: usize,
        n: usize,
        iova: Iova,
        pa: PhysAddr,
        pgsize: u64,
        level: usize,
        prot: Prot,
    ) -> Result<u64, PgtableError> {
        // Check every target slot before writing any of them.
        for i in first..first + n {
            let pte = self.load(table, i);
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
                }
            }
        }
        let clean = self.dirty_tracking.load(Ordering::Relaxed) && prot.contains(Prot::WRITE);
        for (k, i) in (first..first + n).enumerate() {
            let leaf = self.leaf_for(
                PhysAddr::new(pa.raw() + k as u64 * pgsize),
                level,
                prot,
                clean,
            );
            let old = self.load(table, i);
            match self.fmt.decode(old, level) {
                Pte::Table(t) => {
                    if self.cas(table, i, old, leaf).is_err() {
                        self.undo_leaves(table, first, k);
                        return Err(PgtableError::Exists);
                    }
                    // An empty table a block replaced. Hardware may still
                    // cache the path through it and no gather covers it yet,
                    // so it waits for the next unmap's.
                    self.park_orphan(t, level + 1, iova.raw() + k as u64 * pgsize, pgsize);
                }
                _ => self.store(table, i, leaf),
            }
        }
        Ok(pgsize * n as u64)
    }

    /// The leaf for `pa` at `level`, writable-clean when `clean`.
    #[inline(always)]
    fn leaf_for(&self, pa: PhysAddr, level: usize, prot: Prot, clean: bool) -> u64 {
        let leaf = self.fmt.encode_leaf(pa, level, prot);
        if clean {
            self.fmt.make_clean(leaf)
        } else {
            leaf
        }
    }

    fn undo_leaves(&self, table: PhysAddr, first: usize, count: usize) {
        for i in first..first + count {
            self.store(table, i, 0);
        }
    }

    /// Adds levels above the root until it covers every address up to
    /// `last` and sits at or above `level` (Linux's AMD v1
    /// `increase_address_space`): each new root holds the old one as its
    /// first entry and is published with compare-and-exchange, so walks
    /// that read the old root stay walks of this table.
    #[cold]
    #[inline(never)]
    fn grow(&self, last: u64, level: usize) -> Result<(), PgtableError> {
        loop {
            let packed = self.root.load(Ordering::Acquire);
            let old = PhysAddr::new(packed & !ROOT_LEVEL_MASK);
            let start = (packed & ROOT_LEVEL_MASK) as usize;
            if start <= level && self.walk.covers(start, last) {
                return Ok(());
            }
            // A root at level 0 covers the whole input space, and the
            // caller checked the request fits it.
            let Some(up) = start.checked_sub(1) else {
                return Err(PgtableError::OutOfRange);
            };
            let Some(desc) = self.table_descriptor(old, up) else {
                return Err(PgtableError::NoMemory);
            };
            // The new root: a level-0 root may be smaller than other tables.
            let bytes = self.geo.table_bytes(up);
            let new = if up == 0 {
                self.own_one_more()?;
                match self.mem.alloc_table(bytes) {
                    Some(t) => Spare {
                        table: t,
                        pooled: false,
                    },
                    None => {
                        self.parked.lock().owned -= 1;
                        return Err(PgtableError::NoMemory);
                    }
                }
            } else {
                let mut spare = [Spare::NONE];
                self.alloc_tables(&mut spare)?;
                spare[0]
            };
            let abandon = |new: Spare| {
                self.store(new.table, 0, 0);
                if up == 0 {
                    // SAFETY: fresh from memory and never published.
                    unsafe { self.mem.free_table(new.table, bytes) };
                    self.parked.lock().owned -= 1;
                } else {
                    self.free_unpublished(new);
                }
            };
            if new.table.raw() & ROOT_LEVEL_MASK != 0 {
                abandon(new);
                return Err(PgtableError::NoMemory);
            }
            self.store(new.table, 0, desc);
            if self
                .root
                .compare_exchange(
                    packed,
                    new.table.raw() | up as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // Another thread grew the table first: look again.
                abandon(new);
            }
        }
    }

    /// Reserves room in the detached-page lists for one more page the
    /// table owns (the old root, when a new level-0 root replaces it).
    fn own_one_more(&self) -> Result<(), PgtableError> {
        let mut parked = self.parked.lock();
        let need = parked.owned + 1;
        let Parked { pending, pool, .. } = &mut *parked;
        pending
            .try_reserve(need.saturating_sub(pending.len()))
            .and_then(|()| pool.try_reserve(need.saturating_sub(pool.len())))
            .map_err(|_| PgtableError::NoMemory)?;
        parked.owned = need;
        Ok(())
    }

    /// Walks to the table at `level` covering `iova`, creating missing
    /// tables on the way (see [`grow_path`](Self::grow_path)).
    #[inline(always)]
    fn walk_alloc(&self, iova: u64, level: usize) -> Result<PhysAddr, PgtableError> {
        if !self.grows {
            return self.walk_alloc_from(self.root0, 0, iova, level);
        }
        let (table, start) = self.top();
        if level < start {
            return Err(PgtableError::OutOfRange);
        }
        self.walk_alloc_from(table, start, iova, level)
    }

    #[inline(always)]
    fn walk_alloc_from(
        &self,
        mut table: PhysAddr,
        start: usize,
        iova: u64,
        level: usize,
    ) -> Result<PhysAddr, PgtableError> {
        for lvl in start..level {
            let pte = self.load(table, self.walk.index(iova, lvl));
            match self.table_below(pte, lvl) {
                Ok(next) => table = next,
                Err(Pte::Invalid) => return self.grow_path(iova, level, table, lvl),
                Err(_) => return Err(PgtableError::Exists),
            }
        }
        Ok(table)
    }

    /// Continues [`walk_alloc`](Self::walk_alloc) from `table` at `lvl`,
    /// where a table is missing. Missing tables are all allocated before any
    /// is installed, so running out of memory leaves nothing behind; a table
    /// another thread installed first is used as is.
    #[cold]
    #[inline(never)]
    fn grow_path(
        &self,
        iova: u64,
        level: usize,
        mut table: PhysAddr,
        mut lvl: usize,
    ) -> Result<PhysAddr, PgtableError> {
        let mut spare = [Spare::NONE; MAX_LEVELS];
        let mut spares = 0usize;
        let result = loop {
            if lvl == level {
                break Ok(table);
            }
            let idx = self.walk.index(iova, lvl);
            let pte = self.load(table, idx);
            match self.table_below(pte, lvl) {
                Ok(next) => {
                    table = next;
                    lvl += 1;
                }
                Err(Pte::Leaf { .. } | Pte::Table(_)) => break Err(PgtableError::Exists),
                Err(Pte::Invalid) => {
                    if spares == 0 {
                        let need = level - lvl;
                        self.alloc_tables(&mut spare[..need])?;
                        spares = need;
                    }
                    let new = spare[spares - 1].table;
                    let Some(desc) = self.table_descriptor(new, lvl) else {
                        break Err(PgtableError::NoMemory);
                    };
                    match self.cas(table, idx, pte, desc) {
                        Ok(_) => {
                            spares -= 1;
                            table = new;
                            lvl += 1;
                        }
                        // Nothing raced, yet the slot was not written: the
                        // memory refuses it (a guest-memory backing outside
                        // its range). Retrying would spin for ever.
                        Err(now) if now == pte => break Err(PgtableError::NoMemory),
                        // Another thread installed a table first: look again.
                        Err(_) => {}
                    }
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
        self.unmap_leaves(iova, pgsize, pgcount, gather).size
    }

    /// [`unmap_pages`](Self::unmap_pages), saying where the removal started:
    /// at `iova`, or below it when a larger leaf covering `iova` was removed
    /// whole. A caller walking a range continues from the end of that.
    #[inline]
    pub fn unmap_leaves(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        let Some(level) = self.walk.leaf_level_for(pgsize) else {
            return Unmapped::NOTHING;
        };
        if pgcount == 0 || !iova.is_aligned(pgsize) || !self.geo.input_fits(iova.raw(), pgsize) {
            return Unmapped::NOTHING;
        }
        let (table, parent) = if self.grows {
            let (root, start) = self.top();
            if level < start || !self.walk.covers(start, iova.raw()) {
                return Unmapped::NOTHING;
            }
            self.descend_for_unmap(root, start, iova, level, gather)
        } else {
            self.descend_for_unmap(self.root0, 0, iova, level, gather)
        };
        let table = match table {
            Ok(t) => t,
            Err(done) => return done,
        };
        let first = self.walk.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);
        let mut done = 0usize;
        let leaf = self.walk.leaves[level];
        for i in first..first + n {
            let pte = self.load(table, i);
            // The format's leaf bits spare the classification of most.
            let kind = if leaf.matches(pte) {
                PteKind::Leaf
            } else {
                self.fmt.kind(pte, level)
            };
            match kind {
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
        if bytes == 0 {
            return Unmapped::NOTHING;
        }
        gather.add_range(iova, bytes);
        if self.orphaned.load(Ordering::Relaxed) {
            self.adopt_orphans(gather);
        }
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
        Unmapped::new(iova, bytes)
    }

    /// The unmap's walk from `table` at `start` down to the table at
    /// `level`, with its parent slot; or what the unmap returns when the
    /// walk ends above (a hole, or a larger leaf removed whole).
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn descend_for_unmap(
        &self,
        mut table: PhysAddr,
        start: usize,
        iova: Iova,
        level: usize,
        gather: &mut IotlbGather,
    ) -> (Result<PhysAddr, Unmapped>, Option<(PhysAddr, usize)>) {
        let mut parent: Option<(PhysAddr, usize)> = None;
        for lvl in start..level {
            let idx = self.walk.index(iova.raw(), lvl);
            let pte = self.load(table, idx);
            match self.table_below(pte, lvl) {
                Ok(next) => {
                    parent = Some((table, idx));
                    table = next;
                }
                Err(Pte::Invalid | Pte::Table(_)) => return (Err(Unmapped::NOTHING), None),
                Err(Pte::Leaf { .. }) => {
                    if self.cas(table, idx, pte, 0).is_err() {
                        return (Err(Unmapped::NOTHING), None); // someone else unmapped it first
                    }
                    let size = self.geo.entry_size(lvl);
                    let start = Iova::new(iova.raw() & !(size - 1));
                    gather.add_range(start, size);
                    if self.orphaned.load(Ordering::Relaxed) {
                        self.adopt_orphans(gather);
                    }
                    return (Err(Unmapped::new(start, size)), None);
                }
            }
        }
        (Ok(table), parent)
    }

    // ---- lookup and walk ---------------------------------------------------

    /// Translates `iova`, or `None` when nothing maps it.
    // Its own walk rather than `lookup_raw`: this is the hottest lookup, and
    // building a `Mapping` out of line costs it about 25% (measured).
    #[inline]
    pub fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let va = iova.raw();
        // Two copies of the walk: from level 0, known at compile time, for a
        // table that never grows, and from wherever the root is now.
        if !self.grows {
            if !self.geo.input_fits(va, 1) {
                return None;
            }
            return self.translate_from(self.root0, 0, va);
        }
        let (table, lvl) = self.top();
        // What a short root covers lies inside the input space (and nothing
        // is ever mapped outside it): one check suffices.
        let inside = if lvl == 0 {
            self.geo.input_fits(va, 1)
        } else {
            self.walk.covers(lvl, va)
        };
        if !inside {
            return None;
        }
        // A start level known at compile time for the common short roots
        // (AMD v1 in mode 3 of 4, 5 or 6).
        match lvl {
            1 => self.translate_from(table, 1, va),
            2 => self.translate_from(table, 2, va),
            3 => self.translate_from(table, 3, va),
            _ => self.translate_from(table, lvl, va),
        }
    }

    #[inline(always)]
    fn translate_from(&self, mut table: PhysAddr, mut lvl: usize, va: u64) -> Option<PhysAddr> {
        let last = self.geo.levels - 1;
        let leaf = loop {
            let pte = self.load(table, self.walk.index(va, lvl));
            if lvl == last {
                break self.fmt.decode(pte, lvl);
            }
            match self.table_below(pte, lvl) {
                Ok(next) => table = next,
                Err(other) => break other,
            }
            lvl += 1;
        };
        match leaf {
            Pte::Leaf { pa, .. } => {
                Some(PhysAddr::new(pa.raw() + (va & self.walk.offset_mask(lvl))))
            }
            _ => None,
        }
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
        let (mut table, start) = self.top();
        if !self.walk.covers(start, iova.raw()) {
            return None;
        }
        for lvl in start..self.geo.levels {
            let idx = self.walk.index(iova.raw(), lvl);
            let pte = self.load(table, idx);
            let decoded = if lvl + 1 < self.geo.levels {
                self.table_below(pte, lvl).map_or_else(|p| p, Pte::Table)
            } else {
                self.fmt.decode(pte, lvl)
            };
            match decoded {
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

    /// The first leaf overlapping `[start, last]`, found by walking only
    /// the tables that exist: the cost follows what is mapped, not the size
    /// of the range.
    pub fn first_leaf(&self, start: Iova, last: Iova) -> Option<Mapping> {
        if start > last {
            return None;
        }
        let (root, level) = self.top();
        self.first_leaf_in(root, level, 0, start.raw(), last.raw())
    }

    fn first_leaf_in(
        &self,
        table: PhysAddr,
        level: usize,
        base: u64,
        start: u64,
        last: u64,
    ) -> Option<Mapping> {
        let shift = self.geo.entry_shift(level);
        let first = if start > base {
            ((start - base) >> shift) as usize
        } else {
            0
        };
        for i in first..self.geo.entries(level) {
            let lo = base + ((i as u64) << shift);
            if lo > last {
                break;
            }
            match self.fmt.decode(self.load(table, i), level) {
                Pte::Invalid => {}
                Pte::Table(t) => {
                    if let Some(m) = self.first_leaf_in(t, level + 1, lo, start, last) {
                        return Some(m);
                    }
                }
                Pte::Leaf { pa, prot } => {
                    return Some(Mapping {
                        iova: Iova::new(lo),
                        size: 1 << shift,
                        pa,
                        prot,
                        level,
                    })
                }
            }
            if lo.checked_add(1 << shift).is_none() {
                break; // the entry ran to the top of the address space
            }
        }
        None
    }

    fn for_each_leaf(
        &self,
        start: u64,
        end: u64,
        f: &mut impl FnMut(Mapping, PhysAddr, usize, u64),
    ) {
        let (root, level) = self.top();
        self.leaf_walk(root, level, 0, start, end, f);
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
            if let Ok(mut bitmap) = DirtyBitmap::new(Iova::ZERO, 0, 1 << self.geo.granule_shift) {
                self.read_and_clear_dirty(Iova::ZERO, u64::MAX, &mut bitmap, true);
            }
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
        self.read_and_clear_dirty_with(iova, size, clear, &mut |at, len| {
            bitmap.set_range(at.raw(), len);
        })
    }

    /// As [`read_and_clear_dirty`](Self::read_and_clear_dirty), calling
    /// `dirty(leaf_iova, leaf_size)` for every dirty leaf instead of
    /// filling a bitmap.
    pub fn read_and_clear_dirty_with(
        &self,
        iova: Iova,
        size: u64,
        clear: bool,
        dirty: &mut dyn FnMut(Iova, u64),
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
                    dirty(m.iova, m.size);
                    found += 1;
                    break;
                }
                match self.cas(table, idx, pte, self.fmt.make_clean(pte)) {
                    Ok(_) => {
                        dirty(m.iova, m.size);
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

impl<F: Format, M: TableMemory> IoPageTable<F, M> {
    /// Frees the subtree at `table`, children first, without allocating.
    fn free_subtree(&mut self, table: PhysAddr, level: usize) {
        if level + 1 < self.geo.levels {
            for i in 0..self.geo.entries(level) {
                if let Pte::Table(t) = self.fmt.decode(self.load(table, i), level) {
                    self.free_subtree(t, level + 1);
                }
            }
        }
        // SAFETY: `&mut self` in drop: no walk is in flight, the tree is a
        // tree (each table has one parent), so every page is freed once.
        unsafe { self.mem.free_table(table, self.geo.table_bytes(level)) };
    }
}

impl<F: Format, M: TableMemory> Drop for IoPageTable<F, M> {
    fn drop(&mut self) {
        self.trim();
        let (root, level) = self.top();
        self.free_subtree(root, level);
    }
}
