//! The `iommu` binary as a user runs it.

use std::process::Command;

fn iommu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iommu"))
        .args(args)
        .output()
        .expect("run iommu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

fn position(lines: &[&str], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| *l == needle)
        .unwrap_or_else(|| panic!("no line {needle:?} in\n{}", lines.join("\n")))
}

#[test]
fn default_run_maps_translates_unmaps_and_prints_groups_then_sysfs() {
    let (code, out, err) = iommu(&[]);
    assert_eq!(code, 0, "{err}");
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
fn trace_prints_the_path_through_core_and_driver_as_a_tree() {
    let (code, out, err) = iommu(&["--trace"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let root = position(&lines, "├─ bus_set_iommu(bus=pci, driver=soft-iommu)");
    let add = position(&lines, "│ ├─ add_device(dev=0000:00:00.0)");
    let alloc = position(&lines, "│ │ │ │ ├─ iommu_group_alloc()");
    let attach = position(
        &lines,
        "│ │ │ │ ├─ attach_dev(domain=1, ty=DMA, dev=0000:00:00.0)",
    );
    let logged = position(&lines, "│ │ │ │ · Adding device 0000:00:00.0 to group 0");
    assert!(root < add && add < alloc && alloc < attach && attach < logged);
    let map = position(&lines, "├─ iommu_map(domain=7, iova=0x1fe000, paddr=0x4001fe000, size=0x204000, prot=READ|WRITE|CACHE)");
    assert_eq!(
        lines[map + 1],
        "│ ├─ map_pages(iova=0x1fe000, pgsize=0x1000, count=2)"
    );
    assert_eq!(
        lines[map + 2],
        "│ ├─ map_pages(iova=0x200000, pgsize=0x200000, count=1)"
    );
    assert_eq!(
        lines[map + 3],
        "│ ├─ map_pages(iova=0x400000, pgsize=0x1000, count=2)"
    );
    let unmap = position(
        &lines,
        "├─ iommu_unmap(domain=7, iova=0x1fe000, size=0x204000)",
    );
    assert!(lines[unmap + 1].starts_with("│ ├─ unmap_pages(iova=0x1fe000"));
    assert!(lines.iter().any(|l| l.starts_with("│ ├─ iotlb_sync(")));
}

#[test]
fn groups_command_prints_only_the_listing() {
    let (code, out, _) = iommu(&["groups"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("IOMMU Group 0:\n\t00:00.0 Host bridge [0600]"));
    assert_eq!(out.matches("IOMMU Group ").count(), 7);
    assert!(!out.contains("/sys"));
}

#[test]
fn passthrough_policy_makes_identity_default_domains() {
    let (code, out, _) = iommu(&["sysfs", "--passthrough"]);
    assert_eq!(code, 0);
    assert!(out.contains("type: identity"));
    assert!(!out.contains("type: DMA"));
    let (_, lazy, _) = iommu(&["sysfs", "--lazy"]);
    assert!(lazy.contains("type: DMA-FQ"));
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let (code, out, err) = iommu(&["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("unknown argument '--frobnicate'") && err.contains("usage: iommu"));
    let (code, _, err) = iommu(&["groups", "--trace"]);
    assert_eq!(code, 2);
    assert!(err.contains("--trace goes with the run command"));
}

#[test]
fn help_prints_usage() {
    let (code, out, _) = iommu(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("usage: iommu"));
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
    assert_eq!(v["version"], 2);
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
    assert_eq!(code, 1);
    assert!(err.contains("unknown format 'sparc'"), "{err}");
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
fn a_closed_pipe_ends_the_tool_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    for args in [&["--trace"][..], &["sysfs"][..], &[][..]] {
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
            assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
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
