//! [`DmaDevice`]: a device bound for DMA through its default domain, and
//! the DMA API calls on it.

use crate::cookie::{deferred_flush_capable, DmaCookie, DmaDomainStats};
use crate::quarantine::Memory;
use crate::sg::{self, SgMapping};
use crate::track::{Api, Tracked, Tracker};
use crate::DmaCpus;
use crate::{dma_info_to_prot, ArchSync, DmaAddr, DmaAttrs, DmaDirection, DmaError, PageAllocator};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use iommu_core::{Device, Domain, Iommu, Iova, PhysAddr, SgEntry};

/// How a device is bound for DMA.
#[derive(Clone)]
pub struct DmaOptions {
    /// Lay out IOVAs anywhere below the mask at once, skipping the
    /// below-4-GiB-first preference PCI devices get (`iommu.forcedac=1`).
    pub forcedac: bool,
    /// Whether the device snoops CPU caches; `None` takes the IOMMU's
    /// `CacheCoherency` capability.
    pub coherent: Option<bool>,
    /// Record every mapping so that bad unmaps and syncs get typed errors
    /// (Linux's `CONFIG_DMA_API_DEBUG`). On by default: a record costs one
    /// compare-and-swap to put in and one to take out, without a lock.
    pub check_handles: bool,
    /// Longest DMA segment the device takes (`dma_get_max_seg_size`);
    /// `None`: 64 KiB, Linux's default.
    pub max_seg_size: Option<u64>,
    /// Segment boundary mask (`dma_get_seg_boundary`); `None`: 4 GiB for
    /// PCI devices, none otherwise, as Linux sets them.
    pub seg_boundary_mask: Option<u64>,
    /// Host-bridge windows `(first, last)` that must never be IOVAs.
    pub bridge_windows: Vec<(u64, u64)>,
    /// Cache maintenance for a non-coherent device.
    pub arch_sync: Option<Arc<dyn ArchSync>>,
    /// Memory for coherent buffers.
    pub memory: Option<Arc<dyn PageAllocator>>,
    /// Entries per CPU flush queue (used when the domain's cookie is made).
    pub fq_size: usize,
    /// Flush-queue timeout (used when the domain's cookie is made).
    pub fq_timeout: Duration,
    /// What runs flush-queue timeouts (used when the domain's cookie is
    /// made); `None`: with std, `ThreadTimer`, one thread for every domain
    /// of the process; without, no timer, and DMA-FQ domains unmap
    /// strictly. A kernel passes its own timer.
    pub fq_timer: Option<Arc<dyn crate::fq::FqTimer>>,
    /// CPU ids for the IOVA caches, flush queues and handle records (used
    /// when the domain's cookie is made).
    pub cpus: DmaCpus,
}

impl Default for DmaOptions {
    fn default() -> Self {
        Self {
            forcedac: false,
            coherent: None,
            check_handles: true,
            max_seg_size: None,
            seg_boundary_mask: None,
            bridge_windows: Vec::new(),
            arch_sync: None,
            memory: None,
            fq_size: crate::fq::DEFAULT_FQ_SIZE,
            fq_timeout: crate::fq::DEFAULT_FQ_TIMEOUT,
            fq_timer: None,
            cpus: DmaCpus::default(),
        }
    }
}

impl fmt::Debug for DmaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaOptions")
            .field("forcedac", &self.forcedac)
            .field("coherent", &self.coherent)
            .field("check_handles", &self.check_handles)
            .field("fq_size", &self.fq_size)
            .field("fq_timeout", &self.fq_timeout)
            .field("fq_timer", &self.fq_timer.is_some())
            .finish_non_exhaustive()
    }
}

/// A coherent buffer: memory both the CPU and the device see without syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoherentBuffer {
    /// Where the memory is.
    pub paddr: PhysAddr,
    /// The device's address for it.
    pub dma: DmaAddr,
    /// Bytes asked for.
    pub size: u64,
}

