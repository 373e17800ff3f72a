//! The judge's scenario on the emulated VT-d configured like QEMU's
//! intel-iommu (`Features::qemu()`): the same DMA by an edu-like device
//! (4-byte transactions), through the core and this driver, records the
//! faults QEMU records, phase by phase (`common::qemu_phases`, which the
//! QEMU judge checks QEMU against). The same run on a unit that follows
//! the specification where QEMU does not (eight records, no compression,
//! faults for refused cached permissions) records what the specification
//! asks instead.

mod common;

use common::Fault;
use iommu_core::{
    Bus, DeviceBuilder, DmaOwner, DomainType, Iommu, IotlbGather, Iova, PhysAddr, Prot,
};
use iommu_vtd::emu::{EmuLayout, EmuPlatform};
use iommu_vtd::{TableMode, VtdConfig};
use iommu_vtd_emu::Features;
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

const SID: u16 = 0x18;

fn run(features: Features, cfg: VtdConfig) -> BTreeMap<String, Vec<Fault>> {
    let plat = EmuPlatform::new(EmuLayout::default(), features, cfg).unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(
            DeviceBuilder::new("0000:00:03.0")
                .stream_ids([u32::from(SID)])
                .pci(true),
        )
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    let group = dev.iommu_group().unwrap();
    let domain = group.default_domain().unwrap();
    assert_eq!(domain.ty(), DomainType::Dma);
    let hw = &plat.hw;
    let mem = &plat.memory;
    // edu: 4-byte transactions; a refused one does not stop the rest.
    let dma_write = |iova: u64, data: &[u8]| {
        for (i, chunk) in data.chunks(4).enumerate() {
            let _ = hw.dma_write(SID, iova + 4 * i as u64, chunk);
        }
    };
    let dma_read = |iova: u64, len: usize| {
        let mut buf = vec![0u8; len];
        for (i, chunk) in buf.chunks_mut(4).enumerate() {
            let _ = hw.dma_read(SID, iova + 4 * i as u64, chunk);
        }
        buf
    };
    let read = |pa: u64, len: usize| {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(pa)).unwrap();
        b
    };
    let mut phases = BTreeMap::new();
    let mut phase = |name: &str| {
        let fs: Vec<Fault> = plat
            .driver
            .handle_faults()
            .iter()
            .map(|f| (f.source_id, f.reason, f.address, f.write))
            .collect();
        phases.insert(name.to_string(), fs);
    };
    let (src, dst, stale) = (0x900_0000u64, 0x900_2000u64, 0x900_4000u64);
    let pattern: Vec<u8> = (0..256u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
        .collect();
    mem.write_slice(&pattern, GuestAddress(src)).unwrap();
    domain
        .map(Iova::new(0x10_0000), PhysAddr::new(src), 0x1000, Prot::READ)
        .unwrap();
    domain
        .map(Iova::new(0x20_0000), PhysAddr::new(dst), 0x1000, Prot::RW)
        .unwrap();
    let buf = dma_read(0x10_0000, 256);
    dma_write(0x20_0000, &buf);
    assert_eq!(read(dst, 256), pattern, "data lands where the tables say");
    phase("mapped");
    dma_write(0x30_0000, &buf[..64]);
    phase("hole");
    assert_eq!(domain.unmap(Iova::new(0x20_0000), 0x1000), Ok(0x1000));
    mem.write_slice(&[0u8; 256], GuestAddress(dst)).unwrap();
    dma_write(0x20_0000, &buf);
    assert_eq!(read(dst, 256), vec![0; 256], "nothing lands after unmap");
    phase("unmapped");
    dma_write(0x10_0000, &[0xee; 16]);
    assert_eq!(
        read(src, 16),
        pattern[..16],
        "a read-only page refuses a write"
    );
    phase("read-only-cached");
    domain.flush_iotlb_all().unwrap();
    dma_write(0x10_0000, &[0xee; 16]);
    assert_eq!(read(src, 16), pattern[..16]);
    phase("read-only");
    domain
        .map(Iova::new(0x40_0000), PhysAddr::new(stale), 0x1000, Prot::RW)
        .unwrap();
    dma_write(0x40_0000, &buf[..16]);
    let mut gather = IotlbGather::new();
    domain.unmap_fast(Iova::new(0x40_0000), 0x1000, &mut gather);
    mem.write_slice(&[0u8; 16], GuestAddress(stale)).unwrap();
    dma_write(0x40_0000, &buf[..16]);
    assert_eq!(
        read(stale, 16),
        buf[..16],
        "stale until the invalidation, as on QEMU"
    );
    phase("stale");
    domain.iotlb_sync(&gather).unwrap();
    mem.write_slice(&[0u8; 16], GuestAddress(stale)).unwrap();
    dma_write(0x40_0000, &buf[..16]);
    assert_eq!(read(stale, 16), vec![0; 16], "gone after it");
    phase("synced");
    let block = 0x20_0000u64 * 40;
    domain
        .map(
            Iova::new(0x60_0000),
            PhysAddr::new(block),
            0x20_0000,
            Prot::RW,
        )
        .unwrap();
    assert_eq!(
        domain.first_mapping(Iova::new(0x60_0000), Iova::new(0x7f_ffff)),
        Some((Iova::new(0x60_0000), 0x20_0000)),
        "one 2 MiB page"
    );
    dma_write(0x60_0000 + 0x12_3400, &buf[..64]);
    assert_eq!(read(block + 0x12_3400, 64), buf[..64]);
    phase("block");
    assert_eq!(domain.unmap(Iova::new(0x60_0000), 0x20_0000), Ok(0x20_0000));
    dma_write(0x60_0000 + 0x1f_f000, &buf[..16]);
    phase("block-unmapped");
    iommu
        .group_claim_dma_owner(&group, DmaOwner::new())
        .unwrap();
    if plat.driver.mode().scalable() {
        // The context entry stays; the RID_PASID's PASID entry goes.
        assert!(plat
            .driver
            .context_entry(u32::from(SID))
            .is_some_and(|e| e[0] & 1 == 1));
        assert!(plat
            .driver
            .pasid_entry(u32::from(SID))
            .is_some_and(|e| e[0] & 1 == 0));
    } else {
        assert!(plat
            .driver
            .context_entry(u32::from(SID))
            .is_some_and(|e| e[0] & 1 == 0));
    }
    dma_write(0x20_0000, &buf[..16]);
    phase("blocked");
    iommu.group_release_dma_owner(&group);
    iommu
        .sysfs()
        .write(
            &format!("kernel/iommu_groups/{}/type", group.id()),
            "identity",
        )
        .unwrap();
    let ident = 0x900_6000u64;
    dma_write(ident, &buf[..32]);
    assert_eq!(
        read(ident, 32),
        buf[..32],
        "identity passes physical addresses"
    );
    phase("identity");
    let s = plat.driver.stats();
    assert_eq!((s.timeouts, s.queue_errors), (0, 0));
    phases
}

