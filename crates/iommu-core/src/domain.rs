//! Domains: an address space devices can be attached to, and the map/unmap
//! path through it (page-size selection, batching, rollback, IOTLB gather).

use crate::ops::{DomainGeometry, DomainOps, PagingOps};
use crate::prelude::*;
use crate::sync::{Mutex, RwLock};
use crate::{Device, IommuOps, PagingFlags, Viommu};
use alloc::sync::{Arc, Weak};
use core::any::Any;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot};

/// What a DMA layer keeps in a domain (Linux's `domain->iova_cookie`).
pub type IovaCookie = Arc<dyn Any + Send + Sync>;

const PAGING: u8 = 1 << 0;
const DMA_API: u8 = 1 << 1;
const PT: u8 = 1 << 2;
const DMA_FQ: u8 = 1 << 3;
const NESTED: u8 = 1 << 6;

/// Domain types, with Linux's flag composition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainType {
    /// All DMA is blocked.
    Blocked,
    /// DMA addresses are physical addresses (passthrough).
    Identity,
    /// Paging, managed by a user such as VFIO.
    Unmanaged,
    /// Paging, managed by the DMA API with strict invalidation.
    Dma,
    /// Paging, managed by the DMA API with a flush queue (lazy invalidation).
    DmaFq,
    /// A user-managed first stage over a nest-parent domain's second stage
    /// (`IOMMU_DOMAIN_NESTED`): only a [`Viommu`](crate::Viommu) makes one,
    /// and the core cannot map into it.
    Nested,
}

impl DomainType {
    /// Linux's `__IOMMU_DOMAIN_*` bits.
    pub const fn flags(self) -> u8 {
        match self {
            DomainType::Blocked => 0,
            DomainType::Identity => PT,
            DomainType::Unmanaged => PAGING,
            DomainType::Dma => PAGING | DMA_API,
            DomainType::DmaFq => PAGING | DMA_API | DMA_FQ,
            DomainType::Nested => NESTED,
        }
    }

    /// Has page tables (`__IOMMU_DOMAIN_PAGING`).
    pub const fn is_paging(self) -> bool {
        self.flags() & PAGING != 0
    }

    /// Managed by the DMA API (`__IOMMU_DOMAIN_DMA_API`).
    pub const fn is_dma_api(self) -> bool {
        self.flags() & DMA_API != 0
    }

    /// Uses a flush queue (`__IOMMU_DOMAIN_DMA_FQ`).
    pub const fn uses_flush_queue(self) -> bool {
        self.flags() & DMA_FQ != 0
    }

    /// The word the group's sysfs `type` file shows.
    pub const fn sysfs_name(self) -> &'static str {
        match self {
            DomainType::Blocked => "blocked",
            DomainType::Identity => "identity",
            DomainType::Unmanaged => "unmanaged",
            DomainType::Dma => "DMA",
            DomainType::DmaFq => "DMA-FQ",
            DomainType::Nested => "nested",
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            DomainType::Blocked => 0,
            DomainType::Identity => 1,
            DomainType::Unmanaged => 2,
            DomainType::Dma => 3,
            DomainType::DmaFq => 4,
            DomainType::Nested => 5,
        }
    }

    const fn from_u8(v: u8) -> DomainType {
        match v {
            0 => DomainType::Blocked,
            1 => DomainType::Identity,
            2 => DomainType::Unmanaged,
            3 => DomainType::Dma,
            4 => DomainType::DmaFq,
            _ => DomainType::Nested,
        }
    }
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sysfs_name())
    }
}

/// Direction of a faulting access (`IOMMU_FAULT_READ` / `IOMMU_FAULT_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAccess {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// A domain's fault handler; its result is what `report_fault` returns.
pub type FaultHandler =
    Arc<dyn Fn(&Domain, &Device, Iova, FaultAccess) -> Result<(), Errno> + Send + Sync>;

/// One segment of a scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// Physical address of the segment.
    pub paddr: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

