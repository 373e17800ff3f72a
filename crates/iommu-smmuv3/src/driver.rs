//! The driver: probe, reset, stream table, command and event queues, and
//! the [`IommuOps`] the core calls.

use crate::domain::{DomainKind, Smmuv3Domain};
use crate::mmio::reg;
use crate::ste::{self, Cmd, Ste};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use iommu_core::{
    Capability, Device, Domain, DomainOps, DomainType, Errno, FaultAccess, Group, GroupKeys, Iommu,
    IommuOps, Iova, PagingFlags, ReservedRegion, StreamIdGroups, UserData, ViommuOps, WedgeReport,
};
use iommu_hw::Mmio;
use iommu_hw::{DmaRegion, Ids};
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::TableMemory;

const CR0_SMMUEN: u32 = 1 << 0;
const CR0_EVTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;
const GERROR_CMDQ_ERR: u32 = 1 << 0;
const GERROR_SFM_ERR: u32 = 1 << 8;
const GERROR_MASK: u32 = 0x1fd;
const Q_OVF: u32 = 1 << 31;
/// Above this many invalidation commands, one by-ASID/VMID command is cheaper.
pub(crate) const MAX_TLBI_OPS: usize = 128;
/// Invalidations kept for retry before they collapse into one of everything.
const MAX_PENDING: usize = 256;
/// Decoded events kept for [`Smmuv3::recent_events`].
const EVENT_LOG: usize = 64;

/// Which stream-table format to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableFormat {
    /// Two-level when the SMMU has it and a linear table would exceed 64 KiB.
    Auto,
    /// One table of `2^SIDSIZE` STEs (capped at 2^16).
    Linear,
    /// Level-1 descriptors with level-2 tables of 256 STEs made on demand.
    TwoLevel,
}

/// Driver options.
#[derive(Clone, Debug)]
pub struct Smmuv3Config {
    /// Stage for paging domains: `None` prefers stage 1 when implemented.
    pub stage: Option<Stage>,
    /// Stream-table format.
    pub stream_table: StreamTableFormat,
    /// log2 of the largest command queue to use.
    pub cmdq_log2: u32,
    /// log2 of the largest event queue to use.
    pub evtq_log2: u32,
    /// Register polls before a wait (CR0ACK, queue space, CMD_SYNC) gives up
    /// with `ETIMEDOUT`.
    pub poll_limit: u32,
    /// The software MSI window every device reserves (Linux's `MSI_IOVA_BASE`).
    pub sw_msi: Option<(u64, u64)>,
    /// The grouping a bus layer decided (PCI: functions ACS cannot keep
    /// apart share a group); devices it does not name are grouped by
    /// shared stream ids.
    pub groups: Option<Arc<GroupKeys>>,
    /// Complete `CMD_SYNC` with an MSI write to memory when the SMMU has MSIs.
    pub msi_sync: bool,
    /// Most table pages (root included) one paging domain may hold; a map
    /// that needs more fails with `ENOMEM` and changes nothing. `None`
    /// lets tables grow until the memory refuses.
    pub table_budget: Option<usize>,
}

impl Default for Smmuv3Config {
    fn default() -> Self {
        Smmuv3Config {
            stage: None,
            stream_table: StreamTableFormat::Auto,
            cmdq_log2: 8,
            evtq_log2: 8,
            poll_limit: 1_000_000,
            sw_msi: Some((0x800_0000, 0x10_0000)),
            groups: None,
            msi_sync: true,
            table_budget: Some(65_536),
        }
    }
}

/// What the ID registers said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smmuv3Caps {
    /// Stage 1.
    pub stage1: bool,
    /// Stage 2.
    pub stage2: bool,
    /// Two-level stream tables.
    pub two_level: bool,
    /// Stream id bits.
    pub sid_bits: u32,
    /// log2 of the command queue's entries (the driver's choice).
    pub cmdq_log2: u32,
    /// log2 of the event queue's entries (the driver's choice).
    pub evtq_log2: u32,
    /// ASID bits.
    pub asid_bits: u32,
    /// VMID bits.
    pub vmid_bits: u32,
    /// Range invalidation.
    pub range_inv: bool,
    /// MSIs.
    pub msi: bool,
    /// Coherent table walks.
    pub coherent: bool,
    /// Output address size.
    pub oas: u32,
    /// The granule paging domains use.
    pub granule: Granule,
}

/// Why [`Smmuv3::probe`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The SMMU implements neither stage this driver drives.
    NoStage,
    /// No AArch64 table format, or only big-endian tables.
    TableFormat,
    /// Tables or queues are preset in the SMMU (`IDR1.TABLES_PRESET`/`QUEUES_PRESET`).
    Preset,
    /// No granule the page-table code supports.
    Granule,
    /// A register did not acknowledge in time.
    Timeout(&'static str),
    /// Memory for tables or queues could not be allocated.
    NoMemory,
    /// The initial invalidation failed.
    Command(Errno),
    /// No SMMU to probe, or more than [`MAX_SMMUS`].
    Smmus(usize),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::NoStage => f.write_str("the SMMU implements no usable translation stage"),
            ProbeError::TableFormat => f.write_str("the SMMU has no little-endian AArch64 tables"),
            ProbeError::Preset => f.write_str("preset tables or queues are not supported"),
            ProbeError::Granule => f.write_str("no supported translation granule"),
            ProbeError::Timeout(what) => write!(f, "{what} did not acknowledge"),
            ProbeError::NoMemory => f.write_str("out of memory for tables or queues"),
            ProbeError::Smmus(n) => write!(f, "{n} SMMUs: 1 to {MAX_SMMUS}"),
            ProbeError::Command(e) => write!(f, "initial invalidation failed: {}", e.name()),
        }
    }
}

/// Counters.
#[derive(Debug, Default)]
struct Stats {
    sync_timeouts: AtomicU64,
    cmdq_errors: AtomicU64,
    events: AtomicU64,
    evtq_overflows: AtomicU64,
    gerrors: AtomicU64,
    ste_writes: AtomicU64,
}

/// A snapshot of the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Smmuv3Stats {
    /// Commands queued (CMD_SYNC included).
    pub commands: u64,
    /// CMD_SYNCs that completed.
    pub syncs: u64,
    /// Waits that gave up (`ETIMEDOUT`).
    pub sync_timeouts: u64,
    /// Commands the SMMU refused (`CMDQ_ERR`).
    pub cmdq_errors: u64,
    /// Events read from the event queue.
    pub events: u64,
    /// Event-queue overflows seen.
    pub evtq_overflows: u64,
    /// Global errors other than command errors.
    pub gerrors: u64,
    /// STE updates.
    pub ste_writes: u64,
}

