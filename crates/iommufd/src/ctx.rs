//! One open of `/dev/iommu` (Linux's `struct iommufd_ctx`): its objects
//! by id, and the ioctl entry that reads a command from the caller's
//! memory, runs it and writes the reply back.
//!
//! Object ids are the lowest free id from 1 up to `2^31 - 1`, as Linux's
//! `xa_alloc` with `xa_limit_31b` hands them out. `IOMMU_DESTROY` removes
//! an object only while nothing else holds it (`EBUSY`), and a wrong id
//! or type is `ENOENT`.
//!
//! Every command of Linux 7.3's table is served but
//! `IOMMU_IOAS_NOIOMMU_GET_PA` (no-IOMMU mode, `EOPNOTSUPP`), and numbers
//! outside iommufd's go to the VFIO container commands
//! ([`Ictx::ioctl_value`]). Devices are bound and attached through
//! [`Ictx::bind`] and [`Ictx::attach`] (VFIO's part in Linux).

use crate::iopt::{Area, IoPagetable, PagesSlice, IOVA_MAX};
use crate::uapi::{self, ioas_map, Cmd, Ucmd};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu_core::Domain;
use iommu_types::{Errno, Prot};
use std::sync::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The caller's address space, as the kernel reaches it with
/// `copy_from_user` and `copy_to_user`.
pub trait UserMemory {
    /// Fills `buf` from `addr`.
    ///
    /// # Errors
    /// `EFAULT` where nothing is mapped.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Writes `data` at `addr`.
    ///
    /// # Errors
    /// `EFAULT` where nothing writable is mapped.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Errno>;

    /// Checks that `len` bytes at `addr` can back DMA (the kernel's
    /// `pin_user_pages`, which a domain's map needs): every page mapped.
    /// The default accepts everything (memory that is not a process's).
    ///
    /// # Errors
    /// `EFAULT` where a page is not mapped.
    fn pin(&self, addr: u64, len: u64, write: bool) -> Result<(), Errno> {
        let _ = (addr, len, write);
        Ok(())
    }

    /// Maps `length` bytes of the caller's file `fd` from byte `start`
    /// where DMA can reach them (the kernel pins a file's pages for
    /// `IOMMU_IOAS_MAP_FILE`): returns the address of the byte at `start`
    /// and what keeps the mapping, released when no area uses it. The
    /// default has no files (`EBADF`).
    ///
    /// # Errors
    /// `EBADF` for no such file; `EINVAL` for a range past its end.
    fn map_file(
        &self,
        fd: i32,
        start: u64,
        length: u64,
        writable: bool,
    ) -> Result<(u64, crate::iopt::Backing), Errno> {
        let _ = (fd, start, length, writable);
        Err(Errno::EBADF)
    }

    /// Which page holds `addr`: two addresses are in one page of memory
    /// exactly when their keys are equal (the kernel compares pages, and
    /// one file page may be mapped at several addresses). The default is
    /// the page's address.
    fn page_key(&self, addr: u64) -> u64 {
        addr & !(crate::iopt::PAGE_SIZE - 1)
    }
}

/// A file a command hands the caller a descriptor for (an access's, a
/// fault queue's): the kernel's `struct file` behind `fd_install`.
pub trait File: core::any::Any + Send + Sync {
    /// Itself, to find the object behind a descriptor.
    fn as_any(&self) -> &dyn core::any::Any;

    /// Itself, shared, to keep the object behind a descriptor.
    fn into_any(self: Arc<Self>) -> Arc<dyn core::any::Any + Send + Sync>;

    /// `read(2)` of up to `count` bytes: what the file gives. The
    /// default is a file that cannot be read (`EINVAL`).
    ///
    /// # Errors
    /// The file's errno.
    fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        let _ = count;
        Err(Errno::EINVAL)
    }

    /// `write(2)` of `data`: the bytes taken. The default is a file that
    /// cannot be written (`EINVAL`).
    ///
    /// # Errors
    /// The file's errno.
    fn write(&self, data: &[u8]) -> Result<usize, Errno> {
        let _ = data;
        Err(Errno::EINVAL)
    }
}

/// The caller's descriptor table (the kernel's `get_unused_fd_flags`,
/// `fd_install` and `fget`), as the embedder gives it
/// ([`Ictx::set_files`]). A file is released (dropped) when its last
/// descriptor closes.
pub trait FileTable: Send + Sync {
    /// Gives `file` a new close-on-exec descriptor.
    ///
    /// # Errors
    /// `EMFILE` or `ENOMEM` when no descriptor can be made.
    fn install(&self, file: Arc<dyn File>) -> Result<i32, Errno>;

    /// The file descriptor `fd` names, if it is one of these.
    fn get(&self, fd: i32) -> Option<Arc<dyn File>>;
}

impl core::fmt::Debug for dyn FileTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FileTable")
    }
}

/// The address space a context's pages come from (Linux's `source_mm`
/// of a pages object), as [`Ictx::set_user_memory`] gives it.
#[derive(Clone)]
pub struct SourceMm(pub Arc<dyn UserMemory + Send + Sync>);

impl core::fmt::Debug for SourceMm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SourceMm")
    }
}

/// The most ranges one `IOMMU_IOAS_ALLOW_IOVAS` takes: Linux allocates a
/// node per range until memory runs out; here an absurd count is refused
/// with the same `ENOMEM` before anything is read.
pub const MAX_ALLOWED_RANGES: u32 = 1 << 16;

/// The largest object id (`xa_limit_31b`).
pub const MAX_ID: u32 = (1 << 31) - 1;

/// An I/O address space (Linux's `struct iommufd_ioas`): its I/O page
/// table and the domains filled from it (its paging HWPTs').
#[derive(Debug, Default)]
pub struct Ioas {
    /// Its I/O page table.
    pub iopt: IoPagetable,
    /// The domains every area is mapped into, by HWPT id.
    pub(crate) domains: Vec<(u32, Domain)>,
    /// Domains get page-sized mappings only (`IOMMU_OPTION_HUGE_PAGES`
    /// set to 0; Linux's `disable_large_pages`).
    pub(crate) small_pages: bool,
    /// Where its pages come from, when the context was told.
    pub(crate) mm: Option<SourceMm>,
    /// Access objects attached to it.
    pub(crate) accesses: Vec<alloc::sync::Weak<crate::access::Access>>,
    /// The pins they hold.
    pub(crate) access_pins: Vec<crate::access::Pin>,
}

