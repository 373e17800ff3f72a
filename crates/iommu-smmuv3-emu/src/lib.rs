//! An emulated Arm SMMUv3 (Arm IHI 0070).
//!
//! [`Smmuv3`] is the hardware a driver sees: a register file reached with
//! 32- and 64-bit MMIO accesses, and behind it a translation unit that
//! reads the stream table, context descriptors, command queue and page
//! tables out of simulated physical memory (rust-vmm's vm-memory) and
//! writes event records and MSIs back into it. It never sees a driver's
//! Rust objects: a driver bug shows up as a wrong translation, a stale TLB
//! entry, an event or a command error, exactly as on silicon.
//!
//! What it implements: stage 1, stage 2 and nested translation through
//! AArch64 LPAE tables (4, 16 and 64 KiB granules) walked with
//! `iommu-pgtable`'s [`walk_root`]; linear and
//! two-level stream tables; a configuration cache and a TLB that only
//! `CFGI_*` and `TLBI_*` commands empty; the command queue with
//! `CERROR_ILL`/`CERROR_ABT`; `CMD_SYNC` with MSI completion; the event
//! queue with overflow; `GERROR`/`GERRORN`; `GBPA`. Devices call
//! [`Smmuv3::dma`] (or [`dma_read`](Smmuv3::dma_read) /
//! [`dma_write`](Smmuv3::dma_write)) with their stream id.
//!
//! Not implemented, and reported as absent in the ID registers:
//! substreams (`SSIDSIZE` = 0), PRI, ATS, stalling, hardware access and
//! dirty flags, AArch32 tables, big-endian tables, `TTB1`. Commands run
//! when `CMDQ_PROD` is written, so a `CMD_SYNC` has completed by the time
//! the write returns; [`Smmuv3::pause_commands`] holds them back to model
//! a slow or wedged SMMU.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod cmd;
mod config;
mod event;
pub mod regs;
#[cfg(feature = "test-utils")]
pub mod testing;
mod tlb;

pub use cmd::{Command, Range};
pub use event::{Event, EventId, FaultClass};

use config::{StageWalk, StreamConfig, StreamTable};
use iommu_pgtable::lpae::{Granule, Lpae};
use iommu_pgtable::GuestWindow;
use iommu_pgtable::{walk_root, PhysRead, WalkFault, Walked};
use iommu_types::{Iova, PhysAddr};
use regs::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tlb::{Tag, Tlb, TlbEntry};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// What this SMMU implements; the ID registers report exactly this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage 1 (`IDR0.S1P`).
    pub stage1: bool,
    /// Stage 2 (`IDR0.S2P`).
    pub stage2: bool,
    /// Two-level stream tables (`IDR0.ST_LEVEL`).
    pub two_level: bool,
    /// Stream id bits (`IDR1.SIDSIZE`), at most 32.
    pub sid_bits: u32,
    /// log2 of the largest command queue (`IDR1.CMDQS`), at most 19.
    pub cmdq_bits: u32,
    /// log2 of the largest event queue (`IDR1.EVTQS`), at most 19.
    pub evtq_bits: u32,
    /// 16-bit ASIDs (`IDR0.ASID16`); 8-bit otherwise.
    pub asid16: bool,
    /// 16-bit VMIDs (`IDR0.VMID16`); 8-bit otherwise.
    pub vmid16: bool,
    /// Range invalidation (`IDR3.RIL`).
    pub range_inv: bool,
    /// MSIs (`IDR0.MSI`), used for `CMD_SYNC` completion here.
    pub msi: bool,
    /// Output address size in bits (`IDR5.OAS`): 32, 36, 40, 42, 44, 48 or 52.
    pub oas: u32,
    /// Translation granules (`IDR5.GRAN*`).
    pub granules: Vec<Granule>,
    /// TLB entries held before the TLB starts evicting.
    pub tlb_entries: usize,
    /// Cached stream configurations held before the cache starts evicting.
    pub config_entries: usize,
    /// A write a cached stage-2-only translation refuses records
    /// F_PERMISSION (with S2 set), as the architecture asks. QEMU 10
    /// attributes it to stage 1, whose fault recording a stage-2-only
    /// stream does not have, and records nothing (walked afresh, the same
    /// write is recorded); [`Features::qemu`] clears it.
    pub cached_s2_permission_events: bool,
    /// A leaf a walk found but whose permissions refuse the access is
    /// cached all the same (the architecture lets a TLB hold it); QEMU 10
    /// caches only leaves that allowed the access.
    pub cache_refused_leaves: bool,
}

impl Default for Features {
    /// Both stages, two-level stream tables, 16-bit stream ids, ASIDs and
    /// VMIDs, range invalidation, MSI, a 48-bit OAS and every granule.
    fn default() -> Self {
        Features {
            stage1: true,
            stage2: true,
            two_level: true,
            sid_bits: 16,
            cmdq_bits: 12,
            evtq_bits: 12,
            asid16: true,
            vmid16: true,
            range_inv: true,
            msi: true,
            oas: 48,
            granules: vec![Granule::G4K, Granule::G16K, Granule::G64K],
            tlb_entries: 4096,
            config_entries: 1024,
            cached_s2_permission_events: true,
            cache_refused_leaves: true,
        }
    }
}

/// Why [`Smmuv3::new`] refused a feature set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// Neither stage is implemented.
    #[error("an SMMU must implement stage 1, stage 2 or both")]
    NoStage,
    /// A size the ID registers cannot express.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
}

