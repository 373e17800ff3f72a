//! The ACPI DMA Remapping table (Intel VT-d specification, chapter 8):
//! where each remapping hardware unit (DRHD) is and which devices it
//! covers, the memory firmware keeps using for DMA after boot (RMRR), and
//! which root ports, devices and namespaces have ATS, SATC or ANDD entries.
//!
//! [`Dmar::parse`] reads a table as Linux's `dmar.c` does, with its rules:
//! an unknown remapping structure type is kept and skipped, a structure
//! running past the table's end refuses the table, and an unknown
//! device-scope type is kept. Where Linux is lenient this crate refuses
//! instead, so that a table it reads is whole: a zero-length structure
//! (Linux stops reading there and keeps what came before) and every length
//! that does not fit the bytes holding it. Any byte string parses or gets
//! a [`DmarError`] naming the offset, in time and memory proportional to
//! its length.
//!
//! Which unit covers a PCI function is [`Dmar::drhd_for`]: a unit whose
//! device scopes name the function or a bridge above it, else the
//! segment's `INCLUDE_PCI_ALL` unit, as Linux's
//! `dmar_find_matched_drhd_unit` decides. Device scopes name functions by
//! a path from a start bus through bridges, so resolving one needs the
//! bridges' bus numbers ([`DeviceScope::resolve`]).

use crate::acpi::{self, u16_at, u32_at, u64_at, Header, HeaderError};
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes before the first remapping structure.
const FIRST_STRUCTURE: usize = 48;
/// Bytes of a device scope before its path.
const SCOPE_HEAD: usize = 6;

/// Structure types (VT-d 8.2).
pub mod ty {
    /// DMA Remapping Hardware Unit Definition.
    pub const DRHD: u16 = 0;
    /// Reserved Memory Region Reporting.
    pub const RMRR: u16 = 1;
    /// Root Port ATS Capability Reporting.
    pub const ATSR: u16 = 2;
    /// Remapping Hardware Static Affinity.
    pub const RHSA: u16 = 3;
    /// ACPI Name-space Device Declaration.
    pub const ANDD: u16 = 4;
    /// SoC Integrated Address Translation Cache.
    pub const SATC: u16 = 5;
}

