//! Groups: ids, references, release, membership, sysfs links, notifiers.

mod common;

use common::{snapshot, world, World};
use iommu_core::testing::{MockConfig, MockIommu, MockOp};
use iommu_core::{
    Bus, DeviceBuilder, DomainType, EntryKind, Errno, FailPoint, GroupAction, Iommu, IommuConfig,
    Iova, Notify, PhysAddr, Prot, ReservedRegion, ResvType,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[test]
fn group_id_is_lowest_free() {
    let iommu = Iommu::default();
    let g0 = iommu.group_alloc().unwrap();
    let g1 = iommu.group_alloc().unwrap();
    let g2 = iommu.group_alloc().unwrap();
    assert_eq!((g0.id(), g1.id(), g2.id()), (0, 1, 2));
    drop(g1);
    assert_eq!(iommu.group_ids(), vec![0, 2]);
    let again = iommu.group_alloc().unwrap();
    assert_eq!(again.id(), 1, "a released id is reused, lowest first");
    assert_eq!(iommu.group_alloc().unwrap().id(), 3);
}

#[test]
fn group_ids_stay_lowest_free_through_random_allocs_and_releases() {
    let iommu = Iommu::default();
    let mut live: Vec<Option<iommu_core::Group>> = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let taken: std::collections::BTreeSet<u32> =
            live.iter().flatten().map(|g| g.id()).collect();
        if state.is_multiple_of(3) && !taken.is_empty() {
            let k = (state >> 8) as usize % live.len();
            live[k] = None;
        } else {
            let want = (0..).find(|i| !taken.contains(i)).unwrap();
            let g = iommu.group_alloc().unwrap();
            assert_eq!(g.id(), want, "the lowest free id");
            live.push(Some(g));
        }
    }
}

#[test]
fn independent_subsystems_have_independent_ids() {
    let a = Iommu::default();
    let b = Iommu::default();
    let ga = a.group_alloc().unwrap();
    let gb = b.group_alloc().unwrap();
    assert_eq!((ga.id(), gb.id()), (0, 0));
    assert!(b.group_get_by_id(1).is_none());
}

#[test]
fn group_alloc_creates_its_sysfs_directory() {
    let iommu = Iommu::default();
    let g = iommu.group_alloc().unwrap();
    assert_eq!(
        iommu.sysfs().list("kernel/iommu_groups/0").unwrap(),
        vec!["devices", "reserved_regions", "type"]
    );
    assert_eq!(
        iommu.sysfs().read("kernel/iommu_groups/0/type").unwrap(),
        "unknown\n"
    );
    assert_eq!(
        iommu
            .sysfs()
            .read("kernel/iommu_groups/0/reserved_regions")
            .unwrap(),
        ""
    );
    assert!(iommu
        .sysfs()
        .list("kernel/iommu_groups/0/devices")
        .unwrap()
        .is_empty());
    drop(g);
}

#[test]
fn group_get_of_a_device_takes_a_reference() {
    let w = world(&[("a", &[1]), ("plain", &[])]);
    let g = iommu_core::Group::get(&w.devs[0]).unwrap();
    assert_eq!(g.refcount(), 2, "the device's and ours");
    assert!(iommu_core::Group::get(&w.devs[1]).is_none());
}

#[test]
fn group_get_by_id_takes_a_reference() {
    let iommu = Iommu::default();
    let g = iommu.group_alloc().unwrap();
    assert_eq!(g.refcount(), 1);
    let again = iommu.group_get_by_id(0).unwrap();
    assert_eq!(g.refcount(), 2);
    assert_eq!(again, g);
    drop(again);
    assert_eq!(g.refcount(), 1);
    assert!(iommu.group_get_by_id(7).is_none());
}

#[test]
fn group_is_released_exactly_once_when_the_last_reference_goes() {
    let iommu = Iommu::default();
    let g = iommu.group_alloc().unwrap();
    let releases = Arc::new(AtomicUsize::new(0));
    let r = releases.clone();
    g.set_iommu_data(
        Arc::new(42u32),
        Some(Box::new(move |data| {
            assert_eq!(*data.downcast::<u32>().unwrap(), 42);
            r.fetch_add(1, Ordering::SeqCst);
        })),
    );
    let held = g.clone();
    drop(g);
    assert_eq!(releases.load(Ordering::SeqCst), 0, "still held");
    assert!(iommu.sysfs().list("kernel/iommu_groups/0").is_ok());
    drop(held);
    assert_eq!(releases.load(Ordering::SeqCst), 1);
    assert_eq!(
        iommu.sysfs().list("kernel/iommu_groups/0").unwrap_err(),
        Errno::ENOENT
    );
    assert!(iommu.group_ids().is_empty());
    assert!(iommu.log_lines().contains(&"Releasing group 0".to_string()));
}

