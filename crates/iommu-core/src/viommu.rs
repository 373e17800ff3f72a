//! Nested translation: nest-parent paging domains, vIOMMUs and nested
//! domains, as Linux's iommufd drives them.
//!
//! A VMM that gives its guest a virtual IOMMU of the same kind as the
//! host's lets the hardware walk both stages: the guest's own first stage
//! (its context descriptors and page tables, in guest-physical memory) and
//! the host's second stage below it (guest-physical to host-physical).
//!
//! - A **nest parent** is an ordinary paging domain allocated with
//!   [`PagingFlags::NEST_PARENT`] through
//!   [`Iommu::domain_alloc_paging_flags`]: the driver makes it a second
//!   stage. The VMM maps guest memory into it.
//! - A **vIOMMU** ([`Viommu`], Linux's `struct iommufd_viommu`) stands
//!   for the guest's IOMMU instance over one nest parent: it owns the
//!   virtual machine's tag (an SMMUv3 VMID) and the guest's names for
//!   devices (**vDEVICEs**: a virtual id, such as a vSID, per device).
//! - A **nested domain** ([`DomainType::Nested`]) is made by the vIOMMU
//!   from what the guest wrote for a device (an SMMUv3 vSTE), in a
//!   driver-defined layout the driver checks ([`UserData`]). It has no
//!   page table the core can map into: the guest owns its first stage and
//!   invalidates its caches through [`Viommu::cache_invalidate`], which
//!   the driver checks and rewrites with the host's tags.
//!
//! Linux splits the vIOMMU between iommufd (the object and its vDEVICE
//! table) and the driver (`viommu_init` and its ops). Here the core keeps
//! the object, so a kernel or VMM without an iommufd layer can nest, and
//! the driver supplies [`ViommuOps`].

use crate::prelude::*;
use crate::sync::Mutex;
use crate::{Device, Domain, DomainOps, DomainType, Iommu, IommuOps};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use core::fmt;
use iommu_types::Errno;

/// How a paging domain is asked for (Linux's `IOMMU_HWPT_ALLOC_*` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PagingFlags(u32);

impl PagingFlags {
    /// A second stage that vIOMMUs may nest over (`IOMMU_HWPT_ALLOC_NEST_PARENT`).
    pub const NEST_PARENT: PagingFlags = PagingFlags(1 << 0);
    /// Dirty tracking (`IOMMU_HWPT_ALLOC_DIRTY_TRACKING`).
    pub const DIRTY_TRACKING: PagingFlags = PagingFlags(1 << 1);
    /// Attachable to a PASID (`IOMMU_HWPT_ALLOC_PASID`).
    pub const PASID: PagingFlags = PagingFlags(1 << 3);

    /// No flag.
    pub const fn empty() -> PagingFlags {
        PagingFlags(0)
    }

    /// Flags from their uAPI bits; `None` for a bit this crate does not know.
    pub const fn from_bits(bits: u32) -> Option<PagingFlags> {
        let known = Self::NEST_PARENT.0 | Self::DIRTY_TRACKING.0 | Self::PASID.0;
        if bits & !known == 0 {
            Some(PagingFlags(bits))
        } else {
            None
        }
    }

    /// The uAPI bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: PagingFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for PagingFlags {
    type Output = PagingFlags;
    fn bitor(self, rhs: PagingFlags) -> PagingFlags {
        PagingFlags(self.0 | rhs.0)
    }
}

/// A driver-defined structure from a user (Linux's `struct
/// iommu_user_data`): its type number (`IOMMU_HWPT_DATA_*`,
/// `IOMMU_VIOMMU_TYPE_*`) and its bytes, little-endian as the uAPI lays
/// them out. Structures grow at their end; [`copy_struct`](Self::copy_struct)
/// applies Linux's rules for shorter and longer ones.
#[derive(Clone, Copy, Debug)]
pub struct UserData<'a> {
    /// What the bytes are.
    pub ty: u32,
    /// The structure.
    pub data: &'a [u8],
}

