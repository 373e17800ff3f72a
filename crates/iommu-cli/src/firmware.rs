//! What a machine's firmware tables add to the prediction, where
//! configuration space is silent: the functions no IOMMU covers (Linux
//! gives them no group), the memory the firmware keeps using for DMA
//! (reported as `direct` reserved regions of the devices it names) and,
//! on AMD, the request ids devices use in place of their own.
//!
//! - Intel's DMAR: its units' device scopes, its RMRRs (`direct-relaxable`
//!   for USB controllers and graphics, whose firmware use Linux lets
//!   lapse, `direct` for every other device).
//! - AMD's IVRS: the IVHD device entries (the blocks of the type Linux
//!   uses), their aliases (Linux adds each as a DMA alias, so the devices
//!   sharing one share a group), and the IVMD unity and exclusion ranges
//!   (all `direct`).

use crate::Failure;
use iommu_core::{Prot, ReservedRegion, ResvType};
use iommu_firmware::dmar::Dmar;
use iommu_firmware::ivrs::Ivrs;
use iommu_pci::{Bdf, DeviceQuirks, Machine};
use std::collections::BTreeMap;
use std::path::Path;

/// The largest table read: far beyond any machine's (a few KiB), and the
/// ACPI length field's own bound is 4 GiB.
const MAX_TABLE: u64 = 1 << 20;

/// A firmware table read from a file, and where from.
pub struct Table<T> {
    /// The file, for messages.
    pub source: String,
    /// The table.
    pub table: T,
}

/// The bytes of the table `what` (`DMAR`, `IVRS`) at `path`.
fn read_bytes(path: &Path, what: &str) -> Result<(String, Vec<u8>), Failure> {
    use std::io::Read as _;
    let source = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TABLE + 1).read_to_end(&mut bytes))
        .map_err(|e| Failure::Input(format!("{source}: {e}")))?;
    if bytes.len() as u64 > MAX_TABLE {
        return Err(Failure::Input(format!(
            "{source}: larger than {} KiB: not {what} table",
            MAX_TABLE >> 10
        )));
    }
    Ok((source, bytes))
}

fn refused(source: &str, e: impl std::fmt::Display, what: &str) -> Failure {
    Failure::Input(format!(
        "{source}: {e}; expected the bytes of /sys/firmware/acpi/tables/{what} (`sudo cat` it to a file)"
    ))
}

/// Reads the DMAR table's bytes at `path` (a copy of
/// `/sys/firmware/acpi/tables/DMAR`, or what `acpidump -b` writes).
///
/// # Errors
/// [`Failure::Input`] naming the file and what is wrong.
pub fn read_dmar(path: &Path) -> Result<Table<Dmar>, Failure> {
    let (source, bytes) = read_bytes(path, "a DMAR")?;
    let table = Dmar::parse(&bytes).map_err(|e| refused(&source, e, "DMAR"))?;
    Ok(Table { source, table })
}

/// Reads the IVRS table's bytes at `path`, as [`read_dmar`] the DMAR's.
///
/// # Errors
/// [`Failure::Input`] naming the file and what is wrong.
pub fn read_ivrs(path: &Path) -> Result<Table<Ivrs>, Failure> {
    let (source, bytes) = read_bytes(path, "an IVRS")?;
    let table = Ivrs::parse(&bytes).map_err(|e| refused(&source, e, "IVRS"))?;
    Ok(Table { source, table })
}

/// What a table says of a machine's functions.
#[derive(Default)]
pub struct Facts {
    /// Functions no IOMMU covers.
    pub not_covered: Vec<Bdf>,
    /// Memory the firmware keeps using for DMA, per function.
    pub resv: Vec<(Bdf, ReservedRegion)>,
    /// Request ids functions use besides their own (devfns on their bus).
    pub quirks: BTreeMap<Bdf, DeviceQuirks>,
}

/// The ACPI segment of `b` and its request id, or `None` for the domains
/// Linux numbers past 16 bits (Intel VMD's), which sit behind their VMD
/// endpoint: the firmware covers them through it.
fn acpi_id(b: Bdf) -> Option<(u16, u16)> {
    let segment = u16::try_from(b.segment).ok()?;
    Some((segment, u16::from(b.bus) << 8 | u16::from(b.devfn)))
}

/// What the DMAR says of `machine`'s functions: the ones no unit covers,
/// and the RMRR regions of the others.
pub fn apply_dmar(machine: &Machine, dmar: &Dmar) -> Facts {
    // Bridges by (segment, bus, devfn): their secondary and subordinate bus.
    let bridges: BTreeMap<(u32, u8, u8), (u8, u8)> = machine
        .devices
        .iter()
        .filter_map(|d| {
            let f = &d.function;
            f.bridge.map(|b| {
                (
                    (f.bdf.segment, f.bdf.bus, f.bdf.devfn),
                    (b.secondary, b.subordinate),
                )
            })
        })
        .collect();
    let mut facts = Facts::default();
    for d in &machine.devices {
        let f = &d.function;
        let Some((segment, rid)) = acpi_id(f.bdf) else {
            continue;
        };
        let seg = f.bdf.segment;
        let secondary = |bus: u8, devfn: u8| bridges.get(&(seg, bus, devfn)).map(|r| r.0);
        let range = |bdf: u16| bridges.get(&(seg, (bdf >> 8) as u8, bdf as u8)).copied();
        if dmar.drhd_for(segment, rid, &secondary, &range).is_none() {
            facts.not_covered.push(f.bdf);
            continue;
        }
        // Linux's device_rmrr_is_relaxable: USB controllers and graphics.
        let relaxable = f.class >> 8 == 0x0c03 || f.class >> 16 == 0x03;
        for r in dmar.rmrrs_for(segment, rid, &secondary, &range) {
            let ty = if relaxable {
                ResvType::DirectRelaxable
            } else {
                ResvType::Direct
            };
            // `limit >= base` (rmrrs_for): the length does not wrap, and a
            // range ending at 2^64 - 1 has one past u64 only when it is the
            // whole space, which no memory map gives firmware.
            let len = (r.limit - r.base).saturating_add(1);
            facts
                .resv
                .push((f.bdf, ReservedRegion::new(r.base, len, Prot::RW, ty)));
        }
    }
    facts
}

