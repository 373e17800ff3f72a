//! Buses: setting ops, the bus walk, and the core's bus notifier.

mod common;

use common::world;
use iommu_core::testing::{MockConfig, MockIommu, MockOp};
use iommu_core::{Bus, BusAction, DeviceBuilder, Errno, GroupAction, Iommu, Notify};
use std::sync::{Arc, Mutex};

#[test]
fn bus_set_iommu_twice_is_ebusy() {
    let w = world(&[("a", &[1])]);
    let e = w
        .iommu
        .bus_set_iommu(&w.bus, Arc::new(MockIommu::new()))
        .unwrap_err();
    assert_eq!(e, Errno::EBUSY);
    assert_eq!(w.bus.notifier().len(), 1, "no second core listener");
}

#[test]
fn bus_set_iommu_adds_every_device_already_there() {
    let w = world(&[("a", &[1]), ("b", &[2]), ("c", &[3])]);
    assert_eq!(w.iommu.group_ids(), vec![0, 1, 2]);
    for (i, d) in w.devs.iter().enumerate() {
        assert_eq!(d.iommu_group().unwrap().id(), i as u32);
    }
}

#[test]
fn bus_set_iommu_stops_at_and_returns_the_first_error_and_undoes_it_all() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    for (n, id) in [("a", 1), ("b", 2), ("c", 3)] {
        bus.add_device(DeviceBuilder::new(n).stream_ids([id]))
            .unwrap();
    }
    let mock = Arc::new(MockIommu::new());
    mock.fail_after(MockOp::AddDevice, 1);
    let before = iommu.sysfs().render();
    assert_eq!(
        iommu.bus_set_iommu(&bus, mock.clone()).unwrap_err(),
        Errno::ENOMEM
    );
    assert!(bus.iommu_ops().is_none());
    assert!(bus.notifier().is_empty());
    assert!(
        iommu.group_ids().is_empty(),
        "the device added before the failure was removed again"
    );
    assert_eq!(iommu.sysfs().render(), before);
    // And it can be set afterwards.
    iommu.bus_set_iommu(&bus, mock).unwrap();
    assert_eq!(iommu.group_ids(), vec![0, 1, 2]);
}

#[test]
fn bus_set_iommu_with_a_driver_without_add_device_is_enodev() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    bus.add_device(DeviceBuilder::new("a").stream_ids([1]))
        .unwrap();
    let cfg = MockConfig {
        add_device: false,
        ..MockConfig::default()
    };
    assert_eq!(
        iommu
            .bus_set_iommu(&bus, Arc::new(MockIommu::with_config(cfg)))
            .unwrap_err(),
        Errno::ENODEV
    );
    assert!(bus.iommu_ops().is_none());
}

#[test]
fn bus_add_device_event_runs_the_driver_add_op() {
    let w = world(&[]);
    let d = w
        .bus
        .add_device(DeviceBuilder::new("late").stream_ids([9]))
        .unwrap();
    assert_eq!(d.iommu_group().unwrap().id(), 0);
    assert_eq!(
        w.iommu
            .sysfs()
            .list("kernel/iommu_groups/0/devices")
            .unwrap(),
        vec!["late"]
    );
}

#[test]
fn bus_del_device_event_runs_the_remove_op_only_for_grouped_devices() {
    let w = world(&[("a", &[1]), ("plain", &[])]);
    w.bus.remove_device(&w.devs[1]).unwrap();
    assert_eq!(w.iommu.group_ids(), vec![0]);
    w.bus.remove_device(&w.devs[0]).unwrap();
    assert!(w.iommu.group_ids().is_empty());
    assert_eq!(
        w.iommu.sysfs().list("devices/platform").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(w.bus.remove_device(&w.devs[0]).unwrap_err(), Errno::ENODEV);
}

#[test]
fn bus_driver_events_are_republished_on_the_group_chain_and_others_dropped() {
    let w = world(&[("a", &[1]), ("plain", &[])]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    w.group_of(0).register_notifier(move |ev| {
        s.lock().unwrap().push(ev.action);
        Notify::Ok
    });
    w.bus.bind_driver(&w.devs[0]);
    w.bus.unbind_driver(&w.devs[0]);
    w.bus.notify(BusAction::DriverNotBound, &w.devs[0]);
    w.bus.notify(BusAction::RemovedDevice, &w.devs[0]);
    w.bus.bind_driver(&w.devs[1]); // no group: nothing to republish to
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            GroupAction::BindDriver,
            GroupAction::BoundDriver,
            GroupAction::UnbindDriver,
            GroupAction::UnboundDriver
        ]
    );
}

