//! The driver: probe, the root and context tables, invalidation (queued or
//! through registers), fault recording, and the [`IommuOps`] the core
//! calls.

use crate::domain::{DomainKind, Retired, VtdDomain};
use crate::entry::{self, desc, Entry128, PasidEntry, Target, VtdFault};
use crate::regs::{ccmd, fsts, gcmd, iotlb, reg, VtdCaps};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use iommu_core::sync::Mutex;
use iommu_core::{
    Capability, Device, Domain, DomainOps, DomainType, Errno, FaultAccess, Group, GroupKeys, Iommu,
    IommuOps, Iova, ReservedRegion, ResvType, StreamIdGroups, WedgeReport,
};
use iommu_hw::{DmaRegion, Ids, Mmio};
use iommu_pgtable::vtd::{VtdFormat, VtdSl};
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::TableMemory;

/// Where x86 MSIs go: the interrupt range the remapping hardware never
/// translates (VT-d 3.15, "Handling Requests to Interrupt Address Range").
pub const MSI_RANGE: (u64, u64) = (0xfee0_0000, 0x10_0000);

/// The invalidation queue is one 4 KiB page (IQA_REG.QS = 0): 256
/// descriptors of 128 bits, or 128 of 256 bits in scalable mode.
const QUEUE_BYTES: u32 = 4096;

/// The PASID requests without one use (the context entry's RID_PASID),
/// as Linux's `IOMMU_NO_PASID`.
pub const RID_PASID: u32 = 0;

/// Which tables the unit reads: the root-table format, and the page
/// tables paging domains build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableMode {
    /// Legacy mode: context entries point at second-level tables (9.3).
    Legacy,
    /// Scalable mode (ECAP.SMTS, queued invalidation needed): context
    /// entries point at a PASID directory, whose RID_PASID entry points at
    /// second-stage tables (PGTT = 010b, ECAP.SLTS).
    ScalableSecondStage,
    /// Scalable mode with first-stage x86-64 tables (PGTT = 001b,
    /// ECAP.FLTS), what Linux prefers where the unit has both.
    ScalableFirstStage,
}

impl TableMode {
    /// Whether the root table is in scalable mode.
    pub fn scalable(self) -> bool {
        self != TableMode::Legacy
    }

    /// The mode Linux's driver picks for a unit: scalable mode where the
    /// unit has it and queued invalidation (which it needs), first-stage
    /// tables where those exist.
    pub fn preferred(caps: &VtdCaps, queued: bool) -> TableMode {
        match scalable_stages(caps, queued) {
            (true, _) => TableMode::ScalableFirstStage,
            (_, true) => TableMode::ScalableSecondStage,
            _ => TableMode::Legacy,
        }
    }
}

/// Whether a unit can run scalable mode (which needs the queue, and
/// `queued`: the driver willing to use it) with first-stage and with
/// second-stage tables.
fn scalable_stages(caps: &VtdCaps, queued: bool) -> (bool, bool) {
    let scalable = caps.scalable && caps.queued_invalidation && queued;
    (scalable && caps.first_stage, scalable && caps.second_stage)
}

/// Driver options.
#[derive(Clone, Debug)]
pub struct VtdConfig {
    /// The tables to use; `None`: [`TableMode::preferred`] where every unit
    /// prefers first-stage tables, else second-stage tables in each unit's
    /// best mode.
    pub mode: Option<TableMode>,
    /// Page-table levels for paging domains (second stage: 3, 4 or 5;
    /// first stage: 4 or 5); `None`: the most the unit supports up to its
    /// MGAW for the second stage (Linux picks the same way), 4 for the
    /// first.
    pub levels: Option<usize>,
    /// The platform's host address width (the DMAR's HAW + 1): the widest
    /// physical address a mapping may hold.
    pub host_address_width: u32,
    /// Use the invalidation queue when the unit has one (ECAP.QI); `false`
    /// invalidates through the context-command and IOTLB registers.
    pub queued_invalidation: bool,
    /// Register polls before a wait gives up with `ETIMEDOUT`.
    pub poll_limit: u32,
    /// The grouping a bus layer decided; devices it does not name are
    /// grouped by shared requester ids.
    pub groups: Option<Arc<GroupKeys>>,
    /// Most table pages (root included) one paging domain may hold.
    pub table_budget: Option<usize>,
}

impl Default for VtdConfig {
    fn default() -> Self {
        VtdConfig {
            mode: None,
            levels: None,
            host_address_width: 46,
            queued_invalidation: true,
            poll_limit: 1_000_000,
            groups: None,
            table_budget: Some(65_536),
        }
    }
}

/// Why [`Vtd::probe`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No second-level width this driver and the unit share (SAGAW).
    AddressWidth,
    /// The host address width is outside 32..=52.
    HostAddressWidth(u32),
    /// A register did not acknowledge in time.
    Timeout(&'static str),
    /// Memory for the root table or the queue could not be allocated.
    NoMemory,
    /// The initial invalidation failed.
    Invalidation(Errno),
    /// The unit cannot use the tables asked for (no scalable mode, no
    /// queue, or not that stage).
    Mode(TableMode),
    /// No unit to probe.
    NoUnits,
    /// More units than [`MAX_UNITS`].
    TooManyUnits(usize),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::AddressWidth => {
                f.write_str("no second-level address width the unit supports")
            }
            ProbeError::HostAddressWidth(w) => write!(f, "host address width {w} not in 32..=52"),
            ProbeError::Timeout(what) => write!(f, "{what} did not acknowledge"),
            ProbeError::NoMemory => f.write_str("out of memory for the root table or queue"),
            ProbeError::Invalidation(e) => write!(f, "initial invalidation failed: {}", e.name()),
            ProbeError::Mode(m) => write!(f, "the unit cannot use {m:?} tables"),
            ProbeError::NoUnits => f.write_str("no remapping unit"),
            ProbeError::TooManyUnits(n) => write!(f, "{n} remapping units, at most {MAX_UNITS}"),
        }
    }
}

/// One invalidation, as the driver asks for it; queued as a descriptor or
/// done through the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Every context-cache entry.
    ContextGlobal,
    /// One device's context entry, tagged `did` (0 for a not-present entry
    /// in caching mode).
    ContextDevice {
        /// The domain id the entry was tagged with.
        did: u16,
        /// The requester id.
        sid: u16,
    },
    /// The whole IOTLB.
    IotlbGlobal,
    /// One domain's IOTLB entries.
    IotlbDomain(u16),
    /// `2^am` pages at `addr` of one domain.
    IotlbPages {
        /// The domain id.
        did: u16,
        /// The first page (aligned to the block).
        addr: u64,
        /// The address mask.
        am: u32,
    },
    /// Every PASID-cache entry (scalable mode).
    PasidCacheGlobal,
    /// The PASID-cache entry of one PASID of a domain (scalable mode).
    PasidCache {
        /// The domain id.
        did: u16,
        /// The PASID.
        pasid: u32,
    },
    /// Every IOTLB entry of one PASID of a domain (scalable mode).
    PasidIotlb {
        /// The domain id.
        did: u16,
        /// The PASID.
        pasid: u32,
    },
    /// `2^am` first-stage pages at `addr` of one PASID of a domain
    /// (scalable mode).
    PasidIotlbPages {
        /// The domain id.
        did: u16,
        /// The PASID.
        pasid: u32,
        /// The first page (aligned to the block).
        addr: u64,
        /// The address mask.
        am: u32,
    },
}

/// Counters.
#[derive(Debug, Default)]
struct Stats {
    invalidations: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
    queue_errors: AtomicU64,
    faults: AtomicU64,
    fault_overflows: AtomicU64,
    context_writes: AtomicU64,
}

/// A snapshot of the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdStats {
    /// Invalidations asked for (descriptors or register commands).
    pub invalidations: u64,
    /// Invalidation waits (or register polls) that completed.
    pub waits: u64,
    /// Waits that gave up (`ETIMEDOUT`).
    pub timeouts: u64,
    /// Descriptors the hardware refused (FSTS.IQE).
    pub queue_errors: u64,
    /// Faults read from the fault recording registers.
    pub faults: u64,
    /// Primary fault overflows seen (FSTS.PFO).
    pub fault_overflows: u64,
    /// Context entries written.
    pub context_writes: u64,
}