impl Features {
    /// QEMU 10's SMMUv3 on `virt` as its ID registers read: both stages,
    /// two-level stream tables, 16-bit stream ids and ASIDs, 8-bit VMIDs,
    /// range invalidation, no MSI, a 44-bit OAS, 4 and 64 KiB granules;
    /// its silence on a cached stage-2 permission fault, and no caching of
    /// a leaf that refused the access.
    pub fn qemu() -> Features {
        Features {
            oas: 44,
            msi: false,
            vmid16: false,
            granules: vec![Granule::G4K, Granule::G64K],
            cached_s2_permission_events: false,
            cache_refused_leaves: false,
            ..Features::default()
        }
    }

    fn idr_oas(&self) -> Option<u32> {
        Some(match self.oas {
            32 => 0,
            36 => 1,
            40 => 2,
            42 => 3,
            44 => 4,
            48 => 5,
            52 => 6,
            _ => return None,
        })
    }

    fn cmd(&self) -> cmd::CmdFeatures {
        cmd::CmdFeatures {
            stage1: self.stage1,
            stage2: self.stage2,
            range_inv: self.range_inv,
            msi: self.msi,
        }
    }

    /// `IDR0`..`IDR5`.
    fn idrs(&self) -> [u32; 6] {
        let mut idr0 = 0;
        idr0 |= u32::from(self.stage2);
        idr0 |= u32::from(self.stage1) << 1;
        idr0 |= 2 << 2; // TTF: AArch64 tables only
        idr0 |= 1 << 4; // COHACC
        idr0 |= u32::from(self.asid16) << 12;
        idr0 |= u32::from(self.msi) << 13;
        idr0 |= u32::from(self.vmid16 && self.stage2) << 18;
        idr0 |= 2 << 21; // TTENDIAN: little-endian only
        idr0 |= 1 << 26; // TERM_MODEL: terminate, never stall
        idr0 |= u32::from(self.two_level) << 27;
        let idr1 = (self.cmdq_bits << 21) | (self.evtq_bits << 16) | self.sid_bits;
        let idr3 = u32::from(self.range_inv) << 10;
        let mut idr5 = self.idr_oas().unwrap_or(5);
        for (g, bit) in [(Granule::G4K, 4), (Granule::G16K, 5), (Granule::G64K, 6)] {
            if self.granules.contains(&g) {
                idr5 |= 1 << bit;
            }
        }
        [idr0, idr1, 0, idr3, 0, idr5]
    }
}

/// A stage's table walk: an LPAE format and the root the driver gave.
#[derive(Clone, Debug)]
pub(crate) struct Walker {
    fmt: Lpae,
    root: u64,
}

impl Walker {
    pub(crate) fn new(fmt: Lpae, root: u64) -> Self {
        Walker { fmt, root }
    }

    pub(crate) fn translate(&self, va: u64, mem: &impl PhysRead) -> Result<Walked, WalkFault> {
        walk_root(&self.fmt, PhysAddr::new(self.root), 0, Iova::new(va), mem)
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

/// A DMA the SMMU did not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// Terminated by configuration or translation; `event` is what the
    /// SMMU recorded (`None` when the configuration records nothing:
    /// abort STEs, `GBPA.ABORT`, faults of contexts with `R` = 0).
    #[error("transaction terminated ({})", event.map_or("no event", |e| e.name()))]
    Terminated {
        /// The event recorded, if any.
        event: Option<EventId>,
        /// The event the fault would have produced, recorded or not.
        fault: Option<EventId>,
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

/// What the SMMU did, for tracing: commands it ran and what it fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwTrace {
    /// A command was consumed from the queue.
    Command(Command),
    /// A command was refused; the queue stopped at it.
    CommandError {
        /// `CMDQ_CONS.ERR`.
        cerror: u32,
        /// The command's index in the queue.
        index: u32,
    },
    /// The STE of a stream was fetched from memory (a configuration-cache miss).
    SteFetch {
        /// Stream.
        sid: u32,
        /// Where.
        addr: u64,
    },
    /// A page-table walk ran (a TLB miss).
    Walk {
        /// Stream.
        sid: u32,
        /// Input address.
        iova: u64,
        /// Descriptors read.
        reads: usize,
    },
    /// An event was written to the event queue.
    Event(Event),
}

/// How the SMMU fails a command, for failure-injection tests
/// ([`Smmuv3::fail_command`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandFailure {
    /// The SMMU stops consuming commands (as with
    /// [`Smmuv3::pause_commands`]): the queue fills, `CMD_SYNC` never completes.
    Stall,
    /// The command is refused with `CERROR_ILL`.
    Illegal,
    /// The SMMU raises these `GERROR` bits and carries on.
    GlobalError(u32),
}

/// Interrupts raised since the last [`Smmuv3::take_interrupts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// Event-queue interrupts (with `IRQ_CTRL.EVTQ_IRQEN`).
    pub evtq: u32,
    /// Global-error interrupts (with `IRQ_CTRL.GERROR_IRQEN`).
    pub gerror: u32,
    /// `CMD_SYNC` completions signalled by the wired interrupt or SEV.
    pub cmd_sync: u32,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands consumed.
    pub commands: u64,
    /// TLB hits.
    pub tlb_hits: u64,
    /// Page-table walks.
    pub walks: u64,
    /// STE fetches.
    pub ste_fetches: u64,
    /// Events written.
    pub events: u64,
    /// Events lost (queue disabled or full).
    pub events_lost: u64,
}

/// A queue's registers.
#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    base: u64,
    prod: u32,
    cons: u32,
}

