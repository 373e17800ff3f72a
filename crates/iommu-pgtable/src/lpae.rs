//! Arm VMSAv8-64 long-descriptor ("LPAE") translation tables: stage 1 and
//! stage 2, 4 KiB, 16 KiB and 64 KiB granules.
//!
//! Descriptor layout (Arm ARM D8.3, "Translation table descriptor formats"):
//! bits\[1:0\] = 0b11 for a table or a level-3 page, 0b01 for a block; the
//! output address in bits\[47:g\] (g = log2 granule) and, with the 64 KiB
//! granule and a 52-bit OAS, PA\[51:48\] in bits\[15:12\] (FEAT_LPA).
//!
//! - Stage 1 lower attributes: AttrIndx\[4:2\], AP\[2:1\] at bits\[7:6\],
//!   SH\[9:8\], AF\[10\], nG\[11\]; upper: DBM\[51\], PXN\[53\], UXN\[54\].
//! - Stage 2: MemAttr\[5:2\], S2AP\[7:6\] (bit 6 read, bit 7 write), SH\[9:8\],
//!   AF\[10\], DBM\[51\], XN\[54:53\].
//!
//! Arm numbers levels by where a full walk would start (0..3); a smaller
//! input size starts lower, and stage 2 may concatenate up to 16 tables at
//! the first level instead of adding a level. [`Lpae::arm_level`] converts.
//!
//! Memory attributes follow Linux's MAIR layout for IOMMUs (stage 1: index 0
//! normal non-cacheable, 1 write-back cacheable, 2 device-nGnRE) and its
//! stage-2 MemAttr values (0xf write-back, 0x5 non-cacheable, 0x1 device).
//!
//! Dirty tracking uses the hardware dirty-bit management of FEAT_HAFDBS: a
//! writable-clean leaf carries DBM with write permission removed (AP\[2\]
//! set at stage 1, S2AP\[1\] clear at stage 2); the SMMU gives the
//! permission back on the first write, and that is the dirty state.

use crate::{Format, Geometry, LeafBits, PgtableError, Pte, PteKind, TableBits};
use iommu_types::{PhysAddr, Prot};

const VALID: u64 = 1 << 0;
const TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_SHIFT: u32 = 2;
const ATTR_MASK: u64 = 0xf << ATTR_SHIFT;
const AP_UNPRIV: u64 = 1 << 6;
const AP_RDONLY: u64 = 1 << 7;
const S2AP_READ: u64 = 1 << 6;
const S2AP_WRITE: u64 = 1 << 7;
const SH_OUTER: u64 = 0b10 << 8;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const DBM: u64 = 1 << 51;
const NS: u64 = 1 << 5;
const NSTABLE: u64 = 1 << 63;
const XN: u64 = 0b11 << 53;

/// Stage-1 MAIR index for normal non-cacheable memory.
pub const MAIR_IDX_NC: u64 = 0;
/// Stage-1 MAIR index for normal write-back cacheable memory.
pub const MAIR_IDX_CACHE: u64 = 1;
/// Stage-1 MAIR index for device-nGnRE memory.
pub const MAIR_IDX_DEV: u64 = 2;
/// Stage-2 MemAttr for outer/inner write-back cacheable memory.
pub const S2_MEMATTR_OIWB: u64 = 0xf;
/// Stage-2 MemAttr for non-cacheable memory.
pub const S2_MEMATTR_NC: u64 = 0x5;
/// Stage-2 MemAttr for device-nGnRE memory.
pub const S2_MEMATTR_DEV: u64 = 0x1;

/// Smallest input size: the largest TxSZ the architecture allows without
/// FEAT_TTST is 39.
const MIN_IAS: u32 = 25;

/// Most tables stage 2 may concatenate at its first level.
const S2_MAX_CONCAT: u32 = 16;

/// Translation stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1 (VA to IPA/PA, the OS's own tables).
    S1,
    /// Stage 2 (IPA to PA, a hypervisor's tables).
    S2,
}

/// Translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages; blocks of 2 MiB and 1 GiB.
    G4K,
    /// 16 KiB pages; blocks of 32 MiB.
    G16K,
    /// 64 KiB pages; blocks of 512 MiB, and 4 TiB with a 52-bit OAS.
    G64K,
}

impl Granule {
    /// log2 of the granule.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::G4K => 12,
            Granule::G16K => 14,
            Granule::G64K => 16,
        }
    }
}

/// One ARM LPAE configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LpaeConfig {
    /// Stage.
    pub stage: Stage,
    /// Granule.
    pub granule: Granule,
    /// Input address size, 25..=48 (52 with the 64 KiB granule).
    pub ias: u32,
    /// Output address size, 32..=48 (up to 52 with the 64 KiB granule).
    pub oas: u32,
}

/// Per-table quirks (Linux's `IO_PGTABLE_QUIRK_*` that change descriptors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpaeQuirks {
    /// Stage 1 in a Secure world: mark leaves Non-secure (NS, bit 5) and
    /// table descriptors NSTable (bit 63), as Linux's `ARM_NS` quirk does.
    pub non_secure: bool,
}

/// The ARM LPAE format for one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lpae {
    cfg: LpaeConfig,
    quirks: LpaeQuirks,
    geo: Geometry,
    /// Arm level of our level 0.
    start_level: u32,
    concat: u32,
    /// The attribute bits of a leaf for every [`Prot`] (indexed by its
    /// bits), worked out once so that encoding a leaf is a lookup.
    leaf_attrs: [u64; 64],
}

impl Lpae {
    /// The format for `cfg`.
    ///
    /// # Errors
    /// [`PgtableError::InvalidArgument`] for sizes outside the ranges the
    /// architecture defines for the granule (52-bit input or output needs the
    /// 64 KiB granule; 52-bit with 4/16 KiB granules, FEAT_LPA2, is not supported).
    pub fn new(cfg: LpaeConfig) -> Result<Self, PgtableError> {
        let natural = Self::natural_start(cfg)?;
        let start = if Self::concat_mandatory(cfg, natural) {
            natural + 1
        } else {
            natural
        };
        Self::with_start_level(cfg, start)
    }

    /// The level a walk of `cfg`'s input size starts at without
    /// concatenation.
    fn natural_start(cfg: LpaeConfig) -> Result<u32, PgtableError> {
        let g = cfg.granule.shift();
        let max_bits = if cfg.granule == Granule::G64K { 52 } else { 48 };
        if !(MIN_IAS..=max_bits).contains(&cfg.ias) || !(32..=max_bits).contains(&cfg.oas) {
            return Err(PgtableError::InvalidArgument);
        }
        Ok(4 - (cfg.ias - g).div_ceil(g - 3))
    }

    /// Whether the architecture forbids a stage-2 walk of `cfg` to start
    /// at `natural`, so that tables must be concatenated one level down
    /// (Arm DDI0487 K.a R_DXBSH, and R_SRKBC's valid initial lookup
    /// levels per output size; Linux 7.3's `arm_lpae_concat_mandatory`).
    /// Where it is only allowed, it is not done: Linux 6.12 concatenated
    /// whenever 16 tables or fewer would do, 7.3 no longer does.
    fn concat_mandatory(cfg: LpaeConfig, natural: u32) -> bool {
        if cfg.stage != Stage::S2 {
            return false;
        }
        match (cfg.granule, natural) {
            // 16 KiB: no level-0 start with a 48-bit input or output size.
            (Granule::G16K, 0) => cfg.oas == 48 || cfg.ias == 48,
            // 16 KiB, 40-bit output: no level-1 start.
            (Granule::G16K, 1) => cfg.oas == 40,
            // 4 KiB, 40- or 42-bit output: no level-0 start.
            (Granule::G4K, 0) => cfg.oas == 40 || cfg.oas == 42,
            _ => false,
        }
    }

