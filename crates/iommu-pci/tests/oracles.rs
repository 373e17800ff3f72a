//! The fuzz oracles of the PCI layer on hand-written seeds and on random
//! inputs: listings, topology files and decoded machines read or are
//! refused, and whatever reads groups soundly (every covered function in
//! one group, no requester id in two groups, aliases together) and
//! survives being written back.

use iommu_pci::testing::{check_analysis, decode_machine, run_groups, run_lspci_v, run_topology};
use iommu_pci::{parse_topology, synthetic, Platform};
use proptest::prelude::*;

fn write_seeds(target: &str, seeds: &[Vec<u8>]) {
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
}

fn topology_examples() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/topologies");
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "topo"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 3);
    v
}

#[test]
fn the_documented_topologies_read_and_group_soundly() {
    for (path, text) in topology_examples() {
        let t = parse_topology(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let a = t
            .machine
            .analyze(Platform {
                quirks: t.quirks,
                not_covered: t.not_covered,
                ..Platform::default()
            })
            .unwrap();
        check_analysis(&a);
    }
}

#[test]
fn the_topology_seeds_hold() {
    let mut seeds: Vec<Vec<u8>> = topology_examples()
        .into_iter()
        .map(|(_, t)| t.into_bytes())
        .collect();
    seeds.push(synthetic::server_topology(1).into_bytes());
    seeds.push(iommu_soft_like_default().into_bytes());
    seeds.push(b"00:00.0 endpoint sriov=3 vf-offset=8 alias=01.0 not-covered\n".to_vec());
    // A fuzz finding: a bridge the firmware left unconfigured (buses 0)
    // was written back without `buses=` and read no more.
    seeds.push(
        b"00:00.0 host-bridge\n00:01.0 root-port buses=00-0  acs=SV,RR,CR,UF\n\
          00:1c.0 root-port buses=02-03 multifunction\n01:1c.1 root-port buses=03-03\n\
          03:01.0 pci pcix\n03:02.0 pci"
            .to_vec(),
    );
    for s in &seeds {
        run_topology(s);
    }
    write_seeds("topology", &seeds);
}

/// A platform with every kind and option of the format.
fn iommu_soft_like_default() -> String {
    "00:00.0 host-bridge\n\
     00:01.0 root-port buses=01-01 acs=SV,RR,CR,UF\n\
     00:1c.0 root-port buses=02-03 multifunction\n\
     00:1c.1 root-port buses=04-04 acs-cap=SV,RR acs-ctrl=none\n\
     00:1f.0 rc-endpoint multifunction\n\
     00:1f.3 rc-event-collector\n\
     01:00.0 endpoint multifunction ari\n\
     01:00.1 legacy-endpoint\n\
     02:00.0 pcie-to-pci-bridge buses=03-03\n\
     03:01.0 pci pcix\n\
     03:02.0 pci-bridge buses=05-05\n\
     04:00.0 upstream-port buses=06-06\n"
        .into()
}

#[test]
fn the_listing_seeds_hold() {
    let mut seeds: Vec<Vec<u8>> =
        vec![synthetic::write_lspci_v(&synthetic::server(1)).into_bytes()];
    for (_, t) in topology_examples() {
        let m = parse_topology(&t).unwrap().machine;
        seeds.push(synthetic::write_lspci_v(&m).into_bytes());
    }
    seeds.push(b"00:01.0 PCI bridge [0604]: x [0de5:0002]\n\tBus: primary=00, secondary=01, subordinate=01\n".to_vec());
    // A CardBus bridge, and a plain function alone (written back, each
    // keeps the register lines a -vv listing has).
    seeds.push(b"00:1c.0 CardBus bridge [0607]: x [0de5:0607]\n\tBus: primary=00, secondary=01, subordinate=01\n".to_vec());
    seeds.push(
        b"00:02.0 Ethernet controller [0200]: x [0de5:0200]\n\tControl: I/O+ Mem+ BusMaster+\n"
            .to_vec(),
    );
    // A CI fuzz finding: a bridge the firmware left without bus numbers was
    // written back without its `Bus:` line, which the importer refuses.
    seeds.push(
        b"00:01.0 PCI bridge [0604]: x [0de5:0002]\n\tBus: primary=00, secondary=0,1 subordinate=00\n"
            .to_vec(),
    );
    // A fuzz finding: an extended capability lspci cannot name, at 0x100
    // before an SR-IOV capability with VFs enabled, was left out when the
    // listing was written back, and the list read back empty: the VFs
    // became plain functions of one multifunction device.
    seeds.push(
        b"04:00.0 Ethernet controller [0200]: x [0de5:0200]\n\
          \tCapabilities: [40] Express (v2) Endpoint, MSI 00\n\
          \tCapabilities: [100 v1] Alternative Routing-ID penrerIttation (ARI)\n\
          \tCapabilities: [140 v1] Single Root I/O Virtualization (SR-IOV)\n\
          \t\tIOVCtl:\tEnable+ Migration- Interrupt- MSE- ARIHierarchy- 10BitTagReq-\n\
          \t\tInitial VFs: 2, Total VFs: 2, Number of VFs: 2, Function Dependency Link: 00\n\
          \t\tVF offset: 16, stride: 1, Device ID: 0210\n\n\
          04:02.0 Ethernet controller [0200]: x [0de5:0210]\n\
          \tCapabilities: [40] Express (v2) Endpoint, MSI 00\n\n\
          04:02.1 Ethernet controller [0200]: x [0de5:0210]\n\
          \tCapabilities: [40] Express (v2) Endpoint, MSI 00\n"
            .to_vec(),
    );
    // The same list with nothing listed at 0x100 keeps its SR-IOV too.
    seeds.push(
        b"04:00.0 Ethernet controller [0200]: x [0de5:0200]\n\
          \tCapabilities: [40] Express (v2) Endpoint, MSI 00\n\
          \tCapabilities: [140 v1] Single Root I/O Virtualization (SR-IOV)\n\
          \t\tIOVCtl:\tEnable+ Migration- Interrupt- MSE- ARIHierarchy- 10BitTagReq-\n\
          \t\tInitial VFs: 2, Total VFs: 2, Number of VFs: 2, Function Dependency Link: 00\n\
          \t\tVF offset: 16, stride: 1, Device ID: 0210\n"
            .to_vec(),
    );
    for s in &seeds {
        run_lspci_v(s);
    }
    write_seeds("lspci_v", &seeds);
}

#[test]
fn the_grouping_seeds_hold() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for head in 0..6u8 {
        let mut s = vec![head | 0x10];
        // A root port, a bridge, endpoints: a small tree whatever the flags.
        s.extend_from_slice(&[0, 1, 0, 7, 1, 0x10 | 0x7f]);
        s.extend_from_slice(&[1, 0, 0, 10, 1, 0]);
        s.extend_from_slice(&[2, 1, 0, 1, 0, 0x20]);
        s.extend_from_slice(&[2, 1, 1, 1, 7, 0]);
        s.extend_from_slice(&[0, 2, 0, 3, 2, 0x60]);
        seeds.push(s);
    }
    for s in &seeds {
        run_groups(s);
        let (text, _, _) = decode_machine(s);
        assert!(parse_topology(&text).is_ok(), "{text}");
    }
    write_seeds("pci_groups", &seeds);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_decoded_machine_groups_soundly(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        run_groups(&data);
    }

    #[test]
    fn any_topology_text_reads_or_is_refused(lines in proptest::collection::vec(
        (0u8..4, 0u8..4, 0u8..8, 0usize..12, proptest::option::of(0u8..8)), 0..12)) {
        const KINDS: [&str; 12] = ["host-bridge", "pci", "pci-bridge", "endpoint", "legacy-endpoint", "rc-endpoint", "rc-event-collector", "root-port", "upstream-port", "downstream-port", "pcie-to-pci-bridge", "pci-to-pcie-bridge"];
        let mut text = String::new();
        for (bus, dev, func, kind, buses) in lines {
            text.push_str(&format!("{bus:02x}:{dev:02x}.{func} {}", KINDS[kind]));
            if let Some(b) = buses {
                text.push_str(&format!(" buses={:02x}-{:02x}", bus + 1, bus + 1 + b));
            }
            text.push('\n');
        }
        run_topology(text.as_bytes());
    }
}

