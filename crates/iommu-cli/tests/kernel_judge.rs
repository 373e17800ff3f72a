//! The real Linux kernel as the judge of the prediction.
//!
//! Each directory under `tests/data/kernel/` is one boot of Debian's Linux
//! 6.12 on a PCI machine QEMU built (made by `judge/linux-groups/judge.py`):
//! the QEMU devices and kernel command line (`machine.json`), what the
//! guest's `lspci -vvvnn` and `lspci -xxxx` printed, and every group of its
//! `/sys/kernel/iommu_groups` with `type` and `reserved_regions`
//! (`iommu-groups.txt`). `iommu sysfs` is run on both listings with the
//! machine's IOMMU and the guest's whole `/proc/cmdline`, and must give the
//! kernel's groups: the same devices together, the same default domain
//! type, the same reserved regions.
//!
//! `IOMMU_KERNEL_JUDGE_DIRS` (directories separated by `:`) adds more runs,
//! as `judge.py many` does for the machines it generates.

mod common;

use common::iommu;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One IOMMU group as sysfs shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Group {
    kind: String,
    reserved: Vec<String>,
    devices: BTreeSet<String>,
}

/// The kernel's groups, from the guest's listing of
/// /sys/kernel/iommu_groups.
fn kernel_groups(text: &str) -> Result<BTreeMap<u32, Group>, String> {
    let mut groups = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        if key == "group" {
            let id = value
                .parse()
                .map_err(|_| format!("bad group line `{line}`"))?;
            groups.insert(id, Group::default());
            current = Some(id);
            continue;
        }
        let g = current
            .and_then(|id| groups.get_mut(&id))
            .ok_or_else(|| format!("`{line}` before any group"))?;
        match key {
            "type" => g.kind = value.to_string(),
            "reserved" => g.reserved.push(value.to_string()),
            "device" => {
                g.devices.insert(value.to_string());
            }
            _ => return Err(format!("unknown line `{line}`")),
        }
    }
    Ok(groups)
}

/// The predicted groups, from `iommu sysfs --json`.
fn predicted_groups(json: &str) -> Result<BTreeMap<u32, Group>, String> {
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    for e in doc["entries"].as_array().ok_or("no entries")? {
        let path = e["path"].as_str().unwrap_or_default();
        let Some(rest) = path.strip_prefix("kernel/iommu_groups/") else {
            continue;
        };
        let mut parts = rest.split('/');
        let id: u32 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad path {path}"))?;
        let g = groups.entry(id).or_default();
        let value = e["value"].as_str().unwrap_or_default();
        match (parts.next(), parts.next()) {
            (Some("type"), None) => g.kind = value.trim().to_string(),
            (Some("reserved_regions"), None) => {
                g.reserved = value.lines().map(str::to_string).collect();
            }
            (Some("devices"), Some(dev)) => {
                g.devices.insert(dev.to_string());
            }
            _ => {}
        }
    }
    Ok(groups)
}

/// A kept boot of the real kernel.
struct Run {
    dir: PathBuf,
    iommu: String,
    cmdline: String,
    /// The kernel's groups.
    kernel: BTreeMap<u32, Group>,
}

