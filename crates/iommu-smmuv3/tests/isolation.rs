//! The core's isolation oracle on this driver and the emulated SMMUv3:
//! random operation sequences (add, remove, claim, attach, detach, type
//! changes, map, unmap) and after each, every stream's DMA reaches exactly
//! what its group's current domain maps, through STEs, CDs, page tables
//! and a TLB that only the driver's commands invalidate.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn dma_reaches_exactly_what_the_current_domain_maps(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        iommu_smmuv3::testing::run(&bytes);
    }
}

/// Deterministic sequences, also the seed corpus of the `core_smmuv3`
/// fuzz target (written when `IOMMU_FUZZ_SEEDS` names a directory).
#[test]
fn the_seed_sequences_hold_on_the_smmuv3() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for n in 0..24 {
        let len = 64 + n * 24;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        iommu_smmuv3::testing::run(&bytes);
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("core_smmuv3");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seq{n:02}")), &bytes).unwrap();
        }
    }
}

/// The oracle is not vacuous: a device added, a page mapped in its
/// default domain and unmapped, and the emulator walked tables and ran
/// the driver's invalidations while the oracle checked.
#[test]
fn the_oracle_translates_through_the_emulator() {
    use iommu_smmuv3::testing::EmuHardware;
    use iommu_soft::testing::{run_hardware, Input, Op, Spec};
    let spec = Spec {
        sids: 0b1,
        direct: true,
    };
    let input = Input {
        specs: [spec; iommu_soft::testing::DEVICES],
        ops: vec![
            Op::Add(0),
            Op::Map {
                dom: 9,
                dev: 0,
                page: 3,
                pages: 2,
                pa: 7,
            },
            Op::Unmap {
                dom: 9,
                dev: 0,
                page: 3,
                pages: 1,
            },
            Op::Type(0, 0),
        ],
    };
    let hw = EmuHardware::small();
    let emu = hw.0.hw.clone();
    run_hardware(&input, Box::new(hw));
    let stats = emu.stats();
    assert!(stats.walks > 0 && stats.tlb_hits > 0, "{stats:?}");
    assert!(stats.commands > 10, "{stats:?}");
}
