//! The allocator against a model: random operation sequences (and random
//! bytes, as the fuzzer sees them), every answer checked by the harness in
//! `iommu_iova::testing` against a plain map of live and reserved ranges.

use iommu_iova::testing::{run, Input, Op};
use iommu_iova::{IovaDomain, IovaError, SingleCpu};
use proptest::prelude::*;

const START: u64 = iommu_iova::testing::START;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40, any::<u8>(), any::<bool>())
            .prop_map(|(size, limit, aligned)| Op::Alloc { size, limit, aligned }),
        4 => (1u8..40, any::<u8>(), any::<bool>())
            .prop_map(|(size, limit, flush)| Op::AllocFast { size, limit, flush }),
        4 => any::<u16>().prop_map(|nth| Op::Free { nth }),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(how, seed)| Op::BadFree { how, seed }),
        1 => (0u8..140, 1u8..8).prop_map(|(lo, len)| Op::Reserve { lo, len }),
        1 => Just(Op::Flush),
        1 => any::<u8>().prop_map(|cpu| Op::Cpu { cpu }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]
    #[test]
    fn allocations_never_overlap_and_fail_only_when_full(
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 30 } else { 120 })
    ) {
        run(&Input { checked: false, ops });
    }

    #[test]
    fn with_checked_frees_every_bad_free_is_refused(
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 30 } else { 120 })
    ) {
        run(&Input { checked: true, ops });
    }

    #[test]
    fn random_inputs_agree_with_the_model(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        run(&Input::decode(&bytes));
    }
}

/// The seed corpus of the `iova` fuzz target (written when
/// `IOMMU_FUZZ_SEEDS` names a directory): each rule in one sequence.
#[test]
fn the_seed_sequences_hold() {
    let seeds: Vec<(&str, Vec<Op>)> = vec![
        (
            "fill-and-drain",
            (0..70)
                .map(|i| Op::AllocFast {
                    size: 1,
                    limit: 0,
                    flush: i % 2 == 0,
                })
                .chain((0..70).map(|i| Op::Free { nth: i }))
                .chain([Op::Flush])
                .collect(),
        ),
        (
            "bad-frees",
            vec![
                Op::AllocFast {
                    size: 1,
                    limit: 2,
                    flush: true,
                },
                Op::Free { nth: 0 },
                Op::BadFree { how: 0, seed: 0 },
                Op::BadFree { how: 1, seed: 0 },
                Op::AllocFast {
                    size: 4,
                    limit: 2,
                    flush: true,
                },
                Op::BadFree { how: 2, seed: 0 },
                Op::AllocFast {
                    size: 40,
                    limit: 4,
                    flush: true,
                },
                Op::BadFree { how: 3, seed: 0 },
                Op::BadFree { how: 4, seed: 3 },
                Op::AllocFast {
                    size: 2,
                    limit: 2,
                    flush: true,
                },
                Op::Free { nth: 0 },
                Op::BadFree { how: 5, seed: 0 },
            ],
        ),
        (
            "cpus-and-limits",
            vec![
                Op::Cpu { cpu: 1 },
                Op::AllocFast {
                    size: 2,
                    limit: 4,
                    flush: false,
                },
                Op::Cpu { cpu: 2 },
                Op::Free { nth: 0 },
                Op::Alloc {
                    size: 33,
                    limit: 3,
                    aligned: true,
                },
                Op::Alloc {
                    size: 5,
                    limit: 1,
                    aligned: false,
                },
                Op::Reserve { lo: 100, len: 7 },
                Op::AllocFast {
                    size: 16,
                    limit: 1,
                    flush: true,
                },
                Op::Flush,
            ],
        ),
    ];
    for (name, ops) in seeds {
        for checked in [false, true] {
            let input = Input {
                checked,
                ops: ops.clone(),
            };
            let bytes = input.encode();
            assert_eq!(Input::decode(&bytes), input);
            run(&input);
            if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
                let dir = std::path::Path::new(&dir).join("iova");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("{name}-{}", u8::from(checked))), bytes).unwrap();
            }
        }
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
