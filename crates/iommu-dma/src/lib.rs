//! The DMA API over the IOMMU core, as Linux's `dma-iommu.c` provides it.
//!
//! A driver binds a device whose group's default domain is DMA or DMA-FQ
//! ([`DmaDevice::bind`]) and then maps buffers for the device:
//! [`map_single`](DmaDevice::map_single) /
//! [`unmap_single`](DmaDevice::unmap_single), scatter-gather lists laid out
//! in one IOVA range ([`map_sg`](DmaDevice::map_sg)), coherent buffers
//! ([`alloc_coherent`](DmaDevice::alloc_coherent)) and cache syncs.
//! IOVAs come from a per-domain [`iommu_iova::IovaDomain`] with per-CPU
//! caches, below the device's DMA mask.
//!
//! Unmapping is strict in a DMA domain (page tables, IOTLB sync, then the
//! IOVA is freed) and lazy in a DMA-FQ domain (the IOVA waits in a per-CPU
//! flush queue; see [`fq`] for the bounded stale window). A group switched
//! from DMA to DMA-FQ through sysfs becomes lazy at once.
//!
//! # Without std
//!
//! With `default-features = false` the crate is `no_std` + `alloc`, for a
//! kernel: its locks are the core's (spin locks without std), and what std
//! supplied comes from [`DmaOptions`]: the current CPU
//! ([`DmaCpus::Kernel`], else every caller shares one CPU's caches) and the
//! flush-queue timer ([`fq::FqTimer`], else DMA-FQ domains unmap
//! strictly). `examples/kernel-x86` in the repository binds a device this
//! way and builds for `x86_64-unknown-none`.
//!
//! ```
//! use iommu_core::{Bus, DeviceBuilder, Iommu, PhysAddr};
//! use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
//! use iommu_soft::{Access, SoftIommu};
//! use std::sync::Arc;
//!
//! let iommu = Iommu::default();
//! let bus = Bus::new(&iommu, "pci").unwrap();
//! let dev = bus.add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([8]).pci(true)).unwrap();
//! let hw = SoftIommu::default();
//! iommu.bus_set_iommu(&bus, Arc::new(hw.clone())).unwrap();
//!
//! let dma = DmaDevice::bind(&iommu, &dev, DmaOptions::default()).unwrap();
//! let buf = PhysAddr::new(0x8_1234_5678);
//! let addr = dma.map_single(buf, 256, DmaDirection::ToDevice).unwrap();
//! assert!(addr.raw() <= u32::MAX as u64, "32-bit mask by default");
//! assert_eq!(hw.translate(&dev, addr.into(), Access::Read), Ok(buf));
//! dma.unmap_single(addr, 256, DmaDirection::ToDevice).unwrap();
//! assert!(hw.translate(&dev, addr.into(), Access::Read).is_err());
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod cookie;
mod cpus;
mod device;
pub mod fq;
mod phys;
pub mod quarantine;
mod sg;
#[cfg(feature = "test-utils")]
pub mod testing;
mod track;

pub use cookie::DmaDomainStats;
pub use cpus::DmaCpus;
pub use device::{CoherentBuffer, DmaDevice, DmaOptions};
pub use phys::{PageAllocator, PhysPool};
pub use quarantine::QuarantineStats;
pub use sg::{DmaSegment, SgMapping};

use core::fmt;
use iommu_core::{Errno, Iova, Prot};
use iommu_iova::IovaError;

/// A bus address a device uses for DMA (Linux's `dma_addr_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(u64);

impl DmaAddr {
    /// Linux's `DMA_MAPPING_ERROR`, for callers that store raw addresses.
    /// No mapping ever returns it: the IOVA space ends below it.
    pub const MAPPING_ERROR: DmaAddr = DmaAddr(u64::MAX);

    /// Wraps a raw bus address.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Whether this is [`MAPPING_ERROR`](Self::MAPPING_ERROR) (Linux's `dma_mapping_error`).
    pub const fn is_mapping_error(self) -> bool {
        self.0 == u64::MAX
    }

    /// The raw address of a mapping result, or `MAPPING_ERROR` on failure,
    /// as C-style callers expect.
    pub fn raw_or_error(r: &Result<DmaAddr, DmaError>) -> u64 {
        r.as_ref().map_or(u64::MAX, |a| a.0)
    }
}

impl From<DmaAddr> for Iova {
    fn from(a: DmaAddr) -> Iova {
        Iova::new(a.0)
    }
}

impl fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which way data moves (Linux's `enum dma_data_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// Both ways (`DMA_BIDIRECTIONAL`).
    Bidirectional,
    /// Memory to device: the device reads (`DMA_TO_DEVICE`).
    ToDevice,
    /// Device to memory: the device writes (`DMA_FROM_DEVICE`).
    FromDevice,
    /// No transfer (`DMA_NONE`); never valid for a mapping.
    None,
}

/// DMA attributes (Linux's `DMA_ATTR_*` that this layer honours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DmaAttrs(u8);

impl DmaAttrs {
    /// No attributes.
    pub const NONE: DmaAttrs = DmaAttrs(0);
    /// Map for privileged accesses only (`DMA_ATTR_PRIVILEGED`).
    pub const PRIVILEGED: DmaAttrs = DmaAttrs(1);
    /// The caller does cache maintenance itself (`DMA_ATTR_SKIP_CPU_SYNC`).
    pub const SKIP_CPU_SYNC: DmaAttrs = DmaAttrs(2);

