//! vIOMMUs, vDEVICEs and nested HWPTs (Linux's `viommu.c` and the nested
//! part of `hw_pagetable.c`) over the core's [`iommu_core::Viommu`].
//!
//! A VMM gives its guest a virtual IOMMU: `IOMMU_VIOMMU_ALLOC` over a
//! nest-parent paging HWPT (the stage 2 of guest memory), then
//! `IOMMU_VDEVICE_ALLOC` names each passed-through device with the guest's
//! id (an SMMUv3 vSID), `IOMMU_HWPT_ALLOC` on the vIOMMU turns a guest's
//! description of a device's translation (a vSTE) into a nested HWPT the
//! device attaches to, and `IOMMU_HWPT_INVALIDATE` on the vIOMMU passes
//! the guest's invalidation commands on, checked and rewritten by the
//! driver. Objects hold what they are made over: a vIOMMU its parent
//! HWPT, a vDEVICE and a nested HWPT their vIOMMU, so none can be
//! destroyed from under another (`EBUSY`).

use crate::ctx::{Ictx, Object, UserMemory};
use crate::device::HwptPaging;
use crate::uapi;
use alloc::sync::Arc;
use alloc::vec;
use iommu_core::{Domain, UserData, UserDataArray, Viommu};
use iommu_types::Errno;

/// The most bytes of driver data one command passes (a vSTE is 16); an
/// absurd length is `ENOMEM`, as an allocation that large would be.
pub const MAX_USER_DATA: u32 = 1 << 16;

/// `IOMMU_HWPT_INVALIDATE`'s bounds (Linux's
/// `IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX` and a page per entry).
pub const MAX_INVALIDATE_ENTRIES: u32 = 1 << 19;
/// The largest entry `IOMMU_HWPT_INVALIDATE` takes.
pub const MAX_INVALIDATE_ENTRY_LEN: u32 = 4096;
/// The most bytes of entries one `IOMMU_HWPT_INVALIDATE` reads
/// (`ENOMEM` beyond; Linux copies entries into a kernel buffer of the
/// driver's entry size, here they are read as the user lays them out).
pub const MAX_INVALIDATE_BYTES: u64 = 64 << 20;

/// A vIOMMU object (Linux's `struct iommufd_viommu`).
#[derive(Debug)]
pub struct ViommuObj {
    /// The core's vIOMMU.
    pub viommu: Viommu,
    /// The nest-parent HWPT it is made over.
    pub parent: Arc<HwptPaging>,
    /// Its vEVENTQs (one per type).
    pub(crate) veventqs: std::sync::Mutex<vec::Vec<alloc::sync::Weak<crate::eventq::Veventq>>>,
}

/// A HW queue of a vIOMMU (Linux's `struct iommufd_hw_queue`): guest
/// memory the hardware reads directly, pinned in the parent's IOAS for
/// as long as the queue lives (an unmap of it is `EBUSY`).
#[derive(Debug)]
pub struct HwQueue {
    /// Its vIOMMU.
    pub viommu: Arc<ViommuObj>,
    /// `IOMMU_HW_QUEUE_TYPE_*`.
    pub ty: u32,
    /// Its index.
    pub index: u32,
    /// The queue it depends on, which cannot go first.
    pub depends_on: Option<Arc<HwQueue>>,
    /// The owner tag of its pin.
    pin: usize,
}

/// Owner tags of HW queues' pins (apart from accesses' addresses: odd).
fn next_pin_owner() -> usize {
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(2, core::sync::atomic::Ordering::Relaxed)
}

impl HwQueue {
    /// The queue is destroyed: its pin goes, the driver is told.
    pub(crate) fn release(&self) {
        crate::ctx::lock(&self.viommu.parent.ioas).unpin_internal(self.pin);
        self.viommu
            .viommu
            .ops()
            .hw_queue_destroy(self.ty, self.index);
    }
}

/// A vDEVICE object (Linux's `struct iommufd_vdevice`).
#[derive(Debug)]
pub struct Vdevice {
    /// Its vIOMMU.
    pub viommu: Arc<ViommuObj>,
    /// The bound device's id.
    pub dev_id: u32,
    /// The guest's id for it.
    pub virt_id: u64,
}