impl Queue {
    /// log2 of the entries, capped at what the SMMU implements.
    #[inline]
    fn log2(&self, max: u32) -> u32 {
        ((self.base & 0x1f) as u32).min(max)
    }
    #[inline]
    fn addr(&self, index: u32, entry_bytes: u64, max: u32) -> u64 {
        let log2 = self.log2(max);
        let mask = !((entry_bytes << log2).max(32) - 1);
        (self.base & 0x000f_ffff_ffff_ffe0 & mask)
            + u64::from(index & ((1 << log2) - 1)) * entry_bytes
    }
    /// Index plus wrap bit.
    #[inline]
    fn wrap_mask(log2: u32) -> u32 {
        (2 << log2) - 1
    }
    #[inline]
    fn is_empty(&self, log2: u32) -> bool {
        let m = Self::wrap_mask(log2);
        self.prod & m == self.cons & m
    }
    #[inline]
    fn is_full(&self, log2: u32) -> bool {
        let m = Self::wrap_mask(log2);
        (self.prod ^ self.cons) & m == 1 << log2
    }
    #[inline]
    fn next(v: u32, log2: u32) -> u32 {
        let m = Self::wrap_mask(log2);
        (v & !m) | (v.wrapping_add(1) & m)
    }
}

/// Everything software can change, behind one lock.
struct State {
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    gerror_irq_cfg0: u64,
    gerror_irq_cfg1: u32,
    gerror_irq_cfg2: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq: Queue,
    evtq: Queue,
    evtq_irq_cfg0: u64,
    evtq_irq_cfg1: u32,
    evtq_irq_cfg2: u32,
    configs: HashMap<u32, Arc<StreamConfig>, tlb::FxBuild>,
    tlb: Tlb,
    irqs: Interrupts,
    stats: Stats,
    paused: bool,
    /// A failure armed by `fail_command`: commands to let through first.
    armed: Option<(u32, CommandFailure)>,
}

type TraceFn = Box<dyn Fn(&HwTrace) + Send + Sync>;

/// One call's trace records, kept only while a trace is set (so the DMA
/// path allocates nothing otherwise).
struct Traces(Option<Vec<HwTrace>>);

impl Traces {
    /// Inlined, so that without a trace the record is not even built.
    #[inline(always)]
    fn push(&mut self, t: HwTrace) {
        if let Some(v) = &mut self.0 {
            v.push(t);
        }
    }
}

/// The emulated SMMUv3 over guest memory `M`.
pub struct Smmuv3<M: GuestMemoryBackend> {
    mem: Arc<M>,
    /// The same memory, as queues and tables are read from it.
    window: GuestWindow<M>,
    features: Features,
    idr: [u32; 6],
    state: Mutex<State>,
    trace: Mutex<Option<Arc<TraceFn>>>,
    /// Whether a trace is set, read without a lock on every call.
    tracing: AtomicBool,
    /// `GERROR`, changed only under the state lock, read without it: a
    /// driver reads it after every `CMD_SYNC`.
    gerror: AtomicU32,
}