/// A device bound to a DMA-API domain (the driver side of Linux's
/// `iommu_dma_ops`). Binding counts as a kernel driver using the group's
/// default domain, so the group cannot be claimed by a user or switched to
/// another domain type until it is dropped (DMA to DMA-FQ is allowed in
/// place). Every call takes `&self`; share it between threads freely.
pub struct DmaDevice {
    iommu: Iommu,
    dev: Arc<Device>,
    domain: Domain,
    cookie: Arc<DmaCookie>,
    granule: u64,
    shift: u32,
    /// Highest address the aperture allows.
    aperture_end: u64,
    dma_mask: AtomicU64,
    coherent_mask: AtomicU64,
    pci_32bit_workaround: AtomicBool,
    coherent: bool,
    max_seg_size: u64,
    seg_boundary: u64,
    arch_sync: Option<Arc<dyn ArchSync>>,
    memory: Option<Arc<dyn PageAllocator>>,
    tracker: Option<Tracker>,
}

impl fmt::Debug for DmaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDevice")
            .field("dev", &self.dev.name())
            .field("domain", &self.domain)
            .field("dma_mask", &format_args!("{:#x}", self.dma_mask()))
            .finish_non_exhaustive()
    }
}

impl Drop for DmaDevice {
    fn drop(&mut self) {
        self.iommu.device_unuse_default_domain(&self.dev);
    }
}

/// `DMA_BIT_MASK(32)`, every device's mask until its driver sets one.
const DMA_BIT_MASK_32: u64 = u32::MAX as u64;

impl DmaDevice {
    /// Binds `dev` for DMA through its group's default domain, setting up
    /// the domain's IOVA space on first use and reserving the device's
    /// reserved regions in it (Linux's `iommu_setup_dma_ops` plus
    /// `iommu_device_use_default_domain` at driver probe).
    ///
    /// # Errors
    /// [`DmaError::NotTranslated`] unless the default domain is DMA or
    /// DMA-FQ; [`DmaError::Busy`] when a user owns the group;
    /// [`DmaError::Iova`] when a reserved region overlaps a live mapping.
    /// On error the device is not bound.
    pub fn bind(iommu: &Iommu, dev: &Arc<Device>, opts: DmaOptions) -> Result<DmaDevice, DmaError> {
        let group = dev.iommu_group().ok_or(DmaError::NotTranslated)?;
        let dd = group.default_domain().ok_or(DmaError::NotTranslated)?;
        if !dd.ty().is_dma_api() {
            return Err(DmaError::NotTranslated);
        }
        iommu
            .device_use_default_domain(dev)
            .map_err(|_| DmaError::Busy)?;
        // From here on the default domain cannot be replaced under us.
        let bound = Self::bind_locked(iommu, dev, &opts);
        if bound.is_err() {
            iommu.device_unuse_default_domain(dev);
        }
        bound
    }