#[test]
fn bus_refuses_duplicate_names_and_bad_names() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    assert_eq!(Bus::new(&iommu, "pci").unwrap_err(), Errno::EEXIST);
    assert_eq!(Bus::new(&iommu, "a/b").unwrap_err(), Errno::EINVAL);
    bus.add_device(DeviceBuilder::new("x")).unwrap();
    assert_eq!(
        bus.add_device(DeviceBuilder::new("x")).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(
        bus.add_device(DeviceBuilder::new("")).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(bus.devices().len(), 1);
}

#[test]
fn device_names_must_be_one_path_component() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let long = "x".repeat(256);
    for bad in [".", "..", "", "a/b", "a\0b", long.as_str()] {
        assert_eq!(
            bus.add_device(DeviceBuilder::new(bad)).unwrap_err(),
            Errno::EINVAL,
            "{bad:?}"
        );
        assert_eq!(Bus::new(&iommu, bad).unwrap_err(), Errno::EINVAL, "{bad:?}");
    }
    assert!(bus.devices().is_empty());
    bus.add_device(DeviceBuilder::new("x".repeat(255))).unwrap();
}

#[test]
fn device_directories_must_lie_under_devices() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for bad in [
        "",
        "devices",
        "devices/",
        "/devices/x",
        "devices//x",
        "devices/./x",
        "devices/x/../y",
        "devices/..",
        "kernel/iommu_groups/0",
        "bus/pci/devices/x",
        "sys/devices/x",
    ] {
        assert_eq!(
            bus.add_device(DeviceBuilder::new("d").sysfs_dir(bad))
                .unwrap_err(),
            Errno::EINVAL,
            "{bad:?}"
        );
    }
    let before = iommu.sysfs().render();
    assert!(bus.devices().is_empty());
    // The next group still gets its directory, and id 0.
    let g = iommu.group_alloc().unwrap();
    assert_eq!(g.id(), 0);
    assert_ne!(iommu.sysfs().render(), before);
}

#[test]
fn removing_a_device_keeps_the_directories_of_devices_inside_it() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let mock = Arc::new(MockIommu::new());
    iommu.bus_set_iommu(&bus, mock).unwrap();
    // A child placed first makes its parent's directory; the parent then
    // takes that directory over.
    let child = bus
        .add_device(
            DeviceBuilder::new("0000:01:00.0")
                .sysfs_dir("devices/pci0000:00/0000:00:01.0/0000:01:00.0")
                .stream_ids([0x100]),
        )
        .unwrap();
    let bridge = bus
        .add_device(
            DeviceBuilder::new("0000:00:01.0")
                .sysfs_dir("devices/pci0000:00/0000:00:01.0")
                .stream_ids([8]),
        )
        .unwrap();
    assert_eq!(
        bus.add_device(DeviceBuilder::new("dup").sysfs_dir("devices/pci0000:00/0000:00:01.0"))
            .unwrap_err(),
        Errno::EEXIST,
        "a device directory has one owner"
    );
    bus.remove_device(&bridge).unwrap();
    let link = format!("{}/iommu_group", child.sysfs_dir());
    assert_eq!(
        iommu.sysfs().resolve(&link).unwrap(),
        child.iommu_group().unwrap().sysfs_dir(),
        "the child's entries survive its parent"
    );
    assert!(iommu
        .sysfs()
        .list("devices/pci0000:00/0000:00:01.0")
        .unwrap()
        .contains(&"0000:01:00.0".to_string()));
    assert_eq!(
        iommu
            .sysfs()
            .read_link("devices/pci0000:00/0000:00:01.0/iommu_group"),
        Err(Errno::ENOENT),
        "the parent's own entries went"
    );
    bus.remove_device(&child).unwrap();
    assert_eq!(
        iommu.sysfs().list("devices/pci0000:00"),
        Ok(vec![]),
        "nothing of either is left"
    );
}

#[test]
fn dropping_the_bus_and_the_iommu_releases_devices_groups_and_domains() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let mock = Arc::new(MockIommu::new());
    let dev = bus
        .add_device(DeviceBuilder::new("a").stream_ids([1]))
        .unwrap();
    bus.add_device(DeviceBuilder::new("b").stream_ids([1]))
        .unwrap();
    iommu.bus_set_iommu(&bus, mock.clone()).unwrap();
    let g = dev.iommu_group().unwrap();
    let (weak_group, weak_domain) = (g.downgrade(), g.default_domain().unwrap().downgrade());
    let weak_dev = Arc::downgrade(&dev);
    drop((g, dev));
    let sysfs_before = iommu.sysfs().render();
    assert!(sysfs_before.contains("iommu_groups"));
    drop(bus);
    assert!(weak_group.upgrade().is_none(), "the group was released");
    assert!(weak_domain.upgrade().is_none(), "its default domain too");
    assert!(weak_dev.upgrade().is_none(), "and the devices");
    assert!(iommu.group_ids().is_empty());
    assert_eq!(iommu.sysfs().list("kernel/iommu_groups"), Ok(vec![]));
    assert_eq!(iommu.sysfs().list("bus"), Ok(vec![]));
    assert_eq!(mock.attached_domain("a"), None);
    assert_eq!(Arc::strong_count(&mock), 1, "the bus let go of the driver");
    // A new bus of the same name can be made.
    Bus::new(&iommu, "pci").unwrap();
}
