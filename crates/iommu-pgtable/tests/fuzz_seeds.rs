//! The fuzz harness as a test: hand-written sequences (which become the
//! seed corpus of the `pgtable` fuzz target when `IOMMU_FUZZ_SEEDS` names a
//! directory) and random byte strings, replayed against every format
//! family with the table-shape model checking each answer.

use iommu_pgtable::testing::{run, Input, Op};
use proptest::prelude::*;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;

fn map(iova: u64, pa: u64, size: u8, count: u16) -> Op {
    Op::Map {
        iova,
        pa,
        size,
        count,
        prot: 3,
        raw: false,
    }
}

fn unmap(iova: u64, size: u8, count: u16) -> Op {
    Op::Unmap {
        iova,
        size,
        count,
        raw: false,
    }
}

/// Every rule the model knows, in one sequence: pages, blocks, a block
/// cut in the middle, a table torn down by a large unmap, a block replacing
/// an emptied table, overlaps, bad sizes and addresses, first-leaf queries.
fn rules() -> Vec<Op> {
    vec![
        map(0, 0x40_0000, 0, 16),
        map(M2, 0x80_0000, 1, 1),
        map(M2 + K4, 0, 0, 1), // inside the block: EEXIST
        Op::Translate { iova: M2 + 0x1234 },
        unmap(M2 + 3 * K4, 0, 1), // cuts the block: removed whole
        unmap(0, 1, 1),           // a table where a block was expected
        map(0, 0x1_0000_0000, 1, 1),
        unmap(0, 0, 8), // inside the new block: whole
        map(4 * K4, 0, 0, 4),
        unmap(4 * K4, 0, 4),
        map(0, 0x20_0000, 1, 2), // over the emptied table: replaces it
        Op::FirstLeaf {
            start: K4,
            len: 8 * M2,
        },
        map(0, 0, 7, 1), // no such page size
        Op::Map {
            iova: 0x1800,
            pa: 0,
            size: 0,
            count: 1,
            prot: 3,
            raw: true,
        },
        Op::Map {
            iova: u64::MAX,
            pa: 0,
            size: 0,
            count: 1,
            prot: 3,
            raw: true,
        },
        map(8 * K4, 0, 0, 0), // zero pages
        Op::Map {
            iova: 16 * K4,
            pa: 0,
            size: 0,
            count: 2,
            prot: 4, // neither read nor write
            raw: false,
        },
        Op::Sync,
        unmap(0, 2, 1),
        Op::Sync,
    ]
}

/// One configuration of each family, and a few more of LPAE.
const FORMATS: [[u8; 4]; 10] = [
    [0, 0, 16, 16],   // LPAE S1 4K 48/48
    [0, 0x80, 8, 16], // LPAE S2 4K 40/48 (concatenated root)
    [0, 1, 16, 16],   // LPAE S1 16K
    [0, 2, 20, 20],   // LPAE S1 64K 52/52
    [0, 0x40, 0, 0],  // LPAE S1 4K 32/32, NS
    [1, 1, 16, 0],    // VT-d 4 levels
    [1, 2, 20, 0],    // VT-d 5 levels
    [2, 3, 0, 0],     // AMD v1 mode 4
    [2, 0, 0, 0],     // AMD v1 mode 1
    [3, 2, 1, 0],     // RISC-V Sv57x4
];

fn write_seed(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join("pgtable");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn the_seed_sequences_hold_for_every_format_family() {
    for (i, format) in FORMATS.iter().enumerate() {
        for limit in [None, Some(3)] {
            let input = Input {
                format: *format,
                table_limit: limit,
                ops: rules(),
            };
            let bytes = input.encode();
            assert_eq!(Input::decode(&bytes), input, "the codec round-trips");
            run(&input);
            write_seed(&format!("rules-{i}-{}", limit.unwrap_or(0)), &bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 512 }))]

    #[test]
    fn random_inputs_agree_with_the_model(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        run(&Input::decode(&bytes));
    }

    #[test]
    fn random_ops_on_each_family_agree_with_the_model(
        format in 0usize..FORMATS.len(),
        ops in prop::collection::vec(any::<(u8, u64, u64, u8, u16, u8)>(), 1..if cfg!(miri) { 16 } else { 80 }),
    ) {
        // Structured ops, so most of them are meaningful for the format.
        let ops = ops
            .into_iter()
            .map(|(tag, a, b, size, count, prot)| match tag % 8 {
                0..=2 => Op::Map { iova: a, pa: b, size: size % 4, count: count % 600, prot: prot | 1, raw: false },
                3..=4 => Op::Unmap { iova: a, size: size % 4, count: count % 600, raw: false },
                5 => Op::Translate { iova: a },
                6 => Op::FirstLeaf { start: a, len: b },
                _ => Op::Sync,
            })
            .collect();
        run(&Input { format: FORMATS[format], table_limit: None, ops });
    }
}