/// A nested HWPT (Linux's `struct iommufd_hwpt_nested`).
#[derive(Debug)]
pub struct HwptNested {
    /// The nested domain.
    pub domain: Domain,
    /// The vIOMMU that made it, or none for one made over a paging HWPT.
    pub viommu: Option<Arc<ViommuObj>>,
    /// The nest-parent HWPT it was made over, without a vIOMMU.
    pub parent: Option<Arc<HwptPaging>>,
    /// The fault queue its devices' I/O page faults go to.
    pub fault: Option<Arc<crate::eventq::Fault>>,
    /// Made with `IOMMU_HWPT_ALLOC_PASID`.
    pub pasid_compat: bool,
}

/// The flags a nested HWPT may be allocated with (Linux's
/// `IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID`).
const NESTED_FLAGS: u32 = uapi::hwpt_alloc::FAULT_ID_VALID | uapi::hwpt_alloc::PASID;

/// Reads `len` bytes of driver data at `uptr`.
pub(crate) fn read_data(mem: &dyn UserMemory, uptr: u64, len: u32) -> Result<vec::Vec<u8>, Errno> {
    if len > MAX_USER_DATA {
        return Err(Errno::ENOMEM);
    }
    let mut buf = vec![0u8; len as usize];
    if len != 0 {
        mem.read(uptr, &mut buf)?;
    }
    Ok(buf)
}

