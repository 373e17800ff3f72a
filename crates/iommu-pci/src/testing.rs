//! The parser's fuzz oracle: any bytes become a configuration space, which
//! parses into a function or fails with a typed error, and a parsed
//! function's capabilities all lie inside the space, each visited once.

use crate::{Bdf, ConfigSpace, Function};
use alloc::vec::Vec;

/// The function every input is read as.
pub const BDF: Bdf = Bdf {
    segment: 0,
    bus: 3,
    devfn: 0,
};

/// The input that makes [`run`] read `cfg`: its size's index in
/// [`ConfigSpace::SIZES`], then its bytes.
pub fn encode(cfg: &ConfigSpace) -> Vec<u8> {
    let size = ConfigSpace::SIZES
        .iter()
        .position(|&s| s == cfg.len())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(cfg.len() + 1);
    out.push(size as u8);
    out.extend_from_slice(cfg.as_bytes());
    out
}

/// Reads `data` as [`encode`] writes it (missing bytes are zero, extra
/// ones ignored), parses it and checks what a parse promises.
///
/// # Panics
/// When the parser breaks a promise: that is the finding.
pub fn run(data: &[u8]) {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let len = ConfigSpace::SIZES[usize::from(size) % ConfigSpace::SIZES.len()];
    let mut bytes = alloc::vec![0u8; len];
    let n = rest.len().min(len);
    bytes[..n].copy_from_slice(&rest[..n]);
    let cfg = ConfigSpace::from_bytes(BDF, &bytes).expect("a size from SIZES");
    let Ok(f) = Function::parse(BDF, &cfg) else {
        return;
    };
    let mut seen = Vec::new();
    for &(_, off) in &f.capabilities {
        assert!(
            off >= 0x40 && usize::from(off) + 2 <= len.min(256),
            "{off:#x}"
        );
        assert!(!seen.contains(&off), "visited twice");
        seen.push(off);
    }
    for &(_, off) in &f.ext_capabilities {
        assert!(off >= 0x100 && usize::from(off) + 4 <= len, "{off:#x}");
        assert!(!seen.contains(&off), "visited twice");
        seen.push(off);
    }
    if let Some(p) = f.pcie {
        assert!(f.capabilities.contains(&(crate::cap_id::EXP, p.offset)));
    }
    if let Some(b) = f.bridge {
        assert!(b.secondary > b.primary && b.subordinate >= b.secondary);
    }
}

/// The hex-dump importer's oracle: any text either fails with a typed
/// error or reads back identically after being written out again.
///
/// # Panics
/// When a dump read from `data` does not survive the round trip.
pub fn run_lspci_x(data: &[u8]) {
    let text = alloc::string::String::from_utf8_lossy(data);
    let Ok(dump) = crate::parse_lspci_x(&text) else {
        return;
    };
    let again = crate::parse_lspci_x(&crate::write_lspci_x(&dump)).expect("a written dump reads");
    assert_eq!(dump.len(), again.len());
    for (a, b) in dump.iter().zip(&again) {
        assert_eq!((a.bdf, &a.config), (b.bdf, &b.config));
    }
}

