//! The device's hot paths at 1 thousand, 64 thousand and 1 million
//! mappings in the domain: MAP+UNMAP of 4 KiB through the transport-free
//! path (request bytes in, tail out) and through the request virtqueue
//! (driver side included: chain written, queue served, used entry read), a
//! lookup in the device, a translation on an IOTLB hit through vm-memory's
//! `Iommu` interface, and an 8-byte DMA read through `IommuMemory` on an
//! IOTLB hit and on a miss.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use iommu_virtio::queue::DriverQueue;
use iommu_virtio::testing::{bench_device, bench_map_unmap, BENCH_EP};
use iommu_virtio::{Access, VirtioIommu};
use std::sync::Arc;
use vm_memory::iommu::{Iommu, Iotlb};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};

const EP: u32 = BENCH_EP;
const SIZES: [u64; 3] = [1_000, 64_000, 1_000_000];

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio/map_unmap_4k");
    for n in SIZES {
        let mut d = bench_device(n);
        let (map, unmap) = bench_map_unmap(n);
        let mut tail = [0u8; 4];
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                d.handle(black_box(&map), &mut tail);
                d.handle(black_box(&unmap), &mut tail);
            })
        });
        assert_eq!(tail[0], 0);
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio/device_lookup");
    for n in SIZES {
        let d = bench_device(n);
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(d.lookup(EP, i * 0x2000 + 0x10, Access::Read).unwrap());
            })
        });
    }
    g.finish();
}

fn iotlb_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio/iotlb_hit");
    for n in SIZES {
        let iommu: Arc<VirtioIommu> = VirtioIommu::new(bench_device(n));
        let ep = iommu.endpoint(EP);
        let iova = GuestAddress((n / 2) * 0x2000 + 0x40);
        // Warm the IOTLB.
        assert!(ep.translate(iova, 64, Permissions::Read).is_ok());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut it = ep
                    .translate(black_box(iova), 64, Permissions::Read)
                    .unwrap();
                black_box(it.next());
            })
        });
    }
    g.finish();
    // The interface beside vm-memory's: one mapping's address, the IOTLB
    // read lock held, without the iterator.
    let mut g = c.benchmark_group("virtio/iotlb_hit_contiguous");
    for n in SIZES {
        let iommu: Arc<VirtioIommu> = VirtioIommu::new(bench_device(n));
        let ep = iommu.endpoint(EP);
        let iova = GuestAddress((n / 2) * 0x2000 + 0x40);
        assert!(ep.translate_contiguous(iova, 64, Permissions::Read).is_ok());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let t = ep
                    .translate_contiguous(black_box(iova), 64, Permissions::Read)
                    .unwrap();
                black_box(t.phys());
            })
        });
    }
    g.finish();
}

/// What vm-memory's own IOTLB lookup costs for a one-entry IOTLB without
/// a lock: the floor of any `Iommu::translate` that returns its iterator.
fn iotlb_floor(c: &mut Criterion) {
    let mut t = Iotlb::new();
    t.set_mapping(
        GuestAddress(0x1000),
        GuestAddress(0x5000),
        0x1000,
        Permissions::ReadWrite,
    )
    .unwrap();
    c.bench_function("virtio/vm_memory_iotlb_lookup", |b| {
        b.iter(|| {
            let mut it =
                Iotlb::lookup(&t, black_box(GuestAddress(0x1040)), 64, Permissions::Read).unwrap();
            black_box(it.next());
        })
    });
}

