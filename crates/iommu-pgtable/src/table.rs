//! The generic walker: map, unmap, translate and walk for any [`Format`].
//!
//! Invariants:
//! - a refused `map_pages` writes nothing: every check (alignment, range,
//!   entries in the way, table memory) happens before the first descriptor
//!   is written, and tables allocated for it are freed again;
//! - every table page reachable from the root is owned by this value and is
//!   freed on drop;
//! - a leaf is never split: unmapping part of one removes all of it.

use crate::{Format, Geometry, PgtableError, Pte, TableMemory};
use alloc::vec::Vec;
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

/// A page table of format `F` whose tables live in `M`.
#[derive(Debug)]
pub struct IoPageTable<F: Format, M: TableMemory> {
    fmt: F,
    geo: Geometry,
    mem: M,
    root: PhysAddr,
}

/// Deepest table any supported format has; bounds the allocation scratch.
const MAX_LEVELS: usize = 6;

impl<F: Format, M: TableMemory> IoPageTable<F, M> {
    /// Creates an empty table (allocates the root).
    ///
    /// # Errors
    /// [`PgtableError::NoMemory`] when the root cannot be allocated;
    /// [`PgtableError::InvalidArgument`] for a geometry deeper than supported.
    pub fn new(fmt: F, mut mem: M) -> Result<Self, PgtableError> {
        let geo = *fmt.geometry();
        if geo.levels == 0 || geo.levels > MAX_LEVELS {
            return Err(PgtableError::InvalidArgument);
        }
        let root = mem
            .alloc_table(geo.entries(0))
            .ok_or(PgtableError::NoMemory)?;
        Ok(Self {
            fmt,
            geo,
            mem,
            root,
        })
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

    /// The table memory (e.g. to read it as emulated hardware would).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Mutable access to the table memory (e.g. to change an allocation limit).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Live table pages, root included.
    pub fn table_pages(&self) -> usize {
        self.mem.table_pages()
    }

    fn check_input(&self, iova: u64, size: u64) -> Result<(), PgtableError> {
        let end = iova.checked_add(size).ok_or(PgtableError::OutOfRange)?;
        if self.geo.ias < 64 && end > 1u64 << self.geo.ias {
            return Err(PgtableError::OutOfRange);
        }
        Ok(())
    }

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
        &mut self,
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
        let size = pgsize
            .checked_mul(pgcount as u64)
            .ok_or(PgtableError::OutOfRange)?;
        self.check_input(iova.raw(), size)?;
        let pa_end = pa.raw().checked_add(size).ok_or(PgtableError::OutOfRange)?;
        if self.geo.oas < 64 && pa_end > 1u64 << self.geo.oas {
            return Err(PgtableError::OutOfRange);
        }

        let table = self.walk_alloc(iova.raw(), level)?;
        let first = self.geo.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);

