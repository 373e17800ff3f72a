//! `iommu bench pgtable`: the page-table workloads of the criterion
//! benchmarks, timed by a small harness and printed as a table or JSON.

use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::measure::{self, Clock};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{Format, HeapMemory, IoPageTable};
use serde::Serialize;
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
    "x86-64-4level",
];

const BASE: u64 = 1 << 30;

type Workload<F> = fn(&IoPageTable<F, HeapMemory>, u64, u64, Clock<'_>) -> Duration;

/// Nanoseconds per operation: the median, the 99th percentile and the
/// minimum, over `samples` timings. Heavy tails (a preempted sample) move
/// the p99, not the median, where a mean and standard deviation would both
/// say little.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub(crate) median: f64,
    pub(crate) p99: f64,
    pub(crate) min: f64,
    pub(crate) samples: u64,
}

impl Stats {
    /// The statistics of `values` (ns per operation), by nearest rank.
    pub(crate) fn of(values: &mut [f64]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        values.sort_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Stats {
            median: rank(0.5),
            p99: rank(0.99),
            min: values[0],
            samples: values.len() as u64,
        }
    }

    /// `median (p99)`, as the tables print it.
    pub(crate) fn cell(&self) -> String {
        format!("{:.1} ({:.1})", self.median, self.p99)
    }
}

/// Rounds of the 4 KiB / 2 MiB table-memory workload whose page count is
/// reported.
pub const TABLE_ROUNDS: u64 = 1000;

#[derive(Serialize)]
struct FormatResult {
    format: &'static str,
    #[serde(serialize_with = "workload_map")]
    workloads: Vec<(&'static str, Stats)>,
    table_bytes_per_4k_page: Option<f64>,
    /// Table pages after [`TABLE_ROUNDS`] rounds of "map 4 KiB, unmap, map
    /// a 2 MiB block there, unmap" at one IOVA.
    table_pages_after_rounds: Option<usize>,
}

fn workload_map<S: serde::Serializer>(
    w: &[(&'static str, Stats)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(w.iter().map(|(k, v)| (k, v)))
}

/// Times `f(iters)` (returning the elapsed time of `iters` operations):
/// doubles `iters` until one run takes long enough, then takes many
/// samples of that length and reports their spread.
pub(crate) fn sample(mut f: impl FnMut(u64) -> Duration, quick: bool) -> Stats {
    let (target, samples) = if quick {
        (Duration::from_micros(200), 10)
    } else {
        (Duration::from_millis(1), 200)
    };
    let mut iters = 1u64;
    while f(iters) < target && iters < 1 << 30 {
        iters *= 2;
    }
    let mut values: Vec<f64> = (0..samples)
        .map(|_| f(iters).as_nanos() as f64 / iters as f64)
        .collect();
    Stats::of(&mut values)
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
        format: name,
        workloads: workloads
            .iter()
            .map(|&(w, f)| (w, sample(|n| f(&pt, BASE, n, &now), quick)))
            .collect(),
        table_bytes_per_4k_page: measure::table_bytes_per_4k_page(
            fmt.clone(),
            HeapMemory::new(),
            BASE,
        ),
        table_pages_after_rounds: measure::table_pages_after_rounds(
            fmt,
            HeapMemory::new(),
            BASE,
            TABLE_ROUNDS,
        ),
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
        "x86-64-4level" => run_format(X86_64::new(4, 48).map_err(|e| e.to_string())?, quick),
        other => Err(format!(
            "unknown format '{other}' (known: {})",
            FORMATS.join(", ")
        )),
    }
}

/// Version of the JSON layout `iommu bench` prints.
pub use crate::run::JSON_VERSION;

fn json(results: &[FormatResult]) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        version: u32,
        benchmark: &'static str,
        unit: &'static str,
        table_rounds: u64,
        results: &'a [FormatResult],
    }
    let report = Report {
        version: JSON_VERSION,
        benchmark: "pgtable",
        unit: "ns/op",
        table_rounds: TABLE_ROUNDS,
        results,
    };
    let mut out = serde_json::to_string_pretty(&report).expect("plain data serializes");
    out.push('\n');
    out
}

fn table(results: &[FormatResult]) -> String {
    let mut out = format!(
        "page-table benchmarks (ns per operation: median (p99) of the samples;\n\
         pages: table pages after {TABLE_ROUNDS} rounds of 4K map/unmap, 2M map/unmap at one IOVA)\n"
    );
    let _ = writeln!(
        out,
        "{:<15} {:>13} {:>13} {:>15} {:>15} {:>13} {:>15} {:>10} {:>6}",
        "format",
        "map 4K",
        "unmap 4K",
        "map 256x4K",
        "unmap 256x4K",
        "iova_to_phys",
        "map 1G as 2M",
        "B/4K page",
        "pages"
    );
    for r in results {
        let _ = write!(out, "{:<15}", r.format);
        for (w, s) in &r.workloads {
            let width = match *w {
                "map_4k" | "unmap_4k" | "iova_to_phys" => 13,
                _ => 15,
            };
            let _ = write!(out, " {:>width$}", s.cell());
        }
        let _ = writeln!(
            out,
            " {:>10} {:>6}",
            r.table_bytes_per_4k_page
                .map_or("-".into(), |b| format!("{b:.3}")),
            r.table_pages_after_rounds
                .map_or("-".into(), |p| p.to_string())
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
    let bar = crate::progress::steps(names.len() as u64, "bench pgtable");
    let results = names
        .iter()
        .map(|n| {
            bar.set_message(format!("bench pgtable: {n}"));
            let r = run_named(n, opts.quick);
            bar.inc(1);
            r
        })
        .collect::<Result<Vec<_>, _>>();
    bar.finish_and_clear();
    let results = results?;
    Ok(if opts.json {
        json(&results)
    } else {
        table(&results)
    })
}
