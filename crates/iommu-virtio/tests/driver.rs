//! The guest side end to end: the IOMMU core with the virtio-iommu driver,
//! its virtqueues in guest memory, the device serving them, and the DMA of
//! a device behind it translated by what the guest mapped.

use iommu_core::{
    Bus, DeviceBuilder, DomainType, Errno, FaultAccess, Iommu, IommuConfig, Iova, PhysAddr, Prot,
    ResvType,
};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_virtio::driver::{
    parse_properties, Loopback, Transport, Viommu, ViommuConfig, SW_MSI_BASE,
};
use iommu_virtio::spec::{feature, resv};
use iommu_virtio::{Access, Device, DeviceConfig, ResvMem, VirtioIommu};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

type Mem = GuestMemoryMmap<()>;

const MEM: u64 = 64 << 20;
/// The driver's queues and buffers.
const REGION: u64 = 0x10_0000;
const NET: u32 = 0x10;
const BLK: u32 = 0x18;
const MSI_DOORBELL: u64 = 0xfee0_0000;

struct Guest {
    mem: Mem,
    device: Arc<VirtioIommu>,
    transport: Arc<Loopback<Mem>>,
    viommu: Viommu<Mem>,
    iommu: Iommu,
    bus: Bus,
}

fn guest_with(config: DeviceConfig, policy: IommuConfig) -> Guest {
    let msi = ResvMem {
        subtype: resv::MSI,
        start: MSI_DOORBELL,
        end: MSI_DOORBELL + 0xf_ffff,
    };
    guest_with_regions(config, policy, &[msi])
}

/// A guest whose net endpoint reports `net_resv` in its PROBE reply.
fn guest_with_regions(config: DeviceConfig, policy: IommuConfig, net_resv: &[ResvMem]) -> Guest {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut d = Device::new(config).unwrap();
    d.add_endpoint(NET, net_resv).unwrap();
    d.add_endpoint(BLK, &[]).unwrap();
    let device = VirtioIommu::new(d);
    let transport = Arc::new(Loopback::new(Arc::clone(&device), mem.clone()));
    // The device answers in the notification: a request still out after
    // a few polls never will be (the tests that pause the device).
    let cfg = ViommuConfig {
        completion_polls: 16,
        ..ViommuConfig::default()
    };
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let viommu = Viommu::probe(transport.clone(), mem.clone(), REGION, need, cfg).unwrap();
    let iommu = Iommu::new(policy);
    let bus = Bus::new(&iommu, "virtio").unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(viommu.clone())).unwrap();
    for (name, id) in [("net", NET), ("blk", BLK)] {
        bus.add_device(DeviceBuilder::new(name).stream_ids([id]))
            .unwrap();
    }
    Guest {
        mem,
        device,
        transport,
        viommu,
        iommu,
        bus,
    }
}

fn guest() -> Guest {
    guest_with(DeviceConfig::default(), IommuConfig::default())
}

impl Guest {
    fn dma(&self, name: &str) -> DmaDevice {
        let dev = self.bus.find_device(name).unwrap();
        let d = DmaDevice::bind(&self.iommu, &dev, DmaOptions::default()).unwrap();
        d.set_dma_mask_and_coherent(u64::MAX).unwrap();
        d
    }

    /// The VMM's view of endpoint `ep`'s DMA.
    fn vmm_dma(&self, ep: u32) -> IommuMemory<Mem, iommu_virtio::EndpointIommu> {
        IommuMemory::new(self.mem.clone(), self.device.endpoint(ep), true, ())
    }
}

#[test]
fn probe_negotiates_and_reads_the_configuration() {
    let g = guest();
    let f = g.viommu.features();
    for want in [
        feature::VERSION_1,
        feature::MAP_UNMAP,
        feature::PROBE,
        feature::INPUT_RANGE,
    ] {
        assert_ne!(f & want, 0, "{want:#x}");
    }
    assert_eq!(f & feature::BYPASS, 0, "never the superseded BYPASS");
    g.device
        .with_device(|d| assert_eq!(d.negotiated(), f, "the device agrees"));
}

