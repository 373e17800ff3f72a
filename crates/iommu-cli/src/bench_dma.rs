//! `iommu bench dma`: the DMA API hot path, modelled on Linux's
//! `dma_map_benchmark`: N threads map and unmap one 4 KiB buffer each for a
//! fixed time, timing map and unmap separately, in strict (DMA) and lazy
//! (DMA-FQ) domains of the soft IOMMU; plus the IOVA allocator alone.

use crate::bench::{sample, Stats, JSON_VERSION};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, PhysAddr};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_iova::{measure, IovaDomain, ThreadCpu};
use iommu_soft::SoftIommu;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Options of `iommu bench dma`.
#[derive(Debug, PartialEq)]
pub struct DmaBenchOptions {
    /// Threads mapping at once.
    pub threads: usize,
    /// How long each run lasts.
    pub seconds: f64,
    /// Print JSON instead of a table.
    pub json: bool,
    /// Short runs (for smoke tests).
    pub quick: bool,
}

impl Default for DmaBenchOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            seconds: 1.0,
            json: false,
            quick: false,
        }
    }
}

/// Per-operation times in a log-linear histogram: exact below 64 ns, then
/// 32 buckets per power of two (about 3% wide), so that a thread can record
/// every operation without allocating and the median and p99 come out of
/// millions of them.
struct Histogram {
    counts: Vec<u64>,
    n: u64,
    min: u64,
}

/// Sub-buckets per power of two, as a shift.
const SUB_BITS: u32 = 5;
/// Values below this are their own bucket.
const EXACT: u64 = 2 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            n: 0,
            min: u64::MAX,
        }
    }
}

impl Histogram {
    fn bucket(ns: u64) -> usize {
        if ns < EXACT {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= SUB_BITS + 1
        let sub = (ns >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        (EXACT + u64::from(exp - SUB_BITS - 1) * (1 << SUB_BITS) + sub) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < EXACT {
            return i as f64;
        }
        let exp = (i - EXACT) / (1 << SUB_BITS) + u64::from(SUB_BITS) + 1;
        let sub = (i - EXACT) % (1 << SUB_BITS);
        let width = 1u64 << (exp - u64::from(SUB_BITS));
        ((1u64 << exp) + sub * width) as f64 + width as f64 / 2.0
    }

    fn add(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.n += 1;
        self.min = self.min.min(ns);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.min = self.min.min(o.min);
    }

    /// The value at quantile `q`, by nearest rank.
    fn quantile(&self, q: f64) -> f64 {
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(self.counts.len() - 1)
    }

    fn stat(&self) -> Stats {
        if self.n == 0 {
            return Stats::default();
        }
        Stats {
            median: self.quantile(0.5),
            p99: self.quantile(0.99),
            min: self.min as f64,
            samples: self.n,
        }
    }
}

#[derive(Serialize)]
struct ModeResult {
    mode: &'static str,
    threads: usize,
    map: Stats,
    unmap: Stats,
    /// Map+unmap pairs per second, all threads together: every thread's
    /// pairs over the wall-clock window from the first thread's start to
    /// the last thread's end. (Adding per-thread rates would count threads
    /// that ran one after another, on fewer cores than threads, as if they
    /// had run at once.)
    #[serde(rename = "pairs_per_sec")]
    ops_per_sec: f64,
}

fn run_mode(strict: bool, threads: usize, dur: Duration) -> Result<ModeResult, String> {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict,
    });
    let bus = Bus::new(&iommu, "pci").map_err(|e| e.to_string())?;
    let dev = bus
        .add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([1]).pci(true))
        .map_err(|e| e.to_string())?;
    iommu
        .bus_set_iommu(&bus, Arc::new(SoftIommu::default()))
        .map_err(|e| e.to_string())?;
    let dma =
        Arc::new(DmaDevice::bind(&iommu, &dev, DmaOptions::default()).map_err(|e| e.to_string())?);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (dma, barrier) = (dma.clone(), barrier.clone());
            std::thread::spawn(
                move || -> Result<(Histogram, Histogram, u64, Instant, Instant), String> {
                    let pa = PhysAddr::new(0x1_0000_0000 + t as u64 * 0x10_0000);
                    let dir = DmaDirection::Bidirectional;
                    let once = || -> Result<(), String> {
                        let a = dma.map_single(pa, 0x1000, dir).map_err(|e| e.to_string())?;
                        dma.unmap_single(a, 0x1000, dir).map_err(|e| e.to_string())
                    };
                    for _ in 0..1000 {
                        once()?;
                    }
                    barrier.wait();
                    let (mut map, mut unmap) = (Histogram::default(), Histogram::default());
                    let start = Instant::now();
                    let mut pairs = 0u64;
                    loop {
                        for _ in 0..64 {
                            let t0 = Instant::now();
                            let a = dma.map_single(pa, 0x1000, dir).map_err(|e| e.to_string())?;
                            let t1 = Instant::now();
                            dma.unmap_single(a, 0x1000, dir)
                                .map_err(|e| e.to_string())?;
                            let t2 = Instant::now();
                            map.add((t1 - t0).as_nanos() as u64);
                            unmap.add((t2 - t1).as_nanos() as u64);
                        }
                        pairs += 64;
                        if start.elapsed() >= dur {
                            break;
                        }
                    }
                    Ok((map, unmap, pairs, start, Instant::now()))
                },
            )
        })
        .collect();
    let (mut map, mut unmap, mut total) = (Histogram::default(), Histogram::default(), 0u64);
    let mut window: Option<(Instant, Instant)> = None;
    for h in handles {
        let (m, u, pairs, t0, t1) = h.join().map_err(|_| "a benchmark thread panicked")??;
        map.merge(&m);
        unmap.merge(&u);
        total += pairs;
        window = Some(window.map_or((t0, t1), |(a, b)| (a.min(t0), b.max(t1))));
    }
    let secs = window.map_or(0.0, |(a, b)| (b - a).as_secs_f64());
    let ops_per_sec = if secs > 0.0 { total as f64 / secs } else { 0.0 };
    Ok(ModeResult {
        mode: if strict { "strict" } else { "lazy" },
        threads,
        map: map.stat(),
        unmap: unmap.stat(),
        ops_per_sec,
    })
}

