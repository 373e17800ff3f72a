//! Failure injection at every fallible step: after each injected failure the
//! ids, links, references, domains and mappings are exactly as before.

mod common;

use common::{snapshot, world, world_unset, World};
use iommu_core::testing::{MockConfig, MockOp};
use iommu_core::{
    DeviceBuilder, DmaOwner, DomainType, Errno, FailPoint, Prot, ReservedRegion, ResvType,
};

/// A platform exercising every step: shared and private groups, a direct
/// region (maps in the default domain) and a device the IOMMU ignores.
fn platform() -> Vec<DeviceBuilder> {
    let direct = ReservedRegion::new(0x7000_0000, 0x3000, Prot::RW, ResvType::Direct);
    vec![
        DeviceBuilder::new("a").stream_ids([1]).resv_region(direct),
        DeviceBuilder::new("b").stream_ids([1]),
        DeviceBuilder::new("c").stream_ids([2]),
        DeviceBuilder::new("plain"),
        DeviceBuilder::new("d").stream_ids([3]).resv_region(direct),
    ]
}

enum Point {
    Core(FailPoint),
    Driver(MockOp),
}

fn arm(w: &World, p: &Point, skip: u32) {
    match p {
        Point::Core(fp) => w.iommu.fail_points().arm(*fp, skip),
        Point::Driver(op) => w.mock.fail_after(*op, skip),
    }
}

fn still_armed(w: &World, p: &Point) -> bool {
    match p {
        Point::Core(fp) => w.iommu.fail_points().is_armed(*fp),
        Point::Driver(op) => w.mock.failure_pending(*op),
    }
}

/// Fails the n-th hit of `point` for every n until the operation no longer
/// reaches it; every failure that surfaces must leave the snapshot unchanged
/// (a failure the operation absorbs, such as a fallback, is allowed).
/// Returns how many failures surfaced.
fn walk(point: Point, setup: impl Fn() -> World, op: impl Fn(&World) -> Result<(), Errno>) -> u32 {
    let mut failures = 0;
    for skip in 0..200 {
        let w = setup();
        let before = snapshot(&w);
        arm(&w, &point, skip);
        let result = op(&w);
        if still_armed(&w, &point) {
            assert!(
                result.is_ok(),
                "the operation failed without the point firing: {result:?}"
            );
            return failures;
        }
        if let Err(err) = result {
            assert_eq!(
                snapshot(&w),
                before,
                "state changed after failure #{skip} ({err})"
            );
            failures += 1;
        }
    }
    panic!("the point kept firing");
}

fn set_ops(w: &World) -> Result<(), Errno> {
    w.iommu.bus_set_iommu(&w.bus, w.mock.clone())
}

fn unset() -> World {
    world_unset(MockConfig::default(), &platform())
}

#[test]
fn failed_group_allocation_leaves_no_trace() {
    assert_eq!(walk(Point::Core(FailPoint::GroupAlloc), unset, set_ops), 3);
}

#[test]
fn failed_sysfs_directory_creation_leaves_no_trace() {
    assert_eq!(walk(Point::Core(FailPoint::SysfsCreate), unset, set_ops), 3);
}

#[test]
fn failed_link_creation_leaves_no_trace() {
    // Two links per device, four translated devices.
    assert_eq!(walk(Point::Core(FailPoint::SysfsLink), unset, set_ops), 8);
}

#[test]
fn failed_driver_add_leaves_no_trace() {
    assert_eq!(walk(Point::Driver(MockOp::AddDevice), unset, set_ops), 5);
}

#[test]
fn failed_driver_attach_leaves_no_trace() {
    assert_eq!(walk(Point::Driver(MockOp::Attach), unset, set_ops), 4);
}

#[test]
fn failed_driver_map_of_a_direct_region_leaves_no_trace() {
    assert_eq!(walk(Point::Driver(MockOp::Map), unset, set_ops), 2);
}

fn attached_world() -> World {
    world(&[("a", &[1]), ("b", &[1]), ("c", &[1])])
}

#[test]
fn failed_attach_group_leaves_no_trace() {
    let n = walk(Point::Driver(MockOp::Attach), attached_world, |w| {
        let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged)?;
        w.iommu.attach_group(&d, &w.group_of(0))
    });
    assert_eq!(n, 3);
}

#[test]
fn failed_default_domain_change_leaves_no_trace() {
    let setup = || {
        let w = world_unset(MockConfig::default(), &platform());
        set_ops(&w).unwrap();
        w
    };
    let store = |w: &World| {
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .map(drop)
    };
    assert!(walk(Point::Core(FailPoint::DomainAlloc), setup, store) >= 1);
    assert!(walk(Point::Driver(MockOp::Attach), setup, store) >= 1);
    // Switching back to DMA maps the direct region into the new domain.
    let setup_identity = || {
        let w = setup();
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap();
        w
    };
    assert!(
        walk(Point::Driver(MockOp::Map), setup_identity, |w| {
            w.iommu
                .sysfs()
                .write("kernel/iommu_groups/0/type", "DMA")
                .map(drop)
        }) >= 1
    );
}

#[test]
fn failed_claim_of_dma_ownership_leaves_no_trace() {
    let claim = |w: &World| {
        w.iommu
            .group_claim_dma_owner(&w.group_of(0), DmaOwner::new())
    };
    assert_eq!(
        walk(Point::Driver(MockOp::Attach), attached_world, claim),
        3
    );
}

#[test]
fn claim_absorbs_a_failed_blocking_domain_with_an_empty_unmanaged_one() {
    let w = attached_world();
    w.iommu.fail_points().arm(FailPoint::DomainAlloc, 0);
    w.iommu
        .group_claim_dma_owner(&w.group_of(0), DmaOwner::new())
        .unwrap();
    assert_eq!(w.group_of(0).domain().unwrap().ty(), DomainType::Unmanaged);
}

#[test]
fn failed_map_leaves_no_trace() {
    let cfg = MockConfig {
        max_pages_per_call: 2,
        ..MockConfig::default()
    };
    let setup = || common::world_with(Default::default(), cfg.clone(), &[("a", &[1])]);
    let n = walk(Point::Driver(MockOp::Map), setup, |w| {
        let d = w.group_of(0).default_domain().unwrap();
        d.map(
            iommu_core::Iova::new(0x1000),
            iommu_core::PhysAddr::new(0x1000),
            9 * 0x1000,
            Prot::RW,
        )
    });
    assert_eq!(n, 5);
}

/// Linux's `fail_nth`: the n-th hit of any point fails, for n = 1, 2, ...
/// until the operation runs through without it firing. Every failure that
/// surfaces leaves the snapshot unchanged, and every point the operation
/// reaches fails once on the way.
#[test]
fn failing_the_nth_step_of_any_kind_leaves_no_trace() {
    let mut surfaced = 0;
    for n in 1..500u64 {
        let w = unset();
        let before = snapshot(&w);
        w.iommu.fail_points().arm_nth(n);
        let result = set_ops(&w);
        if !w.iommu.fail_points().nth_fired() {
            assert!(result.is_ok(), "{result:?} without the failure firing");
            // Group allocations, sysfs directories and links of the four
            // translated devices, and the default domains: each failed once.
            println!("{} fallible steps, {surfaced} failures surfaced", n - 1);
            assert!(n > 10, "only {n} steps");
            assert!(surfaced > 0);
            return;
        }
        if let Err(err) = result {
            assert_eq!(
                snapshot(&w),
                before,
                "state changed after failing step {n} ({err})"
            );
            surfaced += 1;
        }
    }
    panic!("the failure kept firing");
}
