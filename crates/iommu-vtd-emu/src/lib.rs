//! An emulated Intel VT-d remapping unit (Intel Virtualization Technology
//! for Directed I/O, Architecture Specification).
//!
//! [`Vtd`] is the hardware a driver sees: a register file reached with 32-
//! and 64-bit MMIO accesses, and behind it a translation unit that reads
//! the root table, context tables, second-level page tables and the
//! invalidation queue out of simulated physical memory (rust-vmm's
//! vm-memory) and writes invalidation-wait status and fault records back.
//! It never sees a driver's Rust objects: a missing invalidation shows up
//! as a stale translation, a bad descriptor as FSTS.IQE, exactly as on
//! silicon.
//!
//! What it implements: legacy-mode root and context entries (pass-through
//! and second-level translation types, 3-, 4- and 5-level tables with 2
//! MiB and 1 GiB pages as [`Features`] say); scalable mode
//! ([`Features::scalable`]: root entries for both halves of a bus,
//! 256-bit context entries, PASID directories and tables, PASID entries
//! for first-stage x86-64 tables of 4 or 5 levels, second-stage tables or
//! pass-through, requests without a PASID using the context's RID_PASID;
//! the first-stage walk checks U/S and R/W at every level, faults
//! non-canonical inputs, and sets A and D as a CPU does); a context cache,
//! a PASID cache and an IOTLB that only invalidations empty (in caching
//! mode, not-present context and leaf entries are cached too, so a driver
//! that forgets to invalidate a new entry sees its DMA fault);
//! register-based invalidation (CCMD, IOTLB_REG with IVA) and queued
//! invalidation (128-bit descriptors, or 256-bit with IQA.DW in scalable
//! mode: context-cache, IOTLB with address masks, PASID-cache,
//! PASID-based IOTLB, invalidation wait with status write; a malformed
//! descriptor stops the queue with FSTS.IQE); primary fault logging with
//! overflow (PFO) and the fault event's mask and pending bits. Devices
//! call [`Vtd::dma_read`] / [`Vtd::dma_write`] (or [`Vtd::translate`])
//! with their source id.
//!
//! QEMU's choices are [`Features`] of their own, on in [`Features::qemu`]
//! and [`Features::qemu_scalable`]: a fault whose source already has a
//! record pending is not recorded (QEMU "compresses" it), a write that a
//! cached read-only translation refuses records no fault, PASID entries
//! are never cached and their translation type is checked before their
//! present bit, and an IOTLB of 1024 entries. Scalable-mode
//! second-stage faults keep the legacy reasons (5h, 6h), as QEMU reports
//! them. A PASID beyond the directory size the context entry gives is not
//! checked (QEMU does not either).
//!
//! Not implemented, and absent from ECAP: nested translation, requests
//! with a PASID, device TLBs, page requests, interrupt remapping.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::walk::PhysRead;
use iommu_pgtable::GuestWindow;
use iommu_pgtable::{walk_root, WalkFault};
use iommu_types::{Iova, PhysAddr};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Register offsets (VT-d chapter 11), including where this unit puts the
/// IOTLB registers (`IRO`) and its fault recording registers (`FRO`), as
/// QEMU does.
#[allow(missing_docs)]
pub mod regs {
    pub const VER: u64 = 0x00;
    pub const CAP: u64 = 0x08;
    pub const ECAP: u64 = 0x10;
    pub const GCMD: u64 = 0x18;
    pub const GSTS: u64 = 0x1c;
    pub const RTADDR: u64 = 0x20;
    pub const CCMD: u64 = 0x28;
    pub const FSTS: u64 = 0x34;
    pub const FECTL: u64 = 0x38;
    pub const FEDATA: u64 = 0x3c;
    pub const FEADDR: u64 = 0x40;
    pub const FEUADDR: u64 = 0x44;
    pub const IQH: u64 = 0x80;
    pub const IQT: u64 = 0x88;
    pub const IQA: u64 = 0x90;
    pub const ICS: u64 = 0x9c;
    /// IVA_REG; IOTLB_REG follows at `+ 8`.
    pub const IOTLB: u64 = 0xf0;
    /// The first fault recording register (16 bytes each).
    pub const FRCD: u64 = 0x220;
    /// The register window's length.
    pub const WINDOW: u64 = 0x1000;
}

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const WBF: u32 = 1 << 27;
const QIE: u32 = 1 << 26;
const IRE: u32 = 1 << 25;
const SIRTP: u32 = 1 << 24;
const CFI: u32 = 1 << 23;
const FSTS_PFO: u32 = 1 << 0;
const FSTS_PPF: u32 = 1 << 1;
const FSTS_IQE: u32 = 1 << 4;
const FSTS_W1C: u32 = 0b111_0001;
const FECTL_IM: u32 = 1 << 31;
const FECTL_IP: u32 = 1 << 30;

/// Fault reasons this unit records (VT-d 7.2, "Fault Reasons").
#[allow(missing_docs)]
pub mod reason {
    pub const ROOT_NOT_PRESENT: u8 = 0x1;
    pub const CONTEXT_NOT_PRESENT: u8 = 0x2;
    pub const CONTEXT_INVALID: u8 = 0x3;
    pub const ADDRESS_BEYOND_AGAW: u8 = 0x4;
    pub const WRITE: u8 = 0x5;
    pub const READ: u8 = 0x6;
    pub const SL_ENTRY_UNREADABLE: u8 = 0x7;
    pub const ROOT_TABLE_INACCESSIBLE: u8 = 0x8;
    pub const CONTEXT_TABLE_INACCESSIBLE: u8 = 0x9;
    pub const CONTEXT_RESERVED: u8 = 0xb;
    pub const TRANSLATION_TYPE: u8 = 0xd;
    // Scalable mode (VT-d 7.1.3, as QEMU 10 numbers them).
    pub const PASID_DIR_INACCESSIBLE: u8 = 0x50;
    pub const PASID_DIR_NOT_PRESENT: u8 = 0x51;
    pub const PASID_TABLE_INACCESSIBLE: u8 = 0x58;
    pub const PASID_NOT_PRESENT: u8 = 0x59;
    pub const PASID_INVALID: u8 = 0x5b;
    pub const FS_ENTRY_INACCESSIBLE: u8 = 0x70;
    pub const FS_NOT_PRESENT: u8 = 0x71;
    pub const FS_RESERVED: u8 = 0x72;
    pub const FS_TABLE_POINTER: u8 = 0x73;
    pub const FS_NON_CANONICAL: u8 = 0x80;
    pub const FS_USER: u8 = 0x81;
    pub const SM_WRITE: u8 = 0x85;
    pub const FS_AD_UPDATE: u8 = 0x91;
}

