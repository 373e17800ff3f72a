//! The uAPI against Linux 7.3's header, and the kernel's rules for
//! reading a command.
//!
//! `data/uapi-7.3.layout` holds the size and every field offset of each
//! structure as gcc compiles Linux 7.3.4's `include/uapi/linux/iommufd.h`
//! (`python3 tests/data/gen-layout.py <linux tree> > tests/data/uapi-7.3.layout`).

use iommufd::testing::decode_any;
use iommufd::uapi::*;
use iommufd::Errno;
use std::collections::BTreeMap;
use zerocopy::IntoBytes;

fn layout() -> BTreeMap<String, usize> {
    include_str!("data/uapi-7.3.layout")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').map(|(k, v)| (k.to_string(), v)).unwrap();
            match v.strip_prefix("size=") {
                Some(n) => (format!("{k}.sizeof"), n.parse().unwrap()),
                None => (k, v.parse().unwrap()),
            }
        })
        .collect()
}

/// Compares a Rust structure with its C twin: the size and each field's
/// offset (C names: `__reserved` is `reserved`, `type` is `r#type`, the
/// `in_`/`out_data_type` union is `data_type`).
macro_rules! same_layout {
    ($l:expr, $t:ty, $c:literal, [$($f:ident $(= $cf:literal)?),* $(,)?]) => {{
        let l = &$l;
        assert_eq!(
            std::mem::size_of::<$t>(),
            l[&format!("{}.sizeof", $c)],
            "sizeof(struct {})", $c
        );
        $(
            let cname = same_layout!(@name $f $(, $cf)?);
            assert_eq!(
                std::mem::offset_of!($t, $f),
                l[&format!("{}.{}", $c, cname)],
                "offsetof(struct {}, {})", $c, cname
            );
        )*
        // Every C field is covered.
        let fields = l
            .keys()
            .filter(|k| k.starts_with(concat!($c, ".")) && !k.ends_with(".sizeof"))
            .count();
        let ours = [$(stringify!($f)),*].len();
        assert!(ours >= fields - usize::from($c == "iommu_hw_info"), "every field of struct {}", $c);
    }};
    (@name $f:ident, $cf:literal) => { $cf };
    (@name $f:ident) => { stringify!($f).trim_start_matches("r#") };
}

