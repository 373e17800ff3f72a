//! Reserved regions: IOVA ranges a device's domain must treat specially.
//!
//! A group's list is the union of its devices' lists, kept sorted by start
//! (then type) with overlapping or touching regions of the same type merged,
//! exactly as Linux builds it; regions of different types never merge.

use crate::prelude::*;
use core::fmt;
use iommu_types::{Iova, Prot};

/// Kinds of reserved region, in Linux's order (`IOMMU_RESV_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResvType {
    /// Must be identity-mapped for the device to work (e.g. an RMRR).
    Direct,
    /// Identity-mapped by default but may be dropped when the device is assigned.
    DirectRelaxable,
    /// Must never be mapped.
    Reserved,
    /// A hardware MSI doorbell window, translated by the hardware itself.
    Msi,
    /// A software-managed MSI window the OS maps itself.
    SwMsi,
}

impl ResvType {
    /// The word sysfs prints (`SwMsi` prints as `msi`, as in Linux).
    pub const fn sysfs_name(self) -> &'static str {
        match self {
            ResvType::Direct => "direct",
            ResvType::DirectRelaxable => "direct-relaxable",
            ResvType::Reserved => "reserved",
            ResvType::Msi | ResvType::SwMsi => "msi",
        }
    }

    /// Whether regions of this type are identity-mapped into default domains.
    pub const fn is_direct(self) -> bool {
        matches!(self, ResvType::Direct | ResvType::DirectRelaxable)
    }
}

/// One reserved region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservedRegion {
    /// First address.
    pub start: Iova,
    /// Length in bytes (non-zero).
    pub length: u64,
    /// Protection used when the region is mapped.
    pub prot: Prot,
    /// Kind.
    pub ty: ResvType,
}

impl ReservedRegion {
    /// A region of `length` bytes at `start`.
    pub const fn new(start: u64, length: u64, prot: Prot, ty: ResvType) -> Self {
        Self {
            start: Iova::new(start),
            length,
            prot,
            ty,
        }
    }

    /// Inclusive last address (saturating at the top of the address space).
    pub fn last(&self) -> u64 {
        self.start.raw().saturating_add(self.length.max(1) - 1)
    }
}

impl fmt::Display for ReservedRegion {
    /// Linux's `reserved_regions` line: `0x%016llx 0x%016llx %s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0x{:016x} 0x{:016x} {}",
            self.start.raw(),
            self.last(),
            self.ty.sysfs_name()
        )
    }
}

/// Inserts `new` into the sorted list `regions`, merging it with regions of
/// the same type that overlap or touch it. Zero-length regions are ignored.
pub fn insert_resv_region(regions: &mut Vec<ReservedRegion>, new: ReservedRegion) {
    if new.length == 0 {
        return;
    }
    let pos = regions
        .iter()
        .position(|r| (new.start, new.ty) <= (r.start, r.ty))
        .unwrap_or(regions.len());
    regions.insert(pos, new);
    // One pass in start order: each region of `new.ty` merges into the last
    // kept region of that type when it overlaps or touches it.
    let mut out: Vec<ReservedRegion> = Vec::with_capacity(regions.len());
    for r in regions.drain(..) {
        if r.ty == new.ty {
            if let Some(top) = out.iter_mut().rev().find(|t| t.ty == r.ty) {
                // A merge that would cover all 2^64 bytes has no length to
                // say it with: the two stay apart, covering the same.
                let end = top.last().max(r.last());
                let merged = (end - top.start.raw()).checked_add(1);
                if let (true, Some(length)) =
                    (r.start.raw() <= top.last().saturating_add(1), merged)
                {
                    top.length = length;
                    continue;
                }
            }
        }
        out.push(r);
    }
    *regions = out;
}

/// The sysfs rendering of a list (one line per region).
pub fn format_resv_regions(regions: &[ReservedRegion]) -> String {
    regions.iter().map(|r| format!("{r}\n")).collect()
}

/// A driver's reserved regions for `dev` when the IOMMU has a
/// software-managed MSI window (Linux's SMMU drivers reserve
/// `MSI_IOVA_BASE`): the firmware's regions, then `sw_msi` as a
/// [`ResvType::SwMsi`] region the DMA layer maps MSI pages into.
pub fn resv_regions_with_sw_msi(
    dev: &crate::Device,
    sw_msi: Option<(u64, u64)>,
) -> Vec<ReservedRegion> {
    let mut v = dev.firmware_resv_regions().to_vec();
    if let Some((start, len)) = sw_msi {
        v.push(ReservedRegion::new(
            start,
            len,
            Prot::RW | Prot::MMIO,
            ResvType::SwMsi,
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64, ty: ResvType) -> ReservedRegion {
        ReservedRegion::new(start, len, Prot::RW, ty)
    }

    #[test]
    fn resv_regions_merge_same_type_overlaps_and_neighbours_only() {
        let mut v = Vec::new();
        insert_resv_region(&mut v, r(0x1000, 0x1000, ResvType::Direct));
        insert_resv_region(&mut v, r(0x8000_0000, 0x10_0000, ResvType::SwMsi));
        insert_resv_region(&mut v, r(0x2000, 0x1000, ResvType::Direct)); // touches: merges
        insert_resv_region(&mut v, r(0x1800, 0x100, ResvType::Reserved)); // other type: stays
        insert_resv_region(&mut v, r(0x8000_0000, 0x10_0000, ResvType::SwMsi)); // duplicate: merges
        assert_eq!(
            v,
            vec![
                r(0x1000, 0x2000, ResvType::Direct),
                r(0x1800, 0x100, ResvType::Reserved),
                r(0x8000_0000, 0x10_0000, ResvType::SwMsi),
            ]
        );
        assert_eq!(
            format_resv_regions(&v),
            "0x0000000000001000 0x0000000000002fff direct\n\
             0x0000000000001800 0x00000000000018ff reserved\n\
             0x0000000080000000 0x00000000800fffff msi\n"
        );
    }

    #[test]
    fn resv_regions_that_together_cover_the_whole_space_stay_apart() {
        let half = 1u64 << 63;
        let mut v = Vec::new();
        insert_resv_region(&mut v, r(half, half, ResvType::Reserved)); // ends at 2^64 - 1
        insert_resv_region(&mut v, r(0, half, ResvType::Reserved));
        assert_eq!(
            v,
            vec![
                r(0, half, ResvType::Reserved),
                r(half, half, ResvType::Reserved),
            ]
        );
        assert_eq!(v[1].last(), u64::MAX);
        // A third one inside merges with neither's length overflowing.
        insert_resv_region(&mut v, r(u64::MAX, 1, ResvType::Reserved));
        assert_eq!(v.iter().map(|x| x.last()).max(), Some(u64::MAX));
        assert_eq!(v.iter().map(|x| x.start.raw()).min(), Some(0));
    }

    #[test]
    fn resv_regions_with_equal_start_sort_by_type() {
        let mut v = Vec::new();
        insert_resv_region(&mut v, r(0x1000, 0x1000, ResvType::Msi));
        insert_resv_region(&mut v, r(0x1000, 0x1000, ResvType::Direct));
        assert_eq!(v[0].ty, ResvType::Direct);
        assert_eq!(v[1].ty, ResvType::Msi);
    }
}
