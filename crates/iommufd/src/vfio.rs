//! VFIO container compatibility (Linux's `vfio_compat.c`): the type1
//! ioctls a program written for `/dev/vfio/vfio` sends, served on one of
//! the context's IOASes (the compat IOAS, chosen with `IOMMU_VFIO_IOAS`).
//!
//! Served: `VFIO_GET_API_VERSION`, `VFIO_CHECK_EXTENSION`,
//! `VFIO_SET_IOMMU` (type1 disables large pages so any range can be cut,
//! type1v2 keeps them), `VFIO_IOMMU_GET_INFO` (page sizes and the
//! capability chain: DMA available, then the usable IOVA ranges),
//! `VFIO_IOMMU_MAP_DMA` and `VFIO_IOMMU_UNMAP_DMA` (with `UNMAP_FLAG_ALL`;
//! an unmap of nothing succeeds, as VFIO's). Every other number in the
//! VFIO space is `ENOTTY`.

use crate::ctx::{lock, Ictx, Ioas, UserMemory};
use crate::iopt::PAGE_SIZE;
use crate::uapi;
use alloc::sync::{Arc, Weak};
use iommu_types::{Errno, Prot};
use std::sync::Mutex;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VFIO_API_VERSION`.
pub const API_VERSION: i32 = 0;
/// `VFIO_TYPE1_IOMMU`.
pub const TYPE1_IOMMU: u64 = 1;
/// `VFIO_TYPE1v2_IOMMU`.
pub const TYPE1V2_IOMMU: u64 = 3;
/// `VFIO_DMA_CC_IOMMU`.
pub const DMA_CC_IOMMU: u64 = 4;
/// `VFIO_UNMAP_ALL`.
pub const UNMAP_ALL: u64 = 9;

const fn vfio_io(n: u32) -> u32 {
    // _IO(';', 100 + n)
    ((b';' as u32) << 8) | (100 + n)
}
/// `VFIO_GET_API_VERSION`.
pub const GET_API_VERSION: u32 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`.
pub const CHECK_EXTENSION: u32 = vfio_io(1);
/// `VFIO_SET_IOMMU`.
pub const SET_IOMMU: u32 = vfio_io(2);
/// `VFIO_IOMMU_GET_INFO`.
pub const IOMMU_GET_INFO: u32 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA`.
pub const IOMMU_MAP_DMA: u32 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const IOMMU_UNMAP_DMA: u32 = vfio_io(14);

const MAP_FLAG_READ: u32 = 1 << 0;
const MAP_FLAG_WRITE: u32 = 1 << 1;
const UNMAP_FLAG_ALL: u32 = 1 << 1;
const INFO_PGSIZES: u32 = 1 << 0;
const INFO_CAPS: u32 = 1 << 1;
const CAP_IOVA_RANGE: u16 = 1;
const CAP_DMA_AVAIL: u16 = 3;

/// `IOMMU_VFIO_IOAS` operations.
#[allow(missing_docs)]
pub mod vfio_ioas {
    pub const GET: u16 = 0;
    pub const SET: u16 = 1;
    pub const CLEAR: u16 = 2;
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (without its data).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Info {
    argsz: u32,
    flags: u32,
    iova_pgsizes: u64,
    cap_offset: u32,
    pad: u32,
}

/// The compat IOAS a context's VFIO ioctls act on: not held (destroying
/// it is allowed, as in Linux, and then there is none).
#[derive(Debug, Default)]
pub(crate) struct Compat(Mutex<Option<(u32, Weak<Mutex<Ioas>>)>>);

impl Ictx {
    fn compat_ioas(&self) -> Result<(u32, Arc<Mutex<Ioas>>), Errno> {
        let (id, w) = lock(&self.vfio.0).clone().ok_or(Errno::ENODEV)?;
        // Gone, or the id now names something else: no compat IOAS.
        match (w.upgrade(), self.ioas(id)) {
            (Some(a), Ok(b)) if Arc::ptr_eq(&a, &b) => Ok((id, a)),
            _ => Err(Errno::ENODEV),
        }
    }

    /// `IOMMU_VFIO_IOAS` (Linux's `iommufd_vfio_ioas`).
    pub(crate) fn vfio_ioas(&self, c: &mut uapi::VfioIoas) -> Result<bool, Errno> {
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        match c.op {
            vfio_ioas::GET => {
                c.ioas_id = self.compat_ioas()?.0;
                Ok(true)
            }
            vfio_ioas::SET => {
                let ioas = self.ioas(c.ioas_id)?;
                *lock(&self.vfio.0) = Some((c.ioas_id, Arc::downgrade(&ioas)));
                Ok(false)
            }
            vfio_ioas::CLEAR => {
                *lock(&self.vfio.0) = None;
                Ok(false)
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// A VFIO container ioctl (Linux's `iommufd_vfio_ioctl`): its value.
    ///
    /// # Errors
    /// `ENOTTY` for a number VFIO does not have; each command's errno.
    pub fn vfio_ioctl(&self, num: u32, arg: u64, mem: &dyn UserMemory) -> Result<i32, Errno> {
        match num {
            GET_API_VERSION => Ok(API_VERSION),
            CHECK_EXTENSION => Ok(match arg {
                TYPE1_IOMMU | TYPE1V2_IOMMU | UNMAP_ALL => 1,
                // Every domain here is cache-coherent (bind refuses others).
                DMA_CC_IOMMU => {
                    self.compat_ioas()?;
                    1
                }
                _ => 0,
            }),
            SET_IOMMU => {
                if arg != TYPE1_IOMMU && arg != TYPE1V2_IOMMU {
                    return Err(Errno::EINVAL);
                }
                let (_, ioas) = self.compat_ioas()?;
                if arg == TYPE1_IOMMU {
                    lock(&ioas).set_huge_pages(false)?;
                }
                Ok(0)
            }
            IOMMU_GET_INFO => self.vfio_get_info(arg, mem).map(|()| 0),
            IOMMU_MAP_DMA => {
                let mut m = DmaMap::default();
                mem.read(arg, m.as_mut_bytes())?;
                if (m.argsz as usize) < core::mem::size_of::<DmaMap>()
                    || m.flags & !(MAP_FLAG_READ | MAP_FLAG_WRITE) != 0
                {
                    return Err(Errno::EINVAL);
                }
                let (id, _) = self.compat_ioas()?;
                // Always cache-coherent; neither read nor write is allowed
                // here (Linux maps IOMMU_CACHE alone then).
                let mut prot = Prot::CACHE;
                if m.flags & MAP_FLAG_READ != 0 {
                    prot |= Prot::READ;
                }
                if m.flags & MAP_FLAG_WRITE != 0 {
                    prot |= Prot::WRITE;
                }
                self.map_user_prot(id, m.vaddr, m.size, Some(m.iova), prot)
                    .map(|_| 0)
            }
            IOMMU_UNMAP_DMA => self.vfio_unmap(arg, mem).map(|()| 0),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn vfio_unmap(&self, arg: u64, mem: &dyn UserMemory) -> Result<(), Errno> {
        let mut u = DmaUnmap::default();
        mem.read(arg, u.as_mut_bytes())?;
        if (u.argsz as usize) < core::mem::size_of::<DmaUnmap>() || u.flags & !UNMAP_FLAG_ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let (_, ioas) = self.compat_ioas()?;
        // An unmap of nothing is success here (iommufd's own says ENOENT).
        let r = if u.flags & UNMAP_FLAG_ALL != 0 {
            if u.iova != 0 || u.size != 0 {
                return Err(Errno::EINVAL);
            }
            self.unmap_iova(&ioas, 0, u64::MAX)
        } else {
            if !lock(&ioas).huge_pages() {
                // Type1 may unmap any part of a mapping: cut the areas at
                // both ends of the range first.
                let mut g = lock(&ioas);
                let last = u.iova.wrapping_add(u.size).wrapping_sub(1);
                g.iopt.split_at(last)?;
                if u.iova != 0 {
                    g.iopt.split_at(u.iova - 1)?;
                }
            }
            self.unmap_iova(&ioas, u.iova, u.size)
        };
        let (unmapped, r) = match r {
            Ok(n) => (n, Ok(())),
            Err(e) => (0, Err(e)),
        };
        u.size = unmapped;
        mem.write(arg, u.as_bytes()).map_err(|_| Errno::EFAULT)?;
        r
    }

    fn vfio_get_info(&self, arg: u64, mem: &dyn UserMemory) -> Result<(), Errno> {
        let minsz = 16usize;
        let mut info = Info::default();
        mem.read(arg, &mut info.as_mut_bytes()[..minsz])?;
        if (info.argsz as usize) < minsz {
            return Err(Errno::EINVAL);
        }
        let minsz = (info.argsz as usize).min(core::mem::size_of::<Info>());
        let (_, ioas) = self.compat_ioas()?;
        let g = lock(&ioas);
        info.flags = INFO_PGSIZES;
        info.iova_pgsizes = pgsizes(&g);
        info.cap_offset = 0;
        let argsz = u64::from(info.argsz);
        let mut total = core::mem::size_of::<Info>() as u64;
        let mut last_cap: Option<u64> = None;
        let ranges = g.iopt.iova_ranges();
        for cap in 0..2 {
            let at = arg.checked_add(total).ok_or(Errno::EFAULT)?;
            let avail = argsz.saturating_sub(total);
            let size = match cap {
                0 => {
                    // DMA available: iommufd's limit is memory, not a count.
                    let mut b = [0u8; 12];
                    b[0..2].copy_from_slice(&CAP_DMA_AVAIL.to_ne_bytes());
                    b[2..4].copy_from_slice(&1u16.to_ne_bytes());
                    b[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
                    if avail >= 12 {
                        mem.write(at, &b)?;
                    }
                    12u64
                }
                _ => {
                    let n = ranges.len() as u64;
                    for (i, &(start, end)) in ranges.iter().enumerate() {
                        if avail >= 16 + 16 * (i as u64 + 1) {
                            let mut r = [0u8; 16];
                            r[..8].copy_from_slice(&start.to_ne_bytes());
                            r[8..].copy_from_slice(&end.to_ne_bytes());
                            mem.write(at + 16 + 16 * i as u64, &r)?;
                        }
                    }
                    if avail >= 16 + 16 * n {
                        let mut h = [0u8; 16];
                        h[0..2].copy_from_slice(&CAP_IOVA_RANGE.to_ne_bytes());
                        h[2..4].copy_from_slice(&1u16.to_ne_bytes());
                        h[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
                        mem.write(at, &h)?;
                    }
                    16 + 16 * n
                }
            };
            let size = size.next_multiple_of(8);
            if let Some(prev) = last_cap {
                if argsz >= total {
                    mem.write(prev + 4, &(total as u32).to_ne_bytes())
                        .map_err(|_| Errno::EFAULT)?;
                }
            }
            last_cap = Some(at);
            total += size;
        }
        if argsz >= total {
            info.cap_offset = core::mem::size_of::<Info>() as u32;
        }
        info.argsz = u32::try_from(total).unwrap_or(u32::MAX);
        info.flags |= INFO_CAPS;
        mem.write(arg, &info.as_bytes()[..minsz])
            .map_err(|_| Errno::EFAULT)
    }
}

/// The page sizes every domain of the IOAS maps, at least a CPU page and
/// the IOAS's alignment (Linux's `iommufd_get_pagesizes`).
fn pgsizes(g: &Ioas) -> u64 {
    let mut bitmap = g
        .domains
        .iter()
        .map(|(_, d)| d.pgsize_bitmap())
        .fold(u64::MAX, |a, b| a & b);
    if bitmap & (PAGE_SIZE - 1) != 0 {
        bitmap &= !(PAGE_SIZE - 1);
        bitmap |= PAGE_SIZE;
    }
    bitmap.max(g.iopt.iova_alignment())
}
