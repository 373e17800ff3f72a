//! The driver and its emulated translation unit.

use iommu_core::{
    Capability, Device, DirtyOps, Domain, DomainGeometry, DomainOps, DomainType, Errno,
    FaultAccess, Group, Iommu, IommuOps, IotlbGather, Iova, PagingFlags, PagingOps, PhysAddr, Prot,
    ReservedRegion, StreamIdGroups, UserData, WedgeReport,
};
use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// Page sizes of LPAE stage 1 with the 4 KiB granule.
pub const PGSIZE_BITMAP: u64 = 0x1000 | 0x20_0000 | 0x4000_0000;
const IAS: u32 = 48;
const OAS: u32 = 48;

/// Table pages one domain may hold by default: 256 MiB of tables, enough
/// to map 128 GiB with 4 KiB pages.
pub const DEFAULT_TABLE_BUDGET: usize = 65_536;

/// Driver options.
#[derive(Clone, Debug)]
pub struct SoftConfig {
    /// A software-managed MSI window reported to every device (`sw-msi`).
    pub sw_msi: Option<(u64, u64)>,
    /// Devices that must use an identity default domain (a quirk list).
    pub identity_devices: Vec<String>,
    /// Most table pages (4 KiB each, root included) one domain's page table
    /// may hold; a map that needs more fails with `ENOMEM` and changes
    /// nothing. `None` lets tables grow until the heap refuses.
    pub table_budget: Option<usize>,
    /// The groups the PCI layer decided (Linux's `pci_device_group`), for
    /// the devices it knows; others are grouped by shared stream ids.
    pub pci: Option<Arc<PciGrouping>>,
}

/// A grouping decided by the PCI layer, by device name (the core's
/// [`GroupKeys`](iommu_core::GroupKeys)).
pub type PciGrouping = iommu_core::GroupKeys;

impl Default for SoftConfig {
    fn default() -> Self {
        Self {
            sw_msi: None,
            identity_devices: Vec::new(),
            table_budget: Some(DEFAULT_TABLE_BUDGET),
            pci: None,
        }
    }
}

/// Direction of a DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// Why a DMA access did not translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The device has no stream id, or its stream has no entry (not attached).
    NoStream,
    /// The stream is attached to a blocking domain.
    Blocked {
        /// What the domain's fault handler returned.
        report: Result<(), Errno>,
    },
    /// Nothing is mapped at the address.
    Translation {
        /// What the domain's fault handler returned.
        report: Result<(), Errno>,
    },
    /// Mapped, but not with the permission the access needs.
    Permission {
        /// What the domain's fault handler returned.
        report: Result<(), Errno>,
    },
    /// Terminated by the stream's configuration without a fault record
    /// (an SMMU's abort STE, or its global bypass set to abort): no handler
    /// hears of it, as on hardware.
    Aborted,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, report) = match self {
            TranslateError::NoStream => return f.write_str("no stream table entry"),
            TranslateError::Aborted => return f.write_str("aborted, nothing recorded"),
            TranslateError::Blocked { report } => ("blocked", report),
            TranslateError::Translation { report } => ("translation fault", report),
            TranslateError::Permission { report } => ("permission fault", report),
        };
        match report {
            Ok(()) => write!(f, "{what} (its domain's fault handler took it)"),
            Err(iommu_core::Errno::ENOSYS) => {
                write!(
                    f,
                    "{what} (its domain has no fault handler: reported, unhandled)"
                )
            }
            Err(e) => write!(
                f,
                "{what} (its domain's fault handler returned {})",
                e.name()
            ),
        }
    }
}

/// An event counter that threads bump without sharing a cache line: each
/// thread adds to its own shard, readers sum them.
#[derive(Default)]
struct Counter([PaddedU64; 8]);

#[derive(Default)]
#[repr(align(128))]
struct PaddedU64(AtomicU64);

