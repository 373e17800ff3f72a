//! Scatter-gather layout (Linux's `iommu_dma_map_sg` and `__finalise_sg`).
//!
//! Every segment is widened to whole granules around its buffer and the
//! segments are laid end to end in one IOVA range, so a device sees one
//! contiguous range. A segment that would cross the device's segment
//! boundary starts at the next boundary instead; the gap is left unmapped
//! (Linux pads the previous segment's mapping over it). Then the DMA
//! segments are merged where the device can treat them as one: contiguous
//! in IOVA, starting on a granule, not at a boundary, within the maximum
//! segment size.

use crate::{DmaAddr, DmaDirection, DmaError};
use alloc::vec::Vec;
use iommu_core::{PhysAddr, SgEntry};

/// One segment of a mapped list, as the device should be told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    /// Bus address.
    pub addr: DmaAddr,
    /// Length in bytes.
    pub len: u64,
}

/// A mapped scatter-gather list: what [`DmaDevice::map_sg`](crate::DmaDevice::map_sg)
/// returns and [`unmap_sg`](crate::DmaDevice::unmap_sg) takes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgMapping {
    pub(crate) iova: u64,
    pub(crate) iova_len: u64,
    /// Mapped IOVA runs `(start, len)`; boundary gaps lie between them.
    pub(crate) runs: Vec<(u64, u64)>,
    pub(crate) segments: Vec<DmaSegment>,
    pub(crate) entries: Vec<SgEntry>,
    pub(crate) dir: DmaDirection,
}

