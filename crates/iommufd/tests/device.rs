//! Bound devices and paging HWPTs over the core with its mock driver: an
//! IOAS's areas in every domain filled from it, ownership, attach rules
//! and Linux's destroy rules.

use iommu_core::testing::{MockConfig, MockIommu, MockOp};
use iommu_core::{Bus, DeviceBuilder, DomainType, Iommu, Iova, PagingFlags, PhysAddr};
use iommu_types::Prot;
use iommufd::ctx::{Ictx, UserMemory};
use iommufd::iopt::PAGE_SIZE;
use iommufd::Errno;
use std::sync::Arc;

struct Machine {
    mock: Arc<MockIommu>,
    bus: Bus,
}

/// Three devices: `a` alone, `b0` and `b1` sharing a group (a shared
/// stream id); the mock with a software MSI window.
fn machine() -> Machine {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for (name, ids) in [("a", vec![1]), ("b0", vec![2, 9]), ("b1", vec![3, 9])] {
        bus.add_device(DeviceBuilder::new(name).stream_ids(ids))
            .unwrap();
    }
    let mock = Arc::new(MockIommu::with_config(MockConfig {
        sw_msi: Some((0x800_0000, 0x10_0000)),
        ..MockConfig::default()
    }));
    iommu.bus_set_iommu(&bus, mock.clone()).unwrap();
    Machine { mock, bus }
}

fn rw() -> Prot {
    Prot::RW | Prot::CACHE
}

#[test]
fn a_hwpt_holds_the_ioas_areas_before_and_after_it_was_made() {
    let m = machine();
    let ctx = Ictx::new();
    let a = m.bus.find_device("a").unwrap();
    let dev = ctx.bind(&a).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let io = ctx.ioas(ioas).unwrap();
    let before = io
        .lock()
        .unwrap()
        .iopt
        .map_user(0x7000_0000, 0x2000, Some(0x10_0000), rw())
        .unwrap();
    assert_eq!(before, 0x10_0000);
    let hwpt = ctx.hwpt_alloc(dev, ioas, PagingFlags::empty()).unwrap();
    let d = ctx.hwpt(hwpt).unwrap().domain.clone();
    assert_eq!(d.ty(), DomainType::Unmanaged);
    assert_eq!(
        d.iova_to_phys(Iova::new(0x10_1234)),
        Some(PhysAddr::new(0x7000_1234)),
        "filled from the IOAS's areas"
    );
    // Alignment is now the domain's page; the aperture's outside is reserved.
    assert_eq!(io.lock().unwrap().iopt.iova_alignment(), PAGE_SIZE);
    assert_eq!(
        io.lock().unwrap().iopt.iova_ranges(),
        vec![(0, (1 << 48) - 1)]
    );
    // Later maps and unmaps reach the domain, through the ioctl path.
    let c = iommufd::uapi::IoasMap {
        size: 40,
        flags: 0b111,
        ioas_id: ioas,
        user_va: 0x7100_0000,
        length: 0x1000,
        iova: 0x20_0000,
        reserved: 0,
    };
    ctx.ioas_map(&c).unwrap();
    assert_eq!(
        d.iova_to_phys(Iova::new(0x20_0010)),
        Some(PhysAddr::new(0x7100_0010))
    );
    assert_eq!(ctx.ioas_unmap(ioas, 0x10_0000, 0x2000), Ok(0x2000));
    assert_eq!(d.iova_to_phys(Iova::new(0x10_0000)), None);
    // A length the domain cannot map: EINVAL, nothing kept.
    let odd = iommufd::uapi::IoasMap {
        length: 0x800,
        iova: 0x30_0000,
        ..c
    };
    assert_eq!(ctx.ioas_map(&odd), Err(Errno::EINVAL));
    // The IOAS is held by the HWPT; the HWPT is not attached.
    assert_eq!(ctx.destroy(ioas), Err(Errno::EBUSY));
    ctx.destroy(hwpt).unwrap();
    assert_eq!(
        io.lock().unwrap().iopt.iova_alignment(),
        1,
        "no domain left"
    );
    assert_eq!(d.iova_to_phys(Iova::new(0x20_0000)), None, "emptied");
    drop(io);
    ctx.destroy(ioas).unwrap();
    assert_eq!(ctx.destroy(dev), Err(Errno::EBUSY), "held by its binding");
    ctx.unbind(dev).unwrap();
    assert!(ctx.ids().is_empty());
}

