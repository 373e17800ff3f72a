//! The DMA layer's state of one domain (Linux's `iommu_dma_cookie`): its
//! IOVA space and, for DMA-FQ domains, its flush queue.

use crate::fq::{FlushQueue, FqStats, FqTimeout, FqTimer};
use crate::quarantine::{free_memory, Memory, Quarantine, QuarantineStats};
use crate::DmaCpus;
use crate::{DmaError, DmaOptions};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::time::Duration;
use iommu_core::{Capability, Device, Domain, Iommu, IotlbGather, ResvType, WeakDomain};
use iommu_iova::{CpuId, IovaDomain, IovaStats};

/// Counts describing a DMA domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaDomainStats {
    /// The IOVA allocator.
    pub iova: IovaStats,
    /// The flush queue (zeros for a strict domain that never had one).
    pub fq: FqStats,
    /// IOVAs held back because their invalidation did not complete.
    pub quarantine: QuarantineStats,
}

pub(crate) struct DmaCookie {
    pub(crate) iovad: IovaDomain<DmaCpus>,
    domain: WeakDomain,
    /// The driver can defer invalidation (`IOMMU_CAP_DEFERRED_FLUSH`);
    /// without it a DMA-FQ domain behaves as DMA.
    fq_allowed: bool,
    fq_size: usize,
    fq_timeout: Duration,
    /// Made the first time a lazy unmap needs it; `None` if the timer
    /// thread could not start (the domain then stays strict, as Linux falls
    /// back to DMA when its flush queue cannot be set up).
    fq: spin::Once<Option<FlushQueue>>,
    /// The caller's timer; `None`: the std one (without std: none, and
    /// the domain stays strict).
    fq_timer: Option<Arc<dyn FqTimer>>,
    /// IOVAs whose invalidation did not complete.
    pub(crate) quarantine: Quarantine,
}

impl FqTimeout for DmaCookie {
    fn timeout(&self) {
        if let (Some(Some(fq)), Some(domain)) = (self.fq.get(), self.domain.upgrade()) {
            fq.timeout(&self.iovad, &domain, &self.quarantine, false);
        }
    }
}

impl DmaCookie {
    /// Sets up the IOVA space of `domain` (Linux's `iommu_dma_init_domain`):
    /// the granule is the smallest page size, and frame 0 is never handed
    /// out so that no valid DMA address is 0.
    pub(crate) fn new(
        domain: &Domain,
        opts: &DmaOptions,
        fq_allowed: bool,
    ) -> Result<Self, DmaError> {
        let bitmap = domain.pgsize_bitmap();
        if bitmap == 0 {
            return Err(DmaError::NotTranslated);
        }
        let granule = bitmap & bitmap.wrapping_neg();
        let shift = granule.trailing_zeros();
        let base_pfn = (domain.geometry().aperture_start.raw() >> shift).max(1);
        let iovad =
            IovaDomain::new(granule, base_pfn, opts.cpus.clone()).map_err(DmaError::Iova)?;
        Ok(Self {
            iovad,
            domain: domain.downgrade(),
            fq_allowed,
            fq_size: opts.fq_size,
            fq_timeout: opts.fq_timeout,
            fq: spin::Once::new(),
            fq_timer: opts.fq_timer.clone(),
            quarantine: Quarantine::default(),
        })
    }

    /// Reserves what `dev` must never see as an IOVA: its reserved regions
    /// (except software MSI windows: the DMA layer is the software that
    /// would place MSI pages there) and the bridge windows `opts` names.
    /// All or nothing.
    pub(crate) fn reserve_for(
        &self,
        iommu: &Iommu,
        dev: &Device,
        opts: &DmaOptions,
    ) -> Result<(), DmaError> {
        let shift = self.iovad.shift();
        let mut ranges: Vec<(u64, u64)> = iommu
            .get_resv_regions(dev)
            .iter()
            .filter(|r| r.ty != ResvType::SwMsi && r.length != 0)
            .map(|r| (r.start.raw(), r.start.raw().saturating_add(r.length - 1)))
            .collect();
        ranges.extend(opts.bridge_windows.iter().copied());
        let mut pfns = Vec::with_capacity(ranges.len());
        for (start, last) in ranges {
            if start > last {
                return Err(DmaError::InvalidArgument);
            }
            pfns.push((start >> shift, last >> shift));
        }
        self.iovad.reserve_all(&pfns).map_err(DmaError::Iova)
    }