    /// Whether every attribute of `other` is set.
    pub const fn contains(self, other: DmaAttrs) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for DmaAttrs {
    type Output = DmaAttrs;
    fn bitor(self, rhs: DmaAttrs) -> DmaAttrs {
        DmaAttrs(self.0 | rhs.0)
    }
}

/// IOMMU protection for a transfer (Linux's `dma_info_to_prot`).
///
/// # Errors
/// [`DmaError::InvalidArgument`] for [`DmaDirection::None`].
pub fn dma_info_to_prot(
    dir: DmaDirection,
    coherent: bool,
    attrs: DmaAttrs,
) -> Result<Prot, DmaError> {
    let mut prot = if coherent { Prot::CACHE } else { Prot::NONE };
    if attrs.contains(DmaAttrs::PRIVILEGED) {
        prot |= Prot::PRIV;
    }
    Ok(prot
        | match dir {
            DmaDirection::Bidirectional => Prot::READ | Prot::WRITE,
            DmaDirection::ToDevice => Prot::READ,
            DmaDirection::FromDevice => Prot::WRITE,
            DmaDirection::None => return Err(DmaError::InvalidArgument),
        })
}

/// Cache maintenance for devices that do not snoop CPU caches (Linux's
/// `arch_sync_dma_for_device` / `arch_sync_dma_for_cpu`).
pub trait ArchSync: Send + Sync {
    /// Makes CPU writes to `[paddr, paddr + size)` visible to the device.
    fn sync_for_device(&self, paddr: iommu_core::PhysAddr, size: u64, dir: DmaDirection);
    /// Makes device writes to `[paddr, paddr + size)` visible to the CPU.
    fn sync_for_cpu(&self, paddr: iommu_core::PhysAddr, size: u64, dir: DmaDirection);
}

/// Why a DMA API call failed. Nothing is mapped, unmapped or freed by a
/// call that fails, unless the variant says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The device is not translated by a DMA or DMA-FQ default domain.
    NotTranslated,
    /// The group is owned by a user (VFIO-style) or off its default domain.
    Busy,
    /// A zero size, `DmaDirection::None`, an empty list, or an address range
    /// that wraps.
    InvalidArgument,
    /// No IOVA range fits below the device's DMA mask.
    NoSpace,
    /// The page tables refused the mapping.
    Map(Errno),
    /// The address is not one this device mapped (or was already unmapped).
    NotMapped,
    /// The address was mapped with another size, direction or API.
    Mismatch,
    /// No memory for a coherent buffer (no allocator, or it is empty).
    NoMemory,
    /// A DMA mask below the lowest usable IOVA.
    MaskTooSmall,
    /// The IOVA space refused a reservation or setting.
    Iova(IovaError),
    /// Unmapped, but the IOMMU did not confirm the invalidation (the
    /// driver's errno, commonly `ETIMEDOUT`): the device may still reach
    /// the buffer until a later invalidation completes. The mapping is
    /// gone and its IOVA is held back until then (see
    /// [`quarantine`]); keep the buffer's memory from
    /// other uses until [`DmaDevice::invalidation_pending`] is false.
    NotInvalidated(Errno),
    /// Too many IOVAs wait for an invalidation that does not complete
    /// (the IOMMU looks wedged): new mappings are refused until a flush
    /// completes.
    Wedged,
}

impl DmaError {
    /// The errno Linux's DMA API would report.
    pub fn errno(self) -> Errno {
        match self {
            DmaError::NotTranslated => Errno::ENODEV,
            DmaError::Busy => Errno::EBUSY,
            DmaError::InvalidArgument | DmaError::Mismatch => Errno::EINVAL,
            DmaError::NoSpace | DmaError::NoMemory => Errno::ENOMEM,
            DmaError::Map(e) => e,
            DmaError::NotMapped => Errno::ENOENT,
            DmaError::MaskTooSmall | DmaError::Wedged => Errno::EIO,
            DmaError::Iova(e) => e.errno(),
            DmaError::NotInvalidated(e) => e,
        }
    }
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::NotTranslated => f.write_str("device is not behind a DMA-API domain"),
            DmaError::Busy => f.write_str("group is owned by a user or off its default domain"),
            DmaError::InvalidArgument => f.write_str("invalid size, direction or list"),
            DmaError::NoSpace => f.write_str("no IOVA space left below the DMA mask"),
            DmaError::Map(e) => write!(f, "page tables refused the mapping ({})", e.name()),
            DmaError::NotMapped => f.write_str("address is not mapped by this device"),
            DmaError::Mismatch => {
                f.write_str("address was mapped with another size, direction or API")
            }
            DmaError::NoMemory => f.write_str("no memory for a coherent buffer"),
            DmaError::MaskTooSmall => f.write_str("DMA mask is below the lowest usable IOVA"),
            DmaError::Iova(e) => write!(f, "IOVA space: {e}"),
            DmaError::NotInvalidated(e) => write!(
                f,
                "unmapped, but the IOTLB invalidation did not complete ({}): the device may still reach the buffer",
                e.name()
            ),
            DmaError::Wedged => f.write_str(
                "the IOMMU's invalidations are not completing: new mappings wait for one that does",
            ),
        }
    }
}

impl core::error::Error for DmaError {}

impl From<DmaError> for Errno {
    fn from(e: DmaError) -> Errno {
        e.errno()
    }
}