#[test]
fn an_unaligned_area_keeps_a_domain_out() {
    let m = machine();
    let ctx = Ictx::new();
    let dev = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    ctx.ioas(ioas)
        .unwrap()
        .lock()
        .unwrap()
        .iopt
        .map_user(0x7000_0010, 0x100, Some(0x10), rw())
        .unwrap();
    assert_eq!(
        ctx.hwpt_alloc(dev, ioas, PagingFlags::empty()),
        Err(Errno::EADDRINUSE)
    );
    assert_eq!(ctx.ids(), vec![dev, ioas], "nothing left behind");
    // Flags the driver does not take.
    ctx.ioas_unmap(ioas, 0, u64::MAX).unwrap();
    assert_eq!(
        ctx.hwpt_alloc(dev, ioas, PagingFlags::NEST_PARENT),
        Err(Errno::EOPNOTSUPP)
    );
}

#[test]
fn attach_to_an_ioas_uses_an_automatic_hwpt_destroyed_with_its_last_device() {
    let m = machine();
    let ctx = Ictx::new();
    let a = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let b0 = ctx.bind(&m.bus.find_device("b0").unwrap()).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let h = ctx.attach(a, ioas).unwrap();
    let group_a = m.bus.find_device("a").unwrap().iommu_group().unwrap();
    assert_eq!(group_a.domain(), Some(ctx.hwpt(h).unwrap().domain.clone()));
    // A second device of another group shares the automatic HWPT.
    assert_eq!(ctx.attach(b0, ioas), Ok(h));
    assert_eq!(ctx.attach(a, ioas), Err(Errno::EBUSY), "already attached");
    // The devices' MSI window is reserved in the IOAS: a map over it fails.
    let io = ctx.ioas(ioas).unwrap();
    let r = io
        .lock()
        .unwrap()
        .iopt
        .map_user(0x7000_0000, 0x1000, Some(0x800_0000), rw());
    assert_eq!(r, Err(Errno::EINVAL));
    drop(io);
    assert_eq!(ctx.destroy(h), Err(Errno::EBUSY), "attached");
    ctx.detach(a).unwrap();
    assert_eq!(ctx.detach(a), Err(Errno::EINVAL));
    assert!(ctx.hwpt(h).is_ok(), "b0 still uses it");
    ctx.detach(b0).unwrap();
    assert_eq!(
        ctx.hwpt(h).err(),
        Some(Errno::ENOENT),
        "destroyed with its last device"
    );
    // Blocked again, while owned.
    assert_ne!(group_a.domain(), group_a.default_domain());
    // The MSI window is free once nothing is attached.
    assert!(ctx
        .ioas(ioas)
        .unwrap()
        .lock()
        .unwrap()
        .iopt
        .map_user(0x7000_0000, 0x1000, Some(0x800_0000), rw())
        .is_ok());
}

#[test]
fn a_group_is_attached_once_and_owned_by_one_context() {
    let m = machine();
    let (ctx, other) = (Ictx::new(), Ictx::new());
    let b0 = m.bus.find_device("b0").unwrap();
    let b1 = m.bus.find_device("b1").unwrap();
    assert_eq!(b0.iommu_group(), b1.iommu_group(), "one group");
    let d0 = ctx.bind(&b0).unwrap();
    let d1 = ctx.bind(&b1).unwrap();
    // Another context cannot take the group.
    assert_eq!(other.bind(&b1), Err(Errno::EPERM));
    let ioas = ctx.ioas_alloc().unwrap();
    let h1 = ctx.hwpt_alloc(d0, ioas, PagingFlags::empty()).unwrap();
    let h2 = ctx.hwpt_alloc(d0, ioas, PagingFlags::empty()).unwrap();
    ctx.attach(d0, h1).unwrap();
    // The group is on h1: the other device joins it, and only it.
    assert_eq!(ctx.attach(d1, h2), Err(Errno::EINVAL));
    assert_eq!(ctx.attach(d1, h1), Ok(h1));
    // A domain made by hwpt_alloc stays when its devices leave.
    ctx.detach(d0).unwrap();
    ctx.detach(d1).unwrap();
    assert!(ctx.hwpt(h1).is_ok());
    // Unbinding the last device releases the group for another context.
    ctx.unbind(d0).unwrap();
    assert_eq!(other.bind(&b1), Err(Errno::EPERM), "d1 still bound");
    ctx.unbind(d1).unwrap();
    let od = other.bind(&b1).unwrap();
    other.unbind(od).unwrap();
    assert_eq!(
        b0.iommu_group().unwrap().domain(),
        b0.iommu_group().unwrap().default_domain(),
        "back on its default domain"
    );
    // Unbinding an attached device detaches it first.
    let a = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let h = ctx.attach(a, ioas).unwrap();
    ctx.unbind(a).unwrap();
    assert_eq!(ctx.hwpt(h).err(), Some(Errno::ENOENT));
}

