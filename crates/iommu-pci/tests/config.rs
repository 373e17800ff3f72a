//! Configuration space read as Linux reads `struct pci_dev`, and every kind
//! of hostile byte refused with the function and the offset.

use iommu_pci::{
    cap_id, ext_cap_id, AcsFlags, Bdf, ConfigErrorKind, ConfigSpace, Function, HeaderType, PortType,
};

/// A vendor id no company holds, for functions made by hand.
const VENDOR: u16 = 0x0de5;

fn bdf() -> Bdf {
    "0000:03:00.0".parse().unwrap()
}

/// A PCIe function of `header` type with the Express capability at 0x40
/// of `port` type, and an empty extended list.
fn pcie(header: u8, port: u8) -> ConfigSpace {
    let mut c = ConfigSpace::new_zeroed(4096);
    c.write_u16(0x00, VENDOR);
    c.write_u16(0x02, 0x1234);
    c.write_u32(0x08, 0x0c03_3001); // class 0c0330 (xHCI), revision 1
    c.write_u8(0x0e, header);
    c.write_u16(0x06, 1 << 4);
    c.write_u8(0x34, 0x40);
    c.write_u8(0x40, cap_id::EXP);
    c.write_u16(0x42, 2 | (u16::from(port) << 4));
    c
}

/// Appends extended capability `id` at `at`, pointing to `next`.
fn ext(c: &mut ConfigSpace, at: u16, id: u16, next: u16) {
    c.write_u32(at, u32::from(id) | (1 << 16) | (u32::from(next) << 20));
}

#[test]
fn the_header_gives_ids_class_and_the_multifunction_bit() {
    let mut c = pcie(0x80, 0);
    c.write_u16(0x2c, 0x0de5);
    c.write_u16(0x2e, 0x0007);
    let f = Function::parse(bdf(), &c).unwrap();
    assert_eq!((f.vendor, f.device, f.revision), (VENDOR, 0x1234, 1));
    assert_eq!(f.class, 0x0c_0330);
    assert_eq!((f.base_class(), f.subclass()), (0x0c, 0x03));
    assert_eq!(f.header_type, HeaderType::Normal);
    assert!(f.multifunction);
    assert_eq!(f.subsystem, (0x0de5, 0x0007));
    assert_eq!(f.port_type(), Some(PortType::Endpoint));
    assert_eq!(f.capabilities, vec![(cap_id::EXP, 0x40)]);
}

#[test]
fn every_port_type_is_decoded() {
    for (bits, want) in [
        (0, PortType::Endpoint),
        (1, PortType::LegacyEndpoint),
        (4, PortType::RootPort),
        (5, PortType::UpstreamPort),
        (6, PortType::DownstreamPort),
        (7, PortType::PcieToPciBridge),
        (8, PortType::PciToPcieBridge),
        (9, PortType::RcIntegratedEndpoint),
        (10, PortType::RcEventCollector),
        (3, PortType::Reserved(3)),
    ] {
        let f = Function::parse(bdf(), &pcie(0, bits)).unwrap();
        assert_eq!(f.port_type(), Some(want));
        assert_eq!(want.bits(), bits);
    }
}

#[test]
fn bridges_report_their_bus_numbers_and_unassigned_ones_none() {
    let mut c = pcie(1, 4);
    c.write_u8(0x18, 0);
    c.write_u8(0x19, 1);
    c.write_u8(0x1a, 4);
    let b = Function::parse(bdf(), &c).unwrap().bridge.unwrap();
    assert_eq!((b.primary, b.secondary, b.subordinate), (0, 1, 4));
    assert!(b.contains(4) && !b.contains(5) && !b.contains(0));
    // All zero: firmware left the bridge unconfigured.
    assert_eq!(Function::parse(bdf(), &pcie(1, 4)).unwrap().bridge, None);
}

#[test]
fn bus_numbers_that_contradict_each_other_are_refused() {
    for (p, s, sub) in [(2u8, 2u8, 3u8), (3, 2, 5), (0, 4, 3)] {
        let mut c = pcie(1, 6);
        c.write_u8(0x18, p);
        c.write_u8(0x19, s);
        c.write_u8(0x1a, sub);
        let e = Function::parse(bdf(), &c).unwrap_err();
        assert_eq!(e.offset, 0x18);
        assert!(
            matches!(e.kind, ConfigErrorKind::BadBusNumbers { .. }),
            "{e}"
        );
    }
}