/// One event the SMMU recorded, decoded (IHI 0070 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuEvent {
    /// Event number.
    pub id: u8,
    /// Stream id.
    pub sid: u32,
    /// Input address (translation faults).
    pub iova: u64,
    /// `RnW`: a read.
    pub read: bool,
    /// `S2`: raised by stage 2.
    pub stage2: bool,
    /// The fourth double word: IPA or fetch address.
    pub addr: u64,
    /// What the domain's fault handler answered, when
    /// [`Smmuv3::handle_irq`] reported the event to one.
    pub report: Option<Result<(), Errno>>,
    /// The SMMU that recorded it (its index in the driver's SMMUs).
    pub unit: usize,
}

impl SmmuEvent {
    /// Decodes a 32-byte record.
    pub fn decode(w: [u64; 4]) -> Self {
        SmmuEvent {
            id: w[0] as u8,
            sid: (w[0] >> 32) as u32,
            iova: w[2],
            read: w[1] & (1 << 35) != 0,
            stage2: w[1] & (1 << 39) != 0,
            addr: w[3] & 0x000f_ffff_ffff_fff8,
            report: None,
            unit: 0,
        }
    }

    /// The event's name in the specification.
    pub fn name(&self) -> &'static str {
        match self.id {
            0x01 => "F_UUT",
            0x02 => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            0x04 => "C_BAD_STE",
            0x05 => "F_BAD_ATS_TREQ",
            0x06 => "F_STREAM_DISABLED",
            0x07 => "F_TRANSL_FORBIDDEN",
            0x08 => "C_BAD_SUBSTREAMID",
            0x09 => "F_CD_FETCH",
            0x0a => "C_BAD_CD",
            0x0b => "F_WALK_EABT",
            0x10 => "F_TRANSLATION",
            0x11 => "F_ADDR_SIZE",
            0x12 => "F_ACCESS",
            0x13 => "F_PERMISSION",
            0x20 => "F_TLB_CONFLICT",
            0x21 => "F_CFG_CONFLICT",
            0x24 => "E_PAGE_REQUEST",
            0x25 => "F_VMS_FETCH",
            _ => "unknown",
        }
    }

    /// Whether the event is a translation fault a domain's handler hears of.
    pub fn is_translation_fault(&self) -> bool {
        (0x10..=0x13).contains(&self.id)
    }
}

impl core::fmt::Display for SmmuEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} sid={:#x}", self.name(), self.sid)?;
        if self.is_translation_fault() || self.id == 0x0b {
            write!(
                f,
                " iova={:#x} {}{}",
                self.iova,
                if self.read { "read" } else { "write" },
                if self.stage2 { " stage2" } else { "" }
            )?;
        }
        Ok(())
    }
}

/// A queue's producer/consumer state as the driver keeps it.
struct Queue<M: TableMemory> {
    region: DmaRegion<M>,
    log2: u32,
    /// Next slot to write (index and wrap bit).
    prod: u32,
    /// What the SMMU last said it consumed.
    cons: u32,
}

/// The command queue and what every submission keeps beside it, all under
/// the one lock a submission takes anyway: no other locked instruction
/// per batch.
struct Cmdq<M: TableMemory> {
    queue: Queue<M>,
    /// Invalidations whose CMD_SYNC failed, queued again before the next
    /// commands.
    pending: Vec<Cmd>,
    /// The data of the last CMD_SYNC's MSI.
    sync_seq: u32,
    /// Command batches started.
    batches: u64,
    /// Commands queued (CMD_SYNC included), for [`Smmuv3Stats::commands`].
    commands: u64,
    /// CMD_SYNCs that completed, for [`Smmuv3Stats::syncs`].
    syncs: u64,
}

impl<M: TableMemory> Queue<M> {
    fn mask(&self) -> u32 {
        (2 << self.log2) - 1
    }
    fn full(&self) -> bool {
        (self.prod ^ self.cons) & self.mask() == 1 << self.log2
    }
    fn next(&self, v: u32) -> u32 {
        v.wrapping_add(1) & self.mask()
    }
    fn slot(&self, v: u32) -> usize {
        (v & ((1 << self.log2) - 1)) as usize * 2
    }
}

/// The stream table.
enum StreamTable<M: TableMemory> {
    Linear {
        table: DmaRegion<M>,
        log2: u32,
    },
    TwoLevel {
        l1: DmaRegion<M>,
        l2: BTreeMap<u32, DmaRegion<M>>,
        log2: u32,
    },
}

/// Level-2 tables hold `2^SPLIT` STEs (16 KiB).
const SPLIT: u32 = 8;

impl<M: TableMemory> StreamTable<M> {
    fn log2(&self) -> u32 {
        match self {
            StreamTable::Linear { log2, .. } | StreamTable::TwoLevel { log2, .. } => *log2,
        }
    }

    /// The region and first double word of `sid`'s STE, making the
    /// level-2 table on first use (its level-1 descriptor is written after
    /// the table is zeroed, so the SMMU never sees a half-built one).
    fn slot(&mut self, mem: &Arc<M>, sid: u32) -> Result<(&DmaRegion<M>, usize), Errno> {
        if u64::from(sid) >> self.log2() != 0 {
            return Err(Errno::ERANGE);
        }
        match self {
            StreamTable::Linear { table, .. } => Ok((table, sid as usize * 8)),
            StreamTable::TwoLevel { l1, l2, .. } => {
                let idx = sid >> SPLIT;
                let t = match l2.entry(idx) {
                    alloc::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    alloc::collections::btree_map::Entry::Vacant(v) => {
                        let t = DmaRegion::alloc(mem, 64 << SPLIT)?;
                        l1.write(idx as usize, ste::l1_desc(t.pa(), SPLIT + 1));
                        v.insert(t)
                    }
                };
                Ok((&*t, (sid & ((1 << SPLIT) - 1)) as usize * 8))
            }
        }
    }
}

/// One stream-table entry in use: the domain and the devices using it.
struct StreamEntry {
    domain: Domain,
    devices: Vec<Weak<Device>>,
}

/// One SMMU: its registers, stream table, queues, streams and counters.
pub(crate) struct Unit<R: Mmio, M: TableMemory> {
    /// Its place in the driver's SMMUs.
    pub(crate) index: usize,
    pub(crate) mmio: R,
    pub(crate) mem: Arc<M>,
    pub(crate) caps: Smmuv3Caps,
    pub(crate) cfg: Smmuv3Config,
    cmdq: spin::Mutex<Cmdq<M>>,
    evtq: spin::Mutex<Queue<M>>,
    /// Also serialises STE updates.
    strtab: spin::Mutex<StreamTable<M>>,
    streams: spin::Mutex<BTreeMap<u32, StreamEntry>>,
    sync_word: DmaRegion<M>,
    /// What the driver last wrote to GERRORN (it is the only writer), so
    /// that finding the active errors takes one register read.
    gerrorn: AtomicU32,
    /// The driver's ASIDs and VMIDs (shared by its SMMUs), which dead
    /// domains give back here.
    asids: Arc<spin::Mutex<Ids>>,
    vmids: Arc<spin::Mutex<Ids>>,
    stats: Stats,
    /// Says once that commands stopped completing, and once that they complete again.
    wedge: WedgeReport,
    /// Dead domains whose TLB invalidation is still pending, with the
    /// batch count when they died: their ASID or VMID, CD and tables are
    /// reused only after a CMD_SYNC completes (which runs the pending
    /// invalidations first), or the SMMU's caches could lead a new domain's
    /// DMA into the old one's translations.
    retired: spin::Mutex<Vec<(DomainKind<M>, u64)>>,
    /// `retired`'s length, so that a completed batch with none to release
    /// takes no lock (one seen late waits for the next completed batch).
    retired_len: AtomicUsize,
    recent: spin::Mutex<VecDeque<SmmuEvent>>,
}

