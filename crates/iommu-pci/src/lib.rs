//! PCI functions as their configuration space describes them.
//!
//! A [`ConfigSpace`] holds the bytes of one function's configuration space
//! (64, 256 or 4096 of them, as `lspci -x`, `-xxx` and `-xxxx` dump them,
//! or as sysfs' `config` file holds them). [`Function::parse`] reads the
//! header and walks both capability lists once, checking every pointer, and
//! keeps what IOMMU grouping needs: the header type and multifunction bit,
//! bridge bus numbers, and the PCI Express, ACS, ARI, SR-IOV and PCI-X
//! capabilities (the fields Linux reads from `struct pci_dev`).
//!
//! Configuration space is input: a dump may be cut short, a capability
//! list may loop or point outside the space. Each such case is a
//! [`ConfigError`] naming the function and the offset, never a panic, and
//! the walks are bounded by the size of the space.
//!
//! [`Topology`] rebuilds the PCI tree from the functions' bridge bus
//! numbers, and [`pci_groups`] groups its functions by Linux 6.12's rules
//! (`pci_device_group`): DMA aliases, ACS paths, multifunction slots.
//!
//! ```
//! use iommu_pci::{Bdf, ConfigSpace, Function, PortType};
//!
//! // A PCIe root port (type 1 header) with an Express capability at 0x40.
//! let mut cfg = ConfigSpace::new_zeroed(256);
//! cfg.write_u16(0x00, 0x0de5); // vendor
//! cfg.write_u16(0x02, 0x0101); // device
//! cfg.write_u8(0x0e, 0x01);    // header type 1
//! cfg.write_u16(0x06, 0x0010); // status: capability list
//! cfg.write_u8(0x34, 0x40);    // first capability
//! cfg.write_u8(0x40, 0x10);    // PCI Express
//! cfg.write_u16(0x42, 0x0042); // version 2, root port
//! cfg.write_u8(0x19, 1);       // secondary bus
//! cfg.write_u8(0x1a, 3);       // subordinate bus
//!
//! let f = Function::parse("0000:00:1c.0".parse::<Bdf>().unwrap(), &cfg).unwrap();
//! assert_eq!(f.pcie.unwrap().port_type, PortType::RootPort);
//! assert_eq!(f.bridge.unwrap().secondary, 1);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod acs;
mod bdf;
mod caps;
mod config;
mod error;
mod explain;
mod group;
mod import;
mod lspci;
mod machine;
mod params;
mod platform;
pub mod quirks;
pub mod synthetic;
#[cfg(all(feature = "std", unix))]
mod sysfs;
#[cfg(feature = "test-utils")]
pub mod testing;
mod topofile;
mod topology;

pub use acs::{enable_acs, AcsVerdict};
pub use bdf::{Bdf, BdfParseError, SlotPath};
pub use caps::{Acs, AcsFlags, Ari, Pcie, PortType, Sriov};
pub use config::{cap_id, ext_cap_id, BridgeBuses, ConfigSpace, Function, HeaderType};
pub use error::{ConfigError, ConfigErrorKind};
pub use explain::{short_name, Reason, Rule, Ungrouped};
pub use group::{pci_groups, Analysis, BridgeAlias, Groups, Join, Step, REQ_ACS_FLAGS};
pub use import::{
    functions_from_lspci_x, parse_lspci_x, write_lspci_x, DumpedFunction, ImportError,
};
pub use lspci::{parse_lspci_v, ListedFunction};
pub use machine::{
    compare, describe_function, describe_named, Comparison, Machine, MachineDevice, Mismatch,
    RawFunction, MAX_FUNCTIONS,
};
pub use params::{
    AcsOverride, ConfigAcs, DeviceMatch, Ignored, IommuOff, KernelParams, ParamError,
};
pub use platform::{IommuKind, KernelVersion, KernelVersionError, Platform};
pub use quirks::{AcsQuirk, AliasQuirk, DeviceQuirks};
#[cfg(all(feature = "std", unix))]
pub use sysfs::{read_sysfs, SysfsError};
pub use topofile::{
    acs_flags_text, parse_acs_flags, parse_topology, write_topology, TopologyFile, SIM_VENDOR,
};
pub use topology::{DevFlags, Topology, TopologyError};