/// What every grouping must hold, whatever the machine: each covered
/// function is in exactly one group and the groups list it; functions the
/// IOMMU does not cover, or whose stream id another device holds, are in
/// none; two groups never share a requester id
/// (the core refuses a device whose ids span groups); a function is in the
/// group of each bridge that takes over its DMA; every group explains
/// itself.
///
/// # Panics
/// When one of these fails: that is the finding.
pub fn check_analysis(a: &crate::Analysis) {
    use alloc::collections::BTreeMap;
    let topo = &a.topology;
    let g = &a.groups;
    assert_eq!(g.of.len(), topo.len());
    let mut count = alloc::vec![0usize; topo.len()];
    for (id, members) in g.members.iter().enumerate() {
        assert!(!members.is_empty(), "group {id} is empty");
        for &i in members {
            assert_eq!(g.of[i], Some(id), "{}", topo.functions()[i].bdf);
            count[i] += 1;
        }
    }
    assert_eq!(g.refused.len(), topo.len());
    for (i, (f, &n)) in topo.functions().iter().zip(&count).enumerate() {
        let placed = a.platform.covers(f) && g.refused[i].is_none();
        assert_eq!(n, usize::from(placed), "{}", f.bdf);
        if g.refused[i] == Some(i) {
            // Refused by itself: an arm-smmu-v3 of before 6.12 and a
            // stream id listed twice.
            assert!(a.platform.covers(f), "{}", f.bdf);
            assert!(
                a.platform.kernel.arm_smmu_refuses_duplicate_stream_ids(),
                "{}",
                f.bdf
            );
            continue;
        }
        if let Some(holder) = g.refused[i] {
            // Refused for a stream id that a placed device of its segment
            // holds.
            assert!(a.platform.covers(f), "{}", f.bdf);
            assert!(g.of[holder].is_some() && holder != i, "{}", f.bdf);
            assert_eq!(topo.functions()[holder].bdf.segment, f.bdf.segment);
            let theirs = a.dma_requester_ids(holder);
            assert!(
                a.dma_requester_ids(i).iter().any(|id| theirs.contains(id)),
                "{} shares no stream id with {}",
                f.bdf,
                topo.functions()[holder].bdf
            );
        }
    }
    // Linux does not group two devices that merely share a requester id
    // no device answers to (two quirks naming the same absent function),
    // nor devices below a bridge the IOMMU does not cover; those ids are
    // left out of the check.
    let mut excused: alloc::collections::BTreeSet<(u32, u16)> = alloc::collections::BTreeSet::new();
    for i in 0..topo.len() {
        let f = &topo.functions()[i];
        for &devfn in &a.quirks[i].dma_aliases {
            let rid = u16::from(f.bdf.bus) << 8 | u16::from(devfn);
            if topo
                .index(crate::Bdf::from_requester_id(f.bdf.segment, rid))
                .is_none()
            {
                excused.insert((f.bdf.segment, rid));
            }
        }
        if !a.platform.covers(f) {
            if let Some(b) = f.bridge {
                excused.insert((f.bdf.segment, u16::from(b.secondary) << 8));
                excused.insert((f.bdf.segment, f.bdf.requester_id()));
            }
        }
    }
    // Below a bridge the IOMMU does not cover, the walk to that bridge
    // stops short of any group, so Linux need not keep aliases together.
    let below_uncovered = |mut i: usize| loop {
        match topo.upstream(topo.physfn(i).unwrap_or(i)) {
            Some(up) if !a.platform.covers(&topo.functions()[up]) => return true,
            Some(up) => i = up,
            None => return false,
        }
    };
    let mut owner: BTreeMap<(u32, u16), usize> = BTreeMap::new();
    for i in 0..topo.len() {
        let Some(group) = g.of[i] else { continue };
        if below_uncovered(i) {
            continue;
        }
        let seg = topo.functions()[i].bdf.segment;
        for rid in a.dma_requester_ids(i) {
            if excused.contains(&(seg, rid)) {
                continue;
            }
            if let Some(&other) = owner.get(&(seg, rid)) {
                assert_eq!(
                    other,
                    group,
                    "requester id {rid:#06x} of {} is in groups {other} and {group}",
                    topo.functions()[i].bdf
                );
            }
            owner.insert((seg, rid), group);
        }
        if let Some(join) = &g.joins[i] {
            assert_eq!(g.of[join.with], Some(group));
        }
    }
    for id in 0..g.members.len() {
        for r in a.explain_group(id) {
            assert!(!r.text.is_empty());
        }
    }
}

/// The listing importer's oracle: any text either fails with a typed
/// error or reads into functions that group soundly and that, written
/// back as a listing, read again to the same groups.
///
/// # Panics
/// When a listing that reads breaks a promise.
pub fn run_lspci_v(data: &[u8]) {
    let text = alloc::string::String::from_utf8_lossy(data);
    let Ok(m) = crate::Machine::from_lspci_v(&text) else {
        return;
    };
    let Ok(a) = m.analyze(crate::Platform::default()) else {
        return;
    };
    check_analysis(&a);
    let again = crate::Machine::from_lspci_v(&crate::synthetic::write_lspci_v(&m))
        .expect("a written listing reads");
    let b = again
        .analyze(crate::Platform::default())
        .expect("the same functions form the same tree");
    assert_eq!(
        a.groups.partition(&a.topology),
        b.groups.partition(&b.topology)
    );
}

/// The topology-file oracle: any text either fails naming its line or
/// reads into functions that group soundly, and written back, read again
/// to the same groups.
///
/// # Panics
/// When a topology that reads breaks a promise.
pub fn run_topology(data: &[u8]) {
    let text = alloc::string::String::from_utf8_lossy(data);
    let Ok(t) = crate::parse_topology(&text) else {
        return;
    };
    let platform = crate::Platform {
        quirks: t.quirks.clone(),
        not_covered: t.not_covered.clone(),
        ..crate::Platform::default()
    };
    let Ok(a) = t.machine.analyze(platform.clone()) else {
        return;
    };
    check_analysis(&a);
    let again = crate::parse_topology(&crate::write_topology(&t.machine))
        .expect("a written topology reads");
    let b = again
        .machine
        .analyze(platform)
        .expect("the same functions form the same tree");
    assert_eq!(
        a.groups.partition(&a.topology),
        b.groups.partition(&b.topology)
    );
}