/// The invalidation queue.
struct Queue<M: TableMemory> {
    ring: DmaRegion<M>,
    /// Descriptors it holds; each `words` double words.
    entries: u32,
    words: usize,
    tail: u32,
    /// Where the hardware's head was last seen: every slot from here to
    /// the tail may still be unread. IQH is read again only when this
    /// leaves too little room (after a completed wait it is the tail).
    head: u32,
}

/// What a context (or PASID) entry change leaves when the hardware does
/// not complete its invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The old entry goes back: the change did not happen (an attach, which
    /// the core reports as failed, leaving the group where it was).
    Undo,
    /// The new entry stays: the change cannot be refused (a detach), and
    /// the hardware drops its cached copy when it runs the queued
    /// invalidation.
    Keep,
}
/// The most remapping units one driver drives: a domain keeps the units it
/// may be cached on as bits of one word.
pub const MAX_UNITS: usize = 64;

/// Which unit translates a requester id of a PCI segment, given as
/// `segment << 16 | requester id` (the form of a PCI device's stream ids;
/// `None`: no unit does, and the device is not translated): the firmware's
/// device scopes as the platform resolved them (for a DMAR,
/// `iommu_firmware::dmar::Dmar::drhd_for`).
pub type UnitLookup = Arc<dyn Fn(u32) -> Option<usize> + Send + Sync>;

/// A unit that has translated no device yet has no segment.
const NO_SEGMENT: u32 = u32::MAX;

/// A domain as a unit's entries name it: what the entry says, and the
/// domain's units (a bit per unit that may hold its translations, which
/// its invalidations go to).
#[derive(Clone)]
pub(crate) struct Binding {
    pub(crate) target: Target,
    pub(crate) units: Arc<AtomicU64>,
}

/// The requester ids of one unit whose entry names a domain id (present,
/// or cleared with its invalidation owed), and that domain's units.
struct Users {
    sids: u32,
    units: Arc<AtomicU64>,
}

/// What the driver wrote for the hardware to find a device's translation.
struct Tables<M: TableMemory> {
    /// Context tables: per bus (legacy), or per bus and half (scalable
    /// mode: `true` for devfn 128-255).
    contexts: BTreeMap<(u8, bool), DmaRegion<M>>,
    /// Scalable mode: each requester id's PASID directory and the PASID
    /// table of PASIDs 0-63.
    pasids: BTreeMap<u16, [DmaRegion<M>; 2]>,
    /// What each requester id reaches now.
    targets: BTreeMap<u16, Binding>,
    /// Requester ids whose entry was cleared but whose invalidation did
    /// not complete (a detach cannot be refused): the unit may still hold
    /// the old entry, tagged with this domain id (and, in scalable mode,
    /// first-stage or not). The next change of the entry completes that
    /// invalidation first, or fails.
    owed: BTreeMap<u16, (u16, bool)>,
    /// Per domain id, the requester ids whose entry the unit may hold: a
    /// domain's bit for this unit is set before its first entry here is
    /// written and cleared once its last one is gone and invalidated.
    users: BTreeMap<u16, Users>,
}

/// A requester id in use: the domain and the devices using it.
struct SourceEntry {
    domain: Domain,
    devices: Vec<Weak<Device>>,
}

/// One remapping unit (a DRHD): its registers, the tables and queue the
/// driver keeps for it, its domain-id users and its fault records.
pub(crate) struct Unit<R: Mmio, M: TableMemory> {
    /// Its place in the driver's units (its bit in a domain's units).
    index: usize,
    /// `dmar<index>`, as Linux names units, for the wedge reports.
    name: alloc::string::String,
    /// The PCI segment of the requester ids it translates (a DRHD belongs
    /// to one), fixed by the first device it gets.
    segment: AtomicU32,
    mmio: R,
    mem: Arc<M>,
    pub(crate) caps: VtdCaps,
    /// The levels of the domains' tables (a pass-through entry's width).
    levels: usize,
    pub(crate) mode: TableMode,
    poll_limit: u32,
    /// The persistent GCMD bits the driver has set (GCMD is write-only).
    gcmd: Mutex<u32>,
    root: DmaRegion<M>,
    /// Serialises context-entry updates too.
    tables: Mutex<Tables<M>>,
    queue: Option<Mutex<Queue<M>>>,
    status: DmaRegion<M>,
    seq: AtomicU32,
    sources: Mutex<BTreeMap<u16, SourceEntry>>,
    /// Domains gone while this unit did not complete their final
    /// invalidation.
    retired: Mutex<Vec<Arc<Retired<M>>>>,
    /// Whether `retired` holds any: read on every completed invalidation,
    /// so the common case takes no lock.
    retired_waiting: AtomicBool,
    stats: Stats,
    /// Says once that invalidations stopped completing, and once that
    /// they complete again.
    wedge: WedgeReport,
}

/// The driver: its units, which unit covers which requester id, and what
/// its domains share (one domain-id space, one table format).
pub(crate) struct Inner<R: Mmio, M: TableMemory> {
    pub(crate) units: Vec<Arc<Unit<R, M>>>,
    lookup: Option<UnitLookup>,
    pub(crate) mem: Arc<M>,
    pub(crate) cfg: VtdConfig,
    /// Paging domains' table levels.
    pub(crate) levels: usize,
    /// Whether paging domains' tables are first-stage (every unit in
    /// [`TableMode::ScalableFirstStage`]).
    pub(crate) first_stage: bool,
    /// Domain ids, valid on every unit (the narrowest unit's width), so a
    /// domain keeps one id wherever it is attached.
    pub(crate) dids: Arc<Mutex<Ids>>,
    by_stream: StreamIdGroups,
}

/// The VT-d driver for one or more remapping units (the DRHDs of a DMAR),
/// as Linux's intel-iommu drives every unit of a machine; clones share it.
pub struct Vtd<R: Mmio, M: TableMemory> {
    pub(crate) inner: Arc<Inner<R, M>>,
}