#[test]
fn every_structure_is_laid_out_as_linux_7_3_lays_it_out() {
    let l = layout();
    same_layout!(l, Destroy, "iommu_destroy", [size, id]);
    same_layout!(l, IoasAlloc, "iommu_ioas_alloc", [size, flags, out_ioas_id]);
    same_layout!(l, IovaRange, "iommu_iova_range", [start, last]);
    same_layout!(
        l,
        IoasIovaRanges,
        "iommu_ioas_iova_ranges",
        [
            size,
            ioas_id,
            num_iovas,
            reserved = "__reserved",
            allowed_iovas,
            out_iova_alignment
        ]
    );
    same_layout!(
        l,
        IoasAllowIovas,
        "iommu_ioas_allow_iovas",
        [
            size,
            ioas_id,
            num_iovas,
            reserved = "__reserved",
            allowed_iovas
        ]
    );
    same_layout!(
        l,
        IoasMap,
        "iommu_ioas_map",
        [
            size,
            flags,
            ioas_id,
            reserved = "__reserved",
            user_va,
            length,
            iova
        ]
    );
    same_layout!(
        l,
        IoasNoiommuGetPa,
        "iommu_ioas_noiommu_get_pa",
        [
            size,
            flags,
            ioas_id,
            reserved = "__reserved",
            iova,
            length,
            out_phys
        ]
    );
    same_layout!(
        l,
        IoasMapFile,
        "iommu_ioas_map_file",
        [size, flags, ioas_id, fd, start, length, iova]
    );
    same_layout!(
        l,
        IoasCopy,
        "iommu_ioas_copy",
        [
            size,
            flags,
            dst_ioas_id,
            src_ioas_id,
            length,
            dst_iova,
            src_iova
        ]
    );
    same_layout!(
        l,
        IoasUnmap,
        "iommu_ioas_unmap",
        [size, ioas_id, iova, length]
    );
    same_layout!(
        l,
        IommuOption,
        "iommu_option",
        [
            size,
            option_id,
            op,
            reserved = "__reserved",
            object_id,
            val64
        ]
    );
    same_layout!(
        l,
        VfioIoas,
        "iommu_vfio_ioas",
        [size, ioas_id, op, reserved = "__reserved"]
    );
    same_layout!(l, HwptArmSmmuv3, "iommu_hwpt_arm_smmuv3", [ste]);
    same_layout!(
        l,
        HwptAlloc,
        "iommu_hwpt_alloc",
        [
            size,
            flags,
            dev_id,
            pt_id,
            out_hwpt_id,
            reserved = "__reserved",
            data_type,
            data_len,
            data_uptr,
            fault_id,
            reserved2 = "__reserved2"
        ]
    );
    same_layout!(
        l,
        HwInfoArmSmmuv3,
        "iommu_hw_info_arm_smmuv3",
        [flags, reserved = "__reserved", idr, iidr, aidr]
    );
    same_layout!(
        l,
        HwInfo,
        "iommu_hw_info",
        [
            size,
            flags,
            dev_id,
            data_len,
            data_uptr,
            data_type = "in_data_type",
            out_max_pasid_log2,
            reserved = "__reserved",
            out_capabilities
        ]
    );
    assert_eq!(
        l["iommu_hw_info.out_data_type"],
        l["iommu_hw_info.in_data_type"]
    );
    same_layout!(
        l,
        HwptSetDirtyTracking,
        "iommu_hwpt_set_dirty_tracking",
        [size, flags, hwpt_id, reserved = "__reserved"]
    );
    same_layout!(
        l,
        HwptGetDirtyBitmap,
        "iommu_hwpt_get_dirty_bitmap",
        [
            size,
            hwpt_id,
            flags,
            reserved = "__reserved",
            iova,
            length,
            page_size,
            data
        ]
    );
    same_layout!(
        l,
        ViommuArmSmmuv3Invalidate,
        "iommu_viommu_arm_smmuv3_invalidate",
        [cmd]
    );
    same_layout!(
        l,
        HwptInvalidate,
        "iommu_hwpt_invalidate",
        [
            size,
            hwpt_id,
            data_uptr,
            data_type,
            entry_len,
            entry_num,
            reserved = "__reserved"
        ]
    );
    same_layout!(
        l,
        HwptPgfault,
        "iommu_hwpt_pgfault",
        [
            flags,
            dev_id,
            pasid,
            grpid,
            perm,
            reserved = "__reserved",
            addr,
            length,
            cookie
        ]
    );
    same_layout!(
        l,
        HwptPageResponse,
        "iommu_hwpt_page_response",
        [cookie, code]
    );
    same_layout!(
        l,
        FaultAlloc,
        "iommu_fault_alloc",
        [size, flags, out_fault_id, out_fault_fd]
    );
    same_layout!(
        l,
        ViommuAlloc,
        "iommu_viommu_alloc",
        [
            size,
            flags,
            r#type,
            dev_id,
            hwpt_id,
            out_viommu_id,
            data_len,
            reserved = "__reserved",
            data_uptr
        ]
    );
    same_layout!(
        l,
        VdeviceAlloc,
        "iommu_vdevice_alloc",
        [size, viommu_id, dev_id, out_vdevice_id, virt_id]
    );
    same_layout!(
        l,
        IoasChangeProcess,
        "iommu_ioas_change_process",
        [size, reserved = "__reserved"]
    );
    same_layout!(l, VeventArmSmmuv3, "iommu_vevent_arm_smmuv3", [evt]);
    same_layout!(
        l,
        VeventqAlloc,
        "iommu_veventq_alloc",
        [
            size,
            flags,
            viommu_id,
            r#type,
            veventq_depth,
            out_veventq_id,
            out_veventq_fd,
            reserved = "__reserved"
        ]
    );
    same_layout!(
        l,
        HwQueueAlloc,
        "iommu_hw_queue_alloc",
        [
            size,
            flags,
            viommu_id,
            r#type,
            index,
            out_hw_queue_id,
            nesting_parent_iova,
            length
        ]
    );
}