#[test]
fn group_iommu_data_replaced_releases_the_old_data() {
    let iommu = Iommu::default();
    let g = iommu.group_alloc().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n1 = n.clone();
    g.set_iommu_data(
        Arc::new(1u8),
        Some(Box::new(move |_| {
            n1.fetch_add(1, Ordering::SeqCst);
        })),
    );
    g.set_iommu_data(Arc::new(2u8), None);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(*g.iommu_data().unwrap().downcast::<u8>().unwrap(), 2);
}

#[test]
fn group_lives_while_its_devices_reference_it() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    assert_eq!(g.refcount(), 2, "the device and this holder");
    drop(g);
    assert_eq!(w.iommu.group_ids(), vec![0]);
    w.bus.remove_device(&w.devs[0]).unwrap();
    assert!(
        w.iommu.group_ids().is_empty(),
        "released once the device left"
    );
}

#[test]
fn add_device_links_device_and_group_both_ways() {
    let w = world(&[("a", &[1])]);
    let sysfs = w.iommu.sysfs();
    assert_eq!(
        sysfs.list("kernel/iommu_groups/0/devices").unwrap(),
        vec!["a"]
    );
    assert_eq!(
        sysfs.kind("kernel/iommu_groups/0/devices/a").unwrap(),
        EntryKind::Link("../../../../devices/platform/a".into())
    );
    assert_eq!(
        sysfs.resolve("kernel/iommu_groups/0/devices/a").unwrap(),
        "devices/platform/a"
    );
    assert_eq!(
        sysfs.read_link("devices/platform/a/iommu_group").unwrap(),
        "../../../kernel/iommu_groups/0"
    );
    assert_eq!(
        sysfs.resolve("bus/platform/devices/a/iommu_group").unwrap(),
        "kernel/iommu_groups/0"
    );
    assert_eq!(
        sysfs.read("devices/platform/a/iommu_group/type").unwrap(),
        "DMA\n"
    );
}

#[test]
fn add_device_logs_adding_device_to_group() {
    let w = world(&[("a", &[1]), ("b", &[2])]);
    let log = w.iommu.log_lines();
    assert!(
        log.contains(&"Adding device a to group 0".to_string()),
        "{log:?}"
    );
    assert!(log.contains(&"Adding device b to group 1".to_string()));
}

#[test]
fn add_device_retries_clashing_names_with_a_suffix() {
    let iommu = Iommu::default();
    let mock = Arc::new(MockIommu::new());
    let g = iommu.group_alloc().unwrap();
    let (mut buses, mut devs) = (Vec::new(), Vec::new());
    for bus_name in ["pci", "platform", "amba"] {
        let bus = Bus::new(&iommu, bus_name).unwrap();
        iommu.bus_set_iommu(&bus, mock.clone()).unwrap();
        devs.push(bus.add_device(DeviceBuilder::new("dev")).unwrap());
        buses.push(bus); // a bus dropped takes its devices with it
    }
    for d in &devs {
        g.add_device(d).unwrap();
    }
    assert_eq!(
        iommu.sysfs().list("kernel/iommu_groups/0/devices").unwrap(),
        vec!["dev", "dev.0", "dev.1"]
    );
    assert_eq!(
        iommu
            .sysfs()
            .resolve("kernel/iommu_groups/0/devices/dev.1")
            .unwrap(),
        "devices/amba/dev"
    );
    // Removal frees exactly the suffixed name.
    g.remove_device(&devs[1]);
    assert_eq!(
        iommu.sysfs().list("kernel/iommu_groups/0/devices").unwrap(),
        vec!["dev", "dev.1"]
    );
}

#[test]
fn add_device_to_a_second_group_is_ebusy() {
    let w = world(&[("a", &[1])]);
    let before = common::snapshot(&w);
    let other = w.iommu.group_alloc().unwrap();
    assert_eq!(other.add_device(&w.devs[0]).unwrap_err(), Errno::EBUSY);
    drop(other);
    assert_eq!(common::snapshot(&w), before);
}

