//! The VT-d driver on the emulated VT-d, side by side with the SMMUv3 pair:
//! `cargo bench -p iommu-vtd --features emu`.
//!
//! - map+unmap of one 4 KiB page through the core and the driver, strict:
//!   the unmap queues a page-selective IOTLB invalidation and an
//!   invalidation wait that the emulated unit runs from its queue in memory
//!   before the unmap returns; the same through the SMMUv3 driver and its
//!   emulated command queue;
//! - the DMA layer's hot path (`map_single`+`unmap_single`, strict) on both;
//! - the same in scalable mode on first-stage tables (PASID-based
//!   invalidation);
//! - map+unmap of one 4 KiB page in a domain shared by devices behind two
//!   units (the unmap invalidates both, each with its own queue and wait),
//!   and in the same domain once only one unit holds it;
//! - the emulated unit's translation of one access on an IOTLB hit and on a
//!   miss (context cached, a four-level walk through guest memory), on
//!   second-level and on first-stage tables.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_core::{Bus, DeviceBuilder, Domain, Iommu, IommuConfig, IommuOps, Iova, PhysAddr, Prot};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_vtd::emu::{EmuLayout, EmuPlatform};
use iommu_vtd::VtdConfig;
use iommu_vtd_emu::{Access, Features};
use std::hint::black_box;
use std::sync::Arc;

/// The device's source id (00:03.0).
const SID: u16 = 0x18;

/// A bus with one device behind `ops`, strict.
fn setup(ops: Arc<dyn IommuOps>) -> (Iommu, Bus, Arc<iommu_core::Device>) {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(
            DeviceBuilder::new("0000:00:03.0")
                .stream_ids([u32::from(SID)])
                .pci(true),
        )
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

fn platform(features: Features) -> EmuPlatform {
    EmuPlatform::new(EmuLayout::default(), features, VtdConfig::default()).unwrap()
}

fn side_by_side(c: &mut Criterion) {
    let plat = platform(Features::default());
    let (iommu, _bus, dev) = setup(Arc::new(plat.driver.clone()));
    let domain = default_domain(&dev);
    // What is measured: an unmap that goes through the queue.
    let before = plat.hw.stats().descriptors;
    domain
        .map(Iova::new(0), PhysAddr::new(0), 0x1000, Prot::RW)
        .unwrap();
    domain.unmap(Iova::new(0), 0x1000).unwrap();
    assert_eq!(plat.hw.stats().descriptors - before, 2, "PSI and wait");
    map_unmap(c, "core+vtd", &domain);
    dma_hot_path(c, "core+vtd", &iommu, &dev);

    // Scalable mode, first-stage tables: PASID-based invalidation.
    let plat = platform(Features::scalable());
    let (iommu, _bus, dev) = setup(Arc::new(plat.driver.clone()));
    let domain = default_domain(&dev);
    map_unmap(c, "core+vtd-sm", &domain);
    dma_hot_path(c, "core+vtd-sm", &iommu, &dev);

    let plat = iommu_smmuv3::emu::EmuPlatform::default_platform().unwrap();
    let (iommu, _bus, dev) = setup(Arc::new(plat.driver.clone()));
    map_unmap(c, "core+smmuv3", &default_domain(&dev));
    dma_hot_path(c, "core+smmuv3", &iommu, &dev);
}

/// Two units (requester ids on bus 0 and bus 1) and one unmanaged domain
/// attached to a device behind each.
fn two_units(c: &mut Criterion) {
    let lookup: iommu_vtd::UnitLookup = Arc::new(|sid: u32| Some(usize::from(sid >> 8 != 0)));
    let plat = EmuPlatform::with_units(
        EmuLayout::default(),
        &[Features::default(), Features::default()],
        VtdConfig::default(),
        Some(lookup),
    )
    .unwrap();
    let (iommu, bus, a) = setup(Arc::new(plat.driver.clone()));
    let b = bus
        .add_device(
            DeviceBuilder::new("0000:01:00.0")
                .stream_ids([0x100])
                .pci(true),
        )
        .unwrap();
    let owner = iommu_core::DmaOwner::new();
    let (ga, gb) = (a.iommu_group().unwrap(), b.iommu_group().unwrap());
    let shared = iommu
        .domain_alloc(&bus, iommu_core::DomainType::Unmanaged)
        .unwrap();
    for g in [&ga, &gb] {
        iommu.group_claim_dma_owner(g, owner).unwrap();
        iommu.attach_group(&shared, g).unwrap();
    }
    let before = plat
        .units
        .iter()
        .map(|u| u.stats().descriptors)
        .sum::<u64>();
    shared
        .map(Iova::new(0), PhysAddr::new(0), 0x1000, Prot::RW)
        .unwrap();
    shared.unmap(Iova::new(0), 0x1000).unwrap();
    let after = plat
        .units
        .iter()
        .map(|u| u.stats().descriptors)
        .sum::<u64>();
    assert_eq!(after - before, 4, "PSI and wait on each unit");
    map_unmap(c, "core+vtd 2 units, domain on both", &shared);
    iommu.detach_group(&shared, &gb);
    shared.unmap(Iova::new(0x10_0000), 0x1000).unwrap();
    map_unmap(c, "core+vtd 2 units, domain on one", &shared);
}

fn translate(c: &mut Criterion) {
    // An IOTLB of one entry, so alternating between two pages always
    // misses: legacy second-level tables, then scalable mode's first
    // stage (a PASID entry, an x86-64 walk that checks U/S and R/W at
    // every level).
    for (name, features) in [
        ("vtd-emu", Features::default()),
        ("vtd-emu first stage", Features::scalable()),
    ] {
        let plat = platform(Features {
            iotlb_entries: 1,
            ..features
        });
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
        // What is measured: a hit, then a walk for each of two pages in turn.
        hw.translate(SID, 0x10_0000, Access::Read).unwrap();
        let s0 = hw.stats();
        hw.translate(SID, 0x10_0040, Access::Read).unwrap();
        hw.translate(SID, 0x10_1040, Access::Read).unwrap();
        hw.translate(SID, 0x10_0040, Access::Read).unwrap();
        let s1 = hw.stats();
        assert_eq!((s1.iotlb_hits - s0.iotlb_hits, s1.walks - s0.walks), (1, 2));
        c.bench_function(&format!("{name}/translate (IOTLB hit)"), |b| {
            b.iter(|| {
                black_box(
                    hw.translate(SID, black_box(0x10_0040), Access::Read)
                        .unwrap(),
                )
            })
        });
        let mut flip = 0u64;
        c.bench_function(
            &format!("{name}/translate (IOTLB miss: 4-level walk)"),
            |b| {
                b.iter(|| {
                    flip ^= 0x1000;
                    black_box(
                        hw.translate(SID, black_box(0x10_0040 + flip), Access::Read)
                            .unwrap(),
                    )
                })
            },
        );
    }
}

criterion_group!(benches, side_by_side, two_units, translate);
criterion_main!(benches);
