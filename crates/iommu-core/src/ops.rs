//! What an IOMMU driver implements: per-IOMMU ops ([`IommuOps`]) and
//! per-domain ops ([`DomainOps`], with [`PagingOps`] for domains that have
//! page tables).
//!
//! Linux models an absent op as a NULL function pointer. Here an optional op
//! is a default method, and the paging ops are an `Option` so that the core
//! can tell "no map op" (`ENODEV`) from a map that failed.

use crate::prelude::*;
use crate::{
    Device, Domain, DomainType, Group, Iommu, PagingFlags, ReservedRegion, UserData, ViommuOps,
};
use alloc::sync::Arc;
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot, Unmapped};

/// Capabilities a driver may report (`enum iommu_cap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// DMA is cache-coherent (`IOMMU_CAP_CACHE_COHERENCY`).
    CacheCoherency,
    /// The IOMMU blocks MSIs unless they are mapped (`IOMMU_CAP_INTR_REMAP`).
    IntrRemap,
    /// `IOMMU_NOEXEC` is honoured (`IOMMU_CAP_NOEXEC`).
    NoExec,
    /// Invalidation may be deferred to a flush queue (`IOMMU_CAP_DEFERRED_FLUSH`).
    DeferredFlush,
}

/// Operations of one IOMMU driver, set on a bus with [`Iommu::bus_set_iommu`].
pub trait IommuOps: Send + Sync + 'static {
    /// Driver name for logs and traces.
    fn name(&self) -> &str {
        "iommu"
    }

    /// Brings `dev` under this IOMMU, normally by calling
    /// [`Iommu::group_get_for_dev`]. Returning `Ok` without giving the device
    /// a group means the device is not translated by this IOMMU.
    ///
    /// A driver that does not provide the op keeps the default, which is `ENODEV`.
    ///
    /// # Errors
    /// Whatever prevented the device from being added; the bus walk stops there.
    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        let _ = (iommu, dev);
        Err(Errno::ENODEV)
    }

    /// Releases `dev`; the default removes it from its group.
    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        iommu.group_remove_device(dev);
    }

    /// The group `dev` belongs in: an existing one (for devices that cannot be
    /// isolated from each other) or a new one. The default gives every device
    /// its own group.
    ///
    /// # Errors
    /// Allocation failures; `EINVAL` when the device cannot be placed in any
    /// one group (see [`StreamIdGroups`](crate::StreamIdGroups)).
    fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        iommu.generic_device_group(dev)
    }

    /// Allocates the driver side of a domain of type `ty`.
    ///
    /// # Errors
    /// Refusal of the type (commonly `EOPNOTSUPP`) or `ENOMEM`.
    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno>;

    /// Allocates the driver side of a paging domain for `dev` with
    /// `flags` and optional driver data (Linux's
    /// `domain_alloc_paging_flags`). The default serves no flags and no
    /// data with [`domain_alloc`](Self::domain_alloc)`(Unmanaged)`.
    ///
    /// # Errors
    /// `EOPNOTSUPP` for flags or data the driver does not take; as
    /// [`domain_alloc`](Self::domain_alloc).
    fn domain_alloc_paging_flags(
        &self,
        dev: &Arc<Device>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        let _ = dev;
        if !flags.is_empty() || data.is_some() {
            return Err(Errno::EOPNOTSUPP);
        }
        self.domain_alloc(DomainType::Unmanaged)
    }

    /// The IOMMU's description for a user (Linux's `hw_info`, as
    /// `IOMMU_GET_HW_INFO` asks it): `ty` is the type asked for
    /// (`IOMMU_HW_INFO_TYPE_*`, 0 for the driver's own); the answer is
    /// the type given and its bytes, laid out as the uAPI says. The
    /// default, `None`, is a driver with nothing to report
    /// (`IOMMU_HW_INFO_TYPE_NONE`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a type the driver does not give.
    fn hw_info(&self, dev: &Device, ty: u32) -> Result<Option<(u32, Vec<u8>)>, Errno> {
        let _ = (dev, ty);
        Ok(None)
    }

    /// Makes the driver side of a nested domain over the nest parent
    /// `parent` from the guest's description `data`, without a vIOMMU
    /// (Linux's `domain_alloc_nested`, for `IOMMU_HWPT_ALLOC` on a paging
    /// HWPT). The core has checked that `parent` is this instance's nest
    /// parent. The default cannot (`EOPNOTSUPP`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for flags or a data type the driver does not take;
    /// its check of `data`.
    fn domain_alloc_nested(
        &self,
        dev: &Arc<Device>,
        parent: &Domain,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        let _ = (dev, parent, flags, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// Makes the driver side of a vIOMMU of type `ty` over the nest-parent
    /// domain `parent`, for the instance translating `dev` (Linux's
    /// `get_viommu_size` + `viommu_init`). The core has checked that
    /// `parent` is this instance's and a nest parent.
    ///
    /// # Errors
    /// `EOPNOTSUPP` (the default) when the driver cannot nest or does not
    /// know `ty`; `EINVAL` when `parent` cannot serve `dev`.
    fn viommu_alloc(
        &self,
        dev: &Arc<Device>,
        parent: &Domain,
        ty: u32,
        data: Option<&UserData<'_>>,
    ) -> Result<Box<dyn ViommuOps>, Errno> {
        let _ = (dev, parent, ty, data);
        Err(Errno::EOPNOTSUPP)
    }

    /// Reserved regions of `dev` (its firmware's plus the driver's own, such as an MSI window).
    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        dev.firmware_resv_regions().to_vec()
    }

    /// The default domain type this device needs, if it has a preference.
    fn def_domain_type(&self, dev: &Device) -> Option<DomainType> {
        let _ = dev;
        None
    }

    /// Page sizes this IOMMU supports (Linux's `pgsize_bitmap`).
    fn pgsize_bitmap(&self) -> u64;

    /// Whether the IOMMU has capability `cap`.
    fn capable(&self, cap: Capability) -> bool {
        let _ = cap;
        false
    }

    /// How many PASIDs `dev` may use with this IOMMU (Linux's
    /// `dev->iommu->max_pasids`): 0, the default, when it has none.
    fn max_pasids(&self, dev: &Device) -> u32 {
        let _ = dev;
        0
    }

    /// Whether the IOMMU translating `dev` can track which pages DMA
    /// wrote (Linux's `IOMMU_CAP_DIRTY_TRACKING`, asked per device). A
    /// method of its own rather than a [`Capability`], so drivers written
    /// against the enum keep compiling; the default is no.
    fn dirty_tracking_capable(&self, dev: &Device) -> bool {
        let _ = dev;
        false
    }
}