impl<R: Mmio, M: TableMemory> Clone for Vtd<R, M> {
    fn clone(&self) -> Self {
        Vtd {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Mmio, M: TableMemory> core::fmt::Debug for Vtd<R, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vtd")
            .field("units", &self.inner.units.len())
            .field("caps", &self.inner.units[0].caps)
            .field("levels", &self.inner.levels)
            .finish_non_exhaustive()
    }
}

fn poll(limit: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..limit.max(1) {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

impl<R: Mmio, M: TableMemory> Vtd<R, M> {
    /// Probes one unit that translates every requester id: see
    /// [`probe_units`](Self::probe_units).
    ///
    /// # Errors
    /// [`ProbeError`]; nothing is left enabled then.
    pub fn probe(mmio: R, mem: Arc<M>, cfg: VtdConfig) -> Result<Self, ProbeError> {
        Self::probe_units(alloc::vec![mmio], mem, cfg, None).map_err(|(_, e)| e)
    }

    /// Probes every unit of a machine (the DMAR's DRHDs, in table order)
    /// and drives them as one IOMMU, as Linux's intel-iommu does: `lookup`
    /// says which unit translates a requester id (`None`: the first unit
    /// translates every one). For each unit: reads the capability
    /// registers, turns translation off if firmware left it on, installs an
    /// empty root table, starts the invalidation queue (when the unit has
    /// one and `cfg` wants it), invalidates every cache, and turns
    /// translation on. Requester ids nobody attached have no context entry:
    /// their DMA faults.
    ///
    /// Paging domains are shared by all units (a group on one unit and a
    /// group on another may use one domain), so their tables are ones every
    /// unit walks: first-stage where every unit runs scalable mode with
    /// first-stage tables, else second-stage (a unit without scalable
    /// second-stage tables then runs legacy mode); the levels, page sizes
    /// and input width every unit takes; domain ids every unit has.
    ///
    /// # Errors
    /// The unit's index and its [`ProbeError`]; units probed before it are
    /// turned off again (translation and queue).
    pub fn probe_units(
        units: Vec<R>,
        mem: Arc<M>,
        cfg: VtdConfig,
        lookup: Option<UnitLookup>,
    ) -> Result<Self, (usize, ProbeError)> {
        if units.is_empty() {
            return Err((0, ProbeError::NoUnits));
        }
        if units.len() > MAX_UNITS {
            return Err((MAX_UNITS, ProbeError::TooManyUnits(units.len())));
        }
        if !(32..=52).contains(&cfg.host_address_width) {
            return Err((0, ProbeError::HostAddressWidth(cfg.host_address_width)));
        }
        let caps: Vec<VtdCaps> = units
            .iter()
            .map(|m| VtdCaps::decode(m.read64(reg::CAP), m.read64(reg::ECAP)))
            .collect();
        let modes: Vec<_> = caps
            .iter()
            .map(|c| scalable_stages(c, cfg.queued_invalidation))
            .collect();
        // The tables domains build (first-stage where every unit takes
        // them: each unit's `TableMode::preferred`), and each unit's mode
        // (scalable second stage where a unit has it, else legacy).
        let first_stage = match cfg.mode {
            Some(m) => m == TableMode::ScalableFirstStage,
            None => modes.iter().all(|&(fs, _)| fs),
        };
        let mut unit_mode = Vec::with_capacity(units.len());
        for (i, &(fs, ss)) in modes.iter().enumerate() {
            let m = match cfg.mode {
                Some(TableMode::Legacy) => TableMode::Legacy,
                Some(m @ TableMode::ScalableFirstStage) if fs => m,
                Some(m @ TableMode::ScalableSecondStage) if ss => m,
                Some(m) => return Err((i, ProbeError::Mode(m))),
                None if first_stage => TableMode::ScalableFirstStage,
                None if ss => TableMode::ScalableSecondStage,
                None => TableMode::Legacy,
            };
            unit_mode.push(m);
        }
        let levels = if first_stage {
            match cfg.levels {
                None | Some(4) => 4,
                Some(5) => match caps.iter().position(|c| !c.fs_5level) {
                    None => 5,
                    Some(i) => return Err((i, ProbeError::AddressWidth)),
                },
                Some(_) => return Err((0, ProbeError::AddressWidth)),
            }
        } else {
            match cfg.levels {
                Some(l) => match caps.iter().position(|c| !c.supports_levels(l)) {
                    None => l,
                    Some(i) => return Err((i, ProbeError::AddressWidth)),
                },
                None => {
                    let mgaw = caps.iter().map(|c| c.mgaw.max(39)).min().unwrap_or(39);
                    (3..=5)
                        .rev()
                        .find(|&l| {
                            caps.iter().all(|c| c.supports_levels(l)) && 12 + 9 * l as u32 <= mgaw
                        })
                        .ok_or((0, ProbeError::AddressWidth))?
                }
            }
        };
        let domain_bits = caps.iter().map(|c| c.domain_bits).min().unwrap_or(4);
        let mut probed: Vec<Arc<Unit<R, M>>> = Vec::with_capacity(units.len());
        for (index, (mmio, (caps, mode))) in units
            .into_iter()
            .zip(caps.into_iter().zip(unit_mode))
            .enumerate()
        {
            match Unit::probe(index, mmio, &mem, caps, mode, levels, &cfg) {
                Ok(u) => probed.push(Arc::new(u)),
                Err(e) => {
                    // The units brought up already stop reading what is
                    // about to be freed: translation and their queues off.
                    for u in &probed {
                        let _ = u.set_persistent(gcmd::TE, false);
                        if u.queue.is_some() {
                            let _ = u.set_persistent(gcmd::QIE, false);
                        }
                    }
                    return Err((index, e));
                }
            }
        }
        Ok(Vtd {
            inner: Arc::new(Inner {
                units: probed,
                lookup,
                mem,
                levels,
                first_stage,
                dids: Arc::new(Mutex::new(Ids::new(domain_bits))),
                by_stream: StreamIdGroups::new(),
                cfg,
            }),
        })
    }

    /// What the first unit's capability registers say (see
    /// [`unit_caps`](Self::unit_caps) for the others).
    pub fn caps(&self) -> &VtdCaps {
        &self.inner.units[0].caps
    }

    /// The page-table levels paging domains use.
    pub fn levels(&self) -> usize {
        self.inner.levels
    }

    /// The tables the first unit reads (see [`unit_mode`](Self::unit_mode)).
    pub fn mode(&self) -> TableMode {
        self.inner.units[0].mode
    }

    /// Whether the first unit's invalidations go through its queue.
    pub fn queued(&self) -> bool {
        self.inner.units[0].queue.is_some()
    }

    /// How many units the driver drives.
    pub fn units(&self) -> usize {
        self.inner.units.len()
    }

    /// What unit `unit`'s capability registers say.
    pub fn unit_caps(&self, unit: usize) -> Option<&VtdCaps> {
        self.inner.units.get(unit).map(|u| &u.caps)
    }

    /// The tables unit `unit` reads.
    pub fn unit_mode(&self, unit: usize) -> Option<TableMode> {
        self.inner.units.get(unit).map(|u| u.mode)
    }

    /// The unit requester id `sid` (`segment << 16 | rid`) is programmed
    /// on (the unit of a device using it), else the unit the firmware's
    /// scope gives it.
    pub fn unit_for_source(&self, sid: u32) -> Option<usize> {
        self.inner.unit_for_source(sid).map(|u| u.index)
    }

    /// Domains that went while a unit did not complete their final
    /// invalidation, whose ids and tables wait for it to answer (a domain
    /// waiting on two units counts twice).
    pub fn retired_domains(&self) -> usize {
        self.inner.units.iter().map(|u| u.retired()).sum()
    }

    /// A snapshot of the counters, summed over the units.
    pub fn stats(&self) -> VtdStats {
        let mut v = VtdStats::default();
        for u in &self.inner.units {
            let s = u.stats();
            v.invalidations += s.invalidations;
            v.waits += s.waits;
            v.timeouts += s.timeouts;
            v.queue_errors += s.queue_errors;
            v.faults += s.faults;
            v.fault_overflows += s.fault_overflows;
            v.context_writes += s.context_writes;
        }
        v
    }

    /// Unit `unit`'s counters.
    pub fn unit_stats(&self, unit: usize) -> Option<VtdStats> {
        self.inner.units.get(unit).map(|u| u.stats())
    }

    /// The context entry of requester id `sid` (`segment << 16 | rid`) as
    /// its unit reads it (in scalable mode, its first 128 bits).
    pub fn context_entry(&self, sid: u32) -> Option<Entry128> {
        let unit = self.inner.unit_for_source(sid)?;
        let t = unit.tables.lock();
        let (key, i) = unit.context_slot(sid as u16);
        let ctx = t.contexts.get(&key)?;
        Some([ctx.read(i), ctx.read(i + 1)])
    }

    /// Scalable mode: the PASID-table entry requester id `sid`'s
    /// (`segment << 16 | rid`) requests without a PASID use (RID_PASID),
    /// as its unit reads it.
    pub fn pasid_entry(&self, sid: u32) -> Option<PasidEntry> {
        let unit = self.inner.unit_for_source(sid)?;
        let t = unit.tables.lock();
        let [_, table] = t.pasids.get(&(sid as u16))?;
        Some([table.read(0), table.read(1), table.read(2)])
    }

    /// Performs `invs` on every unit and waits for them.
    ///
    /// # Errors
    /// `ETIMEDOUT` when a unit does not finish in time; `EIO` when one
    /// refused a descriptor (FSTS.IQE). Every unit is asked either way.
    pub fn invalidate(&self, invs: &[Invalidation]) -> Result<(), Errno> {
        let mut r = Ok(());
        for u in &self.inner.units {
            r = r.and(u.invalidate(invs));
        }
        r
    }

    /// Reads every unit's fault recording registers, clears each record,
    /// reports translation faults to the domain of their requester id:
    /// what the fault-event interrupt handler calls. Returns the faults
    /// read, each with its unit.
    pub fn handle_faults(&self) -> Vec<VtdFault> {
        let mut all = Vec::new();
        for unit in &self.inner.units {
            let mut faults = unit.drain_faults();
            for f in &mut faults {
                f.unit = unit.index;
                let target = {
                    let sources = unit.sources.lock();
                    sources.get(&f.source_id).and_then(|e| {
                        let dev = e.devices.iter().find_map(Weak::upgrade)?;
                        Some((e.domain.clone(), dev))
                    })
                };
                if let Some((domain, dev)) = target {
                    let access = if f.write {
                        FaultAccess::Write
                    } else {
                        FaultAccess::Read
                    };
                    f.report = Some(domain.report_fault(&dev, Iova::new(f.address), access));
                }
            }
            all.extend(faults);
        }
        all
    }

    /// The domain requester id `sid` (`segment << 16 | rid`) is attached
    /// to, if any.
    pub fn source_domain(&self, sid: u32) -> Option<Domain> {
        let (segment, rid) = (sid >> 16, sid as u16);
        self.inner.units.iter().find_map(|u| {
            if self.inner.units.len() > 1 && u.segment.load(Ordering::Acquire) != segment {
                return None;
            }
            u.sources.lock().get(&rid).map(|e| e.domain.clone())
        })
    }

    /// Turns translation off on every unit (DMA then bypasses them).
    pub fn shutdown(&self) {
        for u in &self.inner.units {
            let _ = u.set_persistent(gcmd::TE, false);
        }
    }
}

/// A device's unit and its requester ids.
pub(crate) type UnitSids<'a, R, M> = (&'a Arc<Unit<R, M>>, Vec<u16>);

impl<R: Mmio, M: TableMemory> Inner<R, M> {
    /// The unit that translates `dev` (the one its first requester id, its
    /// own, falls in) and its requester ids within its segment: aliases
    /// are programmed on the device's unit, as Linux does.
    ///
    /// # Errors
    /// `ENODEV`: no id, or no unit covers it; `ERANGE`: an id past segment
    /// 0 without a lookup (one unit covers segment 0); `EINVAL`: the
    /// device's ids span segments, or its unit already translates another
    /// segment (a lookup at odds with the firmware's one segment per
    /// DRHD).
    pub(crate) fn unit_of(&self, dev: &Device) -> Result<UnitSids<'_, R, M>, Errno> {
        let ids = dev.stream_ids();
        let first = *ids.first().ok_or(Errno::ENODEV)?;
        let segment = first >> 16;
        if ids.iter().any(|&s| s >> 16 != segment) {
            return Err(Errno::EINVAL);
        }
        let unit = match &self.lookup {
            None if segment != 0 => return Err(Errno::ERANGE),
            None => self.units.first(),
            Some(f) => f(first).and_then(|i| self.units.get(i)),
        }
        .ok_or(Errno::ENODEV)?;
        match unit.segment.compare_exchange(
            NO_SEGMENT,
            segment,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(s) if s == segment => {}
            Err(_) => return Err(Errno::EINVAL),
        }
        Ok((unit, ids.iter().map(|&s| s as u16).collect()))
    }

    /// The unit requester id `id` (`segment << 16 | rid`) is programmed
    /// on, else the one the scope gives it.
    fn unit_for_source(&self, id: u32) -> Option<&Arc<Unit<R, M>>> {
        if self.units.len() == 1 {
            return self.units.first();
        }
        let (segment, rid) = (id >> 16, id as u16);
        self.units
            .iter()
            .find(|u| {
                u.segment.load(Ordering::Acquire) == segment
                    && u.tables.lock().targets.contains_key(&rid)
            })
            .or_else(|| self.units.get(self.lookup.as_ref()?(id)?))
    }

    /// The units a domain's invalidations go to: the only one, or those
    /// its bits name. The fence orders the caller's table changes before
    /// the read of the bits: a unit whose bit is set after it (an attach
    /// on another unit) writes its entry after the change too, and walks
    /// the changed table.
    pub(crate) fn units_of(&self, units: &AtomicU64) -> impl Iterator<Item = &Arc<Unit<R, M>>> {
        let mask = if self.units.len() == 1 {
            1
        } else {
            core::sync::atomic::fence(Ordering::SeqCst);
            units.load(Ordering::SeqCst)
        };
        self.units
            .iter()
            .filter(move |u| mask & (1 << u.index) != 0)
    }

    /// The format of paging domains' tables.
    pub(crate) fn format(&self) -> Result<VtdFormat, Errno> {
        let haw = self.cfg.host_address_width;
        if self.first_stage {
            X86_64::new(self.levels, haw).map(VtdFormat::FirstStage)
        } else {
            VtdSl::new(self.levels, haw).map(VtdFormat::SecondStage)
        }
        .map_err(|_| Errno::EINVAL)
    }

    /// The page sizes every unit's walker takes.
    pub(crate) fn pgsize_bitmap(&self) -> u64 {
        self.units.iter().fold(!0, |acc, u| acc & u.pgsize_bitmap())
    }

    /// Paging domains' input width: the table's (the lower canonical half
    /// for the first stage), capped by every unit's MGAW.
    pub(crate) fn input_bits(&self) -> u32 {
        let bits = 12 + 9 * self.levels as u32;
        let bits = if self.first_stage { bits - 1 } else { bits };
        self.units.iter().fold(bits, |b, u| b.min(u.caps.mgaw))
    }
}

impl<R: Mmio, M: TableMemory> Unit<R, M> {
    /// Brings one unit up (see [`Vtd::probe_units`]).
    fn probe(
        index: usize,
        mmio: R,
        mem: &Arc<M>,
        caps: VtdCaps,
        mode: TableMode,
        levels: usize,
        cfg: &VtdConfig,
    ) -> Result<Self, ProbeError> {
        let limit = cfg.poll_limit;
        let queued = caps.queued_invalidation && cfg.queued_invalidation;
        // Translation off before the tables change under it.
        if mmio.read32(reg::GSTS) & gcmd::TE != 0 {
            let keep = mmio.read32(reg::GSTS) & gcmd::PERSISTENT & !gcmd::TE;
            mmio.write32(reg::GCMD, keep);
            if !poll(limit, || mmio.read32(reg::GSTS) & gcmd::TE == 0) {
                return Err(ProbeError::Timeout("GSTS.TES (off)"));
            }
        }
        let root = DmaRegion::alloc(mem, 4096).map_err(|_| ProbeError::NoMemory)?;
        let status = DmaRegion::alloc(mem, 64).map_err(|_| ProbeError::NoMemory)?;
        let queue = if queued {
            // Scalable mode takes 256-bit descriptors (IQA.DW), as Linux
            // uses them.
            let words = if mode.scalable() { 4 } else { 2 };
            Some(Mutex::new(Queue {
                ring: DmaRegion::alloc(mem, QUEUE_BYTES as usize)
                    .map_err(|_| ProbeError::NoMemory)?,
                entries: QUEUE_BYTES / (8 * words as u32),
                words,
                tail: 0,
                head: 0,
            }))
        } else {
            None
        };
        let unit = Unit {
            index,
            name: alloc::format!("dmar{index}"),
            segment: AtomicU32::new(NO_SEGMENT),
            gcmd: Mutex::new(mmio.read32(reg::GSTS) & gcmd::PERSISTENT & !gcmd::TE),
            mode,
            root,
            tables: Mutex::new(Tables {
                contexts: BTreeMap::new(),
                pasids: BTreeMap::new(),
                targets: BTreeMap::new(),
                owed: BTreeMap::new(),
                users: BTreeMap::new(),
            }),
            queue,
            status,
            seq: AtomicU32::new(0),
            sources: Mutex::new(BTreeMap::new()),
            retired: Mutex::new(Vec::new()),
            retired_waiting: AtomicBool::new(false),
            stats: Stats::default(),
            wedge: WedgeReport::default(),
            mmio,
            mem: Arc::clone(mem),
            caps,
            levels,
            poll_limit: limit,
        };
        // The root table (RTADDR.TTM: 00b legacy, 01b scalable), latched
        // by SRTP.
        let ttm = if mode.scalable() { 1 << 10 } else { 0 };
        unit.mmio.write64(reg::RTADDR, unit.root.pa().raw() | ttm);
        unit.one_shot(gcmd::SRTP, true)?;
        // A queue left on by firmware or an earlier driver is stopped: the
        // registers refuse invalidations while it runs, and a new one
        // starts from an empty ring.
        if unit.mmio.read32(reg::GSTS) & gcmd::QIE != 0 {
            unit.set_persistent(gcmd::QIE, false)?;
        }
        if let Some(q) = &unit.queue {
            let q = q.lock();
            unit.mmio.write64(reg::IQT, 0);
            let dw = if q.words == 4 { 1 << 11 } else { 0 };
            unit.mmio.write64(reg::IQA, q.ring.pa().raw() | dw);
            drop(q);
            unit.set_persistent(gcmd::QIE, true)?;
        }
        let mut first = alloc::vec![Invalidation::ContextGlobal];
        if mode.scalable() {
            first.push(Invalidation::PasidCacheGlobal);
        }
        first.push(Invalidation::IotlbGlobal);
        unit.invalidate(&first).map_err(ProbeError::Invalidation)?;
        // Stale fault records from before us.
        let _ = unit.drain_faults();
        unit.set_persistent(gcmd::TE, true)?;
        Ok(unit)
    }