/// An unmap whose IOTLB invalidation did not complete.
///
/// The range is out of the page tables (`removed` bytes, what a good unmap
/// returns), but the IOMMU may still translate it from its caches: the
/// caller must not hand the IOVA out again, nor assume the device has lost
/// access, until a later invalidation covering it completes. Linux only
/// logs such a failure; here the caller is told. A
/// [`Domain::flush_iotlb_all`] that returns `Ok` after this covers it
/// ([`Domain::flush_ticket`] names the flush that would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IotlbSyncError {
    /// Bytes removed from the page tables.
    pub removed: u64,
    /// Why the invalidation failed.
    pub errno: Errno,
}

impl fmt::Display for IotlbSyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x} bytes unmapped, but the IOTLB invalidation did not complete ({}): they may still translate",
            self.removed,
            self.errno.name()
        )
    }
}

impl core::error::Error for IotlbSyncError {}

impl From<IotlbSyncError> for Errno {
    fn from(e: IotlbSyncError) -> Errno {
        e.errno
    }
}

/// Which whole-domain invalidations have completed, so that whoever holds
/// something back until one has (a flush queue's IOVAs, a quarantine) can
/// tell without flushing itself.
///
/// A flush-all takes a ticket when it starts (1, 2, ...). Something that
/// needs invalidating, noted when ticket `t - 1` was the last taken, is
/// covered once any flush with ticket `t` or later has completed: that
/// flush started after it. Tickets of completed flushes only ratchet up, so
/// flushes that finish out of order or fail do no harm.
#[derive(Default)]
struct FlushClock {
    /// Tickets taken.
    started: AtomicU64,
    /// The highest ticket of a flush that completed.
    completed: AtomicU64,
    /// The ticket a flush needs to cover every invalidation that failed so far (0: none).
    owed: AtomicU64,
}

struct DomainInner {
    id: u64,
    ty: AtomicU8,
    ops: Box<dyn DomainOps>,
    /// The IOMMU instance that allocated it (Linux's `domain->owner`). Weak,
    /// because drivers keep domains in their stream tables; the weak count
    /// keeps the allocation, so the address cannot be reused by another.
    owner: Weak<dyn IommuOps>,
    driver: String,
    pgsize_bitmap: u64,
    geometry: DomainGeometry,
    /// Whether the core can map into it, decided when it is made: `EINVAL`
    /// for a type without page tables, `ENODEV` for a driver without
    /// [`PagingOps`] or page sizes.
    paging: Result<(), Errno>,
    fault_handler: RwLock<Option<FaultHandler>>,
    iova_cookie: Mutex<Option<IovaCookie>>,
    flushes: FlushClock,
    /// How a paging domain was asked for (`IOMMU_HWPT_ALLOC_*`).
    flags: PagingFlags,
    /// The vIOMMU a nested domain was made by; it holds the parent.
    viommu: Option<Viommu>,
    /// The nest parent of a nested domain made without a vIOMMU
    /// ([`Iommu::domain_alloc_nested`](crate::Iommu::domain_alloc_nested)).
    parent: Option<Domain>,
}

/// A domain (`struct iommu_domain`); clones share it, equality is identity.
#[derive(Clone)]
pub struct Domain(Arc<DomainInner>);

impl PartialEq for Domain {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Domain {}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain#{}({})", self.0.id, self.ty())
    }
}

/// Bits 0..=`bit` set.
#[inline]
const fn mask_through(bit: u32) -> u64 {
    if bit >= 63 {
        u64::MAX
    } else {
        (1u64 << (bit + 1)) - 1
    }
}

/// Picks the page size for the next step of a map or unmap and how many
/// pages of it to do at once (Linux's `iommu_pgsize`).
///
/// The page is the largest size in `bitmap` that is no larger than `size`
/// and to which both `iova` and `paddr` are aligned. The count stops short of
/// the next boundary where a larger supported page could start, so a larger
/// page is never passed over. `bitmap` must hold a size `<= size` dividing
/// both addresses (callers check alignment to the smallest page first).
#[inline]
pub fn pgsize_for(bitmap: u64, iova: u64, paddr: u64, size: u64) -> (u64, u64) {
    debug_assert!(size != 0);
    let addr_merge = iova | paddr;
    // One page of a supported size, aligned (a DMA buffer's usual case):
    // nothing larger fits in `size`, so it is the answer, without the
    // search's chain of bit scans.
    if size & size.wrapping_sub(1) == 0 && bitmap & size != 0 && addr_merge & (size - 1) == 0 {
        return (size, 1);
    }
    // Sizes not larger than `size`: every bit up to its highest set bit.
    let mut sizes = bitmap & mask_through(63 - size.leading_zeros());
    if addr_merge != 0 {
        // Sizes not larger than the addresses' common alignment.
        sizes &= mask_through(addr_merge.trailing_zeros());
    }
    debug_assert!(sizes != 0, "no page size fits; alignment was not checked");
    let idx = 63 - sizes.leading_zeros();
    let pgsize = 1u64 << idx;

    let larger = bitmap & !((pgsize << 1).wrapping_sub(1));
    let mut span = size;
    if larger != 0 && idx < 63 {
        let next = larger & larger.wrapping_neg();
        // A larger page is only possible where iova and paddr share its offset.
        if (iova ^ paddr) & (next - 1) == 0 {
            let to_boundary = next - (addr_merge & (next - 1));
            if to_boundary.checked_add(next).is_some_and(|n| n <= size) {
                span = to_boundary;
            }
        }
    }
    (pgsize, span >> idx)
}