std::thread_local! {
    static COUNTER_SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

impl Counter {
    fn add(&self) {
        let i = COUNTER_SHARD.with(|s| *s) % self.0.len();
        self.0[i].0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
struct Stats {
    iotlb_syncs: Counter,
    flush_alls: Counter,
    walks: Counter,
    iotlb_hits: Counter,
}

/// What domains share with the hardware on their hot paths: held strongly
/// by every domain (it holds no domain, so no cycle), so an invalidation
/// costs no reference-count traffic on a line all CPUs share.
#[derive(Default)]
struct TlbShared {
    stats: Stats,
    iotlb: Iotlb,
    /// Invalidations fail while set ([`SoftIommu::set_wedged`]).
    wedged: std::sync::atomic::AtomicBool,
    report: WedgeReport,
}

impl TlbShared {
    /// `Err` while wedged (said once in the log), `Ok` otherwise.
    #[inline]
    fn check_wedged(&self) -> Result<(), Errno> {
        if self.wedged.load(Ordering::Relaxed) {
            self.report.failed("soft-iommu", Errno::ETIMEDOUT);
            return Err(Errno::ETIMEDOUT);
        }
        self.report.completed("soft-iommu");
        Ok(())
    }
}

/// IOTLB page size: entries cache one 4 KiB page each, whatever the leaf size.
const TLB_PAGE_SHIFT: u32 = 12;

/// One cached translation.
#[derive(Clone, Copy)]
struct TlbEntry {
    pa_page: u64,
    prot: Prot,
}

/// The emulated IOTLB: translations cached by [`SoftIommu::translate`] and
/// removed only by invalidation (`iotlb_sync`, `flush_iotlb_all`), so that a
/// missing invalidation shows up as a stale translation, as on hardware.
///
/// The rule it keeps: once an invalidation returns, no translation of the
/// pages it covers can be served from a descriptor it had cleared. Walks
/// run with the lock held, so an invalidation that takes the lock waits for
/// them. An invalidation may skip the lock only when the IOTLB is empty
/// *and* no walk is in flight: a walk announces itself (`walkers`) before it
/// reads any descriptor, and an invalidation looks at `walkers` only after
/// its caller cleared the descriptors, with sequentially consistent
/// ordering on both sides. So either the invalidation sees the walk and
/// waits for it, or the walk starts late enough to read the cleared
/// descriptor.
#[derive(Default)]
struct Iotlb {
    entries: std::sync::Mutex<HashMap<(u64, u64), TlbEntry>>,
    /// Entry count, read without the lock so invalidations of an empty
    /// IOTLB (every one on the map/unmap fast path) cost two loads.
    len: std::sync::atomic::AtomicUsize,
    /// Walks between announcing themselves and publishing what they cached.
    walkers: std::sync::atomic::AtomicUsize,
}

impl Iotlb {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), TlbEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the domain's entries for pages in `[first, last]` (or all of
    /// them with `None`).
    fn invalidate(&self, domain: u64, range: Option<(u64, u64)>) {
        // Orders the caller's descriptor clears before the loads below.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.walkers.load(Ordering::SeqCst) == 0 && self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut map = self.lock();
        match range {
            Some((first, last)) if last - first < 512 => {
                for page in first..=last {
                    map.remove(&(domain, page));
                }
            }
            Some((first, last)) => map.retain(|&(d, p), _| d != domain || p < first || p > last),
            None => map.retain(|&(d, _), _| d != domain),
        }
        self.len.store(map.len(), Ordering::Release);
    }
}

/// One stream-table entry. It belongs to the group that owns the stream id
/// and is counted by the devices attached through it: a device leaving
/// takes the entry away only if it was the last one using it.
struct StreamEntry {
    domain: Domain,
    devices: Vec<Weak<Device>>,
}

impl StreamEntry {
    fn uses(&self, dev: &Device) -> bool {
        self.devices
            .iter()
            .any(|d| std::ptr::eq(d.as_ptr(), dev as *const Device))
    }
}

struct SoftInner {
    cfg: SoftConfig,
    /// The stream table: stream id -> the domain it translates through.
    streams: RwLock<HashMap<u32, StreamEntry>>,
    by_stream: StreamIdGroups,
    tlb: Arc<TlbShared>,
    next_domain_id: AtomicU64,
}

/// The software IOMMU driver; clones share the same hardware.
#[derive(Clone)]
pub struct SoftIommu {
    inner: Arc<SoftInner>,
}

impl Default for SoftIommu {
    fn default() -> Self {
        Self::new(SoftConfig::default())
    }
}

impl fmt::Debug for SoftIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftIommu")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl SoftIommu {
    /// A driver with `cfg`.
    pub fn new(cfg: SoftConfig) -> Self {
        Self {
            inner: Arc::new(SoftInner {
                cfg,
                streams: RwLock::new(HashMap::new()),
                by_stream: StreamIdGroups::new(),
                tlb: Arc::default(),
                next_domain_id: AtomicU64::new(1),
            }),
        }
    }

    /// The domain the hardware has for `dev`'s first stream, if any.
    pub fn attached(&self, dev: &Device) -> Option<Domain> {
        self.stream_domain(*dev.stream_ids().first()?)
    }

    /// The domain stream id `sid` translates through, if it has an entry.
    pub fn stream_domain(&self, sid: u32) -> Option<Domain> {
        self.inner
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sid)
            .map(|e| e.domain.clone())
    }

    /// Stream ids with an entry in the stream table, ascending.
    pub fn stream_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .inner
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Wedges (or un-wedges) the emulated hardware: while wedged, every
    /// invalidation fails with `ETIMEDOUT` and leaves the IOTLB as it is,
    /// as an IOMMU whose invalidation queue stopped would.
    pub fn set_wedged(&self, wedged: bool) {
        self.inner.tlb.wedged.store(wedged, Ordering::SeqCst);
    }

    /// IOTLB syncs the hardware has received.
    pub fn iotlb_syncs(&self) -> u64 {
        self.inner.tlb.stats.iotlb_syncs.get()
    }

    /// Table walks performed by [`translate`](Self::translate).
    pub fn walks(&self) -> u64 {
        self.inner.tlb.stats.walks.get()
    }

    /// Translations [`translate`](Self::translate) served from the IOTLB.
    pub fn iotlb_hits(&self) -> u64 {
        self.inner.tlb.stats.iotlb_hits.get()
    }

    /// Whole-IOTLB invalidations received (`flush_iotlb_all`).
    pub fn flush_alls(&self) -> u64 {
        self.inner.tlb.stats.flush_alls.get()
    }

    /// Translations the IOTLB holds.
    pub fn iotlb_entries(&self) -> usize {
        self.inner.tlb.iotlb.len.load(Ordering::Acquire)
    }

    /// Translates one DMA access of `dev` at `iova`, as the hardware would:
    /// stream table, then the domain's page table, then the permission check.
    /// Faults are reported to the domain's handler.
    ///
    /// # Errors
    /// See [`TranslateError`].
    pub fn translate(
        &self,
        dev: &Device,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError> {
        let sid = *dev.stream_ids().first().ok_or(TranslateError::NoStream)?;
        self.translate_stream(dev, sid, iova, access)
    }

    /// Translates one DMA access that arrives with stream id `sid` (a
    /// device may use any of its ids, as a PCI function's DMA may carry an
    /// alias's requester id); faults are reported against `dev`.
    ///
    /// # Errors
    /// See [`TranslateError`].
    pub fn translate_stream(
        &self,
        dev: &Device,
        sid: u32,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError> {
        let domain = self.stream_domain(sid).ok_or(TranslateError::NoStream)?;
        let fault = match access {
            Access::Read => FaultAccess::Read,
            Access::Write => FaultAccess::Write,
        };
        match domain.ty() {
            DomainType::Identity => return Ok(PhysAddr::new(iova.raw())),
            DomainType::Blocked => {
                return Err(TranslateError::Blocked {
                    report: domain.report_fault(dev, iova, fault),
                })
            }
            _ => {}
        }
        let Some(soft) = domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<SoftDomain>())
        else {
            return Err(TranslateError::NoStream);
        };
        let page = iova.raw() >> TLB_PAGE_SHIFT;
        let offset = iova.raw() & ((1 << TLB_PAGE_SHIFT) - 1);
        let iotlb = &self.inner.tlb.iotlb;
        // Announce the walk before reading any descriptor (see `Iotlb`).
        iotlb.walkers.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut tlb = iotlb.lock();
        let entry = if let Some(e) = tlb.get(&(soft.id, page)) {
            self.inner.tlb.stats.iotlb_hits.add();
            Some(*e)
        } else {
            let _s = tracing::trace_span!("hw_walk", dev = dev.name(), %iova, ?access).entered();
            self.inner.tlb.stats.walks.add();
            let leaf = soft.table.as_ref().and_then(|t| t.lookup(iova));
            leaf.map(|m| {
                let e = TlbEntry {
                    pa_page: (m.pa.raw() + (iova.raw() - m.iova.raw())) >> TLB_PAGE_SHIFT,
                    prot: m.prot,
                };
                tlb.insert((soft.id, page), e);
                iotlb.len.store(tlb.len(), Ordering::Release);
                e
            })
        };
        drop(tlb);
        iotlb.walkers.fetch_sub(1, Ordering::SeqCst);
        match entry {
            None => Err(TranslateError::Translation {
                report: domain.report_fault(dev, iova, fault),
            }),
            Some(e) if access == Access::Write && !e.prot.contains(Prot::WRITE) => {
                Err(TranslateError::Permission {
                    report: domain.report_fault(dev, iova, fault),
                })
            }
            Some(e) => {
                // A write through a leaf the table tracks marks it dirty
                // (Arm's DBM: the hardware makes a writable-clean leaf
                // writable), whatever the IOTLB holds.
                if access == Access::Write {
                    if let Some(t) = soft.table.as_ref().filter(|t| t.dirty_tracking()) {
                        let _ = t.hw_write(iova);
                    }
                }
                Ok(PhysAddr::new((e.pa_page << TLB_PAGE_SHIFT) | offset))
            }
        }
    }
}

impl SoftIommu {
    /// The driver side of a domain of type `ty`; `dirty` gives a paging
    /// domain dirty tracking.
    fn soft_domain(&self, ty: DomainType, dirty: bool) -> Result<Box<dyn DomainOps>, Errno> {
        let table = if ty.is_paging() {
            let fmt = Lpae::stage1_4k(IAS, OAS).map_err(Errno::from)?;
            let mem = match self.inner.cfg.table_budget {
                Some(pages) => HeapMemory::with_limit(pages),
                None => HeapMemory::new(),
            };
            Some(IoPageTable::new(fmt, mem).map_err(Errno::from)?)
        } else {
            None
        };
        Ok(Box::new(SoftDomain {
            id: self.inner.next_domain_id.fetch_add(1, Ordering::Relaxed),
            tlb: self.inner.tlb.clone(),
            hw: Arc::downgrade(&self.inner),
            table,
            dirty,
        }))
    }
}

impl IommuOps for SoftIommu {
    fn name(&self) -> &str {
        "soft-iommu"
    }

    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        if dev.stream_ids().is_empty() {
            return Ok(()); // not behind this IOMMU
        }
        self.inner.by_stream.add_device(iommu, dev)
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        self.inner.by_stream.remove_device(iommu, dev);
    }

    /// Devices sharing a stream id cannot be told apart, so they share a
    /// group; PCI devices go where the PCI layer's grouping puts them.
    fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        self.inner
            .by_stream
            .device_group_keyed(iommu, dev, self.inner.cfg.pci.as_deref())
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        self.soft_domain(ty, false)
    }

    /// Paging domains with dirty tracking on request (Arm's DBM bit in the
    /// LPAE leaves); no driver data.
    fn domain_alloc_paging_flags(
        &self,
        _dev: &Arc<Device>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        if data.is_some() || flags.bits() & !PagingFlags::DIRTY_TRACKING.bits() != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.soft_domain(
            DomainType::Unmanaged,
            flags.contains(PagingFlags::DIRTY_TRACKING),
        )
    }

    fn dirty_tracking_capable(&self, _dev: &Device) -> bool {
        true
    }

    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        iommu_core::resv_regions_with_sw_msi(dev, self.inner.cfg.sw_msi)
    }

    fn def_domain_type(&self, dev: &Device) -> Option<DomainType> {
        self.inner
            .cfg
            .identity_devices
            .iter()
            .any(|n| n == dev.name())
            .then_some(DomainType::Identity)
    }

    fn pgsize_bitmap(&self) -> u64 {
        PGSIZE_BITMAP
    }

    fn capable(&self, cap: Capability) -> bool {
        matches!(
            cap,
            Capability::CacheCoherency | Capability::NoExec | Capability::DeferredFlush
        )
    }
}

