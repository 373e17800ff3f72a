//! A machine's VT-d units from its DMAR: which DRHD translates each PCI
//! function ([`DmarUnits`], the driver's [`UnitLookup`]), as Linux's
//! `device_lookup_iommu` decides it, and the built-in platform's firmware
//! ([`default_dmar`]): two units, as on an Intel laptop, one for the
//! graphics and one for everything else.

use crate::USB_RMRR;
use iommu_firmware::dmar::{DeviceScope, Dmar, Drhd, Remapping, Rmrr};
use iommu_pci::Topology;
use iommu_vtd::UnitLookup;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A DMAR's DRHDs, and which of them translates a requester id.
#[derive(Clone, Debug)]
pub struct DmarUnits {
    dmar: Dmar,
    /// Bridges by (segment, bus, devfn): their secondary and subordinate
    /// bus.
    bridges: BTreeMap<(u32, u8, u8), (u8, u8)>,
}

impl DmarUnits {
    /// `dmar`'s units over the bridges of `topology` (whose configuration
    /// space gives their bus numbers, to follow scope paths and tell what
    /// lies below a bridge), on every PCI segment.
    pub fn resolve(dmar: &Dmar, topology: &Topology) -> DmarUnits {
        let bridges = topology
            .functions()
            .iter()
            .filter_map(|f| {
                f.bridge.map(|b| {
                    (
                        (f.bdf.segment, f.bdf.bus, f.bdf.devfn),
                        (b.secondary, b.subordinate),
                    )
                })
            })
            .collect();
        DmarUnits {
            dmar: dmar.clone(),
            bridges,
        }
    }

    /// The units, in table order (the driver's unit indices).
    pub fn drhds(&self) -> impl Iterator<Item = &Drhd> {
        self.dmar.drhds()
    }

    /// How many units there are.
    pub fn units(&self) -> usize {
        self.drhds().count()
    }

    /// The unit (its index in [`drhds`](Self::drhds)) that translates
    /// requester id `id` (`segment << 16 | rid`, the form of a PCI
    /// device's stream ids): one of its segment whose scope names it or a
    /// bridge above it, else the segment's `INCLUDE_PCI_ALL` unit
    /// ([`Dmar::drhd_for`]), as Linux's `device_lookup_iommu` decides;
    /// `None` if no unit does.
    pub fn unit_of(&self, id: u32) -> Option<usize> {
        let (segment, rid) = (id >> 16, id as u16);
        let seg = u16::try_from(segment).ok()?;
        let secondary = |bus: u8, devfn: u8| self.bridges.get(&(segment, bus, devfn)).map(|r| r.0);
        let range = |bdf: u16| {
            self.bridges
                .get(&(segment, (bdf >> 8) as u8, bdf as u8))
                .copied()
        };
        let d = self.dmar.drhd_for(seg, rid, &secondary, &range)?;
        self.drhds().position(|x| core::ptr::eq(x, d))
    }

    /// [`unit_of`](Self::unit_of) as the driver's lookup.
    pub fn lookup(&self) -> UnitLookup {
        let me = self.clone();
        Arc::new(move |id: u32| me.unit_of(id))
    }
}

/// Where the built-in platform's units have their registers.
pub const DEFAULT_DRHD_BASES: [u64; 2] = [0xfed9_0000, 0xfed9_1000];

/// The built-in platform's DMAR (48-bit host addresses): a unit for the
/// graphics (the GPU and its audio function, through a bridge scope on
/// their root port 00:01.0, as a laptop's DMAR names its integrated GPU),
/// an `INCLUDE_PCI_ALL` unit for everything else (and the I/O APIC), and
/// the USB controller's RMRR ([`USB_RMRR`]).
pub fn default_dmar() -> Dmar {
    let mut dmar = Dmar::new(47);
    dmar.push(Remapping::Drhd(Drhd {
        flags: 0,
        size: 0,
        segment: 0,
        register_base: DEFAULT_DRHD_BASES[0],
        scopes: vec![DeviceScope::bridge(0, 1, 0)],
    }));
    dmar.push(Remapping::Drhd(Drhd {
        flags: Drhd::INCLUDE_PCI_ALL,
        size: 0,
        segment: 0,
        register_base: DEFAULT_DRHD_BASES[1],
        scopes: vec![DeviceScope::ioapic(2, 0, 0xf7)],
    }));
    dmar.push(Remapping::Rmrr(Rmrr {
        segment: 0,
        base: USB_RMRR.start.raw(),
        limit: USB_RMRR.start.raw() + USB_RMRR.length - 1,
        scopes: vec![DeviceScope::endpoint(0, 0x14, 0)],
    }));
    dmar
}

