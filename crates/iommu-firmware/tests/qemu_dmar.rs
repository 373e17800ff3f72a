//! The DMAR QEMU gives a q35 guest with an intel-iommu, as Linux read it:
//! parsed, built again byte for byte, and the unit it names covers exactly
//! the functions Linux put in IOMMU groups.

use iommu_firmware::dmar::{DeviceScope, Dmar, Drhd, Remapping, ScopeKind};
mod common;

use common::{every_truncation_and_flip, guest, hex, Guest};

const DMAR: &str = include_str!("data/qemu-10.0-q35-intel-iommu.dmar.txt");
const DEVICES: &str = include_str!("data/qemu-10.0-q35-intel-iommu.devices.txt");

#[test]
fn qemus_dmar_parses_into_its_one_unit_and_builds_back_byte_for_byte() {
    let bytes = hex(DMAR);
    let (header, dmar) = Dmar::parse_with_header(&bytes).expect("QEMU's DMAR parses");
    assert_eq!(&header.oem_id, b"BOCHS ");
    assert_eq!(dmar.address_width(), 48);
    assert_eq!(dmar.flags, Dmar::INTR_REMAP);
    let scope = |kind, bus, dev, func| DeviceScope {
        kind,
        ..DeviceScope::endpoint(bus, dev, func)
    };
    let want = Drhd {
        flags: 0,
        size: 0,
        segment: 0,
        register_base: 0xfed9_0000,
        scopes: vec![
            // QEMU's I/O APIC (id 0) sits at ff:00.0.
            DeviceScope::ioapic(0, 0xff, 0),
            scope(ScopeKind::Endpoint, 0, 0, 0),
            scope(ScopeKind::Bridge, 0, 2, 0),
            scope(ScopeKind::Bridge, 0, 4, 0),
            scope(ScopeKind::Endpoint, 0, 0x1f, 0),
            scope(ScopeKind::Endpoint, 0, 0x1f, 2),
            scope(ScopeKind::Endpoint, 0, 0x1f, 3),
        ],
    };
    assert_eq!(dmar.structures, vec![Remapping::Drhd(want)]);
    assert_eq!(
        dmar.to_bytes_with(&header),
        bytes,
        "the builder writes QEMU's bytes"
    );
}

#[test]
fn the_unit_covers_exactly_the_functions_linux_grouped() {
    let dmar = Dmar::parse(&hex(DMAR)).unwrap();
    let Guest {
        functions,
        bridges,
        grouped,
    } = guest(DEVICES);
    assert_eq!(functions.len(), 9, "the guest's functions");
    let secondary = |bus: u8, devfn: u8| {
        bridges
            .get(&(u16::from(bus) << 8 | u16::from(devfn)))
            .map(|r| r.0)
    };
    let range = |b: u16| bridges.get(&b).copied();
    for f in &functions {
        let unit = dmar.drhd_for(0, *f, &secondary, &range);
        assert_eq!(
            unit.is_some(),
            grouped.contains(f),
            "{f:#06x}: covered by a unit here, grouped by Linux there"
        );
        if let Some(u) = unit {
            assert_eq!(u.register_base, 0xfed9_0000);
        }
    }
    // A function QEMU's table does not name (no INCLUDE_PCI_ALL unit): no unit.
    assert!(dmar.drhd_for(0, 0x0028, &secondary, &range).is_none());
}

#[test]
fn every_truncation_and_every_flipped_byte_of_qemus_table_is_an_error_or_a_table() {
    every_truncation_and_flip(&hex(DMAR), Dmar::parse, |t| {
        t.to_bytes(*b"IOMMRS", *b"IOMMUDMR", 1)
    });
}

/// The `dmar` fuzz target's seeds (written to `$IOMMU_FUZZ_SEEDS/dmar`
/// when set): QEMU's table and a built one with every structure type.
#[test]
fn dmar_fuzz_seeds_parse() {
    use iommu_firmware::dmar::{AtsScope, Rmrr};
    let mut built = Dmar::new(38);
    built.push(Remapping::Drhd(Drhd {
        flags: Drhd::INCLUDE_PCI_ALL,
        size: 0,
        segment: 0,
        register_base: 0xfed9_1000,
        scopes: vec![DeviceScope::ioapic(2, 0xf0, 0xf8)],
    }));
    built.push(Remapping::Rmrr(Rmrr {
        segment: 0,
        base: 0x3e00_0000,
        limit: 0x3e7f_ffff,
        scopes: vec![DeviceScope::endpoint(0, 0x14, 0)],
    }));
    built.push(Remapping::Atsr(AtsScope {
        flags: 1,
        segment: 0,
        scopes: vec![DeviceScope::bridge(0, 0x1c, 0)],
    }));
    built.push(Remapping::Rhsa {
        register_base: 0xfed9_1000,
        proximity_domain: 0,
    });
    built.push(Remapping::Andd {
        device_number: 1,
        object_name: "\\_SB.PCI0.UA00".into(),
    });
    built.push(Remapping::Satc(AtsScope {
        flags: 1,
        segment: 0,
        scopes: vec![DeviceScope::endpoint(0, 2, 0)],
    }));
    let seeds = [hex(DMAR), built.to_bytes(*b"SEED  ", *b"SEEDSEED", 0)];
    let dir = std::env::var_os("IOMMU_FUZZ_SEEDS").map(|d| {
        let d = std::path::PathBuf::from(d).join("dmar");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    for (i, s) in seeds.iter().enumerate() {
        assert!(Dmar::parse(s).is_ok(), "seed {i}");
        if let Some(d) = &dir {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
    assert_eq!(Dmar::parse(&seeds[1]), Ok(built));
}
