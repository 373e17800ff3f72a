//! An Intel VT-d driver for `iommu-core` (Intel Virtualization Technology
//! for Directed I/O, Architecture Specification).
//!
//! [`Vtd`] is an [`IommuOps`](iommu_core::IommuOps) driver for one
//! remapping unit (one DRHD of the firmware's DMAR), modelled on Linux's
//! `drivers/iommu/intel`. It reaches the unit only through its registers
//! ([`Mmio`](iommu_hw::Mmio)) and through what it writes into DMA-able
//! memory (a [`TableMemory`](iommu_pgtable::TableMemory)): the root table,
//! a context table per bus, the invalidation queue, and second-level page
//! tables (`iommu-pgtable`'s VT-d format) in the same memory.
//!
//! - Probe reads CAP and ECAP, turns translation off if it was on, sets
//!   the root table pointer (legacy mode), starts queued invalidation when
//!   the unit has it, invalidates the context cache and IOTLB globally,
//!   and turns translation on.
//! - Domains: blocked (no context entry: DMA faults), identity (a
//!   pass-through context entry, ECAP.PT), paging (second-level tables
//!   and a domain id). Changing a present context entry clears it and
//!   invalidates its context-cache entry and the old domain's IOTLB
//!   first.
//! - Caching mode (CAP.CM, as QEMU sets it for its host to shadow the
//!   tables): new mappings and new context entries are invalidated too.
//! - Unmaps become page-selective IOTLB invalidations with an address
//!   mask (domain-selective when the range is no single block or PSI is
//!   missing), then an invalidation wait with a status write; without a
//!   queue, the context-command and IOTLB registers.
//! - [`Vtd::handle_faults`] reads and clears the fault recording
//!   registers and reports translation faults to the domain's fault
//!   handler.
//!
//! The crate is `no_std` + `alloc`. With feature `emu` it also drives the
//! emulated VT-d of `iommu-vtd-emu` ([`emu`]). Page walks that do not snoop the CPU's
//! caches (ECAP.C = 0) need a `TableMemory` whose stores reach memory.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod domain;
mod driver;
#[cfg(feature = "emu")]
pub mod emu;
pub mod entry;
pub mod regs;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use domain::VtdDomain;
pub use driver::{Invalidation, ProbeError, Vtd, VtdConfig, VtdStats, MSI_RANGE};
pub use entry::VtdFault;
pub use regs::VtdCaps;
