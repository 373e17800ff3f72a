//! The VIOT builder against the table QEMU itself gives a guest.

use iommu_virtio::firmware::{Viot, ViotNode};

fn qemu_viot() -> Vec<u8> {
    include_str!("data/qemu-10.0-q35-pxb.viot.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect()
}

#[test]
fn qemus_table_reads_and_the_builder_writes_the_same_nodes() {
    let qemu = qemu_viot();
    let parsed = Viot::parse(&qemu).expect("QEMU's VIOT parses");
    // The IOMMU at 00:03.0; each host bridge's buses (0-1 of the main one,
    // 0x80-0x81 of the expander) mapped with endpoint ID = requester id.
    let mut built = Viot::new();
    let iommu = built.virtio_iommu_pci(0, 0x0018);
    built.pci_range(0, 0x0000, 0x01ff, 0x0000, iommu).unwrap();
    built.pci_range(0, 0x8000, 0x81ff, 0x8000, iommu).unwrap();
    assert_eq!(parsed, built);
    assert!(matches!(
        parsed.nodes()[0],
        ViotNode::VirtioIommuPci {
            segment: 0,
            bdf: 0x18
        }
    ));
    // Byte for byte, but for what names the table's maker (OEM and
    // creator fields) and the checksum that follows from them.
    let ours = built.to_bytes(*b"BOCHS ", *b"BXPC    ", 1);
    assert_eq!(ours.len(), qemu.len());
    assert_eq!(ours[..9], qemu[..9], "signature, length, revision");
    assert_eq!(ours[36..], qemu[36..], "the nodes");
    // QEMU's range includes the IOMMU's own function; the guest skips it.
    assert_eq!(parsed.pci_endpoint(0, 0x0018).map(|(e, _)| e), Some(0x18));
    assert_eq!(parsed.translated_endpoint(0, 0x0018), None);
    assert_eq!(
        parsed.translated_endpoint(0, 0x0010),
        parsed.pci_endpoint(0, 0x0010)
    );
    assert_eq!(parsed.pci_endpoint(0, 0x8100).map(|(e, _)| e), Some(0x8100));
    assert_eq!(parsed.pci_endpoint(0, 0x0200), None);
}

/// The fuzz target's seeds (written to `$IOMMU_FUZZ_SEEDS/viot` when
/// set): QEMU's table, built tables of every node kind, an `iommu-map`.
#[test]
fn viot_fuzz_seeds_parse() {
    use iommu_virtio::firmware::DtIommuMap;
    let mut built = Viot::new();
    let pci = built.virtio_iommu_pci(0, 0x0008);
    built.pci_range(0, 0, 0x07, 0, pci).unwrap();
    let mmio = built.virtio_iommu_mmio(0xfeb0_0000);
    built.mmio_endpoint(0x100, 0xfeb0_2000, mmio).unwrap();
    let seeds = [
        qemu_viot(),
        built.to_bytes(*b"SEED  ", *b"SEEDSEED", 0),
        Viot::new().to_bytes(*b"SEED  ", *b"SEEDSEED", 0),
        DtIommuMap::pci_host(Some(0x18)).to_bytes(1),
    ];
    let dir = std::env::var_os("IOMMU_FUZZ_SEEDS").map(|d| {
        let d = std::path::PathBuf::from(d).join("viot");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    for (i, s) in seeds.iter().enumerate() {
        if i < 3 {
            assert!(Viot::parse(s).is_ok(), "seed {i}");
        } else {
            assert!(DtIommuMap::parse(s, 1).is_ok());
        }
        if let Some(d) = &dir {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
}