impl Ioas {
    /// Whether domains may get pages larger than [`PAGE_SIZE`](crate::iopt::PAGE_SIZE).
    pub fn huge_pages(&self) -> bool {
        !self.small_pages
    }

    /// `IOMMU_OPTION_HUGE_PAGES` set (Linux's `iopt_enable_large_pages`
    /// and `iopt_disable_large_pages`).
    ///
    /// # Errors
    /// `EINVAL` to disable them while a domain already holds mappings;
    /// `EADDRINUSE` when an area is not page-aligned.
    pub fn set_huge_pages(&mut self, enable: bool) -> Result<(), Errno> {
        if !enable
            && !self.small_pages
            && !self.domains.is_empty()
            && self.iopt.areas().next().is_some()
        {
            return Err(Errno::EINVAL);
        }
        let was = self.small_pages;
        self.small_pages = !enable;
        self.recalc_alignment()
            .inspect_err(|_| self.small_pages = was)
    }

    /// Sets the IOVA alignment to what the domains and the page-size
    /// option need (Linux's `iopt_calculate_iova_alignment`).
    pub(crate) fn recalc_alignment(&mut self) -> Result<(), Errno> {
        let floor = if self.small_pages {
            crate::iopt::PAGE_SIZE
        } else {
            1
        };
        let align = self
            .domains
            .iter()
            .map(|(_, d)| crate::device::min_page(d))
            .fold(floor.max(self.access_alignment()), u64::max);
        self.iopt.set_iova_alignment(align)
    }