/// A soft-IOMMU domain: an LPAE table for paging types, nothing otherwise.
///
/// The table is shared without a lock: it installs tables with
/// compare-and-exchange, so maps and unmaps of disjoint ranges run in parallel.
pub struct SoftDomain {
    /// The hardware's domain id (IOTLB tag).
    id: u64,
    tlb: Arc<TlbShared>,
    /// Weak: the hardware's stream table holds domains, so a strong
    /// reference back would keep both alive forever.
    hw: Weak<SoftInner>,
    table: Option<IoPageTable<Lpae, HeapMemory>>,
    /// Allocated with dirty tracking (`PagingFlags::DIRTY_TRACKING`).
    dirty: bool,
}

impl DirtyOps for SoftDomain {
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        self.table
            .as_ref()
            .ok_or(Errno::EINVAL)?
            .set_dirty_tracking(enable)
            .map_err(Errno::from)
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        no_clear: bool,
        dirty: &mut dyn FnMut(Iova, u64),
    ) -> Result<(), Errno> {
        if let Some(t) = &self.table {
            t.read_and_clear_dirty_with(iova, size, !no_clear, dirty);
        }
        Ok(())
    }
}

impl SoftDomain {
    /// The page table, for paging domains.
    pub fn table(&self) -> Option<&IoPageTable<Lpae, HeapMemory>> {
        self.table.as_ref()
    }

