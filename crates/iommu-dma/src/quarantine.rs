//! IOVAs held back because their invalidation did not complete.
//!
//! An unmap whose IOTLB sync failed has taken the range out of the page
//! tables, but the IOMMU may still translate it from its caches. Were the
//! IOVA handed to the next mapping, the device would reach the old buffer
//! through the new owner's address (what Linux allows after a `CMD_SYNC`
//! timeout, which it only logs). Such a range stays allocated here instead,
//! tagged with the domain's flush ticket ([`Domain::flush_ticket`]), and is
//! freed only once a flush-all that started after it completed
//! ([`Domain::flushed_through`]); a range that still holds leaves (a driver
//! that could not take them out) must also sweep clean first.
//!
//! The DMA layer tries a flush-all when there is a reason to hope: the next
//! strict invalidation that completes, the flush queue's timer, an IOVA
//! allocation that finds no space, and a caller's
//! [`DmaDevice::release_quarantine`](crate::DmaDevice::release_quarantine).
//! A flush-all anyone else completes (the kernel's recovery path, another
//! user of the domain) is noticed at the next mapping.
//!
//! A domain torn down with ranges still held takes them with it; a coherent
//! buffer's memory among them is not given back to its allocator, since
//! the device may still reach it.
//!
//! # Bounds
//! Every entry holds at least one granule of allocated IOVA space, so the
//! list cannot outgrow the IOVA space. Beyond [`MAX_QUARANTINED`] entries
//! new mappings are refused ([`DmaError::Wedged`](crate::DmaError::Wedged))
//! until a flush completes: past that point only unmaps of mappings that
//! already exist add entries, so the list stays within the cap plus the
//! caller's live mappings.

use crate::cookie::free_iova_on;
use crate::DmaCpus;
use crate::PageAllocator;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use iommu_core::sync::{Mutex, MutexGuard};
use iommu_core::{Domain, IotlbGather, PhysAddr};
use iommu_iova::IovaDomain;

/// Ranges held before new mappings are refused.
pub const MAX_QUARANTINED: usize = 4096;

/// Counts describing the quarantine of a DMA domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineStats {
    /// IOVA ranges held now.
    pub ranges: usize,
    /// Granules of IOVA space held now.
    pub pages: u64,
    /// Ranges ever put in quarantine.
    pub held_total: u64,
    /// Ranges freed from it after a flush completed.
    pub released_total: u64,
}

/// One range waiting for a flush.
pub(crate) struct Held {
    pub(crate) pfn: u64,
    pub(crate) pages: u64,
    /// A flush-all with this ticket or later covers it.
    pub(crate) ticket: u64,
    /// Table pages its unmap detached (a lazy unmap's gather), synced
    /// once the flush completed so the page table can reuse them.
    pub(crate) gather: Option<IotlbGather>,
    /// The CPU whose IOVA cache takes it back (a flush queue's ring).
    pub(crate) cpu: Option<usize>,
    /// A coherent buffer's memory, given back with the IOVA: the device
    /// may reach it until then.
    pub(crate) memory: Option<Memory>,
}

/// Memory to give back to its allocator: `(allocator, address, bytes)`.
pub(crate) type Memory = (Arc<dyn PageAllocator>, PhysAddr, u64);

/// Gives `memory` back.
pub(crate) fn free_memory(memory: Option<Memory>) {
    if let Some((alloc, pa, len)) = memory {
        alloc.free_pages(pa, len);
    }
}

pub(crate) struct Quarantine {
    held: Mutex<Vec<Held>>,
    /// `held.len()`, read without the lock on every strict unmap.
    len: AtomicUsize,
    /// The lowest ticket held (`u64::MAX` when empty): a flush through it
    /// frees something, whoever issued it.
    oldest: AtomicU64,
    held_total: AtomicU64,
    released_total: AtomicU64,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            held: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            oldest: AtomicU64::new(u64::MAX),
            held_total: AtomicU64::new(0),
            released_total: AtomicU64::new(0),
        }
    }
}