/// What this unit implements; CAP_REG and ECAP_REG report exactly this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Second-level widths (SAGAW): bit 1 for 3 levels (39-bit), bit 2 for
    /// 4 (48-bit), bit 3 for 5 (57-bit).
    pub sagaw: u32,
    /// Maximum guest address width (MGAW + 1), at most 64.
    pub mgaw: u32,
    /// Domain-id bits: 4, 6, ... 16 (ND = (bits - 4) / 2).
    pub domain_bits: u32,
    /// Caching mode (CM).
    pub caching_mode: bool,
    /// Required write-buffer flushing (RWBF).
    pub rwbf: bool,
    /// Queued invalidation (ECAP.QI).
    pub queued_invalidation: bool,
    /// Pass-through translation (ECAP.PT).
    pub pass_through: bool,
    /// Page-selective invalidation (PSI) and its largest mask (MAMV).
    pub psi: Option<u32>,
    /// Second-level 2 MiB pages.
    pub sl_2m: bool,
    /// Second-level 1 GiB pages.
    pub sl_1g: bool,
    /// Fault recording registers (1 to 256).
    pub fault_records: u32,
    /// Coherent page walks (ECAP.C).
    pub coherent: bool,
    /// A fault whose source id already has a record pending is dropped
    /// (QEMU's "compression"); otherwise it takes the next record.
    pub compress_faults: bool,
    /// A cached translation that lacks the access's permission records a
    /// fault (what the specification asks); QEMU refuses the access
    /// without one.
    pub cached_permission_faults: bool,
    /// In caching mode, a walk that finds no entry is cached too, as the
    /// specification allows (6.1): a driver that does not invalidate a
    /// new mapping keeps faulting. QEMU does not cache them.
    pub cache_not_present: bool,
    /// IOTLB entries held at most (at least 1). A walk that finds the
    /// IOTLB full empties it first, as QEMU does (hardware may evict any
    /// entry at any time, 6.5), so a device touching every page cannot
    /// make the emulator hold more.
    pub iotlb_entries: usize,
    /// Scalable-mode translation (ECAP.SMTS): root entries for both
    /// halves of a bus, 256-bit context entries, PASID directories and
    /// tables, 256-bit invalidation descriptors.
    pub scalable_mode: bool,
    /// First-stage (x86-64) tables in scalable mode (ECAP.FLTS).
    pub first_stage: bool,
    /// Second-stage tables in scalable mode (ECAP.SLTS).
    pub second_stage: bool,
    /// First-stage 1 GiB pages (CAP.FS1GP).
    pub fs_1g: bool,
    /// First-stage 5-level tables (CAP.FL5LP).
    pub fs_5level: bool,
    /// PASID entries are cached, and only PASID-cache invalidations empty
    /// that cache (6.5.2.4); QEMU reads the entry on every IOTLB miss.
    pub cache_pasid_entries: bool,
    /// A PASID entry's translation type is checked before its present
    /// bit, so a cleared (zeroed) entry is "invalid" (5Bh) rather than
    /// "not present" (59h), as QEMU 10 does.
    pub pasid_type_before_present: bool,
}

impl Default for Features {
    /// What the specification describes, with 39- and 48-bit tables,
    /// every optional feature this emulator has, and eight fault records.
    fn default() -> Self {
        Features {
            sagaw: 0b110,
            mgaw: 48,
            domain_bits: 16,
            caching_mode: false,
            rwbf: false,
            queued_invalidation: true,
            pass_through: true,
            psi: Some(18),
            sl_2m: true,
            sl_1g: true,
            fault_records: 8,
            coherent: true,
            compress_faults: false,
            cached_permission_faults: true,
            cache_not_present: true,
            iotlb_entries: 4096,
            scalable_mode: false,
            first_stage: false,
            second_stage: false,
            fs_1g: false,
            fs_5level: false,
            cache_pasid_entries: true,
            pasid_type_before_present: false,
        }
    }
}

impl Features {
    /// QEMU 10's `intel-iommu` with its defaults (48-bit, no caching
    /// mode): its CAP_REG and ECAP_REG read the same, one fault record,
    /// non-coherent walks, QEMU's two choices above, and its IOTLB of
    /// 1024 entries.
    pub fn qemu() -> Features {
        Features {
            fault_records: 1,
            coherent: false,
            compress_faults: true,
            cached_permission_faults: false,
            cache_not_present: false,
            iotlb_entries: 1024,
            ..Features::default()
        }
    }

    /// The default unit with scalable mode as well: both stages, first-stage
    /// 1 GiB pages and 5-level tables.
    pub fn scalable() -> Features {
        Features {
            scalable_mode: true,
            first_stage: true,
            second_stage: true,
            fs_1g: true,
            fs_5level: true,
            ..Features::default()
        }
    }

    /// QEMU 10's `intel-iommu,x-scalable-mode=on` (`first_stage: false`:
    /// second-stage tables only) or `...,x-flts=on` (first-stage tables
    /// only, with 1 GiB pages): [`qemu`](Self::qemu) plus scalable mode,
    /// PASID entries never cached.
    pub fn qemu_scalable(first_stage: bool) -> Features {
        Features {
            scalable_mode: true,
            first_stage,
            second_stage: !first_stage,
            fs_1g: first_stage,
            fs_5level: false,
            cache_pasid_entries: false,
            pasid_type_before_present: true,
            ..Features::qemu()
        }
    }

    /// CAP_REG.
    pub fn cap(&self) -> u64 {
        let nd = u64::from(self.domain_bits.saturating_sub(4) / 2) & 7;
        let mut cap = nd
            | u64::from(self.rwbf) << 4
            | u64::from(self.caching_mode) << 7
            | u64::from(self.sagaw & 0x1f) << 8
            | u64::from(self.mgaw.clamp(1, 64) - 1) << 16
            | (regs::FRCD / 16) << 24
            | u64::from(self.sl_2m) << 34
            | u64::from(self.sl_1g) << 35
            | u64::from(self.fault_records.clamp(1, 256) - 1) << 40
            | 3 << 54;
        if let Some(mamv) = self.psi {
            cap |= 1 << 39 | u64::from(mamv & 0x3f) << 48;
        }
        if self.scalable_mode && self.first_stage {
            cap |= u64::from(self.fs_1g) << 56 | u64::from(self.fs_5level) << 60;
        }
        cap
    }

    /// ECAP_REG.
    pub fn ecap(&self) -> u64 {
        let sm = self.scalable_mode;
        u64::from(self.coherent)
            | u64::from(self.queued_invalidation) << 1
            | u64::from(self.pass_through) << 6
            | (regs::IOTLB / 16) << 8
            | u64::from(sm) << 43
            | u64::from(sm && self.second_stage) << 46
            | u64::from(sm && self.first_stage) << 47
    }
}

/// Direction of a device's access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// A DMA the unit did not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// Blocked by translation; `recorded` says whether a fault record was
    /// written (it may be compressed, overflowed, or not asked for).
    #[error("DMA remapping fault, reason {reason:#x}")]
    Fault {
        /// The fault reason.
        reason: u8,
        /// Whether a fault record was written.
        recorded: bool,
        /// A present leaf lacked the access's permission (reasons 5 and 6
        /// say the same for a leaf that is not there).
        permission: bool,
    },
    /// The translated address is outside simulated memory.
    #[error("bus error at {0:#x}")]
    Bus(u64),
}

/// One translated piece of a DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Output address.
    pub pa: u64,
    /// Bytes.
    pub len: u64,
}

/// What the unit did, for tracing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwTrace {
    /// An invalidation descriptor ran from the queue (its two double
    /// words).
    Descriptor {
        /// The low double word (type, granularity, ids).
        lo: u64,
        /// The high double word (address, mask, status address).
        hi: u64,
    },
    /// A descriptor was refused: the queue stopped at it (FSTS.IQE).
    QueueError {
        /// Its index in the queue.
        index: u64,
    },
    /// A register-based invalidation ran (the CCMD or IOTLB_REG value).
    Register {
        /// Which register.
        register: &'static str,
        /// The value written.
        value: u64,
    },
    /// A context entry was read from memory (a context-cache miss).
    ContextFetch {
        /// The source id.
        sid: u16,
    },
    /// A second-level walk ran (an IOTLB miss).
    Walk {
        /// The source id.
        sid: u16,
        /// The address walked.
        iova: u64,
        /// Whether it found a leaf.
        leaf: bool,
    },
    /// A fault was recorded.
    Fault {
        /// The source id.
        sid: u16,
        /// The reason.
        reason: u8,
        /// The address.
        addr: u64,
    },
}