    /// The flush queue, when unmaps of `domain` should be lazy now: the
    /// domain is DMA-FQ (possibly switched in place through sysfs) and the
    /// driver allows deferred flushing.
    #[inline]
    pub(crate) fn flush_queue(self: &Arc<Self>, domain: &Domain) -> Option<&FlushQueue> {
        if !self.fq_allowed || !domain.ty().uses_flush_queue() {
            return None;
        }
        self.fq
            .call_once(|| {
                let timer = match &self.fq_timer {
                    Some(t) => t.clone(),
                    None => crate::fq::default_timer()?,
                };
                let target: Weak<dyn FqTimeout> = Arc::downgrade(self) as _;
                Some(FlushQueue::new(
                    self.iovad.cpu_id().nr_cpus(),
                    self.fq_size,
                    self.fq_timeout,
                    timer,
                    target,
                ))
            })
            .as_ref()
    }

    /// Unmaps `[iova, iova + len)` (made of the mapped `runs`) and frees
    /// the IOVA: at once after an IOTLB sync in strict mode, through the
    /// flush queue in lazy mode (Linux's `__iommu_dma_unmap`). An IOVA whose
    /// invalidation did not complete is held back instead (see
    /// [`quarantine`](crate::quarantine)).
    ///
    /// `owned` says the caller proved the range is a live mapping of its
    /// own (a handle record matched). If the page tables then disagree
    /// (something unmapped part of it behind the DMA layer's back), every
    /// leaf left in the range is removed and the IOVA freed anyway, so
    /// nothing stays mapped and nothing leaks; the error still reports the
    /// disagreement. Without that proof (handle checks off) the IOVA may be
    /// someone else's by now, so it is kept rather than freed twice.
    ///
    /// `memory` (a coherent buffer's) is given back with the IOVA when the
    /// unmap is strict, and at once when it is lazy, as Linux does.
    #[inline(always)]
    pub(crate) fn unmap(
        self: &Arc<Self>,
        domain: &Domain,
        iova: u64,
        len: u64,
        runs: &[(u64, u64)],
        owned: bool,
        memory: Option<Memory>,
    ) -> Result<(), DmaError> {
        let fq = self.flush_queue(domain);
        let mut gather = IotlbGather::new();
        gather.set_queued(fq.is_some());
        let mut unmapped = 0;
        for &(at, n) in runs {
            unmapped += domain.unmap_fast(iommu_core::Iova::new(at), n, &mut gather);
        }
        let mapped: u64 = runs.iter().map(|r| r.1).sum();
        let (pfn, pages) = (iova >> self.iovad.shift(), len >> self.iovad.shift());
        if unmapped != mapped {
            if owned {
                let clean = sweep_clean(domain, iova, len, gather);
                self.give_back(domain, pfn, pages, clean, memory);
            } else if let Err(e) = domain.iotlb_sync(&gather) {
                tracing::debug!(errno = e.name(), "invalidation after a mismatched unmap");
            }
            return Err(DmaError::NotMapped);
        }
        match fq {
            Some(fq) => {
                fq.queue(&self.iovad, domain, &self.quarantine, pfn, pages, gather);
                free_memory(memory);
                Ok(())
            }
            None => match domain.iotlb_sync(&gather) {
                Ok(()) => {
                    self.free_iova(pfn, pages);
                    free_memory(memory);
                    if !self.quarantine.is_empty() {
                        // The IOMMU answers again: what it owed may go too.
                        let _ = self.release_quarantine_in(domain);
                    }
                    Ok(())
                }
                Err(e) => {
                    self.quarantine.hold(domain, pfn, pages, memory);
                    Err(DmaError::NotInvalidated(e))
                }
            },
        }
    }

    /// Gives back an IOVA range this layer allocated whose mapping was
    /// taken out again: freed if that was `invalidated` (and nothing else
    /// failed to invalidate in the domain meanwhile), held back otherwise.
    pub(crate) fn give_back(
        &self,
        domain: &Domain,
        pfn: u64,
        pages: u64,
        invalidated: bool,
        memory: Option<Memory>,
    ) {
        if invalidated && !domain.invalidation_owed() {
            self.free_iova(pfn, pages);
            free_memory(memory);
        } else {
            self.quarantine.hold(domain, pfn, pages, memory);
        }
    }

