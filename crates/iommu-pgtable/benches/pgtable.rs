//! Page-table benchmarks.
#![allow(missing_docs)]
use criterion::{criterion_group, criterion_main, Criterion};
use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};
use std::hint::black_box;

fn lpae(c: &mut Criterion) {
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), HeapMemory::new()).unwrap();
    pt.map_pages(
        Iova::new(0x10_0000),
        PhysAddr::new(0x1000),
        0x1000,
        1,
        Prot::RW,
    )
    .unwrap();
    c.bench_function("lpae-s1-4k/map+unmap 4K", |b| {
        b.iter(|| {
            pt.map_pages(
                black_box(Iova::new(0x10_1000)),
                PhysAddr::new(0x8000_0000),
                0x1000,
                1,
                Prot::RW,
            )
            .unwrap();
            let mut g = IotlbGather::new();
            black_box(pt.unmap_pages(Iova::new(0x10_1000), 0x1000, 1, &mut g));
        })
    });
    c.bench_function("lpae-s1-4k/iova_to_phys", |b| {
        b.iter(|| black_box(pt.iova_to_phys(black_box(Iova::new(0x10_0123)))))
    });
}
criterion_group!(benches, lpae);
criterion_main!(benches);
