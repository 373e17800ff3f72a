//! `lspci -vvvnn` listings in: full ones, ones cut down to the lines
//! grouping needs, and every malformed case refused with its line.

use iommu_pci::{
    compare, parse_lspci_v, short_name, AcsFlags, ImportError, IommuKind, Machine, Platform,
    PortType,
};

/// A small machine as lspci 3.9 prints it as root: a root port with ACS
/// above an SR-IOV NIC and its two VFs, a root port without ACS above a
/// GPU and its audio function, a PCIe-to-PCI bridge, and the kernel's
/// groups.
const LISTING: &str = "\
00:00.0 Host bridge [0600]: Sim Corp Root Complex [0de5:0001] (rev 01)
\tSubsystem: Sim Corp Root Complex [0de5:1000]
\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-
\tStatus: Cap- 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tIOMMU group: 0

00:01.0 PCI bridge [0604]: Sim Corp Root Port A [0de5:0002] (rev 01) (prog-if 00 [Normal decode])
\tControl: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
\tLatency: 0, Cache Line Size: 64 bytes
\tInterrupt: pin ? routed to IRQ 33
\tIOMMU group: 1
\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0
\tI/O behind bridge: [disabled] [32-bit]
\tCapabilities: [50] Power Management version 3
\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0+,D1-,D2-,D3hot+,D3cold+)
\tCapabilities: [58] Express (v2) Root Port (Slot+), MSI 00
\t\tDevCap:\tMaxPayload 256 bytes, PhantFunc 0
\t\t\tExtTag+ RBE+
\tCapabilities: [a0] MSI: Enable+ Count=1/1 Maskable- 64bit+
\t\tAddress: 00000000fee00000  Data: 0000
\tCapabilities: [100 v1] Vendor Specific Information: ID=0001 Rev=1 Len=010 <?>
\tCapabilities: [150 v2] Advanced Error Reporting
\t\tUESta:\tDLP- SDES- TLP- FCP- CmpltTO- CmpltAbrt- UnxCmplt- RxOF- MalfTLP- ECRC- UnsupReq- ACSViol-
\tCapabilities: [2a0 v1] Access Control Services
\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans+
\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-
\tKernel driver in use: pcieport

00:02.0 PCI bridge [0604]: Sim Corp Root Port B [0de5:0003] (rev 01) (prog-if 00 [Normal decode])
\tIOMMU group: 2
\tBus: primary=00, secondary=02, subordinate=02, sec-latency=0
\tCapabilities: [40] Express (v2) Root Port (Slot-), IntMsgNum 0
\tKernel driver in use: pcieport

00:03.0 PCI bridge [0604]: Sim Corp Root Port C [0de5:0004] (rev 01) (prog-if 00 [Normal decode])
\tIOMMU group: 3
\tBus: primary=00, secondary=03, subordinate=04, sec-latency=0
\tCapabilities: [40] Express (v2) Root Port (Slot-), MSI 00
\tCapabilities: [100 v1] Access Control Services
\t\tACSCap:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-
\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-

01:00.0 Ethernet controller [0200]: Sim Corp NIC [0de5:0200] (rev 02)
\tSubsystem: Sim Corp NIC [0de5:0201]
\tIOMMU group: 4
\tCapabilities: [40] Express (v2) Endpoint, MSI 00
\tCapabilities: [100 v2] Advanced Error Reporting
\tCapabilities: [150 v1] Alternative Routing-ID Interpretation (ARI)
\t\tARICap:\tMFVC- ACS-, Next Function: 0
\t\tARICtl:\tMFVC- ACS-, Function Group: 0
\tCapabilities: [160 v1] Single Root I/O Virtualization (SR-IOV)
\t\tIOVCap:\tMigration- 10BitTagReq- IntMsgNum 0
\t\tIOVCtl:\tEnable+ Migration- Interrupt- MSE+ ARIHierarchy+ 10BitTagReq-
\t\tIOVSta:\tMigration-
\t\tInitial VFs: 8, Total VFs: 8, Number of VFs: 2, Function Dependency Link: 00
\t\tVF offset: 128, stride: 1, Device ID: 0210
\t\tSupported Page Size: 00000553, System Page Size: 00000001

