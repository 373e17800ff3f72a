//! Machines for iommu-rs: a PCI topology, what its firmware reserves, and
//! an IOMMU driver on its (emulated) hardware, put together.
//!
//! - [`PciPlatform`]: any machine the PCI layer reads (a listing, a hex
//!   dump, a sysfs tree, a topology file) or the built-in default one
//!   ([`DEFAULT_TOPOLOGY`]), grouped by Linux's PCI rules, each function a
//!   core device whose stream ids are the requester ids its DMA carries,
//!   behind the soft IOMMU or any driver a caller builds.
//! - [`DmaHardware`]: what a platform's devices DMA through, a driver and
//!   its hardware, for the soft IOMMU (`iommu-soft`), the Arm SMMUv3 pair
//!   (`iommu-smmuv3` on `iommu-smmuv3-emu`) and the Intel VT-d pair
//!   (`iommu-vtd` on `iommu-vtd-emu`). The drivers know nothing of this
//!   layer; it knows them through their public types only.
//! - [`dmar`]: a machine's VT-d units from its DMAR (which unit
//!   translates each function), and the built-in platform's two units;
//!   [`iort`]: a machine's SMMUv3s from its IORT (which SMMU and stream id
//!   each function's DMA reaches).
//! - `testing` (feature `test-utils`): the hardware a shared test suite
//!   runs on, as `IOMMU_TEST_DRIVER` names it.
//!
//! ```
//! use iommu_platform::DefaultPlatform;
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

pub mod dmar;
mod hardware;
pub mod iort;
mod pci;
#[cfg(feature = "test-utils")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod testing;

pub use hardware::DmaHardware;
pub use iommu_soft::{Access, TranslateError};
pub use pci::*;