/// What the IVRS says of `machine`'s functions: the ones no IOMMU
/// translates, their aliases, and their unity ranges.
pub fn apply_ivrs(machine: &Machine, ivrs: &Ivrs) -> Facts {
    let mut facts = Facts::default();
    for d in &machine.devices {
        let f = &d.function;
        let Some((segment, rid)) = acpi_id(f.bdf) else {
            continue;
        };
        let Some((_, alias)) = ivrs.iommu_for(segment, rid) else {
            facts.not_covered.push(f.bdf);
            continue;
        };
        // Linux adds an IVRS alias on the device's own bus as a DMA alias.
        if alias != rid && (alias >> 8) as u8 == f.bdf.bus {
            facts
                .quirks
                .entry(f.bdf)
                .or_insert_with(DeviceQuirks::default)
                .alias(alias as u8);
        }
        for (start, len, r, w) in ivrs.unity_ranges(segment, rid) {
            let mut prot = Prot::NONE;
            if r {
                prot |= Prot::READ;
            }
            if w {
                prot |= Prot::WRITE;
            }
            facts.resv.push((
                f.bdf,
                ReservedRegion::new(start, len, prot, ResvType::Direct),
            ));
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_firmware::dmar::{DeviceScope, Drhd, Remapping, Rmrr};

    #[test]
    fn rmrrs_become_direct_regions_relaxable_for_usb_and_graphics_and_uncovered_functions_are_found(
    ) {
        let machine = iommu_pci::parse_topology(
            "# graphics, USB, a root port with a NIC, SMBus\n\
             00:02.0 rc-endpoint id=8086:3e92 class=030000\n\
             00:14.0 rc-endpoint id=8086:a36d class=0c0330\n\
             00:1c.0 root-port buses=01-01\n\
             01:00.0 endpoint id=10ec:8168 class=0200\n\
             00:1f.4 rc-endpoint id=8086:a323 class=0c05\n",
        )
        .expect("topology")
        .machine;
        let mut dmar = Dmar::new(38);
        // The graphics unit; the rest of segment 0 except what no unit
        // names: here all of it (INCLUDE_PCI_ALL).
        dmar.push(Remapping::Drhd(Drhd {
            flags: 0,
            size: 0,
            segment: 0,
            register_base: 0xfed9_0000,
            scopes: vec![DeviceScope::endpoint(0, 2, 0)],
        }));
        dmar.push(Remapping::Drhd(Drhd {
            flags: Drhd::INCLUDE_PCI_ALL,
            size: 0,
            segment: 0,
            register_base: 0xfed9_1000,
            scopes: vec![],
        }));
        let rmrr = |base, limit, scope| {
            Remapping::Rmrr(Rmrr {
                segment: 0,
                base,
                limit,
                scopes: vec![scope],
            })
        };
        dmar.push(rmrr(
            0x3c00_0000,
            0x3fff_ffff,
            DeviceScope::endpoint(0, 2, 0),
        ));
        dmar.push(rmrr(
            0x3b8e_0000,
            0x3b8f_ffff,
            DeviceScope::endpoint(0, 0x14, 0),
        ));
        // Firmware that keeps the NIC behind the root port doing DMA.
        dmar.push(rmrr(
            0x3a00_0000,
            0x3a00_ffff,
            DeviceScope::bridge(0, 0x1c, 0),
        ));
        let Facts {
            not_covered, resv, ..
        } = apply_dmar(&machine, &dmar);
        assert!(not_covered.is_empty());
        let got: Vec<(String, u64, u64, ResvType)> = resv
            .iter()
            .map(|(b, r)| (b.to_string(), r.start.raw(), r.length, r.ty))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "0000:00:02.0".into(),
                    0x3c00_0000,
                    0x400_0000,
                    ResvType::DirectRelaxable
                ),
                (
                    "0000:00:14.0".into(),
                    0x3b8e_0000,
                    0x2_0000,
                    ResvType::DirectRelaxable
                ),
                (
                    "0000:00:1c.0".into(),
                    0x3a00_0000,
                    0x1_0000,
                    ResvType::Direct
                ),
                (
                    "0000:01:00.0".into(),
                    0x3a00_0000,
                    0x1_0000,
                    ResvType::Direct
                ),
            ]
        );
        // Without the INCLUDE_PCI_ALL unit only the graphics is covered.
        dmar.structures.remove(1);
        let not_covered = apply_dmar(&machine, &dmar).not_covered;
        let names: Vec<String> = not_covered.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            names,
            [
                "0000:00:14.0",
                "0000:00:1c.0",
                "0000:01:00.0",
                "0000:00:1f.4"
            ]
        );
    }
}