    fn stats(&self) -> VtdStats {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VtdStats {
            invalidations: g(&s.invalidations),
            waits: g(&s.waits),
            timeouts: g(&s.timeouts),
            queue_errors: g(&s.queue_errors),
            faults: g(&s.faults),
            fault_overflows: g(&s.fault_overflows),
            context_writes: g(&s.context_writes),
        }
    }

    /// Points every requester id in `sids` (`dev`'s) at `new` (`None`: no
    /// entry, so their DMA faults), remembering `domain` for fault reports.
    pub(crate) fn attach(
        &self,
        domain: &Domain,
        dev: &Arc<Device>,
        sids: &[u16],
        new: Option<Binding>,
    ) -> Result<(), Errno> {
        let before: Vec<Option<Binding>> = {
            let t = self.tables.lock();
            sids.iter().map(|sid| t.targets.get(sid).cloned()).collect()
        };
        for (i, &sid) in sids.iter().enumerate() {
            if let Err(e) = self.set_context(sid, new.clone(), Failure::Undo) {
                // The ones done already, and this one (whose new entry may
                // be in memory when only its caching-mode invalidation
                // failed), go back to what they were; if the hardware
                // refuses that too, they are left with no entry (their DMA
                // faults: closed, never open).
                for (&done, old) in sids[..=i].iter().zip(&before) {
                    if self.set_context(done, old.clone(), Failure::Undo).is_err() {
                        let _ = self.set_context(done, None, Failure::Keep);
                    }
                }
                return Err(e);
            }
        }
        let mut sources = self.sources.lock();
        for &sid in sids {
            let e = sources.entry(sid).or_insert_with(|| SourceEntry {
                domain: domain.clone(),
                devices: Vec::new(),
            });
            e.domain = domain.clone();
            e.devices.retain(|d| d.strong_count() > 0);
            if !e.devices.iter().any(|d| core::ptr::eq(d.as_ptr(), &**dev)) {
                e.devices.push(Arc::downgrade(dev));
            }
        }
        Ok(())
    }

