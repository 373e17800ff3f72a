//! What an Intel machine's firmware DMAR table adds to the prediction: the
//! functions no VT-d unit covers (Linux gives them no group) and each
//! function's RMRRs, which Linux reports as reserved regions of its group
//! (`direct-relaxable` for USB controllers and graphics, whose firmware
//! use Linux lets lapse, `direct` for every other device).

use crate::Failure;
use iommu_core::{Prot, ReservedRegion, ResvType};
use iommu_firmware::dmar::Dmar;
use iommu_pci::{Bdf, Machine};
use std::collections::BTreeMap;
use std::path::Path;

/// The largest DMAR read: far beyond any machine's (a few KiB), and the
/// ACPI length field's own bound is 4 GiB.
const MAX_DMAR: u64 = 1 << 20;

/// A DMAR read from a file, and where from.
pub struct Firmware {
    /// The file, for messages.
    pub source: String,
    /// The table.
    pub dmar: Dmar,
}

/// Reads the DMAR table's bytes at `path` (a copy of
/// `/sys/firmware/acpi/tables/DMAR`, or what `acpidump -b` writes).
///
/// # Errors
/// [`Failure::Input`] naming the file and what is wrong.
pub fn read(path: &Path) -> Result<Firmware, Failure> {
    use std::io::Read as _;
    let source = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DMAR + 1).read_to_end(&mut bytes))
        .map_err(|e| Failure::Input(format!("{source}: {e}")))?;
    if bytes.len() as u64 > MAX_DMAR {
        return Err(Failure::Input(format!(
            "{source}: larger than {} KiB: not a DMAR table",
            MAX_DMAR >> 10
        )));
    }
    let dmar = Dmar::parse(&bytes).map_err(|e| {
        Failure::Input(format!(
            "{source}: {e}; expected the bytes of /sys/firmware/acpi/tables/DMAR (`sudo cat` it to a file)"
        ))
    })?;
    Ok(Firmware { source, dmar })
}

/// What the table says of `machine`'s functions: the ones no unit covers,
/// and the RMRR regions of the others.
pub fn apply(machine: &Machine, dmar: &Dmar) -> (Vec<Bdf>, Vec<(Bdf, ReservedRegion)>) {
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
    let mut not_covered = Vec::new();
    let mut resv = Vec::new();
    for d in &machine.devices {
        let f = &d.function;
        // ACPI segments are 16 bits; the domains Linux numbers past them
        // (Intel VMD's) sit behind their VMD endpoint, which the table
        // covers for them.
        let Ok(segment) = u16::try_from(f.bdf.segment) else {
            continue;
        };
        let seg = f.bdf.segment;
        let secondary = |bus: u8, devfn: u8| bridges.get(&(seg, bus, devfn)).map(|r| r.0);
        let range = |bdf: u16| bridges.get(&(seg, (bdf >> 8) as u8, bdf as u8)).copied();
        let rid = u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn);
        if dmar.drhd_for(segment, rid, &secondary, &range).is_none() {
            not_covered.push(f.bdf);
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
            resv.push((f.bdf, ReservedRegion::new(r.base, len, Prot::RW, ty)));
        }
    }
    (not_covered, resv)
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
        let (not_covered, resv) = apply(&machine, &dmar);
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
        let (not_covered, _) = apply(&machine, &dmar);
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