/// Dirty tracking of a paging domain (Linux's `struct iommu_dirty_ops`):
/// the IOMMU marks the leaves DMA writes through, and software reads and
/// clears the marks (live migration's "which pages did the device dirty").
pub trait DirtyOps: Send + Sync {
    /// Turns tracking on or off.
    ///
    /// # Errors
    /// The hardware refused (commonly `EINVAL`).
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno>;

    /// Calls `dirty(iova, size)` for every dirty mapping that overlaps
    /// `[iova, iova + size)` and, unless `no_clear`, marks it clean. The
    /// caller invalidates the IOTLB after clearing (a cached translation
    /// may hold the dirty state), as [`Domain::read_and_clear_dirty`]
    /// does.
    ///
    /// # Errors
    /// The walk failed.
    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        no_clear: bool,
        dirty: &mut dyn FnMut(Iova, u64),
    ) -> Result<(), Errno>;
}

/// The usable input range of a domain (`struct iommu_domain_geometry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainGeometry {
    /// First mappable IOVA.
    pub aperture_start: Iova,
    /// Last mappable IOVA (inclusive).
    pub aperture_end: Iova,
    /// DMA outside the aperture is impossible (the DMA layer must stay inside).
    pub force_aperture: bool,
}

impl DomainGeometry {
    /// The whole 64-bit space, not enforced.
    pub const FULL: DomainGeometry = DomainGeometry {
        aperture_start: Iova::ZERO,
        aperture_end: Iova::new(u64::MAX),
        force_aperture: false,
    };

    /// An enforced aperture of `bits` address bits.
    pub const fn bits(bits: u32) -> DomainGeometry {
        DomainGeometry {
            aperture_start: Iova::ZERO,
            aperture_end: Iova::new(if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            }),
            force_aperture: true,
        }
    }

    /// Whether `[iova, last]` lies inside the aperture.
    pub fn contains(&self, iova: Iova, last: Iova) -> bool {
        iova >= self.aperture_start && last <= self.aperture_end
    }
}

