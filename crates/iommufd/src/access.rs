//! Access objects (Linux's `struct iommufd_access`): the mediated-device
//! path, where a driver, not an IOMMU, reaches an IOAS's memory. It pins
//! pages by IOVA, reads and writes through the IOAS, and is told when an
//! unmap takes IOVAs it pinned, after which it must let them go.
//!
//! An access is attached to one IOAS at a time, which it holds (the IOAS
//! cannot be destroyed under it, `EBUSY`). One that pins pages raises the
//! IOAS's IOVA alignment to a CPU page. Pins count as the kernel's page
//! pins do: one per pages object, shared with the domains.
//!
//! The rules and errnos are Linux's `iommufd_access_pin_pages`,
//! `iommufd_access_unpin_pages`, `iommufd_access_rw` and
//! `iommufd_access_replace`: the range must be wholly mapped (`ENOENT`),
//! page-aligned in its pages for a pin (`EINVAL`), and the areas must
//! allow the direction (`EPERM`).
//!
//! Where this differs from Linux: an unmap tells the accesses of the
//! whole range asked for before it unmaps, rather than area by area as
//! it goes, so an unmap that then fails (`ENOENT` for a cut area) has
//! still had the pins in its range dropped.

use crate::ctx::{lock, Ioas};
use crate::iopt::{Area, PAGE_SIZE};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use iommu_types::{Errno, Prot};
use std::sync::Mutex;

/// A pin an access holds in an IOAS.
#[derive(Clone, Debug)]
pub(crate) struct Pin {
    /// First IOVA.
    pub(crate) iova: u64,
    /// Last IOVA.
    pub(crate) last: u64,
    /// The access (its address, as an identity).
    pub(crate) owner: usize,
    /// The access's id for it.
    pub(crate) item: u32,
    /// Held by the kernel's own user (a HW queue's memory): an unmap of
    /// it is `EBUSY`, not a notice (Linux's `num_locks`).
    pub(crate) internal: bool,
}

/// An access object.
#[derive(Debug)]
pub struct Access {
    /// The IOAS it is attached to, with its id.
    ioas: Mutex<Option<(u32, Arc<Mutex<Ioas>>)>>,
    /// It pins pages (Linux's `needs_pin_pages`): its IOVA alignment is a
    /// CPU page.
    pub needs_pin: bool,
    next_item: AtomicU32,
}

impl Access {
    /// A detached access.
    pub fn new(needs_pin: bool) -> Arc<Self> {
        Arc::new(Self {
            ioas: Mutex::new(None),
            needs_pin,
            next_item: AtomicU32::new(0),
        })
    }

