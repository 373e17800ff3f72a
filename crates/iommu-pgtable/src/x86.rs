//! x86-64 paging as an IOMMU's first stage: Intel VT-d first-stage tables
//! (VT-d spec 3.x, 9.7 "First-Stage Paging Entries", which points at the
//! CPU's 4-level and 5-level paging) and AMD's guest (v2) tables. 4 or 5
//! levels of 512 entries, 4 KiB pages, 2 MiB pages in a PDE and 1 GiB pages
//! in a PDPTE.
//!
//! Bits: P\[0\], R/W\[1\], U/S\[2\], PWT\[3\], PCD\[4\], A\[5\], D\[6\]
//! (leaves), PS\[7\] (PDE/PDPTE: a large page), address \[51:12\], XD\[63\].
//! Present means readable: the format has no write-only or no-access leaf.
//!
//! The input is sign-extended, as on the CPU: bits above the top level's
//! must copy its highest bit. An IOMMU domain uses the lower half only, as
//! Linux's generic page table does by default, so the input is 47 bits wide
//! at 4 levels and 56 at 5; an emulated walker must fault a non-canonical
//! address rather than truncate it.
//!
//! Leaves are written as Linux 7.3 writes them (`x86_64_pt_iommu_set_prot`):
//! P, U (DMA without a PASID privilege request is a user access) and A
//! always, R/W with D for a writable page (dirty tracking is a second-stage
//! feature on VT-d, so a first-stage leaf starts dirty); PS above the last
//! level. `IOMMU_CACHE`, `IOMMU_NOEXEC`, `IOMMU_MMIO` and `IOMMU_PRIV` have
//! no bit: the memory type comes from the PAT and the MTRRs, XD stays clear
//! (Linux 6.12's own first-stage code set it; 7.3's does not), and a
//! privileged access may use a user page unless the PASID entry enables SMEP.
//! Table entries are P | R/W | U | A.

use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind, TableBits};
use iommu_types::{PhysAddr, Prot};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const U: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const ADDR: u64 = ((1 << 52) - 1) & !0xfff;
/// What a table entry carries besides its address.
const TABLE: u64 = P | RW | U | A;

/// x86-64 4- or 5-level tables for one host address width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X86_64 {
    geo: Geometry,
}

impl X86_64 {
    /// Tables with `levels` levels (4: 48-bit sign-extended input, 5:
    /// 57-bit) and a host address width of `haw` bits (32..=52).
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for other values.
    pub fn new(levels: usize, haw: u32) -> Result<Self, PgtableError> {
        if !(4..=5).contains(&levels) || !(32..=52).contains(&haw) {
            return Err(PgtableError::InvalidArgument);
        }
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: 12,
                bits_per_level: 9,
                root_bits: 9,
                // PTE, PDE and PDPTE may be leaves: 4 KiB, 2 MiB, 1 GiB.
                leaf_levels: (levels - 3..levels).fold(0u32, |m, l| m | (1 << l)),
                // The lower half of the sign-extended space.
                ias: 12 + 9 * levels as u32 - 1,
                oas: haw,
            },
        })
    }

    /// Whether `iova` is canonical for these tables: every bit above the
    /// top level's copies its highest bit (bit 47 at 4 levels, 56 at 5).
    pub fn is_canonical(&self, iova: u64) -> bool {
        let top = 12 + 9 * self.geo.levels as u32 - 1;
        let upper = (iova as i64) >> top;
        upper == 0 || upper == -1
    }

    fn is_last(&self, level: usize) -> bool {
        level + 1 == self.geo.levels
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: a table is a present entry above the last level without PS, which only `encode_table` writes (large-page leaves carry PS, last-level leaves are never classified as tables), and the address field round-trips for 4 KiB-aligned tables in the 52-bit output space.
unsafe impl Format for X86_64 {
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
                prot: if pte & RW != 0 { Prot::RW } else { Prot::READ },
            },
        }
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr, _level: usize) -> u64 {
        (table.raw() & ADDR) | TABLE
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        let mut pte = (pa.raw() & ADDR) | P | U | A;
        if prot.contains(Prot::WRITE) {
            pte |= RW | D;
        }
        if !self.is_last(level) {
            pte |= PS;
        }
        pte
    }

    fn name(&self) -> &'static str {
        match self.geo.levels {
            4 => "x86-64-4level",
            _ => "x86-64-5level",
        }
    }

    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        if pte & P == 0 {
            PteKind::Invalid
        } else if self.is_last(level) {
            PteKind::Leaf
        } else if pte & PS == 0 {
            PteKind::Table
        } else if self.geo.is_leaf_level(level)
            && pte & ADDR & (self.geo.entry_size(level) - 1) == 0
        {
            PteKind::Leaf
        } else {
            // PS in a PML4E/PML5E, or a large page whose address has bits
            // below its size set (reserved, bit 12 is PAT): reserved.
            PteKind::Invalid
        }
    }

    #[inline]
    fn table_bits(&self, level: usize) -> Option<TableBits> {
        // Above the last level a present entry without PS is a table, and
        // `encode_table` adds exactly TABLE to the 4 KiB-aligned address.
        (!self.is_last(level)).then_some(TableBits {
            type_mask: P | PS,
            type_bits: P,
            tag: TABLE,
        })
    }

    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        // At the last level every present entry is a page; above it a
        // large page must also be aligned, which no mask tells.
        self.is_last(level).then_some(LeafBits {
            type_mask: P,
            type_bits: P,
        })
    }

    #[inline]
    fn leaf_step(&self, _pa: PhysAddr, pgsize: u64, _count: usize) -> Option<u64> {
        Some(pgsize)
    }
}