#[test]
fn remove_device_is_the_exact_reverse_of_add() {
    let w = world(&[("a", &[1]), ("b", &[1])]);
    let g = w.group_of(0);
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    g.register_notifier(move |ev| {
        e.lock().unwrap().push((
            ev.action,
            ev.dev.name().to_string(),
            ev.dev.iommu_group().is_some(),
        ));
        Notify::Ok
    });
    g.remove_device(&w.devs[1]);
    assert_eq!(
        *events.lock().unwrap(),
        vec![(GroupAction::DelDevice, "b".into(), true)],
        "listeners hear before it goes"
    );
    assert_eq!(g.device_count(), 1);
    assert!(w.devs[1].iommu_group().is_none());
    assert_eq!(
        w.iommu
            .sysfs()
            .list("kernel/iommu_groups/0/devices")
            .unwrap(),
        vec!["a"]
    );
    assert_eq!(
        w.iommu
            .sysfs()
            .read_link("devices/platform/b/iommu_group")
            .unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(
        w.mock.attached_domain("b"),
        None,
        "detached from the group's domain"
    );
    assert!(w
        .iommu
        .log_lines()
        .contains(&"Removing device b from group 0".to_string()));
}

#[test]
fn for_each_dev_stops_at_the_first_nonzero_result() {
    let w = world(&[("a", &[1]), ("b", &[1]), ("c", &[1])]);
    let g = w.group_of(0);
    let mut seen = Vec::new();
    let r = g.for_each_dev(|d| {
        seen.push(d.name().to_string());
        if d.name() == "b" {
            -16
        } else {
            0
        }
    });
    assert_eq!(r, -16);
    assert_eq!(seen, vec!["a", "b"]);
    assert_eq!(g.for_each_dev(|_| 0), 0);
    assert_eq!(g.device_count(), 3);
}

#[test]
fn set_name_creates_and_removes_the_name_file() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    g.set_name(Some("vfio-test")).unwrap();
    assert_eq!(g.name().as_deref(), Some("vfio-test"));
    assert_eq!(
        w.iommu.sysfs().read("kernel/iommu_groups/0/name").unwrap(),
        "vfio-test\n"
    );
    g.set_name(None).unwrap();
    assert_eq!(
        w.iommu
            .sysfs()
            .read("kernel/iommu_groups/0/name")
            .unwrap_err(),
        Errno::ENOENT
    );
}

#[test]
fn group_notifiers_run_in_registration_order_and_can_unregister() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let order = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(Mutex::new(Vec::new()));
    for n in 0..3 {
        let o = order.clone();
        let ids2 = ids.clone();
        let g2 = g.downgrade();
        let id = g.register_notifier(move |_| {
            o.lock().unwrap().push(n);
            if n == 0 {
                // The first listener unregisters the third before it runs.
                let third = ids2.lock().unwrap()[2];
                g2.upgrade().unwrap().unregister_notifier(third);
            }
            Notify::Done
        });
        ids.lock().unwrap().push(id);
    }
    w.bus.bind_driver(&w.devs[0]);
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 0, 1],
        "BIND and BOUND; the third never ran"
    );
    assert!(
        !g.unregister_notifier(ids.lock().unwrap()[2]),
        "already gone"
    );
    assert!(g.unregister_notifier(ids.lock().unwrap()[0]));
    assert_eq!(g.notifier().len(), 1);
}

#[test]
fn a_stopping_listener_ends_the_chain() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let ran = Arc::new(AtomicUsize::new(0));
    g.register_notifier(|_| Notify::Stop);
    let r = ran.clone();
    g.register_notifier(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Notify::Ok
    });
    w.bus.bind_driver(&w.devs[0]);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn devices_sharing_a_stream_id_share_a_group() {
    let w = world(&[("a", &[1]), ("b", &[2]), ("c", &[2, 3]), ("d", &[3])]);
    let ids: Vec<u32> = (0..4).map(|i| w.group_of(i).id()).collect();
    assert_eq!(ids, vec![0, 1, 1, 1]);
    assert_eq!(w.group_of(1).device_count(), 3);
}

#[test]
fn a_device_the_driver_does_not_translate_gets_no_group() {
    let w = world(&[("a", &[1]), ("untranslated", &[])]);
    assert!(w.devs[1].iommu_group().is_none());
    assert_eq!(w.iommu.group_ids(), vec![0]);
}

#[allow(dead_code)]
fn _uses(_: World) {}

