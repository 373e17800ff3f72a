//! Checks every format must pass: the Linux self-test scenario and a model
//! test against a plain interval map.
#![allow(dead_code)]

use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::{Format, HeapMemory, IoPageTable, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_1G};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// LPAE of `stage` and `granule` with 48-bit input and output.
pub fn lpae(stage: Stage, granule: Granule) -> Lpae {
    Lpae::new(LpaeConfig {
        stage,
        granule,
        ias: 48,
        oas: 48,
    })
    .unwrap()
}

fn pa(x: u64) -> PhysAddr {
    PhysAddr::new(x)
}

/// Linux's io-pgtable self-test scenario: nothing translates in an empty
/// table; for each page size at k * 1 GiB (rounded up to the page), map,
/// refuse an overlap, translate +42; unmap, see it gone, remap; then the
/// largest page just below the top of the input space; and every table page
/// is freed on drop.
pub fn selftest<F: Format>(fmt: F) {
    let name = fmt.name();
    let geo = *fmt.geometry();
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(fmt, &mem).unwrap();
    let bitmap = pt.pgsize_bitmap();
    // Sizes whose k * 1 GiB slots fit the input space.
    let sizes: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|s| bitmap & s != 0)
        .collect();
    let slot = |k: usize, size: u64| (k as u64 * SZ_1G).next_multiple_of(size);
    let fits = |iova: u64, size: u64| geo.input_fits(iova, size) && geo.output_fits(iova, size);
    let rw = Prot::RW | Prot::NOEXEC | Prot::CACHE;

    for iova in [42, SZ_1G + 42, 2 * SZ_1G + 42] {
        assert_eq!(
            pt.iova_to_phys(Iova::new(iova)),
            None,
            "{name}: empty table translates {iova:#x}"
        );
    }
    for (k, &size) in sizes.iter().enumerate() {
        let iova = slot(k, size);
        if !fits(iova, size) {
            continue;
        }
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, rw),
            Ok(size),
            "{name} size {size:#x}"
        );
        assert!(
            pt.map_pages(Iova::new(iova), pa(iova + size), size, 1, Prot::READ)
                .is_err(),
            "{name}: overlap {size:#x}"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }
    for (k, &size) in sizes.iter().enumerate() {
        let iova = slot(k, size);
        if !fits(iova, size) {
            continue;
        }
        let mut g = IotlbGather::new();
        assert_eq!(
            pt.unmap_pages(Iova::new(iova), size, 1, &mut g),
            size,
            "{name} unmap {size:#x}"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), None);
        assert_eq!(
            pt.map_pages(Iova::new(iova), pa(iova), size, 1, Prot::RW),
            Ok(size)
        );
        assert_eq!(pt.iova_to_phys(Iova::new(iova + 42)), Some(pa(iova + 42)));
    }
    // The largest page below the top of the input space (output kept low).
    let largest = *sizes.iter().rfind(|&&s| geo.output_fits(0, s)).unwrap();
    if geo.ias < 64 {
        let top = (1u64 << geo.ias) - largest;
        let mut g = IotlbGather::new();
        assert_eq!(
            pt.map_pages(Iova::new(top), pa(0), largest, 1, rw),
            Ok(largest),
            "{name}: top page"
        );
        assert_eq!(pt.iova_to_phys(Iova::new(top + 42)), Some(pa(42)));
        assert_eq!(pt.unmap_pages(Iova::new(top), largest, 1, &mut g), largest);
        assert!(pt
            .map_pages(Iova::new(1u64 << geo.ias), pa(0), sizes[0], 1, Prot::READ)
            .is_err());
    }
    drop(pt);
    assert_eq!(mem.table_pages(), 0, "{name}: every table page freed");
}

#[derive(Debug, Clone)]
pub enum Op {
    Map {
        page: u64,
        big: bool,
        count: usize,
        pa_page: u64,
    },
    Unmap {
        page: u64,
        count: usize,
    },
    Translate {
        page: u64,
        offset: u64,
    },
    FirstLeaf {
        page: u64,
        pages: u64,
    },
}

pub fn op(window_pages: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..window_pages, any::<bool>(), 1..40usize, 0..4096u64).prop_map(
            |(page, big, count, pa_page)| Op::Map {
                page,
                big,
                count,
                pa_page
            }
        ),
        (0..window_pages, 1..40usize).prop_map(|(page, count)| Op::Unmap { page, count }),
        (0..window_pages, 0..4096u64).prop_map(|(page, offset)| Op::Translate { page, offset }),
        (0..window_pages, 1..window_pages).prop_map(|(page, pages)| Op::FirstLeaf { page, pages }),
    ]
}

/// Leaves keyed by first IOVA: (size, pa).
type Model = BTreeMap<u64, (u64, u64)>;

fn model_leaf(m: &Model, iova: u64) -> Option<(u64, u64, u64)> {
    let (&start, &(size, pa)) = m.range(..=iova).next_back()?;
    (iova < start + size).then_some((start, size, pa))
}