    /// Table pages in use (root included), for leak checks.
    pub fn table_pages(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.table_pages())
    }

    /// Every leaf: `(iova, size, pa, prot)`.
    pub fn dump(&self) -> Vec<(Iova, u64, PhysAddr, Prot)> {
        self.table
            .as_ref()
            .map(|t| {
                t.walk(Iova::ZERO, 1 << IAS)
                    .iter()
                    .map(|m| (m.iova, m.size, m.pa, m.prot))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl DomainOps for SoftDomain {
    /// Points every stream id of `dev` at `domain`. Ids `dev` shares with
    /// other devices belong to the same group (the grouping guarantees it),
    /// which is always attached to one domain, so the shared entry changes
    /// for all of them at once, as on hardware.
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        if dev.stream_ids().is_empty() {
            return Err(Errno::ENODEV);
        }
        let hw = self.hw.upgrade().ok_or(Errno::ENODEV)?;
        let mut streams = hw.streams.write().unwrap_or_else(|e| e.into_inner());
        for sid in dev.stream_ids() {
            let entry = streams.entry(*sid).or_insert_with(|| StreamEntry {
                domain: domain.clone(),
                devices: Vec::new(),
            });
            entry.domain = domain.clone();
            entry.devices.retain(|d| d.strong_count() > 0);
            if !entry.uses(dev) {
                entry.devices.push(Arc::downgrade(dev));
            }
        }
        Ok(())
    }

    /// `dev` stops using its stream-table entries; an entry goes only with
    /// its last user, so a device sharing an id keeps translating.
    fn detach_dev(&self, _domain: &Domain, dev: &Arc<Device>) {
        let Some(hw) = self.hw.upgrade() else { return };
        let mut streams = hw.streams.write().unwrap_or_else(|e| e.into_inner());
        for sid in dev.stream_ids() {
            if let Some(entry) = streams.get_mut(sid) {
                entry
                    .devices
                    .retain(|d| d.strong_count() > 0 && !std::ptr::eq(d.as_ptr(), &**dev));
                if entry.devices.is_empty() {
                    streams.remove(sid);
                }
            }
        }
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.table.as_ref().map(|t| t as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        Some(DomainGeometry::bits(IAS))
    }

    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        self.tlb.stats.iotlb_syncs.add();
        // Wedged, the IOTLB keeps what it holds, and the detached tables a
        // stale entry may lead into stay parked until a flush-all.
        if let Err(e) = self.tlb.check_wedged() {
            if let Some(t) = &self.table {
                t.hold_gathered(gather);
            }
            return Err(e);
        }
        if let Some((first, last)) = gather.range() {
            let range = (first.raw() >> TLB_PAGE_SHIFT, last.raw() >> TLB_PAGE_SHIFT);
            self.tlb.iotlb.invalidate(self.id, Some(range));
        }
        // The (emulated) IOTLB holds nothing stale now: detached tables may be reused.
        if let Some(t) = &self.table {
            t.release_gathered(gather);
        }
        Ok(())
    }

    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        self.tlb.stats.flush_alls.add();
        let flush = || {
            self.tlb.check_wedged()?;
            self.tlb.iotlb.invalidate(self.id, None);
            Ok(())
        };
        match &self.table {
            Some(t) => t.release_held_after(flush),
            None => flush(),
        }
    }

    fn dirty(&self) -> Option<&dyn DirtyOps> {
        (self.dirty && self.table.is_some()).then_some(self as &dyn DirtyOps)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl Drop for SoftDomain {
    fn drop(&mut self) {
        // A freed domain's id is never reused, but its entries would pile up.
        self.tlb.iotlb.invalidate(self.id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_core::{Bus, DeviceBuilder};

    fn setup() -> (Iommu, Bus, SoftIommu, Arc<Device>) {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "platform").unwrap();
        let dev = bus
            .add_device(DeviceBuilder::new("dma0").stream_ids([7]))
            .unwrap();
        let soft = SoftIommu::default();
        iommu.bus_set_iommu(&bus, Arc::new(soft.clone())).unwrap();
        (iommu, bus, soft, dev)
    }

    #[test]
    fn device_writes_mark_the_pages_of_a_dirty_tracking_domain() {
        let (iommu, _bus, soft, dev) = setup();
        assert!(soft.dirty_tracking_capable(&dev));
        assert_eq!(
            iommu
                .domain_alloc_paging_flags(&dev, PagingFlags::NEST_PARENT, None)
                .err(),
            Some(Errno::EOPNOTSUPP)
        );
        let plain = iommu
            .domain_alloc_paging_flags(&dev, PagingFlags::empty(), None)
            .unwrap();
        assert!(!plain.has_dirty_ops());
        let d = iommu
            .domain_alloc_paging_flags(&dev, PagingFlags::DIRTY_TRACKING, None)
            .unwrap();
        let group = dev.iommu_group().unwrap();
        let owner = iommu_core::DmaOwner::new();
        iommu.group_claim_dma_owner(&group, owner).unwrap();
        iommu.attach_group(&d, &group).unwrap();
        d.map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x4000_0000),
            0x4000,
            Prot::RW,
        )
        .unwrap();
        d.set_dirty_tracking(true).unwrap();
        let dirty = |d: &Domain| {
            let mut v = Vec::new();
            d.read_and_clear_dirty(Iova::new(0x10_0000), 0x4000, false, &mut |i, s| {
                v.push((i.raw(), s))
            })
            .unwrap();
            v
        };
        // Mapped before tracking: dirty until the first harvest.
        let _ = dirty(&d);
        assert_eq!(dirty(&d), vec![]);
        // A read marks nothing; a write marks its page, once.
        soft.translate(&dev, Iova::new(0x10_1010), Access::Read)
            .unwrap();
        soft.translate(&dev, Iova::new(0x10_2020), Access::Write)
            .unwrap();
        assert_eq!(dirty(&d), vec![(0x10_2000, 0x1000)]);
        assert_eq!(dirty(&d), vec![]);
        // Off: writes go through unmarked.
        d.set_dirty_tracking(false).unwrap();
        soft.translate(&dev, Iova::new(0x10_3030), Access::Write)
            .unwrap();
        iommu.detach_group(&d, &group);
        iommu.group_release_dma_owner(&group);
    }

    #[test]
    fn translation_walks_the_table_the_core_mapped() {
        let (_iommu, _bus, soft, dev) = setup();
        let d = dev.iommu_group().unwrap().default_domain().unwrap();
        d.map(
            Iova::new(0x20_0000),
            PhysAddr::new(0x4000_0000),
            0x20_0000,
            Prot::READ,
        )
        .unwrap();
        assert_eq!(
            soft.translate(&dev, Iova::new(0x20_0042), Access::Read),
            Ok(PhysAddr::new(0x4000_0042))
        );
        let sd = d
            .ops()
            .as_any()
            .unwrap()
            .downcast_ref::<SoftDomain>()
            .unwrap();
        assert_eq!(
            sd.dump(),
            vec![(
                Iova::new(0x20_0000),
                0x20_0000,
                PhysAddr::new(0x4000_0000),
                Prot::READ
            )]
        );
    }

    #[test]
    fn writes_to_read_only_mappings_are_permission_faults_reported_to_the_handler() {
        let (_iommu, _bus, soft, dev) = setup();
        let d = dev.iommu_group().unwrap().default_domain().unwrap();
        d.map(Iova::new(0x1000), PhysAddr::new(0x9000), 0x1000, Prot::READ)
            .unwrap();
        assert_eq!(
            soft.translate(&dev, Iova::new(0x1000), Access::Write),
            Err(TranslateError::Permission {
                report: Err(Errno::ENOSYS)
            })
        );
        d.set_fault_handler(Some(Arc::new(|_, _, _, _| Ok(()))));
        assert_eq!(
            soft.translate(&dev, Iova::new(0x5000), Access::Read),
            Err(TranslateError::Translation { report: Ok(()) })
        );
    }

    #[test]
    fn unmapped_addresses_stop_translating_after_unmap() {
        let (_iommu, _bus, soft, dev) = setup();
        let d = dev.iommu_group().unwrap().default_domain().unwrap();
        d.map(Iova::new(0x1000), PhysAddr::new(0x9000), 0x1000, Prot::RW)
            .unwrap();
        assert_eq!(d.unmap(Iova::new(0x1000), 0x1000), Ok(0x1000));
        assert!(matches!(
            soft.translate(&dev, Iova::new(0x1000), Access::Read),
            Err(TranslateError::Translation { .. })
        ));
        assert!(soft.iotlb_syncs() >= 1);
    }

    #[test]
    fn the_iotlb_serves_repeat_translations_until_invalidated() {
        let (_iommu, _bus, soft, dev) = setup();
        let d = dev.iommu_group().unwrap().default_domain().unwrap();
        d.map(Iova::new(0x1000), PhysAddr::new(0x9000), 0x2000, Prot::RW)
            .unwrap();
        let at = |iova| soft.translate(&dev, Iova::new(iova), Access::Read);
        assert_eq!(at(0x1010), Ok(PhysAddr::new(0x9010)));
        assert_eq!(at(0x1ff8), Ok(PhysAddr::new(0x9ff8)));
        assert_eq!((soft.walks(), soft.iotlb_hits()), (1, 1));
        assert_eq!(at(0x2000), Ok(PhysAddr::new(0xa000)));
        assert_eq!(soft.iotlb_entries(), 2);
        // An unmap that is not synced leaves the translation stale...
        let mut g = IotlbGather::new();
        assert_eq!(d.unmap_fast(Iova::new(0x1000), 0x1000, &mut g), 0x1000);
        assert_eq!(at(0x1010), Ok(PhysAddr::new(0x9010)), "stale until synced");
        // ...and the sync removes exactly the gathered range.
        d.iotlb_sync(&g).unwrap();
        assert!(matches!(
            at(0x1010),
            Err(TranslateError::Translation { .. })
        ));
        assert_eq!(at(0x2000), Ok(PhysAddr::new(0xa000)));
        d.flush_iotlb_all().unwrap();
        assert_eq!(soft.iotlb_entries(), 0);
        assert_eq!(soft.flush_alls(), 1);
    }

    #[test]
    fn blocked_and_identity_domains_translate_as_their_type_says() {
        let (iommu, _bus, soft, dev) = setup();
        let g = dev.iommu_group().unwrap();
        iommu
            .group_claim_dma_owner(&g, iommu_core::DmaOwner::new())
            .unwrap();
        assert!(matches!(
            soft.translate(&dev, Iova::new(0), Access::Read),
            Err(TranslateError::Blocked { .. })
        ));
        iommu.group_release_dma_owner(&g);
        iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap();
        assert_eq!(
            soft.translate(&dev, Iova::new(0x1234), Access::Write),
            Ok(PhysAddr::new(0x1234))
        );
    }

    #[test]
    fn a_domain_left_in_the_stream_table_does_not_keep_the_driver_alive() {
        let (iommu, bus, soft, dev) = setup();
        let hw = Arc::downgrade(&soft.inner);
        // Put a domain into the hardware's stream table behind the core's back
        // and never take it out: the table now holds the domain.
        let d = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
        d.ops().attach_dev(&d, &dev).unwrap();
        assert_eq!(soft.attached(&dev), Some(d.clone()));
        bus.remove_device(&dev).unwrap();
        drop((iommu, bus, soft, dev, d));
        // With a strong driver reference in the domain, driver -> stream table
        // -> domain -> driver would be a cycle that is never freed.
        assert!(
            hw.upgrade().is_none(),
            "the driver and its stream table were freed"
        );
    }

    #[test]
    fn dropping_the_bus_and_the_iommu_with_devices_on_it_frees_everything() {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "pci").unwrap();
        let gpu = bus
            .add_device(DeviceBuilder::new("0000:01:00.0").stream_ids([0x100]))
            .unwrap();
        // A function sharing the GPU's stream id: one group of two.
        let audio = bus
            .add_device(DeviceBuilder::new("0000:01:00.1").stream_ids([0x100]))
            .unwrap();
        let soft = SoftIommu::default();
        iommu.bus_set_iommu(&bus, Arc::new(soft.clone())).unwrap();
        let hw = Arc::downgrade(&soft.inner);
        let group = gpu.iommu_group().unwrap().downgrade();
        let domain = gpu
            .iommu_group()
            .unwrap()
            .default_domain()
            .unwrap()
            .downgrade();
        let dev = Arc::downgrade(&gpu);
        drop((gpu, audio));
        assert!(!soft.stream_ids().is_empty());
        drop((iommu, bus, soft));
        assert!(dev.upgrade().is_none(), "devices freed");
        assert!(group.upgrade().is_none(), "groups released");
        assert!(domain.upgrade().is_none(), "domains freed");
        assert!(
            hw.upgrade().is_none(),
            "the driver and its stream table freed"
        );
    }

    #[test]
    fn every_table_page_is_freed_with_the_domain() {
        let (iommu, bus, _soft, _dev) = setup();
        let d = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
        d.map(Iova::new(0), PhysAddr::new(0), 0x40_3000, Prot::RW)
            .unwrap();
        let sd = d
            .ops()
            .as_any()
            .unwrap()
            .downcast_ref::<SoftDomain>()
            .unwrap();
        assert!(sd.table_pages() >= 4);
        assert_eq!(d.unmap(Iova::new(0), 0x40_3000), Ok(0x40_3000));
        assert!(sd.dump().is_empty());
    }
}
