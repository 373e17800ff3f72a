//! Vocabulary shared by every iommu-rs layer: address newtypes, the `IOMMU_*`
//! protection flags, Linux error numbers, the IOTLB gather and a hasher for
//! page-keyed maps.
//!
//! This crate is `no_std` and has no dependencies so that page tables, the IOVA
//! allocator and a kernel's own code can all speak the same types.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

mod addr;
mod bytes;
mod errno;
mod gather;
mod hash;
mod prot;
mod unmapped;

pub use addr::{Iova, PhysAddr};
pub use bytes::ByteReader;
pub use errno::Errno;
pub use gather::IotlbGather;
pub use hash::{BuildPageHasher, PageHasher};
pub use prot::Prot;
pub use unmapped::Unmapped;

/// Bytes in the smallest page every format in the project supports.
pub const SZ_4K: u64 = 1 << 12;
/// 16 KiB.
pub const SZ_16K: u64 = 1 << 14;
/// 64 KiB.
pub const SZ_64K: u64 = 1 << 16;
/// 2 MiB.
pub const SZ_2M: u64 = 1 << 21;
/// 32 MiB.
pub const SZ_32M: u64 = 1 << 25;
/// 512 MiB.
pub const SZ_512M: u64 = 1 << 29;
/// 1 GiB.
pub const SZ_1G: u64 = 1 << 30;