#[test]
fn acs_ari_and_sriov_are_read_from_the_extended_list() {
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::ARI, 0x140);
    c.write_u16(0x104, 0x0100); // next function 1
    ext(&mut c, 0x140, ext_cap_id::ACS, 0x160);
    c.write_u16(0x144, 0x001f); // SV TB RR CR UF
    c.write_u16(0x146, 0x001d); // SV RR CR UF
    ext(&mut c, 0x160, ext_cap_id::SRIOV, 0);
    c.write_u16(0x168, 1); // VF enable
    c.write_u16(0x16c, 8);
    c.write_u16(0x16e, 64);
    c.write_u16(0x170, 4);
    c.write_u16(0x174, 0x80);
    c.write_u16(0x176, 2);
    c.write_u16(0x17a, 0x10ed);
    let f = Function::parse(bdf(), &c).unwrap();
    assert_eq!(f.ari.unwrap().next_function, 1);
    let acs = f.acs.unwrap();
    assert!(acs.cap.contains(AcsFlags::SV.union(AcsFlags::TB)));
    assert!(!acs.ctrl.contains(AcsFlags::TB) && acs.ctrl.contains(AcsFlags::UF));
    assert_eq!(
        acs.ctrl.to_string(),
        "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
    );
    let sriov = f.sriov.unwrap();
    assert!(sriov.vf_enable);
    assert_eq!(
        (sriov.total_vfs, sriov.num_vfs, sriov.vf_device),
        (64, 4, 0x10ed)
    );
    // VF n's requester id is the PF's + offset + n * stride.
    let pf = bdf().requester_id();
    assert_eq!(sriov.vf_requester_id(pf, 0), Some(pf + 0x80));
    assert_eq!(sriov.vf_requester_id(pf, 3), Some(pf + 0x86));
    assert_eq!(sriov.vf_requester_id(0xffff, 1), None);
    assert_eq!(
        f.ext_capabilities,
        vec![
            (ext_cap_id::ARI, 0x100),
            (ext_cap_id::ACS, 0x140),
            (ext_cap_id::SRIOV, 0x160)
        ]
    );
}

#[test]
fn a_conventional_function_has_no_extended_capabilities() {
    let mut c = ConfigSpace::new_zeroed(256);
    c.write_u16(0x00, VENDOR);
    c.write_u8(0x0e, 0);
    let f = Function::parse(bdf(), &c).unwrap();
    assert!(!f.is_pcie() && f.capabilities.is_empty() && f.ext_capabilities.is_empty());
    // Nor does a PCIe one whose dump stops at 256 bytes.
    let full = pcie(0, 0);
    let short = ConfigSpace::from_bytes(bdf(), &full.as_bytes()[..256]).unwrap();
    assert!(Function::parse(bdf(), &short)
        .unwrap()
        .ext_capabilities
        .is_empty());
}

#[test]
fn no_function_answers_where_the_vendor_id_is_all_ones_or_zero() {
    for vendor in [0xffff, 0] {
        let mut c = pcie(0, 0);
        c.write_u16(0, vendor);
        let e = Function::parse(bdf(), &c).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::NoFunction { vendor });
    }
}

#[test]
fn a_dump_of_the_wrong_size_is_refused() {
    for len in [0, 63, 65, 255, 1024, 4097] {
        let e = ConfigSpace::from_bytes(bdf(), &vec![0; len]).unwrap_err();
        assert_eq!(e.kind, ConfigErrorKind::BadSize { len });
    }
}

#[test]
fn an_unknown_header_type_is_refused() {
    let e = Function::parse(bdf(), &pcie(0x83, 0)).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (0x0e, ConfigErrorKind::UnknownHeaderType(3))
    );
}

#[test]
fn a_capability_list_that_loops_is_refused_naming_where() {
    let mut c = pcie(0, 0);
    c.write_u8(0x41, 0x50);
    c.write_u8(0x50, cap_id::MSI);
    c.write_u8(0x51, 0x40); // back to the first
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::CapabilityLoop { pointer: 0x40 });
    assert_eq!(e.offset, 0x51, "the pointer that closed the loop");
    assert_eq!(e.device, bdf());
    assert!(
        e.to_string()
            .starts_with("0000:03:00.0: configuration space offset 0x051"),
        "{e}"
    );
    // A capability pointing at itself.
    let mut c = pcie(0, 0);
    c.write_u8(0x41, 0x40);
    assert!(matches!(
        Function::parse(bdf(), &c).unwrap_err().kind,
        ConfigErrorKind::CapabilityLoop { .. }
    ));
}

