//! The selftest's mock IOMMU and `IOMMU_TEST_CMD` (Linux's
//! `drivers/iommu/iommufd/selftest.c`), so that Linux's own iommufd
//! selftest runs against this crate.
//!
//! [`Selftest`] is one platform: a bus whose devices the test makes on
//! demand (`IOMMU_TEST_OP_MOCK_DOMAIN`), each alone in its group behind
//! the mock IOMMU. The mock's paging domains are real page tables: the
//! AMD v1 layout with 2 KiB pages ([`AmdV1Selftest`]), as Linux's mock
//! uses, with its aperture (`MOCK_APERTURE_START..=MOCK_APERTURE_LAST`)
//! unless the test asks for the huge-page variant. A context serves the
//! command once [`Ictx::enable_selftest`] has given it the platform; a
//! context without one answers `ENOTTY`, as a kernel built without
//! `CONFIG_IOMMUFD_TEST`.
//!
//! All 23 operations of Linux 7.3's selftest are served: mock devices
//! and their domains (`MOCK_DOMAIN`, `MOCK_DOMAIN_FLAGS`,
//! `MOCK_DOMAIN_REPLACE`), checks of the domains' tables, pins, IOTLBs and
//! device caches (`MD_CHECK_MAP`, `MD_CHECK_REFS`, `MD_CHECK_IOTLB`,
//! `DEV_CHECK_CACHE`), reserved ranges, dirty bits (`DIRTY`), access
//! objects (`CREATE_ACCESS`, `ACCESS_PAGES`, `DESTROY_ACCESS_PAGES`,
//! `ACCESS_RW`, `ACCESS_REPLACE_IOAS`), I/O page faults and vEVENTs
//! (`TRIGGER_IOPF`, `TRIGGER_VEVENT`), PASIDs (`PASID_ATTACH`,
//! `PASID_REPLACE`, `PASID_DETACH`, `PASID_CHECK_HWPT`), dma-bufs
//! (`DMABUF_GET`, `DMABUF_REVOKE`) and `SET_TEMP_MEMORY_LIMIT` (recorded:
//! Linux bounds its internal batches with it, which have no counterpart
//! here). The mock's vIOMMU (`IOMMU_VIOMMU_TYPE_SELFTEST`) makes nested
//! domains, invalidates device caches, takes HW queues and offers two
//! pages to mmap. Access objects and dma-bufs are files: the context's
//! [`crate::ctx::FileTable`] gives their descriptors.
//!
//! Where this differs from the kernel: user memory is not pinned. A
//! domain maps a user address as its physical address (the crate's rule,
//! see [`crate::ctx`]), `MD_CHECK_MAP` compares against that, and
//! `MD_CHECK_REFS` counts the pins the kernel would hold: one per pages
//! object (a `MAP`'s pages, shared by `COPY`) while a domain holds its
//! areas, over every live context of the platform.

use crate::ctx::{lock, Ictx, Object, UserMemory};
use crate::uapi::Ucmd;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{AtomicU32, Ordering};
use iommu_core::{
    Bus, Capability, Device, DeviceBuilder, DirtyOps, Domain, DomainGeometry, DomainOps,
    DomainType, Group, InvalidateError, Iommu, IommuOps, MapPagesError, PagingFlags, PagingOps,
    StreamIdGroups, UserData, UserDataArray, Viommu, ViommuOps,
};
use iommu_pgtable::amd::AmdV1Selftest;
use iommu_pgtable::{HeapMemory, IoPageTable};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot, Unmapped};
use std::sync::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `IOMMU_TEST_OP_*`.
#[allow(missing_docs)]
pub mod op {
    pub const ADD_RESERVED: u32 = 1;
    pub const MOCK_DOMAIN: u32 = 2;
    pub const MD_CHECK_MAP: u32 = 3;
    pub const MD_CHECK_REFS: u32 = 4;
    pub const CREATE_ACCESS: u32 = 5;
    pub const DESTROY_ACCESS_PAGES: u32 = 6;
    pub const ACCESS_PAGES: u32 = 7;
    pub const ACCESS_RW: u32 = 8;
    pub const SET_TEMP_MEMORY_LIMIT: u32 = 9;
    pub const MOCK_DOMAIN_REPLACE: u32 = 10;
    pub const ACCESS_REPLACE_IOAS: u32 = 11;
    pub const MOCK_DOMAIN_FLAGS: u32 = 12;
    pub const DIRTY: u32 = 13;
    pub const MD_CHECK_IOTLB: u32 = 14;
    pub const TRIGGER_IOPF: u32 = 15;
    pub const DEV_CHECK_CACHE: u32 = 16;
    pub const TRIGGER_VEVENT: u32 = 17;
    pub const PASID_ATTACH: u32 = 18;
    pub const PASID_REPLACE: u32 = 19;
    pub const PASID_DETACH: u32 = 20;
    pub const PASID_CHECK_HWPT: u32 = 21;
    pub const DMABUF_GET: u32 = 22;
    pub const DMABUF_REVOKE: u32 = 23;
}

/// The mock's first mappable IOVA (`MOCK_APERTURE_START`).
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// The mock's last mappable IOVA (`MOCK_APERTURE_LAST`).
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// The mock's page (`MOCK_PAGE_SIZE`).
pub const MOCK_PAGE_SIZE: u64 = 2048;
/// The mock's huge page (`MOCK_HUGE_PAGE_SIZE`).
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_PAGE_SIZE;
/// `IOMMU_HW_INFO_TYPE_SELFTEST`.
pub const HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// The register value the mock reports (`IOMMU_HW_INFO_SELFTEST_REGVAL`).
pub const HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;
/// `IOMMU_HWPT_DATA_SELFTEST`.
pub const HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `MOCK_FLAGS_DEVICE_NO_DIRTY`.
pub const DEVICE_NO_DIRTY: u32 = 1 << 0;
/// `MOCK_FLAGS_DEVICE_PASID`.
pub const DEVICE_PASID: u32 = 1 << 2;
/// `MOCK_IOMMUPT_HUGE`: tables given huge pages only, no aperture.
pub const MOCK_IOMMUPT_HUGE: u32 = 1;

/// `struct iommu_test_cmd`: the header, the operation's union as words,
/// and `last`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TestCmd {
    /// Bytes the caller gave.
    pub size: u32,
    /// `IOMMU_TEST_OP_*`.
    pub op: u32,
    /// An object id, per operation.
    pub id: u32,
    /// Must be zero (not checked by Linux).
    pub reserved: u32,
    /// The operation's arguments, as Linux's union lays them out.
    pub args: [u64; 6],
    /// The last field (for the size rule).
    pub last: u32,
    /// Padding.
    pub pad: u32,
}