#[test]
fn the_command_table_is_linuxs() {
    use std::mem::size_of;
    let sizes = [
        (Cmd::Destroy, size_of::<Destroy>()),
        (Cmd::IoasAlloc, size_of::<IoasAlloc>()),
        (Cmd::IoasAllowIovas, size_of::<IoasAllowIovas>()),
        (Cmd::IoasCopy, size_of::<IoasCopy>()),
        (Cmd::IoasIovaRanges, size_of::<IoasIovaRanges>()),
        (Cmd::IoasMap, size_of::<IoasMap>()),
        (Cmd::IoasUnmap, size_of::<IoasUnmap>()),
        (Cmd::Option, size_of::<IommuOption>()),
        (Cmd::VfioIoas, size_of::<VfioIoas>()),
        (Cmd::HwptAlloc, size_of::<HwptAlloc>()),
        (Cmd::GetHwInfo, size_of::<HwInfo>()),
        (Cmd::HwptSetDirtyTracking, size_of::<HwptSetDirtyTracking>()),
        (Cmd::HwptGetDirtyBitmap, size_of::<HwptGetDirtyBitmap>()),
        (Cmd::HwptInvalidate, size_of::<HwptInvalidate>()),
        (Cmd::FaultQueueAlloc, size_of::<FaultAlloc>()),
        (Cmd::IoasMapFile, size_of::<IoasMapFile>()),
        (Cmd::ViommuAlloc, size_of::<ViommuAlloc>()),
        (Cmd::VdeviceAlloc, size_of::<VdeviceAlloc>()),
        (Cmd::IoasChangeProcess, size_of::<IoasChangeProcess>()),
        (Cmd::VeventqAlloc, size_of::<VeventqAlloc>()),
        (Cmd::HwQueueAlloc, size_of::<HwQueueAlloc>()),
        (Cmd::IoasNoiommuGetPa, size_of::<IoasNoiommuGetPa>()),
    ];
    for (cmd, size) in sizes {
        assert_eq!(cmd.size(), size, "{}", cmd.name());
        assert!(cmd.min_size() <= size && cmd.min_size() >= 8);
    }
    // `_IO(';', nr)`: IOMMU_IOAS_MAP is 0x3b85, IOMMU_TEST_CMD 0x3ba0.
    assert_eq!(Cmd::IoasMap.ioctl(), 0x3b85);
    assert_eq!(Cmd::TestCmd.ioctl(), 0x3ba0);
    assert_eq!(Cmd::from_ioctl(0x3b85), Some(Cmd::IoasMap));
    // A number the table has no entry for, or with a size encoded.
    for n in [0x3b96, 0x3b7f, 0x3b00, 0x4b85, 0x0010_3b85] {
        assert_eq!(Cmd::from_ioctl(n), None, "{n:#x}");
    }
    let mut nrs: Vec<u8> = Cmd::ALL.iter().map(|c| c.nr()).collect();
    nrs.dedup();
    assert_eq!(nrs.len(), Cmd::ALL.len(), "numbers in order, once each");
    assert!(Cmd::ALL.iter().all(|c| c.size() <= MAX_CMD_SIZE));
}

fn map_cmd() -> IoasMap {
    IoasMap {
        size: 40,
        flags: ioas_map::READABLE | ioas_map::WRITEABLE,
        ioas_id: 2,
        reserved: 0,
        user_va: 0x7f00_0000_0000,
        length: 0x1000,
        iova: 0,
    }
}