/// The built-in platform's units: [`default_dmar`] resolved over
/// [`DEFAULT_TOPOLOGY`](crate::DEFAULT_TOPOLOGY).
pub fn default_vtd_units() -> DmarUnits {
    let t =
        iommu_pci::parse_topology(crate::DEFAULT_TOPOLOGY).expect("the default topology parses");
    let a = t
        .machine
        .analyze(iommu_pci::Platform::default())
        .expect("the default topology is a tree");
    DmarUnits::resolve(&default_dmar(), &a.topology)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_platforms_graphics_have_a_unit_of_their_own() {
        let u = default_vtd_units();
        assert_eq!(u.units(), 2);
        let unit = |bdf: &str| {
            let b: iommu_pci::Bdf = bdf.parse().unwrap();
            u.unit_of(u32::from(b.bus) << 8 | u32::from(b.devfn))
        };
        // The GPU, its audio function, and the root port the scope names.
        assert_eq!(unit("01:00.0"), Some(0));
        assert_eq!(unit("01:00.1"), Some(0));
        assert_eq!(unit("00:01.0"), Some(0));
        // Everything else: the INCLUDE_PCI_ALL unit, VFs and the devices
        // behind the PCIe-to-PCI bridge included.
        for f in [
            "00:14.0", "02:00.0", "02:02.0", "02:02.1", "03:00.0", "05:01.0", "00:1f.3",
        ] {
            assert_eq!(unit(f), Some(1), "{f}");
        }
        // The alias the PCIe-to-PCI bridge gives the devices behind it
        // (its secondary bus, devfn 0) is no function's own id: the scope
        // still decides.
        let lookup = u.lookup();
        assert_eq!(lookup(0x0100), Some(0));
        assert_eq!(lookup(0x0300), Some(1));
        assert_eq!(lookup(0x0500), Some(1));
        // Without an INCLUDE_PCI_ALL unit, what no scope names has none.
        let mut only_gpu = default_dmar();
        only_gpu.structures.remove(1);
        let a = iommu_pci::parse_topology(crate::DEFAULT_TOPOLOGY).unwrap();
        let a = a.machine.analyze(iommu_pci::Platform::default()).unwrap();
        let u = DmarUnits::resolve(&only_gpu, &a.topology);
        assert_eq!(u.unit_of(0x0100), Some(0));
        assert_eq!(u.unit_of(0x0300), None);
        // A second segment with a unit of its own: the same requester id
        // on each segment has its segment's unit.
        let mut two = default_dmar();
        two.push(Remapping::Drhd(Drhd {
            flags: Drhd::INCLUDE_PCI_ALL,
            size: 0,
            segment: 1,
            register_base: 0xfed9_2000,
            scopes: vec![],
        }));
        let u = DmarUnits::resolve(&two, &a.topology);
        assert_eq!(u.unit_of(0x0300), Some(1));
        assert_eq!(u.unit_of(1 << 16 | 0x0300), Some(2));
        assert_eq!(u.unit_of(2 << 16 | 0x0300), None, "no unit on segment 2");
    }

    #[test]
    fn the_default_dmar_survives_its_own_bytes() {
        let d = default_dmar();
        let bytes = d.to_bytes(*b"IOMMRS", *b"DEFAULT ", 1);
        assert_eq!(Dmar::parse(&bytes).unwrap(), d);
        let rmrr = d.rmrrs().next().unwrap();
        assert!(rmrr.is_well_formed());
    }
}
