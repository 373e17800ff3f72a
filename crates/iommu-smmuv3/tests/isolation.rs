//! The core's isolation oracle on this driver and the emulated SMMUv3:
//! random operation sequences (add, remove, claim, attach, detach, type
//! changes, map, unmap) and after each, every stream's DMA reaches exactly
//! what its group's current domain maps, through STEs, CDs, page tables
//! and a TLB that only the driver's commands invalidate.

use iommu_soft::testing::{run_hardware, save_seed, seed_bytes, Input};
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
    for (n, bytes) in seed_bytes(0x2545_f491_4f6c_dd1d, 24).iter().enumerate() {
        iommu_smmuv3::testing::run(bytes);
        save_seed("core_smmuv3", &format!("seq{n:02}"), bytes);
    }
}

/// The oracle is not vacuous: a device added, a page mapped in its
/// default domain and unmapped, and the emulator walked tables and ran
/// the driver's invalidations while the oracle checked.
#[test]
fn the_oracle_translates_through_the_emulator() {
    use iommu_smmuv3::testing::EmuHardware;
    let input = Input::smoke();
    let hw = EmuHardware::small();
    let emu = hw.0.hw.clone();
    run_hardware(&input, Box::new(hw));
    let stats = emu.stats();
    assert!(stats.walks > 0 && stats.tlb_hits > 0, "{stats:?}");
    assert!(stats.commands > 10, "{stats:?}");
}