    /// `dev` stops using its requester ids `sids`; an id's entry goes with
    /// its last user.
    pub(crate) fn detach(&self, dev: &Arc<Device>, sids: &[u16]) {
        let mut last = Vec::new();
        {
            let mut sources = self.sources.lock();
            for &sid in sids {
                if let Some(e) = sources.get_mut(&sid) {
                    e.devices
                        .retain(|d| d.strong_count() > 0 && !core::ptr::eq(d.as_ptr(), &**dev));
                    if e.devices.is_empty() {
                        sources.remove(&sid);
                        last.push(sid);
                    }
                }
            }
        }
        // A detach cannot fail: an entry whose invalidation does not
        // complete stays cleared in memory (restoring it would keep the
        // device on the old domain for good); the unit drops its cached
        // copy when it runs the queued invalidation.
        for sid in last {
            if self.set_context(sid, None, Failure::Keep).is_ok() && self.mode.scalable() {
                let _ = self.release_pasid_tables(sid);
            }
        }
    }

    /// Scalable mode, a requester id whose last device went (its RID_PASID
    /// entry already cleared and invalidated): its context entry is
    /// cleared and invalidated, then its PASID directory and table are
    /// freed, as Linux frees a released device's PASID table. If the
    /// invalidation does not complete, the context entry goes back (the
    /// unit may still hold it, and it names the tables, which stay) and
    /// the tables are freed on the id's next release.
    fn release_pasid_tables(&self, sid: u16) -> Result<(), Errno> {
        let mut t = self.tables.lock();
        if !t.pasids.contains_key(&sid) || t.owed.contains_key(&sid) || t.targets.contains_key(&sid)
        {
            return Ok(());
        }
        let (key, i) = self.context_slot(sid);
        let Some(ctx) = t.contexts.get(&key) else {
            return Ok(());
        };
        let old: [u64; 4] = core::array::from_fn(|k| ctx.read(i + k));
        for k in 0..4 {
            ctx.write(i + k, 0);
        }
        self.stats.context_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.submit(&[Invalidation::ContextDevice { did: 0, sid }]) {
            for k in (0..4).rev() {
                ctx.write(i + k, old[k]);
            }
            return Err(e);
        }
        t.pasids.remove(&sid);
        Ok(())
    }

    /// Everything of domain `did` this unit may still hold goes: the
    /// entries cleared before whose invalidation is owed (a context-cache
    /// or PASID-cache copy would still name the domain's tables) and its
    /// IOTLB entries. Only then may the id and the tables be reused.
    ///
    /// # Errors
    /// The invalidation's; nothing is forgotten then.
    pub(crate) fn forget_domain(&self, did: u16) -> Result<(), Errno> {
        let mut t = self.tables.lock();
        let owed: Vec<u16> = t
            .owed
            .iter()
            .filter(|(_, &(d, _))| d == did)
            .map(|(&sid, _)| sid)
            .collect();
        let mut invs = Vec::with_capacity(owed.len() * 2 + 2);
        for &sid in &owed {
            if self.mode.scalable() {
                invs.push(Invalidation::PasidCache {
                    did,
                    pasid: RID_PASID,
                });
            }
            invs.push(Invalidation::ContextDevice { did, sid });
        }
        invs.push(Invalidation::IotlbDomain(did));
        if self.mode.scalable() {
            // First-stage and pass-through entries are tagged with the
            // PASID too.
            invs.push(Invalidation::PasidIotlb {
                did,
                pasid: RID_PASID,
            });
        }
        self.submit(&invs)?;
        for sid in owed {
            t.owed.remove(&sid);
        }
        if let Some(u) = t.users.remove(&did) {
            u.units.fetch_and(!(1 << self.index), Ordering::SeqCst);
        }
        Ok(())
    }
}

impl<R: Mmio, M: TableMemory> Unit<R, M> {
    /// Sets or clears a persistent GCMD bit and waits for GSTS to agree.
    fn set_persistent(&self, bit: u32, on: bool) -> Result<(), ProbeError> {
        let mut g = self.gcmd.lock();
        let v = if on { *g | bit } else { *g & !bit };
        self.mmio.write32(reg::GCMD, v);
        let want = if on { bit } else { 0 };
        if !poll(self.poll_limit, || {
            self.mmio.read32(reg::GSTS) & bit == want
        }) {
            return Err(ProbeError::Timeout(match bit {
                gcmd::TE => "GSTS.TES",
                gcmd::QIE => "GSTS.QIES",
                _ => "GSTS",
            }));
        }
        *g = v;
        Ok(())
    }

    /// Issues a one-shot command (SRTP: wait for its status to set; WBF:
    /// wait for it to clear).
    fn one_shot(&self, bit: u32, sets: bool) -> Result<(), ProbeError> {
        let g = self.gcmd.lock();
        self.mmio.write32(reg::GCMD, *g | bit);
        let done = poll(self.poll_limit, || {
            (self.mmio.read32(reg::GSTS) & bit != 0) == sets
        });
        drop(g);
        if done {
            Ok(())
        } else {
            Err(ProbeError::Timeout(if bit == gcmd::SRTP {
                "GSTS.RTPS"
            } else {
                "GSTS.WBFS"
            }))
        }
    }

    /// Flushes the write buffer where the unit needs it (CAP.RWBF).
    fn flush_write_buffer(&self) -> Result<(), Errno> {
        if !self.caps.rwbf {
            return Ok(());
        }
        self.one_shot(gcmd::WBF, false).map_err(|_| {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            Errno::ETIMEDOUT
        })
    }