#[test]
fn sysfs_refuses_writes_to_read_only_files_and_wrong_kinds() {
    let w = world(&[("a", &[1])]);
    let s = w.iommu.sysfs();
    assert_eq!(
        s.write("kernel/iommu_groups/0/reserved_regions", "x")
            .unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(
        s.write("kernel/iommu_groups/0", "x").unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        s.write("kernel/iommu_groups/9/type", "DMA").unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(
        s.list("kernel/iommu_groups/0/type").unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(s.read("kernel/iommu_groups/0").unwrap_err(), Errno::EINVAL);
    assert_eq!(
        s.read_link("kernel/iommu_groups/0/type").unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(s.read("").unwrap_err(), Errno::EINVAL);
    assert_eq!(s.list("/").unwrap(), vec!["bus", "devices", "kernel"]);
    assert_eq!(
        s.read("/kernel/iommu_groups/0/type").unwrap(),
        "DMA\n",
        "a leading slash is accepted"
    );
}

#[test]
fn domain_ids_are_per_subsystem() {
    let a = world(&[("a", &[1])]);
    let b = world(&[("a", &[1])]);
    assert_eq!(
        a.group_of(0).default_domain().unwrap().id(),
        b.group_of(0).default_domain().unwrap().id()
    );
}

#[test]
fn a_stream_id_belongs_to_exactly_one_group() {
    // A owns id 1 and B id 2; C carries both, so it could only join one
    // group by letting that group's domain translate the other's id.
    let w = world(&[("a", &[1]), ("b", &[2])]);
    let (ga, gb) = (w.group_of(0), w.group_of(1));
    let before = snapshot(&w);
    let c = w
        .bus
        .add_device(DeviceBuilder::new("c").stream_ids([1, 2]))
        .unwrap();
    assert!(c.iommu_group().is_none(), "refused");
    assert_eq!(snapshot(&w).ids, before.ids);
    assert_eq!(ga.device_count(), 1);
    assert_eq!(gb.device_count(), 1);
    assert!(w
        .iommu
        .log_lines()
        .iter()
        .any(|l| l.contains("c: stream ids span IOMMU groups 0 and 1")));
    assert_eq!(
        w.mock.attached_domain("b"),
        gb.default_domain().map(|d| d.id())
    );
    // The same holds when C is grouped directly through the driver op.
    assert_eq!(w.iommu.group_get_for_dev(&c).unwrap_err(), Errno::EINVAL);
    // A device sharing only A's id still joins A.
    let d = w
        .bus
        .add_device(DeviceBuilder::new("d").stream_ids([1, 3]))
        .unwrap();
    assert_eq!(d.iommu_group(), Some(ga.clone()));
}

#[test]
fn a_failed_add_does_not_leave_its_stream_ids_behind() {
    // C fails to join; its own id 7 must not send a later device into the
    // group C was headed for.
    let w = world(&[("a", &[1])]);
    let ga = w.group_of(0);
    w.mock.fail_after(MockOp::Attach, 0);
    let c = w
        .bus
        .add_device(DeviceBuilder::new("c").stream_ids([1, 7]))
        .unwrap();
    assert!(c.iommu_group().is_none());
    let d = w
        .bus
        .add_device(DeviceBuilder::new("d").stream_ids([7]))
        .unwrap();
    assert_ne!(d.iommu_group(), Some(ga), "id 7 is nobody's");
}

#[test]
fn a_stream_id_is_free_again_once_its_last_user_is_released() {
    let w = world(&[("a", &[1]), ("b", &[1])]);
    let g = w.group_of(0);
    w.bus.remove_device(&w.devs[0]).unwrap();
    // B still holds id 1 for the group.
    let c = w
        .bus
        .add_device(DeviceBuilder::new("c").stream_ids([1]))
        .unwrap();
    assert_eq!(c.iommu_group(), Some(g.clone()));
    w.bus.remove_device(&w.devs[1]).unwrap();
    w.bus.remove_device(&c).unwrap();
    drop(g);
    let d = w
        .bus
        .add_device(DeviceBuilder::new("d").stream_ids([1]))
        .unwrap();
    assert_eq!(d.iommu_group().map(|g| g.id()), Some(0));
    assert_eq!(d.iommu_group().unwrap().device_count(), 1);
}

/// A group whose default-domain allocation failed when its first device
/// joined: the device is in the group, on no domain.
fn group_without_default_domain() -> World {
    let w = common::world_with(IommuConfig::default(), MockConfig::default(), &[]);
    w.iommu.fail_points().arm(FailPoint::DomainAlloc, 0);
    let direct = ReservedRegion::new(0x7000_0000, 0x2000, Prot::RW, ResvType::Direct);
    w.bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]).resv_region(direct))
        .unwrap();
    let a = w.bus.find_device("a").unwrap();
    let g = a.iommu_group().expect("joined without a default domain");
    assert_eq!((g.default_domain(), g.domain()), (None, None));
    World { devs: vec![a], ..w }
}

#[test]
fn a_failed_join_leaves_the_group_without_the_default_domain_it_made() {
    let w = group_without_default_domain();
    let g = w.group_of(0);
    w.mock.fail_after(MockOp::Attach, 1); // the first device's attach works
    let b = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]))
        .unwrap();
    assert!(b.iommu_group().is_none(), "b failed to join");
    assert_eq!((g.default_domain(), g.domain()), (None, None));
    assert_eq!(g.device_count(), 1);
    assert_eq!(
        w.mock.attached_domain("a"),
        None,
        "core and hardware agree: a is on no domain"
    );
}

