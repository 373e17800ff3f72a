//! Intel VT-d second-level paging (VT-d spec 3.x, 9.8 "Second-Level Paging
//! Entries"): 3, 4 or 5 levels of 512 entries, 4 KiB pages with 2 MiB and
//! 1 GiB superpages.
//!
//! Bits: R\[0\], W\[1\], X\[2\] (execute, unused here), EMT\[5:3\], IPAT\[6\],
//! PS\[7\] (superpage, in SL-PDE/SL-PDPE), A\[8\], D\[9\] (with second-level
//! A/D), SNP\[11\] (snoop), address \[51:12\]. An entry is present when R or W
//! is set; table entries carry R|W. Memory type comes from EMT only when the
//! context enables it, so this codec leaves EMT zero and expresses
//! `IOMMU_CACHE` with SNP, as Linux does. Execute and privilege are not
//! second-level properties.

use crate::{Format, Geometry, PgtableError, Pte, PteKind};
use iommu_types::{PhysAddr, Prot};

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const D: u64 = 1 << 9;
const SNP: u64 = 1 << 11;
const ADDR: u64 = ((1 << 52) - 1) & !0xfff;

/// The permissions of a leaf: R, W, and SNP as `IOMMU_CACHE`.
fn leaf_prot(pte: u64) -> Prot {
    let mut prot = Prot::NONE;
    if pte & R != 0 {
        prot |= Prot::READ;
    }
    if pte & W != 0 {
        prot |= Prot::WRITE;
    }
    if pte & SNP != 0 {
        prot |= Prot::CACHE;
    }
    prot
}

/// VT-d second-level tables for one address width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtdSl {
    geo: Geometry,
}

impl VtdSl {
    /// Tables with `levels` levels (3 = 39-bit, 4 = 48-bit, 5 = 57-bit AGAW)
    /// and a host address width of `haw` bits (32..=52).
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for other values.
    pub fn new(levels: usize, haw: u32) -> Result<Self, PgtableError> {
        if !(3..=5).contains(&levels) || !(32..=52).contains(&haw) {
            return Err(PgtableError::InvalidArgument);
        }
        // Leaves: the last level, and superpages at the two above it.
        let leaf_levels = (levels - 3..levels).fold(0u32, |m, l| m | (1 << l));
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: 12,
                bits_per_level: 9,
                root_bits: 9,
                leaf_levels,
                ias: 12 + 9 * levels as u32,
                oas: haw,
            },
        })
    }

    fn is_last(&self, level: usize) -> bool {
        level + 1 == self.geo.levels
    }

    fn is_leaf(&self, pte: u64, level: usize) -> bool {
        pte & (R | W) != 0
            && (self.is_last(level) || (pte & PS != 0 && self.geo.is_leaf_level(level)))
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: a table is a present non-last-level descriptor without PS, which only `encode_table` writes (superpage leaves carry PS, last-level leaves are never classified as tables, and D changes nothing else), and the address field round-trips for 4 KiB-aligned tables.
unsafe impl Format for VtdSl {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        let addr = PhysAddr::new(pte & ADDR);
        match self.kind(pte, level) {
            PteKind::Invalid => Pte::Invalid,
            PteKind::Table => Pte::Table(addr),
            PteKind::Leaf => Pte::Leaf {
                pa: addr,
                prot: leaf_prot(pte),
            },
        }
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr, _level: usize) -> u64 {
        (table.raw() & ADDR) | R | W
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        let mut pte = pa.raw() & ADDR;
        if prot.contains(Prot::READ) {
            pte |= R;
        }
        if prot.contains(Prot::WRITE) {
            pte |= W;
        }
        if prot.contains(Prot::CACHE) {
            pte |= SNP;
        }
        if !self.is_last(level) {
            pte |= PS;
        }
        pte
    }

    fn name(&self) -> &'static str {
        match self.geo.levels {
            3 => "vtd-sl-3level",
            4 => "vtd-sl-4level",
            _ => "vtd-sl-5level",
        }
    }

    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        if pte & (R | W) == 0 {
            PteKind::Invalid
        } else if !self.is_last(level) && pte & PS == 0 {
            PteKind::Table
        } else if self.is_leaf(pte, level) {
            PteKind::Leaf
        } else {
            PteKind::Invalid // PS where superpages are not allowed: reserved
        }
    }

    #[inline]
    fn leaf_step(&self, _pa: PhysAddr, pgsize: u64, _count: usize) -> Option<u64> {
        Some(pgsize)
    }

    fn supports_dirty(&self) -> bool {
        true
    }

    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        (self.is_leaf(pte, level) && pte & W != 0).then_some(pte & D != 0)
    }

    fn make_clean(&self, pte: u64) -> u64 {
        pte & !D
    }

    fn make_dirty(&self, pte: u64) -> u64 {
        pte | D
    }
}
