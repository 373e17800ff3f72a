//! Hardware that stops completing invalidations: an unmap is never
//! reported as done, its IOVA is never handed out again until an
//! invalidation covering it completes, and the held-back IOVAs drain once
//! the hardware is back. On the soft IOMMU, or with
//! `IOMMU_TEST_DRIVER=smmuv3` on the SMMUv3 driver whose emulated SMMU has
//! stopped consuming commands.

mod common;

use common::world;
use iommu_core::{Errno, Iova, PhysAddr};
use iommu_dma::quarantine::MAX_QUARANTINED;
use iommu_dma::{DmaDirection as Dir, DmaError, DmaOptions, PageAllocator, PhysPool};
use iommu_soft::Access;
use std::sync::Arc;
use std::time::Duration;

const OLD: u64 = 0x7_0000_0000;
const NEW: u64 = 0x7_1000_0000;

fn pages(addr: u64, len: u64) -> std::ops::Range<u64> {
    (addr >> 12)..((addr + len - 1) >> 12) + 1
}

/// Maps the page at `OLD` and has the device use it, so the IOTLB holds
/// the translation.
fn map_old_and_warm(w: &common::World, dma: &iommu_dma::DmaDevice) -> iommu_dma::DmaAddr {
    let old = dma
        .map_single(PhysAddr::new(OLD), 0x1000, Dir::Bidirectional)
        .unwrap();
    assert_eq!(
        w.hw.translate(&w.devs[0], old.into(), Access::Read),
        Ok(PhysAddr::new(OLD))
    );
    old
}

#[test]
fn a_strict_unmap_whose_invalidation_fails_is_not_reported_as_done() {
    let w = world(1, true);
    let dma = w.bind(0);
    let old = map_old_and_warm(&w, &dma);
    w.hw.set_wedged(true);
    assert_eq!(
        dma.unmap_single(old, 0x1000, Dir::Bidirectional),
        Err(DmaError::NotInvalidated(Errno::ETIMEDOUT))
    );
    assert!(dma.invalidation_pending());
    let q = dma.domain_stats().quarantine;
    assert_eq!((q.ranges, q.pages, q.held_total), (1, 1, 1));
    // The mapping is gone from the DMA layer's record: unmapping it again
    // is the caller's mistake.
    assert_eq!(
        dma.unmap_single(old, 0x1000, Dir::Bidirectional),
        Err(DmaError::NotMapped)
    );
}

#[test]
fn an_iova_whose_invalidation_failed_is_never_handed_out_again_until_a_flush_completes() {
    let w = world(1, true);
    let dma = w.bind(0);
    let dev = &w.devs[0];
    let old = map_old_and_warm(&w, &dma);
    w.hw.set_wedged(true);
    dma.unmap_single(old, 0x1000, Dir::Bidirectional)
        .unwrap_err();
    // Remapping elsewhere: the freed-and-reused IOVA of Linux would carry
    // the stale translation to the new buffer's owner; here every new
    // mapping lands elsewhere, and reaches its own page.
    let mut fresh = Vec::new();
    for i in 0..64u64 {
        let pa = PhysAddr::new(NEW + i * 0x1000);
        let a = dma.map_single(pa, 0x1000, Dir::Bidirectional).unwrap();
        assert_ne!(a.raw() >> 12, old.raw() >> 12, "the held-back IOVA reused");
        assert_eq!(w.hw.translate(dev, a.into(), Access::Read), Ok(pa));
        fresh.push((a, pa));
    }
    // The old IOVA reaches none of the new pages (at most the old one,
    // which the caller was told about).
    let through_old = w.hw.translate(dev, old.into(), Access::Read).ok();
    assert!(
        through_old.is_none() || through_old == Some(PhysAddr::new(OLD)),
        "{through_old:?}"
    );
    // An explicit retry while still wedged fails and frees nothing.
    assert!(matches!(
        dma.release_quarantine(),
        Err(DmaError::NotInvalidated(_))
    ));
    assert_eq!(dma.domain_stats().quarantine.ranges, 1);

    // Back: the next strict unmap that completes flushes and drains.
    w.hw.set_wedged(false);
    let (a, _) = fresh.pop().unwrap();
    dma.unmap_single(a, 0x1000, Dir::Bidirectional).unwrap();
    let q = dma.domain_stats().quarantine;
    assert_eq!((q.ranges, q.pages, q.released_total), (0, 0, 1));
    assert!(!dma.invalidation_pending());
    assert!(w.hw.translate(dev, old.into(), Access::Read).is_err());
    for (a, _) in fresh {
        dma.unmap_single(a, 0x1000, Dir::Bidirectional).unwrap();
    }
}

