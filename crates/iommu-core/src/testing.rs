//! A configurable in-memory IOMMU driver for tests, benchmarks and fuzzers.
//!
//! [`MockIommu`] can leave ops out (to test `ENODEV` paths), vote for default
//! domain types, group devices that share a stream id (as an SMMU does for
//! aliased stream ids), and fail any of its operations on request.
//!
//! Its paging domains follow a real radix page table's rules, not just an
//! interval map's, because the core's rollback depends on them: every page
//! size is a level; a slot of one size holds nothing, a leaf of that size,
//! or a table of the next smaller size; tables are made by maps and kept
//! when emptied; unmapping at a size where a table sits tears the table
//! down whole (and counts the whole slot, as Linux's io-pgtable does); a
//! larger leaf covering the address is removed whole; a block may replace
//! only an empty table. A property test in the core checks it against
//! `iommu-pgtable`'s walker.

use crate::{
    Capability, Device, Domain, DomainGeometry, DomainOps, DomainType, Group, Iommu, IommuOps,
    MapPagesError, PagingOps, ReservedRegion, ResvType, StreamIdGroups,
};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot, Unmapped};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

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
}

impl Shared {
    fn should_fail(&self, op: MockOp) -> bool {
        let mut f = crate::lock(&self.fail);
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
        crate::lock(&self.shared.fail).insert(op, skip);
    }

    /// Whether a failure armed with [`fail_after`](Self::fail_after) has not fired yet.
    pub fn failure_pending(&self, op: MockOp) -> bool {
        crate::lock(&self.shared.fail).contains_key(&op)
    }

    /// Cancels a pending failure.
    pub fn clear_failures(&self) {
        crate::lock(&self.shared.fail).clear();
    }

    /// The core id of the domain `dev` is attached to in the "hardware".
    pub fn attached_domain(&self, dev: &str) -> Option<u64> {
        crate::lock(&self.shared.attached).get(dev).copied()
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
                crate::lock(&m.tables)
                    .leaves
                    .iter()
                    .map(|(&i, &(s, p, pr))| (i, s, p, pr))
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
            .map_or(0, |m| crate::lock(&m.tables).tables.len())
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
        iommu.group_get_for_dev(dev).map(drop).inspect_err(|_| {
            self.shared.by_stream.release_device(dev);
        })
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        iommu.group_remove_device(dev);
        self.shared.by_stream.release_device(dev);
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
        };
        if !ok {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Box::new(MockDomain {
            cfg: self.cfg.clone(),
            shared: Arc::clone(&self.shared),
            tables: Mutex::new(MockTables::new(self.cfg.pgsize_bitmap)),
        }))
    }

    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        let mut v = dev.firmware_resv_regions().to_vec();
        if let Some((start, len)) = self.cfg.sw_msi {
            v.push(ReservedRegion::new(
                start,
                len,
                Prot::RW | Prot::MMIO,
                ResvType::SwMsi,
            ));
        }
        v
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
    tables: Mutex<MockTables>,
}

/// The shape of a radix page table, without the bits: leaves, and which
/// slots hold a table.
struct MockTables {
    /// The page sizes, ascending; size `i` is the level of its leaves.
    sizes: Vec<u64>,
    /// Leaves: `iova -> (size, pa, prot)`.
    leaves: BTreeMap<u64, (u64, u64, Prot)>,
    /// Slots holding a table: `(size index, slot start)`, size index >= 1
    /// (a slot of `sizes[i]` whose table holds slots of `sizes[i - 1]`).
    tables: BTreeSet<(usize, u64)>,
}

impl MockTables {
    fn new(bitmap: u64) -> Self {
        Self {
            sizes: (0..64)
                .map(|b| 1u64 << b)
                .filter(|s| bitmap & s != 0)
                .collect(),
            leaves: BTreeMap::new(),
            tables: BTreeSet::new(),
        }
    }

    fn slot(&self, i: usize, iova: u64) -> u64 {
        iova & !(self.sizes[i] - 1)
    }

    fn leaf_at(&self, iova: u64) -> Option<(u64, u64, u64)> {
        let (&start, &(size, pa, _)) = self.leaves.range(..=iova).next_back()?;
        (iova - start < size).then_some((start, size, pa))
    }

    /// Whether any leaf overlaps `[start, start + size)`.
    fn any_leaf_in(&self, start: u64, size: u64) -> bool {
        self.leaf_at(start).is_some()
            || self
                .leaves
                .range(start..)
                .next()
                .is_some_and(|(&i, _)| i - start < size)
    }

    /// Removes every leaf and table inside slot `(i, start)`.
    fn tear_down(&mut self, i: usize, start: u64) {
        let size = self.sizes[i];
        let inside: Vec<u64> = self
            .leaves
            .range(start..)
            .take_while(|(&l, _)| l - start < size)
            .map(|(&l, _)| l)
            .collect();
        for l in inside {
            self.leaves.remove(&l);
        }
        self.tables
            .retain(|&(j, s)| !(j <= i && s >= start && s - start < size));
    }

    /// Checks one leaf of size index `k` at `iova`: `Ok(true)` if an empty
    /// table must be replaced, `Err(EEXIST)` if something is in the way.
    fn check_leaf(&self, k: usize, iova: u64) -> Result<bool, Errno> {
        let size = self.sizes[k];
        for i in (k + 1)..self.sizes.len() {
            let s = self.slot(i, iova);
            if self.leaves.get(&s).is_some_and(|l| l.0 == self.sizes[i]) {
                return Err(Errno::EEXIST); // a larger leaf on the path
            }
        }
        if self.any_leaf_in(iova, size) {
            return Err(Errno::EEXIST);
        }
        Ok(k > 0 && self.tables.contains(&(k, iova)))
    }

