//! Linux's iommufd user API (`/dev/iommu`) over `iommu-core`.
//!
//! Programs written for Linux's iommufd (QEMU, cloud-hypervisor, crosvm,
//! Linux's own selftest) talk to the IOMMU subsystem through ioctls on
//! `/dev/iommu`: IOASes (I/O address spaces of user memory), HWPTs
//! (hardware page tables: the core's domains), bound devices, vIOMMUs
//! and their vDEVICEs, fault and event queues. This crate is that API
//! over the core, built in layers:
//!
//! - [`uapi`]: the structures exactly as Linux 7.3 lays them out, and the
//!   kernel's rules for reading them (size-extensible structures, `E2BIG`
//!   for unknown non-zero bytes, replies no longer than the caller's size).
//! - [`iopt`]: an IOAS's I/O page table: areas over shared user pages,
//!   allowed and reserved ranges, IOVA allocation, and Linux's rules for
//!   map, unmap and copy.
//! - [`ctx`]: one open of `/dev/iommu`: objects by id, `IOMMU_DESTROY`,
//!   and the ioctl entry for the IOAS commands, reading and writing the
//!   caller's memory through [`ctx::UserMemory`].
//!
//! Still to come: HWPTs and bound devices on the core's domains and DMA
//! ownership, access objects, vIOMMUs over the core's
//! [`Viommu`](https://docs.rs/iommu-core) (nesting is already in the
//! core), fault and event queues, the selftest's mock, and the
//! `/dev/iommu` preload library.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod ctx;
pub mod device;
pub mod iopt;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod uapi;

pub use iommu_types::Errno;
