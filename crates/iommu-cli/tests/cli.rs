//! The `iommu` binary as a user runs it, and its exports read by the real
//! `lspci` (pciutils) and Graphviz.

use std::path::Path;
use std::process::Command;

mod common;

use common::{iommu, iommu_in, scratch};

/// The real lspci, reading a sysfs tree.
fn lspci(sysfs_root: &Path, args: &[&str]) -> String {
    let out = Command::new("lspci")
        .arg("-A")
        .arg("linux-sysfs")
        .arg("-O")
        .arg(format!(
            "sysfs.path={}",
            sysfs_root.join("bus/pci").display()
        ))
        .args(args)
        .output()
        .expect("lspci (pciutils) must be installed: apt-get install pciutils");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn position(lines: &[&str], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| *l == needle)
        .unwrap_or_else(|| panic!("no line {needle:?} in\n{}", lines.join("\n")))
}

fn pci_data(name: &str) -> String {
    format!(
        "{}/../iommu-pci/tests/data/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn default_run_maps_translates_unmaps_and_prints_groups_then_sysfs() {
    let (code, out, err) = iommu(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let groups = position(&lines, "== IOMMU groups");
    let sysfs = position(&lines, "== sysfs");
    assert!(groups < sysfs);
    assert_eq!(lines[groups + 1], "IOMMU Group 0:");
    assert!(out.contains("  DMA read  0x0000200123 -> 0x400200123"));
    assert!(out.contains("  unmap 0x1fe000 size 0x204000: 0x204000 bytes"));
    assert!(out.contains("fault: translation fault"));
    assert!(out.contains("fault: permission fault"));
    assert!(out.contains("attaching again: EBUSY"));
    assert_eq!(lines[sysfs + 1], "/sys");
}

#[test]
fn trace_goes_to_stderr_as_a_tree_and_leaves_stdout_alone() {
    let (code, plain, _) = iommu(&[]);
    assert_eq!(code, 0);
    let (code, out, err) = iommu(&["--trace"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, plain, "the trace is not on stdout");
    let lines: Vec<&str> = err.lines().collect();
    let root = position(&lines, "├─ bus_set_iommu(bus=pci, driver=soft-iommu)");
    let add = position(&lines, "│ ├─ add_device(dev=0000:00:00.0)");
    let alloc = position(&lines, "│ │ │ │ ├─ iommu_group_alloc()");
    let logged = position(&lines, "│ │ │ │ · Adding device 0000:00:00.0 to group 0");
    assert!(root < add && add < alloc && alloc < logged);
    let map = lines
        .iter()
        .position(|l| l.starts_with("├─ iommu_map(") && l.contains("iova=0x1fe000"))
        .expect("the map");
    assert_eq!(
        lines[map + 1],
        "│ ├─ map_pages(iova=0x1fe000, pgsize=0x1000, count=2)"
    );
    assert_eq!(
        lines[map + 2],
        "│ ├─ map_pages(iova=0x200000, pgsize=0x200000, count=1)"
    );
    assert!(lines.iter().any(|l| l.starts_with("│ ├─ iotlb_sync(")));
    // Or to a file.
    let dir = scratch("trace");
    let file = dir.join("trace.txt");
    let (code, out, err) = iommu(&["run", "--trace-file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, plain);
    assert!(err.is_empty());
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("├─ bus_set_iommu("));
}

#[test]
fn groups_prints_the_listing_of_the_default_platform() {
    let (code, out, _) = iommu(&["groups", "--demo"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("IOMMU Group 0:\n\t00:00.0 Host bridge [0600]"));
    assert_eq!(out.matches("IOMMU Group ").count(), 13);
    assert!(out.contains("IOMMU Group 8:\n\t01:00.0 VGA compatible controller [0300]: iommu-rs Simulated GPU [0de5:0100]\n\t01:00.1 Audio device [0403]"));
    assert!(!out.contains("/sys"));
}

#[test]
fn explain_gives_each_shared_group_its_reasons() {
    let (code, out, _) = iommu(&["groups", "--demo", "--explain"]);
    assert_eq!(code, 0);
    assert!(out.contains(
        "IOMMU Group 5:\n\
         \t00:1c.0 PCI bridge [0604]: iommu-rs Simulated Root Port without ACS [0de5:001c]\n\
         \t04:00.0 PCI bridge [0604]: iommu-rs Simulated PCIe-to-PCI Bridge [0de5:0400]\n\
         \t05:01.0 Serial controller [0700]: iommu-rs Simulated UART [0de5:0500]\n\
         \t05:02.0 Parallel controller [0701]: iommu-rs Simulated Parallel Port [0de5:0501]\n\
         \twhy: 00:1c.0 (root port) has no ACS capability, so everything below it shares a group: 04:00.0, 05:01.0, 05:02.0\n\
         \twhy: 05:01.0 is behind a PCIe-to-PCI bridge, 04:00.0, and DMA appears to come from 04:00.0\n\
         \twhy: 05:02.0 is behind a PCIe-to-PCI bridge, 04:00.0, and DMA appears to come from 04:00.0\n"
    ), "{out}");
    assert!(out.contains(
        "\twhy: 01:00.0 and 01:00.1 are functions of one multifunction device without ACS (01:00.1 has no ACS capability)\n"
    ));
    // Groups of one device need no reason.
    assert!(out.contains("IOMMU Group 0:\n\t00:00.0 Host bridge [0600]: iommu-rs Simulated Root Complex [0de5:0001]\nIOMMU Group 1:"));
}

#[test]
fn explain_says_why_a_device_has_no_group() {
    // An Ampere root complex, a root port, a PCIe-to-PCI bridge and two
    // devices behind it: both carry the bridge's alias 02:00.0, one stream
    // id for two masters, which arm-smmu-v3 refuses for the second.
    let listing = "\
0000:00:00.0 Host bridge [0600]: Ampere Computing, LLC Altra PCI Express Root Complex A [1def:e100]

0000:00:01.0 PCI bridge [0604]: Ampere Computing, LLC Altra PCI Express Root Port a0 [1def:e101] (rev 04) (prog-if 00 [Normal decode])
\tBus: primary=00, secondary=01, subordinate=02, sec-latency=0
\tCapabilities: [70] Express (v2) Root Port (Slot+), MSI 00
\tCapabilities: [230 v1] Access Control Services
\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl+ DirectTrans+
\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-

0000:01:00.0 PCI bridge [0604]: ASPEED Technology, Inc. AST1150 PCI-to-PCI Bridge [1a03:1150] (rev 04) (prog-if 00 [Normal decode])
\tBus: primary=01, secondary=02, subordinate=02, sec-latency=32
\tCapabilities: [80] Express (v2) PCI-Express to PCI/PCI-X Bridge, MSI 00

0000:02:00.0 VGA compatible controller [0300]: ASPEED Technology, Inc. ASPEED Graphics Family [1a03:2000] (rev 41) (prog-if 00 [VGA controller])

0000:02:02.0 USB controller [0c03]: ASPEED Technology, Inc. Device [1a03:2603] (prog-if 20 [EHCI])
";
    let (code, out, err) = iommu_in(&["groups", "--lspci", "-", "--explain"], Some(listing));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\t01:00.0 PCI bridge [0604]: ASPEED Technology, Inc. AST1150 PCI-to-PCI Bridge [1a03:1150] (rev 04)\n\t02:00.0 VGA"),
        "{out}"
    );
    assert!(out.contains(
        "No group:\n\
         \t00:00.0 Host bridge [0600]: Ampere Computing, LLC Altra PCI Express Root Complex A [1def:e100]\n\
         \twhy: the Arm SMMU's ID mappings (IORT) leave out the root complex at device 0 function 0: 00:00.0\n\
         \t02:02.0 USB controller [0c03]: ASPEED Technology, Inc. Device [1a03:2603]\n\
         \twhy: 02:02.0's DMA carries requester id 02:00.0, already the stream id of 02:00.0, and arm-smmu-v3 takes one master per stream id, so it refuses 02:02.0 (`stream already in tree`) and the device has no group\n"
    ), "{out}");
    let (code, out, err) = iommu_in(&["groups", "--lspci", "-", "--json"], Some(listing));
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ungrouped = doc["ungrouped"].as_array().unwrap();
    assert_eq!(ungrouped.len(), 2);
    assert_eq!(ungrouped[1]["address"], "0000:02:02.0");
    assert_eq!(ungrouped[1]["clashes_with"], "0000:02:00.0");
    // Where every requester id is the device's own, all are grouped.
    let (code, out, err) = iommu_in(
        &["groups", "--lspci", "-", "--iommu", "generic", "--explain"],
        Some(listing),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("No group:"), "{out}");
}

#[test]
fn what_if_shows_the_groups_that_split_or_merge() {
    let (code, out, err) = iommu(&[
        "groups",
        "--demo",
        "--what-if",
        "pcie_acs_override=downstream",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("== what if: pcie_acs_override=downstream\n"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("5: 00:1c.0 04:00.0 05:01.0 05:02.0"))
        .expect("the group without ACS");
    assert!(row.contains("split"), "{row}");
    assert!(
        out.contains("(1 split, 12 unchanged of the groups before)"),
        "{out}"
    );
    let (code, out, _) = iommu(&["groups", "--demo", "--what-if", "disable ACS on 00:01.0"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("(2 merged, 11 unchanged of the groups before)"),
        "{out}"
    );
    let (code, _, err) = iommu(&["groups", "--demo", "--what-if", "move 01:00 to 06:00"]);
    assert_eq!(code, 2);
    assert!(err.contains("06:00.0 is taken"), "{err}");
    let (code, _, err) = iommu(&["groups", "--demo", "--what-if", "reboot"]);
    assert_eq!(code, 2);
    assert!(err.contains("move DEVICE to SLOT"), "{err}");
}

#[test]
fn passthrough_policy_makes_identity_default_domains() {
    let (code, out, _) = iommu(&["sysfs", "--demo", "--passthrough"]);
    assert_eq!(code, 0);
    assert!(out.contains("type: identity"));
    assert!(!out.contains("type: DMA"));
    let (_, lazy, _) = iommu(&["sysfs", "--demo", "--lazy"]);
    assert!(lazy.contains("type: DMA-FQ"));
}

#[test]
fn bad_arguments_exit_2_with_a_short_error() {
    let (code, out, err) = iommu(&["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
    assert!(err.len() < 400, "no full usage reprint: {err}");
    let (code, _, err) = iommu(&["groups", "--trace"]);
    assert_eq!(code, 2);
    assert!(err.contains("--trace"), "{err}");
    let (code, _, _) = iommu(&["groups", "--lspci", "a", "--topology", "b"]);
    assert_eq!(code, 2);
}

#[test]
fn help_and_version_are_there_per_command() {
    let (code, out, _) = iommu(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Usage: iommu [OPTIONS]") && out.contains("Commands:"),
        "{out}"
    );
    let (code, out, _) = iommu(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("iommu {}\n", env!("CARGO_PKG_VERSION")));
    for cmd in ["run", "groups", "sysfs", "vm", "fd", "bench"] {
        let (code, out, _) = iommu(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd}");
        assert!(out.contains(&format!("Usage: iommu {cmd}")), "{out}");
    }
}

#[test]
fn malformed_input_is_refused_with_file_line_and_reason() {
    let dir = scratch("bad-input");
    let f = dir.join("bad.txt");
    std::fs::write(
        &f,
        "00:01.0 PCI bridge [0604]: Sim [0de5:0002]\n\tBus: primary=00, secondary=zz, subordinate=01\n",
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let (code, out, err) = iommu(&["groups", "--lspci", path]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!("iommu: {path}:2: `secondary=` needs a two-digit hex bus\n")
    );
    let (code, _, err) = iommu(&["groups", "--lspci-x", path]);
    assert_eq!(code, 2);
    assert!(err.starts_with(&format!("iommu: {path}:2: ")), "{err}");
    let (code, _, err) = iommu(&["groups", "--topology", path]);
    assert_eq!(code, 2);
    assert!(err.starts_with(&format!("iommu: {path}:1: ")), "{err}");
    let (code, _, err) = iommu(&["groups", "--lspci", "/nonexistent/lspci.txt"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/lspci.txt"), "{err}");
    let (code, _, err) = iommu(&["groups", "--sysfs", dir.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("no PCI functions"), "{err}");
    let (code, _, err) = iommu_in(&["groups", "--lspci", "-"], Some("\tIOMMU group: 1\n"));
    assert_eq!(code, 2);
    assert!(err.starts_with("iommu: <stdin>:1: "), "{err}");
    let (code, _, err) = iommu(&[
        "groups",
        "--demo",
        "--cmdline",
        "pcie_acs_override=sideways",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("sideways"), "{err}");
}

#[test]
fn an_export_reads_in_the_real_lspci_with_every_group() {
    let dir = scratch("export");
    let root = dir.join("sys");
    let (code, out, err) = iommu(&["sysfs", "--demo", "--export", root.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("exported 20 devices in 13 groups to {}\n", root.display())
    );
    // Our groups, by address.
    let (_, listing, _) = iommu(&["groups", "--demo"]);
    let mut ours = std::collections::BTreeMap::new();
    let mut current = 0;
    for l in listing.lines() {
        if let Some(g) = l.strip_prefix("IOMMU Group ") {
            current = g.trim_end_matches(':').parse::<u32>().unwrap();
        } else if let Some(dev) = l.strip_prefix('\t') {
            ours.insert(dev.split(' ').next().unwrap().to_string(), current);
        }
    }
    // lspci -vv prints `IOMMU group: N` for each translated device.
    let text = lspci(&root, &["-vvnn"]);
    let mut seen = 0;
    let mut dev = String::new();
    for l in text.lines() {
        if !l.starts_with('\t') && !l.is_empty() {
            dev = l.split(' ').next().unwrap().to_string();
        }
        if let Some(g) = l.strip_prefix("\tIOMMU group: ") {
            assert_eq!(Some(&g.parse::<u32>().unwrap()), ours.get(&dev), "{dev}");
            seen += 1;
        }
    }
    assert_eq!(seen, ours.len());
    let headers = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('\t'))
        .count();
    assert_eq!(headers, 20, "every device listed");
    // The shell loop over kernel/iommu_groups lists the same groups.
    let script = format!(
        "for g in {}/kernel/iommu_groups/*; do echo \"IOMMU Group ${{g##*/}}:\"; \
         for d in $g/devices/*; do echo \"\t${{d##*/}}\"; done; done",
        root.display()
    );
    let sh = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let loop_out = String::from_utf8(sh.stdout).unwrap();
    let mut from_loop = std::collections::BTreeMap::new();
    for l in loop_out.lines() {
        if let Some(g) = l.strip_prefix("IOMMU Group ") {
            current = g.trim_end_matches(':').parse::<u32>().unwrap();
        } else if let Some(d) = l.strip_prefix("\t0000:") {
            from_loop.insert(d.to_string(), current);
        }
    }
    assert_eq!(from_loop, ours);
    // And the listing lspci prints of the export predicts the same
    // groups; only what the IOMMU covers is not in a listing (the BMC).
    let f = dir.join("lspci.txt");
    std::fs::write(&f, &text).unwrap();
    let (code, out, err) = iommu(&["groups", "--lspci", f.to_str().unwrap(), "--compare"]);
    assert_eq!(code, 1, "{out}{err}");
    let diffs: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(
        diffs,
        ["  06:00.0 has no group in the input (outside the IOMMU's scope?) but is predicted in one"],
        "{out}"
    );
    // A sysfs tree reads back the same way.
    let (code, out, err) = iommu(&["groups", "--sysfs", root.to_str().unwrap(), "--compare"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn listings_with_lspci_paths_read_as_the_plain_ones() {
    let dir = scratch("paths");
    let root = dir.join("sys");
    assert_eq!(
        iommu(&["sysfs", "--demo", "--export", root.to_str().unwrap()]).0,
        0
    );
    // The groups a listing gives, with each device's address, its
    // description and the kernel's group (all but the file's name).
    let groups_of = |flag: &str, args: &[&str], name: &str| -> serde_json::Value {
        let text = lspci(&root, args);
        let f = dir.join(name);
        std::fs::write(&f, &text).unwrap();
        let (code, out, err) = iommu(&["groups", flag, f.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{args:?}: {err}");
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_object_mut().unwrap().remove("source");
        assert_eq!(v["groups"].as_array().unwrap().len(), 14, "{args:?}");
        v
    };
    let plain = groups_of("--lspci", &["-vvnn"], "plain.txt");
    // The export puts 04:00.0 behind two bridges, so paths are three deep.
    let pp = lspci(&root, &["-PP", "-vvnn"]);
    assert!(pp.contains("\n00:1c.0/04:00.0/05:01.0 "), "{pp}");
    assert!(lspci(&root, &["-P", "-vvnn"]).contains("\n00:1c.0/00.0/01.0 "));
    for (args, name) in [
        (&["-P", "-vvnn"][..], "p.txt"),
        (&["-PP", "-vvnn"], "pp.txt"),
        (&["-P", "-D", "-vvnn"], "pd.txt"),
    ] {
        assert_eq!(groups_of("--lspci", args, name), plain, "{args:?}");
    }
    let dump = groups_of("--lspci-x", &["-xxxx"], "x.txt");
    for (args, name) in [
        (&["-P", "-xxxx"][..], "px.txt"),
        (&["-PP", "-xxxx"], "ppx.txt"),
    ] {
        assert_eq!(groups_of("--lspci-x", args, name), dump, "{args:?}");
    }
}

#[test]
fn compare_prints_every_difference_and_exits_1() {
    let dir = scratch("compare");
    let root = dir.join("sys");
    assert_eq!(
        iommu(&["sysfs", "--demo", "--export", root.to_str().unwrap()]).0,
        0
    );
    let text = lspci(&root, &["-vvnn"]);
    // Pretend the kernel put the NVMe drive with the NIC.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let nvme = lines
        .iter()
        .position(|l| l.starts_with("03:00.0 "))
        .unwrap();
    let g = lines[nvme..]
        .iter()
        .position(|l| l.starts_with("\tIOMMU group: "))
        .unwrap();
    lines[nvme + g] = "\tIOMMU group: 9".into();
    let f = dir.join("lspci.txt");
    std::fs::write(&f, lines.join("\n")).unwrap();
    let (code, out, _) = iommu(&["groups", "--lspci", f.to_str().unwrap(), "--compare"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("    kernel group 9: 02:00.0 03:00.0\n"),
        "{out}"
    );
    assert!(out.contains("    predicted:       02:00.0\n"), "{out}");
    assert!(out.contains("    predicted:       03:00.0\n"), "{out}");
    let (code, out, _) = iommu(&[
        "groups",
        "--lspci",
        f.to_str().unwrap(),
        "--compare",
        "--json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["comparison"]["same"], false);
    assert_eq!(v["version"], 3);
}

#[test]
fn a_hex_dump_survives_export_and_the_real_lspci_byte_for_byte() {
    let dump = pci_data("kvm-virtio-vm.lspci-xxxx.txt");
    let dir = scratch("roundtrip");
    let root = dir.join("sys");
    let (code, _, err) = iommu(&[
        "sysfs",
        "--lspci-x",
        &dump,
        "--export",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let back = lspci(&root, &["-xxxx"]);
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.len() > 4 && l.as_bytes()[2] == b':' && !l.contains('.'))
            .map(String::from)
            .collect()
    };
    let original = std::fs::read_to_string(&dump).unwrap();
    assert!(!rows(&original).is_empty());
    assert_eq!(rows(&original), rows(&back));
}

#[test]
fn dot_draws_groups_as_clusters_and_svg_renders_it() {
    let (code, out, _) = iommu(&["groups", "--demo", "--dot"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph pci {"));
    // Thirteen groups and the legend.
    assert_eq!(out.matches("subgraph cluster_").count(), 14);
    assert!(out.contains("subgraph cluster_legend"), "{out}");
    assert!(
        out.contains("\"0000:00:1c.0\" [label=\"00:1c.0  (root port)\\n"),
        "{out}"
    );
    assert!(
        out.contains("no ACS: shares its group\", color=red"),
        "missing ACS is marked"
    );
    assert!(out.contains("\"0000:00:1c.0\" -> \"0000:04:00.0\";"));
    let dir = scratch("svg");
    let svg = dir.join("groups.svg");
    let (code, _, err) = iommu(&["groups", "--demo", "--svg", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err} (Graphviz's dot must be installed)");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "{text}");
    assert!(text.contains("group 5"));
}

#[test]
fn json_has_a_version_on_every_listing_command() {
    for args in [
        &["groups", "--demo", "--json", "--explain"][..],
        &["sysfs", "--demo", "--json"],
        &["run", "--json"],
    ] {
        let (code, out, err) = iommu(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["version"], 3, "{args:?}");
    }
    let (_, out, _) = iommu(&["groups", "--demo", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let g5 = &v["groups"][5];
    assert_eq!(g5["id"], 5);
    assert_eq!(g5["devices"][0]["address"], "0000:00:1c.0");
    assert_eq!(g5["reasons"][0]["rule"], "no-acs-path");
    assert_eq!(g5["reasons"][0]["device"], "0000:00:1c.0");
}

#[test]
fn bench_pgtable_json_reports_every_workload() {
    let (code, out, err) = iommu(&[
        "bench",
        "pgtable",
        "--json",
        "--quick",
        "--format",
        "vtd-sl-4level",
        "--format",
        "arm-lpae-s1-4k",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["benchmark"], "pgtable");
    assert_eq!(v["version"], 3);
    assert_eq!(v["table_rounds"], 1000);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["format"], "vtd-sl-4level");
    for r in results {
        for w in [
            "map_4k",
            "unmap_4k",
            "map_256x4k",
            "unmap_256x4k",
            "iova_to_phys",
            "map_1g_as_2m",
        ] {
            let s = &r["workloads"][w];
            let (median, p99, min) = (
                s["median"].as_f64().unwrap(),
                s["p99"].as_f64().unwrap(),
                s["min"].as_f64().unwrap(),
            );
            assert!(median > 0.0 && median.is_finite(), "{w}: {median}");
            assert!(min <= median && median <= p99, "{w}: {min} {median} {p99}");
            assert!(s["samples"].as_u64().unwrap() >= 10);
        }
        // 4 KiB tables of 512 entries: 8 bytes per page plus the upper levels.
        let bytes = r["table_bytes_per_4k_page"].as_f64().unwrap();
        assert!((8.0..8.1).contains(&bytes), "{bytes}");
        // A block over an emptied table costs no table memory over time.
        let pages = r["table_pages_after_rounds"].as_u64().unwrap();
        assert!((3..=5).contains(&pages), "{pages}");
    }
}

#[test]
fn bench_pgtable_refuses_an_unknown_format() {
    let (code, _, err) = iommu(&["bench", "pgtable", "--quick", "--format", "sparc"]);
    assert_eq!(code, 2, "bad usage");
    assert!(err.contains("'sparc'") && err.contains("amd-v1"), "{err}");
}

#[test]
fn bench_dma_json_reports_both_modes_the_speedup_and_the_iova_allocator() {
    let (code, out, err) = iommu(&["bench", "dma", "--threads", "2", "--json", "--quick"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["benchmark"], "dma");
    assert_eq!(v["threads"], 2);
    let runs = v["runs"].as_array().unwrap();
    let modes: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["mode"].as_str().unwrap().to_string(),
                r["threads"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("strict".into(), 1),
            ("strict".into(), 2),
            ("lazy".into(), 1),
            ("lazy".into(), 2)
        ]
    );
    for r in runs {
        for k in ["map", "unmap"] {
            let median = r[k]["median"].as_f64().unwrap();
            assert!(median > 0.0 && median.is_finite(), "{k}: {median}");
            assert!(r[k]["p99"].as_f64().unwrap() >= median);
            assert!(r[k]["min"].as_f64().unwrap() <= median);
            assert!(r[k]["samples"].as_u64().unwrap() > 0);
        }
        assert!(r["pairs_per_sec"].as_f64().unwrap() > 0.0);
    }
    assert!(v["speedup"]["strict"].as_f64().unwrap() > 0.0);
    for k in ["alloc_free_cache_hit", "alloc_free_tree_50pct_fragmented"] {
        assert!(v["iova"][k]["median"].as_f64().unwrap() > 0.0, "{k}");
    }
}

#[test]
fn bench_dma_refuses_bad_thread_counts_and_foreign_flags() {
    let (code, _, err) = iommu(&["bench", "dma", "--threads", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--threads"), "{err}");
    let (code, _, err) = iommu(&["bench", "dma", "--format", "amd-v1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn bench_pci_reports_every_size_and_grows_near_linearly() {
    let (code, out, err) = iommu(&["bench", "pci", "--json", "--quick"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["benchmark"], "pci");
    let sizes = v["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 5);
    assert!(sizes[0]["functions"].as_u64().unwrap() >= 256);
    assert!(sizes[4]["functions"].as_u64().unwrap() >= 4096);
    for s in sizes {
        assert!(s["group_us"]["median"].as_f64().unwrap() > 0.0);
        assert!(s["parse_us"]["median"].as_f64().unwrap() > 0.0);
        assert!(s["groups"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_closed_pipe_ends_the_tool_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    for args in [&["--trace"][..], &["sysfs", "--demo"][..], &[][..]] {
        for _ in 0..3 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_iommu"))
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run iommu");
            let mut first = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            // The reader is gone now, as after `| head -1`.
            let out = child.wait_with_output().unwrap();
            assert!(!first.is_empty());
            assert_eq!(out.status.code(), Some(0), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("iommu:"), "no error message: {err}");
        }
    }
}

#[test]
fn bench_dma_throughput_is_operations_over_the_common_window() {
    // Many more threads than cores: one after another they add nothing, so
    // the speedup cannot be near the thread count.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (code, out, err) = iommu(&["bench", "dma", "--threads", "32", "--json", "--quick"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    for mode in ["strict", "lazy"] {
        let s = v["speedup"][mode].as_f64().unwrap();
        assert!(s > 0.0 && s <= 2.0 * cores, "{mode}: {s}x on {cores} cores");
    }
}

#[test]
fn vm_shows_the_wire_the_fault_events_and_the_guests_groups() {
    let (code, out, err) = iommu(&["vm"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let probe = position(&lines, "  wire: PROBE endpoint 0x10 -> OK");
    let attach = position(&lines, "  wire: ATTACH endpoint 0x10 to domain 0 -> OK");
    assert!(probe < attach);
    let map = lines
        .iter()
        .position(|l| l.starts_with("  wire: MAP domain 0 [") && l.ends_with("-> 0x400000 R -> OK"))
        .expect("the virtio-net's MAP, read-only");
    let read = lines
        .iter()
        .position(|l| l.starts_with("  the device reads \"a packet the guest sends\" at IOVA "))
        .expect("the device's read");
    assert!(map < read);
    assert!(out.contains("the CPU finds \"sector 0 of the disk\" at 0x800000"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("  wire: UNMAP domain 1 [")));
    assert!(out.contains("core: domain 2 reports a Write fault of 0000:00:03.0"));
    assert!(out.contains("0 refused"));
    // The assigned drive: its MAP goes on to the host's page tables, and
    // its UNMAP takes it out of them.
    assert!(out.contains(
        "mapped: the host IOMMU translates the drive's write at 0xfffffffff234 to 0xc01234"
    ));
    assert!(out.contains("unmapped: the host IOMMU refuses the drive's write at 0xfffffffff234"));
    let groups = position(&lines, "== The guest's IOMMU groups");
    assert_eq!(lines[groups + 1], "IOMMU Group 0:");
    assert!(lines[groups + 2].starts_with("\t00:02.0 Ethernet controller"));
    // The call tree goes from the DMA API down to the request and back.
    let (code, traced, err) = iommu(&["vm", "--trace"]);
    assert_eq!(code, 0);
    assert_eq!(traced, out, "the trace is not on stdout");
    let tl: Vec<&str> = err.lines().collect();
    let dma = tl
        .iter()
        .position(|l| l.starts_with("├─ dma_map_single(dev=0000:00:02.0"))
        .expect("dma_map_single");
    assert!(tl[dma + 1].starts_with("│ ├─ iommu_map("));
    assert!(tl[dma + 3].contains("queued request=MAP domain 0"));
    assert!(tl[dma + 4].starts_with("│ │ ├─ viommu_sync_req("));
    assert!(tl[dma + 5].contains("device: MAP domain 0"));
    // JSON, and the other policies and doorbells.
    let (code, json, _) = iommu(&["vm", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["command"], "vm");
    assert_eq!(v["groups"].as_array().unwrap().len(), 3);
    let (code, out, _) = iommu(&["vm", "--passthrough", "--arch", "arm"]);
    assert_eq!(code, 0);
    assert!(out.contains("ATTACH endpoint 0x10 to domain 0 BYPASS -> OK"));
    assert!(out.contains("reserved 0x8080000-0x809ffff msi"));
    let (code, out, _) = iommu(&["vm", "--lazy"]);
    assert_eq!(code, 0);
    assert!(out.contains("the flush queue drains:"));
    assert!(out.contains("refused (IOMMU failed to translate"));
}

#[test]
fn run_on_the_smmuv3_tells_the_same_story_as_on_the_soft_iommu() {
    let (code, soft, _) = iommu(&["run"]);
    assert_eq!(code, 0);
    let (code, smmu, err) = iommu(&["run", "--iommu", "smmuv3"]);
    assert_eq!(code, 0, "{err}");
    let differ: Vec<(&str, &str)> = soft
        .lines()
        .zip(smmu.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(soft.lines().count(), smmu.lines().count());
    // Only the platform's name and what a blocked domain does differ: an
    // SMMU's abort STE terminates without recording a fault.
    assert_eq!(differ.len(), 2, "{differ:#?}");
    assert!(differ[0].1.contains("emulated Arm SMMUv3"));
    assert!(differ[1].1.ends_with("fault: aborted, nothing recorded"));
}

#[test]
fn run_on_the_smmuv3_traces_the_commands_and_fetches_under_the_core_calls() {
    let (code, _, trace) = iommu(&["run", "--iommu", "smmuv3", "--trace"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = trace.lines().collect();
    let sync = lines
        .iter()
        .position(|l| l.ends_with("├─ iotlb_sync(size=0x204000)"))
        .expect("the unmap's iotlb_sync");
    assert!(
        lines[sync + 1].contains("· smmu cmdq: TLBI_NH_VA asid="),
        "{}",
        lines[sync + 1]
    );
    assert!(
        lines[sync + 1].starts_with("│ │ "),
        "nested under iotlb_sync"
    );
    assert!(trace.contains("smmu cmdq: CMD_SYNC"));
    assert!(trace.contains("smmu: fetch STE of stream 0x300"));
    assert!(trace.contains("smmu evtq: F_TRANSLATION stream 0x300 iova 0x200123"));
    assert!(trace.contains("smmu cmdq: CFGI_STE sid=0x300"));
}

#[test]
fn run_on_the_vtd_tells_the_same_story_but_for_what_vt_d_records_and_reserves() {
    let (code, soft, _) = iommu(&["run"]);
    assert_eq!(code, 0);
    let (code, vtd, err) = iommu(&["run", "--iommu", "vtd"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(soft.lines().count(), vtd.lines().count());
    let differ: Vec<(&str, &str)> = soft
        .lines()
        .zip(vtd.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert!(differ[0].1.contains("emulated Intel VT-d"));
    // A fault record holds the page, not the byte.
    assert!(differ[1]
        .1
        .ends_with("fault handler: domain #11 0000:03:00.0 0x200000 Read"));
    // The interrupt range x86 never translates, instead of a software MSI
    // window; nothing else.
    for (s, v) in &differ[2..] {
        assert!(
            s.contains("0x0000000008000000 0x00000000080fffff msi")
                && v.contains("0x00000000fee00000 0x00000000feefffff msi")
                || s.contains("0x0000000008000000") != v.contains("0x00000000fee00000"),
            "{s}\n{v}"
        );
    }
}

#[test]
fn run_on_the_vtd_traces_descriptors_and_walks_under_the_core_calls() {
    let (code, _, trace) = iommu(&["run", "--iommu", "vtd", "--trace"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = trace.lines().collect();
    let sync = lines
        .iter()
        .position(|l| l.ends_with("├─ iotlb_sync(size=0x204000)"))
        .expect("the unmap's iotlb_sync");
    assert!(
        lines[sync + 1].contains("qi: IOTLB invalidate, domain"),
        "{}",
        lines[sync + 1]
    );
    assert!(
        lines[sync + 1].starts_with("│ │ "),
        "nested under iotlb_sync"
    );
    assert!(lines[sync + 2].contains("qi: invalidation wait"));
    assert!(trace.contains("vtd dmar1: fetch context entry of 03:00.0"));
    // The GPU sits behind the DMAR's graphics unit, the NVMe drive behind
    // the INCLUDE_PCI_ALL one: each unit reads only its own devices' entries.
    assert!(trace.contains("vtd dmar0: fetch context entry of 01:00.0"));
    assert!(!trace.contains("vtd dmar1: fetch context entry of 01:00.0"));
    assert!(!trace.contains("vtd dmar0: fetch context entry of 03:00.0"));
    assert!(trace.contains("vtd dmar1 fault: reason 0x6 source 0x300 address 0x200123"));
    assert!(trace.contains("vtd dmar1 fault: reason 0x2 source 0x200"));
}

#[test]
fn run_on_the_vtd_in_scalable_mode_uses_first_stage_tables_and_pasid_invalidation() {
    let (code, legacy, _) = iommu(&["run", "--iommu", "vtd"]);
    assert_eq!(code, 0);
    let (code, sm, err) = iommu(&["run", "--iommu", "vtd-sm"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(legacy.lines().count(), sm.lines().count());
    assert!(sm.contains(
        "in scalable mode (each with root, context and PASID tables, first-stage tables"
    ));
    // The same story; first-stage leaves carry no snoop (cache) bit.
    for (l, s) in legacy.lines().zip(sm.lines()).skip(2) {
        assert_eq!(l.replace("|CACHE", ""), s, "{l}\n{s}");
    }
    let (code, _, trace) = iommu(&["run", "--iommu", "vtd-sm", "--trace"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = trace.lines().collect();
    let sync = lines
        .iter()
        .position(|l| l.ends_with("├─ iotlb_sync(size=0x204000)"))
        .expect("the unmap's iotlb_sync");
    assert!(
        lines[sync + 1].contains("qi: PASID-based IOTLB invalidate, domain"),
        "{}",
        lines[sync + 1]
    );
    // First-stage faults: not present (71h), write to a read-only page
    // (85h); a blocked device has no PASID entry (59h).
    assert!(trace.contains("vtd dmar1 fault: reason 0x71 source 0x300 address 0x200123"));
    assert!(trace.contains("vtd dmar1 fault: reason 0x85 source 0x300 address 0x600000"));
    assert!(trace.contains("vtd dmar1 fault: reason 0x59 source 0x200"));
}

#[test]
fn fd_passes_the_nic_through_and_reports_the_dirty_pages_of_a_migration() {
    let (code, out, err) = iommu(&["fd"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let bind = position(&lines, "  VFIO_DEVICE_BIND_IOMMUFD 0000:02:00.0: device id 1; its group 9 is owned by the context, on its blocking domain");
    assert!(out.contains("IOMMU_GET_HW_INFO: capabilities 0x9 (dirty tracking: yes)"));
    let landed = lines
        .iter()
        .position(|l| l.ends_with("the guest's RAM holds \"packet\""))
        .expect("the device's write lands in the guest's RAM");
    assert!(bind < landed);
    assert!(out.contains("IOMMU_HWPT_GET_DIRTY_BITMAP: dirty guest pages [3, 200, 201]"));
    assert!(out.contains("IOMMU_HWPT_GET_DIRTY_BITMAP again: [] (read and cleared)"));
    assert!(out.contains("device DMA write at IOVA 0x80001234: translation fault"));
    assert!(out.contains("its group back on its default domain (DMA)"));
    // The core's calls appear under each ioctl.
    let (code, traced, err) = iommu(&["fd", "--trace"]);
    assert_eq!(code, 0);
    assert_eq!(traced, out, "the trace is not on stdout");
    let tl: Vec<&str> = err.lines().collect();
    let map = tl
        .iter()
        .position(|l| l.starts_with("├─ ioctl(cmd=IOMMU_IOAS_MAP)"))
        .expect("the IOAS_MAP ioctl");
    assert!(
        tl[map + 1].starts_with("│ ├─ iommu_map(domain="),
        "{}",
        tl[map + 1]
    );
    let unmap = tl
        .iter()
        .position(|l| l.starts_with("├─ ioctl(cmd=IOMMU_IOAS_UNMAP)"))
        .expect("the IOAS_UNMAP ioctl");
    assert!(
        tl[unmap + 1].starts_with("│ ├─ iommu_unmap("),
        "{}",
        tl[unmap + 1]
    );
    let (code, json, _) = iommu(&["fd", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["command"], "fd");
    assert!(v["steps"].as_array().unwrap().len() > 10);
}