/// Why bytes are not a DMAR this crate can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmarError {
    /// The ACPI header: too short, not a DMAR, a bad checksum.
    #[error("DMAR: {0}")]
    Header(#[from] HeaderError),
    /// The DMAR's own header fields do not fit in the table.
    #[error("DMAR: {len} bytes, its header needs {FIRST_STRUCTURE}")]
    Short {
        /// The table's length.
        len: usize,
    },
    /// A host address width below what a 4 KiB page needs (Linux refuses
    /// the table for it too).
    #[error("DMAR: host address width {0} bits is too narrow")]
    AddressWidth(u32),
    /// A remapping structure whose length is below its type's fixed part,
    /// zero, or past the end of the table.
    #[error("DMAR structure at {offset:#x} (type {ty}): length {len}, {why}")]
    Structure {
        /// Where it starts.
        offset: usize,
        /// Its type.
        ty: u16,
        /// Its length field.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A device scope whose length is below its fixed part, leaves half
    /// a path entry, or runs past its structure.
    #[error("DMAR device scope at {offset:#x}: length {len}, {why}")]
    Scope {
        /// Where it starts.
        offset: usize,
        /// Its length field.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// The kind of device a scope names (VT-d 8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    /// A PCI endpoint (1).
    Endpoint,
    /// A PCI-PCI bridge and everything below it (2).
    Bridge,
    /// An I/O APIC, by its APIC id (3).
    IoApic,
    /// An MSI-capable HPET, by its number (4).
    Hpet,
    /// An ACPI namespace device, by its ANDD number (5).
    Namespace,
    /// A type this crate does not know: kept, as Linux warns and keeps on.
    Other(u8),
}

impl ScopeKind {
    fn from_u8(t: u8) -> ScopeKind {
        match t {
            1 => ScopeKind::Endpoint,
            2 => ScopeKind::Bridge,
            3 => ScopeKind::IoApic,
            4 => ScopeKind::Hpet,
            5 => ScopeKind::Namespace,
            other => ScopeKind::Other(other),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            ScopeKind::Endpoint => 1,
            ScopeKind::Bridge => 2,
            ScopeKind::IoApic => 3,
            ScopeKind::Hpet => 4,
            ScopeKind::Namespace => 5,
            ScopeKind::Other(t) => t,
        }
    }
}

/// One device a structure applies to: a path of (device, function) hops
/// from `start_bus`, each hop but the last a bridge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceScope {
    /// What the path leads to.
    pub kind: ScopeKind,
    /// The scope's flags byte (VT-d 4.0 defines bit 0 for SATC scopes).
    pub flags: u8,
    /// The I/O APIC id, HPET number or ANDD number (0 for PCI scopes).
    pub enumeration_id: u8,
    /// The bus the path starts on.
    pub start_bus: u8,
    /// `(device, function)` per hop.
    pub path: Vec<(u8, u8)>,
}

impl DeviceScope {
    /// A PCI endpoint at `bus:dev.func` (a one-hop path).
    pub fn endpoint(bus: u8, dev: u8, func: u8) -> DeviceScope {
        DeviceScope {
            kind: ScopeKind::Endpoint,
            flags: 0,
            enumeration_id: 0,
            start_bus: bus,
            path: alloc::vec![(dev, func)],
        }
    }

    /// A bridge at `bus:dev.func` and everything below it.
    pub fn bridge(bus: u8, dev: u8, func: u8) -> DeviceScope {
        DeviceScope {
            kind: ScopeKind::Bridge,
            ..DeviceScope::endpoint(bus, dev, func)
        }
    }

    /// An I/O APIC with id `apic_id`, at `bus`:`devfn` as firmware places it.
    pub fn ioapic(apic_id: u8, bus: u8, devfn: u8) -> DeviceScope {
        DeviceScope {
            kind: ScopeKind::IoApic,
            flags: 0,
            enumeration_id: apic_id,
            start_bus: bus,
            path: alloc::vec![(devfn >> 3, devfn & 7)],
        }
    }

    /// The requester id (`bus << 8 | dev << 3 | func`) the path leads to:
    /// each hop but the last must be a bridge, whose secondary bus
    /// `secondary_bus(bus, devfn)` gives (the kernel's view of its
    /// configuration space). `None` if a hop is not a bridge there, or a
    /// device or function number is out of range.
    pub fn resolve(&self, secondary_bus: &dyn Fn(u8, u8) -> Option<u8>) -> Option<u16> {
        let mut bus = self.start_bus;
        let (last, hops) = self.path.split_last()?;
        for &(dev, func) in hops {
            bus = secondary_bus(bus, devfn(dev, func)?)?;
        }
        Some(u16::from(bus) << 8 | u16::from(devfn(last.0, last.1)?))
    }

    fn len(&self) -> usize {
        SCOPE_HEAD + 2 * self.path.len()
    }

    fn write(&self, b: &mut Vec<u8>) {
        b.push(self.kind.to_u8());
        // A path is at most 124 hops (the length is one byte): the
        // builder's caller may not make longer ones.
        b.push(u8::try_from(self.len()).expect("a device scope's path fits 124 hops"));
        b.push(self.flags);
        b.push(0);
        b.push(self.enumeration_id);
        b.push(self.start_bus);
        for &(d, f) in &self.path {
            b.push(d);
            b.push(f);
        }
    }
}

fn devfn(dev: u8, func: u8) -> Option<u8> {
    (dev < 32 && func < 8).then_some(dev << 3 | func)
}

/// A remapping hardware unit (DRHD).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Drhd {
    /// [`Drhd::INCLUDE_PCI_ALL`] and reserved bits.
    pub flags: u8,
    /// The register set's size: 2^`size` 4 KiB pages (bits 3:0).
    pub size: u8,
    /// The PCI segment.
    pub segment: u16,
    /// Where its registers are.
    pub register_base: u64,
    /// The devices it covers (for an `INCLUDE_PCI_ALL` unit: only its
    /// I/O APICs, HPETs and namespace devices).
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// Covers every PCI device of its segment that no other unit names.
    pub const INCLUDE_PCI_ALL: u8 = 1;

    /// Whether [`INCLUDE_PCI_ALL`](Self::INCLUDE_PCI_ALL) is set.
    pub fn includes_pci_all(&self) -> bool {
        self.flags & Self::INCLUDE_PCI_ALL != 0
    }

    /// Bytes of register space: 2^`size` pages.
    pub fn register_len(&self) -> u64 {
        0x1000u64 << (self.size & 0xf)
    }
}

