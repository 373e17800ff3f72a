//! Linux's PCI grouping rules, one test per rule, on small hand-made
//! topologies whose functions are built as configuration space bytes.

use iommu_pci::{
    cap_id, ext_cap_id, pci_groups, AcsFlags, Analysis, Bdf, ConfigSpace, DeviceQuirks, Function,
    IommuKind, Platform, Topology, TopologyError, REQ_ACS_FLAGS,
};

/// A vendor id no company holds.
const VENDOR: u16 = 0x0de5;

/// One function of a hand-made topology.
#[derive(Clone, Copy, Default)]
struct Spec {
    bdf: &'static str,
    /// PCI Express port type, or `None` for conventional PCI.
    port: Option<u8>,
    /// Bus numbers (secondary, subordinate) for a bridge.
    buses: Option<(u8, u8)>,
    multifunction: bool,
    /// ACS capability and control bits.
    acs: Option<(u16, u16)>,
}

const ROOT_PORT: u8 = 4;
const UPSTREAM: u8 = 5;
const DOWNSTREAM: u8 = 6;
const PCIE_TO_PCI: u8 = 7;
const ENDPOINT: u8 = 0;
/// SV RR CR UF, implemented and enabled.
const FULL_ACS: Option<(u16, u16)> = Some((REQ_ACS_FLAGS.0, REQ_ACS_FLAGS.0));

fn build(s: &Spec) -> Function {
    let bdf: Bdf = s.bdf.parse().unwrap();
    let mut c = ConfigSpace::new_zeroed(4096);
    c.write_u16(0x00, VENDOR);
    c.write_u16(0x02, 0x0100 + u16::from(bdf.devfn));
    let header = u8::from(s.buses.is_some()) | if s.multifunction { 0x80 } else { 0 };
    c.write_u8(0x0e, header);
    if let Some((sec, sub)) = s.buses {
        c.write_u8(0x18, bdf.bus);
        c.write_u8(0x19, sec);
        c.write_u8(0x1a, sub);
    }
    if let Some(port) = s.port {
        c.write_u16(0x06, 1 << 4);
        c.write_u8(0x34, 0x40);
        c.write_u8(0x40, cap_id::EXP);
        c.write_u16(0x42, 2 | (u16::from(port) << 4));
        if let Some((cap, ctrl)) = s.acs {
            c.write_u32(0x100, u32::from(ext_cap_id::ACS) | (1 << 16));
            c.write_u16(0x104, cap);
            c.write_u16(0x106, ctrl);
        }
    }
    Function::parse(bdf, &c).unwrap()
}

fn topo(specs: &[Spec]) -> Topology {
    Topology::new(specs.iter().map(build).collect()).unwrap()
}

/// The partition as lists of names.
fn groups(t: &Topology, p: &Platform) -> Vec<Vec<String>> {
    pci_groups(t, p)
        .partition(t)
        .into_iter()
        .map(|g| g.into_iter().map(|b| b.to_string()).collect())
        .collect()
}

fn names(gs: &[&[&str]]) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = gs
        .iter()
        .map(|g| g.iter().map(|s| format!("0000:{s}")).collect())
        .collect();
    v.sort();
    v
}

fn root_port(bdf: &'static str, sec: u8, acs: Option<(u16, u16)>) -> Spec {
    Spec {
        bdf,
        port: Some(ROOT_PORT),
        buses: Some((sec, sec)),
        acs,
        ..Spec::default()
    }
}

fn endpoint(bdf: &'static str) -> Spec {
    Spec {
        bdf,
        port: Some(ENDPOINT),
        ..Spec::default()
    }
}

#[test]
fn single_function_endpoints_behind_acs_root_ports_get_groups_of_their_own() {
    let t = topo(&[
        Spec {
            multifunction: true,
            ..root_port("00:1c.0", 1, FULL_ACS)
        },
        Spec {
            multifunction: true,
            ..root_port("00:1c.1", 2, FULL_ACS)
        },
        endpoint("01:00.0"),
        endpoint("02:00.0"),
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["00:1c.1"], &["01:00.0"], &["02:00.0"]])
    );
}

#[test]
fn a_root_port_without_acs_shares_its_group_with_everything_below_it() {
    let t = topo(&[
        root_port("00:1c.0", 1, None),
        Spec {
            multifunction: true,
            ..endpoint("01:00.0")
        },
        Spec {
            multifunction: true,
            ..endpoint("01:00.1")
        },
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0", "01:00.0", "01:00.1"]])
    );
}

#[test]
fn acs_bits_a_port_lacks_count_as_enabled_but_disabled_ones_do_not() {
    // Implements only SV and RR, enables both: CR and UF count as hard-wired.
    let partial = Some((
        AcsFlags::SV.0 | AcsFlags::RR.0,
        AcsFlags::SV.0 | AcsFlags::RR.0,
    ));
    let t = topo(&[root_port("00:1c.0", 1, partial), endpoint("01:00.0")]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["01:00.0"]])
    );
    // Implements UF but leaves it off: not isolated.
    let off = Some((
        REQ_ACS_FLAGS.0,
        AcsFlags::SV.0 | AcsFlags::RR.0 | AcsFlags::CR.0,
    ));
    let t = topo(&[root_port("00:1c.0", 1, off), endpoint("01:00.0")]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0", "01:00.0"]])
    );
}