#[test]
fn unmap_sg_and_free_coherent_hold_back_what_they_could_not_invalidate() {
    let w = world(1, true);
    let pool = Arc::new(PhysPool::new(PhysAddr::new(0x4000_0000), 0x10_0000));
    let dma = w.bind_with(
        0,
        DmaOptions {
            memory: Some(pool.clone() as Arc<dyn PageAllocator>),
            ..DmaOptions::default()
        },
    );
    let dev = &w.devs[0];
    let sg = [iommu_core::SgEntry {
        paddr: PhysAddr::new(OLD),
        len: 0x3000,
    }];
    let m = dma.map_sg(&sg, Dir::ToDevice).unwrap();
    let buf = dma.alloc_coherent(0x2000, Default::default()).unwrap();
    assert!(w.hw.translate(dev, buf.dma.into(), Access::Write).is_ok());
    w.hw.set_wedged(true);
    assert!(matches!(dma.unmap_sg(&m), Err(DmaError::NotInvalidated(_))));
    assert!(matches!(
        dma.free_coherent(&buf),
        Err(DmaError::NotInvalidated(_))
    ));
    // The device may still reach the coherent buffer: its memory stays
    // out of the allocator with its IOVA.
    assert_eq!(pool.pages_in_use(), 2);
    let q = dma.domain_stats().quarantine;
    assert_eq!((q.ranges, q.pages), (2, 5));
    let again = dma.alloc_coherent(0x2000, Default::default()).unwrap();
    assert_ne!(
        again.paddr, buf.paddr,
        "memory the device may reach was reused"
    );
    for p in pages(again.dma.raw(), 0x2000) {
        assert!(!pages(buf.dma.raw(), 0x2000).contains(&p));
        assert!(!pages(m.iova().raw(), m.iova_len()).contains(&p));
    }
    w.hw.set_wedged(false);
    assert_eq!(dma.release_quarantine(), Ok(2));
    assert_eq!(pool.pages_in_use(), 2, "only the live buffer's pages");
    dma.free_coherent(&again).unwrap();
    assert_eq!(pool.pages_in_use(), 0);
}

#[test]
fn a_lazy_unmap_on_wedged_hardware_never_frees_its_iova() {
    let w = world(1, false);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_size: 4,
            fq_timeout: Duration::from_secs(3600),
            ..DmaOptions::default()
        },
    );
    assert!(dma.is_lazy());
    let dev = &w.devs[0];
    w.hw.set_wedged(true);
    let mut unmapped = Vec::new();
    for i in 0..32u64 {
        let pa = PhysAddr::new(OLD + i * 0x1000);
        let a = dma.map_single(pa, 0x1000, Dir::Bidirectional).unwrap();
        assert!(
            !unmapped.contains(&(a.raw() >> 12)),
            "an IOVA waiting for a flush was reused"
        );
        assert_eq!(w.hw.translate(dev, a.into(), Access::Read), Ok(pa));
        // Lazy unmaps succeed: their invalidation was deferred on purpose.
        dma.unmap_single(a, 0x1000, Dir::Bidirectional).unwrap();
        unmapped.push(a.raw() >> 12);
    }
    // Full queues whose flush failed handed their IOVAs to the quarantine
    // instead of growing or freeing them.
    dma.flush_queue_now();
    let s = dma.domain_stats();
    assert!(s.fq.failed_flushes > 0, "{s:?}");
    assert!(s.quarantine.ranges > 0, "{s:?}");
    assert_eq!(s.fq.queued as u64 + s.quarantine.pages, 32, "{s:?}");

    w.hw.set_wedged(false);
    dma.flush_queue_now();
    let s = dma.domain_stats();
    assert_eq!((s.fq.queued, s.quarantine.ranges), (0, 0), "{s:?}");
    for p in &unmapped {
        assert!(w
            .hw
            .translate(dev, Iova::new(p << 12), Access::Read)
            .is_err());
    }
}

