//! Linux 6.12's grouping rules and quirk families, one test each, on
//! hand-made platforms written in the topology format, with the golden
//! `--explain` text of the groups they make.

use iommu_pci::{parse_topology, short_name, Analysis, IommuKind, KernelParams, Platform, Rule};

/// The platform of a topology file, with the given kernel command line.
fn analyze_with(topo: &str, cmdline: &str, iommu: IommuKind) -> Analysis {
    let t = parse_topology(topo).unwrap_or_else(|e| panic!("{e}"));
    let platform = Platform {
        iommu,
        params: KernelParams::parse(cmdline).unwrap(),
        quirks: t.quirks,
        not_covered: t.not_covered,
        ..Platform::default()
    };
    t.machine.analyze(platform).unwrap()
}

fn analyze(topo: &str) -> Analysis {
    analyze_with(topo, "", IommuKind::Generic)
}

/// The partition, as lists of short names, sorted.
fn partition(a: &Analysis) -> Vec<Vec<String>> {
    a.groups
        .partition(&a.topology)
        .into_iter()
        .map(|g| g.into_iter().map(short_name).collect())
        .collect()
}

fn groups(gs: &[&[&str]]) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = gs
        .iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect();
    v.sort();
    v
}

/// Every reason of the group of `dev`, one per line.
fn why(a: &Analysis, dev: &str) -> String {
    let g = a.group_of(dev.parse().unwrap()).expect("grouped");
    a.explain_group(g)
        .iter()
        .map(|r| format!("{}: {}\n", r.rule.name(), r.text))
        .collect()
}

const ACS: &str = "acs=SV,RR,CR,UF";

#[test]
fn single_function_endpoints_behind_acs_root_ports_get_groups_of_their_own() {
    let a = analyze(&format!(
        "00:00.0 host-bridge
         00:01.0 root-port buses=01-01 {ACS}
         00:02.0 root-port buses=02-02 {ACS}
         01:00.0 endpoint
         02:00.0 endpoint"
    ));
    assert_eq!(
        partition(&a),
        groups(&[
            &["00:00.0"],
            &["00:01.0"],
            &["00:02.0"],
            &["01:00.0"],
            &["02:00.0"]
        ])
    );
}

#[test]
fn a_root_port_without_acs_shares_its_group_with_everything_below_it() {
    let a = analyze(
        "00:1c.0 root-port buses=01-01
         01:00.0 endpoint multifunction
         01:00.1 endpoint",
    );
    assert_eq!(partition(&a), groups(&[&["00:1c.0", "01:00.0", "01:00.1"]]));
    assert_eq!(
        why(&a, "01:00.0"),
        "no-acs-path: 00:1c.0 (root port) has no ACS capability, so everything below it shares a group: 01:00.0, 01:00.1\n"
    );
}

#[test]
fn acs_controls_the_firmware_left_off_are_enabled_by_the_kernel() {
    // Implemented but off: Linux turns SV, RR, CR and UF on when an IOMMU
    // asks for ACS, so the port isolates.
    let topo = "00:1c.0 root-port buses=01-01 acs-cap=SV,RR,CR,UF acs-ctrl=none
                01:00.0 endpoint";
    let a = analyze(topo);
    assert_eq!(partition(&a), groups(&[&["00:1c.0"], &["01:00.0"]]));
    let acs = a.topology.functions()[0].acs.unwrap();
    assert_eq!(acs.ctrl, iommu_pci::REQ_ACS_FLAGS);
    // Without an IOMMU driver asking, the firmware's controls stay.
    let b = analyze_with(topo, "iommu=off", IommuKind::Generic);
    assert_eq!(partition(&b), groups(&[&["00:1c.0", "01:00.0"]]));
    assert_eq!(
        why(&b, "01:00.0"),
        "no-acs-path: 00:1c.0 (root port) has ACS without these controls enabled: SV RR CR UF, so everything below it shares a group: 01:00.0\n"
    );
}

