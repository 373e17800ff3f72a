//! `iommu bench pci`: Linux's PCI set-up and grouping, and the
//! `lspci -vvvnn` importer, on synthetic servers of 256 to 4,096
//! functions (root ports above switches with NVMe drives and SR-IOV
//! NICs), to show how both grow.

use crate::bench::{sample, Stats, JSON_VERSION};
use iommu_pci::synthetic::{server, write_lspci_v, FUNCTIONS_PER_PORT};
use iommu_pci::{Machine, Platform};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Instant;

#[derive(Serialize)]
struct Size {
    functions: usize,
    groups: usize,
    listing_bytes: usize,
    /// Microseconds per run.
    group_us: Stats,
    parse_us: Stats,
    /// Nanoseconds per function, from the medians.
    group_ns_per_function: f64,
    parse_ns_per_function: f64,
}

/// Times one run of `f` in microseconds, `n` times per sample.
fn time_us(mut f: impl FnMut(), quick: bool) -> Stats {
    let mut s = sample(
        |n| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed()
        },
        quick,
    );
    for v in [&mut s.median, &mut s.p99, &mut s.min] {
        *v /= 1000.0;
    }
    s
}

/// Runs the benchmark and returns what to print.
///
/// # Errors
/// None in practice: the synthetic machines are well formed.
pub fn pci(json: bool, quick: bool) -> Result<String, String> {
    let ports = [2usize, 4, 8, 15, 29];
    let bar = crate::progress::steps(ports.len() as u64, "bench pci");
    let mut sizes = Vec::new();
    for k in ports {
        let m = server(k);
        let n = m.devices.len();
        bar.set_message(format!("bench pci: {n} functions"));
        let functions = m.functions();
        let a = m.analyze(Platform::default()).map_err(|e| e.to_string())?;
        let listing = write_lspci_v(&m);
        let group_us = time_us(
            || {
                let a = iommu_pci::Analysis::new(functions.clone(), Platform::default());
                std::hint::black_box(a.map(|a| a.groups.members.len()).ok());
            },
            quick,
        );
        let parse_us = time_us(
            || {
                std::hint::black_box(
                    Machine::from_lspci_v(&listing)
                        .map(|m| m.devices.len())
                        .ok(),
                );
            },
            quick,
        );
        sizes.push(Size {
            functions: n,
            groups: a.groups.members.len(),
            listing_bytes: listing.len(),
            group_ns_per_function: group_us.median * 1000.0 / n as f64,
            parse_ns_per_function: parse_us.median * 1000.0 / n as f64,
            group_us,
            parse_us,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            benchmark: &'static str,
            functions_per_root_port: usize,
            sizes: &'a [Size],
        }
        let mut s = serde_json::to_string_pretty(&Out {
            version: JSON_VERSION,
            benchmark: "pci",
            functions_per_root_port: FUNCTIONS_PER_PORT,
            sizes: &sizes,
        })
        .expect("plain data");
        s.push('\n');
        return Ok(s);
    }
    let mut out = String::from(
        "PCI grouping (set-up, ACS, pci_device_group for every function) and lspci -vvvnn parsing\n\
         of synthetic servers; median (p99) per run, and per function\n",
    );
    let _ = writeln!(
        out,
        "{:>9} {:>7} {:>22} {:>10} {:>22} {:>10}",
        "functions", "groups", "group (us)", "ns/fn", "parse (us)", "ns/fn"
    );
    for s in &sizes {
        let _ = writeln!(
            out,
            "{:>9} {:>7} {:>22} {:>10.0} {:>22} {:>10.0}",
            s.functions,
            s.groups,
            format!("{:.0} ({:.0})", s.group_us.median, s.group_us.p99),
            s.group_ns_per_function,
            format!("{:.0} ({:.0})", s.parse_us.median, s.parse_us.p99),
            s.parse_ns_per_function
        );
    }
    Ok(out)
}
