//! The iommufd user API as Linux 7.3 lays it out
//! (`include/uapi/linux/iommufd.h`), and the way the kernel reads it.
//!
//! Every ioctl passes one structure whose first `u32` is its size as the
//! caller compiled it. Structures only ever grow at their end, so the
//! kernel ([`Ucmd::decode`], Linux's `iommufd_fops_ioctl` and
//! `copy_struct_from_user`) accepts any size from the first version's
//! ([`Cmd::min_size`]) up: a shorter structure reads as if the missing
//! fields were zero, a longer one only if the bytes it does not know are
//! zero (`E2BIG` otherwise). Replies are written back no longer than the
//! caller's size ([`Ucmd::respond`]).
//!
//! The structures are plain `#[repr(C)]` values with derived byte views
//! (`zerocopy`), laid out field for field as the C header: the tests
//! compare every size and offset with the header compiled by gcc.
//! Reserved fields are named `reserved` (`__reserved` in C).

use iommu_types::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The ioctl type of every iommufd command (`IOMMUFD_TYPE`).
pub const IOMMUFD_TYPE: u8 = b';';
/// The first command number (`IOMMUFD_CMD_BASE`).
pub const CMD_BASE: u8 = 0x80;

/// `_IO(IOMMUFD_TYPE, nr)`: no direction and no size are encoded; the
/// structure's own `size` field says how long it is.
pub const fn ioctl_num(nr: u8) -> u32 {
    ((IOMMUFD_TYPE as u32) << 8) | nr as u32
}

/// The iommufd commands, with the selftest's `IOMMU_TEST_CMD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cmd {
    /// `IOMMU_DESTROY`.
    Destroy,
    /// `IOMMU_IOAS_ALLOC`.
    IoasAlloc,
    /// `IOMMU_IOAS_ALLOW_IOVAS`.
    IoasAllowIovas,
    /// `IOMMU_IOAS_COPY`.
    IoasCopy,
    /// `IOMMU_IOAS_IOVA_RANGES`.
    IoasIovaRanges,
    /// `IOMMU_IOAS_MAP`.
    IoasMap,
    /// `IOMMU_IOAS_UNMAP`.
    IoasUnmap,
    /// `IOMMU_OPTION`.
    Option,
    /// `IOMMU_VFIO_IOAS`.
    VfioIoas,
    /// `IOMMU_HWPT_ALLOC`.
    HwptAlloc,
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo,
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    HwptSetDirtyTracking,
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    HwptGetDirtyBitmap,
    /// `IOMMU_HWPT_INVALIDATE`.
    HwptInvalidate,
    /// `IOMMU_FAULT_QUEUE_ALLOC`.
    FaultQueueAlloc,
    /// `IOMMU_IOAS_MAP_FILE`.
    IoasMapFile,
    /// `IOMMU_VIOMMU_ALLOC`.
    ViommuAlloc,
    /// `IOMMU_VDEVICE_ALLOC`.
    VdeviceAlloc,
    /// `IOMMU_IOAS_CHANGE_PROCESS`.
    IoasChangeProcess,
    /// `IOMMU_VEVENTQ_ALLOC`.
    VeventqAlloc,
    /// `IOMMU_HW_QUEUE_ALLOC`.
    HwQueueAlloc,
    /// `IOMMU_IOAS_NOIOMMU_GET_PA`.
    IoasNoiommuGetPa,
    /// `IOMMU_TEST_CMD`: the selftest's mock operations.
    TestCmd,
}

/// The largest structure any command takes (`union ucmd_buffer`).
pub const MAX_CMD_SIZE: usize = 72;

impl Cmd {
    /// Every command, in command-number order.
    pub const ALL: [Cmd; 23] = [
        Cmd::Destroy,
        Cmd::IoasAlloc,
        Cmd::IoasAllowIovas,
        Cmd::IoasCopy,
        Cmd::IoasIovaRanges,
        Cmd::IoasMap,
        Cmd::IoasUnmap,
        Cmd::Option,
        Cmd::VfioIoas,
        Cmd::HwptAlloc,
        Cmd::GetHwInfo,
        Cmd::HwptSetDirtyTracking,
        Cmd::HwptGetDirtyBitmap,
        Cmd::HwptInvalidate,
        Cmd::FaultQueueAlloc,
        Cmd::IoasMapFile,
        Cmd::ViommuAlloc,
        Cmd::VdeviceAlloc,
        Cmd::IoasChangeProcess,
        Cmd::VeventqAlloc,
        Cmd::HwQueueAlloc,
        Cmd::IoasNoiommuGetPa,
        Cmd::TestCmd,
    ];

