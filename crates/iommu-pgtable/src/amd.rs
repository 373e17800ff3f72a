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

use crate::{Format, Geometry, PgtableError, Pte, PteKind, TableBits};
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdV1 {
    geo: Geometry,
}

impl AmdV1 {
    /// Tables that grow up to paging mode `levels` (1..=6), with a 52-bit
    /// output; a fresh one starts in mode 3 (or `levels`, if smaller).
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for other modes.
    pub fn new(levels: usize) -> Result<Self, PgtableError> {
        if !(1..=6).contains(&levels) {
            return Err(PgtableError::InvalidArgument);
        }
        let ias = (12 + 9 * levels as u32).min(64);
        let root_bits = ias - 12 - 9 * (levels as u32 - 1);
        // Leaves at AMD levels 1, 2 and 3 (4 KiB, 2 MiB, 1 GiB).
        let leaf_levels = (0..levels)
            .filter(|&l| levels - l <= 3)
            .fold(0u32, |m, l| m | (1 << l));
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: 12,
                bits_per_level: 9,
                root_bits,
                leaf_levels,
                ias,
                oas: 52,
            },
        })
    }

    /// AMD's number for our `level` (0 = root): the root is AMD level `levels`.
    pub fn amd_level(&self, level: usize) -> u32 {
        (self.geo.levels - level) as u32
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: a table descriptor is the only encoding with a non-zero next-level field equal to this level's AMD number minus one; leaves (and their dirty and stepped forms) keep next level 0, and the address field round-trips for 4 KiB-aligned tables inside the 52-bit output (so `table_bits` holds: PR plus that next-level field is a table, written as the address plus PR, IR, IW and the field).
unsafe impl Format for AmdV1 {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        let addr = PhysAddr::new(pte & ADDR);
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
        (table.raw() & ADDR) | (next << NEXT_SHIFT) | PR | IR | IW
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, _level: usize, prot: Prot) -> u64 {
        let mut pte = (pa.raw() & ADDR) | PR | FC;
        if prot.contains(Prot::READ) {
            pte |= IR;
        }
        if prot.contains(Prot::WRITE) {
            pte |= IW;
        }
        pte
    }

    fn name(&self) -> &'static str {
        "amd-v1"
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
        let next = u64::from(self.amd_level(level + 1)) << NEXT_SHIFT;
        Some(TableBits {
            type_mask: PR | NEXT_MASK,
            type_bits: PR | next,
            tag: PR | next | IR | IW,
        })
    }

    #[inline]
    fn leaf_step(&self, _pa: PhysAddr, pgsize: u64, _count: usize) -> Option<u64> {
        Some(pgsize)
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
