//! A configurable in-memory IOMMU driver for tests, benchmarks and fuzzers.
//!
//! [`MockIommu`] can leave ops out (to test `ENODEV` paths), vote for default
//! domain types, group devices that share a stream id (as an SMMU does for
//! aliased stream ids), fail any of its operations on request, and be
//! wedged ([`MockIommu::set_wedged`]): its invalidations then fail, and
//! what they should have invalidated is kept as "stale"
//! ([`MockIommu::stale_ranges`]) until a flush-all completes.
//!
//! Its tables have a budget of table pages, as the soft driver's do
//! ([`MockConfig::table_budget`]), so that a fuzzer asking for terabytes
//! gets `ENOMEM` rather than exhausting the process.
//!
//! Its paging domains follow a real radix page table's rules, not just an
//! interval map's, because the core's rollback depends on them: they keep
//! their leaves in `iommu-pgtable`'s table-shape model
//! ([`TableModel`]), so unmapping at a
//! size where a table sits tears it down whole, a larger leaf covering the
//! address is removed whole, and a block replaces only an empty table. A
//! property test in the core checks it against the real walker.

use crate::sync::Mutex;
use crate::{
    Bus, Capability, Device, Domain, DomainGeometry, DomainOps, DomainType, Group, Iommu, IommuOps,
    MapPagesError, PagingOps, ReservedRegion, StreamIdGroups,
};
use iommu_pgtable::testing::TableModel;
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot, Unmapped};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Driver operations that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MockOp {
    /// `add_device`.
    AddDevice,
    /// `domain_alloc`.
    DomainAlloc,
    /// `attach_dev`.
    Attach,
    /// `map_pages` (fails after mapping half the batch, to test rollback).
    Map,
    /// `iotlb_sync_map`.
    SyncMap,
    /// `iotlb_sync` (the invalidation after an unmap).
    IotlbSync,
    /// `flush_iotlb_all`.
    FlushAll,
}

/// Table pages a mock domain may hold by default, root included: the
/// model keeps a map entry per leaf, several times a descriptor's 8 bytes,
/// so the default is lower than the soft driver's (65,536), while the rule
/// is the same: a map past it fails with `ENOMEM` and changes nothing.
pub const DEFAULT_TABLE_BUDGET: usize = 4096;

/// What the mock driver provides.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Provides `add_device` (without it: `ENODEV`).
    pub add_device: bool,
    /// Paging domains have map/unmap ops.
    pub paging: bool,
    /// Can allocate `Blocked` domains.
    pub blocked: bool,
    /// Can allocate `Identity` domains.
    pub identity: bool,
    /// Reports `DeferredFlush` (so `DMA-FQ` is possible).
    pub deferred_flush: bool,
    /// Page sizes.
    pub pgsize_bitmap: u64,
    /// Most pages one `map_pages` call maps (to exercise the core's loop).
    pub max_pages_per_call: usize,
    /// Aperture width in bits (`None` = whole space, not enforced).
    pub aperture_bits: Option<u32>,
    /// A software MSI window reported for every device.
    pub sw_msi: Option<(u64, u64)>,
    /// Default-domain votes by device name.
    pub votes: HashMap<String, DomainType>,
    /// Most table pages (root included) one domain's table may hold, as a
    /// real radix table of these page sizes would need them; `None`: no
    /// bound.
    pub table_budget: Option<usize>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            add_device: true,
            paging: true,
            blocked: true,
            identity: true,
            deferred_flush: true,
            pgsize_bitmap: 0x1000 | 0x20_0000 | 0x4000_0000,
            max_pages_per_call: 512,
            aperture_bits: Some(48),
            sw_msi: None,
            votes: HashMap::new(),
            table_budget: Some(DEFAULT_TABLE_BUDGET),
        }
    }
}