    fn bind_locked(
        iommu: &Iommu,
        dev: &Arc<Device>,
        opts: &DmaOptions,
    ) -> Result<DmaDevice, DmaError> {
        let group = dev.iommu_group().ok_or(DmaError::NotTranslated)?;
        let domain = group.default_domain().ok_or(DmaError::NotTranslated)?;
        if !domain.ty().is_dma_api() {
            return Err(DmaError::NotTranslated);
        }
        let fq_allowed = deferred_flush_capable(dev);
        let cookie = domain
            .get_or_init_iova_cookie(|d| {
                DmaCookie::new(d, opts, fq_allowed).map(|c| Arc::new(c) as iommu_core::IovaCookie)
            })?
            .downcast::<DmaCookie>()
            .map_err(|_| DmaError::NotTranslated)?;
        cookie.reserve_for(iommu, dev, opts)?;
        let coherent = opts.coherent.unwrap_or_else(|| {
            dev.iommu_ops()
                .is_some_and(|o| o.capable(iommu_core::Capability::CacheCoherency))
        });
        let geometry = domain.geometry();
        let aperture_end = if geometry.force_aperture {
            geometry.aperture_end.raw()
        } else {
            u64::MAX
        };
        let granule = cookie.iovad.granule();
        let shift = cookie.iovad.shift();
        let cookie_cpus = iommu_iova::CpuId::nr_cpus(cookie.iovad.cpu_id());
        Ok(DmaDevice {
            iommu: iommu.clone(),
            dev: dev.clone(),
            domain,
            granule,
            shift,
            cookie,
            // The last granule of the 64-bit space is never handed out, so
            // no mapping can be `DMA_MAPPING_ERROR`.
            aperture_end: aperture_end.min(u64::MAX - granule),
            dma_mask: AtomicU64::new(DMA_BIT_MASK_32),
            coherent_mask: AtomicU64::new(DMA_BIT_MASK_32),
            pci_32bit_workaround: AtomicBool::new(dev.is_pci() && !opts.forcedac),
            coherent,
            max_seg_size: opts.max_seg_size.unwrap_or(0x1_0000),
            seg_boundary: opts.seg_boundary_mask.unwrap_or(if dev.is_pci() {
                DMA_BIT_MASK_32
            } else {
                u64::MAX
            }),
            arch_sync: opts.arch_sync.clone(),
            memory: opts.memory.clone(),
            tracker: opts.check_handles.then(|| Tracker::new(cookie_cpus, shift)),
        })
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The domain DMA goes through.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The IOVA granule (the domain's smallest page size).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Whether the device snoops CPU caches (no syncs needed).
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// The streaming DMA mask (`dma_get_mask`).
    pub fn dma_mask(&self) -> u64 {
        self.dma_mask.load(Ordering::Relaxed)
    }

    /// The coherent DMA mask.
    pub fn coherent_dma_mask(&self) -> u64 {
        self.coherent_mask.load(Ordering::Relaxed)
    }

    fn check_mask(&self, mask: u64) -> Result<(), DmaError> {
        if mask >> self.shift < self.cookie.iovad.start_pfn() {
            return Err(DmaError::MaskTooSmall);
        }
        Ok(())
    }

    /// Sets the streaming DMA mask (`dma_set_mask`).
    ///
    /// # Errors
    /// [`DmaError::MaskTooSmall`] (`EIO`) when no IOVA fits under it.
    pub fn set_dma_mask(&self, mask: u64) -> Result<(), DmaError> {
        self.check_mask(mask)?;
        self.dma_mask.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the coherent DMA mask (`dma_set_coherent_mask`).
    ///
    /// # Errors
    /// As [`set_dma_mask`](Self::set_dma_mask).
    pub fn set_coherent_dma_mask(&self, mask: u64) -> Result<(), DmaError> {
        self.check_mask(mask)?;
        self.coherent_mask.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// Sets both masks (`dma_set_mask_and_coherent`).
    ///
    /// # Errors
    /// As [`set_dma_mask`](Self::set_dma_mask); neither mask changes then.
    pub fn set_dma_mask_and_coherent(&self, mask: u64) -> Result<(), DmaError> {
        self.check_mask(mask)?;
        self.dma_mask.store(mask, Ordering::Relaxed);
        self.coherent_mask.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// Whether unmaps are lazy right now (the domain is DMA-FQ and the
    /// driver allows deferred flushing).
    pub fn is_lazy(&self) -> bool {
        self.cookie.flush_queue(&self.domain).is_some()
    }

    /// Counts of the domain's IOVA space and flush queue.
    pub fn domain_stats(&self) -> DmaDomainStats {
        self.cookie.stats()
    }

    /// Live mappings of this device (0 without handle checking).
    pub fn live_mappings(&self) -> usize {
        self.tracker.as_ref().map_or(0, Tracker::len)
    }

    /// Runs the flush queue's timeout now: one flush-all, then every queued
    /// IOVA is freed. The timer does this on its own; this is for callers
    /// that want the queue empty at a point they choose.
    pub fn flush_queue_now(&self) {
        self.cookie.flush_queue_timeout();
    }

    /// `size` plus the offset into its first granule, rounded up to granules.
    #[inline]
    fn span(&self, addr: u64, size: u64) -> Result<(u64, u64), DmaError> {
        if size == 0 {
            return Err(DmaError::InvalidArgument);
        }
        let mask = self.granule - 1;
        let off = addr & mask;
        let len = size
            .checked_add(off + mask)
            .ok_or(DmaError::InvalidArgument)?
            & !mask;
        addr.checked_add(size - 1)
            .ok_or(DmaError::InvalidArgument)?;
        Ok((off, len))
    }

    /// Space below 4 GiB ran out: from now on this device's addresses use
    /// its whole DMA mask (Linux logs the same once).
    #[cold]
    #[inline(never)]
    fn end_32bit_workaround(&self, limit: u64) {
        self.pci_32bit_workaround.store(false, Ordering::Relaxed);
        tracing::info!(
            dev = self.dev.name(),
            "using {}-bit DMA addresses",
            64 - limit.leading_zeros()
        );
    }

    /// An IOVA range of `len` bytes below `mask` (Linux's `iommu_dma_alloc_iova`).
    #[inline(always)]
    fn alloc_iova(&self, len: u64, mask: u64) -> Result<u64, DmaError> {
        let limit = mask.min(self.aperture_end);
        let pages = len >> self.shift;
        let iovad = &self.cookie.iovad;
        if limit > DMA_BIT_MASK_32 && self.pci_32bit_workaround.load(Ordering::Relaxed) {
            if let Ok(pfn) = iovad.alloc_fast(pages, DMA_BIT_MASK_32 >> self.shift, false) {
                return Ok(pfn << self.shift);
            }
            self.end_32bit_workaround(limit);
        }
        let alloc = || iovad.alloc_fast(pages, limit >> self.shift, true);
        let pfn = match alloc() {
            Ok(pfn) => pfn,
            // IOVAs waiting in a flush queue or the quarantine are free
            // space a flush away: take it rather than fail (Linux would
            // fail here).
            Err(_) if self.cookie.has_queued() || !self.cookie.quarantine.is_empty() => {
                self.cookie.flush_queue_timeout();
                let _ = self.cookie.release_quarantine();
                alloc().map_err(|_| DmaError::NoSpace)?
            }
            Err(_) => return Err(DmaError::NoSpace),
        };
        Ok(pfn << self.shift)
    }

    fn sync_for_device_phys(&self, paddr: u64, size: u64, dir: DmaDirection) {
        if let (false, Some(a)) = (self.coherent, &self.arch_sync) {
            a.sync_for_device(PhysAddr::new(paddr), size, dir);
        }
    }

    fn sync_for_cpu_phys(&self, paddr: u64, size: u64, dir: DmaDirection) {
        if let (false, Some(a)) = (self.coherent, &self.arch_sync) {
            a.sync_for_cpu(PhysAddr::new(paddr), size, dir);
        }
    }

    /// Maps `size` bytes at `paddr` for the device (Linux's `dma_map_single`
    /// / `dma_map_page`). The IOVA keeps the buffer's offset into its granule.
    ///
    /// # Errors
    /// [`DmaError::InvalidArgument`] for a zero size, `DmaDirection::None`
    /// or a wrapping range; [`DmaError::NoSpace`] when no IOVA fits below
    /// the DMA mask; [`DmaError::Map`] when the page tables refuse.
    #[inline]
    pub fn map_single(
        &self,
        paddr: PhysAddr,
        size: u64,
        dir: DmaDirection,
    ) -> Result<DmaAddr, DmaError> {
        self.map_single_attrs(paddr, size, dir, DmaAttrs::NONE)
    }

    /// [`map_single`](Self::map_single) with attributes.
    ///
    /// # Errors
    /// As `map_single`.
    pub fn map_single_attrs(
        &self,
        paddr: PhysAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, DmaError> {
        if listening() {
            return self.map_single_traced(paddr, size, dir, attrs);
        }
        self.map_single_impl(paddr, size, dir, attrs)
    }

    /// `map_single_attrs` under its span, only when a subscriber may
    /// record it: the untraced path carries no span code.
    #[cold]
    #[inline(never)]
    fn map_single_traced(
        &self,
        paddr: PhysAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, DmaError> {
        let _s = tracing::debug_span!("dma_map_single", dev = self.dev.name(), %paddr, size = format_args!("{size:#x}"), ?dir).entered();
        self.map_single_impl(paddr, size, dir, attrs)
    }

    #[inline(always)]
    fn map_single_impl(
        &self,
        paddr: PhysAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<DmaAddr, DmaError> {
        let prot = dma_info_to_prot(dir, self.coherent, attrs)?;
        let (off, len) = self.span(paddr.raw(), size)?;
        if !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.sync_for_device_phys(paddr.raw(), size, dir);
        }
        let iova = self.map_range(paddr.raw() - off, len, prot, self.dma_mask())?;
        if let Some(t) = &self.tracker {
            t.insert(
                iova,
                Tracked {
                    len,
                    dir,
                    api: Api::Single,
                },
            );
        }
        Ok(DmaAddr::new(iova + off))
    }

    #[inline(always)]
    fn map_range(
        &self,
        paddr: u64,
        len: u64,
        prot: iommu_core::Prot,
        mask: u64,
    ) -> Result<u64, DmaError> {
        self.check_quarantine()?;
        let iova = self.alloc_iova(len, mask)?;
        if let Err(e) = self
            .domain
            .map(Iova::new(iova), PhysAddr::new(paddr), len, prot)
        {
            // The core took the partial map back; if that could not be
            // invalidated the domain owes it, and the IOVA waits.
            self.cookie.give_back(
                &self.domain,
                iova >> self.shift,
                len >> self.shift,
                true,
                None,
            );
            return Err(DmaError::Map(e));
        }
        Ok(iova)
    }

    /// Frees held-back IOVAs a flush by anyone has covered, and refuses
    /// new mappings while the quarantine is full and a flush does not
    /// empty it (the IOMMU is wedged).
    #[inline]
    fn check_quarantine(&self) -> Result<(), DmaError> {
        let q = &self.cookie.quarantine;
        q.release_flushed(&self.cookie.iovad, &self.domain);
        if q.is_full() {
            let _ = self.cookie.release_quarantine();
            if q.is_full() {
                return Err(DmaError::Wedged);
            }
        }
        Ok(())
    }

    /// Tries to release the IOVAs held back because their invalidation
    /// did not complete: one flush-all of the domain, then every range it
    /// covers is freed. The DMA layer does this itself when the IOMMU
    /// answers again (the next strict unmap whose invalidation completes,
    /// the flush queue's timer, an allocation that finds no space); this
    /// is for a caller that knows the hardware is back. Returns the ranges
    /// freed.
    ///
    /// # Errors
    /// [`DmaError::NotInvalidated`]: the flush did not complete either.
    pub fn release_quarantine(&self) -> Result<usize, DmaError> {
        self.cookie
            .release_quarantine()
            .map_err(DmaError::NotInvalidated)
    }

    /// Whether an invalidation of the domain failed and no flush since has
    /// completed: the device may still reach something unmapped.
    pub fn invalidation_pending(&self) -> bool {
        self.domain.invalidation_owed() || !self.cookie.quarantine.is_empty()
    }

    /// Unmaps what [`map_single`](Self::map_single) returned (Linux's
    /// `dma_unmap_single`). Strict domains invalidate before returning;
    /// lazy ones queue the IOVA (see [`fq`](crate::fq)).
    ///
    /// # Errors
    /// [`DmaError::NotMapped`] for an address this device has not mapped (or
    /// already unmapped); [`DmaError::Mismatch`] for another size, direction
    /// or API than the map used; [`DmaError::InvalidArgument`] as for map.
    /// Nothing changes on those errors. [`DmaError::NotInvalidated`]: the
    /// mapping is gone, but the IOMMU did not confirm the invalidation, so
    /// the device may still reach the buffer for now (its IOVA is held back
    /// until an invalidation completes).
    #[inline]
    pub fn unmap_single(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.unmap_single_attrs(addr, size, dir, DmaAttrs::NONE)
    }

    /// [`unmap_single`](Self::unmap_single) with attributes.
    ///
    /// # Errors
    /// As `unmap_single`.
    pub fn unmap_single_attrs(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        if listening() {
            return self.unmap_single_traced(addr, size, dir, attrs);
        }
        self.unmap_single_impl(addr, size, dir, attrs)
    }

    /// `unmap_single_attrs` under its span (see `map_single_traced`).
    #[cold]
    #[inline(never)]
    fn unmap_single_traced(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        let _s = tracing::debug_span!(
            "dma_unmap_single",
            dev = self.dev.name(),
            addr = format_args!("{:#x}", addr.raw()),
            size = format_args!("{size:#x}"),
            ?dir
        )
        .entered();
        self.unmap_single_impl(addr, size, dir, attrs)
    }

    #[inline(always)]
    fn unmap_single_impl(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        dma_info_to_prot(dir, self.coherent, attrs)?;
        let (off, len) = self.span(addr.raw(), size)?;
        let iova = addr.raw() - off;
        if let Some(t) = &self.tracker {
            t.take(iova, len, dir, Api::Single)?;
        }
        if !self.coherent && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            if let Some(pa) = self.domain.iova_to_phys(Iova::new(addr.raw())) {
                self.sync_for_cpu_phys(pa.raw(), size, dir);
            }
        }
        self.unmap_range(iova, len, None)
    }

    /// Unmaps one mapped IOVA range and frees it, with `memory` (see
    /// `DmaCookie::unmap`); the range is proven this device's when handles
    /// are checked.
    #[inline(always)]
    fn unmap_range(&self, iova: u64, len: u64, memory: Option<Memory>) -> Result<(), DmaError> {
        self.cookie.unmap(
            &self.domain,
            iova,
            len,
            &[(iova, len)],
            self.tracker.is_some(),
            memory,
        )
    }

    /// Maps a scatter-gather list into one IOVA range (Linux's `dma_map_sg`).
    /// The returned mapping lists the merged DMA segments.
    ///
    /// # Errors
    /// [`DmaError::InvalidArgument`] for an empty list, a zero-length or
    /// wrapping segment, or `DmaDirection::None`; [`DmaError::NoSpace`];
    /// [`DmaError::Map`]. Nothing stays mapped on error.
    pub fn map_sg(&self, sg: &[SgEntry], dir: DmaDirection) -> Result<SgMapping, DmaError> {
        self.map_sg_attrs(sg, dir, DmaAttrs::NONE)
    }

    /// [`map_sg`](Self::map_sg) with attributes.
    ///
    /// # Errors
    /// As `map_sg`.
    pub fn map_sg_attrs(
        &self,
        sg: &[SgEntry],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<SgMapping, DmaError> {
        let prot = dma_info_to_prot(dir, self.coherent, attrs)?;
        let layout = sg::layout(sg, self.granule, self.seg_boundary)?;
        if !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            for s in sg {
                self.sync_for_device_phys(s.paddr.raw(), s.len, dir);
            }
        }
        self.check_quarantine()?;
        let iova = self.alloc_iova(layout.iova_len, self.dma_mask())?;
        let mut runs = Vec::with_capacity(layout.runs.len());
        for &(off, len, first, end) in &layout.runs {
            let entries = sg::run_entries(sg, &layout, first, end);
            match self.domain.map_sg(Iova::new(iova + off), &entries, prot) {
                Ok(_) => runs.push((iova + off, len)),
                Err(e) => {
                    let mut invalidated = true;
                    for &(at, n) in &runs {
                        invalidated &= self.domain.unmap(Iova::new(at), n).is_ok();
                    }
                    self.cookie.give_back(
                        &self.domain,
                        iova >> self.shift,
                        layout.iova_len >> self.shift,
                        invalidated,
                        None,
                    );
                    return Err(DmaError::Map(e));
                }
            }
        }
        if let Some(t) = &self.tracker {
            t.insert(
                iova,
                Tracked {
                    len: layout.iova_len,
                    dir,
                    api: Api::Sg,
                },
            );
        }
        Ok(SgMapping {
            iova,
            iova_len: layout.iova_len,
            runs,
            segments: sg::finalise(&layout, iova, self.seg_boundary, self.max_seg_size),
            entries: sg.to_vec(),
            dir,
        })
    }

    /// Unmaps a list [`map_sg`](Self::map_sg) mapped (Linux's `dma_unmap_sg`).
    ///
    /// # Errors
    /// [`DmaError::NotMapped`] when it is not mapped (any more);
    /// [`DmaError::Mismatch`] when the address was mapped by another API;
    /// [`DmaError::NotInvalidated`] as for [`unmap_single`](Self::unmap_single).
    pub fn unmap_sg(&self, m: &SgMapping) -> Result<(), DmaError> {
        if let Some(t) = &self.tracker {
            t.take(m.iova, m.iova_len, m.dir, Api::Sg)?;
        }
        self.sync_sg_for_cpu(m);
        self.cookie.unmap(
            &self.domain,
            m.iova,
            m.iova_len,
            &m.runs,
            self.tracker.is_some(),
            None,
        )
    }

    /// Allocates a coherent buffer of `size` bytes and maps it both ways
    /// below the coherent mask (Linux's `dma_alloc_coherent`).
    ///
    /// # Errors
    /// [`DmaError::InvalidArgument`] for zero; [`DmaError::NoMemory`]
    /// without an allocator or when it is empty; as `map_single` otherwise.
    /// No memory stays allocated on error.
    pub fn alloc_coherent(&self, size: u64, attrs: DmaAttrs) -> Result<CoherentBuffer, DmaError> {
        let memory = self.memory.as_ref().ok_or(DmaError::NoMemory)?;
        let (_, len) = self.span(0, size)?;
        let prot = dma_info_to_prot(DmaDirection::Bidirectional, self.coherent, attrs)?;
        let paddr = memory.alloc_pages(len).ok_or(DmaError::NoMemory)?;
        match self.map_range(paddr.raw(), len, prot, self.coherent_dma_mask()) {
            Ok(iova) => {
                if let Some(t) = &self.tracker {
                    t.insert(
                        iova,
                        Tracked {
                            len,
                            dir: DmaDirection::Bidirectional,
                            api: Api::Coherent,
                        },
                    );
                }
                Ok(CoherentBuffer {
                    paddr,
                    dma: DmaAddr::new(iova),
                    size,
                })
            }
            Err(e) => {
                memory.free_pages(paddr, len);
                Err(e)
            }
        }
    }

    /// Unmaps and frees a coherent buffer (Linux's `dma_free_coherent`).
    ///
    /// # Errors
    /// [`DmaError::NotMapped`] / [`DmaError::Mismatch`] for a buffer this
    /// device did not allocate (or already freed). [`DmaError::NotInvalidated`]:
    /// the buffer is unmapped but the device may still reach it, so its
    /// memory goes back to the allocator only with its IOVA, once an
    /// invalidation completes.
    pub fn free_coherent(&self, buf: &CoherentBuffer) -> Result<(), DmaError> {
        let memory = self.memory.as_ref().ok_or(DmaError::NotMapped)?;
        let (_, len) = self.span(0, buf.size)?;
        if let Some(t) = &self.tracker {
            t.take(
                buf.dma.raw(),
                len,
                DmaDirection::Bidirectional,
                Api::Coherent,
            )?;
        }
        let iova = buf.dma.raw();
        self.unmap_range(iova, len, Some((memory.clone(), buf.paddr, len)))
    }

    fn sync_single(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
        for_cpu: bool,
    ) -> Result<(), DmaError> {
        dma_info_to_prot(dir, self.coherent, DmaAttrs::NONE)?;
        self.span(addr.raw(), size)?;
        let pa = self
            .domain
            .iova_to_phys(Iova::new(addr.raw()))
            .ok_or(DmaError::NotMapped)?;
        if for_cpu {
            self.sync_for_cpu_phys(pa.raw(), size, dir);
        } else {
            self.sync_for_device_phys(pa.raw(), size, dir);
        }
        Ok(())
    }

    /// Hands a streaming buffer back to the CPU (Linux's
    /// `dma_sync_single_for_cpu`): cache maintenance for a non-coherent
    /// device, nothing for a coherent one.
    ///
    /// # Errors
    /// [`DmaError::NotMapped`] when `addr` does not translate;
    /// [`DmaError::InvalidArgument`] for a zero size or `DmaDirection::None`.
    pub fn sync_single_for_cpu(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync_single(addr, size, dir, true)
    }

    /// Hands a streaming buffer to the device (Linux's `dma_sync_single_for_device`).
    ///
    /// # Errors
    /// As [`sync_single_for_cpu`](Self::sync_single_for_cpu).
    pub fn sync_single_for_device(
        &self,
        addr: DmaAddr,
        size: u64,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync_single(addr, size, dir, false)
    }

    /// `sync_single_for_cpu` on every segment of a mapped list.
    pub fn sync_sg_for_cpu(&self, m: &SgMapping) {
        for s in &m.entries {
            self.sync_for_cpu_phys(s.paddr.raw(), s.len, m.dir);
        }
    }

    /// `sync_single_for_device` on every segment of a mapped list.
    pub fn sync_sg_for_device(&self, m: &SgMapping) {
        for s in &m.entries {
            self.sync_for_device_phys(s.paddr.raw(), s.len, m.dir);
        }
    }
}

/// Whether a subscriber may record debug spans: one relaxed load, so the
/// map and unmap paths build no span when nobody listens.
#[inline(always)]
fn listening() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    tracing::Level::DEBUG <= STATIC_MAX_LEVEL && tracing::Level::DEBUG <= LevelFilter::current()
}