#[test]
fn new_mappings_are_refused_once_too_many_iovas_wait_for_a_flush() {
    let w = world(1, true);
    let dma = w.bind_unchecked(0);
    let live: Vec<_> = (0..MAX_QUARANTINED as u64 + 8)
        .map(|i| {
            dma.map_single(PhysAddr::new(OLD + i * 0x1000), 0x1000, Dir::ToDevice)
                .unwrap()
        })
        .collect();
    w.hw.set_wedged(true);
    for a in &live[..MAX_QUARANTINED] {
        assert!(matches!(
            dma.unmap_single(*a, 0x1000, Dir::ToDevice),
            Err(DmaError::NotInvalidated(_))
        ));
    }
    assert_eq!(
        dma.map_single(PhysAddr::new(NEW), 0x1000, Dir::ToDevice),
        Err(DmaError::Wedged)
    );
    // Unmaps of live mappings still go on (into the quarantine).
    for a in &live[MAX_QUARANTINED..] {
        dma.unmap_single(*a, 0x1000, Dir::ToDevice).unwrap_err();
    }
    assert_eq!(dma.domain_stats().quarantine.ranges, MAX_QUARANTINED + 8);
    // Back: the refused map's own retry drains the quarantine.
    w.hw.set_wedged(false);
    let a = dma
        .map_single(PhysAddr::new(NEW), 0x1000, Dir::ToDevice)
        .unwrap();
    assert_eq!(dma.domain_stats().quarantine.ranges, 0);
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
}

#[test]
fn a_wedged_unmap_without_handle_checks_still_holds_its_iova() {
    let w = world(1, true);
    let dma = w.bind_unchecked(0);
    let a = dma
        .map_single(PhysAddr::new(OLD), 0x1000, Dir::FromDevice)
        .unwrap();
    w.hw.set_wedged(true);
    assert!(matches!(
        dma.unmap_single(a, 0x1000, Dir::FromDevice),
        Err(DmaError::NotInvalidated(_))
    ));
    let b = dma
        .map_single(PhysAddr::new(NEW), 0x1000, Dir::FromDevice)
        .unwrap();
    assert_ne!(a.raw() >> 12, b.raw() >> 12);
    w.hw.set_wedged(false);
    assert_eq!(dma.release_quarantine(), Ok(1));
    dma.unmap_single(b, 0x1000, Dir::FromDevice).unwrap();
}

#[test]
fn a_flush_anyone_completes_releases_the_quarantine_at_the_next_mapping() {
    let w = world(1, true);
    let dma = w.bind(0);
    let a = dma
        .map_single(PhysAddr::new(OLD), 0x1000, Dir::ToDevice)
        .unwrap();
    w.hw.set_wedged(true);
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap_err();
    w.hw.set_wedged(false);
    // The kernel's own recovery path flushes the domain.
    dma.domain().flush_iotlb_all().unwrap();
    assert_eq!(dma.domain_stats().quarantine.ranges, 1, "not looked at yet");
    let b = dma
        .map_single(PhysAddr::new(NEW), 0x1000, Dir::ToDevice)
        .unwrap();
    let q = dma.domain_stats().quarantine;
    assert_eq!((q.ranges, q.released_total), (0, 1));
    dma.unmap_single(b, 0x1000, Dir::ToDevice).unwrap();
}