#[derive(Default)]
struct Shared {
    fail: Mutex<HashMap<MockOp, u32>>,
    /// Device name -> core domain id it is attached to.
    attached: Mutex<HashMap<String, u64>>,
    by_stream: StreamIdGroups,
    iotlb_syncs: AtomicU64,
    flush_alls: AtomicU64,
    sync_maps: AtomicU64,
    lookups: AtomicU64,
    /// Invalidations fail (`ETIMEDOUT`) while set.
    wedged: AtomicBool,
}

impl Shared {
    fn should_fail(&self, op: MockOp) -> bool {
        let mut f = self.fail.lock();
        match f.get_mut(&op) {
            Some(0) => {
                f.remove(&op);
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

/// The mock driver.
pub struct MockIommu {
    cfg: MockConfig,
    shared: Arc<Shared>,
}

impl Default for MockIommu {
    fn default() -> Self {
        Self::new()
    }
}

impl MockIommu {
    /// A driver with every op, 4K/2M/1G pages and a 48-bit aperture.
    pub fn new() -> Self {
        Self::with_config(MockConfig::default())
    }

    /// A driver configured by `cfg`.
    pub fn with_config(cfg: MockConfig) -> Self {
        Self {
            cfg,
            shared: Arc::new(Shared::default()),
        }
    }

    /// Makes `op` fail once after `skip` successful calls.
    pub fn fail_after(&self, op: MockOp, skip: u32) {
        self.shared.fail.lock().insert(op, skip);
    }

    /// Whether a failure armed with [`fail_after`](Self::fail_after) has not fired yet.
    pub fn failure_pending(&self, op: MockOp) -> bool {
        self.shared.fail.lock().contains_key(&op)
    }

    /// Wedges (or un-wedges) the "hardware": while wedged, `iotlb_sync`
    /// and `flush_iotlb_all` fail with `ETIMEDOUT`, and what they should
    /// have invalidated stays stale until a flush-all completes.
    pub fn set_wedged(&self, wedged: bool) {
        self.shared.wedged.store(wedged, Ordering::SeqCst);
    }

    /// IOVA ranges `(first, last)` of a mock domain that were unmapped but
    /// whose invalidation failed: what the hardware may still translate.
    pub fn stale_ranges(domain: &Domain) -> Vec<(u64, u64)> {
        domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<MockDomain>())
            .map(|m| m.stale.lock().clone())
            .unwrap_or_default()
    }

    /// Cancels a pending failure.
    pub fn clear_failures(&self) {
        self.shared.fail.lock().clear();
    }

    /// The core id of the domain `dev` is attached to in the "hardware".
    pub fn attached_domain(&self, dev: &str) -> Option<u64> {
        self.shared.attached.lock().get(dev).copied()
    }

    /// `iotlb_sync` calls so far.
    pub fn iotlb_syncs(&self) -> u64 {
        self.shared.iotlb_syncs.load(Ordering::Relaxed)
    }

    /// `flush_iotlb_all` calls so far.
    pub fn flush_alls(&self) -> u64 {
        self.shared.flush_alls.load(Ordering::Relaxed)
    }

    /// `iotlb_sync_map` calls so far.
    pub fn sync_maps(&self) -> u64 {
        self.shared.sync_maps.load(Ordering::Relaxed)
    }

    /// Page-table lookups so far (`iova_to_phys` and `first_mapping`), so
    /// tests can check that work follows what is mapped.
    pub fn lookups(&self) -> u64 {
        self.shared.lookups.load(Ordering::Relaxed)
    }

    /// Every leaf of a mock domain: `(iova, size, pa, prot)`, in IOVA order.
    pub fn mappings(domain: &Domain) -> Vec<(u64, u64, u64, Prot)> {
        domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<MockDomain>())
            .map(|m| {
                m.tables
                    .lock()
                    .leaves()
                    .map(|l| (l.iova, l.size, l.pa, l.prot))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tables a mock domain holds (beyond its root), as a real one would.
    pub fn table_count(domain: &Domain) -> usize {
        domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<MockDomain>())
            .map_or(0, |m| m.tables.lock().table_count())
    }
}

impl IommuOps for MockIommu {
    fn name(&self) -> &str {
        "mock-iommu"
    }

    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        if !self.cfg.add_device {
            return Err(Errno::ENODEV);
        }
        if self.shared.should_fail(MockOp::AddDevice) {
            return Err(Errno::ENOMEM);
        }
        if dev.stream_ids().is_empty() {
            return Ok(()); // not behind this IOMMU
        }
        self.shared.by_stream.add_device(iommu, dev)
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        self.shared.by_stream.remove_device(iommu, dev);
    }

    fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        self.shared.by_stream.device_group(iommu, dev)
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        if self.shared.should_fail(MockOp::DomainAlloc) {
            return Err(Errno::ENOMEM);
        }
        let ok = match ty {
            DomainType::Blocked => self.cfg.blocked,
            DomainType::Identity => self.cfg.identity,
            DomainType::DmaFq => self.cfg.deferred_flush,
            DomainType::Unmanaged | DomainType::Dma => true,
            DomainType::Nested => false,
        };
        if !ok {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Box::new(MockDomain {
            cfg: self.cfg.clone(),
            shared: Arc::clone(&self.shared),
            tables: Mutex::new(TableModel::new(self.cfg.pgsize_bitmap)),
            stale: Mutex::new(Vec::new()),
        }))
    }

    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        crate::resv_regions_with_sw_msi(dev, self.cfg.sw_msi)
    }

    fn def_domain_type(&self, dev: &Device) -> Option<DomainType> {
        self.cfg.votes.get(dev.name()).copied()
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.cfg.pgsize_bitmap
    }

    fn capable(&self, cap: Capability) -> bool {
        match cap {
            Capability::DeferredFlush => self.cfg.deferred_flush,
            Capability::CacheCoherency | Capability::NoExec => true,
            Capability::IntrRemap => false,
        }
    }
}

/// A mock domain: its page table, modelled (see the module docs).
pub struct MockDomain {
    cfg: MockConfig,
    shared: Arc<Shared>,
    tables: Mutex<TableModel>,
    /// Unmapped ranges whose invalidation failed (merged into one when
    /// there are many: the bound of what a wedged IOTLB can hold).
    stale: Mutex<Vec<(u64, u64)>>,
}

/// Stale ranges a mock domain lists one by one before merging them.
const MAX_STALE_RANGES: usize = 64;

impl MockDomain {
    /// Whether an invalidation fails now (wedged, or an armed failure).
    fn invalidation_fails(&self, op: MockOp) -> bool {
        self.shared.wedged.load(Ordering::SeqCst) || self.shared.should_fail(op)
    }