/// Operations of one domain, as the driver implements them.
pub trait DomainOps: Send + Sync + 'static {
    /// Points `dev`'s translation at this domain.
    ///
    /// # Errors
    /// The device cannot use this domain (commonly `EINVAL`), or the hardware refused.
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno>;

    /// Stops `dev` translating through this domain (used when a group has no
    /// default domain to fall back to, and when a device leaves its group).
    fn detach_dev(&self, domain: &Domain, dev: &Arc<Device>) {
        let _ = (domain, dev);
    }

    /// The page-table operations, for paging domains; `None` means "no map op".
    ///
    /// The answer must not change over the domain's life: the core asks
    /// once, when the domain is made, whether there is one.
    fn paging(&self) -> Option<&dyn PagingOps> {
        None
    }

    /// [`PagingOps::map_pages`] of [`paging`](Self::paging) (`ENODEV`
    /// without one): the core's map goes through here.
    ///
    /// Drivers leave it alone. The provided body is compiled into each
    /// driver's own `DomainOps`, where `paging` is the driver's and no longer
    /// a dynamic call, so a map costs one dispatch, as Linux's
    /// `domain->ops->map_pages`, instead of two.
    ///
    /// # Errors
    /// See [`MapPagesError`].
    #[inline]
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        match self.paging() {
            Some(p) => p.map_pages(iova, paddr, pgsize, pgcount, prot),
            None => Err(Errno::ENODEV.into()),
        }
    }

    /// [`map_pages`](Self::map_pages) of a whole map request in one call
    /// and, once it has mapped all of it,
    /// [`iotlb_sync_map`](Self::iotlb_sync_map) over it. A failed sync is an
    /// error with everything mapped counted in `mapped`, which the core
    /// then takes back as it does after a short map.
    ///
    /// Drivers leave it alone. Compiled into each driver, it calls the
    /// driver's own `iotlb_sync_map` directly, so a driver without one pays
    /// nothing for it (Linux skips a NULL op), and one with one pays a call
    /// instead of a dispatch.
    ///
    /// # Errors
    /// See [`MapPagesError`].
    #[inline]
    fn map_pages_sync(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        let mapped = self.map_pages(iova, paddr, pgsize, pgcount, prot)?;
        if Some(mapped) == pgsize.checked_mul(pgcount as u64) {
            if let Err(errno) = self.iotlb_sync_map(iova, mapped) {
                return Err(MapPagesError { errno, mapped });
            }
        }
        Ok(mapped)
    }

    /// [`PagingOps::unmap_pages`] of [`paging`](Self::paging) (nothing
    /// removed without one), for the same reason as
    /// [`map_pages`](Self::map_pages).
    #[inline]
    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        match self.paging() {
            Some(p) => p.unmap_pages(iova, pgsize, pgcount, gather),
            None => Unmapped::NOTHING,
        }
    }

    /// The aperture; `None` lets the core use the whole address space.
    fn geometry(&self) -> Option<DomainGeometry> {
        None
    }

    /// A domain-specific page-size bitmap; `None` uses the IOMMU's.
    fn pgsize_bitmap(&self) -> Option<u64> {
        None
    }

    /// Called after a successful map of `[iova, iova + size)` (e.g. to flush a
    /// walk cache that may hold "not present").
    ///
    /// # Errors
    /// The flush failed; the core then undoes the map.
    fn iotlb_sync_map(&self, iova: Iova, size: u64) -> Result<(), Errno> {
        let _ = (iova, size);
        Ok(())
    }

    /// Invalidates everything the gather covers.
    ///
    /// Linux's op cannot fail, so a wedged IOMMU leaves translations cached
    /// with nobody above the driver the wiser. Here the driver says so, and
    /// the core passes it up ([`IotlbSyncError`](crate::IotlbSyncError)).
    ///
    /// # Errors
    /// The invalidation did not complete (commonly `ETIMEDOUT` for hardware
    /// that stopped answering, `EIO` for a refused command): the IOMMU may
    /// still translate what the gather covers. A driver that can retry
    /// keeps the invalidation and sends it before anything else, so that a
    /// later one that completes (at the latest, a
    /// [`flush_iotlb_all`](Self::flush_iotlb_all) that returns `Ok`) also
    /// covers this one.
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        let _ = gather;
        Ok(())
    }

    /// Invalidates the whole IOTLB for this domain, including whatever an
    /// earlier failed invalidation left cached.
    ///
    /// # Errors
    /// As [`iotlb_sync`](Self::iotlb_sync): it did not complete.
    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        Ok(())
    }

    /// Points PASID `pasid` of `dev` at this domain, in place of `old`
    /// (Linux's `set_dev_pasid`). On failure the PASID stays on `old`.
    /// The default cannot (`EOPNOTSUPP`).
    ///
    /// # Errors
    /// The driver's refusal.
    fn set_dev_pasid(
        &self,
        domain: &Domain,
        dev: &Arc<Device>,
        pasid: u32,
        old: Option<&Domain>,
    ) -> Result<(), Errno> {
        let _ = (domain, dev, pasid, old);
        Err(Errno::EOPNOTSUPP)
    }

    /// PASID `pasid` of `dev` leaves this domain and blocks DMA (Linux
    /// sets the blocked domain on it).
    fn remove_dev_pasid(&self, domain: &Domain, dev: &Arc<Device>, pasid: u32) {
        let _ = (domain, dev, pasid);
    }

    /// The guest's invalidations of a nested domain made without a vIOMMU
    /// (Linux's `cache_invalidate_user`), in order, stopping at the first
    /// that fails. The default has none (`EOPNOTSUPP`).
    ///
    /// # Errors
    /// The entries handled and why the next failed.
    fn cache_invalidate_user(
        &self,
        array: &crate::UserDataArray<'_>,
    ) -> Result<(), crate::InvalidateError> {
        let _ = array;
        Err(crate::InvalidateError {
            handled: 0,
            errno: Errno::EOPNOTSUPP,
        })
    }

    /// Dirty tracking, for paging domains that have it (Linux's
    /// `domain->dirty_ops`); `None`, the default, for the others.
    fn dirty(&self) -> Option<&dyn DirtyOps> {
        None
    }

    /// The driver's own type, for drivers and tests that need to reach it
    /// (Linux's `container_of(domain, ...)`).
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        None
    }
}