/// Which SMMU a device's id reaches and its stream id there: the
/// firmware's mapping (IORT ID mappings, a device tree's `iommu-map`) as
/// the platform resolved it, from the id a device carries (a PCI
/// function's `segment << 16 | requester id`). `None`: no SMMU translates
/// it.
pub type StreamLookup = Arc<dyn Fn(u32) -> Option<(usize, u32)> + Send + Sync>;

/// The most SMMUs one driver drives.
pub const MAX_SMMUS: usize = 64;

/// The driver: its SMMUs, which one each device id reaches, and what its
/// domains share (ASIDs and VMIDs, the table format).
pub(crate) struct Inner<R: Mmio, M: TableMemory> {
    pub(crate) units: Vec<Arc<Unit<R, M>>>,
    lookup: Option<StreamLookup>,
    pub(crate) mem: Arc<M>,
    pub(crate) cfg: Smmuv3Config,
    /// ASIDs and VMIDs of the narrowest SMMU's width, as Linux keeps one
    /// ASID space for all SMMUs.
    pub(crate) asids: Arc<spin::Mutex<Ids>>,
    pub(crate) vmids: Arc<spin::Mutex<Ids>>,
    by_stream: StreamIdGroups,
}

/// The SMMUv3 driver for one or more SMMUs; clones share them.
pub struct Smmuv3<R: Mmio, M: TableMemory> {
    pub(crate) inner: Arc<Inner<R, M>>,
}

impl<R: Mmio, M: TableMemory> Clone for Smmuv3<R, M> {
    fn clone(&self) -> Self {
        Smmuv3 {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Mmio, M: TableMemory> core::fmt::Debug for Smmuv3<R, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Smmuv3")
            .field("smmus", &self.inner.units.len())
            .field("caps", &self.inner.units[0].caps)
            .finish_non_exhaustive()
    }
}

fn field(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1 << width) - 1)
}