impl SgMapping {
    /// The DMA segments to program into the device, merged.
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }

    /// Start of the list's IOVA range.
    pub fn iova(&self) -> DmaAddr {
        DmaAddr::new(self.iova)
    }

    /// Bytes of IOVA space the list occupies (granule-aligned, gaps included).
    pub fn iova_len(&self) -> u64 {
        self.iova_len
    }

    /// The direction it was mapped for.
    pub fn direction(&self) -> DmaDirection {
        self.dir
    }

    /// The original segments.
    pub fn entries(&self) -> &[SgEntry] {
        &self.entries
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegLayout {
    /// Where the widened segment starts, from the start of the IOVA range.
    pub iova_off: u64,
    /// The buffer's offset into its first granule.
    pub s_iova_off: u64,
    /// The buffer's length.
    pub s_len: u64,
    /// The widened (granule-aligned) length.
    pub s_iova_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub segs: Vec<SegLayout>,
    pub iova_len: u64,
    /// `(offset, len, first segment, end segment)` of each mapped run.
    pub runs: Vec<(u64, u64, usize, usize)>,
}

/// Lays `sg` out in granules; `boundary` is the segment boundary mask.
pub(crate) fn layout(sg: &[SgEntry], granule: u64, boundary: u64) -> Result<Layout, DmaError> {
    if sg.is_empty() {
        return Err(DmaError::InvalidArgument);
    }
    let mask = granule - 1;
    let mut segs = Vec::with_capacity(sg.len());
    let mut runs = Vec::new();
    let mut iova_len = 0u64;
    let mut run_start = 0u64;
    let mut run_first = 0usize;
    for (i, s) in sg.iter().enumerate() {
        if s.len == 0 || s.paddr.raw().checked_add(s.len - 1).is_none() {
            return Err(DmaError::InvalidArgument);
        }
        let s_iova_off = s.paddr.raw() & mask;
        let s_iova_len = s
            .len
            .checked_add(s_iova_off + mask)
            .ok_or(DmaError::InvalidArgument)?
            & !mask;
        // Distance to the next boundary (0 when exactly on one).
        let pad = boundary.wrapping_sub(iova_len).wrapping_add(1) & boundary;
        if pad != 0 && pad < s_iova_len - 1 {
            runs.push((run_start, iova_len - run_start, run_first, i));
            iova_len = iova_len.checked_add(pad).ok_or(DmaError::InvalidArgument)?;
            run_start = iova_len;
            run_first = i;
        }
        segs.push(SegLayout {
            iova_off: iova_len,
            s_iova_off,
            s_len: s.len,
            s_iova_len,
        });
        iova_len = iova_len
            .checked_add(s_iova_len)
            .ok_or(DmaError::InvalidArgument)?;
    }
    runs.push((run_start, iova_len - run_start, run_first, sg.len()));
    Ok(Layout {
        segs,
        iova_len,
        runs,
    })
}

/// The widened segments of one run, as the page tables map them.
pub(crate) fn run_entries(sg: &[SgEntry], l: &Layout, first: usize, end: usize) -> Vec<SgEntry> {
    (first..end)
        .map(|i| SgEntry {
            paddr: PhysAddr::new(sg[i].paddr.raw() - l.segs[i].s_iova_off),
            len: l.segs[i].s_iova_len,
        })
        .collect()
}

/// The DMA segments of a list laid out at `base` (Linux's `__finalise_sg`).
pub(crate) fn finalise(l: &Layout, base: u64, boundary: u64, max_seg: u64) -> Vec<DmaSegment> {
    let mut out: Vec<DmaSegment> = Vec::with_capacity(l.segs.len());
    let mut cur_len = 0u64;
    for (i, s) in l.segs.iter().enumerate() {
        let dma_addr = base + s.iova_off;
        let merge = cur_len != 0
            && s.s_iova_off == 0
            && dma_addr & boundary != 0
            && max_seg.saturating_sub(cur_len) >= s.s_len;
        match out.last_mut() {
            Some(last) if merge => {
                cur_len += s.s_len;
                last.len = cur_len;
            }
            _ => {
                cur_len = s.s_len;
                out.push(DmaSegment {
                    addr: DmaAddr::new(dma_addr + s.s_iova_off),
                    len: s.s_len,
                });
            }
        }
        // Only a buffer that runs to the end of its last granule, with no
        // gap after it, can be continued by the next one.
        let next_off = l.segs.get(i + 1).map_or(u64::MAX, |n| n.iova_off);
        let gap_after = next_off != u64::MAX && next_off != s.iova_off + s.s_iova_len;
        if s.s_iova_off + s.s_len < s.s_iova_len || gap_after {
            cur_len = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 0x1000;
    const NO_BOUNDARY: u64 = u64::MAX;

    fn sg(list: &[(u64, u64)]) -> Vec<SgEntry> {
        list.iter()
            .map(|&(pa, len)| SgEntry {
                paddr: PhysAddr::new(pa),
                len,
            })
            .collect()
    }

    #[test]
    fn segments_are_widened_to_granules_and_laid_end_to_end() {
        let l = layout(
            &sg(&[(0x10_0800, 0x100), (0x20_0000, 0x1800)]),
            G,
            NO_BOUNDARY,
        )
        .unwrap();
        assert_eq!(l.iova_len, 0x1000 + 0x2000);
        assert_eq!(l.segs[1].iova_off, 0x1000);
        assert_eq!(l.runs, vec![(0, 0x3000, 0, 2)]);
    }

    #[test]
    fn page_aligned_whole_granule_segments_merge_into_one_dma_segment() {
        let list = sg(&[(0x10_0000, 0x1000), (0x50_0000, 0x2000), (0x90_0000, 0x800)]);
        let l = layout(&list, G, NO_BOUNDARY).unwrap();
        let segs = finalise(&l, 0xf000_0000, NO_BOUNDARY, 0x1_0000);
        assert_eq!(
            segs,
            vec![DmaSegment {
                addr: DmaAddr::new(0xf000_0000),
                len: 0x3800
            }]
        );
    }

    #[test]
    fn a_segment_ending_mid_granule_or_starting_at_an_offset_is_not_merged() {
        let list = sg(&[(0x10_0000, 0x800), (0x50_0000, 0x1000), (0x60_0100, 0x100)]);
        let l = layout(&list, G, NO_BOUNDARY).unwrap();
        let segs = finalise(&l, 0x10_0000, NO_BOUNDARY, 0x1_0000);
        assert_eq!(
            segs,
            vec![
                DmaSegment {
                    addr: DmaAddr::new(0x10_0000),
                    len: 0x800
                },
                DmaSegment {
                    addr: DmaAddr::new(0x10_1000),
                    len: 0x1000
                },
                DmaSegment {
                    addr: DmaAddr::new(0x10_2100),
                    len: 0x100
                },
            ]
        );
    }

    #[test]
    fn merging_stops_at_the_maximum_segment_size() {
        let list = sg(&[(0, 0x1000), (0x10000, 0x1000), (0x20000, 0x1000)]);
        let l = layout(&list, G, NO_BOUNDARY).unwrap();
        let segs = finalise(&l, 0x100_0000, NO_BOUNDARY, 0x2000);
        assert_eq!(
            segs.iter().map(|s| s.len).collect::<Vec<_>>(),
            [0x2000, 0x1000]
        );
    }

    #[test]
    fn a_segment_that_would_cross_a_boundary_starts_at_the_next_one() {
        // 64 KiB boundary: 0xc000 used, a 0x8000 segment would cross it.
        let list = sg(&[(0x10_0000, 0xc000), (0x20_0000, 0x8000)]);
        let l = layout(&list, G, 0xffff).unwrap();
        assert_eq!(l.segs[1].iova_off, 0x1_0000);
        assert_eq!(l.iova_len, 0x1_8000);
        assert_eq!(l.runs, vec![(0, 0xc000, 0, 1), (0x1_0000, 0x8000, 1, 2)]);
        let segs = finalise(&l, 0x40_0000, 0xffff, 0x10_0000);
        assert_eq!(segs.len(), 2, "never merged across the gap or the boundary");
        assert_eq!(segs[1].addr, DmaAddr::new(0x41_0000));
    }

    #[test]
    fn empty_lists_zero_lengths_and_wrapping_segments_are_invalid() {
        assert_eq!(layout(&[], G, NO_BOUNDARY), Err(DmaError::InvalidArgument));
        assert_eq!(
            layout(&sg(&[(0, 0)]), G, NO_BOUNDARY),
            Err(DmaError::InvalidArgument)
        );
        assert_eq!(
            layout(&sg(&[(u64::MAX - 0xfff, 0x2000)]), G, NO_BOUNDARY),
            Err(DmaError::InvalidArgument)
        );
    }
}
