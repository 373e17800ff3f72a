//! The failure-injection walk, extended to the driver: the emulated SMMU
//! stalls (a full queue, a CMD_SYNC that never completes), refuses a
//! command (CERROR_ILL), or raises a global error, at the n-th command of
//! an operation, for every n the operation reaches. A failed operation
//! leaves the core (ids, links, references, domains), the STEs in memory
//! and what every device's DMA reaches exactly as before.

use iommu_core::testing::Snapshot;
use iommu_core::{
    Bus, Device, DeviceBuilder, DmaOwner, Domain, DomainType, Errno, Iommu, IotlbSyncError, Iova,
    PhysAddr, Prot,
};
use iommu_smmuv3::emu::{EmuLayout, EmuPlatform};
use iommu_smmuv3::Smmuv3Config;
use iommu_smmuv3_emu::{Access, CommandFailure, Features};
use std::sync::Arc;

struct World {
    plat: EmuPlatform,
    iommu: Iommu,
    bus: Bus,
    devs: Vec<Arc<Device>>,
    user: Domain,
}

const SIDS: [u32; 3] = [1, 2, 3];
const PROBES: [u64; 2] = [0x1000, 0x2000];

fn world(cmdq_log2: u32) -> World {
    let plat = EmuPlatform::new(
        EmuLayout {
            memory: 32 << 20,
            tables: 0x10_0000,
            tables_size: 15 << 20,
        },
        Features::default(),
        Smmuv3Config {
            poll_limit: 200,
            cmdq_log2,
            ..Smmuv3Config::default()
        },
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let devs: Vec<_> = [("a", [1, 2]), ("b", [3, 3])]
        .iter()
        .map(|(n, ids)| {
            bus.add_device(DeviceBuilder::new(*n).stream_ids(*ids))
                .unwrap()
        })
        .collect();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    for (i, d) in devs.iter().enumerate() {
        let dom = d.iommu_group().unwrap().default_domain().unwrap();
        dom.map(
            Iova::new(0x1000),
            PhysAddr::new(0x100_0000 + i as u64 * 0x1000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    }
    let user = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
    user.map(
        Iova::new(0x2000),
        PhysAddr::new(0x180_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    World {
        plat,
        iommu,
        bus,
        devs,
        user,
    }
}

/// Everything a failed operation must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    core: Snapshot,
    stes: Vec<Option<[u64; 4]>>,
    dma: Vec<Option<u64>>,
}

fn state(w: &World) -> State {
    // Let the SMMU run what it holds (a stalled queue), then look.
    w.plat.hw.pause_commands(false);
    let dma = SIDS
        .iter()
        .flat_map(|&sid| {
            PROBES.iter().map(move |&iova| {
                w.plat
                    .hw
                    .translate(sid, iova, Access::Read)
                    .ok()
                    .map(|s| s.pa)
            })
        })
        .collect();
    State {
        core: Snapshot::take(&w.iommu, &w.bus, std::slice::from_ref(&w.user)),
        stes: SIDS.iter().map(|&s| w.plat.driver.ste(s)).collect(),
        dma,
    }
}

/// Fails the n-th command of `op` for every n it reaches, `how`; returns
/// how many failures surfaced.
fn walk(how: CommandFailure, cmdq_log2: u32, op: impl Fn(&World) -> Result<(), Errno>) -> u32 {
    let mut surfaced = 0;
    for n in 0..64 {
        let w = world(cmdq_log2);
        let before = state(&w);
        w.plat.hw.fail_command(n, how);
        let result = op(&w);

        if w.plat.hw.command_failure_pending() {
            assert!(
                result.is_ok(),
                "failed without the injected failure: {result:?}"
            );
            return surfaced;
        }
        if let Err(e) = result {
            surfaced += 1;
            assert!(
                matches!(e, Errno::ETIMEDOUT | Errno::EIO),
                "{how:?} at command {n}: {e:?}"
            );
            assert_eq!(
                state(&w),
                before,
                "{how:?} at command {n} failed ({e:?}) and changed state"
            );
        }
    }
    panic!("the operation never ran out of commands");
}

fn attach_user(w: &World) -> Result<(), Errno> {
    let g = w.devs[0].iommu_group().unwrap();
    w.iommu.attach_group(&w.user, &g)
}

fn claim(w: &World) -> Result<(), Errno> {
    let g = w.devs[0].iommu_group().unwrap();
    w.iommu.group_claim_dma_owner(&g, DmaOwner::new())
}

fn to_identity(w: &World) -> Result<(), Errno> {
    let id = w.devs[1].iommu_group().unwrap().id();
    w.iommu
        .sysfs()
        .write(&format!("kernel/iommu_groups/{id}/type"), "identity")
        .map(drop)
}

const FAILURES: [CommandFailure; 4] = [
    CommandFailure::Stall,
    CommandFailure::Illegal,
    CommandFailure::GlobalError(1 << 8), // SFM_ERR: service failure mode
    CommandFailure::GlobalError(1 << 2), // EVTQ_ABT_ERR
];

#[test]
fn a_failed_attach_leaves_everything_as_it_was() {
    for how in FAILURES {
        assert!(walk(how, 8, attach_user) > 0, "{how:?} never surfaced");
    }
}

#[test]
fn a_failed_claim_leaves_everything_as_it_was() {
    for how in FAILURES {
        assert!(walk(how, 8, claim) > 0, "{how:?} never surfaced");
    }
}

#[test]
fn a_failed_default_domain_change_leaves_everything_as_it_was() {
    for how in FAILURES {
        walk(how, 8, to_identity);
    }
}

#[test]
fn a_full_command_queue_fails_with_etimedout_and_changes_nothing() {
    // Two entries: the STE change's CFGI and CMD_SYNC fill it, and a stall
    // keeps it full.
    assert!(walk(CommandFailure::Stall, 1, attach_user) > 0);
}

#[test]
fn an_unmap_whose_invalidation_fails_is_invalidated_before_anything_else_runs() {
    for how in [CommandFailure::Illegal, CommandFailure::Stall] {
        let w = world(8);
        let d = w.devs[0].iommu_group().unwrap().default_domain().unwrap();
        assert!(w.plat.hw.translate(1, 0x1000, Access::Read).is_ok());
        w.plat.hw.fail_command(0, how);
        let unmapped = d.unmap(Iova::new(0x1000), 0x1000);
        match how {
            // The refused TLBI was skipped and sent again at once: done.
            CommandFailure::Illegal => assert_eq!(unmapped, Ok(0x1000)),
            // A stalled queue completes nothing: the caller is told.
            _ => assert_eq!(
                unmapped,
                Err(IotlbSyncError {
                    removed: 0x1000,
                    errno: Errno::ETIMEDOUT
                })
            ),
        }
        if how == CommandFailure::Stall {
            // Whatever the SMMU does next starts with the invalidation.
            w.plat.hw.pause_commands(false);
        }
        assert!(
            w.plat.hw.translate(1, 0x1000, Access::Read).is_err(),
            "{how:?}: a stale translation outlived the retry"
        );
    }
}

#[test]
fn a_strict_unmap_on_a_wedged_smmu_is_not_reported_as_done() {
    // The reproduction: map, translate once (the TLB holds it),
    // pause the SMMU, unmap.
    let w = world(8);
    let d = w.devs[0].iommu_group().unwrap().default_domain().unwrap();
    assert_eq!(
        w.plat.hw.translate(1, 0x1000, Access::Read).unwrap().pa,
        0x100_0000
    );
    w.plat.hw.pause_commands(true);
    let e = d.unmap(Iova::new(0x1000), 0x1000).unwrap_err();
    assert_eq!((e.removed, e.errno), (0x1000, Errno::ETIMEDOUT));
    assert!(d.invalidation_owed());
    // The caller was told: a remap of the same IOVA may still meet the
    // old page, which is why the DMA layer never does that.
    d.map(
        Iova::new(0x1000),
        PhysAddr::new(0x140_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        w.plat.hw.translate(1, 0x1000, Access::Read).unwrap().pa,
        0x100_0000,
        "the SMMU's TLB still serves the old page (the hazard reported)"
    );
    assert_eq!(d.flush_iotlb_all(), Err(Errno::ETIMEDOUT));
    w.plat.hw.pause_commands(false);
    d.flush_iotlb_all().unwrap();
    assert!(!d.invalidation_owed());
    assert_eq!(
        w.plat.hw.translate(1, 0x1000, Access::Read).unwrap().pa,
        0x140_0000
    );
    assert!(w.plat.driver.stats().sync_timeouts > 0);
}

#[test]
fn a_domain_freed_on_a_wedged_smmu_keeps_its_asid_and_tables_until_a_sync_completes() {
    let w = world(8);
    let dom = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    let asid = |d: &Domain| {
        d.ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<iommu_smmuv3::emu::EmuDomain>())
            .and_then(|d| d.asid())
            .unwrap()
    };
    let old_asid = asid(&dom);
    dom.map(
        Iova::new(0x3000),
        PhysAddr::new(0x1c0_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    // Attached once, so the SMMU may have cached its translations.
    let g = w.devs[0].iommu_group().unwrap();
    let owner = DmaOwner::new();
    w.iommu.group_claim_dma_owner(&g, owner).unwrap();
    w.iommu.attach_group(&dom, &g).unwrap();
    w.iommu.detach_group(&dom, &g);
    w.iommu.group_release_dma_owner(&g);
    w.plat.hw.pause_commands(true);
    drop(dom);
    // Its TLBI did not complete: the ASID, CD and tables wait.
    assert_eq!(w.plat.driver.retired_domains(), 1);
    let next = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert_ne!(
        asid(&next),
        old_asid,
        "an ASID the TLB may still hold was reused"
    );
    w.plat.hw.pause_commands(false);
    w.plat.driver.sync().unwrap();
    assert_eq!(w.plat.driver.retired_domains(), 0);
    drop(next);
    let again = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert_eq!(asid(&again), old_asid, "released once the SMMU caught up");
}

#[test]
fn a_domain_no_smmu_has_seen_is_freed_at_once_even_on_a_wedged_smmu() {
    // Never attached: no STE named its CD or VMID, so no SMMU can hold
    // anything of it; its tag and tables go at once.
    let w = world(8);
    let dom = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    dom.map(
        Iova::new(0x3000),
        PhysAddr::new(0x1c0_0000),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    w.plat.hw.pause_commands(true);
    drop(dom);
    assert_eq!(w.plat.driver.retired_domains(), 0);
    w.plat.hw.pause_commands(false);
}