impl Domain {
    pub(crate) fn new(
        id: u64,
        ty: DomainType,
        ops: Box<dyn DomainOps>,
        owner: &Arc<dyn IommuOps>,
    ) -> Domain {
        Self::new_with(id, ty, ops, owner, PagingFlags::empty(), None)
    }

    pub(crate) fn new_with(
        id: u64,
        ty: DomainType,
        ops: Box<dyn DomainOps>,
        owner: &Arc<dyn IommuOps>,
        flags: PagingFlags,
        viommu: Option<Viommu>,
    ) -> Domain {
        Self::new_nested(id, ty, ops, owner, flags, viommu, None)
    }

    /// [`new_with`](Self::new_with) for a nested domain over `parent`.
    pub(crate) fn new_nested(
        id: u64,
        ty: DomainType,
        ops: Box<dyn DomainOps>,
        owner: &Arc<dyn IommuOps>,
        flags: PagingFlags,
        viommu: Option<Viommu>,
        parent: Option<Domain>,
    ) -> Domain {
        let pgsize_bitmap = ops.pgsize_bitmap().unwrap_or(owner.pgsize_bitmap());
        let geometry = ops.geometry().unwrap_or(DomainGeometry::FULL);
        let paging = if !ty.is_paging() {
            Err(Errno::EINVAL)
        } else if ops.paging().is_none() || pgsize_bitmap == 0 {
            Err(Errno::ENODEV)
        } else {
            Ok(())
        };
        Domain(Arc::new(DomainInner {
            id,
            ty: AtomicU8::new(ty.to_u8()),
            ops,
            owner: Arc::downgrade(owner),
            driver: owner.name().to_string(),
            pgsize_bitmap,
            geometry,
            paging,
            fault_handler: RwLock::new(None),
            iova_cookie: Mutex::new(None),
            flushes: FlushClock::default(),
            flags,
            viommu,
            parent,
        }))
    }

    /// The flags a paging domain was allocated with
    /// ([`Iommu::domain_alloc_paging_flags`](crate::Iommu::domain_alloc_paging_flags)).
    pub fn paging_flags(&self) -> PagingFlags {
        self.0.flags
    }

    /// Whether a [`Viommu`] may nest over this domain (it was allocated
    /// with [`PagingFlags::NEST_PARENT`]).
    pub fn is_nest_parent(&self) -> bool {
        self.0.flags.contains(PagingFlags::NEST_PARENT)
    }

    /// The vIOMMU a nested domain belongs to.
    pub fn viommu(&self) -> Option<&Viommu> {
        self.0.viommu.as_ref()
    }

    /// The second stage a nested domain translates through.
    pub fn nest_parent(&self) -> Option<&Domain> {
        self.0
            .viommu
            .as_ref()
            .map(Viommu::parent)
            .or(self.0.parent.as_ref())
    }

    /// Hands the guest's invalidations of a nested domain to its driver
    /// (Linux's `cache_invalidate_user`, for `IOMMU_HWPT_INVALIDATE` on a
    /// nested HWPT).
    ///
    /// # Errors
    /// The entries handled and why the next failed; `EOPNOTSUPP` for a
    /// driver without the op.
    pub fn cache_invalidate_user(
        &self,
        array: &crate::UserDataArray<'_>,
    ) -> Result<(), crate::InvalidateError> {
        let _s = crate::trace::debug_span!("cache_invalidate_user", n = array.entry_num).entered();
        self.0.ops.cache_invalidate_user(array)
    }