/// A trace hook.
pub type TraceFn = Box<dyn Fn(&HwTrace) + Send + Sync>;

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Translations answered from the IOTLB.
    pub iotlb_hits: u64,
    /// Second-level walks.
    pub walks: u64,
    /// Context entries read from memory.
    pub context_fetches: u64,
    /// Invalidation descriptors run.
    pub descriptors: u64,
    /// Register-based invalidations run.
    pub register_invalidations: u64,
    /// Faults recorded.
    pub faults_recorded: u64,
    /// Faults dropped: compressed into a pending record of their source.
    pub faults_compressed: u64,
    /// Faults dropped because the next record was still full (PFO).
    pub faults_overflowed: u64,
    /// Fault events signalled (FECTL.IM clear).
    pub fault_events: u64,
}

/// A context entry as the unit uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    PassThrough {
        did: u16,
    },
    SecondLevel {
        did: u16,
        root: u64,
        levels: usize,
    },
    /// Present, but the unit cannot use it: this reason.
    Invalid(u8),
    /// A scalable-mode context entry: the PASID directory, and the PASID
    /// that requests without one use.
    Scalable {
        dir: u64,
        rid_pasid: u32,
    },
}

/// How a request is translated once its context (and, in scalable mode,
/// its PASID entry) is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Translation {
    PassThrough,
    SecondStage { root: u64, levels: usize },
    FirstStage { root: u64, levels: usize },
}

/// A PASID-table entry as the unit uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PasidEntry {
    did: u16,
    translation: Translation,
}

/// The PASID of legacy-mode IOTLB entries (requests carry none).
const NO_PASID: u32 = u32::MAX;

/// One IOTLB entry: a leaf of `1 << shift` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TlbEntry {
    pa: u64,
    shift: u32,
    read: bool,
    write: bool,
    /// Made by a first-stage walk (PGTT = 001b): page-selective IOTLB
    /// invalidations without a PASID drop every such entry of the domain
    /// (6.5.2.3), PASID-based ones drop only these.
    first_stage: bool,
    /// A first-stage leaf whose D the walk set: a write through an entry
    /// cached without it walks again, so D gets set as on a CPU.
    dirty: bool,
}

/// The IOTLB: leaves keyed by domain id, PASID and first 4 KiB page,
/// emptied only by invalidations or by filling up.
struct Iotlb {
    entries: HashMap<(u16, u32, u64), TlbEntry, rustc_hash::FxBuildHasher>,
    /// Bit `s` is set while some entry has size `1 << s`, so a lookup
    /// probes only the page sizes cached.
    shifts: u64,
    capacity: usize,
}