#[test]
fn a_control_the_port_does_not_implement_counts_as_hard_wired_on() {
    // SV and UF not implemented: only RR and CR need to be on.
    let a = analyze_with(
        "00:1c.0 root-port buses=01-01 acs-cap=RR,CR acs-ctrl=RR,CR
         01:00.0 endpoint",
        "iommu=off",
        IommuKind::Generic,
    );
    assert_eq!(partition(&a), groups(&[&["00:1c.0"], &["01:00.0"]]));
}

#[test]
fn functions_of_a_multifunction_device_without_acs_share_a_group() {
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint multifunction
         01:00.1 endpoint
         01:00.2 endpoint"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0", "01:00.1", "01:00.2"]])
    );
    assert_eq!(
        why(&a, "01:00.1"),
        "multifunction-without-acs: 01:00.0 and 01:00.1 are functions of one multifunction device without ACS (01:00.1 has no ACS capability)\n\
         multifunction-without-acs: 01:00.0 and 01:00.2 are functions of one multifunction device without ACS (01:00.2 has no ACS capability)\n"
    );
}

#[test]
fn a_multifunction_device_with_acs_keeps_its_functions_apart() {
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint multifunction {ACS}
         01:00.1 endpoint {ACS}"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0"], &["01:00.1"]])
    );
}

#[test]
fn a_function_after_the_first_counts_as_multifunction_whatever_its_header() {
    // Linux marks every function it finds past function 0 multifunction.
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint multifunction {ACS}
         01:00.1 endpoint
         01:00.2 endpoint"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0"], &["01:00.1", "01:00.2"]])
    );
}

#[test]
fn devices_behind_a_pcie_to_pci_bridge_share_the_bridge_group() {
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-02 {ACS}
         01:00.0 pcie-to-pci-bridge buses=02-02
         02:01.0 pci
         02:02.0 pci"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0", "02:01.0", "02:02.0"]])
    );
    assert_eq!(
        why(&a, "02:01.0"),
        "bridge-alias: 02:01.0 is behind a PCIe-to-PCI bridge, 01:00.0, and DMA appears to come from 01:00.0\n\
         bridge-alias: 02:02.0 is behind a PCIe-to-PCI bridge, 01:00.0, and DMA appears to come from 01:00.0\n"
    );
}

#[test]
fn conventional_devices_under_a_conventional_bridge_share_its_group() {
    let a = analyze(
        "00:1e.0 pci-bridge buses=05-05
         05:01.0 pci
         05:02.0 pci",
    );
    assert_eq!(partition(&a), groups(&[&["00:1e.0", "05:01.0", "05:02.0"]]));
    assert!(why(&a, "05:01.0").contains("behind a conventional PCI bridge, 00:1e.0"));
}

/// A root port above a switch of two downstream ports.
fn switch(root: &str, down: &str) -> String {
    format!(
        "00:01.0 root-port buses=01-04 {root}
         01:00.0 upstream-port buses=02-04
         02:01.0 downstream-port buses=03-03 {down}
         02:02.0 downstream-port buses=04-04 {down}
         03:00.0 endpoint
         04:00.0 endpoint"
    )
}

#[test]
fn a_switch_with_acs_on_its_downstream_ports_isolates_each_endpoint() {
    let a = analyze(&switch(ACS, ACS));
    assert_eq!(
        partition(&a),
        groups(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:01.0"],
            &["02:02.0"],
            &["03:00.0"],
            &["04:00.0"]
        ])
    );
}

#[test]
fn a_downstream_port_without_acs_shares_its_group_with_what_is_below_it() {
    let a = analyze(&switch(ACS, ""));
    assert_eq!(
        partition(&a),
        groups(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:01.0", "03:00.0"],
            &["02:02.0", "04:00.0"]
        ])
    );
}

#[test]
fn a_root_port_without_acs_above_a_switch_takes_the_whole_switch() {
    let a = analyze(&switch("", ACS));
    assert_eq!(
        partition(&a),
        groups(&[&["00:01.0", "01:00.0", "02:01.0", "02:02.0", "03:00.0", "04:00.0"]])
    );
    assert!(why(&a, "03:00.0").contains(
        "02:01.0 (switch downstream port) has no ACS path to the root: 00:01.0 (root port) above it has no ACS capability, so everything below 02:01.0 shares a group: 03:00.0"
    ));
}

