//! `lspci -xxxx` dumps in: real rows, every malformed line refused with its
//! number, and a round trip byte for byte.

use iommu_pci::{
    functions_from_lspci_x, parse_lspci_x, write_lspci_x, ConfigErrorKind, ImportError, PortType,
};

/// A root port and an endpoint as `lspci -xxx` prints them (256 bytes
/// each), with names, the way a user pastes them.
fn dump() -> String {
    let mut s = String::new();
    s.push_str("00:1c.0 PCI bridge: Unknown vendor 0de5 Device 0101 (rev 01)\n");
    // Root port: type 1, cap list, Express cap at 0x40 (version 2, root port), buses 0/1/1.
    let mut b = vec![0u8; 256];
    b[0..4].copy_from_slice(&[0xe5, 0x0d, 0x01, 0x01]);
    b[6] = 0x10;
    b[0x0e] = 0x01;
    b[0x18..0x1b].copy_from_slice(&[0, 1, 1]);
    b[0x34] = 0x40;
    b[0x40..0x44].copy_from_slice(&[0x10, 0x00, 0x42, 0x00]);
    rows(&mut s, &b);
    s.push('\n');
    s.push_str("01:00.0 Ethernet controller: Unknown vendor 0de5 Device 0200\n");
    let mut e = vec![0u8; 256];
    e[0..4].copy_from_slice(&[0xe5, 0x0d, 0x00, 0x02]);
    e[6] = 0x10;
    e[0x34] = 0x40;
    e[0x40..0x44].copy_from_slice(&[0x10, 0x00, 0x02, 0x00]);
    rows(&mut s, &e);
    s
}

fn rows(s: &mut String, b: &[u8]) {
    for (k, c) in b.chunks(16).enumerate() {
        s.push_str(&format!("{:02x}:", k * 16));
        for x in c {
            s.push_str(&format!(" {x:02x}"));
        }
        s.push('\n');
    }
}

#[test]
fn a_dump_reads_as_its_functions() {
    let fs = functions_from_lspci_x(&dump()).unwrap();
    assert_eq!(fs.len(), 2);
    assert_eq!(fs[0].bdf.to_string(), "0000:00:1c.0");
    assert_eq!(fs[0].port_type(), Some(PortType::RootPort));
    assert_eq!(fs[0].bridge.unwrap().secondary, 1);
    assert_eq!(fs[1].port_type(), Some(PortType::Endpoint));
}

#[test]
fn a_dump_written_out_reads_back_byte_for_byte() {
    let d = parse_lspci_x(&dump()).unwrap();
    let again = parse_lspci_x(&write_lspci_x(&d)).unwrap();
    assert_eq!(
        d.iter()
            .map(|f| (f.bdf, f.config.clone()))
            .collect::<Vec<_>>(),
        again
            .iter()
            .map(|f| (f.bdf, f.config.clone()))
            .collect::<Vec<_>>()
    );
}

fn line_of(e: ImportError) -> usize {
    e.line().expect("a syntax or config error names its line")
}

#[test]
fn malformed_lines_are_refused_with_their_number() {
    let good = dump();
    let lines: Vec<&str> = good.lines().collect();
    let with = |n: usize, replacement: &str| {
        let mut v = lines.clone();
        v[n] = replacement;
        v.join("\n")
    };
    // A short row, a bad byte, a row out of order, garbage.
    for (n, bad) in [
        (3, "20: 00 00"),
        (3, "20: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 zz"),
        (3, "30: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        (5, "this is not lspci"),
    ] {
        let e = parse_lspci_x(&with(n, bad)).unwrap_err();
        assert_eq!(line_of(e.clone()), n + 1, "{bad}: {e}");
        assert!(
            e.to_string().starts_with(&format!("line {}: ", n + 1)),
            "{e}"
        );
    }
    // Bytes before any header.
    assert_eq!(line_of(parse_lspci_x("00: 00").unwrap_err()), 1);
}

#[test]
fn a_dump_cut_short_is_refused_naming_the_function() {
    // 80 bytes: not a configuration space size.
    let cut: String = dump().lines().take(6).map(|l| format!("{l}\n")).collect();
    match parse_lspci_x(&cut).unwrap_err() {
        ImportError::Config { line, error } => {
            assert_eq!(line, 1);
            assert_eq!(error.kind, ConfigErrorKind::BadSize { len: 80 });
            assert_eq!(error.device.to_string(), "0000:00:1c.0");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn the_seed_dumps_hold() {
    let inputs = [dump(), String::new(), "00:00.0 x\n00: 00".to_string()];
    for (i, d) in inputs.iter().enumerate() {
        iommu_pci::testing::run_lspci_x(d.as_bytes());
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("lspci_x");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), d).unwrap();
        }
    }
}

#[test]
fn a_real_machine_dump_reads_and_groups() {
    // `lspci -xxxx` of a KVM guest (i440fx-like root bus, virtio functions):
    // conventional functions on the root bus, single-function, so each is
    // a group of its own.
    let text = include_str!("data/kvm-virtio-vm.lspci-xxxx.txt");
    let fs = functions_from_lspci_x(text).unwrap();
    assert_eq!(fs.len(), 6);
    assert!(fs
        .iter()
        .skip(1)
        .all(|f| f.vendor == 0x1af4 && !f.is_pcie()));
    // Virtio's vendor-specific capabilities (id 9) and MSI-X (0x11).
    assert!(fs[3].capabilities.contains(&(0x11, 0x98)));
    let t = iommu_pci::Topology::new(fs).unwrap();
    let g = iommu_pci::pci_groups(&t, &iommu_pci::Platform::default());
    assert_eq!(g.members.len(), 6);
}