    fn owner(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// The IOVA alignment it needs.
    pub fn iova_alignment(&self) -> u64 {
        if self.needs_pin {
            PAGE_SIZE
        } else {
            1
        }
    }

    /// The id of the IOAS it is attached to.
    pub fn ioas_id(&self) -> Option<u32> {
        lock(&self.ioas).as_ref().map(|(id, _)| *id)
    }

    /// Attaches to (or, attached, moves to) IOAS `ioas` with id `id`
    /// (Linux's `iommufd_access_change_ioas`): every pin in the old one is
    /// dropped, as its unmap callback would.
    ///
    /// # Errors
    /// `EADDRINUSE` when an area of the new IOAS is not aligned to what
    /// the access needs.
    pub fn change_ioas(self: &Arc<Self>, id: u32, ioas: &Arc<Mutex<Ioas>>) -> Result<(), Errno> {
        let mut cur = lock(&self.ioas);
        if cur.as_ref().is_some_and(|(_, c)| Arc::ptr_eq(c, ioas)) {
            return Ok(());
        }
        {
            let mut g = lock(ioas);
            g.accesses.push(Arc::downgrade(self));
            if let Err(e) = g.recalc_alignment() {
                g.accesses.pop();
                return Err(e);
            }
        }
        if let Some((_, old)) = cur.take() {
            self.leave(&old);
        }
        *cur = Some((id, Arc::clone(ioas)));
        Ok(())
    }

    /// Detaches, dropping every pin (the access's fd was closed).
    pub fn detach(self: &Arc<Self>) {
        if let Some((_, old)) = lock(&self.ioas).take() {
            self.leave(&old);
        }
    }

    fn leave(self: &Arc<Self>, ioas: &Arc<Mutex<Ioas>>) {
        let me = self.owner();
        let mut g = lock(ioas);
        g.access_pins.retain(|p| p.owner != me);
        g.accesses
            .retain(|w| w.upgrade().is_some_and(|a| !Arc::ptr_eq(&a, self)));
        let _ = g.recalc_alignment();
    }

    fn attached(&self) -> Result<Arc<Mutex<Ioas>>, Errno> {
        lock(&self.ioas)
            .as_ref()
            .map(|(_, i)| Arc::clone(i))
            .ok_or(Errno::ENOENT)
    }

    /// Pins `[iova, iova + length)` (Linux's `iommufd_access_pin_pages`);
    /// returns the pin's id and the user address of each CPU page, in
    /// order.
    ///
    /// # Errors
    /// `EINVAL` for no length, an access that does not pin or a range not
    /// page-aligned in its pages; `EOVERFLOW`; `ENOENT` when detached or
    /// not wholly mapped; `EPERM` when an area does not allow `write`.
    pub fn pin_pages(
        self: &Arc<Self>,
        iova: u64,
        length: u64,
        write: bool,
    ) -> Result<(u32, Vec<u64>), Errno> {
        if !self.needs_pin || length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
        let ioas = self.attached()?;
        let mut g = lock(&ioas);
        let mut pages = Vec::new();
        for_each_contig(&g, iova, last, |a, cur, end, is_last| {
            // Whole pages: the range starts a page, and an area it runs
            // past ends one.
            if a.uaddr(cur) % PAGE_SIZE != 0
                || (!is_last && a.uaddr(a.last) % PAGE_SIZE != PAGE_SIZE - 1)
            {
                return Err(Errno::EINVAL);
            }
            if !allows(a.prot, write) {
                return Err(Errno::EPERM);
            }
            let mut at = a.uaddr(cur) & !(PAGE_SIZE - 1);
            while at <= a.uaddr(end) {
                pages.push(at);
                at += PAGE_SIZE;
            }
            Ok(())
        })?;
        if let Some(mm) = &g.mm {
            for &p in &pages {
                mm.0.pin(p, PAGE_SIZE, write)?;
            }
        }
        let item = self.next_item.fetch_add(1, Ordering::Relaxed);
        g.access_pins.push(Pin {
            iova,
            last,
            owner: self.owner(),
            item,
            internal: false,
        });
        Ok((item, pages))
    }

    /// Lets pin `item` go (Linux's `iommufd_access_unpin_pages`).
    ///
    /// # Errors
    /// `ENOENT` for no such pin (an unmap took it, or it never was).
    pub fn unpin(self: &Arc<Self>, item: u32) -> Result<(), Errno> {
        let ioas = self.attached()?;
        let mut g = lock(&ioas);
        let me = self.owner();
        let at = g
            .access_pins
            .iter()
            .position(|p| p.owner == me && p.item == item)
            .ok_or(Errno::ENOENT)?;
        g.access_pins.remove(at);
        Ok(())
    }

    /// Reads (or, with `write`, writes) `buf` at `iova` through the IOAS
    /// (Linux's `iommufd_access_rw`).
    ///
    /// # Errors
    /// `EINVAL` for no length; `EOVERFLOW`; `ENOENT` when detached or not
    /// wholly mapped; `EPERM` when an area does not allow the direction;
    /// `EFAULT` when the memory behind it cannot be reached.
    pub fn rw(&self, iova: u64, buf: &mut [u8], write: bool) -> Result<(), Errno> {
        if buf.is_empty() {
            return Err(Errno::EINVAL);
        }
        let last = iova
            .checked_add(buf.len() as u64 - 1)
            .ok_or(Errno::EOVERFLOW)?;
        let ioas = self.attached()?;
        let g = lock(&ioas);
        let mm = g.mm.clone().ok_or(Errno::EFAULT)?;
        let mut done = 0usize;
        for_each_contig(&g, iova, last, |a, cur, end, _| {
            if !allows(a.prot, write) {
                return Err(Errno::EPERM);
            }
            let n = (end - cur + 1) as usize;
            let chunk = &mut buf[done..done + n];
            if write {
                mm.0.write(a.uaddr(cur), chunk)?;
            } else {
                mm.0.read(a.uaddr(cur), chunk)?;
            }
            done += n;
            Ok(())
        })
    }
}

fn allows(prot: Prot, write: bool) -> bool {
    prot.contains(if write { Prot::WRITE } else { Prot::READ })
}

/// Calls `f(area, first, last, is_last_area)` for the areas covering
/// `[iova, last]` in order (Linux's `iopt_for_each_contig_area`);
/// `ENOENT` at a hole.
pub(crate) fn for_each_contig(
    g: &Ioas,
    iova: u64,
    last: u64,
    mut f: impl FnMut(&Area, u64, u64, bool) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let mut cur = iova;
    loop {
        let a = g.iopt.area_at(cur).ok_or(Errno::ENOENT)?;
        let end = a.last.min(last);
        f(a, cur, end, end == last)?;
        if end == last {
            return Ok(());
        }
        cur = end + 1;
    }
}

impl Ioas {
    /// Tells the accesses that `[iova, last]` is being unmapped: they let
    /// go of every pin in it (Linux's `iommufd_access_notify_unmap`, with
    /// the selftest driver's callback, which unpins what the range meets).
    pub(crate) fn notify_unmap(&mut self, iova: u64, last: u64) {
        self.access_pins
            .retain(|p| p.internal || p.last < iova || p.iova > last);
    }

