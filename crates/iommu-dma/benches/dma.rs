//! DMA API benchmarks: `cargo bench -p iommu-dma`. One 4 KiB map+unmap
//! through the soft IOMMU, strict and lazy. Multi-threaded runs with map and
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

fn dma(c: &mut Criterion) {
    bench_mode(c, true);
    bench_mode(c, false);
}

criterion_group!(benches, dma);
criterion_main!(benches);