impl UserData<'_> {
    /// Copies the structure into `dst` (the driver's current layout, of
    /// which the first `min_len` bytes are the first version's):
    /// shorter input leaves the rest of `dst` zero.
    ///
    /// # Errors
    /// `EINVAL` when the type is not `ty`, the input is shorter than
    /// `min_len` or longer than `dst` (Linux's
    /// `iommu_copy_struct_from_user`).
    pub fn copy_struct(&self, ty: u32, dst: &mut [u8], min_len: usize) -> Result<(), Errno> {
        if self.ty != ty || self.data.len() < min_len || self.data.len() > dst.len() {
            return Err(Errno::EINVAL);
        }
        let (head, tail) = dst.split_at_mut(self.data.len());
        head.copy_from_slice(self.data);
        tail.fill(0);
        Ok(())
    }
}

/// An array of driver-defined entries from a user (Linux's `struct
/// iommu_user_data_array`), such as the invalidation commands a guest
/// queued.
#[derive(Clone, Copy, Debug)]
pub struct UserDataArray<'a> {
    /// What the entries are (`IOMMU_VIOMMU_INVALIDATE_DATA_*`).
    pub ty: u32,
    /// The bytes of `entry_num` entries of `entry_len` bytes each.
    pub data: &'a [u8],
    /// Bytes per entry as the user lays them out.
    pub entry_len: usize,
    /// Entries.
    pub entry_num: u32,
}

impl UserDataArray<'_> {
    /// Every entry, each copied into `entry_size` bytes as
    /// [`UserData::copy_struct`] would, except that a longer entry is
    /// accepted when its extra bytes are zero (Linux's
    /// `iommu_copy_struct_from_full_user_array`).
    ///
    /// # Errors
    /// `EINVAL` for another type or no entries; `EFAULT` when `data` is
    /// shorter than the entries it should hold; `E2BIG` for a longer entry
    /// whose extra bytes are not zero.
    pub fn copy_entries(&self, ty: u32, entry_size: usize) -> Result<Vec<u8>, Errno> {
        if self.ty != ty || self.entry_num == 0 {
            return Err(Errno::EINVAL);
        }
        let n = self.entry_num as usize;
        let total = self.entry_len.checked_mul(n).ok_or(Errno::EFAULT)?;
        if self.data.len() < total || self.entry_len == 0 {
            return Err(Errno::EFAULT);
        }
        let mut out = vec![0u8; entry_size.checked_mul(n).ok_or(Errno::ENOMEM)?];
        for (src, dst) in self.data[..total]
            .chunks_exact(self.entry_len)
            .zip(out.chunks_exact_mut(entry_size))
        {
            let k = src.len().min(dst.len());
            if src[k..].iter().any(|&b| b != 0) {
                return Err(Errno::E2BIG);
            }
            dst[..k].copy_from_slice(&src[..k]);
        }
        Ok(out)
    }
}

/// An invalidation array that stopped part-way
/// ([`Viommu::cache_invalidate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidateError {
    /// Entries handled before the one that failed (what Linux writes back
    /// to `entry_num`).
    pub handled: u32,
    /// Why the next one failed.
    pub errno: Errno,
}

impl fmt::Display for InvalidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalidation entry {} failed: {}",
            self.handled,
            self.errno.name()
        )
    }
}

impl core::error::Error for InvalidateError {}

