//! IOVA allocator benchmarks: `cargo bench -p iommu-iova`.
//!
//! The same workloads print as JSON with `iommu bench dma --json`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_iova::{measure, IovaDomain, ThreadCpu};
use std::time::Instant;

fn iova(c: &mut Criterion) {
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let mut group = c.benchmark_group("iova");
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).unwrap();
    group.bench_function("alloc+free, cache hit", |b| {
        b.iter_custom(|iters| measure::cache_hit(&iovad, iters, &now))
    });
    let iovad = IovaDomain::new(4096, 1, ThreadCpu::available()).unwrap();
    measure::fragment(&iovad, 32 * 1024);
    group.bench_function("alloc+free, tree at 50% fragmentation", |b| {
        b.iter_custom(|iters| measure::tree_fragmented(&iovad, iters, &now))
    });
    group.finish();
}

criterion_group!(benches, iova);
criterion_main!(benches);
