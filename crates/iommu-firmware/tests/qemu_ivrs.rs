//! The IVRS QEMU gives a q35 guest with an amd-iommu, as Linux read it:
//! parsed, built again byte for byte, and its IOMMU translates exactly the
//! functions Linux put in IOMMU groups.

mod common;

use common::{every_truncation_and_flip, guest, hex, Guest};
use iommu_firmware::ivrs::{Block, DeviceEntry, DeviceRange, Ivrs};

const IVRS: &str = include_str!("data/qemu-10.0-q35-amd-iommu.ivrs.txt");
const DEVICES: &str = include_str!("data/qemu-10.0-q35-amd-iommu.devices.txt");

#[test]
fn qemus_ivrs_parses_into_two_blocks_for_one_iommu_and_builds_back_byte_for_byte() {
    let bytes = hex(IVRS);
    let (header, ivrs) = Ivrs::parse_with_header(&bytes).expect("QEMU's IVRS parses");
    assert_eq!(&header.oem_id, b"BOCHS ");
    let types: Vec<u8> = ivrs.ivhds().map(|h| h.ty).collect();
    assert_eq!(types, vec![0x10, 0x11], "one IOMMU described twice");
    assert!(ivrs.blocks.iter().all(|b| matches!(b, Block::Ivhd(_))));
    // Linux uses the 11h block.
    let used: Vec<_> = ivrs.effective_ivhds().collect();
    assert_eq!(used.len(), 1);
    let h = used[0];
    assert_eq!(
        (h.ty, h.devid, h.base, h.segment),
        (0x11, 0x0008, 0xfed8_0000, 0)
    );
    let single = |d: u16| DeviceRange {
        first: d,
        last: d,
        dte: 0,
        alias: None,
    };
    assert_eq!(
        h.devices(),
        vec![
            single(0x0000),
            single(0x0008),
            single(0x0018),
            DeviceRange {
                first: 0x0100,
                last: 0x01ff,
                dte: 0,
                alias: None
            },
            single(0x00f8),
            single(0x00fa),
            single(0x00fb),
        ]
    );
    // QEMU's I/O APIC: id 0, its interrupts from 00:14.0.
    assert!(h.entries.contains(&DeviceEntry::Special {
        dte: 0,
        handle: 0,
        devid: 0x00a0,
        variety: 1
    }));
    assert_eq!(
        ivrs.to_bytes_with(&header),
        bytes,
        "the builder writes QEMU's bytes"
    );
}

#[test]
fn the_iommu_translates_exactly_the_functions_linux_grouped() {
    let ivrs = Ivrs::parse(&hex(IVRS)).unwrap();
    let Guest {
        functions, grouped, ..
    } = guest(DEVICES);
    assert_eq!(functions.len(), 7, "the guest's functions");
    for f in &functions {
        let unit = ivrs.iommu_for(0, *f);
        assert_eq!(
            unit.is_some(),
            grouped.contains(f),
            "{f:#06x}: translated by an IOMMU here, grouped by Linux there"
        );
        if let Some((_, alias)) = unit {
            assert_eq!(alias, *f, "QEMU's table has no aliases");
        }
    }
}

#[test]
fn every_truncation_and_every_flipped_byte_of_qemus_table_is_an_error_or_a_table() {
    every_truncation_and_flip(&hex(IVRS), Ivrs::parse, |t| {
        t.to_bytes(*b"IOMMRS", *b"IOMMUIVR", 1)
    });
}

/// The `ivrs` fuzz target's seeds (written to `$IOMMU_FUZZ_SEEDS/ivrs`
/// when set): QEMU's table.
#[test]
fn ivrs_fuzz_seeds_parse() {
    let seed = hex(IVRS);
    assert!(Ivrs::parse(&seed).is_ok());
    if let Some(d) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let d = std::path::PathBuf::from(d).join("ivrs");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("seed-0"), seed).unwrap();
    }
}