fn oas_bits(code: u32) -> u32 {
    match code {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
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

impl<R: Mmio, M: TableMemory> Smmuv3<R, M> {
    /// Probes one SMMU whose stream ids are the devices' ids: see
    /// [`probe_units`](Self::probe_units).
    ///
    /// # Errors
    /// [`ProbeError`] for an SMMU this driver cannot drive or one that does
    /// not respond; nothing is left enabled then.
    pub fn probe(mmio: R, mem: Arc<M>, cfg: Smmuv3Config) -> Result<Self, ProbeError> {
        Self::probe_units(alloc::vec![mmio], mem, cfg, None).map_err(|(_, e)| e)
    }

    /// Probes every SMMU of a machine (the IORT's SMMUv3 nodes, or the
    /// device tree's) and drives them as one IOMMU: `lookup` says which SMMU
    /// a device's id reaches and with which stream id (`None`: the first
    /// SMMU, stream id = the device's id). For each SMMU: reads the ID
    /// registers, resets it, builds its stream table and queues in `mem`,
    /// invalidates everything it may have cached, and enables it. Streams
    /// nobody attached abort.
    ///
    /// As in Linux, a paging domain is bound to the SMMU of the first
    /// device it is attached to; attaching it to a device behind another
    /// SMMU is `EINVAL`. Its tables are of the stage and width every SMMU
    /// takes, its ASID or VMID from one space for all SMMUs.
    ///
    /// # Errors
    /// The SMMU's index and its [`ProbeError`] (too many SMMUs, or none:
    /// [`ProbeError::Smmus`]); SMMUs probed before it are disabled again.
    pub fn probe_units(
        units: Vec<R>,
        mem: Arc<M>,
        cfg: Smmuv3Config,
        lookup: Option<StreamLookup>,
    ) -> Result<Self, (usize, ProbeError)> {
        if units.is_empty() || units.len() > MAX_SMMUS {
            return Err((0, ProbeError::Smmus(units.len())));
        }
        let asids = Arc::new(spin::Mutex::new(Ids::new(16)));
        let vmids = Arc::new(spin::Mutex::new(Ids::new(16)));
        let mut probed: Vec<Arc<Unit<R, M>>> = Vec::with_capacity(units.len());
        for (index, mmio) in units.into_iter().enumerate() {
            match Unit::probe(index, mmio, &mem, &cfg, asids.clone(), vmids.clone()) {
                Ok(u) => probed.push(Arc::new(u)),
                Err(e) => {
                    for u in &probed {
                        u.disable();
                    }
                    return Err((index, e));
                }
            }
        }
        // One ASID and VMID space, as wide as the narrowest SMMU's.
        let asid_bits = probed.iter().map(|u| u.caps.asid_bits).min().unwrap_or(8);
        let vmid_bits = probed.iter().map(|u| u.caps.vmid_bits).min().unwrap_or(8);
        *asids.lock() = Ids::new(asid_bits);
        *vmids.lock() = Ids::new(vmid_bits);
        Ok(Smmuv3 {
            inner: Arc::new(Inner {
                units: probed,
                lookup,
                mem,
                cfg,
                asids,
                vmids,
                by_stream: StreamIdGroups::new(),
            }),
        })
    }

    /// Disables every SMMU (traffic then follows `GBPA`: abort).
    pub fn shutdown(&self) {
        for u in &self.inner.units {
            u.disable();
        }
    }

    /// What probing the first SMMU found (see [`smmu_caps`](Self::smmu_caps)).
    pub fn caps(&self) -> &Smmuv3Caps {
        &self.inner.units[0].caps
    }

    /// How many SMMUs the driver drives.
    pub fn smmus(&self) -> usize {
        self.inner.units.len()
    }

    /// What probing SMMU `smmu` found.
    pub fn smmu_caps(&self, smmu: usize) -> Option<&Smmuv3Caps> {
        self.inner.units.get(smmu).map(|u| &u.caps)
    }

    /// The SMMU a device id reaches and its stream id there.
    pub fn stream_of(&self, id: u32) -> Option<(usize, u32)> {
        self.inner.stream_of(id)
    }

    /// Counters, summed over the SMMUs.
    pub fn stats(&self) -> Smmuv3Stats {
        let mut t = Smmuv3Stats::default();
        for u in &self.inner.units {
            let s = u.stats();
            t.commands += s.commands;
            t.syncs += s.syncs;
            t.sync_timeouts += s.sync_timeouts;
            t.cmdq_errors += s.cmdq_errors;
            t.events += s.events;
            t.evtq_overflows += s.evtq_overflows;
            t.gerrors += s.gerrors;
            t.ste_writes += s.ste_writes;
        }
        t
    }

    /// SMMU `smmu`'s counters.
    pub fn smmu_stats(&self, smmu: usize) -> Option<Smmuv3Stats> {
        self.inner.units.get(smmu).map(|u| u.stats())
    }

    /// The last events read from the event queues (at most 64 per SMMU),
    /// oldest first per SMMU.
    pub fn recent_events(&self) -> Vec<SmmuEvent> {
        self.inner
            .units
            .iter()
            .flat_map(|u| u.recent.lock().iter().copied().collect::<Vec<_>>())
            .collect()
    }

    /// The STE device id `id` reaches, as it is in memory (first four
    /// double words).
    pub fn ste(&self, id: u32) -> Option<Ste> {
        let (unit, sid) = self.inner.stream_of(id)?;
        self.inner.units[unit].ste(sid)
    }

    /// Issues a CMD_SYNC on every SMMU: when it returns `Ok`, every command
    /// the driver queued before, and every invalidation an earlier failure
    /// left owed, has completed (and dead domains' tags and tables are
    /// free). What a kernel calls once it believes a wedged SMMU is back.
    ///
    /// # Errors
    /// As the command queue's: `ETIMEDOUT`, `EIO` (the first SMMU's to
    /// fail; every SMMU is asked).
    pub fn sync(&self) -> Result<(), Errno> {
        let mut r = Ok(());
        for u in &self.inner.units {
            r = r.and(u.submit(&[], true));
        }
        r
    }

    /// Dead domains whose tables, CD and tag wait for a CMD_SYNC to
    /// complete before they are reused.
    pub fn retired_domains(&self) -> usize {
        self.inner.units.iter().map(|u| u.retired()).sum()
    }

    /// Reads every SMMU's event queue, reports translation faults to the
    /// domains of their streams, and handles global errors: what an
    /// interrupt handler calls. Returns the events read, each with its
    /// SMMU.
    pub fn handle_irq(&self) -> Vec<SmmuEvent> {
        let mut all = Vec::new();
        for unit in &self.inner.units {
            unit.handle_gerror();
            let mut events = unit.drain_events();
            for ev in &mut events {
                ev.unit = unit.index;
                if !ev.is_translation_fault() {
                    continue;
                }
                let target = {
                    let streams = unit.streams.lock();
                    streams.get(&ev.sid).and_then(|e| {
                        let dev = e.devices.iter().find_map(Weak::upgrade)?;
                        Some((e.domain.clone(), dev))
                    })
                };
                if let Some((domain, dev)) = target {
                    let access = if ev.read {
                        FaultAccess::Read
                    } else {
                        FaultAccess::Write
                    };
                    ev.report = Some(domain.report_fault(&dev, Iova::new(ev.iova), access));
                }
            }
            all.extend(events);
        }
        all
    }

    /// The domain device id `id`'s stream is attached to, if any.
    pub fn stream_domain(&self, id: u32) -> Option<Domain> {
        let (unit, sid) = self.inner.stream_of(id)?;
        self.inner.units[unit]
            .streams
            .lock()
            .get(&sid)
            .map(|e| e.domain.clone())
    }
}

/// A device's SMMU and its stream ids there.
pub(crate) type UnitStreams<'a, R, M> = (&'a Arc<Unit<R, M>>, Vec<u32>);

impl<R: Mmio, M: TableMemory> Inner<R, M> {
    /// The SMMU and stream id device id `id` maps to.
    pub(crate) fn stream_of(&self, id: u32) -> Option<(usize, u32)> {
        match &self.lookup {
            None => Some((0, id)),
            Some(f) => f(id).filter(|&(u, _)| u < self.units.len()),
        }
    }

    /// `dev`'s SMMU and its stream ids there.
    ///
    /// # Errors
    /// `ENODEV` without ids or when no SMMU translates them; `EINVAL` when
    /// its ids reach different SMMUs.
    pub(crate) fn streams_of(&self, dev: &Device) -> Result<UnitStreams<'_, R, M>, Errno> {
        let mut unit = None;
        let mut sids = Vec::with_capacity(dev.stream_ids().len());
        for &id in dev.stream_ids() {
            let (u, sid) = self.stream_of(id).ok_or(Errno::ENODEV)?;
            if *unit.get_or_insert(u) != u {
                return Err(Errno::EINVAL);
            }
            sids.push(sid);
        }
        let unit = unit.ok_or(Errno::ENODEV)?;
        Ok((&self.units[unit], sids))
    }

    /// The LPAE format paging domains of `stage` use: one every SMMU
    /// walks (the first SMMU's granule, the narrowest output size).
    pub(crate) fn format(&self, stage: Stage) -> Result<Lpae, Errno> {
        let first = &self.units[0].caps;
        let oas = self
            .units
            .iter()
            .map(|u| u.caps.oas)
            .min()
            .unwrap_or(first.oas);
        let ias = match stage {
            Stage::S1 => 48.min(if first.granule == Granule::G64K {
                52
            } else {
                48
            }),
            Stage::S2 => oas,
        };
        Lpae::new(LpaeConfig {
            stage,
            granule: first.granule,
            ias,
            oas,
        })
        .map_err(|_| Errno::EINVAL)
    }

    /// Whether every SMMU has both stages, so that a guest's stage 1 can
    /// nest over a host's stage 2 (Linux's `ARM_SMMU_FEAT_NESTING`).
    pub(crate) fn nesting(&self) -> bool {
        self.units.iter().all(|u| u.caps.stage1 && u.caps.stage2)
    }

    /// The stage paging domains use: the one asked for where every SMMU
    /// has it, else stage 1 where every SMMU has it, else stage 2.
    pub(crate) fn paging_stage(&self) -> Stage {
        let all = |f: fn(&Smmuv3Caps) -> bool| self.units.iter().all(|u| f(&u.caps));
        let (s1, s2) = (all(|c| c.stage1), all(|c| c.stage2));
        match self.cfg.stage {
            Some(Stage::S2) if s2 => Stage::S2,
            Some(Stage::S1) if s1 => Stage::S1,
            _ if s1 => Stage::S1,
            _ => Stage::S2,
        }
    }
}