    /// `(name, command number, size, first version's size)`, as Linux's
    /// `iommufd_ioctl_ops` table has them (`sizeof` and `offsetofend` of
    /// the field each structure started with).
    const fn row(self) -> (&'static str, u8, usize, usize) {
        match self {
            Cmd::Destroy => ("IOMMU_DESTROY", 0x80, 8, 8),
            Cmd::IoasAlloc => ("IOMMU_IOAS_ALLOC", 0x81, 12, 12),
            Cmd::IoasAllowIovas => ("IOMMU_IOAS_ALLOW_IOVAS", 0x82, 24, 24),
            Cmd::IoasCopy => ("IOMMU_IOAS_COPY", 0x83, 40, 40),
            Cmd::IoasIovaRanges => ("IOMMU_IOAS_IOVA_RANGES", 0x84, 32, 32),
            Cmd::IoasMap => ("IOMMU_IOAS_MAP", 0x85, 40, 40),
            Cmd::IoasUnmap => ("IOMMU_IOAS_UNMAP", 0x86, 24, 24),
            Cmd::Option => ("IOMMU_OPTION", 0x87, 24, 24),
            Cmd::VfioIoas => ("IOMMU_VFIO_IOAS", 0x88, 12, 12),
            Cmd::HwptAlloc => ("IOMMU_HWPT_ALLOC", 0x89, 48, 24),
            Cmd::GetHwInfo => ("IOMMU_GET_HW_INFO", 0x8a, 40, 32),
            Cmd::HwptSetDirtyTracking => ("IOMMU_HWPT_SET_DIRTY_TRACKING", 0x8b, 16, 16),
            Cmd::HwptGetDirtyBitmap => ("IOMMU_HWPT_GET_DIRTY_BITMAP", 0x8c, 48, 48),
            Cmd::HwptInvalidate => ("IOMMU_HWPT_INVALIDATE", 0x8d, 32, 32),
            Cmd::FaultQueueAlloc => ("IOMMU_FAULT_QUEUE_ALLOC", 0x8e, 16, 16),
            Cmd::IoasMapFile => ("IOMMU_IOAS_MAP_FILE", 0x8f, 40, 40),
            Cmd::ViommuAlloc => ("IOMMU_VIOMMU_ALLOC", 0x90, 40, 24),
            Cmd::VdeviceAlloc => ("IOMMU_VDEVICE_ALLOC", 0x91, 24, 24),
            Cmd::IoasChangeProcess => ("IOMMU_IOAS_CHANGE_PROCESS", 0x92, 8, 8),
            Cmd::VeventqAlloc => ("IOMMU_VEVENTQ_ALLOC", 0x93, 32, 28),
            Cmd::HwQueueAlloc => ("IOMMU_HW_QUEUE_ALLOC", 0x94, 40, 40),
            Cmd::IoasNoiommuGetPa => ("IOMMU_IOAS_NOIOMMU_GET_PA", 0x95, 40, 40),
            Cmd::TestCmd => ("IOMMU_TEST_CMD", 0xa0, 72, 68),
        }
    }

    /// The C name, e.g. `"IOMMU_IOAS_MAP"`.
    pub const fn name(self) -> &'static str {
        self.row().0
    }

    /// The command number (`IOMMUFD_CMD_*`).
    pub const fn nr(self) -> u8 {
        self.row().1
    }

    /// The ioctl number a program passes.
    pub const fn ioctl(self) -> u32 {
        ioctl_num(self.nr())
    }

    /// The structure's size in Linux 7.3.
    pub const fn size(self) -> usize {
        self.row().2
    }

    /// The smallest size accepted: the structure's first version.
    pub const fn min_size(self) -> usize {
        self.row().3
    }

    /// The command an ioctl number names exactly.
    pub fn from_ioctl(num: u32) -> Option<Cmd> {
        Cmd::ALL.into_iter().find(|c| c.ioctl() == num)
    }
}

/// Whether `ioctl`'s command number is in the range iommufd's table
/// covers (`IOMMUFD_CMD_BASE` to `IOMMU_TEST_CMD`): only then is the
/// caller's size word read.
pub fn in_range(ioctl: u32) -> bool {
    let nr = (ioctl & 0xff) as u8;
    (CMD_BASE..=Cmd::TestCmd.nr()).contains(&nr)
}

