//! The firmware's tables. The DMAR on an Intel machine: its RMRRs become
//! the `direct` reserved regions Linux reports, the functions no VT-d unit
//! covers get no group, a sysfs tree's own table is read without being
//! asked, and a file that is not a DMAR is refused. The IVRS on an AMD
//! machine: its aliases join groups, its unity ranges are `direct`
//! regions, the functions no IOMMU translates get no group.

mod common;

use common::{iommu, scratch};
use iommu_firmware::dmar::{DeviceScope, Dmar, Drhd, Remapping, Rmrr};
use iommu_firmware::ivrs::{Block, DeviceEntry, Ivhd, Ivmd, Ivrs};

/// Graphics, USB, a root port with a NIC behind it, the LPC bridge, SMBus.
const TOPOLOGY: &str = "\
00:00.0 host-bridge
00:02.0 rc-endpoint id=8086:3e92 class=030000
00:14.0 rc-endpoint id=8086:a36d class=0c0330
00:1c.0 root-port buses=01-01 acs=SV,RR,CR,UF
01:00.0 endpoint id=10ec:8168 class=0200
00:1f.0 rc-endpoint id=8086:a30e class=0601 multifunction
00:1f.4 rc-endpoint id=8086:a323 class=0c05
";

/// A laptop's table: a unit for the graphics, one for everything else
/// (unless `gfx_only`), RMRRs for the graphics' stolen memory, the USB
/// controller's legacy emulation and (a firmware bug seen in the wild) a
/// root port's subtree.
fn dmar(gfx_only: bool) -> Vec<u8> {
    let mut d = Dmar::new(38);
    d.push(Remapping::Drhd(Drhd {
        flags: 0,
        size: 0,
        segment: 0,
        register_base: 0xfed9_0000,
        scopes: vec![DeviceScope::endpoint(0, 2, 0)],
    }));
    if !gfx_only {
        d.push(Remapping::Drhd(Drhd {
            flags: Drhd::INCLUDE_PCI_ALL,
            size: 0,
            segment: 0,
            register_base: 0xfed9_1000,
            scopes: vec![DeviceScope::ioapic(2, 0, 0xf8)],
        }));
    }
    for (base, limit, scope) in [
        (0x3c00_0000, 0x3fff_ffff, DeviceScope::endpoint(0, 2, 0)),
        (0x3b8e_0000, 0x3b8f_ffff, DeviceScope::endpoint(0, 0x14, 0)),
        (0x3a00_0000, 0x3a00_ffff, DeviceScope::bridge(0, 0x1c, 0)),
    ] {
        d.push(Remapping::Rmrr(Rmrr {
            segment: 0,
            base,
            limit,
            scopes: vec![scope],
        }));
    }
    d.to_bytes(*b"TESTOE", *b"LAPTOP01", 1)
}

fn files(name: &str, gfx_only: bool) -> (std::path::PathBuf, String, String) {
    let dir = scratch(name);
    let topo = dir.join("laptop.topo");
    let table = dir.join("dmar.bin");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    std::fs::write(&table, dmar(gfx_only)).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    (dir.clone(), s(&topo), s(&table))
}

/// The `reserved_regions` lines of `device`'s group in `iommu sysfs` output.
fn regions(sysfs: &str, device: &str) -> Vec<String> {
    // Under kernel/iommu_groups, each group lists its devices before its
    // reserved regions.
    let groups = &sysfs[sysfs.find("iommu_groups/").expect("the groups")..];
    let at = groups
        .find(&format!("{device} ->"))
        .unwrap_or_else(|| panic!("{device} in\n{sysfs}"));
    let rest = &groups[at..];
    let end = rest.find("type:").expect("the group's type line");
    rest[..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("reserved_regions:").trim();
            let l = l.trim_start_matches('|').trim();
            l.starts_with("0x").then(|| l.to_string())
        })
        .collect()
}

