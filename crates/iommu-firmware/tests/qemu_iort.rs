//! The IORT QEMU gives an Arm `virt` guest with an SMMUv3: its nodes, and
//! the stream id a PCI function's requests carry to the SMMU.

use iommu_firmware::iort::{Iort, IortError, NodeKind};

const IORT: &str = include_str!("data/qemu-10.0-virt-smmuv3.iort.txt");

fn bytes() -> Vec<u8> {
    let text: String = IORT.lines().filter(|l| !l.starts_with('#')).collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn qemus_iort_has_its_smmu_and_root_complex() {
    let iort = Iort::parse(&bytes()).expect("QEMU's IORT parses");
    assert!(matches!(iort.nodes[0].kind, NodeKind::ItsGroup { ref its_ids } if its_ids == &[0]));
    let smmu = iort
        .nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::Smmuv3 { .. }))
        .expect("an SMMUv3 node");
    assert!(matches!(
        smmu.kind,
        NodeKind::Smmuv3 {
            base: 0x0905_0000,
            ..
        }
    ));
    let rc = iort.root_complex(0).expect("segment 0's root complex");
    assert!(!rc.mappings.is_empty());
    // Bus 0 (the only bus of a machine without bridges) reaches the SMMU
    // with stream id = requester id; QEMU sends the other buses' ids
    // straight to the ITS, untranslated.
    for rid in [0x0000, 0x0010, 0x0018, 0x00ff] {
        let (sid, node) = iort.pci_stream(0, rid).expect("translated");
        assert_eq!(sid, rid);
        assert_eq!(node.offset, smmu.offset);
    }
    for rid in [0x0100, 0xffff] {
        assert!(
            iort.pci_stream(0, rid).is_none(),
            "{rid:#x} goes to the ITS"
        );
    }
    assert!(iort.pci_stream(1, 0).is_none(), "no segment 1");
    assert!(iort.rmr_ranges(smmu.offset, 0x18).is_empty());
}

#[test]
fn every_truncation_is_an_error_and_no_flip_panics() {
    let b = bytes();
    for len in 0..b.len() {
        assert!(Iort::parse(&b[..len]).is_err(), "{len} bytes");
    }
    for at in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[at] ^= 1 << bit;
            iommu_firmware::acpi::fix_checksum(&mut c);
            if let Ok(t) = Iort::parse(&c) {
                for rid in [0u32, 0x18, 0xffff] {
                    let _ = t.pci_stream(0, rid);
                }
            }
        }
    }
}

#[test]
fn a_mapping_to_nowhere_is_refused() {
    let mut b = bytes();
    let iort = Iort::parse(&b).unwrap();
    let rc = iort.root_complex(0).unwrap();
    // The root complex's first mapping's output reference, pointed past
    // every node.
    let at = rc.offset as usize
        + u32::from_le_bytes(
            b[rc.offset as usize + 12..rc.offset as usize + 16]
                .try_into()
                .unwrap(),
        ) as usize
        + 12;
    b[at..at + 4].copy_from_slice(&0x7777u32.to_le_bytes());
    iommu_firmware::acpi::fix_checksum(&mut b);
    assert!(matches!(
        Iort::parse(&b),
        Err(IortError::Dangling { target: 0x7777, .. })
    ));
}

/// Seeds for `fuzz/fuzz_targets/iort.rs` (written to
/// `$IOMMU_FUZZ_SEEDS/iort` when set): QEMU's table.
#[test]
fn iort_fuzz_seeds_parse() {
    let b = bytes();
    assert!(Iort::parse(&b).is_ok());
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let d = std::path::PathBuf::from(dir).join("iort");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("qemu-virt"), &b).unwrap();
    }
}