#[test]
fn functions_of_a_multifunction_device_without_acs_share_a_group() {
    let mf = |bdf| Spec {
        multifunction: true,
        ..endpoint(bdf)
    };
    let t = topo(&[
        root_port("00:1c.0", 1, FULL_ACS),
        mf("01:00.0"),
        mf("01:00.1"),
        mf("01:00.2"),
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["01:00.0", "01:00.1", "01:00.2"]])
    );
}

#[test]
fn a_multifunction_device_with_acs_keeps_its_functions_apart() {
    let mf = |bdf| Spec {
        multifunction: true,
        acs: FULL_ACS,
        ..endpoint(bdf)
    };
    let t = topo(&[
        root_port("00:1c.0", 1, FULL_ACS),
        mf("01:00.0"),
        mf("01:00.1"),
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["01:00.0"], &["01:00.1"]])
    );
}

#[test]
fn devices_behind_a_pcie_to_pci_bridge_share_the_bridge_group() {
    // Their DMA appears to come from the bridge (it takes over requester ids).
    let t = topo(&[
        Spec {
            buses: Some((1, 2)),
            ..root_port("00:1c.0", 1, FULL_ACS)
        },
        Spec {
            bdf: "01:00.0",
            port: Some(PCIE_TO_PCI),
            buses: Some((2, 2)),
            ..Spec::default()
        },
        Spec {
            bdf: "02:00.0",
            ..Spec::default()
        },
        Spec {
            bdf: "02:01.0",
            ..Spec::default()
        },
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["01:00.0", "02:00.0", "02:01.0"]])
    );
}

#[test]
fn arm_smmu_v3_refuses_a_second_device_behind_a_pcie_to_pci_bridge() {
    // Both devices' DMA carries the bridge's alias, 02:00.0: one stream id
    // for two masters, which arm-smmu-v3 refuses for the second one probed.
    // 02:00.0's own id is that alias too, which the driver accepts.
    let t = topo(&[
        Spec {
            buses: Some((1, 2)),
            ..root_port("00:1c.0", 1, FULL_ACS)
        },
        Spec {
            bdf: "01:00.0",
            port: Some(PCIE_TO_PCI),
            buses: Some((2, 2)),
            ..Spec::default()
        },
        Spec {
            bdf: "02:00.0",
            ..Spec::default()
        },
        Spec {
            bdf: "02:01.0",
            ..Spec::default()
        },
    ]);
    let arm = Platform {
        iommu: IommuKind::ArmSmmu,
        ..Platform::default()
    };
    assert_eq!(
        groups(&t, &arm),
        names(&[&["00:1c.0"], &["01:00.0", "02:00.0"]])
    );
    let a = Analysis::of(t.clone(), arm);
    iommu_pci::testing::check_analysis(&a);
    let refused = a.ungrouped();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].device, "02:01.0".parse().unwrap());
    assert_eq!(refused[0].clashes_with, Some("02:00.0".parse().unwrap()));
    assert!(
        refused[0].text.contains("requester id 02:00.0"),
        "{}",
        refused[0].text
    );
    // Any other IOMMU keeps both, with the bridge.
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1c.0"], &["01:00.0", "02:00.0", "02:01.0"]])
    );
}

#[test]
fn conventional_pci_devices_under_a_conventional_bridge_share_its_group() {
    // A conventional PCI-to-PCI bridge on the root bus, two devices behind it.
    let t = topo(&[
        Spec {
            bdf: "00:1e.0",
            buses: Some((5, 5)),
            ..Spec::default()
        },
        Spec {
            bdf: "05:00.0",
            ..Spec::default()
        },
        Spec {
            bdf: "05:02.0",
            ..Spec::default()
        },
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:1e.0", "05:00.0", "05:02.0"]])
    );
}

fn switch(down_acs: Option<(u16, u16)>) -> Topology {
    let port = |bdf, p, sec, sub, acs| Spec {
        bdf,
        port: Some(p),
        buses: Some((sec, sub)),
        acs,
        ..Spec::default()
    };
    topo(
        &[
            root_port("00:01.0", 1, FULL_ACS),
            Spec {
                buses: Some((1, 4)),
                ..root_port("00:01.0", 1, FULL_ACS)
            },
            port("01:00.0", UPSTREAM, 2, 4, None),
            port("02:00.0", DOWNSTREAM, 3, 3, down_acs),
            port("02:01.0", DOWNSTREAM, 4, 4, down_acs),
            endpoint("03:00.0"),
            endpoint("04:00.0"),
        ][1..],
    )
}

#[test]
fn a_switch_with_acs_on_its_downstream_ports_isolates_each_endpoint() {
    assert_eq!(
        groups(&switch(FULL_ACS), &Platform::default()),
        names(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:00.0"],
            &["02:01.0"],
            &["03:00.0"],
            &["04:00.0"]
        ])
    );
}