    /// Pages of `pgsize` from `iova` to the end of the table holding them.
    fn room(t: &TableModel, k: usize, iova: u64) -> u64 {
        let size = t.sizes()[k];
        match t.sizes().get(k + 1) {
            Some(&parent) => (parent - (iova & (parent - 1))) / size,
            None => u64::MAX,
        }
    }
}

impl DomainOps for MockDomain {
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        if self.shared.should_fail(MockOp::Attach) {
            return Err(Errno::EINVAL);
        }
        self.shared
            .attached
            .lock()
            .insert(dev.name().to_string(), domain.id());
        Ok(())
    }

    fn detach_dev(&self, domain: &Domain, dev: &Arc<Device>) {
        let mut a = self.shared.attached.lock();
        if a.get(dev.name()) == Some(&domain.id()) {
            a.remove(dev.name());
        }
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.cfg.paging.then_some(self as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        self.cfg.aperture_bits.map(DomainGeometry::bits)
    }

    fn iotlb_sync_map(&self, _iova: Iova, _size: u64) -> Result<(), Errno> {
        self.shared.sync_maps.fetch_add(1, Ordering::Relaxed);
        if self.shared.should_fail(MockOp::SyncMap) {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        self.shared.iotlb_syncs.fetch_add(1, Ordering::Relaxed);
        if !self.invalidation_fails(MockOp::IotlbSync) {
            return Ok(());
        }
        if let Some((first, last)) = gather.range() {
            let mut stale = self.stale.lock();
            stale.push((first.raw(), last.raw()));
            if stale.len() > MAX_STALE_RANGES {
                let lo = stale.iter().map(|r| r.0).min().unwrap_or(0);
                let hi = stale.iter().map(|r| r.1).max().unwrap_or(0);
                *stale = vec![(lo, hi)];
            }
        }
        Err(Errno::ETIMEDOUT)
    }

    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        self.shared.flush_alls.fetch_add(1, Ordering::Relaxed);
        if self.invalidation_fails(MockOp::FlushAll) {
            return Err(Errno::ETIMEDOUT);
        }
        self.stale.lock().clear();
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl PagingOps for MockDomain {
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        let mut t = self.tables.lock();
        let Some(k) = t.size_index(pgsize) else {
            return Err(Errno::EINVAL.into());
        };
        if !iova.is_aligned(pgsize) || !paddr.is_aligned(pgsize) || pgcount == 0 {
            return Err(Errno::EINVAL.into());
        }
        if !prot.is_accessible() {
            return Err(Errno::EINVAL.into());
        }
        // One call maps within one table, as a real walker does.
        let n = (pgcount as u64)
            .min(Self::room(&t, k, iova.raw()))
            .min(self.cfg.max_pages_per_call.max(1) as u64);
        let len = n
            .checked_mul(pgsize)
            .ok_or(MapPagesError::from(Errno::ERANGE))?;
        if iova.checked_add(len).is_none() || paddr.checked_add(len).is_none() {
            return Err(Errno::ERANGE.into());
        }
        // Like a real walker, check every slot before writing any.
        t.check_map(k, iova.raw(), n)
            .map_err(|e| MapPagesError::from(e.errno()))?;
        if let Some(budget) = self.cfg.table_budget {
            // The run stays inside one table, so its leaves share the path
            // above them: the tables it lacks are the new pages it needs.
            let new = t.tables_missing_on_path(k, iova.raw());
            if t.table_count() + 1 + new > budget {
                return Err(Errno::ENOMEM.into());
            }
        }
        let fail_half = self.shared.should_fail(MockOp::Map);
        let limit = if fail_half { n / 2 } else { n };
        t.insert(k, iova.raw(), paddr.raw(), limit, prot);
        if fail_half {
            return Err(MapPagesError {
                errno: Errno::ENOMEM,
                mapped: limit * pgsize,
            });
        }
        Ok(len)
    }

    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        let mut t = self.tables.lock();
        let Some(k) = t.size_index(pgsize) else {
            return Unmapped::NOTHING;
        };
        if !iova.is_aligned(pgsize) || pgcount == 0 {
            return Unmapped::NOTHING;
        }
        let n = (pgcount as u64).min(Self::room(&t, k, iova.raw()));
        let u = t.unmap(k, iova.raw(), n);
        gather.add_range(u.iova, u.size);
        u
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let t = self.tables.lock();
        t.leaf_at(iova.raw())
            .map(|l| PhysAddr::new(l.pa + (iova.raw() - l.iova)))
    }

    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let t = self.tables.lock();
        t.first_leaf(start.raw(), last.raw())
            .map(|l| (Iova::new(l.iova), l.size))
    }
}