fn model_overlaps(m: &Model, start: u64, size: u64) -> bool {
    model_leaf(m, start).is_some() || m.range(start..start + size).next().is_some()
}

/// Runs `ops` against a fresh table of `fmt` and a plain interval map: every
/// returned size and translation must agree, the final walk must equal the
/// model, and dropping the table must free every page. Pages are the
/// format's two smallest sizes; unmaps use the smallest (a hole, pages, or a
/// block removed whole).
pub fn model_check<F: Format>(fmt: F, ops: &[Op]) -> Result<(), TestCaseError> {
    let geo = *fmt.geometry();
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(fmt, &mem).unwrap();
    let bitmap = pt.pgsize_bitmap();
    let small = bitmap & bitmap.wrapping_neg();
    let rest = bitmap & !small;
    let big = rest & rest.wrapping_neg();
    let span_of = |size: u64| {
        let level = geo.leaf_level_for(size).unwrap();
        geo.entry_size(level) * geo.entries(level) as u64
    };
    let mut model = Model::new();
    for op in ops {
        match *op {
            Op::Map {
                page,
                big: use_big,
                count,
                pa_page,
            } => {
                let (size, count) = if use_big && big != 0 {
                    (big, 1 + count % 2)
                } else {
                    (small, count)
                };
                let iova = (page * small) & !(size - 1);
                let pa = (pa_page * small) & !(size - 1);
                let room = ((span_of(size) - iova % span_of(size)) / size) as usize;
                let n = count.min(room) as u64;
                let in_range = geo.input_fits(iova, count as u64 * size);
                let conflict = (0..n).any(|k| model_overlaps(&model, iova + k * size, size));
                let got = pt.map_pages(Iova::new(iova), PhysAddr::new(pa), size, count, Prot::RW);
                if !in_range || conflict {
                    prop_assert!(got.is_err(), "map {iova:#x}+{n}x{size:#x} should fail");
                } else {
                    prop_assert_eq!(got, Ok(n * size));
                    for k in 0..n {
                        model.insert(iova + k * size, (size, pa + k * size));
                    }
                }
            }
            Op::Unmap { page, count } => {
                let iova = page * small;
                let room = ((span_of(small) - iova % span_of(small)) / small) as usize;
                let mut g = IotlbGather::new();
                let got = pt.unmap_leaves(Iova::new(iova), small, count, &mut g);
                let expect = match model_leaf(&model, iova) {
                    Some((start, size, _)) if size > small => {
                        model.remove(&start);
                        (start, size)
                    }
                    _ => {
                        let mut n = 0;
                        while n < count.min(room) as u64
                            && model.remove(&(iova + n * small)).is_some()
                        {
                            n += 1;
                        }
                        (iova, n * small)
                    }
                };
                let got = (if got.size == 0 { iova } else { got.iova.raw() }, got.size);
                prop_assert_eq!(got, expect, "unmap at {:#x}", iova);
                pt.release_gathered(&g);
            }
            Op::Translate { page, offset } => {
                let iova = page * small + offset % small;
                let expect =
                    model_leaf(&model, iova).map(|(s, _, pa)| PhysAddr::new(pa + iova - s));
                prop_assert_eq!(pt.iova_to_phys(Iova::new(iova)), expect);
            }
            Op::FirstLeaf { page, pages } => {
                let (start, last) = (page * small, (page + pages) * small - 1);
                let expect = model
                    .range(..=last)
                    .rev()
                    .take_while(|(&i, &(s, _))| i + s > start)
                    .last()
                    .map(|(&i, &(s, p))| (i, s, p));
                let got = pt
                    .first_leaf(Iova::new(start), Iova::new(last))
                    .map(|m| (m.iova.raw(), m.size, m.pa.raw()));
                prop_assert_eq!(got, expect, "first leaf in [{:#x}, {:#x}]", start, last);
            }
        }
    }
    let leaves = pt.walk(Iova::new(0), u64::MAX);
    for m in &leaves {
        prop_assert!(
            m.prot.contains(Prot::RW),
            "leaf at {} decodes as {}",
            m.iova,
            m.prot
        );
    }
    let walked: Vec<(u64, u64, u64)> = leaves
        .iter()
        .map(|m| (m.iova.raw(), m.size, m.pa.raw()))
        .collect();
    let modelled: Vec<(u64, u64, u64)> = model.iter().map(|(&i, &(s, p))| (i, s, p)).collect();
    prop_assert_eq!(walked, modelled);
    drop(pt);
    prop_assert_eq!(mem.table_pages(), 0, "every table page freed");
    Ok(())
}

/// Window (in smallest pages) covering four of the format's second-smallest pages.
pub fn window<F: Format>(fmt: &F) -> u64 {
    let bitmap = fmt.geometry().pgsize_bitmap();
    let small = bitmap & bitmap.wrapping_neg();
    let rest = bitmap & !small;
    let big = if rest == 0 {
        small * 512
    } else {
        rest & rest.wrapping_neg()
    };
    4 * big / small
}
