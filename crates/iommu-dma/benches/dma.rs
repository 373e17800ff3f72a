//! DMA API benchmarks: `cargo bench -p iommu-dma`. One 4 KiB map+unmap
//! through the soft IOMMU, strict and lazy; and strict over nothing but an
//! AMD v1 table (`iommu_core::testing::TableIommu`), with and without the
//! handle checks, beside the core's own map+unmap on that domain: the DMA
//! layer's own cost. Multi-threaded runs with map and
//! unmap timed separately: `iommu bench dma --threads N`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, PhysAddr};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_soft::SoftIommu;
use std::sync::Arc;
use std::time::Instant;

fn bench_mode(c: &mut Criterion, strict: bool) {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([1]).pci(true))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(SoftIommu::default()))
        .unwrap();
    let dma = DmaDevice::bind(&iommu, &dev, DmaOptions::default()).unwrap();
    let name = if strict { "dma/strict" } else { "dma/lazy" };
    let pa = PhysAddr::new(0x1_0000_0000);
    let dir = DmaDirection::Bidirectional;
    c.bench_function(&format!("{name}/map+unmap 4K"), |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                let a = dma.map_single(pa, 0x1000, dir).unwrap();
                dma.unmap_single(a, 0x1000, dir).unwrap();
            }
            t0.elapsed()
        })
    });
}

fn table_only(c: &mut Criterion) {
    use iommu_core::testing::TableIommu;
    use iommu_core::{Iova, Prot};
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([1]).pci(true))
        .unwrap();
    let fmt = iommu_pgtable::amd::AmdV1::new(4).unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(TableIommu(fmt)))
        .unwrap();
    let pa = PhysAddr::new(0x1_0000_0000);
    let dir = DmaDirection::Bidirectional;
    for check_handles in [true, false] {
        let opts = DmaOptions {
            check_handles,
            ..DmaOptions::default()
        };
        let dma = DmaDevice::bind(&iommu, &dev, opts).unwrap();
        let name = if check_handles {
            "checked"
        } else {
            "unchecked"
        };
        c.bench_function(&format!("dma/table-only/{name}/map+unmap 4K"), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let a = dma.map_single(pa, 0x1000, dir).unwrap();
                    dma.unmap_single(a, 0x1000, dir).unwrap();
                }
                t0.elapsed()
            })
        });
    }
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    let iova = Iova::new(0x1000_0000);
    c.bench_function("dma/table-only/core map+unmap 4K", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                domain.map(iova, pa, 0x1000, Prot::RW).unwrap();
                domain.unmap(iova, 0x1000).unwrap();
            }
            t0.elapsed()
        })
    });
}

fn dma(c: &mut Criterion) {
    bench_mode(c, true);
    bench_mode(c, false);
    table_only(c);
}

criterion_group!(benches, dma);
criterion_main!(benches);
