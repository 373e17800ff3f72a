//! RISC-V IOMMU page tables (RISC-V IOMMU spec 1.0, which reuses the
//! privileged spec's Sv39/Sv48/Sv57 formats): first stage Sv39, Sv48, Sv57
//! and second ("G") stage Sv39x4, Sv48x4, Sv57x4, whose root is four pages
//! (two more input bits).
//!
//! Bits: V\[0\], R\[1\], W\[2\], X\[3\], U\[4\], G\[5\], A\[6\], D\[7\],
//! PPN \[53:10\] (= PA\[55:12\]), PBMT \[62:61\] (Svpbmt), N\[63\]. V with
//! R=W=X=0 points to the next table; any of R/X makes a leaf at any level
//! (a gigapage, terapage, ...), which must be aligned; W without R is
//! reserved.
//!
//! Like Linux, leaves are accessed (A=1) and, when writable, already dirty
//! (D=1) unless dirty tracking is on; write-only maps as read-write. U is
//! set for unprivileged access and always at the G stage (which requires
//! it); X is set unless `IOMMU_NOEXEC`; `IOMMU_MMIO` selects PBMT=IO, all
//! else keeps the PMA memory type.

use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind};
use iommu_types::{PhysAddr, Prot};

const V: u64 = 1 << 0;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;
const PPN_SHIFT: u32 = 10;
const PPN_MASK: u64 = ((1 << 44) - 1) << PPN_SHIFT;
const PBMT_IO: u64 = 2 << 61;
const PBMT_MASK: u64 = 3 << 61;

/// Which stage a RISC-V table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RiscvStage {
    /// First stage (IOVA to GPA/SPA): Sv39, Sv48, Sv57.
    First,
    /// Second stage (GPA to SPA): Sv39x4, Sv48x4, Sv57x4.
    Second,
}

/// One RISC-V IOMMU table format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Riscv {
    geo: Geometry,
    stage: RiscvStage,
}

impl Riscv {
    /// Sv39 (3 levels), Sv48 (4) or Sv57 (5) at `stage`.
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for another number of levels.
    pub fn new(levels: usize, stage: RiscvStage) -> Result<Self, PgtableError> {
        if !(3..=5).contains(&levels) {
            return Err(PgtableError::InvalidArgument);
        }
        let extra = if stage == RiscvStage::Second { 2 } else { 0 };
        Ok(Self {
            geo: Geometry {
                levels,
                granule_shift: 12,
                bits_per_level: 9,
                root_bits: 9 + extra,
                leaf_levels: (1u32 << levels) - 1,
                ias: 12 + 9 * levels as u32 + extra,
                oas: 56,
            },
            stage,
        })
    }

    /// The stage.
    pub fn stage(&self) -> RiscvStage {
        self.stage
    }

    /// The permissions and attributes of a leaf descriptor.
    fn leaf_prot(&self, pte: u64) -> Prot {
        let mut prot = Prot::NONE;
        if pte & R != 0 {
            prot |= Prot::READ;
        }
        if pte & W != 0 {
            prot |= Prot::WRITE;
        }
        if pte & X == 0 {
            prot |= Prot::NOEXEC;
        }
        if self.stage == RiscvStage::First && pte & U == 0 {
            prot |= Prot::PRIV;
        }
        if pte & PBMT_MASK == PBMT_IO {
            prot |= Prot::MMIO;
        }
        prot
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: a table is a valid descriptor with R, W and X clear, which only `encode_table` writes (every leaf has R or W set, and the dirty forms only change D), and the PPN field round-trips for 4 KiB-aligned tables.
unsafe impl Format for Riscv {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        let addr = PhysAddr::new((pte & PPN_MASK) << (12 - PPN_SHIFT));
        match self.kind(pte, level) {
            PteKind::Invalid => Pte::Invalid,
            PteKind::Table => Pte::Table(addr),
            PteKind::Leaf => Pte::Leaf {
                pa: addr,
                prot: self.leaf_prot(pte),
            },
        }
    }

    #[inline]
    fn encode_table(&self, table: PhysAddr, _level: usize) -> u64 {
        ((table.raw() >> 12) << PPN_SHIFT) & PPN_MASK | V
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, _level: usize, prot: Prot) -> u64 {
        let mut pte = ((pa.raw() >> 12) << PPN_SHIFT) & PPN_MASK | V | A | R;
        if prot.contains(Prot::WRITE) {
            pte |= W | D;
        }
        if !prot.contains(Prot::NOEXEC) {
            pte |= X;
        }
        if self.stage == RiscvStage::Second || !prot.contains(Prot::PRIV) {
            pte |= U;
        }
        if prot.contains(Prot::MMIO) {
            pte |= PBMT_IO;
        }
        pte
    }

    fn name(&self) -> &'static str {
        match (self.stage, self.geo.levels) {
            (RiscvStage::First, 3) => "riscv-sv39",
            (RiscvStage::First, 4) => "riscv-sv48",
            (RiscvStage::First, _) => "riscv-sv57",
            (RiscvStage::Second, 3) => "riscv-sv39x4",
            (RiscvStage::Second, 4) => "riscv-sv48x4",
            (RiscvStage::Second, _) => "riscv-sv57x4",
        }
    }

    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        if pte & V == 0 {
            return PteKind::Invalid;
        }
        if pte & (R | W | X) == 0 {
            return if level + 1 < self.geo.levels {
                PteKind::Table
            } else {
                PteKind::Invalid
            };
        }
        // W without R is reserved; a superpage must be aligned to its size.
        let pa = (pte & PPN_MASK) << (12 - PPN_SHIFT);
        if pte & (R | W) == W || pa & (self.geo.entry_size(level) - 1) != 0 {
            PteKind::Invalid
        } else {
            PteKind::Leaf
        }
    }

    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        // At the last level a valid entry with R is a page (R keeps it
        // from being a pointer or W-without-R; 4 KiB needs no alignment
        // check). Superpages must be aligned, which no mask tells.
        (level + 1 == self.geo.levels).then_some(LeafBits {
            type_mask: V | R,
            type_bits: V | R,
        })
    }

    #[inline]
    fn leaf_step(&self, _pa: PhysAddr, pgsize: u64, _count: usize) -> Option<u64> {
        // The PPN sits two bits lower than the address it encodes.
        Some(pgsize >> (12 - PPN_SHIFT))
    }

    fn supports_dirty(&self) -> bool {
        true
    }

    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        (self.kind(pte, level) == PteKind::Leaf && pte & W != 0).then_some(pte & D != 0)
    }

    fn make_clean(&self, pte: u64) -> u64 {
        pte & !D
    }

    fn make_dirty(&self, pte: u64) -> u64 {
        pte | D
    }
}
