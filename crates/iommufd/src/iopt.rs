//! The I/O page table of an IOAS (Linux's `struct io_pagetable`): which
//! IOVA ranges map which user memory, which ranges may be allocated
//! (`allowed`), which never (`reserved`), and the rules Linux applies to
//! each change.
//!
//! An **area** maps `[iova, last]` to a slice of a **pages** object: a
//! range of the process's address space (`uptr`, page-aligned, `npages`
//! long), shared by every area made from it (`IOMMU_IOAS_COPY` makes a
//! second area over the same pages). Unmaps remove whole areas only: a
//! range that cuts one is `ENOENT`, as Linux's `iopt_unmap_iova_range`.
//!
//! Linux keeps areas, allowed and reserved ranges in interval trees; here
//! areas (disjoint) are a `BTreeMap` by start, allowed ranges (disjoint)
//! the same, and reserved ranges (which may overlap: each belongs to an
//! owner) a list merged when asked. Domains and access objects are not
//! attached yet: this layer is the bookkeeping they will be filled from.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu_types::{Errno, Prot};

/// The page size user memory is pinned in (Linux's `PAGE_SIZE` on the
/// machines iommufd runs on).
pub const PAGE_SIZE: u64 = 4096;

/// The largest IOVA (`ULONG_MAX` on a 64-bit kernel).
pub const IOVA_MAX: u64 = u64::MAX;

/// What keeps a pages object's memory where it is, released with it: a
/// file's pages mapped into the process for `IOMMU_IOAS_MAP_FILE` (Linux's
/// pages object holds the file).
#[derive(Clone)]
pub struct Backing(pub Arc<dyn core::any::Any + Send + Sync>);

impl core::fmt::Debug for Backing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Backing")
    }
}

impl PartialEq for Backing {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Backing {}

/// User memory areas map (Linux's `struct iopt_pages` of a user address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pages {
    /// The first byte's page (the address rounded down).
    pub uptr: u64,
    /// Pages covered.
    pub npages: u64,
    /// Whether DMA may write it.
    pub writable: bool,
    /// A file's pages: what keeps them mapped at `uptr`.
    pub backing: Option<Backing>,
}

impl Pages {
    /// The dma-buf behind these pages, if they are one's.
    pub fn dmabuf(&self) -> Option<&crate::selftest::DmabufPages> {
        self.backing
            .as_ref()
            .and_then(|b| b.0.downcast_ref::<crate::selftest::DmabufPages>())
    }

    /// Whether domains leave these pages out (a revoked dma-buf's).
    pub fn detached(&self) -> bool {
        self.dmabuf()
            .is_some_and(|d| d.detached.load(core::sync::atomic::Ordering::SeqCst))
    }

    /// The pages behind `length` bytes at `uptr` (Linux's
    /// `iopt_alloc_user_pages`); returns them and the offset of `uptr` in
    /// the first page.
    ///
    /// # Errors
    /// `EOVERFLOW` when the range wraps; `EINVAL` for an empty or absurd length.
    pub fn user(uptr: u64, length: u64, writable: bool) -> Result<(Arc<Pages>, u64), Errno> {
        uptr.checked_add(length).ok_or(Errno::EOVERFLOW)?;
        if length == 0 || length > u64::MAX - PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        let start_byte = uptr % PAGE_SIZE;
        let npages = (length + start_byte).div_ceil(PAGE_SIZE);
        Ok((
            Arc::new(Pages {
                uptr: uptr - start_byte,
                npages,
                writable,
                backing: None,
            }),
            start_byte,
        ))
    }
}

/// One mapped range (Linux's `struct iopt_area`).
#[derive(Clone, Debug)]
pub struct Area {
    /// First IOVA.
    pub iova: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
    /// The pages it maps.
    pub pages: Arc<Pages>,
    /// Offset of `iova`'s byte from the start of `pages`.
    pub start_byte: u64,
    /// `IOMMU_READ`/`WRITE` (and `CACHE`, as iommufd always asks).
    pub prot: Prot,
}

impl Area {
    /// The user address `iova` (inside the area) maps.
    pub fn uaddr(&self, iova: u64) -> u64 {
        self.pages.uptr + self.start_byte + (iova - self.iova)
    }

