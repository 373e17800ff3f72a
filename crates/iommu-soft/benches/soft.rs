//! Core + reference driver: map+unmap of one 4 KiB page, and add+remove of a device.
//!
//! `cargo bench -p iommu-soft`
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use iommu_core::{DeviceBuilder, DomainType, Iova, PhysAddr, Prot};
use iommu_platform::DefaultPlatform;
use std::hint::black_box;

fn map_unmap_4k(c: &mut Criterion) {
    let p = DefaultPlatform::build().expect("platform");
    let nvme = p.device("0000:03:00.0").expect("nvme");
    let domain = nvme
        .iommu_group()
        .and_then(|g| g.default_domain())
        .expect("default domain");
    // Warm tables: the walk to the last level exists, as on a busy system.
    domain
        .map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x1000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    c.bench_function("core+soft/map+unmap 4K (DMA domain)", |b| {
        b.iter(|| {
            domain
                .map(
                    black_box(Iova::new(0x10_1000)),
                    PhysAddr::new(0x8000_0000),
                    0x1000,
                    Prot::RW,
                )
                .unwrap();
            black_box(domain.unmap(Iova::new(0x10_1000), 0x1000).unwrap());
        })
    });
    let user = p.iommu.domain_alloc(&p.bus, DomainType::Unmanaged).unwrap();
    user.map(
        Iova::new(0x10_0000),
        PhysAddr::new(0x1000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    c.bench_function("core+soft/iova_to_phys 4K", |b| {
        b.iter(|| black_box(user.iova_to_phys(black_box(Iova::new(0x10_0123)))))
    });
}

fn add_remove_device(c: &mut Criterion) {
    let p = DefaultPlatform::build().expect("platform");
    let mut n = 0u32;
    c.bench_function("core+soft/add+remove device (own group)", |b| {
        b.iter_batched(
            || {
                n += 1;
                DeviceBuilder::new(format!("0000:10:{:02x}.{}", (n >> 3) & 0x1f, n & 7))
                    .stream_ids([0x1000 + n])
            },
            |builder| {
                let d = p.bus.add_device(builder).unwrap();
                p.bus.remove_device(&d).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("core+soft/add+remove device (joins a group)", |b| {
        b.iter_batched(
            || {
                n += 1;
                DeviceBuilder::new(format!("0000:11:{:02x}.{}", (n >> 3) & 0x1f, n & 7))
                    .stream_ids([0x00f8])
            },
            |builder| {
                let d = p.bus.add_device(builder).unwrap();
                p.bus.remove_device(&d).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, map_unmap_4k, add_remove_device);
criterion_main!(benches);
