//! The DMA harness as a test: hand-written sequences (the seed corpus of
//! the `dma` fuzz target when `IOMMU_FUZZ_SEEDS` names a directory) and
//! random ones, strict and lazy, with and without handle checks.

use iommu_dma::testing::{run, Input, Op};
use proptest::prelude::*;

fn seeds() -> Vec<(&'static str, Vec<Op>)> {
    let map = |page, off, len, dir| Op::MapSingle {
        page,
        off,
        len,
        dir,
    };
    vec![
        (
            "singles",
            vec![
                map(1, 0x10, 100, 0),
                map(2, 0, 0x3000, 1),
                map(3, 0xfff, 2, 2),
                map(4, 0, 0, 0),  // zero bytes
                map(5, 0, 10, 3), // DMA_NONE
                Op::UnmapSingle { nth: 0, how: 1 },
                Op::UnmapSingle { nth: 0, how: 2 },
                Op::UnmapSingle { nth: 1, how: 3 },
                Op::UnmapSingle { nth: 0, how: 0 },
                Op::Tamper { nth: 0 },
                Op::Flush,
                Op::SetMask { bits: 32 },
                map(6, 0, 0x10_0000, 0),
                Op::UnmapSingle { nth: 1, how: 0 },
                Op::Flush,
            ],
        ),
        (
            "lists-and-coherent",
            vec![
                Op::MapSg {
                    segs: [
                        (1, 0, 0x1000),
                        (9, 0, 0x2000),
                        (20, 0x800, 0x100),
                        (0, 0, 0),
                    ],
                    n: 3,
                    dir: 0,
                },
                Op::MapSg {
                    segs: [(1, 0, 0); 4],
                    n: 1,
                    dir: 1,
                }, // a zero-length segment
                Op::AllocCoherent { len: 0x2345 },
                Op::AllocCoherent { len: 0 },
                Op::FreeCoherent {
                    nth: 0,
                    wrong: true,
                },
                Op::UnmapSg {
                    nth: 0,
                    again: true,
                },
                Op::FreeCoherent {
                    nth: 0,
                    wrong: false,
                },
                Op::Flush,
            ],
        ),
    ]
}

#[test]
fn the_seed_sequences_hold_in_every_mode() {
    for (name, ops) in seeds() {
        for (lazy, check_handles) in [(false, true), (true, true), (false, false), (true, false)] {
            let input = Input {
                lazy,
                check_handles,
                ops: ops.clone(),
            };
            let bytes = input.encode();
            assert_eq!(Input::decode(&bytes), input);
            run(&input);
            if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
                let dir = std::path::Path::new(&dir).join("dma");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join(format!(
                        "{name}-{}{}",
                        u8::from(lazy),
                        u8::from(check_handles)
                    )),
                    bytes,
                )
                .unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 128 }))]

    #[test]
    fn random_inputs_keep_every_dma_rule(bytes in prop::collection::vec(any::<u8>(), 0..800)) {
        run(&Input::decode(&bytes));
    }
}