fn guest_memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// MAP+UNMAP of 4 KiB through the request virtqueue, two ways: the device
/// serving 16 pairs made available together (only `process_requests` is
/// timed), and one request per round trip with the driver side included
/// (chain written, queue served, used entry read).
fn map_unmap_virtqueue(c: &mut Criterion) {
    const PAIRS: u64 = 16;
    let mut served = c.benchmark_group("virtio/map_unmap_4k_virtqueue");
    let mut round = Vec::new();
    for n in SIZES {
        let iommu = VirtioIommu::new(bench_device(n));
        let mem = guest_memory();
        let mut driver = DriverQueue::new(&mem, 64, 0x1000).unwrap();
        let mut queue = driver.device_queue().unwrap();
        let (map, unmap) = bench_map_unmap(n);
        let (map_at, unmap_at) = (GuestAddress(0x10_0000), GuestAddress(0x10_0100));
        mem.write_slice(&map, map_at).unwrap();
        mem.write_slice(&unmap, unmap_at).unwrap();
        let map_buf = [(map_at.0, map.len() as u32)];
        let unmap_buf = [(unmap_at.0, unmap.len() as u32)];
        // A tail per chain, so that each can be checked.
        let tail = |i: u64| [(0x20_0000 + 8 * i, 4u32)];
        served.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let pairs = left.min(PAIRS);
                    for i in 0..pairs {
                        driver.add(&mem, &map_buf, &tail(2 * i)).unwrap();
                        driver.add(&mem, &unmap_buf, &tail(2 * i + 1)).unwrap();
                    }
                    let start = std::time::Instant::now();
                    let s = iommu.process_requests(&mut queue, &mem).unwrap();
                    spent += start.elapsed();
                    assert_eq!(u64::from(s.used), 2 * pairs);
                    while driver.pop_used(&mem).unwrap().is_some() {}
                    left -= pairs;
                }
                spent
            })
        });
        for i in 0..2 * PAIRS {
            assert_eq!(mem.read_obj::<u8>(GuestAddress(tail(i)[0].0)).unwrap(), 0);
        }
        round.push((n, iommu, mem, driver, queue, map_buf, unmap_buf));
    }
    served.finish();
    let mut g = c.benchmark_group("virtio/map_unmap_4k_round_trip");
    for (n, iommu, mem, mut driver, mut queue, map_buf, unmap_buf) in round {
        let tail = [(0x20_0000, 4u32)];
        let mut round_trip = |buf: &[(u64, u32)]| {
            driver.add(&mem, buf, &tail).unwrap();
            iommu.process_requests(&mut queue, &mem).unwrap();
            driver.pop_used(&mem).unwrap().unwrap();
        };
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                round_trip(&map_buf);
                round_trip(&unmap_buf);
            })
        });
    }
    g.finish();
}

/// 8-byte DMA reads through `IommuMemory`: on an IOTLB hit, and on a miss
/// (the IOTLB emptied before each read, which `virtio/invalidate_all`
/// measures alone).
fn iommu_memory(c: &mut Criterion) {
    let mut hit = c.benchmark_group("virtio/dma_read_hit");
    for n in SIZES {
        let iommu = VirtioIommu::new(bench_device(n));
        let mem = IommuMemory::new(guest_memory(), iommu.endpoint(EP), true, ());
        let iova = GuestAddress((n / 2) * 0x2000 + 0x40);
        hit.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(mem.read_obj::<u64>(black_box(iova)).unwrap()))
        });
    }
    hit.finish();
    let mut miss = c.benchmark_group("virtio/dma_read_miss");
    for n in SIZES {
        let iommu = VirtioIommu::new(bench_device(n));
        let mem = IommuMemory::new(guest_memory(), iommu.endpoint(EP), true, ());
        let mut i = 0u64;
        miss.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                iommu.with_device(|_| ());
                black_box(
                    mem.read_obj::<u64>(GuestAddress(i * 0x2000 + 0x40))
                        .unwrap(),
                )
            })
        });
    }
    miss.finish();
    let iommu = VirtioIommu::new(bench_device(1_000));
    c.bench_function("virtio/invalidate_all", |b| {
        b.iter(|| iommu.with_device(|_| ()))
    });
}

criterion_group!(
    benches,
    map_unmap,
    map_unmap_virtqueue,
    lookup,
    iotlb_hit,
    iotlb_floor,
    iommu_memory
);
criterion_main!(benches);