#[test]
fn probed_regions_reach_the_groups() {
    let g = guest();
    let net = g.bus.find_device("net").unwrap();
    let regions = net.iommu_group().unwrap().resv_regions();
    assert!(
        regions.iter().any(|r| r.ty == ResvType::Msi
            && r.start.raw() == MSI_DOORBELL
            && r.length == 0x10_0000),
        "{regions:?}"
    );
    assert!(regions.iter().all(|r| r.ty != ResvType::SwMsi));
    // No MSI region from the device: the driver's software window.
    let blk = g.bus.find_device("blk").unwrap();
    let regions = blk.iommu_group().unwrap().resv_regions();
    assert!(
        regions
            .iter()
            .any(|r| r.ty == ResvType::SwMsi && r.start.raw() == SW_MSI_BASE),
        "{regions:?}"
    );
}

#[test]
fn dma_map_single_becomes_a_map_request_and_the_device_translates_it() {
    let g = guest();
    let net = g.dma("net");
    // The guest's buffer, written by the CPU.
    let buf = 0x40_0000u64;
    g.mem
        .write_slice(b"through the virtqueue", GuestAddress(buf))
        .unwrap();
    let before = g.viommu.stats();
    let iova = net
        .map_single(PhysAddr::new(buf), 21, DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(
        g.viommu.stats().requests[2],
        before.requests[2] + 1,
        "one MAP"
    );
    // The device has the mapping, in the default domain's id.
    let t = g
        .device
        .with_device(|d| d.translate(NET, iova.raw(), Access::Read))
        .unwrap();
    assert_eq!(t.phys, buf);
    // The endpoint's DMA reads what the CPU wrote.
    let mut got = [0u8; 21];
    g.vmm_dma(NET)
        .read_slice(&mut got, GuestAddress(iova.raw()))
        .unwrap();
    assert_eq!(&got, b"through the virtqueue");
    // Read-only for the device: its write is refused.
    assert!(g
        .vmm_dma(NET)
        .write_slice(b"x", GuestAddress(iova.raw()))
        .is_err());
    net.unmap_single(iova, 21, DmaDirection::ToDevice).unwrap();
    assert_eq!(
        g.viommu.stats().requests[3],
        before.requests[3] + 1,
        "one UNMAP"
    );
    assert!(g
        .vmm_dma(NET)
        .read_slice(&mut got, GuestAddress(iova.raw()))
        .is_err());
    g.device.with_device(|d| assert_eq!(d.mapping_count(), 0));
}

#[test]
fn the_domains_mappings_and_the_devices_agree() {
    let g = guest();
    let blk = g.dma("blk");
    let mut live = Vec::new();
    for i in 0..40u64 {
        let len = 0x1000 * (1 + i % 5);
        let iova = blk
            .map_single(
                PhysAddr::new(0x80_0000 + i * 0x8000),
                len,
                DmaDirection::Bidirectional,
            )
            .unwrap();
        live.push((iova, len));
        if i % 3 == 0 {
            let (iova, len) = live.remove(0);
            blk.unmap_single(iova, len, DmaDirection::Bidirectional)
                .unwrap();
        }
    }
    let (ours, theirs) = records(&g, blk.domain(), BLK);
    assert_eq!(ours, theirs);
    // A mapping may take several MAPs (one per page size the core picks),
    // never fewer bytes.
    let bytes: u64 = ours.iter().map(|(s, e, _)| e - s + 1).sum();
    assert_eq!(bytes, live.iter().map(|(_, len)| len).sum::<u64>());
}

#[test]
fn a_domain_that_lost_its_last_endpoint_gets_its_mappings_again() {
    let g = guest();
    let dev = g.bus.find_device("blk").unwrap();
    let group = dev.iommu_group().unwrap();
    let vfio = g.iommu.domain_alloc(&g.bus, DomainType::Unmanaged).unwrap();
    vfio.map(
        Iova::new(0x10_0000),
        PhysAddr::new(0x50_0000),
        0x2000,
        Prot::RW,
    )
    .unwrap();
    g.iommu
        .group_claim_dma_owner(&group, iommu_core::DmaOwner::new())
        .unwrap();
    g.iommu.attach_group(&vfio, &group).unwrap();
    let on_device = |g: &Guest| {
        g.device
            .with_device(|d| d.translate(BLK, 0x10_1234, Access::Write).map(|t| t.phys))
    };
    assert_eq!(on_device(&g), Ok(0x50_1234), "replayed on first attach");
    g.iommu.detach_group(&vfio, &group);
    assert!(on_device(&g).is_err(), "back in the default domain");
    g.iommu.attach_group(&vfio, &group).unwrap();
    assert_eq!(on_device(&g), Ok(0x50_1234), "replayed again");
    g.iommu.detach_group(&vfio, &group);
    g.iommu.group_release_dma_owner(&group);
}

#[test]
fn identity_domains_are_bypass_attaches() {
    let g = guest_with(
        DeviceConfig::default(),
        IommuConfig {
            passthrough: true,
            strict: true,
        },
    );
    assert_ne!(g.viommu.features() & feature::BYPASS_CONFIG, 0);
    let id = g.device.with_device(|d| d.domain_of(NET)).unwrap();
    assert_eq!(g.device.with_device(|d| d.is_bypass_domain(id)), Some(true));
    let t = g
        .device
        .with_device(|d| d.translate(NET, 0x1234_5000, Access::Write))
        .unwrap();
    assert!(t.bypass && t.phys == 0x1234_5000);
}

#[test]
fn identity_without_bypass_config_maps_the_aperture_around_reserved_regions() {
    let config = DeviceConfig {
        features: DeviceConfig::default().features & !feature::BYPASS_CONFIG,
        ..DeviceConfig::default()
    };
    let g = guest_with(
        config,
        IommuConfig {
            passthrough: true,
            strict: true,
        },
    );
    assert_eq!(g.viommu.features() & feature::BYPASS_CONFIG, 0);
    let tr = |addr: u64| {
        g.device
            .with_device(|d| d.translate(NET, addr, Access::Read).map(|t| t.phys))
    };
    assert_eq!(tr(0x1234_5678), Ok(0x1234_5678));
    // The MSI doorbell is the device's own region, not a mapping.
    let id = g.device.with_device(|d| d.domain_of(NET)).unwrap();
    let inside = g.device.with_device(|d| {
        d.mappings(id)
            .any(|m| m.virt_start <= MSI_DOORBELL && MSI_DOORBELL <= m.virt_end)
    });
    assert!(!inside);
}

/// A region that ends at 2^64 - 1 (an inclusive end with nothing after
/// it) is left out of the identity domain, with the rest of the space
/// mapped 1:1 up to it; so is one at the bottom.
#[test]
fn identity_without_bypass_config_leaves_out_regions_at_both_ends_of_the_space() {
    let config = DeviceConfig {
        features: DeviceConfig::default().features & !feature::BYPASS_CONFIG,
        ..DeviceConfig::default()
    };
    let top = ResvMem {
        subtype: resv::RESERVED,
        start: 0xffff_ffff_ffff_f000,
        end: u64::MAX,
    };
    let bottom = ResvMem {
        subtype: resv::RESERVED,
        start: 0,
        end: 0xfff,
    };
    let policy = IommuConfig {
        passthrough: true,
        strict: true,
    };
    let g = guest_with_regions(config, policy, &[top, bottom]);
    let tr = |addr: u64| {
        g.device
            .with_device(|d| d.translate(NET, addr, Access::Read).map(|t| t.phys))
    };
    assert_eq!(tr(0x1000), Ok(0x1000));
    assert_eq!(tr(0xffff_ffff_ffff_efff), Ok(0xffff_ffff_ffff_efff));
    assert!(tr(0xffff_ffff_ffff_f000).is_err(), "the top region mapped");
    assert!(tr(u64::MAX).is_err());
    assert!(tr(0).is_err(), "the bottom region mapped");
    let id = g.device.with_device(|d| d.domain_of(NET)).unwrap();
    let maps: Vec<(u64, u64)> = g
        .device
        .with_device(|d| d.mappings(id).map(|m| (m.virt_start, m.virt_end)).collect());
    assert_eq!(maps, vec![(0x1000, 0xffff_ffff_ffff_efff)]);
}

#[test]
fn a_fault_event_reaches_the_cores_fault_handler() {
    let g = guest();
    let net = g.dma("net");
    let seen = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&seen);
    net.domain()
        .set_fault_handler(Some(Arc::new(move |_, dev, iova, access| {
            assert_eq!(dev.name(), "net");
            assert_eq!(access, FaultAccess::Write);
            s.store(iova.raw(), Ordering::SeqCst);
            Ok(())
        })));
    // The endpoint writes where nothing is mapped.
    assert!(g
        .vmm_dma(NET)
        .write_slice(b"x", GuestAddress(0xdead_0000))
        .is_err());
    assert_eq!(g.transport.deliver_events(), 1);
    let faults = g.viommu.handle_events();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].endpoint, NET);
    assert_eq!(seen.load(Ordering::SeqCst), 0xdead_0000);
    assert_eq!(g.viommu.stats().faults, 1);
    // The buffer went back: the next fault is delivered too.
    assert!(g
        .vmm_dma(NET)
        .write_slice(b"x", GuestAddress(0xbeef_0000))
        .is_err());
    assert_eq!(g.transport.deliver_events(), 1);
    assert_eq!(g.viommu.handle_events().len(), 1);
}