    /// The format of `cfg` with its walk starting at Arm level
    /// `start_level`: the level its input size gives, or (stage 2 only)
    /// the level below with the root's tables concatenated, as an STE's or
    /// VTCR's start level may choose where the architecture allows it.
    ///
    /// # Errors
    /// `InvalidArgument` for a configuration [`new`](Self::new) refuses, a
    /// start level that is neither, more than 16 concatenated tables, or
    /// the natural level where the architecture requires concatenation.
    pub fn with_start_level(cfg: LpaeConfig, start_level: u32) -> Result<Self, PgtableError> {
        let natural = Self::natural_start(cfg)?;
        let g = cfg.granule.shift();
        let bits = g - 3;
        let index_bits = cfg.ias - g;
        let mut levels = index_bits.div_ceil(bits);
        let mut root_bits = index_bits - bits * (levels - 1);
        let mut concat = 1;
        if start_level == natural + 1 && cfg.stage == Stage::S2 && levels > 1 {
            // The root's entries become that many tables one level down.
            if (1 << root_bits) > S2_MAX_CONCAT {
                return Err(PgtableError::InvalidArgument);
            }
            concat = 1 << root_bits;
            levels -= 1;
            root_bits += bits;
        } else if start_level != natural || Self::concat_mandatory(cfg, natural) {
            return Err(PgtableError::InvalidArgument);
        }
        let start_level = 4 - levels;
        let mut leaf_levels = 0u32;
        for l in 0..levels {
            let arm = start_level + l;
            let leaf = match arm {
                2 | 3 => true,
                1 => cfg.granule == Granule::G4K || (cfg.granule == Granule::G64K && cfg.oas == 52),
                _ => false,
            };
            if leaf {
                leaf_levels |= 1 << l;
            }
        }
        Ok(Self {
            cfg,
            geo: Geometry {
                levels: levels as usize,
                granule_shift: g,
                bits_per_level: bits,
                root_bits,
                leaf_levels,
                ias: cfg.ias,
                oas: cfg.oas,
            },
            start_level,
            concat,
            quirks: LpaeQuirks::default(),
            leaf_attrs: [0; 64],
        }
        .with_leaf_attrs())
    }

    /// The same format with `quirks`.
    #[must_use]
    pub fn with_quirks(mut self, quirks: LpaeQuirks) -> Self {
        self.quirks = quirks;
        self.with_leaf_attrs()
    }

    fn with_leaf_attrs(mut self) -> Self {
        for bits in 0..64u32 {
            self.leaf_attrs[bits as usize] = self.attrs_for(Prot::from_bits_truncate(bits));
        }
        self
    }

    /// The quirks in force.
    pub fn quirks(&self) -> LpaeQuirks {
        self.quirks
    }

    fn ns(&self) -> bool {
        self.quirks.non_secure && self.cfg.stage == Stage::S1
    }