/// Memory firmware keeps using for DMA after boot (RMRR): each device in
/// its scopes gets the range identity-mapped (Linux's direct-mapped
/// reserved regions).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rmrr {
    /// The PCI segment.
    pub segment: u16,
    /// First address.
    pub base: u64,
    /// Last address (inclusive).
    pub limit: u64,
    /// The devices that use it.
    pub scopes: Vec<DeviceScope>,
}

impl Rmrr {
    /// Whether the range is what the specification asks: 4 KiB aligned at
    /// both ends and not empty. Linux warns of a firmware bug otherwise and
    /// uses the range anyway (an end below the base would wrap:
    /// [`Dmar::rmrrs_for`] leaves such a range out).
    pub fn is_well_formed(&self) -> bool {
        self.base & 0xfff == 0 && self.limit & 0xfff == 0xfff && self.limit > self.base
    }
}

/// Root ports with ATS (ATSR), or SoC devices with an address
/// translation cache (SATC).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AtsScope {
    /// ATSR: bit 0 ALL_PORTS; SATC: bit 0 ATC_REQUIRED.
    pub flags: u8,
    /// The PCI segment.
    pub segment: u16,
    /// The ports or devices.
    pub scopes: Vec<DeviceScope>,
}

/// One remapping structure, in table order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Remapping {
    /// A remapping unit.
    Drhd(Drhd),
    /// Reserved memory.
    Rmrr(Rmrr),
    /// Root-port ATS.
    Atsr(AtsScope),
    /// A unit's proximity domain (RHSA).
    Rhsa {
        /// The unit's register base.
        register_base: u64,
        /// Its NUMA proximity domain.
        proximity_domain: u32,
    },
    /// An ACPI namespace device (ANDD).
    Andd {
        /// The number device scopes of type namespace refer to.
        device_number: u8,
        /// The object's ACPI path (`\_SB.PCI0.XYZ`), without its NUL.
        object_name: String,
    },
    /// SoC devices with an ATC.
    Satc(AtsScope),
    /// A type this crate does not know, kept as bytes after its header
    /// (Linux skips such structures).
    Other {
        /// Its type.
        ty: u16,
        /// Its bytes after the 4-byte header.
        body: Vec<u8>,
    },
}

/// A DMAR table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dmar {
    /// The host address width field: the platform addresses
    /// `host_address_width + 1` bits of memory by DMA.
    pub host_address_width: u8,
    /// [`Dmar::INTR_REMAP`], [`Dmar::X2APIC_OPT_OUT`],
    /// [`Dmar::DMA_CTRL_PLATFORM_OPT_IN`].
    pub flags: u8,
    /// The remapping structures, in table order.
    pub structures: Vec<Remapping>,
}