impl<R: Mmio, M: TableMemory> Unit<R, M> {
    /// Brings one SMMU up (see [`Smmuv3::probe_units`]).
    fn probe(
        index: usize,
        mmio: R,
        mem: &Arc<M>,
        cfg: &Smmuv3Config,
        asids: Arc<spin::Mutex<Ids>>,
        vmids: Arc<spin::Mutex<Ids>>,
    ) -> Result<Self, ProbeError> {
        let idr0 = mmio.read32(reg::IDR0);
        let idr1 = mmio.read32(reg::IDR1);
        let idr3 = mmio.read32(reg::IDR3);
        let idr5 = mmio.read32(reg::IDR5);
        let stage1 = idr0 & (1 << 1) != 0;
        let stage2 = idr0 & (1 << 0) != 0;
        if !stage1 && !stage2 {
            return Err(ProbeError::NoStage);
        }
        // TTF must include AArch64; TTENDIAN must allow little-endian.
        if field(idr0, 2, 2) & 2 == 0 || field(idr0, 21, 2) == 3 {
            return Err(ProbeError::TableFormat);
        }
        if idr1 & (3 << 29) != 0 {
            return Err(ProbeError::Preset);
        }
        let oas = oas_bits(field(idr5, 0, 3));
        let granule = if idr5 & (1 << 4) != 0 {
            Granule::G4K
        } else if idr5 & (1 << 6) != 0 {
            Granule::G64K
        } else if idr5 & (1 << 5) != 0 {
            Granule::G16K
        } else {
            return Err(ProbeError::Granule);
        };
        let max_bits = if granule == Granule::G64K { 52 } else { 48 };
        let caps = Smmuv3Caps {
            stage1,
            stage2,
            two_level: field(idr0, 27, 2) == 1,
            sid_bits: field(idr1, 0, 6).min(32),
            cmdq_log2: field(idr1, 21, 5).min(cfg.cmdq_log2).max(1),
            evtq_log2: field(idr1, 16, 5).min(cfg.evtq_log2).max(1),
            asid_bits: if idr0 & (1 << 12) != 0 { 16 } else { 8 },
            vmid_bits: if idr0 & (1 << 18) != 0 { 16 } else { 8 },
            range_inv: idr3 & (1 << 10) != 0,
            msi: idr0 & (1 << 13) != 0,
            coherent: idr0 & (1 << 4) != 0,
            oas: oas.min(max_bits),
            granule,
        };
        let limit = cfg.poll_limit;
        // Reset: everything off, acknowledged, before tables change.
        mmio.write32(reg::CR0, 0);
        if !poll(limit, || mmio.read32(reg::CR0ACK) == 0) {
            return Err(ProbeError::Timeout("CR0ACK"));
        }
        // Traffic while disabled aborts (GBPA.ABORT with UPDATE).
        mmio.write32(reg::GBPA, (1 << 31) | (1 << 20));
        if !poll(limit, || mmio.read32(reg::GBPA) & (1 << 31) == 0) {
            return Err(ProbeError::Timeout("GBPA"));
        }
        let no_mem = |_| ProbeError::NoMemory;
        let linear_log2 = caps.sid_bits.min(16);
        let two_level = match cfg.stream_table {
            StreamTableFormat::Linear => false,
            StreamTableFormat::TwoLevel => caps.two_level,
            StreamTableFormat::Auto => caps.two_level && caps.sid_bits > 10,
        } && caps.sid_bits > SPLIT;
        let strtab = if two_level {
            // At most 2^17 level-1 descriptors (1 MiB), as Linux caps it.
            let log2 = caps.sid_bits.min(SPLIT + 17);
            let l1 = DmaRegion::alloc(mem, 8 << (log2 - SPLIT)).map_err(no_mem)?;
            mmio.write64(reg::STRTAB_BASE, (1 << 62) | l1.pa().raw());
            mmio.write32(reg::STRTAB_BASE_CFG, (1 << 16) | (SPLIT << 6) | log2);
            StreamTable::TwoLevel {
                l1,
                l2: BTreeMap::new(),
                log2,
            }
        } else {
            let table = DmaRegion::alloc(mem, 64 << linear_log2).map_err(no_mem)?;
            mmio.write64(reg::STRTAB_BASE, (1 << 62) | table.pa().raw());
            mmio.write32(reg::STRTAB_BASE_CFG, linear_log2);
            StreamTable::Linear {
                table,
                log2: linear_log2,
            }
        };
        let cmdq = DmaRegion::alloc(mem, 16 << caps.cmdq_log2).map_err(no_mem)?;
        let evtq = DmaRegion::alloc(mem, 32 << caps.evtq_log2).map_err(no_mem)?;
        let sync_word = DmaRegion::alloc(mem, 64).map_err(no_mem)?;
        // Write-back, inner shareable tables and queues.
        mmio.write32(
            reg::CR1,
            (3 << 10) | (1 << 8) | (1 << 6) | (3 << 4) | (1 << 2) | 1,
        );
        // PTM: no broadcast TLB maintenance; RECINVSID: record bad stream ids.
        mmio.write32(reg::CR2, (1 << 2) | (1 << 1));
        mmio.write64(
            reg::CMDQ_BASE,
            (1 << 62) | cmdq.pa().raw() | u64::from(caps.cmdq_log2),
        );
        mmio.write32(reg::CMDQ_PROD, 0);
        mmio.write32(reg::CMDQ_CONS, 0);
        mmio.write64(
            reg::EVTQ_BASE,
            (1 << 62) | evtq.pa().raw() | u64::from(caps.evtq_log2),
        );
        mmio.write32(reg::EVTQ_PROD, 0);
        mmio.write32(reg::EVTQ_CONS, 0);
        let unit = Unit {
            index,
            cmdq: spin::Mutex::new(Cmdq {
                queue: Queue {
                    region: cmdq,
                    log2: caps.cmdq_log2,
                    prod: 0,
                    cons: 0,
                },
                pending: Vec::new(),
                sync_seq: 0,
                batches: 0,
                commands: 0,
                syncs: 0,
            }),
            evtq: spin::Mutex::new(Queue {
                region: evtq,
                log2: caps.evtq_log2,
                prod: 0,
                cons: 0,
            }),
            strtab: spin::Mutex::new(strtab),
            streams: spin::Mutex::new(BTreeMap::new()),
            sync_word,
            gerrorn: AtomicU32::new(mmio.read32(reg::GERRORN)),
            asids,
            vmids,
            stats: Stats::default(),
            wedge: WedgeReport::default(),
            retired: spin::Mutex::new(Vec::new()),
            retired_len: AtomicUsize::new(0),
            recent: spin::Mutex::new(VecDeque::new()),
            mmio,
            mem: Arc::clone(mem),
            caps,
            cfg: cfg.clone(),
        };
        unit.enable(CR0_CMDQEN)?;
        unit.submit(&[ste::cfgi_all(), ste::tlbi_nsnh_all()], true)
            .map_err(ProbeError::Command)?;
        unit.enable(CR0_CMDQEN | CR0_EVTQEN)?;
        unit.mmio.write32(reg::IRQ_CTRL, 0b101);
        if !poll(limit, || unit.mmio.read32(reg::IRQ_CTRLACK) == 0b101) {
            return Err(ProbeError::Timeout("IRQ_CTRLACK"));
        }
        unit.enable(CR0_CMDQEN | CR0_EVTQEN | CR0_SMMUEN)?;
        Ok(unit)
    }