/// The nanoseconds one `Instant::now()` costs, which each timed operation
/// above includes once.
fn clock_overhead() -> f64 {
    let n = 100_000;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

struct Report {
    modes: Vec<ModeResult>,
    cache_hit: Stats,
    tree: Stats,
    clock_ns: f64,
}

/// Runs the benchmark and returns what to print.
///
/// # Errors
/// Zero threads or a non-positive duration, or a failed setup.
pub fn dma(opts: &DmaBenchOptions) -> Result<String, String> {
    if opts.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return Err("--seconds must be a positive number".into());
    }
    let dur = Duration::from_secs_f64(if opts.quick {
        opts.seconds.min(0.05)
    } else {
        opts.seconds
    });
    let mut modes = Vec::new();
    let runs = if opts.threads > 1 { 4 } else { 2 };
    let bar = crate::progress::steps(runs + 1, "bench dma");
    for strict in [true, false] {
        let name = if strict { "strict" } else { "lazy" };
        let mut counts = vec![opts.threads];
        if opts.threads > 1 {
            counts.insert(0, 1);
        }
        for n in counts {
            bar.set_message(format!("bench dma: {name}, {n} thread(s)"));
            let r = run_mode(strict, n, dur);
            bar.inc(1);
            modes.push(r.inspect_err(|_| bar.finish_and_clear())?);
        }
    }
    bar.set_message("bench dma: IOVA allocator");
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).map_err(|e| e.to_string())?;
    let cache_hit = sample(|n| measure::cache_hit(&iovad, n, &now), opts.quick);
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).map_err(|e| e.to_string())?;
    measure::fragment(&iovad, 32 * 1024);
    let tree = sample(|n| measure::tree_fragmented(&iovad, n, &now), opts.quick);
    bar.finish_and_clear();
    let report = Report {
        modes,
        cache_hit,
        tree,
        clock_ns: clock_overhead(),
    };
    Ok(if opts.json {
        json(opts, &report)
    } else {
        table(opts, &report)
    })
}