impl Dmar {
    /// Interrupt remapping is supported.
    pub const INTR_REMAP: u8 = 1;
    /// Firmware asks the OS not to enable x2APIC mode.
    pub const X2APIC_OPT_OUT: u8 = 2;
    /// Firmware protects memory from DMA until the OS takes over
    /// (Linux's `dmar_platform_optin`).
    pub const DMA_CTRL_PLATFORM_OPT_IN: u8 = 4;

    /// An empty table for a platform of `host_address_width + 1` address
    /// bits.
    pub fn new(host_address_width: u8) -> Dmar {
        Dmar {
            host_address_width,
            flags: 0,
            structures: Vec::new(),
        }
    }

    /// Appends a structure (the specification lists DRHDs first, then
    /// RMRRs, ATSRs, RHSAs, ANDDs and SATCs; the builder keeps the order
    /// it is given).
    pub fn push(&mut self, s: Remapping) {
        self.structures.push(s);
    }

    /// Bits of DMA address the platform has.
    pub fn address_width(&self) -> u32 {
        u32::from(self.host_address_width) + 1
    }

    /// The remapping units, in table order.
    pub fn drhds(&self) -> impl Iterator<Item = &Drhd> {
        self.structures.iter().filter_map(|s| match s {
            Remapping::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The reserved memory regions, in table order.
    pub fn rmrrs(&self) -> impl Iterator<Item = &Rmrr> {
        self.structures.iter().filter_map(|s| match s {
            Remapping::Rmrr(r) => Some(r),
            _ => None,
        })
    }

    /// The unit that translates PCI function `bdf` of `segment`, as Linux
    /// decides it: a unit naming the function in an endpoint scope, or a
    /// bridge above it (or the bridge itself) in a bridge scope, else the
    /// segment's `INCLUDE_PCI_ALL` unit. `secondary_bus` gives a bridge's
    /// secondary bus (to follow scope paths); `bus_range` a bridge's
    /// secondary and subordinate bus (what lies below it).
    pub fn drhd_for(
        &self,
        segment: u16,
        bdf: u16,
        secondary_bus: &dyn Fn(u8, u8) -> Option<u8>,
        bus_range: &dyn Fn(u16) -> Option<(u8, u8)>,
    ) -> Option<&Drhd> {
        let bus = (bdf >> 8) as u8;
        let named = self
            .drhds()
            .filter(|d| d.segment == segment && !d.includes_pci_all())
            .find(|d| {
                d.scopes.iter().any(|s| match s.kind {
                    ScopeKind::Endpoint => s.resolve(secondary_bus) == Some(bdf),
                    ScopeKind::Bridge => s.resolve(secondary_bus).is_some_and(|b| {
                        b == bdf
                            || bus_range(b).is_some_and(|(sec, sub)| (sec..=sub).contains(&bus))
                    }),
                    _ => false,
                })
            });
        named.or_else(|| {
            self.drhds()
                .find(|d| d.segment == segment && d.includes_pci_all())
        })
    }

    /// The reserved memory regions `bdf` of `segment` must have
    /// identity-mapped: the RMRRs whose scopes name it or a bridge above
    /// it. Like Linux, misaligned ones are kept (Linux warns of a firmware
    /// bug and maps them); one whose limit is below its base, which would
    /// wrap, is left out.
    pub fn rmrrs_for<'a>(
        &'a self,
        segment: u16,
        bdf: u16,
        secondary_bus: &'a dyn Fn(u8, u8) -> Option<u8>,
        bus_range: &'a dyn Fn(u16) -> Option<(u8, u8)>,
    ) -> impl Iterator<Item = &'a Rmrr> + 'a {
        let bus = (bdf >> 8) as u8;
        self.rmrrs().filter(move |r| {
            r.segment == segment
                && r.limit >= r.base
                && r.scopes.iter().any(|s| match s.resolve(secondary_bus) {
                    Some(b) if s.kind == ScopeKind::Endpoint => b == bdf,
                    Some(b) if s.kind == ScopeKind::Bridge => {
                        b == bdf
                            || bus_range(b).is_some_and(|(sec, sub)| (sec..=sub).contains(&bus))
                    }
                    _ => false,
                })
        })
    }

    /// Reads a DMAR: the ACPI header and checksum, the DMAR's fields, every
    /// remapping structure and device scope within its bounds.
    ///
    /// # Errors
    /// A [`DmarError`] naming what is wrong and where.
    pub fn parse(bytes: &[u8]) -> Result<Dmar, DmarError> {
        Dmar::parse_with_header(bytes).map(|(_, d)| d)
    }

    /// [`parse`](Self::parse), with the table's ACPI header (to build the
    /// same table again with [`to_bytes_with`](Self::to_bytes_with)).
    ///
    /// # Errors
    /// As `parse`.
    pub fn parse_with_header(bytes: &[u8]) -> Result<(Header, Dmar), DmarError> {
        let (header, table) = Header::parse(bytes, *b"DMAR")?;
        if table.len() < FIRST_STRUCTURE {
            return Err(DmarError::Short { len: table.len() });
        }
        let host_address_width = table[36];
        // Linux refuses a width under PAGE_SHIFT - 1 (the field is bits - 1).
        if host_address_width < 11 {
            return Err(DmarError::AddressWidth(u32::from(host_address_width) + 1));
        }
        let mut dmar = Dmar {
            host_address_width,
            flags: table[37],
            structures: Vec::new(),
        };
        for record in acpi::records(table, FIRST_STRUCTURE, true) {
            let acpi::Record {
                offset: at,
                ty,
                bytes: s,
            } = record.map_err(|e| DmarError::Structure {
                offset: e.offset,
                ty: e.ty,
                len: e.len,
                why: e.why,
            })?;
            let len = s.len();
            let fixed = match ty {
                ty::DRHD => 16,
                ty::RMRR => 24,
                ty::ATSR | ty::SATC | ty::ANDD => 8,
                ty::RHSA => 20,
                _ => 4,
            };
            if len < fixed {
                return Err(DmarError::Structure {
                    offset: at,
                    ty,
                    len,
                    why: "shorter than its type's fixed fields",
                });
            }
            let scopes = || parse_scopes(table, at + fixed, at + len);
            dmar.structures.push(match ty {
                ty::DRHD => Remapping::Drhd(Drhd {
                    flags: s[4],
                    size: s[5],
                    segment: u16_at(s, 6),
                    register_base: u64_at(s, 8),
                    scopes: scopes()?,
                }),
                ty::RMRR => Remapping::Rmrr(Rmrr {
                    segment: u16_at(s, 6),
                    base: u64_at(s, 8),
                    limit: u64_at(s, 16),
                    scopes: scopes()?,
                }),
                ty::ATSR | ty::SATC => {
                    let a = AtsScope {
                        flags: s[4],
                        segment: u16_at(s, 6),
                        scopes: scopes()?,
                    };
                    if ty == ty::ATSR {
                        Remapping::Atsr(a)
                    } else {
                        Remapping::Satc(a)
                    }
                }
                ty::RHSA => Remapping::Rhsa {
                    register_base: u64_at(s, 8),
                    proximity_domain: u32_at(s, 16),
                },
                ty::ANDD => {
                    let name = &s[8..];
                    let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                    Remapping::Andd {
                        device_number: s[7],
                        object_name: name.iter().map(|&c| char::from(c)).collect(),
                    }
                }
                _ => Remapping::Other {
                    ty,
                    body: s[4..].to_vec(),
                },
            });
        }
        Ok((header, dmar))
    }

    /// The table's bytes: the ACPI header with the OEM fields given
    /// (revision 1, creator `IOMR`), the DMAR's fields, every structure in
    /// order, the checksum.
    ///
    /// # Panics
    /// If a structure does not fit its 16-bit length, or a scope's path its
    /// 8-bit one (a builder's bug: no parsed table has either).
    pub fn to_bytes(&self, oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
        self.to_bytes_with(&Header::new(
            *b"DMAR",
            1,
            oem_id,
            oem_table_id,
            oem_revision,
        ))
    }

    /// [`to_bytes`](Self::to_bytes) under a header of the caller's (its
    /// signature is written as given).
    ///
    /// # Panics
    /// As `to_bytes`.
    pub fn to_bytes_with(&self, header: &Header) -> Vec<u8> {
        let mut b = header.start();
        b.push(self.host_address_width);
        b.push(self.flags);
        b.extend_from_slice(&[0; 10]);
        for s in &self.structures {
            let start = b.len();
            let (ty, scopes): (u16, &[DeviceScope]) = match s {
                Remapping::Drhd(d) => {
                    head(&mut b, ty::DRHD);
                    b.push(d.flags);
                    b.push(d.size);
                    b.extend_from_slice(&d.segment.to_le_bytes());
                    b.extend_from_slice(&d.register_base.to_le_bytes());
                    (ty::DRHD, &d.scopes)
                }
                Remapping::Rmrr(r) => {
                    head(&mut b, ty::RMRR);
                    b.extend_from_slice(&[0; 2]);
                    b.extend_from_slice(&r.segment.to_le_bytes());
                    b.extend_from_slice(&r.base.to_le_bytes());
                    b.extend_from_slice(&r.limit.to_le_bytes());
                    (ty::RMRR, &r.scopes)
                }
                Remapping::Atsr(a) | Remapping::Satc(a) => {
                    let t = if matches!(s, Remapping::Atsr(_)) {
                        ty::ATSR
                    } else {
                        ty::SATC
                    };
                    head(&mut b, t);
                    b.push(a.flags);
                    b.push(0);
                    b.extend_from_slice(&a.segment.to_le_bytes());
                    (t, &a.scopes)
                }
                Remapping::Rhsa {
                    register_base,
                    proximity_domain,
                } => {
                    head(&mut b, ty::RHSA);
                    b.extend_from_slice(&[0; 4]);
                    b.extend_from_slice(&register_base.to_le_bytes());
                    b.extend_from_slice(&proximity_domain.to_le_bytes());
                    (ty::RHSA, &[])
                }
                Remapping::Andd {
                    device_number,
                    object_name,
                } => {
                    head(&mut b, ty::ANDD);
                    b.extend_from_slice(&[0; 3]);
                    b.push(*device_number);
                    b.extend(object_name.chars().map(|c| u8::try_from(c).unwrap_or(b'?')));
                    b.push(0);
                    (ty::ANDD, &[])
                }
                Remapping::Other { ty, body } => {
                    head(&mut b, *ty);
                    b.extend_from_slice(body);
                    (*ty, &[])
                }
            };
            for sc in scopes {
                sc.write(&mut b);
            }
            let len = u16::try_from(b.len() - start)
                .unwrap_or_else(|_| panic!("a type {ty} structure longer than 64 KiB"));
            b[start + 2..start + 4].copy_from_slice(&len.to_le_bytes());
        }
        acpi::finish(&mut b);
        b
    }
}

/// A structure's type, and its length to fill in.
fn head(b: &mut Vec<u8>, ty: u16) {
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&[0; 2]);
}

/// The device scopes in `table[from..to]`.
fn parse_scopes(table: &[u8], from: usize, to: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut at = from;
    while at < to {
        let left = to - at;
        let len = if left >= 2 {
            usize::from(table[at + 1])
        } else {
            left
        };
        let bad = |why| DmarError::Scope {
            offset: at,
            len,
            why,
        };
        if left < SCOPE_HEAD {
            return Err(bad("the structure ends inside a scope's header"));
        }
        if len < SCOPE_HEAD {
            return Err(bad("shorter than a scope's 6-byte header"));
        }
        if !(len - SCOPE_HEAD).is_multiple_of(2) {
            return Err(bad("half a path entry"));
        }
        if len > left {
            return Err(bad("past the end of its structure"));
        }
        let s = &table[at..at + len];
        scopes.push(DeviceScope {
            kind: ScopeKind::from_u8(s[0]),
            flags: s[2],
            enumeration_id: s[4],
            start_bus: s[5],
            path: s[SCOPE_HEAD..]
                .chunks_exact(2)
                .map(|p| (p[0], p[1]))
                .collect(),
        });
        at += len;
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Dmar {
        let mut d = Dmar::new(38);
        d.flags = Dmar::INTR_REMAP;
        d.push(Remapping::Drhd(Drhd {
            flags: 0,
            size: 1,
            segment: 0,
            register_base: 0xfed9_0000,
            scopes: vec![DeviceScope::endpoint(0, 2, 0)],
        }));
        d.push(Remapping::Drhd(Drhd {
            flags: Drhd::INCLUDE_PCI_ALL,
            size: 0,
            segment: 0,
            register_base: 0xfed9_1000,
            scopes: vec![DeviceScope::ioapic(2, 0xf0, 0xf8)],
        }));
        d.push(Remapping::Rmrr(Rmrr {
            segment: 0,
            base: 0x3e00_0000,
            limit: 0x3e7f_ffff,
            scopes: vec![DeviceScope::endpoint(0, 0x14, 0)],
        }));
        d.push(Remapping::Andd {
            device_number: 1,
            object_name: "\\_SB.PCI0.UA00".into(),
        });
        d
    }

    #[test]
    fn a_table_reads_back_as_built() {
        let d = sample();
        let b = d.to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        assert_eq!(acpi::checksum(&b), 0);
        assert_eq!(Dmar::parse(&b), Ok(d));
    }

    #[test]
    fn hostile_tables_get_the_error_that_names_them() {
        let good = sample().to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        let fix = |mut b: Vec<u8>| {
            acpi::fix_checksum(&mut b);
            b
        };
        // A zero-length structure.
        let mut b = good.clone();
        b[50..52].copy_from_slice(&[0, 0]);
        assert!(matches!(
            Dmar::parse(&fix(b)),
            Err(DmarError::Structure {
                offset: 48,
                len: 0,
                ..
            })
        ));
        // A structure past the end.
        let mut b = good.clone();
        b[50..52].copy_from_slice(&0x4000u16.to_le_bytes());
        assert!(matches!(
            Dmar::parse(&fix(b)),
            Err(DmarError::Structure { offset: 48, .. })
        ));
        // A DRHD shorter than its fixed part.
        let mut b = good.clone();
        b[50..52].copy_from_slice(&8u16.to_le_bytes());
        assert!(matches!(
            Dmar::parse(&fix(b)),
            Err(DmarError::Structure {
                offset: 48,
                len: 8,
                ..
            })
        ));
        // A scope of odd length, then one shorter than its header.
        for (len, why) in [
            (7u8, "half a path entry"),
            (4, "shorter than a scope's 6-byte header"),
        ] {
            let mut b = good.clone();
            b[48 + 16 + 1] = len;
            match Dmar::parse(&fix(b)) {
                Err(DmarError::Scope {
                    offset: 64, why: w, ..
                }) => assert_eq!(w, why),
                other => panic!("{other:?}"),
            }
        }
        // A narrow address width.
        let mut b = good.clone();
        b[36] = 3;
        assert_eq!(Dmar::parse(&fix(b)), Err(DmarError::AddressWidth(4)));
        // A bad checksum, a truncated table, another signature.
        let mut b = good.clone();
        b[40] ^= 1;
        assert!(matches!(
            Dmar::parse(&b),
            Err(DmarError::Header(HeaderError::Checksum { .. }))
        ));
        assert!(matches!(
            Dmar::parse(&good[..good.len() - 1]),
            Err(DmarError::Header(HeaderError::Truncated { .. }))
        ));
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            Dmar::parse(&fix(b)),
            Err(DmarError::Header(HeaderError::Signature { .. }))
        ));
    }