    /// Stage 1 with the 4 KiB granule.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn stage1_4k(ias: u32, oas: u32) -> Result<Self, PgtableError> {
        Self::new(LpaeConfig {
            stage: Stage::S1,
            granule: Granule::G4K,
            ias,
            oas,
        })
    }

    /// The configuration.
    pub fn config(&self) -> LpaeConfig {
        self.cfg
    }

    /// Arm's number for our `level` (0 = root).
    pub fn arm_level(&self, level: usize) -> u32 {
        self.start_level + level as u32
    }

    /// The Arm level the walk starts at (what VTCR.SL0 / TCR.TxSZ encode).
    pub fn start_level(&self) -> u32 {
        self.start_level
    }

    /// Tables concatenated at the root (1 when none are).
    pub fn concatenated_tables(&self) -> u32 {
        self.concat
    }

    fn is_last_level(&self, level: usize) -> bool {
        level + 1 == self.geo.levels
    }

    #[inline]
    fn addr_mask(&self) -> u64 {
        ((1u64 << 48) - 1) & !((1u64 << self.geo.granule_shift) - 1)
    }

    #[inline]
    fn addr_to_pte(&self, pa: u64) -> u64 {
        let mut v = pa & self.addr_mask();
        if self.cfg.granule == Granule::G64K {
            v |= (pa >> 36) & 0xf000;
        }
        v
    }

    #[inline]
    fn pte_to_addr(&self, pte: u64) -> u64 {
        let mut pa = pte & self.addr_mask();
        if self.cfg.granule == Granule::G64K {
            pa |= (pte & 0xf000) << 36;
        }
        pa
    }

    fn is_leaf(&self, pte: u64, level: usize) -> bool {
        pte & VALID != 0
            && self.geo.is_leaf_level(level)
            && (pte & TYPE_TABLE_OR_PAGE != 0) == self.is_last_level(level)
    }

    /// The bits of a leaf for `prot`, but its address and type.
    fn attrs_for(&self, prot: Prot) -> u64 {
        let mut pte = VALID | AF;
        match self.cfg.stage {
            Stage::S1 => {
                pte |= NG;
                // Stage 1 cannot express write-only: only read-without-write is read-only.
                if prot.contains(Prot::READ) && !prot.contains(Prot::WRITE) {
                    pte |= AP_RDONLY;
                }
                if !prot.contains(Prot::PRIV) {
                    pte |= AP_UNPRIV;
                }
                if self.ns() {
                    pte |= NS;
                }
                let idx = if prot.contains(Prot::MMIO) {
                    MAIR_IDX_DEV
                } else if prot.contains(Prot::CACHE) {
                    MAIR_IDX_CACHE
                } else {
                    MAIR_IDX_NC
                };
                pte |= idx << ATTR_SHIFT;
            }
            Stage::S2 => {
                if prot.contains(Prot::READ) {
                    pte |= S2AP_READ;
                }
                if prot.contains(Prot::WRITE) {
                    pte |= S2AP_WRITE;
                }
                let attr = if prot.contains(Prot::MMIO) {
                    S2_MEMATTR_DEV
                } else if prot.contains(Prot::CACHE) {
                    S2_MEMATTR_OIWB
                } else {
                    S2_MEMATTR_NC
                };
                pte |= attr << ATTR_SHIFT;
            }
        }
        pte |= if prot.contains(Prot::CACHE) {
            SH_INNER
        } else {
            SH_OUTER
        };
        if prot.contains(Prot::NOEXEC) {
            pte |= XN;
        }
        pte
    }

    /// The permissions and attributes of a leaf descriptor.
    fn leaf_prot(&self, pte: u64) -> Prot {
        let attr = (pte & ATTR_MASK) >> ATTR_SHIFT;
        let mut prot = Prot::NONE;
        match self.cfg.stage {
            Stage::S1 => {
                prot |= Prot::READ;
                if pte & AP_RDONLY == 0 || pte & DBM != 0 {
                    prot |= Prot::WRITE;
                }
                if pte & AP_UNPRIV == 0 {
                    prot |= Prot::PRIV;
                }
                match attr & 0b111 {
                    MAIR_IDX_CACHE => prot |= Prot::CACHE,
                    MAIR_IDX_DEV => prot |= Prot::MMIO,
                    _ => {}
                }
            }
            Stage::S2 => {
                if pte & S2AP_READ != 0 {
                    prot |= Prot::READ;
                }
                if pte & S2AP_WRITE != 0 || pte & DBM != 0 {
                    prot |= Prot::WRITE;
                }
                match attr {
                    S2_MEMATTR_OIWB => prot |= Prot::CACHE,
                    S2_MEMATTR_DEV => prot |= Prot::MMIO,
                    _ => {}
                }
            }
        }
        if pte & XN != 0 {
            prot |= Prot::NOEXEC;
        }
        prot
    }
}

#[allow(unsafe_code)] // implements the unsafe `Format` contract
                      // SAFETY: only non-last-level descriptors with both type bits set decode as tables, which only `encode_table` writes (blocks have type 0b01, pages live at the last level, DBM and AP changes leave the type bits alone), and the address field round-trips for granule-aligned tables; `table_bits` says exactly that, and is given only where the address field is the address (below 2^48).
unsafe impl Format for Lpae {
    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn decode(&self, pte: u64, level: usize) -> Pte {
        let addr = PhysAddr::new(self.pte_to_addr(pte));
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
        let ns = if self.ns() { NSTABLE } else { 0 };
        self.addr_to_pte(table.raw()) | TYPE_TABLE_OR_PAGE | VALID | ns
    }

