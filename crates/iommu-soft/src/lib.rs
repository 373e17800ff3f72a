//! A reference "software IOMMU" for iommu-core (`iommu-platform` puts it,
//! or a hardware driver, on a PCI machine).
//!
//! [`SoftIommu`] is a complete driver: paging domains are ARM LPAE stage-1
//! tables (4 KiB granule, 48-bit input), devices sharing a stream id share a
//! group (as SMMU stream matching makes them), and its "hardware" keeps a
//! stream table from stream id to the attached domain. [`SoftIommu::translate`]
//! is what a DMA access sees: it walks the domain's table, checks the
//! permission, and on a miss reports the fault to the domain's handler.
//!
//! ```
//! use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, Iova, PhysAddr, Prot};
//! use iommu_soft::{Access, SoftConfig, SoftIommu};
//! use std::sync::Arc;
//!
//! let iommu = Iommu::new(IommuConfig::default());
//! let bus = Bus::new(&iommu, "pci").unwrap();
//! let nvme = bus.add_device(DeviceBuilder::new("0000:03:00.0").stream_ids([0x300]).pci(true)).unwrap();
//! let soft = SoftIommu::new(SoftConfig::default());
//! iommu.bus_set_iommu(&bus, Arc::new(soft.clone())).unwrap();
//! let domain = nvme.iommu_group().unwrap().default_domain().unwrap();
//! domain.map(Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! assert_eq!(soft.translate(&nvme, Iova::new(0x10_0010), Access::Write), Ok(PhysAddr::new(0x8000_0010)));
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod soft;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use soft::{
    Access, PciGrouping, SoftConfig, SoftDomain, SoftIommu, TranslateError, DEFAULT_TABLE_BUDGET,
    PGSIZE_BITMAP,
};
