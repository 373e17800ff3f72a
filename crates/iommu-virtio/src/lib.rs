//! A virtio-iommu device, as the virtio specification (1.2 and later,
//! "IOMMU device", device id 23) defines it, without a transport.
//!
//! The driver's requests arrive as bytes: [`Request::parse`] reads the
//! device-readable part into a [`Request`], [`Device`] executes it against
//! its endpoints, domains and mappings, and the status is written into the
//! request's tail ([`Device::handle`] does all three, bytes in, bytes out).
//! Each request is checked in full before anything changes: a refused
//! request leaves the device as it was. [`Device::translate`] gives the
//! translation the domains make for an endpoint's access, or the fault to
//! report on the event queue.
//!
//! Features add the rest of a vIOMMU:
//! - `vmm`: `VirtioIommu`, the device shared between its virtqueues
//!   (`queue`, through rust-vmm's virtio-queue) and the DMA of the VMM's
//!   other devices (an `EndpointIommu` per endpoint for vm-memory's
//!   `IommuMemory`), and external mappers (`ExternalMapper`) for
//!   passthrough endpoints;
//! - `serde`: [`DeviceState`] for snapshots and migration;
//! - `core`: `CoreDomainMapper`, an external mapper into an `iommu-core`
//!   domain;
//! - `driver`: the guest side, `driver::Viommu`, a virtio-iommu driver for
//!   `iommu-core`, `no_std` like the core: its queues live in memory the
//!   embedder describes ([`ring::DriverMemory`]: a kernel's DMA memory, or
//!   any vm-memory `GuestMemory`); `pci::PciTransport`, the virtio-pci
//!   modern transport a kernel runs it on; with `vmm`, `driver::Loopback`,
//!   a transport to a device in the same process.
//!
//! [`firmware`] builds (and reads back) what tells a guest where the
//! virtio-iommu is and what it translates: the ACPI VIOT table and the
//! device-tree `iommu-map`. The guide `guide_vmm` (feature `vmm`) walks a
//! VMM author through embedding the device, with an example that runs.
//!
//! ```
//! use iommu_virtio::spec::{feature, map, Status};
//! use iommu_virtio::{Device, DeviceConfig, Request};
//!
//! let mut dev = Device::new(DeviceConfig::default()).unwrap();
//! dev.add_endpoint(8, &[]).unwrap();
//! dev.negotiate(dev.offered()).unwrap();
//!
//! let attach = Request::Attach { domain: 1, endpoint: 8, flags: 0, reserved: 0 };
//! let mut tail = [0xff; 4];
//! assert_eq!(dev.handle(&attach.encode(), &mut tail), 4);
//! assert_eq!(tail, [Status::Ok as u8, 0, 0, 0]);
//!
//! let map = Request::Map {
//!     domain: 1, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0xa000, flags: map::READ,
//! };
//! assert_eq!(dev.execute(&map), Status::Ok);
//! let t = dev.translate(8, 0x1234, iommu_virtio::Access::Read).unwrap();
//! assert_eq!(t.phys, 0xa234);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
mod device;
#[cfg(feature = "driver")]
pub mod driver;
#[cfg(feature = "vmm")]
mod external;
pub mod firmware;
mod page_index;
#[cfg(feature = "vmm")]
pub mod guide_vmm {
    #![doc = include_str!("guide_vmm.md")]
}
#[cfg(feature = "driver")]
pub mod pci;
#[cfg(feature = "vmm")]
pub mod queue;
mod request;
pub mod ring;
pub mod spec;
#[cfg(feature = "vmm")]
mod split;
mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(feature = "vmm")]
mod vmm;

pub use config::{ConfigError, DeviceConfig, Limits};
pub use device::{
    Access, Device, EndpointError, Fault, FeatureError, Mapping, ResvMem, Segment, Translation,
    EVENT_BACKLOG, MAX_RESV_REGIONS,
};
#[cfg(feature = "core")]
pub use external::CoreDomainMapper;
#[cfg(feature = "vmm")]
pub use external::{ExternalError, ExternalMapper};
pub use request::{Request, Unparsable};
pub use state::{DeviceState, DomainState, EndpointState, RestoreError};
#[cfg(feature = "vmm")]
pub use vmm::{Contiguous, EndpointIommu, IotlbRead, VirtioIommu};
