//! AMD IOMMU "v1" host page tables (AMD I/O Virtualization Technology spec,
//! 2.2.3 "I/O Page Tables for Host Translations"): 1 to 6 levels of 512
//! entries, 4 KiB pages and 2 MiB / 1 GiB pages at levels 2 and 3.
//!
//! Bits: PR\[0\], A\[5\], HD\[6\] (host dirty, for leaves), NextLevel\[11:9\],
//! address \[51:12\], U\[59\], FC\[60\] (force coherent), IR\[61\], IW\[62\].
//! A directory entry's NextLevel is the AMD level of the table it points to
//! (AMD numbers levels from the leaves: 1 holds 4 KiB pages); a leaf has
//! NextLevel 0 and maps the natural size of its level. NextLevel 7 (pages of
//! other sizes, replicated) is not produced and decodes as invalid, as is a
//! directory entry that skips levels.
//!
//! A table starts in paging mode 3 (39-bit addresses, or the largest mode
//! when that is smaller) and grows a level at a time up to its largest mode
//! when a higher address is mapped, as Linux's `increase_address_space`
//! does: the new root's first entry points at the old root, so walks in
//! flight stay valid. The device table entry must then be given the new
//! root and mode (`IoPageTable::top`, [`AmdV1::amd_level`]).
//!
//! Like Linux, directory entries carry PR|IR|IW and leaves always set FC.
//! Memory type, execute and privilege live in the device table entry, not
//! here, so only read and write survive a round trip.

use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind, TableBits};
use iommu_types::{PhysAddr, Prot};

const PR: u64 = 1 << 0;
const HD: u64 = 1 << 6;
const NEXT_SHIFT: u32 = 9;
const NEXT_MASK: u64 = 0x7 << NEXT_SHIFT;
const FC: u64 = 1 << 60;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;
const ADDR: u64 = ((1 << 52) - 1) & !0xfff;

/// AMD v1 tables for one paging mode (number of levels).
pub type AmdV1 = AmdV1Format<0>;

/// The AMD v1 layout with 2 KiB pages, as Linux's iommufd selftest builds
/// its mock IOMMU's tables (the AMD v1 format with the granule halved):
/// addresses are stored one bit higher (bits \[50:11\] of the output
/// address in descriptor bits \[51:12\]), so the output is 51 bits, and
/// the levels hold 2 KiB, 1 MiB and 512 MiB pages.
pub type AmdV1Selftest = AmdV1Format<1>;

/// The AMD v1 layout with the address stored `SHIFT` bits up (0: the
/// hardware's; see [`AmdV1`] and [`AmdV1Selftest`]). A constant, so the
/// hardware layout's code is the same as if the shift did not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdV1Format<const SHIFT: u32> {
    geo: Geometry,
}

impl<const SHIFT: u32> AmdV1Format<SHIFT> {
    /// Tables that grow up to paging mode `levels` (1..=6; 1..=5 for
    /// [`AmdV1Selftest`], whose addresses end at 56 bits), with a 52-bit
    /// output (51 for the selftest layout); a fresh one starts in mode 3
    /// (or `levels`, if smaller).
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for other modes.
    pub fn new(levels: usize) -> Result<Self, PgtableError> {
        let granule = 12 - SHIFT;
        if !(1..=6).contains(&levels) || granule + 9 * (levels as u32 - 1) >= 64 {
            return Err(PgtableError::InvalidArgument);
        }
        let ias = (granule + 9 * levels as u32).min(64);
        let root_bits = ias - granule - 9 * (levels as u32 - 1);
        // Leaves at AMD levels 1, 2 and 3 (4 KiB, 2 MiB, 1 GiB).
        let leaf_levels = (0..levels)
            .filter(|&l| levels - l <= 3)
            .fold(0u32, |m, l| m | (1 << l));
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: granule,
                bits_per_level: 9,
                root_bits,
                leaf_levels,
                ias,
                oas: 52 - SHIFT,
            },
        })
    }

    /// AMD's number for our `level` (0 = root): the root is AMD level `levels`.
    pub fn amd_level(&self, level: usize) -> u32 {
        (self.geo.levels - level) as u32
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: a table descriptor is the only encoding with a non-zero next-level field equal to this level's AMD number minus one; leaves (and their dirty and stepped forms) keep next level 0, and the address field round-trips (shifted up by SHIFT and back) for 4 KiB-aligned tables inside the output (so, with SHIFT 0, `table_bits` holds: PR plus that next-level field is a table, written as the address plus PR, IR, IW and the field; with another SHIFT it gives None).
unsafe impl<const SHIFT: u32> Format for AmdV1Format<SHIFT> {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        let addr = PhysAddr::new((pte & ADDR) >> SHIFT);
        match self.kind(pte, level) {
            PteKind::Invalid => Pte::Invalid,
            PteKind::Table => Pte::Table(addr),
            PteKind::Leaf => {
                let mut prot = Prot::NONE;
                if pte & IR != 0 {
                    prot |= Prot::READ;
                }
                if pte & IW != 0 {
                    prot |= Prot::WRITE;
                }
                Pte::Leaf { pa: addr, prot }
            }
        }
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr, level: usize) -> u64 {
        let next = u64::from(self.amd_level(level + 1));
        ((table.raw() << SHIFT) & ADDR) | (next << NEXT_SHIFT) | PR | IR | IW
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, _level: usize, prot: Prot) -> u64 {
        let mut pte = ((pa.raw() << SHIFT) & ADDR) | PR | FC;
        if prot.contains(Prot::READ) {
            pte |= IR;
        }
        if prot.contains(Prot::WRITE) {
            pte |= IW;
        }
        pte
    }

    fn name(&self) -> &'static str {
        if SHIFT == 0 {
            "amd-v1"
        } else {
            "amd-v1-selftest"
        }
    }

    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        if pte & PR == 0 {
            return PteKind::Invalid;
        }
        let next = (pte & NEXT_MASK) >> NEXT_SHIFT;
        if next == 0 && self.geo.is_leaf_level(level) {
            PteKind::Leaf
        } else if next != 0 && u64::from(self.amd_level(level)) == next + 1 {
            PteKind::Table
        } else {
            PteKind::Invalid
        }
    }

    fn initial_root_level(&self) -> usize {
        self.geo.levels.saturating_sub(3)
    }

    #[inline]
    fn table_bits(&self, level: usize) -> Option<TableBits> {
        if SHIFT != 0 {
            return None;
        }
        let next = u64::from(self.amd_level(level + 1)) << NEXT_SHIFT;
        Some(TableBits {
            type_mask: PR | NEXT_MASK,
            type_bits: PR | next,
            tag: PR | next | IR | IW,
        })
    }

    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        // At a level that holds leaves, a present entry with next level 0.
        self.geo.is_leaf_level(level).then_some(LeafBits {
            type_mask: PR | NEXT_MASK,
            type_bits: PR,
        })
    }

    #[inline]
    fn leaf_step(&self, _pa: PhysAddr, pgsize: u64, _count: usize) -> Option<u64> {
        Some(pgsize << SHIFT)
    }

    fn supports_dirty(&self) -> bool {
        true
    }

    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        let leaf = pte & PR != 0 && pte & NEXT_MASK == 0 && self.geo.is_leaf_level(level);
        (leaf && pte & IW != 0).then_some(pte & HD != 0)
    }

    fn make_clean(&self, pte: u64) -> u64 {
        pte & !HD
    }

    fn make_dirty(&self, pte: u64) -> u64 {
        pte | HD
    }
}