#[test]
fn a_device_the_iommu_does_not_cover_gets_no_group() {
    let a = analyze(&format!(
        "00:01.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint not-covered"
    ));
    assert_eq!(partition(&a), groups(&[&["00:01.0"]]));
    // AMD-Vi leaves its own function out.
    let amd = analyze_with(
        "00:00.2 pci id=1022:1481 class=0806
         00:01.0 host-bridge id=1022:1482",
        "",
        IommuKind::AmdVi,
    );
    assert_eq!(partition(&amd), groups(&[&["00:01.0"]]));
}

#[test]
fn a_dma_alias_quirk_joins_the_function_it_aliases() {
    // Marvell 88SE9123: DMA with function 1's requester id.
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint id=1b4b:9123 multifunction {ACS}
         01:00.1 endpoint id=1b4b:91a4 {ACS}"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0", "01:00.1"]])
    );
    assert_eq!(
        why(&a, "01:00.0"),
        "dma-alias: 01:00.0 and 01:00.1 use each other's requester ids: Linux's quirk_dma_func1_alias for 1b4b:9123\n"
    );
    // Ricoh: function 0's id.
    let r = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint id=1180:e822 multifunction {ACS}
         01:00.3 endpoint id=1180:e832 {ACS}"
    ));
    assert_eq!(
        partition(&r),
        groups(&[&["00:1c.0"], &["01:00.0", "01:00.3"]])
    );
}

#[test]
fn a_declared_alias_joins_a_function_of_another_slot() {
    let a = analyze(&format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint alias=02.0
         01:02.0 endpoint"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:1c.0"], &["01:00.0", "01:02.0"]])
    );
    assert!(why(&a, "01:00.0").contains("(a DMA alias the platform declares)"));
}

#[test]
fn the_mf_endpoint_quirk_isolates_functions_its_vendor_vouches_for() {
    // Intel I350: four functions, no ACS capability, in Linux's table.
    let topo = format!(
        "00:01.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint id=8086:1521 multifunction
         01:00.1 endpoint id=8086:1521
         01:00.2 endpoint id=8086:1521
         01:00.3 endpoint id=8086:1521"
    );
    let a = analyze(&topo);
    assert_eq!(
        partition(&a),
        groups(&[
            &["00:01.0"],
            &["01:00.0"],
            &["01:00.1"],
            &["01:00.2"],
            &["01:00.3"]
        ])
    );
    // An id outside the table shares a group.
    let b = analyze(
        &topo
            .replace("8086:1521", "8086:1522")
            .replace("8086:1522", "8086:15ff"),
    );
    assert_eq!(
        partition(&b),
        groups(&[&["00:01.0"], &["01:00.0", "01:00.1", "01:00.2", "01:00.3"]])
    );
}

#[test]
fn the_intel_pch_quirk_isolates_root_ports_without_an_acs_capability() {
    // Cougar Point root ports 8086:1c10 and 1c12, the LPC at 1f.0.
    let a = analyze(
        "00:1c.0 root-port id=8086:1c10 buses=01-01 multifunction
         00:1c.1 root-port id=8086:1c12 buses=02-02
         00:1f.0 pci id=8086:1c44 class=0601
         01:00.0 endpoint
         02:00.0 endpoint",
    );
    assert_eq!(
        partition(&a),
        groups(&[
            &["00:1c.0"],
            &["00:1c.1"],
            &["00:1f.0"],
            &["01:00.0"],
            &["02:00.0"]
        ])
    );
    assert!(a
        .explain_group(a.group_of("01:00.0".parse().unwrap()).unwrap())
        .is_empty());
    // A port id outside the table shares its group with its sibling and
    // what is below them.
    let b = analyze(
        "00:1c.0 root-port id=8086:1cff buses=01-01 multifunction
         00:1c.1 root-port id=8086:1cfe buses=02-02
         01:00.0 endpoint
         02:00.0 endpoint",
    );
    assert_eq!(
        partition(&b),
        groups(&[&["00:1c.0", "00:1c.1", "01:00.0", "02:00.0"]])
    );
}