    /// An id unique within its subsystem, for logs and traces.
    #[inline]
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The domain type.
    #[inline]
    pub fn ty(&self) -> DomainType {
        DomainType::from_u8(self.0.ty.load(Ordering::Acquire))
    }

    /// Switches between `Dma` and `DmaFq` in place (a flush queue can be added
    /// to a live DMA domain without tearing it down).
    pub(crate) fn set_ty(&self, ty: DomainType) {
        self.0.ty.store(ty.to_u8(), Ordering::Release);
    }

    /// Page sizes of this domain.
    #[inline]
    pub fn pgsize_bitmap(&self) -> u64 {
        self.0.pgsize_bitmap
    }

    /// The aperture.
    pub fn geometry(&self) -> DomainGeometry {
        self.0.geometry
    }

    /// The driver's ops.
    pub fn ops(&self) -> &dyn DomainOps {
        &*self.0.ops
    }

    /// Name of the driver that allocated it.
    pub fn driver(&self) -> &str {
        &self.0.driver
    }

    /// Whether `ops` is the IOMMU instance that allocated this domain
    /// (Linux's `domain->owner == dev_iommu_ops(dev)`): a domain may only be
    /// attached through its owner.
    pub fn is_owned_by(&self, ops: &Arc<dyn IommuOps>) -> bool {
        core::ptr::addr_eq(self.0.owner.as_ptr(), Arc::as_ptr(ops))
    }

    /// A handle that does not keep the domain alive.
    pub fn downgrade(&self) -> WeakDomain {
        WeakDomain(Arc::downgrade(&self.0))
    }

    /// The DMA layer's state for this domain, if one was set up.
    pub fn iova_cookie(&self) -> Option<IovaCookie> {
        self.0.iova_cookie.lock().clone()
    }

