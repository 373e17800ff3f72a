//! `iommu bench scale`: how the cost of one operation grows with what the
//! system holds, as curves, each checked by its own fit.
//!
//! - mappings held in a domain (1 thousand to 16 million 4 KiB leaves):
//!   the core's `Domain::map` + `unmap` of 4 KiB in a hole between them,
//!   the holes visited in a scattered order;
//! - DMA mappings live on a device (the same counts): the DMA layer's
//!   `map_single` + `unmap_single` of 4 KiB, handle checks on, as shipped;
//! - PCI functions on the platform (10 to 10,000, each its own group):
//!   map + unmap of 4 KiB in the default domain of one function, its
//!   group and domain looked up each time, each timed run on the next
//!   function in a scattered order;
//! - IOVA fragmentation (0 to 90 % of 65,536 one-granule ranges freed
//!   in a scattered order): a tree allocation of one granule and its free,
//!   against the number of holes.
//!
//! A fit says how each curve grows: least squares of the medians against
//! `log2 n` and against `n`, and the exponent `k` of `n^k` from a log-log
//! fit. A curve grows faster than O(log n) when the straight line in `n`
//! fits better and `k` is above 0.3 (memory-hierarchy steps, a cache or
//! TLB outgrown, stay well below that); the command then exits with 1.

use crate::bench::{sample, Stats, JSON_VERSION};
use iommu_core::{Bus, DeviceBuilder, DomainType, Iommu, IommuConfig, Iova, PhysAddr, Prot};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_iova::{IovaDomain, SingleCpu};
use iommu_soft::{SoftConfig, SoftIommu};
use serde::Serialize;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const PAGE: u64 = 0x1000;
/// Where the held mappings start (a 4 KiB leaf every 8 KiB from here).
const BASE: u64 = 1 << 32;
/// A stride through the holes that visits every one of them, scattered.
const STRIDE: u64 = 7_919;

/// One point of a curve: `n` and the nanoseconds per operation there.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// What the series counts (mappings, functions, holes).
    pub n: u64,
    /// Nanoseconds per operation.
    pub ns: Stats,
}

/// How a curve grows, from its medians.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    /// `O(1)`, `O(log n)` or `faster than O(log n)`.
    pub growth: &'static str,
    /// Nanoseconds added per doubling of `n` (the `log2 n` fit's slope).
    pub ns_per_doubling: f64,
    /// The exponent `k` of `n^k` (log-log fit).
    pub exponent: f64,
    /// Residual sum of squares of the `log2 n` fit.
    pub rss_log: f64,
    /// Residual sum of squares of the fit in `n`.
    pub rss_linear: f64,
    /// Whether the curve grows no faster than O(log n).
    pub ok: bool,
}

/// One curve.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    /// Short name.
    pub name: &'static str,
    /// The operation timed.
    pub operation: &'static str,
    /// What `n` counts.
    pub n_counts: &'static str,
    /// The points, `n` rising.
    pub points: Vec<Point>,
    /// The fit.
    pub fit: Fit,
}

/// Least squares of `y = a + b x`; returns `(a, b, residual sum of squares)`.
fn least_squares(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|v| (v - mx) * (v - mx)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let a = my - b * mx;
    let rss = x.iter().zip(y).map(|(u, v)| (v - a - b * u).powi(2)).sum();
    (a, b, rss)
}

/// The fit of medians `y` at counts `n` (at least two points, `n >= 1`).
pub fn fit(n: &[u64], y: &[f64]) -> Fit {
    let log_n: Vec<f64> = n.iter().map(|&v| (v.max(1) as f64).log2()).collect();
    let lin_n: Vec<f64> = n.iter().map(|&v| v as f64).collect();
    let ln_y: Vec<f64> = y.iter().map(|v| v.max(1e-3).ln()).collect();
    let (_, per_doubling, rss_log) = least_squares(&log_n, y);
    let (_, _, rss_linear) = least_squares(&lin_n, y);
    // ln y = c + k ln n, with ln n = log2 n * ln 2.
    let (_, k_log2, _) = least_squares(&log_n, &ln_y);
    let exponent = k_log2 / core::f64::consts::LN_2;
    let first = y.first().copied().unwrap_or(0.0).max(1e-3);
    let last = y.last().copied().unwrap_or(0.0);
    let worse = rss_linear < rss_log && exponent > 0.3;
    let growth = if worse {
        "faster than O(log n)"
    } else if last <= first * 1.25 {
        "O(1)"
    } else {
        "O(log n)"
    };
    Fit {
        growth,
        ns_per_doubling: per_doubling,
        exponent,
        rss_log,
        rss_linear,
        ok: !worse,
    }
}

