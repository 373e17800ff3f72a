//! Threads adding and removing devices, attaching, detaching, mapping and
//! unmapping at once must leave ids, links, references and mappings consistent.

mod common;

use common::world;
use iommu_core::testing::MockIommu;
use iommu_core::{DeviceBuilder, DomainType, Errno, Iova, PhysAddr, Prot};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;

const ROUNDS: usize = 400;

#[test]
fn concurrent_core_operations_leave_everything_consistent() {
    // Stable devices: s0 alone (attach/detach target), s1 alone (map target), s2+s3 shared.
    let w = Arc::new(world(&[
        ("s0", &[100]),
        ("s1", &[101]),
        ("s2", &[102]),
        ("s3", &[102]),
    ]));
    let mut handles = Vec::new();

    // Hot-plug: devices come and go, some joining the stable shared group.
    for t in 0..2u32 {
        let w = w.clone();
        handles.push(thread::spawn(move || {
            for i in 0..ROUNDS {
                let sid = [200 + t, 102, 300 + (i as u32 % 3)][i % 3];
                let name = format!("hot{t}-{i}");
                let d = w
                    .bus
                    .add_device(DeviceBuilder::new(&name).stream_ids([sid]))
                    .unwrap();
                let g = d.iommu_group().expect("a translated device gets a group");
                assert!(g.devices().iter().any(|x| x.name() == name));
                w.bus.remove_device(&d).unwrap();
                assert!(d.iommu_group().is_none());
            }
        }));
    }

    // Attach/detach a user domain on s0's group, mapping through it.
    {
        let w = w.clone();
        handles.push(thread::spawn(move || {
            let g = w.group_of(0);
            for i in 0..ROUNDS as u64 {
                let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
                w.iommu.attach_group(&d, &g).unwrap();
                d.map(
                    Iova::new(i << 12),
                    PhysAddr::new(0x4000_0000),
                    0x1000,
                    Prot::RW,
                )
                .unwrap();
                assert_eq!(w.mock.attached_domain("s0"), Some(d.id()));
                w.iommu.detach_group(&d, &g);
                assert_eq!(g.domain(), g.default_domain());
            }
        }));
    }

    // Map/unmap in disjoint windows of s1's default domain.
    for t in 0..2u64 {
        let w = w.clone();
        handles.push(thread::spawn(move || {
            let dom = w.group_of(1).default_domain().unwrap();
            let base = (t + 1) << 32;
            for i in 0..ROUNDS as u64 {
                let iova = Iova::new(base + i * 0x20_0000);
                let pa = PhysAddr::new(0x1_0000_0000 + i * 0x20_0000);
                let size = if i % 2 == 0 { 0x20_0000 } else { 0x3000 };
                dom.map(iova, pa, size, Prot::RW).unwrap();
                assert_eq!(
                    dom.iova_to_phys(iova.wrapping_add(0x123)),
                    Some(pa.wrapping_add(0x123))
                );
                assert_eq!(dom.unmap(iova, size), Ok(size));
                assert_eq!(dom.iova_to_phys(iova), None);
            }
        }));
    }

    // Readers: sysfs and the type file while all of that happens.
    {
        let w = w.clone();
        handles.push(thread::spawn(move || {
            for _ in 0..ROUNDS {
                let _ = w.iommu.sysfs().render();
                for id in w.iommu.group_ids() {
                    match w
                        .iommu
                        .sysfs()
                        .read(&format!("kernel/iommu_groups/{id}/type"))
                    {
                        Ok(t) => assert!(["DMA\n", "unknown\n"].contains(&t.as_str()), "{t:?}"),
                        Err(e) => assert!(matches!(e, Errno::ENOENT | Errno::ENODEV), "{e}"),
                    }
                }
            }
        }));
    }

    for h in handles {
        h.join().unwrap();
    }

    // Ids: exactly the groups the remaining devices are in, lowest first.
    let devices = w.bus.devices();
    assert_eq!(devices.len(), 4);
    let in_use: BTreeSet<u32> = devices
        .iter()
        .map(|d| d.iommu_group().unwrap().id())
        .collect();
    assert_eq!(
        w.iommu.group_ids(),
        in_use.iter().copied().collect::<Vec<_>>()
    );
    assert_eq!(in_use.len(), 3);

    for g in w.iommu.groups() {
        // References: the devices plus the one `groups()` just took.
        assert_eq!(g.refcount(), g.device_count() + 1, "group {}", g.id());
        // Links both ways match membership.
        let mut listed = w
            .iommu
            .sysfs()
            .list(&format!("kernel/iommu_groups/{}/devices", g.id()))
            .unwrap();
        let mut members: Vec<String> = g.devices().iter().map(|d| d.name().to_string()).collect();
        listed.sort();
        members.sort();
        assert_eq!(listed, members);
        for d in g.devices() {
            let back = w
                .iommu
                .sysfs()
                .resolve(&format!("{}/iommu_group", d.sysfs_dir()))
                .unwrap();
            assert_eq!(back, g.sysfs_dir());
        }
        assert_eq!(g.domain(), g.default_domain());
    }
    // No hot-plugged device left anything behind in sysfs.
    assert!(!w.iommu.sysfs().render().contains("hot"));
    // Mappings: the map target is empty again.
    assert!(MockIommu::mappings(&w.group_of(1).default_domain().unwrap()).is_empty());
}

#[test]
fn racing_adds_of_one_device_to_two_groups_let_exactly_one_win() {
    let w = world(&[]);
    for round in 0..200 {
        let dev = w
            .bus
            .add_device(DeviceBuilder::new(format!("racer{round}")))
            .unwrap();
        let (g1, g2) = (
            w.iommu.group_alloc().unwrap(),
            w.iommu.group_alloc().unwrap(),
        );
        let results: Vec<Result<(), Errno>> = thread::scope(|s| {
            let a = s.spawn(|| g1.add_device(&dev));
            let b = s.spawn(|| g2.add_device(&dev));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: {results:?}"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, Errno::EBUSY | Errno::EEXIST), "{e}");
            }
        }
        let winner = if results[0].is_ok() { &g1 } else { &g2 };
        let loser = if results[0].is_ok() { &g2 } else { &g1 };
        assert_eq!(dev.iommu_group().as_ref(), Some(winner));
        assert_eq!((winner.device_count(), loser.device_count()), (1, 0));
        let listed = w
            .iommu
            .sysfs()
            .list(&format!("{}/devices", loser.sysfs_dir()))
            .unwrap();
        assert!(listed.is_empty(), "the loser left no link: {listed:?}");
        assert_eq!(
            w.iommu
                .sysfs()
                .resolve(&format!("{}/iommu_group", dev.sysfs_dir()))
                .unwrap(),
            winner.sysfs_dir()
        );
        w.bus.remove_device(&dev).unwrap();
    }
}