    /// Bytes mapped.
    pub fn length(&self) -> u64 {
        self.last - self.iova + 1
    }
}

/// A slice of pages on its way from one IOAS to another (`IOMMU_IOAS_COPY`).
#[derive(Clone, Debug)]
pub struct PagesSlice {
    /// The pages.
    pub pages: Arc<Pages>,
    /// Offset of the slice's first byte in them.
    pub start_byte: u64,
    /// Bytes.
    pub length: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reserved {
    start: u64,
    last: u64,
    owner: u64,
}

/// The I/O page table of an IOAS.
#[derive(Debug)]
pub struct IoPagetable {
    areas: BTreeMap<u64, Area>,
    allowed: BTreeMap<u64, u64>,
    reserved: Vec<Reserved>,
    iova_alignment: u64,
}

impl Default for IoPagetable {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `[a0, a1]` and `[b0, b1]` overlap.
fn overlaps(a0: u64, a1: u64, b0: u64, b1: u64) -> bool {
    a0 <= b1 && b0 <= a1
}

/// `[start, last]` spans of `used` (sorted, possibly overlapping) and the
/// holes between them inside `[lo, hi]`: `(start, last, is_hole)`.
fn spans(used: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = lo;
    let mut done = false;
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(s, l) in used {
        if l < lo || s > hi {
            continue;
        }
        let (s, l) = (s.max(lo), l.min(hi));
        match merged.last_mut() {
            Some(m) if s <= m.1.saturating_add(1) => m.1 = m.1.max(l),
            _ => merged.push((s, l)),
        }
    }
    for (s, l) in merged {
        if s > at {
            out.push((at, s - 1, true));
        }
        out.push((s, l, false));
        match l.checked_add(1) {
            Some(n) if n <= hi => at = n,
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done && at <= hi {
        out.push((at, hi, true));
    }
    out
}

impl IoPagetable {
    /// An empty table: no alignment rule, every IOVA allowed.
    pub fn new() -> Self {
        IoPagetable {
            areas: BTreeMap::new(),
            allowed: BTreeMap::new(),
            reserved: Vec::new(),
            iova_alignment: 1,
        }
    }

    /// The alignment every IOVA, length and page offset must have (1
    /// until a domain with larger pages is attached).
    pub fn iova_alignment(&self) -> u64 {
        self.iova_alignment
    }

    /// The areas, in IOVA order.
    pub fn areas(&self) -> impl Iterator<Item = &Area> {
        self.areas.values()
    }

    /// The areas that start inside `[start, last]`, in IOVA order: a
    /// lookup in the tree, not a scan of every area.
    pub fn areas_in(&self, start: u64, last: u64) -> impl Iterator<Item = &Area> {
        self.areas.range(start..=last).map(|(_, a)| a)
    }

    /// The area holding `iova`.
    pub fn area_at(&self, iova: u64) -> Option<&Area> {
        self.areas
            .range(..=iova)
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| a.last >= iova)
    }

    /// The first area overlapping `[start, last]`.
    fn first_area(&self, start: u64, last: u64) -> Option<&Area> {
        self.area_at(start).or_else(|| {
            self.areas
                .range(start..)
                .next()
                .map(|(_, a)| a)
                .filter(|a| a.iova <= last)
        })
    }

    fn reserved_overlaps(&self, start: u64, last: u64) -> bool {
        self.reserved
            .iter()
            .any(|r| overlaps(r.start, r.last, start, last))
    }

    fn allowed_overlaps(&self, start: u64, last: u64) -> bool {
        self.allowed
            .range(..=last)
            .next_back()
            .is_some_and(|(&s, &l)| overlaps(s, l, start, last))
    }

    /// The IOVA ranges a program may use: the holes between reserved
    /// ranges over the whole space (`IOMMU_IOAS_IOVA_RANGES`; as in Linux,
    /// the allowed ranges do not narrow it).
    pub fn iova_ranges(&self) -> Vec<(u64, u64)> {
        let mut used: Vec<(u64, u64)> = self.reserved.iter().map(|r| (r.start, r.last)).collect();
        used.sort_unstable();
        spans(&used, 0, IOVA_MAX)
            .into_iter()
            .filter(|s| s.2)
            .map(|s| (s.0, s.1))
            .collect()
    }

    /// Picks an IOVA for `length` bytes of user memory at `addr` (Linux's
    /// `iopt_alloc_iova`): aligned like `addr` up to the length's power
    /// of two (2 MiB at most), with `addr`'s page offset, inside an
    /// allowed range (anywhere from one page to the last page when none
    /// is set), clear of areas and reserved ranges; never 0.
    fn alloc_iova(&self, addr: u64, length: u64) -> Result<u64, Errno> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(Errno::EOVERFLOW);
        }
        let page_offset = addr % PAGE_SIZE;
        let pow = length.next_power_of_two();
        let mut align = if addr == 0 {
            pow
        } else {
            pow.min(1u64 << addr.trailing_zeros())
        };
        // Linux's cap is the huge page size with THP, else a page.
        const MAX_ALIGNMENT: u64 = 2 << 20;
        if align >= MAX_ALIGNMENT {
            align = MAX_ALIGNMENT;
        }
        if align < self.iova_alignment {
            return Err(Errno::EINVAL);
        }
        let fits = |start: u64, last: u64| -> Option<u64> {
            let aligned = (start.checked_add(align - 1)? & !(align - 1)) | page_offset;
            (aligned < last && last - aligned >= length - 1).then_some(aligned)
        };
        let (lo, hi) = (PAGE_SIZE, IOVA_MAX - PAGE_SIZE);
        let allowed: Vec<(u64, u64)> = if self.allowed.is_empty() {
            alloc::vec![(lo, hi)]
        } else {
            let a: Vec<(u64, u64)> = self.allowed.iter().map(|(&s, &l)| (s, l)).collect();
            spans(&a, lo, hi)
                .into_iter()
                .filter(|s| !s.2)
                .map(|s| (s.0, s.1))
                .collect()
        };
        let mut used: Vec<(u64, u64)> = self
            .reserved
            .iter()
            .map(|r| (r.start, r.last))
            .chain(self.areas.values().map(|a| (a.iova, a.last)))
            .collect();
        used.sort_unstable();
        for (s, l) in allowed {
            if fits(s, l).is_none() {
                continue;
            }
            for (hs, hl, hole) in spans(&used, s, l) {
                if let (true, Some(iova)) = (hole, fits(hs, hl)) {
                    return Ok(iova);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    /// Checks a caller's fixed IOVA (Linux's `iopt_check_iova`).
    fn check_iova(&self, iova: u64, length: u64) -> Result<(), Errno> {
        if iova & (self.iova_alignment - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
        if self.reserved_overlaps(iova, last) {
            return Err(Errno::EINVAL);
        }
        if self.first_area(iova, last).is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// Maps `slices` back to back, at `iova` or (for `None`) where
    /// Linux's automatic IOVA allocation puts them, all or none (Linux's
    /// `iopt_map_pages`). Returns the IOVA.
    ///
    /// # Errors
    /// `EINVAL` for a length or page offset off the alignment, an IOVA in
    /// a reserved range, or no slices; `EEXIST` over an area;
    /// `EOVERFLOW`; `ENOSPC` when no hole fits; `EPERM` for a writable
    /// mapping of read-only pages.
    pub fn map_pages(
        &mut self,
        slices: &[PagesSlice],
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let first = slices.first().ok_or(Errno::EINVAL)?;
        if length & (self.iova_alignment - 1) != 0 || length == 0 {
            return Err(Errno::EINVAL);
        }
        let iova = match iova {
            None => self.alloc_iova(first.pages.uptr + first.start_byte, length)?,
            Some(iova) => {
                self.check_iova(iova, length)?;
                iova
            }
        };
        // Check every slice before inserting any.
        let mut at = iova;
        let mut areas = Vec::with_capacity(slices.len());
        for s in slices {
            if prot.contains(Prot::WRITE) && !s.pages.writable {
                return Err(Errno::EPERM);
            }
            if (s.start_byte % PAGE_SIZE) & (self.iova_alignment - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            let last = at.checked_add(s.length - 1).ok_or(Errno::EOVERFLOW)?;
            let end_byte = s
                .start_byte
                .checked_add(s.length - 1)
                .ok_or(Errno::EOVERFLOW)?;
            if end_byte / PAGE_SIZE >= s.pages.npages {
                return Err(Errno::EOVERFLOW);
            }
            areas.push(Area {
                iova: at,
                last,
                pages: Arc::clone(&s.pages),
                start_byte: s.start_byte,
                prot,
            });
            at = last.wrapping_add(1);
        }
        for a in areas {
            self.areas.insert(a.iova, a);
        }
        Ok(iova)
    }

    /// Maps `length` bytes of user memory at `uptr` (Linux's
    /// `iopt_map_user_pages`).
    ///
    /// # Errors
    /// As [`Pages::user`] and [`map_pages`](Self::map_pages).
    pub fn map_user(
        &mut self,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let (pages, start_byte) = Pages::user(uptr, length, prot.contains(Prot::WRITE))?;
        self.map_pages(
            &[PagesSlice {
                pages,
                start_byte,
                length,
            }],
            length,
            iova,
            prot,
        )
    }

    /// Maps `length` bytes of a file's pages, which `backing` keeps
    /// mapped at `uptr` (Linux's `iopt_map_file_pages`), as
    /// [`map_user`](Self::map_user) otherwise.
    ///
    /// # Errors
    /// As [`map_user`](Self::map_user).
    pub fn map_file(
        &mut self,
        uptr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
        backing: Backing,
    ) -> Result<u64, Errno> {
        let (pages, start_byte) = Pages::user(uptr, length, prot.contains(Prot::WRITE))?;
        let pages = Arc::new(Pages {
            backing: Some(backing),
            ..Arc::unwrap_or_clone(pages)
        });
        self.map_pages(
            &[PagesSlice {
                pages,
                start_byte,
                length,
            }],
            length,
            iova,
            prot,
        )
    }

    /// The pages behind `[iova, iova + length)`, which areas must cover
    /// without a gap from `iova` on (Linux's `iopt_get_pages`).
    ///
    /// # Errors
    /// `EINVAL` for no length; `EOVERFLOW`; `ENOENT` for a gap.
    pub fn get_pages(&self, iova: u64, length: u64) -> Result<Vec<PagesSlice>, Errno> {
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
        let mut out = Vec::new();
        let mut cur = iova;
        loop {
            let a = self.area_at(cur).ok_or(Errno::ENOENT)?;
            let end = last.min(a.last);
            out.push(PagesSlice {
                pages: Arc::clone(&a.pages),
                start_byte: a.start_byte + (cur - a.iova),
                length: end - cur + 1,
            });
            if end == last {
                return Ok(out);
            }
            cur = end + 1;
        }
    }

    /// Removes every area inside `[start, last]` (Linux's
    /// `iopt_unmap_iova_range`), in IOVA order, and returns them. An area
    /// the range cuts stops it with `ENOENT`; what was removed before
    /// stays removed (as in Linux), and is returned with the error.
    pub fn unmap_range(&mut self, start: u64, last: u64) -> Result<Vec<Area>, (Errno, Vec<Area>)> {
        let mut removed = Vec::new();
        let mut from = start;
        while let Some(a) = self.first_area(from, last) {
            let (first, alast) = (a.iova, a.last);
            if first < start || alast > last {
                return Err((Errno::ENOENT, removed));
            }
            removed.extend(self.areas.remove(&first));
            match alast.checked_add(1) {
                Some(n) if alast < last => from = n,
                _ => break,
            }
        }
        Ok(removed)
    }

    /// Unmaps `[iova, iova + length)` (Linux's `iopt_unmap_iova`).
    ///
    /// # Errors
    /// `EINVAL` for no length, `EOVERFLOW`, and as
    /// [`unmap_range`](Self::unmap_range).
    pub fn unmap(&mut self, iova: u64, length: u64) -> Result<Vec<Area>, (Errno, Vec<Area>)> {
        if length == 0 {
            return Err((Errno::EINVAL, Vec::new()));
        }
        let last = iova
            .checked_add(length - 1)
            .ok_or((Errno::EOVERFLOW, Vec::new()))?;
        self.unmap_range(iova, last)
    }

    /// Cuts the area holding `iova` after it (Linux's `iopt_area_split`):
    /// `[first, iova]` and `[iova + 1, last]`, sharing its pages. Nothing
    /// happens when no area holds `iova` or it is the area's last IOVA.
    /// Domains are not touched: the caller cuts only where domains map
    /// page by page (large pages disabled).
    ///
    /// # Errors
    /// `EINVAL` when the cut is not aligned to the IOVA alignment, in the
    /// IOVA or in the pages.
    pub fn split_at(&mut self, iova: u64) -> Result<(), Errno> {
        let Some(a) = self.area_at(iova).cloned() else {
            return Ok(());
        };
        if iova == a.last {
            return Ok(());
        }
        let new_start = iova + 1;
        let mask = self.iova_alignment.max(1) - 1;
        let byte = a.start_byte + (new_start - a.iova);
        if new_start & mask != 0 || byte & mask != 0 {
            return Err(Errno::EINVAL);
        }
        let right = Area {
            iova: new_start,
            start_byte: byte,
            ..a.clone()
        };
        let left = Area { last: iova, ..a };
        self.areas.insert(left.iova, left);
        self.areas.insert(right.iova, right);
        Ok(())
    }

    /// Unmaps everything; returns what was mapped.
    pub fn unmap_all(&mut self) -> Vec<Area> {
        core::mem::take(&mut self.areas).into_values().collect()
    }

    /// Sets the alignment every IOVA, length and page offset must have,
    /// as attached domains' smallest page asks (Linux's
    /// `iopt_table_add_domain`).
    ///
    /// # Errors
    /// `EADDRINUSE` when an area is not aligned to it.
    pub fn set_iova_alignment(&mut self, align: u64) -> Result<(), Errno> {
        let mask = align.max(1) - 1;
        let misaligned = self.areas.values().any(|a| {
            a.iova & mask != 0 || a.length() & mask != 0 || (a.start_byte % PAGE_SIZE) & mask != 0
        });
        if align > self.iova_alignment && misaligned {
            return Err(Errno::EADDRINUSE);
        }
        self.iova_alignment = align.max(1);
        Ok(())
    }

    /// Replaces the allowed ranges (`IOMMU_IOAS_ALLOW_IOVAS`); an empty
    /// list allows everything again.
    ///
    /// # Errors
    /// `EINVAL` for a range with `start >= last` or two that overlap;
    /// `EADDRINUSE` when one overlaps a reserved range (the old ranges
    /// stay).
    pub fn set_allowed(&mut self, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let mut new: BTreeMap<u64, u64> = BTreeMap::new();
        for &(s, l) in ranges {
            if s >= l {
                return Err(Errno::EINVAL);
            }
            let hit = new
                .range(..=l)
                .next_back()
                .is_some_and(|(&ns, &nl)| overlaps(ns, nl, s, l));
            if hit {
                return Err(Errno::EINVAL);
            }
            new.insert(s, l);
        }
        if new.iter().any(|(&s, &l)| self.reserved_overlaps(s, l)) {
            return Err(Errno::EADDRINUSE);
        }
        self.allowed = new;
        Ok(())
    }

    /// The allowed ranges, in order.
    pub fn allowed(&self) -> Vec<(u64, u64)> {
        self.allowed.iter().map(|(&s, &l)| (s, l)).collect()
    }

    /// Reserves `[start, last]` for `owner` (Linux's `iopt_reserve_iova`):
    /// a device's reserved region, a test's explicit reservation.
    ///
    /// # Errors
    /// `EADDRINUSE` over an area or an allowed range.
    pub fn reserve(&mut self, start: u64, last: u64, owner: u64) -> Result<(), Errno> {
        if self.first_area(start, last).is_some() || self.allowed_overlaps(start, last) {
            return Err(Errno::EADDRINUSE);
        }
        self.reserved.push(Reserved { start, last, owner });
        Ok(())
    }

    /// Drops every reservation of `owner`.
    pub fn remove_reserved(&mut self, owner: u64) {
        self.reserved.retain(|r| r.owner != owner);
    }
}