impl Quarantine {
    fn lock(&self) -> MutexGuard<'_, Vec<Held>> {
        self.held.lock()
    }

    /// Holds `[pfn, pfn + pages)` until a flush-all that starts after this
    /// call completes.
    pub(crate) fn hold(&self, domain: &Domain, pfn: u64, pages: u64, memory: Option<Memory>) {
        let ticket = domain.flush_ticket();
        self.hold_entries([Held {
            pfn,
            pages,
            ticket,
            gather: None,
            cpu: None,
            memory,
        }]);
    }

    /// Holds entries whose tickets are already set (a flush queue's, when
    /// its flush failed).
    pub(crate) fn hold_entries(&self, entries: impl IntoIterator<Item = Held>) {
        let mut held = self.lock();
        let before = held.len();
        held.extend(entries);
        let added = held.len() - before;
        if let Some(t) = held[before..].iter().map(|h| h.ticket).min() {
            self.oldest.fetch_min(t, Ordering::AcqRel);
        }
        self.len.store(held.len(), Ordering::Release);
        drop(held);
        if added != 0 {
            self.held_total.fetch_add(added as u64, Ordering::Relaxed);
            // The driver says once that its hardware stopped answering;
            // each range held is detail.
            tracing::debug!(
                ranges = added,
                "IOVA held back: its invalidation did not complete"
            );
        }
    }

    /// Whether nothing is held (one load).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Frees what a flush-all issued by anyone since has covered; two
    /// loads when nothing is held or nothing is covered yet.
    #[inline]
    pub(crate) fn release_flushed(&self, iovad: &IovaDomain<DmaCpus>, domain: &Domain) {
        if !self.is_empty() && domain.flushed_through(self.oldest.load(Ordering::Acquire)) {
            self.release(iovad, domain);
        }
    }

    /// Whether new mappings must wait for a flush.
    pub(crate) fn is_full(&self) -> bool {
        self.len.load(Ordering::Acquire) >= MAX_QUARANTINED
    }

    /// Frees every held range a completed flush covers and whose page
    /// tables are clean; returns how many.
    pub(crate) fn release(&self, iovad: &IovaDomain<DmaCpus>, domain: &Domain) -> usize {
        if self.is_empty() {
            return 0;
        }
        let shift = iovad.shift();
        let mut held = self.lock();
        let mut freed = 0usize;
        let mut kept = Vec::with_capacity(held.len());
        for mut h in held.drain(..) {
            if !domain.flushed_through(h.ticket) {
                kept.push(h);
                continue;
            }
            if let Some(g) = h.gather.take() {
                // The flush covered its pages; this lets the table reuse
                // them (a failure keeps them parked in the driver).
                if let Err(e) = domain.iotlb_sync(&g) {
                    tracing::debug!(errno = e.name(), "table pages stay parked");
                }
            }
            // Leaves a driver could not take out are tried again; the range
            // waits for the invalidation that sweep needs if it fails.
            let (first, len) = (h.pfn << shift, h.pages << shift);
            if !crate::cookie::sweep_clean(domain, first, len, IotlbGather::new()) {
                h.ticket = domain.flush_ticket();
                kept.push(h);
                continue;
            }
            free_iova_on(iovad, h.cpu, h.pfn, h.pages);
            free_memory(h.memory.take());
            freed += 1;
        }
        *held = kept;
        let oldest = held.iter().map(|h| h.ticket).min().unwrap_or(u64::MAX);
        self.oldest.store(oldest, Ordering::Release);
        self.len.store(held.len(), Ordering::Release);
        drop(held);
        if freed != 0 {
            self.released_total
                .fetch_add(freed as u64, Ordering::Relaxed);
            tracing::info!(ranges = freed, "held-back IOVAs released after a flush");
        }
        freed
    }

    pub(crate) fn stats(&self) -> QuarantineStats {
        let held = self.lock();
        QuarantineStats {
            ranges: held.len(),
            pages: held.iter().map(|h| h.pages).sum(),
            held_total: self.held_total.load(Ordering::Relaxed),
            released_total: self.released_total.load(Ordering::Relaxed),
        }
    }
}
