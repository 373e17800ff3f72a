//! A VMM's vSMMU through the iommufd uAPI, on the SMMUv3 driver and its
//! emulator: a nest-parent HWPT over the guest's memory, a vIOMMU, a
//! vDEVICE, a nested HWPT from the guest's vSTE, the guest's
//! invalidations, and Linux's object rules between them.

use iommu_core::{Bus, DeviceBuilder, Iommu};
use iommu_smmuv3::emu::{EmuLayout, EmuPlatform};
use iommu_smmuv3::testing::{le_bytes, NestedGuest};
use iommu_smmuv3::Smmuv3Config;
use iommu_smmuv3_emu::{Access, Features};
use iommufd::ctx::{Ictx, UserMemory};
use iommufd::testing::Space;
use iommufd::uapi::*;
use iommufd::Errno;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

const SID: u32 = 0x10;
const VSID: u64 = 0x42;
/// Guest tables (1:1 in stage 2), the guest's page and its host page.
const GUEST_TABLES: u64 = 0x500_0000;
const GUEST_TABLES_SIZE: u64 = 0x10_0000;
const GUEST_DATA: u64 = 0x4000_0000;
const HOST_DATA: u64 = 0x600_0000;
const VA: u64 = 0x8000;
/// The program's structures and data in its own memory.
const ARG: u64 = 0x1000;
const DATA: u64 = 0x1800;

struct Vmm {
    plat: EmuPlatform,
    ctx: Ictx,
    mem: Space,
    dev: u32,
    ioas: u32,
    _bus: Bus,
}

impl Vmm {
    fn ioctl<T: IntoBytes + FromBytes + zerocopy::Immutable>(
        &self,
        cmd: Cmd,
        s: &T,
    ) -> Result<T, Errno> {
        let (r, back) = iommufd::testing::ioctl_at(&self.ctx, &self.mem, ARG, cmd, s);
        r.map(|()| back)
    }

    fn map(&self, user_va: u64, length: u64, iova: u64) {
        self.ioctl(
            Cmd::IoasMap,
            &IoasMap {
                size: 40,
                flags: ioas_map::FIXED_IOVA | ioas_map::READABLE | ioas_map::WRITEABLE,
                ioas_id: self.ioas,
                user_va,
                length,
                iova,
                reserved: 0,
            },
        )
        .unwrap();
    }

    fn hwpt_alloc(
        &self,
        pt_id: u32,
        flags: u32,
        data_type: u32,
        data: &[u8],
    ) -> Result<u32, Errno> {
        self.mem.write(DATA, data).unwrap();
        self.ioctl(
            Cmd::HwptAlloc,
            &HwptAlloc {
                size: 48,
                flags,
                dev_id: self.dev,
                pt_id,
                data_type,
                data_len: data.len() as u32,
                data_uptr: DATA,
                ..HwptAlloc::default()
            },
        )
        .map(|c| c.out_hwpt_id)
    }

    fn invalidate(&self, viommu: u32, cmds: &[[u64; 2]]) -> (u32, Result<(), Errno>) {
        self.mem.write(DATA, &le_bytes(&cmds.concat())).unwrap();
        let c = HwptInvalidate {
            size: 32,
            hwpt_id: viommu,
            data_uptr: DATA,
            data_type: iommu_smmuv3::nested::VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
            entry_len: 16,
            entry_num: cmds.len() as u32,
            reserved: 0,
        };
        let (r, back) =
            iommufd::testing::ioctl_at(&self.ctx, &self.mem, ARG, Cmd::HwptInvalidate, &c);
        (back.entry_num, r)
    }
}

fn vmm() -> Vmm {
    let plat = EmuPlatform::with_smmus(
        EmuLayout::default(),
        &[Features::default()],
        Smmuv3Config {
            poll_limit: 256,
            ..Smmuv3Config::default()
        },
        None,
    )
    .unwrap();
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let d = bus
        .add_device(DeviceBuilder::new("vf").stream_ids([SID]).pci(true))
        .unwrap();
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .unwrap();
    let ctx = Ictx::new();
    let dev = ctx.bind(&d).unwrap();
    let ioas = ctx.ioas_alloc().unwrap();
    let v = Vmm {
        plat,
        ctx,
        mem: Space::new(0x1000, 0x2000),
        dev,
        ioas,
        _bus: bus,
    };
    // The guest's memory in the IOAS: its tables 1:1, its page elsewhere.
    v.map(GUEST_TABLES, GUEST_TABLES_SIZE, GUEST_TABLES);
    v.map(HOST_DATA, 0x1000, GUEST_DATA);
    v
}