/// What a driver implements for its vIOMMUs (Linux's `struct
/// iommufd_viommu_ops`), returned by [`IommuOps::viommu_alloc`].
pub trait ViommuOps: Send + Sync + 'static {
    /// Makes the driver side of a nested domain from the guest's
    /// description of a device's translation (`alloc_domain_nested`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for flags; the driver's check of `data` (`EINVAL` for
    /// the wrong type or size, `EIO` for a description the hardware must
    /// not see, as Linux's SMMUv3 driver does).
    fn alloc_domain_nested(
        &self,
        viommu: &Viommu,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Box<dyn DomainOps>, Errno>;

    /// Checks, rewrites and sends the guest's invalidations
    /// (`cache_invalidate`), in order, stopping at the first that fails.
    ///
    /// # Errors
    /// The entries handled and why the next one failed.
    fn cache_invalidate(
        &self,
        viommu: &Viommu,
        array: &UserDataArray<'_>,
    ) -> Result<(), InvalidateError> {
        let _ = (viommu, array);
        Err(InvalidateError {
            handled: 0,
            errno: Errno::EOPNOTSUPP,
        })
    }

    /// Accepts `dev` as a vDEVICE with the guest's id `virt_id`
    /// (`vdevice_init`).
    ///
    /// # Errors
    /// The device cannot be named to the guest (commonly `EOPNOTSUPP`).
    fn vdevice_init(&self, viommu: &Viommu, dev: &Arc<Device>, virt_id: u64) -> Result<(), Errno> {
        let _ = (viommu, dev, virt_id);
        Ok(())
    }

    /// Takes a hardware queue of type `ty` at `index`, in guest memory at
    /// `base_iova` (an IPA of the parent), `base_pa` on the host (Linux's
    /// `get_hw_queue_size` and `hw_queue_init_phys`). Returns the index
    /// of a queue this one depends on, which must outlive it. The
    /// default has none (`EOPNOTSUPP`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a type the driver does not have; its refusal of
    /// the index or address.
    fn hw_queue_init(
        &self,
        viommu: &Viommu,
        ty: u32,
        index: u32,
        base_pa: u64,
        base_iova: u64,
    ) -> Result<Option<u32>, Errno> {
        let _ = (viommu, ty, index, base_pa, base_iova);
        Err(Errno::EOPNOTSUPP)
    }

    /// The queue `hw_queue_init` took at `index` is gone.
    fn hw_queue_destroy(&self, ty: u32, index: u32) {
        let _ = (ty, index);
    }

    /// Memory of the vIOMMU a program may map through its descriptor
    /// (Linux's `iommufd_viommu_alloc_mmap`): the offset the driver gave
    /// in its reply and the bytes there. The default has none.
    fn mmap_region(&self) -> Option<(u64, Vec<u8>)> {
        None
    }

    /// What the driver answers to the data given at allocation, copied
    /// back to the caller's structure (Linux's `viommu_init` writing it
    /// with `iommu_copy_struct_to_user`); the default, nothing.
    fn init_reply(&self) -> Option<Vec<u8>> {
        None
    }

    /// The driver's own type.
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        None
    }
}

struct ViommuInner {
    ty: u32,
    parent: Domain,
    ops: Box<dyn ViommuOps>,
    owner: Weak<dyn IommuOps>,
    iommu: Iommu,
    /// vDEVICEs: the guest's id of each device.
    vdevs: Mutex<BTreeMap<u64, Arc<Device>>>,
}

/// A virtual IOMMU instance over a nest-parent domain (Linux's `struct
/// iommufd_viommu`); clones share it, equality is identity.
#[derive(Clone)]
pub struct Viommu(Arc<ViommuInner>);

impl PartialEq for Viommu {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Viommu {}

impl fmt::Debug for Viommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Viommu(type {}, parent {:?})", self.0.ty, self.0.parent)
    }
}

impl Viommu {
    /// The `IOMMU_VIOMMU_TYPE_*` it was made as.
    pub fn ty(&self) -> u32 {
        self.0.ty
    }

    /// The nest-parent domain (the second stage).
    pub fn parent(&self) -> &Domain {
        &self.0.parent
    }

    /// The driver's ops.
    pub fn ops(&self) -> &dyn ViommuOps {
        &*self.0.ops
    }