    #[inline]
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        let page = if self.is_last_level(level) {
            TYPE_TABLE_OR_PAGE
        } else {
            0
        };
        self.addr_to_pte(pa.raw()) | self.leaf_attrs[(prot.bits() & 63) as usize] | page
    }

    fn name(&self) -> &'static str {
        match (self.cfg.stage, self.cfg.granule) {
            (Stage::S1, Granule::G4K) => "arm-lpae-s1-4k",
            (Stage::S1, Granule::G16K) => "arm-lpae-s1-16k",
            (Stage::S1, Granule::G64K) => "arm-lpae-s1-64k",
            (Stage::S2, Granule::G4K) => "arm-lpae-s2-4k",
            (Stage::S2, Granule::G16K) => "arm-lpae-s2-16k",
            (Stage::S2, Granule::G64K) => "arm-lpae-s2-64k",
        }
    }

    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        if pte & VALID == 0 {
            PteKind::Invalid
        } else if !self.is_last_level(level) && pte & TYPE_TABLE_OR_PAGE != 0 {
            PteKind::Table
        } else if self.is_leaf(pte, level) {
            PteKind::Leaf
        } else {
            // A block where blocks are not allowed, or 0b01 at the last
            // level: reserved encodings, which hardware treats as faults.
            PteKind::Invalid
        }
    }

    #[inline]
    fn table_bits(&self, _level: usize) -> Option<TableBits> {
        // Below 2^48 the address field is the address itself; PA[51:48] of
        // the 64 KiB granule's 52-bit tables sit elsewhere, so those decode.
        (self.cfg.granule != Granule::G64K || self.cfg.oas <= 48).then(|| TableBits {
            type_mask: VALID | TYPE_TABLE_OR_PAGE,
            type_bits: VALID | TYPE_TABLE_OR_PAGE,
            tag: VALID | TYPE_TABLE_OR_PAGE | if self.ns() { NSTABLE } else { 0 },
        })
    }

    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        // A page (0b11) at the last level, a block (0b01) where blocks are
        // allowed: exactly `is_leaf`.
        let last = self.is_last_level(level);
        self.geo.is_leaf_level(level).then_some(LeafBits {
            type_mask: VALID | TYPE_TABLE_OR_PAGE,
            type_bits: if last {
                VALID | TYPE_TABLE_OR_PAGE
            } else {
                VALID
            },
        })
    }

    #[inline]
    fn leaf_step(&self, pa: PhysAddr, pgsize: u64, count: usize) -> Option<u64> {
        // Linear while the run stays below 2^48 (PA[51:48] live elsewhere),
        // which the walker's output check has made sure of below a 49-bit OAS.
        if self.cfg.oas <= 48 {
            return Some(pgsize);
        }
        let end = pa.raw().checked_add(pgsize.checked_mul(count as u64)?)?;
        (end <= 1 << 48).then_some(pgsize)
    }

    fn supports_dirty(&self) -> bool {
        true
    }

    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        if !self.is_leaf(pte, level) {
            return None;
        }
        let write_permitted = match self.cfg.stage {
            Stage::S1 => pte & AP_RDONLY == 0,
            Stage::S2 => pte & S2AP_WRITE != 0,
        };
        match (pte & DBM != 0, write_permitted) {
            (true, w) => Some(w),
            // Writable without DBM: untracked, so it must be assumed dirty.
            (false, true) => Some(true),
            (false, false) => None,
        }
    }

    fn make_clean(&self, pte: u64) -> u64 {
        match self.cfg.stage {
            Stage::S1 => pte | DBM | AP_RDONLY,
            Stage::S2 => (pte | DBM) & !S2AP_WRITE,
        }
    }

    fn make_dirty(&self, pte: u64) -> u64 {
        match self.cfg.stage {
            Stage::S1 => pte & !AP_RDONLY,
            Stage::S2 => pte | S2AP_WRITE,
        }
    }
}