impl Iotlb {
    /// The cached leaf of domain `did` and `pasid` holding `iova`.
    fn lookup(&self, did: u16, pasid: u32, iova: u64) -> Option<TlbEntry> {
        let mut shifts = self.shifts;
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            let key = (did, pasid, (iova >> shift << shift) >> 12);
            if let Some(e) = self.entries.get(&key).filter(|e| e.shift == shift) {
                return Some(*e);
            }
        }
        None
    }

    /// Caches `e` for the leaf of domain `did` and `pasid` starting at
    /// `iova`.
    fn insert(&mut self, did: u16, pasid: u32, iova: u64, e: TlbEntry) {
        if self.entries.len() >= self.capacity {
            self.clear();
        }
        self.shifts |= 1 << e.shift;
        self.entries.insert((did, pasid, iova >> 12), e);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.shifts = 0;
    }

    /// Keeps the entries `keep` accepts: (domain id, PASID, first page,
    /// entry).
    fn retain(&mut self, mut keep: impl FnMut(u16, u32, u64, &TlbEntry) -> bool) {
        self.entries.retain(|&(d, p, base), e| keep(d, p, base, e));
        if self.entries.is_empty() {
            self.shifts = 0;
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

struct State {
    gsts: u32,
    rtaddr: u64,
    root: u64,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    fedata: u32,
    feaddr: u64,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    records: Vec<[u64; 2]>,
    fri: u32,
    /// Per source id: a present entry, or (caching mode) a not-present one.
    contexts: HashMap<u16, Option<Context>, rustc_hash::FxBuildHasher>,
    iotlb: Iotlb,
    /// Scalable-mode root table (RTADDR.TTM = 01b when SRTP latched it).
    root_scalable: bool,
    /// Per (source id, PASID): the PASID entry (scalable mode, when
    /// `cache_pasid_entries`).
    pasids: HashMap<(u16, u32), PasidEntry, rustc_hash::FxBuildHasher>,
    stats: Stats,
    /// Invalidations held back (a wedged unit): the queue does not move,
    /// register invalidations do not complete.
    paused: bool,
    /// What happened under the lock, emitted after it.
    traces: Vec<HwTrace>,
}

/// The emulated remapping unit over guest memory `M`.
pub struct Vtd<M: GuestMemoryBackend> {
    mem: Arc<M>,
    /// The same memory, as tables and the invalidation queue are read from it.
    window: GuestWindow<M>,
    features: Features,
    state: Mutex<State>,
    trace: Mutex<Option<TraceFn>>,
    /// Whether a trace hook is set, read without a lock on every register
    /// access: without one, nothing is recorded or handed on.
    tracing: AtomicBool,
}

impl<M: GuestMemoryBackend> core::fmt::Debug for Vtd<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vtd")
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// Why [`Features`] cannot be a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// No second-level width, or one this emulator does not walk.
    #[error("SAGAW must name 3-, 4- or 5-level tables")]
    Sagaw,
    /// Domain-id bits not in 4, 6, ... 16.
    #[error("domain-id bits must be 4, 6, ... 16")]
    DomainBits,
    /// Fault records not in 1..=256.
    #[error("fault records must be 1 to 256")]
    FaultRecords,
    /// MGAW under 21 or over 64.
    #[error("MGAW must be 21 to 64 bits")]
    Mgaw,
}

impl<M: GuestMemoryBackend> Vtd<M> {
    /// A unit with `features`, translation off, over `mem`.
    ///
    /// # Errors
    /// [`FeatureError`] for features no unit can have.
    pub fn new(mem: Arc<M>, features: Features) -> Result<Self, FeatureError> {
        Self::in_window(GuestWindow::new(mem), features)
    }

    /// [`new`](Self::new) over the window's memory: the tables and
    /// invalidation descriptors it reads, and the wait descriptors' status
    /// it writes, inside the window's host mapping skip vm-memory's lookup.
    ///
    /// # Errors
    /// As `new`.
    pub fn in_window(window: GuestWindow<M>, features: Features) -> Result<Self, FeatureError> {
        let mem = window.memory().clone();
        if features.sagaw & 0b1110 == 0 || features.sagaw & !0b1110 != 0 {
            return Err(FeatureError::Sagaw);
        }
        if !(4..=16).contains(&features.domain_bits) || !features.domain_bits.is_multiple_of(2) {
            return Err(FeatureError::DomainBits);
        }
        if !(1..=256).contains(&features.fault_records) {
            return Err(FeatureError::FaultRecords);
        }
        if !(21..=64).contains(&features.mgaw) {
            return Err(FeatureError::Mgaw);
        }
        let records = vec![[0; 2]; features.fault_records as usize];
        Ok(Vtd {
            mem,
            window,
            state: Mutex::new(State {
                gsts: 0,
                rtaddr: 0,
                root: 0,
                ccmd: 0,
                iva: 0,
                iotlb_reg: 0,
                fsts: 0,
                fectl: FECTL_IM,
                fedata: 0,
                feaddr: 0,
                iqa: 0,
                iqh: 0,
                iqt: 0,
                ics: 0,
                records,
                fri: 0,
                contexts: HashMap::default(),
                iotlb: Iotlb {
                    entries: HashMap::default(),
                    shifts: 0,
                    capacity: features.iotlb_entries.max(1),
                },
                root_scalable: false,
                pasids: HashMap::default(),
                stats: Stats::default(),
                paused: false,
                traces: Vec::new(),
            }),
            trace: Mutex::new(None),
            tracing: AtomicBool::new(false),
            features,
        })
    }

    /// What the unit implements.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The memory it reads and writes.
    pub fn memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// IOTLB entries held.
    pub fn iotlb_entries(&self) -> usize {
        self.lock().iotlb.len()
    }

    /// Holds invalidations back (`true`), as a wedged unit would: the
    /// queue's head stops, register invalidations never complete; then
    /// lets them run again (the queue runs on at once).
    pub fn pause_invalidations(&self, paused: bool) {
        let mut s = self.lock();
        s.paused = paused;
        if !paused {
            self.run_queue(&mut s);
            let (ccmd, iotlb) = (s.ccmd, s.iotlb_reg);
            if ccmd & (1 << 63) != 0 {
                self.register_context_invalidation(&mut s, ccmd);
            }
            if iotlb & (1 << 63) != 0 {
                self.register_iotlb_invalidation(&mut s, iotlb);
            }
        }
        drop(s);
        self.emit();
    }

    /// Calls `f` with everything the unit does from now on (`None` stops).
    pub fn set_trace(&self, f: Option<TraceFn>) {
        let on = f.is_some();
        *self.trace.lock().unwrap_or_else(|p| p.into_inner()) = f;
        self.tracing.store(on, Ordering::Relaxed);
        if !on {
            self.lock().traces.clear();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands what happened to the trace hook, outside the state's lock.
    fn emit(&self) {
        if !self.tracing.load(Ordering::Relaxed) {
            return;
        }
        let hook = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        let traces = core::mem::take(&mut self.lock().traces);
        if let Some(f) = hook.as_ref() {
            for t in &traces {
                f(t);
            }
        }
    }

    fn note(&self, s: &mut State, t: HwTrace) {
        if s.traces.len() < 4096 && self.tracing.load(Ordering::Relaxed) {
            s.traces.push(t);
        }
    }

    fn read_u64(&self, at: u64) -> Option<u64> {
        if at.is_multiple_of(8) {
            return self.window.read_u64(PhysAddr::new(at));
        }
        self.mem.read_obj::<u64>(GuestAddress(at)).ok()
    }

    /// A 32-bit register read.
    pub fn read32(&self, offset: u64) -> u32 {
        let s = self.lock();
        match offset {
            regs::VER => 0x10,
            regs::GSTS => s.gsts,
            regs::FSTS => {
                let ppf = if self.pending(&s) { FSTS_PPF } else { 0 };
                s.fsts | ppf | (self.first_pending(&s) << 8)
            }
            regs::FECTL => s.fectl,
            regs::FEDATA => s.fedata,
            regs::FEADDR => s.feaddr as u32,
            regs::FEUADDR => (s.feaddr >> 32) as u32,
            regs::ICS => s.ics,
            _ => {
                drop(s);
                let v = self.read64(offset & !7);
                if offset.is_multiple_of(8) {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
        }
    }

    /// FSTS.FRI: the oldest pending record (records are written round
    /// robin from the next free one), or the next to be written.
    fn first_pending(&self, s: &State) -> u32 {
        let n = self.features.fault_records;
        (0..n)
            .map(|k| (s.fri + k) % n)
            .find(|&i| s.records[i as usize][1] & (1 << 63) != 0)
            .unwrap_or(s.fri)
    }

    /// A 64-bit register read.
    pub fn read64(&self, offset: u64) -> u64 {
        let s = self.lock();
        match offset {
            regs::CAP => self.features.cap(),
            regs::ECAP => self.features.ecap(),
            regs::RTADDR => s.rtaddr,
            regs::CCMD => s.ccmd,
            regs::IQH => s.iqh,
            regs::IQT => s.iqt,
            regs::IQA => s.iqa,
            o if o == regs::IOTLB => s.iva,
            o if o == regs::IOTLB + 8 => s.iotlb_reg,
            o if (regs::FRCD..regs::FRCD + 16 * s.records.len() as u64).contains(&o) => {
                let i = ((o - regs::FRCD) / 16) as usize;
                s.records[i][((o - regs::FRCD) % 16 / 8) as usize]
            }
            regs::GCMD => u64::from(s.gsts) << 32,
            regs::FEADDR => s.feaddr,
            _ => 0,
        }
    }

    /// A 32-bit register write.
    pub fn write32(&self, offset: u64, value: u32) {
        self.write32_locked(offset, value);
        self.emit();
    }

    fn write32_locked(&self, offset: u64, value: u32) {
        let mut s = self.lock();
        match offset {
            regs::GCMD => self.gcmd(&mut s, value),
            regs::FSTS => s.fsts &= !(value & FSTS_W1C),
            regs::FECTL => {
                s.fectl = (s.fectl & !FECTL_IM) | (value & FECTL_IM);
                if s.fectl & FECTL_IM == 0 && s.fectl & FECTL_IP != 0 {
                    s.fectl &= !FECTL_IP;
                    s.stats.fault_events += 1;
                }
            }
            regs::FEDATA => s.fedata = value,
            regs::FEADDR => s.feaddr = (s.feaddr & !0xffff_ffff) | u64::from(value),
            regs::FEUADDR => s.feaddr = (s.feaddr & 0xffff_ffff) | u64::from(value) << 32,
            regs::ICS => s.ics &= !(value & 1),
            // F is write-1-to-clear in the record's top dword.
            o if (regs::FRCD..regs::FRCD + 16 * s.records.len() as u64).contains(&o)
                && (o - regs::FRCD) % 16 == 12 =>
            {
                if value & (1 << 31) != 0 {
                    let i = ((o - regs::FRCD) / 16) as usize;
                    s.records[i][1] &= !(1 << 63);
                }
            }
            o if (regs::FRCD..regs::FRCD + 16 * s.records.len() as u64).contains(&o) => {}
            _ => {
                // The halves of 64-bit registers.
                let base = offset & !7;
                let old = {
                    drop(s);
                    self.read64(base)
                };
                let v = if offset.is_multiple_of(8) {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | u64::from(value) << 32
                };
                self.write64_locked(base, v);
            }
        }
    }

    /// A 64-bit register write.
    pub fn write64(&self, offset: u64, value: u64) {
        self.write64_locked(offset, value);
        self.emit();
    }

    fn write64_locked(&self, offset: u64, value: u64) {
        let mut s = self.lock();
        match offset {
            regs::RTADDR => s.rtaddr = value & !0x3ff | value & 0xc00,
            regs::CCMD => {
                s.ccmd = value;
                if value & (1 << 63) != 0 && !s.paused {
                    self.register_context_invalidation(&mut s, value);
                }
            }
            regs::IQT => {
                s.iqt = value & 0x7fff0;
                self.run_queue(&mut s);
            }
            regs::IQA => s.iqa = value,
            regs::FEADDR => s.feaddr = value,
            o if o == regs::IOTLB => s.iva = value,
            o if o == regs::IOTLB + 8 => {
                s.iotlb_reg = value;
                if value & (1 << 63) != 0 && !s.paused {
                    self.register_iotlb_invalidation(&mut s, value);
                }
            }
            regs::GCMD | regs::FSTS | regs::FECTL | regs::ICS => {
                drop(s);
                self.write32_locked(offset, value as u32);
            }
            o if (regs::FRCD..regs::FRCD + 16 * s.records.len() as u64).contains(&o)
                && (o - regs::FRCD) % 16 == 8
                && value & (1 << 63) != 0 =>
            {
                let i = ((o - regs::FRCD) / 16) as usize;
                s.records[i][1] &= !(1 << 63);
            }
            _ => {}
        }
    }

    /// GCMD: each bit asks for its status bit; one-shot commands act.
    fn gcmd(&self, s: &mut State, value: u32) {
        if value & SRTP != 0 {
            s.root = s.rtaddr & !0xfff;
            s.root_scalable = self.features.scalable_mode && (s.rtaddr >> 10) & 3 == 1;
            s.contexts.clear();
            s.pasids.clear();
            s.gsts |= SRTP;
        }
        if value & WBF != 0 && self.features.rwbf {
            // The write buffer is empty at once: WBFS clears before the
            // driver can read it.
            s.gsts &= !WBF;
        }
        for bit in [TE, IRE, CFI] {
            if value & bit != 0 {
                s.gsts |= bit;
            } else {
                s.gsts &= !bit;
            }
        }
        if value & SIRTP != 0 {
            s.gsts |= SIRTP;
        }
        let qie = value & QIE != 0 && self.features.queued_invalidation;
        if qie && s.gsts & QIE == 0 {
            s.iqh = 0;
            s.gsts |= QIE;
        } else if !qie {
            s.gsts &= !QIE;
        }
    }

    fn register_context_invalidation(&self, s: &mut State, v: u64) {
        s.stats.register_invalidations += 1;
        self.note(
            s,
            HwTrace::Register {
                register: "CCMD",
                value: v,
            },
        );
        let granularity = (v >> 61) & 3;
        // Refused while the queue runs: the actual granularity reads 0.
        let done = s.gsts & QIE == 0
            && self.context_invalidate(s, granularity, v as u16, (v >> 16) as u16);
        s.ccmd = (v & !(1 << 63) & !(3 << 59)) | if done { granularity << 59 } else { 0 };
    }

    fn register_iotlb_invalidation(&self, s: &mut State, v: u64) {
        s.stats.register_invalidations += 1;
        self.note(
            s,
            HwTrace::Register {
                register: "IOTLB_REG",
                value: v,
            },
        );
        let granularity = (v >> 60) & 3;
        let did = (v >> 32) as u16;
        let done = s.gsts & QIE == 0 && self.iotlb_invalidate(s, granularity, did, s.iva);
        s.iotlb_reg = (v & !(1 << 63) & !(3 << 57)) | if done { granularity << 57 } else { 0 };
    }

    /// Context-cache invalidation of `granularity` 1 (all), 2 (the
    /// entries of domain `did`) or 3 (source id `sid`'s entry). False when
    /// it cannot be done.
    fn context_invalidate(&self, s: &mut State, granularity: u64, did: u16, sid: u16) -> bool {
        match granularity {
            1 => s.contexts.clear(),
            2 => s
                .contexts
                .retain(|_, c| !matches!(c, Some(c) if context_did(c) == Some(did))),
            3 => {
                s.contexts.remove(&sid);
            }
            _ => return false,
        }
        true
    }

    /// IOTLB invalidation of `granularity` 1 (all), 2 (domain) or 3 (the
    /// pages `iva` names in domain `did`). False when it cannot be done.
    fn iotlb_invalidate(&self, s: &mut State, granularity: u64, did: u16, iva: u64) -> bool {
        match granularity {
            1 => s.iotlb.clear(),
            2 => s.iotlb.retain(|d, _, _, _| d != did),
            3 => {
                let am = (iva & 0x3f) as u32;
                match self.features.psi {
                    Some(mamv) if am <= mamv => {}
                    _ => return false,
                }
                let first = (iva >> 12) >> am << am;
                let last = first | ((1u64 << am) - 1);
                // First-stage entries of the domain go whatever their
                // address (6.5.2.3).
                s.iotlb.retain(|d, _, base, e| {
                    let end = base + (1u64 << (e.shift - 12)) - 1;
                    d != did || (!e.first_stage && (end < first || base > last))
                });
            }
            _ => return false,
        }
        true
    }

    /// Runs the queue from IQH to IQT; a malformed descriptor sets
    /// FSTS.IQE and stops at it (IQH names it) until the tail moves again
    /// with IQE clear.
    fn run_queue(&self, s: &mut State) {
        if s.gsts & QIE == 0 || s.fsts & FSTS_IQE != 0 || s.paused {
            return;
        }
        // IQA.DW: 256-bit descriptors, only where scalable mode exists
        // (10.4.25); the queue then holds half as many, and IQH and IQT
        // count in 32-byte steps.
        let dw = self.features.scalable_mode && s.iqa & (1 << 11) != 0;
        let (size, shift) = if dw { (32, 5) } else { (16, 4) };
        let entries = (256u64 << (s.iqa & 7)) >> u32::from(dw);
        let base = s.iqa & !0xfff;
        if s.iqt >> shift >= entries || (dw && s.iqt & 0x10 != 0) {
            // A tail outside the queue (or with its reserved bit set):
            // nothing it names can run.
            s.fsts |= FSTS_IQE;
            return;
        }
        while s.iqh != s.iqt {
            let index = s.iqh >> shift;
            // The descriptor's words (16 or 32 bytes, at a multiple of
            // its size: 8-aligned); a 128-bit one reads as zeros above.
            let mut d = [0u64; 4];
            let read = base.checked_add(index * size).is_some_and(|a| {
                d.iter_mut()
                    .take((size / 8) as usize)
                    .enumerate()
                    .all(|(k, w)| {
                        match a.checked_add(8 * k as u64).and_then(|at| self.read_u64(at)) {
                            Some(v) => {
                                *w = v;
                                true
                            }
                            None => false,
                        }
                    })
            });
            if !read {
                s.fsts |= FSTS_IQE;
                return;
            }
            // Bits 255:128 of every descriptor type this unit knows are
            // reserved.
            if d[2] | d[3] != 0 || !self.descriptor(s, d[0], d[1], dw) {
                s.fsts |= FSTS_IQE;
                self.note(s, HwTrace::QueueError { index });
                return;
            }
            self.note(s, HwTrace::Descriptor { lo: d[0], hi: d[1] });
            s.stats.descriptors += 1;
            s.iqh = ((index + 1) % entries) << shift;
        }
    }

    /// One descriptor (its low 128 bits; `dw`: read from a 256-bit
    /// queue); false when it is malformed.
    fn descriptor(&self, s: &mut State, lo: u64, hi: u64, dw: bool) -> bool {
        let granularity = (lo >> 4) & 3;
        match lo & 0xf | (lo >> 5) & 0x70 {
            // PASID-based IOTLB invalidation: 256-bit only (QEMU refuses it
            // in a 128-bit queue too).
            0x6 if dw => self.piotlb_invalidate(
                s,
                granularity,
                (lo >> 16) as u16,
                (lo >> 32) as u32 & 0xf_ffff,
                hi,
            ),
            0x7 if self.features.scalable_mode => self.pasid_cache_invalidate(
                s,
                granularity,
                (lo >> 16) as u16,
                (lo >> 32) as u32 & 0xf_ffff,
            ),
            0x1 => self.context_invalidate(s, granularity, (lo >> 16) as u16, (lo >> 32) as u16),
            0x2 => self.iotlb_invalidate(s, granularity, (lo >> 16) as u16, hi),
            // Device-TLB and interrupt-entry-cache invalidations: there is
            // nothing of either here to empty.
            0x3 | 0x4 => true,
            0x5 => {
                if lo & (1 << 5) != 0 {
                    let data = (lo >> 32) as u32;
                    if !self.window.write_u32(hi & !3, data) {
                        return false;
                    }
                }
                if lo & (1 << 4) != 0 {
                    s.ics |= 1;
                }
                true
            }
            _ => false,
        }
    }

    /// PASID-based IOTLB invalidation (6.5.2.6) of `granularity` 2 (every
    /// entry of `did` and `pasid`) or 3 (its first-stage entries for the
    /// pages `hi` names: address and mask as in a page-selective IOTLB
    /// invalidation).
    fn piotlb_invalidate(
        &self,
        s: &mut State,
        granularity: u64,
        did: u16,
        pasid: u32,
        hi: u64,
    ) -> bool {
        match granularity {
            2 => s.iotlb.retain(|d, p, _, _| d != did || p != pasid),
            3 => {
                let am = (hi & 0x3f) as u32;
                if am > 52 {
                    return false;
                }
                let first = (hi >> 12) >> am << am;
                let last = first | ((1u64 << am) - 1);
                s.iotlb.retain(|d, p, base, e| {
                    let end = base + (1u64 << (e.shift - 12)) - 1;
                    d != did || p != pasid || !e.first_stage || end < first || base > last
                });
            }
            _ => return false,
        }
        true
    }

    /// PASID-cache invalidation (6.5.2.5) of `granularity` 0 (the entries
    /// of `did`), 1 (of `did` and `pasid`) or 3 (all).
    fn pasid_cache_invalidate(
        &self,
        s: &mut State,
        granularity: u64,
        did: u16,
        pasid: u32,
    ) -> bool {
        match granularity {
            0 => s.pasids.retain(|_, e| e.did != did),
            1 => s.pasids.retain(|&(_, p), e| e.did != did || p != pasid),
            3 => s.pasids.clear(),
            _ => return false,
        }
        true
    }

    fn pending(&self, s: &State) -> bool {
        s.records.iter().any(|r| r[1] & (1 << 63) != 0)
    }

    /// Records a fault (7.2.1, primary fault logging); whether it was.
    fn record(&self, s: &mut State, sid: u16, reason: u8, addr: u64, access: Access) -> bool {
        if self.features.compress_faults
            && s.records
                .iter()
                .any(|r| r[1] & (1 << 63) != 0 && r[1] as u16 == sid)
        {
            s.stats.faults_compressed += 1;
            return false;
        }
        let i = s.fri as usize;
        if s.records[i][1] & (1 << 63) != 0 {
            s.fsts |= FSTS_PFO;
            s.stats.faults_overflowed += 1;
            return false;
        }
        let read = u64::from(access == Access::Read);
        s.records[i] = [
            addr & !0xfff,
            1 << 63 | read << 62 | u64::from(reason) << 32 | u64::from(sid),
        ];
        s.fri = (s.fri + 1) % self.features.fault_records;
        s.stats.faults_recorded += 1;
        self.note(s, HwTrace::Fault { sid, reason, addr });
        if s.fectl & FECTL_IM == 0 {
            s.stats.fault_events += 1;
        } else {
            s.fectl |= FECTL_IP;
        }
        true
    }

    fn fault(&self, s: &mut State, sid: u16, reason: u8, addr: u64, access: Access) -> DmaError {
        let recorded = self.record(s, sid, reason, addr, access);
        DmaError::Fault {
            reason,
            recorded,
            permission: false,
        }
    }

    /// The context of source id `sid`: from the context cache, or read
    /// from memory (and cached).
    fn context(&self, s: &mut State, sid: u16) -> Result<Context, u8> {
        if let Some(c) = s.contexts.get(&sid) {
            return c.ok_or(reason::CONTEXT_NOT_PRESENT);
        }
        s.stats.context_fetches += 1;
        self.note(s, HwTrace::ContextFetch { sid });
        let r = s
            .root
            .checked_add(u64::from(sid >> 8) * 16)
            .and_then(|at| Some([self.read_u64(at)?, self.read_u64(at.checked_add(8)?)?]))
            .ok_or(reason::ROOT_TABLE_INACCESSIBLE)?;
        let devfn = sid & 0xff;
        // Scalable mode: the low half of the root entry points at the
        // context table of devfn 0-127, the high half at that of 128-255;
        // context entries are 256 bits (9.2, 9.4).
        let (half, size, index) = if s.root_scalable {
            (r[usize::from(devfn >= 0x80)], 32, u64::from(devfn & 0x7f))
        } else {
            (r[0], 16, u64::from(devfn))
        };
        if half & 1 == 0 {
            return Err(reason::ROOT_NOT_PRESENT);
        }
        let at = (half & !0xfff).checked_add(index * size);
        let mut e = [0u64; 4];
        for (k, w) in e.iter_mut().take(size as usize / 8).enumerate() {
            *w = at
                .and_then(|a| self.read_u64(a.checked_add(8 * k as u64)?))
                .ok_or(reason::CONTEXT_TABLE_INACCESSIBLE)?;
        }
        let [lo, hi, e2, e3] = e;
        if lo & 1 == 0 {
            if self.features.caching_mode {
                s.contexts.insert(sid, None);
            }
            return Err(reason::CONTEXT_NOT_PRESENT);
        }
        let c = if s.root_scalable {
            // 9.4: bits 8:5 of the first double word, 127:85 and all of
            // 255:128 are reserved (QEMU checks the same ones).
            if lo & 0x1e0 != 0 || hi >> 21 != 0 || e2 | e3 != 0 {
                Context::Invalid(reason::CONTEXT_RESERVED)
            } else {
                Context::Scalable {
                    dir: lo & !0xfff,
                    rid_pasid: (hi & 0xf_ffff) as u32,
                }
            }
        } else {
            let did = (hi >> 8) as u16;
            match (lo >> 2) & 3 {
                2 if self.features.pass_through => Context::PassThrough { did },
                0 => {
                    let aw = (hi & 7) as usize;
                    let levels = aw + 2;
                    if !(3..=5).contains(&levels) || self.features.sagaw & (1 << aw) == 0 {
                        Context::Invalid(reason::CONTEXT_INVALID)
                    } else {
                        Context::SecondLevel {
                            did,
                            root: lo & !0xfff,
                            levels,
                        }
                    }
                }
                _ => Context::Invalid(reason::TRANSLATION_TYPE),
            }
        };
        s.contexts.insert(sid, Some(c));
        Ok(c)
    }

    /// The PASID entry of `pasid` under the PASID directory `dir`: from
    /// the PASID cache, or read from memory (9.5, 9.6).
    fn pasid_entry(&self, s: &mut State, sid: u16, dir: u64, pasid: u32) -> Result<PasidEntry, u8> {
        if let Some(e) = s.pasids.get(&(sid, pasid)) {
            return Ok(*e);
        }
        let d = dir
            .checked_add(u64::from(pasid >> 6) * 8)
            .and_then(|a| self.read_u64(a))
            .ok_or(reason::PASID_DIR_INACCESSIBLE)?;
        if d & 1 == 0 {
            return Err(reason::PASID_DIR_NOT_PRESENT);
        }
        let at = (d & !0xfff).checked_add(u64::from(pasid & 0x3f) * 64);
        let mut pe = [0u64; 3];
        for (k, w) in pe.iter_mut().enumerate() {
            *w = at
                .and_then(|a| self.read_u64(a.checked_add(8 * k as u64)?))
                .ok_or(reason::PASID_TABLE_INACCESSIBLE)?;
        }
        let f = &self.features;
        if pe[0] & 1 == 0 && !f.pasid_type_before_present {
            return Err(reason::PASID_NOT_PRESENT);
        }
        let translation = match (pe[0] >> 6) & 7 {
            // First stage: FSPM selects 4 or 5 levels (9.6).
            1 if f.first_stage => match (pe[2] >> 2) & 3 {
                0 => Translation::FirstStage {
                    root: pe[2] & !0xfff,
                    levels: 4,
                },
                1 if f.fs_5level => Translation::FirstStage {
                    root: pe[2] & !0xfff,
                    levels: 5,
                },
                _ => return Err(reason::PASID_INVALID),
            },
            2 if f.second_stage => {
                let aw = ((pe[0] >> 2) & 7) as usize;
                if aw + 2 > 5 || f.sagaw & (1 << aw) == 0 {
                    return Err(reason::PASID_INVALID);
                }
                Translation::SecondStage {
                    root: pe[0] & !0xfff,
                    levels: aw + 2,
                }
            }
            4 if f.pass_through => Translation::PassThrough,
            // Nested (011b) is not implemented; the rest are reserved.
            _ => return Err(reason::PASID_INVALID),
        };
        if pe[0] & 1 == 0 {
            return Err(reason::PASID_NOT_PRESENT);
        }
        let e = PasidEntry {
            did: pe[1] as u16,
            translation,
        };
        if f.cache_pasid_entries {
            s.pasids.insert((sid, pasid), e);
        }
        Ok(e)
    }

    /// Translates an access of source id `sid` at `iova`: where it goes,
    /// and the bytes from it that the same translation covers.
    ///
    /// # Errors
    /// [`DmaError::Fault`] when the unit blocks the access; the fault, if
    /// recorded, is in the fault recording registers.
    pub fn translate(&self, sid: u16, iova: u64, access: Access) -> Result<Segment, DmaError> {
        let r = self.translate_locked(sid, iova, access);
        self.emit();
        r
    }

    fn translate_locked(&self, sid: u16, iova: u64, access: Access) -> Result<Segment, DmaError> {
        let mut s = self.lock();
        if s.gsts & TE == 0 {
            return Ok(segment(iova, iova, 12));
        }
        let ctx = match self.context(&mut s, sid) {
            Ok(c) => c,
            Err(r) => return Err(self.fault(&mut s, sid, r, iova, access)),
        };
        let (did, pasid, translation) = match ctx {
            Context::PassThrough { .. } => return Ok(segment(iova, iova, 12)),
            Context::Invalid(r) => return Err(self.fault(&mut s, sid, r, iova, access)),
            Context::SecondLevel { did, root, levels } => {
                (did, NO_PASID, Translation::SecondStage { root, levels })
            }
            Context::Scalable { dir, rid_pasid } => {
                match self.pasid_entry(&mut s, sid, dir, rid_pasid) {
                    Ok(e) => (e.did, rid_pasid, e.translation),
                    Err(r) => return Err(self.fault(&mut s, sid, r, iova, access)),
                }
            }
        };
        let write = access == Access::Write;
        let first_stage = matches!(translation, Translation::FirstStage { .. });
        // A present leaf without the access's permission, and no leaf at
        // all: the second stage says "write (read) not permitted" for
        // both, the first stage "not present" for the second.
        let denied = match (first_stage, write) {
            (true, true) => reason::SM_WRITE,
            (true, false) => reason::FS_NOT_PRESENT,
            (false, true) => reason::WRITE,
            (false, false) => reason::READ,
        };
        let absent = if first_stage {
            reason::FS_NOT_PRESENT
        } else {
            denied
        };
        let (root, levels) = match translation {
            Translation::PassThrough => return Ok(segment(iova, iova, 12)),
            Translation::SecondStage { root, levels } => {
                let width = (12 + 9 * levels as u32).min(self.features.mgaw);
                if width < 64 && iova >> width != 0 {
                    return Err(self.fault(&mut s, sid, reason::ADDRESS_BEYOND_AGAW, iova, access));
                }
                (root, levels)
            }
            Translation::FirstStage { root, levels } => {
                // The input is sign-extended from the top level's highest
                // bit (3.6).
                let top = 12 + 9 * levels as u32 - 1;
                let upper = (iova as i64) >> top;
                if upper != 0 && upper != -1 {
                    return Err(self.fault(&mut s, sid, reason::FS_NON_CANONICAL, iova, access));
                }
                (root, levels)
            }
        };
        let cached = s
            .iotlb
            .lookup(did, pasid, iova)
            .filter(|e| !(write && e.first_stage && e.write && !e.dirty));
        if let Some(e) = cached {
            s.stats.iotlb_hits += 1;
            if !e.read && !e.write {
                // A cached not-present entry (caching mode).
                return Err(self.fault(&mut s, sid, absent, iova, access));
            }
            if (write && !e.write) || (!write && !e.read) {
                let recorded = self.features.cached_permission_faults
                    && self.record(&mut s, sid, denied, iova, access);
                return Err(DmaError::Fault {
                    reason: denied,
                    recorded,
                    permission: true,
                });
            }
            return Ok(segment(e.pa, iova, e.shift));
        }
        s.stats.walks += 1;
        let walk = if first_stage {
            self.walk_first_stage(root, levels, iova, write)
        } else {
            self.walk_second_stage(root, levels, iova)
        };
        let leaf = walk.is_ok();
        self.note(&mut s, HwTrace::Walk { sid, iova, leaf });
        let leaf = match walk {
            Ok(l) => l,
            Err(WalkError::NotPresent) => {
                if self.features.caching_mode && self.features.cache_not_present {
                    let none = TlbEntry {
                        pa: 0,
                        shift: 12,
                        read: false,
                        write: false,
                        first_stage,
                        dirty: false,
                    };
                    s.iotlb.insert(did, pasid, iova >> 12 << 12, none);
                }
                return Err(self.fault(&mut s, sid, absent, iova, access));
            }
            Err(WalkError::Fault(r)) => return Err(self.fault(&mut s, sid, r, iova, access)),
        };
        s.iotlb.insert(
            did,
            pasid,
            iova >> leaf.shift << leaf.shift,
            TlbEntry {
                pa: leaf.pa,
                shift: leaf.shift,
                read: leaf.read,
                write: leaf.write,
                first_stage,
                dirty: write && leaf.write,
            },
        );
        if (write && !leaf.write) || (!write && !leaf.read) {
            let recorded = self.record(&mut s, sid, denied, iova, access);
            return Err(DmaError::Fault {
                reason: denied,
                recorded,
                permission: true,
            });
        }
        Ok(segment(leaf.pa, iova, leaf.shift))
    }

    /// A second-stage walk (9.8) from `root`.
    fn walk_second_stage(&self, root: u64, levels: usize, iova: u64) -> Result<Leaf, WalkError> {
        let fmt = VtdSl::new(levels, 52).expect("3 to 5 levels, 52 bits");
        let walked = match walk_root(&fmt, PhysAddr::new(root), 0, Iova::new(iova), &self.window) {
            Ok(w) => w,
            Err(WalkFault::Translation { .. }) => return Err(WalkError::NotPresent),
            Err(_) => return Err(WalkError::Fault(reason::SL_ENTRY_UNREADABLE)),
        };
        let shift = walked.size.trailing_zeros();
        let big_ok = match shift {
            21 => self.features.sl_2m,
            30 => self.features.sl_1g,
            _ => true,
        };
        if !big_ok {
            // A superpage the unit does not have: the PS bit is reserved.
            return Err(WalkError::Fault(reason::SL_ENTRY_UNREADABLE));
        }
        Ok(Leaf {
            pa: walked.pa.raw() - (iova - walked.iova.raw()),
            shift,
            read: walked.prot.contains(iommu_types::Prot::READ),
            write: walked.prot.contains(iommu_types::Prot::WRITE),
        })
    }

    /// A first-stage walk (9.7, and the CPU's 4- and 5-level paging) from
    /// `root`: every level must be present and user-accessible, a write
    /// needs R/W at every level; the unit sets A in every entry it uses
    /// and D in the leaf of a write, as a CPU does.
    fn walk_first_stage(
        &self,
        root: u64,
        levels: usize,
        iova: u64,
        write: bool,
    ) -> Result<Leaf, WalkError> {
        const P: u64 = 1;
        const RW: u64 = 1 << 1;
        const US: u64 = 1 << 2;
        const A: u64 = 1 << 5;
        const D: u64 = 1 << 6;
        const PS: u64 = 1 << 7;
        // Address bits above the host address width, below bit 52 (63:52
        // are ignored or XD).
        let haw = self.features.mgaw.min(52);
        let high = ((1u64 << 52) - 1) & !((1u64 << haw) - 1);
        let mut table = root;
        let mut writable = true;
        for level in 0..levels {
            let shift = 12 + 9 * (levels - 1 - level) as u32;
            let at = table + ((iova >> shift) & 0x1ff) * 8;
            let Some(pte) = self.read_u64(at) else {
                return Err(WalkError::Fault(if level == 0 {
                    reason::FS_TABLE_POINTER
                } else {
                    reason::FS_ENTRY_INACCESSIBLE
                }));
            };
            if pte & P == 0 {
                return Err(WalkError::NotPresent);
            }
            if pte & US == 0 {
                return Err(WalkError::Fault(reason::FS_USER));
            }
            writable &= pte & RW != 0;
            if write && !writable {
                return Err(WalkError::Fault(reason::SM_WRITE));
            }
            let last = level + 1 == levels;
            let large = !last && pte & PS != 0;
            // Reserved: address bits beyond HAW; PS in a PML5E/PML4E, or
            // a 1 GiB page the unit lacks; a large page's address bits
            // below its size (bit 12 is PAT there).
            let reserved = pte & high != 0
                || (large
                    && (shift > 30
                        || (shift == 30 && !self.features.fs_1g)
                        || pte & ((1u64 << shift) - 1) & !0x1fff != 0));
            if reserved {
                return Err(WalkError::Fault(reason::FS_RESERVED));
            }
            let flags = if (last || large) && write { A | D } else { A };
            if pte & flags != flags && self.mem.write_obj(pte | flags, GuestAddress(at)).is_err() {
                return Err(WalkError::Fault(reason::FS_AD_UPDATE));
            }
            if last || large {
                let base = pte & ((1u64 << 52) - 1) & !((1u64 << shift) - 1);
                return Ok(Leaf {
                    pa: base,
                    shift,
                    read: true,
                    write: writable,
                });
            }
            table = pte & ((1u64 << 52) - 1) & !0xfff;
        }
        unreachable!("the last level is a leaf")
    }

    /// A device's DMA of `len` bytes at `iova`: the output segments, in
    /// order. Stops at the first page that does not translate.
    ///
    /// # Errors
    /// As [`translate`](Self::translate).
    pub fn dma(
        &self,
        sid: u16,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Segment>, DmaError> {
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < len {
            let seg = self.translate(sid, iova.wrapping_add(done), access)?;
            let n = seg.len.min(len - done);
            out.push(Segment { pa: seg.pa, len: n });
            done += n;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes the device's way: through the unit.
    ///
    /// # Errors
    /// As [`dma`](Self::dma); [`DmaError::Bus`] outside memory.
    pub fn dma_read(&self, sid: u16, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let mut off = 0usize;
        for seg in self.dma(sid, iova, buf.len() as u64, Access::Read)? {
            let n = seg.len as usize;
            self.mem
                .read_slice(&mut buf[off..off + n], GuestAddress(seg.pa))
                .map_err(|_| DmaError::Bus(seg.pa))?;
            off += n;
        }
        Ok(())
    }

    /// Writes `buf` the device's way: through the unit.
    ///
    /// # Errors
    /// As [`dma_read`](Self::dma_read).
    pub fn dma_write(&self, sid: u16, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        let mut off = 0usize;
        for seg in self.dma(sid, iova, buf.len() as u64, Access::Write)? {
            let n = seg.len as usize;
            self.mem
                .write_slice(&buf[off..off + n], GuestAddress(seg.pa))
                .map_err(|_| DmaError::Bus(seg.pa))?;
            off += n;
        }
        Ok(())
    }
}

fn context_did(c: &Context) -> Option<u16> {
    match *c {
        Context::PassThrough { did } | Context::SecondLevel { did, .. } => Some(did),
        // Scalable-mode context entries carry no domain id.
        Context::Invalid(_) | Context::Scalable { .. } => None,
    }
}

/// A leaf a walk found: the output base of the leaf holding the address,
/// its size and what it allows.
struct Leaf {
    pa: u64,
    shift: u32,
    read: bool,
    write: bool,
}

/// Why a walk found no leaf.
enum WalkError {
    /// An entry on the way is not present: a read or write fault of the
    /// stage's own kind.
    NotPresent,
    /// This fault reason.
    Fault(u8),
}

/// The output of `va` through a leaf of `1 << shift` bytes at `pa_base`,
/// and the bytes left in the leaf.
fn segment(pa_base: u64, va: u64, shift: u32) -> Segment {
    let off = va & ((1u64 << shift) - 1);
    Segment {
        pa: (pa_base & !((1u64 << shift) - 1)) | off,
        len: (1u64 << shift) - off,
    }
}

/// The register file as a driver reaches it (`iommu-vtd`'s driver runs
/// on the emulator through this).
impl<M: GuestMemoryBackend + Send + Sync> iommu_hw::Mmio for Vtd<M> {
    fn read32(&self, offset: u64) -> u32 {
        Vtd::read32(self, offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        Vtd::write32(self, offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        Vtd::read64(self, offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        Vtd::write64(self, offset, value)
    }
}
