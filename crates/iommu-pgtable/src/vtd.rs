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

use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind};
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
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        // At the last level an entry with R is a page (write-only ones are
        // classified); above it a superpage also needs PS where allowed.
        self.is_last(level).then_some(LeafBits {
            type_mask: R,
            type_bits: R,
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
        (self.is_leaf(pte, level) && pte & W != 0).then_some(pte & D != 0)
    }

    fn make_clean(&self, pte: u64) -> u64 {
        pte & !D
    }

    fn make_dirty(&self, pte: u64) -> u64 {
        pte | D
    }
}

/// The two tables a scalable-mode VT-d unit walks for a PASID entry: the
/// second stage (PGTT = 010b, [`VtdSl`]) or the first stage (PGTT = 001b,
/// x86-64 paging, [`X86_64`](crate::x86::X86_64)). One type, so a
/// driver's paging domain holds either in the same
/// [`IoPageTable`](crate::IoPageTable); every call is the chosen format's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VtdFormat {
    /// Second-stage tables.
    SecondStage(VtdSl),
    /// First-stage tables.
    FirstStage(crate::x86::X86_64),
}

macro_rules! each {
    ($self:ident, $f:ident => $e:expr) => {
        match $self {
            VtdFormat::SecondStage($f) => $e,
            VtdFormat::FirstStage($f) => $e,
        }
    };
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: every method is the wrapped format's, which keeps the contract; the variant never changes after construction, so the answers stay those of one format.
unsafe impl Format for VtdFormat {
    fn geometry(&self) -> &Geometry {
        each!(self, f => f.geometry())
    }
    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        each!(self, f => f.decode(pte, level))
    }
    #[inline]
    fn encode_table(&self, table: PhysAddr, level: usize) -> u64 {
        each!(self, f => f.encode_table(table, level))
    }
    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        each!(self, f => f.encode_leaf(pa, level, prot))
    }
    fn name(&self) -> &'static str {
        each!(self, f => f.name())
    }
    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        each!(self, f => f.kind(pte, level))
    }
    fn initial_root_level(&self) -> usize {
        each!(self, f => f.initial_root_level())
    }
    #[inline]
    fn table_bits(&self, level: usize) -> Option<crate::TableBits> {
        each!(self, f => f.table_bits(level))
    }
    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        each!(self, f => f.leaf_bits(level))
    }
    #[inline]
    fn leaf_step(&self, pa: PhysAddr, pgsize: u64, count: usize) -> Option<u64> {
        each!(self, f => f.leaf_step(pa, pgsize, count))
    }
    fn supports_dirty(&self) -> bool {
        each!(self, f => f.supports_dirty())
    }
    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        each!(self, f => f.dirty_state(pte, level))
    }
    fn make_clean(&self, pte: u64) -> u64 {
        each!(self, f => f.make_clean(pte))
    }
    fn make_dirty(&self, pte: u64) -> u64 {
        each!(self, f => f.make_dirty(pte))
    }
}
