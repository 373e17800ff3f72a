//! Real machines: `lspci -vvnn` listings made as root on stock
//! distribution kernels with the IOMMU on (from public hardware probes
//! and mailing-list reports),
//! each carrying the kernel's own `IOMMU group:` lines. The prediction
//! ignores those lines; then its partition is compared with the kernel's.
//! Every difference is either fixed or listed here with the Linux rule
//! that causes it. `tests/data/machines/README.md` says where each
//! listing comes from.

use iommu_pci::{compare, short_name, IommuKind, KernelVersion, Machine, Platform};

/// A listing, and the devices whose grouping is known to differ, each
/// with the rule that explains it.
struct Case {
    file: &'static str,
    /// Devices left out of the comparison, with why they differ.
    known: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        file: "amd-mendocino-aio-debian-6.1.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "amd-raphael-x670e-steel-legend-fedora-6.11.lspci-vvnn.txt",
        known: &[],
    },
    // The Altras' ASPEED VGA sits behind an AST1150 PCIe-to-PCI bridge
    // whose alias is the VGA's own requester id: before 6.12 arm-smmu-v3
    // refused such a device, so the kernels of these listings gave it no
    // group; the kernel version in the file name selects those rules.
    Case {
        file: "ampere-altra-arm64-ubuntu-5.15.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "ampere-altra-altrad8ud-ubuntu-6.8.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "apple-t2-comet-lake-mac-6.12.lspci-vvnn-PP.txt",
        known: &[],
    },
    Case {
        file: "amd-epyc-milan-romed8-2t-debian-6.1.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "intel-w680-raptor-lake-ubuntu-6.8.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "intel-x99-haswell-e-taichi-fedora-6.7.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "intel-z270-kaby-lake-mint-6.8.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "amd-phoenix-framework-13-laptop-fedora-6.8.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "intel-alder-lake-xps-15-laptop-fedora-6.11.lspci-vvnn.txt",
        known: &[],
    },
    Case {
        file: "intel-raptor-lake-framework-13-laptop-fedora-6.9.lspci-vvnn.txt",
        known: &[],
    },
];

fn check(case: &Case) -> Result<(), String> {
    let path = format!(
        "{}/tests/data/machines/{}",
        env!("CARGO_MANIFEST_DIR"),
        case.file
    );
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let m = Machine::from_lspci_v(&text).map_err(|e| format!("{}: {e}", case.file))?;
    if !m.has_kernel_groups() {
        return Err(format!("{}: no kernel groups", case.file));
    }
    // The kernel the listing came from, named in the file name.
    let kernel = case
        .file
        .split('-')
        .find_map(|w| {
            w.split(".lspci")
                .next()
                .and_then(|v| v.parse::<KernelVersion>().ok())
        })
        .unwrap_or_default();
    let platform = Platform {
        iommu: IommuKind::detect(&m.functions()),
        kernel,
        ..Platform::default()
    };
    let a = m
        .analyze(platform)
        .map_err(|e| format!("{}: {e}", case.file))?;
    iommu_pci::testing::check_analysis(&a);
    let known: Vec<iommu_pci::Bdf> = case
        .known
        .iter()
        .map(|(d, _)| d.parse().expect("an address"))
        .collect();
    let without = |p: Vec<Vec<iommu_pci::Bdf>>| -> Vec<Vec<iommu_pci::Bdf>> {
        let mut p: Vec<Vec<iommu_pci::Bdf>> = p
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .filter(|b| !known.contains(b))
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect();
        p.sort();
        p
    };
    let c = compare(
        &without(a.groups.partition(&a.topology)),
        &without(m.kernel_partition()),
    );
    let names = |v: &[iommu_pci::Bdf]| v.iter().map(|&b| short_name(b)).collect::<Vec<_>>();
    let mut problems = Vec::new();
    for mm in &c.mismatches {
        let k: Vec<Vec<String>> = mm.kernel.iter().map(|g| names(g)).collect();
        let p: Vec<Vec<String>> = mm.predicted.iter().map(|g| names(g)).collect();
        problems.push(format!("kernel {k:?} vs predicted {p:?}"));
    }
    if !c.only_kernel.is_empty() {
        problems.push(format!(
            "only in the kernel's groups: {:?}",
            names(&c.only_kernel)
        ));
    }
    if !c.only_predicted.is_empty() {
        problems.push(format!("only predicted: {:?}", names(&c.only_predicted)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n  {}", case.file, problems.join("\n  ")))
    }
}

#[test]
fn every_machine_of_the_corpus_groups_as_its_kernel_did() {
    let failures: Vec<String> = CASES.iter().filter_map(|c| check(c).err()).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_corpus_is_listed_here_whole() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/machines");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.file.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every listing in tests/data/machines has a case"
    );
}