    /// Makes a nested domain for the guest's description `data`.
    ///
    /// # Errors
    /// The driver's refusal (see [`ViommuOps::alloc_domain_nested`]);
    /// `ENOMEM` from the core's failure point.
    pub fn alloc_domain_nested(&self, flags: u32, data: &UserData<'_>) -> Result<Domain, Errno> {
        let _span = crate::trace::debug_span!("viommu_alloc_domain_nested", ty = data.ty).entered();
        let owner = self.0.owner.upgrade().ok_or(Errno::ENODEV)?;
        if self.0.iommu.shared.fail.hit(crate::FailPoint::DomainAlloc) {
            return Err(Errno::ENOMEM);
        }
        let ops = self.0.ops.alloc_domain_nested(self, flags, data)?;
        let id = self.0.iommu.shared.next_domain_id();
        Ok(Domain::new_with(
            id,
            DomainType::Nested,
            ops,
            &owner,
            crate::PagingFlags::empty(),
            Some(self.clone()),
        ))
    }

    /// Names `dev` to the guest as `virt_id` (`IOMMU_VDEVICE_ALLOC`).
    ///
    /// # Errors
    /// `EINVAL` when `dev` is not translated by the IOMMU instance of the
    /// parent domain; `EEXIST` when `virt_id` is taken or `dev` already
    /// has an id here; the driver's refusal.
    pub fn vdevice_alloc(&self, dev: &Arc<Device>, virt_id: u64) -> Result<(), Errno> {
        match dev.iommu_ops() {
            Some(ops) if self.0.parent.is_owned_by(&ops) && dev.iommu_group().is_some() => {}
            _ => return Err(Errno::EINVAL),
        }
        let mut vdevs = self.0.vdevs.lock();
        if vdevs.contains_key(&virt_id) || vdevs.values().any(|d| Arc::ptr_eq(d, dev)) {
            return Err(Errno::EEXIST);
        }
        self.0.ops.vdevice_init(self, dev, virt_id)?;
        vdevs.insert(virt_id, Arc::clone(dev));
        Ok(())
    }

    /// Forgets the vDEVICE `virt_id`.
    ///
    /// # Errors
    /// `ENOENT` when there is none.
    pub fn vdevice_destroy(&self, virt_id: u64) -> Result<(), Errno> {
        self.0
            .vdevs
            .lock()
            .remove(&virt_id)
            .map(|_| ())
            .ok_or(Errno::ENOENT)
    }

    /// The device the guest calls `virt_id` (`iommufd_viommu_find_dev`).
    pub fn find_dev(&self, virt_id: u64) -> Option<Arc<Device>> {
        self.0.vdevs.lock().get(&virt_id).cloned()
    }

    /// The guest's id of `dev` (`iommufd_viommu_get_vdev_id`).
    pub fn virt_id_of(&self, dev: &Device) -> Option<u64> {
        self.0
            .vdevs
            .lock()
            .iter()
            .find(|(_, d)| core::ptr::eq(Arc::as_ptr(d), dev))
            .map(|(id, _)| *id)
    }

    /// Sends the guest's invalidations, checked and rewritten by the
    /// driver (`IOMMU_HWPT_INVALIDATE` on a vIOMMU).
    ///
    /// # Errors
    /// The entries handled and why the next failed.
    pub fn cache_invalidate(&self, array: &UserDataArray<'_>) -> Result<(), InvalidateError> {
        let _span = crate::trace::debug_span!(
            "viommu_cache_invalidate",
            ty = array.ty,
            entries = array.entry_num
        )
        .entered();
        self.0.ops.cache_invalidate(self, array)
    }
}

/// The ops of the IOMMU translating `dev`: `ENODEV` when none does (no
/// ops on its bus, or the driver gave it no group).
fn translating_ops(dev: &Device) -> Result<Arc<dyn IommuOps>, Errno> {
    match (dev.iommu_ops(), dev.iommu_group()) {
        (Some(ops), Some(_)) => Ok(ops),
        _ => Err(Errno::ENODEV),
    }
}