impl<M: GuestMemoryBackend> core::fmt::Debug for Smmuv3<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Smmuv3")
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend> Smmuv3<M> {
    /// An SMMU with `features`, in its reset state (disabled, `GBPA.ABORT`
    /// set so traffic is refused until software enables it), over `mem`.
    ///
    /// # Errors
    /// [`FeatureError`] for a feature set the ID registers cannot describe.
    pub fn new(mem: Arc<M>, features: Features) -> Result<Self, FeatureError> {
        Self::in_window(GuestWindow::new(mem), features)
    }

    /// [`new`](Self::new) over the window's memory: the queues, stream
    /// table, CDs and page tables it reads, and the `CMD_SYNC` MSIs it
    /// writes, inside the window's host mapping skip vm-memory's lookup.
    ///
    /// # Errors
    /// As `new`.
    pub fn in_window(window: GuestWindow<M>, features: Features) -> Result<Self, FeatureError> {
        let mem = window.memory().clone();
        if !features.stage1 && !features.stage2 {
            return Err(FeatureError::NoStage);
        }
        if features.sid_bits > 32 {
            return Err(FeatureError::OutOfRange("sid_bits"));
        }
        if features.cmdq_bits > 19 || features.evtq_bits > 19 {
            return Err(FeatureError::OutOfRange("queue size"));
        }
        if features.idr_oas().is_none() {
            return Err(FeatureError::OutOfRange("oas"));
        }
        if features.granules.is_empty() {
            return Err(FeatureError::OutOfRange("granules"));
        }
        let idr = features.idrs();
        let state = State {
            cr0: 0,
            cr1: 0,
            cr2: 0,
            gbpa: GBPA_ABORT,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            gerror_irq_cfg0: 0,
            gerror_irq_cfg1: 0,
            gerror_irq_cfg2: 0,
            strtab_base: 0,
            strtab_cfg: 0,
            cmdq: Queue::default(),
            evtq: Queue::default(),
            evtq_irq_cfg0: 0,
            evtq_irq_cfg1: 0,
            evtq_irq_cfg2: 0,
            configs: HashMap::default(),
            tlb: Tlb::new(features.tlb_entries),
            irqs: Interrupts::default(),
            stats: Stats::default(),
            paused: false,
            armed: None,
        };
        Ok(Smmuv3 {
            mem,
            window,
            idr,
            features,
            state: Mutex::new(state),
            trace: Mutex::new(None),
            tracing: AtomicBool::new(false),
            gerror: AtomicU32::new(0),
        })
    }

    /// The features the SMMU was built with.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The simulated memory.
    pub fn memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// Calls `f` with everything the SMMU does from now on (`None` stops).
    pub fn set_trace(&self, f: Option<TraceFn>) {
        self.tracing.store(f.is_some(), Ordering::Relaxed);
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = f.map(Arc::new);
    }

    /// Where this call's trace records go: nowhere unless a trace is set.
    fn traces(&self) -> Traces {
        Traces(self.tracing.load(Ordering::Relaxed).then(Vec::new))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, t: HwTrace) {
        let f = self.trace.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(f) = f {
            f(&t);
        }
    }

    fn reader(&self) -> &GuestWindow<M> {
        &self.window
    }

    /// Counters since reset.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// TLB entries held now.
    pub fn tlb_entries(&self) -> usize {
        self.lock().tlb.len()
    }

    /// Interrupts raised since the last call, and clears them.
    pub fn take_interrupts(&self) -> Interrupts {
        core::mem::take(&mut self.lock().irqs)
    }

    /// Holds back (or, with `false`, resumes) command processing: writes
    /// to `CMDQ_PROD` are accepted but nothing is consumed, as on an SMMU
    /// that has stopped responding. For failure-injection tests.
    pub fn pause_commands(&self, paused: bool) {
        let mut s = self.lock();
        s.paused = paused;
        if !paused {
            let traces = self.run_commands(&mut s);
            drop(s);
            for t in traces.0.into_iter().flatten() {
                self.emit(t);
            }
        }
    }

    /// Lets `after` more commands through, then fails the next one as
    /// `how` says (once). For failure-injection tests.
    pub fn fail_command(&self, after: u32, how: CommandFailure) {
        self.lock().armed = Some((after, how));
    }

    /// Whether a failure armed by [`fail_command`](Self::fail_command) has
    /// not fired yet.
    pub fn command_failure_pending(&self) -> bool {
        self.lock().armed.is_some()
    }

    /// Raises global errors `bits` (a subset of [`GERROR_MASK`]) as the
    /// SMMU would on an internal failure. For failure-injection tests.
    pub fn raise_gerror(&self, bits: u32) {
        let mut s = self.lock();
        self.set_gerror(&mut s, bits & GERROR_MASK);
    }

    fn set_gerror(&self, s: &mut State, bits: u32) {
        // Only errors not already active toggle (IHI 0070 7.5).
        let active = s.gerror ^ s.gerrorn;
        let new = bits & !active;
        if new != 0 {
            s.gerror ^= new;
            self.gerror.store(s.gerror, Ordering::Release);
            if s.irq_ctrl & IRQ_CTRL_GERROR_IRQEN != 0 {
                s.irqs.gerror += 1;
            }
        }
    }

    /// A 32-bit register read. Unimplemented offsets read as zero.
    pub fn read32(&self, offset: u64) -> u32 {
        if offset & 3 != 0 || offset >= MMIO_SIZE {
            return 0;
        }
        if let Some(i) = (offset <= IDR5).then_some(offset as usize / 4) {
            return self.idr[i];
        }
        if offset == GERROR {
            return self.gerror.load(Ordering::Acquire);
        }
        let s = self.lock();
        match offset {
            AIDR => 0,
            CR0 | CR0ACK => s.cr0,
            CR1 => s.cr1,
            CR2 => s.cr2,
            GBPA => s.gbpa,
            IRQ_CTRL | IRQ_CTRLACK => s.irq_ctrl,
            GERRORN => s.gerrorn,
            GERROR_IRQ_CFG1 => s.gerror_irq_cfg1,
            GERROR_IRQ_CFG2 => s.gerror_irq_cfg2,
            STRTAB_BASE_CFG => s.strtab_cfg,
            CMDQ_PROD => s.cmdq.prod,
            CMDQ_CONS => s.cmdq.cons,
            EVTQ_PROD => s.evtq.prod,
            EVTQ_CONS => s.evtq.cons,
            EVTQ_IRQ_CFG1 => s.evtq_irq_cfg1,
            EVTQ_IRQ_CFG2 => s.evtq_irq_cfg2,
            _ => match offset & !7 {
                o @ (STRTAB_BASE | CMDQ_BASE | EVTQ_BASE | GERROR_IRQ_CFG0 | EVTQ_IRQ_CFG0) => {
                    let v = Self::reg64(&s, o);
                    (v >> ((offset & 4) * 8)) as u32
                }
                _ => 0,
            },
        }
    }

    fn reg64(s: &State, offset: u64) -> u64 {
        match offset {
            STRTAB_BASE => s.strtab_base,
            CMDQ_BASE => s.cmdq.base,
            EVTQ_BASE => s.evtq.base,
            GERROR_IRQ_CFG0 => s.gerror_irq_cfg0,
            EVTQ_IRQ_CFG0 => s.evtq_irq_cfg0,
            _ => 0,
        }
    }

    /// A 64-bit register read; for 32-bit registers, two reads.
    pub fn read64(&self, offset: u64) -> u64 {
        if offset & 7 != 0 || offset >= MMIO_SIZE {
            return 0;
        }
        let s = self.lock();
        match offset {
            STRTAB_BASE | CMDQ_BASE | EVTQ_BASE | GERROR_IRQ_CFG0 | EVTQ_IRQ_CFG0 => {
                Self::reg64(&s, offset)
            }
            _ => {
                drop(s);
                u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
            }
        }
    }

    /// A 64-bit register write; for 32-bit registers, two writes.
    pub fn write64(&self, offset: u64, value: u64) {
        if offset & 7 != 0 || offset >= MMIO_SIZE {
            return;
        }
        match offset {
            STRTAB_BASE | CMDQ_BASE | EVTQ_BASE | GERROR_IRQ_CFG0 | EVTQ_IRQ_CFG0 => {
                let mut s = self.lock();
                Self::set_reg64(&mut s, offset, value);
            }
            _ => {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
        }
    }

    fn set_reg64(s: &mut State, offset: u64, value: u64) {
        // Base registers are read-only while the unit using them is enabled
        // (IHI 0070 6.3.23-6.3.26: writes are IGNORED then).
        match offset {
            STRTAB_BASE if s.cr0 & CR0_SMMUEN == 0 => {
                s.strtab_base = value & ((1 << 62) | 0x000f_ffff_ffff_ffc0)
            }
            CMDQ_BASE if s.cr0 & CR0_CMDQEN == 0 => {
                s.cmdq.base = value & ((1 << 62) | 0x000f_ffff_ffff_ffff)
            }
            EVTQ_BASE if s.cr0 & CR0_EVTQEN == 0 => {
                s.evtq.base = value & ((1 << 62) | 0x000f_ffff_ffff_ffff)
            }
            GERROR_IRQ_CFG0 => s.gerror_irq_cfg0 = value & 0x000f_ffff_ffff_fffc,
            EVTQ_IRQ_CFG0 => s.evtq_irq_cfg0 = value & 0x000f_ffff_ffff_fffc,
            _ => {}
        }
    }

    /// A 32-bit register write. Read-only and unimplemented offsets ignore it.
    pub fn write32(&self, offset: u64, value: u32) {
        if offset & 3 != 0 || offset >= MMIO_SIZE {
            return;
        }
        let mut s = self.lock();
        let mut traces = self.traces();
        match offset {
            CR0 => {
                let old = s.cr0;
                s.cr0 = value & CR0_MASK;
                // Turning the command queue on runs what is already queued.
                if old & CR0_CMDQEN == 0 && s.cr0 & CR0_CMDQEN != 0 {
                    traces = self.run_commands(&mut s);
                }
            }
            CR1 if s.cr0 & (CR0_SMMUEN | CR0_CMDQEN | CR0_EVTQEN) == 0 => s.cr1 = value & 0xfff,
            CR2 if s.cr0 & CR0_SMMUEN == 0 => s.cr2 = value & 0x7,
            // A new GBPA takes effect at once; UPDATE reads back as done.
            GBPA if value & GBPA_UPDATE != 0 => s.gbpa = value & !GBPA_UPDATE & 0x001f_3f00,
            IRQ_CTRL => s.irq_ctrl = value & (IRQ_CTRL_GERROR_IRQEN | IRQ_CTRL_EVTQ_IRQEN),
            GERRORN => {
                let was_cmdq_err = (s.gerror ^ s.gerrorn) & GERROR_CMDQ_ERR != 0;
                s.gerrorn = value & GERROR_MASK;
                // Acknowledging a command error restarts the queue at CONS,
                // which software may have rewritten (IHI 0070 7.1).
                if was_cmdq_err && (s.gerror ^ s.gerrorn) & GERROR_CMDQ_ERR == 0 {
                    s.cmdq.cons &= !(0x7f << 24);
                    traces = self.run_commands(&mut s);
                }
            }
            GERROR_IRQ_CFG1 => s.gerror_irq_cfg1 = value,
            GERROR_IRQ_CFG2 => s.gerror_irq_cfg2 = value & 0x3f,
            STRTAB_BASE_CFG if s.cr0 & CR0_SMMUEN == 0 => s.strtab_cfg = value & 0x3_07ff,
            CMDQ_PROD => {
                s.cmdq.prod = value & Queue::wrap_mask(self.cmdq_log2(&s));
                traces = self.run_commands(&mut s);
            }
            CMDQ_CONS if s.cr0 & CR0_CMDQEN == 0 => {
                s.cmdq.cons = value & Queue::wrap_mask(self.cmdq_log2(&s))
            }
            EVTQ_PROD if s.cr0 & CR0_EVTQEN == 0 => {
                s.evtq.prod = value & (Queue::wrap_mask(self.evtq_log2(&s)) | Q_OVF)
            }
            EVTQ_CONS => s.evtq.cons = value & (Queue::wrap_mask(self.evtq_log2(&s)) | Q_OVF),
            EVTQ_IRQ_CFG1 => s.evtq_irq_cfg1 = value,
            EVTQ_IRQ_CFG2 => s.evtq_irq_cfg2 = value & 0x3f,
            _ => {
                let o = offset & !7;
                if matches!(
                    o,
                    STRTAB_BASE | CMDQ_BASE | EVTQ_BASE | GERROR_IRQ_CFG0 | EVTQ_IRQ_CFG0
                ) {
                    let old = Self::reg64(&s, o);
                    let shift = (offset & 4) * 8;
                    let v = (old & !(0xffff_ffffu64 << shift)) | (u64::from(value) << shift);
                    Self::set_reg64(&mut s, o, v);
                }
            }
        }
        drop(s);
        for t in traces.0.into_iter().flatten() {
            self.emit(t);
        }
    }

    fn cmdq_log2(&self, s: &State) -> u32 {
        s.cmdq.log2(self.features.cmdq_bits)
    }

    fn evtq_log2(&self, s: &State) -> u32 {
        s.evtq.log2(self.features.evtq_bits)
    }

    /// Consumes commands from CONS to PROD, stopping at the first error.
    fn run_commands(&self, s: &mut State) -> Traces {
        let mut traces = self.traces();
        if s.cr0 & CR0_CMDQEN == 0 || s.paused || (s.gerror ^ s.gerrorn) & GERROR_CMDQ_ERR != 0 {
            return traces;
        }
        let log2 = self.cmdq_log2(s);
        let feat = self.features.cmd();
        // The queue does not move while its commands run: entry 0's
        // address, once.
        let base = s.cmdq.addr(0, 16, self.features.cmdq_bits);
        while !s.cmdq.is_empty(log2) {
            let index = s.cmdq.cons & ((1 << log2) - 1);
            let addr = base + u64::from(index) * 16;
            let words = (
                self.reader().read_u64(PhysAddr::new(addr)),
                self.reader().read_u64(PhysAddr::new(addr + 8)),
            );
            let mut result = match words {
                (Some(dw0), Some(dw1)) => Command::decode(dw0, dw1, feat).map_err(|_| CERROR_ILL),
                _ => Err(CERROR_ABT),
            };
            match s.armed {
                Some((0, how)) => {
                    s.armed = None;
                    match how {
                        CommandFailure::Stall => {
                            s.paused = true;
                            break;
                        }
                        CommandFailure::Illegal => result = Err(CERROR_ILL),
                        CommandFailure::GlobalError(bits) => self.set_gerror(s, bits & GERROR_MASK),
                    }
                }
                Some((n, how)) => s.armed = Some((n - 1, how)),
                None => {}
            }
            match result {
                Ok(cmd) => {
                    self.execute(s, cmd);
                    s.stats.commands += 1;
                    traces.push(HwTrace::Command(cmd));
                    s.cmdq.cons = Queue::next(s.cmdq.cons, log2);
                }
                Err(cerror) => {
                    s.cmdq.cons = (s.cmdq.cons & Queue::wrap_mask(log2)) | (cerror << 24);
                    self.set_gerror(s, GERROR_CMDQ_ERR);
                    traces.push(HwTrace::CommandError { cerror, index });
                    break;
                }
            }
        }
        traces
    }

    fn execute(&self, s: &mut State, cmd: Command) {
        match cmd {
            Command::Prefetch => {}
            Command::CfgiSte { sid } | Command::CfgiCd { sid } | Command::CfgiCdAll { sid } => {
                s.configs.remove(&sid);
            }
            Command::CfgiSteRange { sid, range } => {
                let span = range + 1;
                if span >= 32 {
                    s.configs.clear();
                } else {
                    let first = sid & !((1u32 << span) - 1);
                    let last = first | ((1u32 << span) - 1);
                    s.configs.retain(|&k, _| k < first || k > last);
                }
            }
            Command::TlbiNhAll { vmid } => s
                .tlb
                .retain(|t, _, _, _| !(t.vmid == vmid && t.asid.is_some())),
            Command::TlbiNhAsid { vmid, asid } => s
                .tlb
                .retain(|t, _, _, _| !(t.vmid == vmid && t.asid == Some(asid))),
            Command::TlbiNhVa { vmid, asid, range } => s.tlb.invalidate_range(
                |t| t.vmid == vmid && t.asid.is_some() && (asid.is_none() || t.asid == asid),
                range.addr,
                range.len,
            ),
            Command::TlbiS12Vmall { vmid } => s.tlb.retain(|t, _, _, _| t.vmid != vmid),
            Command::TlbiS2Ipa { vmid, range } => s.tlb.invalidate_ipa(vmid, range.addr, range.len),
            Command::TlbiNsnhAll => s.tlb.clear(),
            Command::Sync {
                cs,
                msi_data,
                msi_addr,
            } => {
                if cs == 1 && msi_addr != 0 {
                    let ok = self.window.write_u32(msi_addr, msi_data);
                    if !ok {
                        self.set_gerror(s, GERROR_MSI_CMDQ_ABT_ERR);
                    }
                } else if cs != 0 {
                    s.irqs.cmd_sync += 1;
                }
            }
        }
    }

    /// Writes `event` to the event queue, or counts it lost.
    fn record(&self, s: &mut State, event: Event) -> bool {
        if s.cr0 & CR0_EVTQEN == 0 || (s.gerror ^ s.gerrorn) & GERROR_EVTQ_ABT_ERR != 0 {
            s.stats.events_lost += 1;
            return false;
        }
        let log2 = self.evtq_log2(s);
        if s.evtq.is_full(log2) {
            // Overflow: the record is lost and PROD.OVFLG toggles, unless an
            // overflow is already pending acknowledgement.
            if (s.evtq.prod ^ s.evtq.cons) & Q_OVF == 0 {
                s.evtq.prod ^= Q_OVF;
            }
            s.stats.events_lost += 1;
            return false;
        }
        let index = s.evtq.prod & ((1 << log2) - 1);
        let addr = s.evtq.addr(index, 32, self.features.evtq_bits);
        let mut bytes = [0u8; 32];
        for (i, w) in event.encode().iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        if self.mem.write_slice(&bytes, GuestAddress(addr)).is_err() {
            self.set_gerror(s, GERROR_EVTQ_ABT_ERR);
            s.stats.events_lost += 1;
            return false;
        }
        s.evtq.prod = Queue::next(s.evtq.prod, log2);
        s.stats.events += 1;
        if s.irq_ctrl & IRQ_CTRL_EVTQ_IRQEN != 0 {
            s.irqs.evtq += 1;
        }
        true
    }

    /// The configuration of stream `sid`, from the cache or from memory.
    fn stream_config(
        &self,
        s: &mut State,
        sid: u32,
        traces: &mut Traces,
    ) -> Result<Arc<StreamConfig>, config::ConfigError> {
        if let Some(c) = s.configs.get(&sid) {
            return Ok(c.clone());
        }
        let table = StreamTable {
            base: s.strtab_base,
            cfg: s.strtab_cfg,
        };
        let addr = table.ste_addr(sid, &self.features, &self.reader())?;
        s.stats.ste_fetches += 1;
        traces.push(HwTrace::SteFetch { sid, addr });
        let cfg = Arc::new(config::decode_ste(addr, &self.features, &self.reader())?);
        if s.configs.len() >= self.features.config_entries.max(1) {
            s.configs.clear();
        }
        s.configs.insert(sid, cfg.clone());
        Ok(cfg)
    }

    /// Translates one access of stream `sid` at `iova`: the output address,
    /// and the bytes from it that the same translation covers.
    ///
    /// # Errors
    /// [`DmaError::Terminated`] when the SMMU refuses the access; the
    /// event, if the configuration records one, is in the event queue.
    pub fn translate(&self, sid: u32, iova: u64, access: Access) -> Result<Segment, DmaError> {
        let mut s = self.lock();
        let mut traces = self.traces();
        let r = self.translate_locked(&mut s, sid, iova, access, &mut traces);
        drop(s);
        for t in traces.0.into_iter().flatten() {
            self.emit(t);
        }
        r
    }

    fn translate_locked(
        &self,
        s: &mut State,
        sid: u32,
        iova: u64,
        access: Access,
        traces: &mut Traces,
    ) -> Result<Segment, DmaError> {
        if s.cr0 & CR0_SMMUEN == 0 {
            return if s.gbpa & GBPA_ABORT != 0 {
                Err(DmaError::Terminated {
                    event: None,
                    fault: None,
                })
            } else {
                Ok(bypass(iova))
            };
        }
        let cfg = match self.stream_config(s, sid, traces) {
            Ok(c) => c,
            Err(e) => {
                let mut ev = Event::config(e.id, sid);
                ev.addr = e.addr;
                if e.stage2 {
                    ev.stage2 = true;
                    ev.class = FaultClass::Cd;
                    ev.input_addr = iova;
                    ev.read = access == Access::Read;
                }
                return Err(self.fault(s, ev, e.record, traces));
            }
        };
        let (vmid, s1, s2) = match &*cfg {
            StreamConfig::Abort => {
                return Err(DmaError::Terminated {
                    event: None,
                    fault: None,
                })
            }
            StreamConfig::Bypass => return Ok(bypass(iova)),
            StreamConfig::Translate { vmid, s1, s2 } => (*vmid, s1.as_ref(), s2.as_ref()),
        };
        let tag = Tag {
            vmid,
            asid: s1.map(|w| w.tag),
        };
        let va = match s1 {
            Some(w) if w.tbi => ((iova << 8) as i64 >> 8) as u64,
            _ => iova,
        };
        let write = access == Access::Write;
        if let Some((e, shift)) = s.tlb.lookup(tag, va) {
            s.stats.tlb_hits += 1;
            if (write && !e.write) || (!write && !e.read) {
                let record = s1.or(s2).is_some_and(|w| w.record)
                    && (s1.is_some() || self.features.cached_s2_permission_events);
                let ev = self.fault_event(EventId::Permission, sid, iova, access, s1.is_none(), 0);
                return Err(self.fault(s, ev, record, traces));
            }
            return Ok(segment(e.pa, va, shift));
        }
        s.stats.walks += 1;
        let mem = self.reader();
        let mut reads = 0;
        // Stage 1 (its table addresses are IPAs when stage 2 is on).
        let (ipa, s1_leaf) = match s1 {
            Some(w) => {
                let r = if w.disabled {
                    Err((WalkFault::Translation { level: 0 }, false))
                } else if let Some(s2) = s2 {
                    let nested = Stage2Reader {
                        s2,
                        mem: &mem,
                        fault: std::cell::Cell::new(None),
                    };
                    let r = w.walker.translate(va, &nested);
                    match (r, nested.fault.get()) {
                        (Err(_), Some(f)) => Err((f, true)),
                        (r, _) => r.map_err(|f| (f, false)),
                    }
                } else {
                    w.walker.translate(va, &mem).map_err(|f| (f, false))
                };
                match r {
                    Ok(leaf) => {
                        reads += leaf.reads;
                        (leaf.pa.raw(), Some(leaf))
                    }
                    Err((f, in_s2)) => {
                        let (id, addr) = walk_event(f);
                        let rec = if in_s2 {
                            s2.is_some_and(|w| w.record)
                        } else {
                            w.record
                        };
                        let mut ev = self.fault_event(id, sid, iova, access, in_s2, addr);
                        if in_s2 {
                            ev.class = FaultClass::TableWalk;
                        }
                        traces.push(HwTrace::Walk { sid, iova, reads });
                        return Err(self.fault(s, ev, rec, traces));
                    }
                }
            }
            None => (va, None),
        };
        // Stage 2.
        let (pa, s2_leaf) = match s2 {
            Some(w) => match w.walker.translate(ipa, &mem) {
                Ok(leaf) => {
                    reads += leaf.reads;
                    (leaf.pa.raw(), Some(leaf))
                }
                Err(f) => {
                    let (id, addr) = walk_event(f);
                    let addr = if id == EventId::WalkEabt { addr } else { ipa };
                    let ev = self.fault_event(id, sid, iova, access, true, addr);
                    traces.push(HwTrace::Walk { sid, iova, reads });
                    return Err(self.fault(s, ev, w.record, traces));
                }
            },
            None => (ipa, None),
        };
        traces.push(HwTrace::Walk { sid, iova, reads });
        // Access flag, then permissions, stage 1 first.
        let (s1_r, s1_w) = match &s1_leaf {
            Some(l) => {
                if l.pte & (1 << 10) == 0 {
                    let ev = self.fault_event(EventId::Access, sid, iova, access, false, 0);
                    return Err(self.fault(s, ev, s1.is_some_and(|w| w.record), traces));
                }
                // Unprivileged data access: AP[1] must allow EL0, AP[2] clear for writes.
                let el0 = l.pte & (1 << 6) != 0;
                (el0, el0 && l.pte & (1 << 7) == 0)
            }
            None => (true, true),
        };
        let (s2_r, s2_w) = match &s2_leaf {
            Some(l) => {
                if l.pte & (1 << 10) == 0 {
                    let ev = self.fault_event(EventId::Access, sid, iova, access, true, ipa);
                    return Err(self.fault(s, ev, s2.is_some_and(|w| w.record), traces));
                }
                (l.pte & (1 << 6) != 0, l.pte & (1 << 7) != 0)
            }
            None => (true, true),
        };
        let shift = s1_leaf
            .iter()
            .chain(s2_leaf.iter())
            .map(|l| l.size.trailing_zeros())
            .min()
            .unwrap_or(12);
        let entry = TlbEntry {
            pa: pa & !((1u64 << shift) - 1),
            ipa: ipa & !((1u64 << shift) - 1),
            read: s1_r && s2_r,
            write: s1_w && s2_w,
        };
        let allowed = if write { entry.write } else { entry.read };
        if allowed || self.features.cache_refused_leaves {
            s.tlb.insert(tag, va, shift, entry);
        }
        if !allowed {
            let in_s1 = if write { !s1_w } else { !s1_r };
            let (rec, stage2) = if in_s1 {
                (s1.is_some_and(|w| w.record), false)
            } else {
                (s2.is_some_and(|w| w.record), true)
            };
            let ev = self.fault_event(
                EventId::Permission,
                sid,
                iova,
                access,
                stage2,
                if stage2 { ipa } else { 0 },
            );
            return Err(self.fault(s, ev, rec, traces));
        }
        Ok(segment(entry.pa, va, shift))
    }

    fn fault_event(
        &self,
        id: EventId,
        sid: u32,
        iova: u64,
        access: Access,
        stage2: bool,
        addr: u64,
    ) -> Event {
        Event {
            id,
            sid,
            input_addr: iova,
            read: access == Access::Read,
            stage2,
            class: FaultClass::Input,
            addr,
        }
    }

    fn fault(&self, s: &mut State, ev: Event, record: bool, traces: &mut Traces) -> DmaError {
        // Configuration errors are always recorded; translation-class
        // faults only when the context asks (CD.R / STE.S2R).
        let translation_class = matches!(
            ev.id,
            EventId::Translation | EventId::AddrSize | EventId::Access | EventId::Permission
        );
        let recorded = (!translation_class || record) && self.record(s, ev);
        if recorded {
            traces.push(HwTrace::Event(ev));
        }
        DmaError::Terminated {
            event: recorded.then_some(ev.id),
            fault: Some(ev.id),
        }
    }

    /// A device's DMA of `len` bytes at `iova`: the output segments, in
    /// order. Stops at the first page that does not translate.
    ///
    /// # Errors
    /// As [`translate`](Self::translate).
    pub fn dma(
        &self,
        sid: u32,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Segment>, DmaError> {
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < len {
            let at = iova.wrapping_add(done);
            let seg = self.translate(sid, at, access)?;
            let n = seg.len.min(len - done);
            out.push(Segment { pa: seg.pa, len: n });
            done += n;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes the device's way: through the SMMU.
    ///
    /// # Errors
    /// As [`dma`](Self::dma); [`DmaError::Bus`] when the output is outside memory.
    pub fn dma_read(&self, sid: u32, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
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

    /// Writes `buf` the device's way: through the SMMU.
    ///
    /// # Errors
    /// As [`dma_read`](Self::dma_read).
    pub fn dma_write(&self, sid: u32, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
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

/// A bypassed access: identity, up to the next 4 KiB boundary.
fn bypass(iova: u64) -> Segment {
    segment(iova, iova, 12)
}

/// The output of `va` through a leaf of `1 << shift` bytes at `pa_base`,
/// and the bytes left in the leaf.
fn segment(pa_base: u64, va: u64, shift: u32) -> Segment {
    let off = va & ((1u64 << shift) - 1);
    Segment {
        pa: pa_base | off,
        len: (1u64 << shift) - off,
    }
}

/// The event a walk fault becomes, and its fetch address.
pub(crate) fn walk_event(f: WalkFault) -> (EventId, u64) {
    match f {
        WalkFault::Translation { .. } => (EventId::Translation, 0),
        WalkFault::AddressSize { .. } => (EventId::AddrSize, 0),
        WalkFault::External { addr, .. } => (EventId::WalkEabt, addr.raw()),
    }
}

/// Stage-1 table reads in a nested stream: every table address is an IPA
/// that stage 2 translates first. A stage-2 fault is kept for the event.
struct Stage2Reader<'a, R: PhysRead> {
    s2: &'a StageWalk,
    mem: &'a R,
    fault: std::cell::Cell<Option<WalkFault>>,
}

impl<R: PhysRead> PhysRead for Stage2Reader<'_, R> {
    fn read_u64(&self, ipa: PhysAddr) -> Option<u64> {
        match self.s2.walker.translate(ipa.raw(), self.mem) {
            Ok(w) if w.pte & (1 << 10) != 0 && w.pte & (1 << 6) != 0 => self.mem.read_u64(w.pa),
            Ok(_) => {
                self.fault.set(Some(WalkFault::Translation { level: 0 }));
                None
            }
            Err(f) => {
                self.fault.set(Some(f));
                None
            }
        }
    }
}

/// The register file as a driver reaches it (`iommu-smmuv3`'s driver runs
/// on the emulator through this).
impl<M: GuestMemoryBackend + Send + Sync> iommu_hw::Mmio for Smmuv3<M> {
    fn read32(&self, offset: u64) -> u32 {
        Smmuv3::read32(self, offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        Smmuv3::write32(self, offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        Smmuv3::read64(self, offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        Smmuv3::write64(self, offset, value)
    }
}
