//! The device's hot paths at 1 thousand, 64 thousand and 1 million
//! mappings in the domain: MAP+UNMAP of 4 KiB through the transport-free
//! path (request bytes in, tail out), a lookup in the device (what an IOTLB
//! miss costs), and a translation on an IOTLB hit through vm-memory's
//! `Iommu` interface.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use iommu_virtio::spec::map;
use iommu_virtio::{Access, Device, DeviceConfig, Request, VirtioIommu};
use std::sync::Arc;
use vm_memory::iommu::{Iommu, Iotlb};
use vm_memory::{GuestAddress, Permissions};

const EP: u32 = 1;
const SIZES: [u64; 3] = [1_000, 64_000, 1_000_000];

/// A device whose domain 1 holds `n` 4 KiB mappings, every other page.
fn device(n: u64) -> Device {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let attach = Request::Attach {
        domain: 1,
        endpoint: EP,
        flags: 0,
        reserved: 0,
    };
    assert_eq!(d.execute(&attach), iommu_virtio::spec::Status::Ok);
    for i in 0..n {
        let r = Request::Map {
            domain: 1,
            virt_start: i * 0x2000,
            virt_end: i * 0x2000 + 0xfff,
            phys_start: i * 0x1000,
            flags: map::READ | map::WRITE,
        };
        assert_eq!(d.execute(&r), iommu_virtio::spec::Status::Ok);
    }
    d
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio/map_unmap_4k");
    for n in SIZES {
        let mut d = device(n);
        // A free page in the middle of the domain.
        let iova = (n / 2) * 0x2000 + 0x1000;
        let map = Request::Map {
            domain: 1,
            virt_start: iova,
            virt_end: iova + 0xfff,
            phys_start: 0x4000_0000,
            flags: map::READ | map::WRITE,
        }
        .encode();
        let unmap = Request::Unmap {
            domain: 1,
            virt_start: iova,
            virt_end: iova + 0xfff,
            reserved: 0,
        }
        .encode();
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
        let d = device(n);
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
        let iommu: Arc<VirtioIommu> = VirtioIommu::new(device(n));
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

criterion_group!(benches, map_unmap, lookup, iotlb_hit, iotlb_floor);
criterion_main!(benches);