impl TestCmd {
    fn u32_at(&self, off: usize) -> u32 {
        let b = self.args.as_bytes();
        u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    fn set_u32(&mut self, off: usize, v: u32) {
        self.args.as_mut_bytes()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64_at(&self, off: usize) -> u64 {
        self.args[off / 8]
    }
}

/// `struct iommu_hwpt_selftest`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct HwptSelftest {
    iotlb: u32,
    pagetable_type: u32,
}

/// A mock device the test made: its bound id (Linux's `selftest_obj` of
/// type `TYPE_IDEV`).
#[derive(Debug)]
pub struct StDev {
    /// The bound device's id.
    pub idev_id: u32,
    /// The device.
    pub dev: Arc<Device>,
    platform: Arc<Selftest>,
}

/// The selftest's platform: the mock bus and IOMMU, and the contexts
/// using it (for `MD_CHECK_REFS`).
pub struct Selftest {
    iommu: Iommu,
    bus: Bus,
    driver: Arc<MockDriver>,
    next_dev: AtomicU32,
    contexts: Mutex<Vec<Weak<Ictx>>>,
    /// `SET_TEMP_MEMORY_LIMIT`'s value (recorded; see the module docs).
    memory_limit: AtomicU32,
}

impl core::fmt::Debug for Selftest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Selftest").finish_non_exhaustive()
    }
}

impl Selftest {
    /// A new platform with its own core.
    ///
    /// # Errors
    /// The core's refusal to set up the bus (not expected).
    pub fn new() -> Result<Arc<Self>, Errno> {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "iommufd_mock")?;
        let driver = Arc::new(MockDriver::default());
        iommu.bus_set_iommu(&bus, driver.clone())?;
        Ok(Arc::new(Self {
            iommu,
            bus,
            driver,
            next_dev: AtomicU32::new(0),
            contexts: Mutex::new(Vec::new()),
            memory_limit: AtomicU32::new(0),
        }))
    }

    /// The mock bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The failure injection of the platform's core, which the contexts
    /// on it share: `arm_nth` is Linux's `fail_nth` for the whole stack.
    pub fn fail_points(&self) -> &iommu_core::FailPoints {
        self.iommu.fail_points()
    }

    /// Makes a mock device with `flags` (`MOCK_FLAGS_DEVICE_*`).
    ///
    /// # Errors
    /// `EINVAL` for unknown flags; the core's refusal.
    pub fn add_device(&self, flags: u32) -> Result<Arc<Device>, Errno> {
        if flags & !(DEVICE_NO_DIRTY | DEVICE_PASID) != 0 {
            return Err(Errno::EINVAL);
        }
        let n = self.next_dev.fetch_add(1, Ordering::Relaxed);
        let name = format!("iommufd_mock{n}");
        lock(&self.driver.devs).insert(
            name.clone(),
            MockDev {
                flags,
                cache: [DEV_CACHE_DEFAULT; DEV_CACHE_NUM],
                vdev_id: None,
                viommu: None,
                pasid_1024_fail: false,
            },
        );
        self.bus
            .add_device(DeviceBuilder::new(name.clone()).stream_ids(vec![n]))
            .inspect_err(|_| {
                lock(&self.driver.devs).remove(&name);
            })
    }

    fn remove_device(&self, dev: &Arc<Device>) {
        let _ = self.bus.remove_device(dev);
        lock(&self.driver.devs).remove(dev.name());
    }

    /// Entry `i` of mock device `dev`'s cache (`DEV_CHECK_CACHE`).
    pub fn dev_cache(&self, dev: &Device, i: usize) -> Option<u32> {
        lock(&self.driver.devs)
            .get(dev.name())?
            .cache
            .get(i)
            .copied()
    }

    fn register(&self, ctx: Weak<Ictx>) {
        let mut c = lock(&self.contexts);
        c.retain(|w| w.strong_count() > 0);
        c.push(ctx);
    }

    /// The pins the kernel would hold on the page at `uptr`: one per
    /// pages object a domain holds there, over every live context.
    pub fn page_refs(&self, uptr: u64, mem: &dyn UserMemory) -> u32 {
        let ctxs: Vec<Arc<Ictx>> = lock(&self.contexts)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        ctxs.iter().map(|c| c.pinned_refs(uptr, mem)).sum()
    }
}

/// The mock IOMMU driver.
#[derive(Default)]
struct MockDriver {
    by_stream: StreamIdGroups,
    /// Mock devices by name (shared with the domains, which check a
    /// device's flags when it attaches).
    devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
}

/// What the mock knows of a device (Linux's `struct mock_dev`).
struct MockDev {
    /// `MOCK_FLAGS_DEVICE_*`.
    flags: u32,
    /// Its cache, which a vIOMMU's invalidation sets to 0.
    cache: [u32; DEV_CACHE_NUM],
    /// Its vDEVICE id while attached to a nested domain of a vIOMMU.
    vdev_id: Option<u64>,
    /// That vIOMMU.
    viommu: Option<Viommu>,
    /// PASID 1024 was set once: the next set fails.
    pasid_1024_fail: bool,
}

/// Entries of a mock device's cache (`MOCK_DEV_CACHE_NUM`).
pub const DEV_CACHE_NUM: usize = 4;
/// A fresh cache entry (`IOMMU_TEST_DEV_CACHE_DEFAULT`).
pub const DEV_CACHE_DEFAULT: u32 = 0xbaddad;

fn dev_flags(devs: &Mutex<BTreeMap<String, MockDev>>, dev: &Device) -> u32 {
    lock(devs).get(dev.name()).map_or(0, |d| d.flags)
}

impl MockDriver {
    fn dev_flags(&self, dev: &Device) -> u32 {
        dev_flags(&self.devs, dev)
    }

    fn domain(&self, huge: bool, dirty: bool) -> Result<Box<dyn DomainOps>, Errno> {
        Ok(Box::new(MockDomain::new(
            huge,
            dirty,
            Arc::clone(&self.devs),
        )?))
    }
}

