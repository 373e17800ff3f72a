//! The allocator against a model: random operation sequences, every answer
//! checked against a plain map of live and reserved ranges.

use iommu_iova::{IovaDomain, IovaError, IovaRange, SingleCpu};
use proptest::prelude::*;
use std::collections::BTreeMap;

const START: u64 = 1;
/// 4 GiB of 4 KiB frames; keep the space tiny so exhaustion happens often.
const DMA32: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: u64, limit: u64 },
    AllocFast { size: u64, limit: u64 },
    Free { nth: usize },
    Reserve { lo: u64, len: u64 },
    FlushCaches,
}

fn op() -> impl Strategy<Value = Op> {
    let limit = prop_oneof![Just(63u64), Just(127), Just(DMA32 - 1), Just(DMA32 + 63)];
    prop_oneof![
        4 => (1u64..40, limit.clone()).prop_map(|(size, limit)| Op::Alloc { size, limit }),
        4 => (1u64..40, limit).prop_map(|(size, limit)| Op::AllocFast { size, limit }),
        4 => any::<usize>().prop_map(|nth| Op::Free { nth }),
        1 => (0u64..140, 1u64..8).prop_map(|(lo, len)| Op::Reserve { lo, len }),
        1 => Just(Op::FlushCaches),
    ]
}

/// Live allocations: first frame -> (size as allocated, whether via the fast path).
type Live = BTreeMap<u64, (u64, bool)>;

fn overlaps(map: &BTreeMap<u64, u64>, lo: u64, hi: u64) -> bool {
    map.range(..=hi).next_back().is_some_and(|(_, &h)| h >= lo)
}