01:10.0 Ethernet controller [0200]: Sim Corp NIC VF [0de5:0210] (rev 02)
\tIOMMU group: 5
\tCapabilities: [70] MSI-X: Enable+ Count=3 Masked-
\tCapabilities: [a0] Express (v2) Endpoint, MSI 00

01:10.1 Ethernet controller [0200]: Sim Corp NIC VF [0de5:0210] (rev 02)
\tIOMMU group: 6
\tCapabilities: [a0] Express (v2) Endpoint, MSI 00

02:00.0 VGA compatible controller [0300]: Sim Corp GPU [AD102] [0de5:0300] (rev a1) (prog-if 00 [VGA controller])
\tIOMMU group: 2
\tCapabilities: [60] Power Management version 3
\tCapabilities: [78] Express (v2) Legacy Endpoint, MSI 00

02:00.1 Audio device [0403]: Sim Corp GPU Audio [0de5:0301] (rev a1)
\tIOMMU group: 2
\tCapabilities: [78] Express (v2) Endpoint, MSI 00

03:00.0 PCI bridge [0604]: Sim Corp PCIe to PCI Bridge [0de5:0400] (rev 04) (prog-if 00 [Normal decode])
\tIOMMU group: 7
\tBus: primary=03, secondary=04, subordinate=04, sec-latency=32
\tCapabilities: [40] Express (v1) PCI-Express to PCI/PCI-X Bridge, MSI 00

04:01.0 Serial controller [0700]: Sim Corp UART [0de5:0500] (rev 01) (prog-if 02 [16550])
\tIOMMU group: 7

04:02.0 Parallel controller [0701]: Sim Corp LPT [0de5:0501] (rev 01)
\tIOMMU group: 7
";

fn groups_of(m: &Machine) -> Vec<Vec<String>> {
    let a = m.analyze(Platform::default()).unwrap();
    a.groups
        .partition(&a.topology)
        .into_iter()
        .map(|g| g.into_iter().map(short_name).collect())
        .collect()
}

#[test]
fn a_listing_reads_as_its_functions_and_the_kernels_groups() {
    let fs = parse_lspci_v(LISTING).unwrap();
    assert_eq!(fs.len(), 12);
    let rp = &fs[1].function;
    assert_eq!(rp.port_type(), Some(PortType::RootPort));
    assert_eq!(rp.bridge.unwrap().secondary, 1);
    let acs = rp.acs.unwrap();
    assert_eq!(acs.offset, 0x2a0);
    assert_eq!(acs.cap, AcsFlags(0x5f));
    assert_eq!(acs.ctrl, AcsFlags(0x1d));
    assert_eq!(fs[1].iommu_group, Some(1));
    assert_eq!(fs[1].line, 7);
    let nic = &fs[4].function;
    assert_eq!(nic.subsystem, (0x0de5, 0x0201));
    assert_eq!(nic.revision, 2);
    let iov = nic.sriov.unwrap();
    assert!(iov.vf_enable);
    assert_eq!(
        (
            iov.num_vfs,
            iov.first_vf_offset,
            iov.vf_stride,
            iov.vf_device
        ),
        (2, 128, 1, 0x210)
    );
    assert!(nic.ari.is_some());
    let gpu = &fs[7];
    assert_eq!(gpu.function.class, 0x030000);
    assert!(gpu.function.multifunction, "function 0 of a listed slot");
    assert_eq!(gpu.function.port_type(), Some(PortType::LegacyEndpoint));
    assert_eq!(
        gpu.description,
        "VGA compatible controller [0300]: Sim Corp GPU [AD102] [0de5:0300] (rev a1)"
    );
    assert_eq!(fs[9].function.port_type(), Some(PortType::PcieToPciBridge));
    assert!(!fs[10].function.is_pcie());
    assert_eq!(fs[10].function.class, 0x070002);
}