impl IommuOps for MockDriver {
    fn name(&self) -> &str {
        "iommufd-selftest"
    }

    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        self.by_stream.add_device(iommu, dev)
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        self.by_stream.remove_device(iommu, dev);
    }

    fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        self.by_stream.device_group(iommu, dev)
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        match ty {
            DomainType::Blocked => Ok(Box::new(BlockedDomain(Arc::clone(&self.devs)))),
            DomainType::Unmanaged | DomainType::Dma => self.domain(false, false),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn domain_alloc_paging_flags(
        &self,
        dev: &Arc<Device>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        let dirty = flags.contains(PagingFlags::DIRTY_TRACKING);
        if dirty && self.dev_flags(dev) & DEVICE_NO_DIRTY != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut cfg = HwptSelftest::default();
        if let Some(d) = data {
            if d.ty != HWPT_DATA_SELFTEST {
                return Err(Errno::EOPNOTSUPP);
            }
            d.copy_struct(HWPT_DATA_SELFTEST, cfg.as_mut_bytes(), 4)?;
        }
        match cfg.pagetable_type {
            0 => self.domain(false, dirty),
            MOCK_IOMMUPT_HUGE => self.domain(true, dirty),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn hw_info(&self, _dev: &Device, ty: u32) -> Result<Option<(u32, Vec<u8>)>, Errno> {
        if ty != 0 && ty != HW_INFO_TYPE_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&0u32.to_ne_bytes());
        data.extend_from_slice(&HW_INFO_SELFTEST_REGVAL.to_ne_bytes());
        Ok(Some((HW_INFO_TYPE_SELFTEST, data)))
    }

    fn pgsize_bitmap(&self) -> u64 {
        // The default domain's: the table's leaves and twice each.
        let native = MOCK_PAGE_SIZE | MOCK_HUGE_PAGE_SIZE | (MOCK_HUGE_PAGE_SIZE << 9);
        native | (native << 1)
    }

    fn capable(&self, cap: Capability) -> bool {
        matches!(cap, Capability::CacheCoherency)
    }

    fn dirty_tracking_capable(&self, dev: &Device) -> bool {
        self.dev_flags(dev) & DEVICE_NO_DIRTY == 0
    }

    fn max_pasids(&self, dev: &Device) -> u32 {
        if self.dev_flags(dev) & DEVICE_PASID != 0 {
            1 << PASID_WIDTH
        } else {
            0
        }
    }

    fn domain_alloc_nested(
        &self,
        _dev: &Arc<Device>,
        parent: &Domain,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        if flags & !crate::uapi::hwpt_alloc::PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if !is_mock(parent) {
            return Err(Errno::EINVAL);
        }
        Ok(Box::new(MockNested::new(data, Arc::clone(&self.devs))?))
    }

    fn viommu_alloc(
        &self,
        _dev: &Arc<Device>,
        _parent: &Domain,
        ty: u32,
        data: Option<&UserData<'_>>,
    ) -> Result<Box<dyn ViommuOps>, Errno> {
        if ty != VIOMMU_TYPE_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        // struct iommu_viommu_selftest { in_data, out_data,
        // out_mmap_offset, out_mmap_length }: the first version ends
        // with out_data.
        let mut reply = None;
        let mut region = None;
        if let Some(d) = data {
            let mut v = [0u8; 24];
            d.copy_struct(VIOMMU_TYPE_SELFTEST, &mut v, 8)?;
            // Loopback: out_data is in_data, and two pages to mmap whose
            // first word is in_data too, at an offset of their own.
            static NEXT: AtomicU32 = AtomicU32::new(1);
            let len = 2 * crate::iopt::PAGE_SIZE;
            let offset = u64::from(NEXT.fetch_add(1, Ordering::Relaxed)) * len;
            v.copy_within(0..4, 4);
            v[8..16].copy_from_slice(&offset.to_ne_bytes());
            v[16..24].copy_from_slice(&len.to_ne_bytes());
            let mut pages = vec![0u8; len as usize];
            pages[..4].copy_from_slice(&v[0..4]);
            region = Some((offset, pages));
            reply = Some(v.to_vec());
        }
        Ok(Box::new(MockViommu {
            devs: Arc::clone(&self.devs),
            reply,
            region,
            queues: Mutex::new([false; HW_QUEUE_MAX as usize]),
        }))
    }
}

/// PASID bits of a PASID-capable mock device (`MOCK_PASID_WIDTH`).
pub const PASID_WIDTH: u32 = 20;
/// The PASID whose second attach the mock fails (`IOMMU_TEST_PASID_RESERVED`),
/// to exercise the caller's roll-back.
pub const PASID_RESERVED: u32 = 1024;

/// The mock's `set_dev_pasid` (Linux's `mock_domain_set_dev_pasid_nop`):
/// every other set of PASID 1024 fails with `ENOMEM`.
fn mock_set_dev_pasid(
    devs: &Mutex<BTreeMap<String, MockDev>>,
    dev: &Device,
    pasid: u32,
) -> Result<(), Errno> {
    if pasid != PASID_RESERVED {
        return Ok(());
    }
    let mut d = lock(devs);
    let m = d.get_mut(dev.name()).ok_or(Errno::EINVAL)?;
    m.pasid_1024_fail = !m.pasid_1024_fail;
    if m.pasid_1024_fail {
        Ok(())
    } else {
        Err(Errno::ENOMEM)
    }
}

/// PASID 1024 back to blocked: the next set succeeds.
fn mock_remove_dev_pasid(devs: &Mutex<BTreeMap<String, MockDev>>, dev: &Device, pasid: u32) {
    if pasid == PASID_RESERVED {
        if let Some(m) = lock(devs).get_mut(dev.name()) {
            m.pasid_1024_fail = false;
        }
    }
}

/// `IOMMU_VEVENTQ_TYPE_SELFTEST`.
pub const VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;
/// `IOMMU_VIOMMU_TYPE_SELFTEST`.
pub const VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`.
pub const HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`.
pub const VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`.
pub const INVALIDATE_FLAG_ALL: u32 = 1 << 0;
/// Entries of a mock nested domain's IOTLB (`MOCK_NESTED_DOMAIN_IOTLB_NUM`).
pub const NESTED_IOTLB_NUM: usize = 4;

/// The mock's vIOMMU (Linux's `struct mock_viommu`).
struct MockViommu {
    devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
    reply: Option<Vec<u8>>,
    /// The pages it offers to mmap, at their offset.
    region: Option<(u64, Vec<u8>)>,
    /// Which of its HW queues exist.
    queues: Mutex<[bool; HW_QUEUE_MAX as usize]>,
}

/// `IOMMU_HW_QUEUE_TYPE_SELFTEST`.
pub const HW_QUEUE_TYPE_SELFTEST: u32 = 0xdead_beef;
/// HW queues of a mock vIOMMU (`IOMMU_TEST_HW_QUEUE_MAX`).
pub const HW_QUEUE_MAX: u32 = 2;

impl ViommuOps for MockViommu {
    fn alloc_domain_nested(
        &self,
        _viommu: &Viommu,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        if flags & !crate::uapi::hwpt_alloc::PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(Box::new(MockNested::new(data, Arc::clone(&self.devs))?))
    }

    /// The device caches of the vDEVICEs named (Linux's
    /// `mock_viommu_cache_invalidate`).
    fn cache_invalidate(
        &self,
        viommu: &Viommu,
        array: &UserDataArray<'_>,
    ) -> Result<(), InvalidateError> {
        let fail = |handled, errno| Err(InvalidateError { handled, errno });
        // An empty array checks the type only.
        if array.entry_num == 0 && array.ty == VIOMMU_INVALIDATE_DATA_SELFTEST {
            return Ok(());
        }
        let cmds = match array.copy_entries(VIOMMU_INVALIDATE_DATA_SELFTEST, 12) {
            Ok(c) => c,
            Err(e) => return fail(0, e),
        };
        for (i, cmd) in cmds.chunks_exact(12).enumerate() {
            let word = |k: usize| u32::from_ne_bytes([cmd[k], cmd[k + 1], cmd[k + 2], cmd[k + 3]]);
            let (flags, vdev_id, cache_id) = (word(0), word(4), word(8));
            if flags & !INVALIDATE_FLAG_ALL != 0 {
                return fail(i as u32, Errno::EOPNOTSUPP);
            }
            if cache_id as usize >= DEV_CACHE_NUM {
                return fail(i as u32, Errno::EINVAL);
            }
            let Some(dev) = viommu.find_dev(u64::from(vdev_id)) else {
                return fail(i as u32, Errno::EINVAL);
            };
            let mut devs = lock(&self.devs);
            let Some(m) = devs.get_mut(dev.name()) else {
                return fail(i as u32, Errno::EINVAL);
            };
            if flags & INVALIDATE_FLAG_ALL != 0 {
                m.cache = [0; DEV_CACHE_NUM];
            } else {
                m.cache[cache_id as usize] = 0;
            }
        }
        Ok(())
    }

    fn init_reply(&self) -> Option<Vec<u8>> {
        self.reply.clone()
    }

    fn mmap_region(&self) -> Option<(u64, Vec<u8>)> {
        self.region.clone()
    }

    /// Linux's `mock_hw_queue_init_phys`: indexes in order, each after
    /// the one before (which it depends on), and the host address the
    /// one the parent maps the guest's address to.
    fn hw_queue_init(
        &self,
        viommu: &Viommu,
        ty: u32,
        index: u32,
        base_pa: u64,
        base_iova: u64,
    ) -> Result<Option<u32>, Errno> {
        if ty != HW_QUEUE_TYPE_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        if index >= HW_QUEUE_MAX {
            return Err(Errno::EINVAL);
        }
        let mut q = lock(&self.queues);
        if q[index as usize] {
            return Err(Errno::EEXIST);
        }
        if index > 0 && !q[index as usize - 1] {
            return Err(Errno::EIO);
        }
        let pa = viommu.parent().iova_to_phys(Iova::new(base_iova));
        if pa.map(|p| p.raw()) != Some(base_pa) {
            return Err(Errno::EFAULT);
        }
        q[index as usize] = true;
        Ok(index.checked_sub(1))
    }

    fn hw_queue_destroy(&self, _ty: u32, index: u32) {
        if let Some(slot) = lock(&self.queues).get_mut(index as usize) {
            *slot = false;
        }
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// The mock's nested domain (Linux's `struct mock_iommu_domain_nested`):
/// an IOTLB of four values the guest's invalidations clear.
struct MockNested {
    iotlb: Mutex<[u32; NESTED_IOTLB_NUM]>,
    devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
}

impl MockNested {
    fn new(
        data: &UserData<'_>,
        devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
    ) -> Result<Self, Errno> {
        if data.ty != HWPT_DATA_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut cfg = HwptSelftest::default();
        data.copy_struct(HWPT_DATA_SELFTEST, cfg.as_mut_bytes(), 4)?;
        Ok(Self {
            iotlb: Mutex::new([cfg.iotlb; NESTED_IOTLB_NUM]),
            devs,
        })
    }

    /// Entry `i` of its IOTLB (`MD_CHECK_IOTLB`).
    pub fn iotlb(&self, i: usize) -> Option<u32> {
        lock(&self.iotlb).get(i).copied()
    }
}

impl DomainOps for MockNested {
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        // Through a vIOMMU, the device must have a vDEVICE there.
        let vdev = match domain.viommu() {
            Some(v) => Some(v.virt_id_of(dev).ok_or(Errno::ENOENT)?),
            None => None,
        };
        if let Some(m) = lock(&self.devs).get_mut(dev.name()) {
            m.vdev_id = vdev;
            m.viommu = domain.viommu().cloned();
        }
        Ok(())
    }

    fn set_dev_pasid(
        &self,
        _domain: &Domain,
        dev: &Arc<Device>,
        pasid: u32,
        _old: Option<&Domain>,
    ) -> Result<(), Errno> {
        mock_set_dev_pasid(&self.devs, dev, pasid)
    }

    fn remove_dev_pasid(&self, _domain: &Domain, dev: &Arc<Device>, pasid: u32) {
        mock_remove_dev_pasid(&self.devs, dev, pasid);
    }

    /// Linux's `mock_domain_cache_invalidate_user`: entries copied one by
    /// one (each with the size rules of a structure).
    fn cache_invalidate_user(&self, array: &UserDataArray<'_>) -> Result<(), InvalidateError> {
        let fail = |handled, errno| Err(InvalidateError { handled, errno });
        if array.ty != HWPT_INVALIDATE_DATA_SELFTEST {
            return fail(0, Errno::EINVAL);
        }
        for i in 0..array.entry_num as usize {
            let at = i * array.entry_len;
            let entry = UserData {
                ty: array.ty,
                data: array.data.get(at..at + array.entry_len).unwrap_or(&[]),
            };
            let mut inv = [0u8; 8];
            if let Err(e) = entry.copy_struct(HWPT_INVALIDATE_DATA_SELFTEST, &mut inv, 8) {
                return fail(i as u32, e);
            }
            let flags = u32::from_ne_bytes([inv[0], inv[1], inv[2], inv[3]]);
            let id = u32::from_ne_bytes([inv[4], inv[5], inv[6], inv[7]]) as usize;
            if flags & !INVALIDATE_FLAG_ALL != 0 {
                return fail(i as u32, Errno::EOPNOTSUPP);
            }
            if id >= NESTED_IOTLB_NUM {
                return fail(i as u32, Errno::EINVAL);
            }
            let mut t = lock(&self.iotlb);
            if flags & INVALIDATE_FLAG_ALL != 0 {
                *t = [0; NESTED_IOTLB_NUM];
            } else {
                t[id] = 0;
            }
        }
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// The mock's blocking domain.
struct BlockedDomain(Arc<Mutex<BTreeMap<String, MockDev>>>);

impl DomainOps for BlockedDomain {
    fn attach_dev(&self, _domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        leave_viommu(&self.0, dev);
        Ok(())
    }
}

/// `dev` is no longer attached through a vIOMMU.
fn leave_viommu(devs: &Mutex<BTreeMap<String, MockDev>>, dev: &Device) {
    if let Some(m) = lock(devs).get_mut(dev.name()) {
        m.vdev_id = None;
        m.viommu = None;
    }
}

/// A mock paging domain: a real AMD v1 table with 2 KiB pages.
///
/// Like Linux's mock (whose AMD v1 table maps any power-of-two size as
/// contiguous entries), it takes every page size the core picks for a
/// CPU's pages, 4 KiB and 2 MiB among them: such a page is two of the
/// table's own leaves, and the pair shares its dirty state (the mock
/// marks both when told one is written), as contiguous entries do.
struct MockDomain {
    table: IoPageTable<AmdV1Selftest, HeapMemory>,
    /// The table's own leaf sizes.
    native: u64,
    huge: bool,
    /// Made with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (Linux sets the
    /// domain's `dirty_ops` then only).
    dirty: bool,
    /// Pages of a size the table has no leaf for, by IOVA: their size.
    pairs: Mutex<BTreeMap<u64, u64>>,
    devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
}

impl MockDomain {
    fn new(
        huge: bool,
        dirty: bool,
        devs: Arc<Mutex<BTreeMap<String, MockDev>>>,
    ) -> Result<Self, Errno> {
        let fmt = AmdV1Selftest::new(5).map_err(Errno::from)?;
        let table = IoPageTable::new(fmt, HeapMemory::new()).map_err(Errno::from)?;
        let native = table.pgsize_bitmap();
        Ok(Self {
            table,
            native,
            huge,
            dirty,
            pairs: Mutex::new(BTreeMap::new()),
            devs,
        })
    }

    /// The page sizes offered: the table's own and twice each.
    fn pgsizes(&self) -> u64 {
        if self.huge {
            // Huge pages only; Linux lists the CPU page too so that
            // iommufd accepts the domain.
            MOCK_HUGE_PAGE_SIZE | crate::iopt::PAGE_SIZE
        } else {
            self.native | (self.native << 1)
        }
    }

    /// The table's leaf size and count for `count` pages of `pgsize`.
    fn leaves(&self, pgsize: u64, count: usize) -> Result<(u64, usize), Errno> {
        if self.native & pgsize != 0 {
            Ok((pgsize, count))
        } else if self.native & (pgsize >> 1) != 0 {
            Ok((pgsize >> 1, count.checked_mul(2).ok_or(Errno::EINVAL)?))
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// What a device write to `iova` does to the dirty bits (Linux's
    /// mock `set_dirty`): the leaf, or both leaves of a pair, marked.
    fn set_dirty(&self, iova: u64) {
        let pair = lock(&self.pairs)
            .range(..=iova)
            .next_back()
            .filter(|(&at, &size)| iova < at + size)
            .map(|(&at, &size)| (at, size));
        match pair {
            Some((at, size)) => {
                let mut a = at;
                while a < at + size {
                    let _ = self.table.hw_write(Iova::new(a));
                    a += size >> 1;
                }
            }
            None => {
                let _ = self.table.hw_write(Iova::new(iova));
            }
        }
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
        let (leaf, n) = self.leaves(pgsize, pgcount)?;
        let done = PagingOps::map_pages(&self.table, iova, paddr, leaf, n, prot)?;
        if leaf != pgsize {
            let mut pairs = lock(&self.pairs);
            for k in 0..done / pgsize {
                pairs.insert(iova.raw() + k * pgsize, pgsize);
            }
        }
        Ok(done - done % pgsize)
    }

    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        let Ok((leaf, n)) = self.leaves(pgsize, pgcount) else {
            return Unmapped::NOTHING;
        };
        let u = self.table.unmap_leaves(iova, leaf, n, gather);
        if u.size != 0 {
            let (start, end) = (u.iova.raw(), u.iova.raw().saturating_add(u.size));
            let mut pairs = lock(&self.pairs);
            let gone: Vec<u64> = pairs
                .range(..end)
                .rev()
                .take_while(|(&at, &size)| at + size > start)
                .map(|(&at, _)| at)
                .collect();
            for at in gone {
                pairs.remove(&at);
            }
        }
        u
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        PagingOps::iova_to_phys(&self.table, iova)
    }

    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        PagingOps::first_mapping(&self.table, start, last)
    }
}

impl DirtyOps for MockDomain {
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        self.table.set_dirty_tracking(enable).map_err(Errno::from)
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        no_clear: bool,
        dirty: &mut dyn FnMut(Iova, u64),
    ) -> Result<(), Errno> {
        self.table
            .read_and_clear_dirty_with(iova, size, !no_clear, dirty);
        Ok(())
    }
}

impl DomainOps for MockDomain {
    fn attach_dev(&self, _domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        // A device that cannot track dirty pages cannot use a domain
        // that does.
        if self.dirty && dev_flags(&self.devs, dev) & DEVICE_NO_DIRTY != 0 {
            return Err(Errno::EINVAL);
        }
        leave_viommu(&self.devs, dev);
        Ok(())
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        Some(self)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        Some(if self.huge {
            DomainGeometry::bits(56)
        } else {
            DomainGeometry {
                aperture_start: Iova::new(MOCK_APERTURE_START),
                aperture_end: Iova::new(MOCK_APERTURE_LAST),
                force_aperture: true,
            }
        })
    }

    fn pgsize_bitmap(&self) -> Option<u64> {
        Some(self.pgsizes())
    }

    fn dirty(&self) -> Option<&dyn DirtyOps> {
        self.dirty.then_some(self as &dyn DirtyOps)
    }

    fn set_dev_pasid(
        &self,
        _domain: &Domain,
        dev: &Arc<Device>,
        pasid: u32,
        _old: Option<&Domain>,
    ) -> Result<(), Errno> {
        mock_set_dev_pasid(&self.devs, dev, pasid)
    }

    fn remove_dev_pasid(&self, _domain: &Domain, dev: &Arc<Device>, pasid: u32) {
        mock_remove_dev_pasid(&self.devs, dev, pasid);
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

fn is_mock(d: &Domain) -> bool {
    d.ops().as_any().is_some_and(|a| a.is::<MockDomain>())
}

impl Ictx {
    /// Serves `IOMMU_TEST_CMD` on `platform` from now on.
    pub fn enable_selftest(self: &Arc<Self>, platform: &Arc<Selftest>) {
        platform.register(Arc::downgrade(self));
        let _ = self.me.set(Arc::downgrade(self));
        let _ = self.selftest.set(Arc::clone(platform));
    }

    /// Pins this context holds on the page of memory at `uptr`: one per
    /// pages object a domain or an access holds there. A file's pages may
    /// be mapped at other addresses than the caller's: they are compared
    /// by page ([`UserMemory::page_key`]).
    pub fn pinned_refs(&self, uptr: u64, mem: &dyn UserMemory) -> u32 {
        use crate::iopt::PAGE_SIZE;
        let page = uptr & !(PAGE_SIZE - 1);
        let key = mem.page_key(page);
        let mut seen: Vec<*const crate::iopt::Pages> = Vec::new();
        for id in self.ids() {
            let Some(Object::Ioas(ioas)) = self.object(id) else {
                continue;
            };
            let g = lock(&ioas);
            for a in g.iopt.areas() {
                let ptr = Arc::as_ptr(&a.pages);
                if seen.contains(&ptr) {
                    continue;
                }
                // The area's own pages, by address.
                let first = a.uaddr(a.iova) & !(PAGE_SIZE - 1);
                let last = a.uaddr(a.last) & !(PAGE_SIZE - 1);
                let here = if a.pages.backing.is_some() {
                    (0..=(last - first) / PAGE_SIZE)
                        .map(|k| first + k * PAGE_SIZE)
                        .find(|&p| mem.page_key(p) == key)
                } else {
                    (first..=last).contains(&page).then_some(page)
                };
                let Some(at) = here else { continue };
                if !g.domains.is_empty() || g.access_pins_page(a, at) {
                    seen.push(ptr);
                }
            }
        }
        seen.len() as u32
    }

    /// `IOMMU_TEST_CMD`.
    pub(crate) fn test_cmd(
        &self,
        ucmd: &Ucmd,
        arg: u64,
        mem: &dyn UserMemory,
    ) -> Result<i32, Errno> {
        let st = self.selftest.get().ok_or(Errno::ENOTTY)?;
        let mut c = TestCmd::read_from_bytes(ucmd.bytes()).map_err(|_| Errno::EINVAL)?;
        let respond = |c: &TestCmd| {
            let n = (ucmd.user_size() as usize).min(core::mem::size_of::<TestCmd>());
            mem.write(arg, &c.as_bytes()[..n])
        };
        let r: Result<(), Errno> = match c.op {
            op::ADD_RESERVED => {
                let (start, length) = (c.u64_at(0), c.u64_at(8));
                if length == 0 {
                    return Err(Errno::EINVAL);
                }
                let last = start.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
                let ioas = self.ioas(c.id)?;
                let r = lock(&ioas).iopt.reserve(start, last, TEST_RESERVED_OWNER);
                r
            }
            op::MOCK_DOMAIN | op::MOCK_DOMAIN_FLAGS => {
                let flags = if c.op == op::MOCK_DOMAIN_FLAGS {
                    c.u32_at(12)
                } else {
                    0
                };
                let dev = st.add_device(flags)?;
                let undo_dev = |e| {
                    st.remove_device(&dev);
                    e
                };
                let idev_id = self.bind(&dev).map_err(undo_dev)?;
                let undo_bind = |e| {
                    let _ = self.unbind(idev_id);
                    st.remove_device(&dev);
                    e
                };
                let hwpt_id = self.attach(idev_id, c.id).map_err(undo_bind)?;
                let stdev = Arc::new(StDev {
                    idev_id,
                    dev: Arc::clone(&dev),
                    platform: Arc::clone(st),
                });
                let stdev_id = self.insert(Object::Selftest(stdev)).map_err(undo_bind)?;
                c.set_u32(0, stdev_id);
                c.set_u32(4, hwpt_id);
                c.set_u32(8, idev_id);
                respond(&c).inspect_err(|_| {
                    let _ = self.destroy(stdev_id);
                })
            }
            op::MOCK_DOMAIN_REPLACE => {
                let stdev = self.stdev(c.id)?;
                let hwpt = self.replace(stdev.idev_id, c.u32_at(0))?;
                c.set_u32(0, hwpt);
                respond(&c)
            }
            op::MD_CHECK_MAP => {
                let (iova, length, uptr) = (c.u64_at(0), c.u64_at(8), c.u64_at(16));
                self.check_map(c.id, iova, length, uptr, mem)
            }
            op::MD_CHECK_REFS => {
                let (length, uptr, refs) = (c.u64_at(0), c.u64_at(8), c.u32_at(16));
                let page = crate::iopt::PAGE_SIZE;
                if !length.is_multiple_of(page)
                    || !uptr.is_multiple_of(page)
                    || uptr.checked_add(length).is_none()
                {
                    return Err(Errno::EINVAL);
                }
                let mut at = uptr;
                while at < uptr + length {
                    let mut b = [0u8; 1];
                    mem.read(at, &mut b)?;
                    if st.page_refs(at, mem) != refs {
                        return Err(Errno::EIO);
                    }
                    at += page;
                }
                Ok(())
            }
            op::DIRTY => {
                // struct { flags, iova, length, page_size, uptr, out_nr_dirty }
                let (iova, length, page_size, uptr) =
                    (c.u64_at(8), c.u64_at(16), c.u64_at(24), c.u64_at(32));
                c.args[5] = self.test_dirty(c.id, iova, length, page_size, uptr, mem)?;
                respond(&c)
            }
            op::CREATE_ACCESS => {
                let flags = c.u32_at(4);
                if flags & !ACCESS_CREATE_NEEDS_PIN_PAGES != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let fd = self.create_access(c.id, flags & ACCESS_CREATE_NEEDS_PIN_PAGES != 0)?;
                c.set_u32(0, fd as u32);
                respond(&c)
            }
            op::ACCESS_REPLACE_IOAS => {
                let (_, access) = self.access_file(c.id)?;
                let ioas_id = c.u32_at(0);
                access.ioas_id().ok_or(Errno::ENOENT)?;
                let ioas = self.ioas(ioas_id)?;
                access.change_ioas(ioas_id, &ioas)
            }
            op::ACCESS_PAGES => {
                // struct { flags, out_access_pages_id, iova, length, uptr }
                let (flags, iova, length, uptr) =
                    (c.u32_at(0), c.u64_at(8), c.u64_at(16), c.u64_at(24));
                if length > ACCESS_MAX {
                    return Err(Errno::ENOMEM);
                }
                if flags & !(ACCESS_WRITE | ACCESS_SYZ) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (_, access) = self.access_file(c.id)?;
                if !access.needs_pin {
                    return Err(Errno::EOPNOTSUPP);
                }
                // The page array and the item.
                if self.should_fail() || self.should_fail() {
                    return Err(Errno::ENOMEM);
                }
                self.check_access_pin_limit(&access, iova, length)?;
                let (item, pages) = access.pin_pages(iova, length, flags & ACCESS_WRITE != 0)?;
                // The pages pinned are the caller's own at `uptr`.
                if uptr != 0 {
                    let base = uptr.wrapping_sub(iova % crate::iopt::PAGE_SIZE);
                    let same = pages.iter().enumerate().all(|(k, &p)| {
                        let mine = base.wrapping_add(k as u64 * crate::iopt::PAGE_SIZE);
                        mem.page_key(p) == mem.page_key(mine)
                    });
                    if !same {
                        let _ = access.unpin(item);
                        return Err(Errno::EBADE);
                    }
                }
                c.set_u32(4, item);
                respond(&c).inspect_err(|_| {
                    let _ = access.unpin(item);
                })
            }
            op::DESTROY_ACCESS_PAGES => {
                let (_, access) = self.access_file(c.id)?;
                access.unpin(c.u32_at(0)).map_err(|_| Errno::ENOENT)
            }
            op::ACCESS_RW => {
                // struct { iova, length, uptr, flags }
                let (iova, length, uptr, flags) =
                    (c.u64_at(0), c.u64_at(8), c.u64_at(16), c.u32_at(24));
                if length > ACCESS_MAX {
                    return Err(Errno::ENOMEM);
                }
                if flags & !(ACCESS_RW_WRITE | ACCESS_RW_SLOW_PATH | ACCESS_SYZ) != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let (_, access) = self.access_file(c.id)?;
                if self.should_fail() {
                    return Err(Errno::ENOMEM);
                }
                let mut tmp = vec![0u8; length as usize];
                let write = flags & ACCESS_RW_WRITE != 0;
                if write {
                    mem.read(uptr, &mut tmp)?;
                }
                access.rw(iova, &mut tmp, write)?;
                if !write {
                    mem.write(uptr, &tmp)?;
                }
                Ok(())
            }
            op::DMABUF_GET => {
                // struct { length, open_flags }
                let len = u64::from(c.u32_at(0)).next_multiple_of(crate::iopt::PAGE_SIZE);
                if len == 0 || len > crate::iopt::PAGE_SIZE * 512 {
                    return Err(Errno::EINVAL);
                }
                let files = self.files.get().ok_or(Errno::EOPNOTSUPP)?;
                if self.should_fail() {
                    return Err(Errno::ENOMEM);
                }
                // Linux 7.3.4 returns 0 here and leaves the descriptor
                // unreported; the selftest reads it from the ioctl's value,
                // which is where it is given.
                return files.install(Arc::new(Dmabuf::new(len)));
            }
            op::DMABUF_REVOKE => {
                // struct { dmabuf_fd, revoked }
                let files = self.files.get().ok_or(Errno::EINVAL)?;
                let file = files.get(c.u32_at(0) as i32).ok_or(Errno::EINVAL)?;
                let buf = file
                    .as_any()
                    .downcast_ref::<Dmabuf>()
                    .ok_or(Errno::EOPNOTSUPP)?;
                let revoked = c.u32_at(4) != 0;
                buf.revoked.store(revoked, Ordering::SeqCst);
                if revoked {
                    self.dmabuf_revoked(buf);
                }
                Ok(())
            }
            op::MD_CHECK_IOTLB => {
                // struct { id, iotlb }
                let h = match self.object(c.id) {
                    Some(Object::HwptNested(h)) => h,
                    _ => return Err(Errno::ENOENT),
                };
                let mock = h
                    .domain
                    .ops()
                    .as_any()
                    .and_then(|a| a.downcast_ref::<MockNested>())
                    .ok_or(Errno::EINVAL)?;
                match mock.iotlb(c.u32_at(0) as usize) {
                    Some(v) if v == c.u32_at(4) => Ok(()),
                    _ => Err(Errno::EINVAL),
                }
            }
            op::TRIGGER_IOPF => {
                // struct { dev_id, pasid, grpid, perm, addr }
                let idev = self.device(c.u32_at(0))?;
                let pasid = c.u32_at(4);
                let mut flags = crate::eventq::PGFAULT_FLAGS_LAST_PAGE;
                if pasid != 0 {
                    flags |= crate::eventq::PGFAULT_FLAGS_PASID_VALID;
                }
                let fault = crate::eventq::PageFault {
                    flags,
                    pasid,
                    grpid: c.u32_at(8),
                    perm: c.u32_at(12),
                    addr: c.u64_at(16),
                };
                // The fault goes to the queue of the HWPT the device is
                // attached to (what Linux's report does with it when
                // there is none is not the caller's concern: 0 either way).
                if let Some(q) = self.fault_queue_of(c.u32_at(0), &idev, pasid) {
                    q.report(c.u32_at(0), vec![fault]);
                }
                Ok(())
            }
            op::TRIGGER_VEVENT => {
                let idev = self.device(c.u32_at(0))?;
                let (viommu, vdev) = {
                    let devs = lock(&st.driver.devs);
                    let m = devs.get(idev.dev.name()).ok_or(Errno::ENOENT)?;
                    (m.viommu.clone(), m.vdev_id)
                };
                match (viommu, vdev) {
                    (Some(v), Some(id)) if id != 0 => {
                        self.report_vevent(&v, VEVENTQ_TYPE_SELFTEST, &(id as u32).to_ne_bytes())
                    }
                    _ => Err(Errno::ENOENT),
                }
            }
            op::PASID_ATTACH | op::PASID_REPLACE => {
                // struct { pasid, pt_id }; id is the selftest object.
                let stdev = self.stdev(c.id)?;
                let (pasid, pt) = (c.u32_at(0), c.u32_at(4));
                if c.op == op::PASID_ATTACH {
                    self.pasid_attach(stdev.idev_id, pasid, pt)?;
                    respond(&c).inspect_err(|_| {
                        let _ = self.pasid_detach(stdev.idev_id, pasid);
                    })
                } else {
                    self.pasid_replace(stdev.idev_id, pasid, pt)?;
                    respond(&c)
                }
            }
            op::PASID_DETACH => {
                let stdev = self.stdev(c.id)?;
                self.pasid_detach(stdev.idev_id, c.u32_at(0))
            }
            op::PASID_CHECK_HWPT => {
                // struct { pasid, hwpt_id }: 0 checks that it is detached.
                let stdev = self.stdev(c.id)?;
                let (pasid, hwpt) = (c.u32_at(0), c.u32_at(4));
                let attached = self.pasid_attached(stdev.idev_id, pasid);
                if hwpt == 0 {
                    return if attached.is_none() {
                        Ok(0)
                    } else {
                        Err(Errno::EINVAL)
                    };
                }
                match self.object(hwpt) {
                    Some(Object::HwptPaging(_) | Object::HwptNested(_)) => {}
                    _ => return Err(Errno::ENOENT),
                }
                if attached == Some(hwpt) {
                    Ok(())
                } else {
                    Err(Errno::EINVAL)
                }
            }
            op::DEV_CHECK_CACHE => {
                let idev = self.device(c.id)?;
                let (i, want) = (c.u32_at(0) as usize, c.u32_at(4));
                match st.dev_cache(&idev.dev, i) {
                    Some(v) if v == want => Ok(()),
                    _ => Err(Errno::EINVAL),
                }
            }
            op::SET_TEMP_MEMORY_LIMIT => {
                let limit = c.u32_at(0);
                if (limit as usize) < core::mem::size_of::<u64>() + core::mem::size_of::<u32>() {
                    return Err(Errno::EINVAL);
                }
                st.memory_limit.store(limit, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(Errno::EOPNOTSUPP),
        };
        r.map(|()| 0)
    }

    /// `IOMMU_TEST_OP_DIRTY`: the mock is told the device wrote the page
    /// of every bit set in the caller's bitmap; returns how many.
    fn test_dirty(
        &self,
        id: u32,
        iova: u64,
        length: u64,
        page_size: u64,
        uptr: u64,
        mem: &dyn UserMemory,
    ) -> Result<u64, Errno> {
        if page_size == 0
            || length == 0
            || !iova.is_multiple_of(page_size)
            || !length.is_multiple_of(page_size)
            || uptr == 0
        {
            return Err(Errno::EINVAL);
        }
        let max = length / page_size;
        if max > (16 << 20) * 8 {
            return Err(Errno::EOVERFLOW);
        }
        let hwpt = self.md_hwpt(id)?;
        let mock = hwpt
            .domain
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<MockDomain>())
            .ok_or(Errno::EINVAL)?;
        if !mock.dirty || !mock.table.dirty_tracking() {
            return Err(Errno::EINVAL);
        }
        let mut bits = vec![0u8; max.div_ceil(8) as usize];
        mem.read(uptr, &mut bits)?;
        let mut count = 0;
        for i in 0..max {
            if bits[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                mock.set_dirty(iova.wrapping_add(i * page_size));
                count += 1;
            }
        }
        Ok(count)
    }

    /// Every area over `buf` leaves the domains (Linux's
    /// `iopt_revoke_notify`).
    ///
    /// One pages object can back areas of several IOASes (a copy shares
    /// it): every area over a pages object this revoke detached leaves
    /// its domains, wherever it is, not only the first one met.
    fn dmabuf_revoked(&self, buf: &Dmabuf) {
        let mut detached_now: Vec<*const DmabufPages> = Vec::new();
        for id in self.ids() {
            let Some(Object::Ioas(ioas)) = self.object(id) else {
                continue;
            };
            let g = lock(&ioas);
            let hit: Vec<crate::iopt::Area> = g
                .iopt
                .areas()
                .filter(|a| {
                    a.pages.dmabuf().is_some_and(|d| {
                        if !core::ptr::eq(Arc::as_ptr(&d.buf), buf) {
                            return false;
                        }
                        let p: *const DmabufPages = d;
                        if !d.detached.swap(true, Ordering::SeqCst) {
                            detached_now.push(p);
                        }
                        detached_now.contains(&p)
                    })
                })
                .cloned()
                .collect();
            for (_, d) in &g.domains {
                let _ = crate::ctx::unmap_areas(d, &hit);
            }
        }
    }

    /// The fault queue of the HWPT device `dev_id` is attached to.
    fn fault_queue_of(
        &self,
        dev_id: u32,
        idev: &crate::device::IDevice,
        pasid: u32,
    ) -> Option<Arc<crate::eventq::Fault>> {
        let hwpt = self
            .pasid_hwpt(dev_id, pasid)
            .or_else(|| self.group_hwpt(idev))?;
        match hwpt {
            crate::device::Hwpt::Nested(h) => h.fault.clone(),
            crate::device::Hwpt::Paging(_) => None,
        }
    }

    /// The paging HWPT `id` with a mock domain (Linux's `get_md_pagetable`).
    fn md_hwpt(&self, id: u32) -> Result<Arc<crate::device::HwptPaging>, Errno> {
        let hwpt = match self.object(id) {
            Some(Object::HwptPaging(h)) => h,
            _ => return Err(Errno::ENOENT),
        };
        if hwpt.domain.ty() != DomainType::Unmanaged || !is_mock(&hwpt.domain) {
            return Err(Errno::EINVAL);
        }
        Ok(hwpt)
    }

    /// Makes an access object attached to IOAS `ioas_id` and a descriptor
    /// for it (closing the descriptor destroys it).
    fn create_access(&self, ioas_id: u32, needs_pin: bool) -> Result<i32, Errno> {
        let files = self.files.get().ok_or(Errno::EOPNOTSUPP)?;
        let access = crate::access::Access::new(needs_pin);
        let id = self.insert(Object::Access(Arc::clone(&access)))?;
        let ioas = match self.ioas(ioas_id) {
            Ok(i) => i,
            Err(e) => {
                self.remove(id);
                return Err(e);
            }
        };
        if let Err(e) = access.change_ioas(ioas_id, &ioas) {
            self.remove(id);
            return Err(e);
        }
        let file = Arc::new(AccessFile {
            access: Arc::clone(&access),
            id,
            ctx: self.me.get().cloned().unwrap_or_default(),
        });
        // On failure the file's drop detaches and removes the object.
        files.install(file)
    }

    /// An access's pin is a new pin where its IOAS has no domain.
    fn check_access_pin_limit(
        &self,
        access: &crate::access::Access,
        iova: u64,
        length: u64,
    ) -> Result<(), Errno> {
        let Some(id) = access.ioas_id() else {
            return Ok(());
        };
        let Ok(ioas) = self.ioas(id) else {
            return Ok(());
        };
        if lock(&ioas).domains.is_empty() {
            let pages = (iova % crate::iopt::PAGE_SIZE + length).div_ceil(crate::iopt::PAGE_SIZE);
            self.check_pin_limit(pages)?;
        }
        Ok(())
    }

    /// The access behind descriptor `fd` (`EBADFD` for anything else).
    fn access_file(&self, fd: u32) -> Result<(u32, Arc<crate::access::Access>), Errno> {
        let files = self.files.get().ok_or(Errno::EBADFD)?;
        let fd = i32::try_from(fd).map_err(|_| Errno::EBADFD)?;
        let file = files.get(fd).ok_or(Errno::EBADFD)?;
        let a = file
            .as_any()
            .downcast_ref::<AccessFile>()
            .ok_or(Errno::EBADFD)?;
        Ok((a.id, Arc::clone(&a.access)))
    }

    fn stdev(&self, id: u32) -> Result<Arc<StDev>, Errno> {
        match self.object(id) {
            Some(Object::Selftest(s)) => Ok(s),
            _ => Err(Errno::ENOENT),
        }
    }

    /// `MD_CHECK_MAP`: every mock page of `[iova, iova + length)` in HWPT
    /// `id` translates to the same offset of `uptr`'s memory.
    fn check_map(
        &self,
        id: u32,
        iova: u64,
        length: u64,
        uptr: u64,
        mem: &dyn UserMemory,
    ) -> Result<(), Errno> {
        let hwpt = self.md_hwpt(id)?;
        let d = &hwpt.domain;
        let page = crate::device::min_page(d);
        if !iova.is_multiple_of(page)
            || !length.is_multiple_of(page)
            || !uptr.is_multiple_of(page)
            || uptr.checked_add(length).is_none()
        {
            return Err(Errno::EINVAL);
        }
        let mut off = 0;
        while off < length {
            let mut b = [0u8; 1];
            mem.read(uptr + off, &mut b)?;
            let pa = d
                .iova_to_phys(Iova::new(iova.wrapping_add(off)))
                .ok_or(Errno::EINVAL)?
                .raw();
            // The same page of memory (keys), at the same offset in it.
            let want = uptr + off;
            let mask = crate::iopt::PAGE_SIZE - 1;
            if pa & mask != want & mask || mem.page_key(pa) != mem.page_key(want) {
                return Err(Errno::EINVAL);
            }
            off += page;
        }
        Ok(())
    }

    /// The selftest object `id` is destroyed: its device detached,
    /// unbound and removed from the mock bus.
    pub(crate) fn stdev_release(&self, s: &StDev) {
        let _ = self.unbind(s.idev_id);
        s.platform.remove_device(&s.dev);
    }
}

/// An access object's file: closing its last descriptor detaches the
/// access (every pin dropped) and removes its object.
struct AccessFile {
    access: Arc<crate::access::Access>,
    id: u32,
    ctx: Weak<Ictx>,
}

impl crate::ctx::File for AccessFile {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl Drop for AccessFile {
    fn drop(&mut self) {
        self.access.detach();
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.remove(self.id);
        }
    }
}

/// A dma-buf the selftest exports (`IOMMU_TEST_OP_DMABUF_GET`): memory
/// of its own, which `IOMMU_IOAS_MAP_FILE` maps by descriptor, and which
/// the test can revoke (every domain then stops reaching it).
pub struct Dmabuf {
    /// The memory: `len` bytes from a page boundary inside it.
    mem: Box<[u8]>,
    start: usize,
    /// Its size: whole pages.
    pub len: u64,
    revoked: core::sync::atomic::AtomicBool,
}

impl Dmabuf {
    fn new(len: u64) -> Self {
        let page = crate::iopt::PAGE_SIZE as usize;
        let mem = vec![0u8; len as usize + page].into_boxed_slice();
        let start = (page - (mem.as_ptr() as usize % page)) % page;
        Self {
            mem,
            start,
            len,
            revoked: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The address of its first byte.
    pub fn addr(&self) -> u64 {
        self.mem[self.start..].as_ptr() as u64
    }

    /// Whether it is revoked.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }
}

impl crate::ctx::File for Dmabuf {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A pages object over a dma-buf: detached from the domains for good
/// once the dma-buf was revoked under it.
pub struct DmabufPages {
    /// The dma-buf.
    pub buf: Arc<Dmabuf>,
    /// Unmapped from the domains by a revoke.
    pub detached: core::sync::atomic::AtomicBool,
}

/// `MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES`.
pub const ACCESS_CREATE_NEEDS_PIN_PAGES: u32 = 1 << 0;
/// `MOCK_FLAGS_ACCESS_WRITE`.
pub const ACCESS_WRITE: u32 = 1 << 0;
/// `MOCK_FLAGS_ACCESS_SYZ` (accepted, not acted on: the IOVA is used as
/// given).
pub const ACCESS_SYZ: u32 = 1 << 16;
/// `MOCK_ACCESS_RW_WRITE`.
pub const ACCESS_RW_WRITE: u32 = 1 << 0;
/// `MOCK_ACCESS_RW_SLOW_PATH`.
pub const ACCESS_RW_SLOW_PATH: u32 = 1 << 2;
/// The most bytes one access command takes (Linux's bound: 16 MiB).
const ACCESS_MAX: u64 = 16 << 20;

/// The owner tag of `ADD_RESERVED`'s reservations (they last as long as
/// the IOAS, as in Linux).
const TEST_RESERVED_OWNER: u64 = 3 << 32;
