//! The core's side of nesting: user-structure copy rules as Linux's
//! `iommu_copy_struct_from_user` and `..._from_full_user_array` apply
//! them, paging flags, and the checks the core makes before a driver sees
//! a nest-parent or vIOMMU request. (The SMMUv3 driver's nesting is
//! tested in its crate, on the emulator and on QEMU.)

use iommu_core::testing::MockIommu;
use iommu_core::{
    Bus, DeviceBuilder, DomainType, Errno, Iommu, PagingFlags, UserData, UserDataArray,
};
use std::sync::Arc;

#[test]
fn a_user_struct_may_be_shorter_down_to_its_first_version_never_longer() {
    let mut dst = [0xffu8; 16];
    let src = [1u8; 12];
    let ud = UserData { ty: 3, data: &src };
    ud.copy_struct(3, &mut dst, 8).unwrap();
    assert_eq!(dst[..12], [1; 12]);
    assert_eq!(dst[12..], [0; 4], "the rest is zeroed");
    assert_eq!(ud.copy_struct(4, &mut dst, 8), Err(Errno::EINVAL), "type");
    assert_eq!(ud.copy_struct(3, &mut dst, 13), Err(Errno::EINVAL), "short");
    let long = [0u8; 17];
    let ud = UserData { ty: 3, data: &long };
    assert_eq!(ud.copy_struct(3, &mut dst, 8), Err(Errno::EINVAL), "long");
}

#[test]
fn an_entry_array_is_copied_whole_or_refused() {
    let arr = |ty, data: &[u8], entry_len, entry_num| {
        UserDataArray {
            ty,
            data,
            entry_len,
            entry_num,
        }
        .copy_entries(1, 8)
    };
    let two: Vec<u8> = (1..=16).collect();
    assert_eq!(arr(1, &two, 8, 2).unwrap(), two);
    assert_eq!(arr(2, &two, 8, 2), Err(Errno::EINVAL), "type");
    assert_eq!(arr(1, &two, 8, 0), Err(Errno::EINVAL), "no entries");
    assert_eq!(arr(1, &two, 8, 3), Err(Errno::EFAULT), "past the data");
    assert_eq!(arr(1, &two, 0, 1), Err(Errno::EFAULT), "empty entries");
    assert_eq!(arr(1, &two, usize::MAX, 2), Err(Errno::EFAULT), "overflow");
    // Shorter entries are zero-filled; longer ones need zero tails.
    assert_eq!(
        arr(1, &[1, 2, 3, 4, 5, 6, 7, 8], 4, 2).unwrap(),
        [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0]
    );
    let mut long = vec![0u8; 24];
    long[0] = 9;
    long[12] = 7;
    assert_eq!(
        arr(1, &long, 12, 2).unwrap()[..9],
        [9, 0, 0, 0, 0, 0, 0, 0, 7],
        "each entry's first 8 bytes"
    );
    long[8] = 1;
    assert_eq!(arr(1, &long, 12, 2), Err(Errno::E2BIG));
}

#[test]
fn paging_flags_know_linuxs_bits_only() {
    assert_eq!(PagingFlags::from_bits(0), Some(PagingFlags::empty()));
    assert_eq!(
        PagingFlags::from_bits(1 | 2 | 8),
        Some(PagingFlags::NEST_PARENT | PagingFlags::DIRTY_TRACKING | PagingFlags::PASID)
    );
    assert_eq!(
        PagingFlags::from_bits(4),
        None,
        "FAULT_ID_VALID is iommufd's"
    );
    assert_eq!(PagingFlags::from_bits(1 << 9), None);
    assert!((PagingFlags::NEST_PARENT | PagingFlags::PASID).contains(PagingFlags::PASID));
}

#[test]
fn a_driver_without_nesting_refuses_it_and_the_core_checks_the_parent() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("dma0").stream_ids([1]))
        .unwrap();
    let lone = bus.add_device(DeviceBuilder::new("lone")).unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(MockIommu::new()))
        .unwrap();
    // No flags: an unmanaged paging domain through the driver's domain_alloc.
    let plain = iommu
        .domain_alloc_paging_flags(&dev, PagingFlags::empty(), None)
        .unwrap();
    assert_eq!(plain.ty(), DomainType::Unmanaged);
    assert!(!plain.is_nest_parent());
    assert_eq!(plain.viommu(), None);
    assert_eq!(plain.nest_parent(), None);
    // The default ops refuse flags and data.
    assert_eq!(
        iommu
            .domain_alloc_paging_flags(&dev, PagingFlags::NEST_PARENT, None)
            .err(),
        Some(Errno::EOPNOTSUPP)
    );
    let data = UserData { ty: 0, data: &[] };
    assert_eq!(
        iommu
            .domain_alloc_paging_flags(&dev, PagingFlags::empty(), Some(&data))
            .err(),
        Some(Errno::EOPNOTSUPP)
    );
    // A vIOMMU needs a nest parent of the device's IOMMU.
    assert_eq!(
        iommu.viommu_alloc(&dev, &plain, 1, None).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        iommu.viommu_alloc(&lone, &plain, 1, None).err(),
        Some(Errno::ENODEV),
        "a device no IOMMU translates"
    );
    assert_eq!(
        iommu
            .domain_alloc_paging_flags(&lone, PagingFlags::empty(), None)
            .err(),
        Some(Errno::ENODEV)
    );
    // Nested domains come only from a vIOMMU.
    assert_eq!(
        iommu.domain_alloc(&bus, DomainType::Nested).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(DomainType::Nested.sysfs_name(), "nested");
    assert!(!DomainType::Nested.is_paging());
}
