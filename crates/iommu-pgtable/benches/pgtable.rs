//! Page-table benchmarks, per format: `cargo bench -p iommu-pgtable`.
//!
//! The same workloads print as JSON with `iommu bench pgtable --json`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::measure;
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{Format, HeapMemory, IoPageTable};
use std::time::{Duration, Instant};

const BASE: u64 = 1 << 30;

fn bench_format<F: Format + Clone>(c: &mut Criterion, fmt: F) {
    let name = fmt.name();
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let pt = IoPageTable::new(fmt.clone(), HeapMemory::new()).unwrap();
    measure::check(&pt).expect(name);
    measure::warm_up(&pt, BASE);
    type Workload<F> = fn(&IoPageTable<F, HeapMemory>, u64, u64, measure::Clock<'_>) -> Duration;
    let workloads: [(&str, Workload<F>); 6] = [
        ("map 4K", measure::map_4k),
        ("unmap 4K", measure::unmap_4k),
        ("map 256x4K", measure::map_256),
        ("unmap 256x4K", measure::unmap_256),
        ("iova_to_phys", measure::iova_to_phys),
        ("map 1G as 2M", measure::map_1g_as_2m),
    ];
    let mut group = c.benchmark_group(name);
    for (what, f) in workloads {
        group.bench_function(what, |b| b.iter_custom(|iters| f(&pt, BASE, iters, &now)));
    }
    group.finish();
    if let Some(bytes) = measure::table_bytes_per_4k_page(fmt, HeapMemory::new(), BASE) {
        println!("{name}/table bytes per 4K page (dense 1 GiB): {bytes:.3}");
    }
}

fn formats(c: &mut Criterion) {
    bench_format(
        c,
        Lpae::new(LpaeConfig {
            stage: Stage::S1,
            granule: Granule::G4K,
            ias: 48,
            oas: 48,
        })
        .unwrap(),
    );
    bench_format(
        c,
        Lpae::new(LpaeConfig {
            stage: Stage::S2,
            granule: Granule::G4K,
            ias: 48,
            oas: 48,
        })
        .unwrap(),
    );
    bench_format(c, VtdSl::new(4, 48).unwrap());
    bench_format(c, AmdV1::new(4).unwrap());
    bench_format(c, Riscv::new(4, RiscvStage::First).unwrap());
    bench_format(c, X86_64::new(4, 48).unwrap());
}

criterion_group!(benches, formats);
criterion_main!(benches);