/// Vendor and device ids the machine decoder picks from: plain ones and
/// one of each quirk family.
const IDS: [(u16, u16); 16] = [
    (0x0de5, 0x0001),
    (0x0de5, 0x0002),
    (0x8086, 0x1521), // multifunction endpoint quirk
    (0x8086, 0x1c10), // Intel PCH root port
    (0x8086, 0xa110), // Sunrise Point root port
    (0x8086, 0x9a0b), // VMD
    (0x1002, 0x4385), // AMD southbridge
    (0x1b4b, 0x9123), // func1 alias
    (0x1180, 0xe832), // func0 alias
    (0x1b21, 0x1080), // PCIe bridge alias
    (0x10b5, 0x87b0), // PLX NTB
    (0x14e4, 0x9000), // translation root
    (0x177d, 0xa000), // Cavium
    (0x8088, 0x1001), // Wangxun
    (0x1022, 0x1481), // AMD IOMMU (class 0806 below)
    (0x1d17, 0x0710), // Zhaoxin
];

const KINDS: [&str; 12] = [
    "host-bridge",
    "pci",
    "pci-bridge",
    "endpoint",
    "legacy-endpoint",
    "rc-endpoint",
    "rc-event-collector",
    "root-port",
    "upstream-port",
    "downstream-port",
    "pcie-to-pci-bridge",
    "pci-to-pcie-bridge",
];

const CMDLINES: [&str; 6] = [
    "",
    "pcie_acs_override=downstream",
    "pcie_acs_override=multifunction,id:0de5:0002",
    "pci=noacs",
    "pci=disable_acs_redir=pci:8086:0",
    "iommu=off",
];

/// Decodes bytes into a topology file: a header byte (kernel parameters,
/// IOMMU kind), then six bytes per function (bus, device, function, kind,
/// ids, flags). What the bytes describe may well not be a tree; the
/// parser and the tree builder then refuse it.
pub fn decode_machine(data: &[u8]) -> (alloc::string::String, &'static str, crate::IommuKind) {
    use core::fmt::Write as _;
    let (&head, rest) = data.split_first().unwrap_or((&0, &[]));
    let cmdline = CMDLINES[usize::from(head) % CMDLINES.len()];
    let iommu = match (head >> 4) % 4 {
        0 => crate::IommuKind::Generic,
        1 => crate::IommuKind::IntelVtd,
        2 => crate::IommuKind::AmdVi,
        _ => crate::IommuKind::ArmSmmu,
    };
    let mut s = alloc::string::String::new();
    for c in rest.chunks_exact(6).take(64) {
        let (bus, dev, func) = (c[0] % 8, c[1] % 4, c[2] % 8);
        let kind = KINDS[usize::from(c[3]) % KINDS.len()];
        let (v, d) = IDS[usize::from(c[4]) % IDS.len()];
        let flags = c[5];
        let _ = write!(s, "{bus:02x}:{dev:02x}.{func} {kind} id={v:04x}:{d:04x}");
        if (v, d) == (0x1022, 0x1481) {
            s.push_str(" class=0806");
        }
        if (kind.ends_with("bridge") || kind.ends_with("port")) && kind != "host-bridge" {
            let sec = bus + 1 + (flags & 3);
            let sub = sec + ((flags >> 2) & 3);
            let _ = write!(s, " buses={sec:02x}-{sub:02x}");
        }
        let pcie = !matches!(kind, "host-bridge" | "pci" | "pci-bridge");
        if pcie && flags & 0x10 != 0 {
            let cap = c[4] & 0x7f;
            let ctrl = c[5] & 0x7f;
            let _ = write!(
                s,
                " acs-cap={} acs-ctrl={}",
                crate::acs_flags_text(crate::AcsFlags(u16::from(cap))),
                crate::acs_flags_text(crate::AcsFlags(u16::from(ctrl)))
            );
        }
        if flags & 0x20 != 0 {
            s.push_str(" multifunction");
        }
        if pcie && kind == "endpoint" && flags & 0x40 != 0 {
            let _ = write!(
                s,
                " sriov={} vf-offset={} vf-stride=1",
                1 + (c[1] & 3),
                1 + (c[2] & 7)
            );
        }
        if flags & 0x80 != 0 {
            let _ = write!(s, " alias={:02x}.{}", c[1] % 4, c[0] % 8);
        }
        s.push('\n');
    }
    (s, cmdline, iommu)
}

/// The grouping oracle: a machine decoded from bytes groups soundly
/// (see [`check_analysis`]) under the kernel parameters and IOMMU it
/// names, or is refused as input.
///
/// # Panics
/// When a grouping breaks a promise.
pub fn run_groups(data: &[u8]) {
    let (text, cmdline, iommu) = decode_machine(data);
    let Ok(t) = crate::parse_topology(&text) else {
        return;
    };
    let platform = crate::Platform {
        iommu,
        params: crate::KernelParams::parse(cmdline).expect("a known command line"),
        quirks: t.quirks,
        not_covered: t.not_covered,
        ..crate::Platform::default()
    };
    if let Ok(a) = t.machine.analyze(platform) {
        check_analysis(&a);
    }
}
