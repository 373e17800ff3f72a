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
//!   and the ioctl entry, reading and writing the caller's memory through
//!   [`ctx::UserMemory`].
//! - [`device`]: bound devices (the group's DMA ownership claimed for the
//!   context) and paging HWPTs: core domains filled from an IOAS and kept
//!   in step with it, automatic HWPTs, Linux's attach rules.
//! - [`viommu`]: vIOMMUs, vDEVICEs and nested HWPTs over the core's
//!   `Viommu`, and the guest's invalidations (`IOMMU_HWPT_INVALIDATE`).
//!
//! - [`dirty`]: dirty tracking of paging HWPTs for migration.
//! - [`access`]: access objects, the mediated-device path (pins by IOVA,
//!   reads and writes through an IOAS, told of unmaps).
//! - [`vfio`]: the VFIO type1 container ioctls on a compat IOAS.
//! - [`selftest`]: Linux's selftest mock IOMMU and `IOMMU_TEST_CMD`, so
//!   that Linux's own selftest, run through the `iommufd-preload`
//!   library, judges this crate.
//!
//! - [`eventq`]: fault queues and vEVENTQs, read through descriptors.
//!
//! Pinned pages are bounded by the limit the embedder gives
//! ([`ctx::Ictx::set_pin_limit`], the caller's `RLIMIT_MEMLOCK`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod access;
pub mod ctx;
pub mod device;
pub mod dirty;
pub mod eventq;
pub mod iopt;
pub mod selftest;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod uapi;
pub mod vfio;
pub mod viommu;

pub use iommu_types::Errno;
