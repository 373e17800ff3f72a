//! The firmware tables that tell a kernel which IOMMU covers which device.
//!
//! A kernel learns where its IOMMUs are, and which devices each one
//! translates, from the firmware: on Intel machines the ACPI DMAR table
//! ([`dmar`]), on AMD machines the IVRS ([`ivrs`]), on Arm machines with
//! ACPI the IORT ([`iort`]). It finds them, and
//! where PCI configuration space is, through the tables [`acpi`] reads
//! first: the RSDP, the RSDT or XSDT it points at, and the MCFG. This crate reads those
//! tables with the rules Linux's `dmar.c` and `amd_iommu_init.c` apply and
//! builds them (for a VMM or an emulated platform that must give its guest
//! one), `no_std` + `alloc`, in time and memory bounded by the table's own
//! length: every hostile byte is a typed error naming where it is, never a
//! panic.
//!
//! ```
//! use iommu_firmware::dmar::{DeviceScope, Dmar, Drhd, Remapping};
//!
//! // One VT-d unit at 0xfed90000 for every PCI device of segment 0, as
//! // QEMU's q35 describes its intel-iommu (trimmed).
//! let mut dmar = Dmar::new(47);
//! dmar.push(Remapping::Drhd(Drhd {
//!     flags: Drhd::INCLUDE_PCI_ALL,
//!     size: 0,
//!     segment: 0,
//!     register_base: 0xfed9_0000,
//!     scopes: vec![DeviceScope::ioapic(0, 0xff, 0x00)],
//! }));
//! let bytes = dmar.to_bytes(*b"IOMMRS", *b"IOMMUDMR", 1);
//! assert_eq!(Dmar::parse(&bytes).unwrap(), dmar);
//! assert_eq!(dmar.address_width(), 48);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod dmar;
pub mod iort;
pub mod ivrs;