        // Check every target slot before writing any of them.
        for i in first..first + n {
            match self.fmt.decode(self.mem.read(table, i), level) {
                Pte::Invalid => {}
                Pte::Leaf { .. } => return Err(PgtableError::Exists),
                Pte::Table(t) => {
                    if !self.subtree_is_empty(t, level + 1) {
                        return Err(PgtableError::Exists);
                    }
                }
            }
        }
        for (k, i) in (first..first + n).enumerate() {
            if let Pte::Table(t) = self.fmt.decode(self.mem.read(table, i), level) {
                self.free_subtree(t, level + 1);
            }
            let leaf_pa = PhysAddr::new(pa.raw() + k as u64 * pgsize);
            let pte = self.fmt.encode_leaf(leaf_pa, level, prot);
            self.mem.write(table, i, pte);
        }
        Ok(n as u64 * pgsize)
    }

    /// Walks to the table at `level` covering `iova`, allocating missing
    /// tables all at once so that a failure leaves nothing behind.
    fn walk_alloc(&mut self, iova: u64, level: usize) -> Result<PhysAddr, PgtableError> {
        let mut table = self.root;
        for lvl in 0..level {
            let idx = self.geo.index(iova, lvl);
            match self.fmt.decode(self.mem.read(table, idx), lvl) {
                Pte::Table(next) => table = next,
                Pte::Leaf { .. } => return Err(PgtableError::Exists),
                Pte::Invalid => {
                    let missing = level - lvl;
                    let mut fresh = [PhysAddr::ZERO; MAX_LEVELS];
                    for k in 0..missing {
                        match self.mem.alloc_table(self.geo.entries(lvl + 1 + k)) {
                            Some(t) => fresh[k] = t,
                            None => {
                                for t in &fresh[..k] {
                                    self.mem.free_table(*t);
                                }
                                return Err(PgtableError::NoMemory);
                            }
                        }
                    }
                    let mut parent = table;
                    for (k, &child) in fresh[..missing].iter().enumerate() {
                        let pidx = self.geo.index(iova, lvl + k);
                        self.mem.write(parent, pidx, self.fmt.encode_table(child));
                        parent = child;
                    }
                    return Ok(parent);
                }
            }
        }
        Ok(table)
    }

    fn subtree_is_empty(&self, table: PhysAddr, level: usize) -> bool {
        (0..self.geo.entries(level)).all(|i| {
            match self.fmt.decode(self.mem.read(table, i), level) {
                Pte::Invalid => true,
                Pte::Leaf { .. } => false,
                Pte::Table(t) => level + 1 < self.geo.levels && self.subtree_is_empty(t, level + 1),
            }
        })
    }

    fn free_subtree(&mut self, table: PhysAddr, level: usize) {
        if level + 1 < self.geo.levels {
            for i in 0..self.geo.entries(level) {
                if let Pte::Table(t) = self.fmt.decode(self.mem.read(table, i), level) {
                    self.free_subtree(t, level + 1);
                }
            }
        }
        self.mem.free_table(table);
    }

    /// Unmaps up to `pgcount` pages of `pgsize` from `iova` and returns the
    /// bytes unmapped, recording them in `gather`.
    ///
    /// A hole ends the call (returns what was unmapped before it, possibly 0);
    /// a larger leaf covering `iova` is removed whole and its full size
    /// returned; a table where a `pgsize` leaf was expected is torn down whole.
    /// Invalid arguments unmap nothing and return 0, as in Linux.
    pub fn unmap_pages(
        &mut self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> u64 {
        let Some(level) = self.geo.leaf_level_for(pgsize) else {
            return 0;
        };
        if pgcount == 0 || !iova.is_aligned(pgsize) || self.check_input(iova.raw(), pgsize).is_err()
        {
            return 0;
        }
        let mut table = self.root;
        for lvl in 0..level {
            let idx = self.geo.index(iova.raw(), lvl);
            match self.fmt.decode(self.mem.read(table, idx), lvl) {
                Pte::Table(next) => table = next,
                Pte::Invalid => return 0,
                Pte::Leaf { .. } => {
                    let size = self.geo.entry_size(lvl);
                    self.mem.write(table, idx, 0);
                    gather.add_range(Iova::new(iova.raw() & !(size - 1)), size);
                    return size;
                }
            }
        }
        let first = self.geo.index(iova.raw(), level);
        let n = pgcount.min(self.geo.entries(level) - first);
        let mut done = 0usize;
        for i in first..first + n {
            match self.fmt.decode(self.mem.read(table, i), level) {
                Pte::Invalid => break,
                Pte::Leaf { .. } => self.mem.write(table, i, 0),
                Pte::Table(t) => {
                    self.mem.write(table, i, 0);
                    self.free_subtree(t, level + 1);
                }
            }
            done += 1;
        }
        let bytes = done as u64 * pgsize;
        gather.add_range(iova, bytes);
        bytes
    }

    /// Translates `iova`, or `None` when nothing maps it.
    #[inline]
    pub fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        self.lookup(iova)
            .map(|m| PhysAddr::new(m.pa.raw() + (iova.raw() - m.iova.raw())))
    }

    /// The leaf mapping `iova`, if any.
    pub fn lookup(&self, iova: Iova) -> Option<Mapping> {
        self.check_input(iova.raw(), 1).ok()?;
        let mut table = self.root;
        for lvl in 0..self.geo.levels {
            let idx = self.geo.index(iova.raw(), lvl);
            match self.fmt.decode(self.mem.read(table, idx), lvl) {
                Pte::Invalid => return None,
                Pte::Table(next) => table = next,
                Pte::Leaf { pa, prot } => {
                    let size = self.geo.entry_size(lvl);
                    return Some(Mapping {
                        iova: Iova::new(iova.raw() & !(size - 1)),
                        size,
                        pa,
                        prot,
                        level: lvl,
                    });
                }
            }
        }
        None
    }

    /// Every leaf overlapping `[start, start + size)`, in IOVA order.
    pub fn walk(&self, start: Iova, size: u64) -> Vec<Mapping> {
        let mut out = Vec::new();
        let end = start.raw().saturating_add(size);
        self.walk_table(self.root, 0, 0, start.raw(), end, &mut out);
        out
    }

    fn walk_table(
        &self,
        table: PhysAddr,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        out: &mut Vec<Mapping>,
    ) {
        let span = self.geo.entry_size(level);
        for i in 0..self.geo.entries(level) {
            let lo = base + i as u64 * span;
            let hi = lo.saturating_add(span);
            if hi <= start || lo >= end {
                continue;
            }
            match self.fmt.decode(self.mem.read(table, i), level) {
                Pte::Invalid => {}
                Pte::Table(t) => self.walk_table(t, level + 1, lo, start, end, out),
                Pte::Leaf { pa, prot } => out.push(Mapping {
                    iova: Iova::new(lo),
                    size: span,
                    pa,
                    prot,
                    level,
                }),
            }
        }
    }
}

impl<F: Format, M: TableMemory> Drop for IoPageTable<F, M> {
    fn drop(&mut self) {
        self.free_subtree(self.root, 0);
    }
}
