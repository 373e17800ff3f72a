//! A configurable in-memory IOMMU driver for tests, benchmarks and fuzzers.
//!
//! [`MockIommu`] can leave ops out (to test `ENODEV` paths), vote for default
//! domain types, group devices that share a stream id (as an SMMU does for
//! aliased stream ids), and fail any of its operations on request. Its
//! paging domains keep leaves in an ordered map with the same unmap rules
//! as a real page table.

use crate::{
    Capability, Device, Domain, DomainGeometry, DomainOps, DomainType, Group, Iommu, IommuOps,
    MapPagesError, PagingOps, ReservedRegion, ResvType, StreamIdGroups,
};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
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

    /// Every leaf of a mock domain: `(iova, size, pa, prot)`, in IOVA order.
    pub fn mappings(domain: &Domain) -> Vec<(u64, u64, u64, Prot)> {
        domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<MockDomain>())
            .map(|m| {
                crate::lock(&m.leaves)
                    .iter()
                    .map(|(&i, &(s, p, pr))| (i, s, p, pr))
                    .collect()
            })
            .unwrap_or_default()
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
        iommu.group_get_for_dev(dev).map(drop)
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
            leaves: Mutex::new(BTreeMap::new()),
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

/// A mock domain: leaves `iova -> (size, pa, prot)`.
pub struct MockDomain {
    cfg: MockConfig,
    shared: Arc<Shared>,
    leaves: Mutex<BTreeMap<u64, (u64, u64, Prot)>>,
}

impl MockDomain {
    fn leaf_at(leaves: &BTreeMap<u64, (u64, u64, Prot)>, iova: u64) -> Option<(u64, u64, u64)> {
        let (&start, &(size, pa, _)) = leaves.range(..=iova).next_back()?;
        (iova - start < size).then_some((start, size, pa))
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
        if self.cfg.pgsize_bitmap & pgsize == 0
            || !iova.is_aligned(pgsize)
            || !paddr.is_aligned(pgsize)
        {
            return Err(Errno::EINVAL.into());
        }
        if !prot.is_accessible() {
            return Err(Errno::EINVAL.into());
        }
        let n = pgcount.min(self.cfg.max_pages_per_call.max(1));
        let fail_half = self.shared.should_fail(MockOp::Map);
        let mut leaves = crate::lock(&self.leaves);
        let limit = if fail_half { n / 2 } else { n };
        for k in 0..limit {
            let at = iova.raw() + k as u64 * pgsize;
            let clash = Self::leaf_at(&leaves, at).is_some()
                || leaves.range(at..at + pgsize).next().is_some();
            if clash {
                return Err(MapPagesError {
                    errno: Errno::EEXIST,
                    mapped: k as u64 * pgsize,
                });
            }
            leaves.insert(at, (pgsize, paddr.raw() + k as u64 * pgsize, prot));
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
    ) -> u64 {
        let mut leaves = crate::lock(&self.leaves);
        let mut done = 0u64;
        for k in 0..pgcount as u64 {
            let at = iova.raw() + k * pgsize;
            match Self::leaf_at(&leaves, at) {
                Some((start, size, _)) if size > pgsize || start != at => {
                    if k == 0 {
                        leaves.remove(&start);
                        gather.add_range(Iova::new(start), size);
                        return size;
                    }
                    break;
                }
                Some((start, _, _)) => {
                    leaves.remove(&start);
                }
                None => {
                    // Smaller leaves inside the page go as a whole (a torn-down table).
                    let inside: Vec<u64> = leaves.range(at..at + pgsize).map(|(&i, _)| i).collect();
                    if inside.is_empty() {
                        break;
                    }
                    for i in inside {
                        leaves.remove(&i);
                    }
                }
            }
            done += pgsize;
        }
        gather.add_range(iova, done);
        done
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let leaves = crate::lock(&self.leaves);
        Self::leaf_at(&leaves, iova.raw())
            .map(|(start, _, pa)| PhysAddr::new(pa + (iova.raw() - start)))
    }
}
