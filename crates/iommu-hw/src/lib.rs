//! What iommu-rs's hardware IOMMU drivers share, `no_std` + `alloc`.
//!
//! A hardware driver reaches its IOMMU two ways only: through the
//! registers ([`Mmio`]: [`VolatileMmio`] on a kernel's mapping of the
//! window, an emulator's register file in tests) and through what it
//! writes into DMA-able memory, the [`TableMemory`](iommu_pgtable::TableMemory)
//! its page tables live in too ([`DmaRegion`]: a bounds-checked block of
//! it; [`DomainMemory`]: one domain's counted share of it). [`Ids`]
//! hands out the tags their caches are keyed by; with feature `vm-memory`,
//! [`emu`] holds what an emulated platform is made of. The Arm
//! SMMUv3 and Intel VT-d drivers are built on these.
//!
//! ```
//! use iommu_hw::DmaRegion;
//! use iommu_pgtable::HeapMemory;
//! use std::sync::Arc;
//!
//! let mem = Arc::new(HeapMemory::new());
//! // A 4 KiB root table, zeroed, aligned to its size.
//! let root = DmaRegion::alloc(&mem, 4096).unwrap();
//! assert_eq!(root.pa().raw() % 4096, 0);
//! root.write(2, 0x1234_5001);
//! assert_eq!(root.read(2), 0x1234_5001);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)] // calls TableMemory's accessors on regions it owns
mod dma;
#[cfg(feature = "vm-memory")]
#[allow(unsafe_code)] // vouches for the host mapping of the memory it makes
pub mod emu;
mod ids;
#[allow(unsafe_code)] // VolatileMmio touches a register window
mod mmio;

pub use dma::{DmaRegion, DomainMemory};
pub use ids::Ids;
pub use mmio::{Mmio, VolatileMmio};
