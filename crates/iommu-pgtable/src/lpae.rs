//! Arm VMSAv8-64 long-descriptor ("LPAE") translation tables, stage 1, 4 KiB granule.
//!
//! Descriptor layout (Arm ARM D8.3, "Translation table descriptor formats"):
//! bits\[1:0\] = 0b11 for a table or a level-3 page, 0b01 for a block at level 1
//! or 2; output address in bits\[47:12\]; lower attributes AttrIndx\[4:2\],
//! AP\[2:1\] at bits\[7:6\], SH\[9:8\], AF\[10\], nG\[11\]; upper attributes
//! PXN\[53\], UXN/XN\[54\].
//!
//! Arm numbers levels 0..3 by where a 48-bit walk starts; with a smaller IAS
//! the walk starts lower. [`Geometry`] counts from the root, so Arm level
//! `3 - (levels - 1 - l)` is our level `l`.
//!
//! The memory-attribute indices follow Linux's MAIR layout for IOMMUs:
//! 0 = normal non-cacheable, 1 = normal write-back cacheable, 2 = device-nGnRE.

use crate::{Format, Geometry, PgtableError, Pte};
use iommu_types::{PhysAddr, Prot};

const VALID: u64 = 1 << 0;
const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
const ATTRINDX_SHIFT: u32 = 2;
const ATTRINDX_MASK: u64 = 0b111 << ATTRINDX_SHIFT;
const AP_UNPRIV: u64 = 1 << 6;
const AP_RDONLY: u64 = 1 << 7;
const SH_OUTER: u64 = 0b10 << 8;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const XN: u64 = PXN | UXN;
const ADDR_MASK_48: u64 = 0x0000_ffff_ffff_f000;

/// MAIR index for normal non-cacheable memory.
pub const MAIR_IDX_NC: u64 = 0;
/// MAIR index for normal write-back cacheable memory.
pub const MAIR_IDX_CACHE: u64 = 1;
/// MAIR index for device-nGnRE memory.
pub const MAIR_IDX_DEV: u64 = 2;

/// The ARM LPAE format for one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lpae {
    geo: Geometry,
}

impl Lpae {
    /// Stage 1 with the 4 KiB granule: pages of 4 KiB, blocks of 2 MiB and 1 GiB.
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] unless `32 <= ias <= 48` and `32 <= oas <= 48`.
    pub fn stage1_4k(ias: u32, oas: u32) -> Result<Self, PgtableError> {
        if !(32..=48).contains(&ias) || !(32..=48).contains(&oas) {
            return Err(PgtableError::InvalidArgument);
        }
        let index_bits = ias - 12;
        let levels = index_bits.div_ceil(9) as usize;
        let root_bits = index_bits - 9 * (levels as u32 - 1);
        // Arm levels 1, 2 and 3 may hold leaves; count them from the bottom.
        let leaf_levels = (0..levels)
            .filter(|&l| levels - 1 - l <= 2)
            .fold(0u32, |m, l| m | (1 << l));
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: 12,
                bits_per_level: 9,
                root_bits,
                leaf_levels,
                ias,
                oas,
            },
        })
    }

    fn is_last_level(&self, level: usize) -> bool {
        level + 1 == self.geo.levels
    }
}

impl Format for Lpae {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        if pte & VALID == 0 {
            return Pte::Invalid;
        }
        let pa = PhysAddr::new(pte & ADDR_MASK_48);
        let is_table_or_page = pte & TYPE_TABLE_OR_PAGE != 0;
        if !self.is_last_level(level) && is_table_or_page {
            return Pte::Table(pa);
        }
        if self.is_last_level(level) && !is_table_or_page {
            // 0b01 at level 3 is reserved: treat as invalid, as hardware faults on it.
            return Pte::Invalid;
        }
        if !self.geo.is_leaf_level(level) {
            return Pte::Invalid;
        }
        let mut prot = Prot::READ;
        if pte & AP_RDONLY == 0 {
            prot |= Prot::WRITE;
        }
        if pte & AP_UNPRIV == 0 {
            prot |= Prot::PRIV;
        }
        if pte & XN != 0 {
            prot |= Prot::NOEXEC;
        }
        match (pte & ATTRINDX_MASK) >> ATTRINDX_SHIFT {
            MAIR_IDX_CACHE => prot |= Prot::CACHE,
            MAIR_IDX_DEV => prot |= Prot::MMIO,
            _ => {}
        }
        Pte::Leaf { pa, prot }
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr) -> u64 {
        (table.raw() & ADDR_MASK_48) | TYPE_TABLE_OR_PAGE | VALID
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        let mut pte = (pa.raw() & ADDR_MASK_48) | VALID | AF | NG;
        if self.is_last_level(level) {
            pte |= TYPE_TABLE_OR_PAGE;
        }
        // Stage 1 cannot express write-only; only read-without-write is read-only.
        if prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
            pte |= AP_RDONLY;
        }
        if !prot.contains(Prot::PRIV) {
            pte |= AP_UNPRIV;
        }
        if prot.contains(Prot::NOEXEC) {
            pte |= XN;
        }
        let idx = if prot.contains(Prot::MMIO) {
            MAIR_IDX_DEV
        } else if prot.contains(Prot::CACHE) {
            MAIR_IDX_CACHE
        } else {
            MAIR_IDX_NC
        };
        pte |= idx << ATTRINDX_SHIFT;
        pte |= if prot.contains(Prot::CACHE) {
            SH_INNER
        } else {
            SH_OUTER
        };
        pte
    }

    fn name(&self) -> &'static str {
        "lpae-s1-4k"
    }
}
