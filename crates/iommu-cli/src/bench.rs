//! `iommu bench pgtable`: the page-table workloads of the criterion
//! benchmarks, timed by a small harness and printed as a table or JSON.

use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::measure::{self, Clock};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::{Format, HeapMemory, IoPageTable};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Options of `iommu bench pgtable`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BenchOptions {
    /// Print JSON instead of a table.
    pub json: bool,
    /// Fewer, shorter samples (for smoke tests).
    pub quick: bool,
    /// Only these formats (all when empty).
    pub formats: Vec<String>,
}

/// The formats benchmarked, by name.
pub const FORMATS: &[&str] = &[
    "arm-lpae-s1-4k",
    "arm-lpae-s2-4k",
    "vtd-sl-4level",
    "amd-v1",
    "riscv-sv48",
];

const BASE: u64 = 1 << 30;

type Workload<F> = fn(&IoPageTable<F, HeapMemory>, u64, u64, Clock<'_>) -> Duration;

/// Mean, standard deviation and minimum of ns per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub(crate) mean: f64,
    pub(crate) stddev: f64,
    pub(crate) min: f64,
}

struct FormatResult {
    name: &'static str,
    workloads: Vec<(&'static str, Stats)>,
    table_bytes_per_4k_page: Option<f64>,
}

/// Times `f(iters)` (returning the elapsed time of `iters` operations),
/// doubling `iters` until one run takes long enough, then samples it.
pub(crate) fn sample(mut f: impl FnMut(u64) -> Duration, quick: bool) -> Stats {
    let target = if quick {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(20)
    };
    let mut iters = 1u64;
    while f(iters) < target && iters < 1 << 30 {
        iters *= 2;
    }
    let samples: Vec<f64> = (0..if quick { 3 } else { 10 })
        .map(|_| f(iters).as_nanos() as f64 / iters as f64)
        .collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / samples.len() as f64;
    Stats {
        mean,
        stddev: var.sqrt(),
        min: samples.iter().copied().fold(f64::INFINITY, f64::min),
    }
}

fn run_format<F: Format + Clone>(fmt: F, quick: bool) -> Result<FormatResult, String> {
    let name = fmt.name();
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let pt =
        IoPageTable::new(fmt.clone(), HeapMemory::new()).map_err(|e| format!("{name}: {e}"))?;
    measure::check(&pt).map_err(|e| format!("{name}: {e}"))?;
    measure::warm_up(&pt, BASE);
    let workloads: [(&'static str, Workload<F>); 6] = [
        ("map_4k", measure::map_4k),
        ("unmap_4k", measure::unmap_4k),
        ("map_256x4k", measure::map_256),
        ("unmap_256x4k", measure::unmap_256),
        ("iova_to_phys", measure::iova_to_phys),
        ("map_1g_as_2m", measure::map_1g_as_2m),
    ];
    Ok(FormatResult {
        name,
        workloads: workloads
            .iter()
            .map(|&(w, f)| (w, sample(|n| f(&pt, BASE, n, &now), quick)))
            .collect(),
        table_bytes_per_4k_page: measure::table_bytes_per_4k_page(fmt, HeapMemory::new(), BASE),
    })
}

fn run_named(name: &str, quick: bool) -> Result<FormatResult, String> {
    let lpae = |stage, granule| {
        Lpae::new(LpaeConfig {
            stage,
            granule,
            ias: 48,
            oas: 48,
        })
        .map_err(|e| e.to_string())
    };
    match name {
        "arm-lpae-s1-4k" => run_format(lpae(Stage::S1, Granule::G4K)?, quick),
        "arm-lpae-s2-4k" => run_format(lpae(Stage::S2, Granule::G4K)?, quick),
        "vtd-sl-4level" => run_format(VtdSl::new(4, 48).map_err(|e| e.to_string())?, quick),
        "amd-v1" => run_format(AmdV1::new(4).map_err(|e| e.to_string())?, quick),
        "riscv-sv48" => run_format(
            Riscv::new(4, RiscvStage::First).map_err(|e| e.to_string())?,
            quick,
        ),
        other => Err(format!(
            "unknown format '{other}' (known: {})",
            FORMATS.join(", ")
        )),
    }
}

fn json(results: &[FormatResult]) -> String {
    let mut out = String::from(
        "{\n  \"benchmark\": \"pgtable\",\n  \"unit\": \"ns/op\",\n  \"results\": [\n",
    );
    for (i, r) in results.iter().enumerate() {
        let _ = write!(out, "    {{\"format\": \"{}\", \"workloads\": {{", r.name);
        for (j, (w, s)) in r.workloads.iter().enumerate() {
            let sep = if j == 0 { "" } else { ", " };
            let _ = write!(
                out,
                "{sep}\"{w}\": {{\"mean\": {:.3}, \"stddev\": {:.3}, \"min\": {:.3}}}",
                s.mean, s.stddev, s.min
            );
        }
        let bytes = r
            .table_bytes_per_4k_page
            .map_or("null".to_string(), |b| format!("{b:.3}"));
        let sep = if i + 1 == results.len() { "" } else { "," };
        let _ = writeln!(out, "}}, \"table_bytes_per_4k_page\": {bytes}}}{sep}");
    }
    out.push_str("  ]\n}\n");
    out
}

fn table(results: &[FormatResult]) -> String {
    let mut out = String::from("page-table benchmarks (ns per operation, mean ± stddev)\n");
    let _ = writeln!(
        out,
        "{:<17} {:>13} {:>13} {:>15} {:>15} {:>13} {:>15} {:>12}",
        "format",
        "map 4K",
        "unmap 4K",
        "map 256x4K",
        "unmap 256x4K",
        "iova_to_phys",
        "map 1G as 2M",
        "B/4K page"
    );
    for r in results {
        let _ = write!(out, "{:<17}", r.name);
        for (w, s) in &r.workloads {
            let width = match *w {
                "map_4k" | "unmap_4k" | "iova_to_phys" => 13,
                _ => 15,
            };
            let _ = write!(out, " {:>width$}", format!("{:.1}±{:.1}", s.mean, s.stddev));
        }
        let _ = writeln!(
            out,
            " {:>12}",
            r.table_bytes_per_4k_page
                .map_or("-".into(), |b| format!("{b:.3}"))
        );
    }
    out
}

/// Runs the benchmark and returns what to print.
///
/// # Errors
/// An unknown format name, or a format that cannot be built.
pub fn pgtable(opts: &BenchOptions) -> Result<String, String> {
    let names: Vec<&str> = if opts.formats.is_empty() {
        FORMATS.to_vec()
    } else {
        opts.formats.iter().map(String::as_str).collect()
    };
    let results = names
        .iter()
        .map(|n| run_named(n, opts.quick))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if opts.json {
        json(&results)
    } else {
        table(&results)
    })
}