/// One command read from its caller (Linux's `struct iommufd_ucmd`): the
/// structure at the kernel's size, whatever size the caller had.
#[derive(Clone, Debug)]
pub struct Ucmd {
    cmd: Cmd,
    user_size: u32,
    buf: [u8; MAX_CMD_SIZE],
}

impl Ucmd {
    /// Reads the command `ioctl` from `arg`, the bytes the caller's
    /// pointer reaches (in a process: up to the end of its mapping).
    ///
    /// # Errors
    /// - `ENOTTY`: not an iommufd command number (Linux hands numbers
    ///   below [`CMD_BASE`] to its VFIO compatibility layer, which this
    ///   crate does not have, and answers others `ENOIOCTLCMD`);
    /// - `EFAULT`: `arg` holds fewer bytes than the size it declares;
    /// - `EINVAL`: a size below the first version's;
    /// - `E2BIG`: a longer structure whose extra bytes are not zero.
    pub fn decode(ioctl: u32, arg: &[u8]) -> Result<Ucmd, Errno> {
        Self::read_from(ioctl, |offset, buf| {
            let start = usize::try_from(offset).map_err(|_| Errno::EFAULT)?;
            let end = start.checked_add(buf.len()).ok_or(Errno::EFAULT)?;
            buf.copy_from_slice(arg.get(start..end).ok_or(Errno::EFAULT)?);
            Ok(())
        })
    }

    /// [`decode`](Self::decode) through `read(offset, buf)`, which fills
    /// `buf` from the caller's structure at `offset` (`EFAULT` where the
    /// caller's memory ends). A structure longer than the kernel's has its
    /// extra bytes read in pieces of at most a page, so a hostile size
    /// costs time in proportion to what is readable, never memory.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn read_from(
        ioctl: u32,
        mut read: impl FnMut(u64, &mut [u8]) -> Result<(), Errno>,
    ) -> Result<Ucmd, Errno> {
        // Linux's order: the number's range, then the size word, then the
        // exact number, the first version's size, the unknown tail, the
        // structure.
        if !in_range(ioctl) {
            return Err(Errno::ENOTTY);
        }
        let mut head = [0u8; 4];
        read(0, &mut head)?;
        let cmd = Cmd::from_ioctl(ioctl).ok_or(Errno::ENOTTY)?;
        let user_size = u32::from_ne_bytes(head);
        let size = cmd.size() as u64;
        if u64::from(user_size) < cmd.min_size() as u64 {
            return Err(Errno::EINVAL);
        }
        let mut at = size;
        let mut chunk = [0u8; 4096];
        while at < u64::from(user_size) {
            let n = (u64::from(user_size) - at).min(chunk.len() as u64) as usize;
            read(at, &mut chunk[..n])?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Err(Errno::E2BIG);
            }
            at += n as u64;
        }
        let mut buf = [0u8; MAX_CMD_SIZE];
        let n = (u64::from(user_size).min(size)) as usize;
        read(0, &mut buf[..n])?;
        Ok(Ucmd {
            cmd,
            user_size,
            buf,
        })
    }

    /// The command.
    pub fn cmd(&self) -> Cmd {
        self.cmd
    }

    /// The size the caller declared.
    pub fn user_size(&self) -> u32 {
        self.user_size
    }

    /// The structure at the kernel's size (missing fields zero).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.cmd.size()]
    }

    /// The structure as `T`; `None` when `T` is not this command's
    /// structure's size.
    pub fn get<T: FromBytes + KnownLayout + Immutable>(&self) -> Option<T> {
        T::read_from_bytes(self.bytes()).ok()
    }

    /// Writes `reply` back to `arg`, no longer than the caller's size
    /// (Linux's `iommufd_ucmd_respond`).
    ///
    /// # Errors
    /// `EFAULT` when `arg` is shorter than what is written back.
    pub fn respond<T: IntoBytes + Immutable + ?Sized>(
        &self,
        reply: &T,
        arg: &mut [u8],
    ) -> Result<(), Errno> {
        let bytes = reply.as_bytes();
        let n = bytes.len().min(self.user_size as usize);
        arg.get_mut(..n)
            .ok_or(Errno::EFAULT)?
            .copy_from_slice(&bytes[..n]);
        Ok(())
    }
}