#[test]
fn rmrrs_become_direct_regions_relaxable_only_for_usb_and_graphics() {
    let (_dir, topo, table) = files("dmar-rmrr", false);
    let (code, out, err) = iommu(&["sysfs", "--topology", &topo, "--dmar", &table]);
    assert_eq!(code, 0, "{err}");
    let msi = "0x00000000fee00000 0x00000000feefffff msi".to_string();
    assert_eq!(
        regions(&out, "0000:00:02.0"),
        [
            "0x000000003c000000 0x000000003fffffff direct-relaxable".to_string(),
            msi.clone()
        ]
    );
    assert_eq!(
        regions(&out, "0000:00:14.0"),
        [
            "0x000000003b8e0000 0x000000003b8fffff direct-relaxable".to_string(),
            msi.clone()
        ]
    );
    // A bridge scope: the port itself and what is below it, not relaxable.
    for dev in ["0000:00:1c.0", "0000:01:00.0"] {
        assert_eq!(
            regions(&out, dev),
            [
                "0x000000003a000000 0x000000003a00ffff direct".to_string(),
                msi.clone()
            ],
            "{dev}"
        );
    }
    assert_eq!(regions(&out, "0000:00:1f.4"), [msi]);
    // Without the table: none of the RMRR ranges.
    let (code, plain, _) = iommu(&["sysfs", "--topology", &topo, "--iommu", "intel-vtd"]);
    assert_eq!(code, 0);
    for rmrr in [
        "0x000000003c000000",
        "0x000000003b8e0000",
        "0x000000003a000000",
    ] {
        assert!(!plain.contains(rmrr), "{rmrr}");
    }
}

#[test]
fn functions_no_unit_covers_get_no_group_and_the_note_says_so() {
    let (_dir, topo, table) = files("dmar-uncovered", true);
    let (code, out, err) = iommu(&["groups", "--topology", &topo, "--dmar", &table]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("00:02.0"), "{out}");
    for dev in ["00:14.0", "00:1c.0", "01:00.0", "00:1f.0", "00:1f.4"] {
        assert!(!out.contains(dev), "{dev} has no unit:\n{out}");
    }
    assert!(
        err.contains("no IOMMU covers 6 functions; Linux gives them no group"),
        "{err}"
    );
}