    /// One flush-all, then every held-back IOVA it covers is freed;
    /// returns how many ranges were.
    ///
    /// # Errors
    /// The flush did not complete.
    pub(crate) fn release_quarantine(&self) -> Result<usize, iommu_core::Errno> {
        match self.domain.upgrade() {
            Some(domain) => self.release_quarantine_in(&domain),
            None => Ok(0),
        }
    }

    /// [`release_quarantine`](Self::release_quarantine) of `domain`, which
    /// the caller holds already.
    fn release_quarantine_in(&self, domain: &Domain) -> Result<usize, iommu_core::Errno> {
        if self.quarantine.is_empty() && !domain.invalidation_owed() {
            return Ok(0);
        }
        domain.flush_iotlb_all()?;
        Ok(self.quarantine.release(&self.iovad, domain))
    }

    /// Gives back an IOVA range this layer allocated.
    #[inline]
    pub(crate) fn free_iova(&self, pfn: u64, pages: u64) {
        free_iova_on(&self.iovad, None, pfn, pages);
    }

    pub(crate) fn stats(&self) -> DmaDomainStats {
        DmaDomainStats {
            quarantine: self.quarantine.stats(),
            iova: self.iovad.stats(),
            fq: self
                .fq
                .get()
                .and_then(Option::as_ref)
                .map(FlushQueue::stats)
                .unwrap_or_default(),
        }
    }

    /// Whether IOVAs wait in the flush queue.
    pub(crate) fn has_queued(&self) -> bool {
        self.fq
            .get()
            .and_then(Option::as_ref)
            .is_some_and(FlushQueue::has_queued)
    }

    /// Runs the flush queue's timeout now (for tests and shutdown paths).
    pub(crate) fn flush_queue_timeout(&self) {
        if let (Some(Some(fq)), Some(domain)) = (self.fq.get(), self.domain.upgrade()) {
            fq.timeout(&self.iovad, &domain, &self.quarantine, true);
        }
    }
}

/// Frees a range this layer allocated from `iovad` (into `cpu`'s cache, or
/// the current CPU's). The allocator refusing it would be a bug of this
/// layer's bookkeeping: it is reported, and the range stays allocated.
#[inline(always)]
pub(crate) fn free_iova_on(iovad: &IovaDomain<DmaCpus>, cpu: Option<usize>, pfn: u64, pages: u64) {
    let r = match cpu {
        Some(cpu) => iovad.free_fast_on(cpu, pfn, pages),
        None => iovad.free_fast(pfn, pages),
    };
    if let Err(e) = r {
        free_refused(pfn, pages, e);
    }
}

#[cold]
#[inline(never)]
fn free_refused(pfn: u64, pages: u64, e: iommu_iova::IovaError) {
    debug_assert!(false, "IOVA free of {pfn:#x}+{pages} refused: {e}");
    tracing::error!(pfn, pages, "IOVA free refused: {e}");
}

/// Sweeps `[iova, iova + len)` into `gather` (which may already hold an
/// unmap's runs) and syncs it: whether the range is now both invalidated
/// and free of leaves, so that its IOVA may be given back.
pub(crate) fn sweep_clean(domain: &Domain, iova: u64, len: u64, mut gather: IotlbGather) -> bool {
    sweep(domain, iova, len, &mut gather);
    let synced = domain.iotlb_sync(&gather).is_ok();
    let last = iommu_core::Iova::new(iova + (len - 1));
    synced
        && domain
            .first_mapping(iommu_core::Iova::new(iova), last)
            .is_none()
}

/// Removes every leaf overlapping `[iova, iova + len)`, holes and all,
/// walking only what is mapped.
fn sweep(domain: &Domain, iova: u64, len: u64, gather: &mut IotlbGather) {
    let Some(last) = iova.checked_add(len.saturating_sub(1)) else {
        return;
    };
    let mut cur = iova;
    while let Some((at, size)) =
        domain.first_mapping(iommu_core::Iova::new(cur), iommu_core::Iova::new(last))
    {
        domain.unmap_fast(at, size, gather);
        match at.raw().checked_add(size) {
            Some(next) if next > cur && next <= last => cur = next,
            _ => break,
        }
    }
}

/// Whether the driver of `dev` allows deferred invalidation.
pub(crate) fn deferred_flush_capable(dev: &Device) -> bool {
    dev.iommu_ops()
        .is_some_and(|ops| ops.capable(Capability::DeferredFlush))
}