    /// The DMA layer's state, created by `init` the first time it is asked
    /// for (Linux's `iommu_get_dma_cookie` plus `iommu_dma_init_domain`).
    /// The cookie lives as long as the domain; it must hold the domain only
    /// weakly.
    ///
    /// # Errors
    /// `init`'s error; no cookie is then stored.
    pub fn get_or_init_iova_cookie<E>(
        &self,
        init: impl FnOnce(&Domain) -> Result<IovaCookie, E>,
    ) -> Result<IovaCookie, E> {
        let mut slot = self.0.iova_cookie.lock();
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = init(self)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Reference count (holders of this domain: groups, devices' hardware state, callers).
    pub fn refcount(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The page-table operations, where the core may map (see
    /// `DomainInner::paging`).
    fn paging_ops(&self) -> Result<&dyn PagingOps, Errno> {
        self.0.paging?;
        self.0.ops.paging().ok_or(Errno::ENODEV)
    }

    fn min_pagesz(&self) -> u64 {
        self.0.pgsize_bitmap & self.0.pgsize_bitmap.wrapping_neg()
    }

    /// Maps `[iova, iova + size)` to `[paddr, paddr + size)` (Linux's `iommu_map`).
    ///
    /// # Errors
    /// `EINVAL` for a non-paging domain or addresses/size not aligned to the
    /// smallest page; `ENODEV` when the driver has no map op or no page sizes;
    /// `EOVERFLOW` when a range wraps; `ERANGE` outside the aperture; the
    /// driver's error otherwise. On error nothing stays mapped; if what was
    /// mapped and taken back could not be invalidated, the domain says so
    /// ([`invalidation_owed`](Self::invalidation_owed)) and the IOVA must
    /// wait for a flush before it is used again.
    pub fn map(&self, iova: Iova, paddr: PhysAddr, size: u64, prot: Prot) -> Result<(), Errno> {
        if crate::trace::listening() {
            return self.map_traced(iova, paddr, size, prot);
        }
        self.map_impl::<false>(iova, paddr, size, prot)
    }

    /// [`map`](Self::map) under its spans, taken only when a subscriber
    /// may record them; the untraced variant carries no span code at all.
    #[cold]
    #[inline(never)]
    fn map_traced(&self, iova: Iova, paddr: PhysAddr, size: u64, prot: Prot) -> Result<(), Errno> {
        let _span = crate::trace::debug_span!("iommu_map", domain = self.0.id, %iova, %paddr, size = format_args!("{size:#x}"), %prot).entered();
        self.map_impl::<true>(iova, paddr, size, prot)
    }

    #[inline(always)]
    fn map_impl<const TRACED: bool>(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        size: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        // One driver call for the whole request syncs it too
        // (`map_pages_sync`); otherwise the sync follows the last call.
        if self.map_nosync::<TRACED, true>(iova, paddr, size, prot)? {
            return Ok(());
        }
        if let Err(e) = self.0.ops.iotlb_sync_map(iova, size) {
            self.undo_map(iova, size);
            return Err(e);
        }
        Ok(())
    }

    /// `map` without the final `iotlb_sync_map` (Linux's `__iommu_map`).
    /// With `SYNC`, a request one driver call maps whole is synced by that
    /// call, and the answer is `true`. `TRACED`: with a span per driver call.
    #[inline(always)]
    fn map_nosync<const TRACED: bool, const SYNC: bool>(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        size: u64,
        prot: Prot,
    ) -> Result<bool, Errno> {
        self.0.paging?;
        let min = self.min_pagesz();
        if (iova.raw() | paddr.raw() | size) & (min - 1) != 0 {
            return Err(unaligned_map(iova, paddr, size, min));
        }
        if size == 0 {
            return Ok(false);
        }
        let last = iova.raw().checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        paddr.raw().checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        if !self.0.geometry.contains(iova, Iova::new(last)) {
            return Err(Errno::ERANGE);
        }
        let mut done = 0u64;
        while done < size {
            let (cur_iova, cur_pa) = (iova.raw() + done, paddr.raw() + done);
            let (pgsize, count) = pgsize_for(self.0.pgsize_bitmap, cur_iova, cur_pa, size - done);
            let _s = TRACED.then(|| {
                crate::trace::trace_span!(
                    "map_pages",
                    iova = format_args!("{cur_iova:#x}"),
                    pgsize = format_args!("{pgsize:#x}"),
                    count
                )
                .entered()
            });
            let (at, pa, n) = (Iova::new(cur_iova), PhysAddr::new(cur_pa), count as usize);
            // Traced, the sync stays its own step after the map, as the
            // call tree shows it (Linux's `iommu_map` order).
            let whole = SYNC && !TRACED && pgsize * count == size;
            let result = if whole {
                self.0.ops.map_pages_sync(at, pa, pgsize, n, prot)
            } else {
                self.0.ops.map_pages(at, pa, pgsize, n, prot)
            };
            match result {
                Ok(0) => {
                    // A driver that maps nothing without an error would loop forever.
                    self.undo_map(iova, done);
                    return Err(Errno::EINVAL);
                }
                Ok(mapped) if whole && mapped == size => return Ok(true),
                Ok(mapped) => done += mapped,
                Err(MapErr { errno, mapped }) => {
                    self.undo_map(iova, done + mapped);
                    return Err(errno);
                }
            }
        }
        Ok(false)
    }

    fn undo_map(&self, iova: Iova, size: u64) {
        if size != 0 {
            let _s = crate::trace::debug_span!("undo_map", %iova, size = format_args!("{size:#x}"))
                .entered();
            // The map's own error is what the caller hears; an undo whose
            // invalidation failed stays owed (`invalidation_owed`).
            let _ = self.unmap(iova, size);
        }
    }

    /// Unmaps `[iova, iova + size)` and syncs the IOTLB; returns the bytes
    /// removed (Linux's `iommu_unmap`). Stops at the first hole. A large
    /// page partly covered is removed whole and counted whole, and the walk
    /// goes on from its end, so nothing inside the range is skipped; the
    /// count may therefore exceed `size`. Invalid requests unmap nothing and
    /// return 0.
    ///
    /// # Errors
    /// [`IotlbSyncError`] when the driver could not complete the
    /// invalidation: the bytes it carries are out of the page tables but
    /// may still translate (Linux returns the count and only logs).
    pub fn unmap(&self, iova: Iova, size: u64) -> Result<u64, IotlbSyncError> {
        if crate::trace::listening() {
            return self.unmap_traced(iova, size);
        }
        self.unmap_impl::<false>(iova, size)
    }

    /// [`unmap`](Self::unmap) under its spans (see `map_traced`).
    #[cold]
    #[inline(never)]
    fn unmap_traced(&self, iova: Iova, size: u64) -> Result<u64, IotlbSyncError> {
        let _span = crate::trace::debug_span!("iommu_unmap", domain = self.0.id, %iova, size = format_args!("{size:#x}")).entered();
        self.unmap_impl::<true>(iova, size)
    }

    #[inline(always)]
    fn unmap_impl<const TRACED: bool>(&self, iova: Iova, size: u64) -> Result<u64, IotlbSyncError> {
        let mut gather = IotlbGather::new();
        let removed = self.unmap_fast_impl::<TRACED>(iova, size, &mut gather);
        self.iotlb_sync_impl::<TRACED>(&gather)
            .map(|()| removed)
            .map_err(|errno| IotlbSyncError { removed, errno })
    }

    /// Unmaps without invalidating: the caller must pass `gather` to
    /// [`iotlb_sync`](Self::iotlb_sync) before relying on the unmap
    /// (Linux's `iommu_unmap_fast`).
    pub fn unmap_fast(&self, iova: Iova, size: u64, gather: &mut IotlbGather) -> u64 {
        if crate::trace::listening() {
            self.unmap_fast_impl::<true>(iova, size, gather)
        } else {
            self.unmap_fast_impl::<false>(iova, size, gather)
        }
    }

    #[inline(always)]
    fn unmap_fast_impl<const TRACED: bool>(
        &self,
        iova: Iova,
        size: u64,
        gather: &mut IotlbGather,
    ) -> u64 {
        if self.0.paging.is_err() {
            return 0;
        }
        let min = self.min_pagesz();
        if (iova.raw() | size) & (min - 1) != 0 {
            return 0;
        }
        let Some(end) = iova.raw().checked_add(size) else {
            return 0;
        };
        let mut removed = 0u64;
        let mut cur = iova.raw();
        while cur < end {
            let (pgsize, count) = pgsize_for(self.0.pgsize_bitmap, cur, cur, end - cur);
            let _s = TRACED.then(|| {
                crate::trace::trace_span!(
                    "unmap_pages",
                    iova = format_args!("{cur:#x}"),
                    pgsize = format_args!("{pgsize:#x}"),
                    count
                )
                .entered()
            });
            let u = self
                .0
                .ops
                .unmap_pages(Iova::new(cur), pgsize, count as usize, gather);
            if u.is_empty() {
                break;
            }
            if !u.covers(Iova::new(cur)) {
                // The driver answered about some other address: stop rather
                // than guess where to go on.
                stray_unmap(&u, cur);
                removed = removed.saturating_add(u.size);
                break;
            }
            removed = removed.saturating_add(u.size);
            // Go on from the end of what was removed, not from `cur + size`:
            // a leaf cut in the middle started below `cur`.
            match u.end() {
                Some(next) => cur = next.raw(),
                None => break, // removed up to the top of the address space
            }
        }
        removed
    }

    /// The first leaf overlapping `[start, last]`, as `(first IOVA, size)`;
    /// `None` for domains without page tables.
    pub fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        let paging = self.paging_ops().ok()?;
        paging.first_mapping(start, last)
    }

    /// Invalidates what `gather` holds (Linux's `iommu_iotlb_sync`).
    ///
    /// # Errors
    /// The driver's: the invalidation did not complete, and what the
    /// gather covers may still translate until a flush with a ticket of
    /// at least [`flush_ticket`](Self::flush_ticket) (taken after this
    /// returns) completes. The domain remembers it
    /// ([`invalidation_owed`](Self::invalidation_owed)).
    ///
    /// The gather by reference, as Linux's: a copy of it right after the
    /// walker's narrower stores into it stalls store forwarding (about
    /// 5 ns on a 4 KiB unmap).
    #[inline]
    pub fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        if crate::trace::listening() {
            self.iotlb_sync_impl::<true>(gather)
        } else {
            self.iotlb_sync_impl::<false>(gather)
        }
    }

    #[inline(always)]
    fn iotlb_sync_impl<const TRACED: bool>(&self, gather: &IotlbGather) -> Result<(), Errno> {
        if gather.is_empty() {
            return Ok(());
        }
        let _s = TRACED.then(|| {
            crate::trace::trace_span!("iotlb_sync", size = format_args!("{:#x}", gather.size()))
                .entered()
        });
        let r = self.0.ops.iotlb_sync(gather);
        if let Err(e) = r {
            self.note_failed_invalidation(e);
        }
        r
    }

    /// Whether the domain tracks dirty pages (Linux's `dirty_ops` set).
    pub fn has_dirty_ops(&self) -> bool {
        self.0.ops.dirty().is_some()
    }

    /// Turns dirty tracking on or off (Linux's `set_dirty_tracking` op).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a domain without dirty tracking; the driver's.
    pub fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        let _s = crate::trace::debug_span!("set_dirty_tracking", enable).entered();
        self.0
            .ops
            .dirty()
            .ok_or(Errno::EOPNOTSUPP)?
            .set_dirty_tracking(enable)
    }

    /// Reports every dirty mapping overlapping `[iova, iova + size)` to
    /// `dirty` and, unless `no_clear`, marks it clean and then invalidates
    /// the range, so the IOMMU marks it again on the next write (Linux's
    /// `read_and_clear_dirty` op followed by `iommu_iotlb_sync`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` for a domain without dirty tracking; the driver's walk
    /// or invalidation failure.
    pub fn read_and_clear_dirty(
        &self,
        iova: Iova,
        size: u64,
        no_clear: bool,
        dirty: &mut dyn FnMut(Iova, u64),
    ) -> Result<(), Errno> {
        let ops = self.0.ops.dirty().ok_or(Errno::EOPNOTSUPP)?;
        let _s = crate::trace::trace_span!(
            "read_and_clear_dirty",
            iova = format_args!("{:#x}", iova.raw()),
            size = format_args!("{size:#x}"),
            no_clear
        )
        .entered();
        ops.read_and_clear_dirty(iova, size, no_clear, dirty)?;
        if !no_clear && size != 0 {
            let mut gather = IotlbGather::new();
            gather.add_range(iova, size);
            self.iotlb_sync(&gather)?;
        }
        Ok(())
    }

    /// Invalidates the whole IOTLB of the domain (Linux's
    /// `iommu_flush_iotlb_all`). When it returns `Ok`, everything unmapped
    /// before it was called no longer translates, including what failed
    /// invalidations left behind.
    ///
    /// # Errors
    /// The driver's: the invalidation did not complete.
    pub fn flush_iotlb_all(&self) -> Result<(), Errno> {
        let clock = &self.0.flushes;
        let ticket = clock.started.fetch_add(1, Ordering::SeqCst) + 1;
        let _s = crate::trace::trace_span!("flush_iotlb_all", ticket).entered();
        let r = self.0.ops.flush_iotlb_all();
        match r {
            Ok(()) => {
                clock.completed.fetch_max(ticket, Ordering::SeqCst);
            }
            Err(e) => {
                crate::trace::debug!(
                    domain = self.0.id,
                    errno = e.name(),
                    "flush_iotlb_all did not complete"
                );
            }
        }
        r
    }

    /// The ticket of the first flush-all that would cover an invalidation
    /// owed now: one that starts after this call. Take it after the
    /// failure (or the deferred unmap) it is for, then wait for
    /// [`flushed_through`](Self::flushed_through).
    pub fn flush_ticket(&self) -> u64 {
        self.0.flushes.started.load(Ordering::SeqCst) + 1
    }

    /// Whether a flush-all with ticket `ticket` or later has completed.
    pub fn flushed_through(&self, ticket: u64) -> bool {
        self.0.flushes.completed.load(Ordering::SeqCst) >= ticket
    }

    /// Whether an invalidation of this domain failed and no flush-all
    /// started since has completed: something unmapped may still translate.
    pub fn invalidation_owed(&self) -> bool {
        let owed = self.0.flushes.owed.load(Ordering::SeqCst);
        owed != 0 && !self.flushed_through(owed)
    }

    #[cold]
    #[inline(never)]
    fn note_failed_invalidation(&self, e: Errno) {
        crate::trace::debug!(
            domain = self.0.id,
            errno = e.name(),
            "iotlb_sync did not complete"
        );
        self.0
            .flushes
            .owed
            .fetch_max(self.flush_ticket(), Ordering::SeqCst);
    }

    /// Maps a scatter-gather list contiguously from `iova`, merging physically
    /// contiguous segments; returns the bytes mapped. All or nothing.
    ///
    /// # Errors
    /// As [`map`](Self::map); on error nothing from this call stays mapped.
    pub fn map_sg(&self, iova: Iova, sg: &[SgEntry], prot: Prot) -> Result<u64, Errno> {
        let _span =
            crate::trace::debug_span!("iommu_map_sg", domain = self.0.id, %iova, nents = sg.len())
                .entered();
        let mut mapped = 0u64;
        let mut run: Option<(u64, u64)> = None; // (start pa, len)
        let flush = |mapped: &mut u64, run: (u64, u64)| -> Result<(), Errno> {
            let at = iova.checked_add(*mapped).ok_or(Errno::EOVERFLOW)?;
            self.map_nosync::<true, false>(at, PhysAddr::new(run.0), run.1, prot)?;
            *mapped += run.1;
            Ok(())
        };
        for seg in sg {
            run = match run {
                Some((start, len)) if start.checked_add(len) == Some(seg.paddr.raw()) => {
                    Some((start, len.checked_add(seg.len).ok_or(Errno::EOVERFLOW)?))
                }
                Some(r) => {
                    if let Err(e) = flush(&mut mapped, r) {
                        self.undo_map(iova, mapped);
                        return Err(e);
                    }
                    Some((seg.paddr.raw(), seg.len))
                }
                None => Some((seg.paddr.raw(), seg.len)),
            };
        }
        if let Some(r) = run {
            if let Err(e) = flush(&mut mapped, r) {
                self.undo_map(iova, mapped);
                return Err(e);
            }
        }
        if let Err(e) = self.0.ops.iotlb_sync_map(iova, mapped) {
            self.undo_map(iova, mapped);
            return Err(e);
        }
        Ok(mapped)
    }

    /// Where `iova` translates to: itself in an identity domain, nowhere in a
    /// blocked one, the page tables' answer otherwise.
    pub fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        match self.ty() {
            DomainType::Identity => Some(PhysAddr::new(iova.raw())),
            DomainType::Blocked => None,
            _ => self.0.ops.paging()?.iova_to_phys(iova),
        }
    }