#[test]
fn the_emulator_configured_like_qemu_records_qemus_faults() {
    for queued in [true, false] {
        for caching_mode in [false, true] {
            let features = Features {
                caching_mode,
                ..Features::qemu()
            };
            let cfg = VtdConfig {
                host_address_width: 48,
                queued_invalidation: queued,
                ..VtdConfig::default()
            };
            assert_eq!(
                run(features, cfg),
                common::qemu_phases(SID, TableMode::Legacy),
                "queued={queued} caching_mode={caching_mode}"
            );
        }
    }
}

#[test]
fn in_scalable_mode_the_emulator_configured_like_qemu_records_qemus_faults() {
    // QEMU's x-scalable-mode=on (second stage) and x-flts=on (first
    // stage), each with and without caching mode; the driver picks the
    // mode the unit offers, as Linux does.
    for first_stage in [false, true] {
        for caching_mode in [false, true] {
            let features = Features {
                caching_mode,
                ..Features::qemu_scalable(first_stage)
            };
            let mode = if first_stage {
                TableMode::ScalableFirstStage
            } else {
                TableMode::ScalableSecondStage
            };
            let cfg = VtdConfig {
                host_address_width: 48,
                ..VtdConfig::default()
            };
            assert_eq!(
                run(features, cfg),
                common::qemu_phases(SID, mode),
                "first_stage={first_stage} caching_mode={caching_mode}"
            );
        }
    }
}

#[test]
fn a_scalable_unit_still_runs_legacy_tables_when_asked() {
    let cfg = VtdConfig {
        host_address_width: 48,
        mode: Some(TableMode::Legacy),
        ..VtdConfig::default()
    };
    assert_eq!(
        run(Features::qemu_scalable(true), cfg),
        common::qemu_phases(SID, TableMode::Legacy)
    );
    // Asking for what the unit lacks fails the probe and leaves it off.
    for (features, mode) in [
        (Features::qemu(), TableMode::ScalableSecondStage),
        (
            Features::qemu_scalable(false),
            TableMode::ScalableFirstStage,
        ),
        (
            Features::qemu_scalable(true),
            TableMode::ScalableSecondStage,
        ),
    ] {
        let cfg = VtdConfig {
            mode: Some(mode),
            host_address_width: 48,
            ..VtdConfig::default()
        };
        let err = EmuPlatform::new(EmuLayout::default(), features, cfg).err();
        assert!(
            matches!(err, Some(iommu_vtd::emu::EmuError::Probe(iommu_vtd::ProbeError::Mode(m))) if m == mode),
            "{mode:?}: {err:?}"
        );
    }
}

