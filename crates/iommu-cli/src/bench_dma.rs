//! `iommu bench dma`: the DMA API hot path, modelled on Linux's
//! `dma_map_benchmark`: N threads map and unmap one 4 KiB buffer each for a
//! fixed time, timing map and unmap separately, in strict (DMA) and lazy
//! (DMA-FQ) domains of the soft IOMMU; plus the IOVA allocator alone.

use crate::bench::{sample, Stats};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, PhysAddr};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_iova::{measure, IovaDomain, ThreadCpu};
use iommu_soft::SoftIommu;
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

/// Running mean, variance and minimum of per-operation times.
struct Acc {
    n: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
}

impl Default for Acc {
    fn default() -> Self {
        Self {
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
            min: f64::INFINITY,
        }
    }
}

impl Acc {
    fn add(&mut self, ns: f64) {
        self.n += 1;
        self.sum += ns;
        self.sumsq += ns * ns;
        self.min = self.min.min(ns);
    }
    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        self.sum += o.sum;
        self.sumsq += o.sumsq;
        self.min = self.min.min(o.min);
    }
    fn stat(&self) -> Stats {
        if self.n == 0 {
            return Stats::default();
        }
        let mean = self.sum / self.n as f64;
        let var = (self.sumsq / self.n as f64 - mean * mean).max(0.0);
        Stats {
            mean,
            stddev: var.sqrt(),
            min: self.min,
        }
    }
}

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
                move || -> Result<(Acc, Acc, u64, Instant, Instant), String> {
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
                    let (mut map, mut unmap) = (Acc::default(), Acc::default());
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
                            map.add((t1 - t0).as_nanos() as f64);
                            unmap.add((t2 - t1).as_nanos() as f64);
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
    let (mut map, mut unmap, mut total) = (Acc::default(), Acc::default(), 0u64);
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
    for strict in [true, false] {
        if opts.threads > 1 {
            modes.push(run_mode(strict, 1, dur)?);
        }
        modes.push(run_mode(strict, opts.threads, dur)?);
    }
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).map_err(|e| e.to_string())?;
    let cache_hit = sample(|n| measure::cache_hit(&iovad, n, &now), opts.quick);
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).map_err(|e| e.to_string())?;
    measure::fragment(&iovad, 32 * 1024);
    let tree = sample(|n| measure::tree_fragmented(&iovad, n, &now), opts.quick);
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
    let mut out = String::from("{\n  \"benchmark\": \"dma\",\n  \"unit\": \"ns/op\",\n");
    let _ = writeln!(
        out,
        "  \"threads\": {},\n  \"seconds\": {},\n  \"granule\": 4096,\n  \"clock_overhead_ns\": {:.1},\n  \"runs\": [",
        opts.threads, opts.seconds, r.clock_ns
    );
    for (i, m) in r.modes.iter().enumerate() {
        let sep = if i + 1 == r.modes.len() { "" } else { "," };
        let _ = writeln!(
            out,
            "    {{\"mode\": \"{}\", \"threads\": {}, \"map\": {{\"mean\": {:.1}, \"stddev\": {:.1}}}, \"unmap\": {{\"mean\": {:.1}, \"stddev\": {:.1}}}, \"map_unmap_mean\": {:.1}, \"pairs_per_sec\": {:.0}}}{sep}",
            m.mode, m.threads, m.map.mean, m.map.stddev, m.unmap.mean, m.unmap.stddev,
            m.map.mean + m.unmap.mean, m.ops_per_sec
        );
    }
    out.push_str("  ],\n");
    let speed = |mode| speedup(r, mode, opts.threads).map_or("null".into(), |s| format!("{s:.2}"));
    let _ = writeln!(
        out,
        "  \"speedup\": {{\"strict\": {}, \"lazy\": {}}},",
        speed("strict"),
        speed("lazy")
    );
    let _ = writeln!(
        out,
        "  \"iova\": {{\"alloc_free_cache_hit\": {{\"mean\": {:.2}, \"stddev\": {:.2}}}, \"alloc_free_tree_50pct_fragmented\": {{\"mean\": {:.2}, \"stddev\": {:.2}}}}}\n}}",
        r.cache_hit.mean, r.cache_hit.stddev, r.tree.mean, r.tree.stddev
    );
    out
}

fn table(opts: &DmaBenchOptions, r: &Report) -> String {
    let mut out = format!(
        "DMA API benchmark: 4 KiB map/unmap per thread, {} s per run (ns per operation, mean ± stddev;\neach timing includes one clock read of {:.1} ns)\n",
        opts.seconds, r.clock_ns
    );
    let _ = writeln!(
        out,
        "{:<7} {:>7} {:>14} {:>14} {:>11} {:>14}",
        "mode", "threads", "map", "unmap", "map+unmap", "pairs/s"
    );
    for m in &r.modes {
        let _ = writeln!(
            out,
            "{:<7} {:>7} {:>14} {:>14} {:>11.1} {:>14.0}",
            m.mode,
            m.threads,
            format!("{:.1}±{:.1}", m.map.mean, m.map.stddev),
            format!("{:.1}±{:.1}", m.unmap.mean, m.unmap.stddev),
            m.map.mean + m.unmap.mean,
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
        "IOVA alloc+free: cache hit {:.1}±{:.1} ns, tree at 50% fragmentation {:.1}±{:.1} ns",
        r.cache_hit.mean, r.cache_hit.stddev, r.tree.mean, r.tree.stddev
    );
    out
}