    fn insert_leaf(&mut self, k: usize, iova: u64, pa: u64, prot: Prot) {
        if k > 0 && self.tables.contains(&(k, iova)) {
            self.tear_down(k, iova); // an empty table: the block replaces it
        }
        for i in (k + 1)..self.sizes.len() {
            let s = self.slot(i, iova);
            self.tables.insert((i, s));
        }
        self.leaves.insert(iova, (self.sizes[k], pa, prot));
    }

    /// Unmaps up to `count` leaves of size index `k` from `iova`, within one
    /// table, as a real walker does.
    fn unmap(&mut self, k: usize, iova: u64, count: usize) -> Unmapped {
        // The path down to size `k`: a larger leaf is removed whole; a
        // missing table is a hole.
        for i in ((k + 1)..self.sizes.len()).rev() {
            let s = self.slot(i, iova);
            if self.leaves.get(&s).is_some_and(|l| l.0 == self.sizes[i]) {
                self.leaves.remove(&s);
                return Unmapped::new(Iova::new(s), self.sizes[i]);
            }
            if !self.tables.contains(&(i, s)) {
                return Unmapped::NOTHING;
            }
        }
        let size = self.sizes[k];
        let room = match self.sizes.get(k + 1) {
            Some(&parent) => ((parent - (iova & (parent - 1))) / size) as usize,
            None => usize::MAX,
        };
        let mut done = 0u64;
        for n in 0..count.min(room) as u64 {
            let at = iova + n * size;
            if self.leaves.get(&at).is_some_and(|l| l.0 == size) {
                self.leaves.remove(&at);
            } else if k > 0 && self.tables.contains(&(k, at)) {
                self.tear_down(k, at); // a table where a leaf was expected: whole
            } else {
                break;
            }
            done += size;
        }
        Unmapped::new(Iova::new(iova), done)
    }
}

impl DomainOps for MockDomain {
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        if self.shared.should_fail(MockOp::Attach) {
            return Err(Errno::EINVAL);
        }
        crate::lock(&self.shared.attached).insert(dev.name().to_string(), domain.id());
        Ok(())
    }

    fn detach_dev(&self, domain: &Domain, dev: &Arc<Device>) {
        let mut a = crate::lock(&self.shared.attached);
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

    fn iotlb_sync(&self, _gather: &IotlbGather) {
        self.shared.iotlb_syncs.fetch_add(1, Ordering::Relaxed);
    }

    fn flush_iotlb_all(&self) {
        self.shared.flush_alls.fetch_add(1, Ordering::Relaxed);
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
        let mut t = crate::lock(&self.tables);
        let Some(k) = t.sizes.iter().position(|&s| s == pgsize) else {
            return Err(Errno::EINVAL.into());
        };
        if !iova.is_aligned(pgsize) || !paddr.is_aligned(pgsize) || pgcount == 0 {
            return Err(Errno::EINVAL.into());
        }
        if !prot.is_accessible() {
            return Err(Errno::EINVAL.into());
        }
        // One call maps within one table, as a real walker does.
        let room = match t.sizes.get(k + 1) {
            Some(&parent) => ((parent - (iova.raw() & (parent - 1))) / pgsize) as usize,
            None => usize::MAX,
        };
        let n = pgcount.min(room).min(self.cfg.max_pages_per_call.max(1));
        let end = (n as u64)
            .checked_mul(pgsize)
            .and_then(|len| iova.raw().checked_add(len))
            .ok_or(MapPagesError::from(Errno::ERANGE))?;
        paddr
            .raw()
            .checked_add(end - iova.raw())
            .ok_or(MapPagesError::from(Errno::ERANGE))?;
        // Like a real walker, check every slot before writing any.
        for j in 0..n as u64 {
            t.check_leaf(k, iova.raw() + j * pgsize)?;
        }
        let fail_half = self.shared.should_fail(MockOp::Map);
        let limit = if fail_half { n / 2 } else { n };
        for j in 0..limit as u64 {
            t.insert_leaf(k, iova.raw() + j * pgsize, paddr.raw() + j * pgsize, prot);
        }
        if fail_half {
            return Err(MapPagesError {
                errno: Errno::ENOMEM,
                mapped: limit as u64 * pgsize,
            });
        }
        Ok(n as u64 * pgsize)
    }

    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        let mut t = crate::lock(&self.tables);
        let Some(k) = t.sizes.iter().position(|&s| s == pgsize) else {
            return Unmapped::NOTHING;
        };
        if !iova.is_aligned(pgsize) || pgcount == 0 {
            return Unmapped::NOTHING;
        }
        let u = t.unmap(k, iova.raw(), pgcount);
        gather.add_range(u.iova, u.size);
        u
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let t = crate::lock(&self.tables);
        t.leaf_at(iova.raw())
            .map(|(start, _, pa)| PhysAddr::new(pa + (iova.raw() - start)))
    }

    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        if start > last {
            return None;
        }
        let t = crate::lock(&self.tables);
        if let Some((s, size, _)) = t.leaf_at(start.raw()) {
            return Some((Iova::new(s), size));
        }
        t.leaves
            .range(start.raw()..=last.raw())
            .next()
            .map(|(&i, &(size, _, _))| (Iova::new(i), size))
    }
}