#[test]
fn a_guest_translates_through_a_nested_hwpt_made_with_the_uapi() {
    let v = vmm();
    let parent = v
        .hwpt_alloc(v.ioas, hwpt_alloc::NEST_PARENT, 0, &[])
        .unwrap();
    let viommu = v
        .ioctl(
            Cmd::ViommuAlloc,
            &ViommuAlloc {
                size: 40,
                r#type: iommu_smmuv3::nested::VIOMMU_TYPE_ARM_SMMUV3,
                dev_id: v.dev,
                hwpt_id: parent,
                ..ViommuAlloc::default()
            },
        )
        .unwrap()
        .out_viommu_id;
    let vdev = v
        .ioctl(
            Cmd::VdeviceAlloc,
            &VdeviceAlloc {
                size: 24,
                viommu_id: viommu,
                dev_id: v.dev,
                out_vdevice_id: 0,
                virt_id: VSID,
            },
        )
        .unwrap()
        .out_vdevice_id;
    let guest = NestedGuest::new(&v.plat, GUEST_TABLES, GUEST_TABLES_SIZE, 5);
    guest.map(VA, GUEST_DATA).unwrap();
    let nested = v
        .hwpt_alloc(viommu, 0, hwpt_data::ARM_SMMUV3, &le_bytes(&guest.vste()))
        .unwrap();
    assert_eq!(v.ctx.attach(v.dev, nested), Ok(nested));
    let hw = &v.plat.hw;
    assert_eq!(hw.translate(SID, VA, Access::Read).unwrap().pa, HOST_DATA);
    // The guest unmaps and invalidates through the vIOMMU.
    guest.unmap(VA);
    assert_eq!(
        v.invalidate(viommu, &[[0x11 | (5 << 48), 0], [0x12 | (5 << 48), VA | 1]]),
        (2, Ok(()))
    );
    assert!(hw.translate(SID, VA, Access::Read).is_err());
    // A command the guest may not send: the entries before it are done.
    assert_eq!(
        v.invalidate(viommu, &[[0x11 | (5 << 48), 0], [0x2a, 0]]),
        (1, Err(Errno::EIO))
    );
    // A bad vSTE: EIO from the driver.
    assert_eq!(
        v.hwpt_alloc(
            viommu,
            0,
            hwpt_data::ARM_SMMUV3,
            &le_bytes(&[1 | (0b110 << 1), 0])
        ),
        Err(Errno::EIO)
    );
    // What holds what.
    assert_eq!(
        v.ctx.destroy(parent),
        Err(Errno::EBUSY),
        "the vIOMMU holds it"
    );
    assert_eq!(
        v.ctx.destroy(viommu),
        Err(Errno::EBUSY),
        "vDEVICE and nested HWPT"
    );
    assert_eq!(v.ctx.destroy(nested), Err(Errno::EBUSY), "attached");
    v.ctx.detach(v.dev).unwrap();
    v.ctx.destroy(nested).unwrap();
    v.ctx.destroy(vdev).unwrap();
    v.ctx.destroy(viommu).unwrap();
    v.ctx.destroy(parent).unwrap();
}