#[test]
fn the_sunrise_point_quirk_reads_acs_control_where_the_chipset_puts_it() {
    // 8086:a110: the standard ACSCtl word reads as zero; the quirk reads
    // the dword after the capability register, which the kernel enables.
    let topo = "00:1c.0 root-port id=8086:a110 buses=01-01 acs-cap=SV,RR,CR,UF acs-ctrl=none
                01:00.0 endpoint";
    let a = analyze(topo);
    assert_eq!(partition(&a), groups(&[&["00:1c.0"], &["01:00.0"]]));
    let g = a.group_of("00:1c.0".parse().unwrap()).unwrap();
    assert!(a.explain_group(g).is_empty(), "a singleton needs no reason");
    // disable_acs_redir goes through the chipset's hook and clears RR/CR.
    let b = analyze_with(topo, "pci=disable_acs_redir=00:1c.0", IommuKind::IntelVtd);
    assert_eq!(partition(&b), groups(&[&["00:1c.0", "01:00.0"]]));
    assert!(why(&b, "01:00.0").contains(
        "00:1c.0 (root port) is not isolated by Linux's ACS quirk pci_quirk_intel_spt_pch_acs"
    ));
}

#[test]
fn the_amd_southbridge_quirk_needs_an_amd_iommu() {
    let topo = "00:14.0 pci id=1002:4385 multifunction
                00:14.2 pci id=1002:4383";
    // The quirk comes before the "conventional PCI is never isolated"
    // rule, so even conventional southbridge functions are apart.
    let amd = analyze_with(topo, "", IommuKind::AmdVi);
    assert_eq!(partition(&amd), groups(&[&["00:14.0"], &["00:14.2"]]));
    let generic = analyze_with(topo, "", IommuKind::Generic);
    assert_eq!(partition(&generic), groups(&[&["00:14.0", "00:14.2"]]));
    let amd_pcie = analyze_with(
        "00:14.0 endpoint id=1002:4385 multifunction
         00:14.2 endpoint id=1002:4383",
        "",
        IommuKind::AmdVi,
    );
    // 4385 is covered by the quirk (RR and CR are what multifunction
    // devices need); 4383 too: both isolated.
    assert_eq!(partition(&amd_pcie), groups(&[&["00:14.0"], &["00:14.2"]]));
    let intel = analyze_with(
        "00:14.0 endpoint id=1002:4385 multifunction
         00:14.2 endpoint id=1002:4383",
        "",
        IommuKind::IntelVtd,
    );
    assert_eq!(partition(&intel), groups(&[&["00:14.0", "00:14.2"]]));
}

#[test]
fn the_intel_rciep_quirk_isolates_root_complex_integrated_endpoints() {
    let a = analyze(
        "00:14.0 rc-endpoint id=8086:a0ed multifunction
         00:14.2 rc-endpoint id=8086:a0ef",
    );
    assert_eq!(partition(&a), groups(&[&["00:14.0"], &["00:14.2"]]));
    let other = analyze(
        "00:14.0 rc-endpoint id=0de5:a0ed multifunction
         00:14.2 rc-endpoint id=0de5:a0ef",
    );
    assert_eq!(partition(&other), groups(&[&["00:14.0", "00:14.2"]]));
}

/// Two root ports of `id` without ACS capability, one endpoint each.
fn two_ports(id: &str) -> String {
    format!(
        "00:01.0 root-port id={id} buses=01-01 multifunction
         00:01.1 root-port id={id} buses=02-02
         01:00.0 endpoint
         02:00.0 endpoint"
    )
}