macro_rules! uapi_struct {
    ($(#[$m:meta])* $name:ident $(align $al:literal)? { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(C $(, align($al))?)]
        pub struct $name {
            $(
                #[doc = concat!("The C structure's `", stringify!($f), "`.")]
                $(#[$fm])* pub $f: $t,
            )*
        }
    };
}

uapi_struct!(
    /// `struct iommu_destroy`.
    Destroy { size: u32, id: u32 }
);
uapi_struct!(
    /// `struct iommu_ioas_alloc`.
    IoasAlloc { size: u32, flags: u32, out_ioas_id: u32 }
);
uapi_struct!(
    /// `struct iommu_iova_range`: `[start, last]`.
    IovaRange align 8 { start: u64, last: u64 }
);
uapi_struct!(
    /// `struct iommu_ioas_iova_ranges`.
    IoasIovaRanges align 8 {
        size: u32, ioas_id: u32, num_iovas: u32, reserved: u32,
        allowed_iovas: u64, out_iova_alignment: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_allow_iovas`.
    IoasAllowIovas align 8 {
        size: u32, ioas_id: u32, num_iovas: u32, reserved: u32, allowed_iovas: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_map`.
    IoasMap align 8 {
        size: u32, flags: u32, ioas_id: u32, reserved: u32,
        user_va: u64, length: u64, iova: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_noiommu_get_pa`.
    IoasNoiommuGetPa align 8 {
        size: u32, flags: u32, ioas_id: u32, reserved: u32,
        iova: u64, length: u64, out_phys: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_map_file`.
    IoasMapFile align 8 {
        size: u32, flags: u32, ioas_id: u32, fd: i32,
        start: u64, length: u64, iova: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_copy`.
    IoasCopy align 8 {
        size: u32, flags: u32, dst_ioas_id: u32, src_ioas_id: u32,
        length: u64, dst_iova: u64, src_iova: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_unmap`.
    IoasUnmap align 8 { size: u32, ioas_id: u32, iova: u64, length: u64 }
);
uapi_struct!(
    /// `struct iommu_option`.
    IommuOption align 8 {
        size: u32, option_id: u32, op: u16, reserved: u16, object_id: u32, val64: u64,
    }
);
uapi_struct!(
    /// `struct iommu_vfio_ioas`.
    VfioIoas { size: u32, ioas_id: u32, op: u16, reserved: u16 }
);
uapi_struct!(
    /// `struct iommu_hwpt_arm_smmuv3`: a guest's vSTE, little-endian.
    HwptArmSmmuv3 align 8 { ste: [u64; 2] }
);
uapi_struct!(
    /// `struct iommu_hwpt_alloc`.
    HwptAlloc align 8 {
        size: u32, flags: u32, dev_id: u32, pt_id: u32, out_hwpt_id: u32, reserved: u32,
        data_type: u32, data_len: u32, data_uptr: u64, fault_id: u32, reserved2: u32,
    }
);
uapi_struct!(
    /// `struct iommu_hw_info_arm_smmuv3`.
    HwInfoArmSmmuv3 { flags: u32, reserved: u32, idr: [u32; 6], iidr: u32, aidr: u32 }
);
uapi_struct!(
    /// `struct iommu_hw_info` (`in_data_type` and `out_data_type` share
    /// `data_type`).
    HwInfo align 8 {
        size: u32, flags: u32, dev_id: u32, data_len: u32, data_uptr: u64,
        data_type: u32, out_max_pasid_log2: u8, reserved: [u8; 3], out_capabilities: u64,
    }
);
uapi_struct!(
    /// `struct iommu_hwpt_set_dirty_tracking`.
    HwptSetDirtyTracking { size: u32, flags: u32, hwpt_id: u32, reserved: u32 }
);
uapi_struct!(
    /// `struct iommu_hwpt_get_dirty_bitmap`.
    HwptGetDirtyBitmap align 8 {
        size: u32, hwpt_id: u32, flags: u32, reserved: u32,
        iova: u64, length: u64, page_size: u64, data: u64,
    }
);
uapi_struct!(
    /// `struct iommu_viommu_arm_smmuv3_invalidate`: one guest command, little-endian.
    ViommuArmSmmuv3Invalidate align 8 { cmd: [u64; 2] }
);
uapi_struct!(
    /// `struct iommu_hwpt_invalidate`.
    HwptInvalidate align 8 {
        size: u32, hwpt_id: u32, data_uptr: u64,
        data_type: u32, entry_len: u32, entry_num: u32, reserved: u32,
    }
);
uapi_struct!(
    /// `struct iommu_hwpt_pgfault`: one I/O page fault read from a fault queue.
    HwptPgfault align 8 {
        flags: u32, dev_id: u32, pasid: u32, grpid: u32, perm: u32, reserved: u32,
        addr: u64, length: u32, cookie: u32,
    }
);
uapi_struct!(
    /// `struct iommu_hwpt_page_response`.
    HwptPageResponse { cookie: u32, code: u32 }
);
uapi_struct!(
    /// `struct iommu_fault_alloc`.
    FaultAlloc { size: u32, flags: u32, out_fault_id: u32, out_fault_fd: u32 }
);
uapi_struct!(
    /// `struct iommu_viommu_alloc`.
    ViommuAlloc align 8 {
        size: u32, flags: u32, r#type: u32, dev_id: u32, hwpt_id: u32, out_viommu_id: u32,
        data_len: u32, reserved: u32, data_uptr: u64,
    }
);
uapi_struct!(
    /// `struct iommu_vdevice_alloc`.
    VdeviceAlloc align 8 {
        size: u32, viommu_id: u32, dev_id: u32, out_vdevice_id: u32, virt_id: u64,
    }
);
uapi_struct!(
    /// `struct iommu_ioas_change_process`.
    IoasChangeProcess { size: u32, reserved: u32 }
);
uapi_struct!(
    /// `struct iommu_vevent_arm_smmuv3`: one event, little-endian.
    VeventArmSmmuv3 align 8 { evt: [u64; 4] }
);
uapi_struct!(
    /// `struct iommu_veventq_alloc`.
    VeventqAlloc {
        size: u32, flags: u32, viommu_id: u32, r#type: u32, veventq_depth: u32,
        out_veventq_id: u32, out_veventq_fd: u32, reserved: u32,
    }
);
uapi_struct!(
    /// `struct iommu_hw_queue_alloc`.
    HwQueueAlloc align 8 {
        size: u32, flags: u32, viommu_id: u32, r#type: u32, index: u32, out_hw_queue_id: u32,
        nesting_parent_iova: u64, length: u64,
    }
);

/// `IOMMU_IOAS_MAP` flags (`enum iommufd_ioas_map_flags`).
pub mod ioas_map {
    /// Map at the given IOVA (`IOMMU_IOAS_MAP_FIXED_IOVA`).
    pub const FIXED_IOVA: u32 = 1 << 0;
    /// DMA may write (`IOMMU_IOAS_MAP_WRITEABLE`).
    pub const WRITEABLE: u32 = 1 << 1;
    /// DMA may read (`IOMMU_IOAS_MAP_READABLE`).
    pub const READABLE: u32 = 1 << 2;
}

/// `IOMMU_HWPT_ALLOC` flags (`enum iommufd_hwpt_alloc_flags`).
pub mod hwpt_alloc {
    /// `IOMMU_HWPT_ALLOC_NEST_PARENT`.
    pub const NEST_PARENT: u32 = 1 << 0;
    /// `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`.
    pub const DIRTY_TRACKING: u32 = 1 << 1;
    /// `IOMMU_HWPT_FAULT_ID_VALID`.
    pub const FAULT_ID_VALID: u32 = 1 << 2;
    /// `IOMMU_HWPT_ALLOC_PASID`.
    pub const PASID: u32 = 1 << 3;
}

/// Driver data types of `IOMMU_HWPT_ALLOC` (`enum iommu_hwpt_data_type`).
pub mod hwpt_data {
    /// No data (`IOMMU_HWPT_DATA_NONE`).
    pub const NONE: u32 = 0;
    /// Intel VT-d stage 1 (`IOMMU_HWPT_DATA_VTD_S1`).
    pub const VTD_S1: u32 = 1;
    /// Arm SMMUv3 vSTE (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    pub const ARM_SMMUV3: u32 = 2;
    /// AMD guest DTE (`IOMMU_HWPT_DATA_AMD_GUEST`).
    pub const AMD_GUEST: u32 = 3;
    /// The selftest's mock (`IOMMU_HWPT_DATA_SELFTEST`).
    pub const SELFTEST: u32 = 0xdead;
}

/// `IOMMU_OPTION` options and operations.
pub mod option {
    /// `IOMMU_OPTION_RLIMIT_MODE`.
    pub const RLIMIT_MODE: u32 = 0;
    /// `IOMMU_OPTION_HUGE_PAGES`.
    pub const HUGE_PAGES: u32 = 1;
    /// `IOMMU_OPTION_OP_SET`.
    pub const OP_SET: u16 = 0;
    /// `IOMMU_OPTION_OP_GET`.
    pub const OP_GET: u16 = 1;
}
