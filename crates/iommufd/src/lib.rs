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
//!
//! The object model (contexts, IOAS, HWPT, devices, access objects) and
//! the `/dev/iommu` preload library follow in later layers; the core
//! already has what nesting needs (`iommu_core::Viommu`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

#[cfg(feature = "test-utils")]
pub mod testing;
pub mod uapi;

pub use iommu_types::Errno;