/// The curve of `points`, fitted against `n + n_offset` (1 where a count
/// starts at 0).
fn series(
    name: &'static str,
    operation: &'static str,
    n_counts: &'static str,
    points: Vec<Point>,
    n_offset: u64,
) -> Series {
    let n: Vec<u64> = points.iter().map(|p| p.n + n_offset).collect();
    let y: Vec<f64> = points.iter().map(|p| p.ns.median).collect();
    Series {
        name,
        operation,
        n_counts,
        fit: fit(&n, &y),
        points,
    }
}

/// A platform of the soft IOMMU without a table budget and `functions`
/// PCI functions on one bus.
fn platform(functions: u64) -> Result<(Iommu, Bus, Vec<Arc<iommu_core::Device>>), String> {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci").map_err(|e| e.to_string())?;
    let mut devs = Vec::new();
    for f in 0..functions {
        let name = format!("0000:{:02x}:{:02x}.{}", f >> 8, (f >> 3) & 0x1f, f & 7);
        let sid = u32::try_from(f).map_err(|e| e.to_string())?;
        devs.push(
            bus.add_device(DeviceBuilder::new(&name).stream_ids([sid]).pci(true))
                .map_err(|e| format!("{name}: {e}"))?,
        );
    }
    let soft = SoftIommu::new(SoftConfig {
        table_budget: None,
        ..SoftConfig::default()
    });
    iommu
        .bus_set_iommu(&bus, Arc::new(soft))
        .map_err(|e| e.to_string())?;
    Ok((iommu, bus, devs))
}

fn held_mappings(counts: &[u64], quick: bool) -> Result<Series, String> {
    let (iommu, bus, _devs) = platform(1)?;
    let d = iommu
        .domain_alloc(&bus, DomainType::Unmanaged)
        .map_err(|e| e.to_string())?;
    let mut held = 0u64;
    let mut points = Vec::new();
    for &n in counts {
        while held < n {
            let at = BASE + 2 * held * PAGE;
            d.map(Iova::new(at), PhysAddr::new(at), PAGE, Prot::RW)
                .map_err(|e| format!("holding {n} mappings: {e}"))?;
            held += 1;
        }
        let mut j = 0u64;
        let ns = sample(
            |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    j = (j + STRIDE) % n;
                    let at = Iova::new(BASE + (2 * j + 1) * PAGE);
                    let _ = d.map(at, PhysAddr::new(0x1000), PAGE, Prot::RW);
                    let _ = black_box(d.unmap(at, PAGE));
                }
                t.elapsed()
            },
            quick,
        );
        points.push(Point { n, ns });
    }
    Ok(series(
        "mappings",
        "Domain::map + Domain::unmap of 4 KiB in a hole between the held leaves",
        "4 KiB mappings held in the domain",
        points,
        0,
    ))
}

fn held_dma(counts: &[u64], quick: bool) -> Result<Series, String> {
    let (iommu, _bus, devs) = platform(1)?;
    let dma =
        DmaDevice::bind(&iommu, &devs[0], DmaOptions::default()).map_err(|e| e.to_string())?;
    dma.set_dma_mask(u64::MAX).map_err(|e| e.to_string())?;
    let dir = DmaDirection::Bidirectional;
    let mut held = Vec::new();
    let mut points = Vec::new();
    for &n in counts {
        while (held.len() as u64) < n {
            let pa = PhysAddr::new(held.len() as u64 * PAGE);
            held.push(
                dma.map_single(pa, PAGE, dir)
                    .map_err(|e| format!("holding {n} DMA mappings: {e}"))?,
            );
        }
        let pa = PhysAddr::new(0x1000);
        let ns = sample(
            |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    if let Ok(a) = dma.map_single(pa, PAGE, dir) {
                        let _ = black_box(dma.unmap_single(a, PAGE, dir));
                    }
                }
                t.elapsed()
            },
            quick,
        );
        points.push(Point { n, ns });
    }
    for a in held {
        dma.unmap_single(a, PAGE, dir).map_err(|e| e.to_string())?;
    }
    Ok(series(
        "dma",
        "map_single + unmap_single of 4 KiB, strict, handle checks on",
        "DMA mappings live on the device",
        points,
        0,
    ))
}