#[test]
fn a_group_without_a_default_domain_gets_one_for_every_device() {
    let w = group_without_default_domain();
    let g = w.group_of(0);
    let b = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]))
        .unwrap();
    assert_eq!(b.iommu_group(), Some(g.clone()));
    let dd = g.default_domain().expect("made now");
    assert_eq!(g.domain(), Some(dd.clone()));
    for dev in ["a", "b"] {
        assert_eq!(w.mock.attached_domain(dev), Some(dd.id()), "{dev}");
    }
    // a's direct region was mapped too, and goes when a leaves.
    assert_eq!(
        dd.iova_to_phys(Iova::new(0x7000_1000)),
        Some(PhysAddr::new(0x7000_1000))
    );
    w.bus.remove_device(&w.devs[0]).unwrap();
    assert_eq!(dd.iova_to_phys(Iova::new(0x7000_1000)), None);
}

#[test]
fn store_type_records_the_new_default_domains_direct_maps_so_removal_undoes_them() {
    let direct = ReservedRegion::new(0x7000_0000, 0x2000, Prot::RW, ResvType::Direct);
    let w = common::world_with(IommuConfig::default(), MockConfig::default(), &[]);
    let a = w
        .bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]).resv_region(direct))
        .unwrap();
    let _b = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]))
        .unwrap();
    let g = a.iommu_group().unwrap();
    let path = format!("{}/type", g.sysfs_dir());
    w.iommu.sysfs().write(&path, "identity").unwrap();
    w.iommu.sysfs().write(&path, "DMA").unwrap();
    let dd = g.default_domain().unwrap();
    assert_eq!(dd.ty(), DomainType::Dma);
    assert_eq!(
        dd.iova_to_phys(Iova::new(0x7000_0000)),
        Some(PhysAddr::new(0x7000_0000))
    );
    // a leaves; b stays, so the domain lives on without a's identity maps.
    w.bus.remove_device(&a).unwrap();
    assert_eq!(dd.iova_to_phys(Iova::new(0x7000_0000)), None);
    assert!(MockIommu::mappings(&dd).is_empty());
}

#[test]
fn a_failed_add_device_unmaps_the_direct_maps_it_created() {
    let w = world(&[("a", &[1])]);
    let dd = w.group_of(0).default_domain().unwrap();
    let direct = ReservedRegion::new(0x7000_0000, 0x3000, Prot::RW, ResvType::Direct);
    w.mock.fail_after(MockOp::Attach, 0);
    let b = w
        .bus
        .add_device(DeviceBuilder::new("b").stream_ids([1]).resv_region(direct))
        .unwrap();
    assert!(b.iommu_group().is_none());
    assert!(
        MockIommu::mappings(&dd).is_empty(),
        "no identity map of b's region stays in a's domain"
    );
}

#[test]
fn bus_set_iommu_warns_about_a_device_already_in_a_group() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("early").stream_ids([1]))
        .unwrap();
    let g = iommu.group_alloc().unwrap();
    g.add_device(&dev).unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(MockIommu::new()))
        .unwrap();
    assert!(iommu
        .log_lines()
        .iter()
        .any(|l| l.starts_with("WARNING: early: already in an IOMMU group")));
    assert_eq!(dev.iommu_group(), Some(g));
}
