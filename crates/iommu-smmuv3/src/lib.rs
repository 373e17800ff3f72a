//! An Arm SMMUv3 driver for `iommu-core` (Arm IHI 0070).
//!
//! [`Smmuv3`] is an [`IommuOps`](iommu_core::IommuOps) driver modelled on
//! Linux's `drivers/iommu/arm/arm-smmu-v3`. It reaches the SMMU only
//! through its registers ([`Mmio`], from `iommu-hw`) and through what it writes into
//! DMA-able memory (a [`TableMemory`](iommu_pgtable::TableMemory)): the
//! stream table (linear or two-level), context descriptors, the command
//! queue and the event queue. Page tables are `iommu-pgtable`'s LPAE tables
//! in the same memory.
//!
//! - SMMUs: [`Smmuv3::probe`] drives one SMMU whose stream ids are the
//!   devices' ids; [`Smmuv3::probe_units`] drives several, with a
//!   [`StreamLookup`] (the firmware's ID mappings) giving the SMMU and
//!   stream id of a device's id. As in Linux, a paging domain binds to the
//!   SMMU of its first attach (another SMMU's device is `EINVAL`); blocked
//!   and identity domains serve every SMMU; ASIDs and VMIDs come from one
//!   space as wide as the narrowest SMMU's.
//! - Probe reads IDR0/1/3/5, resets with CR0/CR0ACK, sets `GBPA` to abort,
//!   builds the tables and queues, invalidates everything (`CFGI_ALL`,
//!   `TLBI_NSNH_ALL`, `CMD_SYNC`) and enables.
//! - Domains: blocked (abort STE), identity (bypass STE), paging at stage 1
//!   (CD with an ASID per domain) or stage 2 (a VMID per domain).
//! - STE updates go through abort when a live entry changes more than its
//!   first double word, and each is followed by `CFGI_STE` + `CMD_SYNC`.
//! - Unmaps become range invalidations (`TLBI_NH_VA` / `TLBI_S2_IPA`, with
//!   `NUM`/`SCALE` when the SMMU has range invalidation) and a `CMD_SYNC`,
//!   completed by MSI write or by polling `CMDQ_CONS`.
//! - [`Smmuv3::handle_irq`] reads the event queue and reports translation
//!   faults to the domain's fault handler; global errors are acknowledged,
//!   refused commands skipped (and the operation fails with `EIO`).
//!
//! The crate is `no_std` + `alloc`. With feature `emu` it also drives the
//! emulated SMMUv3 of `iommu-smmuv3-emu` ([`emu`]).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

mod domain;
mod driver;
#[cfg(feature = "emu")]
pub mod emu;
mod mmio;
pub mod nested;
pub mod ste;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use domain::Smmuv3Domain;
pub use driver::{
    ProbeError, SmmuEvent, Smmuv3, Smmuv3Caps, Smmuv3Config, Smmuv3Stats, StreamLookup,
    StreamTableFormat, MAX_SMMUS,
};
pub use iommu_hw::{Mmio, VolatileMmio};
pub use mmio::{reg, WINDOW};