#[test]
fn a_sysfs_tree_with_a_dmar_is_read_with_it() {
    let (dir, topo, table) = files("dmar-sysfs", false);
    let root = dir.join("sys");
    let root_s = root.to_str().unwrap();
    let (code, _, err) = iommu(&["sysfs", "--topology", &topo, "--export", root_s]);
    assert_eq!(code, 0, "{err}");
    let tables = root.join("firmware/acpi/tables");
    std::fs::create_dir_all(&tables).unwrap();
    std::fs::copy(&table, tables.join("DMAR")).unwrap();
    let (code, out, err) = iommu(&["sysfs", "--sysfs", root_s]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        regions(&out, "0000:01:00.0")[0],
        "0x000000003a000000 0x000000003a00ffff direct"
    );
    // A tree whose table does not parse is read without it, said so.
    std::fs::write(tables.join("DMAR"), b"DMAR").unwrap();
    let (code, out, err) = iommu(&["sysfs", "--sysfs", root_s]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("0x000000003a000000"));
    assert!(
        err.contains("DMAR: truncated") && err.contains("predicting without it"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_dmar_is_refused_naming_it() {
    let (dir, topo, table) = files("dmar-bad", false);
    let wrong = dir.join("wrong.bin");
    std::fs::write(&wrong, b"IVRS and then some bytes that are no table").unwrap();
    let mut cut = std::fs::read(&table).unwrap();
    cut.truncate(60);
    let short = dir.join("short.bin");
    std::fs::write(&short, &cut).unwrap();
    for (f, why) in [
        (wrong.to_str().unwrap(), "signature \"IVRS\", not \"DMAR\""),
        (short.to_str().unwrap(), "truncated"),
        ("/nonexistent/dmar.bin", "No such file"),
    ] {
        let (code, out, err) = iommu(&["groups", "--topology", &topo, "--dmar", f]);
        assert_eq!(code, 2, "{f}: {out}");
        assert!(out.is_empty());
        assert!(err.contains(f) && err.contains(why), "{err}");
    }
}

#[test]
fn a_device_the_firmware_keeps_doing_dma_for_cannot_go_to_vfio() {
    let (_dir, topo, table) = files("dmar-vfio", false);
    let (code, out, err) = iommu(&[
        "groups",
        "--topology",
        &topo,
        "--dmar",
        &table,
        "--vfio",
        "01:00.0",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Viable now: no, whatever is bound: the firmware asks for 1:1 mappings (RMRRs, `direct` reserved regions) of 01:00.0 at 0x3a000000-0x3a00ffff; Linux refuses to block such a device's DMA, so VFIO's claim fails with EINVAL."),
        "{out}"
    );
    let (_, json, _) = iommu(&[
        "groups",
        "--topology",
        &topo,
        "--dmar",
        &table,
        "--vfio",
        "01:00.0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["vfio"]["viable_now"], false);
    assert_eq!(
        v["vfio"]["firmware_direct"],
        serde_json::json!([{"address": "0000:01:00.0", "regions": ["0x3a000000-0x3a00ffff"]}])
    );
    // A USB controller's RMRR is relaxable: it does not stand in the way.
    let (_, out, _) = iommu(&[
        "groups",
        "--topology",
        &topo,
        "--dmar",
        &table,
        "--vfio",
        "00:14.0",
    ]);
    assert!(!out.contains("firmware asks"), "{out}");
}

/// An AMD machine: its IOMMU at 00:00.2, three integrated functions.
const AMD_TOPOLOGY: &str = "\
00:00.0 host-bridge id=1022:14d8
00:00.2 rc-endpoint id=1022:14d9 class=0806
00:08.0 rc-endpoint id=1022:14dd class=0c0330
00:09.0 rc-endpoint id=1022:14de class=0c0330
00:0a.0 rc-endpoint id=1022:14df class=0c0330
";

/// Its IVRS: one IOMMU (a 40h block) translating 00:00.0-00:09.7, where
/// 00:09.0's requests carry 00:08.0's id, and a unity range for 00:09.0;
/// 00:0a.0 is outside every entry.
fn ivrs() -> Vec<u8> {
    Ivrs {
        ivinfo: 0x0020_3041,
        reserved: 0,
        blocks: vec![
            Block::Ivhd(Ivhd {
                ty: 0x40,
                flags: 0xb0,
                devid: 0x0002,
                capability_offset: 0x40,
                base: 0xfd20_0000,
                segment: 0,
                info: 0,
                attributes: 0,
                efr: 0,
                efr2: 0,
                entries: vec![
                    DeviceEntry::Start {
                        devid: 0x0000,
                        dte: 0,
                    },
                    DeviceEntry::End { devid: 0x0047 },
                    DeviceEntry::AliasSelect {
                        devid: 0x0048,
                        dte: 0,
                        alias: 0x0040,
                    },
                ],
            }),
            Block::Ivmd(Ivmd {
                ty: 0x21,
                flags: 0x7,
                devid: 0x0048,
                aux: 0,
                segment: 0,
                start: 0x9d00_0000,
                length: 0x20_0000,
            }),
        ],
    }
    .to_bytes(*b"TESTOE", *b"AMDBOARD", 1)
}

#[test]
fn an_ivrs_alias_joins_groups_its_unity_range_is_direct_and_uncovered_functions_have_none() {
    let dir = scratch("ivrs");
    let topo = dir.join("amd.topo");
    let table = dir.join("ivrs.bin");
    std::fs::write(&topo, AMD_TOPOLOGY).unwrap();
    std::fs::write(&table, ivrs()).unwrap();
    let (topo, table) = (topo.to_str().unwrap(), table.to_str().unwrap());
    // Without the table each function is alone.
    let (code, out, _) = iommu(&["groups", "--topology", topo, "--iommu", "amd-vi"]);
    assert_eq!(code, 0);
    let group_of = |out: &str, dev: &str| {
        let at = out.find(dev).unwrap_or_else(|| panic!("{dev} in\n{out}"));
        out[..at]
            .rfind("IOMMU Group ")
            .map(|g| out[g..].split(':').next().unwrap().to_string())
    };
    assert_ne!(group_of(&out, "00:08.0"), group_of(&out, "00:09.0"));
    // With it (the IOMMU kind follows from the table): 00:09.0 issues DMA
    // as 00:08.0, so they share a group; 00:0a.0 has none.
    let (code, out, err) = iommu(&["groups", "--topology", topo, "--ivrs", table]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        group_of(&out, "00:08.0"),
        group_of(&out, "00:09.0"),
        "{out}"
    );
    assert!(!out.contains("00:0a.0"), "{out}");
    // 00:0a.0, and the IOMMU's own function, which it does not translate.
    assert!(err.contains("no IOMMU covers 2 functions;"), "{err}");
    // The unity range is a direct region of the shared group: no VFIO.
    let (code, sysfs, _) = iommu(&["sysfs", "--topology", topo, "--ivrs", table]);
    assert_eq!(code, 0);
    assert!(
        regions(&sysfs, "0000:00:09.0")
            .contains(&"0x000000009d000000 0x000000009d1fffff direct".to_string()),
        "{sysfs}"
    );
    let (_, out, _) = iommu(&[
        "groups",
        "--topology",
        topo,
        "--ivrs",
        table,
        "--vfio",
        "00:08.0",
    ]);
    assert!(out.contains("the firmware asks for 1:1 mappings"), "{out}");
}