#[test]
fn an_acs_flag_ending_in_a_multibyte_character_is_refused_not_a_panic() {
    // Found by the lspci_v fuzz target: the sign of a flag was cut at a
    // byte, not a character.
    let text = "00:02.0 PCI bridge [0604]: D [0de5:2001]\n\
                \tCapabilities: [40] Express (v2) Root Port (Slot-), MSI 00\n\
                \tCapabilities: [100 v1] Access Control Services\n\
                \t\tACSCap:\tSrcValid\u{fffd} TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+\n";
    let e = iommu_pci::parse_lspci_v(text).unwrap_err();
    assert_eq!(e.line(), Some(4));
    run_lspci_v(text.as_bytes());
}

#[test]
fn a_bridge_at_a_vfs_address_is_not_taken_for_a_vf_and_its_bus_is_grouped() {
    // Found by the pci_groups fuzz target: a PF's SR-IOV capability named
    // a root port's address as a VF, so the port's bus was never
    // enumerated and its device got no group.
    let t = parse_topology(
        "00:02.0 endpoint multifunction sriov=3 vf-offset=1 vf-stride=1\n\
         00:02.1 root-port buses=01-01\n\
         01:00.7 endpoint\n",
    )
    .unwrap();
    let a = t.machine.analyze(Platform::default()).unwrap();
    let port = a.topology.index("00:02.1".parse().unwrap()).unwrap();
    assert_eq!(a.topology.physfn(port), None);
    assert!(a.group_of("01:00.7".parse().unwrap()).is_some());
    check_analysis(&a);
}

#[test]
fn the_topology_format_is_documented_whole() {
    // Every kind and option the parser takes is in the user's
    // documentation (docs/topologies/README.md), so the two cannot drift.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/topologies/README.md"
    ))
    .unwrap();
    let src = include_str!("../src/topofile.rs");
    let keys: Vec<&str> = src
        .lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let q = t.strip_prefix('"')?;
            let (word, rest) = q.split_once('"')?;
            (rest.trim_start().starts_with("=>") || rest.trim_start().starts_with('|'))
                .then_some(word)
        })
        .collect();
    assert!(keys.len() > 20, "{keys:?}");
    let word = |k: &str| {
        doc.match_indices(k).any(|(at, _)| {
            let before = doc[..at].chars().next_back().unwrap_or(' ');
            let after = doc[at + k.len()..].chars().next().unwrap_or(' ');
            !before.is_alphanumeric() && before != '-' && !after.is_alphanumeric() && after != '-'
        })
    };
    for k in keys {
        assert!(
            word(k),
            "`{k}` is not documented in docs/topologies/README.md"
        );
    }
}