    #[test]
    fn an_unknown_structure_is_kept_and_skipped() {
        let mut d = sample();
        d.structures.insert(
            1,
            Remapping::Other {
                ty: 6,
                body: vec![0, 0, 0, 0],
            },
        );
        let b = d.to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        assert_eq!(Dmar::parse(&b), Ok(d));
    }

    #[test]
    fn scopes_resolve_through_bridges_and_pick_the_unit() {
        let mut d = Dmar::new(38);
        // Unit A: the device two bridges down from 00:1c.0; unit B: all else.
        d.push(Remapping::Drhd(Drhd {
            flags: 0,
            size: 0,
            segment: 0,
            register_base: 0xa000,
            scopes: vec![DeviceScope {
                path: vec![(0x1c, 0), (0, 0), (3, 1)],
                ..DeviceScope::endpoint(0, 0, 0)
            }],
        }));
        d.push(Remapping::Drhd(Drhd {
            flags: 0,
            size: 0,
            segment: 0,
            register_base: 0xb000,
            scopes: vec![DeviceScope::bridge(0, 1, 0)],
        }));
        d.push(Remapping::Drhd(Drhd {
            flags: Drhd::INCLUDE_PCI_ALL,
            size: 0,
            segment: 0,
            register_base: 0xc000,
            scopes: vec![],
        }));
        // 00:1c.0 -> bus 2; 02:00.0 -> bus 3; 00:01.0 -> buses 5..=7.
        let secondary = |bus: u8, devfn: u8| match (bus, devfn) {
            (0, 0xe0) => Some(2),
            (2, 0x00) => Some(3),
            (0, 0x08) => Some(5),
            _ => None,
        };
        let range = |bdf: u16| (bdf == 0x0008).then_some((5, 7));
        let unit = |bdf| {
            d.drhd_for(0, bdf, &secondary, &range)
                .map(|u| u.register_base)
        };
        assert_eq!(unit(0x0319), Some(0xa000), "03:03.1 is unit A's endpoint");
        assert_eq!(unit(0x0318), Some(0xc000), "03:03.0 is not");
        assert_eq!(unit(0x0008), Some(0xb000), "the bridge itself");
        assert_eq!(unit(0x0600), Some(0xb000), "below the bridge");
        assert_eq!(unit(0x0800), Some(0xc000), "past its subordinate bus");
        assert_eq!(
            d.drhd_for(1, 0x0600, &secondary, &range),
            None,
            "no unit on segment 1"
        );
        // A path through something that is not a bridge resolves nowhere.
        let nothing = |_: u8, _: u8| None;
        assert_eq!(
            d.drhd_for(0, 0x0319, &nothing, &range)
                .map(|u| u.register_base),
            Some(0xc000)
        );
    }

    #[test]
    fn rmrrs_apply_to_their_devices_and_a_wrapping_one_to_none() {
        let mut d = sample();
        for (base, limit) in [(0x5000, 0x4fff), (0x6800, 0x6fff)] {
            d.push(Remapping::Rmrr(Rmrr {
                segment: 0,
                base,
                limit,
                scopes: vec![DeviceScope::endpoint(0, 0x14, 0)],
            }));
        }
        let secondary = |_: u8, _: u8| None;
        let range = |_: u16| None;
        let got: Vec<_> = d
            .rmrrs_for(0, 0x00a0, &secondary, &range)
            .map(|r| (r.base, r.limit, r.is_well_formed()))
            .collect();
        assert_eq!(
            got,
            vec![(0x3e00_0000, 0x3e7f_ffff, true), (0x6800, 0x6fff, false)],
            "the misaligned one kept, as Linux keeps it; the wrapping one left out"
        );
        assert_eq!(d.rmrrs_for(0, 0x0010, &secondary, &range).count(), 0);
    }
}