#[test]
fn root_port_quirks_of_arm_and_other_vendors_isolate_each_port() {
    for id in [
        "17cb:0400", // Qualcomm QDF2xxx
        "1dbf:0401", // HXT
        "177d:a000", // Cavium ThunderX1
        "177d:af84", // Cavium ThunderX2
        "10e8:e004", // APM X-Gene
        "1def:e005", // Ampere
        "14e4:d714", // Broadcom iProc
        "0014:7a09", // Loongson
        "1c36:0031", // Amazon Annapurna Labs
        "1957:8d81", // NXP LX2160A
        "1d17:0710", // Zhaoxin
    ] {
        let a = analyze(&two_ports(id));
        assert_eq!(
            partition(&a),
            groups(&[&["00:01.0"], &["00:01.1"], &["01:00.0"], &["02:00.0"]]),
            "{id}"
        );
        let g = a.group_of("00:01.0".parse().unwrap()).unwrap();
        assert!(a.explain_group(g).is_empty());
    }
    // Outside the quirks' id ranges nothing is isolated.
    for id in ["177d:a800", "1d17:0722", "0de5:0400"] {
        let a = analyze(&two_ports(id));
        assert_eq!(
            partition(&a),
            groups(&[&["00:01.0", "00:01.1", "01:00.0", "02:00.0"]]),
            "{id}"
        );
    }
}

#[test]
fn the_wangxun_quirk_isolates_listed_nics_and_refuses_the_rest() {
    let nic = |id: &str| {
        format!(
            "00:01.0 root-port buses=01-01 {ACS}
             01:00.0 endpoint id={id} multifunction
             01:00.1 endpoint id={id}"
        )
    };
    let a = analyze(&nic("8088:1001"));
    assert_eq!(
        partition(&a),
        groups(&[&["00:01.0"], &["01:00.0"], &["01:00.1"]])
    );
    let b = analyze(&nic("8088:3001"));
    assert_eq!(
        partition(&b),
        groups(&[&["00:01.0"], &["01:00.0", "01:00.1"]])
    );
    assert!(
        why(&b, "01:00.0").contains("not isolated by Linux's ACS quirk pci_quirk_wangxun_nic_acs")
    );
}

#[test]
fn the_acs_override_patch_isolates_what_it_is_told_to() {
    let topo = "00:1c.0 root-port buses=01-01 multifunction
                00:1c.4 root-port buses=02-02
                01:00.0 endpoint multifunction
                01:00.1 endpoint
                02:00.0 endpoint";
    let none = analyze(topo);
    assert_eq!(
        partition(&none),
        groups(&[&["00:1c.0", "00:1c.4", "01:00.0", "01:00.1", "02:00.0"]])
    );
    let down = analyze_with(topo, "pcie_acs_override=downstream", IommuKind::Generic);
    assert_eq!(
        partition(&down),
        groups(&[
            &["00:1c.0"],
            &["00:1c.4"],
            &["01:00.0", "01:00.1"],
            &["02:00.0"]
        ])
    );
    let both = analyze_with(
        topo,
        "pcie_acs_override=downstream,multifunction",
        IommuKind::Generic,
    );
    assert_eq!(
        partition(&both),
        groups(&[
            &["00:1c.0"],
            &["00:1c.4"],
            &["01:00.0"],
            &["01:00.1"],
            &["02:00.0"]
        ])
    );
    let id = analyze_with(topo, "pcie_acs_override=id:0de5:0001", IommuKind::Generic);
    assert_eq!(partition(&id), partition(&both));
    let reasons = why(&down, "01:00.0");
    assert!(reasons.contains("acs-quirk: pcie_acs_override declares 00:1c.0 (root port)"));
}

#[test]
fn config_acs_and_noacs_set_the_controls_from_the_firmware_value() {
    let topo = format!(
        "00:1c.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint"
    );
    let off = analyze_with(&topo, "pci=noacs", IommuKind::Generic);
    assert_eq!(partition(&off), groups(&[&["00:1c.0", "01:00.0"]]));
    // x0xx = clear RR only; CR/UF/SV unchanged.
    let rr = analyze_with(&topo, "pci=config_acs=0xx@00:1c.0", IommuKind::Generic);
    assert_eq!(partition(&rr), groups(&[&["00:1c.0", "01:00.0"]]));
    // A path that names another device changes nothing.
    let other = analyze_with(&topo, "pci=config_acs=0xx@00:1d.0", IommuKind::Generic);
    assert_eq!(partition(&other), groups(&[&["00:1c.0"], &["01:00.0"]]));
    assert!(KernelParams::parse("pci=config_acs=2xx@00:1c.0").is_err());
    assert!(KernelParams::parse("pcie_acs_override=upstream").is_err());
}

