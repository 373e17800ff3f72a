//! I/O page tables as a device's IOMMU walks them.
//!
//! One generic walker ([`IoPageTable`]) does every map, unmap and lookup; a
//! page-table format is a small codec ([`Format`]) saying how many levels there
//! are, how many index bits each takes, and how table and leaf descriptors are
//! encoded. Table memory sits behind [`TableMemory`], so the same tables can
//! live on the host heap or inside simulated physical memory that emulated
//! hardware walks.
//!
//! The crate is `no_std` + `alloc` so a kernel can use it as is.
//!
//! ```
//! use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
//! use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_4K};
//!
//! let fmt = Lpae::stage1_4k(48, 48).unwrap();
//! let pt = IoPageTable::new(fmt, HeapMemory::new()).unwrap();
//! let mapped = pt.map_pages(Iova::new(0x1000), PhysAddr::new(0x8000_0000), SZ_4K, 1, Prot::RW).unwrap();
//! assert_eq!(mapped, SZ_4K);
//! assert_eq!(pt.iova_to_phys(Iova::new(0x1042)), Some(PhysAddr::new(0x8000_0042)));
//! let mut gather = IotlbGather::new();
//! assert_eq!(pt.unmap_pages(Iova::new(0x1000), SZ_4K, 1, &mut gather), SZ_4K);
//! assert_eq!(pt.iova_to_phys(Iova::new(0x1042)), None);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

pub mod amd;
mod error;
mod format;
#[cfg(feature = "vm-memory")]
#[allow(unsafe_code)]
// implements the unsafe-to-call accessors, bounds-checked; a vouched-for host window
mod guest;
pub mod lpae;
pub mod measure;
#[allow(unsafe_code)] // the heap backend dereferences table addresses
mod memory;
pub mod riscv;
#[allow(unsafe_code)] // calls the memory's descriptor accessors
mod table;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod vtd;
pub mod walk;
pub mod x86;

pub use error::PgtableError;
pub use format::{Format, Geometry, LeafBits, Pte, PteKind, TableBits};
#[cfg(feature = "vm-memory")]
pub use guest::{GuestTableMemory, GuestWindow};
pub use memory::{HeapMemory, TableMemory};
pub use table::{DirtyBitmap, IoPageTable, Mapping};
pub use walk::{walk_root, PhysRead, WalkFault, Walked};
