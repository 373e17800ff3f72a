//! What the core adds to a map+unmap pair: `cargo bench -p iommu-core`.
//!
//! One 4 KiB (and one 64 KiB, one 2 MiB) `Domain::map` + `Domain::unmap` on a paging
//! domain of `testing::TableIommu` (the driver hands the core an
//! `IoPageTable` and has no IOTLB), beside the same format's own `map_pages` +
//! `unmap_leaves` + `release_gathered` on a table of its own. The
//! difference is the core's cost: checks, page-size selection, the driver
//! calls, spans, the gather.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_core::testing::TableIommu;
use iommu_core::{
    Bus, DeviceBuilder, DomainType, Iommu, IommuConfig, IotlbGather, Iova, PhysAddr, Prot,
};
use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::{Format, HeapMemory, IoPageTable};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const PA: u64 = 0x1_0000_0000;

fn format<F: Format + Clone + 'static>(c: &mut Criterion, fmt: F) {
    let name = fmt.name();
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    bus.add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([1]).pci(true))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(TableIommu(fmt.clone())))
        .unwrap();
    let domain = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
    let table = IoPageTable::new(fmt, HeapMemory::new()).unwrap();
    for (what, iova, size) in [
        ("4k", 1u64 << 30, 0x1000u64),
        ("64k", 3 << 30, 0x1_0000),
        ("2m", 2 << 30, 0x20_0000),
    ] {
        let (iova, pa) = (Iova::new(iova), PhysAddr::new(PA));
        c.bench_function(&format!("core/{name}/{what}/Domain map+unmap"), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    domain.map(iova, pa, size, Prot::RW).unwrap();
                    assert_eq!(domain.unmap(black_box(iova), size), Ok(size));
                }
                t0.elapsed()
            })
        });
        // The table's own calls with the page size the core would pick:
        // the size itself where the format has it, else 4 KiB pages.
        let pgsize = if table.pgsize_bitmap() & size != 0 {
            size
        } else {
            0x1000
        };
        let count = (size / pgsize) as usize;
        c.bench_function(&format!("core/{name}/{what}/table map+unmap"), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    table.map_pages(iova, pa, pgsize, count, Prot::RW).unwrap();
                    let mut g = IotlbGather::new();
                    let u = table.unmap_leaves(black_box(iova), pgsize, count, &mut g);
                    assert_eq!(u.size, size);
                    table.release_gathered(&g);
                }
                t0.elapsed()
            })
        });
    }
}

fn core(c: &mut Criterion) {
    format(c, AmdV1::new(4).unwrap());
    format(c, VtdSl::new(4, 48).unwrap());
    let s1 = LpaeConfig {
        stage: Stage::S1,
        granule: Granule::G4K,
        ias: 48,
        oas: 48,
    };
    format(c, Lpae::new(s1).unwrap());
}

criterion_group!(benches, core);
criterion_main!(benches);