    /// Maps `areas` into every domain, all or nothing (Linux's
    /// `iopt_area_fill_domains`).
    pub(crate) fn fill(&self, areas: &[Area]) -> Result<(), Errno> {
        if !self.domains.is_empty() {
            self.pin(areas)?;
        }
        for (i, (_, d)) in self.domains.iter().enumerate() {
            if let Err(e) = fill_domain(d, areas, self.small_pages) {
                for (_, done) in &self.domains[..i] {
                    let _ = unfill_domain(done, areas);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Pages of the pages objects its areas map, each object counted once
    /// over the calls that share `seen` (a copy shares its source's).
    pub(crate) fn pages_once(&self, seen: &mut Vec<*const crate::iopt::Pages>) -> u64 {
        let mut total = 0;
        for a in self.iopt.areas() {
            let ptr = Arc::as_ptr(&a.pages);
            if !seen.contains(&ptr) {
                seen.push(ptr);
                total += a.pages.npages;
            }
        }
        total
    }

    /// Checks that the user pages behind `areas` can be pinned (see
    /// [`UserMemory::pin`]).
    pub(crate) fn pin(&self, areas: &[Area]) -> Result<(), Errno> {
        if let Some(mm) = &self.mm {
            // A dma-buf's memory is the exporter's, not the caller's.
            for a in areas.iter().filter(|a| a.pages.dmabuf().is_none()) {
                let write = a.prot.contains(Prot::WRITE);
                mm.0.pin(a.uaddr(a.iova), a.length(), write)?;
            }
        }
        Ok(())
    }

    /// Unmaps `areas` from every domain (strict: invalidated before this
    /// returns). Every domain is emptied of them even when an
    /// invalidation fails; the first failure is returned: the device may
    /// still reach those pages until a later invalidation completes.
    pub(crate) fn unfill(&self, areas: &[Area]) -> Result<(), Errno> {
        let mut r = Ok(());
        for (_, d) in &self.domains {
            r = r.and(unfill_domain(d, areas));
        }
        r
    }
}

/// Maps `areas` into `d` (a page at a time with `small`, as Linux maps
/// when large pages are disabled); on failure unmaps what it mapped.
pub(crate) fn fill_domain(d: &Domain, areas: &[Area], small: bool) -> Result<(), Errno> {
    use crate::iopt::PAGE_SIZE;
    for (i, a) in areas.iter().enumerate() {
        if a.pages.detached() {
            continue;
        }
        let step = if small { PAGE_SIZE } else { a.length() };
        let mut at = a.iova;
        let r = loop {
            let len = step.min(a.last - at + 1);
            let pa = iommu_types::PhysAddr::new(a.uaddr(at));
            if let Err(e) = d.map(iommu_types::Iova::new(at), pa, len, a.prot) {
                break Err(e);
            }
            match at.checked_add(len) {
                Some(n) if n <= a.last => at = n,
                _ => break Ok(()),
            }
        };
        if let Err(e) = r {
            if at > a.iova {
                let _ = d.unmap(iommu_types::Iova::new(a.iova), at - a.iova);
            }
            let _ = unfill_domain(d, &areas[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmaps `areas` from `d`; the first invalidation failure is returned.
pub(crate) fn unfill_domain(d: &Domain, areas: &[Area]) -> Result<(), Errno> {
    let mapped: Vec<Area> = areas
        .iter()
        .filter(|a| !a.pages.detached())
        .cloned()
        .collect();
    unmap_areas(d, &mapped)
}

/// Unmaps `areas` from `d` whatever their state.
pub(crate) fn unmap_areas(d: &Domain, areas: &[Area]) -> Result<(), Errno> {
    let mut r = Ok(());
    for a in areas {
        if let Err(e) = d.unmap(iommu_types::Iova::new(a.iova), a.length()) {
            r = r.and(Err(e.errno));
        }
    }
    r
}

/// What an id names.
#[derive(Clone, Debug)]
pub enum Object {
    /// An IOAS.
    Ioas(Arc<Mutex<Ioas>>),
    /// A bound device.
    Device(Arc<crate::device::IDevice>),
    /// A paging HWPT (a domain filled from an IOAS).
    HwptPaging(Arc<crate::device::HwptPaging>),
    /// A nested HWPT (a domain a vIOMMU made from a guest's description).
    HwptNested(Arc<crate::viommu::HwptNested>),
    /// A vIOMMU over a nest-parent HWPT.
    Viommu(Arc<crate::viommu::ViommuObj>),
    /// A vDEVICE: a device's id in a vIOMMU.
    Vdevice(Arc<crate::viommu::Vdevice>),
    /// A mock device of the selftest (Linux's `IOMMUFD_OBJ_SELFTEST`).
    Selftest(Arc<crate::selftest::StDev>),
    /// An access object (held by its driver until it destroys it).
    Access(Arc<crate::access::Access>),
    /// A fault queue.
    Fault(Arc<crate::eventq::Fault>),
    /// A vEVENTQ of a vIOMMU.
    Veventq(Arc<crate::eventq::Veventq>),
    /// A HW queue of a vIOMMU.
    HwQueue(Arc<crate::viommu::HwQueue>),
    /// The id of a vDEVICE whose device was unbound under it: reserved
    /// until destroyed, and no object (Linux's tombstone, `XA_ZERO_ENTRY`).
    Tombstone,
}

impl Object {
    /// References held besides the context's own (Linux's `users` minus
    /// one). A device is held by its binding until it is unbound.
    fn users(&self) -> usize {
        match self {
            Object::Ioas(a) => Arc::strong_count(a) - 1,
            Object::Device(_) => 1,
            Object::HwptPaging(h) => Arc::strong_count(h) - 1,
            Object::HwptNested(h) => Arc::strong_count(h) - 1,
            Object::Viommu(v) => Arc::strong_count(v) - 1,
            Object::Vdevice(v) => Arc::strong_count(v) - 1,
            Object::Selftest(_) => 0,
            Object::Access(_) => 1,
            Object::Fault(f) => Arc::strong_count(f) - 1,
            Object::Veventq(q) => Arc::strong_count(q) - 1,
            Object::HwQueue(q) => Arc::strong_count(q) - 1,
            Object::Tombstone => 0,
        }
    }
}

/// One open of `/dev/iommu`.
#[derive(Debug, Default)]
pub struct Ictx {
    objects: Mutex<BTreeMap<u32, Object>>,
    /// The DMA owner of every group a device is bound through.
    pub(crate) owner: iommu_core::DmaOwner,
    /// Groups with a bound device, by group id.
    pub(crate) groups: Mutex<BTreeMap<u32, crate::device::IGroup>>,
    /// Pinned pages are accounted to the process (`IOPT_PAGES_ACCOUNT_MM`)
    /// rather than the user (`IOMMU_OPTION_RLIMIT_MODE`).
    account_mm: core::sync::atomic::AtomicBool,
    /// The caller lacks `CAP_SYS_RESOURCE` (see [`Ictx::set_sys_resource`]).
    no_sys_resource: core::sync::atomic::AtomicBool,
    /// The most pages pinned at once, less one (0: no limit; see
    /// [`Ictx::set_pin_limit`]).
    pin_limit: core::sync::atomic::AtomicU64,
    /// Where pages come from (see [`Ictx::set_user_memory`]).
    mm: std::sync::OnceLock<SourceMm>,
    /// The caller's descriptors (see [`Ictx::set_files`]).
    pub(crate) files: std::sync::OnceLock<Arc<dyn FileTable>>,
    /// The context itself, for files that outlive a command.
    pub(crate) me: std::sync::OnceLock<alloc::sync::Weak<Ictx>>,
    /// The compat IOAS of the VFIO container ioctls.
    pub(crate) vfio: crate::vfio::Compat,
    /// The selftest platform `IOMMU_TEST_CMD` runs on, once enabled.
    pub(crate) selftest: std::sync::OnceLock<Arc<crate::selftest::Selftest>>,
}

/// Locks `m`; a panic elsewhere does not make the state unusable (every
/// change is made whole or not at all).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_obj<T: FromBytes + IntoBytes + KnownLayout + Immutable + Default>(
    mem: &dyn UserMemory,
    addr: u64,
) -> Result<T, Errno> {
    let mut v = T::default();
    mem.read(addr, v.as_mut_bytes())?;
    Ok(v)
}

impl Ictx {
    /// A new, empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `obj` at the lowest free id.
    pub(crate) fn insert(&self, obj: Object) -> Result<u32, Errno> {
        if self.should_fail() {
            return Err(Errno::ENOMEM);
        }
        let mut objects = lock(&self.objects);
        let mut id = 1u32;
        for &k in objects.keys() {
            if k != id {
                break;
            }
            id += 1;
        }
        if id > MAX_ID {
            return Err(Errno::ENOSPC);
        }
        objects.insert(id, obj);
        Ok(id)
    }

    /// Limits the pages this context may hold pinned at once (the
    /// caller's `RLIMIT_MEMLOCK` in pages, as Linux accounts pinned
    /// memory against it unless the caller has `CAP_IPC_LOCK`); `None`
    /// lifts the limit (the default). A map, attach or pin that would go
    /// past it is `ENOMEM` and changes nothing. Both accounting modes of
    /// `IOMMU_OPTION_RLIMIT_MODE` count this context's pins against it:
    /// a process cannot see other processes' pins.
    pub fn set_pin_limit(&self, pages: Option<u64>) {
        let v = pages.map_or(0, |p| p.saturating_add(1));
        self.pin_limit
            .store(v, core::sync::atomic::Ordering::Relaxed);
    }

    /// Pages this context holds pinned: those of every pages object an
    /// IOAS with a domain maps (each object once, however many areas and
    /// IOASes share it), and those accesses pin elsewhere.
    pub fn pinned_pages(&self) -> u64 {
        let mut seen: Vec<*const crate::iopt::Pages> = Vec::new();
        let mut total = 0u64;
        for id in self.ids() {
            let Some(Object::Ioas(ioas)) = self.object(id) else {
                continue;
            };
            let g = lock(&ioas);
            if g.domains.is_empty() {
                total += g
                    .access_pins
                    .iter()
                    .map(|p| (p.last - p.iova) / crate::iopt::PAGE_SIZE + 1)
                    .sum::<u64>();
                continue;
            }
            total += g.pages_once(&mut seen);
        }
        total
    }

    /// Whether `extra` more pinned pages stay within the limit.
    ///
    /// # Errors
    /// `ENOMEM` past it.
    pub(crate) fn check_pin_limit(&self, extra: u64) -> Result<(), Errno> {
        let limit = self.pin_limit.load(core::sync::atomic::Ordering::Relaxed);
        if limit == 0 || extra == 0 {
            return Ok(());
        }
        if self.pinned_pages().saturating_add(extra) > limit - 1 {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// A step that allocates in Linux: `true` when failure injection says
    /// this one fails (`ENOMEM`). The count is the selftest platform's
    /// core's ([`iommu_core::FailPoints::hit_nth`], Linux's `fail_nth`),
    /// so one sweep covers this crate's steps and the core's.
    pub(crate) fn should_fail(&self) -> bool {
        self.selftest
            .get()
            .is_some_and(|st| st.fail_points().hit_nth())
    }

    /// The object `id` names.
    pub fn object(&self, id: u32) -> Option<Object> {
        lock(&self.objects)
            .get(&id)
            .filter(|o| !matches!(o, Object::Tombstone))
            .cloned()
    }

    /// The ids in use, in order.
    pub fn ids(&self) -> Vec<u32> {
        lock(&self.objects).keys().copied().collect()
    }

    /// The IOAS `id` names (`iommufd_get_ioas`).
    ///
    /// # Errors
    /// `ENOENT` for no object or another type.
    pub fn ioas(&self, id: u32) -> Result<Arc<Mutex<Ioas>>, Errno> {
        match self.object(id) {
            Some(Object::Ioas(a)) => Ok(a),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Makes an IOAS; returns its id.
    ///
    /// # Errors
    /// `ENOSPC` when every id is taken.
    pub fn ioas_alloc(&self) -> Result<u32, Errno> {
        let ioas = Ioas {
            mm: self.mm.get().cloned(),
            ..Ioas::default()
        };
        self.insert(Object::Ioas(Arc::new(Mutex::new(ioas))))
    }

    /// The address space this context's IOASes map (the opener's, as
    /// Linux records the process that maps): a domain's map first checks
    /// that every page is there ([`UserMemory::pin`], `EFAULT` if not).
    /// Set once, before IOASes are made; without it nothing is checked.
    pub fn set_user_memory(&self, mm: Arc<dyn UserMemory + Send + Sync>) {
        let _ = self.mm.set(SourceMm(mm));
    }

    /// The caller's descriptor table, for commands that return a file
    /// descriptor (access objects, fault queues). Set once; without it
    /// those commands answer `EOPNOTSUPP`.
    pub fn set_files(&self, files: Arc<dyn FileTable>) {
        let _ = self.files.set(files);
    }

    /// Destroys object `id` (`IOMMU_DESTROY`).
    ///
    /// # Errors
    /// `ENOENT` for no such object; `EBUSY` while another object or an
    /// operation in flight holds it.
    pub fn destroy(&self, id: u32) -> Result<(), Errno> {
        let obj = {
            let mut objects = lock(&self.objects);
            let obj = objects.get(&id).ok_or(Errno::ENOENT)?;
            if matches!(obj, Object::Tombstone) {
                // Destroying a tombstone frees its id; there was no object.
                objects.remove(&id);
                return Err(Errno::ENOENT);
            }
            if obj.users() != 0 {
                return Err(Errno::EBUSY);
            }
            objects.remove(&id)
        };
        match obj {
            Some(Object::Ioas(a)) => {
                lock(&a).iopt.unmap_all();
            }
            Some(Object::HwptPaging(h)) => h.release(id),
            Some(Object::Vdevice(v)) => {
                let _ = v.viommu.viommu.vdevice_destroy(v.virt_id);
            }
            Some(Object::Selftest(s)) => self.stdev_release(&s),
            Some(Object::HwQueue(q)) => q.release(),
            _ => {}
        }
        Ok(())
    }

    /// Turns object `id` into a tombstone (see [`Object::Tombstone`]).
    pub(crate) fn tombstone(&self, id: u32) {
        if let Some(o) = lock(&self.objects).get_mut(&id) {
            *o = Object::Tombstone;
        }
    }

    /// Removes object `id` whatever holds it (an unbound device, an
    /// automatic HWPT its last device left).
    pub(crate) fn remove(&self, id: u32) -> Option<Object> {
        lock(&self.objects).remove(&id)
    }

    /// Says whether the caller holds `CAP_SYS_RESOURCE`, which setting
    /// `IOMMU_OPTION_RLIMIT_MODE` needs (`EPERM` without). A context
    /// starts with it: a program embedding this crate owns the process.
    pub fn set_sys_resource(&self, capable: bool) {
        self.no_sys_resource
            .store(!capable, core::sync::atomic::Ordering::Relaxed);
    }

    /// `IOMMU_OPTION` (Linux's `iommufd_option`): returns `val64`. The
    /// accounting mode is recorded; accounting pinned pages under it
    /// comes with the pinning limits, not built yet.
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a reserved field, an unknown option or operation,
    /// or an object id with `RLIMIT_MODE`; `EPERM` to set it without
    /// `CAP_SYS_RESOURCE`; `EBUSY` to set it once objects exist; `EINVAL`
    /// for a value other than 0 or 1; `ENOENT` for no such IOAS; as
    /// [`Ioas::set_huge_pages`].
    pub fn option(&self, c: &uapi::IommuOption) -> Result<u64, Errno> {
        use crate::uapi::option::*;
        use core::sync::atomic::Ordering::Relaxed;
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        match c.option_id {
            RLIMIT_MODE => {
                if c.object_id != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                match c.op {
                    OP_GET => Ok(u64::from(self.account_mm.load(Relaxed))),
                    OP_SET => {
                        if self.no_sys_resource.load(Relaxed) {
                            return Err(Errno::EPERM);
                        }
                        let objects = lock(&self.objects);
                        if !objects.is_empty() {
                            return Err(Errno::EBUSY);
                        }
                        match c.val64 {
                            0 | 1 => self.account_mm.store(c.val64 == 1, Relaxed),
                            _ => return Err(Errno::EINVAL),
                        }
                        Ok(c.val64)
                    }
                    _ => Err(Errno::EOPNOTSUPP),
                }
            }
            HUGE_PAGES => {
                let ioas = self.ioas(c.object_id)?;
                let mut g = lock(&ioas);
                match (c.op, c.val64) {
                    (OP_GET, _) => Ok(u64::from(g.huge_pages())),
                    (OP_SET, v @ (0 | 1)) => g.set_huge_pages(v == 1).map(|()| v),
                    (OP_SET, _) => Err(Errno::EINVAL),
                    _ => Err(Errno::EOPNOTSUPP),
                }
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// Runs ioctl `num` as Linux's `iommufd_fops_ioctl` does, with its
    /// return value: a number outside iommufd's commands goes to the VFIO
    /// container compatibility ioctls ([`Ictx::vfio_ioctl`], some of
    /// which return a value, and whose `arg` may be a plain number); the
    /// others are [`Ictx::ioctl`], 0 on success.
    ///
    /// # Errors
    /// The command's errno (`ENOTTY` for a number neither knows).
    pub fn ioctl_value(&self, num: u32, arg: u64, mem: &dyn UserMemory) -> Result<i32, Errno> {
        if !uapi::in_range(num & 0xff) {
            return self.vfio_ioctl(num, arg, mem);
        }
        self.iommufd_ioctl(num, arg, mem)
    }

    /// Runs the ioctl `num` whose argument is at `arg` in `mem`, as
    /// Linux's `iommufd_fops_ioctl`: the command read by the kernel's
    /// rules ([`Ucmd::read_from`]), run, and its reply written back no
    /// longer than the caller's structure.
    ///
    /// # Errors
    /// The command's errno, as Linux returns it.
    pub fn ioctl(&self, num: u32, arg: u64, mem: &dyn UserMemory) -> Result<(), Errno> {
        self.iommufd_ioctl(num, arg, mem).map(|_| ())
    }

    /// [`ioctl`](Self::ioctl) with the command's value (only
    /// `IOMMU_TEST_CMD`'s dma-buf export has one: a descriptor).
    fn iommufd_ioctl(&self, num: u32, arg: u64, mem: &dyn UserMemory) -> Result<i32, Errno> {
        let ucmd = Ucmd::read_from(num, |off, buf| {
            mem.read(arg.checked_add(off).ok_or(Errno::EFAULT)?, buf)
        })?;
        if ucmd.cmd() == Cmd::TestCmd {
            return self.test_cmd(&ucmd, arg, mem);
        }
        let respond = |reply: &[u8]| -> Result<(), Errno> {
            let n = reply.len().min(ucmd.user_size() as usize);
            mem.write(arg, &reply[..n])
        };
        // The reply of a command that made object `id`: an object whose
        // id cannot be reported is not kept (Linux's abort_and_destroy).
        let respond_new = |id: u32, reply: &[u8]| {
            respond(reply).inspect_err(|_| {
                let _ = self.destroy(id);
            })
        };
        match ucmd.cmd() {
            Cmd::Destroy => {
                let c: uapi::Destroy = get(&ucmd)?;
                self.destroy(c.id)
            }
            Cmd::IoasAlloc => {
                let mut c: uapi::IoasAlloc = get(&ucmd)?;
                if c.flags != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                c.out_ioas_id = self.ioas_alloc()?;
                respond_new(c.out_ioas_id, c.as_bytes())
            }
            Cmd::IoasMap => {
                let mut c: uapi::IoasMap = get(&ucmd)?;
                c.iova = self.ioas_map(&c)?;
                respond(c.as_bytes())
            }
            Cmd::IoasMapFile => {
                let mut c: uapi::IoasMapFile = get(&ucmd)?;
                c.iova = self.ioas_map_file(&c, mem)?;
                respond(c.as_bytes())
            }
            Cmd::IoasUnmap => {
                let mut c: uapi::IoasUnmap = get(&ucmd)?;
                c.length = self.ioas_unmap(c.ioas_id, c.iova, c.length)?;
                respond(c.as_bytes())
            }
            Cmd::IoasCopy => {
                let mut c: uapi::IoasCopy = get(&ucmd)?;
                c.dst_iova = self.ioas_copy(&c)?;
                respond(c.as_bytes())
            }
            Cmd::IoasIovaRanges => {
                let mut c: uapi::IoasIovaRanges = get(&ucmd)?;
                if c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let ioas = self.ioas(c.ioas_id)?;
                let (ranges, align) = {
                    let g = lock(&ioas);
                    (g.iopt.iova_ranges(), g.iopt.iova_alignment())
                };
                let room = c.num_iovas as usize;
                for (i, &(start, last)) in ranges.iter().take(room).enumerate() {
                    let r = uapi::IovaRange { start, last };
                    let at = c
                        .allowed_iovas
                        .checked_add(16 * i as u64)
                        .ok_or(Errno::EFAULT)?;
                    mem.write(at, r.as_bytes())?;
                }
                c.num_iovas = u32::try_from(ranges.len()).unwrap_or(u32::MAX);
                c.out_iova_alignment = align;
                respond(c.as_bytes())?;
                if ranges.len() > room {
                    return Err(Errno::EMSGSIZE);
                }
                Ok(())
            }
            Cmd::IoasAllowIovas => {
                let c: uapi::IoasAllowIovas = get(&ucmd)?;
                if c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let ioas = self.ioas(c.ioas_id)?;
                if c.num_iovas > MAX_ALLOWED_RANGES {
                    return Err(Errno::ENOMEM);
                }
                let mut ranges = Vec::with_capacity(c.num_iovas as usize);
                for i in 0..u64::from(c.num_iovas) {
                    let at = c.allowed_iovas.checked_add(16 * i).ok_or(Errno::EFAULT)?;
                    let r: uapi::IovaRange = read_obj(mem, at)?;
                    ranges.push((r.start, r.last));
                }
                let r = lock(&ioas).iopt.set_allowed(&ranges);
                r
            }
            Cmd::Option => {
                let c: uapi::IommuOption = get(&ucmd)?;
                let val = self.option(&c)?;
                // Linux writes back `val64` alone.
                let at = arg
                    .checked_add(core::mem::offset_of!(uapi::IommuOption, val64) as u64)
                    .ok_or(Errno::EFAULT)?;
                mem.write(at, &val.to_ne_bytes())
            }
            Cmd::GetHwInfo => {
                let mut c: uapi::HwInfo = get(&ucmd)?;
                self.hw_info(&mut c, mem)?;
                respond(c.as_bytes())
            }
            Cmd::HwptAlloc => {
                let mut c: uapi::HwptAlloc = get(&ucmd)?;
                c.out_hwpt_id = self.hwpt_alloc_cmd(&c, mem)?;
                respond_new(c.out_hwpt_id, c.as_bytes())
            }
            Cmd::ViommuAlloc => {
                let mut c: uapi::ViommuAlloc = get(&ucmd)?;
                c.out_viommu_id = self.viommu_alloc_cmd(&c, mem)?;
                respond_new(c.out_viommu_id, c.as_bytes())
            }
            Cmd::VdeviceAlloc => {
                let mut c: uapi::VdeviceAlloc = get(&ucmd)?;
                c.out_vdevice_id = self.vdevice_alloc(c.viommu_id, c.dev_id, c.virt_id)?;
                respond_new(c.out_vdevice_id, c.as_bytes())
            }
            Cmd::HwptInvalidate => {
                let mut c: uapi::HwptInvalidate = get(&ucmd)?;
                let (done, r) = self.hwpt_invalidate_cmd(&c, mem);
                c.entry_num = done;
                // The count goes back whatever happened (Linux: EFAULT
                // only if it cannot).
                respond(c.as_bytes()).map_err(|_| Errno::EFAULT)?;
                r
            }
            Cmd::HwptSetDirtyTracking => {
                let c: uapi::HwptSetDirtyTracking = get(&ucmd)?;
                self.set_dirty_tracking(&c)
            }
            Cmd::HwptGetDirtyBitmap => {
                let c: uapi::HwptGetDirtyBitmap = get(&ucmd)?;
                self.get_dirty_bitmap(&c, mem)
            }
            Cmd::FaultQueueAlloc => {
                let mut c: uapi::FaultAlloc = get(&ucmd)?;
                self.fault_alloc(&mut c)?;
                respond(c.as_bytes()).inspect_err(|_| {
                    let _ = self.destroy(c.out_fault_id);
                })
            }
            Cmd::VeventqAlloc => {
                let mut c: uapi::VeventqAlloc = get(&ucmd)?;
                self.veventq_alloc(&mut c)?;
                respond(c.as_bytes()).inspect_err(|_| {
                    let _ = self.destroy(c.out_veventq_id);
                })
            }
            Cmd::HwQueueAlloc => {
                let mut c: uapi::HwQueueAlloc = get(&ucmd)?;
                c.out_hw_queue_id = self.hw_queue_alloc(&c)?;
                respond(c.as_bytes()).inspect_err(|_| {
                    let _ = self.destroy(c.out_hw_queue_id);
                })
            }
            Cmd::IoasChangeProcess => {
                let c: uapi::IoasChangeProcess = get(&ucmd)?;
                self.change_process(&c)
            }
            Cmd::VfioIoas => {
                let mut c: uapi::VfioIoas = get(&ucmd)?;
                if self.vfio_ioas(&mut c)? {
                    respond(c.as_bytes())?;
                }
                Ok(())
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
        .map(|()| 0)
    }

    /// `IOMMU_GET_HW_INFO` (Linux's `iommufd_get_hw_info`): the driver's
    /// description copied to `data_uptr` (no more than `data_len`, the
    /// rest of the caller's buffer zeroed), `data_len` set to the full
    /// length, the type given, and the capabilities: no dirty tracking
    /// and no ATS in this project's drivers, no PASID yet.
    fn hw_info(&self, c: &mut uapi::HwInfo, mem: &dyn UserMemory) -> Result<(), Errno> {
        const INPUT_TYPE: u32 = 1 << 0;
        const CAP_PCI_ATS_NOT_SUPPORTED: u64 = 1 << 3;
        if c.flags & !INPUT_TYPE != 0 || c.reserved != [0; 3] {
            return Err(Errno::EOPNOTSUPP);
        }
        if c.flags & INPUT_TYPE == 0 {
            c.data_type = 0;
        }
        let idev = self.device(c.dev_id)?;
        let ops = idev.dev.iommu_ops().ok_or(Errno::EOPNOTSUPP)?;
        let (ty, data) = ops
            .hw_info(&idev.dev, c.data_type)?
            .unwrap_or((0, Vec::new()));
        let copy = (c.data_len as usize).min(data.len());
        if copy > 0 {
            mem.write(c.data_uptr, &data[..copy])?;
        }
        if (c.data_len as usize) > copy {
            let at = c.data_uptr.checked_add(copy as u64).ok_or(Errno::EFAULT)?;
            let zeros = vec![0u8; (c.data_len as usize - copy).min(1 << 20)];
            let mut left = c.data_len as usize - copy;
            let mut off = 0u64;
            while left > 0 {
                let n = left.min(zeros.len());
                mem.write(at + off, &zeros[..n])?;
                left -= n;
                off += n as u64;
            }
        }
        c.data_len = u32::try_from(data.len()).map_err(|_| Errno::EOVERFLOW)?;
        c.data_type = ty;
        c.out_capabilities = CAP_PCI_ATS_NOT_SUPPORTED;
        if ops.dirty_tracking_capable(&idev.dev) {
            c.out_capabilities |= crate::dirty::HW_CAP_DIRTY_TRACKING;
        }
        let max = ops.max_pasids(&idev.dev);
        c.out_max_pasid_log2 = if max > 0 { max.ilog2() as u8 } else { 0 };
        Ok(())
    }

    /// `IOMMU_HWPT_ALLOC` (Linux's `iommufd_hwpt_alloc`) for a paging
    /// HWPT over an IOAS. Nested HWPTs (over a HWPT or a vIOMMU) and
    /// fault queues are not built yet (`EOPNOTSUPP`).
    fn hwpt_alloc_cmd(&self, c: &uapi::HwptAlloc, mem: &dyn UserMemory) -> Result<u32, Errno> {
        use crate::uapi::{hwpt_alloc, hwpt_data};
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if (c.data_type == hwpt_data::NONE) != (c.data_len == 0) {
            return Err(Errno::EINVAL);
        }
        self.device(c.dev_id)?;
        let pt = self.object(c.pt_id).ok_or(Errno::EINVAL)?;
        match pt {
            Object::Ioas(_) => {
                let known =
                    hwpt_alloc::NEST_PARENT | hwpt_alloc::DIRTY_TRACKING | hwpt_alloc::PASID;
                if c.flags & !known != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let flags = iommu_core::PagingFlags::from_bits(c.flags).ok_or(Errno::EOPNOTSUPP)?;
                let data = crate::viommu::read_data(mem, c.data_uptr, c.data_len)?;
                let ud = iommu_core::UserData {
                    ty: c.data_type,
                    data: &data,
                };
                self.hwpt_alloc_data(c.dev_id, c.pt_id, flags, (c.data_len != 0).then_some(&ud))
            }
            Object::Viommu(v) => self.hwpt_alloc_nested(c, &v, mem),
            Object::HwptPaging(p) => self.hwpt_alloc_nested_parent(c, &p, mem),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `IOMMU_IOAS_MAP` (Linux's `iommufd_ioas_map`): returns the IOVA.
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unknown flags or a reserved field; `EOVERFLOW`
    /// for an IOVA or length of `u64::MAX`; `EINVAL` without read or
    /// write; `ENOENT` for no such IOAS; as [`IoPagetable::map_user`].
    pub fn ioas_map(&self, c: &uapi::IoasMap) -> Result<u64, Errno> {
        let known = ioas_map::FIXED_IOVA | ioas_map::WRITEABLE | ioas_map::READABLE;
        if c.flags & !known != 0 || c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if beyond(c.iova) || beyond(c.length) {
            return Err(Errno::EOVERFLOW);
        }
        let prot = map_prot(c.flags)?;
        let iova = (c.flags & ioas_map::FIXED_IOVA != 0).then_some(c.iova);
        self.map_user_prot(c.ioas_id, c.user_va, c.length, iova, prot)
    }

    /// `IOMMU_IOAS_MAP_FILE` (Linux's `iommufd_ioas_map_file`): maps a
    /// file's pages, which `mem` maps in for it ([`UserMemory::map_file`]);
    /// returns the IOVA.
    ///
    /// # Errors
    /// As [`ioas_map`](Self::ioas_map); `EBADF` for no such file;
    /// `EINVAL` for no length or a range past the file's end (checked when
    /// mapping here; Linux finds it when a domain pins the pages).
    pub fn ioas_map_file(&self, c: &uapi::IoasMapFile, mem: &dyn UserMemory) -> Result<u64, Errno> {
        let known = ioas_map::FIXED_IOVA | ioas_map::WRITEABLE | ioas_map::READABLE;
        if c.flags & !known != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if beyond(c.iova) || beyond(c.length) {
            return Err(Errno::EOVERFLOW);
        }
        let prot = map_prot(c.flags)?;
        let ioas = self.ioas(c.ioas_id)?;
        if c.length == 0 {
            return Err(Errno::EINVAL);
        }
        c.start.checked_add(c.length - 1).ok_or(Errno::EOVERFLOW)?;
        if self.should_fail() || self.should_fail() {
            return Err(Errno::ENOMEM);
        }
        if !lock(&ioas).domains.is_empty() {
            self.check_pin_limit(pages_of(c.start, c.length))?;
        }
        let (uaddr, backing) = match self.dmabuf(c.fd) {
            Some(buf) => {
                // Linux's iopt_alloc_dmabuf_pages and iopt_map_dmabuf.
                if buf.len <= c.start + (c.length - 1) {
                    return Err(Errno::EINVAL);
                }
                if buf.revoked() {
                    return Err(Errno::ENODEV);
                }
                let addr = buf.addr() + c.start;
                let pages = crate::selftest::DmabufPages {
                    buf,
                    detached: core::sync::atomic::AtomicBool::new(false),
                };
                (addr, crate::iopt::Backing(Arc::new(pages)))
            }
            None => mem.map_file(c.fd, c.start, c.length, prot.contains(Prot::WRITE))?,
        };
        let iova = (c.flags & ioas_map::FIXED_IOVA != 0).then_some(c.iova);
        let mut g = lock(&ioas);
        let iova = g.iopt.map_file(uaddr, c.length, iova, prot, backing)?;
        fill_new(&mut g, iova, c.length)
    }

    /// `IOMMU_IOAS_CHANGE_PROCESS`: moves the accounting of pinned file
    /// pages to the calling process. Here the caller is always the
    /// process the context lives in, so there is nothing to move; the
    /// rule Linux checks stays: only file maps can change process
    /// (`EINVAL` while an IOAS maps user memory).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a reserved field; `EINVAL` as above.
    pub fn change_process(&self, c: &uapi::IoasChangeProcess) -> Result<(), Errno> {
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        for id in self.ids() {
            if let Some(Object::Ioas(ioas)) = self.object(id) {
                let not_file = |a: &Area| a.pages.backing.is_none() || a.pages.dmabuf().is_some();
                if lock(&ioas).iopt.areas().any(not_file) {
                    return Err(Errno::EINVAL);
                }
            }
        }
        Ok(())
    }

    /// The selftest dma-buf descriptor `fd` names, if it is one.
    fn dmabuf(&self, fd: i32) -> Option<Arc<crate::selftest::Dmabuf>> {
        let file = self.files.get()?.get(fd)?;
        let any: Arc<dyn core::any::Any + Send + Sync> = file.into_any();
        any.downcast::<crate::selftest::Dmabuf>().ok()
    }

    /// Maps user memory into IOAS `ioas_id` with `prot` as given (the
    /// VFIO compat path maps without read or write when asked so).
    pub(crate) fn map_user_prot(
        &self,
        ioas_id: u32,
        uaddr: u64,
        length: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        let ioas = self.ioas(ioas_id)?;
        // The area and the pages object.
        if self.should_fail() || self.should_fail() {
            return Err(Errno::ENOMEM);
        }
        if !lock(&ioas).domains.is_empty() {
            self.check_pin_limit(pages_of(uaddr, length))?;
        }
        let mut g = lock(&ioas);
        let iova = g.iopt.map_user(uaddr, length, iova, prot)?;
        fill_new(&mut g, iova, length)
    }

    /// `IOMMU_IOAS_UNMAP` (Linux's `iommufd_ioas_unmap`): returns the
    /// bytes unmapped. `iova == 0` with `length == u64::MAX` unmaps all.
    ///
    /// # Errors
    /// `ENOENT` for no such IOAS, nothing unmapped, or an area the range
    /// cuts (areas before it stay unmapped, as in Linux); `EOVERFLOW`;
    /// `EINVAL` for no length.
    pub fn ioas_unmap(&self, ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        let ioas = self.ioas(ioas_id)?;
        let all = iova == 0 && length == u64::MAX;
        match self.unmap_iova(&ioas, iova, length)? {
            // iommufd's own rule: a range with nothing in it is ENOENT.
            0 if !all => Err(Errno::ENOENT),
            n => Ok(n),
        }
    }

    /// Unmaps `[iova, iova + length)` of `ioas` (everything for 0 and
    /// `u64::MAX`), as Linux's `iopt_unmap_iova`: returns the bytes
    /// unmapped, 0 when nothing was there (the VFIO path takes that as
    /// success).
    pub(crate) fn unmap_iova(
        &self,
        ioas: &Arc<Mutex<Ioas>>,
        iova: u64,
        length: u64,
    ) -> Result<u64, Errno> {
        let mut g = lock(ioas);
        let (removed, err) = if iova == 0 && length == u64::MAX {
            if g.locked(0, u64::MAX) {
                return Err(Errno::EBUSY);
            }
            g.notify_unmap(0, u64::MAX);
            (g.iopt.unmap_all(), None)
        } else {
            if beyond(iova) || beyond(length) {
                return Err(Errno::EOVERFLOW);
            }
            if length != 0 {
                let last = iova.saturating_add(length - 1);
                if g.locked(iova, last) {
                    return Err(Errno::EBUSY);
                }
                g.notify_unmap(iova, last);
            }
            match g.iopt.unmap(iova, length) {
                Ok(v) => (v, None),
                Err((e, v)) => (v, Some(e)),
            }
        };
        // What left the table leaves the domains, whatever the answer.
        let synced = g.unfill(&removed);
        if let Some(e) = err {
            return Err(e);
        }
        synced?;
        Ok(removed.iter().map(Area::length).sum())
    }

    /// `IOMMU_IOAS_COPY` (Linux's `iommufd_ioas_copy`): maps the pages
    /// behind a range of one IOAS into another (or the same) without
    /// pinning them again; returns the destination IOVA.
    ///
    /// # Errors
    /// `EOPNOTSUPP` for unknown flags; `EOVERFLOW`; `EINVAL` without read
    /// or write; `ENOENT` for no such IOAS or a gap in the source; as
    /// [`IoPagetable::map_pages`] in the destination.
    pub fn ioas_copy(&self, c: &uapi::IoasCopy) -> Result<u64, Errno> {
        let known = ioas_map::FIXED_IOVA | ioas_map::WRITEABLE | ioas_map::READABLE;
        if c.flags & !known != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if beyond(c.length) || beyond(c.src_iova) || beyond(c.dst_iova) {
            return Err(Errno::EOVERFLOW);
        }
        let prot = map_prot(c.flags)?;
        let src = self.ioas(c.src_ioas_id)?;
        // The source's lock is let go before the destination's is taken
        // (they may be the same IOAS).
        let slices: Vec<PagesSlice> = lock(&src).iopt.get_pages(c.src_iova, c.length)?;
        drop(src);
        let dst = self.ioas(c.dst_ioas_id)?;
        let iova = (c.flags & ioas_map::FIXED_IOVA != 0).then_some(c.dst_iova);
        if self.should_fail() {
            return Err(Errno::ENOMEM);
        }
        // Copied pages are the source's: pinned already if the source
        // has a domain, else new pins.
        let src_held = !lock(&*self.ioas(c.src_ioas_id)?).domains.is_empty();
        if !src_held && !lock(&dst).domains.is_empty() {
            self.check_pin_limit(c.length.div_ceil(crate::iopt::PAGE_SIZE))?;
        }
        let mut g = lock(&dst);
        let iova = g.iopt.map_pages(&slices, c.length, iova, prot)?;
        fill_new(&mut g, iova, c.length)
    }
}

/// Maps the areas just made at `[iova, iova + length)` into the IOAS's
/// domains; if a domain refuses, the areas go again (all or nothing).
/// The pages `length` bytes at `uaddr` span.
fn pages_of(uaddr: u64, length: u64) -> u64 {
    (uaddr % crate::iopt::PAGE_SIZE + length).div_ceil(crate::iopt::PAGE_SIZE)
}

fn fill_new(g: &mut Ioas, iova: u64, length: u64) -> Result<u64, Errno> {
    let areas: Vec<Area> = g
        .iopt
        .areas_in(iova, iova + (length - 1))
        .cloned()
        .collect();
    if let Err(e) = g.fill(&areas) {
        let _ = g.iopt.unmap(iova, length);
        return Err(e);
    }
    Ok(iova)
}

/// Linux's `value >= ULONG_MAX` check of a user's IOVA or length: on a
/// 64-bit kernel, the one value `u64::MAX`.
fn beyond(value: u64) -> bool {
    value == IOVA_MAX
}

/// Reads the command's structure; a structure of another size is a bug
/// of the table, answered `EINVAL` rather than a panic.
fn get<T: FromBytes + KnownLayout + Immutable>(ucmd: &Ucmd) -> Result<T, Errno> {
    ucmd.get::<T>().ok_or(Errno::EINVAL)
}

/// The protection an IOAS mapping asks for (Linux's `conv_iommu_prot`:
/// always cache-coherent).
fn map_prot(flags: u32) -> Result<Prot, Errno> {
    if flags & (ioas_map::WRITEABLE | ioas_map::READABLE) == 0 {
        return Err(Errno::EINVAL);
    }
    let mut prot = Prot::CACHE;
    if flags & ioas_map::WRITEABLE != 0 {
        prot |= Prot::WRITE;
    }
    if flags & ioas_map::READABLE != 0 {
        prot |= Prot::READ;
    }
    Ok(prot)
}
