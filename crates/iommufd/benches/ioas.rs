//! `IOMMU_IOAS_MAP` + `IOMMU_IOAS_UNMAP` of 4 KiB and of 2 MiB with a
//! paging HWPT attached (the core's mock driver): through the ioctl entry
//! (the structures read from and written to a program's memory), through
//! the crate's API without the ioctl layer, and, beside them, the core's
//! own `Domain::map` + `unmap` of the same size on the same driver.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use iommu_core::testing::MockIommu;
use iommu_core::{Bus, DeviceBuilder, Iommu, Iova, PhysAddr, Prot};
use iommufd::ctx::{Ictx, UserMemory};
use iommufd::testing::Space;
use iommufd::uapi::{ioas_map, Cmd, IoasMap, IoasUnmap};
use std::sync::Arc;
use zerocopy::IntoBytes;

const MAP_AT: u64 = 0x1000;
const UNMAP_AT: u64 = 0x1100;

fn setup() -> (Ictx, u32, iommu_core::Domain, Bus) {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let d = bus
        .add_device(DeviceBuilder::new("vf").stream_ids([1]))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(MockIommu::new()))
        .unwrap();
    let ctx = Ictx::new();
    let dev = ctx.bind(&d).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let h = ctx.attach(dev, ioas).unwrap();
    let domain = ctx.hwpt(h).unwrap().domain.clone();
    (ctx, ioas, domain, bus)
}

fn bench(c: &mut Criterion) {
    for (name, size) in [("4k", 0x1000u64), ("2m", 0x20_0000)] {
        let (ctx, ioas, domain, _bus) = setup();
        let iova = 0x4000_0000u64;
        let map = IoasMap {
            size: 40,
            flags: ioas_map::FIXED_IOVA | ioas_map::READABLE | ioas_map::WRITEABLE,
            ioas_id: ioas,
            reserved: 0,
            user_va: 0x8000_0000,
            length: size,
            iova,
        };
        let unmap = IoasUnmap {
            size: 24,
            ioas_id: ioas,
            iova,
            length: size,
        };
        let mut g = c.benchmark_group(format!("iommufd/ioas_map_unmap_{name}"));
        let mem = Space::new(0x1000, 0x1000);
        g.bench_function("ioctl", |b| {
            b.iter(|| {
                mem.write(MAP_AT, map.as_bytes()).unwrap();
                mem.write(UNMAP_AT, unmap.as_bytes()).unwrap();
                ctx.ioctl(Cmd::IoasMap.ioctl(), black_box(MAP_AT), &mem)
                    .unwrap();
                ctx.ioctl(Cmd::IoasUnmap.ioctl(), black_box(UNMAP_AT), &mem)
                    .unwrap();
            })
        });
        g.bench_function("api", |b| {
            b.iter(|| {
                ctx.ioas_map(black_box(&map)).unwrap();
                ctx.ioas_unmap(ioas, black_box(iova), size).unwrap();
            })
        });
        g.bench_function("core", |b| {
            b.iter(|| {
                domain
                    .map(
                        Iova::new(black_box(iova)),
                        PhysAddr::new(0x8000_0000),
                        size,
                        Prot::RW,
                    )
                    .unwrap();
                domain.unmap(Iova::new(iova), size).unwrap();
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