    /// Whether an internal pin holds IOVAs of `[iova, last]`.
    pub(crate) fn locked(&self, iova: u64, last: u64) -> bool {
        self.access_pins
            .iter()
            .any(|p| p.internal && p.iova <= last && iova <= p.last)
    }

    /// Pins `[iova, iova + length)` for the kernel's own use (a HW
    /// queue's memory): it must be mapped (`ENOENT`) by areas whose user
    /// memory is contiguous (`EFAULT`); returns the user address of
    /// `iova`.
    pub(crate) fn pin_internal(
        &mut self,
        iova: u64,
        length: u64,
        owner: usize,
    ) -> Result<u64, Errno> {
        let last = iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
        let mut expect: Option<u64> = None;
        let mut base = 0;
        for_each_contig(self, iova, last, |a, cur, end, _| {
            let at = a.uaddr(cur);
            match expect {
                None => base = at,
                Some(e) if e != at => return Err(Errno::EFAULT),
                Some(_) => {}
            }
            expect = Some(a.uaddr(end) + 1);
            Ok(())
        })?;
        self.access_pins.push(Pin {
            iova,
            last,
            owner,
            item: 0,
            internal: true,
        });
        Ok(base)
    }

    /// Drops the internal pins of `owner`.
    pub(crate) fn unpin_internal(&mut self, owner: usize) {
        self.access_pins
            .retain(|p| !(p.internal && p.owner == owner));
    }

    /// Whether an access holds a pin on the page at user address `page`
    /// through an area whose pages are `pages`.
    pub(crate) fn access_pins_page(&self, area: &Area, page: u64) -> bool {
        self.access_pins.iter().any(|p| {
            let (s, e) = (p.iova.max(area.iova), p.last.min(area.last));
            s <= e && {
                let first = area.uaddr(s) & !(PAGE_SIZE - 1);
                let last = area.uaddr(e) & !(PAGE_SIZE - 1);
                (first..=last).contains(&page)
            }
        })
    }

    /// The IOVA alignment the attached accesses need.
    pub(crate) fn access_alignment(&self) -> u64 {
        self.accesses
            .iter()
            .filter_map(Weak::upgrade)
            .map(|a| a.iova_alignment())
            .fold(1, u64::max)
    }
}