/// One leaf of a mock domain: `(iova, size, pa, prot)`.
pub type Leaf = (u64, u64, u64, Prot);

/// Everything a failed operation must leave untouched: group ids, the
/// whole sysfs tree, group references, which device is in which group, the
/// default and current domain of each group, and every leaf of the default
/// domains and of `extra` domains.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Live group ids.
    pub ids: Vec<u32>,
    /// The rendered sysfs tree.
    pub sysfs: String,
    /// `(group id, references held by others than the snapshot)`.
    pub refcounts: Vec<(u32, usize)>,
    /// `(device, its group id)` for every device on the bus.
    pub device_groups: Vec<(String, Option<u32>)>,
    /// `(group id, leaves of its default domain)` (mock domains only).
    pub mappings: Vec<(u32, Vec<Leaf>)>,
    /// Leaves of each `extra` domain.
    pub extra: Vec<Vec<Leaf>>,
    /// `(group id, default domain id, current domain id)`.
    pub domains: Vec<(u32, Option<u64>, Option<u64>)>,
}

impl Snapshot {
    /// Takes one of `iommu`, with the devices of `bus`.
    pub fn take(iommu: &Iommu, bus: &Bus, extra: &[Domain]) -> Snapshot {
        let groups = iommu.groups();
        let refcounts = groups.iter().map(|g| (g.id(), g.refcount() - 1)).collect();
        let mappings = groups
            .iter()
            .map(|g| {
                (
                    g.id(),
                    g.default_domain()
                        .map(|d| MockIommu::mappings(&d))
                        .unwrap_or_default(),
                )
            })
            .collect();
        let domains = groups
            .iter()
            .map(|g| {
                (
                    g.id(),
                    g.default_domain().map(|d| d.id()),
                    g.domain().map(|d| d.id()),
                )
            })
            .collect();
        Snapshot {
            ids: iommu.group_ids(),
            sysfs: iommu.sysfs().render(),
            refcounts,
            device_groups: bus
                .devices()
                .iter()
                .map(|d| (d.name().to_string(), d.iommu_group().map(|g| g.id())))
                .collect(),
            mappings,
            extra: extra.iter().map(MockIommu::mappings).collect(),
            domains,
        }
    }
}