    fn enable(&self, cr0: u32) -> Result<(), ProbeError> {
        let mmio = &self.mmio;
        mmio.write32(reg::CR0, cr0);
        if poll(self.cfg.poll_limit, || mmio.read32(reg::CR0ACK) == cr0) {
            Ok(())
        } else {
            mmio.write32(reg::CR0, 0);
            Err(ProbeError::Timeout("CR0ACK"))
        }
    }

    /// Disables the SMMU (traffic then follows `GBPA`: abort).
    fn disable(&self) {
        self.mmio.write32(reg::CR0, 0);
        poll(self.cfg.poll_limit, || self.mmio.read32(reg::CR0ACK) == 0);
    }

    fn stats(&self) -> Smmuv3Stats {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (commands, syncs) = {
            let q = self.cmdq.lock();
            (q.commands, q.syncs)
        };
        Smmuv3Stats {
            commands,
            syncs,
            sync_timeouts: g(&s.sync_timeouts),
            cmdq_errors: g(&s.cmdq_errors),
            events: g(&s.events),
            evtq_overflows: g(&s.evtq_overflows),
            gerrors: g(&s.gerrors),
            ste_writes: g(&s.ste_writes),
        }
    }

    /// The STE of stream `sid` as it is in memory (first four double words).
    pub fn ste(&self, sid: u32) -> Option<Ste> {
        let mut st = self.strtab.lock();
        if let StreamTable::TwoLevel { l2, .. } = &*st {
            if !l2.contains_key(&(sid >> SPLIT)) {
                return None;
            }
        }
        let (t, w) = st.slot(&self.mem, sid).ok()?;
        Some([t.read(w), t.read(w + 1), t.read(w + 2), t.read(w + 3)])
    }

    /// Points `sid` at `new`, the way IHI 0070 3.21.3 allows for a live
    /// entry: a valid STE whose other words change goes through abort first
    /// (only double word 0 changes, in one 64-bit store), so the SMMU never
    /// sees a mix of two configurations. On failure the old STE is put back.
    pub(crate) fn write_ste(&self, sid: u32, new: Ste) -> Result<(), Errno> {
        self.write_ste_as(sid, new, false)
    }

    /// Puts `new` in memory whatever the SMMU does: when its invalidation
    /// cannot complete, the invalidation is kept for the next command and
    /// memory keeps `new`. For rolling back and tearing down, where the old
    /// configuration is the one that must stand.
    pub(crate) fn force_ste(&self, sid: u32, new: Ste) {
        let _ = self.write_ste_as(sid, new, true);
    }

    fn write_ste_as(&self, sid: u32, new: Ste, force: bool) -> Result<(), Errno> {
        let inner = self;
        let mut st = inner.strtab.lock();
        let (t, w) = st.slot(&inner.mem, sid)?;
        let old = [t.read(w), t.read(w + 1), t.read(w + 2), t.read(w + 3)];
        if old == new {
            return Ok(());
        }
        inner.stats.ste_writes.fetch_add(1, Ordering::Relaxed);
        let restore = |t: &DmaRegion<M>| {
            if force {
                for (i, v) in new.iter().enumerate().skip(1) {
                    t.write(w + i, *v);
                }
                t.write(w, new[0]);
                return;
            }
            t.write(w, ste::ste_abort()[0]);
            for (i, v) in old.iter().enumerate().skip(1) {
                t.write(w + i, *v);
            }
            t.write(w, old[0]);
            // Best effort: the SMMU may be the reason we are here.
            let _ = inner.submit(&[ste::cfgi_ste(sid)], false);
        };
        // To abort, one 64-bit store of double word 0 is the whole change;
        // the other words mean nothing to an aborting SMMU.
        if new == ste::ste_abort() {
            t.write(w, new[0]);
            if let Err(e) = inner.submit(&[ste::cfgi_ste(sid)], true) {
                restore(t);
                return Err(e);
            }
            for (i, v) in new.iter().enumerate().skip(1) {
                t.write(w + i, *v);
            }
            return Ok(());
        }
        if old[0] & 1 != 0 && old[1..] != new[1..] {
            t.write(w, ste::ste_abort()[0]);
            if let Err(e) = inner.submit(&[ste::cfgi_ste(sid)], true) {
                restore(t);
                return Err(e);
            }
        }
        for (i, v) in new.iter().enumerate().skip(1) {
            t.write(w + i, *v);
        }
        t.write(w, new[0]);
        if let Err(e) = inner.submit(&[ste::cfgi_ste(sid)], true) {
            restore(t);
            return Err(e);
        }
        Ok(())
    }