/// Why a `map_pages` call stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPagesError {
    /// The error.
    pub errno: Errno,
    /// Bytes mapped before it happened (the core unmaps them).
    pub mapped: u64,
}

impl From<Errno> for MapPagesError {
    fn from(errno: Errno) -> Self {
        Self { errno, mapped: 0 }
    }
}

/// Page-table operations of a paging domain.
pub trait PagingOps: Send + Sync {
    /// Maps `pgcount` pages of `pgsize` and returns the bytes mapped, which may
    /// be fewer than asked (the core calls again for the rest).
    ///
    /// # Errors
    /// See [`MapPagesError`].
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError>;

    /// Unmaps up to `pgcount` pages of `pgsize` from `iova`, records what
    /// must be invalidated in `gather`, and says what it removed: nothing at
    /// a hole; pages from `iova`; or, when a larger leaf covers `iova`, that
    /// whole leaf (leaves are never split), which may start below `iova`.
    ///
    /// Linux's op returns only a byte count; the start is returned here so
    /// the core can continue from the end of what was removed (see
    /// [`Unmapped`]).
    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped;

    /// The physical address `iova` translates to, if mapped.
    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr>;

    /// The first leaf overlapping `[start, last]`, as `(first IOVA, size)`.
    ///
    /// The core uses it to skip over what is (or is not) mapped without
    /// probing every page, so work follows what is mapped rather than the
    /// size of a range; implementations should walk only what exists.
    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)>;
}

/// Says once in the log that an IOMMU's invalidations stopped completing,
/// and once that they complete again, however many fail in between: what a
/// driver keeps per IOMMU instance (Linux prints every `CMD_SYNC timeout`).
#[derive(Debug, Default)]
pub struct WedgeReport {
    wedged: core::sync::atomic::AtomicBool,
}

impl WedgeReport {
    /// An invalidation of `iommu` did not complete.
    pub fn failed(&self, iommu: &str, e: Errno) {
        use core::sync::atomic::Ordering;
        if !self.wedged.swap(true, Ordering::AcqRel) {
            crate::trace::error!(
                iommu,
                errno = e.name(),
                "invalidations are not completing: unmapped IOVAs may still translate, and are held back until one does"
            );
        }
    }

    /// An invalidation of `iommu` completed.
    #[inline]
    pub fn completed(&self, iommu: &str) {
        use core::sync::atomic::Ordering;
        if self.wedged.load(Ordering::Relaxed) && self.wedged.swap(false, Ordering::AcqRel) {
            crate::trace::info!(iommu, "invalidations complete again");
        }
    }

    /// Whether the last invalidation failed.
    pub fn is_wedged(&self) -> bool {
        self.wedged.load(core::sync::atomic::Ordering::Acquire)
    }
}