impl Iommu {
    /// Allocates a paging domain for `dev`'s IOMMU with `flags` and
    /// optional driver data (Linux's `domain_alloc_paging_flags`, as
    /// `IOMMU_HWPT_ALLOC` calls it). The domain is `Unmanaged`.
    ///
    /// # Errors
    /// `ENODEV` when no IOMMU translates `dev`; the driver's refusal
    /// (`EOPNOTSUPP` for flags or data it does not take); `ENOMEM`.
    pub fn domain_alloc_paging_flags(
        &self,
        dev: &Arc<Device>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<Domain, Errno> {
        let ops = translating_ops(dev)?;
        let _span = crate::trace::debug_span!(
            "domain_alloc_paging_flags",
            driver = ops.name(),
            flags = flags.bits()
        )
        .entered();
        if self.shared.fail.hit(crate::FailPoint::DomainAlloc) {
            return Err(Errno::ENOMEM);
        }
        let driver_part = ops.domain_alloc_paging_flags(dev, flags, data)?;
        let id = self.shared.next_domain_id();
        Ok(Domain::new_with(
            id,
            DomainType::Unmanaged,
            driver_part,
            &ops,
            flags,
            None,
        ))
    }

    /// Makes a nested domain over the nest parent `parent` for `dev`'s
    /// IOMMU from the guest's description `data`, without a vIOMMU
    /// (Linux's `domain_alloc_nested`, as `IOMMU_HWPT_ALLOC` on a paging
    /// HWPT calls it).
    ///
    /// # Errors
    /// `ENODEV` when no IOMMU translates `dev`; `EINVAL` when `parent` is
    /// not a nest parent of that instance; the driver's refusal;
    /// `ENOMEM` from the core's failure point.
    pub fn domain_alloc_nested(
        &self,
        dev: &Arc<Device>,
        parent: &Domain,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Domain, Errno> {
        let ops = translating_ops(dev)?;
        let _span =
            crate::trace::debug_span!("domain_alloc_nested", driver = ops.name(), ty = data.ty)
                .entered();
        if !parent.is_owned_by(&ops) || !parent.is_nest_parent() {
            return Err(Errno::EINVAL);
        }
        if self.shared.fail.hit(crate::FailPoint::DomainAlloc) {
            return Err(Errno::ENOMEM);
        }
        let driver_part = ops.domain_alloc_nested(dev, parent, flags, data)?;
        let id = self.shared.next_domain_id();
        Ok(Domain::new_nested(
            id,
            DomainType::Nested,
            driver_part,
            &ops,
            PagingFlags::empty(),
            None,
            Some(parent.clone()),
        ))
    }

    /// Makes a vIOMMU of type `ty` over `parent` for the IOMMU instance
    /// translating `dev` (`IOMMU_VIOMMU_ALLOC`).
    ///
    /// # Errors
    /// `ENODEV` when no IOMMU translates `dev`; `EINVAL` when `parent` is not a
    /// nest parent of that instance; the driver's refusal (`EOPNOTSUPP`
    /// when it cannot nest or does not know `ty`).
    pub fn viommu_alloc(
        &self,
        dev: &Arc<Device>,
        parent: &Domain,
        ty: u32,
        data: Option<&UserData<'_>>,
    ) -> Result<Viommu, Errno> {
        let ops = translating_ops(dev)?;
        let _span = crate::trace::debug_span!("viommu_alloc", driver = ops.name(), ty).entered();
        if !parent.is_owned_by(&ops) || !parent.is_nest_parent() {
            return Err(Errno::EINVAL);
        }
        let driver_part = ops.viommu_alloc(dev, parent, ty, data)?;
        Ok(Viommu(Arc::new(ViommuInner {
            ty,
            parent: parent.clone(),
            ops: driver_part,
            owner: Arc::downgrade(&ops),
            iommu: self.clone(),
            vdevs: Mutex::new(BTreeMap::new()),
        })))
    }
}