fn speedup(r: &Report, mode: &str, threads: usize) -> Option<f64> {
    let one = r.modes.iter().find(|m| m.mode == mode && m.threads == 1)?;
    let n = r
        .modes
        .iter()
        .find(|m| m.mode == mode && m.threads == threads)?;
    (threads > 1).then(|| n.ops_per_sec / one.ops_per_sec)
}

fn json(opts: &DmaBenchOptions, r: &Report) -> String {
    #[derive(Serialize)]
    struct Speedup {
        strict: Option<f64>,
        lazy: Option<f64>,
    }
    #[derive(Serialize)]
    struct Iova {
        alloc_free_cache_hit: Stats,
        alloc_free_tree_50pct_fragmented: Stats,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        version: u32,
        benchmark: &'static str,
        unit: &'static str,
        threads: usize,
        seconds: f64,
        granule: u64,
        clock_overhead_ns: f64,
        runs: &'a [ModeResult],
        speedup: Speedup,
        iova: Iova,
    }
    let out = Out {
        version: JSON_VERSION,
        benchmark: "dma",
        unit: "ns/op",
        threads: opts.threads,
        seconds: opts.seconds,
        granule: 4096,
        clock_overhead_ns: r.clock_ns,
        runs: &r.modes,
        speedup: Speedup {
            strict: speedup(r, "strict", opts.threads),
            lazy: speedup(r, "lazy", opts.threads),
        },
        iova: Iova {
            alloc_free_cache_hit: r.cache_hit,
            alloc_free_tree_50pct_fragmented: r.tree,
        },
    };
    let mut s = serde_json::to_string_pretty(&out).expect("plain data serializes");
    s.push('\n');
    s
}

fn table(opts: &DmaBenchOptions, r: &Report) -> String {
    let mut out = format!(
        "DMA API benchmark: 4 KiB map/unmap per thread, {} s per run (ns per operation, median (p99)\nof every operation; each timing includes one clock read of {:.1} ns)\n",
        opts.seconds, r.clock_ns
    );
    let _ = writeln!(
        out,
        "{:<7} {:>7} {:>16} {:>16} {:>14}",
        "mode", "threads", "map", "unmap", "pairs/s"
    );
    for m in &r.modes {
        let _ = writeln!(
            out,
            "{:<7} {:>7} {:>16} {:>16} {:>14.0}",
            m.mode,
            m.threads,
            m.map.cell(),
            m.unmap.cell(),
            m.ops_per_sec
        );
    }
    for mode in ["strict", "lazy"] {
        if let Some(s) = speedup(r, mode, opts.threads) {
            let _ = writeln!(
                out,
                "{mode}: {} threads reach {s:.2}x the throughput of 1",
                opts.threads
            );
        }
    }
    let _ = writeln!(
        out,
        "IOVA alloc+free (median (p99) of samples): cache hit {} ns, tree at 50% fragmentation {} ns",
        r.cache_hit.cell(),
        r.tree.cell()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_keeps_values_to_within_three_percent_and_ranks_them() {
        for ns in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let v = Histogram::value(Histogram::bucket(ns));
            let err = (v - ns as f64).abs() / (ns as f64).max(1.0);
            assert!(err <= 1.0 / 32.0 + 1e-9, "{ns}: {v}");
        }
        let mut h = Histogram::default();
        for ns in 1..=100 {
            h.add(ns);
        }
        let mut tail = Histogram::default();
        tail.add(1_000_000);
        h.merge(&tail);
        let s = h.stat();
        assert_eq!((s.min, s.samples), (1.0, 101));
        assert!((50.0..=52.0).contains(&s.median), "{}", s.median);
        // One huge outlier in 101 moves the p99 (rank 100), not the median.
        assert!((98.0..=101.0).contains(&s.p99), "{}", s.p99);
        assert!(Histogram::default().stat() == Stats::default());
    }
}