#[test]
fn an_extended_list_that_loops_is_refused() {
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::ACS, 0x200);
    ext(&mut c, 0x200, ext_cap_id::ARI, 0x100);
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (0x200, ConfigErrorKind::CapabilityLoop { pointer: 0x100 })
    );
}

#[test]
fn pointers_into_the_header_are_out_of_range() {
    let mut c = pcie(0, 0);
    c.write_u8(0x34, 0x20);
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (0x34, ConfigErrorKind::PointerOutOfRange { pointer: 0x20 })
    );
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::ACS, 0x0c0);
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(
        e.kind,
        ConfigErrorKind::PointerOutOfRange { pointer: 0x0c0 }
    );
}

#[test]
fn a_short_dump_names_the_capability_it_cut_off() {
    // `lspci -x` shows 64 bytes: the first capability is past them.
    let full = pcie(0, 0);
    let c = ConfigSpace::from_bytes(bdf(), &full.as_bytes()[..64]).unwrap();
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (
            0x34,
            ConfigErrorKind::BeyondDump {
                pointer: 0x40,
                len: 64
            }
        )
    );
}

#[test]
fn a_capability_cut_by_the_end_of_the_space_is_refused() {
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::SRIOV, 0xfe0);
    ext(&mut c, 0xfe0, ext_cap_id::SRIOV, 0);
    // The first SR-IOV is read; a second one is ignored, as Linux reads the first.
    assert!(Function::parse(bdf(), &c).is_ok());
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::SRIOV - 1, 0xfe0);
    ext(&mut c, 0xfe0, ext_cap_id::SRIOV, 0);
    let e = Function::parse(bdf(), &c).unwrap_err();
    assert_eq!(
        e.kind,
        ConfigErrorKind::CapabilityTruncated {
            id: ext_cap_id::SRIOV
        }
    );
    // The Express capability's flags past byte 0xff of a 256-byte space.
    let mut c = ConfigSpace::new_zeroed(256);
    c.write_u16(0, VENDOR);
    c.write_u16(0x06, 1 << 4);
    c.write_u8(0x34, 0xfc);
    c.write_u8(0xfc, cap_id::EXP);
    assert!(
        Function::parse(bdf(), &c).is_ok(),
        "flags at 0xfe still fit"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// Any bytes at all: a function or a typed error, every capability
    /// found inside the space, each visited once.
    #[test]
    fn any_bytes_parse_or_fail_with_a_typed_error(
        seed in proptest::collection::vec(proptest::prelude::any::<u8>(), 64..600),
        size in 0usize..3,
    ) {
        let len = ConfigSpace::SIZES[size];
        let mut bytes = vec![0u8; len];
        // Spread the random bytes over the header and both lists' areas.
        for (i, b) in seed.iter().enumerate() {
            let at = if i < 64 { i } else { (i * 7) % len };
            bytes[at] = *b;
        }
        bytes[6] |= 1 << 4; // a capability list, mostly
        let c = ConfigSpace::from_bytes(bdf(), &bytes).unwrap();
        if let Ok(f) = Function::parse(bdf(), &c) {
            let mut seen = std::collections::BTreeSet::new();
            for &(_, off) in &f.capabilities {
                proptest::prop_assert!(off >= 0x40 && usize::from(off) + 2 <= len.min(256));
                proptest::prop_assert!(seen.insert(off));
            }
            for &(_, off) in &f.ext_capabilities {
                proptest::prop_assert!(off >= 0x100 && usize::from(off) + 4 <= len);
                proptest::prop_assert!(seen.insert(off));
            }
        }
    }
}

/// The hand-made spaces above, as the fuzz target's seeds (written when
/// `IOMMU_FUZZ_SEEDS` names a directory), each replayed on the oracle.
#[test]
fn the_seed_spaces_hold() {
    let mut seeds = vec![pcie(0, 0), pcie(1, 4), pcie(0x80, 9)];
    let mut c = pcie(0, 0);
    ext(&mut c, 0x100, ext_cap_id::ARI, 0x140);
    ext(&mut c, 0x140, ext_cap_id::ACS, 0x160);
    ext(&mut c, 0x160, ext_cap_id::SRIOV, 0);
    seeds.push(c);
    let mut c = pcie(0, 0);
    c.write_u8(0x41, 0x50);
    c.write_u8(0x50, cap_id::MSI);
    c.write_u8(0x51, 0x40);
    seeds.push(c);
    for (i, s) in seeds.iter().enumerate() {
        let input = iommu_pci::testing::encode(s);
        iommu_pci::testing::run(&input);
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("pci_config");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
        }
    }
}
