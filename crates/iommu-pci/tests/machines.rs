//! Real machines: `lspci -vvnn` listings made as root on stock
//! distribution kernels with the IOMMU on (from public hardware probes),
//! each carrying the kernel's own `IOMMU group:` lines. The prediction
//! ignores those lines; then its partition is compared with the kernel's.
//! Every difference is either fixed or listed here with the Linux rule
//! that causes it. `tests/data/machines/README.md` says where each
//! listing comes from.

use iommu_pci::{compare, short_name, IommuKind, Machine, Platform};

/// A listing, and the differences it is known to have, each with why.
struct Case {
    file: &'static str,
    /// Devices the kernel grouped and the prediction cannot (outside what
    /// a listing shows), with the reason.
    only_kernel: &'static [(&'static str, &'static str)],
    /// Devices the prediction groups and the kernel did not, with the
    /// reason.
    only_predicted: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[Case {
    file: "amd-mendocino-aio-debian-6.1.lspci-vvnn.txt",
    only_kernel: &[],
    only_predicted: &[],
}];

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
    let platform = Platform {
        iommu: IommuKind::detect(&m.functions()),
        ..Platform::default()
    };
    let a = m
        .analyze(platform)
        .map_err(|e| format!("{}: {e}", case.file))?;
    iommu_pci::testing::check_analysis(&a);
    let c = compare(&a.groups.partition(&a.topology), &m.kernel_partition());
    let names = |v: &[iommu_pci::Bdf]| v.iter().map(|&b| short_name(b)).collect::<Vec<_>>();
    let expect = |v: &[(&str, &str)]| v.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>();
    let mut problems = Vec::new();
    for mm in &c.mismatches {
        let k: Vec<Vec<String>> = mm.kernel.iter().map(|g| names(g)).collect();
        let p: Vec<Vec<String>> = mm.predicted.iter().map(|g| names(g)).collect();
        problems.push(format!("kernel {k:?} vs predicted {p:?}"));
    }
    if names(&c.only_kernel) != expect(case.only_kernel) {
        problems.push(format!(
            "only in the kernel's groups: {:?}",
            names(&c.only_kernel)
        ));
    }
    if names(&c.only_predicted) != expect(case.only_predicted) {
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
