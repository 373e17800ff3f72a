//! The SMMUv3 driver on the emulated SMMUv3, beside the soft IOMMU:
//! `cargo bench -p iommu-smmuv3 --features emu`.
//!
//! - map+unmap of one 4 KiB page through the core and the driver, strict:
//!   the unmap queues a TLBI_NH_VA and a CMD_SYNC that the emulated SMMU
//!   runs from its command queue in memory before the unmap returns;
//! - the DMA layer's hot path (`map_single`+`unmap_single`, strict) on it;
//! - the emulator's translation of one access on a TLB hit and on a miss
//!   (STE cached, a four-level walk through simulated memory).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_core::{Bus, DeviceBuilder, Domain, Iommu, IommuConfig, IommuOps, Iova, PhysAddr, Prot};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_smmuv3::emu::EmuPlatform;
use iommu_smmuv3_emu::{Access, Features};
use iommu_soft::SoftIommu;
use std::hint::black_box;
use std::sync::Arc;

/// A bus with one device (stream 8) behind `ops`, strict.
fn setup(ops: Arc<dyn IommuOps>) -> (Iommu, Bus, Arc<iommu_core::Device>) {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([8]).pci(true))
        .unwrap();
    iommu.bus_set_iommu(&bus, ops).unwrap();
    (iommu, bus, dev)
}

fn default_domain(dev: &iommu_core::Device) -> Domain {
    dev.iommu_group().and_then(|g| g.default_domain()).unwrap()
}

fn map_unmap(c: &mut Criterion, name: &str, domain: &Domain) {
    // Warm tables: the walk to the last level exists, as on a busy system.
    domain
        .map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x1000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    c.bench_function(&format!("{name}/map+unmap 4K (strict)"), |b| {
        b.iter(|| {
            domain
                .map(
                    black_box(Iova::new(0x10_1000)),
                    PhysAddr::new(0x80_0000),
                    0x1000,
                    Prot::RW,
                )
                .unwrap();
            black_box(domain.unmap(Iova::new(0x10_1000), 0x1000).unwrap());
        })
    });
}

fn dma_hot_path(c: &mut Criterion, name: &str, iommu: &Iommu, dev: &Arc<iommu_core::Device>) {
    let dma = DmaDevice::bind(iommu, dev, DmaOptions::default()).unwrap();
    let dir = DmaDirection::Bidirectional;
    c.bench_function(
        &format!("{name}/dma map_single+unmap_single 4K (strict)"),
        |b| {
            b.iter(|| {
                let a = dma
                    .map_single(PhysAddr::new(0x80_0000), 0x1000, dir)
                    .unwrap();
                dma.unmap_single(a, 0x1000, dir).unwrap();
            })
        },
    );
}

fn side_by_side(c: &mut Criterion) {
    let plat = EmuPlatform::default_platform().unwrap();
    let (iommu, _bus, dev) = setup(Arc::new(plat.driver.clone()));
    map_unmap(c, "core+smmuv3", &default_domain(&dev));
    dma_hot_path(c, "core+smmuv3", &iommu, &dev);
    let stats = plat.driver.stats();
    assert_eq!(stats.sync_timeouts + stats.cmdq_errors, 0);

    let (iommu, _bus, dev) = setup(Arc::new(SoftIommu::default()));
    map_unmap(c, "core+soft", &default_domain(&dev));
    dma_hot_path(c, "core+soft", &iommu, &dev);
}

fn translate(c: &mut Criterion) {
    // A TLB of one entry, so alternating between two pages always misses.
    let features = Features {
        tlb_entries: 1,
        ..Features::default()
    };
    let plat = EmuPlatform::new(Default::default(), features, Default::default()).unwrap();
    let (_iommu, _bus, dev) = setup(Arc::new(plat.driver.clone()));
    let domain = default_domain(&dev);
    domain
        .map(
            Iova::new(0x10_0000),
            PhysAddr::new(0x80_0000),
            0x2000,
            Prot::RW,
        )
        .unwrap();
    let hw = &plat.hw;
    hw.translate(8, 0x10_0000, Access::Read).unwrap();
    c.bench_function("smmuv3-emu/translate (TLB hit)", |b| {
        b.iter(|| black_box(hw.translate(8, black_box(0x10_0040), Access::Read).unwrap()))
    });
    let mut flip = 0u64;
    c.bench_function("smmuv3-emu/translate (TLB miss: 4-level walk)", |b| {
        b.iter(|| {
            flip ^= 0x1000;
            black_box(
                hw.translate(8, black_box(0x10_0040 + flip), Access::Read)
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, side_by_side, translate);
criterion_main!(benches);