impl Ictx {
    /// The vIOMMU `id`.
    ///
    /// # Errors
    /// `ENOENT` for no object or another type.
    pub fn viommu(&self, id: u32) -> Result<Arc<ViommuObj>, Errno> {
        match self.object(id) {
            Some(Object::Viommu(v)) => Ok(v),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Makes a vIOMMU of type `ty` for device `dev_id`'s IOMMU over the
    /// nest-parent HWPT `hwpt_id` (`IOMMU_VIOMMU_ALLOC`); returns its id.
    ///
    /// # Errors
    /// `EOPNOTSUPP` for type 0 (`IOMMU_VIOMMU_TYPE_DEFAULT`) or a driver
    /// that cannot nest; `ENOENT` for no such device or paging HWPT;
    /// `EINVAL` for a HWPT that is not a nest parent or not this IOMMU's.
    pub fn viommu_alloc(
        &self,
        dev_id: u32,
        hwpt_id: u32,
        ty: u32,
        data: Option<&UserData<'_>>,
    ) -> Result<u32, Errno> {
        if ty == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let idev = self.device(dev_id)?;
        let parent = self.hwpt(hwpt_id)?;
        let iommu = idev.group.iommu();
        let viommu = iommu.viommu_alloc(&idev.dev, &parent.domain, ty, data)?;
        self.insert(Object::Viommu(Arc::new(ViommuObj {
            viommu,
            parent,
            veventqs: Default::default(),
        })))
    }

    pub(crate) fn viommu_alloc_cmd(
        &self,
        c: &uapi::ViommuAlloc,
        mem: &dyn UserMemory,
    ) -> Result<u32, Errno> {
        if c.flags != 0 || c.r#type == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let data = read_data(mem, c.data_uptr, c.data_len)?;
        let ud = UserData {
            ty: c.r#type,
            data: &data,
        };
        let id = self.viommu_alloc(
            c.dev_id,
            c.hwpt_id,
            c.r#type,
            (c.data_len != 0).then_some(&ud),
        )?;
        // The driver's answer goes back into the caller's data.
        let reply = self.viommu(id)?.viommu.ops().init_reply();
        if let Some(reply) = reply.filter(|_| c.data_len != 0) {
            let n = reply.len().min(c.data_len as usize);
            if let Err(e) = mem.write(c.data_uptr, &reply[..n]) {
                let _ = self.destroy(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Names device `dev_id` `virt_id` in vIOMMU `viommu_id`
    /// (`IOMMU_VDEVICE_ALLOC`); returns the vDEVICE's id.
    ///
    /// # Errors
    /// `ENOENT` for no such vIOMMU or device; `EINVAL` for a device of
    /// another IOMMU; `EEXIST` for a device that already has a vDEVICE or
    /// an id already taken; the driver's refusal.
    pub fn vdevice_alloc(&self, viommu_id: u32, dev_id: u32, virt_id: u64) -> Result<u32, Errno> {
        let v = self.viommu(viommu_id)?;
        let idev = self.device(dev_id)?;
        match idev.dev.iommu_ops() {
            Some(ops) if v.parent.domain.is_owned_by(&ops) => {}
            _ => return Err(Errno::EINVAL),
        }
        let taken = self
            .ids()
            .into_iter()
            .any(|id| matches!(self.object(id), Some(Object::Vdevice(d)) if d.dev_id == dev_id));
        if taken {
            return Err(Errno::EEXIST);
        }
        v.viommu.vdevice_alloc(&idev.dev, virt_id)?;
        let vdev = Arc::new(Vdevice {
            viommu: Arc::clone(&v),
            dev_id,
            virt_id,
        });
        self.insert(Object::Vdevice(vdev)).inspect_err(|_| {
            let _ = v.viommu.vdevice_destroy(virt_id);
        })
    }

    /// Makes a nested HWPT from the guest's description (`IOMMU_HWPT_ALLOC`
    /// on a vIOMMU).
    pub(crate) fn hwpt_alloc_nested(
        &self,
        c: &uapi::HwptAlloc,
        v: &Arc<ViommuObj>,
        mem: &dyn UserMemory,
    ) -> Result<u32, Errno> {
        let idev = self.device(c.dev_id)?;
        if c.flags & !NESTED_FLAGS != 0 || c.data_len == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        match idev.dev.iommu_ops() {
            Some(ops) if v.parent.domain.is_owned_by(&ops) => {}
            _ => return Err(Errno::EINVAL),
        }
        let fault = self.fault_of(c)?;
        let data = read_data(mem, c.data_uptr, c.data_len)?;
        let domain = v.viommu.alloc_domain_nested(
            c.flags & !uapi::hwpt_alloc::FAULT_ID_VALID,
            &UserData {
                ty: c.data_type,
                data: &data,
            },
        )?;
        self.insert(Object::HwptNested(Arc::new(HwptNested {
            domain,
            viommu: Some(Arc::clone(v)),
            parent: None,
            fault,
            pasid_compat: c.flags & uapi::hwpt_alloc::PASID != 0,
        })))
    }

    /// Makes a nested HWPT over the nest-parent HWPT `parent` without a
    /// vIOMMU (`IOMMU_HWPT_ALLOC` on a paging HWPT: Linux's
    /// `iommufd_hwpt_nested_alloc`).
    pub(crate) fn hwpt_alloc_nested_parent(
        &self,
        c: &uapi::HwptAlloc,
        parent: &Arc<HwptPaging>,
        mem: &dyn UserMemory,
    ) -> Result<u32, Errno> {
        let idev = self.device(c.dev_id)?;
        if c.flags & !NESTED_FLAGS != 0 || c.data_len == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let owned = idev
            .dev
            .iommu_ops()
            .is_some_and(|o| parent.domain.is_owned_by(&o));
        if parent.auto || !parent.domain.is_nest_parent() || !owned {
            return Err(Errno::EINVAL);
        }
        let fault = self.fault_of(c)?;
        let data = read_data(mem, c.data_uptr, c.data_len)?;
        let domain = idev.group.iommu().domain_alloc_nested(
            &idev.dev,
            &parent.domain,
            c.flags & !uapi::hwpt_alloc::FAULT_ID_VALID,
            &UserData {
                ty: c.data_type,
                data: &data,
            },
        )?;
        self.insert(Object::HwptNested(Arc::new(HwptNested {
            domain,
            viommu: None,
            parent: Some(Arc::clone(parent)),
            fault,
            pasid_compat: c.flags & uapi::hwpt_alloc::PASID != 0,
        })))
    }

    /// `mmap` of the context's descriptor at `offset` for `length` bytes:
    /// the memory a vIOMMU offers there (Linux's `iommufd_fops_mmap`),
    /// and what the mapping holds (the vIOMMU cannot be destroyed while
    /// it is mapped: drop it at `munmap`).
    ///
    /// # Errors
    /// `ENXIO` unless a vIOMMU offers exactly that offset and length.
    pub fn mmap(
        &self,
        offset: u64,
        length: u64,
    ) -> Result<(vec::Vec<u8>, Arc<dyn core::any::Any + Send + Sync>), Errno> {
        for id in self.ids() {
            if let Some(Object::Viommu(v)) = self.object(id) {
                if let Some((at, bytes)) = v.viommu.ops().mmap_region() {
                    if at == offset && bytes.len() as u64 == length {
                        return Ok((bytes, v));
                    }
                }
            }
        }
        Err(Errno::ENXIO)
    }

    /// `IOMMU_HW_QUEUE_ALLOC` (Linux's `iommufd_hw_queue_alloc_ioctl`).
    pub(crate) fn hw_queue_alloc(&self, c: &uapi::HwQueueAlloc) -> Result<u32, Errno> {
        if c.flags != 0 || c.r#type == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if c.length == 0 {
            return Err(Errno::EINVAL);
        }
        c.nesting_parent_iova
            .checked_add(c.length - 1)
            .ok_or(Errno::EOVERFLOW)?;
        let v = self.viommu(c.viommu_id)?;
        // Whole pages of the parent's IOAS, pinned for the queue.
        let page = crate::iopt::PAGE_SIZE;
        let aligned = c.nesting_parent_iova & !(page - 1);
        let offset = c.nesting_parent_iova - aligned;
        let length = offset
            .checked_add(c.length)
            .and_then(|l| l.checked_add(page - 1))
            .ok_or(Errno::ERANGE)?
            & !(page - 1);
        let pin = next_pin_owner();
        let base = crate::ctx::lock(&v.parent.ioas).pin_internal(aligned, length, pin)?;
        let unpin = || crate::ctx::lock(&v.parent.ioas).unpin_internal(pin);
        let dep = match v.viommu.ops().hw_queue_init(
            &v.viommu,
            c.r#type,
            c.index,
            base + offset,
            c.nesting_parent_iova,
        ) {
            Ok(d) => d,
            Err(e) => {
                unpin();
                return Err(e);
            }
        };
        let depends_on = dep.and_then(|i| {
            self.ids().into_iter().find_map(|id| match self.object(id) {
                Some(Object::HwQueue(h)) if Arc::ptr_eq(&h.viommu, &v) && h.index == i => Some(h),
                _ => None,
            })
        });
        let q = Arc::new(HwQueue {
            viommu: Arc::clone(&v),
            ty: c.r#type,
            index: c.index,
            depends_on,
            pin,
        });
        self.insert(Object::HwQueue(Arc::clone(&q)))
            .inspect_err(|_| q.release())
    }

    /// The fault queue `IOMMU_HWPT_FAULT_ID_VALID` names.
    fn fault_of(&self, c: &uapi::HwptAlloc) -> Result<Option<Arc<crate::eventq::Fault>>, Errno> {
        if c.flags & uapi::hwpt_alloc::FAULT_ID_VALID == 0 {
            return Ok(None);
        }
        self.fault(c.fault_id).map(Some)
    }

    /// `IOMMU_HWPT_INVALIDATE` (Linux's `iommufd_hwpt_invalidate`):
    /// returns the entries handled and the result.
    pub(crate) fn hwpt_invalidate_cmd(
        &self,
        c: &uapi::HwptInvalidate,
        mem: &dyn UserMemory,
    ) -> (u32, Result<(), Errno>) {
        if c.reserved != 0 {
            return (0, Err(Errno::EOPNOTSUPP));
        }
        if c.entry_num != 0
            && (c.data_uptr == 0
                || c.entry_len == 0
                || c.entry_len > MAX_INVALIDATE_ENTRY_LEN
                || c.entry_num > MAX_INVALIDATE_ENTRIES)
        {
            return (0, Err(Errno::EINVAL));
        }
        enum Target {
            Viommu(Arc<ViommuObj>),
            Nested(Arc<HwptNested>),
        }
        let target = match self.object(c.hwpt_id) {
            Some(Object::Viommu(v)) => Target::Viommu(v),
            Some(Object::HwptNested(h)) => Target::Nested(h),
            Some(_) => return (0, Err(Errno::EINVAL)),
            None => return (0, Err(Errno::ENOENT)),
        };
        let total = u64::from(c.entry_len) * u64::from(c.entry_num);
        if total > MAX_INVALIDATE_BYTES {
            return (0, Err(Errno::ENOMEM));
        }
        let mut data = vec![0u8; total as usize];
        if let Err(e) = mem.read(c.data_uptr, &mut data) {
            return (0, Err(e));
        }
        let array = UserDataArray {
            ty: c.data_type,
            data: &data,
            entry_len: c.entry_len as usize,
            entry_num: c.entry_num,
        };
        let r = match target {
            Target::Viommu(v) => v.viommu.cache_invalidate(&array),
            Target::Nested(h) => h.domain.cache_invalidate_user(&array),
        };
        match r {
            Ok(()) => (c.entry_num, Ok(())),
            Err(e) => (e.handled, Err(e.errno)),
        }
    }
}