#[test]
fn a_unit_that_follows_the_specification_records_every_fault() {
    let got = run(
        Features::default(),
        VtdConfig {
            host_address_width: 48,
            ..VtdConfig::default()
        },
    );
    let w = |reason: u8, page: u64| (SID, reason, page, true);
    // Eight records, no compression: the first eight of the hole's 16
    // transactions (all on one page), then an overflow.
    assert_eq!(got["hole"], vec![w(5, 0x30_0000); 8]);
    // A refused cached permission is recorded.
    assert_eq!(got["read-only-cached"], vec![w(5, 0x10_0000); 4]);
    assert_eq!(got["blocked"], vec![w(2, 0x20_0000); 4]);
    assert!(got["mapped"].is_empty() && got["identity"].is_empty());
}

#[test]
fn in_caching_mode_a_strict_unit_keeps_a_not_present_entry_until_the_map_invalidates_it() {
    let plat = EmuPlatform::new(
        EmuLayout::default(),
        Features {
            caching_mode: true,
            ..Features::default()
        },
        VtdConfig {
            host_address_width: 48,
            ..VtdConfig::default()
        },
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("ep").stream_ids([u32::from(SID)]))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    let hw = &plat.hw;
    assert!(hw.dma_write(SID, 0x5000_0000, &[1; 4]).is_err());
    let hits = hw.stats().iotlb_hits;
    assert!(hw.dma_write(SID, 0x5000_0000, &[1; 4]).is_err());
    assert_eq!(
        hw.stats().iotlb_hits,
        hits + 1,
        "the not-present entry was cached"
    );
    // The driver's map invalidates it (caching mode): the DMA goes through.
    domain
        .map(
            Iova::new(0x5000_0000),
            PhysAddr::new(0x900_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    hw.dma_write(SID, 0x5000_0000, &[7; 4]).unwrap();
    let mut got = [0u8; 4];
    plat.memory
        .read_slice(&mut got, GuestAddress(0x900_0000))
        .unwrap();
    assert_eq!(got, [7; 4]);
    assert_eq!(plat.driver.handle_faults().len(), 2);
}

#[test]
fn an_attach_the_hardware_does_not_complete_leaves_the_old_entries() {
    let plat = EmuPlatform::new(
        EmuLayout::default(),
        Features::default(),
        VtdConfig {
            host_address_width: 48,
            poll_limit: 1000,
            ..VtdConfig::default()
        },
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("fn").stream_ids([0x18, 0x19]))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    let group = dev.iommu_group().unwrap();
    let domain = group.default_domain().unwrap();
    domain
        .map(
            Iova::new(0x1000),
            PhysAddr::new(0x900_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    let before = [
        plat.driver.context_entry(0x18),
        plat.driver.context_entry(0x19),
    ];
    assert!(before.iter().all(|e| e.is_some_and(|e| e[0] & 1 == 1)));
    // The unit stops completing invalidations: blocking the group (no
    // context entries) cannot finish, and nothing changes.
    plat.hw.pause_invalidations(true);
    assert!(iommu
        .group_claim_dma_owner(&group, DmaOwner::new())
        .is_err());
    assert_eq!(
        [
            plat.driver.context_entry(0x18),
            plat.driver.context_entry(0x19)
        ],
        before
    );
    plat.hw.pause_invalidations(false);
    assert_eq!(group.domain().map(|d| d.id()), Some(domain.id()));
    plat.hw.dma_write(0x19, 0x1000, &[5; 4]).unwrap();
}

/// A platform on a unit with `features` (a short poll limit, so that a
/// wedged unit times out at once) and a PCI bus the driver serves.
fn wedgeable(features: Features) -> (EmuPlatform, Iommu, Bus) {
    let cfg = VtdConfig {
        host_address_width: 48,
        poll_limit: 1000,
        ..VtdConfig::default()
    };
    let plat = EmuPlatform::new(EmuLayout::default(), features, cfg).unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    (plat, iommu, bus)
}

#[test]
fn a_detach_the_unit_does_not_complete_stays_cleared_and_the_next_attach_completes_it_first() {
    // Found by the core's isolation oracle: a detach cannot be refused, so
    // its entry stays cleared in memory while the unit (its invalidation
    // held back) may still use the old one; the requester id's next
    // attach must complete that invalidation before it may succeed, or the
    // new device's DMA would reach the old domain.
    for features in [Features::default(), Features::scalable()] {
        let (plat, _iommu, bus) = wedgeable(features);
        let old = bus
            .add_device(DeviceBuilder::new("old").stream_ids([u32::from(SID)]))
            .unwrap();
        old.iommu_group()
            .unwrap()
            .default_domain()
            .unwrap()
            .map(
                Iova::new(0x1000),
                PhysAddr::new(0x900_0000),
                0x1000,
                Prot::RW,
            )
            .unwrap();
        plat.hw.dma_write(SID, 0x1000, &[1; 4]).unwrap();
        plat.hw.pause_invalidations(true);
        bus.remove_device(&old).unwrap();
        drop(old);
        // The unit still holds the old entry; a new device on the same
        // requester id cannot be attached until that is invalidated.
        let new = bus.add_device(DeviceBuilder::new("new").stream_ids([u32::from(SID)]));
        let attached = new
            .as_ref()
            .ok()
            .and_then(|d| d.iommu_group())
            .and_then(|g| g.domain())
            .is_some();
        assert!(!attached, "attached while the unit holds the old entry");
        if let Ok(d) = new {
            bus.remove_device(&d).unwrap();
        }
        plat.hw.pause_invalidations(false);
        // Back, the unit ran the queued invalidation: the removed device's
        // requester id reaches nothing.
        assert!(
            plat.hw.dma_write(SID, 0x1000, &[2; 4]).is_err(),
            "the old entry outlived its device"
        );
        let new = bus
            .add_device(DeviceBuilder::new("new").stream_ids([u32::from(SID)]))
            .unwrap();
        let domain = new.iommu_group().unwrap().default_domain().unwrap();
        assert!(
            plat.hw.dma_write(SID, 0x1000, &[2; 4]).is_err(),
            "the old domain's page is gone"
        );
        domain
            .map(
                Iova::new(0x2000),
                PhysAddr::new(0x900_1000),
                0x1000,
                Prot::RW,
            )
            .unwrap();
        plat.hw.dma_write(SID, 0x2000, &[3; 4]).unwrap();
    }
}

#[test]
fn a_domain_freed_while_the_unit_is_wedged_waits_for_its_invalidation() {
    // Its id and tables must not be reused while the unit may still hold
    // translations into them; once the unit answers, they are freed (the
    // fuzzer's leak checker found them forgotten for good before).
    let (plat, iommu, bus) = wedgeable(Features::default());
    let d = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
    d.map(Iova::new(0), PhysAddr::new(0x900_0000), 0x1000, Prot::RW)
        .unwrap();
    plat.hw.pause_invalidations(true);
    drop(d);
    assert_eq!(plat.driver.retired_domains(), 1);
    plat.hw.pause_invalidations(false);
    // The next completed invalidation reaps it.
    plat.driver
        .invalidate(&[iommu_vtd::Invalidation::IotlbGlobal])
        .unwrap();
    assert_eq!(plat.driver.retired_domains(), 0);
}

#[test]
fn a_removed_devices_pasid_tables_are_freed_and_made_again_when_it_returns() {
    // Scalable mode: a requester id's PASID directory and table live as
    // long as a device uses the id (Linux frees them on release), so a
    // bus whose devices come and go does not leak two pages per id.
    let plat = EmuPlatform::new(
        EmuLayout::default(),
        Features::scalable(),
        VtdConfig {
            host_address_width: 48,
            ..VtdConfig::default()
        },
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    // A device on the id whose default domain maps `iova` to `pa`: the
    // unit translates it through the id's PASID table.
    let use_id = |iova: u64, pa: u64| {
        let dev = bus
            .add_device(
                DeviceBuilder::new("0000:00:03.0")
                    .stream_ids([u32::from(SID)])
                    .pci(true),
            )
            .unwrap();
        let dom = dev.iommu_group().unwrap().default_domain().unwrap();
        dom.map(Iova::new(iova), PhysAddr::new(pa), 0x1000, Prot::RW)
            .unwrap();
        assert!(plat.driver.pasid_entry(u32::from(SID)).is_some());
        assert_eq!(
            plat.hw
                .translate(SID, iova, iommu_vtd_emu::Access::Read)
                .unwrap()
                .pa,
            pa
        );
        dev
    };
    let dev = use_id(0x5000, 0x90_0000);
    bus.remove_device(&dev).unwrap();
    assert_eq!(
        plat.driver.pasid_entry(u32::from(SID)),
        None,
        "tables freed"
    );
    let ctx = plat.driver.context_entry(u32::from(SID)).unwrap();
    assert_eq!(ctx[0] & 1, 0, "the context entry is cleared");
    assert!(
        plat.hw
            .translate(SID, 0x5000, iommu_vtd_emu::Access::Read)
            .is_err(),
        "the unit forgot the entry"
    );
    // Back again: new tables, the new default domain translates.
    use_id(0x6000, 0x91_0000);
    assert!(plat
        .hw
        .translate(SID, 0x5000, iommu_vtd_emu::Access::Read)
        .is_err());
}