#[test]
fn virtual_functions_get_their_own_groups_behind_an_acs_port() {
    let a = analyze(&format!(
        "00:01.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint id=8086:1521 sriov=2 vf-offset=128 vf-stride=4 vf-id=1520"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:01.0"], &["01:00.0"], &["01:10.0"], &["01:10.4"]])
    );
    let vf = a.topology.index("01:10.4".parse().unwrap()).unwrap();
    assert!(!a.topology.multifunction(vf), "a VF is never multifunction");
    assert_eq!(a.topology.functions()[vf].device, 0x1520);
    // Below a port without ACS, PF and VFs share the port's group.
    let b = analyze(
        "00:01.0 root-port buses=01-01
         01:00.0 endpoint sriov=2 vf-offset=1 vf-stride=1",
    );
    assert_eq!(
        partition(&b),
        groups(&[&["00:01.0", "01:00.0", "01:00.1", "01:00.2"]])
    );
}

#[test]
fn virtual_functions_on_a_bus_of_their_own_hang_from_the_pfs_port() {
    // VFs past devfn ff land on the next bus number, which no bridge
    // claims: Linux's virtual bus.
    let a = analyze(&format!(
        "00:01.0 root-port buses=01-02 {ACS}
         01:00.0 endpoint sriov=2 vf-offset=256 vf-stride=1"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:01.0"], &["01:00.0"], &["02:00.0"], &["02:00.1"]])
    );
    let vf = a.topology.index("02:00.0".parse().unwrap()).unwrap();
    assert_eq!(
        a.topology.upstream(vf),
        a.topology.index("00:01.0".parse().unwrap())
    );
}

#[test]
fn devices_behind_an_intel_vmd_share_the_controllers_group() {
    let a = analyze(&format!(
        "00:0e.0 rc-endpoint id=8086:9a0b class=0104
         10000:e0:06.0 root-port buses=e1-e1 {ACS}
         10000:e1:00.0 endpoint class=0108"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:0e.0", "10000:e0:06.0", "10000:e1:00.0"]])
    );
    assert!(why(&a, "00:0e.0").contains("10000:e1:00.0's DMA is issued by 00:0e.0"));
}

#[test]
fn aliasing_stops_at_a_bridge_where_translation_starts() {
    let topo = |extra: &str| {
        format!(
            "00:01.0 pci-bridge buses=01-02 {extra}
             01:00.0 pci-bridge buses=02-02
             02:00.0 pci"
        )
    };
    let plain = analyze(&topo(""));
    assert_eq!(
        partition(&plain),
        groups(&[&["00:01.0", "01:00.0", "02:00.0"]])
    );
    // Broadcom Vulcan: translation at 00:01.0, so no aliasing to it; the
    // ACS walk still stops nowhere (conventional bridges), sharing one
    // group all the same.
    let vulcan = analyze(&topo("id=14e4:9000"));
    let q = &vulcan.quirks[vulcan.topology.index("00:01.0".parse().unwrap()).unwrap()];
    assert!(q.bridge_xlate_root);
}

#[test]
fn a_plx_ntb_aliases_every_devfn_of_its_bus() {
    let a = analyze(&format!(
        "00:01.0 root-port buses=01-01 {ACS}
         01:00.0 endpoint id=10b5:87b0 multifunction {ACS}
         01:00.1 endpoint {ACS}"
    ));
    assert_eq!(
        partition(&a),
        groups(&[&["00:01.0"], &["01:00.0", "01:00.1"]])
    );
}

#[test]
fn every_reason_names_its_rule_and_device() {
    let a = analyze(&switch("", ""));
    let g = a.group_of("03:00.0".parse().unwrap()).unwrap();
    let reasons = a.explain_group(g);
    assert!(!reasons.is_empty());
    for r in &reasons {
        assert!(r.text.contains(&short_name(r.device)), "{r:?}");
        assert!(matches!(r.rule, Rule::NoAcsPath));
    }
}