#[test]
fn a_domain_that_refuses_a_map_leaves_the_ioas_as_it_was() {
    let m = machine();
    let ctx = Ictx::new();
    let dev = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let h = ctx.attach(dev, ioas).unwrap();
    // Outside the domain's 48-bit aperture: reserved, EINVAL.
    let c = iommufd::uapi::IoasMap {
        size: 40,
        flags: 0b111,
        ioas_id: ioas,
        user_va: 0x7000_0000,
        length: 0x1000,
        iova: 1 << 48,
        reserved: 0,
    };
    assert_eq!(ctx.ioas_map(&c), Err(Errno::EINVAL));
    // An automatic IOVA lands inside the aperture, in the domain.
    let iova = ctx
        .ioas_map(&iommufd::uapi::IoasMap { flags: 0b110, ..c })
        .unwrap();
    assert!(iova < 1 << 48);
    let d = ctx.hwpt(h).unwrap().domain.clone();
    assert_eq!(
        d.iova_to_phys(Iova::new(iova)),
        Some(PhysAddr::new(0x7000_0000))
    );
    assert_eq!(ctx.ioas_unmap(ioas, 0, u64::MAX), Ok(0x1000));
    assert_eq!(d.iova_to_phys(Iova::new(iova)), None);
    // The domain refuses a map half-way: the area goes again, and what
    // the domain took is unmapped.
    let big = iommufd::uapi::IoasMap {
        length: 0x40_0000,
        iova: 0x100_0000,
        ..c
    };
    m.mock.fail_after(MockOp::Map, 0);
    assert_eq!(ctx.ioas_map(&big), Err(Errno::ENOMEM));
    assert_eq!(
        ctx.ioas(ioas).unwrap().lock().unwrap().iopt.areas().count(),
        0
    );
    assert!(MockIommu::mappings(&d).is_empty());
    // An unmap whose invalidation fails: the area is gone from the IOAS
    // and the domain, and the caller is told the device may still reach it.
    ctx.ioas_map(&c.clone_with_iova(0x200_0000)).unwrap();
    m.mock.fail_after(MockOp::IotlbSync, 0);
    assert!(ctx.ioas_unmap(ioas, 0x200_0000, 0x1000).is_err());
    assert_eq!(
        ctx.ioas(ioas).unwrap().lock().unwrap().iopt.areas().count(),
        0
    );
    assert_eq!(d.iova_to_phys(Iova::new(0x200_0000)), None);
    m.mock.clear_failures();
}

trait WithIova {
    fn clone_with_iova(&self, iova: u64) -> Self;
}
impl WithIova for iommufd::uapi::IoasMap {
    fn clone_with_iova(&self, iova: u64) -> Self {
        iommufd::uapi::IoasMap { iova, ..*self }
    }
}