    /// Performs `invs` and waits for them; once the unit answers, the
    /// domains retired while it did not are reaped too. Reaping takes the
    /// tables' lock: code holding it calls [`submit`](Self::submit).
    pub(crate) fn invalidate(&self, invs: &[Invalidation]) -> Result<(), Errno> {
        let r = self.submit(invs);
        if r.is_ok() && self.retired_waiting.load(Ordering::Acquire) {
            self.reap_retired();
        }
        r
    }

    /// Queues `invs` (or runs them through the registers) and waits,
    /// without reaping.
    fn submit(&self, invs: &[Invalidation]) -> Result<(), Errno> {
        if invs.is_empty() {
            return Ok(());
        }
        self.stats
            .invalidations
            .fetch_add(invs.len() as u64, Ordering::Relaxed);
        let r = match &self.queue {
            Some(q) => self.invalidate_queued(&mut q.lock(), invs),
            None => invs.iter().try_for_each(|&i| self.invalidate_register(i)),
        };
        match r {
            Ok(()) => {
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
                self.wedge.completed(&self.name);
            }
            Err(e) => {
                if e == Errno::ETIMEDOUT {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                self.wedge.failed(&self.name, e);
            }
        }
        r
    }

    /// A domain gone while this unit did not complete its final
    /// invalidation waits here with its id and tables (the unit may still
    /// hold translations into them); once the unit answers again, it
    /// forgets the domain and lets go (the id and tables are freed when no
    /// unit holds them any more).
    pub(crate) fn retire(&self, domain: Arc<Retired<M>>) {
        let mut retired = self.retired.lock();
        retired.push(domain);
        self.retired_waiting.store(true, Ordering::Release);
    }

    fn reap_retired(&self) {
        // Taken out first: the invalidations below must not reap again.
        let waiting = core::mem::take(&mut *self.retired.lock());
        let mut still = Vec::new();
        for d in waiting {
            if self.forget_domain(d.did()).is_err() {
                still.push(d);
            }
        }
        // Under the lock, so a domain retired meanwhile keeps the flag set.
        let mut retired = self.retired.lock();
        retired.extend(still);
        self.retired_waiting
            .store(!retired.is_empty(), Ordering::Release);
    }

    /// Domains waiting for their final invalidation (see `retire`).
    pub(crate) fn retired(&self) -> usize {
        self.retired.lock().len()
    }

    fn descriptor(&self, inv: Invalidation) -> Entry128 {
        let drain = self.caps.drain;
        match inv {
            Invalidation::ContextGlobal => desc::context_global(),
            Invalidation::ContextDevice { did, sid } => desc::context_device(did, sid),
            Invalidation::IotlbGlobal => desc::iotlb_global(drain),
            Invalidation::IotlbDomain(did) => desc::iotlb_domain(did, drain),
            Invalidation::IotlbPages { did, addr, am } => desc::iotlb_pages(did, addr, am, drain),
            Invalidation::PasidCacheGlobal => desc::pasid_cache_global(),
            Invalidation::PasidCache { did, pasid } => desc::pasid_cache(did, pasid),
            Invalidation::PasidIotlb { did, pasid } => desc::piotlb_pasid(did, pasid),
            Invalidation::PasidIotlbPages {
                did,
                pasid,
                addr,
                am,
            } => desc::piotlb_pages(did, pasid, addr, am),
        }
    }

    /// Queues the descriptors and an invalidation wait, moves the tail,
    /// and polls the status word.
    fn invalidate_queued(&self, q: &mut Queue<M>, invs: &[Invalidation]) -> Result<(), Errno> {
        let limit = self.poll_limit;
        let needed = invs.len() as u32 + 1;
        let (entries, words) = (q.entries, q.words);
        if needed >= entries {
            // Too many for one batch: split.
            let (a, b) = invs.split_at(invs.len() / 2);
            self.invalidate_queued(q, a)?;
            return self.invalidate_queued(q, b);
        }
        // IQH and IQT count 16- or 32-byte steps.
        let shift = if words == 4 { 5 } else { 4 };
        let head = || (self.mmio.read64(reg::IQH) >> shift) as u32 % entries;
        let free = |head: u32, tail: u32| (head + entries - tail - 1) % entries;
        if free(q.head, q.tail) < needed
            && !poll(limit, || {
                q.head = head();
                free(q.head, q.tail) >= needed
            })
        {
            return Err(Errno::ETIMEDOUT);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.status.write(0, 0);
        let wait = desc::wait(self.status.pa().raw(), seq);
        let mut at = q.tail;
        for d in invs
            .iter()
            .map(|&i| self.descriptor(i))
            .chain(core::iter::once(wait))
        {
            // The upper half of a 256-bit slot stays as the ring was
            // allocated, zero: no descriptor this driver writes uses it.
            let slot = at as usize * words;
            q.ring.write(slot, d[0]);
            q.ring.write(slot + 1, d[1]);
            at = (at + 1) % entries;
        }
        q.tail = at;
        self.mmio.write64(reg::IQT, u64::from(at) << shift);
        let mut refused = false;
        let done = poll(limit, || {
            if self.status.read(0) as u32 == seq {
                return true;
            }
            let f = self.mmio.read32(reg::FSTS);
            if f & fsts::IQE != 0 {
                // The descriptor at the head is malformed: put a copy of
                // the wait in its place so the queue moves on, and fail
                // the batch (Linux does the same).
                let bad = head() as usize * words;
                q.ring.write(bad, wait[0]);
                q.ring.write(bad + 1, wait[1]);
                self.mmio.write32(reg::FSTS, fsts::IQE);
                self.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
                refused = true;
            }
            self.status.read(0) as u32 == seq
        });
        if done {
            // The wait was the last descriptor: everything before it is read.
            q.head = q.tail;
        }
        match (done, refused) {
            (true, false) => Ok(()),
            (true, true) => Err(Errno::EIO),
            (false, _) => Err(Errno::ETIMEDOUT),
        }
    }

    /// One invalidation through the context-command or IOTLB registers.
    fn invalidate_register(&self, inv: Invalidation) -> Result<(), Errno> {
        let limit = self.poll_limit;
        let iotlb_reg = self.caps.iotlb_offset + 8;
        let drain = (if self.caps.drain.0 { iotlb::DW } else { 0 })
            | (if self.caps.drain.1 { iotlb::DR } else { 0 });
        let (at, cmd, busy) = match inv {
            Invalidation::ContextGlobal => (reg::CCMD, ccmd::ICC | ccmd::GLOBAL, ccmd::ICC),
            Invalidation::ContextDevice { did, sid } => (
                reg::CCMD,
                ccmd::ICC | ccmd::DEVICE | u64::from(sid) << 16 | u64::from(did),
                ccmd::ICC,
            ),
            Invalidation::IotlbGlobal => {
                (iotlb_reg, iotlb::IVT | iotlb::GLOBAL | drain, iotlb::IVT)
            }
            Invalidation::IotlbDomain(did) => (
                iotlb_reg,
                iotlb::IVT | iotlb::DOMAIN | drain | u64::from(did) << 32,
                iotlb::IVT,
            ),
            Invalidation::IotlbPages { did, addr, am } => {
                self.mmio.write64(
                    self.caps.iotlb_offset,
                    (addr & !0xfff) | u64::from(am & 0x3f),
                );
                (
                    iotlb_reg,
                    iotlb::IVT | iotlb::PAGE | drain | u64::from(did) << 32,
                    iotlb::IVT,
                )
            }
            // PASID-granular caches have no registers: scalable mode runs
            // with the queue only.
            Invalidation::PasidCacheGlobal
            | Invalidation::PasidCache { .. }
            | Invalidation::PasidIotlb { .. }
            | Invalidation::PasidIotlbPages { .. } => return Err(Errno::EOPNOTSUPP),
        };
        self.mmio.write64(at, cmd);
        if !poll(limit, || self.mmio.read64(at) & busy == 0) {
            return Err(Errno::ETIMEDOUT);
        }
        // The granularity the hardware actually used: 0 means it did not.
        let actual = if at == reg::CCMD {
            (self.mmio.read64(at) >> 59) & 3
        } else {
            (self.mmio.read64(at) >> 57) & 3
        };
        if actual == 0 {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The IOTLB invalidation for pages `first..=last` of domain `did`:
    /// one page-selective invalidation when the unit has PSI and the
    /// block's mask fits MAMV, else the whole domain. First-stage
    /// domains' entries are tagged with their PASID: PASID-based
    /// invalidation (as Linux's `qi_flush_piotlb`), whose address mask
    /// any scalable-mode unit takes.
    pub(crate) fn iotlb_range(
        &self,
        did: u16,
        first: u64,
        last: u64,
        first_stage: bool,
    ) -> Invalidation {
        let (addr, am) = entry::psi_block(first >> 12, last >> 12);
        let pasid = RID_PASID;
        if first_stage {
            if am <= 52 {
                Invalidation::PasidIotlbPages {
                    did,
                    pasid,
                    addr,
                    am,
                }
            } else {
                Invalidation::PasidIotlb { did, pasid }
            }
        } else if self.caps.psi && am <= self.caps.max_address_mask {
            Invalidation::IotlbPages { did, addr, am }
        } else {
            Invalidation::IotlbDomain(did)
        }
    }

    /// Every IOTLB entry of domain `did` (its RID_PASID's, for a
    /// first-stage domain).
    pub(crate) fn iotlb_all(&self, did: u16, first_stage: bool) -> Invalidation {
        if first_stage {
            Invalidation::PasidIotlb {
                did,
                pasid: RID_PASID,
            }
        } else {
            Invalidation::IotlbDomain(did)
        }
    }

    /// After entries went from not present to present: caching mode keeps
    /// not-present entries in its caches, so they are invalidated too;
    /// otherwise only the write buffer is flushed.
    pub(crate) fn sync_map(
        &self,
        did: u16,
        first: u64,
        last: u64,
        first_stage: bool,
    ) -> Result<(), Errno> {
        if self.caps.caching_mode {
            self.invalidate(&[self.iotlb_range(did, first, last, first_stage)])
        } else {
            self.flush_write_buffer()
        }
    }

    /// Where requester id `sid`'s context entry is: the context table's
    /// key and the entry's first double word in it.
    fn context_slot(&self, sid: u16) -> ((u8, bool), usize) {
        let (bus, devfn) = ((sid >> 8) as u8, usize::from(sid & 0xff));
        if self.mode.scalable() {
            ((bus, devfn >= 0x80), (devfn & 0x7f) * 4)
        } else {
            ((bus, false), devfn * 2)
        }
    }

    /// The context table of `key`, made (zeroed, and named by its root
    /// entry) if `create`.
    fn context_table<'a>(
        &self,
        contexts: &'a mut BTreeMap<(u8, bool), DmaRegion<M>>,
        key: (u8, bool),
        create: bool,
    ) -> Result<Option<&'a DmaRegion<M>>, Errno> {
        if !contexts.contains_key(&key) {
            if !create {
                return Ok(None);
            }
            let table = DmaRegion::alloc(&self.mem, 4096)?;
            let bus = key.0;
            let r = if self.mode.scalable() {
                // Both halves' pointers live in one root entry; a half
                // without a table stays not present.
                let half = |upper: bool| {
                    if upper == key.1 {
                        Some(table.pa().raw())
                    } else {
                        contexts.get(&(bus, upper)).map(|c| c.pa().raw())
                    }
                };
                let e = |p: Option<u64>| p.map_or(0, |a| a | 1);
                [e(half(false)), e(half(true))]
            } else {
                entry::root_entry(table.pa().raw())
            };
            self.root.write(usize::from(bus) * 2 + 1, r[1]);
            self.root.write(usize::from(bus) * 2, r[0]);
            contexts.insert(key, table);
        }
        Ok(contexts.get(&key))
    }

    /// Points requester id `sid` at `new` (`None`: nothing, so its DMA
    /// faults): a legacy context entry, or in scalable mode the PASID
    /// entry of its RID_PASID. What a failed invalidation leaves in memory
    /// is `on_failure`'s.
    fn set_context(
        &self,
        sid: u16,
        new: Option<Binding>,
        on_failure: Failure,
    ) -> Result<(), Errno> {
        let mut t = self.tables.lock();
        let r = if self.mode.scalable() {
            self.set_pasid_entry(&mut t, sid, new.as_ref(), on_failure)
        } else {
            self.set_legacy_context(&mut t, sid, new.as_ref(), on_failure)
        };
        if r.is_ok() || on_failure == Failure::Keep {
            match new {
                Some(n) => t.targets.insert(sid, n),
                None => t.targets.remove(&sid),
            };
        }
        r
    }

    /// Writes requester id `sid`'s legacy context entry: a present entry
    /// is cleared and its caches invalidated first, then the new one is
    /// written high double word first (present last), and invalidated in
    /// caching mode.
    fn set_legacy_context(
        &self,
        t: &mut Tables<M>,
        sid: u16,
        binding: Option<&Binding>,
        on_failure: Failure,
    ) -> Result<(), Errno> {
        let new = match binding.map(|b| b.target) {
            None => None,
            Some(Target::PassThrough { did }) => Some(entry::context_entry(
                entry::TranslationType::PassThrough,
                0,
                self.levels,
                did,
            )),
            Some(Target::SecondStage { root, levels, did }) => Some(entry::context_entry(
                entry::TranslationType::SecondLevel,
                root,
                levels,
                did,
            )),
            Some(Target::FirstStage { .. }) => return Err(Errno::EINVAL),
        };
        let (key, i) = self.context_slot(sid);
        let owed = t.owed.get(&sid).copied();
        let Some(ctx) =
            self.context_table(&mut t.contexts, key, new.is_some() || owed.is_some())?
        else {
            return Ok(());
        };
        let old = [ctx.read(i), ctx.read(i + 1)];
        if Some(old) == new && owed.is_none() {
            return Ok(());
        }
        self.stats.context_writes.fetch_add(1, Ordering::Relaxed);
        // The entry the unit may hold: the one in memory, or one cleared
        // before whose invalidation is owed.
        let held = if entry::present(old) {
            Some(entry::context_did(old))
        } else {
            owed.map(|(did, _)| did)
        };
        self.replace_entry(
            (ctx, i),
            old,
            new.zip(binding).map(|(n, b)| {
                let did = entry::context_did(n);
                let flush = [
                    Invalidation::ContextDevice { did: 0, sid },
                    Invalidation::IotlbDomain(did),
                ];
                (n, flush, did, &b.units)
            }),
            held.map(|did| {
                let flush = [
                    Invalidation::ContextDevice { did, sid },
                    Invalidation::IotlbDomain(did),
                ];
                ((did, false), flush)
            }),
            (&mut t.owed, &mut t.users, sid),
            on_failure,
        )
    }

    /// Replaces the entry of `N` double words at `entry` (a region and the
    /// entry's first double word, which holds the present bit), which holds
    /// `old`, with `new`; the one protocol of context and PASID entries.
    /// When the unit may hold an entry (`held`: its tag for `owed`, and
    /// what invalidates it), it is cleared first, present bit first, and
    /// invalidated; if that does not complete, `on_failure` says what stays
    /// in memory: the old entry (the change did not happen) or the cleared
    /// one, with the invalidation recorded as owed by the requester id.
    /// The new entry is written present bit last and, in caching mode,
    /// invalidated with its own list (the unit may cache not-present
    /// entries); otherwise the write buffer is flushed.
    ///
    /// The unit's users of each domain id follow: the held entry's domain
    /// loses a user once its invalidation completed (and its bit for this
    /// unit with its last one); the new entry's gains one, and its bit,
    /// before the entry is written.
    #[allow(clippy::type_complexity)] // one protocol for two entry shapes
    fn replace_entry<const N: usize, const K: usize, const L: usize>(
        &self,
        entry: (&DmaRegion<M>, usize),
        old: [u64; N],
        new: Option<([u64; N], [Invalidation; L], u16, &Arc<AtomicU64>)>,
        held: Option<((u16, bool), [Invalidation; K])>,
        book: (
            &mut BTreeMap<u16, (u16, bool)>,
            &mut BTreeMap<u16, Users>,
            u16,
        ),
        on_failure: Failure,
    ) -> Result<(), Errno> {
        let (region, at) = entry;
        let (owed, users, sid) = book;
        let bit = 1u64 << self.index;
        if let Some((tag, flush)) = held {
            for k in 0..N {
                region.write(at + k, 0);
            }
            if let Err(e) = self.submit(&flush) {
                match on_failure {
                    Failure::Undo => {
                        for k in (0..N).rev() {
                            region.write(at + k, old[k]);
                        }
                    }
                    Failure::Keep => {
                        owed.insert(sid, tag);
                    }
                }
                return Err(e);
            }
            owed.remove(&sid);
            if let Some(u) = users.get_mut(&tag.0) {
                u.sids -= 1;
                if u.sids == 0 {
                    u.units.fetch_and(!bit, Ordering::SeqCst);
                    users.remove(&tag.0);
                }
            }
        }
        let Some((new, flush, did, units)) = new else {
            return Ok(());
        };
        users
            .entry(did)
            .or_insert_with(|| Users {
                sids: 0,
                units: Arc::clone(units),
            })
            .sids += 1;
        units.fetch_or(bit, Ordering::SeqCst);
        for k in (0..N).rev() {
            region.write(at + k, new[k]);
        }
        if self.caps.caching_mode {
            self.submit(&flush)
        } else {
            self.flush_write_buffer()
        }
    }

    /// Scalable mode: writes the PASID entry of requester id `sid`'s
    /// RID_PASID, as Linux's `intel_pasid_setup_*` and
    /// `intel_pasid_tear_down_entry` do. The context entry and the PASID
    /// directory and table are made on first use and stay; a present
    /// PASID entry is cleared whole (no pointer to tables that may be
    /// freed stays behind) and its PASID-cache and IOTLB entries
    /// invalidated first, then the new one is written present last, and
    /// invalidated in caching mode.
    ///
    /// The teardown also invalidates the device's context-cache entry:
    /// QEMU 10 checks that the RID_PASID's entry is present only when it
    /// fills its context cache, and otherwise keeps translating through
    /// a cleared entry's old fields.
    fn set_pasid_entry(
        &self,
        t: &mut Tables<M>,
        sid: u16,
        binding: Option<&Binding>,
        on_failure: Failure,
    ) -> Result<(), Errno> {
        if !t.pasids.contains_key(&sid) {
            if binding.is_none() {
                return Ok(());
            }
            let dir = DmaRegion::alloc(&self.mem, 4096)?;
            let table = DmaRegion::alloc(&self.mem, 4096)?;
            dir.write(
                (RID_PASID >> 6) as usize,
                entry::pasid_dir_entry(table.pa().raw()),
            );
            let (key, i) = self.context_slot(sid);
            let ctx = self
                .context_table(&mut t.contexts, key, true)?
                .expect("made when missing");
            let c = entry::sm_context_entry(dir.pa().raw(), RID_PASID);
            ctx.write(i + 1, c[1]);
            ctx.write(i, c[0]);
            self.stats.context_writes.fetch_add(1, Ordering::Relaxed);
            if self.caps.caching_mode {
                self.submit(&[Invalidation::ContextDevice { did: 0, sid }])?;
            } else {
                self.flush_write_buffer()?;
            }
            t.pasids.insert(sid, [dir, table]);
        }
        let [_, table] = &t.pasids[&sid];
        let slot = (RID_PASID & 0x3f) as usize * 8;
        let old: PasidEntry = [table.read(slot), table.read(slot + 1), table.read(slot + 2)];
        let new = binding.map(|b| entry::pasid_entry(b.target));
        let owed = t.owed.get(&sid).copied();
        if Some(old) == new && owed.is_none() {
            return Ok(());
        }
        let flush = |did: u16, first_stage: bool| {
            [
                Invalidation::PasidCache {
                    did,
                    pasid: RID_PASID,
                },
                self.iotlb_all(did, first_stage),
            ]
        };
        // The entry the unit may hold: the one in memory, or one cleared
        // before whose invalidation is owed. Its teardown also invalidates
        // the device's context-cache entry (see above).
        let held = if entry::present([old[0], old[1]]) {
            Some((entry::pasid_did(old), entry::pasid_first_stage(old)))
        } else {
            owed
        };
        self.replace_entry(
            (table, slot),
            old,
            new.zip(binding).map(|(n, b)| {
                let did = entry::pasid_did(n);
                (n, flush(did, entry::pasid_first_stage(n)), did, &b.units)
            }),
            held.map(|(did, first_stage)| {
                let [pc, iotlb] = flush(did, first_stage);
                let cc = Invalidation::ContextDevice { did, sid };
                ((did, first_stage), [pc, iotlb, cc])
            }),
            (&mut t.owed, &mut t.users, sid),
            on_failure,
        )
    }

    /// Reads and clears every fault record, from FSTS.FRI on.
    fn drain_faults(&self) -> Vec<VtdFault> {
        let mut out = Vec::new();
        let status = self.mmio.read32(reg::FSTS);
        let n = self.caps.fault_records;
        if status & fsts::PPF != 0 {
            let mut i = fsts::fri(status) % n;
            for _ in 0..n {
                let at = self.caps.fault_offset + u64::from(i) * 16;
                let hi = self.mmio.read64(at + 8);
                let Some(f) = VtdFault::decode(self.mmio.read64(at), hi) else {
                    break;
                };
                // F is write-1-to-clear, in the record's top 32 bits.
                self.mmio.write32(at + 12, 1 << 31);
                out.push(f);
                i = (i + 1) % n;
            }
        }
        if status & fsts::PFO != 0 {
            self.stats.fault_overflows.fetch_add(1, Ordering::Relaxed);
            self.mmio.write32(reg::FSTS, fsts::PFO);
        }
        self.stats
            .faults
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    /// The page sizes paging domains' tables take on this unit.
    pub(crate) fn pgsize_bitmap(&self) -> u64 {
        let (big, huge) = if self.mode == TableMode::ScalableFirstStage {
            // 2 MiB first-stage pages are architectural; 1 GiB need FS1GP.
            (true, self.caps.fs_1g)
        } else {
            (self.caps.sl_2m, self.caps.sl_1g)
        };
        (1 << 12) | if big { 1 << 21 } else { 0 } | if huge { 1 << 30 } else { 0 }
    }
}

impl<R: Mmio + 'static, M: TableMemory + 'static> IommuOps for Vtd<R, M> {
    fn name(&self) -> &str {
        "intel-iommu"
    }

    /// A device no unit covers (no requester id, or none the firmware's
    /// scope gives a unit) is not translated: it gets no group.
    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        if dev.stream_ids().is_empty() {
            return Ok(()); // not behind a unit
        }
        match self.inner.unit_of(dev) {
            Err(Errno::ENODEV) => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        self.inner.by_stream.add_device(iommu, dev)
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        self.inner.by_stream.remove_device(iommu, dev);
    }

    fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        self.inner
            .by_stream
            .device_group_keyed(iommu, dev, self.inner.cfg.groups.as_deref())
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<alloc::boxed::Box<dyn DomainOps>, Errno> {
        let kind = match ty {
            DomainType::Blocked => DomainKind::Blocked,
            DomainType::Identity if !self.inner.units.iter().all(|u| u.caps.pass_through) => {
                return Err(Errno::EOPNOTSUPP)
            }
            DomainType::Identity => DomainKind::Identity {
                did: self.inner.dids.lock().alloc()?,
            },
            _ => DomainKind::paging(&self.inner)?,
        };
        Ok(alloc::boxed::Box::new(VtdDomain::new(
            Arc::downgrade(&self.inner),
            kind,
        )))
    }

    /// The firmware's regions for the device (RMRRs), and the interrupt
    /// range, which the hardware never translates.
    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        let mut v = dev.firmware_resv_regions().to_vec();
        v.push(ReservedRegion::new(
            MSI_RANGE.0,
            MSI_RANGE.1,
            iommu_core::Prot::NONE,
            ResvType::Msi,
        ));
        v
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.inner.pgsize_bitmap()
    }

    fn capable(&self, cap: Capability) -> bool {
        match cap {
            Capability::CacheCoherency => self.inner.units.iter().all(|u| u.caps.coherent),
            Capability::NoExec => true,
            Capability::DeferredFlush => true,
            Capability::IntrRemap => false,
        }
    }
}