fn functions(counts: &[u64], quick: bool) -> Result<Series, String> {
    let mut points = Vec::new();
    for &n in counts {
        let (iommu, _bus, devs) = platform(n)?;
        if iommu.group_ids().len() as u64 != n {
            return Err(format!("{n} functions are not in {n} groups"));
        }
        let mut j = 0u64;
        let at = Iova::new(0x10_0000);
        // Each domain's first map allocates its tables: do it for every
        // function first, so that the curve is the steady state.
        for dev in &devs {
            let d = dev
                .iommu_group()
                .and_then(|g| g.default_domain())
                .ok_or("a function without a default domain")?;
            d.map(at, PhysAddr::new(0x1000), PAGE, Prot::RW)
                .map_err(|e| e.to_string())?;
            d.unmap(at, PAGE).map_err(|e| e.to_string())?;
        }
        // Each timed run works on the next function in a scattered order
        // (its group and domain looked up on every map+unmap): what one
        // function costs with `n` on the platform. Visiting another
        // function on every call would time the caches instead, which
        // the functions' state outgrows near a thousand of them.
        let ns = sample(
            |iters| {
                j = (j + STRIDE) % n;
                let t = Instant::now();
                for _ in 0..iters {
                    let domain = devs[j as usize]
                        .iommu_group()
                        .and_then(|g| g.default_domain());
                    if let Some(d) = domain {
                        let _ = d.map(at, PhysAddr::new(0x1000), PAGE, Prot::RW);
                        let _ = black_box(d.unmap(at, PAGE));
                    }
                }
                t.elapsed()
            },
            quick,
        );
        points.push(Point { n, ns });
    }
    Ok(series(
        "functions",
        "map + unmap of 4 KiB in the default domain of one function (its group and domain looked up)",
        "PCI functions on the platform, each in a group of its own",
        points,
        0,
    ))
}

fn fragmentation(quick: bool) -> Result<Series, String> {
    const RANGES: u64 = 65_536;
    let percents: &[u64] = if quick {
        &[0, 50, 90]
    } else {
        &[0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    };
    let mut points = Vec::new();
    for &pct in percents {
        let iovad = IovaDomain::new(PAGE, 1, SingleCpu).map_err(|e| e.to_string())?;
        let limit = iovad.dma_32bit_pfn() - 1;
        let mut all = Vec::new();
        for _ in 0..RANGES {
            all.push(iovad.alloc(1, limit, false).map_err(|e| e.to_string())?);
        }
        // Free `pct` % of them, scattered.
        let holes = RANGES * pct / 100;
        let mut k = 0u64;
        for _ in 0..holes {
            while all[k as usize] == 0 {
                k = (k + STRIDE) % RANGES;
            }
            iovad.free(all[k as usize]).map_err(|e| e.to_string())?;
            all[k as usize] = 0;
            k = (k + STRIDE) % RANGES;
        }
        let ns = sample(
            |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    if let Ok(p) = iovad.alloc(1, limit, true) {
                        let _ = iovad.free(black_box(p));
                    }
                }
                t.elapsed()
            },
            quick,
        );
        points.push(Point { n: holes, ns });
    }
    // The fit is against holes; the first point has none.
    Ok(series(
        "fragmentation",
        "IOVA tree alloc + free of one granule (no caches)",
        "holes among 65,536 one-granule ranges (0 to 90 % freed)",
        points,
        1,
    ))
}