impl Run {
    fn load(dir: &Path) -> Result<Run, String> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map_err(|e| format!("{}: {e}", dir.join(f).display()))
        };
        let meta: serde_json::Value =
            serde_json::from_str(&read("machine.json")?).map_err(|e| e.to_string())?;
        let iommu = meta["iommu"]
            .as_str()
            .ok_or("machine.json has no iommu")?
            .to_string();
        Ok(Run {
            dir: dir.to_path_buf(),
            iommu,
            cmdline: read("cmdline.txt")?.trim().to_string(),
            kernel: kernel_groups(&read("iommu-groups.txt")?)?,
        })
    }

    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Every way the prediction from `input` (`--lspci` or `--lspci-x`
    /// with its file) differs from the kernel's groups.
    fn differences(&self, flag: &str, file: &str) -> Result<Vec<String>, String> {
        let kernel = &self.kernel;
        let path = self.dir.join(file);
        let mut args = vec![
            "sysfs".to_string(),
            flag.to_string(),
            path.to_str().expect("a UTF-8 path").to_string(),
            "--iommu".to_string(),
            self.iommu.clone(),
            "--cmdline".to_string(),
            self.cmdline.clone(),
            "--json".to_string(),
        ];
        // The firmware's DMAR or IVRS, where the guest wrote it out (hex
        // bytes).
        for (file, flag) in [("acpi-dmar.txt", "--dmar"), ("acpi-ivrs.txt", "--ivrs")] {
            let hex = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let bytes: Vec<u8> = hex
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).map_err(|e| format!("{file}: {e}")))
                .collect::<Result<_, _>>()?;
            if !bytes.is_empty() {
                let table = common::scratch(&format!("judge-{file}-{}", self.name())).join("table");
                std::fs::write(&table, bytes).map_err(|e| e.to_string())?;
                args.push(flag.to_string());
                args.push(table.to_str().expect("a UTF-8 path").to_string());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = iommu(&args);
        if code != 0 {
            return Err(format!("iommu sysfs {flag} exited {code}: {err}"));
        }
        let predicted = predicted_groups(&out)?;
        let mut problems = Vec::new();
        let of = |groups: &BTreeMap<u32, Group>, dev: &str| {
            groups.values().find(|g| g.devices.contains(dev)).cloned()
        };
        let mut seen = BTreeSet::new();
        for k in kernel.values() {
            let first = k.devices.iter().next().cloned().unwrap_or_default();
            if !seen.insert(first.clone()) {
                continue;
            }
            let Some(p) = of(&predicted, &first) else {
                problems.push(format!(
                    "{first}: the kernel groups it, the prediction does not"
                ));
                continue;
            };
            if p.devices != k.devices {
                problems.push(format!(
                    "kernel group {:?}, predicted {:?}",
                    k.devices, p.devices
                ));
            }
            if p.kind != k.kind {
                problems.push(format!(
                    "{first}'s group: kernel type {}, predicted {}",
                    k.kind, p.kind
                ));
            }
            if p.reserved != k.reserved {
                problems.push(format!(
                    "{first}'s group: kernel reserved regions {:?}, predicted {:?}",
                    k.reserved, p.reserved
                ));
            }
        }
        for p in predicted.values() {
            for d in &p.devices {
                if of(kernel, d).is_none() {
                    problems.push(format!(
                        "{d}: predicted in a group, the kernel gave it none"
                    ));
                }
            }
        }
        Ok(problems)
    }
}

/// The kept runs, and those `IOMMU_KERNEL_JUDGE_DIRS` adds.
fn runs() -> Vec<PathBuf> {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&kept)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    if let Some(more) = std::env::var_os("IOMMU_KERNEL_JUDGE_DIRS") {
        dirs.extend(std::env::split_paths(&more));
    }
    dirs.retain(|d| d.join("machine.json").is_file());
    dirs.sort();
    dirs
}

#[test]
fn the_prediction_is_what_the_real_kernel_built() {
    let dirs = runs();
    assert!(
        dirs.len() >= 6,
        "the kept real-kernel runs are missing from tests/data/kernel"
    );
    let mut failures = Vec::new();
    let mut matched = 0;
    for dir in &dirs {
        let run = match Run::load(dir) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let mut all = Vec::new();
        for (flag, file) in [
            ("--lspci", "lspci-vvvnn.txt"),
            ("--lspci-x", "lspci-xxxx.txt"),
        ] {
            match run.differences(flag, file) {
                Ok(p) => all.extend(p.into_iter().map(|p| format!("{flag}: {p}"))),
                Err(e) => all.push(format!("{flag}: {e}")),
            }
        }
        if all.is_empty() {
            matched += 1;
        } else {
            failures.push(format!(
                "{} ({}, `{}`):\n    {}",
                run.name(),
                run.iommu,
                run.cmdline,
                all.join("\n    ")
            ));
        }
    }
    println!("{matched} of {} real-kernel runs matched", dirs.len());
    assert!(
        failures.is_empty(),
        "{matched} of {} matched;\n{}",
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn the_kernel_listing_reads_back() {
    let text = "group 3\ntype DMA-FQ\nreserved 0x00000000fee00000 0x00000000feefffff msi\ndevice 0000:00:04.0\ndevice 0000:03:01.0\n";
    let g = kernel_groups(text).unwrap();
    assert_eq!(g[&3].kind, "DMA-FQ");
    assert_eq!(g[&3].reserved.len(), 1);
    assert_eq!(g[&3].devices.len(), 2);
    assert!(kernel_groups("device 0000:00:00.0\n").is_err());
    assert!(kernel_groups("group x\n").is_err());
}
