//! The Linux IOMMU core as a Rust library.
//!
//! An [`Iommu`] value holds one subsystem: its groups and their ids, the
//! sysfs model, the log and failure injection. Buses ([`Bus`]) own devices
//! ([`Device`]) and carry a driver's [`IommuOps`]; the core sorts devices
//! into [`Group`]s, gives each group a default [`Domain`], and implements
//! attach/detach, DMA ownership, map/unmap with page-size selection,
//! reserved regions and fault reporting with Linux's rules and error codes.
//!
//! The core knows no page-table format: drivers implement [`DomainOps`] and
//! [`PagingOps`]. Every failed operation leaves ids, links, references and
//! mappings exactly as they were.
//!
//! ```
//! use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, testing::MockIommu};
//! use iommu_types::{Iova, PhysAddr, Prot};
//! use std::sync::Arc;
//!
//! let iommu = Iommu::new(IommuConfig::default());
//! let bus = Bus::new(&iommu, "platform").unwrap();
//! let dev = bus.add_device(DeviceBuilder::new("dma0").stream_ids([1])).unwrap();
//! iommu.bus_set_iommu(&bus, Arc::new(MockIommu::new())).unwrap();
//!
//! let group = dev.iommu_group().unwrap();
//! assert_eq!(group.id(), 0);
//! assert_eq!(iommu.sysfs().read("kernel/iommu_groups/0/type").unwrap(), "DMA\n");
//! let domain = group.default_domain().unwrap();
//! domain.map(Iova::new(0x1000), PhysAddr::new(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! assert_eq!(domain.iova_to_phys(Iova::new(0x1234)), Some(PhysAddr::new(0x8000_0234)));
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
// Some values are only read by trace events.
#![cfg_attr(not(feature = "tracing"), allow(unused_variables))]

extern crate alloc;

mod attach;
mod bus;
mod device;
mod domain;
mod fail;
mod group;
#[cfg(feature = "pgtable")]
mod io_pgtable;
mod notifier;
mod ops;
mod resv;
mod subsystem;
pub mod sync;
mod sysfs;
#[cfg(feature = "test-utils")]
pub mod testing;
mod trace;
mod viommu;

pub use bus::{Bus, BusAction, BusEvent};
pub use device::{Device, DeviceBuilder};
pub use domain::{
    pgsize_for, Domain, DomainType, FaultAccess, FaultHandler, IotlbSyncError, IovaCookie, SgEntry,
    WeakDomain,
};
pub use fail::{FailPoint, FailPoints};
pub use group::{
    DmaOwner, Group, GroupAction, GroupEvent, GroupKeys, IommuDataRelease, StreamIdGroups,
    WeakGroup,
};
pub use notifier::{NotifierChain, NotifierId, Notify};
pub use ops::{
    Capability, DirtyOps, DomainGeometry, DomainOps, IommuOps, MapPagesError, PagingOps,
    WedgeReport,
};
pub use resv::{
    format_resv_regions, insert_resv_region, resv_regions_with_sw_msi, ReservedRegion, ResvType,
};
pub use subsystem::{Iommu, IommuConfig, Sysfs};
pub use sysfs::EntryKind;
pub use viommu::{InvalidateError, PagingFlags, UserData, UserDataArray, Viommu, ViommuOps};

pub use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot};

/// What every module uses from `alloc`, so `no_std` builds read like std ones.
mod prelude {
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::format;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}
