//! An Intel VT-d driver for `iommu-core` (Intel Virtualization Technology
//! for Directed I/O, Architecture Specification).
//!
//! [`Vtd`] is an [`IommuOps`](iommu_core::IommuOps) driver for a
//! machine's remapping units (the DRHDs of the firmware's DMAR), modelled
//! on Linux's `drivers/iommu/intel`. It reaches each unit only through its
//! registers ([`Mmio`](iommu_hw::Mmio)) and through what it writes into
//! DMA-able memory (a [`TableMemory`](iommu_pgtable::TableMemory)): the
//! root table, context tables, the invalidation queue, and page tables in
//! the same memory.
//!
//! - Units: [`Vtd::probe`] drives one unit that translates every device;
//!   [`Vtd::probe_units`] drives several, with a [`UnitLookup`] (the
//!   firmware's device scopes) saying which unit translates a requester
//!   id (`segment << 16 | rid`, as PCI devices' stream ids carry it: a
//!   unit serves one PCI segment, as a DRHD does). A device's requester
//!   ids, aliases included, are programmed on its own id's unit. Paging domains are shared by all units: tables every
//!   unit walks, one domain id valid on every unit (the narrowest unit's
//!   width), and a bit per unit that may hold a domain's translations, set
//!   before its first entry there is written and cleared once its last one
//!   is gone and invalidated, so an unmap invalidates exactly those units.
//!
//! - [`TableMode`]: legacy mode (a context table per bus whose entries
//!   point at second-level tables, `iommu-pgtable`'s VT-d format) or
//!   scalable mode (ECAP.SMTS: context tables per bus half whose entries
//!   point at a per-device PASID directory and table; the entry of the
//!   RID_PASID, PASID 0 as in Linux, names the domain: second-stage
//!   tables, first-stage x86-64 tables (`iommu_pgtable::x86`), or
//!   pass-through). Unless told, the driver picks as Linux does: scalable
//!   mode where the unit has it and the queue, first stage where it exists.
//! - Probe reads CAP and ECAP, turns translation off if it was on, sets
//!   the root table pointer (RTADDR.TTM for the mode), starts queued
//!   invalidation when the unit has it (256-bit descriptors in scalable
//!   mode), invalidates the context cache, PASID cache and IOTLB globally,
//!   and turns translation on.
//! - Domains: blocked (no context entry, or no PASID entry: DMA faults),
//!   identity (a pass-through entry, ECAP.PT), paging (tables and a domain
//!   id). Changing a present entry clears it and invalidates what the
//!   hardware may cache of it (context cache, or PASID cache and the
//!   device's context-cache entry) and the old domain's IOTLB first.
//! - Caching mode (CAP.CM, as QEMU sets it for its host to shadow the
//!   tables): new mappings and new context entries are invalidated too.
//! - Unmaps become page-selective IOTLB invalidations with an address
//!   mask (domain-selective when the range is no single block or PSI is
//!   missing; PASID-based for first-stage domains), then an invalidation
//!   wait with a status write; without a queue (legacy mode only), the
//!   context-command and IOTLB registers.
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

pub use domain::VtdDomain;
pub use driver::{
    Invalidation, ProbeError, TableMode, UnitLookup, Vtd, VtdConfig, VtdStats, MAX_UNITS,
    MSI_RANGE, RID_PASID,
};
pub use entry::VtdFault;
pub use regs::VtdCaps;
