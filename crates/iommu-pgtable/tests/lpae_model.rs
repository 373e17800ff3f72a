//! Random map/unmap/translate sequences against a plain interval map.

use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_2M, SZ_4K};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
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
}

/// 4 MiB of IOVA space, so collisions are frequent; two last-level tables.
const WINDOW_PAGES: u64 = 1024;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..WINDOW_PAGES, any::<bool>(), 1..40usize, 0..4096u64).prop_map(
            |(page, big, count, pa_page)| Op::Map {
                page,
                big,
                count,
                pa_page
            }
        ),
        (0..WINDOW_PAGES, 1..40usize).prop_map(|(page, count)| Op::Unmap { page, count }),
        (0..WINDOW_PAGES, 0..SZ_4K).prop_map(|(page, offset)| Op::Translate { page, offset }),
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn lpae_agrees_with_an_interval_map(ops in proptest::collection::vec(op(), 1..120)) {
        let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), HeapMemory::new()).unwrap();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Map { page, big, count, pa_page } => {
                    let (size, count) = if big { (SZ_2M, 1 + count % 2) } else { (SZ_4K, count) };
                    let iova = (page * SZ_4K) & !(size - 1);
                    let pa = (pa_page * SZ_4K) & !(size - 1);
                    let table_span = if big { 1 << 30 } else { SZ_2M };
                    let room = ((table_span - (iova % table_span)) / size) as usize;
                    let n = count.min(room) as u64;
                    let expect_conflict = (0..n).any(|k| model_overlaps(&model, iova + k * size, size));
                    let got = pt.map_pages(Iova::new(iova), PhysAddr::new(pa), size, count, Prot::RW);
                    if expect_conflict {
                        prop_assert!(got.is_err(), "map {iova:#x}+{n}x{size:#x} should collide");
                    } else {
                        prop_assert_eq!(got, Ok(n * size));
                        for k in 0..n {
                            model.insert(iova + k * size, (size, pa + k * size));
                        }
                    }
                }
                Op::Unmap { page, count } => {
                    // 4 KiB unmaps only: a hole, a page, or (first) a block removed whole.
                    let iova = page * SZ_4K;
                    let room = ((SZ_2M - (iova % SZ_2M)) / SZ_4K) as usize;
                    let mut g = IotlbGather::new();
                    let got = pt.unmap_pages(Iova::new(iova), SZ_4K, count, &mut g);
                    let expect = match model_leaf(&model, iova) {
                        Some((start, size, _)) if size > SZ_4K => {
                            model.remove(&start);
                            size
                        }
                        _ => {
                            let mut n = 0;
                            while n < count.min(room) as u64 && model.remove(&(iova + n * SZ_4K)).is_some() {
                                n += 1;
                            }
                            n * SZ_4K
                        }
                    };
                    prop_assert_eq!(got, expect, "unmap at {:#x}", iova);
                }
                Op::Translate { page, offset } => {
                    let iova = page * SZ_4K + offset;
                    let expect = model_leaf(&model, iova).map(|(s, _, pa)| PhysAddr::new(pa + iova - s));
                    prop_assert_eq!(pt.iova_to_phys(Iova::new(iova)), expect);
                }
            }
        }
        let walked: Vec<(u64, u64, u64)> = pt.walk(Iova::new(0), 1 << 48).iter().map(|m| (m.iova.raw(), m.size, m.pa.raw())).collect();
        let modelled: Vec<(u64, u64, u64)> = model.iter().map(|(&i, &(s, p))| (i, s, p)).collect();
        prop_assert_eq!(walked, modelled);
    }
}