    /// Attaches `dev`'s streams `sids` (on this SMMU) to `domain` with STE
    /// `ste`, all or none.
    pub(crate) fn attach(
        &self,
        domain: &Domain,
        dev: &Arc<Device>,
        sids: &[u32],
        new: Ste,
    ) -> Result<(), Errno> {
        if sids.is_empty() {
            return Err(Errno::ENODEV);
        }
        let before: Vec<Option<Ste>> = sids.iter().map(|&s| self.ste(s)).collect();
        for (i, &sid) in sids.iter().enumerate() {
            if let Err(e) = self.write_ste(sid, new) {
                for (&done, old) in sids[..i].iter().zip(&before) {
                    self.force_ste(done, old.unwrap_or(ste::ste_abort()));
                }
                return Err(e);
            }
        }
        let mut streams = self.streams.lock();
        for &sid in sids {
            let e = streams.entry(sid).or_insert_with(|| StreamEntry {
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

    /// `dev` stops using its streams `sids`; a stream's STE goes back to
    /// abort with its last user.
    pub(crate) fn detach(&self, dev: &Arc<Device>, sids: &[u32]) {
        let mut last = Vec::new();
        {
            let mut streams = self.streams.lock();
            for sid in sids {
                if let Some(e) = streams.get_mut(sid) {
                    e.devices
                        .retain(|d| d.strong_count() > 0 && !core::ptr::eq(d.as_ptr(), &**dev));
                    if e.devices.is_empty() {
                        streams.remove(sid);
                        last.push(*sid);
                    }
                }
            }
        }
        for sid in last {
            self.force_ste(sid, ste::ste_abort());
        }
    }
}

impl<R: Mmio, M: TableMemory> Unit<R, M> {
    pub(crate) fn submit(&self, cmds: &[Cmd], sync: bool) -> Result<(), Errno> {
        let mut batch = 0;
        let r = self.submit_cmds(cmds, sync, &mut batch);
        match r {
            Ok(()) if sync => {
                self.wedge.completed("arm-smmu-v3");
                self.release_retired(batch);
            }
            Err(e) => self.wedge.failed("arm-smmu-v3", e),
            Ok(()) => {}
        }
        r
    }

    /// Lets a dead domain's ASID or VMID, CD and table pages go once the
    /// SMMU can hold nothing of them: at once after `flushed` (its TLB
    /// invalidation completed), else after the next CMD_SYNC that
    /// completes. Until then its STEs and CD may still sit in the SMMU's
    /// caches and lead a walk into its tables, so none of it is reused.
    pub(crate) fn retire(&self, kind: DomainKind<M>, flushed: bool) {
        if flushed {
            self.release(kind);
        } else {
            // Batches numbered above this one started after the failed
            // invalidation was put back in `pending`.
            let after = self.cmdq.lock().batches;
            let mut r = self.retired.lock();
            r.push((kind, after));
            self.retired_len.store(r.len(), Ordering::Release);
        }
    }

    fn release(&self, kind: DomainKind<M>) {
        match kind {
            DomainKind::S1 { asid, .. } => self.asids.lock().free(asid),
            DomainKind::S2 { vmid, .. } => self.vmids.lock().free(vmid),
            DomainKind::Blocked | DomainKind::Identity | DomainKind::Nested { .. } => {}
        }
        drop(kind);
    }

    /// Batch `batch` completed with its CMD_SYNC: every invalidation
    /// pending when it started ran, including those of domains retired
    /// before.
    fn release_retired(&self, batch: u64) {
        if self.retired_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut done = Vec::new();
        {
            let mut r = self.retired.lock();
            let mut i = 0;
            while i < r.len() {
                if batch > r[i].1 {
                    done.push(r.swap_remove(i).0);
                } else {
                    i += 1;
                }
            }
            self.retired_len.store(r.len(), Ordering::Release);
        }
        for kind in done {
            self.release(kind);
        }
    }

    pub(crate) fn retired(&self) -> usize {
        self.retired.lock().len()
    }

    /// Whether invalidations or STE changes wait for a CMD_SYNC.
    pub(crate) fn owes(&self) -> bool {
        !self.cmdq.lock().pending.is_empty() || !self.retired.lock().is_empty()
    }

    fn submit_cmds(&self, cmds: &[Cmd], sync: bool, batch: &mut u64) -> Result<(), Errno> {
        let mut guard = self.cmdq.lock();
        let c = &mut *guard;
        c.batches += 1;
        *batch = c.batches;
        let pending = core::mem::take(&mut c.pending);
        let q = &mut c.queue;
        let mut published = q.prod;
        let mut failed = false;
        let msi = (self.caps.msi && self.cfg.msi_sync).then(|| {
            c.sync_seq = c.sync_seq.wrapping_add(1);
            (self.sync_word.pa(), c.sync_seq)
        });
        let sync_cmd = sync.then(|| ste::sync(msi));
        let all = pending.iter().chain(cmds).chain(sync_cmd.iter());
        for cmd in all {
            if q.full() {
                self.publish(q, &mut published);
                if let Err(e) = self.wait(q, &mut failed, |q| !q.full()) {
                    // What was not published is dropped; the invalidations
                    // are queued again before the next command.
                    q.prod = published;
                    Self::defer(&mut c.pending, &pending, cmds);
                    return Err(e);
                }
            }
            let slot = q.slot(q.prod);
            q.region.write(slot, cmd[0]);
            q.region.write(slot + 1, cmd[1]);
            q.prod = q.next(q.prod);
            c.commands += 1;
        }
        self.publish(q, &mut published);
        if !sync {
            return Ok(());
        }
        let target = q.prod;
        let mask = q.mask();
        let word = &self.sync_word;
        let msi_done = || msi.is_some_and(|(_, seq)| word.read(0) as u32 == seq);
        // The MSI lands in memory: when it is already there, no register
        // read is needed (CONS is read again when the queue looks full).
        let done = if msi_done() {
            Ok(())
        } else {
            self.wait(q, &mut failed, |q| q.cons & mask == target || msi_done())
        };
        if let Err(e) = done {
            self.stats.sync_timeouts.fetch_add(1, Ordering::Relaxed);
            Self::defer(&mut c.pending, &pending, cmds);
            return Err(e);
        }
        c.syncs += 1;
        // A global error raised while the commands ran (service failure
        // mode, an aborted write) leaves their effect unknown: fail.
        if self.handle_gerror() != 0 {
            failed = true;
        }
        if failed {
            // A refused command was skipped: whatever it was, send it again.
            Self::defer(&mut c.pending, &pending, cmds);
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Keeps invalidations whose completion is unknown for the next
    /// submission, which queues them first: whatever runs next (a new STE,
    /// a reused ASID) runs after them. Bounded: past `MAX_PENDING` they
    /// become one invalidation of everything.
    fn defer(p: &mut Vec<Cmd>, earlier: &[Cmd], cmds: &[Cmd]) {
        p.extend(earlier.iter().chain(cmds).copied());
        if p.len() > MAX_PENDING {
            p.clear();
            p.extend([ste::cfgi_all(), ste::tlbi_nsnh_all()]);
        }
    }

    fn publish(&self, q: &mut Queue<M>, published: &mut u32) {
        if *published != q.prod {
            // The entries are in memory before PROD moves. A release fence
            // is what the SMMU needs: the queue is normal memory written
            // before the register, as Linux's `dma_wmb()` orders it (no
            // instruction on x86, whose stores stay in order; `dmb` on Arm).
            core::sync::atomic::fence(Ordering::Release);
            self.mmio.write32(reg::CMDQ_PROD, q.prod);
            *published = q.prod;
        }
    }

    /// Polls CMDQ_CONS until `done`, skipping refused commands and noting
    /// global errors in `failed`.
    fn wait(
        &self,
        q: &mut Queue<M>,
        failed: &mut bool,
        done: impl Fn(&Queue<M>) -> bool,
    ) -> Result<(), Errno> {
        for _ in 0..self.cfg.poll_limit.max(1) {
            let cons = self.mmio.read32(reg::CMDQ_CONS);
            q.cons = cons & q.mask();
            if done(q) {
                return Ok(());
            }
            let active = self.gerror_active();
            if active & GERROR_CMDQ_ERR != 0 {
                // The SMMU stopped at CONS: replace the command with a
                // CMD_SYNC and acknowledge, so the queue moves on.
                self.stats.cmdq_errors.fetch_add(1, Ordering::Relaxed);
                let slot = q.slot(q.cons);
                let nop = ste::sync(None);
                q.region.write(slot, nop[0]);
                q.region.write(slot + 1, nop[1]);
                core::sync::atomic::fence(Ordering::Release);
                self.ack_gerror(GERROR_CMDQ_ERR);
                *failed = true;
                continue;
            }
            if active & !GERROR_CMDQ_ERR != 0 {
                self.handle_gerror();
                *failed = true;
                if active & GERROR_SFM_ERR != 0 {
                    return Err(Errno::EIO);
                }
            }
            core::hint::spin_loop();
        }
        Err(Errno::ETIMEDOUT)
    }

    fn gerror_active(&self) -> u32 {
        (self.mmio.read32(reg::GERROR) ^ self.gerrorn.load(Ordering::Relaxed)) & GERROR_MASK
    }

    fn ack_gerror(&self, bits: u32) {
        let n = self.gerrorn.fetch_xor(bits, Ordering::Relaxed) ^ bits;
        self.mmio.write32(reg::GERRORN, n);
    }

    /// Acknowledges global errors other than command errors (those belong
    /// to whoever holds the command queue).
    fn handle_gerror(&self) -> u32 {
        let active = self.gerror_active() & !GERROR_CMDQ_ERR;
        if active != 0 {
            self.stats.gerrors.fetch_add(1, Ordering::Relaxed);
            self.ack_gerror(active);
        }
        active
    }

    fn drain_events(&self) -> Vec<SmmuEvent> {
        let mut q = self.evtq.lock();
        let prod = self.mmio.read32(reg::EVTQ_PROD);
        let mask = q.mask();
        let mut out = Vec::new();
        while q.cons & mask != prod & mask {
            let slot = q.slot(q.cons) * 2;
            let w = [
                q.region.read(slot),
                q.region.read(slot + 1),
                q.region.read(slot + 2),
                q.region.read(slot + 3),
            ];
            out.push(SmmuEvent::decode(w));
            q.cons = q.next(q.cons);
        }
        // Acknowledge an overflow by copying OVFLG into OVACKFLG.
        if (prod ^ q.prod) & Q_OVF != 0 {
            self.stats.evtq_overflows.fetch_add(1, Ordering::Relaxed);
            q.prod = prod & Q_OVF;
        }
        self.mmio
            .write32(reg::EVTQ_CONS, (q.cons & mask) | (prod & Q_OVF));
        drop(q);
        self.stats
            .events
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let mut recent = self.recent.lock();
        for ev in &out {
            if recent.len() == EVENT_LOG {
                recent.pop_front();
            }
            recent.push_back(*ev);
        }
        out
    }
}

impl<R: Mmio + 'static, M: TableMemory + 'static> IommuOps for Smmuv3<R, M> {
    fn name(&self) -> &str {
        "arm-smmu-v3"
    }

    /// A device no SMMU translates (no id, or none the firmware maps to
    /// an SMMU) is not translated: it gets no group.
    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        if dev.stream_ids().is_empty() {
            return Ok(()); // not behind an SMMU
        }
        let (unit, sids) = match self.inner.streams_of(dev) {
            Err(Errno::ENODEV) => return Ok(()),
            r => r?,
        };
        // A stream id the stream table cannot hold (Linux: ERANGE).
        let log2 = unit.strtab.lock().log2();
        if sids.iter().any(|&s| u64::from(s) >> log2 != 0) {
            return Err(Errno::ERANGE);
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
            DomainType::Identity => DomainKind::Identity,
            _ => DomainKind::paging(&self.inner)?,
        };
        Ok(alloc::boxed::Box::new(Smmuv3Domain::new(
            Arc::downgrade(&self.inner),
            kind,
        )))
    }

    /// Flags as Linux's SMMUv3 driver takes them: none (a domain of the
    /// usual stage) or `NEST_PARENT` (a stage-2 domain, where every SMMU
    /// has both stages). Dirty tracking, PASID domains and driver data
    /// are `EOPNOTSUPP`: this driver drives neither dirty bits nor
    /// substreams.
    fn domain_alloc_paging_flags(
        &self,
        _dev: &Arc<Device>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<alloc::boxed::Box<dyn DomainOps>, Errno> {
        if data.is_some() {
            return Err(Errno::EOPNOTSUPP);
        }
        let hw = Arc::downgrade(&self.inner);
        if flags.is_empty() {
            return Ok(alloc::boxed::Box::new(Smmuv3Domain::new(
                hw,
                DomainKind::paging(&self.inner)?,
            )));
        }
        if flags != PagingFlags::NEST_PARENT || !self.inner.nesting() {
            return Err(Errno::EOPNOTSUPP);
        }
        let kind = DomainKind::paging_at(&self.inner, Stage::S2)?;
        Ok(alloc::boxed::Box::new(Smmuv3Domain::nest_parent(hw, kind)))
    }

    /// `IOMMU_HW_INFO_TYPE_ARM_SMMUV3` (2), for the default type too:
    /// `struct iommu_hw_info_arm_smmuv3` with the device's SMMU's IDR0-5,
    /// IIDR and AIDR as the registers read, as Linux's `arm_smmu_hw_info`.
    fn hw_info(&self, dev: &Device, ty: u32) -> Result<Option<(u32, Vec<u8>)>, Errno> {
        const ARM_SMMUV3: u32 = 2;
        if ty != 0 && ty != ARM_SMMUV3 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (unit, _) = self.inner.streams_of(dev)?;
        let mut words = [0u32; 10]; // flags, reserved, idr[6], iidr, aidr
        for (i, w) in words[2..8].iter_mut().enumerate() {
            *w = unit.mmio.read32(reg::IDR0 + 4 * i as u64);
        }
        words[8] = unit.mmio.read32(reg::IIDR);
        words[9] = unit.mmio.read32(reg::AIDR);
        let bytes = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(Some((ARM_SMMUV3, bytes)))
    }

    /// A vSMMU (`IOMMU_VIOMMU_TYPE_ARM_SMMUV3`) over a nest parent, on
    /// `dev`'s SMMU; the parent is bound to that SMMU if it was not yet.
    fn viommu_alloc(
        &self,
        dev: &Arc<Device>,
        parent: &Domain,
        ty: u32,
        _data: Option<&UserData<'_>>,
    ) -> Result<alloc::boxed::Box<dyn ViommuOps>, Errno> {
        if ty != crate::nested::VIOMMU_TYPE_ARM_SMMUV3 || !self.inner.nesting() {
            return Err(Errno::EOPNOTSUPP);
        }
        let (unit, _) = self.inner.streams_of(dev)?;
        let s2 = Smmuv3Domain::<R, M>::of(parent)
            .filter(|d| d.is_nest_parent())
            .ok_or(Errno::EINVAL)?;
        let vmid = s2.vmid().ok_or(Errno::EINVAL)?;
        s2.bind(unit.index)?;
        Ok(alloc::boxed::Box::new(crate::nested::Vsmmu {
            hw: Arc::downgrade(&self.inner),
            smmu: unit.index,
            vmid,
        }))
    }

    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        iommu_core::resv_regions_with_sw_msi(dev, self.inner.cfg.sw_msi)
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.inner
            .format(self.inner.paging_stage())
            .map(|f| iommu_pgtable::Format::geometry(&f).pgsize_bitmap())
            .unwrap_or(0)
    }

    fn capable(&self, cap: Capability) -> bool {
        match cap {
            Capability::CacheCoherency => self.inner.units.iter().all(|u| u.caps.coherent),
            Capability::NoExec | Capability::DeferredFlush => true,
            Capability::IntrRemap => false,
        }
    }
}
