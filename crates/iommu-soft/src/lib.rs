//! A reference "software IOMMU" for iommu-core, and a small platform to run it on.
//!
//! [`SoftIommu`] is a complete driver: paging domains are ARM LPAE stage-1
//! tables (4 KiB granule, 48-bit input), devices sharing a stream id share a
//! group (as SMMU stream matching makes them), and its "hardware" keeps a
//! stream table from stream id to the attached domain. [`SoftIommu::translate`]
//! is what a DMA access sees: it walks the domain's table, checks the
//! permission, and on a miss reports the fault to the domain's handler.
//!
//! ```
//! use iommu_soft::platform::DefaultPlatform;
//! use iommu_core::{Iova, PhysAddr, Prot};
//! use iommu_soft::Access;
//!
//! let p = DefaultPlatform::build().unwrap();
//! let nvme = p.device("0000:03:00.0").unwrap();
//! let domain = nvme.iommu_group().unwrap().default_domain().unwrap();
//! domain.map(Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! assert_eq!(p.hw.translate(&nvme, Iova::new(0x10_0010), Access::Write), Ok(PhysAddr::new(0x8000_0010)));
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod platform;
mod soft;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use soft::{
    Access, PciGrouping, SoftConfig, SoftDomain, SoftIommu, TranslateError, DEFAULT_TABLE_BUDGET,
    PGSIZE_BITMAP,
};
