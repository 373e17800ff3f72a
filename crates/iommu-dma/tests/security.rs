//! What a device can still reach after unmap: nothing in strict mode, and in
//! lazy mode nothing once the flush queue's size or time bound has passed.
//! The soft IOMMU caches translations in an IOTLB, so a missing
//! invalidation shows up here as a stale translation.

mod common;

use common::world;
use iommu_core::{PhysAddr, SgEntry};
use iommu_dma::{DmaDirection as Dir, DmaOptions};
use iommu_soft::{Access, TranslateError};
use std::time::{Duration, Instant};

const BUF: u64 = 0x7_0000_0000;

#[test]
fn strict_once_unmap_returns_the_device_can_no_longer_translate() {
    let w = world(1, true);
    let dma = w.bind(0);
    let dev = &w.devs[0];
    for i in 0..64u64 {
        let pa = PhysAddr::new(BUF + i * 0x1000);
        let a = dma.map_single(pa, 0x1000, Dir::Bidirectional).unwrap();
        // Warm the IOTLB so a missing invalidation would leave it stale.
        assert_eq!(w.hw.translate(dev, a.into(), Access::Read), Ok(pa));
        dma.unmap_single(a, 0x1000, Dir::Bidirectional).unwrap();
        assert!(matches!(
            w.hw.translate(dev, a.into(), Access::Read),
            Err(TranslateError::Translation { .. })
        ));
    }
    let sg = [SgEntry {
        paddr: PhysAddr::new(BUF),
        len: 0x3000,
    }];
    let m = dma.map_sg(&sg, Dir::ToDevice).unwrap();
    assert!(w.hw.translate(dev, m.iova().into(), Access::Read).is_ok());
    dma.unmap_sg(&m).unwrap();
    assert!(w.hw.translate(dev, m.iova().into(), Access::Read).is_err());
}

#[test]
fn lazy_a_stale_translation_lasts_at_most_a_full_queue_of_later_unmaps() {
    let w = world(1, false);
    let opts = DmaOptions {
        fq_timeout: Duration::from_secs(3600),
        ..DmaOptions::default()
    };
    let dma = w.bind_with(0, opts);
    assert!(dma.is_lazy());
    let dev = &w.devs[0];
    let first = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::Bidirectional)
        .unwrap();
    assert!(w.hw.translate(dev, first.into(), Access::Read).is_ok());
    dma.unmap_single(first, 0x1000, Dir::Bidirectional).unwrap();
    // Deferred on purpose: the IOTLB still holds it, but the IOVA is not reused.
    assert_eq!(
        w.hw.translate(dev, first.into(), Access::Read),
        Ok(PhysAddr::new(BUF))
    );
    // 255 more unmaps on this CPU fill its 256-entry queue...
    for i in 1..256u64 {
        let a = dma
            .map_single(PhysAddr::new(BUF + i * 0x1000), 0x1000, Dir::ToDevice)
            .unwrap();
        assert_ne!(
            a, first,
            "a queued IOVA is never handed out before its flush"
        );
        dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    }
    assert_eq!(dma.domain_stats().fq.queued, 256);
    assert!(
        w.hw.translate(dev, first.into(), Access::Read).is_ok(),
        "still inside the bound"
    );
    // ...and the next one finds it full: one flush-all, the queue drains.
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    let fq = dma.domain_stats().fq;
    assert_eq!((fq.full_flushes, fq.queued), (1, 1));
    assert!(matches!(
        w.hw.translate(dev, first.into(), Access::Read),
        Err(TranslateError::Translation { .. })
    ));
}

#[test]
fn lazy_a_stale_translation_lasts_at_most_the_timeout() {
    let w = world(1, false);
    let timeout = Duration::from_millis(100);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_timeout: timeout,
            ..DmaOptions::default()
        },
    );
    let dev = &w.devs[0];
    let a = dma
        .map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
        .unwrap();
    assert!(w.hw.translate(dev, a.into(), Access::Read).is_ok());
    let unmapped = Instant::now();
    dma.unmap_single(a, 0x1000, Dir::ToDevice).unwrap();
    let stale = w.hw.translate(dev, a.into(), Access::Read).is_ok();
    if unmapped.elapsed() < timeout {
        assert!(stale, "inside the window the translation is deferred");
    }
    // The timer flushes on its own: poll (generously, CI machines stall).
    while w.hw.translate(dev, a.into(), Access::Read).is_ok() {
        assert!(
            unmapped.elapsed() < Duration::from_secs(30),
            "the timer never flushed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        unmapped.elapsed() >= timeout,
        "not flushed before the timeout"
    );
    let fq = dma.domain_stats().fq;
    assert_eq!((fq.timeout_flushes, fq.queued), (1, 0));
}

#[test]
fn lazy_iovas_waiting_for_a_flush_are_reclaimed_when_the_space_runs_out() {
    let w = world(1, false);
    let dma = w.bind_with(
        0,
        DmaOptions {
            fq_timeout: Duration::from_secs(3600),
            ..DmaOptions::default()
        },
    );
    dma.set_dma_mask(0x7_ffff).unwrap(); // 127 usable pages
    let map_all = || -> Vec<_> {
        (0..127)
            .map(|_| {
                dma.map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
                    .unwrap()
            })
            .collect()
    };
    let first = map_all();
    assert!(
        dma.map_single(PhysAddr::new(BUF), 0x1000, Dir::ToDevice)
            .is_err(),
        "full"
    );
    for a in &first {
        dma.unmap_single(*a, 0x1000, Dir::ToDevice).unwrap();
    }
    assert_eq!(dma.domain_stats().fq.queued, 127);
    // Every page is queued: the next map flushes the queue and proceeds.
    let second = map_all();
    assert_eq!(second.len(), 127);
    assert_eq!(dma.domain_stats().fq.queued, 0);
    for a in &second {
        dma.unmap_single(*a, 0x1000, Dir::ToDevice).unwrap();
    }
    dma.flush_queue_now();
    assert_eq!(dma.domain_stats().fq.queued, 0);
}