#[test]
fn the_prediction_matches_the_kernels_groups() {
    let m = Machine::from_lspci_v(LISTING).unwrap();
    let a = m.analyze(Platform::default()).unwrap();
    let c = compare(&a.groups.partition(&a.topology), &m.kernel_partition());
    assert!(c.is_same(), "{c:?}");
    let vf = a.topology.index("01:10.1".parse().unwrap()).unwrap();
    assert_eq!(
        a.topology.physfn(vf),
        a.topology.index("01:00.0".parse().unwrap())
    );
}

#[test]
fn a_listing_cut_down_to_the_lines_grouping_needs_reads_the_same() {
    let keep = [
        "IOMMU group:",
        "Bus:",
        "Capabilities:",
        "ACSCap:",
        "ACSCtl:",
        "ARICap:",
        "IOVCtl:",
        "Initial VFs:",
        "VF offset:",
    ];
    let cut: String = LISTING
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !l.starts_with('\t') || keep.iter().any(|k| t.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(cut.len() < LISTING.len());
    let full = Machine::from_lspci_v(LISTING).unwrap();
    let short = Machine::from_lspci_v(&cut).unwrap();
    assert_eq!(groups_of(&full), groups_of(&short));
    // And with the tabs a paste turned into spaces.
    let spaced = LISTING.replace('\t', "    ");
    assert_eq!(
        groups_of(&Machine::from_lspci_v(&spaced).unwrap()),
        groups_of(&full)
    );
}

fn refused(text: &str) -> (usize, String) {
    match parse_lspci_v(text) {
        Err(ImportError::Syntax { line, reason }) => (line, reason),
        Err(ImportError::Config { line, error }) => (line, error.to_string()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_listing_made_without_root_is_refused_with_the_fix() {
    let (line, reason) = refused(
        "00:01.0 PCI bridge [0604]: Sim [0de5:0002]\n\tIOMMU group: 1\n\tCapabilities: <access denied>\n",
    );
    assert_eq!(line, 3);
    assert!(reason.contains("without root"), "{reason}");
}

#[test]
fn a_listing_without_numeric_ids_is_refused() {
    let (line, reason) = refused("00:01.0 PCI bridge: Sim Corp Root Port (rev 01)\n");
    assert_eq!(line, 1);
    assert!(reason.contains("numeric ids"), "{reason}");
    let (_, reason) = refused("00:01.0 PCI bridge [0604]: Sim Corp Root Port\n");
    assert!(reason.contains("[vvvv:dddd]"), "{reason}");
}

#[test]
fn malformed_lines_are_refused_naming_the_line() {
    let head = "00:01.0 PCI bridge [0604]: Sim [0de5:0002]\n";
    for (body, line, want) in [
        ("\tBus: primary=00, secondary=zz, subordinate=01\n", 2, "secondary="),
        ("\tIOMMU group: seven\n", 2, "not a number"),
        ("\tCapabilities: [3] Express (v2) Root Port (Slot+)\n", 2, "out of range"),
        ("\tCapabilities: [40] Express (v2) Space Port\n", 2, "unknown PCI Express port type"),
        ("\tCapabilities: [40] Express (v2) Root Port\n\tCapabilities: [40] MSI: Enable+\n", 3, "two capabilities"),
        (
            "\tCapabilities: [40] Express (v2) Root Port\n\tCapabilities: [100 v1] Access Control Services\n",
            3,
            "ACSCap and ACSCtl",
        ),
        (
            "\tCapabilities: [40] Express (v2) Root Port\n\tCapabilities: [100 v1] Access Control Services\n\t\tACSCap:\tSrcValid+ TransBlk?\n",
            4,
            "+ or -",
        ),
        (
            "\tCapabilities: [40] Express (v2) Root Port\n\tCapabilities: [100 v1] Access Control Services\n\t\tACSCap:\tSrcValid+\n",
            4,
            "must list",
        ),
        ("\tBus: primary=00, secondary=00, subordinate=05\n", 1, "contradict"),
    ] {
        let (l, reason) = refused(&format!("{head}{body}"));
        assert_eq!(l, line, "{body:?}: {reason}");
        assert!(reason.contains(want), "{body:?}: {reason}");
    }
    let (l, reason) = refused("\tIOMMU group: 1\n");
    assert_eq!(l, 1);
    assert!(reason.contains("before any function"));
    let (l, _) = refused("zz:01.0 PCI bridge [0604]: Sim [0de5:0002]\n");
    assert_eq!(l, 1);
}

#[test]
fn an_lspci_p_path_takes_its_buses_from_the_listed_bridges() {
    let bridge = "\tBus: primary=00, secondary=07, subordinate=07\n\tCapabilities: [40] Express (v2) Root Port (Slot+)\n";
    let text = format!(
        "00:1c.4/00.0 Ethernet controller [0200]: Sim [0de5:0200]\n\tIOMMU group: 2\n\
         00:1c.4 PCI bridge [0604]: Sim [0de5:0002]\n{bridge}"
    );
    let listed = parse_lspci_v(&text).unwrap();
    let names: Vec<String> = listed.iter().map(|f| short_name(f.function.bdf)).collect();
    assert_eq!(names, ["07:00.0", "00:1c.4"]);
    // A path through a function that is not a listed bridge is refused.
    let (l, reason) = refused("00:01.0 PCI bridge [0604]: Sim [0de5:0002]\n\tBus: primary=00, secondary=01, subordinate=01\n00:1f.0/00.0 Ethernet controller [0200]: Sim [0de5:0200]\n");
    assert_eq!(l, 3);
    assert!(
        reason.contains("0000:00:1f.0, which is not a listed bridge"),
        "{reason}"
    );
    let (l, reason) = refused("00:1c.4/0000:07:00.0 Ethernet controller [0200]: Sim [0de5:0200]\n");
    assert_eq!(l, 1);
    assert!(reason.contains("-P/-PP path"), "{reason}");
}

#[test]
fn a_machine_whose_iommu_is_amds_leaves_the_iommu_function_out() {
    let listing = "\
00:00.2 IOMMU [0806]: Advanced Micro Devices, Inc. [AMD] Family 17h-19h IOMMU [1022:14b6]
\tCapabilities: [64] MSI: Enable+ Count=1/4 Maskable- 64bit+

00:01.0 Host bridge [0600]: Advanced Micro Devices, Inc. [AMD] Family 17h-19h PCIe Dummy Host Bridge [1022:14b7] (rev 02)
\tIOMMU group: 0
";
    let m = Machine::from_lspci_v(listing).unwrap();
    assert_eq!(IommuKind::detect(&m.functions()), IommuKind::AmdVi);
    let a = m
        .analyze(Platform {
            iommu: IommuKind::AmdVi,
            ..Platform::default()
        })
        .unwrap();
    let c = compare(&a.groups.partition(&a.topology), &m.kernel_partition());
    assert!(c.is_same(), "{c:?}");
}

#[test]
fn every_extended_capability_keeps_its_place_in_the_list() {
    // Intel's 100/200-series root ports start their extended list with a
    // `Null` header that only points on; Linux walks through it to ACS.
    for first in [
        "[100 v0] Null",
        "[100 v1] Extended Capability ID 0x2a",
        "[100 v1] Some Capability From A Newer Specification",
    ] {
        let text = format!(
            "00:1c.0 PCI bridge [0604]: Sim [0de5:0002]\n\tBus: primary=00, secondary=01, subordinate=01\n\
             \tCapabilities: [40] Express (v2) Root Port (Slot+), MSI 00\n\tCapabilities: {first}\n\
             \tCapabilities: [140 v1] Access Control Services\n\
             \t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd- EgressCtrl- DirectTrans-\n\
             \t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd- EgressCtrl- DirectTrans-\n"
        );
        let listed = parse_lspci_v(&text).unwrap();
        let acs = listed[0]
            .function
            .acs
            .unwrap_or_else(|| panic!("{first}: ACS lost"));
        assert_eq!(acs.offset, 0x140, "{first}");
        assert_eq!(listed[0].function.ext_capabilities.len(), 2, "{first}");
    }
}
