//! Several threads mapping and unmapping at once, singles and lists of
//! random sizes, in strict and lazy mode: no IOVA is ever live twice, and
//! when everything is unmapped the whole space can be allocated again.

mod common;

use common::world;
use iommu_core::{PhysAddr, SgEntry};
use iommu_dma::{DmaAddr, DmaDirection as Dir, DmaOptions, SgMapping};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

enum Live {
    Single(DmaAddr, u64),
    Sg(SgMapping),
}

fn stress(strict: bool) {
    const THREADS: usize = 4;
    const MASK: u64 = (64 << 20) - 1; // 64 MiB: small enough to run out
    let w = world(1, strict);
    let opts = DmaOptions {
        fq_timeout: Duration::from_millis(1),
        ..DmaOptions::default()
    };
    let dma = Arc::new(w.bind_with(0, opts));
    dma.set_dma_mask(MASK).unwrap();
    // IOVA ranges currently live, by first granule -> last byte.
    let live_iovas: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let claim = |live: &Mutex<BTreeMap<u64, u64>>, lo: u64, len: u64| {
        let lo = lo & !0xfff;
        let hi = lo + len - 1;
        let mut l = live.lock().unwrap();
        if let Some((&a, &b)) = l.range(..=hi).next_back() {
            assert!(
                b < lo,
                "IOVA {lo:#x}..{hi:#x} handed out while {a:#x}..{b:#x} is live"
            );
        }
        l.insert(lo, hi);
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dma, live) = (dma.clone(), live_iovas.clone());
            std::thread::spawn(move || {
                let mut mine: Vec<Live> = Vec::new();
                let mut x = 0x2545_f491_4f6c_dd1du64.wrapping_add(t as u64);
                for _ in 0..6_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pa = (x >> 20) & 0xff_ffff_f000 | (x & 0xff8);
                    match x % 5 {
                        0 | 1 => {
                            let size = 1 + (x >> 40) % 0x9000;
                            if let Ok(a) =
                                dma.map_single(PhysAddr::new(pa), size, Dir::Bidirectional)
                            {
                                let len = ((a.raw() & 0xfff) + size + 0xfff) & !0xfff;
                                claim(&live, a.raw(), len);
                                mine.push(Live::Single(a, size));
                            }
                        }
                        2 => {
                            let n = 1 + (x >> 50) as usize % 6;
                            let sg: Vec<SgEntry> = (0..n as u64)
                                .map(|i| SgEntry {
                                    paddr: PhysAddr::new((pa + i * 0x13_7000) & !0x7),
                                    len: 0x200 + ((x >> (i * 3)) % 0x3000),
                                })
                                .collect();
                            if let Ok(m) = dma.map_sg(&sg, Dir::ToDevice) {
                                claim(&live, m.iova().raw(), m.iova_len());
                                mine.push(Live::Sg(m));
                            }
                        }
                        _ if !mine.is_empty() => {
                            let victim = mine.swap_remove((x >> 8) as usize % mine.len());
                            let lo = match &victim {
                                Live::Single(a, _) => a.raw() & !0xfff,
                                Live::Sg(m) => m.iova().raw(),
                            };
                            live.lock().unwrap().remove(&lo);
                            match victim {
                                Live::Single(a, size) => {
                                    dma.unmap_single(a, size, Dir::Bidirectional).unwrap()
                                }
                                Live::Sg(m) => dma.unmap_sg(&m).unwrap(),
                            }
                        }
                        _ => {}
                    }
                }
                for v in mine {
                    match v {
                        Live::Single(a, size) => {
                            live.lock().unwrap().remove(&(a.raw() & !0xfff));
                            dma.unmap_single(a, size, Dir::Bidirectional).unwrap();
                        }
                        Live::Sg(m) => {
                            live.lock().unwrap().remove(&m.iova().raw());
                            dma.unmap_sg(&m).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(dma.live_mappings(), 0);
    dma.flush_queue_now();
    // Every granule under the mask except page 0 and the MSI window's
    // (above this mask) is allocatable again, one page at a time.
    let mut n = 0u64;
    while let Ok(a) = dma.map_single(PhysAddr::new(0x1000), 0x1000, Dir::ToDevice) {
        assert!(a.raw() <= MASK);
        n += 1;
    }
    assert_eq!(
        n,
        (MASK + 1) / 0x1000 - 1,
        "every freed IOVA is usable again"
    );
}

#[test]
fn strict_threads_never_share_an_iova_and_all_come_back() {
    stress(true);
}

#[test]
fn lazy_threads_never_share_an_iova_and_all_come_back() {
    stress(false);
}