#[test]
fn a_downstream_port_without_acs_shares_its_group_with_what_is_below_it() {
    // Each endpoint climbs to its downstream port (no ACS) and joins it.
    // The ports themselves stay apart: above them the single-function
    // upstream port needs no ACS and the root port has it.
    assert_eq!(
        groups(&switch(None), &Platform::default()),
        names(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:00.0", "03:00.0"],
            &["02:01.0", "04:00.0"]
        ])
    );
}

#[test]
fn a_root_port_without_acs_above_a_switch_takes_the_whole_switch() {
    let port = |bdf, p, sec, sub| Spec {
        bdf,
        port: Some(p),
        buses: Some((sec, sub)),
        acs: FULL_ACS,
        ..Spec::default()
    };
    let t = topo(&[
        Spec {
            buses: Some((1, 4)),
            ..root_port("00:01.0", 1, None)
        },
        port("01:00.0", UPSTREAM, 2, 4),
        port("02:00.0", DOWNSTREAM, 3, 3),
        port("02:01.0", DOWNSTREAM, 4, 4),
        endpoint("03:00.0"),
        endpoint("04:00.0"),
    ]);
    assert_eq!(
        groups(&t, &Platform::default()),
        names(&[&["00:01.0", "01:00.0", "02:00.0", "02:01.0", "03:00.0", "04:00.0"]])
    );
}

#[test]
fn a_dma_alias_quirk_joins_the_aliased_function_even_across_slots() {
    let t = topo(&[
        root_port("00:1c.0", 1, FULL_ACS),
        endpoint("01:00.0"),
        endpoint("01:01.0"),
    ]);
    let mut p = Platform::default();
    p.quirks.insert(
        "01:01.0".parse().unwrap(),
        DeviceQuirks {
            dma_aliases: vec![0x00], // also uses 01:00.0's requester id
            ..DeviceQuirks::default()
        },
    );
    assert_eq!(
        groups(&t, &p),
        names(&[&["00:1c.0"], &["01:00.0", "01:01.0"]])
    );
}

#[test]
fn a_device_specific_acs_answer_overrides_the_registers() {
    // A root port without an ACS capability that the quirk table vouches for.
    let t = topo(&[root_port("00:1c.0", 1, None), endpoint("01:00.0")]);
    let mut p = Platform::default();
    p.quirks.insert(
        "00:1c.0".parse().unwrap(),
        DeviceQuirks {
            acs_provides: Some(REQ_ACS_FLAGS),
            ..DeviceQuirks::default()
        },
    );
    assert_eq!(groups(&t, &p), names(&[&["00:1c.0"], &["01:00.0"]]));
}

#[test]
fn a_device_the_iommu_does_not_cover_gets_no_group() {
    let t = topo(&[endpoint("00:00.2"), endpoint("00:02.0")]);
    let p = Platform {
        not_covered: vec!["00:00.2".parse().unwrap()],
        ..Platform::default()
    };
    let g = pci_groups(&t, &p);
    assert_eq!(
        g.of[t.index("0000:00:00.2".parse().unwrap()).unwrap()],
        None
    );
    assert_eq!(groups(&t, &p), names(&[&["00:02.0"]]));
}

#[test]
fn group_numbers_follow_linux_enumeration_order() {
    // Bus 0's functions first, then the buses behind each bridge in turn.
    let t = switch(FULL_ACS);
    let order: Vec<String> = t
        .enumeration_order()
        .into_iter()
        .map(|i| t.functions()[i].bdf.to_string())
        .collect();
    assert_eq!(
        order,
        [
            "0000:00:01.0",
            "0000:01:00.0",
            "0000:02:00.0",
            "0000:02:01.0",
            "0000:03:00.0",
            "0000:04:00.0"
        ]
    );
    let g = pci_groups(&t, &Platform::default());
    assert_eq!(
        g.of[t.index("0000:03:00.0".parse().unwrap()).unwrap()],
        Some(4)
    );
}

#[test]
fn bus_numbers_that_contradict_the_tree_are_refused() {
    let twice = Topology::new(vec![
        build(&root_port("00:1c.0", 1, None)),
        build(&root_port("00:1c.1", 1, None)),
    ]);
    assert!(matches!(
        twice,
        Err(TopologyError::BusClaimedTwice { bus: 1, .. })
    ));
    let outside = Topology::new(vec![
        build(&root_port("00:1c.0", 1, None)),
        build(&Spec {
            bdf: "01:00.0",
            port: Some(UPSTREAM),
            buses: Some((2, 3)),
            ..Spec::default()
        }),
    ]);
    assert!(matches!(outside, Err(TopologyError::OutsideParent { .. })));
    let dup = Topology::new(vec![
        build(&endpoint("00:02.0")),
        build(&endpoint("00:02.0")),
    ]);
    assert!(matches!(dup, Err(TopologyError::Duplicate(_))));
}