#[test]
fn a_command_is_read_at_any_size_from_its_first_version_up() {
    let cmd = map_cmd();
    let bytes = cmd.as_bytes().to_vec();
    let u = Ucmd::decode(Cmd::IoasMap.ioctl(), &bytes).unwrap();
    assert_eq!(u.get::<IoasMap>(), Some(cmd));
    assert_eq!(u.get::<IoasUnmap>(), None, "another structure's size");
    // Longer, with zeros past the end: accepted, read at the kernel's size.
    let mut longer = bytes.clone();
    longer.extend([0u8; 24]);
    longer[..4].copy_from_slice(&64u32.to_ne_bytes());
    let u = Ucmd::decode(Cmd::IoasMap.ioctl(), &longer).unwrap();
    assert_eq!(u.user_size(), 64);
    assert_eq!(u.get::<IoasMap>().unwrap().user_va, cmd.user_va);
    // ... with a non-zero byte the kernel does not know: E2BIG.
    longer[50] = 1;
    assert_eq!(
        Ucmd::decode(Cmd::IoasMap.ioctl(), &longer).err(),
        Some(Errno::E2BIG)
    );
    // Shorter than the first version: EINVAL. Shorter than declared: EFAULT.
    let mut short = bytes.clone();
    short[..4].copy_from_slice(&32u32.to_ne_bytes());
    assert_eq!(
        Ucmd::decode(Cmd::IoasMap.ioctl(), &short).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        Ucmd::decode(Cmd::IoasMap.ioctl(), &bytes[..39]).err(),
        Some(Errno::EFAULT)
    );
    assert_eq!(
        Ucmd::decode(Cmd::IoasMap.ioctl(), &bytes[..3]).err(),
        Some(Errno::EFAULT)
    );
    assert_eq!(Ucmd::decode(0x3b99, &bytes).err(), Some(Errno::ENOTTY));
    // HWPT_ALLOC grew: its first version (24 bytes) reads with the rest zero.
    let mut old = vec![0u8; 24];
    old[..4].copy_from_slice(&24u32.to_ne_bytes());
    old[8..12].copy_from_slice(&7u32.to_ne_bytes());
    let h = Ucmd::decode(Cmd::HwptAlloc.ioctl(), &old)
        .unwrap()
        .get::<HwptAlloc>()
        .unwrap();
    assert_eq!((h.size, h.dev_id, h.data_type, h.fault_id), (24, 7, 0, 0));
}

#[test]
fn a_reply_is_no_longer_than_the_callers_structure() {
    let mut old = vec![0u8; 24];
    old[..4].copy_from_slice(&24u32.to_ne_bytes());
    let u = Ucmd::decode(Cmd::HwptAlloc.ioctl(), &old).unwrap();
    let reply = HwptAlloc {
        size: 24,
        out_hwpt_id: 9,
        fault_id: 0xffff_ffff,
        ..HwptAlloc::default()
    };
    let mut out = vec![0x5au8; 32];
    u.respond(&reply, &mut out).unwrap();
    assert_eq!(out[16..20], 9u32.to_ne_bytes(), "out_hwpt_id");
    assert!(
        out[24..].iter().all(|&b| b == 0x5a),
        "nothing past 24 bytes"
    );
    assert_eq!(u.respond(&reply, &mut out[..20]), Err(Errno::EFAULT));
}

/// Deterministic inputs, also the seed corpus of the `iommufd_ucmd` fuzz
/// target.
#[test]
fn seed_commands_decode_by_the_kernels_rules() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for (i, cmd) in Cmd::ALL.iter().enumerate() {
        for size in [cmd.min_size(), cmd.size(), cmd.size() + 8, 4, 0] {
            let mut s = (i as u16).to_le_bytes().to_vec();
            s.extend((size as u32).to_ne_bytes());
            s.extend((4..size.max(4)).map(|b| (b as u8).wrapping_mul(31) & 0x7));
            seeds.push(s);
        }
    }
    for (n, s) in seeds.iter().enumerate() {
        decode_any(s);
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("iommufd_ucmd");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed{n:03}")), s).unwrap();
        }
    }
}

proptest::proptest! {
    /// Any bytes as any command: the decoder answers as the rules say.
    #[test]
    fn any_bytes_decode_by_the_kernels_rules(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..120)
    ) {
        decode_any(&data);
    }
}