#[test]
fn viommu_and_vdevice_refuse_what_linux_refuses() {
    let v = vmm();
    let plain = v.hwpt_alloc(v.ioas, 0, 0, &[]).unwrap();
    let alloc = |ty, hwpt_id, flags| {
        v.ioctl(
            Cmd::ViommuAlloc,
            &ViommuAlloc {
                size: 40,
                flags,
                r#type: ty,
                dev_id: v.dev,
                hwpt_id,
                ..ViommuAlloc::default()
            },
        )
        .map(|c| c.out_viommu_id)
    };
    assert_eq!(alloc(1, plain, 1), Err(Errno::EOPNOTSUPP), "flags");
    assert_eq!(
        alloc(0, plain, 0),
        Err(Errno::EOPNOTSUPP),
        "the default type"
    );
    assert_eq!(alloc(1, plain, 0), Err(Errno::EINVAL), "not a nest parent");
    assert_eq!(alloc(1, v.ioas, 0), Err(Errno::ENOENT), "not a HWPT");
    let parent = v
        .hwpt_alloc(v.ioas, hwpt_alloc::NEST_PARENT, 0, &[])
        .unwrap();
    assert_eq!(
        alloc(7, parent, 0),
        Err(Errno::EOPNOTSUPP),
        "a type the driver does not know"
    );
    let viommu = alloc(1, parent, 0).unwrap();
    v.ctx.vdevice_alloc(viommu, v.dev, 1).unwrap();
    assert_eq!(v.ctx.vdevice_alloc(viommu, v.dev, 2), Err(Errno::EEXIST));
    // HWPT_ALLOC: data without a type, a type without data.
    assert_eq!(v.hwpt_alloc(viommu, 0, 0, &[0; 16]), Err(Errno::EINVAL));
    assert_eq!(
        v.hwpt_alloc(viommu, 0, hwpt_data::ARM_SMMUV3, &[]),
        Err(Errno::EINVAL)
    );
    // HWPT_INVALIDATE bounds: no pointer, entries too long.
    let bad = HwptInvalidate {
        size: 32,
        hwpt_id: viommu,
        data_uptr: 0,
        data_type: 1,
        entry_len: 16,
        entry_num: 1,
        reserved: 0,
    };
    assert_eq!(
        v.ioctl(Cmd::HwptInvalidate, &bad).err(),
        Some(Errno::EINVAL)
    );
    let long = HwptInvalidate {
        data_uptr: DATA,
        entry_len: 8192,
        ..bad
    };
    assert_eq!(
        v.ioctl(Cmd::HwptInvalidate, &long).err(),
        Some(Errno::EINVAL)
    );
    let on_paging = HwptInvalidate {
        hwpt_id: parent,
        data_uptr: DATA,
        ..bad
    };
    assert_eq!(
        v.ioctl(Cmd::HwptInvalidate, &on_paging).err(),
        Some(Errno::EINVAL)
    );
}

#[test]
fn hw_info_is_the_smmus_id_registers() {
    let v = vmm();
    let info = |flags, data_type, data_len| {
        v.mem.write(DATA, &[0xa5; 64]).unwrap();
        let r = v.ioctl(
            Cmd::GetHwInfo,
            &HwInfo {
                size: 40,
                flags,
                dev_id: v.dev,
                data_len,
                data_uptr: DATA,
                data_type,
                ..HwInfo::default()
            },
        );
        let mut data = [0u8; 64];
        v.mem.read(DATA, &mut data).unwrap();
        r.map(|c| (c, data))
    };
    let (c, data) = info(0, 0, 64).unwrap();
    assert_eq!(
        (c.data_type, c.data_len),
        (2, 40),
        "IOMMU_HW_INFO_TYPE_ARM_SMMUV3"
    );
    let got = HwInfoArmSmmuv3::read_from_bytes(&data[..40]).unwrap();
    assert_eq!(got.idr[0], v.plat.hw.read32(0));
    assert_eq!(got.idr[1], v.plat.hw.read32(4));
    assert_eq!(got.idr[5], v.plat.hw.read32(0x14));
    assert!(
        data[40..].iter().all(|&b| b == 0),
        "the rest of the buffer zeroed"
    );
    assert_eq!(c.out_capabilities, 1 << 3, "no ATS");
    // A short buffer: what fits, and the full length back.
    let (c, data) = info(0, 0, 8).unwrap();
    assert_eq!(c.data_len, 40);
    assert!(
        data[8..].iter().all(|&b| b == 0xa5),
        "nothing past the buffer"
    );
    // Asking for this type, or another.
    assert_eq!(info(1, 2, 64).unwrap().0.data_type, 2);
    assert_eq!(info(1, 1, 64).err(), Some(Errno::EOPNOTSUPP), "VT-d's type");
    assert_eq!(
        info(2, 0, 64).err(),
        Some(Errno::EOPNOTSUPP),
        "unknown flags"
    );
}