/// Whether some aligned `size` frames fit in `[START, limit]` outside `taken`
/// (whose ranges may overlap each other).
fn gap_exists(taken: &BTreeMap<u64, u64>, size: u64, limit: u64) -> bool {
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cur: Option<(u64, u64)> = None;
    for (&lo, &hi) in taken {
        cur = match cur {
            Some((a, b)) if lo <= b.saturating_add(1) => Some((a, b.max(hi))),
            Some((a, b)) => {
                merged.insert(a, b);
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    if let Some((a, b)) = cur {
        merged.insert(a, b);
    }
    let taken = &merged;
    let align = size.next_power_of_two();
    let mut cand = (limit + 1).checked_sub(size).map(|c| c & !(align - 1));
    while let Some(c) = cand.filter(|&c| c >= START) {
        match taken.range(..=c + size - 1).next_back() {
            Some((&lo, &hi)) if hi >= c => cand = lo.checked_sub(size).map(|x| x & !(align - 1)),
            _ => return true,
        }
    }
    false
}

fn run(ops: Vec<Op>) {
    // Keep the upper space small by reserving everything above DMA32 + 64.
    let iovad = IovaDomain::new(4096, START, SingleCpu).unwrap();
    iovad.reserve(DMA32 + 64, u64::MAX >> 12).unwrap();
    let mut reserved: BTreeMap<u64, u64> = BTreeMap::from([(DMA32 + 64, u64::MAX >> 12)]);
    let mut live: Live = BTreeMap::new();
    for op in ops {
        // Everything the tree holds: live, reserved, and (unknown to the
        // model) cached ranges, which is why `taken` comes from the allocator.
        match op {
            Op::Alloc { size, limit } | Op::AllocFast { size, limit } => {
                let fast = matches!(op, Op::AllocFast { .. });
                let taken: BTreeMap<u64, u64> = iovad
                    .ranges()
                    .into_iter()
                    .map(|(r, _)| (r.pfn_lo, r.pfn_hi))
                    .collect();
                let got = if fast {
                    iovad.alloc_fast(size, limit, true)
                } else {
                    iovad.alloc(size, limit, true)
                };
                let rounded = if fast && size < 32 {
                    size.next_power_of_two()
                } else {
                    size
                };
                match got {
                    Ok(pfn) => {
                        let hi = pfn + rounded - 1;
                        assert!(
                            pfn >= START && hi <= limit,
                            "{pfn:#x}+{rounded} under {limit:#x}"
                        );
                        assert_eq!(pfn % rounded.next_power_of_two(), 0, "size-aligned");
                        let live_map: BTreeMap<u64, u64> =
                            live.iter().map(|(&lo, &(s, _))| (lo, lo + s - 1)).collect();
                        assert!(!overlaps(&live_map, pfn, hi), "handed out twice");
                        assert!(!overlaps(&reserved, pfn, hi), "reserved range handed out");
                        live.insert(pfn, (rounded, fast));
                    }
                    Err(IovaError::NoSpace) => {
                        // The fast path flushed the caches before failing, so
                        // only live and reserved ranges may block it.
                        let blockers = if fast {
                            let mut m: BTreeMap<u64, u64> =
                                live.iter().map(|(&lo, &(s, _))| (lo, lo + s - 1)).collect();
                            m.extend(reserved.iter().map(|(&a, &b)| (a, b)));
                            m
                        } else {
                            taken
                        };
                        assert!(
                            !gap_exists(&blockers, rounded, limit),
                            "NoSpace with room for {rounded} under {limit:#x} fast={fast}: tree {:?} live {live:?} reserved {reserved:?}",
                            iovad.ranges()
                        );
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::Free { nth } => {
                if live.is_empty() {
                    assert_eq!(iovad.free(0), Err(IovaError::NotAllocated));
                    continue;
                }
                let (&pfn, &(size, fast)) = live.iter().nth(nth % live.len()).unwrap();
                live.remove(&pfn);
                if fast {
                    iovad.free_fast(pfn, size).unwrap();
                } else {
                    assert_eq!(
                        iovad.free(pfn + size / 2),
                        Ok(IovaRange {
                            pfn_lo: pfn,
                            pfn_hi: pfn + size - 1
                        })
                    );
                }
            }
            Op::Reserve { lo, len } => {
                let hi = lo + len - 1;
                let live_map: BTreeMap<u64, u64> =
                    live.iter().map(|(&l, &(s, _))| (l, l + s - 1)).collect();
                let before = iovad.ranges();
                match iovad.reserve(lo, hi) {
                    Ok(_) => {
                        assert!(!overlaps(&live_map, lo, hi));
                        let e = reserved.entry(lo).or_insert(hi);
                        *e = (*e).max(hi);
                    }
                    Err(IovaError::Overlap) => {
                        assert_eq!(
                            iovad.ranges(),
                            before,
                            "a refused reservation changed nothing"
                        );
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::FlushCaches => iovad.flush_caches(),
        }
    }
    for (pfn, (size, fast)) in live {
        if fast {
            iovad.free_fast(pfn, size).unwrap();
        } else {
            iovad.free(pfn).unwrap();
        }
    }
    iovad.flush_caches();
    assert!(
        iovad.ranges().iter().all(|(_, reserved)| *reserved),
        "nothing leaked"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn allocations_never_overlap_and_fail_only_when_full(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

#[test]
fn a_reservation_is_never_handed_out_even_when_it_is_all_that_is_left() {
    let iovad = IovaDomain::new(4096, START, SingleCpu).unwrap();
    iovad.reserve(8, 15).unwrap();
    let mut got = Vec::new();
    while let Ok(p) = iovad.alloc_fast(1, 15, true) {
        got.push(p);
    }
    got.sort();
    assert_eq!(got, (1..8).collect::<Vec<_>>());
}

#[test]
fn exhaustion_flushes_every_cache_once_and_retries() {
    let iovad = IovaDomain::new(4096, START, SingleCpu).unwrap();
    let all: Vec<u64> = std::iter::from_fn(|| iovad.alloc_fast(1, 63, false).ok()).collect();
    assert_eq!(all.len(), 63);
    // Freed ranges sit in the cache, not the tree...
    for &p in &all {
        iovad.free_fast(p, 1).unwrap();
    }
    assert_eq!(iovad.stats().cached, 63);
    // ...so a 2-frame request finds the tree full, unless it flushes.
    assert_eq!(iovad.alloc_fast(2, 63, false), Err(IovaError::NoSpace));
    assert_eq!(iovad.alloc_fast(2, 63, true), Ok(62));
    // The flush emptied the caches; the miss then took a cache line's worth
    // of 2-frame ranges (frames 56..=63) and keeps the other three cached.
    assert_eq!(iovad.stats().cached, 3);
}

#[test]
fn bad_arguments_get_typed_errors() {
    assert_eq!(
        IovaDomain::new(3000, 1, SingleCpu).err(),
        Some(IovaError::InvalidGranule)
    );
    assert_eq!(
        IovaDomain::new(256, 1, SingleCpu).err(),
        Some(IovaError::InvalidGranule)
    );
    let iovad = IovaDomain::new(4096, 1, SingleCpu).unwrap();
    assert_eq!(iovad.alloc_fast(0, 100, true), Err(IovaError::InvalidSize));
    assert_eq!(iovad.reserve(9, 3), Err(IovaError::InvalidRange));
    assert_eq!(iovad.reserve(0, u64::MAX), Err(IovaError::InvalidRange));
    assert_eq!(iovad.free(77), Err(IovaError::NotAllocated));
    assert_eq!(iovad.alloc_fast(4, 2, true), Err(IovaError::NoSpace));
    assert_eq!(IovaError::NoSpace.errno(), iommu_types::Errno::ENOMEM);
}
