//! Linearizability under threads: many threads allocating and freeing at
//! once never get the same frame, and freed frames come back.

use iommu_iova::{IovaDomain, ThreadCpu};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[test]
fn threads_never_share_a_frame_and_freed_frames_return() {
    const THREADS: usize = 4;
    // A small 32-bit space so the tree, the caches, the depot and the
    // flush-on-exhaustion path all run.
    let iovad = Arc::new(IovaDomain::new(4096, 1, ThreadCpu::new(THREADS)).unwrap());
    iovad.reserve(4096, u64::MAX >> 12).unwrap();
    let live: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (iovad, live) = (iovad.clone(), live.clone());
            std::thread::spawn(move || {
                let mut mine: Vec<(u64, u64)> = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                for _ in 0..if cfg!(miri) { 50 } else { 40_000 } {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if !x.is_multiple_of(3) || mine.is_empty() {
                        let size = [1, 1, 2, 3, 4, 8, 16, 32, 40][(x >> 8) as usize % 9];
                        let Ok(pfn) = iovad.alloc_fast(size, 4095, true) else {
                            continue;
                        };
                        let rounded = if size < 32 {
                            size.next_power_of_two()
                        } else {
                            size
                        };
                        let mut l = live.lock().unwrap();
                        let clash = l
                            .range(..pfn + rounded)
                            .next_back()
                            .filter(|(_, &hi)| hi >= pfn);
                        assert!(clash.is_none(), "{pfn:#x} handed out while live: {clash:?}");
                        l.insert(pfn, pfn + rounded - 1);
                        drop(l);
                        mine.push((pfn, size));
                    } else {
                        let (pfn, size) = mine.swap_remove((x >> 16) as usize % mine.len());
                        live.lock().unwrap().remove(&pfn);
                        iovad.free_fast(pfn, size).unwrap();
                    }
                }
                for (pfn, size) in mine {
                    live.lock().unwrap().remove(&pfn);
                    iovad.free_fast(pfn, size).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    iovad.flush_caches();
    assert_eq!(iovad.ranges().len(), 1, "only the reservation is left");
    // Everything is usable again: the whole space below the reservation.
    let mut n = 0;
    while iovad.alloc(1, 4095, false).is_ok() {
        n += 1;
    }
    assert_eq!(n, 4095);
}

#[test]
fn a_hot_range_is_cached_for_the_slow_path_and_comes_back_when_its_thread_is_gone() {
    // A thread of its own slot keeps its last freed range per size class
    // without a lock; to everyone else it is cached, not free.
    let iovad = Arc::new(IovaDomain::new(4096, 1, ThreadCpu::new(64)).unwrap());
    let limit = iovad.dma_32bit_pfn() - 1;
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let iovad = iovad.clone();
        std::thread::spawn(move || {
            let pfn = iovad.alloc_fast(1, limit, false).unwrap();
            iovad.free_fast(pfn, 1).unwrap();
            tx.send(pfn).unwrap();
            done_rx.recv().unwrap();
        })
    };
    let pfn = rx.recv().unwrap();
    assert!(iovad.find(pfn).is_some(), "still allocated in the tree");
    assert_eq!(iovad.free(pfn), Err(iommu_iova::IovaError::NotAllocated));
    // The worker is alive: its hot range stays with it.
    iovad.flush_caches();
    assert!(iovad.find(pfn).is_some());
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    // Gone: the flush takes its slot for a moment and returns the range.
    iovad.flush_caches();
    assert_eq!(iovad.find(pfn), None);
    assert_eq!(iovad.stats().cached, 0);
}