/// The smallest driver a paging domain can have: its domains are an
/// [`IoPageTable`](iommu_pgtable::IoPageTable) of format `F` that the core
/// drives itself, there is no IOTLB (`iotlb_sync` only frees the tables an
/// unmap gathered), every device has a group of its own and DMA is
/// coherent. Benchmarks use it to time the core and the DMA layer over
/// nothing but a table.
pub struct TableIommu<F>(pub F);

/// [`TableIommu`]'s domain: its table, for paging types.
pub struct TableDomain<F: iommu_pgtable::Format>(
    Option<iommu_pgtable::IoPageTable<F, iommu_pgtable::HeapMemory>>,
);

impl<F: iommu_pgtable::Format + Clone + 'static> IommuOps for TableIommu<F> {
    fn name(&self) -> &str {
        "table-only"
    }

    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        iommu.group_get_for_dev(dev).map(|_| ())
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        let table = if ty.is_paging() {
            let heap = iommu_pgtable::HeapMemory::new();
            Some(iommu_pgtable::IoPageTable::new(self.0.clone(), heap).map_err(Errno::from)?)
        } else {
            None
        };
        Ok(Box::new(TableDomain(table)))
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.0.geometry().pgsize_bitmap()
    }

    fn capable(&self, cap: Capability) -> bool {
        cap == Capability::CacheCoherency
    }
}

impl<F: iommu_pgtable::Format + 'static> DomainOps for TableDomain<F> {
    fn attach_dev(&self, _: &Domain, _: &Arc<Device>) -> Result<(), Errno> {
        Ok(())
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.0.as_ref().map(|t| t as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        self.0
            .as_ref()
            .map(|t| DomainGeometry::bits(t.geometry().ias))
    }

    fn pgsize_bitmap(&self) -> Option<u64> {
        self.0
            .as_ref()
            .map(iommu_pgtable::IoPageTable::pgsize_bitmap)
    }

    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        if let Some(t) = &self.0 {
            t.release_gathered(gather);
        }
        Ok(())
    }
}