/// Runs the curves; returns what to print and whether every curve grows
/// no faster than O(log n).
///
/// # Errors
/// A platform or mapping that cannot be made (out of memory).
pub fn scale(json: bool, quick: bool) -> Result<(String, bool), String> {
    let mappings: &[u64] = if quick {
        &[1 << 10, 1 << 12, 1 << 14]
    } else {
        &[
            1 << 10,
            1 << 12,
            1 << 14,
            1 << 16,
            1 << 18,
            1 << 20,
            1 << 22,
            1 << 24,
        ]
    };
    let funcs: &[u64] = if quick {
        &[10, 100]
    } else {
        &[10, 100, 1_000, 10_000]
    };
    let bar = crate::progress::steps(4, "bench scale");
    bar.set_message("bench scale: mappings held".to_string());
    let mut all = vec![held_mappings(mappings, quick)?];
    bar.inc(1);
    bar.set_message("bench scale: DMA mappings live".to_string());
    all.push(held_dma(mappings, quick)?);
    bar.inc(1);
    bar.set_message("bench scale: PCI functions".to_string());
    all.push(functions(funcs, quick)?);
    bar.inc(1);
    bar.set_message("bench scale: IOVA fragmentation".to_string());
    all.push(fragmentation(quick)?);
    bar.finish_and_clear();
    let ok = all.iter().all(|s| s.fit.ok);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            benchmark: &'static str,
            unit: &'static str,
            series: &'a [Series],
            ok: bool,
        }
        let mut s = serde_json::to_string_pretty(&Out {
            version: JSON_VERSION,
            benchmark: "scale",
            unit: "ns",
            series: &all,
            ok,
        })
        .expect("plain data");
        s.push('\n');
        return Ok((s, ok));
    }
    let mut out = String::new();
    for s in &all {
        let _ = writeln!(out, "{}: {}, median (p99) ns", s.name, s.operation);
        let _ = writeln!(out, "  {:>10}  {}", "n", s.n_counts);
        for p in &s.points {
            let _ = writeln!(out, "  {:>10}  {}", p.n, p.ns.cell());
        }
        let _ = writeln!(
            out,
            "  fit: {} ({:+.1} ns per doubling, n^{:.2}){}\n",
            s.fit.growth,
            s.fit.ns_per_doubling,
            s.fit.exponent,
            if s.fit.ok { "" } else { "  FAIL" }
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if ok {
            "every curve grows no faster than O(log n)"
        } else {
            "a curve grows faster than O(log n)"
        }
    );
    Ok((out, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Vec<u64> {
        (10..=24).step_by(2).map(|b| 1u64 << b).collect()
    }

    #[test]
    fn the_fit_tells_constant_logarithmic_and_linear_curves_apart() {
        let n = counts();
        let flat: Vec<f64> = n.iter().map(|_| 30.0).collect();
        let log: Vec<f64> = n.iter().map(|&v| 20.0 + 3.0 * (v as f64).log2()).collect();
        let lin: Vec<f64> = n.iter().map(|&v| 30.0 + v as f64 / 1_000.0).collect();
        let sqrt: Vec<f64> = n.iter().map(|&v| 10.0 + (v as f64).sqrt()).collect();
        let steps: Vec<f64> = [30.0, 30.0, 31.0, 33.0, 38.0, 55.0, 90.0, 150.0].to_vec();
        assert_eq!(fit(&n, &flat).growth, "O(1)");
        let f = fit(&n, &log);
        assert_eq!(f.growth, "O(log n)");
        assert!((f.ns_per_doubling - 3.0).abs() < 1e-9, "{f:?}");
        for bad in [&lin, &sqrt] {
            let f = fit(&n, bad);
            assert!(!f.ok, "{f:?}");
            assert_eq!(f.growth, "faster than O(log n)");
        }
        // Caches outgrown: steep at the end, still far below n^0.3.
        assert!(fit(&n, &steps).ok, "{:?}", fit(&n, &steps));
    }

    #[test]
    fn a_quick_run_prints_every_curve_and_its_fit() {
        let (text, _) = scale(false, true).unwrap();
        for name in ["mappings:", "dma:", "functions:", "fragmentation:"] {
            assert!(text.contains(name), "{text}");
        }
        assert_eq!(text.matches("  fit: ").count(), 4, "{text}");
        let (json, ok) = scale(true, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["benchmark"], "scale");
        assert_eq!(v["ok"], ok);
        let series = v["series"].as_array().unwrap();
        assert_eq!(series.len(), 4);
        for s in series {
            let points = s["points"].as_array().unwrap();
            assert!(points.len() >= 2);
            assert!(points
                .iter()
                .all(|p| p["ns"]["median"].as_f64().unwrap() > 0.0));
        }
    }
}
