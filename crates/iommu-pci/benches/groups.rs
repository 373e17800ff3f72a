//! Linux's PCI set-up and grouping, and the `lspci -vvvnn` importer, on
//! synthetic servers of 256 to 4,096 functions (root ports above switches
//! with NVMe drives and SR-IOV NICs): the time per run at each size shows
//! how both grow.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iommu_pci::synthetic::{server, write_lspci_v};
use iommu_pci::{Analysis, Machine, Platform};
use std::hint::black_box;

fn grouping(c: &mut Criterion) {
    let mut g = c.benchmark_group("pci_groups");
    for ports in [2usize, 4, 8, 15, 29] {
        let m = server(ports);
        let n = m.devices.len();
        let functions = m.functions();
        let listing = write_lspci_v(&m);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("group", n), &functions, |b, f| {
            b.iter(|| {
                let a = Analysis::new(f.clone(), Platform::default()).expect("a tree");
                black_box(a.groups.members.len())
            })
        });
        g.bench_with_input(
            BenchmarkId::new("parse_lspci_vvvnn", n),
            &listing,
            |b, l| b.iter(|| black_box(Machine::from_lspci_v(l).expect("reads").devices.len())),
        );
    }
    g.finish();
}

criterion_group!(benches, grouping);
criterion_main!(benches);