#[test]
fn a_map_the_device_refuses_fails_the_cores_map_and_leaves_nothing() {
    // Room for very few mappings per domain.
    let mut config = DeviceConfig::default();
    config.limits.mappings_per_domain = 2;
    let g = guest_with(config, IommuConfig::default());
    let blk = g.dma("blk");
    let a = blk
        .map_single(PhysAddr::new(0x40_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap();
    let _b = blk
        .map_single(PhysAddr::new(0x50_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap();
    let err = blk
        .map_single(PhysAddr::new(0x60_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(err.errno(), Errno::ENOMEM, "{err:?}");
    let id = g.device.with_device(|d| d.domain_of(BLK)).unwrap();
    assert_eq!(g.device.with_device(|d| d.mappings(id).count()), 2);
    blk.unmap_single(a, 0x1000, DmaDirection::ToDevice).unwrap();
    blk.map_single(PhysAddr::new(0x60_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap();
}

#[test]
fn removing_a_device_detaches_its_endpoint() {
    let g = guest();
    let dev = g.bus.find_device("blk").unwrap();
    assert!(g.device.with_device(|d| d.domain_of(BLK)).is_some());
    g.bus.remove_device(&dev).unwrap();
    assert!(g.device.with_device(|d| d.domain_of(BLK)).is_none());
}

#[test]
fn probe_replies_are_checked_like_any_input() {
    let mut p = vec![0u8; 64];
    // A RESV_MEM property whose length runs past the buffer.
    p[0] = 1;
    p[2] = 200;
    assert_eq!(parse_properties(&p), Err(Errno::EINVAL));
    // End below start.
    let mut p = vec![0u8; 64];
    p[0] = 1;
    p[2] = 20;
    p[8..16].copy_from_slice(&0x2000u64.to_le_bytes());
    p[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(parse_properties(&p), Err(Errno::EINVAL));
    // Too short for RESV_MEM.
    let mut p = vec![0u8; 64];
    p[0] = 1;
    p[2] = 8;
    assert_eq!(parse_properties(&p), Err(Errno::EINVAL));
    // An unknown property is skipped; an unknown subtype is RESERVED.
    let mut p = vec![0u8; 64];
    p[0] = 7;
    p[2] = 4;
    p[8] = 1;
    p[10] = 20;
    p[12] = 9;
    p[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
    p[24..32].copy_from_slice(&0x1fffu64.to_le_bytes());
    let r = parse_properties(&p).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].ty, ResvType::Reserved);
    assert_eq!((r[0].start.raw(), r[0].length), (0x1000, 0x1000));
    // Any bytes: a result, never a panic.
    for seed in 0..2000u64 {
        let bytes: Vec<u8> = (0..64)
            .map(|i| (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i) & 0xff) as u8)
            .collect();
        let _ = parse_properties(&bytes);
    }
}

/// Mappings as (first, last, phys).
type Spans = Vec<(u64, u64, u64)>;

/// The driver's record of `domain` and the device's mappings of `ep`'s domain.
fn records(g: &Guest, domain: &iommu_core::Domain, ep: u32) -> (Spans, Spans) {
    let ours: Vec<(u64, u64, u64)> = domain
        .ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<iommu_virtio::driver::ViommuDomain<Mem>>())
        .unwrap()
        .mappings()
        .into_iter()
        .map(|m| (m.virt_start, m.virt_end, m.phys_start))
        .collect();
    let id = g.device.with_device(|d| d.domain_of(ep)).unwrap();
    let theirs = g.device.with_device(|d| {
        d.mappings(id)
            .map(|m| (m.virt_start, m.virt_end, m.phys_start))
            .collect()
    });
    (ours, theirs)
}

/// Four threads map and unmap through the DMA API at once: every request
/// reaches the device, and at the end the driver's record, the device and
/// what is still live agree.
#[test]
fn threads_mapping_at_once_leave_the_device_and_the_driver_agreeing() {
    let g = Arc::new(guest());
    let net = Arc::new(g.dma("net"));
    let rounds = if cfg!(miri) { 4 } else { 300 };
    let kept: Vec<Vec<(iommu_dma::DmaAddr, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let net = Arc::clone(&net);
                let g = Arc::clone(&g);
                s.spawn(move || {
                    let mut live = Vec::new();
                    for i in 0..rounds {
                        let pa = 0x100_0000 + (t * rounds + i) * 0x2000;
                        let len = 0x1000 + (i % 3) * 0x1000;
                        let iova = net
                            .map_single(PhysAddr::new(pa), len, DmaDirection::FromDevice)
                            .unwrap();
                        // The device translates it at once.
                        let phys = g
                            .device
                            .with_device(|d| d.translate(NET, iova.raw() + len - 1, Access::Write))
                            .unwrap()
                            .phys;
                        assert_eq!(phys, pa + len - 1);
                        live.push((iova, len));
                        if i % 2 == 1 {
                            let (iova, len) = live.swap_remove(0);
                            net.unmap_single(iova, len, DmaDirection::FromDevice)
                                .unwrap();
                            assert!(g
                                .device
                                .with_device(|d| d.translate(NET, iova.raw(), Access::Write))
                                .is_err());
                        }
                    }
                    live
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (ours, theirs) = records(&g, net.domain(), NET);
    assert_eq!(ours, theirs);
    let bytes: u64 = ours.iter().map(|(s, e, _)| e - s + 1).sum();
    let live: u64 = kept.iter().flatten().map(|(_, l)| l).sum();
    assert_eq!(bytes, live);
    assert_eq!(g.viommu.stats().refused, 0);
}

mod random {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 64 }))]

        /// Random maps and unmaps through the core's domain API (sizes,
        /// page sizes, unmaps that cover several mappings or part of one):
        /// after each, the device holds exactly what the driver records,
        /// and every address translates on the device as the domain says.
        #[test]
        fn the_device_holds_what_the_domain_maps(ops in prop::collection::vec((any::<bool>(), 0u64..64, 1u64..9), 1..80)) {
            let g = guest();
            let dev = g.bus.find_device("blk").unwrap();
            let group = dev.iommu_group().unwrap();
            let dom = g.iommu.domain_alloc(&g.bus, DomainType::Unmanaged).unwrap();
            g.iommu.group_claim_dma_owner(&group, iommu_core::DmaOwner::new()).unwrap();
            g.iommu.attach_group(&dom, &group).unwrap();
            for (is_map, page, pages) in ops {
                let iova = Iova::new(page << 12);
                if is_map {
                    let r = dom.map(iova, PhysAddr::new((page + 0x1000) << 12), pages << 12, Prot::RW);
                    if let Err(e) = r {
                        prop_assert_eq!(e, Errno::EEXIST);
                    }
                } else {
                    dom.unmap(iova, pages << 12).unwrap();
                }
                let (ours, theirs) = records(&g, &dom, BLK);
                prop_assert_eq!(&ours, &theirs);
                for p in 0..72u64 {
                    let on_device = g.device.with_device(|d| d.translate(BLK, p << 12, Access::Read).ok().map(|t| t.phys));
                    prop_assert_eq!(on_device, dom.iova_to_phys(Iova::new(p << 12)).map(|a| a.raw()), "page {}", p);
                }
            }
            g.iommu.detach_group(&dom, &group);
            g.iommu.group_release_dma_owner(&group);
            prop_assert_eq!(g.viommu.stats().refused, 0);
        }
    }
}

/// Seeds for `fuzz/fuzz_targets/virtio_probe_reply.rs` (written to
/// `$IOMMU_FUZZ_SEEDS/virtio_probe_reply` when set): replies a device
/// writes, and malformed ones.
#[test]
fn the_probe_reply_seeds_hold() {
    let resv = |subtype: u8, start: u64, end: u64| {
        let mut p = vec![1u8, 0, 20, 0, subtype, 0, 0, 0];
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p
    };
    let mut seeds = vec![
        vec![0u8; 64],
        resv(resv::MSI, MSI_DOORBELL, MSI_DOORBELL + 0xf_ffff),
        [resv(0, 0x1000, 0x1fff), resv(1, 0x8000, 0x8fff)].concat(),
        resv(0, 0, u64::MAX),
        resv(0, 5, 4),
        vec![1, 0, 0xff, 0xff],
    ];
    seeds.push([vec![9, 0, 2, 0, 0, 0], resv(0, 0x10, 0x20)].concat());
    // Regions at both ends of the space, alone and together.
    let top = resv(0, 0xffff_ffff_ffff_f000, u64::MAX);
    let bottom = resv(0, 0, 0xfff);
    seeds.push(top.clone());
    seeds.push(resv(1, u64::MAX, u64::MAX));
    seeds.push([bottom.clone(), top.clone()].concat());
    seeds.push([resv(0, 1 << 63, u64::MAX), resv(0, 0, (1 << 63) - 1)].concat());
    seeds.push(
        [
            top,
            resv(0, 0xffff_ffff_ffff_e800, 0xffff_ffff_ffff_f7ff),
            bottom,
        ]
        .concat(),
    );
    let dir = std::env::var_os("IOMMU_FUZZ_SEEDS").map(|d| {
        let d = std::path::PathBuf::from(d).join("virtio_probe_reply");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    for (i, s) in seeds.iter().enumerate() {
        iommu_virtio::testing::run_probe_reply(s);
        if let Some(d) = &dir {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
    assert_eq!(parse_properties(&seeds[3]), Err(Errno::EOVERFLOW));
    assert_eq!(parse_properties(&seeds[1]).unwrap().len(), 1);
}

fn probe_on(config: DeviceConfig, len: Option<u64>) -> Result<Viommu<Mem>, Errno> {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let device = VirtioIommu::new(Device::new(config).unwrap());
    let transport = Arc::new(Loopback::new(device, mem.clone()));
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    Viommu::probe(transport, mem, REGION, len.unwrap_or(need), cfg)
}

#[test]
fn probe_refuses_what_it_cannot_drive() {
    // No MAP_UNMAP: nothing to drive.
    let config = DeviceConfig {
        features: DeviceConfig::default().features & !feature::MAP_UNMAP,
        ..DeviceConfig::default()
    };
    assert_eq!(probe_on(config, None).unwrap_err(), Errno::ENODEV);
    // Too little memory for the queues.
    assert_eq!(
        probe_on(DeviceConfig::default(), Some(64)).unwrap_err(),
        Errno::ENOMEM
    );
    // A region past the end of guest memory.
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let device = VirtioIommu::new(Device::new(DeviceConfig::default()).unwrap());
    let t = Arc::new(Loopback::new(device, mem.clone()));
    let cfg = ViommuConfig::default();
    assert_eq!(
        Viommu::probe(t, mem, 0, 1 << 20, cfg).unwrap_err(),
        Errno::ENOMEM
    );
    // A queue size that is not a power of two.
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let device = VirtioIommu::new(Device::new(DeviceConfig::default()).unwrap());
    let t = Arc::new(Loopback::new(device, mem.clone()));
    let cfg = ViommuConfig {
        request_queue_size: 3,
        ..ViommuConfig::default()
    };
    assert_eq!(
        Viommu::probe(t, mem, REGION, 1 << 20, cfg).unwrap_err(),
        Errno::EINVAL
    );
}

#[test]
fn domain_ids_come_from_domain_range_and_run_out() {
    let g = guest_with(
        DeviceConfig {
            domain_range: (7, 9),
            ..DeviceConfig::default()
        },
        IommuConfig::default(),
    );
    // The two default domains took 7 and 8.
    let ids: Vec<u32> = [NET, BLK]
        .iter()
        .map(|&ep| g.device.with_device(|d| d.domain_of(ep)).unwrap())
        .collect();
    assert_eq!(ids, [7, 8]);
    let third = g.iommu.domain_alloc(&g.bus, DomainType::Unmanaged).unwrap();
    assert_eq!(
        g.iommu
            .domain_alloc(&g.bus, DomainType::Unmanaged)
            .unwrap_err(),
        Errno::ENOSPC
    );
    // A freed id is taken again.
    drop(third);
    assert!(g.iommu.domain_alloc(&g.bus, DomainType::Unmanaged).is_ok());
}

#[test]
fn a_granule_larger_than_the_guests_page_gets_no_domain() {
    let config = DeviceConfig {
        page_size_mask: !0xffff,
        ..DeviceConfig::default()
    };
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut d = Device::new(config).unwrap();
    d.add_endpoint(NET, &[]).unwrap();
    let device = VirtioIommu::new(d);
    let t = Arc::new(Loopback::new(device, mem.clone()));
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let viommu = Viommu::probe(t, mem, REGION, need, cfg).unwrap();
    let iommu = Iommu::new(IommuConfig::default());
    let bus = Bus::new(&iommu, "virtio").unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(viommu)).unwrap();
    assert_eq!(
        iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap_err(),
        Errno::ENODEV
    );
}

/// What endpoint `ep` reaches at `iova` on the device, if anything.
fn device_reaches(g: &Guest, ep: u32, iova: u64) -> Option<u64> {
    g.device
        .with_device(|d| d.translate(ep, iova, Access::Read).ok().map(|t| t.phys))
}

#[test]
fn an_unmap_the_device_does_not_complete_is_owed_and_its_iova_held_until_it_does() {
    let g = guest();
    let dma = g.dma("net");
    let old = dma
        .map_single(PhysAddr::new(0x20_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(device_reaches(&g, NET, old.raw()), Some(0x20_0000));
    // The VMM stops serving the request queue.
    g.transport.pause(true);
    assert_eq!(
        dma.unmap_single(old, 0x1000, DmaDirection::ToDevice),
        Err(iommu_dma::DmaError::NotInvalidated(Errno::EIO))
    );
    assert!(dma.invalidation_pending());
    assert_eq!(
        device_reaches(&g, NET, old.raw()),
        Some(0x20_0000),
        "the device never saw the UNMAP: the caller was told"
    );
    // Nothing new can be mapped while the device does not answer, and
    // what was tried reaches nothing.
    let e = dma
        .map_single(PhysAddr::new(0x30_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(e, iommu_dma::DmaError::Map(Errno::EIO));

    assert_eq!(dma.domain_stats().quarantine.ranges, 2);
    // Back: the stuck requests run in order, what is owed is sent again,
    // and the quarantine drains.
    g.transport.pause(false);
    assert_eq!(dma.release_quarantine(), Ok(2));
    assert!(!dma.invalidation_pending());
    assert_eq!(device_reaches(&g, NET, old.raw()), None);
    let new = dma
        .map_single(PhysAddr::new(0x30_0000), 0x1000, DmaDirection::ToDevice)
        .unwrap();
    // (Released, the old IOVA may be handed out again: it is clean.)
    assert_eq!(device_reaches(&g, NET, new.raw()), Some(0x30_0000));
    dma.unmap_single(new, 0x1000, DmaDirection::ToDevice)
        .unwrap();
}

proptest::proptest! {
    /// Regions clustered at the bottom, the middle and the top of the
    /// 64-bit space, as a PROBE reply: parsed, merged and left out of
    /// identity domains without an overflow, by the same rule everywhere.
    #[test]
    fn probe_replies_with_regions_at_the_ends_of_the_space_fill_identity_domains_exactly(
        regions in proptest::collection::vec((0u8..3, 0u64..0x4000, 1u64..0x3000, 0u8..2), 0..8)
    ) {
        let mut reply = Vec::new();
        for (anchor, off, len, subtype) in regions {
            let (start, end) = match anchor {
                0 => (off, off + len - 1),
                1 => ((1 << 63) + off, (1 << 63) + off + len - 1),
                _ => {
                    let end = u64::MAX - off;
                    (end.saturating_sub(len - 1), end)
                }
            };
            reply.extend_from_slice(&[1, 0, 20, 0, subtype, 0, 0, 0]);
            reply.extend_from_slice(&start.to_le_bytes());
            reply.extend_from_slice(&end.to_le_bytes());
        }
        iommu_virtio::testing::run_probe_reply(&reply);
    }
}

/// Memory a kernel hands the driver: plain bytes at a base address, no
/// vm-memory in sight. (It forwards to the VMM's guest memory here, so the
/// device in the same process sees what the driver writes.)
struct KernelMemory(Mem);

impl iommu_virtio::ring::DriverMemory for KernelMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_slice(buf, GuestAddress(addr)).is_ok()
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.0.write_slice(data, GuestAddress(addr)).is_ok()
    }
    fn store_u16_release(&self, addr: u64, v: u16) -> bool {
        std::sync::atomic::fence(Ordering::Release);
        self.write(addr, &v.to_le_bytes())
    }
    fn load_u16_acquire(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        let ok = self.read(addr, &mut b);
        std::sync::atomic::fence(Ordering::Acquire);
        ok.then_some(u16::from_le_bytes(b))
    }
}

/// The driver over memory described only by `DriverMemory` (what a no_std
/// kernel gives it): probe, attach, a mapping a device's DMA goes through,
/// the unmap that takes it away, and out-of-range memory refused.
#[test]
fn the_driver_runs_over_memory_its_embedder_describes() {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(NET, &[]).unwrap();
    let device = VirtioIommu::new(d);
    let transport = Arc::new(Loopback::new(Arc::clone(&device), mem.clone()));
    let cfg = ViommuConfig::default();
    let need = Viommu::<KernelMemory>::memory_needed(cfg, 512);
    // A region past the end of memory is refused, not written.
    assert_eq!(
        Viommu::probe(transport.clone(), KernelMemory(mem.clone()), MEM, need, cfg).unwrap_err(),
        Errno::ENOMEM
    );
    let viommu = Viommu::probe(transport, KernelMemory(mem.clone()), REGION, need, cfg).unwrap();
    let iommu = Iommu::new(IommuConfig::default());
    let bus = Bus::new(&iommu, "virtio").unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(viommu.clone())).unwrap();
    let net = bus
        .add_device(DeviceBuilder::new("net").stream_ids([NET]))
        .unwrap();
    let domain = net.iommu_group().unwrap().default_domain().unwrap();
    assert!(
        device.with_device(|d| d.domain_of(NET)).is_some(),
        "the driver's ATTACH reached the device"
    );
    domain
        .map(
            Iova::new(0x4000),
            PhysAddr::new(0x20_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    let dma = IommuMemory::new(mem.clone(), device.endpoint(NET), true, ());
    dma.write_obj(0xabcd_u32, GuestAddress(0x4010)).unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x20_0010)).unwrap(),
        0xabcd
    );
    assert_eq!(domain.unmap(Iova::new(0x4000), 0x1000), Ok(0x1000));
    assert!(
        dma.write_obj(1_u32, GuestAddress(0x4010)).is_err(),
        "unmapped"
    );
    assert_eq!(viommu.stats().refused, 0);
}

/// A transport whose device serves its queues on a thread of its own,
/// after the notification has returned (as a device behind an ioeventfd,
/// vhost, or hardware does).
struct Deferred {
    inner: Arc<Loopback<Mem>>,
    kick: std::sync::Mutex<std::sync::mpsc::Sender<u16>>,
}

impl Deferred {
    fn new(inner: Arc<Loopback<Mem>>) -> Deferred {
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        let device = Arc::clone(&inner);
        std::thread::spawn(move || {
            for index in rx {
                std::thread::sleep(std::time::Duration::from_micros(200));
                device.notify(index);
            }
        });
        Deferred {
            inner,
            kick: std::sync::Mutex::new(tx),
        }
    }
}

impl Transport for Deferred {
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn set_driver_features(&self, features: u64) -> Result<(), Errno> {
        self.inner.set_driver_features(features)
    }
    fn read_config(&self, at: usize, buf: &mut [u8]) {
        self.inner.read_config(at, buf)
    }
    fn queue_ready(
        &self,
        index: u16,
        layout: iommu_virtio::driver::QueueLayout,
    ) -> Result<(), Errno> {
        self.inner.queue_ready(index, layout)
    }
    fn notify(&self, index: u16) {
        let _ = self.kick.lock().unwrap().send(index);
    }
}

#[test]
fn a_device_that_answers_after_the_notification_is_waited_for() {
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(NET, &[]).unwrap();
    let device = VirtioIommu::new(d);
    let t = Arc::new(Deferred::new(Arc::new(Loopback::new(
        Arc::clone(&device),
        mem.clone(),
    ))));
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let viommu = Viommu::probe(t, mem.clone(), REGION, need, cfg).unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "virtio").unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(viommu.clone())).unwrap();
    let net = bus
        .add_device(DeviceBuilder::new("net").stream_ids([NET]))
        .unwrap();
    let domain = net.iommu_group().unwrap().default_domain().unwrap();
    domain
        .map(
            Iova::new(0x1000_0000),
            PhysAddr::new(0x20_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    assert_eq!(
        device.with_device(|d| d.translate(NET, 0x1000_0010, Access::Write).map(|t| t.phys)),
        Ok(0x20_0010),
        "the MAP completed before map returned"
    );
    assert_eq!(domain.unmap(Iova::new(0x1000_0000), 0x1000), Ok(0x1000));
    assert!(
        device
            .with_device(|d| d.translate(NET, 0x1000_0010, Access::Write))
            .is_err(),
        "the UNMAP completed before unmap returned"
    );
    let s = viommu.stats();
    assert_eq!((s.requests[2], s.requests[3], s.refused), (1, 1, 0));
}
