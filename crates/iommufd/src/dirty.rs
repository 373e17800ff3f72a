//! Dirty tracking of paging HWPTs (Linux's `IOMMU_HWPT_SET_DIRTY_TRACKING`
//! and `IOMMU_HWPT_GET_DIRTY_BITMAP`), for a VMM's live migration: which
//! pages did the device write since the last look.
//!
//! A HWPT tracks only if it was made with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`
//! (its domain has the driver's [`iommu_core::DirtyOps`]), which needs a
//! device whose IOMMU can (`EOPNOTSUPP` otherwise). Turning tracking on
//! first clears every mark, so the first bitmap shows only what was
//! written since. A bitmap has one bit per `page_size` bytes from `iova`,
//! bit `i` in byte `i / 8` of the caller's buffer; bits are set, never
//! cleared, as Linux's `iova_bitmap` sets them; the range must be wholly
//! mapped by the IOAS (`EINVAL` for a hole, checked before any mark is
//! read or cleared).

use crate::ctx::{lock, Ictx, UserMemory};
use crate::uapi;
use alloc::vec::Vec;
use iommu_types::{Errno, Iova};

/// `IOMMU_HWPT_DIRTY_TRACKING_ENABLE`.
pub const DIRTY_TRACKING_ENABLE: u32 = 1 << 0;
/// `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`.
pub const GET_DIRTY_BITMAP_NO_CLEAR: u32 = 1 << 0;
/// `IOMMU_HW_CAP_DIRTY_TRACKING`.
pub const HW_CAP_DIRTY_TRACKING: u64 = 1 << 0;

/// Bitmap bytes read, filled and written back at a time: the memory a
/// bitmap of any size costs.
const CHUNK_BYTES: u64 = 1 << 16;

impl Ictx {
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING` (Linux's
    /// `iommufd_hwpt_set_dirty_tracking`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unknown flags or a HWPT without dirty tracking;
    /// `ENOENT` for no such paging HWPT; the driver's.
    pub fn set_dirty_tracking(&self, c: &uapi::HwptSetDirtyTracking) -> Result<(), Errno> {
        if c.flags & !DIRTY_TRACKING_ENABLE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let hwpt = self.hwpt(c.hwpt_id)?;
        let d = &hwpt.domain;
        if !d.has_dirty_ops() {
            return Err(Errno::EOPNOTSUPP);
        }
        let enable = c.flags & DIRTY_TRACKING_ENABLE != 0;
        let g = lock(&hwpt.ioas);
        if enable {
            // A clean start: marks left from before are dropped.
            for a in g.iopt.areas() {
                d.read_and_clear_dirty(Iova::new(a.iova), a.length(), false, &mut |_, _| {})?;
            }
        }
        d.set_dirty_tracking(enable)
    }

    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` (Linux's
    /// `iommufd_hwpt_get_dirty_bitmap`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unknown flags, a reserved field or a HWPT without
    /// dirty tracking; `ENOENT` for no such paging HWPT; `EINVAL` for a
    /// zero length or page size, a range not aligned to the IOAS's IOVA
    /// alignment or to `page_size`, or not wholly mapped; `EOVERFLOW` for
    /// a range past the top; `EFAULT` for a bitmap the caller cannot
    /// write.
    pub fn get_dirty_bitmap(
        &self,
        c: &uapi::HwptGetDirtyBitmap,
        mem: &dyn UserMemory,
    ) -> Result<(), Errno> {
        if c.flags & !GET_DIRTY_BITMAP_NO_CLEAR != 0 || c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let hwpt = self.hwpt(c.hwpt_id)?;
        let g = lock(&hwpt.ioas);
        // Linux's iommufd_check_iova_range, in its order.
        if c.length == 0 {
            return Err(Errno::EINVAL);
        }
        let last = c.iova.checked_add(c.length - 1).ok_or(Errno::EOVERFLOW)?;
        let align = g.iopt.iova_alignment();
        let end = last.wrapping_add(1);
        if c.iova & (align - 1) != 0 || end & (align - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if c.page_size == 0 {
            return Err(Errno::EINVAL);
        }
        if c.iova & (c.page_size - 1) != 0 || end & (c.page_size - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let d = &hwpt.domain;
        if !d.has_dirty_ops() {
            return Err(Errno::EOPNOTSUPP);
        }
        // The areas must cover the range without a hole (ENOENT from the
        // walk is Linux's EINVAL here).
        crate::access::for_each_contig(&g, c.iova, last, |_, _, _, _| Ok(()))
            .map_err(|_| Errno::EINVAL)?;
        // As Linux's iova_bitmap: the page size is its lowest set bit.
        let pgshift = c.page_size.trailing_zeros();
        let no_clear = c.flags & GET_DIRTY_BITMAP_NO_CLEAR != 0;
        let bits = (c.length - 1) >> pgshift;
        let bytes = bits / 8 + 1;
        // A leaf reported in one chunk may run into the next ones, which
        // will not see it again once it is cleared: carried forward.
        let mut carry: Option<(u64, u64)> = None;
        let mut off = 0u64;
        while off < bytes {
            let n = CHUNK_BYTES.min(bytes - off);
            let uaddr = c.data.checked_add(off).ok_or(Errno::EFAULT)?;
            let mut buf: Vec<u8> = vec![0; n as usize];
            mem.read(uaddr, &mut buf)?;
            // The IOVAs this chunk's bits cover.
            let lo = c.iova + ((off * 8) << pgshift);
            debug_assert!(lo <= last);
            let span = (u128::from(off + n) * 8) << pgshift;
            let hi = (u128::from(c.iova) + span).min(u128::from(last) + 1) as u64 - 1;
            let mark = |start: u64, last_byte: u64, buf: &mut [u8]| {
                let s = start.max(lo);
                let e = last_byte.min(hi);
                if s > e {
                    return;
                }
                for bit in ((s - c.iova) >> pgshift)..=((e - c.iova) >> pgshift) {
                    let i = (bit / 8 - off) as usize;
                    buf[i] |= 1 << (bit % 8);
                }
            };
            if let Some((s, e)) = carry.take() {
                mark(s, e, &mut buf);
                if e > hi {
                    carry = Some((s, e));
                }
            }
            let mut found: Vec<(u64, u64)> = Vec::new();
            d.read_and_clear_dirty(Iova::new(lo), hi - lo + 1, no_clear, &mut |iova, size| {
                found.push((iova.raw(), iova.raw().saturating_add(size - 1)));
            })?;
            for (s, e) in found {
                mark(s, e, &mut buf);
                if e > hi {
                    carry = Some(carry.map_or((s, e), |(cs, ce)| (cs.min(s), ce.max(e))));
                }
            }
            mem.write(uaddr, &buf)?;
            off += n;
        }
        Ok(())
    }
}
