//! The tables a kernel reads before any other: QEMU q35's RSDP, the root
//! table it points at, and the MCFG that says where PCI configuration
//! space is. QEMU's SeaBIOS gives a revision-0 RSDP, so the RSDT (32-bit
//! entries) is the root; the XSDT path is built here.

use iommu_firmware::acpi::{
    finish, mcfg, root_table_entries, Header, HeaderError, McfgEntry, Rsdp, RsdpError,
};

fn table(name: &str) -> Vec<u8> {
    let line = include_str!("data/qemu-10.0-q35-root-tables.txt")
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in the test data"));
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn qemus_rsdp_rsdt_and_mcfg_parse() {
    let rsdp = Rsdp::parse(&table("RSDP")).unwrap();
    assert_eq!(rsdp.revision, 0);
    assert_eq!(&rsdp.oem_id, b"BOCHS ");
    assert_eq!(rsdp.xsdt, None, "revision 0: no XSDT");
    let rsdt = table("RSDT");
    let entries = root_table_entries(&rsdt).unwrap();
    assert_eq!(entries.len(), 6, "FACP, APIC, HPET, MCFG, VIOT, WAET");
    assert!(entries
        .iter()
        .all(|&e| (0x07fe_0000..0x0800_0000).contains(&e)));
    assert_eq!(u64::from(rsdp.rsdt) & !0xffff, 0x07fe_0000);
    let windows = mcfg(&table("MCFG")).unwrap();
    let want = McfgEntry {
        base: 0xb000_0000,
        segment: 0,
        start_bus: 0,
        end_bus: 0xff,
    };
    assert_eq!(windows, vec![want]);
    assert_eq!(want.config_address(0, 0x18), Some(0xb001_8000));
    assert_eq!(want.config_address(1, 0), Some(0xb010_0000));
    let narrow = McfgEntry {
        start_bus: 1,
        end_bus: 3,
        ..want
    };
    assert_eq!(narrow.config_address(0, 0), None);
    assert_eq!(narrow.config_address(4, 0), None);
    // A window at the top of the address space has no room for bus 255
    // (found by the fuzzer: the sum overflowed).
    let top = McfgEntry {
        base: u64::MAX - 0xfff,
        ..want
    };
    assert_eq!(top.config_address(0, 0), Some(u64::MAX - 0xfff));
    assert_eq!(top.config_address(0xff, 0xff), None);
}

#[test]
fn an_xsdt_lists_64_bit_addresses_and_an_acpi_2_rsdp_points_at_it() {
    let mut xsdt = Header::new(*b"XSDT", 1, *b"IOMMRS", *b"IOMMUXSD", 1).start();
    for a in [0x1_2345_6000u64, 0x7fe_0000] {
        xsdt.extend_from_slice(&a.to_le_bytes());
    }
    finish(&mut xsdt);
    assert_eq!(
        root_table_entries(&xsdt).unwrap(),
        vec![0x1_2345_6000, 0x7fe_0000]
    );
    // A revision-2 RSDP: 36 bytes, both checksums.
    let mut r = vec![0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(b"IOMMRS");
    r[15] = 2;
    r[16..20].copy_from_slice(&0x7fe_1000u32.to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&0x1_0000_0000u64.to_le_bytes());
    r[8] = 0u8.wrapping_sub(r[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    r[32] = 0u8.wrapping_sub(r.iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    let rsdp = Rsdp::parse(&r).unwrap();
    assert_eq!(rsdp.xsdt, Some(0x1_0000_0000));
    assert_eq!(rsdp.rsdt, 0x7fe_1000);
    // The extended checksum is checked.
    let mut bad = r.clone();
    bad[30] ^= 1;
    assert_eq!(Rsdp::parse(&bad), Err(RsdpError::Checksum(36)));
    // ... and the length it claims.
    let mut long = r.clone();
    long[20] = 200;
    assert!(matches!(
        Rsdp::parse(&long),
        Err(RsdpError::Truncated { need: 200, .. })
    ));
    assert!(matches!(
        Rsdp::parse(&r[..30]),
        Err(RsdpError::Truncated { need: 36, .. })
    ));
}

#[test]
fn bad_root_tables_get_typed_errors() {
    let rsdp = table("RSDP");
    for len in 0..rsdp.len() {
        assert!(Rsdp::parse(&rsdp[..len]).is_err(), "{len} bytes");
    }
    let mut wrong = rsdp.clone();
    wrong[0] = b'X';
    assert_eq!(Rsdp::parse(&wrong), Err(RsdpError::Signature));
    let mut flipped = rsdp.clone();
    flipped[17] ^= 0x40;
    assert_eq!(Rsdp::parse(&flipped), Err(RsdpError::Checksum(20)));
    let rsdt = table("RSDT");
    for len in 0..rsdt.len() {
        assert!(root_table_entries(&rsdt[..len]).is_err(), "{len} bytes");
    }
    let mcfg_bytes = table("MCFG");
    assert!(matches!(
        root_table_entries(&mcfg_bytes),
        Err(HeaderError::Signature { .. })
    ));
    for len in 0..mcfg_bytes.len() {
        assert!(mcfg(&mcfg_bytes[..len]).is_err(), "{len} bytes");
    }
    // An MCFG of its header alone, no reserved bytes: truncated.
    let mut short = Header::new(*b"MCFG", 1, *b"IOMMRS", *b"IOMMUMCF", 1).start();
    finish(&mut short);
    assert!(matches!(
        mcfg(&short),
        Err(HeaderError::Truncated { need: 44, .. })
    ));
}