    /// Installs (or with `None` removes) the fault handler.
    pub fn set_fault_handler(&self, handler: Option<FaultHandler>) {
        *self.0.fault_handler.write() = handler;
    }

    /// Reports a translation fault of `dev` at `iova`: the handler's result,
    /// or `ENOSYS` when no handler is installed (Linux's `report_iommu_fault`).
    ///
    /// # Errors
    /// `ENOSYS` without a handler, or the handler's error.
    pub fn report_fault(&self, dev: &Device, iova: Iova, access: FaultAccess) -> Result<(), Errno> {
        let handler = self.0.fault_handler.read().clone();
        crate::trace::debug!(domain = self.0.id, dev = dev.name(), %iova, ?access, "io_page_fault");
        match handler {
            Some(h) => h(self, dev, iova, access),
            None => Err(Errno::ENOSYS),
        }
    }
}

use crate::ops::MapPagesError as MapErr;

/// Reports a map request not aligned to the smallest page; `EINVAL`.
/// Out of line, so the hot path carries no logging code.
#[cold]
#[inline(never)]
fn unaligned_map(iova: Iova, paddr: PhysAddr, size: u64, min: u64) -> Errno {
    crate::trace::warn!(%iova, %paddr, size, min, "unaligned map");
    Errno::EINVAL
}

/// Reports a driver's `unmap_pages` answer about another address than
/// `at`, the one asked for.
#[cold]
#[inline(never)]
fn stray_unmap(u: &iommu_types::Unmapped, at: u64) {
    crate::trace::error!(iova = %u.iova, size = u.size, at, "unmap_pages removed a range that does not cover the address asked for");
}

/// A domain reference that does not keep it alive (for timers and caches
/// the domain itself owns).
#[derive(Clone, Debug, Default)]
pub struct WeakDomain(Weak<DomainInner>);

impl WeakDomain {
    /// The domain, if it still exists.
    pub fn upgrade(&self) -> Option<Domain> {
        self.0.upgrade().map(Domain)
    }
}