#[test]
fn options_follow_linuxs_rules() {
    use iommufd::testing::{ioctl_at, Space};
    use iommufd::uapi::{option::*, Cmd, IommuOption};
    let m = machine();
    let ctx = Ictx::new();
    let mem = Space::new(0x1000, 0x1000);
    let opt = |option_id, op, object_id, val64| IommuOption {
        size: 24,
        option_id,
        op,
        reserved: 0,
        object_id,
        val64,
    };
    let call = |c: IommuOption| {
        let (r, back) = ioctl_at(&ctx, &mem, 0x1000, Cmd::Option, &c);
        r.map(|()| back.val64)
    };
    // RLIMIT_MODE: the context's, set only while it holds nothing.
    assert_eq!(call(opt(RLIMIT_MODE, OP_GET, 0, 7)), Ok(0));
    assert_eq!(call(opt(RLIMIT_MODE, OP_SET, 0, 2)), Err(Errno::EINVAL));
    assert_eq!(call(opt(RLIMIT_MODE, OP_SET, 0, 1)), Ok(1));
    assert_eq!(call(opt(RLIMIT_MODE, OP_GET, 0, 0)), Ok(1));
    assert_eq!(call(opt(RLIMIT_MODE, OP_GET, 5, 0)), Err(Errno::EOPNOTSUPP));
    assert_eq!(call(opt(RLIMIT_MODE, 9, 0, 0)), Err(Errno::EOPNOTSUPP));
    assert_eq!(call(opt(7, OP_GET, 0, 0)), Err(Errno::EOPNOTSUPP));
    ctx.set_sys_resource(false);
    assert_eq!(call(opt(RLIMIT_MODE, OP_SET, 0, 0)), Err(Errno::EPERM));
    ctx.set_sys_resource(true);
    let ioas = ctx.ioas_alloc().unwrap();
    assert_eq!(call(opt(RLIMIT_MODE, OP_SET, 0, 0)), Err(Errno::EBUSY));
    // HUGE_PAGES: per IOAS.
    assert_eq!(call(opt(HUGE_PAGES, OP_GET, ioas, 0)), Ok(1));
    assert_eq!(call(opt(HUGE_PAGES, OP_GET, 99, 0)), Err(Errno::ENOENT));
    assert_eq!(call(opt(HUGE_PAGES, OP_SET, ioas, 3)), Err(Errno::EINVAL));
    assert_eq!(call(opt(HUGE_PAGES, OP_SET, ioas, 0)), Ok(0));
    let io = ctx.ioas(ioas).unwrap();
    assert_eq!(io.lock().unwrap().iopt.iova_alignment(), PAGE_SIZE);
    // Page-sized mappings only: a 2 MiB area is 512 pages in the domain.
    let dev = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let h = ctx.attach(dev, ioas).unwrap();
    let c = iommufd::uapi::IoasMap {
        size: 40,
        flags: 0b111,
        ioas_id: ioas,
        user_va: 0x4000_0000,
        length: 0x20_0000,
        iova: 0x20_0000,
        reserved: 0,
    };
    ctx.ioas_map(&c).unwrap();
    let d = ctx.hwpt(h).unwrap().domain.clone();
    assert_eq!(MockIommu::mappings(&d).len(), 512);
    // With mappings in a domain they cannot be turned off again; on, a
    // new area gets the large page.
    assert_eq!(call(opt(HUGE_PAGES, OP_SET, ioas, 1)), Ok(1));
    assert_eq!(call(opt(HUGE_PAGES, OP_SET, ioas, 0)), Err(Errno::EINVAL));
    ctx.ioas_map(&iommufd::uapi::IoasMap {
        iova: 0x40_0000,
        ..c
    })
    .unwrap();
    assert_eq!(MockIommu::mappings(&d).len(), 513);
    // Only `val64` goes back.
    let mut buf = [0xa5u8; 24];
    buf[..24].copy_from_slice(zerocopy::IntoBytes::as_bytes(&opt(
        HUGE_PAGES, OP_GET, ioas, 0,
    )));
    mem.write(0x1000, &buf).unwrap();
    ctx.ioctl(Cmd::Option.ioctl(), 0x1000, &mem).unwrap();
    let mut back = [0u8; 24];
    mem.read(0x1000, &mut back).unwrap();
    assert_eq!(back[..16], buf[..16]);
    assert_eq!(back[16..], 1u64.to_ne_bytes());
}

#[test]
fn hw_info_of_a_driver_with_nothing_to_report() {
    use iommufd::testing::{ioctl_at, Space};
    use iommufd::uapi::{Cmd, HwInfo};
    let m = machine();
    let ctx = Ictx::new();
    let dev = ctx.bind(&m.bus.find_device("a").unwrap()).unwrap();
    let mem = Space::new(0x1000, 0x1000);
    mem.write(0x1800, &[0xa5; 16]).unwrap();
    let c = HwInfo {
        size: 40,
        dev_id: dev,
        data_len: 16,
        data_uptr: 0x1800,
        ..HwInfo::default()
    };
    let (r, back) = ioctl_at(&ctx, &mem, 0x1000, Cmd::GetHwInfo, &c);
    r.unwrap();
    assert_eq!(
        (back.data_type, back.data_len),
        (0, 0),
        "IOMMU_HW_INFO_TYPE_NONE"
    );
    let mut buf = [0xffu8; 16];
    mem.read(0x1800, &mut buf).unwrap();
    assert_eq!(buf, [0; 16], "the caller's buffer zeroed");
    let (r, _) = ioctl_at(
        &ctx,
        &mem,
        0x1000,
        Cmd::GetHwInfo,
        &HwInfo { dev_id: 99, ..c },
    );
    assert_eq!(r, Err(Errno::ENOENT));
}
